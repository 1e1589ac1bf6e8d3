//! Node attributes.

use crate::Tensor;
use std::fmt;

/// An attribute value of a node (the ONNX attribute kinds fpx supports).
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    /// A 32-bit float.
    Float(f32),
    /// A 64-bit integer.
    Int(i64),
    /// A UTF-8 string.
    String(String),
    /// A constant tensor.
    Tensor(Tensor),
    /// A list of 32-bit floats.
    Floats(Vec<f32>),
    /// A list of 64-bit integers.
    Ints(Vec<i64>),
    /// A list of strings.
    Strings(Vec<String>),
}

/// The kind of an [`Attribute`], used by op schemas to declare what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    /// `Float`: A 32-bit float.
    Float,
    /// `Int`: A 64-bit integer.
    Int,
    /// `String`: A UTF-8 string.
    String,
    /// `Tensor`: A constant tensor.
    Tensor,
    /// `Floats`: A list of 32-bit floats.
    Floats,
    /// `Ints`: A list of 64-bit integers.
    Ints,
    /// `Strings`: A list of strings.
    Strings,
}

impl Attribute {
    /// The kind of this value.
    pub fn kind(&self) -> AttrKind {
        match self {
            Attribute::Float(_) => AttrKind::Float,
            Attribute::Int(_) => AttrKind::Int,
            Attribute::String(_) => AttrKind::String,
            Attribute::Tensor(_) => AttrKind::Tensor,
            Attribute::Floats(_) => AttrKind::Floats,
            Attribute::Ints(_) => AttrKind::Ints,
            Attribute::Strings(_) => AttrKind::Strings,
        }
    }
}

impl fmt::Display for AttrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            AttrKind::Float => "float",
            AttrKind::Int => "int",
            AttrKind::String => "string",
            AttrKind::Tensor => "tensor",
            AttrKind::Floats => "floats",
            AttrKind::Ints => "ints",
            AttrKind::Strings => "strings",
        };
        f.write_str(s)
    }
}
