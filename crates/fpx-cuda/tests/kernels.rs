//! NVRTC + ptxas checks of the GEMM template (no GPU needed; skipped with a printed reason if
//! NVRTC or ptxas are absent, failed instead with `FPX_REQUIRE=gpu`), and the no-driver path.

use std::collections::BTreeSet;

use fpx_cuda::*;

use fpx_test_support::Rng;

use crate::common::{toolchain_or_skip, LINEAR_SHAPES as SHAPES};

/// Returns from test `$test` after skipping it when NVRTC or ptxas is missing.
macro_rules! require_toolchain {
    ($test:literal) => {
        if !toolchain_or_skip($test) {
            return;
        }
    };
}

/// SM counts of the A100 and the H100.
const SMS: [usize; 2] = [108, 132];

fn compile_and_check(cfg: &GemmConfig, arch: Arch) -> PtxasReport {
    let ptx = compile_ptx(cfg, arch).unwrap_or_else(|e| panic!("{e}"));
    let report = ptxas_check(&ptx, arch).unwrap_or_else(|e| panic!("{}: {e}", cfg.kernel_name()));
    let names: BTreeSet<&str> = report.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from([ptx.kernel.as_str()]), "entry functions of {}", cfg.kernel_name());
    assert_eq!((report.spill_stores, report.spill_loads), (0, 0), "{} spills on {arch}: {report:?}", cfg.kernel_name());
    assert!(report.kernels.iter().all(|k| k.stack_bytes == 0), "{} uses a stack frame on {arch}: {report:?}", cfg.kernel_name());
    assert!(report.registers <= 255);
    report
}

