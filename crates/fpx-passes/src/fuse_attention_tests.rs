//! `FuseAttention` on random decomposed-attention graphs: the fused node (run by the runtime's
//! streaming kernel) gives what the unfused graph gives, and near misses are left alone.

use crate::FuseAttention;
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::fused_attention::is_fused_attention;
use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::PassManager;
use fpx_ir::{verify, Attribute, DType, Graph, Node, Tensor, TensorType, ValueId};
use fpx_runtime::CpuExecutor;
use fpx_test_support::Rng;

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

fn ints(v: &[i64]) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
}

/// One decomposed attention: sizes, and how the exporter wrote it.
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    kv_heads: usize,
    group: usize,
    queries: usize,
    past: usize,
    head: usize,
    /// Scale Q and Kᵀ by √scale each (else divide the product by √D).
    split_scale: bool,
    /// Add a mask (padding + causal, -inf) and the NaN guard.
    masked: bool,
    /// Q, K and V come as `[B, S, H, D]` projections transposed into heads (K straight to Kᵀ
    /// by `[0, 2, 3, 1]` without GQA, as BERT exports do), and Y is transposed back.
    bshd: bool,
}

struct Builder {
    g: Graph,
    count: usize,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: Vec<ValueId>, attrs: &[(&str, Attribute)]) -> ValueId {
        self.count += 1;
        let out = self.g.value_named(&format!("v{}", self.count));
        let mut n = Node::new(format!("n{}", self.count), op, 17, inputs.into_iter().map(Some).collect(), vec![out]);
        n.attrs.extend(attrs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self.g.add_node(n).unwrap();
        out
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        self.count += 1;
        self.g.add_constant(&format!("c{}", self.count), t).unwrap()
    }

    /// `Reshape(Expand(Unsqueeze(x, 2), [B, Hkv, group, S, size]), [B, Hkv·group, S, size])`.
    fn expand_heads(&mut self, x: ValueId, c: &Case, size: usize) -> ValueId {
        if c.group == 1 {
            return x;
        }
        let s = (c.past + c.queries) as i64;
        let (b, h, gr, d) = (c.batch as i64, c.kv_heads as i64, c.group as i64, size as i64);
        let axes = self.constant(ints(&[2]));
        let u = self.node("Unsqueeze", vec![x, axes], &[]);
        let shape = self.constant(ints(&[b, h, gr, s, d]));
        let e = self.node("Expand", vec![u, shape], &[]);
        let flat = self.constant(ints(&[b, h * gr, s, d]));
        self.node("Reshape", vec![e, flat], &[])
    }
}

