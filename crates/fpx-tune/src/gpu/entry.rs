//! GPU results in the tuning database: the tile config kept per GPU, architecture, GEMM
//! template checksum, product and M bucket, and the kernel table a compile builds from them.

use fpx_cuda::config::configs_by_m;
use fpx_cuda::plan::TunedTable;
use fpx_cuda::{Act, Arch, Fp6Format, GemmConfig};
use fpx_quant::{KernelTable, QuantGemm};

use crate::db::{DbError, Shape, TuningDb};
use crate::{GpuMachine, MBucket};

/// The heuristic's config for `gemm` in `bucket` on a GPU with `sm_count` SMs: the row of the
/// untuned artifact's table ([`fpx_cuda::config::configs_by_m`]) that serves the bucket's largest
/// M — what the tuner must beat, and what a compile uses where nothing is tuned.
pub fn heuristic_for(gemm: &QuantGemm, format: Fp6Format, bucket: MBucket, sm_count: usize) -> GemmConfig {
    let top = bucket.range().1.min(1 << 20) as usize;
    configs_by_m(format, Act::F16, gemm.n, gemm.k, sm_count).pick(top).clone()
}

/// A GEMM tile config as the database writes it: the [`GemmConfig`] fields a tuner chooses (the
/// product's format and sizes are the entry's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuTiling {
    /// Tokens per block.
    pub m_tile: usize,
    /// Warps per block.
    pub warps: usize,
    /// 16-channel tiles per warp.
    pub warp_ntiles: usize,
    /// 32-K tiles per pipeline stage.
    pub k_tiles: usize,
    /// Pipeline stages.
    pub stages: usize,
    /// K splits.
    pub split_k: usize,
}

impl GpuTiling {
    /// The tiling of `cfg`.
    pub fn of(cfg: &GemmConfig) -> GpuTiling {
        GpuTiling {
            m_tile: cfg.m_tile,
            warps: cfg.warps,
            warp_ntiles: cfg.warp_ntiles,
            k_tiles: cfg.k_tiles,
            stages: cfg.stages,
            split_k: cfg.split_k,
        }
    }

    /// The config of this tiling for `gemm` (FP16 activations), validated.
    pub fn config(&self, gemm: &QuantGemm) -> Result<GemmConfig, String> {
        let format = Fp6Format::from_quant(gemm.format).ok_or_else(|| format!("the GPU GEMM takes FP6 weights, not {}", gemm.format))?;
        let cfg = GemmConfig {
            format,
            act: Act::F16,
            n: gemm.n,
            k: gemm.k,
            m_tile: self.m_tile,
            warps: self.warps,
            warp_ntiles: self.warp_ntiles,
            k_tiles: self.k_tiles,
            stages: self.stages,
            split_k: self.split_k,
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

impl std::fmt::Display for GpuTiling {
    /// `m16 4w x 4t k2 s3 split 4`: tokens per block, warps × tiles per warp, k-tiles per stage,
    /// stages, K splits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "m{} {}w x {}t k{} s{} split {}", self.m_tile, self.warps, self.warp_ntiles, self.k_tiles, self.stages, self.split_k)
    }
}

/// One tuned GPU result: the fastest tiling for a product and M bucket, on a GPU, for the PTX
/// architecture it ran, by a GEMM template.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEntry {
    /// The GPU it was measured on.
    pub machine: GpuMachine,
    /// The PTX architecture the kernels were compiled for (`sm_80`, `sm_90`).
    pub arch: String,
    /// [`fpx_cuda::template_checksum`] of the GEMM template: another template's entries are stale.
    pub template_checksum: String,
    /// The product.
    pub shape: Shape,
    /// The range of M.
    pub bucket: MBucket,
    /// The fastest tiling.
    pub tiling: GpuTiling,
    /// Its time per call (µs from DRAM, median, summed over the bucket's sample M).
    pub micros: f64,
    /// The heuristic's time, measured beside it.
    pub default_micros: f64,
}

impl GpuEntry {
    /// Whether `other` answers the same question (and so replaces this entry on merge).
    pub fn same_key(&self, other: &GpuEntry) -> bool {
        self.machine == other.machine && self.arch == other.arch && self.shape == other.shape && self.bucket == other.bucket
    }

