//! The quantize rewrite on small random graphs, run by the CPU executor and compared with an
//! f64 reference computed from `QuantizedMatrix::dequantize` (an independent path: it decodes
//! codes directly instead of rebuilding bias-shifted FP16 values times folded scales).

use crate::{quantize_weights, QuantizeOptions, WeightScheme};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::{OpRegistry, FPX_DOMAIN};
use fpx_ir::{verify, Attribute, DType, Graph, Node, Tensor, TensorType};
use fpx_quant::act8::{Activations, Int8Activations};
use fpx_quant::{quantize, Format, QuantConfig};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// y = x · w (+ bias) in f64 from a dequantized [k][n] weight.
fn reference(x: &[f32], m: usize, k: usize, n: usize, w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|p| x[i * k + p] as f64 * w[p * n + j] as f64).sum::<f64>() + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    y
}

fn run(g: Graph, x: Tensor) -> Vec<f64> {
    let out = CpuExecutor::new(g).unwrap().run(vec![("x".into(), x)]).unwrap();
    out[0].1.to_f64_vec()
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |a, b| a.max(b.abs())).max(1e-6);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * scale, "element {i}: {a} vs {b}");
    }
}

/// x [m, k] → MatMul(x, W [k, n]) → y.
fn matmul_graph(m: usize, k: usize, n: usize, w: &[f32]) -> Graph {
    let mut g = Graph::new("mm");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k])).unwrap();
    let wv = g.add_constant("W", tensor(&[k, n], w.to_vec())).unwrap();
    let y = g.value_named("y");
    g.add_node(Node::new("mm", "MatMul", 17, vec![Some(x), Some(wv)], vec![y])).unwrap();
    g.outputs.push(y);
    g
}

#[test]
fn matmul_becomes_quantmatmul_and_matches_the_dequantized_reference() {
    for format in [Format::Fp6E3M2, Format::Fp6E2M3, Format::Fp5E2M2, Format::Fp4E2M1, Format::Int4, Format::Int8] {
        for (m, k, n, group) in [(3, 37, 19, None), (1, 64, 256, Some(32)), (5, 100, 7, Some(48))] {
            let w = Rng::new(7 + k as u64).signeds(k * n);
            let x = Rng::new(99).signeds(m * k);
            let mut g = matmul_graph(m, k, n, &w);
            let opts = QuantizeOptions { group_size: group, ..QuantizeOptions::new(WeightScheme::Fixed(format)) };
            let s = quantize_weights(&mut g, &opts).unwrap();
            assert_eq!(s.layers.len(), 1);
            verify::verify(&g, &OpRegistry::standard()).unwrap();
            let node = g.node(g.node_ids()[0]);
            assert_eq!((node.op_type.as_str(), node.domain.as_str()), ("QuantMatMul", FPX_DOMAIN));
            assert!(g.find_value("W").and_then(|v| g.constant(v)).is_none(), "the float weight is dropped");
            let q = quantize("W", &w, k, n, &QuantConfig { format, group_size: group, scale_search: false, pow2_scales: false }).unwrap();
            // The encoder sums the error in f32 blocks: equal to about 1e-6 relative.
            let rmse = q.relative_rmse(&w);
            assert!((s.layers[0].rel_rmse - rmse).abs() <= 1e-6 * rmse, "{} vs {rmse}", s.layers[0].rel_rmse);
            let want = reference(&x, m, k, n, &q.dequantize(), None);
            assert_close(&run(g, tensor(&[m, k], x)), &want);
        }
    }
}

