//! A memory cap for fuzzing: a global allocator that counts live bytes and, when an allocation
//! would take them past the cap, saves the input being run and aborts.
//!
//! A reader that allocates from a size it read instead of the bytes it has is a finding, but the
//! operating system kills such a process (or the machine swaps) long before Rust reports anything,
//! and the input is lost. Under this allocator the input is written to [`CappedAllocator::arm`]'s
//! file first, so the run that found it can be replayed, and the allocation's backtrace is
//! printed. The allocator never unwinds (`GlobalAlloc` must not): it writes with a file opened in
//! advance and aborts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Live bytes allocated through [`CappedAllocator`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The cap in bytes; 0 until [`CappedAllocator::arm`] (no cap).
static CAP: AtomicUsize = AtomicUsize::new(0);
/// The input being run (pointer and length), written out when the cap is hit.
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
/// Where the input goes when the cap is hit, opened by `arm` (writing must not allocate).
static SINK: OnceLock<(File, PathBuf)> = OnceLock::new();

/// The system allocator with a cap on live bytes; register it with `#[global_allocator]`.
#[derive(Debug, Default)]
pub struct CappedAllocator;

impl CappedAllocator {
    /// Caps live heap bytes at `cap` from now on; an input that needs more is written to `sink`
    /// (created now, left empty unless the cap is hit) before the process aborts.
    pub fn arm(cap: usize, sink: &Path) -> std::io::Result<()> {
        let file = File::create(sink)?;
        let _ = SINK.set((file, sink.to_path_buf()));
        CAP.store(cap, Ordering::SeqCst);
        Ok(())
    }

    /// Marks `input` as the input being run until the next call (it must stay alive until then).
    pub fn running(input: &[u8]) {
        CURRENT_LEN.store(input.len(), Ordering::SeqCst);
        CURRENT.store(input.as_ptr().cast_mut(), Ordering::SeqCst);
    }

    /// Live heap bytes now.
    pub fn live_bytes() -> usize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Reserves `size` more live bytes, or saves the input and aborts if that passes the cap.
    fn reserve(size: usize) {
        let cap = CAP.load(Ordering::Relaxed);
        let before = LIVE.fetch_add(size, Ordering::Relaxed);
        if cap != 0 && before.saturating_add(size) > cap {
            exhausted(before, size, cap);
        }
    }
}

/// Writes the running input to the sink and aborts. Allocates nothing.
#[cold]
fn exhausted(live: usize, size: usize, cap: usize) -> ! {
    CAP.store(0, Ordering::SeqCst);
    let mut err = std::io::stderr();
    let _ = writeln!(err, "fpx-fuzz: an allocation of {size} bytes with {live} live passes the {cap}-byte memory cap");
    let (ptr, len) = (CURRENT.load(Ordering::SeqCst), CURRENT_LEN.load(Ordering::SeqCst));
    if let Some((file, path)) = SINK.get() {
        if !ptr.is_null() {
            // SAFETY: `running` stored the pointer and length of a slice its caller keeps alive
            // while the input runs, and this is called during that run.
            let input = unsafe { std::slice::from_raw_parts(ptr, len) };
            let mut f: &File = file;
            if f.write_all(input).and_then(|()| f.sync_all()).is_ok() {
                let _ = writeln!(err, "fpx-fuzz: the input ({len} bytes) is saved in {}", path.display());
            }
        }
    }
    // The cap is off now (stored 0 above), so the backtrace may allocate.
    let _ = writeln!(err, "fpx-fuzz: where it was asked for:\n{}", std::backtrace::Backtrace::force_capture());
    std::process::abort()
}

// SAFETY: every method forwards to `System` with the same layout; the counters only observe.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::reserve(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::reserve(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            Self::reserve(new_size - layout.size());
        }
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}
