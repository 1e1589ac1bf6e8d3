//! Import errors: each names the file, tensor, node or value at fault.

use fpx_ir::IrError;
use std::path::PathBuf;
use thiserror::Error;

/// Why an ONNX model or tensor could not be imported.
#[derive(Debug, Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf message.
    #[error("{what}: {message}")]
    Parse {
        /// What was parsed (a file path, or "model bytes").
        what: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor (initializer, attribute or `.pb` file) is malformed or of an unsupported type.
    #[error("tensor '{name}': {message}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor's external data cannot be used: outside the model's folder, missing or too short.
    #[error("tensor '{tensor}': external data '{location}': {message}")]
    ExternalData {
        /// The tensor's name.
        tensor: String,
        /// The `location` the tensor gives.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The model uses something fpx does not support (an opset, a domain, a value kind).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The graph is invalid or uses an op fpx does not support (the message names the node).
    #[error(transparent)]
    Ir(#[from] IrError),
}
