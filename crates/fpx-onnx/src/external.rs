//! External tensor data (`data_location = EXTERNAL`), confined to the model's folder.
//!
//! A `location` must be a relative path inside the model's folder: absolute paths and `..`
//! components are rejected outright, and the joined path is canonicalized (symlinks resolved)
//! and must still lie under the canonical folder. All of this is checked before the file is
//! opened, so a rejected location is never read.

use crate::ImportError;
use fpx_ir::stored::FileBytes;
use fpx_ir::{DType, StoredTensor};
use onnx_protobuf::TensorProto;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Where a tensor's external data is, checked: a regular file inside the model's folder that
/// holds `expected` bytes at `offset`.
struct Located {
    path: PathBuf,
    file: std::fs::File,
    offset: u64,
}

/// Resolves and checks tensor `name`'s external data entries; `err` builds the error for them.
fn locate(t: &TensorProto, name: &str, base_dir: Option<&Path>, expected: usize) -> Result<Located, ImportError> {
    let mut location = None;
    let mut offset = None;
    let mut length = None;
    for entry in &t.external_data {
        match entry.key.as_str() {
            "location" => location = Some(entry.value.as_str()),
            "offset" => offset = Some(entry.value.as_str()),
            "length" => length = Some(entry.value.as_str()),
            _ => {}
        }
    }
    let location = location.unwrap_or("");
    let err = |message: String| external_error(name, location, message);
    if location.is_empty() {
        return Err(err("the tensor's external_data has no 'location'".into()));
    }
    let number = |key: &str, v: Option<&str>| -> Result<Option<u64>, ImportError> {
        v.map(|s| s.trim().parse::<u64>().map_err(|_| err(format!("'{key}' is '{s}', not a non-negative integer")))).transpose()
    };
    let offset = number("offset", offset)?.unwrap_or(0);
    let length = number("length", length)?;
    let path = resolve(location, base_dir).map_err(&err)?;

    let expected_u64 = expected as u64;
    if let Some(len) = length {
        if len != expected_u64 {
            return Err(err(format!("'length' is {len} bytes, but the tensor's type and dims need {expected}")));
        }
    }
    // Opened as a regular file only (checked again on the open file, so a FIFO swapped in after
    // `resolve` cannot block us); its size comes from the open file.
    let (file, file_len) = fpx_ir::file::open_regular(&path).map_err(|e| err(format!("cannot open '{}': {e}", path.display())))?;
    let end = offset.checked_add(expected_u64).ok_or_else(|| err(format!("offset {offset} + length {expected} overflows")))?;
    if end > file_len {
        return Err(err(format!("offset {offset} + length {expected} is beyond the end of '{}' ({file_len} bytes)", path.display())));
    }
    Ok(Located { path, file, offset })
}

fn external_error(name: &str, location: &str, message: String) -> ImportError {
    ImportError::ExternalData { tensor: name.to_string(), location: location.to_string(), message }
}

/// Reads the `expected` bytes of tensor `name`'s external data, resolved against `base_dir`.
pub(crate) fn read_external(t: &TensorProto, name: &str, base_dir: Option<&Path>, expected: usize) -> Result<Vec<u8>, ImportError> {
    let Located { path, mut file, offset } = locate(t, name, base_dir, expected)?;
    let err = |message: String| external_error(name, &path.display().to_string(), message);
    file.seek(SeekFrom::Start(offset)).map_err(|e| err(format!("cannot seek in '{}': {e}", path.display())))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(expected).map_err(|_| err(format!("{expected} bytes do not fit in memory")))?;
    buf.resize(expected, 0);
    file.read_exact(&mut buf).map_err(|e| err(format!("cannot read {expected} bytes at offset {offset} of '{}': {e}", path.display())))?;
    Ok(buf)
}

/// The external data files of one import, each opened once and shared by the tensors in it.
#[derive(Default)]
pub(crate) struct ExternalFiles {
    open: HashMap<PathBuf, Arc<FileBytes>>,
}

impl ExternalFiles {
    /// Tensor `name`'s external data as a [`StoredTensor`]: checked like [`read_external`]
    /// but left in its file, to be read when a pass needs it.
    pub(crate) fn stored(
        &mut self,
        t: &TensorProto,
        name: &str,
        base_dir: Option<&Path>,
        dtype: DType,
        shape: &[usize],
        expected: usize,
    ) -> Result<StoredTensor, ImportError> {
        let Located { path, file, offset } = locate(t, name, base_dir, expected)?;
        let source = self.open.entry(path.clone()).or_insert_with(|| Arc::new(FileBytes::new(file, path))).clone();
        Ok(StoredTensor::new(source, offset, dtype, shape.to_vec()))
    }
}

/// The canonical path of `location` inside `base_dir`, or why it is not allowed.
fn resolve(location: &str, base_dir: Option<&Path>) -> Result<PathBuf, String> {
    let base_dir = base_dir.ok_or("the model was imported from bytes without a folder, so external data cannot be resolved")?;
    let rel = Path::new(location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err("absolute paths are not allowed: external data must lie inside the model's folder".into());
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("'..' is not allowed: external data must lie inside the model's folder".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed: external data must lie inside the model's folder".into())
            }
        }
    }
    let base = base_dir.canonicalize().map_err(|e| format!("cannot resolve the model's folder '{}': {e}", base_dir.display()))?;
    let joined = base.join(rel);
    let full = joined.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file '{}' not found", joined.display()),
        _ => format!("cannot resolve '{}': {e}", joined.display()),
    })?;
    if !full.starts_with(&base) {
        return Err(format!("resolves to '{}', outside the model's folder '{}'", full.display(), base.display()));
    }
    Ok(full)
}
