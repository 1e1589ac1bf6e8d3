//! Native CPU kernels compiled ahead of time (by `fpx-llvm`) and shipped inside an artifact:
//! loading the shared object from memory without leaving a file behind, and calling the
//! quantized-product kernels across threads.

use crate::kernels::fast::{gated, unary_serial, Unary};
use crate::kernels::quant::LorcProjection;
use crate::kernels::SendPtr;
use crate::{KernelError, RuntimeError};
use fpx_ir::ops::quant_matmul::{Activation, Epilogue, GATE_BLOCK};
use fpx_quant::act8::{Activations, Int8Activations};
use fpx_quant::{KernelTable, QuantGemm};
use std::ffi::CString;

/// The C ABI of a generated QuantMatMul kernel: computes `y[r][c]` for every row `r < m` and
/// column `c` in `[n_begin, n_end)`; `y`'s row stride is N (a constant of the kernel).
pub type QmmFn = unsafe extern "C" fn(
    x: *const f32,
    m: i64,
    packed: *const u8,
    scales: *const f32,
    bias: *const f32,
    y: *mut f32,
    n_begin: i64,
    n_end: i64,
);

/// A shared object loaded from bytes. The code stays mapped while this value lives.
pub struct NativeLibrary {
    lib: Option<libloading::Library>,
    /// The in-memory file the library was opened from. It stays open while the library is
    /// loaded: `dlopen` recognizes an already-loaded library by its path, so a reused
    /// `/proc/self/fd/N` would return the old library instead of loading the new one.
    fd: libc::c_int,
}

impl Drop for NativeLibrary {
    fn drop(&mut self) {
        drop(self.lib.take());
        // SAFETY: `fd` is the memfd this value owns; closed once, after the library.
        unsafe { libc::close(self.fd) };
    }
}

impl std::fmt::Debug for NativeLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeLibrary")
    }
}

fn err(message: impl Into<String>) -> RuntimeError {
    RuntimeError::NativeCode { message: message.into() }
}

impl NativeLibrary {
    /// Loads a shared object held in memory: written to an anonymous in-memory file
    /// (`memfd_create`) and opened through `/proc/self/fd`, so no file is left on disk.
    ///
    /// # Safety
    /// Loading runs the library's initializers and its code is trusted: load only artifacts
    /// you trust.
    pub unsafe fn load(bytes: &[u8]) -> Result<NativeLibrary, RuntimeError> {
        let name = CString::new("fpx-cpu-kernels").expect("no NUL");
        // SAFETY: plain system calls on a descriptor this function owns; the library's code runs
        // only when the caller (who vouched for it) loads it below.
        unsafe {
            // MFD_CLOEXEC keeps the file out of child processes.
            let fd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(err(format!("memfd_create failed: {}", std::io::Error::last_os_error())));
            }
            let mut written = 0usize;
            while written < bytes.len() {
                let n = libc::write(fd, bytes[written..].as_ptr().cast(), bytes.len() - written);
                if n <= 0 {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(err(format!("cannot stage the shared object in memory: {e}")));
                }
                written += n as usize;
            }
            let path = format!("/proc/self/fd/{fd}");
            match libloading::Library::new(&path) {
                Ok(lib) => Ok(NativeLibrary { lib: Some(lib), fd }),
                Err(e) => {
                    libc::close(fd);
                    Err(err(format!("cannot load the shared object: {e}")))
                }
            }
        }
    }

    /// An artifact's kernel table bound to this library's entry points (each entry's symbol,
    /// column split and thread cap).
    pub fn bind(&self, table: &KernelTable<fpx_artifact::CpuKernel>) -> Result<KernelTable<NativeKernel>, RuntimeError> {
        table.try_map(|e| Ok(NativeKernel { f: self.qmm(&e.symbol)?, column_split: e.column_split as usize, threads: e.threads as usize }))
    }

    /// The kernel exported under `symbol`.
    pub fn qmm(&self, symbol: &str) -> Result<QmmFn, RuntimeError> {
        // SAFETY: the symbol was generated with exactly the `QmmFn` signature (fpx-llvm's ABI).
        let lib = self.lib.as_ref().expect("loaded until dropped");
        unsafe { lib.get::<QmmFn>(symbol.as_bytes()).map(|s| *s).map_err(|e| err(format!("kernel '{symbol}' is missing: {e}"))) }
    }
}

