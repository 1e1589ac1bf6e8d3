//! CPU kernels, one per op, registered by (domain, op type) — the same keys as the IR's
//! op schema registry (`fpx_ir::ops::OpRegistry`).

pub(crate) mod alloc;
mod elementwise;
pub(crate) mod fast;
pub(crate) use fast::SendPtr;
#[cfg(test)]
mod fast_path_tests;
mod indexing;
pub mod kv_append;
mod matmul;
mod nn;
mod nn_extra;
pub mod quant;
mod shape;

use crate::{kbail, KernelError};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{Node, Tensor};
use std::collections::HashMap;

/// A CPU kernel: computes a node's outputs from its inputs (`None` = omitted optional input).
pub type KernelFn = fn(&Node, &[Option<&Tensor>]) -> Result<Vec<Tensor>, KernelError>;

/// A CPU kernel that may take one input by value (reusing its buffer for the output, or
/// reshaping it without a copy): `owned` is input `slot`, whose entry in the inputs is `None`.
/// The executor calls it instead of the [`KernelFn`] when that input is read by no later node.
pub type OwnedKernelFn = fn(&Node, &[Option<&Tensor>], usize, Tensor) -> Result<Vec<Tensor>, KernelError>;

/// CPU kernels by (domain, op type).
#[derive(Clone, Default)]
pub struct KernelRegistry {
    map: HashMap<(String, String), KernelFn>,
    owned: HashMap<(String, String), OwnedKernelFn>,
    owned_slot: HashMap<(String, String), usize>,
}

impl KernelRegistry {
    /// The kernels of every built-in op.
    pub fn standard() -> Self {
        let mut r = KernelRegistry::default();
        elementwise::register(&mut r);
        shape::register(&mut r);
        nn::register(&mut r);
        nn_extra::register(&mut r);
        matmul::register(&mut r);
        quant::register(&mut r);
        kv_append::register(&mut r);
        indexing::register(&mut r);
        r
    }

    /// Registers a kernel for an op of the default ONNX domain.
    pub fn add(&mut self, op_type: &str, k: KernelFn) {
        self.add_in("", op_type, k);
    }

    /// Registers a kernel for an op of `domain`.
    pub fn add_in(&mut self, domain: &str, op_type: &str, k: KernelFn) {
        self.map.insert((domain.to_string(), op_type.to_string()), k);
    }

    /// Registers, for an op of the default ONNX domain, the variant of its kernel that takes
    /// an input by value (the op must also have a [`KernelFn`]).
    pub fn add_owned(&mut self, op_type: &str, k: OwnedKernelFn) {
        self.owned.insert((String::new(), op_type.to_string()), k);
    }

    /// Registers, for an op of `domain`, the by-value variant of its kernel; `slot`, if given, is
    /// the only input it may take by value (otherwise the executor hands over the largest one).
    pub fn add_owned_in(&mut self, domain: &str, op_type: &str, slot: Option<usize>, k: OwnedKernelFn) {
        let key = (domain.to_string(), op_type.to_string());
        if let Some(s) = slot {
            self.owned_slot.insert(key.clone(), s);
        }
        self.owned.insert(key, k);
    }

    /// The one input an op's by-value kernel takes by value, if it is restricted to one.
    pub fn owned_slot(&self, domain: &str, op_type: &str) -> Option<usize> {
        self.owned_slot.get(&(fpx_ir::canonical_domain(domain).to_string(), op_type.to_string())).copied()
    }

    /// The by-value variant of an op's kernel, if it has one.
    pub fn get_owned(&self, domain: &str, op_type: &str) -> Option<OwnedKernelFn> {
        self.owned.get(&(fpx_ir::canonical_domain(domain).to_string(), op_type.to_string())).copied()
    }

    /// The same kernels without their by-value variants (for tests of the executor).
    #[cfg(test)]
    pub(crate) fn without_owned(mut self) -> Self {
        self.owned.clear();
        self.owned_slot.clear();
        self
    }

    /// The kernel for an op, if any (`ai.onnx` is the default domain).
    pub fn get(&self, domain: &str, op_type: &str) -> Option<KernelFn> {
        self.map.get(&(fpx_ir::canonical_domain(domain).to_string(), op_type.to_string())).copied()
    }

    /// The registered (domain, op type) pairs, sorted.
    pub fn ops(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.map.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Input `i`, which the op requires.
pub(crate) fn arg<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, KernelError> {
    match inputs.get(i).copied().flatten() {
        Some(t) => Ok(t),
        None => kbail!("input {i} is required"),
    }
}

/// Optional input `i`.
pub(crate) fn opt_arg<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Option<&'a Tensor> {
    inputs.get(i).copied().flatten()
}

pub(crate) use fpx_ir::shape::row_major_strides;

/// The numpy broadcast of several shapes ([`fpx_ir::shape::broadcast_shape`]).
pub(crate) fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>, KernelError> {
    match fpx_ir::shape::broadcast_shape(shapes) {
        Some(out) => Ok(out),
        None => kbail!("shapes {:?} cannot be broadcast together", shapes),
    }
}

/// Normalizes a possibly negative axis for `rank`.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize, KernelError> {
    match fpx_ir::ops::normalize_axis(a, rank) {
        Some(x) => Ok(x),
        None => kbail!("axis {a} is out of range for rank {rank}"),
    }
}

/// An owned array with the given shape from a vector.
pub(crate) fn array<T>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
}

/// The inputs with `owned` back in its slot: for a by-value kernel that falls back to its
/// by-reference path.
pub(crate) fn with_owned<'a>(inputs: &[Option<&'a Tensor>], slot: usize, owned: &'a Tensor) -> Vec<Option<&'a Tensor>> {
    let mut v = inputs.to_vec();
    if let Some(s) = v.get_mut(slot) {
        *s = Some(owned);
    }
    v
}

/// The contiguous f32 data of a tensor, if it is f32 in standard layout.
pub(crate) fn f32_slice(t: &Tensor) -> Option<&[f32]> {
    match t {
        Tensor::F32(a) => a.as_slice(),
        _ => None,
    }
}

/// The error for an input of an element type the op does not take.
pub(crate) fn bad_type(t: &Tensor) -> KernelError {
    KernelError(format!("element type {} is not supported by this op", t.dtype()))
}

#[cfg(test)]
mod tests {
    use super::KernelRegistry;
    use fpx_ir::ops::OpRegistry;

    #[test]
    fn every_op_schema_has_a_cpu_kernel_and_every_kernel_a_schema() {
        let (schemas, kernels) = (OpRegistry::standard(), KernelRegistry::standard());
        for d in schemas.defs() {
            assert!(kernels.get(d.domain, d.op_type).is_some(), "schema {}:{} has no CPU kernel", d.domain, d.op_type);
        }
        for (domain, op) in kernels.ops() {
            assert!(schemas.get(&domain, &op).is_some(), "kernel {domain}:{op} has no schema");
        }
        for (domain, op) in kernels.owned.keys() {
            assert!(kernels.get(domain, op).is_some(), "by-value kernel {domain}:{op} has no by-reference kernel");
        }
    }
}
