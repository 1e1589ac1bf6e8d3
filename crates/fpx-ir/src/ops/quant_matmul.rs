//! `fpx:QuantMatMul`: the node form of a [`QuantGemm`], converted both ways here beside its
//! schema, so the quantize pass, the verifier, the reference kernel and the code generators read
//! and write its attributes in one place.
//!
//! `QuantMatMul(X[..., K], packed: uint8[bytes], scales: float[groups, N], bias?: float[N],
//! residual?: float[..., N'], lorc_u?: float[K, r], lorc_v?: float[r, N], lorc_scales?:
//! float[2, r])` with attributes `format` (a [`Format`] name), `k`, `n`, `group_size` (0 = one
//! scale per output channel; optional, default 0), `activations` (`f32`, `int8`, `fp8-e4m3` or
//! `fp8-e5m2`; optional, default `f32`) and `lorc_format` (optional). The LoRC factors, both or
//! neither, add a low-rank correction of the weight's quantization error:
//! `P = X · W + (X · U) · V + bias`. Without `lorc_format` they are float tensors (FP16 as fpx
//! writes them); with it (a float format's name, [`FactorStorage`]) they are `uint8` buffers of
//! densely packed codes ([`fpx_quant::lorc::QuantizedFactors`]: `U` column by column, `V` row by
//! row) and `lorc_scales` holds the scales (row 0: `U`'s columns, row 1: `V`'s rows).
//!
//! The node's [`Epilogue`] (attributes `activation` and `gated`, and the optional `residual`
//! input) is what the node does to its product `P = X · W + bias` before writing `Y`: fused there
//! by `fpx-passes`' `FuseEpilogues` so that an activation, a gated MLP's `act(gate) × up` and a
//! residual add never make a second pass over memory.

use super::{AttrSpec, FPX_DOMAIN};
use crate::{AttrKind, Attribute, IrError, Node};
use fpx_quant::act8::Activations;
use fpx_quant::lorc::FactorStorage;
use fpx_quant::{Format, QuantGemm};

/// The op type of fpx's quantized product (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "QuantMatMul";

/// The attributes that describe the quantized weight ([`read`]), shared with `fpx:QuantGather`.
pub const WEIGHT_ATTRS: [AttrSpec; 5] = [
    AttrSpec { name: "format", kind: AttrKind::String, required: true },
    AttrSpec { name: "k", kind: AttrKind::Int, required: true },
    AttrSpec { name: "n", kind: AttrKind::Int, required: true },
    AttrSpec { name: "group_size", kind: AttrKind::Int, required: false },
    AttrSpec { name: "activations", kind: AttrKind::String, required: false },
];

/// The attributes of `fpx:QuantMatMul`, as its schema declares them: the weight's, then the
/// epilogue's.
pub const ATTRS: &[AttrSpec] = &[
    WEIGHT_ATTRS[0],
    WEIGHT_ATTRS[1],
    WEIGHT_ATTRS[2],
    WEIGHT_ATTRS[3],
    WEIGHT_ATTRS[4],
    AttrSpec { name: "activation", kind: AttrKind::String, required: false },
    AttrSpec { name: "gated", kind: AttrKind::Int, required: false },
    AttrSpec { name: "lorc_format", kind: AttrKind::String, required: false },
];

/// The input slot of the optional residual (added to `Y` last).
pub const RESIDUAL_INPUT: usize = 4;

/// The input slot of the optional LoRC factor `U` (`[K, r]`, FP16 or f32; [`fpx_quant::lorc`]).
pub const LORC_U_INPUT: usize = 5;

/// The input slot of the optional LoRC factor `V` (`[r, N]`): with `U`, the product adds
/// `(X · U) · V` to `X · W` before the bias and the epilogue (`X` as given, not rounded to the
/// node's activations).
pub const LORC_V_INPUT: usize = 6;

/// The input slot of the scales of quantized LoRC factors (`[2, r]`; only with `lorc_format`).
pub const LORC_SCALES_INPUT: usize = 7;