/// One compiled kernel entry point and the column multiple at which threads may split N.
#[derive(Clone, Copy)]
pub struct NativeKernel {
    /// The kernel.
    pub f: QmmFn,
    /// Threads split `[0, N)` at multiples of this (a multiple of the kernels' 16-row tile).
    pub column_split: usize,
    /// Most threads N is split across; 0 = every thread of the current pool.
    pub threads: usize,
}

impl std::fmt::Debug for NativeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativeKernel(split {}, threads {})", self.column_split, self.threads)
    }
}

/// A QuantMatMul node's compiled kernels: the product they compute and which kernel serves
/// which M (the artifact's kernel table, picked from the same way for every backend).
#[derive(Debug, Clone)]
pub struct NativeQmm {
    /// The product (from the node's attributes).
    pub gemm: QuantGemm,
    /// The kernels by M.
    pub kernels: KernelTable<NativeKernel>,
}

impl NativeQmm {
    /// Whether the kernels take X prepared ([`PreparedActivations`]: int8 or FP8): `run`
    /// prepares X once per call (or takes it prepared) and hands every thread that buffer.
    pub fn prepares_activations(&self) -> bool {
        self.gemm.activations != Activations::F32
    }

    /// Runs `P[m][n] = x[m][k] · W + bias (+ correction)` with the kernel the table picks for `m`
    /// (`correction`: a LoRC product's `(X · U) · V`, of which each thread adds its block of
    /// columns right after the kernel wrote them, before the epilogue), splitting N
    /// across the current rayon pool's threads at multiples of its column split, and writes
    /// `y = epilogue(P) (+ residual)` ([`Epilogue`]; `y` and `residual` are `m` rows of
    /// `epilogue.output_columns(n)`). Each thread applies the epilogue to a block of columns as
    /// soon as the kernel has written it, while it is in cache. Kernels with int8 or FP8
    /// activations take `prepared` ([`prepare_activations`] of this `x`, when several kernels
    /// multiply the same `x`), or prepare `x` here when it is `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        prepared: Option<&PreparedActivations>,
        m: usize,
        packed: &[u8],
        scales: &[f32],
        bias: Option<&[f32]>,
        correction: Option<&LorcProjection<'_>>,
        epilogue: &Epilogue,
        residual: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        let (k, n) = (self.gemm.k, self.gemm.n);
        let width = epilogue.output_columns(n);
        if x.len() != m * k || y.len() != m * width || bias.is_some_and(|b| b.len() != n) {
            return Err(KernelError::new(format!("native kernel: buffers do not match m={m}, k={k}, n={n}")));
        }
        if residual.is_some_and(|r| r.len() != m * width) || residual.is_some() != epilogue.residual {
            return Err(KernelError::new(format!("native kernel: the residual does not match Y (m={m}, {width} columns)")));
        }
        if epilogue.gated && !n.is_multiple_of(2 * GATE_BLOCK) {
            return Err(KernelError::new(format!("native kernel: a gated product needs N a multiple of {}", 2 * GATE_BLOCK)));
        }
        let shape = self.gemm.packed_shape();
        if packed.len() != shape.total_bytes() || scales.len() != self.gemm.groups() * n {
            return Err(KernelError::new(format!(
                "native kernel: the packed weight ({} bytes) or scales ({} values) do not match {}",
                packed.len(),
                scales.len(),
                self.gemm
            )));
        }
        if let Some(q) = prepared {
            if q.rows() != m || q.k() != k || q.activations() != self.gemm.activations {
                return Err(KernelError::new(format!(
                    "native kernel: the prepared activations ({} x {}, {}) are not {m} x {k}, {}",
                    q.rows(),
                    q.k(),
                    q.activations(),
                    self.gemm.activations
                )));
            }
        }
        if correction.is_some_and(|c| c.rows() != m || c.n() != n) {
            return Err(KernelError::new(format!("native kernel: the LoRC correction is not {m} x {n}")));
        }
        if m == 0 {
            return Ok(());
        }
        let kernel = *self.kernels.pick(m);
        let owned;
        let prepared = match prepared {
            Some(q) => Some(q),
            None => {
                owned = prepare_activations(self.gemm.activations, x, m, k);
                owned.as_ref()
            }
        };
        // A gated product's threads split at whole gate/up block pairs.
        let pair = if epilogue.gated { 2 * GATE_BLOCK } else { 1 };
        let split = lcm(kernel.column_split.max(1), pair);
        // The product goes straight into y unless the epilogue narrows it (gated): then into a
        // scratch of P's shape, of which each thread touches its own columns.
        if epilogue.gated {
            // The scratch is a tensor of P's shape: within the same budget as any output.
            crate::kernels::alloc::check_t::<f32>(&[m, n])?;
        }
        let mut scratch = if epilogue.gated { take_scratch(m * n) } else { Vec::new() };
        let product = SendPtr(if epilogue.gated { scratch.as_mut_ptr() } else { y.as_mut_ptr() });
        let out = SendPtr(y.as_mut_ptr());
        let fused = FusedEpilogue::new(epilogue, residual, width);
        // Columns per kernel call: the whole chunk without an epilogue or correction, else a
        // block whose m rows stay in cache until they are read again.
        let block =
            if fused.is_none() && correction.is_none() { usize::MAX } else { (EPILOGUE_BLOCK_ELEMS / m).max(1).div_ceil(split) * split };
        let pool = rayon::current_num_threads().max(1);
        let threads = if kernel.threads == 0 { pool } else { kernel.threads.min(pool) };
        let tiles = n.div_ceil(split);
        let per = tiles.div_ceil(threads).max(1);
        let call = |t: usize| {
            let bias_ptr = bias.map_or(std::ptr::null(), |b| b.as_ptr());
            let (b, e) = ((t * per * split).min(n), ((t + 1) * per * split).min(n));
            let x_ptr = prepared.map_or(x.as_ptr(), |q| q.as_ptr());
            let mut c = b;
            while c < e {
                let c2 = e.min(c.saturating_add(block));
                let p = &product;
                // SAFETY: buffers were checked against m, k, n and the packed shape above (the
                // prepared buffer was built from them; the scratch holds m × n); each call writes only
                // columns [c, c2) of every row, disjoint across threads (threads share the output
                // through `SendPtr`).
                unsafe { (kernel.f)(x_ptr, m as i64, packed.as_ptr(), scales.as_ptr(), bias_ptr, p.0, c as i64, c2 as i64) };
                if let Some(corr) = correction {
                    for r in 0..m {
                        // SAFETY: as above: row r's columns [c, c2) of P, this thread's own.
                        let row = unsafe { std::slice::from_raw_parts_mut(p.0.add(r * n + c), c2 - c) };
                        corr.add_to(row, r, c);
                    }
                }
                if let Some(f) = &fused {
                    let (p, o) = (&product, &out);
                    // SAFETY: as above: this thread's columns of P (just written) and of y.
                    unsafe { f.apply(p.0, o.0, m, n, c, c2) };
                }
                c = c2;
            }
        };
        let chunks = tiles.div_ceil(per);
        if chunks <= 1 {
            call(0);
        } else {
            rayon::scope(|s| {
                for t in 0..chunks {
                    let call = &call;
                    s.spawn(move |_| call(t));
                }
            });
        }
        if epilogue.gated {
            put_back_scratch(scratch);
        }
        Ok(())
    }
}

