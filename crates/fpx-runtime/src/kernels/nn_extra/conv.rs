//! Conv over any number of spatial axes (1-D for Whisper-style encoders, 2-D for ViT patch
//! embeddings): strides, dilations, explicit pads or `auto_pad`, and groups. Each (sample,
//! group) is an im2col matrix `[C/group * kernel size, output positions]` multiplied by the
//! group's weights `[M/group, C/group * kernel size]` with the GEMM. The output geometry is
//! `fpx_ir::ops::conv_output_dim`, which shape inference uses too.

use super::{gemm, tensor, values, with_real, Real, Res};
use crate::kernels::{alloc, arg, bad_type, opt_arg, row_major_strides};
use crate::{kbail, KernelError};
use fpx_ir::ops::{conv_output_dim, AutoPad};
use fpx_ir::{DType, Node, Tensor};

/// The shape of one convolution.
struct Geometry {
    batch: usize,
    channels: usize,
    maps: usize,
    group: usize,
    input: Vec<usize>,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pad_begin: Vec<usize>,
    output: Vec<usize>,
}

/// An ints attribute of `n` positive values, or `n` ones.
fn positive_ints(n: &Node, name: &str, len: usize) -> Result<Vec<usize>, KernelError> {
    match n.attr_ints(name) {
        None => Ok(vec![1; len]),
        Some(v) if v.len() == len && v.iter().all(|&x| x >= 1) => Ok(v.iter().map(|&x| x as usize).collect()),
        Some(v) => kbail!("{name} {v:?} must hold {len} positive values (one per spatial axis)"),
    }
}

fn geometry(n: &Node, xs: &[usize], ws: &[usize]) -> Result<Geometry, KernelError> {
    if xs.len() < 3 || ws.len() != xs.len() {
        kbail!("X {xs:?} must have rank >= 3 (N, C, spatial...) and W {ws:?} the same rank");
    }
    let sp = xs.len() - 2;
    let group = n.attr_i("group", 1);
    let (channels, maps) = (xs[1], ws[0]);
    if group < 1 || channels % group as usize != 0 || maps % group as usize != 0 || ws[1].checked_mul(group as usize) != Some(channels) {
        kbail!("X has {channels} channels and W {ws:?} ({maps} maps, {} channels per group): they do not form {group} groups", ws[1]);
    }
    let kernel = ws[2..].to_vec();
    if let Some(k) = n.attr_ints("kernel_shape") {
        if k.len() != sp || k.iter().zip(&kernel).any(|(&a, &b)| a != b as i64) {
            kbail!("kernel_shape {k:?} differs from W's spatial shape {kernel:?}");
        }
    }
    let strides = positive_ints(n, "strides", sp)?;
    let dilations = positive_ints(n, "dilations", sp)?;
    let pads: Vec<usize> = match n.attr_ints("pads") {
        None => vec![0; 2 * sp],
        Some(p) if p.len() == 2 * sp && p.iter().all(|&v| v >= 0) => p.iter().map(|&v| v as usize).collect(),
        Some(p) => kbail!("pads {p:?} must hold {} non-negative values", 2 * sp),
    };
    let auto_pad = match AutoPad::parse(n.attr_s("auto_pad", "NOTSET")) {
        Some(a) => a,
        None => kbail!("unknown auto_pad '{}'", n.attr_s("auto_pad", "")),
    };
    let (mut output, mut pad_begin) = (Vec::with_capacity(sp), Vec::with_capacity(sp));
    for d in 0..sp {
        let Some((o, p)) = conv_output_dim(xs[d + 2], kernel[d], strides[d], dilations[d], auto_pad, (pads[d], pads[d + sp])) else {
            kbail!(
                "spatial axis {d}: a kernel of {} (dilation {}) does not fit the padded input of {}",
                kernel[d],
                dilations[d],
                xs[d + 2]
            );
        };
        output.push(o);
        pad_begin.push(p);
    }
    Ok(Geometry {
        batch: xs[0],
        channels,
        maps,
        group: group as usize,
        input: xs[2..].to_vec(),
        kernel,
        strides,
        dilations,
        pad_begin,
        output,
    })
}

