//! Static SASS budgets of the FP6 GEMM (issue 20), no GPU needed: for the heuristic's configs on
//! the MiniLM and LLaMA-2 shapes at M = 1, 8, 16, 64 (A100 and H100 SM counts), on sm_80 and
//! sm_90, the main loop's instructions per K step — dequantization, copies, MMAs — registers
//! and blocks per SM ([`fpx_cuda::sass`]), printed as a table and held under budgets:
//!
//! - at most [`MAX_PER_COPY`] instructions per 16-byte cp.async (the copy included);
//! - dequantization per MMA fragment register (two weights): e3m2 FP16 (the rotated-high-word
//!   path) at most [`MAX_E3M2_F16_PER_REGISTER`] and below e2m3 FP16 (the shift path); BF16 at
//!   most [`MAX_BF16_OVER_SHIFT`] times the FP16 shift path (e2m3 FP16 of the same tiling);
//! - at least [`fpx_cuda::config::TARGET_BLOCKS_PER_SM`] blocks per SM, registers within the
//!   heuristic's estimate ([`fpx_cuda::config::estimated_registers`]);
//! - no spills (the ptxas tests in `kernels`).

use fpx_cuda::config::{estimated_registers, TARGET_BLOCKS_PER_SM};
use fpx_cuda::sass::{find_nvdisasm, GemmSass};
use fpx_cuda::{heuristic_config, Act, Arch, Fp6Format, GemmConfig};
use fpx_test_support::{skip, Requirement};

use crate::common::{toolchain_or_skip, LINEAR_SHAPES};

/// Instructions per 16-byte copy, the `LDGSTS` included (was ~30 before the copy streams).
const MAX_PER_COPY: f64 = 8.0;
/// BF16 over the FP16 shift path's dequantization (was 2.6 with the per-half subnormal select).
const MAX_BF16_OVER_SHIFT: f64 = 1.5;
/// e3m2 FP16 dequantization instructions per fragment register (the shift path took ~6).
const MAX_E3M2_F16_PER_REGISTER: f64 = 5.0;

fn analyze_all(jobs: &[(GemmConfig, Arch)]) -> Vec<GemmSass> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    jobs.iter()
                        .enumerate()
                        .filter(|(i, _)| i % workers == w)
                        .map(|(i, (cfg, arch))| (i, GemmSass::analyze(cfg, *arch).unwrap_or_else(|e| panic!("{cfg} on {arch}: {e}"))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, GemmSass)> =
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, s)| s).collect()
    })
}