/// Elements of P (rows × columns) a thread computes per kernel call when an epilogue follows:
/// about 64 KiB, so the block is still in L1/L2 when the epilogue reads it.
const EPILOGUE_BLOCK_ELEMS: usize = 16 * 1024;

/// The largest scratch buffer a thread keeps between products: 64 MiB.
const SCRATCH_KEEP_BYTES: usize = 64 << 20;

/// Scratch buffers a thread keeps (a gated product's P beside the FP8 rows of one or two X).
const SCRATCH_KEEP_BUFFERS: usize = 4;

/// A thread's kept buffers of one element type (see [`SCRATCH`] and [`WORD_SCRATCH`]).
struct ScratchPool<T>(Vec<Vec<T>>);

impl<T: Copy + Default> ScratchPool<T> {
    /// A buffer of at least `len` elements (contents unspecified): the smallest kept one that
    /// holds `len` (the most recently kept of equal ones), else the largest, grown.
    fn take(&mut self, len: usize) -> Vec<T> {
        let pool = &mut self.0;
        // Newest first among equals (`min_by_key` keeps the first minimum): the warmest in cache.
        let fits = pool.iter().enumerate().rev().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
        let pick = fits.or_else(|| pool.iter().enumerate().max_by_key(|(_, b)| b.capacity()).map(|(i, _)| i));
        let mut v = pick.map(|i| pool.swap_remove(i)).unwrap_or_default();
        if v.len() < len {
            v.resize(len, T::default());
        }
        v
    }

