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
use fpx_ir::{DType, Elem, TensorBudget};
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

#[cfg(test)]
mod tests {
    use super::*;

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