/// Fills `col` (`[channels * kernel size, output positions]`) from `x` (`[channels, input...]`):
/// row `(c, tap)` holds, for every output position, the input element that tap reads (0 in
/// the padding).
fn im2col<R: Real>(x: &[R], g: &Geometry, channels: usize, col: &mut [R]) {
    let sp = g.kernel.len();
    let (in_size, taps, positions): (usize, usize, usize) =
        (g.input.iter().product(), g.kernel.iter().product(), g.output.iter().product());
    let (in_strides, tap_strides, out_strides) = (row_major_strides(&g.input), row_major_strides(&g.kernel), row_major_strides(&g.output));
    let last = sp - 1;
    let row_len = g.output[last];
    if positions == 0 {
        return;
    }
    // The input coordinate output coordinate `o` reads along axis `d` through kernel tap `k`.
    let coord =
        |d: usize, o: usize, k: usize| (o * g.strides[d] + k * g.dilations[d]).checked_sub(g.pad_begin[d]).filter(|&p| p < g.input[d]);
    for c in 0..channels {
        for tap in 0..taps {
            let k = |d: usize| tap / tap_strides[d] % g.kernel[d];
            let row = &mut col[(c * taps + tap) * positions..][..positions];
            for (outer, dst) in row.chunks_mut(row_len).enumerate() {
                // The input offset of the axes before the last, or None inside the padding.
                let base = (0..last).try_fold(c * in_size, |off, d| {
                    coord(d, outer * row_len / out_strides[d] % g.output[d], k(d)).map(|p| off + p * in_strides[d])
                });
                match base {
                    None => dst.fill(R::ZERO),
                    Some(base) => {
                        let kl = k(last);
                        for (o, v) in dst.iter_mut().enumerate() {
                            *v = coord(last, o, kl).map_or(R::ZERO, |p| x[base + p]);
                        }
                    }
                }
            }
        }
    }
}

