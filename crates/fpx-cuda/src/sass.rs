//! Static SASS evidence for the FP6 GEMM, without a GPU: the instructions each warp issues per
//! K step (one pipeline stage: `k_tiles` x 32 of K for the block's channels), split into
//! dequantization, cp.async copies and MMAs; registers; and the blocks an SM holds.
//!
//! How: the config is compiled three times with NVRTC — as shipped, and as two probe builds
//! (`FPX_PROBE` 1: no dequantization, the MMAs take the raw plane words; 2: no copies) that
//! are never launched — assembled with `ptxas` and disassembled with `nvdisasm`. In each, the
//! main K loop is the backward branch whose body holds the most `HMMA`s; its instruction count,
//! scaled by the MMAs one K step needs, gives instructions per step. Dequantization costs
//! the shipped count minus probe 1's (plus the 3 instructions per 4 registers probe 1 keeps so
//! that liveness stays as shipped). Copies are counted directly: the block a forward branch
//! skips when no stage is left to load holds every `LDGSTS` ([`copy_block`]; per copy: over the
//! `LDGSTS` a thread issues per step); the shipped count minus probe 2's adds what the copy
//! streams' registers cost the rest of the loop. The probes let ptxas schedule and allocate a
//! little differently, so the ablations are estimates to a few instructions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::compile::{assemble, find_cuda_tool, nvrtc_ptx, temp_stem};
use crate::config::{blocks_per_sm, instantiate, GemmConfig};
use crate::{Arch, CudaError};

/// One disassembled instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SassInstruction {
    /// Byte address in the function.
    pub address: u32,
    /// The opcode with its modifiers (`HMMA.16816.F32`), without the predicate.
    pub opcode: String,
    /// The operand text (up to the `;`).
    pub operands: String,
}

impl SassInstruction {
    /// The opcode's base name (`HMMA` for `HMMA.16816.F32`).
    pub fn base(&self) -> &str {
        self.opcode.split('.').next().unwrap_or_default()
    }

    /// Whether this is a tensor-core MMA: `HMMA` (FP16/BF16, and FP8 lowered on sm_90) or
    /// `QMMA` (native FP8, sm_89).
    pub fn is_mma(&self) -> bool {
        matches!(self.base(), "HMMA" | "QMMA")
    }

    /// The label a `BRA` jumps to (`` `(.L_x_5) `` → `.L_x_5`); `None` for other instructions.
    pub fn branch_target(&self) -> Option<&str> {
        (self.base() == "BRA").then(|| self.operands.trim_start_matches('`').trim_start_matches('(').split(')').next().unwrap_or_default())
    }
}

/// One function (kernel) of a cubin, as `nvdisasm -c` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SassFunction {
    /// The entry name.
    pub name: String,
    /// Its instructions in address order.
    pub instructions: Vec<SassInstruction>,
    /// Label name → address of the instruction after it.
    pub labels: HashMap<String, u32>,
}

/// Parses `nvdisasm -c` output: `.text.<name>:` opens a function, `.L_x_N:` is a label,
/// `/*0790*/  @!P0 OPCODE operands ;` an instruction.
pub fn parse_nvdisasm(text: &str) -> Vec<SassFunction> {
    let mut functions: Vec<SassFunction> = Vec::new();
    let mut pending_labels: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix(".text.").and_then(|r| r.strip_suffix(':')) {
            functions.push(SassFunction { name: name.to_string(), ..Default::default() });
            pending_labels.clear();
            continue;
        }
        let Some(f) = functions.last_mut() else { continue };
        if let Some(label) = trimmed.strip_suffix(':').filter(|l| l.starts_with(".L")) {
            pending_labels.push(label.to_string());
            continue;
        }
        let Some(rest) = trimmed.strip_prefix("/*") else { continue };
        let Some((addr, body)) = rest.split_once("*/") else { continue };
        let Ok(address) = u32::from_str_radix(addr.trim(), 16) else { continue };
        let body = body.trim().trim_end_matches(';').trim();
        let body = if body.starts_with('@') { body.split_once(' ').map_or("", |(_, b)| b.trim()) } else { body };
        if body.is_empty() {
            continue;
        }
        let (opcode, operands) = body.split_once(' ').map_or((body, ""), |(o, r)| (o, r.trim()));
        for label in pending_labels.drain(..) {
            f.labels.insert(label, address);
        }
        f.instructions.push(SassInstruction { address, opcode: opcode.to_string(), operands: operands.to_string() });
    }
    functions
}

