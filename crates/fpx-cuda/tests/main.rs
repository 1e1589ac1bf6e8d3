//! fpx-cuda's integration tests, one binary: `kernels` (NVRTC + ptxas checks and the CPU
//! emulation of the GEMM; no GPU needed), `gpu` (the FP6 GEMM on a device vs the CPU reference)
//! `gpu_ops` (every op kernel on a device), `sass` (static SASS budgets) and `w4a8` (the W4A8
//! GEMM: NVRTC/ptxas for sm_89/sm_90, its SASS loop, CPU emulation, and on a GPU with FP8 mma
//! the device run vs the CPU reference). GPU tests print `SKIP <test>: <reason>` and pass
//! without a driver, device or NVRTC/ptxas, unless `FPX_REQUIRE` lists `gpu` (then the skip
//! fails the test); `scripts/gpu-check.sh` runs them on a GPU machine.

mod common;
mod gpu;
mod gpu_ops;
mod kernels;
mod sass;
mod w4a8;
