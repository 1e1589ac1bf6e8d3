//! Unit tests of the op kernels without a GPU: the planners and launch geometry replayed on the
//! CPU the way the templates index (every element written once, offsets as numpy's rule), the
//! template lines those replays transcribe, and the generated kernel names and wrappers.

use std::collections::BTreeSet;

use fpx_ir::shape::{row_major_strides, unravel_index};

use fpx_test_support::Rng;

use super::*;

/// Fisher–Yates shuffle of `v`.
fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// The kernels' digit decomposition (`binary_bcast`, `transpose`): output index `i` →
/// offset per stride array.
fn replay_offsets<const K: usize>(i: usize, rank: u32, dims: &[u32; MAX_RANK], strides: [&[u32; MAX_RANK]; K]) -> [u32; K] {
    let (mut r, mut off) = (i as u32, [0u32; K]);
    for d in 0..MAX_RANK {
        if d < rank as usize {
            let q = r / dims[d];
            let c = r - q * dims[d];
            for k in 0..K {
                off[k] += c * strides[k][d];
            }
            r = q;
        }
    }
    off
}

/// Numpy's rule, naively: the flat offset in `s` of output multi-index `idx`.
fn naive_bcast_offset(idx: &[usize], s: &[usize]) -> usize {
    let skip = idx.len() - s.len();
    let cs = row_major_strides(s);
    (0..s.len()).map(|d| if s[d] == 1 { 0 } else { idx[skip + d] * cs[d] }).sum()
}

fn random_shape(rng: &mut Rng, max_rank: usize) -> Vec<usize> {
    (0..rng.below(max_rank + 1)).map(|_| [1, 1, 2, 3, 4, 5, 7][rng.below(7)]).collect()
}

#[test]
fn broadcast_args_replayed_match_numpy_broadcasting() {
    let mut rng = Rng::new(0x5eed_0001);
    let mut ranks = BTreeSet::new();
    for case in 0..3000 {
        let out = random_shape(&mut rng, 7);
        // Inputs: the output's trailing dims, some set to 1, some leading dims dropped.
        let derive = |rng: &mut Rng| -> Vec<usize> {
            let drop = rng.below(out.len() + 1).min(if rng.below(2) == 0 { 0 } else { out.len() });
            out[drop..].iter().map(|&d| if rng.below(3) == 0 { 1 } else { d }).collect()
        };
        let (a, b) = (derive(&mut rng), derive(&mut rng));
        let shape = broadcast_shape(&a, &b).unwrap();
        let args = match broadcast_args(&a, &b) {
            Ok(args) => args,
            Err(OpShapeError::Rank { rank, .. }) => {
                assert!(rank > MAX_RANK && shape.len() > MAX_RANK, "case {case}: {a:?} {b:?}");
                continue;
            }
            Err(e) => panic!("case {case}: {a:?} {b:?}: {e}"),
        };
        ranks.insert(args.rank);
        let numel: usize = shape.iter().product();
        assert_eq!(args.numel as usize, numel);
        if numel > 0 {
            assert_eq!(args.dims[..args.rank as usize].iter().map(|&d| d as usize).product::<usize>(), numel);
        }
        for i in 0..numel {
            let idx = unravel_index(i, &shape);
            let [oa, ob] = replay_offsets(i, args.rank, &args.dims, [&args.sa, &args.sb]);
            assert_eq!(
                (oa as usize, ob as usize),
                (naive_bcast_offset(&idx, &a), naive_bcast_offset(&idx, &b)),
                "case {case}: {a:?} {b:?} i={i}"
            );
        }
        let plan = binary_plan(BinaryOp::Add, Elem::F16, &a, &b).unwrap();
        assert_eq!(plan.out_shape, shape);
        if plan.kernel == (OpKernel::Binary { op: BinaryOp::Add, elem: Elem::F16 }) {
            let (ea, eb): (usize, usize) = (a.iter().product(), b.iter().product());
            assert_eq!((ea, eb), (numel, numel), "same-shape kernel for {a:?} {b:?}");
        }
    }
    assert!(ranks.contains(&0) && ranks.contains(&1) && ranks.contains(&4), "ranks seen: {ranks:?}");
    // Typical transformer cases merge to few dims.
    let bias = broadcast_args(&[2, 128, 384], &[384]).unwrap();
    assert_eq!((bias.rank, &bias.dims[..2], &bias.sa[..2], &bias.sb[..2]), (2, &[384, 256][..], &[1, 384][..], &[1, 0][..]));
    let mask = broadcast_args(&[2, 12, 128, 128], &[2, 1, 1, 128]).unwrap();
    assert_eq!((mask.rank, &mask.dims[..3], &mask.sb[..3]), (3, &[128, 1536, 2][..], &[1, 0, 128][..]));
    let same = binary_plan(BinaryOp::Mul, Elem::F32, &[4, 5], &[1, 4, 5]).unwrap();
    assert_eq!((same.kernel, same.numel), (OpKernel::Binary { op: BinaryOp::Mul, elem: Elem::F32 }, 20));
    let scalar = binary_plan(BinaryOp::Div, Elem::F16, &[3, 7], &[]).unwrap();
    assert_eq!(scalar.kernel, OpKernel::BinaryBcast { op: BinaryOp::Div, elem: Elem::F16 });
    assert_eq!((scalar.args.rank, scalar.args.sb[0]), (1, 0));
    // Errors, never panics.
    assert!(matches!(broadcast_args(&[2, 3], &[4, 3]), Err(OpShapeError::Broadcast { .. })));
    let alt = [2, 1, 2, 1, 2, 1, 2, 1];
    let alt_b = [1, 2, 1, 2, 1, 2, 1, 2];
    assert!(matches!(broadcast_args(&alt, &alt_b), Err(OpShapeError::Rank { rank: 8, .. })));
    assert!(matches!(broadcast_args(&[1 << 20, 1 << 12], &[1]), Err(OpShapeError::TooLarge { .. })));
    assert_eq!(broadcast_args(&[0, 3], &[3]).unwrap().numel, 0);
    assert_eq!(broadcast_shape(&[1, 0], &[5, 1]).unwrap(), [5, 0]);
}

