//! Fused epilogues through the compiled CPU kernels: a transformer block (bias + residual on the
//! output projection, a SiLU-gated MLP with residual, bias + ReLU on a ragged width, exact GELU,
//! a residual that broadcasts)
//! compiled with and without fusion gives the same outputs, for f32 and int8 activations, at
//! M from 1 (GEMV) to 201 (GEMM, several epilogue blocks per thread), on 1 and 2 threads; and
//! the fused artifact equals the fused reference path.

use fpx::ir::Tensor;
use fpx::llvm::Activations;
use fpx::quant::Format;
use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
use fpx_test_support::onnx::{float_tensor, model_with_opsets, node, opset, save, value};
use fpx_test_support::{Rng, TempDir};
use std::path::Path;

const K: usize = 128;
const INTER: usize = 144;

/// Writes the block as an opset-20 ONNX model with random seeded weights.
fn write_block(path: &Path) {
    let mut rng = Rng::new(77);
    let mut inits = Vec::new();
    let mut w = |name: &str, dims: &[i64]| {
        let len = dims.iter().product::<i64>() as usize;
        let v: Vec<f32> = rng.signeds(len).into_iter().map(|v| v * 0.2).collect();
        inits.push(float_tensor(name, dims, &v));
        name.to_string()
    };
    let (k, i) = (K as i64, INTER as i64);
    let (wo, bo, wg, wu, wd, we, be, wf) = (
        w("wo", &[k, k]),
        w("bo", &[k]),
        w("wg", &[k, i]),
        w("wu", &[k, i]),
        w("wd", &[i, k]),
        w("we", &[k, 40]),
        w("be", &[40]),
        w("wf", &[k, 32]),
    );
    let wg2 = w("wg2", &[k, 32]);
    let nodes = vec![
        node("MatMul", "o_proj", &["x", &wo], &["o"]),
        node("Add", "o_bias", &["o", &bo], &["ob"]),
        node("Add", "residual1", &["x", "ob"], &["r1"]),
        node("MatMul", "gate_proj", &["r1", &wg], &["g"]),
        node("Sigmoid", "sig", &["g"], &["gs"]),
        node("Mul", "silu", &["g", "gs"], &["ga"]),
        node("MatMul", "up_proj", &["r1", &wu], &["u"]),
        node("Mul", "gated", &["ga", "u"], &["h"]),
        node("MatMul", "down_proj", &["h", &wd], &["d"]),
        node("Add", "residual2", &["d", "r1"], &["out"]),
        node("MatMul", "e_proj", &["out", &we], &["e"]),
        node("Add", "e_bias", &["e", &be], &["eb"]),
        node("Relu", "relu", &["eb"], &["relu_out"]),
        node("MatMul", "f_proj", &["out", &wf], &["f"]),
        node("Gelu", "gelu", &["f"], &["gelu_out"]),
        // A residual that broadcasts over the product (one row per batch): added afterwards.
        node("MatMul", "g_proj", &["out", &wg2], &["gp"]),
        node("Add", "residual3", &["r", "gp"], &["bcast_out"]),
    ];
    let kd = K.to_string();
    let inputs = vec![value("x", &["b", "s", &kd]), value("r", &["b", "1", "32"])];
    let outputs = vec![
        value("out", &["b", "s", &kd]),
        value("relu_out", &["b", "s", "40"]),
        value("gelu_out", &["b", "s", "32"]),
        value("bcast_out", &["b", "s", "32"]),
    ];
    save(&model_with_opsets(nodes, inputs, outputs, inits, vec![opset("", 20)]), path);
}

fn options(fuse: bool, activations: Activations) -> CompileOptions {
    let format = if activations == Activations::Int8 { Format::Fp6E2M3 } else { Format::Fp6E3M2 };
    let quantize = QuantizeOptions { fuse_epilogues: fuse, activations, ..QuantizeOptions::new(WeightScheme::Fixed(format)) };
    CompileOptions { quantize, ..crate::common::compile_options() }
}

fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w.iter().fold(0f64, |a, b| a.max(b.abs())).max(1e-9);
    g.iter().zip(&w).fold(0f64, |a, (x, y)| a.max((x - y).abs())) / scale
}

#[test]
fn fused_epilogues_match_the_unfused_artifact_and_the_reference_path() {
    let dir = TempDir::new("epilogue");
    let model = dir.path().join("block.onnx");
    write_block(&model);
    for activations in [Activations::F32, Activations::Int8] {
        let fused = fpx::compile(&model, &options(true, activations)).unwrap();
        let ops: Vec<&str> = fused.contents.graph.node_ids().into_iter().map(|id| fused.contents.graph.node(id).op_type.as_str()).collect();
        assert_eq!(ops, vec!["QuantMatMul"; 6], "{activations:?}: every epilogue fused");
        let fused = fused.load().unwrap();
        let plain = fpx::compile(&model, &options(false, activations)).unwrap().load().unwrap();
        let reference = fpx::Model::open_with(&model, &options(true, activations).quantize).unwrap();
        for (b, s) in [(1, 1), (2, 3), (3, 67)] {
            let x = Tensor::from(
                fpx::ir::ndarray::ArrayD::from_shape_vec(fpx::ir::ndarray::IxDyn(&[b, s, K]), Rng::new(s as u64).signeds(b * s * K))
                    .unwrap(),
            );
            let r = Tensor::from(
                fpx::ir::ndarray::ArrayD::from_shape_vec(fpx::ir::ndarray::IxDyn(&[b, 1, 32]), Rng::new(9).signeds(b * 32)).unwrap(),
            );
            let feed = || vec![("x".to_string(), x.clone()), ("r".to_string(), r.clone())];
            let want = reference.run(feed()).unwrap();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (f, p) = pool.install(|| (fused.run(feed()).unwrap(), plain.run(feed()).unwrap()));
                for ((name, f), ((_, p), (_, r))) in f.iter().zip(p.iter().zip(&want)) {
                    let (vs_plain, vs_ref) = (max_rel(f, p), max_rel(f, r));
                    assert!(
                        vs_plain <= 1e-5,
                        "{activations:?} {name} b={b} s={s} threads={threads}: fused vs unfused artifact {vs_plain:e}"
                    );
                    assert!(vs_ref <= 1e-5, "{activations:?} {name} b={b} s={s} threads={threads}: fused artifact vs reference {vs_ref:e}");
                }
            }
        }
    }
}
