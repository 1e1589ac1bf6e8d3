//! This machine's arithmetic peaks (`fpx peak`): the int8 dot-product and `f32` FMA rates a
//! compute-bound kernel is compared with, measured now, as `fpx membw` measures the read
//! bandwidth a weight-streaming one is compared with.
//!
//! Each thread runs a loop of independent multiply-adds on registers (12 accumulators, enough to
//! cover the instructions' latency on every core we know) with the widest instruction the CPU
//! has: `vpdpbusd` on 512 bits (AVX-512 VNNI) or 256 bits (AVX-VNNI), else `vpmaddubsw` +
//! `vpmaddwd` + `vpaddd` (AVX2, three instructions per 32 byte products, as fpx's AVX2 int8
//! kernels do); `vfmadd` on 512 or 256 bits. The loops' sums are checked against their closed
//! form, so a measurement that did not run its instructions is an error, not a fast number.

use std::time::Instant;

use serde::Serialize;

use crate::bench::check_threads;
use crate::Error;

/// One measurement of [`measure`].
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    /// Threads run at once, each on its own loop.
    pub threads: usize,
    /// Int8 operations per second, all threads together, in 10⁹ (a multiply-add is 2).
    pub int8_gops: f64,
    /// The instruction the int8 loop ran (`vpdpbusd zmm`, ...), or why none ran.
    pub int8_instruction: String,
    /// `f32` operations per second (an FMA is 2), in 10⁹.
    pub f32_gflops: f64,
    /// The instruction the `f32` loop ran.
    pub f32_instruction: String,
    /// Seconds of the best of the passes, per loop.
    pub seconds: f64,
}

/// Independent accumulators per loop.
const CHAINS: usize = 12;

/// Loop iterations per pass: 12 × 32 M instructions, about 0.08 s at 2 per cycle and 2.5 GHz
/// (the int8 loops' lanes reach −24 × 32 M, well within `i32`).
const ITERS: u64 = 32 << 20;

/// Passes; the best counts.
const PASSES: usize = 3;

/// A loop kind: what it runs, and per iteration its multiply-adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    Vnni512,
    AvxVnni,
    Avx2Int8,
    Fma512,
    Fma256,
}

impl Loop {
    fn name(self) -> &'static str {
        match self {
            Loop::Vnni512 => "vpdpbusd zmm (AVX-512 VNNI)",
            Loop::AvxVnni => "vpdpbusd ymm (AVX-VNNI)",
            Loop::Avx2Int8 => "vpmaddubsw + vpmaddwd + vpaddd ymm (AVX2)",
            Loop::Fma512 => "vfmadd231ps zmm (AVX-512)",
            Loop::Fma256 => "vfmadd231ps ymm (FMA)",
        }
    }

    /// Multiply-adds per iteration of all chains.
    fn macs_per_iter(self) -> u64 {
        let per_chain = match self {
            Loop::Vnni512 => 64,
            Loop::AvxVnni | Loop::Avx2Int8 => 32,
            Loop::Fma512 => 16,
            Loop::Fma256 => 8,
        };
        per_chain * CHAINS as u64
    }

    /// The best int8 and `f32` loops this CPU runs.
    #[cfg(target_arch = "x86_64")]
    fn best() -> (Option<Loop>, Option<Loop>) {
        use std::arch::is_x86_feature_detected as has;
        let int8 = if has!("avx512f") && has!("avx512vnni") {
            Some(Loop::Vnni512)
        } else if has!("avxvnni") {
            Some(Loop::AvxVnni)
        } else if has!("avx2") {
            Some(Loop::Avx2Int8)
        } else {
            None
        };
        let f32 = if has!("avx512f") {
            Some(Loop::Fma512)
        } else if has!("fma") && has!("avx") {
            Some(Loop::Fma256)
        } else {
            None
        };
        (int8, f32)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn best() -> (Option<Loop>, Option<Loop>) {
        (None, None)
    }

    /// Runs `iters` iterations; returns the sum of every lane of every chain.
    fn run(self, iters: u64) -> f64 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `best` picked only loops whose target features this CPU has.
        unsafe {
            match self {
                Loop::Vnni512 => x86::vnni512(iters),
                Loop::AvxVnni => x86::avx_vnni(iters),
                Loop::Avx2Int8 => x86::avx2_int8(iters),
                Loop::Fma512 => x86::fma512(iters),
                Loop::Fma256 => x86::fma256(iters),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = iters;
            unreachable!("no loop is picked on this architecture")
        }
    }

    /// What [`Loop::run`] returns after `iters` iterations (see the module's inputs).
    fn expected(self, iters: u64) -> f64 {
        let lanes = match self {
            Loop::Vnni512 | Loop::Fma512 => 16,
            Loop::AvxVnni | Loop::Avx2Int8 | Loop::Fma256 => 8,
        } * CHAINS as u64;
        match self {
            // Each i32 lane gains 4 × (A_U8 · B_I8) per iteration (one lane's bytes).
            Loop::Vnni512 | Loop::AvxVnni | Loop::Avx2Int8 => (lanes * iters) as f64 * 4.0 * x86::A_U8 as f64 * x86::B_I8 as f64,
            // x ← x · FMA_MUL + FMA_ADD, from 0: the fixed point FMA_ADD / (1 − FMA_MUL) is
            // not reached in float, so compare against the same recurrence in f32.
            Loop::Fma512 | Loop::Fma256 => {
                let mut x = 0f32;
                for _ in 0..iters {
                    let next = x.mul_add(x86::FMA_MUL, x86::FMA_ADD);
                    if next == x {
                        break;
                    }
                    x = next;
                }
                lanes as f64 * x as f64
            }
        }
    }
}

