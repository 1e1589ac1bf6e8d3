//! f32 fast paths of the hot reference kernels: flat loops over contiguous slices that LLVM
//! vectorizes (each compiled twice, for baseline x86-64 and for AVX2 + FMA, picked at run time),
//! vectorizable `exp`/`erf`/`tanh`/`sigmoid`, numpy broadcasting walked row by row, and
//! large work split across the current rayon pool (so `--threads` is respected).
//!
//! Every function here has a generic counterpart in the kernels that call it; the tests of each
//! module compare the two on random data.
//!
//! - `simd`: [`MulAdd`](simd::MulAdd) and the `multiversion!` macro (baseline / AVX2 / AVX-512
//!   builds of one body);
//! - `math`: vectorizable `exp`/`erf`/`tanh`/`sigmoid`/GELU and the unary maps;
//! - `broadcast`: binary arithmetic with numpy broadcasting, walked as contiguous rows;
//! - `rows`: LayerNormalization, Softmax and row sums over the last axis.

pub(crate) mod simd;

mod broadcast;
mod math;
mod rows;

pub(crate) use broadcast::{binary, binary_into_a, binary_into_b, Binary, BroadcastPlan};
pub(crate) use math::{exp_f32, gated, unary, unary_in_place, unary_serial, Unary};
pub(crate) use rows::{layer_norm, row_sums, softmax, LayerNormRows};
pub(crate) use simd::{multiversion, MulAdd};

use rayon::prelude::*;

/// Elements below which work stays on the calling thread.
pub(crate) const PAR_MIN: usize = 1 << 15;
/// Elements per parallel task (about 32 KiB of f32).
const PAR_CHUNK: usize = 1 << 13;

/// Whether work over `len` elements is worth splitting across the current rayon pool.
pub(crate) fn parallel(len: usize) -> bool {
    len >= PAR_MIN && rayon::current_num_threads() > 1
}

/// Calls `f(first_row, chunk)` on `out` cut into whole rows of `inner` elements: chunks of about
/// [`PAR_CHUNK`] elements across the rayon pool when `out` is large, else `out` at once.
pub(crate) fn for_row_chunks<T: Send>(out: &mut [T], inner: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if parallel(out.len()) && inner > 0 {
        let rows = PAR_CHUNK.div_ceil(inner);
        out.par_chunks_mut(rows * inner).enumerate().for_each(|(i, o)| f(i * rows, o));
    } else {
        f(0, out);
    }
}

/// A raw pointer that may cross threads; users write disjoint parts of what it points to.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: only used to write disjoint regions from different threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[cfg(test)]
pub(crate) mod tests {
    use fpx_test_support::Rng;

    /// `n` values uniform in `[lo, hi)` from a generator seeded with `seed`.
    pub(crate) fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.range(lo.into(), hi.into()) as f32).collect()
    }
}
