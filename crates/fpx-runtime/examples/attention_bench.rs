//! Times `fpx:Attention` (the fused attention kernel) on the shapes fpx's benchmark models give
//! it: MiniLM's encoder attention, a LLaMA prefill of 128 tokens and decode steps, at 1 and 2
//! threads; prints the median and best time per call and the attention GFLOP/s.
//!
//! `--cold N` cycles through N copies of K and V (pick N so that they exceed the last-level
//! cache): each call then reads its keys and values from memory, as a decode step does after
//! the weights have streamed through the caches; the K+V read rate is printed beside.
//!
//! `cargo run --release -p fpx-runtime --example attention_bench [-- --iters 200] [--only prefill] [--cold 24]`

use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::ops::{fused_attention as op, FPX_DOMAIN};
use fpx_ir::{Attribute, Node, Tensor};
use fpx_runtime::KernelRegistry;
use fpx_test_support::Rng;
use std::time::Instant;

/// One benchmark case: its label, Q/K/V shapes in the node's layout, the mask, the attributes.
struct Case {
    label: &'static str,
    /// (batch, query heads, kv heads, queries, keys, head size)
    dims: (usize, usize, usize, usize, usize, usize),
    bshd: bool,
    /// Causal additive mask `[1, 1, Sq, Skv]` (else a padding mask `[B, 1, 1, Skv]`).
    causal: bool,
}

fn tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    Tensor::from(ArrayD::from_shape_vec(IxDyn(shape), rng.normals(shape.iter().product())).unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args.iter().position(|a| a == "--iters").map_or(100, |i| args[i + 1].parse().expect("--iters N"));
    let only = args.iter().position(|a| a == "--only").map(|i| args[i + 1].clone());
    let copies: usize = args.iter().position(|a| a == "--cold").map_or(1, |i| args[i + 1].parse().expect("--cold N"));
    let cases = [
        Case { label: "MiniLM 8x12 heads, 19 tokens, d 32", dims: (8, 12, 12, 19, 19, 32), bshd: true, causal: false },
        Case { label: "LLaMA prefill 16/4 heads, 128 tokens, d 128", dims: (1, 16, 4, 128, 128, 128), bshd: false, causal: true },
        Case { label: "LLaMA decode 16/4 heads, 129 keys", dims: (1, 16, 4, 1, 129, 128), bshd: false, causal: true },
        Case { label: "LLaMA decode 16/4 heads, 1025 keys", dims: (1, 16, 4, 1, 1025, 128), bshd: false, causal: true },
    ];
    let kernel = KernelRegistry::standard().get(FPX_DOMAIN, op::OP_TYPE).expect("fpx:Attention is registered");
    let mut rng = Rng::new(7);
    println!("{:<46} {:>3} {:>10} {:>10} {:>9} {:>9}", "case", "thr", "median us", "best us", "GFLOP/s", "KV GB/s");
    for case in cases.iter().filter(|c| only.as_ref().is_none_or(|o| c.label.contains(o.as_str()))) {
        let (b, hq, hkv, sq, skv, d) = case.dims;
        let layout = |h: usize, s: usize| if case.bshd { vec![b, s, h, d] } else { vec![b, h, s, d] };
        let q = tensor(&mut rng, &layout(hq, sq));
        let kvs: Vec<(Tensor, Tensor)> =
            (0..copies.max(1)).map(|_| (tensor(&mut rng, &layout(hkv, skv)), tensor(&mut rng, &layout(hkv, skv)))).collect();
        let kv_bytes = 2.0 * (b * hkv * skv * d * 4) as f64;
        let mask = if case.causal {
            let past = skv - sq;
            let m: Vec<f32> = (0..sq * skv).map(|t| if t % skv <= past + t / skv { 0.0 } else { f32::MIN }).collect();
            Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1, 1, sq, skv]), m).unwrap())
        } else {
            // The last sentences padded: their final keys masked.
            let m: Vec<f32> = (0..b * skv).map(|t| if t % skv < skv - (t / skv) % 5 { 0.0 } else { f32::MIN }).collect();
            Tensor::from(ArrayD::from_shape_vec(IxDyn(&[b, 1, 1, skv]), m).unwrap())
        };
        let mut node = Node::new("attention", op::OP_TYPE, 1, vec![], vec![]);
        node.domain = FPX_DOMAIN.into();
        if case.bshd {
            node.attrs.insert("bshd_inputs".into(), Attribute::Int(1));
            node.attrs.insert("bshd_output".into(), Attribute::Int(1));
        }
        // Multiply-adds of Q·Kᵀ and P·V over every key (a causal mask's skipped half counted too).
        let flops = 2.0 * 2.0 * (b * hq * sq * skv * d) as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut times: Vec<f64> = pool.install(|| {
                (0..iters + 5)
                    .map(|it| {
                        let (k, v) = &kvs[it % kvs.len()];
                        let t = Instant::now();
                        let y = kernel(&node, &[Some(&q), Some(k), Some(v), Some(&mask)]).expect("attention runs");
                        std::hint::black_box(y);
                        t.elapsed().as_secs_f64()
                    })
                    .skip(5)
                    .collect()
            });
            times.sort_by(f64::total_cmp);
            let (median, best) = (times[times.len() / 2], times[0]);
            let (gflops, gbs) = (flops / median / 1e9, kv_bytes / median / 1e9);
            println!("{:<46} {:>3} {:>10.1} {:>10.1} {:>9.1} {:>9.1}", case.label, threads, median * 1e6, best * 1e6, gflops, gbs);
        }
    }
}