/// How `node`'s LoRC factors are stored: attribute `lorc_format`, [`FactorStorage::F16`] (float
/// tensors) when absent.
pub fn lorc_storage(node: &Node) -> Result<FactorStorage, IrError> {
    let bad = |message: String| IrError::BadAttribute { node: node.name.clone(), op: node.op_type.clone(), opset: node.opset, message };
    match node.attrs.get("lorc_format") {
        None => Ok(FactorStorage::F16),
        Some(Attribute::String(s)) => FactorStorage::parse(s)
            .ok_or_else(|| bad(format!("unknown LoRC factor format '{s}' (f16 or a float format such as fp8-e4m3 or fp6-e2m3)"))),
        Some(other) => Err(bad(format!("attribute 'lorc_format' must be a string, found {}", other.kind()))),
    }
}

/// Records how `node`'s LoRC factors are stored (no attribute for [`FactorStorage::F16`]).
pub fn set_lorc_storage(node: &mut Node, storage: FactorStorage) {
    match storage {
        FactorStorage::F16 => node.attrs.remove("lorc_format"),
        FactorStorage::Quantized(f) => node.attrs.insert("lorc_format".into(), Attribute::String(f.name().to_string())),
    };
}

/// Columns per block of a gated product's interleaved weight: W's columns
/// `[2·B·j, 2·B·j + B)` are the gate's block `j` and the next `B` the up projection's, so every
/// multiple of `2·B` columns (and every n-tile pair of the kernels) holds whole pairs.
pub const GATE_BLOCK: usize = 16;

/// An elementwise activation applied in a product's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)` (ONNX `Relu`).
    Relu,
    /// `x · sigmoid(x)` (SiLU / swish: `Mul(x, Sigmoid(x))` in exports).
    Silu,
    /// `0.5 · x · (1 + erf(x / √2))` (ONNX `Gelu`, exact form).
    Gelu,
}

impl Activation {
    /// Every activation.
    pub const ALL: [Activation; 3] = [Activation::Relu, Activation::Silu, Activation::Gelu];

    /// The attribute spelling.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
        }
    }

    /// The activation spelled `name`.
    pub fn parse(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The activation in f64: the reference the fast versions are checked against.
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        }
    }
}

/// What a `QuantMatMul` does to its product `P = X · W + bias` before writing `Y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epilogue {
    /// Applied to P, or, when `gated`, to the gate half.
    pub activation: Option<Activation>,
    /// W holds a gate and an up projection interleaved in blocks of [`GATE_BLOCK`] columns;
    /// `Y[.., B·j + i] = act(P[.., 2·B·j + i]) · P[.., 2·B·j + B + i]`, N / 2 columns wide.
    pub gated: bool,
    /// Input [`RESIDUAL_INPUT`] is added last, with ONNX (numpy) broadcasting like the `Add` it
    /// replaces: Y's shape is the broadcast of the product's and the residual's (usually they
    /// are the same shape, which the runtime adds in place).
    pub residual: bool,
}

impl Epilogue {
    /// Whether `Y = P` (nothing fused).
    pub fn is_identity(&self) -> bool {
        *self == Epilogue::default()
    }

    /// The columns of Y for a product of `n` columns.
    pub fn output_columns(&self, n: usize) -> usize {
        if self.gated {
            n / 2
        } else {
            n
        }
    }

    /// Y's column `o` of a gated product: the product columns of its gate and its up value.
    pub fn gate_columns(o: usize) -> (usize, usize) {
        let (j, i) = (o / GATE_BLOCK, o % GATE_BLOCK);
        (2 * GATE_BLOCK * j + i, 2 * GATE_BLOCK * j + GATE_BLOCK + i)
    }

