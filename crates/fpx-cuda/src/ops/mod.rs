//! The non-GEMM kernels a transformer graph needs on the GPU: elementwise and broadcast ops,
//! casts, LayerNormalization, Softmax, ReduceSum/ReduceMean, Gather and Transpose, in FP16 or
//! FP32 storage with FP32 math.
//!
//! Each family is one header-free template in `kernels-templates/` ([`OpFamily::template`]),
//! compiled as the shared prelude `ops_common.cuh` + the template + one generated
//! `extern "C" __global__` wrapper per [`OpKernel`] ([`family_source`]), with NVRTC per arch
//! ([`compile_family_ptx`], [`compile_ops_ptx`]; cached in memory like
//! [`compile_ptx`](crate::compile_ptx)). One PTX module per family; the executor loads each and
//! looks kernels up by [`OpKernel::name`].
//!
//! # Kernels and their arguments
//!
//! `T` is `fpx_u16` (FP16 bits) or `float`; `U` a copy unit of 1, 2, 4, 8 or 16 bytes; pointers
//! are device pointers (`CUdeviceptr`), `fpx_u64` is `u64`, `fpx_u32` is `u32`, `float` is `f32`,
//! `fpx_bcast` / `fpx_perm` are [`BcastArgs`] / [`PermArgs`] passed by value. Every block has
//! 256 threads; the grid comes from [`launch_config`]`(kernel, n, cols)` (no dynamic shared
//! memory; a grid with x = 0 means nothing to launch).
//!
//! | kernel | arguments | `n`, `cols` of [`launch_config`] |
//! |---|---|---|
//! | `fpx_{erf,gelu,gelu_tanh,relu,sigmoid,tanh,sqrt,reciprocal,neg,exp,log}_{f16,f32}` | `(const T* x, T* y, fpx_u64 n)` | elements, — |
//! | `fpx_{add,sub,mul,div,pow,max,min}_{f16,f32}` (same shape) | `(const T* a, const T* b, T* y, fpx_u64 n)` | elements, — |
//! | `fpx_{add,...,min}_bcast_{f16,f32}` | `(const T* a, const T* b, T* y, fpx_bcast s)` | `s.numel`, — |
//! | `fpx_cast_{f16_f32,f32_f16,i64_f32,i64_f16}` | `(const From* x, To* y, fpx_u64 n)` | elements, — |
//! | `fpx_layernorm_{f16,f32}` | `(const T* x, const T* gamma, const T* beta, T* y, fpx_u32 rows, fpx_u32 cols, float eps)` | rows, cols |
//! | `fpx_softmax_{f16,f32}` | `(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)` | rows, cols |
//! | `fpx_reduce_{sum,mean}_{f16,f32}` | `(const T* x, T* y, fpx_u32 rows, fpx_u32 cols)` | rows, cols |
//! | `fpx_gather_{b8,b16,b32,b64,b128}` | `(const U* data, const fpx_i64* idx, U* y, fpx_u32 outer, fpx_u32 axis_dim, fpx_u32 n_idx, fpx_u32 inner, int* err)` | output units, — |
//! | `fpx_transpose_{b8,...,b128}` | `(const U* x, U* y, fpx_perm p)` | `p.numel`, — |
//! | `fpx_transpose_tile_{b8,...,b128}` | `(const U* x, U* y, fpx_u32 batch, fpx_u32 rows, fpx_u32 cols)` | batch × rows, cols |
//!
//! [`OpKernel::c_prototype`] gives each exact prototype. The planners turn ONNX shapes into
//! kernel choices and arguments: [`binary_plan`] (numpy broadcasting, dims merged, same-shape
//! fast path), [`transpose_plan`] (merged dims, tiled kernel when the innermost dim moves, wider
//! copy units, or a plain copy), [`gather_plan`] (wider copy units). Softmax, LayerNorm and the
//! reductions work on the last axis of a `[rows][cols]` view. `y` may alias an input of the
//! output's shape and type (in place) for the unary, binary, Softmax and LayerNorm kernels, not
//! for casts, reductions, gathers or transposes. Reshape needs no kernel (same bytes;
//! `cuMemcpyDtoD` when a copy is wanted). Launch requirements: buffers 16-byte aligned for the
//! `b128` units a planner picks (`cuMemAlloc` gives 256); a gather's `err` flag zeroed by the
//! caller beforehand.
//!
//! # Layout
//!
//! `kernels.rs`: the families, ops, storage types and [`OpKernel`]s with their source text;
//! `launch.rs`: [`Geometry`] and [`launch_config`]; `plan.rs`: the planners and their kernel
//! arguments ([`BcastArgs`], [`PermArgs`]), on the shape math of [`fpx_ir::shape`]; `ptx.rs`:
//! NVRTC compilation and its cache; `tests.rs`: the CPU replays of the kernels' index math.
//! Everything is re-exported here.

mod kernels;
mod launch;
mod plan;
mod ptx;
#[cfg(test)]
mod tests;

pub use kernels::*;
pub use launch::*;
pub use plan::*;
pub use ptx::*;

/// Threads per block of every op kernel (the templates' `FPX_THREADS`, `__launch_bounds__`).
pub const OP_THREADS: u32 = 256;
/// The most blocks [`launch_config`] gives an element-parallel kernel (they loop grid-stride).
pub const MAX_GRID: u32 = 65535;
/// The most dims a broadcast or transpose has after merging (the templates' `FPX_MAX_RANK`).
pub const MAX_RANK: usize = 6;
/// The most elements (units) of the kernels with 32-bit index math.
pub const MAX_INDEXED: usize = u32::MAX as usize;

/// Shapes or sizes the op kernels cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpShapeError {
    /// Two shapes that numpy broadcasting rejects.
    #[error("shapes {a:?} and {b:?} do not broadcast")]
    Broadcast {
        /// First input's shape.
        a: Vec<usize>,
        /// Second input's shape.
        b: Vec<usize>,
    },
    /// More than [`MAX_RANK`] dims remain after merging.
    #[error("{what}: {rank} dims after merging adjacent ones, at most {MAX_RANK}")]
    Rank {
        /// The op.
        what: &'static str,
        /// The merged rank.
        rank: usize,
    },
    /// A size beyond the kernels' 32-bit index math or the launch limits.
    #[error("{what}: {count} is too large (at most {max})")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not a permutation of `0..rank`.
    #[error("{perm:?} is not a permutation of the {rank} dims")]
    Perm {
        /// The permutation.
        perm: Vec<usize>,
        /// The tensor's rank.
        rank: usize,
    },
    /// An axis outside `-rank..rank`.
    #[error("axis {axis} is out of range for rank {rank}")]
    Axis {
        /// The axis as given.
        axis: i64,
        /// The tensor's rank.
        rank: usize,
    },
    /// An element size the copy kernels have no unit for.
    #[error("element size {0} is not 1, 2, 4, 8 or 16 bytes")]
    ElemSize(usize),
}

fn too_large(what: &'static str, count: usize, max: usize) -> Result<(), OpShapeError> {
    if count > max {
        Err(OpShapeError::TooLarge { what, count, max })
    } else {
        Ok(())
    }
}