/// Every config the heuristic picks for the model shapes, M in 1, 16, 128, on A100 and H100
/// SM counts, compiles for sm_80 and sm_90 and assembles with no spills.
#[test]
fn heuristic_configs_compile_without_spills() {
    require_toolchain!("heuristic_configs_compile_without_spills");
    let mut configs = BTreeSet::new();
    for (k, n) in SHAPES {
        for m in [1, 16, 128] {
            for sms in SMS {
                configs.insert(format!("{:?}", heuristic_config(n, k, m, sms)));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (k, n) in SHAPES {
        for m in [1, 16, 128] {
            for sms in SMS {
                let cfg = heuristic_config(n, k, m, sms);
                if seen.insert(cfg.clone()) {
                    jobs.extend(Arch::ALL.map(|arch| (cfg.clone(), arch)));
                }
            }
        }
    }
    // NVRTC and ptxas on two threads (independent programs and processes).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let mut rows: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let jobs = &jobs;
                scope.spawn(move || {
                    jobs.iter()
                        .skip(w)
                        .step_by(workers)
                        .map(|(cfg, arch)| {
                            let r = compile_and_check(cfg, *arch);
                            format!("{arch} {:<58} regs {:>3} spills 0 shared {}", cfg.kernel_name(), r.registers, cfg.shared_bytes())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    rows.sort();
    assert_eq!(seen.len(), configs.len());
    eprintln!("{} configs x 2 archs:\n{}", seen.len(), rows.join("\n"));
}

/// The other template options (e2m3, BF16, more stages, 64-token tiles with 4 tiles per
/// warp, odd shapes) compile and assemble too.
#[test]
fn other_template_options_compile_without_spills() {
    require_toolchain!("other_template_options_compile_without_spills");
    let base = heuristic_config(4096, 4096, 16, 132);
    let mut cases = Vec::new();
    for format in [Fp6Format::E3M2, Fp6Format::E2M3] {
        for act in [Act::F16, Act::Bf16] {
            cases.push(GemmConfig { format, act, ..base.clone() });
        }
    }
    cases.push(GemmConfig { act: Act::Bf16, format: Fp6Format::E2M3, ..heuristic_config(11008, 4096, 128, 108) });
    cases.push(GemmConfig { stages: 4, k_tiles: 1, ..base.clone() });
    cases.push(GemmConfig { m_tile: 32, warps: 8, warp_ntiles: 2, k_tiles: 4, stages: 2, ..base.clone() });
    // Awkward shapes: N not a multiple of 16 or of the block, K not a multiple of 32 or 64.
    cases.push(heuristic_config(100, 70, 3, 108));
    cases.push(GemmConfig { act: Act::Bf16, ..heuristic_config(1000, 1000, 40, 132) });
    for cfg in cases {
        for arch in Arch::ALL {
            let r = compile_and_check(&cfg, arch);
            eprintln!("{arch} {} regs {}", cfg.kernel_name(), r.registers);
        }
    }
}

#[test]
fn ptx_uses_tensor_cores_async_copies_and_the_evict_first_hint() {
    require_toolchain!("ptx_uses_tensor_cores_async_copies_and_the_evict_first_hint");
    for act in [Act::F16, Act::Bf16] {
        let cfg = GemmConfig { act, ..heuristic_config(384, 1536, 16, 108) };
        let ptx = compile_ptx(&cfg, Arch::Sm90).unwrap();
        let dtype = if act == Act::F16 { "f16.f16" } else { "bf16.bf16" };
        for needle in [
            format!("mma.sync.aligned.m16n8k16.row.col.f32.{dtype}.f32"),
            "cp.async.cg.shared.global.L2::cache_hint".into(),
            "createpolicy.fractional.L2::evict_first".into(),
            "cp.async.wait_group".into(),
            format!(".visible .entry {}(", cfg.kernel_name()),
        ] {
            assert!(ptx.src.contains(&needle), "{needle} missing from the PTX of {}", cfg.kernel_name());
        }
        assert_eq!(ptx.arch, Arch::Sm90);
        assert!(ptx.src.contains(".target sm_90"));
        // Split-K finishes in the kernel: a GPU-wide fence, the arrival atomic, L2 reads of the
        // partials; without a split none of it is compiled in.
        assert!(cfg.split_k > 1);
        for needle in ["membar.gl", "atom.global.add.u32", "ld.global.cg.f32", "bar.sync"] {
            assert!(ptx.src.contains(needle), "{needle} missing from the PTX of {}", cfg.kernel_name());
        }
        let unsplit = compile_ptx(&GemmConfig { split_k: 1, ..cfg.clone() }, Arch::Sm90).unwrap();
        assert!(!unsplit.src.contains("atom.global") && !unsplit.src.contains("membar.gl"));
    }
}

#[test]
fn compile_cache_hits() {
    require_toolchain!("compile_cache_hits");
    let cfg = GemmConfig { stages: 2, ..heuristic_config(1536, 384, 1, 132) };
    let a = compile_ptx(&cfg, Arch::Sm80).unwrap();
    let before = fpx_cuda::compile::nvrtc_compilations();
    let b = compile_ptx(&cfg, Arch::Sm80).unwrap();
    assert_eq!(fpx_cuda::compile::nvrtc_compilations(), before, "second compile of the same key must hit the cache");
    assert_eq!(a, b);
    let c = compile_ptx(&cfg, Arch::Sm90).unwrap();
    assert_ne!(a.src, c.src, "the arch is part of the key");
}

#[test]
fn compile_errors_are_errors() {
    require_toolchain!("compile_errors_are_errors");
    let bad = GemmConfig { m_tile: 12, ..heuristic_config(384, 384, 1, 108) };
    assert!(matches!(compile_ptx(&bad, Arch::Sm80), Err(CudaError::Config(_))));
}

/// No GPU here: the driver probe must be an error that says so, never a panic. (On a GPU
/// machine it is Ok.)
#[test]
fn driver_probe_never_panics() {
    match driver_available() {
        Ok(()) => eprintln!("CUDA driver present"),
        Err(e) => {
            let msg = e.to_string();
            assert!(matches!(e, CudaError::NoDriver));
            assert!(msg.contains("no CUDA driver found"), "{msg}");
        }
    }
}

/// A Rust mirror of the template's `prepare_high` + `dequant_pair` (the text is checked below):
/// the two 16-bit values the MMA receives from a lane's low- and high-plane words. e3m2 FP16:
/// the rotated high word; otherwise `fp6_pair_bits` + `fp6_to_x2`, where BF16 is the shifted
/// bits times 2^(127 - bias) plus -0, as `fma.rn.bf16x2` computes it (subnormal inputs kept; the
/// result is exact, checked).
fn mirror_fp6_to_x2(low: u32, high: u32, half: u32, pair: u32, format: Fp6Format, act: Act) -> u32 {
    if (format, act) == (Fp6Format::E3M2, Act::F16) {
        let e2 = high & 0x5555_5555;
        let prepared = (high & 0xaaaa_aaaa) | (e2 >> 2) | (e2 << 30);
        let nibbles = match pair {
            0 => low,
            1 => low >> 4,
            2 => low << 4,
            _ => low << 8,
        };
        return (prepared.rotate_left(2 * (4 * half + pair)) & 0x9000_9000) | (nibbles & 0x0f00_0f00);
    }
    let lo = match pair {
        0 => low << 2,
        1 => low >> 2,
        2 => low << 6,
        _ => low << 10,
    };
    let x = (lo & 0x3c00_3c00) | ((high << (2 * (4 * half + pair))) & 0xc000_c000);
    let e3m2 = format == Fp6Format::E3M2;
    let shift = match act {
        Act::F16 => {
            if e3m2 {
                2
            } else {
                3
            }
        }
        Act::Bf16 => {
            if e3m2 {
                5
            } else {
                6
            }
        }
    };
    let placed = (x & 0x8000_8000) | ((x & 0x7c00_7c00) >> shift);
    match act {
        Act::F16 => placed,
        Act::Bf16 => {
            let rebias = (if e3m2 { 251u32 } else { 253 }) << 7;
            let factor = half::bf16::from_bits(rebias as u16).to_f64();
            let fma = |bits: u16| {
                let exact = half::bf16::from_bits(bits).to_f64() * factor + -0.0;
                let rounded = half::bf16::from_f64(exact);
                assert_eq!(rounded.to_f64(), exact, "the BF16 re-bias fma must be exact");
                rounded.to_bits() as u32
            };
            fma(placed as u16) | (fma((placed >> 16) as u16) << 16)
        }
    }
}

#[test]
fn template_dequant_matches_fpx_quant_for_every_code() {
    use fpx_quant::bias_shift::{bf16_bits, bf16_factor, f16_bits};
    use fpx_quant::layout::{fp6_pair_to_f16x2, high_field_pos, low_nibble_pos};
    use half::bf16;
    for format in [Fp6Format::E3M2, Fp6Format::E2M3] {
        let qf = format.quant_format();
        assert_eq!(bf16_factor(qf), if format == Fp6Format::E3M2 { 2f32.powi(124) } else { 2f32.powi(126) });
        for c0 in 0..64u8 {
            for c1 in [c0, 63 - c0, c0.wrapping_mul(7) & 63] {
                for half in 0..2u32 {
                    for pair in 0..4u32 {
                        // Place codes c0 / c1 at elements 2*pair / 2*pair+1 of (half, lane) words.
                        let (mut low, mut high) = (0u32, 0u32);
                        for (i, c) in [(0usize, c0), (1, c1)] {
                            let e = 2 * pair as usize + i;
                            low |= ((c & 0xf) as u32) << (4 * low_nibble_pos(e));
                            high |= ((c >> 4) as u32) << (2 * high_field_pos(half as usize, e));
                        }
                        let f16x2 = mirror_fp6_to_x2(low, high, half, pair, format, Act::F16);
                        assert_eq!(f16x2, fp6_pair_to_f16x2(low, high, half as usize, pair as usize, qf));
                        assert_eq!(f16x2, f16_bits(qf, c0) as u32 | (f16_bits(qf, c1) as u32) << 16);
                        let bf16x2 = mirror_fp6_to_x2(low, high, half, pair, format, Act::Bf16);
                        for (i, c) in [(0, c0), (1, c1)] {
                            let v = bf16::from_bits((bf16x2 >> (16 * i)) as u16);
                            // True magnitude, and never a BF16 subnormal (tensor cores flush those).
                            assert_eq!(v.to_f32(), qf.decode(c), "{format:?} code {c:#x}");
                            assert!(v.is_normal() || v.to_f32() == 0.0, "{format:?} code {c:#x}: {v} reaches the MMA subnormal");
                            assert_eq!(v.is_sign_negative(), c & 0x20 != 0, "{format:?} code {c:#x}: sign");
                            // The shifted bits are fpx_quant's bf16_bits.
                            let placed = bf16_bits(qf, c);
                            assert_eq!(bf16::from_bits(placed).to_f64() * bf16_factor(qf) as f64, qf.decode(c) as f64);
                        }
                    }
                }
            }
        }
    }
    // The mirror's constants are the template's.
    for needle in [
        "PAIR == 0 ? (low << 2) : PAIR == 1 ? (low >> 2) : PAIR == 2 ? (low << 6) : (low << 10)",
        "(lo & 0x3c003c00u) | ((high << (2 * (4 * HALF + PAIR))) & 0xc000c000u)",
        "const int SHIFT = ACT == 0 ? (FORMAT == 0 ? 2 : 3) : (FORMAT == 0 ? 5 : 6);",
        "const fpx_u32 placed = (x & 0x80008000u) | ((x & 0x7c007c00u) >> SHIFT);",
        "const fpx_u32 REBIAS = (FORMAT == 0 ? 251u : 253u) << 7;",
        "asm(\"fma.rn.bf16x2 %0, %1, %2, %3;\" : \"=r\"(d) : \"r\"(placed), \"r\"(REBIAS * 0x10001u), \"r\"(0x80008000u));",
        "return fp6_to_x2<FORMAT, ACT>(fp6_pair_bits<HALF, PAIR>(low, high));",
        "static constexpr bool ON = FORMAT == 0 && ACT == 0;",
        "const fpx_u32 e2 = high & 0x55555555u;",
        "return (high & 0xaaaaaaaau) | (e2 >> 2) | (e2 << 30);",
        "const fpx_u32 nibbles = PAIR == 0 ? low : PAIR == 1 ? (low >> 4) : PAIR == 2 ? (low << 4) : (low << 8);",
        "return (rotl<2 * (4 * HALF + PAIR)>(high) & 0x90009000u) | (nibbles & 0x0f000f00u);",
        "return N == 0 ? x : (x << (N & 31)) | (x >> ((32 - N) & 31));",
        "hw[i] = prepare_high<FORMAT, ACT>(shigh[tile * 32 + lane]);",
    ] {
        assert!(FP6_GEMM_TEMPLATE.contains(needle), "template lost: {needle}");
    }
}

fn act_to_f32(bits: u16, act: Act) -> f32 {
    match act {
        Act::F16 => half::f16::from_bits(bits).to_f32(),
        Act::Bf16 => half::bf16::from_bits(bits).to_f32(),
    }
}

/// The template's `ChunkMap` for thread `tid`: `(row, column)` of each chunk it copies into a
/// stage slice of `rows` rows of `row` 16-byte chunks (chunk `tid + j * threads`, chunks past
/// the last row skipped), from the thread's first chunk plus `row_add(j)` / `col_add(j)`.
pub fn thread_chunks(rows: usize, row: usize, threads: usize, tid: usize) -> Vec<(usize, usize)> {
    assert!(threads.is_multiple_of(row) || row.is_multiple_of(threads), "ChunkMap's static_assert");
    let iters = (rows * row).div_ceil(threads);
    let (row0, col0) = (tid / row, tid % row);
    (0..iters)
        .map(|j| {
            if threads >= row {
                (row0 + j * (threads / row), col0)
            } else {
                (row0 + j / (row / threads), col0 + (j % (row / threads)) * threads)
            }
        })
        .filter(|&(r, _)| r < rows)
        .collect()
}

/// Split `z`'s K steps `(begin, count)`: the template's remainder spreading.
pub fn split_range(steps: usize, split_k: usize, z: usize) -> (usize, usize) {
    let (base, rem) = (steps / split_k, steps % split_k);
    (z * base + z.min(rem), base + usize::from(z < rem))
}

/// Emulates the template's GEMM on the CPU, step by step as the kernel does it: per block and
/// thread the three cp.async streams (`ChunkMap` placement, row and K-tail guards, zero-fill)
/// into a byte image of the shared stage (every byte written exactly once, none read unwritten),
/// the per-lane fragment reads from it, the dequantization mirror, `mma.m16n8k16` by its PTX
/// fragment definition, the guarded epilogue, and split-K's partials and in-kernel finish (the
/// last split block per output block sums, counters back to zero). The
/// fragments each MMA receives are checked bit for bit against the operands' definition
/// (`dequant_w(ch, k)`: the weight as the MMA must see it, zero past N and K; `x`). Returns Y
/// in FP32 (before the final rounding to FP16/BF16).
fn emulate(
    cfg: &GemmConfig,
    x: &[u16],
    w: &[u8],
    dequant_w: &dyn Fn(usize, usize) -> f32,
    (scales, bias): (&[f32], Option<&[f32]>),
    m: usize,
    only_block: &dyn Fn(usize) -> bool,
) -> Vec<f32> {
    let (n_tiles, k_tiles, kt_n, bnt, wnt) = (cfg.n_tiles(), cfg.k_pad() / 32, cfg.k_tiles, cfg.block_n_tiles(), cfg.warp_ntiles);
    let (k_pad, n, mb_n, k_step) = (cfg.k_pad(), cfg.n, cfg.m_tile / 8, 32 * cfg.k_tiles);
    let x_stride = k_step + 8;
    let (w_low, w_high) = (bnt * kt_n * 256, bnt * kt_n * 128);
    let low_plane = n_tiles * k_tiles * 256;
    let steps = cfg.k_steps();
    let adj = match (cfg.act, cfg.format) {
        (Act::F16, _) => 1.0,
        (Act::Bf16, Fp6Format::E3M2) => 1.0 / 4096.0,
        (Act::Bf16, Fp6Format::E2M3) => 1.0 / 16384.0,
    };
    let (grid, block, _) = launch_geometry(cfg, m);
    let threads = block[0] as usize;
    let mut ws = vec![0f32; cfg.split_k * m * n];
    let mut y = vec![0f32; m * n];
    let mut step_hits = vec![0usize; steps];
    for bz in 0..grid[2] as usize {
        let (s0, count) = split_range(steps, cfg.split_k, bz);
        (s0..s0 + count).for_each(|s| step_hits[s] += 1);
        // Grid x: token tiles (`by` here), y: blocks of channels (`bx`).
        for by in 0..grid[0] as usize {
            for bx in (0..grid[1] as usize).filter(|&bx| only_block(bx)) {
                let (nt0, m0) = (bx * bnt, by * cfg.m_tile);
                // acc[warp][lane][i][mb][4]
                let mut acc = vec![[0f32; 4]; cfg.warps * 32 * wnt * mb_n];
                let ai = |warp: usize, lane: usize, i: usize, mb: usize| ((warp * 32 + lane) * wnt + i) * mb_n + mb;
                for step in s0..s0 + count {
                    let mut st = vec![0xAAu8; cfg.stage_bytes()]; // garbage where nothing is copied
                    let mut written = vec![false; cfg.stage_bytes()];
                    let kt0 = step * kt_n;
                    let mut copy = |dst: usize, src: Option<&[u8]>| {
                        for b in 0..16 {
                            assert!(!written[dst + b], "{cfg}: stage byte {} written twice", dst + b);
                            written[dst + b] = true;
                            st[dst + b] = src.map_or(0, |s| s[b]);
                        }
                    };
                    for tid in 0..threads {
                        // Low plane: rows = the block's n-tiles, KT*16 chunks, 16 per k-tile.
                        for (i, r) in thread_chunks(bnt, kt_n * 16, threads, tid) {
                            let ok = nt0 + i < n_tiles && kt0 + r / 16 < k_tiles;
                            let src = (nt0 + i) * k_tiles * 256 + kt0 * 256 + r * 16;
                            copy((i * kt_n * 16 + r) * 16, ok.then(|| &w[src..src + 16]));
                        }
                        // High plane: KT*8 chunks per n-tile, 8 per k-tile.
                        for (i, r) in thread_chunks(bnt, kt_n * 8, threads, tid) {
                            let ok = nt0 + i < n_tiles && kt0 + r / 8 < k_tiles;
                            let src = low_plane + (nt0 + i) * k_tiles * 128 + kt0 * 128 + r * 16;
                            copy(w_low + (i * kt_n * 8 + r) * 16, ok.then(|| &w[src..src + 16]));
                        }
                        // Activations: rows = tokens, K_STEP/8 chunks of 8 halves, 4 per k-tile.
                        for (row, col) in thread_chunks(cfg.m_tile, k_step / 8, threads, tid) {
                            let (gm, gk) = (m0 + row, kt0 * 32 + col * 8);
                            let ok = gm < m && kt0 + col / 4 < k_tiles;
                            let bytes: Vec<u8> =
                                (0..8).flat_map(|h| x.get(gm * k_pad + gk + h).copied().unwrap_or(0).to_le_bytes()).collect();
                            copy(w_low + w_high + row * x_stride * 2 + col * 16, ok.then_some(&bytes[..]));
                        }
                    }
                    let read = |byte: usize, len: usize| -> &[u8] {
                        assert!(written[byte..byte + len].iter().all(|&w| w), "{cfg}: reads stage byte {byte}, never copied");
                        &st[byte..byte + len]
                    };
                    let word = |byte: usize| u32::from_le_bytes(read(byte, 4).try_into().unwrap());
                    let half_at = |idx: usize| u16::from_le_bytes(read(w_low + w_high + 2 * idx, 2).try_into().unwrap());
                    for warp in 0..cfg.warps {
                        for kt in 0..kt_n {
                            for hf in 0..2u32 {
                                let k_base = (kt0 + kt) * 32 + hf as usize * 16;
                                for i in 0..wnt {
                                    let tile = (warp * wnt + i) * kt_n + kt;
                                    let ch_base = (nt0 + warp * wnt + i) * 16;
                                    // A[16][16] and, per token block, B[16][8] from all lanes' registers.
                                    let mut a = [[0f32; 16]; 16];
                                    for lane in 0..32 {
                                        let (g, t) = (lane / 4, lane % 4);
                                        let low = word(4 * (tile * 64 + hf as usize * 32 + lane));
                                        let high = word(w_low + 4 * (tile * 32 + lane));
                                        for pair in 0..4u32 {
                                            let v = mirror_fp6_to_x2(low, high, hf, pair, cfg.format, cfg.act);
                                            for q in 0..2 {
                                                let e = 2 * pair as usize + q;
                                                let (row, kk) = (g + 8 * ((e >> 1) & 1), 2 * t + (e & 1) + 8 * (e >> 2));
                                                let val = act_to_f32((v >> (16 * q)) as u16, cfg.act);
                                                let (ch, kg) = (ch_base + row, k_base + kk);
                                                let want = if ch < n && kg < cfg.k { dequant_w(ch, kg) } else { 0.0 };
                                                assert_eq!(val.to_bits(), want.to_bits(), "{cfg}: A fragment of channel {ch}, k {kg}");
                                                a[row][kk] = val;
                                            }
                                        }
                                    }
                                    for mb in 0..mb_n {
                                        let mut b = [[0f32; 8]; 16];
                                        for lane in 0..32 {
                                            let (g, t) = (lane / 4, lane % 4);
                                            let p = (mb * 8 + g) * x_stride + kt * 32 + hf as usize * 16 + 2 * t;
                                            for (r, off) in [(0, 0), (1, 8)] {
                                                for q in 0..2 {
                                                    let kk = 2 * t + q + 8 * r;
                                                    let val = act_to_f32(half_at(p + off + q), cfg.act);
                                                    let (tok, kg) = (m0 + mb * 8 + g, k_base + kk);
                                                    let want =
                                                        if tok < m && kg < k_pad { act_to_f32(x[tok * k_pad + kg], cfg.act) } else { 0.0 };
                                                    assert_eq!(val.to_bits(), want.to_bits(), "{cfg}: B fragment of token {tok}, k {kg}");
                                                    b[kk][g] = val;
                                                }
                                            }
                                        }
                                        for lane in 0..32 {
                                            let (g, t) = (lane / 4, lane % 4);
                                            let c = &mut acc[ai(warp, lane, i, mb)];
                                            for (ci, (row, col)) in
                                                [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)].into_iter().enumerate()
                                            {
                                                c[ci] += (0..16).map(|kk| a[row][kk] * b[kk][col]).sum::<f32>();
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                // Epilogue.
                for warp in 0..cfg.warps {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        for i in 0..wnt {
                            for hrow in 0..2 {
                                let ch = (nt0 + warp * wnt + i) * 16 + g + 8 * hrow;
                                if ch >= n {
                                    continue;
                                }
                                for mb in 0..mb_n {
                                    for q in 0..2 {
                                        let tok = m0 + mb * 8 + 2 * t + q;
                                        if tok >= m {
                                            continue;
                                        }
                                        let v = acc[ai(warp, lane, i, mb)][2 * hrow + q];
                                        if cfg.split_k == 1 {
                                            y[tok * n + ch] = v * (scales[ch] * adj) + bias.map_or(0.0, |b| b[ch]);
                                        } else {
                                            ws[(bz * m + tok) * n + ch] = v;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(step_hits.iter().all(|&h| h == 1), "{cfg}: K steps per split {step_hits:?}");
    if cfg.split_k > 1 {
        // finish_split: every block counts itself in (counters[by][bx]); the last of an output
        // block's splits sums the partials in split order over its M_TILE x BLOCK_N outputs and
        // resets the counter. Arrival order does not change the result, so the emulation lets
        // the split that is last in launch order finish.
        let block_n = bnt * 16;
        let mut counters = vec![0usize; cfg.counter_slots(m)];
        let mut written = vec![0u8; m * n];
        for bz in 0..grid[2] as usize {
            for by in 0..grid[0] as usize {
                for bx in (0..grid[1] as usize).filter(|&bx| only_block(bx)) {
                    // blockIdx.y * gridDim.x + blockIdx.x
                    let counter = &mut counters[bx * grid[0] as usize + by];
                    *counter += 1;
                    if *counter < cfg.split_k {
                        continue;
                    }
                    assert_eq!(bz, cfg.split_k - 1);
                    *counter = 0;
                    let (nt0, m0) = (bx * bnt, by * cfg.m_tile);
                    for idx in 0..cfg.m_tile * block_n {
                        let (tok, ch) = (m0 + idx / block_n, nt0 * 16 + idx % block_n);
                        if tok >= m || ch >= n {
                            continue;
                        }
                        let s: f32 = (0..cfg.split_k).map(|z| ws[(z * m + tok) * n + ch]).sum();
                        y[tok * n + ch] = s * (scales[ch] * adj) + bias.map_or(0.0, |b| b[ch]);
                        written[tok * n + ch] += 1;
                    }
                }
            }
        }
        assert!(counters.iter().all(|&c| c == 0), "{cfg}: counters left non-zero");
        for (i, &w) in written.iter().enumerate() {
            assert!(w == u8::from(only_block((i % n) / block_n)), "{cfg}: output ({}, {}) written {w} times", i / n, i % n);
        }
    }
    y
}

/// One emulated product on random data (fixed seed), checked against decode-then-multiply in
/// f64: random FP6 codes (every code, subnormals included), scales, bias and activations;
/// `only_block` limits the emulation (and the check) to some blocks of channels.
fn check_emulated(cfg: &GemmConfig, m: usize, rng: &mut Rng, only_block: &dyn Fn(usize) -> bool) {
    use fpx_quant::layout::{pack, PackedShape};
    cfg.validate().unwrap();
    let (n, k, act) = (cfg.n, cfg.k, cfg.act);
    let qf = cfg.format.quant_format();
    // Random codes from a seeded multiplicative hash (one rng draw per product: LLaMA-sized
    // weights hold 235M codes).
    let salt = rng.next_u32() as u64 | 1;
    let codes: Vec<u8> =
        (0..(n * k) as u64).map(|i| ((i.wrapping_add(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) & 63) as u8).collect();
    let w = pack(&codes, &PackedShape::new(n, k, 6));
    // What the MMA must receive: FP16 the bias-shifted value, BF16 the true value.
    let dequant_w = |ch: usize, kk: usize| {
        let c = codes[ch * k + kk];
        match act {
            Act::F16 => half::f16::from_bits(fpx_quant::bias_shift::f16_bits(qf, c)).to_f32(),
            Act::Bf16 => qf.decode(c),
        }
    };
    let true_scales: Vec<f32> = (0..n).map(|_| 0.01 + rng.signed().abs() * 0.1).collect();
    let stored: Vec<f32> = true_scales.iter().map(|s| s * fpx_quant::fold::storage_factor(qf)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.signed()).collect();
    let k_pad = cfg.k_pad();
    let mut x = vec![0u16; m * k_pad];
    for r in 0..m {
        for c in 0..k {
            let v = rng.signed() * 4.0;
            x[r * k_pad + c] = match act {
                Act::F16 => half::f16::from_f32(v).to_bits(),
                Act::Bf16 => half::bf16::from_f32(v).to_bits(),
            };
        }
    }
    let t0 = std::time::Instant::now();
    let y = emulate(cfg, &x, &w, &dequant_w, (&stored, Some(&bias)), m, only_block);
    if std::env::var_os("FPX_EMU_TIMES").is_some() {
        eprintln!("{cfg} m={m}: emulated in {:?}", t0.elapsed());
    }
    for c in (0..n).filter(|&c| only_block(c / cfg.block_n())) {
        for r in 0..m {
            let (mut want, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let t = act_to_f32(x[r * k_pad + kk], act) as f64 * qf.decode(codes[c * k + kk]) as f64;
                want += t;
                mag += t.abs();
            }
            let want = want * true_scales[c] as f64 + bias[c] as f64;
            let got = y[r * n + c] as f64;
            let tol = 1e-5 * (mag * true_scales[c] as f64 + 1.0);
            assert!((got - want).abs() <= tol, "{} y[{r}][{c}] = {got}, want {want}", cfg.kernel_name());
        }
    }
}

/// The kernel's index math and arithmetic, emulated, match decode-then-multiply on random
/// data for awkward shapes, both formats, both activation types, split or not, with every
/// fragment bit-exact: the heuristic's configs on both SM counts, hand-made tilings, and
/// every config of the tuner's search space for three awkward shapes.
#[test]
fn emulated_kernel_matches_the_reference() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let all = |_: usize| true;
    let cases = [
        (100, 70, 3, None),
        (40, 200, 17, None),
        (33, 96, 9, Some(GemmConfig { warps: 3, warp_ntiles: 1, k_tiles: 1, stages: 2, split_k: 2, ..heuristic_config(33, 96, 9, 108) })),
        (257, 64, 1, None),
        (48, 130, 70, Some(GemmConfig { split_k: 3, ..heuristic_config(48, 130, 70, 108) })),
        (16, 32, 8, None),
        (384, 1536, 2, None),
        (
            70,
            1000,
            5,
            Some(GemmConfig { warps: 2, warp_ntiles: 2, k_tiles: 4, stages: 3, split_k: 5, ..heuristic_config(70, 1000, 5, 108) }),
        ),
    ];
    for (n, k, m, custom) in cases {
        for sms in [108, 132] {
            for format in [Fp6Format::E3M2, Fp6Format::E2M3] {
                for act in [Act::F16, Act::Bf16] {
                    let cfg = GemmConfig { format, act, ..custom.clone().unwrap_or_else(|| heuristic_config(n, k, m, sms)) };
                    check_emulated(&cfg, m, &mut rng, &all);
                }
            }
        }
    }
}

/// Every config the tuner's search space holds for three awkward shapes (K tails, partial
/// n-blocks, partial token tiles), emulated bit-exact; format and activation type rotate.
#[test]
fn emulated_search_space_matches_the_reference() {
    let mut rng = Rng::new(0x005e_ed0f_5ace);
    let all = |_: usize| true;
    let mut count = 0;
    for (n, k, m) in [(40, 200, 17), (100, 70, 3), (33, 290, 1)] {
        for (i, base) in search_space(n, k, m).into_iter().enumerate() {
            let format = if i % 2 == 0 { Fp6Format::E3M2 } else { Fp6Format::E2M3 };
            let act = if (i / 2) % 2 == 0 { Act::F16 } else { Act::Bf16 };
            check_emulated(&GemmConfig { format, act, ..base }, m, &mut rng, &all);
            count += 1;
        }
    }
    eprintln!("{count} search-space configs emulated");
    assert!(count > 500, "{count}");
}

/// The heuristic's configs for the model shapes (MiniLM, LLaMA-2 7B/70B) at M = 1 and 16 (and
/// 64 for MiniLM's) on both SM counts, emulated on their first and last block of channels (all
/// splits and tokens).
#[test]
fn emulated_model_shapes_match_the_reference() {
    let mut rng = Rng::new(0x11a3_a70b);
    let mut seen = std::collections::HashSet::new();
    for (k, n) in SHAPES {
        for m in [1, 16, 64].into_iter().filter(|&m| m < 64 || k * n <= 1536 * 384) {
            for sms in SMS {
                let cfg = heuristic_config(n, k, m, sms);
                if !seen.insert(cfg.clone()) {
                    continue;
                }
                let last = cfg.n_tiles().div_ceil(cfg.block_n_tiles()) - 1;
                let act = if seen.len() % 2 == 0 { Act::F16 } else { Act::Bf16 };
                check_emulated(&GemmConfig { act, ..cfg }, m, &mut rng, &|bx| bx == 0 || bx == last);
            }
        }
    }
}

/// The emulation above transcribes these lines of the template; if they change, it must too.
#[test]
fn emulation_mirrors_the_template_text() {
    for needle in [
        "static __device__ __forceinline__ constexpr int row_add(int j) { return THREADS >= ROW ? j * ROWS_PER_ITER : j / ITERS_PER_ROW; }",
        "static __device__ __forceinline__ constexpr int col_add(int j) { return THREADS >= ROW ? 0 : (j % ITERS_PER_ROW) * THREADS; }",
        "if (!Map::EVEN && !((in_rows >> j) & 1u)) continue;",
        "if (ROW_GUARD) ok = (rows_ok >> j) & 1u;",
        "if (K_GUARD) ok = ok && Map::col_add(j) / CPT < k_left;",
        "const unsigned char* p = src + (long long)Map::row_add(j) * GROW + Map::col_add(j) * 16;",
        "const fpx_u32 d = stage + dst + Map::row_add(j) * SROW + Map::col_add(j) * 16;",
        "using LowStream = ChunkStream<BLOCK_NT, KT * 16, THREADS, 16, (long long)K_TILES * 256, KT * 256, N_TILES % BLOCK_NT != 0, K_TAIL, true>;",
        "using HighStream = ChunkStream<BLOCK_NT, KT * 8, THREADS, 8, (long long)K_TILES * 128, KT * 128, N_TILES % BLOCK_NT != 0, K_TAIL, true>;",
        "using XStream = ChunkStream<M_TILE, K_STEP / 8, THREADS, 4, (long long)K_PAD * 2, X_STRIDE * 2, true, K_TAIL, false>;",
        "constexpr int CPT = TILE_BYTES / 16;",
        "const fpx_u32 row0 = tid / (KT * CPT), col0 = tid % (KT * CPT);",
        "s.src = plane + ((fpx_u64)(nt0 + row0) * K_TILES + kt0) * TILE_BYTES + col0 * 16;",
        "s.dst = dst0 + tid * 16;",
        "s.k_left = K_TILES - kt0 - (int)(col0 / CPT);",
        "s.in_rows |= (fpx_u32)(row < BLOCK_NT) << j;",
        "s.rows_ok |= (fpx_u32)(nt0 + row < N_TILES) << j;",
        "s.src = x + (fpx_u64)(m0 + row0) * ROW_BYTES + kt0 * (CPT * 16) + col0 * 16;",
        "s.dst = dst0 + row0 * SROW + col0 * 16;",
        "s.in_rows |= (fpx_u32)(row < M_TILE) << j;",
        "s.rows_ok |= (fpx_u32)(m0 + row < M) << j;",
        "open_tile_stream<LowStream, BLOCK_NT, N_TILES, K_TILES, KT, 256>(lo, W, 0, nt0, kt0);",
        "open_tile_stream<HighStream, BLOCK_NT, N_TILES, K_TILES, KT, 128>(hi, W + LOW_PLANE_BYTES, W_LOW_BYTES, nt0, kt0);",
        "open_token_stream<XStream, M_TILE, K_TILES, KT, 4, (long long)K_PAD * 2, X_STRIDE * 2>(xs, (const unsigned char*)X, W_LOW_BYTES + W_HIGH_BYTES,",
        "begin = z * BASE + (z < REM ? z : REM);",
        "count = BASE + (z < REM ? 1 : 0);",
        "const SplitSteps<STEPS, SPLIT_K> steps(blockIdx.z);",
        "open_streams(lo, hi, xs, X, W, M, nt0, m0, steps.begin);",
        "lo.issue(stage, policy, KT, KT * 256);",
        "hi.issue(stage, policy, KT, KT * 128);",
        "xs.issue(stage, policy, KT, K_STEP * 2);",
        "static constexpr int X_STRIDE = K_STEP + 8;",
        "sx + (mb * 8 + g) * X_STRIDE + HALF * 16 + 2 * t",
        "b[mb][1] = *(const fpx_u32*)(p + 8);",
        "const int tile = (warp * WNT + i) * KT + kt;",
        "lw[i][0] = slow[tile * 64 + lane];",
        "lw[i][1] = slow[tile * 64 + 32 + lane];",
        "hw[i] = prepare_high<FORMAT, ACT>(shigh[tile * 32 + lane]);",
        "mma_half<0>(acc, lw, hw, sx + kt * 32);",
        "const int ch = (nt0 + warp * WNT + i) * 16 + g + 8 * hrow;",
        "const int tok = m0 + mb * 8 + 2 * t + q;",
        "const float v = acc[i][mb][2 * hrow + q];",
        "Y[(fpx_u64)tok * N + ch] = from_f32<ACT>(v * sc + bi);",
        "ws[((fpx_u64)blockIdx.z * M + tok) * N + ch] = v;",
        "const int m0 = blockIdx.x * M_TILE;",
        "const int nt0 = blockIdx.y * BLOCK_NT;",
        "const int tok = m0 + idx / BLOCK_N, ch = nt0 * 16 + idx % BLOCK_N;",
        "for (int idx = threadIdx.x; idx < M_TILE * BLOCK_N; idx += THREADS) {",
        "for (int z = 0; z < SPLIT_K; ++z) s += load_cg(ws + ((fpx_u64)z * M + tok) * N + ch);",
        "Y[(fpx_u64)tok * N + ch] = from_f32<ACT>(s * (scales[ch] * adj) + (bias ? bias[ch] : 0.0f));",
        "unsigned* counter = counters + blockIdx.y * gridDim.x + blockIdx.x;",
        "if (arrived == SPLIT_K - 1) *counter = 0u;",
    ] {
        assert!(FP6_GEMM_TEMPLATE.contains(needle), "template changed: {needle}");
    }
}

/// Every op family (elementwise, LayerNorm, Softmax, reductions, Gather, Transpose) compiles for
/// sm_80 and sm_90 and assembles with every entry present and no spills.
#[test]
fn every_family_compiles_and_assembles_without_spills() {
    require_toolchain!("every_family_compiles_and_assembles_without_spills");
    let mut rows = Vec::new();
    for arch in Arch::ALL {
        let modules = compile_ops_ptx(arch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(modules.len(), OpFamily::ALL.len());
        for m in modules {
            assert_eq!(m.arch, arch);
            assert!(m.src.contains(&format!(".target {}", arch.sm())));
            for k in &m.family.kernels() {
                assert!(m.src.contains(&format!(".visible .entry {}(", k.name())), "{k} missing from the PTX");
            }
            let report = ptxas_check(&m.to_ptx(), arch).unwrap_or_else(|e| panic!("{}: {e}", m.module_name()));
            let got: BTreeSet<&str> = report.kernels.iter().map(|k| k.name.as_str()).collect();
            let want: Vec<String> = m.family.kernels().iter().map(OpKernel::name).collect();
            assert_eq!(got, want.iter().map(String::as_str).collect(), "entries of {}", m.module_name());
            for k in &report.kernels {
                assert_eq!((k.spill_stores, k.spill_loads, k.stack_bytes), (0, 0, 0), "{arch} {}: {k:?}", k.name);
                rows.push(format!("{arch} {:<24} regs {:>3} smem {}", k.name, k.registers, k.shared_bytes));
            }
        }
    }
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn ops_compile_cache_hits() {
    require_toolchain!("ops_compile_cache_hits");
    let a = compile_family_ptx(OpFamily::Softmax, Arch::Sm80).unwrap();
    let before = fpx_cuda::ops::ops_nvrtc_compilations();
    let b = compile_family_ptx(OpFamily::Softmax, Arch::Sm80).unwrap();
    assert_eq!(fpx_cuda::ops::ops_nvrtc_compilations(), before, "second compile of the same key must hit the cache");
    assert_eq!(a, b);
    let c = compile_family_ptx(OpFamily::Softmax, Arch::Sm90).unwrap();
    assert_ne!(a.src, c.src, "the arch is part of the key");
    // The FP16 paths use PTX cvt, the same-shape ones 16-byte vector accesses.
    let e = compile_family_ptx(OpFamily::Elementwise, Arch::Sm90).unwrap();
    for needle in ["cvt.rn.f16.f32", "cvt.f32.f16", "ld.global.v4.u32", "st.global.v4.u32"] {
        assert!(e.src.contains(needle), "{needle} missing from the elementwise PTX");
    }
}
