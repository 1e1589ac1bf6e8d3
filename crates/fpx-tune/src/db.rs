//! The tuning database: a human-readable JSON file of the fastest kernel choice per machine,
//! CPU level, kernel-generator checksum, product shape and M bucket. Tuning again merges into
//! it (a new result replaces the one with the same key, every other entry is kept); compile
//! reads it and falls back to the heuristic wherever it has nothing current.

use std::path::{Path, PathBuf};

use fpx_llvm::{default_choices, Activations, CpuChoice, CpuTiling, QuantGemm, Variant};
use fpx_quant::{Format, KernelTable};

use crate::gpu::GpuEntry;
use crate::{CpuMachine, MBucket};

/// What the file's `format` field says.
pub const DB_FORMAT: &str = "fpx-tuning-db";
/// The largest database read (64 MiB; a real one is a few hundred KiB).
const MAX_DB_BYTES: u64 = 64 << 20;
/// The schema version this fpx reads and writes.
pub const DB_VERSION: u32 = 1;

/// Why the tuning database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be read.
    #[error("cannot read the tuning database '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is JSON of another kind or another version.
    #[error("'{path}' is not a tuning database this fpx reads: {message}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        message: String,
    },
    /// The file is a tuning database, but damaged.
    #[error("the tuning database '{path}' is damaged: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column where JSON says.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write the tuning database '{path}': {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A quantized product's shape as the database keys it (the fields of a [`QuantGemm`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// Weight format name, e.g. `fp6-e3m2`.
    pub format: String,
    /// Reduction length.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Scale group size along K (0 = per channel).
    pub group_size: usize,
    /// `f32` or `int8`.
    pub activations: String,
}

impl Shape {
    /// The key of `gemm`.
    pub fn of(gemm: &QuantGemm) -> Shape {
        Shape {
            format: gemm.format.name().to_string(),
            k: gemm.k,
            n: gemm.n,
            group_size: gemm.group_size,
            activations: gemm.activations.name().to_string(),
        }
    }

    /// The product this key names, if it is valid.
    pub fn gemm(&self) -> Result<QuantGemm, String> {
        let format = Format::parse(&self.format).ok_or_else(|| format!("unknown weight format '{}'", self.format))?;
        let activations = Activations::ALL
            .into_iter()
            .find(|a| a.name() == self.activations)
            .ok_or_else(|| format!("unknown activations '{}'", self.activations))?;
        let g = QuantGemm { format, k: self.k, n: self.n, group_size: self.group_size, activations };
        g.validate().map_err(|e| e.to_string())?;
        Ok(g)
    }
}

/// Parses a product as the command line writes it: `FORMAT:KxN`, then optionally `:gSIZE` (scale
/// groups along K) and `:a8` (int8 activations), e.g. `fp6-e3m2:4096x11008` or
/// `fp6-e2m3:4096x4096:a8`. The product must be valid ([`QuantGemm::validate`]).
pub fn parse_product(spec: &str) -> Result<QuantGemm, String> {
    let usage = || format!("'{spec}' is not FORMAT:KxN[:gSIZE][:a8] (e.g. fp6-e3m2:4096x11008)");
    let mut parts = spec.split(':');
    let format = parts.next().filter(|f| !f.is_empty()).ok_or_else(usage)?;
    let format = Format::parse(format).ok_or_else(|| {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        format!("'{spec}': unknown weight format '{format}' (one of {})", names.join(", "))
    })?;
    let (k, n) = parts.next().and_then(|d| d.split_once('x')).ok_or_else(usage)?;
    let (k, n) = (k.parse::<usize>().map_err(|_| usage())?, n.parse::<usize>().map_err(|_| usage())?);
    let mut gemm = QuantGemm { format, k, n, group_size: 0, activations: Activations::F32 };
    for extra in parts {
        match extra {
            "a8" => gemm.activations = Activations::Int8,
            g if g.starts_with('g') => gemm.group_size = g[1..].parse().map_err(|_| usage())?,
            _ => return Err(usage()),
        }
    }
    gemm.validate().map_err(|e| format!("'{spec}': {e}"))?;
    Ok(gemm)
}

impl std::fmt::Display for Shape {
    /// `fp6-e3m2 384x1536` (`g64`, `a8` appended where they apply).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}x{}", self.format, self.k, self.n)?;
        if self.group_size > 0 {
            write!(f, " g{}", self.group_size)?;
        }
        if self.activations == "int8" {
            f.write_str(" a8")?;
        }
        Ok(())
    }
}

