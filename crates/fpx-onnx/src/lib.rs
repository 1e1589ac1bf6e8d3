//! ONNX import for fpx: reads an ONNX `ModelProto` (protobuf, through the `onnx-protobuf`
//! crate) into an [`fpx_ir::Graph`].
//!
//! The importer maps opset imports, initializers (every numeric element type, inline or as
//! external data confined to the model's folder), typed graph inputs and outputs, and nodes
//! with their attributes. Each node is checked against [`fpx_ir::ops::OpRegistry::standard`]
//! before it is added, so an unsupported op or opset is an error naming the node, op, domain and
//! opset. `Constant` nodes become constant values. Finally types are inferred and the graph is
//! verified. No input makes the importer panic: malformed data is an [`ImportError`].

mod error;
mod external;
mod import;
mod tensor;

pub use error::ImportError;
pub use onnx_protobuf;
pub use tensor::{load_tensor_pb, tensor_from_proto, tensor_to_proto};

use fpx_ir::Graph;
use std::path::Path;

/// Reads and imports the ONNX model at `path`; external data is resolved inside the model's folder.
/// Only a regular file is read (a FIFO or device is refused at once, see [`fpx_ir::file`]).
pub fn load_model(path: &Path) -> Result<Graph, ImportError> {
    let bytes = read_file(path)?;
    let base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    import::import(&bytes, Some(base_dir), &path.display().to_string())
}

/// Imports a serialized ONNX model. External data is resolved inside `base_dir`; with `None`,
/// a model that uses external data is an error.
pub fn import_model_bytes(bytes: &[u8], base_dir: Option<&Path>) -> Result<Graph, ImportError> {
    import::import(bytes, base_dir, "model bytes")
}

/// The bytes of the regular file at `path` (exactly its size; FIFOs and devices refused).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ImportError> {
    fpx_ir::file::read_regular(path, fpx_ir::file::NO_LIMIT).map_err(|source| ImportError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests;