    /// Keeps `v` for a later product, unless it is very large or enough are kept.
    fn put(&mut self, v: Vec<T>) {
        let bytes = v.capacity() * std::mem::size_of::<T>();
        if bytes <= SCRATCH_KEEP_BYTES && bytes > 0 && self.0.len() < SCRATCH_KEEP_BUFFERS {
            self.0.push(v);
        }
    }
}

thread_local! {
    /// The calling thread's scratch buffers — gated products' P, FP8-rounded activations —
    /// reused across calls so a decode step neither allocates them nor faults their pages in
    /// again.
    static SCRATCH: std::cell::RefCell<ScratchPool<f32>> = const { std::cell::RefCell::new(ScratchPool(Vec::new())) };
    /// The calling thread's int8 activation buffers ([`Int8Activations`] words), likewise.
    static WORD_SCRATCH: std::cell::RefCell<ScratchPool<u32>> = const { std::cell::RefCell::new(ScratchPool(Vec::new())) };
}

/// A scratch of at least `len` elements (contents unspecified), from this thread's pool.
fn take_scratch(len: usize) -> Vec<f32> {
    SCRATCH.with_borrow_mut(|p| p.take(len))
}

/// Keeps `v` for the next product on this thread, unless it is very large or enough are kept.
fn put_back_scratch(v: Vec<f32>) {
    SCRATCH.with_borrow_mut(|p| p.put(v))
}

/// The least common multiple of two positive numbers.
fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// An epilogue as the native path applies it: the activation's fast version, and the residual.
struct FusedEpilogue<'a> {
    activation: Option<Unary>,
    gated: bool,
    residual: Option<&'a [f32]>,
    /// Y's columns.
    width: usize,
}

