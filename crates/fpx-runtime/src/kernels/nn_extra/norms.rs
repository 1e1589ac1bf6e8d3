//! BatchNormalization (inference), InstanceNormalization, GroupNormalization and
//! RMSNormalization. Statistics are accumulated in f64 whatever the element type.

use super::{tensor, values, with_real, Real, Res};
use crate::kernels::fast::{self, LayerNormRows};
use crate::kernels::{alloc, arg, array, axis, bad_type, f32_slice};
use crate::{kbail, KernelError};
use fpx_ir::{DType, Elem, Node, Tensor};
use rayon::prelude::*;

/// Rows at or above which normalization is split across the rayon pool.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Normalizes `x` in place, rows of `len` values each: `(x - mean) / sqrt(var + eps)` — with
/// `center` false, `x / sqrt(mean(x²) + eps)` (RMS) — then `* scale + bias` from
/// `affine(row, column)`.
fn normalize_rows<R: Real>(x: &mut [R], len: usize, eps: f64, center: bool, affine: impl Fn(usize, usize) -> (f64, f64) + Sync) {
    if len == 0 {
        return;
    }
    let one_row = |(r, row): (usize, &mut [R])| {
        let mean = if center { row.iter().map(|v| v.to_f64()).sum::<f64>() / len as f64 } else { 0.0 };
        let var = row.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / len as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in row.iter_mut().enumerate() {
            let (scale, bias) = affine(r, j);
            *v = R::from_f64((v.to_f64() - mean) * inv * scale + bias);
        }
    };
    if x.len() >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1 {
        x.par_chunks_mut(len).enumerate().for_each(one_row);
    } else {
        x.chunks_mut(len).enumerate().for_each(one_row);
    }
}

/// A float operand's values as f64, refused unless it holds `len` of them.
fn params(t: &Tensor, len: usize, what: &str) -> Result<Vec<f64>, KernelError> {
    if !t.dtype().is_float() {
        return Err(bad_type(t));
    }
    if t.len() != len {
        kbail!("{what} has shape {:?}; expected {len} values", t.shape());
    }
    Ok(t.to_f64_vec())
}