/// The graph of `case` and its inputs.
fn build(c: &Case, rng: &mut Rng) -> (Graph, Vec<(String, Tensor)>) {
    let (b, hq, hkv, sq, t, d) = (c.batch, c.kv_heads * c.group, c.kv_heads, c.queries, c.past + c.queries, c.head);
    let mut g = Graph::new("attention");
    g.opsets.insert(String::new(), 17);
    let shapes = if c.bshd {
        [("q", [b, sq, hq, d]), ("k", [b, t, hkv, d]), ("v", [b, t, hkv, d])]
    } else {
        [("q", [b, hq, sq, d]), ("k", [b, hkv, t, d]), ("v", [b, hkv, t, d])]
    };
    let mut inputs = Vec::new();
    let mut ids = Vec::new();
    for (name, shape) in shapes {
        ids.push(g.add_input(name, TensorType::fixed(DType::F32, &shape)).unwrap());
        let n = shape.iter().product();
        inputs.push((name.to_string(), tensor(&shape, rng.signeds(n).iter().map(|x| x * 2.0).collect())));
    }
    let mut bld = Builder { g, count: 0 };
    let (mut q, mut k, mut v) = (ids[0], ids[1], ids[2]);
    let to_heads = |bld: &mut Builder, x: ValueId, perm: Vec<i64>| bld.node("Transpose", vec![x], &[("perm", Attribute::Ints(perm))]);
    let direct_kt = c.bshd && c.group == 1;
    if c.bshd {
        q = to_heads(&mut bld, q, vec![0, 2, 1, 3]);
        v = to_heads(&mut bld, v, vec![0, 2, 1, 3]);
        k = to_heads(&mut bld, k, if direct_kt { vec![0, 2, 3, 1] } else { vec![0, 2, 1, 3] });
    }
    let kt = if direct_kt {
        k
    } else {
        let k = bld.expand_heads(k, c, d);
        bld.node("Transpose", vec![k], &[("perm", Attribute::Ints(vec![0, 1, 3, 2]))])
    };
    let v = bld.expand_heads(v, c, d);
    let scores = if c.split_scale {
        let root = bld.constant(Tensor::scalar_f32((1.0 / (d as f32).sqrt()).sqrt()));
        let qs = bld.node("Mul", vec![q, root], &[]);
        let ks = bld.node("Mul", vec![root, kt], &[]);
        bld.node("MatMul", vec![qs, ks], &[])
    } else {
        let p = bld.node("MatMul", vec![q, kt], &[]);
        let sd = bld.constant(Tensor::scalar_f32((d as f32).sqrt()));
        bld.node("Div", vec![p, sd], &[])
    };
    let y = if c.masked {
        // Batch row 0 pads its first keys (all of them when it has no past: fully masked
        // queries); every row is causal.
        let pad = if c.past == 0 { t } else { c.past / 2 + 1 };
        let mask: Vec<f32> = (0..b * sq * t)
            .map(|r| {
                let (bi, i, j) = (r / (sq * t), r / t % sq, r % t);
                if (bi == 0 && j < pad) || j > c.past + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let m = bld.g.add_input("mask", TensorType::fixed(DType::F32, &[b, 1, sq, t])).unwrap();
        inputs.push(("mask".to_string(), tensor(&[b, 1, sq, t], mask)));
        let s = bld.node("Add", vec![scores, m], &[]);
        let p = bld.node("Softmax", vec![s], &[("axis", Attribute::Int(-1))]);
        let nan = bld.node("IsNaN", vec![p], &[]);
        let zero = bld.constant(Tensor::scalar_f32(0.0));
        let w = bld.node("Where", vec![nan, zero, p], &[]);
        bld.node("MatMul", vec![w, v], &[])
    } else {
        let p = bld.node("Softmax", vec![scores], &[("axis", Attribute::Int(-1))]);
        bld.node("MatMul", vec![p, v], &[])
    };
    let y = if c.bshd { to_heads(&mut bld, y, vec![0, 2, 1, 3]) } else { y };
    bld.g.outputs.push(y);
    verify::infer_types(&mut bld.g, &OpRegistry::standard()).unwrap();
    (bld.g, inputs)
}

fn run(g: Graph, inputs: &[(String, Tensor)]) -> Vec<f64> {
    CpuExecutor::new(g).unwrap().run(inputs.to_vec()).unwrap()[0].1.to_f64_vec()
}

fn fuse(g: &mut Graph) {
    PassManager::new().with(FuseAttention).run(g, &OpRegistry::standard()).unwrap();
}

#[test]
fn fused_attention_matches_the_unfused_graph_on_random_shapes() {
    let mut rng = Rng::new(1414);
    let mut cases = Vec::new();
    for group in [1, 2, 4, 8] {
        // Decode steps and few queries stream over key blocks; 5 or more queries over up to 1024
        // keys take the whole-row path (20 queries over 920 keys: two row chunks per head).
        for (queries, past) in [(1, 0), (7, 0), (1, 1024), (3, 130), (5, 5), (20, 900)] {
            for (split_scale, masked, bshd) in
                [(true, true, false), (false, false, false), (false, true, false), (false, true, true), (true, false, true)]
            {
                cases.push(Case { batch: 2, kv_heads: 2, group, queries, past, head: 8 + group, split_scale, masked, bshd });
            }
        }
    }
    // LLM head sizes (64, 128), where the streaming path's blocks run in AVX-512 on hosts with it:
    // decode over a long cache and a ragged last key block, masked and not; and prefill-like
    // query counts, which take the whole-row path's register tiles there (causal rows after a
    // padded start, skipping their masked keys).
    for (group, queries, past, head, masked) in [
        (4, 1, 1024, 128, true),
        (2, 3, 130, 64, false),
        (8, 1, 77, 128, false),
        (1, 2, 300, 64, true),
        (4, 29, 6, 128, true),
        (2, 13, 40, 64, true),
        (1, 17, 3, 128, false),
    ] {
        cases.push(Case { batch: 1, kv_heads: 2, group, queries, past, head, split_scale: false, masked, bshd: false });
    }
    for c in cases {
        let (unfused, inputs) = build(&c, &mut rng);
        let want = run(unfused.clone(), &inputs);
        let mut fused = unfused;
        fuse(&mut fused);
        let nodes: Vec<&Node> = fused.node_ids().into_iter().map(|n| fused.node(n)).collect();
        assert_eq!(nodes.len(), 1, "{c:?}: {:?}", nodes.iter().map(|n| &n.op_type).collect::<Vec<_>>());
        assert!(is_fused_attention(nodes[0]), "{c:?}");
        // GQA expansions and the transposes into and out of heads are folded: K and V are the
        // graph inputs with kv_heads heads.
        assert_eq!(nodes[0].inputs[1], fused.find_value("k"), "{c:?}");
        let flag = |name: &str| nodes[0].attr_i(name, 0) == 1;
        assert_eq!((flag("bshd_inputs"), flag("bshd_output")), (c.bshd, c.bshd), "{c:?}");
        verify::verify(&fused, &OpRegistry::standard()).unwrap();
        let got = run(fused, &inputs);
        assert_eq!(got.len(), want.len());
        assert!(want.iter().all(|x| x.is_finite()), "{c:?}: the unfused graph is NaN-free with its guard");
        let scale = want.iter().fold(0f64, |a, b| a.max(b.abs())).max(1e-6);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "{c:?} element {i}: fused {a} vs unfused {b}");
        }
    }
}

