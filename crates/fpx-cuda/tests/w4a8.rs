//! The W4A8 GEMM (FP4 weights, FP8 activations, FP8 tensor cores; issue 19) without a GPU:
//! NVRTC + ptxas for sm_89 and sm_90 with no spills, the SASS main loop (native FP8 MMAs on
//! sm_89, their FP16 lowering on sm_90, beside the FP6 GEMM), and a CPU emulation of both kernels — the row quantizer against
//! `fpx_quant::act_fp8` and the GEMM's shared-memory stages, fragments (every byte checked
//! against `fpx_quant`'s FP4 and FP8 decoders), MMA slot pairing, epilogue and split-K, against
//! decode-then-multiply in f64.

use std::collections::BTreeSet;

use fpx_cuda::sass::{disassemble, find_nvdisasm, OpcodeCounts};
use fpx_cuda::w4a8::{compile_ptx, perm_column, Fp8Act, W4a8Config, SCALE_ADJUST, W4A8_GEMM_TEMPLATE};
use fpx_cuda::{heuristic_config, Arch};
use fpx_quant::Format;
use fpx_test_support::{skip, Requirement, Rng};

use crate::common::{open_gpu, toolchain_or_skip, LINEAR_SHAPES};
use crate::kernels::{split_range, thread_chunks};

/// Compiles `cfg` for `arch` and assembles it: both entries present, no spills, no stack.
/// Returns the registers of the GEMM and the cubin.
fn compile_and_check(cfg: &W4a8Config, arch: Arch) -> (u32, Vec<u8>) {
    let ptx = compile_ptx(cfg, arch).unwrap_or_else(|e| panic!("{e}"));
    let (report, cubin) = fpx_cuda::compile::assemble(&ptx.src, arch).unwrap_or_else(|e| panic!("{} on {arch}: {e}", cfg.kernel_name()));
    let names: BTreeSet<&str> = report.kernels.iter().map(|k| k.name.as_str()).collect();
    let (gemm, quantize) = (cfg.kernel_name(), cfg.quantize_kernel_name());
    assert_eq!(names, BTreeSet::from([gemm.as_str(), quantize.as_str()]), "entry functions");
    assert_eq!((report.spill_stores, report.spill_loads), (0, 0), "{gemm} spills: {report:?}");
    assert!(report.kernels.iter().all(|k| k.stack_bytes == 0), "{gemm} uses a stack frame: {report:?}");
    let registers = report.kernels.iter().find(|k| k.name == gemm).map(|k| k.registers).unwrap();
    (registers, cubin)
}

/// The heuristic's W4A8 configs for the model shapes at M = 1, 16, 128 (H100), both FP8
/// formats, and hand-made tilings (1 and 4 k-tiles, 8 warps, 64-token tiles, split-K on awkward
/// shapes) compile for sm_89 and sm_90 and assemble with no spills.
#[test]
fn w4a8_configs_compile_without_spills() {
    if !toolchain_or_skip("w4a8_configs_compile_without_spills") {
        return;
    }
    let mut configs = BTreeSet::new();
    for (k, n) in LINEAR_SHAPES {
        for m in [1, 16, 128] {
            configs.insert(format!("{:?}", W4a8Config::heuristic(Fp8Act::E4M3, n, k, m, 132)));
        }
    }
    let mut jobs: Vec<W4a8Config> =
        LINEAR_SHAPES.iter().flat_map(|&(k, n)| [1, 16, 128].map(|m| W4a8Config::heuristic(Fp8Act::E4M3, n, k, m, 132))).collect();
    jobs.dedup();
    let custom = |n, k, m, f: &dyn Fn(&mut W4a8Config)| {
        let mut c = W4a8Config::heuristic(Fp8Act::E5M2, n, k, m, 132);
        f(&mut c);
        c
    };
    jobs.extend([
        W4a8Config::heuristic(Fp8Act::E5M2, 4096, 4096, 1, 132),
        custom(100, 70, 3, &|c| (c.k_tiles, c.split_k) = (1, 2)),
        custom(40, 200, 17, &|c| (c.k_tiles, c.warps, c.warp_ntiles, c.stages) = (4, 2, 2, 3)),
        custom(512, 1000, 64, &|c| (c.warps, c.warp_ntiles, c.m_tile, c.split_k) = (8, 1, 64, 3)),
    ]);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|s| {
        for w in 0..workers {
            let jobs = &jobs;
            s.spawn(move || {
                for c in jobs.iter().skip(w).step_by(workers) {
                    compile_and_check(c, Arch::Sm90);
                    compile_and_check(c, Arch::Sm89);
                }
            });
        }
    });
    eprintln!("{} W4A8 configs compiled for sm_89 and sm_90 ({} distinct heuristic choices)", jobs.len(), configs.len());
}