    /// Whether the current GEMM template made it.
    pub fn is_current(&self) -> bool {
        self.template_checksum == fpx_cuda::template_checksum()
    }

    /// Checks what serde cannot: a valid GPU product, a tiling valid for it, a known arch.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let gemm = self.shape.gemm()?;
        self.tiling.config(&gemm)?;
        if !Arch::ALL.iter().any(|a| a.sm() == self.arch) {
            return Err(format!("unknown GPU architecture '{}'", self.arch));
        }
        Ok(())
    }
}

/// What the database holds for one product on one architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuLookup {
    /// The kernel table to compile (tuned buckets marked, the heuristic's config for the rest),
    /// or `None` when no bucket is tuned.
    pub table: Option<TunedTable>,
    /// Buckets with a current tuned entry.
    pub tuned_buckets: usize,
    /// Entries for this product made with another GEMM template (ignored).
    pub stale: usize,
}

impl TuningDb {
    /// Adds GPU `entries`: each replaces the entry with the same key, others are kept.
    pub fn merge_gpu(&mut self, entries: impl IntoIterator<Item = GpuEntry>) {
        for e in entries {
            match self.gpu.iter_mut().find(|old| old.same_key(&e)) {
                Some(old) => *old = e,
                None => self.gpu.push(e),
            }
        }
    }

    /// The GPU whose results a compile for `arch` uses: of the GPUs tuned for that architecture
    /// with the current template, the one with results for most of `gemms` (then most results;
    /// then by name, so the choice is stable). `None` when there is none.
    pub fn gpu_for(&self, arch: Arch, gemms: &[QuantGemm]) -> Option<GpuMachine> {
        let shapes: Vec<Shape> = gemms.iter().map(Shape::of).collect();
        let mut machines: Vec<(usize, usize, GpuMachine)> = Vec::new();
        for e in self.gpu.iter().filter(|e| e.arch == arch.sm() && e.is_current()) {
            let hit = shapes.contains(&e.shape) as usize;
            match machines.iter_mut().find(|m| m.2 == e.machine) {
                Some(m) => {
                    m.0 += hit;
                    m.1 += 1;
                }
                None => machines.push((hit, 1, e.machine.clone())),
            }
        }
        machines.into_iter().filter(|m| m.0 > 0).max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| b.2.cmp(&a.2))).map(|m| m.2)
    }

    /// The kernel table for `gemm` on `arch` from `machine`'s current entries, the heuristic's
    /// config (for `sm_count` SMs) in buckets without one; neighbouring buckets with the same
    /// config share a row.
    pub fn gpu_table(&self, machine: &GpuMachine, arch: Arch, gemm: &QuantGemm, sm_count: usize) -> Result<GpuLookup, DbError> {
        let shape = Shape::of(gemm);
        let mine: Vec<&GpuEntry> = self.gpu.iter().filter(|e| e.machine == *machine && e.arch == arch.sm() && e.shape == shape).collect();
        let stale = mine.iter().filter(|e| !e.is_current()).count();
        let Some(format) = Fp6Format::from_quant(gemm.format) else {
            return Ok(GpuLookup { table: None, tuned_buckets: 0, stale });
        };
        let mut tuned_buckets = 0;
        let mut rows: Vec<(u64, (GemmConfig, bool))> = Vec::new();
        for b in MBucket::ALL {
            let entry = mine.iter().find(|e| e.is_current() && e.bucket == b);
            let choice = match entry {
                Some(e) => {
                    tuned_buckets += 1;
                    let cfg = e.tiling.config(gemm).map_err(|message| DbError::Damaged {
                        path: std::path::PathBuf::from("(tuning database)"),
                        message: format!("the GPU entry for {shape} {b}: {message}"),
                    })?;
                    (cfg, true)
                }
                None => (heuristic_for(gemm, format, b, sm_count), false),
            };
            match rows.last_mut() {
                Some((max_m, last)) if *last == choice => *max_m = b.max_m(),
                _ => rows.push((b.max_m(), choice)),
            }
        }
        let table = (tuned_buckets > 0).then(|| KernelTable::new(rows).expect("buckets ascend and end unbounded"));
        Ok(GpuLookup { table, tuned_buckets, stale })
    }
}
