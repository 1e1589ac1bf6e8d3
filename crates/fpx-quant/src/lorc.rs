//! LoRC, low-rank compensation (ZeroQuant-V2, used by ZeroQuant-FP's W4A8): the quantization
//! error of a weight, `E = W − Q(W)` (`[k][n]`), approximated by a rank-`r` product `U · V`
//! (`U` `[k][r]`, `V` `[r][n]`), the truncated SVD of `E`. A product then computes
//! `X · Q(W) + (X · U) · V`: a few `r · (k + n)` extra parameters (stored as FP16) remove the
//! error's largest directions.
//!
//! How the factors are found: the eigendecomposition of the Gram matrix of `E`'s smaller side
//! (`E · Eᵀ` or `Eᵀ · E`, in `f64`) gives the top singular vectors; the other factor is `E`
//! projected on them, so at full rank `U · V = E` up to rounding, and the error falls with the
//! rank exactly as the singular values say. Above [`EXACT_MAX_DIM`] (LLM-sized weights) the
//! singular vectors come from a randomized range finder with power iterations (Halko, Martinsson
//! and Tropp) on a subspace a little larger than `r`, then the same exact step inside it.
//! The singular values are split evenly (`U·√σ`, `√σ·V`) so both factors have FP16's range.

use crate::layout::{self, PackedShape};
use crate::{Format, QuantError, QuantizedMatrix, WeightLayout, WeightValues};
use nalgebra::{DMatrix, SymmetricEigen};

/// The quantization error `W − Q(W)` (`[k][n]` row-major) of the weight `w` as stored (`layout`)
/// quantized to `q`, whose codes are in `packed` (the 4+2 bytes; `q.codes` may be empty, as
/// the packing quantizer leaves them).
pub fn weight_error(w: &WeightValues<'_>, layout: WeightLayout, q: &QuantizedMatrix, packed: &[u8]) -> Vec<f32> {
    let (k, n) = (q.k, q.n);
    let codes = if q.codes.is_empty() { layout::unpack(packed, &PackedShape::new(n, k, q.format.bits())) } else { q.codes.clone() };
    let dequantized = QuantizedMatrix { codes, ..q.clone() }.dequantize();
    let mut channels = vec![0f32; n * k];
    crate::channel_major::channel_block_into(w, k, n, layout == WeightLayout::ChannelMajor, 0, n, &mut channels);
    (0..k * n).map(|i| channels[(i % n) * k + i / n] - dequantized[i]).collect()
}

/// Largest smaller dimension of `E` factorized exactly; larger ones use the randomized range
/// finder.
pub const EXACT_MAX_DIM: usize = 1024;

/// Columns the randomized range finder adds to the rank, and its power iterations.
const OVERSAMPLE: usize = 16;
const POWER_ITERATIONS: usize = 3;

/// A rank-`rank` factorization `U · V` of a `[k][n]` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRank {
    /// Rows of the approximated matrix (the weight's K).
    pub k: usize,
    /// Columns (the weight's N).
    pub n: usize,
    /// The rank `r`.
    pub rank: usize,
    /// `U`, `[k][r]` row-major.
    pub u: Vec<f32>,
    /// `V`, `[r][n]` row-major.
    pub v: Vec<f32>,
}

impl LowRank {
    /// The rank-`rank` truncated SVD of `e` (`[k][n]` row-major), as the module docs describe.
    /// `rank` is capped at `min(k, n)` (full rank); 0 is an error.
    pub fn of(e: &[f32], k: usize, n: usize, rank: usize) -> Result<LowRank, QuantError> {
        Self::of_with(e, k, n, rank, EXACT_MAX_DIM)
    }