/// Replays the same-shape elementwise kernels' loops (vector part when every pointer is
/// aligned, then the scalar tail grid-stride) for one launch; returns hits per element.
fn replay_elementwise(n: usize, vec: usize, aligned: bool, grid: u32) -> Vec<u8> {
    let mut hits = vec![0u8; n];
    let step = grid as usize * OP_THREADS as usize;
    for t in 0..step {
        let mut done = 0;
        if aligned {
            let nv = n / vec;
            let mut v = t;
            while v < nv {
                for h in &mut hits[v * vec..(v + 1) * vec] {
                    *h += 1;
                }
                v += step;
            }
            done = nv * vec;
        }
        let mut i = done + t;
        while i < n {
            hits[i] += 1;
            i += step;
        }
    }
    hits
}

#[test]
fn elementwise_launches_cover_every_element_once() {
    for kernel in [
        OpKernel::Unary { op: UnaryOp::Gelu, elem: Elem::F16 },
        OpKernel::Binary { op: BinaryOp::Add, elem: Elem::F32 },
        OpKernel::Cast(CastOp::F16ToF32),
        OpKernel::BinaryBcast { op: BinaryOp::Mul, elem: Elem::F16 },
    ] {
        let Geometry::Elements { vec, .. } = kernel.geometry() else { panic!() };
        for n in [1, 7, 8, 9, 255, 256, 257, 2047, 2048, 2049, 100_003] {
            let (grid, block, shared) = launch_config(&kernel, n, 0).unwrap();
            assert_eq!((block, shared, grid[1], grid[2]), ([OP_THREADS, 1, 1], 0, 1, 1));
            assert!(grid[0] >= 1 && grid[0] <= MAX_GRID);
            for aligned in [true, false] {
                for g in [grid[0], 1, 3] {
                    let hits = replay_elementwise(n, vec as usize, aligned && vec > 1, g);
                    assert!(hits.iter().all(|&h| h == 1), "{kernel} n={n} aligned={aligned} grid={g}");
                }
            }
        }
        assert_eq!(launch_config(&kernel, 0, 0).unwrap().0[0], 0, "n = 0: nothing to launch");
        let (big, _, _) = launch_config(&kernel, 1 << 31, 0).unwrap();
        assert_eq!(big[0], MAX_GRID);
    }
    assert_eq!(launch_config(&OpKernel::Unary { op: UnaryOp::Exp, elem: Elem::F16 }, 8 * 256 * 3, 0).unwrap().0, [3, 1, 1]);
    assert!(matches!(
        launch_config(&OpKernel::BinaryBcast { op: BinaryOp::Add, elem: Elem::F32 }, 1 << 32, 0),
        Err(OpShapeError::TooLarge { .. })
    ));
    assert!(launch_config(&OpKernel::Unary { op: UnaryOp::Exp, elem: Elem::F32 }, 1 << 33, 0).is_ok());
}