/// The main loop of the W4A8 GEMM (nvdisasm) on sm_89, where FP8 `mma` is native
/// (`QMMA.16832.F32.E4M3.E4M3`, one per 16x32 tile and token block), and on sm_90, where ptxas
/// 13.0 lowers each to two FP16 `HMMA.16816` on bytes unpacked by `F2FP.F16.E4M3.UNPACK_B`
/// (Hopper reaches FP8 tensor throughput through `wgmma` only); printed beside the FP6 e3m2
/// GEMM of the same tiling on sm_90.
#[test]
fn w4a8_main_loop_uses_fp8_mma() {
    if !toolchain_or_skip("w4a8_main_loop_uses_fp8_mma") {
        return;
    }
    if find_nvdisasm().is_none() {
        skip(Requirement::Gpu, "w4a8_main_loop_uses_fp8_mma", "no nvdisasm on PATH or in FPX_CUDA_HOME/bin");
        return;
    }
    eprintln!("| K x N, M | sm_89 instr/step | QMMA | sm_90 instr/step | FP16 HMMA | F2FP | regs sm_90 | FP6 e3m2 sm_90 instr/step |");
    for (k, n, m) in [(4096, 4096, 1), (4096, 4096, 16), (384, 1536, 64)] {
        let cfg = W4a8Config::heuristic(Fp8Act::E4M3, n, k, m, 132);
        // FP8 MMAs per K step and warp: k_tiles x warp_ntiles x m_tile / 8.
        let fp8_mmas = (cfg.k_tiles * cfg.warp_ntiles * cfg.m_tile / 8) as f64;
        let mut row = Vec::new();
        for arch in [Arch::Sm89, Arch::Sm90] {
            let (registers, cubin) = compile_and_check(&cfg, arch);
            let functions = disassemble(&cubin).unwrap();
            let f = functions.iter().find(|f| f.name == cfg.kernel_name()).expect("the GEMM in the cubin");
            let body = f.main_loop().expect("a main loop with MMAs");
            if std::env::var_os("FPX_DUMP_W4A8").is_some() {
                body.iter().for_each(|i| eprintln!("{arch} {} {}", i.opcode, i.operands));
            }
            let mmas: Vec<&str> = body.iter().filter(|i| i.is_mma()).map(|i| i.opcode.as_str()).collect();
            let unpacks = body.iter().filter(|i| i.opcode.starts_with("F2FP.F16.E4M3")).count() as f64;
            let counts = OpcodeCounts::of(body);
            let per_mma = if arch == Arch::Sm89 {
                assert!(mmas.iter().all(|o| o.starts_with("QMMA.16832.F32.E4M3.E4M3")), "{arch}: not native FP8 MMAs: {mmas:?}");
                1.0
            } else {
                assert!(mmas.iter().all(|o| o.starts_with("HMMA.16816.F32")), "{arch}: {mmas:?}");
                assert!(unpacks > 0.0, "{arch}: FP8 operands without F2FP unpacking");
                2.0
            };
            let steps = counts.mma / (per_mma * fp8_mmas);
            assert!(steps >= 1.0 && steps.fract() == 0.0, "{arch}: {counts:?} for {fp8_mmas} FP8 MMAs per step");
            row.push((counts.total / steps, counts.mma / steps, unpacks / steps, registers));
        }
        let fp6 = fpx_cuda::sass::loop_per_step(&heuristic_config(n, k, m, 132), Arch::Sm90, fpx_cuda::sass::Probe::Shipped).unwrap();
        eprintln!(
            "| {k} x {n}, {m} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} |",
            row[0].0, row[0].1, row[1].0, row[1].1, row[1].2, row[1].3, fp6.step.total
        );
    }
}

/// A Rust mirror of the template's `fp4_to_e4m3` (the text is checked below).
fn mirror_fp4_to_e4m3(w: u32) -> [u32; 2] {
    let lo = ((w << 4) & 0x8080_8080) | ((w << 2) & 0x1c1c_1c1c);
    let hi = (w & 0x8080_8080) | ((w >> 2) & 0x1c1c_1c1c);
    let prmt = |a: u32, b: u32, sel: u32| {
        let bytes = [a.to_le_bytes(), b.to_le_bytes()].concat();
        u32::from_le_bytes(std::array::from_fn(|i| bytes[((sel >> (4 * i)) & 7) as usize]))
    };
    [prmt(hi, lo, 0x7250), prmt(hi, lo, 0x3614)]
}

/// Column offset within the k16 half of MMA byte `i` of lane `t` (`perm_column` without `h`).
fn slot_column(t: usize, i: usize) -> usize {
    2 * t + [8, 0, 9, 1][i]
}