    /// [`LowRank::of`] with the exact/randomized threshold given (tests use a small one).
    pub fn of_with(e: &[f32], k: usize, n: usize, rank: usize, exact_max_dim: usize) -> Result<LowRank, QuantError> {
        let bad = |message: String| QuantError::Shape { tensor: "low-rank factors".into(), message };
        if Some(e.len()) != k.checked_mul(n) || k == 0 || n == 0 {
            return Err(bad(format!("{} values are not a non-empty {k} x {n} matrix", e.len())));
        }
        if rank == 0 {
            return Err(bad("the rank must be at least 1".into()));
        }
        let rank = rank.min(k).min(n);
        let m = DMatrix::from_row_iterator(k, n, e.iter().map(|&v| v as f64));
        let (u, sv) = if k.min(n) <= exact_max_dim { exact(&m, rank) } else { randomized(&m, rank) };
        // Balanced factors: U·√σ and √σ·V (σ_i = the norm of row i of Σ·V).
        let mut uf = vec![0f32; k * rank];
        let mut vf = vec![0f32; rank * n];
        for i in 0..rank {
            let sigma = sv.row(i).norm();
            let (su, sv_inv) = if sigma > 0.0 { (sigma.sqrt(), 1.0 / sigma.sqrt()) } else { (0.0, 0.0) };
            for r in 0..k {
                uf[r * rank + i] = (u[(r, i)] * su) as f32;
            }
            for c in 0..n {
                vf[i * n + c] = (sv[(i, c)] * sv_inv) as f32;
            }
        }
        Ok(LowRank { k, n, rank, u: uf, v: vf })
    }

    /// `U · V`, `[k][n]` row-major (in `f64`, rounded once).
    pub fn reconstruct(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for r in 0..self.k {
            for c in 0..self.n {
                let s: f64 = (0..self.rank).map(|i| self.u[r * self.rank + i] as f64 * self.v[i * self.n + c] as f64).sum();
                out[r * self.n + c] = s as f32;
            }
        }
        out
    }

    /// The factors rounded to FP16 (as an artifact stores them), still as `f32` values.
    pub fn rounded_to_f16(&self) -> LowRank {
        let round = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        LowRank { u: round(&self.u), v: round(&self.v), ..self.clone() }
    }

    /// Bytes of both factors in FP16: `2 · r · (k + n)`.
    pub fn f16_bytes(&self) -> usize {
        2 * self.rank * (self.k + self.n)
    }
}

/// How LoRC factors are stored: FP16 (the default, as ZeroQuant-V2) or the codes of a float
/// format ([`QuantizedFactors`]: FP8 as ZeroQuant-FP, or fpx's narrower FP6/FP5/FP4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FactorStorage {
    /// FP16 values: `2 · r · (k + n)` bytes.
    #[default]
    F16,
    /// Codes of a float format with one scale per rank component and factor.
    Quantized(Format),
}

impl FactorStorage {
    /// `f16` (or `fp16`), or a float format's name (`fp8-e4m3`, `fp6-e2m3`, ...); `None` for
    /// anything else (integer formats included: the factors' values are not integers).
    pub fn parse(s: &str) -> Option<FactorStorage> {
        match s {
            "f16" | "fp16" => Some(FactorStorage::F16),
            other => Format::parse(other).filter(|f| f.is_float()).map(FactorStorage::Quantized),
        }
    }

    /// `f16` or the format's name (what [`FactorStorage::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            FactorStorage::F16 => "f16",
            FactorStorage::Quantized(f) => f.name(),
        }
    }

    /// Bytes of rank-`rank` factors of a `[k][n]` weight stored this way (codes and scales).
    pub fn bytes(self, k: usize, n: usize, rank: usize) -> usize {
        match self {
            FactorStorage::F16 => 2 * rank * (k + n),
            FactorStorage::Quantized(f) => {
                crate::dense::packed_len(rank * k, f.bits()) + crate::dense::packed_len(rank * n, f.bits()) + 4 * 2 * rank
            }
        }
    }

    /// `lr` as this storage holds it: the values a product multiplies (FP16-rounded or
    /// dequantized) and, when quantized, the stored codes.
    pub fn store(self, lr: &LowRank) -> Result<(LowRank, Option<QuantizedFactors>), QuantError> {
        match self {
            FactorStorage::F16 => Ok((lr.rounded_to_f16(), None)),
            FactorStorage::Quantized(f) => {
                let q = QuantizedFactors::quantize(lr, f)?;
                Ok((q.dequantize(), Some(q)))
            }
        }
    }
}

