//! fpx's runtime: runs a graph. Today: the CPU executor, with a kernel per ONNX op
//! registered in a [`KernelRegistry`]; [`LoadedArtifact`], which opens an `.fpx` artifact, loads
//! its native code and binds each quantized product's kernel table; and `.npy` tensor I/O for the
//! command line.

mod artifact;
mod error;
mod executor;
pub mod kernels;
pub mod native;
pub mod npy;

pub use artifact::LoadedArtifact;
pub use error::{KernelError, RuntimeError};
pub use executor::{CpuEvaluator, CpuExecutor, NodeTiming};
pub use kernels::{KernelFn, KernelRegistry, OwnedKernelFn};
