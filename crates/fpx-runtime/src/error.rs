//! Runtime errors: each names the input, node or file at fault.

use fpx_ir::IrError;
use std::path::PathBuf;
use thiserror::Error;

/// A kernel could not compute its node (bad input values, unsupported type, ...).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct KernelError(pub String);

impl KernelError {
    /// A kernel error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        KernelError(msg.into())
    }
}

/// `Err(KernelError)` from a format string.
#[macro_export]
macro_rules! kbail {
    ($($t:tt)*) => { return Err($crate::KernelError(format!($($t)*))) };
}

/// Anything that stops a graph from running.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The graph itself is invalid (cycle, unknown op, ...).
    #[error(transparent)]
    Graph(#[from] IrError),
    /// The tensor budget could not be read (a malformed `FPX_MAX_TENSOR_BYTES`).
    #[error(transparent)]
    Budget(#[from] fpx_ir::BudgetError),
    /// No CPU kernel exists for this op.
    #[error("node '{node}': no CPU kernel for op '{op}' (domain '{domain}')")]
    NoKernel {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// The op's domain (`""` = ONNX).
        domain: String,
    },
    /// A caller-supplied input is missing, unknown, or of the wrong type or shape.
    #[error("input '{name}': {message}")]
    Input {
        /// The input's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A kernel failed while running a node.
    #[error("node '{node}' ({op}): {message}")]
    Kernel {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// An artifact could not be opened (damaged, foreign, another format version).
    #[error(transparent)]
    Artifact(#[from] fpx_artifact::ArtifactError),
    /// No CPU code of the artifact runs on this machine.
    #[error(
        "'{artifact}': its CPU code was compiled for '{target}' and needs CPU features this machine lacks: {}; recompile with `fpx compile --cpu x86-64-v3` (or --cpu native on this machine)",
        missing.join(", ")
    )]
    MissingCpuFeatures {
        /// The artifact.
        artifact: String,
        /// The CPU the code was compiled for.
        target: String,
        /// The features this machine lacks.
        missing: Vec<String>,
    },
    /// The artifact's native code could not be loaded or does not fit its graph.
    #[error("the artifact's CPU code: {message}")]
    NativeCode {
        /// What went wrong.
        message: String,
    },
    /// Reading or writing a tensor file failed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}