#[test]
fn row_launches_cover_every_row_and_column_once() {
    for kernel in [OpKernel::LayerNorm(Elem::F16), OpKernel::Softmax(Elem::F32), OpKernel::Reduce { op: ReduceOp::Mean, elem: Elem::F16 }] {
        for rows in [1, 2, 3, 7, 8, 9, 31, 33, 100] {
            for cols in [0, 1, 7, 31, 32, 33, 64, 100, 128, 384, 1000, 1536, 2049, 4096, 5000] {
                let (grid, block, shared) = launch_config(&kernel, rows, cols).unwrap();
                let (tx, ty) = (block[0] as usize, block[1] as usize);
                assert_eq!((block[0] * block[1], block[2], shared, grid[1], grid[2]), (OP_THREADS, 1, 0, 1, 1));
                assert!(tx.is_power_of_two() && (32..=256).contains(&tx), "rows of whole warps");
                let mut hits = vec![0u8; rows * cols];
                let mut row_owner = vec![0u8; rows];
                for bx in 0..grid[0] as usize {
                    for y in 0..ty {
                        // RowPos: row = blockIdx.x * blockDim.y + threadIdx.y; n = row < rows ? cols : 0.
                        let row = bx * ty + y;
                        let n = if row < rows { cols } else { 0 };
                        if row < rows {
                            row_owner[row] += 1;
                        }
                        for x in 0..tx {
                            let mut c = x;
                            while c < n {
                                hits[row * cols + c] += 1;
                                c += tx;
                            }
                        }
                    }
                }
                assert!(row_owner.iter().all(|&h| h == 1), "{kernel} rows={rows} cols={cols}");
                assert!(hits.iter().all(|&h| h == 1), "{kernel} rows={rows} cols={cols}");
            }
        }
    }
    assert_eq!([1, 256, 384, 1024, 2048, 4096, 32000].map(row_threads), [32, 32, 64, 128, 256, 256, 256]);
    assert_eq!(launch_config(&OpKernel::Softmax(Elem::F16), 0, 128).unwrap().0[0], 0);
    assert!(launch_config(&OpKernel::Softmax(Elem::F16), 1 << 31, 8).is_err());
}

/// Naive ONNX Transpose on bytes.
fn naive_transpose(x: &[u8], shape: &[usize], perm: &[usize], eb: usize) -> Vec<u8> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let cs = row_major_strides(shape);
    let numel: usize = shape.iter().product();
    let mut y = vec![0u8; numel * eb];
    for i in 0..numel {
        let idx = unravel_index(i, &out_shape);
        let src: usize = (0..perm.len()).map(|d| idx[d] * cs[perm[d]]).sum();
        y[i * eb..(i + 1) * eb].copy_from_slice(&x[src * eb..(src + 1) * eb]);
    }
    y
}