/// `(N, C, spatial)` of an input `[N, C, D1, ...]` of rank at least `min_rank`.
fn channels(x: &Tensor, min_rank: usize) -> Result<(usize, usize, usize), KernelError> {
    let s = x.shape();
    if s.len() < min_rank {
        kbail!("input of shape {s:?} must have rank >= {min_rank} (N, C, ...)");
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

/// `BatchNormalization` with the running statistics (inference mode): per channel (or, at
/// opsets 6 to 8 with `spatial=0`, per channel and position) `(x - mean) / sqrt(var + eps) * scale + B`.
pub(super) fn batch_norm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    if n.attr_i("training_mode", 0) != 0 || n.outputs.len() > 1 {
        kbail!("training mode (training_mode=1 or the running mean and variance as outputs) is not supported: fpx runs inference only");
    }
    let x = arg(i, 0)?;
    let (_, c, spatial) = channels(x, 2)?;
    let per_element = n.opset < 9 && n.attr_i("spatial", 1) == 0;
    let len = if per_element { c * spatial } else { c };
    let eps = n.attr_f("epsilon", 1e-5) as f64;
    let [scale, bias, mean, var] =
        [(1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")].map(|(k, what)| arg(i, k).and_then(|t| params(t, len, what)));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    let a: Vec<f64> = scale.iter().zip(&var).map(|(s, v)| s / (v + eps).sqrt()).collect();
    let b: Vec<f64> = bias.iter().zip(&mean).zip(&a).map(|((b, m), a)| b - m * a).collect();
    let param = |idx: usize| if per_element { idx % len } else { idx / spatial.max(1) % c.max(1) };
    Ok(vec![with_real!(x, R => {
        let mut v = values::<R>(x)?;
        v.iter_mut().enumerate().for_each(|(idx, e)| {
            let p = param(idx);
            *e = R::from_f64(e.to_f64() * a[p] + b[p]);
        });
        tensor(x.dtype(), x.shape(), v)?
    })])
}

/// `InstanceNormalization`: each (sample, channel) normalized over its spatial positions.
pub(super) fn instance_norm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let (_, c, spatial) = channels(x, 3)?;
    let scale = params(arg(i, 1)?, c, "scale")?;
    let bias = params(arg(i, 2)?, c, "B")?;
    let eps = n.attr_f("epsilon", 1e-5) as f64;
    Ok(vec![with_real!(x, R => {
        let mut v = values::<R>(x)?;
        normalize_rows(&mut v, spatial, eps, true, |row, _| (scale[row % c], bias[row % c]));
        tensor(x.dtype(), x.shape(), v)?
    })])
}

/// `GroupNormalization`: each (sample, group of channels) normalized over its channels and
/// positions; scale and bias per group at opset 18, per channel from 21.
pub(super) fn group_norm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let (_, c, spatial) = channels(x, 2)?;
    let groups = n.attr_i("num_groups", 0);
    if groups <= 0 || c % groups as usize != 0 {
        kbail!("{c} channels do not split into num_groups = {groups} groups");
    }
    let groups = groups as usize;
    let per_group = c / groups;
    let per_channel = n.opset >= 21;
    let len = if per_channel { c } else { groups };
    let scale = params(arg(i, 1)?, len, "scale")?;
    let bias = params(arg(i, 2)?, len, "bias")?;
    let eps = n.attr_f("epsilon", 1e-5) as f64;
    let affine = |row: usize, j: usize| {
        let g = row % groups;
        let p = if per_channel { g * per_group + j / spatial.max(1) } else { g };
        (scale[p], bias[p])
    };
    Ok(vec![with_real!(x, R => {
        let mut v = values::<R>(x)?;
        normalize_rows(&mut v, per_group * spatial, eps, true, affine);
        tensor(x.dtype(), x.shape(), v)?
    })])
}

/// `RMSNormalization`: `x / sqrt(mean(x²) + eps) * scale` over the axes from `axis` on, the
/// scale broadcast to those axes.
pub(super) fn rms_norm(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let shape = x.shape();
    let a = axis(n.attr_i("axis", -1), shape.len())?;
    let norm_shape = &shape[a..];
    let len: usize = norm_shape.iter().product();
    // An empty input can have a huge normalized shape: the scale is checked before it is expanded.
    alloc::check(DType::F64, norm_shape)?;
    let s = arg(i, 1)?;
    if !s.dtype().is_float() {
        return Err(bad_type(s));
    }
    let scale = crate::kernels::nn::norm_param(s, norm_shape, "scale")?;
    let eps = n.attr_f("epsilon", 1e-5) as f64;
    if let (Some(src), true) = (f32_slice(x), len > 0) {
        // The f32 path: vectorized rows, statistics in f64 as below, across the pool.
        let mut out = alloc::overwritten_f32(shape)?;
        let (bias, mut means, mut invs) = (vec![0f64; len], vec![0f64; src.len() / len], vec![0f64; src.len() / len]);
        let rows = LayerNormRows { inner: len, eps, scale: &scale, bias: &bias, center: false };
        fast::layer_norm(&rows, Some(src), &mut out, &mut means, &mut invs);
        return Ok(vec![Tensor::from(array(shape, out))]);
    }
    Ok(vec![with_real!(x, R => {
        let mut v = values::<R>(x)?;
        normalize_rows(&mut v, len, eps, false, |_, j| (scale[j], 0.0));
        tensor(x.dtype(), x.shape(), v)?
    })])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, rand, run};
    use fpx_ir::{Attribute, DType, Tensor};
    use fpx_test_support::Rng;

    /// Naive f64 group normalization of `x` `[n, c, s]` with scale/bias per channel.
    fn group_norm_ref(x: &[f64], (n, c, s): (usize, usize, usize), groups: usize, scale: &[f64], bias: &[f64], eps: f64) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        let cg = c / groups;
        for b in 0..n {
            for g in 0..groups {
                let idx: Vec<usize> = (g * cg..(g + 1) * cg).flat_map(|ch| (0..s).map(move |p| (b * c + ch) * s + p)).collect();
                let mean = idx.iter().map(|&k| x[k]).sum::<f64>() / idx.len() as f64;
                let var = idx.iter().map(|&k| (x[k] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
                for &k in &idx {
                    let ch = k / s % c;
                    y[k] = (x[k] - mean) / (var + eps).sqrt() * scale[ch] + bias[ch];
                }
            }
        }
        y
    }

    #[test]
    fn group_norm_takes_scale_per_group_at_18_and_per_channel_at_21() {
        let mut rng = Rng::new(11);
        let x = rand(&[2, 6, 5], &mut rng);
        let (scale_c, bias_c) = (rand(&[6], &mut rng), rand(&[6], &mut rng));
        let attrs = [("num_groups", Attribute::Int(3)), ("epsilon", Attribute::Float(1e-3))];
        let y = run("GroupNormalization", 21, &attrs, &[Some(&x), Some(&scale_c), Some(&bias_c)], 1).unwrap();
        let want = group_norm_ref(&x.to_f64_vec(), (2, 6, 5), 3, &scale_c.to_f64_vec(), &bias_c.to_f64_vec(), 1e-3);
        assert_close(&y[0], &want, 1e-5);
        // Opset 18: one scale per group, repeated over its two channels.
        let (scale_g, bias_g) = (rand(&[3], &mut rng), rand(&[3], &mut rng));
        let per_channel = |t: &Tensor| t.to_f64_vec().iter().flat_map(|&v| [v, v]).collect::<Vec<_>>();
        let y = run("GroupNormalization", 18, &attrs, &[Some(&x), Some(&scale_g), Some(&bias_g)], 1).unwrap();
        let want = group_norm_ref(&x.to_f64_vec(), (2, 6, 5), 3, &per_channel(&scale_g), &per_channel(&bias_g), 1e-3);
        assert_close(&y[0], &want, 1e-5);
        let e = run("GroupNormalization", 18, &attrs, &[Some(&x), Some(&scale_c), Some(&bias_c)], 1).unwrap_err().0;
        assert!(e.contains("expected 3 values"), "{e}");
        let bad = [("num_groups", Attribute::Int(4))];
        let e = run("GroupNormalization", 21, &bad, &[Some(&x), Some(&scale_c), Some(&bias_c)], 1).unwrap_err().0;
        assert!(e.contains("do not split"), "{e}");
    }

    #[test]
    fn batch_norm_refuses_training_and_normalizes_per_channel_or_per_element() {
        let mut rng = Rng::new(5);
        let x = rand(&[2, 3, 4], &mut rng);
        let p: Vec<Tensor> =
            (0..4).map(|k| if k == 3 { rand(&[3], &mut rng).to_f64().mapv(|v| v * v).into() } else { rand(&[3], &mut rng) }).collect();
        let p: Vec<Tensor> = p.into_iter().map(|t| t.cast(DType::F32)).collect();
        let inputs =
            |x: &Tensor, p: &[Tensor]| -> Vec<Option<Tensor>> { std::iter::once(x.clone()).chain(p.iter().cloned()).map(Some).collect() };
        let ins = inputs(&x, &p);
        let refs: Vec<Option<&Tensor>> = ins.iter().map(|t| t.as_ref()).collect();
        let y = run("BatchNormalization", 15, &[], &refs, 1).unwrap();
        let (xv, pv): (Vec<f64>, Vec<Vec<f64>>) = (x.to_f64_vec(), p.iter().map(|t| t.to_f64_vec()).collect());
        let want: Vec<f64> = (0..24)
            .map(|k| {
                let c = k / 4 % 3;
                (xv[k] - pv[2][c]) / (pv[3][c] + 1e-5).sqrt() * pv[0][c] + pv[1][c]
            })
            .collect();
        assert_close(&y[0], &want, 1e-5);
        let e = run("BatchNormalization", 15, &[("training_mode", Attribute::Int(1))], &refs, 3).unwrap_err().0;
        assert!(e.contains("training"), "{e}");
        // Opset 7 with spatial=0: statistics per channel and position ([C, D] = 12 values).
        let pe: Vec<Tensor> = (0..4)
            .map(|k| {
                let t = rand(&[3, 4], &mut rng);
                if k == 3 {
                    t.to_f64().mapv(|v| v * v + 0.1).into()
                } else {
                    t
                }
            })
            .collect();
        let pe: Vec<Tensor> = pe.into_iter().map(|t| t.cast(DType::F32)).collect();
        let ins = inputs(&x, &pe);
        let refs: Vec<Option<&Tensor>> = ins.iter().map(|t| t.as_ref()).collect();
        let y = run("BatchNormalization", 7, &[("spatial", Attribute::Int(0))], &refs, 1).unwrap();
        let pv: Vec<Vec<f64>> = pe.iter().map(|t| t.to_f64_vec()).collect();
        let want: Vec<f64> = (0..24)
            .map(|k| {
                let e = k % 12;
                (xv[k] - pv[2][e]) / (pv[3][e] + 1e-5).sqrt() * pv[0][e] + pv[1][e]
            })
            .collect();
        assert_close(&y[0], &want, 1e-5);
    }

    #[test]
    fn rms_norm_broadcasts_its_scale_and_computes_f16_in_f32() {
        let mut rng = Rng::new(9);
        let x = rand(&[2, 3, 4], &mut rng).cast(DType::F16);
        let s = rand(&[4], &mut rng).cast(DType::F16);
        let y = run("RMSNormalization", 23, &[("axis", Attribute::Int(1))], &[Some(&x), Some(&s)], 1).unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        let (xv, sv) = (x.to_f64_vec(), s.to_f64_vec());
        let want: Vec<f64> = (0..24)
            .map(|k| {
                let row = &xv[k / 12 * 12..k / 12 * 12 + 12];
                let ms = row.iter().map(|v| v * v).sum::<f64>() / 12.0;
                xv[k] / (ms + 1e-5).sqrt() * sv[k % 4]
            })
            .collect();
        assert_close(&y[0], &want, 2e-3);
        // f32 rows take the vectorized row kernel: the same values to f32 rounding.
        let (x32, s32) = (x.cast(DType::F32), s.cast(DType::F32));
        let y = run("RMSNormalization", 23, &[("axis", Attribute::Int(1))], &[Some(&x32), Some(&s32)], 1).unwrap();
        assert_eq!(y[0].dtype(), DType::F32);
        assert_close(&y[0], &want, 1e-6);
    }

    /// A scale that already lies in the normalized shape's order (with or without leading ones:
    /// read straight from its slice) and one that must be broadcast give the f64 result.
    #[test]
    fn rms_norm_scales_of_every_spelling_match_f64() {
        let mut rng = Rng::new(10);
        let x = rand(&[2, 3, 8], &mut rng);
        let xv = x.to_f64_vec();
        let s8 = rand(&[8], &mut rng);
        let sv = s8.to_f64_vec();
        let want = |norm: usize, scale: &dyn Fn(usize) -> f64| -> Vec<f64> {
            (0..48)
                .map(|k| {
                    let row = &xv[k / norm * norm..(k / norm + 1) * norm];
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / norm as f64;
                    xv[k] / (ms + 1e-5).sqrt() * scale(k)
                })
                .collect()
        };
        let last_axis = want(8, &|k| sv[k % 8]);
        for shape in [&[8][..], &[1, 8], &[1, 1, 8]] {
            let s = s8.reshape(shape).unwrap();
            let y = run("RMSNormalization", 23, &[("axis", Attribute::Int(-1))], &[Some(&x), Some(&s)], 1).unwrap();
            assert_close(&y[0], &last_axis, 1e-6);
        }
        // Over the last two axes: [8] and [1, 8] broadcast across the 3 rows of 8, [3, 8] not.
        let two_axes = want(24, &|k| sv[k % 8]);
        for shape in [&[8][..], &[1, 8]] {
            let s = s8.reshape(shape).unwrap();
            let y = run("RMSNormalization", 23, &[("axis", Attribute::Int(1))], &[Some(&x), Some(&s)], 1).unwrap();
            assert_close(&y[0], &two_axes, 1e-6);
        }
        let s24 = rand(&[3, 8], &mut rng);
        let s24v = s24.to_f64_vec();
        let y = run("RMSNormalization", 23, &[("axis", Attribute::Int(1))], &[Some(&x), Some(&s24)], 1).unwrap();
        assert_close(&y[0], &want(24, &|k| s24v[k % 24]), 1e-6);
    }
}
