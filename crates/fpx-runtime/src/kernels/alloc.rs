//! The one place kernels allocate their outputs: every output (and every temporary as large as
//! one) is checked against the [`TensorBudget`] before its memory is asked for, and the memory
//! is reserved fallibly, so a huge shape from a model is a [`KernelError`] naming the shape,
//! the size and the budget — which the executor prefixes with the node — never an abort.
//!
//! Kernels are plain functions ([`super::KernelFn`]), so the budget of the run reaches them
//! through a thread-local that the executor and the constant-folding evaluator set around each
//! kernel call ([`with_budget`]); a kernel called directly sees the default budget. Kernels
//! allocate on the calling thread (worker threads only fill buffers allocated here).
//!
//! Kernels whose outputs can outgrow their inputs use it: ConstantOfShape, Expand, Range,
//! Gather, Concat, Transpose, MatMul, Gemm, QuantMatMul (reference and native), Cast,
//! the broadcasting elementwise ops, Where, Min/Max, the reductions and LayerNormalization's
//! statistics. Kernels whose output is no larger than an input of the same element type
//! (unary maps, Slice, Reshape, Softmax, CumSum, LayerNormalization's Y) allocate directly:
//! they cannot create more than their inputs already hold.

use crate::KernelError;
use fpx_ir::ndarray::ArrayD;
use fpx_ir::{DType, Elem, Tensor, TensorBudget};
use std::cell::Cell;

thread_local! {
    static BUDGET: Cell<TensorBudget> = Cell::new(TensorBudget::default());
}

/// Runs `f` with `budget` as the budget of the kernels it calls on this thread (restored after,
/// also when `f` panics).
pub fn with_budget<R>(budget: TensorBudget, f: impl FnOnce() -> R) -> R {
    struct Restore(TensorBudget);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BUDGET.with(|b| b.replace(budget)));
    f()
}

/// The budget kernels on this thread check against now.
pub fn current_budget() -> TensorBudget {
    BUDGET.with(Cell::get)
}

fn err(e: fpx_ir::BudgetError) -> KernelError {
    KernelError(format!("output: {e}"))
}

/// Checks that a `dtype` tensor of `shape` fits the budget; returns its element count. For
/// outputs that ndarray allocates itself (broadcasts, concatenations, casts): call it first.
pub(crate) fn check(dtype: DType, shape: &[usize]) -> Result<usize, KernelError> {
    current_budget().check(dtype, shape).map_err(err)
}

/// [`check`] for an element type.
pub(crate) fn check_t<T: Elem>(shape: &[usize]) -> Result<usize, KernelError> {
    check(T::DTYPE, shape)
}

/// An empty vector with room for exactly a `T` tensor of `shape`, within the budget.
pub(crate) fn reserve<T: Elem>(shape: &[usize]) -> Result<Vec<T>, KernelError> {
    current_budget().reserve(T::DTYPE, shape).map_err(err)
}

/// A `T` tensor's data of `shape`, every element `value`, within the budget.
pub(crate) fn filled<T: Elem>(shape: &[usize], value: T) -> Result<Vec<T>, KernelError> {
    current_budget().filled(T::DTYPE, shape, value).map_err(err)
}

/// A `T` array of `shape`, every element `value`, within the budget.
pub(crate) fn full<T: Elem>(shape: &[usize], value: T) -> Result<ArrayD<T>, KernelError> {
    Ok(super::array(shape, filled(shape, value)?))
}

/// Collects `len` items of an iterator into a vector reserved within the budget for a `T`
/// tensor of `shape` (`len` = its element count).
pub(crate) fn collect<T: Elem>(shape: &[usize], items: impl IntoIterator<Item = T>) -> Result<Vec<T>, KernelError> {
    let mut v = reserve(shape)?;
    v.extend(items);
    Ok(v)
}

/// f32 buffers of tensors that died during a run, handed to the kernels that overwrite every
/// element of their output ([`overwritten_f32`]): a steady-state run reuses its intermediates'
/// memory instead of asking the allocator (and the kernel, for fresh pages) each time. The
/// executor owns the buffers between runs ([`with_recycling`]); outside such a scope nothing is
/// kept.
#[derive(Debug, Default)]
pub struct Recycled {
    buffers: Vec<Vec<f32>>,
}