/// Every FP4 code at every element of a lane word becomes, in the register and byte the MMA
/// pairs with the right activation column, the e4m3 byte of its value times 2^-6 (fpx_quant's
/// decoders, exhaustively); the epilogue constant undoes 2^-6 and the FP16 storage factor.
#[test]
fn fp4_to_e4m3_matches_fpx_quant_for_every_code() {
    use fpx_quant::layout::{low_nibble_pos, position_of, slot_of, PackedShape, Slot};
    assert_eq!(SCALE_ADJUST * fpx_quant::fold::storage_factor(Format::Fp4E2M1), 64.0);
    let shape = PackedShape::new(16, 32, 4);
    for code in 0..16u8 {
        for other in [0u8, 15 - code, code.wrapping_mul(5) & 15] {
            for e in 0..8 {
                // Code `code` at element e, `other` everywhere else.
                let mut w = 0u32;
                for el in 0..8 {
                    w |= ((if el == e { code } else { other }) as u32) << (4 * low_nibble_pos(el));
                }
                let regs = mirror_fp4_to_e4m3(w);
                // Where the layout puts element e of lane (g, t), half 0: its (row, column).
                let lane = 5; // g = 1, t = 1
                let (row, col) = position_of(&shape, Slot { tile: 0, half: 0, lane, elem: e });
                assert_eq!(slot_of(&shape, row, col), Slot { tile: 0, half: 0, lane, elem: e });
                let (g, t) = (lane / 4, lane % 4);
                let reg = usize::from(row == g + 8);
                let i = (0..4).find(|&i| slot_column(t, i) == col).expect("the column is one of the lane's");
                let byte = (regs[reg] >> (8 * i)) as u8;
                let got = Format::Fp8E4M3.decode(byte) as f64;
                let want = Format::Fp4E2M1.decode(code) as f64 / 64.0;
                assert_eq!(got, want, "code {code:#x} at element {e}: byte {byte:#04x}");
                assert_eq!(byte & 0x80 != 0, code & 8 != 0, "sign of code {code:#x}");
            }
        }
    }
    for needle in [
        "const fpx_u32 lo = ((w << 4) & 0x80808080u) | ((w << 2) & 0x1c1c1c1cu);",
        "const fpx_u32 hi = (w & 0x80808080u) | ((w >> 2) & 0x1c1c1c1cu);",
        "row_g = prmt(hi, lo, 0x7250u);",
        "row_g8 = prmt(hi, lo, 0x3614u);",
        "return 16 * h + 2 * t + ((i & 1) ? 0 : 8) + (i >> 1);",
        "__device__ __forceinline__ constexpr float w4a8_scale_adjust() { return 64.0f / 16384.0f; }",
    ] {
        assert!(W4A8_GEMM_TEMPLATE.contains(needle), "template lost: {needle}");
    }
}

/// The template's `fp8_scale_exponent` (checked below), mirrored.
fn mirror_scale_exponent(absmax_bits: u32, act: Fp8Act) -> i32 {
    if absmax_bits == 0 {
        return 0;
    }
    let max_exp = if act == Fp8Act::E4M3 { 8 } else { 15 };
    let e = (absmax_bits >> 23) as i32 - 127 - max_exp + i32::from((absmax_bits & 0x7f_ffff) > 0x60_0000);
    e.clamp(-126, 126)
}

/// The row quantizer, emulated: `(Xq [m][k_pad], scales [m])` from FP16 rows `x` ([m][k]), with
/// the conversion as PTX defines `cvt.rn.satfinite` (RNE, saturating, NaN kept: fpx_quant's
/// encoder on the exactly scaled value).
fn emulate_quantizer(cfg: &W4a8Config, x: &[u16], m: usize) -> (Vec<u8>, Vec<f32>) {
    let (k, k_pad, fmt) = (cfg.k, cfg.k_pad(), cfg.act.quant_format());
    let mut xq = vec![0u8; m * k_pad];
    let mut scales = Vec::with_capacity(m);
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        let absmax = row.iter().map(|&h| h & 0x7fff).filter(|&mag| mag < 0x7c00).max().unwrap_or(0);
        let e = mirror_scale_exponent(half::f16::from_bits(absmax).to_f32().to_bits(), cfg.act);
        let inv = f32::from_bits(((127 - e) as u32) << 23);
        scales.push(f32::from_bits(((127 + e) as u32) << 23));
        for pos in 0..k_pad {
            let c = pos / 32 * 32 + perm_column(pos % 32);
            let v = if c < k { half::f16::from_bits(row[c]).to_f32() * inv } else { 0.0 };
            xq[r * k_pad + pos] = if v.is_nan() { 0x7f } else { fmt.encode(v) };
        }
    }
    (xq, scales)
}