#[test]
fn gemm_variants_fold_alpha_beta_bias_and_transposes() {
    let (m, k, n) = (4, 33, 20);
    let b_t = Rng::new(3).signeds(n * k); // stored [n, k] for transB = 1
    let c = Rng::new(4).signeds(n);
    let x = Rng::new(5).signeds(m * k);
    let mut w = vec![0f32; k * n];
    for r in 0..k {
        for col in 0..n {
            w[r * n + col] = b_t[col * k + r];
        }
    }
    // Cases: (transA, C kind: 0 none / 1 constant [n] / 2 graph input [m, n]).
    for (trans_a, c_kind) in [(0, 0), (0, 1), (1, 1), (0, 2)] {
        let mut g = Graph::new("gemm");
        g.opsets.insert(String::new(), 13);
        let xs = if trans_a == 1 { [k, m] } else { [m, k] };
        let xv = g.add_input("x", TensorType::fixed(DType::F32, &xs)).unwrap();
        let bv = g.add_constant("B", tensor(&[n, k], b_t.clone())).unwrap();
        let mut inputs = vec![Some(xv), Some(bv)];
        let cfull = Rng::new(6).signeds(m * n);
        match c_kind {
            1 => inputs.push(Some(g.add_constant("C", tensor(&[n], c.clone())).unwrap())),
            2 => inputs.push(Some(g.add_input("c", TensorType::fixed(DType::F32, &[m, n])).unwrap())),
            _ => {}
        }
        let y = g.value_named("y");
        let mut node = Node::new("gemm", "Gemm", 13, inputs, vec![y]);
        node.attrs.insert("transB".into(), Attribute::Int(1));
        node.attrs.insert("transA".into(), Attribute::Int(trans_a));
        node.attrs.insert("alpha".into(), Attribute::Float(0.75));
        node.attrs.insert("beta".into(), Attribute::Float(1.5));
        g.add_node(node).unwrap();
        g.outputs.push(y);
        quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2))).unwrap();
        verify::verify(&g, &OpRegistry::standard()).unwrap();
        let q =
            quantize("B", &w, k, n, &QuantConfig { format: Format::Fp6E3M2, group_size: None, scale_search: false, pow2_scales: false })
                .unwrap();
        let dq: Vec<f32> = q.dequantize().iter().map(|v| v * 0.75).collect();
        let bias: Option<Vec<f32>> = (c_kind == 1).then(|| c.iter().map(|v| v * 1.5).collect());
        let mut want = reference(&x, m, k, n, &dq, bias.as_deref());
        if c_kind == 2 {
            for (o, cv) in want.iter_mut().zip(&cfull) {
                *o += 1.5 * *cv as f64;
            }
        }
        let xt = if trans_a == 1 {
            let mut t = vec![0f32; m * k];
            for i in 0..m {
                for p in 0..k {
                    t[p * m + i] = x[i * k + p];
                }
            }
            t
        } else {
            x.clone()
        };
        let mut feeds = vec![("x".to_string(), tensor(&xs, xt))];
        if c_kind == 2 {
            feeds.push(("c".into(), tensor(&[m, n], cfull.clone())));
        }
        let out = CpuExecutor::new(g).unwrap().run(feeds).unwrap();
        assert_close(&out[0].1.to_f64_vec(), &want);
    }
}

#[test]
fn shared_weights_are_quantized_once_and_activation_products_stay() {
    let (k, n) = (16, 8);
    let mut g = Graph::new("shared");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, k])).unwrap();
    let w = g.add_constant("W", tensor(&[k, n], Rng::new(1).signeds(k * n))).unwrap();
    let (a, b, z) = (g.value_named("a"), g.value_named("b"), g.value_named("z"));
    g.add_node(Node::new("m1", "MatMul", 17, vec![Some(x), Some(w)], vec![a])).unwrap();
    g.add_node(Node::new("m2", "MatMul", 17, vec![Some(x), Some(w)], vec![b])).unwrap();
    let bt = g.value_named("bt");
    let mut t = Node::new("t", "Transpose", 17, vec![Some(b)], vec![bt]);
    t.attrs.insert("perm".into(), Attribute::Ints(vec![1, 0]));
    g.add_node(t).unwrap();
    g.add_node(Node::new("act", "MatMul", 17, vec![Some(a), Some(bt)], vec![z])).unwrap();
    g.outputs.push(z);
    let s = quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E2M3))).unwrap();
    assert_eq!(s.layers.len(), 2);
    let packed: Vec<_> = g.value_ids().filter(|&v| g.constant(v).is_some_and(|t| t.dtype() == DType::U8)).collect();
    assert_eq!(packed.len(), 1, "one packed copy of the shared weight");
    let ops: Vec<String> = g.node_ids().iter().map(|&i| g.node(i).op_type.clone()).collect();
    assert_eq!(ops.iter().filter(|o| *o == "QuantMatMul").count(), 2);
    assert_eq!(ops.iter().filter(|o| *o == "MatMul").count(), 1, "the activation product stays a MatMul");
    assert_eq!(s.weight_bytes_in, k * n * 4);
}