/// Runs a transpose plan on the CPU the way the kernels index; every output unit must be
/// written exactly once.
fn replay_transpose(plan: &TransposePlan, x: &[u8]) -> Vec<u8> {
    let mut y = vec![0u8; x.len()];
    let mut hits = vec![0u8; x.len()];
    match plan {
        TransposePlan::Copy { bytes } => {
            assert_eq!(*bytes, x.len());
            return x.to_vec();
        }
        TransposePlan::General { kernel, args } => {
            let OpKernel::Transpose(w) = kernel else { panic!("{kernel}") };
            let u = w.bytes();
            assert_eq!(args.numel as usize * u, x.len());
            let (grid, block, _) = plan.launch().unwrap();
            let step = (grid[0] * block[0]) as usize;
            for t in 0..step {
                let mut i = t;
                while i < args.numel as usize {
                    let [off] = replay_offsets(i, args.rank, &args.dims, [&args.strides]);
                    let off = off as usize;
                    y[i * u..(i + 1) * u].copy_from_slice(&x[off * u..(off + 1) * u]);
                    hits[i * u] += 1;
                    i += step;
                }
            }
            for i in 0..args.numel as usize {
                assert_eq!(hits[i * u], 1, "{plan:?}: unit {i}");
            }
        }
        TransposePlan::Tile { kernel, batch, rows, cols } => {
            let OpKernel::TransposeTile(w) = kernel else { panic!("{kernel}") };
            let (u, batch, rows, cols) = (w.bytes(), *batch as usize, *rows as usize, *cols as usize);
            assert_eq!(batch * rows * cols * u, x.len());
            let (grid, block, _) = plan.launch().unwrap();
            assert_eq!(block, [32, 8, 1]);
            let total = batch * rows;
            for bx in 0..grid[0] as usize {
                for by in 0..grid[1] as usize {
                    let c0 = bx * 32;
                    let mut r0 = by * 32;
                    while r0 < total {
                        // Read phase: tile[ty + j][tx] = x[gr * cols + c0 + tx].
                        let mut tile: Vec<Option<&[u8]>> = vec![None; 32 * 33];
                        for ty in 0..8 {
                            for tx in 0..32 {
                                for j in (0..32).step_by(8) {
                                    let gr = r0 + ty + j;
                                    if gr < total && c0 + tx < cols {
                                        let src = gr * cols + c0 + tx;
                                        tile[(ty + j) * 33 + tx] = Some(&x[src * u..(src + 1) * u]);
                                    }
                                }
                            }
                        }
                        // Write phase: y[b][c][r] = tile[tx][ty + j].
                        for ty in 0..8 {
                            for tx in 0..32 {
                                for j in (0..32).step_by(8) {
                                    let (c, gr) = (c0 + ty + j, r0 + tx);
                                    if gr < total && c < cols {
                                        let (b, r) = (gr / rows, gr % rows);
                                        let dst = (b * cols + c) * rows + r;
                                        let v = tile[tx * 33 + ty + j].expect("tile entry read before it was loaded");
                                        y[dst * u..(dst + 1) * u].copy_from_slice(v);
                                        hits[dst * u] += 1;
                                    }
                                }
                            }
                        }
                        r0 += grid[1] as usize * 32;
                    }
                }
            }
            for i in 0..batch * rows * cols {
                assert_eq!(hits[i * u], 1, "{plan:?}: unit {i}");
            }
        }
    }
    y
}