/// Random FP16 rows with the awkward values: zeros, FP16 subnormals, ±inf, NaN, the top of the
/// range, and rows of one magnitude.
fn awkward_rows(m: usize, k: usize, rng: &mut Rng) -> Vec<u16> {
    let mut x: Vec<u16> = (0..m * k)
        .map(|_| {
            let mag = 2f64.powf(rng.range(-20.0, 12.0));
            half::f16::from_f64(if rng.next_u32() & 1 == 0 { mag } else { -mag }).to_bits()
        })
        .collect();
    for (r, row) in x.chunks_mut(k).enumerate() {
        match r % 6 {
            0 => row.fill(0),
            1 => row[0] = 0x7c00,                           // +inf
            2 => row[k / 2] = 0x7e00,                       // NaN
            3 => row.iter_mut().for_each(|v| *v &= 0x83ff), // subnormals only
            4 => row[k - 1] = 0xfbff,                       // -65504
            _ => {}
        }
    }
    x
}

/// The quantizer's scale is `act_fp8`'s row scale and every stored code decodes (times the
/// scale) to `Fp8Activations::quantize`'s value of the column the permutation puts there;
/// padding is code 0; for every exponent a row's absmax can have, the bit formula equals the
/// definition.
#[test]
fn quantizer_emulation_matches_act_fp8() {
    let mut rng = Rng::new(0xf8_a8);
    for act in [Fp8Act::E4M3, Fp8Act::E5M2] {
        let fmt = act.quant_format();
        // Every FP16 magnitude as a one-value row.
        for bits in 1..0x7c00u16 {
            let v = half::f16::from_bits(bits).to_f32();
            let e = mirror_scale_exponent(v.to_bits(), act);
            assert_eq!(2f32.powi(e), fpx_quant::act_fp8::row_scale(&[v], fmt), "{act:?} absmax {v}");
        }
        for (m, k) in [(12, 70), (6, 384), (7, 33)] {
            let cfg = W4a8Config::heuristic(act, 64, k, m, 132);
            let x = awkward_rows(m, k, &mut rng);
            let (xq, scales) = emulate_quantizer(&cfg, &x, m);
            let xf: Vec<f32> = x.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect();
            let want = fpx_quant::act_fp8::Fp8Activations::quantize(&xf, m, k, fmt).unwrap();
            assert_eq!(scales, want.scales, "{act:?} {m}x{k}");
            let dq = want.dequantized();
            for r in 0..m {
                for pos in 0..cfg.k_pad() {
                    let c = pos / 32 * 32 + perm_column(pos % 32);
                    let got = fmt.decode(xq[r * cfg.k_pad() + pos]) * scales[r];
                    if c >= k {
                        assert_eq!(xq[r * cfg.k_pad() + pos], 0, "padding");
                    } else if dq[r * k + c].is_nan() {
                        assert!(got.is_nan());
                    } else {
                        assert_eq!(got, dq[r * k + c], "{act:?} row {r} column {c}");
                    }
                }
            }
        }
    }
    for needle in [
        "const int e = (int)(absmax_bits >> 23) - 127 - Fp8Act<FP8>::MAX_EXP + ((absmax_bits & 0x7fffffu) > 0x600000u ? 1 : 0);",
        "static constexpr int MAX_EXP = FP8 == 0 ? 8 : 15;",
        "if (mag < 0x7c00u && mag > m) m = mag;",
        "const int c = (q >> 3) * 32 + perm_column((4 * q + i) & 31);",
        "v[i] = c < K ? f16_to_f32(x[c]) * inv : 0.0f;",
        "out[q] = cvt_fp8x2<FP8>(v[0], v[1]) | (cvt_fp8x2<FP8>(v[2], v[3]) << 16);",
    ] {
        assert!(W4A8_GEMM_TEMPLATE.contains(needle), "template changed: {needle}");
    }
}

