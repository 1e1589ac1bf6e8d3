//! Status codes, the thread's last error message, and the guard every exported function runs
//! its body in: an error becomes a status and a message, a panic becomes `FPX_STATUS_PANIC`
//! (never an unwind into C).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What an fpx C function did. Every function that can fail returns one; on failure
/// `fpx_last_error()` says why.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpxStatus {
    /// Success.
    Ok = 0,
    /// A NULL pointer where one is required, a name that is not UTF-8, a bad dtype code or
    /// shape, a byte size that does not match the shape, a wrong number of outputs.
    InvalidArgument = 1,
    /// The model could not be loaded (missing, damaged, not a model).
    Load = 2,
    /// The model could not run on these inputs (missing input, wrong type or shape, ...).
    Run = 3,
    /// An output buffer is smaller than its output: every output's `byte_size`, `dtype`, `rank`
    /// and `shape` say what is needed; call again with larger buffers.
    BufferTooSmall = 4,
    /// fpx failed inside (a bug): caught at the boundary, reported here, never unwound into C.
    Panic = 5,
}

/// A failure: its status and message.
pub(crate) struct Failure {
    pub status: FpxStatus,
    pub message: String,
}

impl Failure {
    pub fn new(status: FpxStatus, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(FpxStatus::InvalidArgument, message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: Option<String>) {
    // An interior NUL (from a file name) would cut the text: show it as a space instead.
    let text = message.map(|m| CString::new(m.replace('\0', " ")).expect("NULs were replaced"));
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// The message of this thread's last failed call, or NULL if the last call succeeded. Valid
/// until the next fpx call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
}

/// Runs `body`: `Ok` on success, else its status with the message kept for `fpx_last_error`; a
/// panic is caught and reported as `Panic` with its message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> FpxStatus {
    let result = catch_unwind(AssertUnwindSafe(body));
    let (status, message) = match result {
        Ok(Ok(())) => (FpxStatus::Ok, None),
        Ok(Err(f)) => (f.status, Some(f.message)),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            (FpxStatus::Panic, Some(format!("internal error (a bug in fpx, please report it): {what}")))
        }
    };
    set_last_error(message);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> Option<String> {
        let p = last_error_ptr();
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message_and_success_clears_it() {
        assert_eq!(guard(|| panic!("index 7 out of range")), FpxStatus::Panic);
        assert_eq!(last().unwrap(), "internal error (a bug in fpx, please report it): index 7 out of range");
        assert_eq!(guard(|| Err(Failure::new(FpxStatus::Load, "cannot load model 'm\0.fpx'"))), FpxStatus::Load);
        assert_eq!(last().unwrap(), "cannot load model 'm .fpx'");
        assert_eq!(guard(|| Ok(())), FpxStatus::Ok);
        assert_eq!(last(), None);
    }

    #[test]
    fn the_last_error_is_per_thread() {
        assert_eq!(guard(|| Err(Failure::invalid("here"))), FpxStatus::InvalidArgument);
        std::thread::spawn(|| assert_eq!(last(), None)).join().unwrap();
        assert_eq!(last().unwrap(), "here");
    }
}