/// A kernel choice as the database writes it (fpx-llvm's [`CpuChoice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedChoice {
    /// The loop.
    pub variant: Variant,
    /// The blocking.
    pub tiling: CpuTiling,
    /// Most threads (0 = all of the pool).
    pub threads: u32,
}

impl From<CpuChoice> for TunedChoice {
    fn from(c: CpuChoice) -> TunedChoice {
        TunedChoice { variant: c.variant, tiling: c.tiling, threads: c.threads }
    }
}

/// A choice read from the database: marked tuned.
impl From<TunedChoice> for CpuChoice {
    fn from(c: TunedChoice) -> CpuChoice {
        CpuChoice { variant: c.variant, tiling: c.tiling, threads: c.threads, tuned: true }
    }
}

impl std::fmt::Display for TunedChoice {
    /// `gemv v2 r3 p8, all threads`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}, ", self.variant, self.tiling)?;
        match self.threads {
            0 => f.write_str("all threads"),
            1 => f.write_str("1 thread"),
            t => write!(f, "{t} threads"),
        }
    }
}

/// One tuned result: the fastest choice for a product shape and M bucket, on a machine, for a
/// CPU level, by a kernel generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuEntry {
    /// The machine it was measured on.
    pub machine: CpuMachine,
    /// The CPU level the kernels were compiled for (`x86-64-v3`, `x86-64-v4-vnni`, `native`).
    pub target: String,
    /// [`fpx_llvm::CODEGEN_CHECKSUM`] of the generator that made the kernels: another
    /// generator's entries are stale.
    pub kernel_checksum: String,
    /// The product.
    pub shape: Shape,
    /// The range of M.
    pub bucket: MBucket,
    /// The fastest choice.
    pub choice: TunedChoice,
    /// Its time per call (µs, median, averaged over the bucket's sample M).
    pub micros: f64,
    /// The heuristic default's time, measured beside it.
    pub default_micros: f64,
}

impl CpuEntry {
    /// Whether `other` answers the same question (and so replaces this entry on merge).
    pub fn same_key(&self, other: &CpuEntry) -> bool {
        self.machine == other.machine && self.target == other.target && self.shape == other.shape && self.bucket == other.bucket
    }
}

/// The tuning database.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningDb {
    /// Always [`DB_FORMAT`].
    pub format: String,
    /// Always [`DB_VERSION`].
    pub version: u32,
    /// CPU results.
    pub cpu: Vec<CpuEntry>,
    /// GPU results (absent in files written before GPU tuning: read as none).
    #[serde(default)]
    pub gpu: Vec<GpuEntry>,
}

impl Default for TuningDb {
    fn default() -> Self {
        TuningDb { format: DB_FORMAT.to_string(), version: DB_VERSION, cpu: Vec::new(), gpu: Vec::new() }
    }
}

/// What the database holds for one product on one CPU level of this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuLookup {
    /// The kernel table to compile (tuned buckets, the heuristic's choice for the rest), or
    /// `None` when no bucket is tuned.
    pub table: Option<KernelTable<CpuChoice>>,
    /// Buckets with a current tuned entry.
    pub tuned_buckets: usize,
    /// Entries for this product made by another kernel generator (ignored).
    pub stale: usize,
}