#[test]
fn transpose_plans_replayed_match_a_naive_transpose() {
    let mut rng = Rng::new(0x5eed_0002);
    let mut kinds = BTreeSet::new();
    for case in 0..1500 {
        let shape: Vec<usize> = (0..1 + rng.below(6)).map(|_| [1, 2, 3, 4, 5, 8, 33][rng.below(7)]).collect();
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        shuffle(&mut rng, &mut perm);
        let eb = [1, 2, 4, 8][rng.below(4)];
        let numel: usize = shape.iter().product();
        if numel > 200_000 {
            continue;
        }
        let x = rng.bytes(numel * eb);
        let plan = transpose_plan(&shape, &perm, eb).unwrap_or_else(|e| panic!("case {case}: {e}"));
        kinds.insert(match &plan {
            TransposePlan::Copy { .. } => "copy".to_string(),
            TransposePlan::Tile { kernel, .. } | TransposePlan::General { kernel, .. } => kernel.name(),
        });
        assert_eq!(replay_transpose(&plan, &x), naive_transpose(&x, &shape, &perm, eb), "case {case}: {shape:?} {perm:?} x{eb}: {plan:?}");
    }
    for k in ["copy", "fpx_transpose_tile_b8", "fpx_transpose_tile_b64", "fpx_transpose_b8", "fpx_transpose_b128"] {
        assert!(kinds.contains(k), "{k} never planned: {kinds:?}");
    }
    // Attention: heads split ([B,S,H,D] -> [B,H,S,D]) copies 128-byte rows as 16-byte units;
    // K^T ([B,S,H,D] -> [B,H,D,S]) is a stack of B 2-D transposes of [S][H*D]. Neither moves.
    let split = transpose_plan(&[2, 128, 12, 64], &[0, 2, 1, 3], 2).unwrap();
    let TransposePlan::General { kernel, args } = &split else { panic!("{split:?}") };
    assert_eq!(
        (*kernel, args.rank, &args.dims[..4], &args.strides[..4]),
        (OpKernel::Transpose(Width::B128), 4, &[8, 128, 12, 2][..], &[1, 96, 8, 12288][..])
    );
    let kt = transpose_plan(&[2, 128, 12, 64], &[0, 2, 3, 1], 2).unwrap();
    assert_eq!(kt, TransposePlan::Tile { kernel: OpKernel::TransposeTile(Width::B16), batch: 2, rows: 128, cols: 768 });
    assert_eq!(transpose_plan(&[1, 5, 1, 3], &[2, 0, 1, 3], 4).unwrap(), TransposePlan::Copy { bytes: 60 });
    assert_eq!(transpose_plan(&[], &[], 4).unwrap(), TransposePlan::Copy { bytes: 4 });
    // Errors, never panics.
    assert!(matches!(transpose_plan(&[2, 3], &[0, 0], 4), Err(OpShapeError::Perm { .. })));
    assert!(matches!(transpose_plan(&[2, 3], &[0, 2], 4), Err(OpShapeError::Perm { .. })));
    assert!(matches!(transpose_plan(&[2, 3], &[1], 4), Err(OpShapeError::Perm { .. })));
    assert!(matches!(transpose_plan(&[2, 3], &[1, 0], 3), Err(OpShapeError::ElemSize(3))));
    let shape7 = [2, 2, 2, 2, 2, 2, 2];
    assert!(matches!(transpose_plan(&shape7, &[6, 5, 4, 3, 2, 1, 0], 2), Err(OpShapeError::Rank { rank: 7, .. })));
    assert!(matches!(transpose_plan(&[1 << 20, 1 << 13], &[1, 0], 2), Err(OpShapeError::TooLarge { .. })));
}