impl SassFunction {
    /// The loops: `(first, last)` instruction indices of each backward branch's body.
    pub fn loops(&self) -> Vec<(usize, usize)> {
        let index_of = |addr: u32| self.instructions.iter().position(|i| i.address == addr);
        let mut out = Vec::new();
        for (last, ins) in self.instructions.iter().enumerate() {
            let Some(target) = ins.branch_target() else { continue };
            if let Some(first) = self.labels.get(target).and_then(|&a| index_of(a)).filter(|&first| first <= last) {
                out.push((first, last));
            }
        }
        out
    }

    /// The main K loop: the loop whose body holds the most MMAs (the longest on ties).
    pub fn main_loop(&self) -> Option<&[SassInstruction]> {
        let hmma = |(a, b): (usize, usize)| self.instructions[a..=b].iter().filter(|i| i.is_mma()).count();
        self.loops().into_iter().filter(|&r| hmma(r) > 0).max_by_key(|&r| (hmma(r), r.1 - r.0)).map(|(a, b)| &self.instructions[a..=b])
    }
}

/// The copy block of a main loop: the stretch a forward branch skips (the kernel's
/// `if (it + STAGES - 1 < nsteps) load_stage(...)`) that holds every `LDGSTS` of the loop; the
/// smallest such when several do. `None` when the copies are not under one branch.
pub fn copy_block<'a>(body: &'a [SassInstruction], labels: &HashMap<String, u32>) -> Option<&'a [SassInstruction]> {
    let copies = body.iter().filter(|i| i.base() == "LDGSTS").count();
    let mut best: Option<&[SassInstruction]> = None;
    for (at, ins) in body.iter().enumerate() {
        let Some(&addr) = ins.branch_target().and_then(|t| labels.get(t)) else { continue };
        let Some(end) = body.iter().position(|i| i.address == addr).filter(|&end| end > at) else { continue };
        let block = &body[at + 1..end];
        if copies > 0 && block.iter().filter(|i| i.base() == "LDGSTS").count() == copies && best.is_none_or(|b| block.len() < b.len()) {
            best = Some(block);
        }
    }
    best
}

/// Instruction counts of a stretch of SASS, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpcodeCounts {
    /// Every instruction.
    pub total: f64,
    /// Tensor-core MMAs (`HMMA`, `QMMA`).
    pub mma: f64,
    /// Async global→shared copies (`LDGSTS`).
    pub copies: f64,
    /// Shared-memory loads (`LDS`, `LDSM`).
    pub shared_loads: f64,
    /// Barriers and copy waits (`BAR`, `DEPBAR`, `LDGDEPBAR`).
    pub sync: f64,
}

impl OpcodeCounts {
    /// Counts `instructions`.
    pub fn of(instructions: &[SassInstruction]) -> OpcodeCounts {
        let mut c = OpcodeCounts::default();
        for i in instructions {
            c.total += 1.0;
            match i.base() {
                _ if i.is_mma() => c.mma += 1.0,
                "LDGSTS" => c.copies += 1.0,
                "LDS" | "LDSM" => c.shared_loads += 1.0,
                "BAR" | "DEPBAR" | "LDGDEPBAR" => c.sync += 1.0,
                _ => {}
            }
        }
        c
    }

    /// Every count times `f`.
    pub fn scaled(self, f: f64) -> OpcodeCounts {
        OpcodeCounts {
            total: self.total * f,
            mma: self.mma * f,
            copies: self.copies * f,
            shared_loads: self.shared_loads * f,
            sync: self.sync * f,
        }
    }
}

/// `nvdisasm` on PATH, else `<cuda home>/bin/nvdisasm`.
pub fn find_nvdisasm() -> Option<PathBuf> {
    find_cuda_tool("nvdisasm")
}

