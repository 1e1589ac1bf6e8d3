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
    /// No CPU kernel exists for this op.
    #[error("node '{node}': no CPU kernel for op '{op}' (domain '{domain}')")]
    NoKernel { node: String, op: String, domain: String },
    /// A caller-supplied input is missing, unknown, or of the wrong type or shape.
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },
    /// A kernel failed while running a node.
    #[error("node '{node}' ({op}): {message}")]
    Kernel { node: String, op: String, message: String },
    /// Reading or writing a tensor file failed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}