impl<'a> FusedEpilogue<'a> {
    /// `None` when the epilogue is the identity.
    fn new(epilogue: &Epilogue, residual: Option<&'a [f32]>, width: usize) -> Option<FusedEpilogue<'a>> {
        let activation = epilogue.activation.map(|a| match a {
            Activation::Relu => Unary::Relu,
            Activation::Silu => Unary::Silu,
            Activation::Gelu => Unary::Gelu,
        });
        (!epilogue.is_identity()).then_some(FusedEpilogue { activation, gated: epilogue.gated, residual, width })
    }

    /// Applies the epilogue to P's columns `[c, c2)` of rows `0..m` (`p`: row stride `n`),
    /// writing y's matching columns (row stride `width`; the same buffer as `p` unless gated).
    ///
    /// # Safety
    /// `p` holds `m × n` and `y` `m × width` elements; the columns are this caller's alone, and
    /// for a gated product `c` and `c2` are multiples of `2 · GATE_BLOCK` (or `c2 = n`).
    unsafe fn apply(&self, p: *mut f32, y: *mut f32, m: usize, n: usize, c: usize, c2: usize) {
        let (yc, yc2) = if self.gated { (c / 2, c2 / 2) } else { (c, c2) };
        for r in 0..m {
            // SAFETY: rows and columns in bounds (the caller's contract); p and y do not overlap
            // when gated, and are the same row segment (used once, mutably) when not.
            let yrow = unsafe { std::slice::from_raw_parts_mut(y.add(r * self.width + yc), yc2 - yc) };
            if self.gated {
                let prow = unsafe { std::slice::from_raw_parts(p.add(r * n + c), c2 - c) };
                gated(self.activation, GATE_BLOCK, prow, yrow);
            } else if let Some(a) = self.activation {
                unary_serial(a, yrow);
            }
            if let Some(res) = self.residual {
                let rrow = &res[r * self.width + yc..r * self.width + yc2];
                yrow.iter_mut().zip(rrow).for_each(|(y, r)| *y += r);
            }
        }
    }
}

/// Activations prepared for the kernels of a product with int8 or FP8 activations: built once
/// per run for every product that reads the same X.
#[derive(Debug, Clone, PartialEq)]
pub enum PreparedActivations {
    /// The buffer int8 kernels read ([`quantize_activations`]).
    Int8(Int8Activations),
    /// The rows rounded to FP8 ([`fpx_quant::act_fp8::round_rows`]): exact `f32` values, which
    /// the `f32` kernels of an FP8 product read (in a thread scratch buffer, kept for reuse when
    /// this is dropped).
    Fp8 {
        /// `fp8-e4m3` or `fp8-e5m2`.
        activations: Activations,
        /// Rows.
        rows: usize,
        /// Columns.
        k: usize,
        /// The rounded rows, row-major.
        values: Vec<f32>,
    },
}

impl Drop for PreparedActivations {
    /// The buffers go back to the thread's scratch pools for the next product.
    fn drop(&mut self) {
        match self {
            PreparedActivations::Fp8 { values, .. } => put_back_scratch(std::mem::take(values)),
            PreparedActivations::Int8(q) => WORD_SCRATCH.with_borrow_mut(|p| p.put(q.take_words())),
        }
    }
}

impl PreparedActivations {
    /// The activations these are prepared for.
    pub fn activations(&self) -> Activations {
        match self {
            PreparedActivations::Int8(_) => Activations::Int8,
            PreparedActivations::Fp8 { activations, .. } => *activations,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        match self {
            PreparedActivations::Int8(q) => q.rows(),
            PreparedActivations::Fp8 { rows, .. } => *rows,
        }
    }

    /// Columns.
    pub fn k(&self) -> usize {
        match self {
            PreparedActivations::Int8(q) => q.k(),
            PreparedActivations::Fp8 { k, .. } => *k,
        }
    }

    /// The pointer a kernel's `x` argument takes.
    pub fn as_ptr(&self) -> *const f32 {
        match self {
            PreparedActivations::Int8(q) => q.as_ptr(),
            PreparedActivations::Fp8 { values, .. } => values.as_ptr(),
        }
    }
}

/// `x` (`m × k`) prepared for kernels of a product with `activations`: `None` for `f32` (the
/// kernels read `x` itself), else int8 buffers or FP8-rounded rows, rows in parallel on the
/// current rayon pool when there are many.
pub fn prepare_activations(activations: Activations, x: &[f32], m: usize, k: usize) -> Option<PreparedActivations> {
    use rayon::prelude::*;
    match activations {
        Activations::F32 => None,
        Activations::Int8 => Some(PreparedActivations::Int8(quantize_activations(x, m, k))),
        Activations::Fp8E4M3 | Activations::Fp8E5M2 => {
            let format = activations.fp8_format().expect("an FP8 choice");
            // A kept scratch (returned when the preparation is dropped): no fresh pages per product.
            let mut values = take_scratch(m * k);
            values.truncate(m * k);
            let rows = x.chunks(k.max(1)).zip(values.chunks_mut(k.max(1)));
            if m * k >= PARALLEL_QUANTIZE && rayon::current_num_threads() > 1 {
                rows.collect::<Vec<_>>().into_par_iter().for_each(|(r, o)| round_fp8_row(r, format, o));
            } else {
                rows.for_each(|(r, o)| round_fp8_row(r, format, o));
            }
            Some(PreparedActivations::Fp8 { activations, rows: m, k, values })
        }
    }
}

/// The `m × k` activations `x` quantized for int8 kernels ([`fpx_quant::act8`]), rows in
/// parallel on the current rayon pool when there are many.
pub fn quantize_activations(x: &[f32], m: usize, k: usize) -> Int8Activations {
    use rayon::prelude::*;
    let mut q = Int8Activations::zeroed_in(m, k, WORD_SCRATCH.with_borrow_mut(|p| p.take(Int8Activations::words_for(m, k))));
    let threads = rayon::current_num_threads();
    // Chunks of consecutive rows (quantized many blocks at a time across row ends): two per
    // thread when the work is worth splitting, else one.
    let per = if m * k >= PARALLEL_QUANTIZE && threads > 1 { m.div_ceil(2 * threads) } else { m }.max(1);
    let chunks = q.row_chunks_mut(per);
    if chunks.len() > 1 {
        chunks.into_par_iter().enumerate().for_each(|(c, rows)| {
            let (r0, r1) = (c * per, c * per + rows.rows());
            rows.quantize_fast(&x[r0 * k..r1 * k]);
        });
    } else {
        chunks.into_iter().for_each(|rows| rows.quantize_fast(x));
    }
    q
}

/// One row rounded to FP8 ([`fpx_quant::act_fp8::round_row`]), vectorized for AVX2 where the
/// CPU has it (the same results either way: rounding to an integer is exact on every ISA).
fn round_fp8_row(x: &[f32], format: fpx_quant::Format, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32], format: fpx_quant::Format, out: &mut [f32]) {
            fpx_quant::act_fp8::round_row(x, format, out)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU supports AVX2.
            return unsafe { avx2(x, format, out) };
        }
    }
    fpx_quant::act_fp8::round_row(x, format, out)
}

