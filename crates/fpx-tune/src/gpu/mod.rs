//! GPU tuning: for each FP6 product and M bucket, a local search over the GEMM template's tile
//! configs ([`fpx_cuda::GemmConfig`]: token tile, warps, tiles per warp, k-tiles per stage,
//! stages, split-K) that starts at the heuristic's choice. Every candidate is compiled with
//! NVRTC, run on the GPU and checked against the f64 reference before it is timed (a wrong one
//! is [`GpuRejected`] and never kept); times are from DRAM (L2 flushed before every timed
//! launch, CUDA events), interleaved over candidates; a winner is kept only if it beats the
//! heuristic's config by 5 % head to head in paired rounds.
//!
//! The search runs through a [`GemmRunner`]: [`DeviceRunner`] on a GPU; tests drive the same
//! search with a stand-in that computes on the CPU, to check its rules where no GPU is.

mod device;
mod entry;
mod problem;
mod search;

pub use device::DeviceRunner;
pub use entry::{heuristic_for, GpuEntry, GpuLookup, GpuTiling};
pub use problem::GpuProblem;
pub use search::{check_candidate, neighbours, tune_gpu, tune_gpu_product, GpuBucketResult, GpuRejected, GpuTuneOptions, GpuTuneReport};

use fpx_cuda::{Arch, GemmConfig};

use crate::GpuMachine;

/// What the GPU search runs candidates on: a GPU ([`DeviceRunner`]) or, in tests, a stand-in.
/// Errors are messages: a candidate that fails to compile, load or run is rejected with it.
pub trait GemmRunner {
    /// The GPU results are keyed by (its SM count is what the heuristic plans for).
    fn machine(&self) -> GpuMachine;
    /// The PTX architecture candidates are compiled for.
    fn arch(&self) -> Arch;
    /// Makes `problem` the one candidates run on, with activations for every M in `ms`.
    fn set_problem(&mut self, problem: &mut GpuProblem, ms: &[usize]) -> Result<(), String>;
    /// Makes `cfgs` runnable (compiles and loads them; in parallel where it can): per config,
    /// `Err` with why it cannot run.
    fn prepare(&mut self, cfgs: &[GemmConfig]) -> Vec<Result<(), String>>;
    /// The output `[m][n]` of prepared `cfg` on the problem's activations for `m` rows.
    fn run(&mut self, cfg: &GemmConfig, m: usize) -> Result<Vec<f32>, String>;
    /// One timed sample: µs of one call of prepared `cfg` for `m` rows, weights read from DRAM.
    fn time_us(&mut self, cfg: &GemmConfig, m: usize) -> Result<f64, String>;
}
