//! What candidates run on: a random quantized weight of the product's shape, packed as the
//! kernels read it and copied enough times to rotate through more than the last-level cache
//! (so a timed call reads its weight from memory, as a decode step does); random activations;
//! and the f64 reference every candidate's output is checked against before it is timed.

use fpx_quant::act8::{Activations, Int8Activations};
use fpx_quant::layout::{pack, TILE_N};
use fpx_quant::seeded::SplitMix64;
use fpx_quant::{fold, quantize_channels, QuantConfig, QuantGemm};
use fpx_runtime::native::QmmFn;

use crate::TuneError;

/// Most bytes the rotated weight copies may take together.
const MAX_ROTATION_BYTES: usize = 1 << 30;

/// The tuner's seeded generator: tuning data is random but reproducible.
pub(crate) struct SplitMix(SplitMix64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> SplitMix {
        SplitMix(SplitMix64::new(seed))
    }

    /// Uniform in [-1, 1).
    pub(crate) fn signed(&mut self) -> f32 {
        self.0.signed_f32()
    }

    pub(crate) fn signed_vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.signed()).collect()
    }
}

/// A product's weight ready for the kernels, rotated copies included.
pub struct Fixture {
    /// The product.
    pub gemm: QuantGemm,
    /// Packed copies of the same weight; timed calls take them in turn.
    pub packed: Vec<Vec<u8>>,
    /// Scales as the kernels take them (bias-shift factor folded in), `[groups][n]`.
    pub scales: Vec<f32>,
    /// Per checked column, its dequantized weights over K (the reference's).
    reference_columns: Vec<(usize, Vec<f32>)>,
}

impl Fixture {
    /// A random weight of `gemm`'s shape (seeded by `seed`), with enough copies that they
    /// exceed `cache_bytes` twice (at least one, at most 1 GiB together).
    pub fn new(gemm: &QuantGemm, seed: u64, cache_bytes: usize) -> Result<Fixture, TuneError> {
        let QuantGemm { format, k, n, group_size, .. } = *gemm;
        let mut rng = SplitMix::new(seed);
        let wt = rng.signed_vec(k * n);
        let cfg = QuantConfig { format, group_size: (group_size > 0).then_some(group_size), scale_search: false, pow2_scales: false };
        let (q, _) = quantize_channels("tuning weight", &wt, k, n, &cfg).map_err(|e| TuneError::Fixture(e.to_string()))?;
        drop(wt);
        let packed = pack(&q.codes, &gemm.packed_shape());
        let factor = fold::storage_factor(format);
        let scales: Vec<f32> = q.scales.iter().map(|s| s * factor).collect();
        let table: Vec<f32> = (0..=255u8).map(|c| fold::stored_value(format, c)).collect();
        let groups = gemm.groups();
        let group = if groups == 1 { k } else { group_size };
        let reference_columns = checked_columns(n)
            .into_iter()
            .map(|c| (c, (0..k).map(|r| table[q.codes[c * k + r] as usize] * scales[(r / group) * n + c]).collect()))
            .collect();
        let bytes = packed.len().max(1);
        let copies = (2 * cache_bytes).div_ceil(bytes).clamp(1, (MAX_ROTATION_BYTES / bytes).max(1));
        let packed = vec![packed; copies];
        Ok(Fixture { gemm: *gemm, packed, scales, reference_columns })
    }

    /// Bytes of one packed weight.
    pub fn weight_bytes(&self) -> usize {
        self.packed[0].len()
    }

    /// Runs `kernel` on `m` random rows (seeded) for the checked columns and compares each
    /// output with the f64 reference; `Err` says where it differs. Kernels with int8 or FP8
    /// activations get the rows quantized (as the runtime prepares them), and the reference
    /// multiplies what the codes stand for.
    pub fn verify(&self, kernel: QmmFn, m: usize, seed: u64) -> Result<(), String> {
        let QuantGemm { k, n, .. } = self.gemm;
        let mut rng = SplitMix::new(seed);
        let mut x = rng.signed_vec(m * k);
        if let Some(format) = self.gemm.activations.fp8_format() {
            // What the runtime hands an FP8 product's kernels: the rows rounded to FP8.
            let raw = std::mem::take(&mut x);
            x = vec![0f32; m * k];
            fpx_quant::act_fp8::round_rows(&raw, m, k, format, &mut x).map_err(|e| e.to_string())?;
        }
        let int8 = (self.gemm.activations == Activations::Int8).then(|| Int8Activations::quantize(&x, m, k));
        let x_ptr = match &int8 {
            Some(q) => {
                x = q.dequantized();
                q.as_ptr()
            }
            None => x.as_ptr(),
        };
        let mut y = vec![f32::NAN; m * n];
        for range in column_ranges(n) {
            // SAFETY: x, packed, scales and y are sized for m × k, the packed shape, the groups
            // and m × n; the range starts at a multiple of 16 and ends within N.
            unsafe {
                kernel(
                    x_ptr,
                    m as i64,
                    self.packed[0].as_ptr(),
                    self.scales.as_ptr(),
                    std::ptr::null(),
                    y.as_mut_ptr(),
                    range.0 as i64,
                    range.1 as i64,
                )
            };
        }
        for (c, w) in &self.reference_columns {
            for r in 0..m {
                let (mut want, mut magnitude) = (0f64, 0f64);
                for (xv, wv) in x[r * k..(r + 1) * k].iter().zip(w) {
                    let t = *xv as f64 * *wv as f64;
                    want += t;
                    magnitude += t.abs();
                }
                let got = y[r * n + c] as f64;
                let tol = 1e-4 * magnitude + 1e-6;
                // NaN fails too.
                let close = (got - want).abs() <= tol;
                if !close {
                    return Err(format!("y[{r}][{c}] = {got} at M = {m}, the reference gives {want} (tolerance {tol:.2e})"));
                }
            }
        }
        Ok(())
    }
}

/// The columns the reference checks: the first two tiles and the last one (tails included).
fn checked_columns(n: usize) -> Vec<usize> {
    let mut cols: Vec<usize> = (0..n.min(2 * TILE_N)).collect();
    let last = (n - 1) / TILE_N * TILE_N;
    cols.extend((last.max(2 * TILE_N)..n).collect::<Vec<_>>());
    cols
}

/// The column ranges a check computes (kernels split at multiples of 16).
fn column_ranges(n: usize) -> Vec<(usize, usize)> {
    let first = (0, n.min(2 * TILE_N));
    let last = ((n - 1) / TILE_N * TILE_N, n);
    if last.0 < first.1 {
        vec![first]
    } else {
        vec![first, last]
    }
}