impl TuningDb {
    /// The default file: `$FPX_TUNING_DB`, else `$XDG_CACHE_HOME/fpx/tuning.json`, else
    /// `~/.cache/fpx/tuning.json`; `None` when none of those is set.
    pub fn default_path() -> Option<PathBuf> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(p) = var("FPX_TUNING_DB") {
            return Some(p);
        }
        let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
        Some(cache.join("fpx").join("tuning.json"))
    }

    /// Reads the database at `path`; `Ok(None)` when there is no file there.
    pub fn open(path: &Path) -> Result<Option<TuningDb>, DbError> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = fpx_ir::file::read_regular(path, MAX_DB_BYTES).map_err(|source| DbError::Read { path: path.to_path_buf(), source })?;
        TuningDb::from_json(&bytes, path).map(Some)
    }

    /// Parses a database's bytes (`path` names it in errors).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<TuningDb, DbError> {
        let damaged = |message: String| DbError::Damaged { path: path.to_path_buf(), message };
        let foreign = |message: String| DbError::Foreign { path: path.to_path_buf(), message };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                damaged(format!("not valid JSON ({e})"))
            } else {
                damaged(e.to_string())
            }
        })?;
        let format = value.get("format").and_then(|f| f.as_str());
        if format != Some(DB_FORMAT) {
            return Err(foreign(match format {
                Some(f) => format!("its format is '{f}', not '{DB_FORMAT}'"),
                None => format!("it has no \"format\": \"{DB_FORMAT}\" field"),
            }));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(DB_VERSION as u64) {
            return Err(foreign(format!(
                "it is version {}, this fpx reads version {DB_VERSION} (tune again, or point --tuning-db elsewhere)",
                version.map_or("?".to_string(), |v| v.to_string())
            )));
        }
        let db: TuningDb = serde_json::from_value(value).map_err(|e| damaged(e.to_string()))?;
        for (i, e) in db.cpu.iter().enumerate() {
            e.shape.gemm().map_err(|m| damaged(format!("entry {i}: {m}")))?;
            if !e.choice.tiling.is_valid() {
                return Err(damaged(format!("entry {i}: the blocking {} is outside 1..={}", e.choice.tiling, CpuTiling::MAX)));
            }
        }
        for (i, e) in db.gpu.iter().enumerate() {
            e.validate().map_err(|m| damaged(format!("GPU entry {i}: {m}")))?;
        }
        Ok(db)
    }

    /// Writes the database atomically: a temporary file in the same folder (created if needed),
    /// renamed over `path`, so a failed write leaves the old file whole.
    pub fn save(&self, path: &Path) -> Result<(), DbError> {
        let write = |source| DbError::Write { path: path.to_path_buf(), source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write)?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "tuning.json".to_string());
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(self).expect("plain data serializes");
        text.push('\n');
        let result = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write)
    }

    /// Adds `entries`: each replaces the entry with the same key, others are kept.
    pub fn merge(&mut self, entries: impl IntoIterator<Item = CpuEntry>) {
        for e in entries {
            match self.cpu.iter_mut().find(|old| old.same_key(&e)) {
                Some(old) => *old = e,
                None => self.cpu.push(e),
            }
        }
    }

    /// The kernel table for `gemm` on CPU level `target` of `machine` from the current entries
    /// (made by this fpx's kernel generator), the heuristic's choice (`default` blocking) for
    /// buckets without one.
    pub fn cpu_table(&self, machine: &CpuMachine, target: &str, gemm: &QuantGemm, default: CpuTiling) -> CpuLookup {
        let shape = Shape::of(gemm);
        let mine: Vec<&CpuEntry> = self.cpu.iter().filter(|e| e.machine == *machine && e.target == target && e.shape == shape).collect();
        let current = |e: &&&CpuEntry| e.kernel_checksum == fpx_llvm::CODEGEN_CHECKSUM;
        let stale = mine.iter().filter(|e| !current(e)).count();
        let heuristic = default_choices(default);
        let mut tuned_buckets = 0;
        let mut rows: Vec<(u64, CpuChoice)> = Vec::new();
        for b in MBucket::ALL {
            let choice = match mine.iter().filter(current).find(|e| e.bucket == b) {
                Some(e) => {
                    tuned_buckets += 1;
                    e.choice.into()
                }
                None => *heuristic.pick(b.range().1.min(1 << 20) as usize),
            };
            match rows.last_mut() {
                Some((max_m, last)) if *last == choice => *max_m = b.max_m(),
                _ => rows.push((b.max_m(), choice)),
            }
        }
        let table = (tuned_buckets > 0).then(|| KernelTable::new(rows).expect("buckets ascend and end unbounded"));
        CpuLookup { table, tuned_buckets, stale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_parse_from_the_command_line_form() {
        let g = parse_product("fp6-e2m3:4096x11008:g128:a8").unwrap();
        assert_eq!((g.format, g.k, g.n, g.group_size, g.activations), (Format::Fp6E2M3, 4096, 11008, 128, Activations::Int8));
        assert_eq!(Shape::of(&g).to_string(), "fp6-e2m3 4096x11008 g128 a8");
        assert_eq!(parse_product("int4:64x32").unwrap().activations, Activations::F32);
        for (bad, want) in [
            ("fp7:4x4", "unknown weight format 'fp7'"),
            ("fp6-e3m2:4096", "is not FORMAT:KxN"),
            ("fp6-e3m2:0x4", "'fp6-e3m2:0x4': "),
            ("fp6-e3m2:4x4:z", "is not FORMAT:KxN"),
            ("fp8-e4m3:64x64:a8", "'fp8-e4m3:64x64:a8': "),
        ] {
            let e = parse_product(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