#[test]
fn gather_plans_replayed_match_a_naive_gather() {
    let mut rng = Rng::new(0x5eed_0003);
    let mut widths = BTreeSet::new();
    for case in 0..600 {
        let data_shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| [1, 2, 3, 4, 6, 8][rng.below(6)]).collect();
        let rank = data_shape.len();
        let axis = rng.below(rank) as i64 - if rng.below(2) == 0 { rank as i64 } else { 0 };
        let a = axis.rem_euclid(rank as i64) as usize;
        let idx_shape: Vec<usize> = (0..rng.below(3)).map(|_| 1 + rng.below(3)).collect();
        let n_idx: usize = idx_shape.iter().product();
        let dim = data_shape[a] as i64;
        let oob = rng.below(4) == 0;
        let idx: Vec<i64> =
            (0..n_idx)
                .map(|_| {
                    if oob && rng.below(3) == 0 {
                        dim + rng.below(2) as i64 * (-3 * dim)
                    } else {
                        rng.below(2 * dim as usize) as i64 - dim
                    }
                })
                .collect();
        let eb = [1, 2, 4, 8][rng.below(4)];
        let numel: usize = data_shape.iter().product();
        let data = rng.bytes(numel * eb);
        let plan = gather_plan(&data_shape, axis, &idx_shape, eb).unwrap();
        let OpKernel::Gather(w) = plan.kernel else { panic!() };
        widths.insert(w);
        // Naive.
        let (outer, inner) = (data_shape[..a].iter().product::<usize>(), data_shape[a + 1..].iter().product::<usize>());
        let mut want = Vec::new();
        let mut want_err = false;
        for o in 0..outer {
            for &k in &idx {
                let k = if k < 0 { k + dim } else { k };
                if k < 0 || k >= dim {
                    want_err = true;
                    want.resize(want.len() + inner * eb, 0);
                } else {
                    let s = (o * dim as usize + k as usize) * inner * eb;
                    want.extend_from_slice(&data[s..s + inner * eb]);
                }
            }
        }
        assert_eq!(plan.out_shape.iter().product::<usize>() * eb, want.len());
        // Kernel replay.
        let u = w.bytes();
        let (grid, block, _) = plan.launch().unwrap();
        let step = (grid[0] * block[0]) as usize;
        let mut y = vec![0xAAu8; plan.units * u];
        let mut err = 0;
        let mut hits = vec![0u8; plan.units];
        for t in 0..step {
            let mut i = t;
            while i < plan.units {
                let r = i as u32;
                let (inn, tt) = (r % plan.inner, r / plan.inner);
                let (j, o) = (tt % plan.n_idx, tt / plan.n_idx);
                let mut k = idx[j as usize];
                if k < 0 {
                    k += plan.axis_dim as i64;
                }
                if k < 0 || k >= plan.axis_dim as i64 {
                    y[i * u..(i + 1) * u].fill(0);
                    err |= 1;
                } else {
                    let s = ((o as usize * plan.axis_dim as usize + k as usize) * plan.inner as usize + inn as usize) * u;
                    y[i * u..(i + 1) * u].copy_from_slice(&data[s..s + u]);
                }
                hits[i] += 1;
                i += step;
            }
        }
        assert!(hits.iter().all(|&h| h == 1), "case {case}");
        assert_eq!((y, err == 1), (want, want_err), "case {case}: {data_shape:?} axis {axis} {idx:?} x{eb}: {plan:?}");
    }
    assert!(widths.contains(&Width::B128) && widths.contains(&Width::B8), "{widths:?}");
    // Embedding lookup: [vocab, 384] FP16 rows copied as 48 units of 16 bytes.
    let emb = gather_plan(&[30522, 384], 0, &[2, 128], 2).unwrap();
    assert_eq!(
        (emb.kernel, emb.out_shape.as_slice(), emb.outer, emb.axis_dim, emb.n_idx, emb.inner),
        (OpKernel::Gather(Width::B128), &[2, 128, 384][..], 1, 30522, 256, 48)
    );
    assert!(matches!(gather_plan(&[3, 4], 2, &[1], 4), Err(OpShapeError::Axis { axis: 2, rank: 2 })));
    assert!(matches!(gather_plan(&[3, 4], -3, &[1], 4), Err(OpShapeError::Axis { .. })));
    assert!(matches!(gather_plan(&[], 0, &[1], 4), Err(OpShapeError::Axis { .. })));
    assert!(matches!(gather_plan(&[3, 4], 0, &[1], 5), Err(OpShapeError::ElemSize(5))));
    assert!(matches!(gather_plan(&[2, 1 << 20], 0, &[1 << 15], 4), Err(OpShapeError::TooLarge { .. })));
    assert_eq!(gather_plan(&[3, 4], 1, &[0], 4).unwrap().units, 0);
}