/// LoRC factors quantized to a float format: per rank component `i`, `U`'s column `i` (`k`
/// values) and `V`'s row `i` (`n` values) each get a scale (their absmax over the format's
/// largest value; 1 when all are zero) and codes rounded to nearest, ties to even. The codes are
/// densely packed ([`crate::dense`]), component-major: `u_codes` holds `U`'s columns one after
/// the other, `v_codes` `V`'s rows.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedFactors {
    /// The codes' format (a float format).
    pub format: Format,
    /// The weight's K.
    pub k: usize,
    /// The weight's N.
    pub n: usize,
    /// The rank `r`.
    pub rank: usize,
    /// `U`'s codes, column by column (`r · k` codes, packed).
    pub u_codes: Vec<u8>,
    /// `V`'s codes, row by row (`r · n` codes, packed).
    pub v_codes: Vec<u8>,
    /// `2 · r` scales: `U`'s columns, then `V`'s rows.
    pub scales: Vec<f32>,
}

impl QuantizedFactors {
    /// `lr`'s factors in `format` (a float format), as the type's docs define.
    pub fn quantize(lr: &LowRank, format: Format) -> Result<QuantizedFactors, QuantError> {
        if !format.is_float() {
            return Err(QuantError::Shape { tensor: "low-rank factors".into(), message: format!("{format} is not a float format") });
        }
        let (k, n, r) = (lr.k, lr.n, lr.rank);
        let max = format.max_value() as f32;
        let mut scales = Vec::with_capacity(2 * r);
        let mut quantize = |values: &[f32], codes: &mut Vec<u8>| {
            let absmax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if absmax > 0.0 { absmax / max } else { 1.0 };
            scales.push(s);
            codes.extend(values.iter().map(|v| format.encode(v / s)));
        };
        let (mut u, mut v) = (Vec::with_capacity(r * k), Vec::with_capacity(r * n));
        for i in 0..r {
            let column: Vec<f32> = (0..k).map(|row| lr.u[row * r + i]).collect();
            quantize(&column, &mut u);
        }
        for row in lr.v.chunks_exact(n.max(1)).take(r) {
            quantize(row, &mut v);
        }
        let bits = format.bits();
        Ok(QuantizedFactors { format, k, n, rank: r, u_codes: crate::dense::pack(&u, bits), v_codes: crate::dense::pack(&v, bits), scales })
    }

    /// Factors read back from their stored parts, checked: `scales` gives the rank (`2 · r`
    /// values), the code buffers must be exactly `r · k` and `r · n` packed codes.
    pub fn from_parts(
        format: Format,
        k: usize,
        n: usize,
        u_codes: Vec<u8>,
        v_codes: Vec<u8>,
        scales: Vec<f32>,
    ) -> Result<QuantizedFactors, QuantError> {
        let bad = |message: String| QuantError::Shape { tensor: "low-rank factors".into(), message };
        if !format.is_float() {
            return Err(bad(format!("{format} is not a float format")));
        }
        if scales.is_empty() || !scales.len().is_multiple_of(2) {
            return Err(bad(format!("{} scales are not two per rank component", scales.len())));
        }
        let rank = scales.len() / 2;
        let (bits, want_u, want_v) =
            (format.bits(), crate::dense::packed_len(rank * k, format.bits()), crate::dense::packed_len(rank * n, format.bits()));
        if u_codes.len() != want_u || v_codes.len() != want_v {
            return Err(bad(format!(
                "U holds {} bytes and V {} bytes; rank {rank} {} codes of [{k}, {rank}] and [{rank}, {n}] take {want_u} and {want_v} ({bits} bits each)",
                u_codes.len(),
                v_codes.len(),
                format.name()
            )));
        }
        Ok(QuantizedFactors { format, k, n, rank, u_codes, v_codes, scales })
    }

