//! Files that are not regular files (a FIFO, `/dev/zero`, a symlink to it), for checking that
//! readers refuse them at once instead of hanging or reading until memory runs out.

use crate::TempDir;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// Special files created in `dir`: each path with the words its refusal must contain.
/// `name` is the file name the FIFO and the symlink get (e.g. `model.onnx`), so a reader that
/// goes by the extension sees the name it expects.
pub fn special_files(dir: &TempDir, name: &str) -> Vec<(PathBuf, &'static str)> {
    let sub = dir.join(format!("special-{name}"));
    std::fs::create_dir_all(sub.join("fifo")).expect("create folder");
    std::fs::create_dir_all(sub.join("link")).expect("create folder");
    let fifo = sub.join("fifo").join(name);
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {} failed", fifo.display());
    let link = sub.join("link").join(name);
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink to /dev/zero");
    vec![(fifo, "is a FIFO, not a regular file"), (PathBuf::from("/dev/zero"), "is a character device"), (link, "is a character device")]
}

/// Runs `f` on another thread and returns its result; a call that has not returned within 10 s
/// fails the test (a reader blocked on a FIFO) instead of hanging the suite.
pub fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} did not return within 10 s (blocked on a FIFO?)"))
}
