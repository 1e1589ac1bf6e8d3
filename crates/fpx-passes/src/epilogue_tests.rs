//! Epilogue fusion on small random graphs: what fuses and what must not, and the fused graph
//! computing what the unfused one does (both through the CPU executor's reference kernels, the
//! unfused one with the standard ONNX kernels for the bias, activation, gate and residual).

use crate::{quantize_weights, QuantizeOptions, WeightScheme};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::quant_matmul::{self, Activation};
use fpx_ir::{Attribute, DType, Dim, Graph, Node, Tensor, TensorType, ValueId};
use fpx_quant::act8::Activations;
use fpx_quant::Format;
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// A graph builder over `x: [b, s, k]` (b and s symbolic) with random seeded weights.
struct Builder {
    g: Graph,
    rng: Rng,
    next: usize,
}

impl Builder {
    fn new(k: usize) -> (Builder, ValueId) {
        let mut g = Graph::new("epilogues");
        g.opsets.insert(String::new(), 20);
        let ty = TensorType { dtype: DType::F32, shape: Some(vec![Dim::Sym("b".into()), Dim::Sym("s".into()), Dim::Fixed(k)]) };
        let x = g.add_input("x", ty).unwrap();
        (Builder { g, rng: Rng::new(2024), next: 0 }, x)
    }

    fn op(&mut self, op: &str, inputs: &[ValueId]) -> ValueId {
        self.next += 1;
        let name = format!("{}_{}", op.to_lowercase(), self.next);
        let out = self.g.value_named(&name);
        self.g.add_node(Node::new(name, op, 20, inputs.iter().map(|&v| Some(v)).collect(), vec![out])).unwrap();
        out
    }

    fn constant(&mut self, shape: &[usize]) -> ValueId {
        self.next += 1;
        let len = shape.iter().product();
        let v = self.rng.signeds(len).into_iter().map(|v| v * 0.5).collect();
        self.g.add_constant(&format!("c{}", self.next), tensor(shape, v)).unwrap()
    }

    fn matmul(&mut self, x: ValueId, k: usize, n: usize) -> ValueId {
        let w = self.constant(&[k, n]);
        self.op("MatMul", &[x, w])
    }
}

/// An attention output projection with bias and residual, a SiLU-gated MLP with residual, a
/// bias + ReLU product of ragged width and an exact GELU product.
fn block(k: usize, inter: usize) -> (Graph, usize) {
    let (mut b, x) = Builder::new(k);
    let o = b.matmul(x, k, k);
    let bias = b.constant(&[k]);
    let o = b.op("Add", &[o, bias]);
    let r1 = b.op("Add", &[x, o]);
    let gate = b.matmul(r1, k, inter);
    let sig = b.op("Sigmoid", &[gate]);
    let act = b.op("Mul", &[sig, gate]);
    let up = b.matmul(r1, k, inter);
    let h = b.op("Mul", &[up, act]);
    let down = b.matmul(h, inter, k);
    let r2 = b.op("Add", &[down, r1]);
    let e = b.matmul(r2, k, 40);
    let be = b.constant(&[1, 1, 40]);
    let e = b.op("Add", &[be, e]);
    let e = b.op("Relu", &[e]);
    let f = b.matmul(r2, k, 32);
    let f = b.op("Gelu", &[f]);
    b.g.outputs.extend([r2, e, f]);
    (b.g, 5)
}

fn run(g: &Graph, x: &Tensor) -> Vec<Vec<f64>> {
    let out = CpuExecutor::new(g.clone()).unwrap().run(vec![("x".into(), x.clone())]).unwrap();
    out.into_iter().map(|(_, t)| t.to_f64_vec()).collect()
}

fn ops(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = g.node_ids().into_iter().map(|id| g.node(id).op_type.clone()).collect();
    v.sort();
    v
}

fn quantized(g: &Graph, fuse: bool, activations: Activations) -> Graph {
    let mut g = g.clone();
    let format = if activations == Activations::Int8 { Format::Fp6E2M3 } else { Format::Fp6E3M2 };
    let opts = QuantizeOptions { fuse_epilogues: fuse, activations, ..QuantizeOptions::new(WeightScheme::Fixed(format)) };
    quantize_weights(&mut g, &opts).unwrap();
    fpx_ir::verify::verify(&g, &fpx_ir::ops::OpRegistry::standard()).unwrap();
    g
}