    /// One row of Y from one row of P (`p`, N wide) and of the residual, in f64: the definition
    /// the reference kernel and the tests use.
    pub fn apply_row_f64(&self, p: &[f64], residual: Option<&[f64]>) -> Vec<f64> {
        let act = |x: f64| self.activation.map_or(x, |a| a.apply_f64(x));
        let mut y: Vec<f64> = if self.gated {
            (0..p.len() / 2)
                .map(|o| {
                    let (g, u) = Epilogue::gate_columns(o);
                    act(p[g]) * p[u]
                })
                .collect()
        } else {
            p.iter().map(|&x| act(x)).collect()
        };
        if let Some(r) = residual {
            y.iter_mut().zip(r).for_each(|(y, r)| *y += r);
        }
        y
    }
}

impl std::fmt::Display for Epilogue {
    /// `none`, or what is fused, e.g. `silu-gated + residual`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match (self.activation, self.gated) {
            (Some(a), true) => parts.push(format!("{}-gated", a.name())),
            (None, true) => parts.push("gated".into()),
            (Some(a), false) => parts.push(a.name().into()),
            (None, false) => {}
        }
        if self.residual {
            parts.push("residual".into());
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" + "))
        }
    }
}

/// The [`Epilogue`] of a `QuantMatMul` node whose product is `gemm`; an error names the node
/// and the attribute at fault (an unknown activation, a gated product whose N is not a
/// multiple of `2 ·` [`GATE_BLOCK`]).
pub fn epilogue(node: &Node, gemm: &QuantGemm) -> Result<Epilogue, IrError> {
    let bad = |message: String| IrError::BadAttribute { node: node.name.clone(), op: node.op_type.clone(), opset: node.opset, message };
    let activation = match node.attrs.get("activation") {
        None => None,
        Some(Attribute::String(s)) => Some(Activation::parse(s).ok_or_else(|| {
            let known: Vec<&str> = Activation::ALL.iter().map(|a| a.name()).collect();
            bad(format!("unknown activation '{s}' (one of {})", known.join(", ")))
        })?),
        Some(other) => return Err(bad(format!("attribute 'activation' must be a string, found {}", other.kind()))),
    };
    let gated = match node.attrs.get("gated") {
        None | Some(Attribute::Int(0)) => false,
        Some(Attribute::Int(1)) => true,
        Some(other) => return Err(bad(format!("attribute 'gated' must be 0 or 1, found {other:?}"))),
    };
    if gated && !gemm.n.is_multiple_of(2 * GATE_BLOCK) {
        return Err(bad(format!("a gated product needs N a multiple of {}, but N = {}", 2 * GATE_BLOCK, gemm.n)));
    }
    let residual = node.inputs.get(RESIDUAL_INPUT).is_some_and(|v| v.is_some());
    Ok(Epilogue { activation, gated, residual })
}

/// Writes `epilogue`'s attributes into `node` (absent where they are the defaults). The residual
/// input is the caller's to set.
pub fn write_epilogue(node: &mut Node, epilogue: &Epilogue) {
    match epilogue.activation {
        Some(a) => node.attrs.insert("activation".into(), Attribute::String(a.name().into())),
        None => node.attrs.remove("activation"),
    };
    if epilogue.gated {
        node.attrs.insert("gated".into(), Attribute::Int(1));
    } else {
        node.attrs.remove("gated");
    }
}

/// Whether `node` is an `fpx:QuantMatMul`.
pub fn is_quant_matmul(node: &Node) -> bool {
    node.domain == FPX_DOMAIN && node.op_type == OP_TYPE
}