/// Emulates the W4A8 GEMM as the kernel runs it: per block and K step the two copy streams into
/// a byte image of the stage (every byte written once, none read unwritten), the fragment words,
/// the FP4 → e4m3 mirror, `mma.m16n8k32` as the pairing of A byte i of register a_h with B byte
/// i of b_h of the same lane column t, the epilogue and the split-K finish. Every A and B byte
/// is checked against its definition (weight code value × 2^-6 at the slot's column; the
/// quantized activation of that column). Returns Y in FP32.
fn emulate_gemm(cfg: &W4a8Config, xq: &[u8], xs: &[f32], w: &[u8], codes: &[u8], (scales, bias): (&[f32], &[f32]), m: usize) -> Vec<f32> {
    let (n, k, k_pad, kt_n, wnt, mb_n) = (cfg.n, cfg.k, cfg.k_pad(), cfg.k_tiles, cfg.warp_ntiles, cfg.m_tile / 8);
    let tiling = cfg.tiling();
    let (n_tiles, k_tiles, bnt, steps) = (tiling.n_tiles(), k_pad / 32, tiling.block_n_tiles(), tiling.k_steps());
    let (w_bytes, x_stride) = (bnt * kt_n * 256, 32 * kt_n + 16);
    let fmt = cfg.act.quant_format();
    let (grid, block, shared) = cfg.launch_geometry(m);
    assert_eq!(shared as usize, cfg.shared_bytes());
    let threads = block[0] as usize;
    let mut ws = vec![0f32; cfg.split_k * m * n];
    let mut y = vec![0f32; m * n];
    for bz in 0..grid[2] as usize {
        let (s0, count) = split_range(steps, cfg.split_k, bz);
        for by in 0..grid[0] as usize {
            for bx in 0..grid[1] as usize {
                let (nt0, m0) = (bx * bnt, by * cfg.m_tile);
                let mut acc = vec![[0f32; 4]; cfg.warps * 32 * wnt * mb_n];
                let ai = |warp: usize, lane: usize, i: usize, mb: usize| ((warp * 32 + lane) * wnt + i) * mb_n + mb;
                for step in s0..s0 + count {
                    let mut st = vec![0xAAu8; cfg.stage_bytes()];
                    let mut written = vec![false; cfg.stage_bytes()];
                    let kt0 = step * kt_n;
                    let mut copy = |dst: usize, src: Option<&[u8]>| {
                        for b in 0..16 {
                            assert!(!written[dst + b], "stage byte {} written twice", dst + b);
                            written[dst + b] = true;
                            st[dst + b] = src.map_or(0, |s| s[b]);
                        }
                    };
                    for tid in 0..threads {
                        for (i, r) in thread_chunks(bnt, kt_n * 16, threads, tid) {
                            let ok = nt0 + i < n_tiles && kt0 + r / 16 < k_tiles;
                            let src = (nt0 + i) * k_tiles * 256 + kt0 * 256 + r * 16;
                            copy((i * kt_n * 16 + r) * 16, ok.then(|| &w[src..src + 16]));
                        }
                        for (row, col) in thread_chunks(cfg.m_tile, 2 * kt_n, threads, tid) {
                            let ok = m0 + row < m && kt0 + col / 2 < k_tiles;
                            let src = (m0 + row) * k_pad + kt0 * 32 + col * 16;
                            copy(w_bytes + row * x_stride + col * 16, ok.then(|| &xq[src..src + 16]));
                        }
                    }
                    let word = |byte: usize| {
                        assert!(written[byte..byte + 4].iter().all(|&w| w), "reads stage byte {byte}, never copied");
                        u32::from_le_bytes(st[byte..byte + 4].try_into().unwrap())
                    };
                    for warp in 0..cfg.warps {
                        for kt in 0..kt_n {
                            let k_base = (kt0 + kt) * 32;
                            // B[mb][lane][h]: the words at byte kt*32 + 16h + 4t of row mb*8 + g.
                            let b: Vec<[[u32; 2]; 32]> = (0..mb_n)
                                .map(|mb| {
                                    std::array::from_fn(|lane| {
                                        let (g, t) = (lane / 4, lane % 4);
                                        std::array::from_fn(|h| word(w_bytes + (mb * 8 + g) * x_stride + kt * 32 + 16 * h + 4 * t))
                                    })
                                })
                                .collect();
                            for i in 0..wnt {
                                let tile = (warp * wnt + i) * kt_n + kt;
                                let ch_base = (nt0 + warp * wnt + i) * 16;
                                // a[lane][register]
                                let a: Vec<[u32; 4]> = (0..32)
                                    .map(|lane| {
                                        let [r0, r1] = mirror_fp4_to_e4m3(word(4 * (tile * 64 + lane)));
                                        let [r2, r3] = mirror_fp4_to_e4m3(word(4 * (tile * 64 + 32 + lane)));
                                        [r0, r1, r2, r3]
                                    })
                                    .collect();
                                for (lane, regs) in a.iter().enumerate() {
                                    let (g, t) = (lane / 4, lane % 4);
                                    for (r, reg) in regs.iter().enumerate() {
                                        for byte in 0..4 {
                                            let (ch, kg) = (ch_base + g + 8 * (r & 1), k_base + 16 * (r >> 1) + slot_column(t, byte));
                                            let want =
                                                if ch < n && kg < k { Format::Fp4E2M1.decode(codes[ch * k + kg]) / 64.0 } else { 0.0 };
                                            let got = Format::Fp8E4M3.decode((reg >> (8 * byte)) as u8);
                                            assert_eq!(got, want, "{cfg:?}: A byte of channel {ch}, k {kg}");
                                        }
                                    }
                                }
                                for (mb, bm) in b.iter().enumerate() {
                                    for (lane, regs) in bm.iter().enumerate() {
                                        let (g, t) = (lane / 4, lane % 4);
                                        for (h, reg) in regs.iter().enumerate() {
                                            for byte in 0..4 {
                                                let (tok, kg) = (m0 + mb * 8 + g, k_base + 16 * h + slot_column(t, byte));
                                                let pos = k_base + 16 * h + 4 * t + byte;
                                                let want = if tok < m && pos < k_pad { xq[tok * k_pad + pos] } else { 0 };
                                                assert_eq!((reg >> (8 * byte)) as u8, want, "B byte of token {tok}, k {kg}");
                                            }
                                        }
                                    }
                                    // D[row][tok] = sum over lanes' t, registers and bytes of A x B.
                                    let av = |row: usize, t: usize, h: usize, byte: usize| {
                                        let (g, r) = (row % 8, 2 * h + row / 8);
                                        Format::Fp8E4M3.decode((a[4 * g + t][r] >> (8 * byte)) as u8)
                                    };
                                    let bv =
                                        |tok: usize, t: usize, h: usize, byte: usize| fmt.decode((bm[4 * tok + t][h] >> (8 * byte)) as u8);
                                    for lane in 0..32 {
                                        let (g, t) = (lane / 4, lane % 4);
                                        let c = &mut acc[ai(warp, lane, i, mb)];
                                        for (ci, (row, col)) in
                                            [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)].into_iter().enumerate()
                                        {
                                            let mut s = 0f32;
                                            for tt in 0..4 {
                                                for h in 0..2 {
                                                    for byte in 0..4 {
                                                        s += av(row, tt, h, byte) * bv(col, tt, h, byte);
                                                    }
                                                }
                                            }
                                            c[ci] += s;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                for warp in 0..cfg.warps {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        for i in 0..wnt {
                            for hrow in 0..2 {
                                let ch = (nt0 + warp * wnt + i) * 16 + g + 8 * hrow;
                                for mb in (0..mb_n).filter(|_| ch < n) {
                                    for q in 0..2 {
                                        let tok = m0 + mb * 8 + 2 * t + q;
                                        if tok >= m {
                                            continue;
                                        }
                                        let v = acc[ai(warp, lane, i, mb)][2 * hrow + q];
                                        if cfg.split_k == 1 {
                                            y[tok * n + ch] = v * xs[tok] * (scales[ch] * SCALE_ADJUST) + bias[ch];
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
    if cfg.split_k > 1 {
        // The last split of each output block sums the partials in split order (finish_split).
        for tok in 0..m {
            for ch in 0..n {
                let s: f32 = (0..cfg.split_k).map(|z| ws[(z * m + tok) * n + ch]).sum();
                y[tok * n + ch] = s * xs[tok] * (scales[ch] * SCALE_ADJUST) + bias[ch];
            }
        }
    }
    y
}

/// Row `r` of the quantized activations in column order, as values (`decode(code) · scale`):
/// the quantizer's K permutation undone.
fn quantized_row(cfg: &W4a8Config, xq: &[u8], xs: &[f32], r: usize) -> Vec<f64> {
    let (k, k_pad, fmt) = (cfg.k, cfg.k_pad(), cfg.act.quant_format());
    let mut xv = vec![0f64; k];
    for pos in 0..k_pad {
        let c = pos / 32 * 32 + perm_column(pos % 32);
        if c < k {
            xv[c] = fmt.decode(xq[r * k_pad + pos]) as f64 * xs[r] as f64;
        }
    }
    xv
}

/// One emulated W4A8 product on random data (fixed seed) against decode-then-multiply in f64
/// over the quantizer's codes: random FP4 codes (all 16), scales, bias, FP16 activations.
fn check_gemm(cfg: &W4a8Config, m: usize, rng: &mut Rng) {
    use fpx_quant::layout::{pack, PackedShape};
    cfg.validate().unwrap();
    let (n, k) = (cfg.n, cfg.k);
    let codes: Vec<u8> = (0..n * k).map(|_| (rng.next_u32() & 15) as u8).collect();
    let shape = PackedShape::new(n, k, 4);
    let w = pack(&codes, &shape);
    assert_eq!(w.len(), cfg.tiling().n_tiles() * cfg.k_pad() / 32 * 256, "FP4 packs the low plane only");
    let true_scales: Vec<f32> = (0..n).map(|_| 0.01 + rng.uniform() as f32 * 0.1).collect();
    let stored: Vec<f32> = true_scales.iter().map(|s| s * fpx_quant::fold::storage_factor(Format::Fp4E2M1)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    let x: Vec<u16> = (0..m * k).map(|_| half::f16::from_f64(rng.range(-4.0, 4.0)).to_bits()).collect();
    let (xq, xs) = emulate_quantizer(cfg, &x, m);
    let y = emulate_gemm(cfg, &xq, &xs, &w, &codes, (&stored, &bias), m);
    for r in 0..m {
        let xv = quantized_row(cfg, &xq, &xs, r);
        for c in 0..n {
            let (mut want, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let t = xv[kk] * Format::Fp4E2M1.decode(codes[c * k + kk]) as f64;
                want += t;
                mag += t.abs();
            }
            let want = want * true_scales[c] as f64 + bias[c] as f64;
            let got = y[r * n + c] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (mag * true_scales[c] as f64 + 1.0),
                "{} y[{r}][{c}] = {got}, want {want}",
                cfg.kernel_name()
            );
        }
    }
}

/// The W4A8 kernel pair, emulated, matches the reference on awkward shapes (K tails, partial
/// channel blocks and token tiles), both FP8 formats, split or not, for the heuristic's configs
/// and hand-made tilings.
#[test]
fn emulated_w4a8_gemm_matches_the_reference() {
    let mut rng = Rng::new(0x0004_a8a8);
    // (n, k, m, hand-made (warps, warp_ntiles, k_tiles, stages, split_k) or the heuristic's)
    type Tiling = Option<(usize, usize, usize, usize, usize)>;
    let cases: [(usize, usize, usize, Tiling); 7] = [
        (100, 70, 3, None),
        (40, 200, 17, None),
        (33, 96, 9, Some((3, 1, 1, 2, 2))),
        (257, 64, 1, None),
        (48, 130, 70, Some((2, 2, 2, 3, 3))),
        (70, 1000, 5, Some((2, 2, 4, 3, 5))),
        (384, 384, 2, None),
    ];
    for (n, k, m, tiling) in cases {
        for act in [Fp8Act::E4M3, Fp8Act::E5M2] {
            let mut cfg = W4a8Config::heuristic(act, n, k, m, 132);
            if let Some((warps, wnt, kt, stages, split)) = tiling {
                (cfg.warps, cfg.warp_ntiles, cfg.k_tiles, cfg.stages, cfg.split_k) = (warps, wnt, kt, stages, split);
            }
            check_gemm(&cfg, m, &mut rng);
        }
    }
}

/// The emulation above transcribes these lines of the template (the stream openers and the
/// K loop it shares with the FP6 GEMM are pinned by `kernels::emulation_mirrors_the_template_text`);
/// if they change, it must too.
#[test]
fn w4a8_emulation_mirrors_the_template_text() {
    for needle in [
        "using WStream = ChunkStream<BLOCK_NT, KT * 16, THREADS, 16, (long long)K_TILES * 256, KT * 256, N_TILES % BLOCK_NT != 0, K_TAIL, true>;",
        "using XStream = ChunkStream<M_TILE, K_STEP / 16, THREADS, 2, (long long)K_PAD, X_STRIDE, true, K_TAIL, false>;",
        "static constexpr int X_STRIDE = K_STEP + 16;",
        "open_tile_stream<WStream, BLOCK_NT, N_TILES, K_TILES, KT, 256>(wst, W, 0, nt0, kt0);",
        "open_token_stream<XStream, M_TILE, K_TILES, KT, 2, (long long)K_PAD, X_STRIDE>(xst, Xq, W_BYTES, M, m0, kt0);",
        "open_streams(wst, xst, Xq, W, M, nt0, m0, steps.begin);",
        "const unsigned char* p = sx + (mb * 8 + g) * X_STRIDE + kt * 32 + 4 * t;",
        "b[mb][1] = *(const fpx_u32*)(p + 16);",
        "fp4_to_e4m3(sw[tile * 64 + lane], a[0], a[1]);",
        "fp4_to_e4m3(sw[tile * 64 + 32 + lane], a[2], a[3]);",
        "Y[(fpx_u64)tok * N + ch] = from_f32<0>(v * xscale[tok] * sc + bi);",
        "const float sc = SPLIT_K == 1 ? scales[ch] * w4a8_scale_adjust() : 0.0f;",
        "for (int z = 0; z < SPLIT_K; ++z) s += load_cg(ws + ((fpx_u64)z * M + tok) * N + ch);",
    ] {
        assert!(W4A8_GEMM_TEMPLATE.contains(needle), "template changed: {needle}");
    }
}

/// On a GPU with FP8 `mma` (compute capability 8.9 or newer; `scripts/gpu-check.sh`): the row
/// quantizer's scales equal the CPU definition bit for bit and its codes decode to the same
/// values (the emulation above, which `act_fp8` checks); the GEMM's Y matches decode-then-multiply
/// in f64 on those activations within FP16 output rounding, split or not, with and without bias;
/// a second launch gives the same bits and leaves the split-K counters zero. Skips (SKIP) without
/// such a GPU; fails instead under `FPX_REQUIRE=gpu`.
#[test]
fn device_w4a8_matches_the_cpu_reference() {
    use fpx_cuda::device::{GpuW4a8, W4a8Operands};
    const TEST: &str = "device_w4a8_matches_the_cpu_reference";
    let Some((gpu, _)) = open_gpu(TEST) else { return };
    if gpu.capability < (8, 9) {
        skip(Requirement::Gpu, TEST, &format!("{} has compute capability {:?}; FP8 mma needs 8.9", gpu.name, gpu.capability));
        return;
    }
    let mut rng = Rng::new(0xde_1ce);
    let cases = [
        (4096, 4096, 1, Fp8Act::E4M3),
        (4096, 4096, 16, Fp8Act::E4M3),
        (11008, 4096, 8, Fp8Act::E4M3),
        (384, 1536, 64, Fp8Act::E4M3),
        (70, 100, 3, Fp8Act::E5M2),
        (1000, 70, 5, Fp8Act::E4M3),
        (4096, 4096, 200, Fp8Act::E5M2),
    ];
    for (i, (k, n, m, act)) in cases.into_iter().enumerate() {
        let cfg = W4a8Config::heuristic(act, n, k, m, gpu.sm_count);
        let g = GpuW4a8::load(&gpu, &cfg).unwrap_or_else(|e| panic!("{}: {e}", cfg.kernel_name()));
        let codes: Vec<u8> = (0..n * k).map(|_| (rng.next_u32() & 15) as u8).collect();
        let w = fpx_quant::layout::pack(&codes, &fpx_quant::layout::PackedShape::new(n, k, 4));
        let scales: Vec<f32> = (0..n).map(|_| ((0.25 + rng.uniform()) / (k as f64).sqrt()) as f32).collect();
        let folded: Vec<f32> = scales.iter().map(|s| s * fpx_quant::fold::storage_factor(Format::Fp4E2M1)).collect();
        let bias: Option<Vec<f32>> = (i % 2 == 0).then(|| (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect());
        // Rows of different magnitudes: each gets its own scale.
        let x: Vec<u16> =
            (0..m * k).map(|j| half::f16::from_f64(rng.range(-1.0, 1.0) * [1.0, 0.01, 30.0][(j / k) % 3]).to_bits()).collect();
        let (dx, dw, ds) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap(), gpu.upload(&folded).unwrap());
        let db = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let (mut dxq, mut dxs) = (gpu.zeros::<u8>(m * cfg.k_pad()).unwrap(), gpu.zeros::<f32>(m).unwrap());
        let mut ws = g.workspace(&gpu, m).unwrap();
        let launch = |y: &mut _, ws: &mut _, xq: &mut _, xs: &mut _| {
            let ops = W4a8Operands { x: &dx, xq, xscale: xs, w: &dw, scales: &ds, bias: db.as_ref(), y, ws: Some(ws) };
            g.launch(&gpu, m, ops).unwrap_or_else(|e| panic!("{}: {e}", cfg.kernel_name()));
        };
        let mut dy = gpu.upload(&vec![0xffffu16; m * n]).unwrap();
        launch(&mut dy, &mut ws, &mut dxq, &mut dxs);
        let y = gpu.download(&dy).unwrap();
        let (xq, xs) = (gpu.download(&dxq).unwrap(), gpu.download(&dxs).unwrap());
        let mut dy2 = gpu.upload(&vec![0xffffu16; m * n]).unwrap();
        launch(&mut dy2, &mut ws, &mut dxq, &mut dxs);
        assert!(gpu.download(&dy2).unwrap() == y, "{}: a second launch gave other bits", cfg.kernel_name());
        assert!(ws.counters(&gpu).unwrap().iter().all(|&c| c == 0), "{}: counters left non-zero", cfg.kernel_name());
        // The quantizer against the CPU definition.
        let (want_q, want_s) = emulate_quantizer(&cfg, &x, m);
        assert_eq!(xs, want_s, "{}: row scales", cfg.kernel_name());
        let fmt = act.quant_format();
        for (j, (&g8, &c8)) in xq.iter().zip(&want_q).enumerate() {
            assert_eq!(
                fmt.decode(g8),
                fmt.decode(c8),
                "{}: Xq[{}][{}] = {g8:#04x}, want {c8:#04x}",
                cfg.kernel_name(),
                j / cfg.k_pad(),
                j % cfg.k_pad()
            );
        }
        // Y against f64 on the quantized activations.
        let mut worst = 0f64;
        for r in 0..m {
            let xv = quantized_row(&cfg, &want_q, &want_s, r);
            let want: Vec<f64> = (0..n)
                .map(|c| {
                    let dot: f64 = (0..k).map(|kk| xv[kk] * Format::Fp4E2M1.decode(codes[c * k + kk]) as f64).sum();
                    dot * scales[c] as f64 + bias.as_ref().map_or(0.0, |b| b[c] as f64)
                })
                .collect();
            let rms = (want.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
            for (c, w) in want.iter().enumerate() {
                let got = half::f16::from_bits(y[r * n + c]).to_f64();
                assert!(
                    got.is_finite() && (got - w).abs() <= 2e-3 * w.abs() + 2e-3 * rms,
                    "{}: y[{r}][{c}] = {got}, want {w}",
                    cfg.kernel_name()
                );
                worst = worst.max((got - w).abs() / rms.max(1e-30));
            }
        }
        eprintln!("GPU: {} M={m}: worst |y - ref| / rms {worst:.2e}", cfg.kernel_name());
    }
}
