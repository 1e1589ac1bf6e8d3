//! Python keyword arguments to the library's typed options, parsed by the same parsers as the
//! CLI's flags (so a bad value gets the CLI's message).

use crate::FpxError;
use fpx::quant::lorc::FactorStorage;
use fpx::quant::Format;
use fpx::{Activations, QuantizeOptions, WeightScheme};
use pyo3::prelude::*;

/// How weights are quantized, from `weights=`, `activations=`, `group_size=`, `scale_search=`,
/// `scale_pow2=`, `embeddings=`, `fused_epilogues=`, `lorc=` and `lorc_factors=`.
pub struct QuantKwargs<'a> {
    /// A scheme name, or None for `default`.
    pub weights: Option<&'a str>,
    /// "f32", "int8", "fp8-e4m3" or "fp8-e5m2".
    pub activations: &'a str,
    /// Scales per group of this many along K (None: per output channel).
    pub group_size: Option<usize>,
    /// Search a clipping ratio per channel or group.
    pub scale_search: bool,
    /// Power-of-two scales (`--scale-pow2`).
    pub scale_pow2: bool,
    /// A format name for embedding tables, or None / "none" to keep them.
    pub embeddings: Option<&'a str>,
    /// Fuse bias, activation and residual epilogues into the products.
    pub fused_epilogues: bool,
    /// The LoRC rank (`--lorc`), or None.
    pub lorc: Option<usize>,
    /// How LoRC factors are stored (`--lorc-factors`): "f16" or a float format's name.
    pub lorc_factors: &'a str,
}

impl QuantKwargs<'_> {
    /// The options, `default` standing in for an absent `weights`.
    pub fn options(&self, default: WeightScheme) -> PyResult<QuantizeOptions> {
        let scheme = match self.weights {
            Some(w) => w.parse::<WeightScheme>().map_err(|e| FpxError::new_err(format!("weights='{w}': {e}")))?,
            None => default,
        };
        let activations =
            self.activations.parse::<Activations>().map_err(|e| FpxError::new_err(format!("activations='{}': {e}", self.activations)))?;
        let embeddings = match self.embeddings {
            None | Some("none") => None,
            Some(name) => Some(Format::parse(name).ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                FpxError::new_err(format!("embeddings='{name}': unknown embedding format; choose none or one of {}", names.join(", ")))
            })?),
        };
        let lorc_factors = FactorStorage::parse(self.lorc_factors).ok_or_else(|| {
            FpxError::new_err(format!("lorc_factors='{}': choose f16 or a float format such as fp8-e4m3 or fp6-e2m3", self.lorc_factors))
        })?;
        let options = QuantizeOptions {
            group_size: self.group_size,
            scale_search: self.scale_search,
            pow2_scales: self.scale_pow2,
            activations,
            lorc_rank: self.lorc,
            lorc_factors,
            fuse_epilogues: self.fused_epilogues,
            embeddings,
            ..QuantizeOptions::new(scheme)
        };
        options.validate().map_err(|e| crate::error(&e))?;
        Ok(options)
    }
}
