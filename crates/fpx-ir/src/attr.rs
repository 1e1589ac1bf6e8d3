//! Node attributes.

use crate::Tensor;
use std::fmt;

/// An attribute value of a node (the ONNX attribute kinds fpx supports).
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

/// The kind of an [`Attribute`], used by op schemas to declare what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    Float,
    Int,
    String,
    Tensor,
    Floats,
    Ints,
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