#[test]
fn fp6_auto_keeps_the_better_format_per_layer() {
    let (k, n) = (64, 32);
    // Layer 1: Gaussian-like with outliers (wide range favours e3m2); layer 2: uniform (favours e2m3).
    let mut w1 = Rng::new(11).signeds(k * n);
    for i in (0..w1.len()).step_by(97) {
        w1[i] *= 30.0;
    }
    let w2 = Rng::new(12).signeds(k * n);
    let mut g = Graph::new("auto");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, k])).unwrap();
    let c1 = g.add_constant("W1", tensor(&[k, n], w1)).unwrap();
    let c2 = g.add_constant("W2", tensor(&[n, n], w2[..n * n].to_vec())).unwrap();
    let (a, b) = (g.value_named("a"), g.value_named("b"));
    g.add_node(Node::new("l1", "MatMul", 17, vec![Some(x), Some(c1)], vec![a])).unwrap();
    g.add_node(Node::new("l2", "MatMul", 17, vec![Some(a), Some(c2)], vec![b])).unwrap();
    g.outputs.push(b);
    let s = quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fp6Auto)).unwrap();
    for l in &s.layers {
        assert_eq!(l.tried.len(), 2);
        let best = l.tried.iter().min_by(|p, q| p.1.total_cmp(&q.1)).unwrap();
        assert_eq!(l.format, best.0, "{}: {:?}", l.node, l.tried);
    }
    assert_ne!(s.layers[0].format, s.layers[1].format, "the two layers prefer different formats: {:?}", s.layers);
}

#[test]
fn nan_weight_and_zero_group_are_clear_errors() {
    let mut w = Rng::new(1).signeds(16 * 4);
    w[5] = f32::NAN;
    let mut g = matmul_graph(1, 16, 4, &w);
    let e = quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2))).unwrap_err().to_string();
    assert!(e.contains("'W'") && e.contains("NaN"), "{e}");
    let mut g = matmul_graph(1, 16, 4, &Rng::new(2).signeds(64));
    let e = quantize_weights(&mut g, &QuantizeOptions { group_size: Some(0), ..QuantizeOptions::new(WeightScheme::Fixed(Format::Int4)) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("group size"), "{e}");
}