#[test]
fn chains_whose_probabilities_have_other_readers_are_left_alone() {
    let mut rng = Rng::new(7);
    let c = Case { batch: 1, kv_heads: 1, group: 1, queries: 2, past: 0, head: 4, split_scale: false, masked: false, bshd: false };
    let (mut g, _) = build(&c, &mut rng);
    // The softmax probabilities are also a graph output: nothing fuses.
    let softmax = g.node_ids().into_iter().find(|&n| g.node(n).op_type == "Softmax").unwrap();
    let p = g.node(softmax).outputs[0];
    g.outputs.push(p);
    let before = g.node_count();
    fuse(&mut g);
    assert_eq!(g.node_count(), before);
}

#[test]
fn head_transposes_fold_only_when_all_three_inputs_allow_it() {
    let mut rng = Rng::new(8);
    let c = Case { batch: 2, kv_heads: 2, group: 1, queries: 3, past: 4, head: 8, split_scale: false, masked: true, bshd: true };
    let (mut g, inputs) = build(&c, &mut rng);
    // V's transpose into heads is also a graph output: it must stay, so Q and K stay too (the
    // kernel reads all three in one layout); Y's transpose back still folds.
    let v_heads =
        g.node_ids().into_iter().map(|n| g.node(n)).find(|n| n.op_type == "Transpose" && n.inputs[0] == g.find_value("v")).unwrap();
    let out = v_heads.outputs[0];
    g.outputs.push(out);
    let want = CpuExecutor::new(g.clone()).unwrap().run(inputs.clone()).unwrap()[0].1.to_f64_vec();
    fuse(&mut g);
    let nodes: Vec<&Node> = g.node_ids().into_iter().map(|n| g.node(n)).collect();
    let fused = nodes.iter().find(|n| is_fused_attention(n)).unwrap();
    assert_eq!((fused.attr_i("bshd_inputs", 0), fused.attr_i("bshd_output", 0)), (0, 1));
    assert_eq!(nodes.iter().filter(|n| n.op_type == "Transpose").count(), 3, "Q's, K's and V's transposes kept");
    verify::verify(&g, &OpRegistry::standard()).unwrap();
    let got = run(g, &inputs);
    let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * scale));
}