#[test]
fn every_epilogue_fuses_and_matches_the_unfused_graph() {
    let (k, inter) = (64, 48);
    let (g, _) = block(k, inter);
    for activations in [Activations::F32, Activations::Int8] {
        let (plain, fused) = (quantized(&g, false, activations), quantized(&g, true, activations));
        assert_eq!(ops(&plain).iter().filter(|o| *o == "QuantMatMul").count(), 6);
        // Everything after the products went into them: o_proj (bias + residual), the gated
        // gate/up pair, down (residual), the ReLU product (bias) and the GELU product.
        assert_eq!(ops(&fused), vec!["QuantMatMul"; 5], "{activations:?}");
        let epilogues: Vec<_> = fused
            .node_ids()
            .into_iter()
            .map(|id| {
                let n = fused.node(id);
                let e = quant_matmul::epilogue(n, &quant_matmul::read(n).unwrap()).unwrap();
                (e.activation, e.gated, e.residual, n.inputs.get(3).is_some_and(|b| b.is_some()))
            })
            .collect();
        for want in [
            (None, false, true, true),
            (Some(Activation::Silu), true, false, false),
            (None, false, true, false),
            (Some(Activation::Relu), false, false, true),
            (Some(Activation::Gelu), false, false, false),
        ] {
            assert!(epilogues.contains(&want), "{want:?} not in {epilogues:?}");
        }
        for (b, s) in [(1, 1), (2, 3), (3, 17)] {
            let x = tensor(&[b, s, k], Rng::new(b as u64 * 31 + s as u64).signeds(b * s * k));
            let (want, got) = (run(&plain, &x), run(&fused, &x));
            for (o, (w, v)) in want.iter().zip(&got).enumerate() {
                let scale = w.iter().fold(0f64, |a, b| a.max(b.abs()));
                let err = w.iter().zip(v).fold(0f64, |a, (p, q)| a.max((p - q).abs()));
                assert!(err <= 2e-6 * scale, "{activations:?} output {o} at b={b} s={s}: error {err} of {scale}");
            }
        }
    }
}

/// Chains whose intermediates are read elsewhere, an approximate GELU, and a gate and up
/// reading different inputs stay (partly) unfused; a residual that broadcasts fuses (added with
/// broadcasting); and the graph still computes the same outputs.
#[test]
fn chains_that_cannot_fuse_stay_as_they_are() {
    let k = 32;
    let (mut b, x) = Builder::new(k);
    // The product's output is also a graph output: nothing may fuse into it.
    let seen = b.matmul(x, k, 32);
    let bias = b.constant(&[32]);
    let seen_plus = b.op("Add", &[seen, bias]);
    // GELU with the tanh approximation is not the exact form the epilogue computes.
    let t = b.matmul(x, k, 32);
    let tanh_gelu = b.op("Gelu", &[t]);
    if let Some((id, _)) = b.g.value(tanh_gelu).producer {
        b.g.node_mut(id).attrs.insert("approximate".into(), Attribute::String("tanh".into()));
    }
    // A residual of shape [1, 1, 32] broadcasts over Y: fused, added with broadcasting.
    let r = b.g.add_input("r", TensorType::fixed(DType::F32, &[1, 1, 32])).unwrap();
    let p = b.matmul(x, k, 32);
    let broadcast = b.op("Add", &[p, r]);
    // Gate and up of different inputs: the SiLU fuses, the gating does not.
    let gate = b.matmul(x, k, 32);
    let sig = b.op("Sigmoid", &[gate]);
    let act = b.op("Mul", &[gate, sig]);
    let up = b.matmul(seen_plus, 32, 32);
    let h = b.op("Mul", &[act, up]);
    b.g.outputs.extend([seen, seen_plus, tanh_gelu, broadcast, h]);
    let g = b.g;
    let (plain, fused) = (quantized(&g, false, Activations::F32), quantized(&g, true, Activations::F32));
    let mut want_ops = vec!["Add", "Gelu", "Mul", "QuantMatMul", "QuantMatMul", "QuantMatMul", "QuantMatMul", "QuantMatMul"];
    want_ops.sort();
    assert_eq!(ops(&fused), want_ops);
    let silu = fused.node_ids().into_iter().filter(|&id| fused.node(id).attrs.contains_key("activation")).count();
    assert_eq!(silu, 1, "only the SiLU fuses");
    let residuals = fused.node_ids().into_iter().filter(|&id| fused.node(id).inputs.get(4).is_some_and(|r| r.is_some())).count();
    assert_eq!(residuals, 1, "the broadcasting residual fuses");
    let x = tensor(&[2, 3, k], Rng::new(5).signeds(6 * k));
    let rv = tensor(&[1, 1, 32], Rng::new(6).signeds(32));
    let go = |g: &Graph| {
        let out = CpuExecutor::new(g.clone()).unwrap().run(vec![("x".into(), x.clone()), ("r".into(), rv.clone())]).unwrap();
        out.into_iter().map(|(_, t)| t.to_f64_vec()).collect::<Vec<_>>()
    };
    for (w, v) in go(&plain).iter().zip(go(&fused)) {
        let scale = w.iter().fold(0f64, |a, b| a.max(b.abs()));
        assert!(w.iter().zip(&v).all(|(p, q)| (p - q).abs() <= 2e-6 * scale));
    }
}
