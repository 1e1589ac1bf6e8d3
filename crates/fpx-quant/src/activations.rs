//! [`Activations`]: what a quantized product multiplies its weights with — the one choice the
//! options, the graph attribute, the artifact, the kernels and the reference kernel all read.

use std::fmt;

use crate::Format;

/// What quantized products multiply their weights with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Activations {
    /// `f32` activations: exact up to `f32` rounding.
    #[default]
    F32,
    /// Activations quantized to int8 per row and block of 32 columns
    /// ([`crate::act8::Int8Activations`]): byte dot products on the CPU, with the rounding error
    /// of int8 activations (like onnxruntime's `MatMulNBits` at `accuracy_level` 4). Only for
    /// weight formats with small integer values that the byte decoders unpack
    /// ([`crate::takes_int8_activations`]).
    Int8,
    /// Activations quantized to FP8 e4m3 per row (token) with a power-of-two scale
    /// ([`crate::act_fp8`]), as ZeroQuant-FP's W4A8: the rows are rounded at run time and the
    /// kernels multiply the exact FP8 values (in `f32`, where they and their products with FP4 or
    /// FP6 weights are exact). Any weight format.
    Fp8E4M3,
    /// As [`Activations::Fp8E4M3`] with FP8 e5m2 (2 mantissa bits, wider range).
    Fp8E5M2,
}

impl Activations {
    /// Every choice.
    pub const ALL: [Activations; 4] = [Activations::F32, Activations::Int8, Activations::Fp8E4M3, Activations::Fp8E5M2];

    /// The name used on the command line and in graphs and artifacts: `f32`, `int8`,
    /// `fp8-e4m3` or `fp8-e5m2`.
    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::Int8 => "int8",
            Activations::Fp8E4M3 => "fp8-e4m3",
            Activations::Fp8E5M2 => "fp8-e5m2",
        }
    }

    /// Parses [`Activations::name`].
    pub fn parse(s: &str) -> Option<Activations> {
        Activations::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The FP8 format the rows are rounded to, for the FP8 choices.
    pub fn fp8_format(self) -> Option<Format> {
        match self {
            Activations::Fp8E4M3 => Some(Format::Fp8E4M3),
            Activations::Fp8E5M2 => Some(Format::Fp8E5M2),
            Activations::F32 | Activations::Int8 => None,
        }
    }

    /// Whether the CPU kernels read `f32` rows (every choice but int8, whose kernels read an
    /// [`crate::act8::Int8Activations`] buffer): FP8 rows are handed to them rounded, as `f32`.
    pub fn kernels_read_f32(self) -> bool {
        self != Activations::Int8
    }

    /// The short tag product names and kernel symbols carry (`""` for `f32`): `a8`, `f8e4m3`,
    /// `f8e5m2`.
    pub fn tag(self) -> &'static str {
        match self {
            Activations::F32 => "",
            Activations::Int8 => "a8",
            Activations::Fp8E4M3 => "f8e4m3",
            Activations::Fp8E5M2 => "f8e5m2",
        }
    }

    /// Every name, for messages: `f32, int8, fp8-e4m3 or fp8-e5m2`.
    pub fn choices() -> String {
        let names: Vec<&str> = Activations::ALL.iter().map(|a| a.name()).collect();
        format!("{} or {}", names[..names.len() - 1].join(", "), names[names.len() - 1])
    }
}

impl std::str::FromStr for Activations {
    type Err = String;

    /// Parses [`Activations::name`].
    fn from_str(s: &str) -> Result<Activations, String> {
        Activations::parse(s).ok_or_else(|| format!("unknown activations '{s}'; choose {}", Activations::choices()))
    }
}

impl fmt::Display for Activations {
    /// Writes [`Activations::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_tags_are_distinct() {
        for a in Activations::ALL {
            assert_eq!(a.name().parse::<Activations>(), Ok(a));
            assert_eq!(a.fp8_format().is_some(), a.name().starts_with("fp8"));
        }
        let tags: std::collections::HashSet<_> = Activations::ALL.iter().map(|a| a.tag()).collect();
        assert_eq!(tags.len(), Activations::ALL.len());
        assert_eq!(Activations::choices(), "f32, int8, fp8-e4m3 or fp8-e5m2");
        assert!("fp8".parse::<Activations>().unwrap_err().contains("fp8-e4m3"));
        assert!(!Activations::Int8.kernels_read_f32() && Activations::Fp8E5M2.kernels_read_f32());
    }
}