/// Disassembles a cubin with `nvdisasm -c`.
pub fn disassemble(cubin: &[u8]) -> Result<Vec<SassFunction>, CudaError> {
    let tool = find_nvdisasm().ok_or_else(|| CudaError::Nvdisasm("not on PATH and no FPX_CUDA_HOME/bin/nvdisasm".into()))?;
    let path = temp_stem("nvdisasm").with_extension("cubin");
    std::fs::write(&path, cubin)?;
    let out = Command::new(&tool).arg("-c").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(|e| CudaError::Nvdisasm(format!("cannot run {}: {e}", tool.display())))?;
    if !out.status.success() {
        return Err(CudaError::Nvdisasm(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr))));
    }
    Ok(parse_nvdisasm(&String::from_utf8_lossy(&out.stdout)))
}

/// Which build of the template to disassemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The kernel as shipped.
    Shipped,
    /// `FPX_PROBE=1`: no dequantization.
    NoDequant,
    /// `FPX_PROBE=2`: no cp.async copies.
    NoCopies,
}

/// One build's main loop, per K step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopCost {
    /// The whole loop body.
    pub step: OpcodeCounts,
    /// Its copy block ([`copy_block`]); zero when there is none (the no-copy probe).
    pub copy_block: f64,
    /// Registers per thread of the GEMM kernel.
    pub registers: u32,
}

/// The GEMM kernel's main loop of `cfg` built as `probe` for `arch`, per K step.
pub fn loop_per_step(cfg: &GemmConfig, arch: Arch, probe: Probe) -> Result<LoopCost, CudaError> {
    let mut src = instantiate(cfg)?;
    match probe {
        Probe::Shipped => {}
        Probe::NoDequant => src.insert_str(0, "#define FPX_PROBE 1\n"),
        Probe::NoCopies => src.insert_str(0, "#define FPX_PROBE 2\n"),
    }
    static PROBE_COMPILATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = cfg.kernel_name();
    let ptx = nvrtc_ptx(&src, &name, arch, &PROBE_COMPILATIONS)?;
    let (report, cubin) = assemble(&ptx, arch)?;
    let registers = report.kernels.iter().find(|k| k.name == name).map_or(report.registers, |k| k.registers);
    let functions = disassemble(&cubin)?;
    let f = functions.iter().find(|f| f.name == name).ok_or_else(|| CudaError::Nvdisasm(format!("no function {name} in the cubin")))?;
    let body = f.main_loop().ok_or_else(|| CudaError::Nvdisasm(format!("{name}: no loop with HMMA instructions")))?;
    let counts = OpcodeCounts::of(body);
    // One K step issues k_tiles x 2 (k16 halves) x warp_ntiles x m_tile/8 MMAs per warp; the loop
    // may hold several steps (unrolled).
    let per_step = (cfg.k_tiles * 2 * cfg.warp_ntiles * cfg.m_tile / 8) as f64 / counts.mma;
    let copy_block = copy_block(body, &f.labels).map_or(0.0, |b| b.len() as f64 * per_step);
    Ok(LoopCost { step: counts.scaled(per_step), copy_block, registers })
}

/// The static cost of one GEMM config on one architecture (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GemmSass {
    /// The config.
    pub cfg: GemmConfig,
    /// The architecture.
    pub arch: Arch,
    /// Registers per thread (ptxas).
    pub registers: u32,
    /// Blocks an SM holds (from the registers and the shared memory).
    pub blocks_per_sm: usize,
    /// The shipped main loop per K step, per warp.
    pub step: OpcodeCounts,
    /// Dequantization instructions per K step (shipped minus the no-dequant probe, plus what
    /// the probe keeps).
    pub dequant: f64,
    /// Instructions of the copy block per K step, the `LDGSTS` included: the copy code itself.
    pub copy_block: f64,
    /// Shipped minus the no-copy probe per K step: the copy block plus what its registers cost
    /// the rest of the loop (recomputed addresses when the pointers crowd them out).
    pub copy_ablation: f64,
}