#[test]
fn int8_activations_mark_the_node_and_quantize_x_in_the_reference_path() {
    let (m, k, n) = (3, 70, 24);
    let (w, x) = (Rng::new(11).signeds(k * n), Rng::new(12).signeds(m * k));
    let mut g = matmul_graph(m, k, n, &w);
    let opts = QuantizeOptions { activations: Activations::Int8, ..QuantizeOptions::new(WeightScheme::Fp6Auto) };
    let s = quantize_weights(&mut g, &opts).unwrap();
    // fp6-auto may only pick the format whose values are small integers.
    assert_eq!(s.layers[0].format, Format::Fp6E2M3);
    verify::verify(&g, &OpRegistry::standard()).unwrap();
    let node = g.node(g.node_ids()[0]);
    assert_eq!(fpx_ir::ops::quant_matmul::read(node).unwrap().activations, fpx_quant::act8::Activations::Int8);
    // The product takes what the int8 codes stand for: an f64 reference on those rows.
    let q = quantize("W", &w, k, n, &QuantConfig { format: Format::Fp6E2M3, group_size: None, scale_search: false, pow2_scales: false })
        .unwrap();
    let xq = Int8Activations::quantize(&x, m, k).dequantized();
    assert_close(&run(g, tensor(&[m, k], x.clone())), &reference(&xq, m, k, n, &q.dequantize(), None));
    assert!(xq != x, "the rows were quantized");
    // A scheme without small integer values, or none at all, is refused up front.
    for (scheme, needle) in [(WeightScheme::Fixed(Format::Fp6E3M2), "fp6-e3m2 has none"), (WeightScheme::None, "pick a weight scheme")] {
        let opts = QuantizeOptions { activations: Activations::Int8, ..QuantizeOptions::new(scheme) };
        let e = quantize_weights(&mut matmul_graph(1, 16, 4, &Rng::new(2).signeds(64)), &opts).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn fp8_activations_mark_the_node_and_round_x_per_row_in_the_reference_path() {
    let (m, k, n) = (4, 70, 24);
    let w = Rng::new(13).signeds(k * n);
    // Rows of very different magnitudes: each gets its own power-of-two scale.
    let mut x = Rng::new(14).signeds(m * k);
    x.iter_mut().enumerate().for_each(|(i, v)| *v *= [1.0, 1e-3, 300.0, 7.0][i / k]);
    for (format, act) in
        [(Format::Fp4E2M1, Activations::Fp8E4M3), (Format::Fp6E3M2, Activations::Fp8E5M2), (Format::Int4, Activations::Fp8E4M3)]
    {
        let mut g = matmul_graph(m, k, n, &w);
        let opts = QuantizeOptions { activations: act, group_size: Some(32), ..QuantizeOptions::new(WeightScheme::Fixed(format)) };
        quantize_weights(&mut g, &opts).unwrap();
        verify::verify(&g, &OpRegistry::standard()).unwrap();
        assert_eq!(fpx_ir::ops::quant_matmul::read(g.node(g.node_ids()[0])).unwrap().activations, act);
        let q = quantize("W", &w, k, n, &QuantConfig { format, group_size: Some(32), scale_search: false, pow2_scales: false }).unwrap();
        let xq = fpx_quant::act_fp8::Fp8Activations::quantize(&x, m, k, act.fp8_format().unwrap()).unwrap();
        assert!(xq.scales.windows(2).all(|s| s[0] != s[1]), "one scale per row: {:?}", xq.scales);
        let xd = xq.dequantized();
        assert_close(&run(g, tensor(&[m, k], x.clone())), &reference(&xd, m, k, n, &q.dequantize(), None));
        assert!(xd != x, "the rows were rounded");
    }
    // FP8 activations take any format, fp6-auto keeps both candidates.
    let opts = QuantizeOptions { activations: Activations::Fp8E4M3, ..QuantizeOptions::new(WeightScheme::Fp6Auto) };
    assert_eq!(opts.candidates(), [Format::Fp6E3M2, Format::Fp6E2M3]);
}

/// The LoRC factors of the one QuantMatMul in `g`, as f32 `[k][r]` and `[r][n]`.
fn lorc_factors(g: &Graph) -> (Vec<f32>, Vec<f32>, usize) {
    let node = g.node(g.node_ids().into_iter().find(|&id| g.node(id).op_type == "QuantMatMul").unwrap());
    let get = |i: usize| g.load_constant(node.inputs[i].unwrap()).unwrap().unwrap();
    let (u, v) = (get(fpx_ir::ops::quant_matmul::LORC_U_INPUT), get(fpx_ir::ops::quant_matmul::LORC_V_INPUT));
    assert_eq!((u.dtype(), v.dtype()), (DType::F16, DType::F16), "factors are stored as FP16");
    let r = u.shape()[1];
    (u.to_f32().iter().copied().collect(), v.to_f32().iter().copied().collect(), r)
}

/// `‖a − b‖ / ‖b‖` in f64.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    (d / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
}

#[test]
fn lorc_adds_the_stored_low_rank_correction_and_shrinks_the_error_with_rank() {
    let (m, k, n) = (6, 96, 48);
    let (w, x) = (Rng::new(31).signeds(k * n), Rng::new(32).signeds(m * k));
    let exact = reference(&x, m, k, n, &w, None);
    let cfg = QuantConfig { format: Format::Fp4E2M1, group_size: None, scale_search: false, pow2_scales: false };
    let dq = quantize("W", &w, k, n, &cfg).unwrap().dequantize();
    let plain = rel_err(&reference(&x, m, k, n, &dq, None), &exact);
    let mut last = (plain, f64::INFINITY);
    for rank in [2, 8, 32, 48] {
        let mut g = matmul_graph(m, k, n, &w);
        let opts = QuantizeOptions { lorc_rank: Some(rank), ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
        let s = quantize_weights(&mut g, &opts).unwrap();
        verify::verify(&g, &OpRegistry::standard()).unwrap();
        let (u, v, r) = lorc_factors(&g);
        assert_eq!((r, s.layers[0].lorc_rank, s.layers[0].lorc_bytes), (rank, rank, 2 * rank * (k + n)));
        // The graph computes X · (Q(W) + U · V) with the stored FP16 factors.
        let corrected: Vec<f32> = (0..k * n).map(|i| dq[i] + (0..r).map(|j| u[(i / n) * r + j] * v[j * n + i % n]).sum::<f32>()).collect();
        let got = run(g, tensor(&[m, k], x.clone()));
        assert_close(&got, &reference(&x, m, k, n, &corrected, None));
        let err = rel_err(&got, &exact);
        eprintln!(
            "fp4-e2m1 {k}x{n} LoRC rank {rank}: output error {err:.4} (without {plain:.4}), weight error {:.4}",
            s.layers[0].rel_rmse
        );
        assert!(err < last.0 && s.layers[0].rel_rmse < last.1, "rank {rank}: {err} after {}", last.0);
        last = (err, s.layers[0].rel_rmse);
    }
    // Full rank (48 = min(K, N)) leaves only FP16 rounding of the factors.
    assert!(last.0 < 2e-3 * plain.max(1.0) && last.1 < 2e-3, "{last:?}");
    for (rank, needle) in [(0, "at least 1"), (5000, "more than 1024")] {
        let opts = QuantizeOptions { lorc_rank: Some(rank), ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
        assert!(opts.validate().unwrap_err().to_string().contains(needle));
    }
}

/// Fusing a bias add and a residual add into a product keeps its LoRC factors (inputs 5 and 6
/// come after the bias and residual slots).
#[test]
fn lorc_factors_survive_epilogue_fusion() {
    let (m, k, n) = (2, 64, 32);
    let (w, x, b) = (Rng::new(51).signeds(k * n), Rng::new(52).signeds(m * k), Rng::new(53).signeds(n));
    let mut g = matmul_graph(m, k, n, &w);
    // y = MatMul(x, W) + b, renamed so the Add writes the graph output.
    let mm_out = g.outputs.pop().unwrap();
    let bv = g.add_constant("b", tensor(&[n], b.clone())).unwrap();
    let y = g.value_named("y_biased");
    g.add_node(Node::new("add", "Add", 17, vec![Some(mm_out), Some(bv)], vec![y])).unwrap();
    g.outputs.push(y);
    let opts = QuantizeOptions { lorc_rank: Some(32), ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
    quantize_weights(&mut g, &opts).unwrap();
    let node = g.node(g.node_ids()[0]);
    assert_eq!(g.node_ids().len(), 1, "the Add is fused");
    assert!(node.inputs[3].is_some() && node.inputs[5].is_some() && node.inputs[6].is_some(), "{:?}", node.inputs);
    // Full rank: X · W + b up to FP16 rounding of the factors.
    let got = run(g, tensor(&[m, k], x.clone()));
    let err = rel_err(&got, &reference(&x, m, k, n, &w, Some(&b)));
    assert!(err < 2e-3, "{err}");
}

/// A Gemm with `transB` and `alpha`: the correction is of W as the product uses it, scaled by
/// alpha like the scales.
#[test]
fn lorc_follows_gemm_transposes_and_alpha() {
    let (m, k, n) = (3, 40, 24);
    let b_t = Rng::new(41).signeds(n * k);
    let x = Rng::new(42).signeds(m * k);
    let w: Vec<f32> = (0..k * n).map(|i| b_t[(i % n) * k + i / n]).collect();
    let mut g = Graph::new("gemm");
    g.opsets.insert(String::new(), 13);
    let xv = g.add_input("x", TensorType::fixed(DType::F32, &[m, k])).unwrap();
    let bv = g.add_constant("B", tensor(&[n, k], b_t)).unwrap();
    let y = g.value_named("y");
    let mut node = Node::new("gemm", "Gemm", 13, vec![Some(xv), Some(bv)], vec![y]);
    node.attrs.insert("transB".into(), Attribute::Int(1));
    node.attrs.insert("alpha".into(), Attribute::Float(0.5));
    g.add_node(node).unwrap();
    g.outputs.push(y);
    let opts = QuantizeOptions { lorc_rank: Some(24), ..QuantizeOptions::new(WeightScheme::Fixed(Format::Int4)) };
    quantize_weights(&mut g, &opts).unwrap();
    let half_w: Vec<f32> = w.iter().map(|v| v * 0.5).collect();
    // Full rank: the product is 0.5 · X · W up to FP16 rounding of the factors.
    let got = run(g, tensor(&[m, k], x.clone()));
    let err = rel_err(&got, &reference(&x, m, k, n, &half_w, None));
    assert!(err < 2e-3, "{err}");
}

/// LoRC factors stored as float-format codes (`--lorc-factors`): the node holds `uint8` code
/// buffers, `[2, r]` scales and `lorc_format`; the graph computes `X · (Q(W) + U·V)` with the
/// factors decoded from those codes (recomputed here from the stored bytes with
/// `fpx_quant::dense` and the format's decoder), through a Gemm's alpha and a fused bias; the
/// stored bytes are the formula's; the correction keeps most of the FP16 factors' gain and
/// fewer bits lose more.
#[test]
fn lorc_factors_stored_as_float_codes() {
    use fpx_ir::ops::quant_matmul::{lorc_storage, LORC_SCALES_INPUT, LORC_U_INPUT, LORC_V_INPUT};
    use fpx_quant::lorc::FactorStorage;
    let (m, k, n, rank) = (5, 96, 40, 8);
    let b_t = Rng::new(61).signeds(n * k);
    let (x, bias) = (Rng::new(62).signeds(m * k), Rng::new(63).signeds(n));
    let w: Vec<f32> = (0..k * n).map(|i| b_t[(i % n) * k + i / n]).collect();
    let alpha = 0.5f32;
    let graph = || {
        let mut g = Graph::new("gemm");
        g.opsets.insert(String::new(), 13);
        let xv = g.add_input("x", TensorType::fixed(DType::F32, &[m, k])).unwrap();
        let bv = g.add_constant("B", tensor(&[n, k], b_t.clone())).unwrap();
        let cv = g.add_constant("C", tensor(&[n], bias.clone())).unwrap();
        let y = g.value_named("y");
        let mut node = Node::new("gemm", "Gemm", 13, vec![Some(xv), Some(bv), Some(cv)], vec![y]);
        node.attrs.insert("transB".into(), Attribute::Int(1));
        node.attrs.insert("alpha".into(), Attribute::Float(alpha));
        g.add_node(node).unwrap();
        g.outputs.push(y);
        g
    };
    let scaled_w: Vec<f32> = w.iter().map(|v| v * alpha).collect();
    let exact = reference(&x, m, k, n, &scaled_w, Some(&bias));
    let error_with = |storage: FactorStorage| {
        let mut g = graph();
        let opts =
            QuantizeOptions { lorc_rank: Some(rank), lorc_factors: storage, ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1)) };
        let s = quantize_weights(&mut g, &opts).unwrap();
        verify::verify(&g, &OpRegistry::standard()).unwrap();
        assert_eq!(s.layers[0].lorc_bytes, storage.bytes(k, n, rank), "{storage:?}");
        let node = g.node(g.node_ids().into_iter().find(|&id| g.node(id).op_type == "QuantMatMul").unwrap()).clone();
        assert_eq!(lorc_storage(&node).unwrap(), storage);
        if let FactorStorage::Quantized(format) = storage {
            let get = |i: usize| g.load_constant(node.inputs[i].unwrap()).unwrap().unwrap();
            let (u, v, sc) = (get(LORC_U_INPUT), get(LORC_V_INPUT), get(LORC_SCALES_INPUT));
            assert_eq!((u.dtype(), v.dtype(), sc.shape()), (DType::U8, DType::U8, &[2, rank][..]));
            let bytes = |t: &Tensor| t.to_f32().iter().map(|&b| b as u8).collect::<Vec<u8>>();
            let bits = format.bits();
            let uc = fpx_quant::dense::unpack(&bytes(&u), bits, rank * k).unwrap();
            let vc = fpx_quant::dense::unpack(&bytes(&v), bits, rank * n).unwrap();
            let sc: Vec<f32> = sc.to_f32().iter().copied().collect();
            // W · alpha + U · V, from the codes (V's scales carry alpha).
            let q = quantize(
                "W",
                &w,
                k,
                n,
                &QuantConfig { format: Format::Fp4E2M1, group_size: None, scale_search: false, pow2_scales: false },
            )
            .unwrap()
            .dequantize();
            let corrected: Vec<f32> = (0..k * n)
                .map(|i| {
                    let (row, col) = (i / n, i % n);
                    q[i] * alpha
                        + (0..rank)
                            .map(|j| format.decode(uc[j * k + row]) * sc[j] * format.decode(vc[j * n + col]) * sc[rank + j])
                            .sum::<f32>()
                })
                .collect();
            let got = run(g.clone(), tensor(&[m, k], x.clone()));
            assert_close(&got, &reference(&x, m, k, n, &corrected, Some(&bias)));
        }
        rel_err(&run(g, tensor(&[m, k], x.clone())), &exact)
    };
    let f16 = error_with(FactorStorage::F16);
    let fp8 = error_with(FactorStorage::Quantized(Format::Fp8E4M3));
    let fp6 = error_with(FactorStorage::Quantized(Format::Fp6E2M3));
    let fp4 = error_with(FactorStorage::Quantized(Format::Fp4E2M1));
    let mut g = graph();
    quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1))).unwrap();
    let none = rel_err(&run(g, tensor(&[m, k], x.clone())), &exact);
    eprintln!(
        "fp4-e2m1 {k}x{n} LoRC rank {rank}: output error none {none:.4}, f16 {f16:.4}, fp8-e4m3 {fp8:.4}, fp6-e2m3 {fp6:.4}, fp4 {fp4:.4}"
    );
    assert!(f16 < none && fp8 < none && fp6 < none, "{none} {f16} {fp8} {fp6}");
    // FP8 factors keep at least 90 % of the FP16 factors' gain; FP4 loses more than FP6.
    assert!(none - fp8 >= 0.9 * (none - f16), "{none} {f16} {fp8}");
    assert!(fp4 > fp6, "{fp4} {fp6}");
    // A factor storage without a rank is refused.
    let opts = QuantizeOptions {
        lorc_factors: FactorStorage::Quantized(Format::Fp8E4M3),
        ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp4E2M1))
    };
    assert!(opts.validate().unwrap_err().to_string().contains("need a LoRC rank"));
}