impl Recycled {
    /// Buffers kept at most.
    const MAX_BUFFERS: usize = 32;
    /// Elements kept at most, all buffers together (256 MiB of f32).
    const MAX_ELEMS: usize = 64 << 20;

    fn kept_elems(&self) -> usize {
        self.buffers.iter().map(Vec::capacity).sum()
    }
}

thread_local! {
    static RECYCLED: std::cell::RefCell<Option<Recycled>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `pool` as this thread's recycled buffers (see [`Recycled`]) and hands it back
/// after, with what `f`'s kernels left in it.
pub fn with_recycling<R>(pool: Recycled, f: impl FnOnce() -> R) -> (R, Recycled) {
    struct Restore(Option<Recycled>);
    impl Drop for Restore {
        fn drop(&mut self) {
            RECYCLED.with(|r| *r.borrow_mut() = self.0.take());
        }
    }
    let restore = Restore(RECYCLED.with(|r| r.borrow_mut().replace(pool)));
    let out = f();
    let pool = RECYCLED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (out, pool)
}

/// Keeps the buffer of `t` for a later output, when it is an owned f32 tensor of at least 1024
/// elements (smaller ones cost the allocator little), this thread is in a [`with_recycling`]
/// scope and the pool has room; otherwise just drops it.
pub(crate) fn recycle(t: Tensor) {
    let Tensor::F32(a) = t else { return };
    if a.len() < 1024 || !a.is_standard_layout() {
        return;
    }
    let (v, offset) = a.into_raw_vec_and_offset();
    if offset != Some(0) {
        return;
    }
    RECYCLED.with(|r| {
        if let Some(pool) = r.borrow_mut().as_mut() {
            if pool.buffers.len() < Recycled::MAX_BUFFERS && pool.kept_elems() + v.capacity() <= Recycled::MAX_ELEMS {
                pool.buffers.push(v);
            }
        }
    });
}

/// Data for an f32 tensor of `shape` whose every element the caller overwrites before it is
/// read: a recycled buffer when one fits (its old values left in place), else zeros; within
/// the budget either way.
pub(crate) fn overwritten_f32(shape: &[usize]) -> Result<Vec<f32>, KernelError> {
    let n = check_t::<f32>(shape)?;
    let reused = RECYCLED.with(|r| {
        let mut r = r.borrow_mut();
        let pool = r.as_mut()?;
        // The smallest that holds n, and not more than 4 times n (a big buffer stays for a big
        // output); the newest among equals, the warmest in cache.
        let fit = pool.buffers.iter().enumerate().rev().filter(|(_, b)| b.capacity() >= n && b.capacity() <= 4 * n.max(256));
        let i = fit.min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i)?;
        Some(pool.buffers.swap_remove(i))
    });
    match reused {
        Some(mut v) => {
            // Old values stay (the caller overwrites them); only a shortfall is zero-filled.
            if v.len() >= n {
                v.truncate(n);
            } else {
                v.resize(n, 0.0);
            }
            Ok(v)
        }
        None => filled(shape, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_are_reused_only_inside_a_scope_and_fit_the_shape() {
        let big = Tensor::from(ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[64, 64]), vec![7f32; 4096]).unwrap());
        // Outside a scope nothing is kept: a fresh, zeroed buffer.
        recycle(big.clone());
        assert!(overwritten_f32(&[64, 64]).unwrap().iter().all(|&x| x == 0.0));
        let ((), pool) = with_recycling(Recycled::default(), || {
            recycle(big.clone());
            // Too large a buffer for a tiny output is left for a bigger one.
            assert_eq!(overwritten_f32(&[8]).unwrap(), vec![0.0; 8]);
            let v = overwritten_f32(&[32, 64]).unwrap();
            assert_eq!((v.len(), v[0]), (2048, 7.0), "the recycled buffer, cut to the shape");
            recycle(Tensor::from(ArrayD::from_shape_vec(fpx_ir::ndarray::IxDyn(&[2048]), v).unwrap()));
        });
        assert_eq!(pool.buffers.len(), 1, "handed back to the owner");
        // The budget still applies to recycled outputs.
        with_budget(TensorBudget::new(64), || assert!(overwritten_f32(&[64, 64]).is_err()));
    }

    #[test]
    fn the_budget_is_scoped_and_restored() {
        let small = TensorBudget::new(64);
        assert_eq!(current_budget(), TensorBudget::default());
        with_budget(small, || {
            assert_eq!(current_budget(), small);
            assert!(filled::<f32>(&[16], 0.0).is_ok());
            let e = filled::<f32>(&[17], 0.0).unwrap_err().0;
            assert!(e.contains("[17]") && e.contains("68 bytes") && e.contains(fpx_ir::budget::ENV_VAR), "{e}");
        });
        assert_eq!(current_budget(), TensorBudget::default());
        let _ = std::panic::catch_unwind(|| with_budget(small, || panic!("kernel bug")));
        assert_eq!(current_budget(), TensorBudget::default());
    }

    /// Runs `op` of the standard kernels on `inputs` with `attrs`.
    fn run(op: &str, attrs: &[(&str, fpx_ir::Attribute)], inputs: &[&fpx_ir::Tensor]) -> Result<Vec<fpx_ir::Tensor>, KernelError> {
        let mut node = fpx_ir::Node::new("n", op, 17, vec![], vec![]);
        for (k, v) in attrs {
            node.attrs.insert(k.to_string(), v.clone());
        }
        let k = super::super::KernelRegistry::standard().get("", op).expect("kernel");
        k(&node, &inputs.iter().map(|t| Some(*t)).collect::<Vec<_>>())
    }

    /// Empty inputs with huge dimensions (cheap to make) must not make huge outputs or
    /// temporaries: reductions and normalization statistics over an empty axis, an empty
    /// batched product, a long Range.
    #[test]
    fn empty_inputs_with_huge_dimensions_are_refused_or_stay_empty() {
        use fpx_ir::ndarray::IxDyn;
        use fpx_ir::{Attribute, Tensor};
        let wide = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1 << 40, 0])));
        let e = run("ReduceSum", &[("keepdims", Attribute::Int(0))], &[&wide, &Tensor::vec_i64(vec![1])]).unwrap_err().0;
        assert!(e.contains("[1099511627776]"), "{e}");
        let e = run("ReduceMax", &[("axes", Attribute::Ints(vec![1]))], &[&wide]).unwrap_err().0;
        assert!(e.contains("tensor budget"), "{e}");
        let e = run("LayerNormalization", &[], &[&wide, &Tensor::scalar_f32(1.0)]).unwrap_err().0;
        assert!(e.contains("tensor budget"), "{e}");
        let batch = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1 << 40, 0, 1])));
        let y = run("MatMul", &[], &[&batch, &Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1, 1])))]).unwrap();
        assert_eq!(y[0].shape(), &[1 << 40, 0, 1]);
        let (s, l, d) = (Tensor::vec_i64(vec![0]), Tensor::vec_i64(vec![1 << 40]), Tensor::vec_i64(vec![1]));
        let (s, l, d) = (s.reshape(&[]).unwrap(), l.reshape(&[]).unwrap(), d.reshape(&[]).unwrap());
        let e = run("Range", &[], &[&s, &l, &d]).unwrap_err().0;
        assert!(e.contains("int64") && e.contains("8 TiB"), "{e}");
        // Sizes past 2^64 bytes are refused before ndarray sees the shape.
        let e = run("Expand", &[], &[&Tensor::scalar_f32(1.0), &Tensor::vec_i64(vec![1 << 40, 1 << 40])]).unwrap_err().0;
        assert!(e.contains("more than 2^64 bytes"), "{e}");
        let e = run("ConstantOfShape", &[], &[&Tensor::vec_i64(vec![1 << 62, 1 << 62])]).unwrap_err().0;
        assert!(e.contains("more than 2^64 bytes"), "{e}");
        // A cast to a wider type: 16 bools fit 64 bytes, 16 int64 do not.
        let bools = Tensor::from(ArrayD::from_elem(IxDyn(&[16]), false));
        let e = with_budget(TensorBudget::new(64), || run("Cast", &[("to", Attribute::Int(7))], &[&bools])).unwrap_err().0;
        assert!(e.contains("int64") && e.contains("128 bytes"), "{e}");
    }
}