/// The [`QuantGemm`] a `QuantMatMul` node computes, checked ([`QuantGemm::validate`]); an error
/// names the node and the attribute at fault.
pub fn read(node: &Node) -> Result<QuantGemm, IrError> {
    let bad = |message: String| IrError::BadAttribute { node: node.name.clone(), op: node.op_type.clone(), opset: node.opset, message };
    let string = |name: &str, default: Option<&'static str>| -> Result<String, IrError> {
        match (node.attrs.get(name), default) {
            (Some(Attribute::String(s)), _) => Ok(s.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(bad(format!("required attribute '{name}' is missing"))),
            (Some(other), _) => Err(bad(format!("attribute '{name}' must be a string, found {}", other.kind()))),
        }
    };
    let size = |name: &str, default: Option<i64>| -> Result<usize, IrError> {
        let v = match (node.attrs.get(name), default) {
            (Some(Attribute::Int(v)), _) => *v,
            (None, Some(d)) => d,
            (None, None) => return Err(bad(format!("required attribute '{name}' is missing"))),
            (Some(other), _) => return Err(bad(format!("attribute '{name}' must be an int, found {}", other.kind()))),
        };
        usize::try_from(v).map_err(|_| bad(format!("attribute '{name}' = {v} must not be negative")))
    };
    let format_name = string("format", None)?;
    let format = Format::parse(&format_name).ok_or_else(|| {
        let known: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        bad(format!("unknown weight format '{format_name}' (one of {})", known.join(", ")))
    })?;
    let act_name = string("activations", Some("f32"))?;
    let activations =
        Activations::parse(&act_name).ok_or_else(|| bad(format!("unknown activations '{act_name}' ({})", Activations::choices())))?;
    let gemm = QuantGemm { format, k: size("k", None)?, n: size("n", None)?, group_size: size("group_size", Some(0))?, activations };
    gemm.validate().map_err(|e| bad(e.to_string()))?;
    Ok(gemm)
}