#[test]
fn gemm_sass_stays_within_budgets() {
    if !toolchain_or_skip("gemm_sass_stays_within_budgets") {
        return;
    }
    if find_nvdisasm().is_none() {
        skip(
            Requirement::Gpu,
            "gemm_sass_stays_within_budgets",
            "no nvdisasm on PATH or in FPX_CUDA_HOME/bin (scripts/setup.sh installs it)",
        );
        return;
    }
    // The table's rows, and the configs analysed for them: one per tiling (token tile, warps,
    // tiles per warp, k-tiles, stages, and whether N fills the last block and K the last
    // stage); the split and the exact N and K change only the step range, the epilogue and
    // constants in the loop, so a row shows its tiling's first config's analysis.
    let tiling = |c: &GemmConfig| {
        (
            c.m_tile,
            c.warps,
            c.warp_ntiles,
            c.k_tiles,
            c.stages,
            c.n_tiles().is_multiple_of(c.block_n_tiles()),
            (c.k_pad() / 32).is_multiple_of(c.k_tiles),
        )
    };
    let mut rows = Vec::new();
    let mut analysed: Vec<GemmConfig> = Vec::new();
    for (k, n) in LINEAR_SHAPES {
        for m in [1, 8, 16, 64] {
            for sms in [108, 132] {
                let cfg = heuristic_config(n, k, m, sms);
                if !analysed.iter().any(|a| tiling(a) == tiling(&cfg)) {
                    analysed.push(cfg.clone());
                }
                rows.push((k, n, m, sms, cfg));
            }
        }
    }
    let mut jobs: Vec<(GemmConfig, Arch)> = analysed.iter().flat_map(|c| Arch::ALL.map(|a| (c.clone(), a))).collect();
    // For each analysed tiling the two other dequantization paths: e2m3 FP16 (the shift path)
    // and e3m2 BF16 (shift + one fma).
    let variant = |cfg: &GemmConfig, format: Fp6Format, act: Act| GemmConfig { format, act, ..cfg.clone() };
    for cfg in &analysed {
        for arch in Arch::ALL {
            jobs.push((variant(cfg, Fp6Format::E2M3, Act::F16), arch));
            jobs.push((variant(cfg, Fp6Format::E3M2, Act::Bf16), arch));
        }
    }
    let results = analyze_all(&jobs);
    let find = |cfg: &GemmConfig, arch: Arch| results.iter().find(|s| &s.cfg == cfg && s.arch == arch).expect("analysed");
    let analysis = |cfg: &GemmConfig, arch: Arch| find(analysed.iter().find(|a| tiling(a) == tiling(cfg)).expect("a tiling"), arch);

    let mut table = vec![format!(
        "{:>11} {:>3} {:>4} {:>5} {:>4} {:>4} {:>5} | {:>6} {:>4} {:>7} {:>6} {:>7} {:>8} {:>8} {:>4} {:>4}",
        "K x N",
        "M",
        "SMs",
        "arch",
        "regs",
        "blk",
        "split",
        "instr",
        "mma",
        "dequant",
        "copies",
        "cp code",
        "instr/cp",
        "cp ablat",
        "lds",
        "sync"
    )];
    let mut failures = std::collections::BTreeSet::new();
    for (k, n, m, sms, cfg) in &rows {
        for arch in Arch::ALL {
            let s = analysis(cfg, arch);
            table.push(format!(
                "{:>11} {:>3} {:>4} {:>5} {:>4} {:>4} {:>5} | {:>6.0} {:>4.0} {:>7.0} {:>6.1} {:>7.0} {:>8.2} {:>8.0} {:>4.0} {:>4.0}",
                format!("{k}x{n}"),
                m,
                sms,
                arch.sm(),
                s.registers,
                s.blocks_per_sm,
                cfg.split_k,
                s.step.total,
                s.step.mma,
                s.dequant,
                s.step.copies,
                s.copy_block,
                s.per_copy(),
                s.copy_ablation,
                s.step.shared_loads,
                s.step.sync
            ));
            if s.per_copy() > MAX_PER_COPY {
                failures.insert(format!("{cfg} {arch}: {:.2} instructions per copy > {MAX_PER_COPY}", s.per_copy()));
            }
            if s.blocks_per_sm < TARGET_BLOCKS_PER_SM {
                failures.insert(format!("{cfg} {arch}: {} blocks per SM", s.blocks_per_sm));
            }
            if s.registers as usize > estimated_registers(cfg) {
                failures.insert(format!("{cfg} {arch}: {} registers, the heuristic assumes {}", s.registers, estimated_registers(cfg)));
            }
        }
    }
    table.push(String::new());
    table.push(format!(
        "{:>56} {:>5} | {:>14} {:>14} {:>14} {:>10}",
        "dequantization per fragment register", "arch", "e3m2 FP16 rot", "e2m3 FP16 sh", "e3m2 BF16", "BF16/shift"
    ));
    for cfg in &analysed {
        for arch in Arch::ALL {
            let rotated = find(cfg, arch).dequant_per_register();
            let shift = find(&variant(cfg, Fp6Format::E2M3, Act::F16), arch).dequant_per_register();
            let bf16 = find(&variant(cfg, Fp6Format::E3M2, Act::Bf16), arch).dequant_per_register();
            let ratio = bf16 / shift;
            table.push(format!(
                "{:>56} {:>5} | {:>14.2} {:>14.2} {:>14.2} {:>10.2}",
                cfg.kernel_name(),
                arch.sm(),
                rotated,
                shift,
                bf16,
                ratio
            ));
            if rotated > MAX_E3M2_F16_PER_REGISTER || rotated >= shift {
                failures.insert(format!("{cfg} {arch}: e3m2 FP16 {rotated:.2} per register (shift path {shift:.2})"));
            }
            if ratio > MAX_BF16_OVER_SHIFT {
                failures.insert(format!("{cfg} {arch}: BF16 dequantization {ratio:.2}x the FP16 shift path's"));
            }
        }
    }
    let names: Vec<String> = analysed.iter().map(|c| c.kernel_name()).collect();
    eprintln!(
        "SASS per K step and warp (dequant and copies by probe builds, see fpx_cuda::sass); tilings analysed as {}:\n{}",
        names.join(", "),
        table.join("\n")
    );
    assert!(failures.is_empty(), "budgets exceeded:\n{}", failures.into_iter().collect::<Vec<_>>().join("\n"));
}
