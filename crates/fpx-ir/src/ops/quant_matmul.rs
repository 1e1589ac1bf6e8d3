//! `fpx:QuantMatMul`: the node form of a [`QuantGemm`], converted both ways here beside its
//! schema, so the quantize pass, the verifier, the reference kernel and the code generators read
//! and write its attributes in one place.
//!
//! `QuantMatMul(X[..., K], packed: uint8[bytes], scales: float[groups, N], bias?: float[N])`
//! with attributes `format` (a [`Format`] name), `k`, `n`, `group_size` (0 = one scale per output
//! channel; optional, default 0) and `activations` (`f32` or `int8`; optional, default `f32`).

use super::{AttrSpec, FPX_DOMAIN};
use crate::{AttrKind, Attribute, IrError, Node};
use fpx_quant::act8::Activations;
use fpx_quant::{Format, QuantGemm};

/// The op type of fpx's quantized product (domain [`FPX_DOMAIN`]).
pub const OP_TYPE: &str = "QuantMatMul";

/// The attributes of `fpx:QuantMatMul`, as its schema declares them.
pub const ATTRS: &[AttrSpec] = &[
    AttrSpec { name: "format", kind: AttrKind::String, required: true },
    AttrSpec { name: "k", kind: AttrKind::Int, required: true },
    AttrSpec { name: "n", kind: AttrKind::Int, required: true },
    AttrSpec { name: "group_size", kind: AttrKind::Int, required: false },
    AttrSpec { name: "activations", kind: AttrKind::String, required: false },
];

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
    let activations = Activations::parse(&act_name).ok_or_else(|| bad(format!("unknown activations '{act_name}' (f32 or int8)")))?;
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
                    assert_eq!(n.attrs.contains_key("activations"), activations == Activations::Int8);
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
}