// ---------------------------------------------------------------------------------------------
// Erf-GELU fusion

/// `y = Mul(Mul(x, Add(Erf(Div(x, c_div)), c_add)), c_half)` as PyTorch exports it; `swap`
/// flips the operand order of every commutative node; `leak` also makes the Erf output a graph
/// output (so the chain must stay).
fn gelu_chain(c_div: f32, c_add: f32, c_half: f32, swap: bool, leak: bool) -> Graph {
    let mut g = Graph::new("gelu");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[3, 37])).unwrap();
    let cd = g.add_constant("c_div", Tensor::scalar_f32(c_div)).unwrap();
    let ca = g.add_constant("c_add", Tensor::scalar_f32(c_add)).unwrap();
    let ch = g.add_constant("c_half", Tensor::scalar_f32(c_half)).unwrap();
    let [d, e, a, m, y] = ["d", "e", "a", "m", "y"].map(|n| g.value_named(n));
    let ord = |p, q| if swap { vec![Some(q), Some(p)] } else { vec![Some(p), Some(q)] };
    g.add_node(Node::new("div", "Div", 17, vec![Some(x), Some(cd)], vec![d])).unwrap();
    g.add_node(Node::new("erf", "Erf", 17, vec![Some(d)], vec![e])).unwrap();
    g.add_node(Node::new("add", "Add", 17, ord(e, ca), vec![a])).unwrap();
    g.add_node(Node::new("mul", "Mul", 17, ord(x, a), vec![m])).unwrap();
    g.add_node(Node::new("mul_1", "Mul", 17, ord(m, ch), vec![y])).unwrap();
    g.outputs = if leak { vec![y, e] } else { vec![y] };
    g
}