impl GemmSass {
    /// Analyses `cfg` on `arch`: three NVRTC + ptxas + nvdisasm runs.
    pub fn analyze(cfg: &GemmConfig, arch: Arch) -> Result<GemmSass, CudaError> {
        let shipped = loop_per_step(cfg, arch, Probe::Shipped)?;
        let no_dequant = loop_per_step(cfg, arch, Probe::NoDequant)?;
        let no_copies = loop_per_step(cfg, arch, Probe::NoCopies)?;
        // The no-dequant probe still spends 3 instructions per 4 fragment registers.
        let probe_cost = 0.75 * fragment_registers(cfg);
        Ok(GemmSass {
            cfg: cfg.clone(),
            arch,
            registers: shipped.registers,
            blocks_per_sm: blocks_per_sm(cfg, shipped.registers as usize),
            step: shipped.step,
            dequant: shipped.step.total - no_dequant.step.total + probe_cost,
            copy_block: shipped.copy_block,
            copy_ablation: shipped.step.total - no_copies.step.total,
        })
    }

    /// Copy-block instructions per 16-byte copy (the copy itself included).
    pub fn per_copy(&self) -> f64 {
        self.copy_block / self.step.copies.max(1.0)
    }

    /// Dequantization instructions per FP6 weight register pair handed to an MMA (4 per 16x16
    /// fragment): what the BF16 and FP16 paths are compared by.
    pub fn dequant_per_register(&self) -> f64 {
        self.dequant / fragment_registers(&self.cfg)
    }
}

/// Weight fragment registers a warp dequantizes per K step: 4 per 16x16 fragment, 2 fragments
/// (k16 halves) per k-tile per n-tile.
fn fragment_registers(cfg: &GemmConfig) -> f64 {
    (cfg.k_tiles * 2 * cfg.warp_ntiles * 4) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
\t.headerflags\t@\"EF_CUDA_SM90\"
//--------------------- .text.k_reduce --------------------------
.text.k_reduce:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;
        /*0020*/              @!P0 BRA `(.L_x_1) ;
        /*0030*/                   EXIT ;
.text.k:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_6:
        /*0010*/                   DEPBAR.LE SB0, 0x1 ;
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0030*/               @P2 BRA `(.L_x_5) ;
        /*0040*/                   LDGSTS.E.BYPASS.128 [R36+UR0], desc[UR1][R38.64] ;
.L_x_5:
        /*0050*/                   LDS R31, [R30+0x2200] ;
        /*0060*/                   LOP3.LUT R7, R26, 0x40004000, RZ, 0xc0, !PT ;
        /*0070*/                   HMMA.16816.F32 R8, R24, R6, R8 ;
        /*0080*/                   HMMA.16816.F32 R12, R24, R6, R12 ;
        /*0090*/              @!P2 BRA `(.L_x_6) ;
.L_x_9:
        /*00a0*/                   BRA `(.L_x_9);
";

    #[test]
    fn parses_functions_labels_and_the_main_loop() {
        let fs = parse_nvdisasm(SAMPLE);
        assert_eq!(fs.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["k_reduce", "k"]);
        assert_eq!(fs[0].loops(), [(1, 2)]);
        assert_eq!(fs[0].main_loop(), None, "no HMMA in the reduction's loop");
        let k = &fs[1];
        assert_eq!(k.labels[".L_x_6"], 0x10);
        assert_eq!(k.instructions[3].opcode, "BRA");
        // The forward branch to .L_x_5 is no loop; the self-loop at .L_x_9 holds no HMMA.
        assert_eq!(k.loops(), [(1, 9), (10, 10)]);
        let body = k.main_loop().unwrap();
        assert_eq!((body[0].address, body.last().unwrap().address), (0x10, 0x90));
        let c = OpcodeCounts::of(body);
        assert_eq!((c.total, c.mma, c.copies, c.shared_loads, c.sync), (9.0, 2.0, 1.0, 1.0, 2.0));
        assert_eq!(c.scaled(0.5).total, 4.5);
        assert_eq!(body[6].base(), "HMMA");
        assert_eq!((k.instructions[3].branch_target(), body[6].branch_target()), (Some(".L_x_5"), None));
    }
}
