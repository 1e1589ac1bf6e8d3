//! Quantized embedding tables: which tables are rewritten, a tied LM head's weight shared by
//! the lookup, rows within the format's rounding of the table, negative and bad indices.

use crate::{quantize_weights, QuantizeOptions, WeightScheme};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::quant_gather;
use fpx_ir::{DType, Graph, Node, Tensor, TensorType, ValueId};
use fpx_quant::Format;
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn node(g: &mut Graph, op: &str, inputs: &[ValueId], out: &str) -> ValueId {
    let o = g.value_named(out);
    g.add_node(Node::new(out, op, 17, inputs.iter().map(|&v| Some(v)).collect(), vec![o])).unwrap();
    o
}

/// `rows = Gather(E[v, d], ids)`, `logits = rows @ Eᵀ` when `tied` (else `rows @ W[d, 8]`);
/// outputs rows and logits. Returns the graph and E.
fn lm(v: usize, d: usize, tied: bool) -> (Graph, Vec<f32>) {
    let mut rng = Rng::new(5);
    let e = rng.normals(v * d);
    let mut g = Graph::new("lm");
    g.opsets.insert(String::new(), 17);
    let ids = g.add_input("ids", TensorType::fixed(DType::I64, &[2, 3])).unwrap();
    let table = g.add_constant("embed", tensor(&[v, d], e.clone())).unwrap();
    let rows = node(&mut g, "Gather", &[table, ids], "rows");
    let head = if tied {
        let et: Vec<f32> = (0..d).flat_map(|j| (0..v).map(move |i| (i, j))).map(|(i, j)| e[i * d + j]).collect();
        g.add_constant("head_w", tensor(&[d, v], et)).unwrap()
    } else {
        g.add_constant("head_w", tensor(&[d, 8], rng.normals(d * 8))).unwrap()
    };
    let logits = node(&mut g, "MatMul", &[rows, head], "logits");
    g.outputs.extend([rows, logits]);
    fpx_ir::verify::infer_types(&mut g, &fpx_ir::ops::OpRegistry::standard()).unwrap();
    (g, e)
}

fn run(g: &Graph, ids: Vec<i64>) -> Result<Vec<f64>, String> {
    let idx = Tensor::from(ArrayD::from_shape_vec(IxDyn(&[2, 3]), ids).unwrap());
    let out = CpuExecutor::new(g.clone()).unwrap().run(vec![("ids".into(), idx)]).map_err(|e| e.to_string())?;
    Ok(out[0].1.to_f64_vec())
}

fn gathers(g: &Graph) -> Vec<&Node> {
    g.node_ids().into_iter().map(|n| g.node(n)).filter(|n| quant_gather::is_quant_gather(n)).collect()
}

#[test]
fn a_tied_table_shares_the_heads_quantized_weight() {
    let (mut g, e) = lm(300, 256, true);
    let s = quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E2M3))).unwrap();
    assert_eq!(s.embeddings.len(), 1);
    assert_eq!((s.embeddings[0].tied_with.as_deref(), s.embeddings[0].format), (Some("logits"), Format::Fp6E2M3));
    let qg = gathers(&g);
    assert_eq!(qg.len(), 1);
    let head = g.node_ids().into_iter().map(|n| g.node(n)).find(|n| n.op_type == "QuantMatMul").unwrap();
    assert_eq!(qg[0].inputs[0], head.inputs[1], "one packed copy");
    assert!(g.find_value("embed").is_none_or(|v| g.constant(v).is_none()), "the float table is gone");
    // Rows: the table within FP6 e2m3 rounding (per-row scale: 1/16 of the row's absmax).
    let ids = vec![0, 299, -1, 17, 17, 150];
    let got = run(&g, ids.clone()).unwrap();
    for (i, &ix) in ids.iter().enumerate() {
        let r = if ix < 0 { (300 + ix) as usize } else { ix as usize };
        let row = &e[r * 256..(r + 1) * 256];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (j, &w) in row.iter().enumerate() {
            let q = got[i * 256 + j];
            assert!((q - w as f64).abs() <= amax / 15.0, "row {r} col {j}: {q} vs {w}");
        }
    }
}

#[test]
fn an_untied_table_is_quantized_as_int8_per_row() {
    let (mut g, e) = lm(300, 256, false);
    let s = quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2))).unwrap();
    assert_eq!(s.embeddings.len(), 1);
    assert_eq!((s.embeddings[0].tied_with.as_deref(), s.embeddings[0].format), (None, Format::Int8));
    assert!(s.embeddings[0].bytes_out * 3 < s.embeddings[0].bytes_in);
    let got = run(&g, vec![3, 4, 5, 6, 7, -300]).unwrap();
    for (i, r) in [3usize, 4, 5, 6, 7, 0].into_iter().enumerate() {
        let row = &e[r * 256..(r + 1) * 256];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (j, &w) in row.iter().enumerate() {
            let q = got[i * 256 + j];
            assert!((q - w as f64).abs() <= amax / 127.0 * 0.5 + 1e-6, "row {r} col {j}: {q} vs {w}");
        }
    }
    // An index past the table is an error naming the node, not a panic.
    let err = run(&g, vec![0, 1, 2, 3, 300, 4]).unwrap_err();
    assert!(err.contains("rows") && err.contains("300"), "{err}");
}

#[test]
fn small_shared_or_kept_tables_stay_float() {
    // Under 65,536 elements.
    let (mut g, _) = lm(100, 64, false);
    assert!(quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2))).unwrap().embeddings.is_empty());
    assert!(gathers(&g).is_empty());
    // Embeddings off, or weights not quantized at all.
    for opts in [
        QuantizeOptions { embeddings: None, ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2)) },
        QuantizeOptions::new(WeightScheme::None),
    ] {
        let (mut g, _) = lm(300, 256, false);
        assert!(quantize_weights(&mut g, &opts).unwrap().embeddings.is_empty());
        assert!(gathers(&g).is_empty());
    }
    // A table something else reads too.
    let (mut g, _) = lm(300, 256, false);
    let t = g.find_value("embed").unwrap();
    let y = node(&mut g, "Relu", &[t], "relu_of_table");
    g.outputs.push(y);
    assert!(quantize_weights(&mut g, &QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2))).unwrap().embeddings.is_empty());
}