/// Activations (elements) from which quantizing them is split across threads.
const PARALLEL_QUANTIZE: usize = 32 * 1024;

pub use fpx_artifact::missing_cpu_features;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The activation buffer the probe kernel was last handed.
    static SEEN: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn probe(x: *const f32, _: i64, _: *const u8, _: *const f32, _: *const f32, _: *mut f32, _: i64, _: i64) {
        SEEN.store(x as usize, Ordering::SeqCst);
    }

    #[test]
    fn prepared_activations_are_used_and_checked() {
        let (m, k, n) = (2, 40, 16);
        let gemm = QuantGemm { format: fpx_quant::Format::Int4, k, n, group_size: 0, activations: Activations::Int8 };
        let q = NativeQmm { gemm, kernels: KernelTable::single(NativeKernel { f: probe, column_split: 16, threads: 0 }) };
        let (packed, scales) = (vec![0u8; gemm.packed_shape().total_bytes()], vec![1f32; n]);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 - 30.0).collect();
        let prepared = prepare_activations(Activations::Int8, &x, m, k).unwrap();
        assert_eq!(prepared, PreparedActivations::Int8(fpx_quant::act8::Int8Activations::quantize(&x, m, k)));
        let mut y = vec![0f32; m * n];
        q.run(&x, Some(&prepared), m, &packed, &scales, None, None, &Epilogue::default(), None, &mut y).unwrap();
        assert_eq!(SEEN.load(Ordering::SeqCst), prepared.as_ptr() as usize, "the kernel got the prepared buffer");
        let wrong = prepare_activations(Activations::Int8, &x[..k], 1, k).unwrap();
        let err = q.run(&x, Some(&wrong), m, &packed, &scales, None, None, &Epilogue::default(), None, &mut y).unwrap_err();
        assert!(err.0.contains("not 2 x 40"), "{}", err.0);
        // FP8 rows prepared for another product (or another FP8 format) are refused too.
        let fp8 = prepare_activations(Activations::Fp8E4M3, &x, m, k).unwrap();
        let err = q.run(&x, Some(&fp8), m, &packed, &scales, None, None, &Epilogue::default(), None, &mut y).unwrap_err();
        assert!(err.0.contains("fp8-e4m3") && err.0.contains("int8"), "{}", err.0);
        let q8 = NativeQmm { gemm: QuantGemm { activations: Activations::Fp8E4M3, ..gemm }, ..q.clone() };
        q8.run(&x, Some(&fp8), m, &packed, &scales, None, None, &Epilogue::default(), None, &mut y).unwrap();
        assert_eq!(SEEN.load(Ordering::SeqCst), fp8.as_ptr() as usize);
        // Unprepared: the kernel reads the FP8-rounded rows, not x.
        q8.run(&x, None, m, &packed, &scales, None, None, &Epilogue::default(), None, &mut y).unwrap();
        assert_ne!(SEEN.load(Ordering::SeqCst), x.as_ptr() as usize);
        let PreparedActivations::Fp8 { values, .. } = &fp8 else { panic!("fp8") };
        let mut want = vec![0f32; m * k];
        fpx_quant::act_fp8::round_rows(&x, m, k, fpx_quant::Format::Fp8E4M3, &mut want).unwrap();
        assert_eq!(values, &want);
        // Dropped FP8 rows go back to this thread's scratch: the next preparation (here of the
        // other rows, a buffer of the same size) reuses them and still computes its own values.
        let (kept, reversed) = (fp8.as_ptr(), x.iter().rev().copied().collect::<Vec<f32>>());
        drop(fp8);
        let again = prepare_activations(Activations::Fp8E4M3, &reversed, m, k).unwrap();
        assert_eq!(again.as_ptr(), kept, "the kept buffer is reused");
        let PreparedActivations::Fp8 { values, .. } = &again else { panic!("fp8") };
        fpx_quant::act_fp8::round_rows(&reversed, m, k, fpx_quant::Format::Fp8E4M3, &mut want).unwrap();
        assert_eq!(values, &want);
        assert!(prepare_activations(Activations::F32, &x, m, k).is_none());
        let err = q.run(&x, None, m, &packed[1..], &scales, None, None, &Epilogue::default(), None, &mut y).unwrap_err();
        assert!(err.0.contains("do not match int4 k=40 n=16"), "{}", err.0);
    }
}
