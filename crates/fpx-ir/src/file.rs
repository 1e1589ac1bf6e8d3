//! Opening input files safely: the one check every reader (ONNX models, external data, `.npy`
//! files, artifacts) makes before it reads.
//!
//! Only a regular file is opened. A FIFO would block the open (and then the read) until some
//! writer came along; `/dev/zero` (or a symlink to it) would be read until memory ran out; a
//! folder cannot be read at all. [`open_regular`] looks at the path's metadata (following
//! symlinks) before opening, opens with `O_NONBLOCK` (so a file swapped for a FIFO after the
//! check still cannot block the open) and checks the opened file's own metadata again.
//! [`read_regular`] then reads exactly the size the metadata gave, and refuses a file that grows
//! or shrinks while it is read.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a non-regular file is, in words ("a FIFO", "a character device", ...).
fn kind(t: &FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

fn not_regular(t: &FileType) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("is {}, not a regular file", kind(t)))
}

/// Opens `path` for reading if it is a regular file (symlinks followed); returns the file and
/// its size in bytes. A FIFO, device, socket or folder is an `InvalidInput` error saying what
/// it is ("is a FIFO, not a regular file"); the caller names the path.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let before = std::fs::metadata(path)?;
    if !before.file_type().is_file() {
        return Err(not_regular(&before.file_type()));
    }
    // O_NONBLOCK: if the path was replaced by a FIFO since the check, the open returns at once
    // (and the check below refuses it). For a regular file the flag changes nothing.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_regular(&meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// Reads the whole regular file at `path` (see [`open_regular`]): exactly the size its metadata
/// gives, refusing a file larger than `limit` bytes, one whose size cannot be held in memory,
/// and one that changes size while it is read.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    read_exact_len(file, len, limit)
}

/// Reads exactly `len` bytes (the file's size) from `file`; see [`read_regular`].
pub fn read_exact_len(file: File, len: u64, limit: u64) -> io::Result<Vec<u8>> {
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("is {len} bytes, more than the limit of {limit}")));
    }
    let too_big = || io::Error::new(io::ErrorKind::OutOfMemory, format!("is {len} bytes, too large to hold in memory"));
    let size = usize::try_from(len).ok().filter(|&n| isize::try_from(n).is_ok()).ok_or_else(too_big)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(size).map_err(|_| too_big())?;
    // One byte more than expected: a file that grew is noticed rather than silently cut.
    file.take(len + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("changed size while being read (expected {len} bytes, read {})", buf.len()),
        ));
    }
    Ok(buf)
}

/// No limit beyond what memory holds (for [`read_regular`]).
pub const NO_LIMIT: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `f` in a thread; a call that does not return within 10 s fails the test instead of
    /// hanging the suite.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the call hung (blocked on a FIFO?)")
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fpx-ir-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_read_exactly() {
        let dir = temp_dir("regular");
        let p = dir.join("a.bin");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_regular(&p, NO_LIMIT).unwrap(), b"hello");
        assert_eq!(open_regular(&p).unwrap().1, 5);
        let e = read_regular(&p, 4).unwrap_err();
        assert!(e.to_string().contains("more than the limit of 4"), "{e}");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(read_regular(&p, NO_LIMIT).unwrap(), b"");
        let e = read_regular(&dir, NO_LIMIT).unwrap_err();
        assert!(e.to_string().contains("is a folder, not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fifos_and_devices_are_refused_at_once() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let link = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let cases =
            [(fifo, "is a FIFO, not a regular file"), ("/dev/zero".into(), "is a character device"), (link, "is a character device")];
        for (path, want) in cases {
            let e = within(move || read_regular(&path, NO_LIMIT).unwrap_err().to_string());
            assert!(e.contains(want), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