fn fuse(g: &mut Graph) -> bool {
    use fpx_ir::pass::PassManager;
    let before = g.node_count();
    PassManager::new().with(crate::FuseGelu).run(g, &OpRegistry::standard()).unwrap();
    g.node_count() != before
}

#[test]
fn erf_gelu_chains_fuse_into_one_gelu_with_the_same_values() {
    let x = tensor(&[3, 37], Rng::new(11).signeds(3 * 37).iter().map(|v| v * 6.0).collect());
    for swap in [false, true] {
        let original = gelu_chain(std::f32::consts::SQRT_2, 1.0, 0.5, swap, false);
        let want = run(original.clone(), x.clone());
        let mut g = original;
        assert!(fuse(&mut g), "swap={swap}: the chain is fused");
        let ops: Vec<String> = g.node_ids().into_iter().map(|id| g.node(id).op_type.clone()).collect();
        assert_eq!(ops, ["Gelu"], "swap={swap}");
        let gelu = g.node(g.node_ids()[0]);
        assert_eq!((gelu.name.as_str(), gelu.opset, gelu.outputs[0]), ("mul_1", 20, g.outputs[0]));
        assert_eq!(g.find_value("c_div").and_then(|v| g.constant(v)), None, "the chain's constants are dropped");
        let got = run(g, x.clone());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "element {i}: fused {a} vs chain {b}");
        }
        // And against the exact GELU in f64.
        for (v, gv) in x.to_f64_vec().iter().zip(&got) {
            let exact = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
            assert!((gv - exact).abs() <= 1e-5 * exact.abs().max(1.0), "gelu({v}) = {gv}, want {exact}");
        }
    }
}

