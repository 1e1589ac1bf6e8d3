//! Tensor types with symbolic dimensions.

use crate::DType;
use std::fmt;

/// One dimension of a tensor type: a known size, a named symbol (`batch`, `seq`), or unknown.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known at compile time.
    Fixed(usize),
    /// A size bound when the graph runs; equal names are equal sizes.
    Sym(String),
    /// A size nothing is known about.
    Unknown,
}

impl Dim {
    /// The size, when known.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    }

    /// True when `self` and `other` may describe the same size (unknowns and symbols match anything).
    pub fn compatible(&self, other: &Dim) -> bool {
        match (self, other) {
            (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
            _ => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The static type of a tensor value: element type and, when known, the dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` when even the rank is unknown.
    pub shape: Option<Vec<Dim>>,
}

/// The highest rank [`TensorType::of_rank`] records (real models stay below 10).
pub const MAX_INFERRED_RANK: usize = 64;

impl TensorType {
    /// A type with fully known dimensions.
    pub fn fixed(dtype: DType, dims: &[usize]) -> Self {
        TensorType { dtype, shape: Some(dims.iter().map(|&d| Dim::Fixed(d)).collect()) }
    }

    /// A type of known rank whose dimensions are all unknown. Ranks often come from a declared
    /// dimension (the length of a shape input), which a model can set to anything: a rank above
    /// [`MAX_INFERRED_RANK`] gives an unranked type instead of a vector of that many dimensions.
    pub fn of_rank(dtype: DType, rank: usize) -> Self {
        if rank > MAX_INFERRED_RANK {
            return TensorType::unranked(dtype);
        }
        TensorType { dtype, shape: Some(vec![Dim::Unknown; rank]) }
    }

    /// A type whose shape is unknown.
    pub fn unranked(dtype: DType) -> Self {
        TensorType { dtype, shape: None }
    }

    /// The rank, when known.
    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }

    /// The dimensions as sizes, when all are known.
    pub fn fixed_dims(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(Dim::fixed).collect()
    }

    /// True when the two types may describe the same tensors.
    pub fn compatible(&self, other: &TensorType) -> bool {
        if self.dtype != other.dtype {
            return false;
        }
        match (&self.shape, &other.shape) {
            (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.compatible(y)),
            _ => true,
        }
    }

    /// Combines what two compatible descriptions know (a fixed size beats a symbol beats unknown).
    pub fn refine(&self, other: &TensorType) -> TensorType {
        let shape = match (&self.shape, &other.shape) {
            (Some(a), Some(b)) if a.len() == b.len() => Some(
                a.iter()
                    .zip(b)
                    .map(|(x, y)| match (x, y) {
                        (Dim::Fixed(_), _) => x.clone(),
                        (_, Dim::Fixed(_)) => y.clone(),
                        (Dim::Sym(_), _) => x.clone(),
                        _ => y.clone(),
                    })
                    .collect(),
            ),
            (Some(a), _) => Some(a.clone()),
            (None, b) => b.clone(),
        };
        TensorType { dtype: self.dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dtype)?;
        match &self.shape {
            None => f.write_str("[*]"),
            Some(dims) => {
                f.write_str("[")?;
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_from_a_huge_declared_dimension_is_unranked_not_allocated() {
        // A shape input declared [24_102_250_584 / 8] once asked for a 24 GB vector of dims.
        assert_eq!(TensorType::of_rank(DType::F32, 3_012_781_323).shape, None);
        assert_eq!(TensorType::of_rank(DType::F32, MAX_INFERRED_RANK).rank(), Some(MAX_INFERRED_RANK));
        assert_eq!(TensorType::of_rank(DType::F32, MAX_INFERRED_RANK + 1).rank(), None);
    }
}
