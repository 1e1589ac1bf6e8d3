//! Weight quantization schemes as users name them (`--weights fp6-e3m2`).

use crate::PassError;
use fpx_quant::act8::Activations;
use fpx_quant::lorc::FactorStorage;
use fpx_quant::Format;

/// How weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScheme {
    /// Keep weights in floating point (no rewrite).
    None,
    /// One format for every layer.
    Fixed(Format),
    /// Per layer, the 6-bit format (e3m2 or e2m3) with the lower weight error; both use the
    /// same 4+2 packing and kernels.
    Fp6Auto,
}

/// The scheme names `--weights` accepts.
pub const SCHEME_NAMES: &[&str] = &["fp6-e3m2", "fp6-e2m3", "fp6-auto", "fp5-e2m2", "fp4-e2m1", "int4", "int8", "none"];

impl WeightScheme {
    /// Parses a scheme name (see [`SCHEME_NAMES`]).
    pub fn parse(s: &str) -> Result<WeightScheme, PassError> {
        match s {
            "none" => Ok(WeightScheme::None),
            "fp6-auto" => Ok(WeightScheme::Fp6Auto),
            other => match Format::parse(other) {
                Some(f) if SCHEME_NAMES.contains(&other) => Ok(WeightScheme::Fixed(f)),
                _ => Err(PassError::Option(format!("unknown weight scheme '{s}'; choose one of: {}", SCHEME_NAMES.join(", ")))),
            },
        }
    }

    /// The name users type.
    pub fn name(&self) -> &'static str {
        match self {
            WeightScheme::None => "none",
            WeightScheme::Fp6Auto => "fp6-auto",
            WeightScheme::Fixed(f) => f.name(),
        }
    }

    /// The formats tried per layer (empty for `None`).
    pub fn candidates(&self) -> Vec<Format> {
        match self {
            WeightScheme::None => vec![],
            WeightScheme::Fixed(f) => vec![*f],
            WeightScheme::Fp6Auto => vec![Format::Fp6E3M2, Format::Fp6E2M3],
        }
    }
}

impl std::str::FromStr for WeightScheme {
    type Err = PassError;

    /// [`WeightScheme::parse`].
    fn from_str(s: &str) -> Result<WeightScheme, PassError> {
        WeightScheme::parse(s)
    }
}

impl std::fmt::Display for WeightScheme {
    /// Writes [`WeightScheme::name`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that decides how weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeOptions {
    /// The scheme.
    pub scheme: WeightScheme,
    /// Quantization group size along K; `None` = one scale per output channel.
    pub group_size: Option<usize>,
    /// Search a clipping ratio per channel (or group) that minimizes squared error.
    pub scale_search: bool,
    /// Constrain every weight scale to a power of two, the exponent with the least error
    /// (ZeroQuant-FP's constraint: scaling becomes an exponent add).
    pub pow2_scales: bool,
    /// What the quantized products multiply their weights with (the `activations` attribute
    /// of `fpx:QuantMatMul`). Int8 limits the candidate formats to those with small integer
    /// values that the int8 kernels decode ([`fpx_quant::takes_int8_activations`]); `fp6-auto`
    /// then means fp6-e2m3.
    pub activations: Activations,
    /// LoRC: correct each quantized weight's error `W − Q(W)` with a rank-`r` product `U · V`
    /// (its truncated SVD, [`fpx_quant::lorc`]) that the product adds
    /// (`X · Q(W) + (X · U) · V`). `None` (the default) for none; the rank is capped at
    /// `min(K, N)`. CPU code only.
    pub lorc_rank: Option<usize>,
    /// How LoRC factors are stored: FP16 (the default) or a float format's codes with one
    /// scale per rank component ([`FactorStorage`]).
    pub lorc_factors: FactorStorage,
    /// Fuse what follows each quantized product (bias, activation, gated MLP, residual add)
    /// into it ([`crate::FuseEpilogues`]); on by default. Off, the products stay plain, as the
    /// exporter wrote the graph.
    pub fuse_epilogues: bool,
    /// Quantize embedding tables (`Gather` from a constant table of at least
    /// [`crate::MIN_TABLE_ELEMENTS`]) into `fpx:QuantGather` with this format, one scale per row,
    /// when weights are quantized at all (default int8: MiniLM's pooled cosine moves by 4e-5);
    /// a table tied to a quantized LM head shares the head's weight instead. `None` keeps them.
    pub embeddings: Option<Format>,
    /// Tables smaller than this (elements) stay float (default [`crate::MIN_TABLE_ELEMENTS`]).
    pub embedding_min_elements: usize,
}

/// The largest LoRC rank the options take.
pub const MAX_LORC_RANK: usize = 1024;

impl QuantizeOptions {
    /// Per-channel scales, no search, fused epilogues, int8 embedding tables.
    pub fn new(scheme: WeightScheme) -> Self {
        QuantizeOptions {
            scheme,
            group_size: None,
            scale_search: false,
            pow2_scales: false,
            activations: Activations::F32,
            lorc_rank: None,
            lorc_factors: FactorStorage::F16,
            fuse_epilogues: true,
            embeddings: Some(Format::Int8),
            embedding_min_elements: crate::MIN_TABLE_ELEMENTS,
        }
    }

    /// The formats this scheme tries for a weight, given the activations.
    pub fn candidates(&self) -> Vec<Format> {
        let fits = |f: &Format| self.activations != Activations::Int8 || fpx_quant::takes_int8_activations(*f);
        self.scheme.candidates().into_iter().filter(fits).collect()
    }

    /// Checks option values: what every quantized product's [`fpx_quant::QuantGemm`] will need
    /// that the options alone decide.
    pub fn validate(&self) -> Result<(), PassError> {
        match self.group_size {
            Some(0) => return Err(PassError::Option("group size must be at least 1 (omit it for one scale per output channel)".into())),
            Some(g) => fpx_quant::gemm::check_group_size(g, self.activations).map_err(|e| PassError::Option(e.to_string()))?,
            None => {}
        }
        if self.lorc_rank == Some(0) {
            return Err(PassError::Option("the LoRC rank must be at least 1 (omit --lorc for none)".into()));
        }
        if self.lorc_rank.is_some_and(|r| r > MAX_LORC_RANK) {
            return Err(PassError::Option(format!(
                "a LoRC rank of {} is more than {MAX_LORC_RANK}: LoRC is a small correction (ranks 4 to 64 are usual)",
                self.lorc_rank.unwrap_or_default()
            )));
        }
        if self.lorc_rank.is_none() && self.lorc_factors != FactorStorage::F16 {
            return Err(PassError::Option(format!("LoRC factors in {} need a LoRC rank (--lorc RANK)", self.lorc_factors.name())));
        }
        if self.activations == Activations::Int8 && self.candidates().is_empty() {
            return Err(PassError::Option(match self.scheme {
                WeightScheme::None => {
                    "--activations int8 applies to quantized products: pick a weight scheme (e.g. --weights fp6-e2m3)".into()
                }
                s => format!(
                    "--activations int8 needs weights with small integer values ({}); {} has none",
                    fpx_quant::gemm::int8_format_list(),
                    s.name()
                ),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_back() {
        for name in SCHEME_NAMES {
            assert_eq!(WeightScheme::parse(name).unwrap().name(), *name);
        }
        let e = WeightScheme::parse("fp7").unwrap_err().to_string();
        assert!(e.contains("'fp7'") && e.contains("fp6-e3m2"), "{e}");
        assert!(WeightScheme::parse("fp8-e4m3").is_err(), "FP8 is an activation format, not a weight scheme");
    }
}
