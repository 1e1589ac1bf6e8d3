//! Kernels of the indexing, data-movement and integer/elementwise ops: gathers and scatters
//! (`gather`), Split/Tile/Trilu (`movement`), ArgMax/ArgMin/TopK (`select`), Einsum
//! (`einsum`), IsNaN/IsInf/Sign/Mod/Dropout (`misc`). Indices may be negative (counted from
//! the end of their axis); one out of range is an error (the executor names the node). Every
//! output is allocated through [`super::alloc`].

mod einsum;
mod gather;
mod misc;
mod movement;
mod select;
#[cfg(test)]
mod tests;

use super::KernelRegistry;
use crate::{kbail, KernelError};
use fpx_ir::{Elem, Node, Tensor};

type Res = Result<Vec<Tensor>, KernelError>;

/// Index `k` of an axis of size `dim` (negative counts from the end), or an error naming `what`.
fn index(k: i64, dim: usize, what: &str) -> Result<usize, KernelError> {
    let d = i64::try_from(dim).unwrap_or(i64::MAX);
    let j = if k < 0 { k + d } else { k };
    if (0..d).contains(&j) {
        Ok(j as usize)
    } else {
        kbail!("index {k} is out of range for {what} of size {dim}")
    }
}

/// Index tensors must hold integers.
fn require_int(t: &Tensor, what: &str) -> Result<(), KernelError> {
    if t.dtype().is_int() {
        Ok(())
    } else {
        kbail!("{what} must be integers, got {}", t.dtype())
    }
}

/// The single value of a one-element input, as i64.
fn scalar_i64(t: &Tensor, what: &str) -> Result<i64, KernelError> {
    match t.to_i64_vec().as_slice() {
        [v] => Ok(*v),
        v => kbail!("{what} must hold one value, holds {}", v.len()),
    }
}

/// Walks the multi-indices of a shape in row-major order, keeping the offset
/// `Σ idx[d] · strides[d]` of each in some buffer up to date.
struct Walk<'a> {
    shape: &'a [usize],
    strides: &'a [usize],
    idx: Vec<usize>,
    /// The offset of the current multi-index.
    offset: usize,
}

impl<'a> Walk<'a> {
    /// Starts at the all-zero index (offset 0).
    fn new(shape: &'a [usize], strides: &'a [usize]) -> Self {
        Walk { shape, strides, idx: vec![0; shape.len()], offset: 0 }
    }

    /// Moves to the next multi-index (wrapping to all zeros after the last).
    fn advance(&mut self) {
        for d in (0..self.shape.len()).rev() {
            self.idx[d] += 1;
            self.offset += self.strides[d];
            if self.idx[d] < self.shape[d] {
                return;
            }
            self.offset -= self.shape[d] * self.strides[d];
            self.idx[d] = 0;
        }
    }
}

/// How a scatter combines an update with the element already there (`reduction`, opset 16 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduction {
    /// The update replaces it.
    None,
    /// Sum.
    Add,
    /// Product.
    Mul,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl Reduction {
    fn of(n: &Node) -> Result<Reduction, KernelError> {
        Ok(match n.attr_s("reduction", "none") {
            "none" => Reduction::None,
            "add" => Reduction::Add,
            "mul" => Reduction::Mul,
            "max" => Reduction::Max,
            "min" => Reduction::Min,
            other => kbail!("unknown reduction '{other}' (none, add, mul, max or min)"),
        })
    }

    /// `old` combined with `new`: floats in f64 (exact for the sum and product of two values of
    /// a narrower type before the one rounding), integers wrapping, bools as or/and; max and min
    /// propagate NaN.
    fn apply<T: Elem>(self, old: T, new: T) -> T {
        let arith = |f: fn(f64, f64) -> f64, g: fn(i64, i64) -> i64| {
            if T::DTYPE.is_float() {
                T::from_f64(f(old.to_f64(), new.to_f64()))
            } else {
                T::from_i64(g(old.to_i64(), new.to_i64()))
            }
        };
        #[allow(clippy::eq_op)]
        let nan = |x: T| x != x;
        match self {
            Reduction::None => new,
            Reduction::Add => arith(|a, b| a + b, i64::wrapping_add),
            Reduction::Mul => arith(|a, b| a * b, i64::wrapping_mul),
            Reduction::Max if nan(old) || new <= old => old,
            Reduction::Min if nan(old) || new >= old => old,
            Reduction::Max | Reduction::Min => new,
        }
    }
}

pub(super) fn register(r: &mut KernelRegistry) {
    gather::register(r);
    movement::register(r);
    select::register(r);
    einsum::register(r);
    misc::register(r);
}
