//! fpx-tune: the auto-tuner. For each quantized product of a model and each M bucket
//! ([`MBucket`]: 1, 2–4, …, > 256) it searches the kernel's configurations on this machine —
//! on the CPU the loop (GEMV or GEMM: where the crossover lies), the register blocking of each
//! loop and the panel size ([`fpx_llvm::CpuTiling`]), and the thread split — and keeps the
//! fastest in a [`TuningDb`], which `fpx compile` reads to write those choices into the
//! artifact's kernel tables (the same `(max_m, kernel)` rows the heuristic writes).
//!
//! How a search is kept honest:
//! - every candidate is checked against an f64 reference on random data before it is timed;
//!   a wrong one is reported ([`Rejected`]) and never kept;
//! - timing goes through the runtime's own call path ([`fpx_runtime::native::NativeQmm`], so
//!   the thread split is timed as it runs), with warm-up calls, interleaved rounds (drift hits
//!   every candidate alike), medians, and weights rotated through copies that exceed the
//!   last-level cache twice (a decode step reads its weights from memory);
//! - the budget goes where it matters: products by the bytes they stream, candidates pruned to
//!   distinct loops ([`fpx_llvm::loop_shape`]) and by successive halving, and a winner is kept
//!   only if it beats the heuristic's choice by 5 % head to head in paired rounds (four in five
//!   faster), so a tuned table is never slower than the untuned one by more than noise.
//!
//! The database keys each result by machine ([`CpuMachine`]), CPU level, kernel-generator
//! checksum ([`fpx_llvm::CODEGEN_CHECKSUM`]: a changed generator makes its entries stale),
//! product shape and bucket; tuning again merges.
//!
//! On a GPU ([`gpu`]): the FP6 GEMM template's tile configs (token tile, warps, tiles per warp,
//! k-tiles per stage, stages, split-K) by a local search from the heuristic's config, each
//! candidate compiled with NVRTC and checked on the device against the f64 reference before it
//! is timed from DRAM with CUDA events; results keyed by GPU (name, compute capability, SMs,
//! driver), PTX architecture and GEMM-template checksum ([`fpx_cuda::template_checksum`]).

mod bucket;
mod compare;
mod cpu;
pub mod db;
mod fixture;
pub mod gpu;
mod machine;
mod timing;

pub use bucket::MBucket;
pub use compare::{compare_tables, Comparison};
pub use cpu::{
    candidate_kernels, tune_cpu, tune_product, BucketResult, CpuTuneOptions, CpuTuneReport, KernelSet, ProductResult, Rejected, TuneEvent,
    TuneShape,
};
pub use db::{parse_product, CpuEntry, CpuLookup, DbError, Shape, TunedChoice, TuningDb};
pub use fixture::Fixture;
pub use machine::{last_level_cache_bytes, CpuMachine, GpuMachine};

/// Why tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Generating or compiling candidates failed.
    #[error(transparent)]
    Llvm(#[from] fpx_llvm::LlvmError),
    /// Loading candidates failed.
    #[error(transparent)]
    Runtime(#[from] fpx_runtime::RuntimeError),
    /// The random weight could not be made.
    #[error("cannot make the tuning weight: {0}")]
    Fixture(String),
    /// This machine cannot tune what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The database could not be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The GPU could not be used.
    #[error(transparent)]
    Cuda(#[from] fpx_cuda::CudaError),
}