/// An FP16 (or BF16) export stores √2 as 1.4140625: the chain still fuses, and the fused GELU
/// stays within the 16-bit constant's difference (1e-4 relative) of the chain.
#[test]
fn erf_gelu_chains_with_16_bit_constants_fuse() {
    let x = tensor(&[3, 37], Rng::new(12).signeds(3 * 37).iter().map(|v| v * 6.0).collect());
    for c in
        [fpx_ir::half::f16::from_f32(std::f32::consts::SQRT_2).to_f32(), fpx_ir::half::bf16::from_f32(std::f32::consts::SQRT_2).to_f32()]
    {
        assert_ne!(c, std::f32::consts::SQRT_2);
        let original = gelu_chain(c, 1.0, 0.5, false, false);
        let want = run(original.clone(), x.clone());
        let mut g = original;
        assert!(fuse(&mut g), "√2 as {c}: the chain is fused");
        let got = run(g, x.clone());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 2e-3 * b.abs().max(1e-2), "fused {a} vs chain {b}");
        }
    }
    // 1.41 is neither.
    let mut g = gelu_chain(1.41, 1.0, 0.5, false, false);
    assert!(!fuse(&mut g));
}

#[test]
fn near_miss_chains_are_left_alone() {
    for (what, mut g) in [
        ("a 0.4 instead of 0.5", gelu_chain(std::f32::consts::SQRT_2, 1.0, 0.4, false, false)),
        ("dividing by 2", gelu_chain(2.0, 1.0, 0.5, false, false)),
        ("adding 2", gelu_chain(std::f32::consts::SQRT_2, 2.0, 0.5, true, false)),
        ("the Erf output also a graph output", gelu_chain(std::f32::consts::SQRT_2, 1.0, 0.5, false, true)),
    ] {
        assert!(!fuse(&mut g), "{what}: nothing is fused");
        assert_eq!(g.node_count(), 5, "{what}");
    }
}