/// The CPU replays above transcribe these lines of the templates; if they change, the
/// replays must too.
#[test]
fn replays_mirror_the_template_text() {
    for (text, needles) in [
        (
            ELEMENTWISE_TEMPLATE,
            &[
                "const fpx_u32 q = r / s.dims[d], c = r - q * s.dims[d];",
                "oa += c * s.sa[d];",
                "ob += c * s.sb[d];",
                "if (aligned16(a) && aligned16(b) && aligned16(y)) {",
                "const fpx_u64 nv = n / E::VEC;",
                "done = nv * E::VEC;",
                "for (fpx_u64 i = done + i0; i < n; i += step)",
                "static_assert(sizeof(fpx_bcast) == 80",
            ][..],
        ),
        (
            TRANSPOSE_TEMPLATE,
            &[
                "off += (r - q * p.dims[d]) * p.strides[d];",
                "if (gr < total && c0 + tx < cols) tile[ty + j][tx] = x[gr * cols + c0 + tx];",
                "const fpx_u32 b = (fpx_u32)gr / rows, r = (fpx_u32)gr - b * rows;",
                "y[((fpx_u64)b * cols + c) * rows + r] = tile[tx][ty + j];",
                "for (fpx_u64 r0 = (fpx_u64)blockIdx.y * 32; r0 < total; r0 += (fpx_u64)gridDim.y * 32) {",
                "static_assert(sizeof(fpx_perm) == 56",
            ][..],
        ),
        (
            GATHER_TEMPLATE,
            &[
                "const fpx_u32 in = r % inner, t = r / inner;",
                "const fpx_u32 j = t % n_idx, o = t / n_idx;",
                "if (k < 0) k += axis_dim;",
                "y[i] = data[((fpx_u64)o * axis_dim + (fpx_u64)k) * inner + in];",
            ][..],
        ),
        (
            OPS_COMMON,
            &[
                "row = blockIdx.x * blockDim.y + threadIdx.y;",
                "n = row < rows ? cols : 0;",
                "#define FPX_THREADS 256",
                "#define FPX_MAX_RANK 6",
            ][..],
        ),
    ] {
        for needle in needles {
            assert!(text.contains(needle), "template changed: {needle}");
        }
    }
    for t in [LAYERNORM_TEMPLATE, SOFTMAX_TEMPLATE, REDUCE_TEMPLATE] {
        assert!(t.contains("for (fpx_u32 c = threadIdx.x; c < p.n; c += blockDim.x)"));
    }
    assert_eq!(std::mem::size_of::<BcastArgs>(), 80);
    assert_eq!(std::mem::size_of::<PermArgs>(), 56);
    assert_eq!(OP_THREADS, 256);
}

#[test]
fn kernel_names_are_unique_and_sources_hold_every_wrapper() {
    let all = OpKernel::all();
    let names: BTreeSet<String> = all.iter().map(OpKernel::name).collect();
    assert_eq!(names.len(), all.len());
    assert_eq!(all.len(), 22 + 14 + 14 + 4 + 2 + 2 + 4 + 5 + 10);
    for name in [
        "fpx_add_f16",
        "fpx_add_bcast_f32",
        "fpx_gelu_tanh_f16",
        "fpx_cast_i64_f32",
        "fpx_layernorm_f16",
        "fpx_softmax_f32",
        "fpx_reduce_mean_f16",
        "fpx_gather_b128",
        "fpx_transpose_tile_b16",
    ] {
        assert!(names.contains(name), "{name}");
    }
    for family in OpFamily::ALL {
        let src = family_source(family);
        assert!(src.starts_with(OPS_COMMON) && src.contains(family.template()));
        for k in family.kernels() {
            assert_eq!(k.family(), family);
            assert!(src.contains(&format!("__launch_bounds__(256) {}(", k.name())), "{k}");
        }
    }
    assert_eq!(
        OpKernel::LayerNorm(Elem::F16).c_prototype(),
        "void fpx_layernorm_f16(const fpx_u16* x, const fpx_u16* gamma, const fpx_u16* beta, fpx_u16* y, fpx_u32 rows, fpx_u32 cols, float eps)"
    );
    assert_eq!(
        OpKernel::BinaryBcast { op: BinaryOp::Pow, elem: Elem::F32 }.wrapper(),
        "extern \"C\" __global__ void __launch_bounds__(256) fpx_pow_bcast_f32(const float* a, const float* b, float* y, fpx_bcast s) {\n    fpx::binary_bcast<fpx::F32, 4>(a, b, y, s);\n}\n"
    );
    assert_eq!(OpKernel::Cast(CastOp::I64ToF16).wrapper().lines().nth(1), Some("    fpx::cast<fpx::I64, fpx::F16>(x, y, n);"));
    assert_eq!(OpFamily::LayerNorm.module_name(), "fpx_ops_layernorm");
}