/// Writes `gemm` into `node`'s attributes (`activations` only when not `f32`, as the schema's
/// default). `gemm` must be valid ([`QuantGemm::validate`]): its sizes then fit `i64`.
pub fn write(node: &mut Node, gemm: &QuantGemm) {
    let int = |v: usize| Attribute::Int(i64::try_from(v).expect("a valid QuantGemm's sizes fit i64"));
    node.attrs.insert("format".into(), Attribute::String(gemm.format.name().to_string()));
    node.attrs.insert("k".into(), int(gemm.k));
    node.attrs.insert("n".into(), int(gemm.n));
    node.attrs.insert("group_size".into(), int(gemm.group_size));
    if gemm.activations == Activations::F32 {
        node.attrs.remove("activations");
    } else {
        node.attrs.insert("activations".into(), Attribute::String(gemm.activations.name().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(gemm: &QuantGemm) -> Node {
        let mut n = Node::new("qmm0", OP_TYPE, 1, vec![None, None, None], vec![]);
        n.domain = FPX_DOMAIN.to_string();
        write(&mut n, gemm);
        n
    }

    #[test]
    fn attributes_round_trip_every_format_and_activation() {
        for format in Format::ALL {
            for activations in Activations::ALL {
                for group_size in [0, 32, 96] {
                    let g = QuantGemm { format, k: 200, n: 48, group_size, activations };
                    if g.validate().is_err() {
                        continue;
                    }
                    let n = node_with(&g);
                    assert!(is_quant_matmul(&n));
                    assert_eq!(read(&n).unwrap(), g);
                    assert_eq!(n.attrs.contains_key("activations"), activations != Activations::F32);
                }
            }
        }
    }

    #[test]
    fn bad_attributes_are_refused_naming_node_and_attribute() {
        let g = QuantGemm { format: Format::Fp6E3M2, k: 64, n: 16, group_size: 0, activations: Activations::F32 };
        let cases: Vec<(&str, Attribute, &str)> = vec![
            ("format", Attribute::String("fp7".into()), "unknown weight format 'fp7'"),
            ("format", Attribute::Int(6), "'format' must be a string"),
            ("group_size", Attribute::Int(-1), "'group_size' = -1 must not be negative"),
            ("group_size", Attribute::Int(1 << 40), "must be at most"),
            ("k", Attribute::Int(0), "K = 0"),
            ("activations", Attribute::String("int4".into()), "unknown activations 'int4'"),
            ("activations", Attribute::String("int8".into()), "cannot take int8 activations"),
        ];
        for (name, value, want) in cases {
            let mut n = node_with(&g);
            n.attrs.insert(name.into(), value);
            let e = read(&n).unwrap_err().to_string();
            assert!(e.contains("node 'qmm0'") && e.contains(want), "{name}: {e}");
        }
        let mut n = node_with(&g);
        n.attrs.remove("n");
        assert!(read(&n).unwrap_err().to_string().contains("required attribute 'n' is missing"));
    }

    #[test]
    fn epilogue_attributes_round_trip_and_bad_ones_name_the_node() {
        let g = QuantGemm { format: Format::Fp6E3M2, k: 64, n: 64, group_size: 0, activations: Activations::F32 };
        let mut n = node_with(&g);
        assert!(epilogue(&n, &g).unwrap().is_identity());
        for activation in [None, Some(Activation::Silu), Some(Activation::Gelu), Some(Activation::Relu)] {
            for gated in [false, true] {
                let e = Epilogue { activation, gated, residual: false };
                write_epilogue(&mut n, &e);
                assert_eq!(epilogue(&n, &g).unwrap(), e);
                assert_eq!(e.output_columns(64), if gated { 32 } else { 64 });
            }
        }
        n.inputs.resize(RESIDUAL_INPUT + 1, None);
        n.inputs[RESIDUAL_INPUT] = Some(crate::ValueId(3));
        assert!(epilogue(&n, &g).unwrap().residual);
        assert_eq!(epilogue(&n, &g).unwrap().to_string(), "relu-gated + residual");
        assert_eq!(Epilogue::default().to_string(), "none");
        let cases: Vec<(&str, Attribute, &str)> = vec![
            ("activation", Attribute::String("swish2".into()), "unknown activation 'swish2' (one of relu, silu, gelu)"),
            ("activation", Attribute::Int(1), "'activation' must be a string"),
            ("gated", Attribute::Int(2), "'gated' must be 0 or 1"),
        ];
        for (name, value, want) in cases {
            let mut m = node_with(&g);
            m.attrs.insert(name.into(), value);
            let e = epilogue(&m, &g).unwrap_err().to_string();
            assert!(e.contains("node 'qmm0'") && e.contains(want), "{name}: {e}");
        }
        let narrow = QuantGemm { n: 48, ..g };
        let mut m = node_with(&narrow);
        write_epilogue(&mut m, &Epilogue { gated: true, ..Epilogue::default() });
        let e = epilogue(&m, &narrow).unwrap_err().to_string();
        assert!(e.contains("multiple of 32, but N = 48"), "{e}");
    }

    /// Gated column `o` reads the gate and up columns of its block pair, exhaustively over two
    /// pairs, with each activation against its closed form.
    #[test]
    fn gated_rows_pair_the_interleaved_blocks() {
        let p: Vec<f64> = (0..4 * GATE_BLOCK).map(|i| i as f64 * 0.25 - 7.0).collect();
        for act in [None, Some(Activation::Relu), Some(Activation::Silu), Some(Activation::Gelu)] {
            let e = Epilogue { activation: act, gated: true, residual: true };
            let r: Vec<f64> = (0..2 * GATE_BLOCK).map(|i| i as f64).collect();
            let y = e.apply_row_f64(&p, Some(&r));
            assert_eq!(y.len(), 2 * GATE_BLOCK);
            for o in 0..2 * GATE_BLOCK {
                let (block, i) = (o / GATE_BLOCK, o % GATE_BLOCK);
                let (g, u) = (p[2 * GATE_BLOCK * block + i], p[2 * GATE_BLOCK * block + GATE_BLOCK + i]);
                let a = match act {
                    None => g,
                    Some(Activation::Relu) => g.max(0.0),
                    Some(Activation::Silu) => g * (1.0 / (1.0 + (-g).exp())),
                    Some(Activation::Gelu) => 0.5 * g * (1.0 + libm::erf(g / 2f64.sqrt())),
                };
                assert!((y[o] - (a * u + r[o])).abs() < 1e-12, "{act:?} column {o}");
            }
        }
    }
}