/// Weights kept in a file as FP16 (as large ONNX external data is) are read as stored,
/// converted while transposed (a MatMul weight) or as they are (a Gemm `transB` weight), and
/// quantize exactly as the same values in memory do; a file cut short under the graph is an
/// error naming the weight, and the graph keeps its float products.
#[test]
fn stored_16_bit_weights_quantize_as_in_memory_and_a_short_file_is_named() {
    use fpx_ir::half::f16;
    use fpx_ir::stored::{FileBytes, StoredTensor};
    use std::sync::Arc;
    let (m, k, h, n) = (3, 70, 40, 33);
    let halves = |len: usize, seed: u64| -> Vec<f16> { Rng::new(seed).signeds(len).iter().map(|&v| f16::from_f32(v)).collect() };
    let (w1, w2) = (halves(k * h, 11), halves(n * h, 12));
    let dir = fpx_test_support::TempDir::new("stored-f16");
    let path = dir.path().join("weights.bin");
    let bytes: Vec<u8> = w1.iter().chain(&w2).flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, &bytes).unwrap();
    // x [m, k] → MatMul(W1 [k, h]) → Gemm(transB, W2 [n, h]) → y [m, n].
    let graph = |stored: bool| {
        let mut g = Graph::new("two");
        g.opsets.insert(String::new(), 17);
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k])).unwrap();
        let (a, b) = if stored {
            let file = Arc::new(FileBytes::new(std::fs::File::open(&path).unwrap(), path.clone()));
            let at = |offset: usize, shape: Vec<usize>| StoredTensor::new(file.clone(), offset as u64, DType::F16, shape).cast(DType::F32);
            (g.add_stored("W1", at(0, vec![k, h])).unwrap(), g.add_stored("W2", at(k * h * 2, vec![n, h])).unwrap())
        } else {
            let f32s = |w: &[f16], shape: &[usize]| tensor(shape, w.iter().map(|v| v.to_f32()).collect());
            (g.add_constant("W1", f32s(&w1, &[k, h])).unwrap(), g.add_constant("W2", f32s(&w2, &[n, h])).unwrap())
        };
        let (t, y) = (g.value_named("t"), g.value_named("y"));
        g.add_node(Node::new("mm", "MatMul", 17, vec![Some(x), Some(a)], vec![t])).unwrap();
        let mut gemm = Node::new("gemm", "Gemm", 17, vec![Some(t), Some(b)], vec![y]);
        gemm.attrs.insert("transB".into(), Attribute::Int(1));
        g.add_node(gemm).unwrap();
        g.outputs.push(y);
        g
    };
    let opts = QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E2M3));
    let (mut from_file, mut in_memory) = (graph(true), graph(false));
    let (s_file, s_memory) = (quantize_weights(&mut from_file, &opts).unwrap(), quantize_weights(&mut in_memory, &opts).unwrap());
    assert_eq!(s_file.layers, s_memory.layers);
    // Stored FP16 counts 2 bytes a weight, the in-memory f32 copy 4.
    assert_eq!((s_file.weight_bytes_in, s_memory.weight_bytes_in), (2 * (k * h + n * h), 4 * (k * h + n * h)));
    let x = tensor(&[m, k], Rng::new(13).signeds(m * k));
    let (a, b) = (run(from_file, x.clone()), run(in_memory, x));
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "the same products");

    // The file loses its second weight's last bytes after the graph was made.
    let mut short = graph(true);
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = quantize_weights(&mut short, &opts).unwrap_err().to_string();
    assert!(e.contains("W2") && e.contains("weights.bin"), "{e}");
    let ops: Vec<String> = short.node_ids().into_iter().map(|id| short.node(id).op_type.clone()).collect();
    assert_eq!(ops, ["MatMul", "Gemm"], "the graph is left as it was");
}