    /// The factors' values: `decode(code) · scale`, as `U` `[k][r]` and `V` `[r][n]`.
    pub fn dequantize(&self) -> LowRank {
        let (k, n, r, bits) = (self.k, self.n, self.rank, self.format.bits());
        let u_codes = crate::dense::unpack(&self.u_codes, bits, r * k).expect("checked lengths");
        let v_codes = crate::dense::unpack(&self.v_codes, bits, r * n).expect("checked lengths");
        let table: Vec<f32> = (0..1u16 << bits).map(|c| self.format.decode(c as u8)).collect();
        let mut u = vec![0f32; k * r];
        for i in 0..r {
            for row in 0..k {
                u[row * r + i] = table[u_codes[i * k + row] as usize] * self.scales[i];
            }
        }
        let v = (0..r * n).map(|j| table[v_codes[j] as usize] * self.scales[r + j / n.max(1)]).collect();
        LowRank { k, n, rank: r, u, v }
    }

    /// Bytes stored: both code buffers and the scales.
    pub fn bytes(&self) -> usize {
        self.u_codes.len() + self.v_codes.len() + 4 * self.scales.len()
    }
}

/// The top-`rank` left singular vectors `U` (`[k][rank]`, orthonormal columns) of `m` and
/// `Uᵀ · m` (`[rank][n]`, = Σ·Vᵀ), from the Gram matrix of the smaller side.
fn exact(m: &DMatrix<f64>, rank: usize) -> (DMatrix<f64>, DMatrix<f64>) {
    let (k, n) = m.shape();
    if k <= n {
        let u = top_eigenvectors(m * m.transpose(), rank);
        let sv = u.transpose() * m;
        (u, sv)
    } else {
        // Right singular vectors V from mᵀ·m; then m·V = U·Σ, whose columns are orthogonal:
        // normalize them into U and keep Σ·Vᵀ as the second factor.
        let v = top_eigenvectors(m.transpose() * m, rank);
        let us = m * &v;
        let mut u = us.clone();
        let mut sv = v.transpose();
        for i in 0..rank {
            let sigma = us.column(i).norm();
            if sigma > 0.0 {
                u.column_mut(i).scale_mut(1.0 / sigma);
                sv.row_mut(i).scale_mut(sigma);
            } else {
                u.column_mut(i).fill(0.0);
                sv.row_mut(i).fill(0.0);
            }
        }
        (u, sv)
    }
}

/// The eigenvectors of the symmetric `g` for its `count` largest eigenvalues, as columns, largest
/// first.
fn top_eigenvectors(g: DMatrix<f64>, count: usize) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(g);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    DMatrix::from_fn(eig.eigenvectors.nrows(), count, |r, c| eig.eigenvectors[(r, order[c])])
}

