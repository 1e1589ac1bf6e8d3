//! The checks every front end (the CLI, the Python package) makes on the files it is given
//! before any work: the model is a file, and an artifact's output path can be written without
//! replacing the model.

use crate::Error;
use std::path::Path;

/// Whether `a` and `b` name the same existing file: the same device and inode (hard links, and
/// symbolic links, which are followed), or the same canonical path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y),
    }
}

/// Checks that `model` exists and is a file.
pub fn check_model_file(model: &Path) -> Result<(), Error> {
    if !model.exists() {
        return Err(Error::Path(format!("model file '{}' does not exist", model.display())));
    }
    if !model.is_file() {
        return Err(Error::Path(format!("'{}' is not a file", model.display())));
    }
    Ok(())
}

/// Checks, before any work, that the artifact can go to `output` (given as `flag`, e.g. `-o`):
/// not the model itself (by path, hard link or symbolic link), not a folder, and in a folder
/// that exists.
pub fn check_artifact_path(output: &Path, model: &Path, flag: &str) -> Result<(), Error> {
    if same_file(output, model) {
        return Err(Error::Path(format!(
            "{flag} '{}' is the model '{}': writing the artifact there would replace the model; choose another output file",
            output.display(),
            model.display()
        )));
    }
    if output.is_dir() {
        return Err(Error::Path(format!("{flag} '{}' is a folder; give the artifact's file name (e.g. model.fpx)", output.display())));
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::Path(format!("cannot write '{}': the folder '{}' does not exist", output.display(), parent.display())));
    }
    Ok(())
}
