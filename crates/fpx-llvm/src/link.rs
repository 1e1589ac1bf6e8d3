//! Linking an object into a shared library with the system C compiler driver (`cc -shared`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::LlvmError;

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `fpx-llvm-<pid>-<nanos>-<counter>` in the system temp dir.
    pub(crate) fn new() -> std::io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("fpx-llvm-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Links `object` (an ELF x86-64 relocatable object) into a shared library and returns its
/// bytes. The compiler driver is `$CC` if set, else `cc`. The link is reproducible: the same
/// object gives the same bytes (GNU ld's build id is a hash of the contents).
pub(crate) fn link_shared(object: &[u8]) -> Result<Vec<u8>, LlvmError> {
    let dir = TempDir::new()?;
    let obj = dir.path().join("kernels.o");
    let so = dir.path().join("kernels.so");
    std::fs::write(&obj, object)?;
    let cc = std::env::var("CC").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "cc".to_string());
    let output = Command::new(&cc)
        .arg("-shared")
        .arg("-Wl,-z,noexecstack")
        .arg("-Wl,--hash-style=gnu")
        .arg("-o")
        .arg(&so)
        .arg(&obj)
        .output()
        .map_err(|e| LlvmError::Link(format!("cannot run `{cc}`: {e}")))?;
    if !output.status.success() {
        return Err(LlvmError::Link(format!("`{cc}` exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(std::fs::read(&so)?)
}