/// The randomized range finder: an orthonormal basis `Q` (`[k][l]`) of `m · Ω` refined by
/// power iterations, then [`exact`] on `Qᵀ · m` and the left vectors mapped back through `Q`.
fn randomized(m: &DMatrix<f64>, rank: usize) -> (DMatrix<f64>, DMatrix<f64>) {
    let (k, n) = m.shape();
    let l = (rank + OVERSAMPLE).min(k).min(n);
    // The sketch matrix: standard normals from a fixed seed, the same on every run.
    let mut rng = crate::seeded::SplitMix64::new(0x10c0_5eed);
    let omega = DMatrix::from_fn(n, l, |_, _| rng.normal());
    let mut q = (m * omega).qr().q();
    for _ in 0..POWER_ITERATIONS {
        let z = (m.transpose() * &q).qr().q();
        q = (m * z).qr().q();
    }
    let b = q.transpose() * m;
    let (ub, sv) = exact(&b, rank);
    (q * ub, sv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpx_test_support::Rng;

    fn frobenius_diff(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt()
    }

    /// The singular values of `e` from nalgebra's SVD (an independent algorithm: bidiagonalization
    /// and implicit QR, not the Gram matrix).
    fn singular_values(e: &[f32], k: usize, n: usize) -> Vec<f64> {
        let m = DMatrix::from_row_iterator(k, n, e.iter().map(|&v| v as f64));
        let mut s: Vec<f64> = m.svd(false, false).singular_values.iter().copied().collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    }

    #[test]
    fn full_rank_reconstructs_exactly_in_both_orientations() {
        for (k, n) in [(40, 24), (24, 40), (17, 17)] {
            let e = Rng::new(5 + k as u64).normals(k * n);
            let lr = LowRank::of(&e, k, n, 1000).unwrap();
            assert_eq!(lr.rank, k.min(n), "the rank is capped at full rank");
            let norm = e.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            let err = frobenius_diff(&lr.reconstruct(), &e);
            assert!(err <= 1e-5 * norm, "{k}x{n}: {err} of {norm}");
        }
    }

    /// The error at every rank is the optimal one, `sqrt(Σ_{i>r} σ_i²)` from an independent
    /// SVD, so it falls strictly with the rank on a random matrix.
    #[test]
    fn error_is_the_svd_optimum_and_falls_monotonically_with_rank() {
        for (k, n) in [(48, 30), (30, 48)] {
            let e = Rng::new(11).normals(k * n);
            let s = singular_values(&e, k, n);
            let mut last = f64::INFINITY;
            for r in 1..=k.min(n) {
                let err = frobenius_diff(&LowRank::of(&e, k, n, r).unwrap().reconstruct(), &e);
                let optimal = s[r..].iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((err - optimal).abs() <= 1e-4 * s[0], "{k}x{n} rank {r}: {err} vs the optimum {optimal}");
                assert!(err < last, "{k}x{n} rank {r}: {err} after {last}");
                last = err;
            }
            assert!(last < 1e-4 * s[0]);
        }
    }

    /// The randomized path (forced with a small threshold) finds the dominant subspace of a
    /// matrix with a decaying spectrum: its error is within 1 % of the optimum.
    #[test]
    fn randomized_range_finder_is_near_optimal_on_a_decaying_spectrum() {
        let (k, n, r) = (120, 90, 8);
        // E = A · diag(0.8^i) · B + small noise: a spectrum like a weight error's top directions.
        let mut rng = Rng::new(21);
        let (a, b) = (rng.normals(k * 30), rng.normals(30 * n));
        let noise = rng.normals(k * n);
        let e: Vec<f32> = (0..k * n)
            .map(|idx| {
                let (row, col) = (idx / n, idx % n);
                let s: f32 = (0..30).map(|i| a[row * 30 + i] * 0.8f32.powi(i as i32) * b[i * n + col]).sum();
                s + 0.01 * noise[idx]
            })
            .collect();
        let s = singular_values(&e, k, n);
        let optimal = s[r..].iter().map(|v| v * v).sum::<f64>().sqrt();
        let randomized = frobenius_diff(&LowRank::of_with(&e, k, n, r, 16).unwrap().reconstruct(), &e);
        let exact = frobenius_diff(&LowRank::of(&e, k, n, r).unwrap().reconstruct(), &e);
        assert!((exact - optimal).abs() <= 1e-4 * s[0], "exact {exact} vs {optimal}");
        assert!(randomized <= 1.01 * optimal, "randomized {randomized} vs the optimum {optimal}");
    }

    #[test]
    fn weight_error_reads_the_packed_codes_in_either_layout() {
        let (k, n) = (40, 24);
        let w = Rng::new(8).normals(k * n);
        let cfg = crate::QuantConfig { format: crate::Format::Fp4E2M1, group_size: None, scale_search: false, pow2_scales: false };
        let q = crate::quantize("w", &w, k, n, &cfg).unwrap();
        let want: Vec<f32> = w.iter().zip(q.dequantize()).map(|(a, b)| a - b).collect();
        let packed = layout::pack(&q.codes, &PackedShape::new(n, k, 4));
        let without_codes = QuantizedMatrix { codes: Vec::new(), ..q.clone() };
        assert_eq!(weight_error(&WeightValues::F32(&w), WeightLayout::InputMajor, &without_codes, &packed), want);
        let transposed: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        assert_eq!(weight_error(&WeightValues::F32(&transposed), WeightLayout::ChannelMajor, &q, &packed), want);
        assert!(want.iter().any(|e| *e != 0.0));
    }

    #[test]
    fn fp16_factors_and_bad_input() {
        let (k, n) = (32, 20);
        let e = Rng::new(3).normals(k * n);
        let lr = LowRank::of(&e, k, n, 4).unwrap();
        let h = lr.rounded_to_f16();
        assert!(h.u.iter().chain(&h.v).all(|v| half::f16::from_f32(*v).to_f32() == *v));
        let (full, half) = (frobenius_diff(&lr.reconstruct(), &e), frobenius_diff(&h.reconstruct(), &e));
        assert!((half - full).abs() <= 1e-3 * full, "{half} vs {full}");
        assert_eq!(lr.f16_bytes(), 2 * 4 * (32 + 20));
        assert!(LowRank::of(&e, k, n, 0).unwrap_err().to_string().contains("at least 1"));
        assert!(LowRank::of(&e[1..], k, n, 2).is_err());
        // A zero error (an exactly representable weight) gives zero factors, not NaN.
        let z = LowRank::of(&vec![0.0; k * n], k, n, 3).unwrap();
        assert!(z.u.iter().chain(&z.v).all(|v| *v == 0.0));
    }

    /// Quantized factors: every stored value is a code of the format times its component's
    /// scale, the largest magnitude of each component is exactly representable (absmax scale),
    /// the error of `U·V` against the unquantized factors shrinks with the format's width, the
    /// bytes match the storage formula, and bad parts are refused.
    #[test]
    fn quantized_factors_round_trip_and_cost_what_they_say() {
        let (k, n, r) = (48, 40, 6);
        let e = Rng::new(5).normals(k * n);
        let lr = LowRank::of(&e, k, n, r).unwrap();
        let exact = lr.reconstruct();
        let mut last_error = f64::INFINITY;
        for format in [Format::Fp4E2M1, Format::Fp6E3M2, Format::Fp8E4M3] {
            let storage = FactorStorage::Quantized(format);
            let (values, stored) = storage.store(&lr).unwrap();
            let q = stored.unwrap();
            assert_eq!(q.bytes(), storage.bytes(k, n, r));
            let bits = format.bits() as usize;
            assert_eq!(q.bytes(), (r * k * bits).div_ceil(8) + (r * n * bits).div_ceil(8) + 4 * 2 * r);
            for i in 0..r {
                let column: Vec<f32> = (0..k).map(|row| values.u[row * r + i]).collect();
                let original: Vec<f32> = (0..k).map(|row| lr.u[row * r + i]).collect();
                let (s, codes) = (q.scales[i], column.iter().map(|v| v / q.scales[i]));
                for (c, v) in codes.zip(&column) {
                    assert_eq!(format.decode(format.encode(c)) * s, *v, "{format}: a stored value is a code times the scale");
                }
                let absmax = original.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(column.iter().fold(0f32, |a, v| a.max(v.abs())), absmax, "{format}: the absmax is kept");
            }
            let error = frobenius_diff(&values.reconstruct(), &exact);
            assert!(error < last_error, "{format}: {error} vs {last_error}");
            last_error = error;
            let back = QuantizedFactors::from_parts(format, k, n, q.u_codes.clone(), q.v_codes.clone(), q.scales.clone()).unwrap();
            assert_eq!(back.dequantize(), values);
            assert!(QuantizedFactors::from_parts(format, k, n, q.u_codes[1..].to_vec(), q.v_codes.clone(), q.scales.clone()).is_err());
            assert!(QuantizedFactors::from_parts(format, k, n, q.u_codes.clone(), q.v_codes.clone(), q.scales[1..].to_vec()).is_err());
        }
        // FP8 factors: within a few percent of the exact correction.
        assert!(last_error < 0.05 * frobenius_diff(&exact, &vec![0.0; k * n]), "{last_error}");
        assert_eq!(FactorStorage::F16.bytes(k, n, r), lr.f16_bytes());
        assert_eq!(FactorStorage::parse("fp8-e4m3"), Some(FactorStorage::Quantized(Format::Fp8E4M3)));
        assert_eq!(FactorStorage::parse("f16"), Some(FactorStorage::F16));
        assert_eq!(FactorStorage::parse("int4"), None);
        assert!(QuantizedFactors::quantize(&lr, Format::Int8).is_err());
        // Zero factors: scale 1, codes 0.
        let z = QuantizedFactors::quantize(&LowRank::of(&vec![0.0; k * n], k, n, 2).unwrap(), Format::Fp8E4M3).unwrap();
        assert!(z.scales.iter().all(|&s| s == 1.0) && z.dequantize().u.iter().all(|&v| v == 0.0));
    }
}