fn conv_t<R: Real>(n: &Node, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, KernelError> {
    if w.dtype() != x.dtype() {
        kbail!("W is {} but X is {}", w.dtype(), x.dtype());
    }
    let g = geometry(n, x.shape(), w.shape())?;
    let mut out_shape = vec![g.batch, g.maps];
    out_shape.extend_from_slice(&g.output);
    let mut y = alloc::filled::<R>(&out_shape, R::ZERO)?;
    let bias = match b {
        Some(b) if b.len() != g.maps => kbail!("B of shape {:?} must hold one value per output map ({})", b.shape(), g.maps),
        Some(b) if !b.dtype().is_float() => return Err(bad_type(b)),
        Some(b) => Some(values::<R>(b)?),
        None => None,
    };
    // An empty output can have huge other axes; a non-empty one, within the budget, bounds them.
    if !y.is_empty() {
        let positions: usize = g.output.iter().product();
        let (cg, mg) = (g.channels / g.group, g.maps / g.group);
        let taps: usize = g.kernel.iter().product();
        let rows = cg * taps;
        let (xv, wv) = (values::<R>(x)?, values::<R>(w)?);
        let in_size: usize = g.input.iter().product();
        // A 1x1 kernel with unit strides and no padding reads X as it is.
        let pointwise = taps == 1 && g.strides.iter().all(|&s| s == 1) && g.output == g.input;
        let mut col = if pointwise { Vec::new() } else { alloc::filled::<R>(&[rows, positions], R::ZERO)? };
        for bi in 0..g.batch {
            for gi in 0..g.group {
                let xg = &xv[(bi * g.channels + gi * cg) * in_size..][..cg * in_size];
                let a = if pointwise {
                    xg
                } else {
                    im2col(xg, &g, cg, &mut col);
                    &col
                };
                let wg = &wv[gi * mg * rows..][..mg * rows];
                let yg = &mut y[(bi * g.maps + gi * mg) * positions..][..mg * positions];
                gemm((mg, rows, positions), R::ONE, wg, (rows, 1), a, (positions, 1), R::ZERO, yg, positions);
            }
        }
        if let Some(bias) = &bias {
            for (k, map) in y.chunks_mut(positions).enumerate() {
                let add = bias[k % g.maps];
                map.iter_mut().for_each(|v| *v += add);
            }
        }
    }
    tensor(x.dtype(), &out_shape, y)
}

/// `Conv(X, W, B?)`.
pub(super) fn conv(n: &Node, i: &[Option<&Tensor>]) -> Res {
    let x = arg(i, 0)?;
    let w = arg(i, 1)?;
    if !matches!(x.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        return Err(bad_type(x));
    }
    Ok(vec![with_real!(x, R => conv_t::<R>(n, x, w, opt_arg(i, 2))?)])
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, rand, run};
    use fpx_ir::{Attribute, DType};
    use fpx_test_support::Rng;

    /// Naive f64 convolution over one or two spatial axes (a 1-D input has width 1 in front).
    #[allow(clippy::too_many_arguments)]
    fn conv_ref(
        x: &[f64],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f64],
        (m, kh, kw): (usize, usize, usize),
        bias: &[f64],
        group: usize,
        (sh, sw): (usize, usize),
        (dh, dw): (usize, usize),
        (ph, pw): (isize, isize),
        (oh, ow): (usize, usize),
    ) -> Vec<f64> {
        let (cg, mg) = (c / group, m / group);
        let mut y = vec![0.0; n * m * oh * ow];
        for b in 0..n {
            for o in 0..m {
                let g = o / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = bias[o];
                        for ci in 0..cg {
                            for u in 0..kh {
                                for v in 0..kw {
                                    let (r, s) = ((i * sh + u * dh) as isize - ph, (j * sw + v * dw) as isize - pw);
                                    if r >= 0 && s >= 0 && (r as usize) < h && (s as usize) < w {
                                        let xv = x[((b * c + g * cg + ci) * h + r as usize) * w + s as usize];
                                        acc += xv * wt[((o * cg + ci) * kh + u) * kw + v];
                                    }
                                }
                            }
                        }
                        y[((b * m + o) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_2d_with_groups_dilation_strides_and_asymmetric_pads_matches_a_naive_loop() {
        let mut rng = Rng::new(31);
        let (n, c, h, w, m, group) = (2, 6, 9, 8, 4, 2);
        let x = rand(&[n, c, h, w], &mut rng);
        let wt = rand(&[m, c / group, 3, 2], &mut rng);
        let b = rand(&[m], &mut rng);
        let attrs = [
            ("group", Attribute::Int(group as i64)),
            ("strides", Attribute::Ints(vec![2, 1])),
            ("dilations", Attribute::Ints(vec![2, 3])),
            ("pads", Attribute::Ints(vec![1, 2, 0, 1])),
        ];
        let y = run("Conv", 22, &attrs, &[Some(&x), Some(&wt), Some(&b)], 1).unwrap();
        // rows: (9 + 1 + 0 - 5) / 2 + 1 = 3; columns: (8 + 2 + 1 - 4) / 1 + 1 = 8
        assert_eq!(y[0].shape(), &[n, m, 3, 8]);
        let want =
            conv_ref(&x.to_f64_vec(), (n, c, h, w), &wt.to_f64_vec(), (m, 3, 2), &b.to_f64_vec(), group, (2, 1), (2, 3), (1, 2), (3, 8));
        assert_close(&y[0], &want, 1e-5);
        // The same in float16 (computed in f32) and float64.
        let y = run("Conv", 22, &attrs, &[Some(&x.cast(DType::F64)), Some(&wt.cast(DType::F64)), Some(&b.cast(DType::F64))], 1).unwrap();
        assert_close(&y[0], &want, 1e-12);
        let (x16, w16, b16) = (x.cast(DType::F16), wt.cast(DType::F16), b.cast(DType::F16));
        let y = run("Conv", 22, &attrs, &[Some(&x16), Some(&w16), Some(&b16)], 1).unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        let want16 = conv_ref(
            &x16.to_f64_vec(),
            (n, c, h, w),
            &w16.to_f64_vec(),
            (m, 3, 2),
            &b16.to_f64_vec(),
            group,
            (2, 1),
            (2, 3),
            (1, 2),
            (3, 8),
        );
        assert_close(&y[0], &want16, 4e-3);
    }

    #[test]
    fn conv_1d_same_lower_depthwise_and_pointwise_match_a_naive_loop() {
        let mut rng = Rng::new(32);
        // Whisper-like: [N, C, L], kernel 3, stride 2, SAME_LOWER; depthwise (group = C).
        let (n, c, l) = (1, 4, 11);
        let x = rand(&[n, c, l], &mut rng);
        let wt = rand(&[c, 1, 4], &mut rng);
        let attrs = [
            ("group", Attribute::Int(c as i64)),
            ("strides", Attribute::Ints(vec![2])),
            ("auto_pad", Attribute::String("SAME_LOWER".into())),
        ];
        let y = run("Conv", 11, &attrs, &[Some(&x), Some(&wt)], 1).unwrap();
        // out = ceil(11 / 2) = 6; total pad = 5*2 + 4 - 11 = 3, 2 before (lower).
        assert_eq!(y[0].shape(), &[n, c, 6]);
        let want = conv_ref(&x.to_f64_vec(), (n, c, 1, l), &wt.to_f64_vec(), (c, 1, 4), &[0.0; 4], c, (1, 2), (1, 1), (0, 2), (1, 6));
        assert_close(&y[0], &want, 1e-5);
        // 1x1 pointwise (no im2col).
        let wt = rand(&[3, c, 1], &mut rng);
        let y = run("Conv", 1, &[], &[Some(&x), Some(&wt)], 1).unwrap();
        let want = conv_ref(&x.to_f64_vec(), (n, c, 1, l), &wt.to_f64_vec(), (3, 1, 1), &[0.0; 3], 1, (1, 1), (1, 1), (0, 0), (1, l));
        assert_close(&y[0], &want, 1e-5);
        // Channels that do not form the groups are an error.
        let e = run("Conv", 11, &[("group", Attribute::Int(3))], &[Some(&x), Some(&wt)], 1).unwrap_err().0;
        assert!(e.contains("groups"), "{e}");
    }
}