/// Times `kind` on `threads` threads at once: the best of [`PASSES`] passes, checked.
fn time_loop(kind: Loop, threads: usize, iters: u64) -> Result<(f64, f64), Error> {
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let start = std::sync::Barrier::new(threads);
        let sums: Vec<(f64, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let t = Instant::now();
                        let sum = kind.run(iters);
                        (t.elapsed().as_secs_f64(), sum)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a peak loop does not panic")).collect()
        });
        let want = kind.expected(iters);
        if let Some((_, got)) = sums.iter().find(|(_, got)| *got != want) {
            return Err(Error::Options(format!(
                "the {} loop summed {got}, not {want}: its instructions did not run as written",
                kind.name()
            )));
        }
        best = best.min(sums.iter().map(|(secs, _)| *secs).fold(0.0, f64::max));
    }
    let ops = 2.0 * (kind.macs_per_iter() * iters * threads as u64) as f64;
    Ok((ops / best / 1e9, best))
}

/// Measures the int8 and `f32` peaks with `threads` threads (1 to [`crate::bench::MAX_THREADS`]).
pub fn measure(threads: usize) -> Result<Peak, Error> {
    check_threads(threads)?;
    let (int8, f32) = Loop::best();
    let mut seconds = 0f64;
    let mut one = |kind: Option<Loop>| -> Result<(f64, String), Error> {
        match kind {
            Some(k) => {
                let (rate, secs) = time_loop(k, threads, ITERS)?;
                seconds = seconds.max(secs);
                Ok((rate, k.name().to_string()))
            }
            None => Ok((0.0, "none: this CPU has neither AVX2 nor AVX-512".to_string())),
        }
    };
    let (int8_gops, int8_instruction) = one(int8)?;
    let (f32_gflops, f32_instruction) = one(f32)?;
    Ok(Peak { threads, int8_gops, int8_instruction, f32_gflops, f32_instruction, seconds })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The loops: `CHAINS` accumulators, each updated once per iteration from the same two
    //! registers (hidden from the optimizer), then summed.
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// The unsigned byte operand of the int8 loops.
    pub(super) const A_U8: u8 = 3;
    /// The signed byte operand.
    pub(super) const B_I8: i8 = -2;
    /// The FMA loops' multiplier and addend.
    pub(super) const FMA_MUL: f32 = 0.5;
    pub(super) const FMA_ADD: f32 = 1.0;

    /// Sum of the `i32` lanes of `v` as f64 (exact: every lane is far below 2⁵³).
    fn lanes_i32<const N: usize>(v: [i32; N]) -> f64 {
        v.iter().map(|&x| x as f64).sum()
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni512(iters: u64) -> f64 {
        let (a, b) = (black_box(_mm512_set1_epi8(A_U8 as i8)), black_box(_mm512_set1_epi8(B_I8)));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        acc.iter().map(|v| lanes_i32(unsafe { std::mem::transmute::<__m512i, [i32; 16]>(*v) })).sum()
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn avx_vnni(iters: u64) -> f64 {
        let (a, b) = (black_box(_mm256_set1_epi8(A_U8 as i8)), black_box(_mm256_set1_epi8(B_I8)));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm256_dpbusd_avx_epi32(*x, a, b);
            }
        }
        acc.iter().map(|v| lanes_i32(unsafe { std::mem::transmute::<__m256i, [i32; 8]>(*v) })).sum()
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_int8(iters: u64) -> f64 {
        let (a, b) = (black_box(_mm256_set1_epi8(A_U8 as i8)), black_box(_mm256_set1_epi8(B_I8)));
        let ones = black_box(_mm256_set1_epi16(1));
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                let pairs = _mm256_maddubs_epi16(a, b);
                *x = _mm256_add_epi32(*x, _mm256_madd_epi16(pairs, ones));
            }
        }
        acc.iter().map(|v| lanes_i32(unsafe { std::mem::transmute::<__m256i, [i32; 8]>(*v) })).sum()
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: u64) -> f64 {
        let (m, c) = (black_box(_mm512_set1_ps(FMA_MUL)), black_box(_mm512_set1_ps(FMA_ADD)));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, c);
            }
        }
        acc.iter().map(|v| unsafe { std::mem::transmute::<__m512, [f32; 16]>(*v) }.iter().map(|&x| x as f64).sum::<f64>()).sum()
    }

    #[target_feature(enable = "avx,fma")]
    pub(super) unsafe fn fma256(iters: u64) -> f64 {
        let (m, c) = (black_box(_mm256_set1_ps(FMA_MUL)), black_box(_mm256_set1_ps(FMA_ADD)));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..black_box(iters) {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, c);
            }
        }
        acc.iter().map(|v| unsafe { std::mem::transmute::<__m256, [f32; 8]>(*v) }.iter().map(|&x| x as f64).sum::<f64>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every loop this CPU runs sums to its closed form (short runs), and the measurement
    /// reports positive rates from the loops it names.
    #[test]
    fn loops_run_their_instructions_and_rates_are_reported() {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let mut kinds = vec![];
            if has!("avx2") {
                kinds.push(Loop::Avx2Int8);
            }
            if has!("avx") && has!("fma") {
                kinds.push(Loop::Fma256);
            }
            if has!("avx512f") {
                kinds.push(Loop::Fma512);
                if has!("avx512vnni") {
                    kinds.push(Loop::Vnni512);
                }
            }
            if has!("avxvnni") {
                kinds.push(Loop::AvxVnni);
            }
            for k in kinds {
                for iters in [0, 1, 7, 1000] {
                    assert_eq!(k.run(iters), k.expected(iters), "{k:?} after {iters} iterations");
                }
            }
            // One lane of the int8 loops after one iteration: 4 × 3 × −2.
            assert_eq!(Loop::Avx2Int8.expected(1), (8 * CHAINS) as f64 * -24.0);
        }
        let (int8, f32) = Loop::best();
        if int8.is_none() || f32.is_none() {
            println!("skipped: this CPU has no AVX2/FMA (the peak loops are x86 SIMD)");
            return;
        }
        let (rate, secs) = time_loop(int8.unwrap(), 1, 1 << 12).unwrap();
        assert!(rate > 0.0 && rate.is_finite() && secs > 0.0, "{rate} {secs}");
        assert!(measure(0).is_err(), "0 threads is refused");
    }
}
