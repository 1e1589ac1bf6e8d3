//! `fpx::tune`: the auto-tuner over a model — its quantized products found as `compile` would
//! make them (or read from an artifact), tuned on the CPU level this machine runs or on a GPU
//! (the GEMM's tile configs), the results merged into the tuning database that `compile` reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fpx_llvm::CpuTarget;
use fpx_quant::QuantGemm;
use fpx_tune::gpu::{GemmRunner, GpuTuneOptions, GpuTuneReport};
use fpx_tune::{CpuTuneOptions, CpuTuneReport, MBucket, TuneEvent, TuneShape, TuningDb};

use crate::compile::quantized_graph;
use crate::{quantized_products, CompileOptions, CpuLevels, Error};

/// What `fpx tune` decides.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    /// How an `.onnx` model's weights are quantized (as `compile` will): which products exist.
    /// Ignored for an artifact, whose products are fixed.
    pub compile: CompileOptions,
    /// The M buckets to tune (1, 2–4, …).
    pub buckets: Vec<MBucket>,
    /// The search's time budget.
    pub budget: Duration,
    /// The database to merge the results into.
    pub db: PathBuf,
}

/// What a tuning run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneSummary {
    /// The search's results.
    pub report: CpuTuneReport,
    /// Per distinct product, the nodes that compute it.
    pub nodes: BTreeMap<QuantGemm, Vec<String>>,
    /// The database written.
    pub db: PathBuf,
    /// Its entries before and after the merge.
    pub entries: (usize, usize),
}

/// The first of `levels` this CPU runs: the code the loader will pick, so the one to tune.
pub fn host_level(levels: CpuLevels) -> Result<CpuTarget, Error> {
    for t in levels.targets() {
        if fpx_artifact::missing_cpu_features(&fpx_llvm::target_features(t)?).is_empty() {
            return Ok(t);
        }
    }
    let names: Vec<&str> = levels.targets().iter().map(|t| t.name()).collect();
    Err(Error::Options(format!("this CPU runs none of the CPU levels {}: nothing to tune", names.join(", "))))
}

/// Tunes the quantized products of the model at `path` (an `.onnx`, quantized as
/// `options.compile` says, or an `.fpx` artifact) and merges the results into `options.db`.
/// The database is read first: a damaged or foreign one is an error before any tuning, and
/// never overwritten.
pub fn tune(path: &Path, options: &TuneOptions, progress: &mut dyn FnMut(TuneEvent)) -> Result<TuneSummary, Error> {
    let gemms = model_products(path, options)?;
    tune_products(gemms, options, progress)
}

/// The quantized products (node, product) of the model at `path`, after checking that the
/// database can be read: a damaged one stops the run before the model is even read.
fn model_products(path: &Path, options: &TuneOptions) -> Result<Vec<(String, QuantGemm)>, Error> {
    TuningDb::open(&options.db).map_err(fpx_tune::TuneError::from)?;
    let gemms = if crate::is_artifact(path) {
        let artifact = fpx_artifact::Artifact::open(path)?;
        quantized_products(&artifact.graph()?)?
    } else {
        let (graph, _) = quantized_graph(path, &options.compile, &mut |_| {})?;
        quantized_products(&graph)?
    };
    if gemms.is_empty() {
        return Err(Error::Options(format!("'{}' has no quantized products to tune", path.display())));
    }
    Ok(gemms)
}

/// What a GPU tuning run did.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuTuneSummary {
    /// The search's results.
    pub report: GpuTuneReport,
    /// Per distinct product, the nodes that compute it.
    pub nodes: BTreeMap<QuantGemm, Vec<String>>,
    /// The database written.
    pub db: PathBuf,
    /// Its GPU entries before and after the merge.
    pub entries: (usize, usize),
}

/// Tunes the GPU GEMM's tile configs for the quantized products of the model at `path` (as
/// [`tune`] finds them; each must be one the GPU GEMM takes: FP6, per-channel scales, f32
/// activations) on `runner` (a [`fpx_tune::gpu::DeviceRunner`] on a GPU) and merges the results
/// into the database.
pub fn tune_gpu(
    path: &Path,
    options: &TuneOptions,
    runner: &mut dyn GemmRunner,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<GpuTuneSummary, Error> {
    let gemms = model_products(path, options)?;
    tune_gpu_products(gemms, options, runner, progress)
}

/// [`tune_gpu`] for a list of products (`--shape`), each counted once.
pub fn tune_gpu_shapes(
    shapes: &[QuantGemm],
    options: &TuneOptions,
    runner: &mut dyn GemmRunner,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<GpuTuneSummary, Error> {
    if shapes.is_empty() {
        return Err(Error::Options("no product to tune".to_string()));
    }
    let named = shapes.iter().map(|g| (fpx_tune::Shape::of(g).to_string(), *g)).collect();
    tune_gpu_products(named, options, runner, progress)
}

fn tune_gpu_products(
    gemms: Vec<(String, QuantGemm)>,
    options: &TuneOptions,
    runner: &mut dyn GemmRunner,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<GpuTuneSummary, Error> {
    let mut db = TuningDb::open(&options.db).map_err(fpx_tune::TuneError::from)?.unwrap_or_default();
    for (node, g) in &gemms {
        fpx_cuda::plan::gpu_format(node, g)?;
    }
    let nodes = by_product(gemms);
    let shapes: Vec<TuneShape> = nodes.iter().map(|(g, n)| TuneShape { gemm: *g, uses: n.len() }).collect();
    let gpu = GpuTuneOptions { buckets: options.buckets.clone(), budget: options.budget, seed: 0x5eed };
    let report = fpx_tune::gpu::tune_gpu(runner, &shapes, &gpu, progress)?;
    let before = db.gpu.len();
    db.merge_gpu(report.entries());
    db.save(&options.db).map_err(fpx_tune::TuneError::from)?;
    Ok(GpuTuneSummary { report, nodes, db: options.db.clone(), entries: (before, db.gpu.len()) })
}

/// The nodes of each distinct product.
fn by_product(gemms: Vec<(String, QuantGemm)>) -> BTreeMap<QuantGemm, Vec<String>> {
    let mut nodes: BTreeMap<QuantGemm, Vec<String>> = BTreeMap::new();
    for (n, g) in gemms {
        nodes.entry(g).or_default().push(n);
    }
    nodes
}

/// Tunes a list of products (`--shape`), each counted once, and merges the results into
/// `options.db` like [`tune`].
pub fn tune_shapes(shapes: &[QuantGemm], options: &TuneOptions, progress: &mut dyn FnMut(TuneEvent)) -> Result<TuneSummary, Error> {
    if shapes.is_empty() {
        return Err(Error::Options("no product to tune".to_string()));
    }
    let named = shapes.iter().map(|g| (fpx_tune::Shape::of(g).to_string(), *g)).collect();
    tune_products(named, options, progress)
}

/// Tunes `(node, product)` pairs (products weighted by their nodes) on the CPU level this host
/// runs and merges the results into the database, read first so a damaged one stops here.
fn tune_products(
    gemms: Vec<(String, QuantGemm)>,
    options: &TuneOptions,
    progress: &mut dyn FnMut(TuneEvent),
) -> Result<TuneSummary, Error> {
    let mut db = TuningDb::open(&options.db).map_err(fpx_tune::TuneError::from)?.unwrap_or_default();
    let before = db.cpu.len();
    let nodes = by_product(gemms);
    let shapes: Vec<TuneShape> = nodes.iter().map(|(g, n)| TuneShape { gemm: *g, uses: n.len() }).collect();
    let target = host_level(options.compile.cpu)?;
    let cpu = CpuTuneOptions { target, buckets: options.buckets.clone(), budget: options.budget, seed: 0x5eed };
    let report = fpx_tune::tune_cpu(&shapes, &cpu, progress)?;
    db.merge(report.entries());
    db.save(&options.db).map_err(fpx_tune::TuneError::from)?;
    Ok(TuneSummary { report, nodes, db: options.db.clone(), entries: (before, db.cpu.len()) })
}

/// The tuning database a compile uses: `explicit` (`--tuning-db`), else the default one
/// ([`TuningDb::default_path`]) when it exists. A database that cannot be used (missing when
/// named, damaged, foreign) is not an error: the heuristic's choices are always valid, so the
/// compile goes on without it and `warning` says why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TuningSource {
    /// The database, if one is used.
    pub db: Option<TuningDb>,
    /// Its file.
    pub path: Option<PathBuf>,
    /// Why a database was not used, for the user.
    pub warning: Option<String>,
}

impl TuningSource {
    /// Finds and reads the database as described on [`TuningSource`].
    pub fn resolve(explicit: Option<&Path>) -> TuningSource {
        let Some(path) = explicit.map(Path::to_path_buf).or_else(TuningDb::default_path) else { return TuningSource::default() };
        let fallback = "compiling with fpx's heuristic kernel choices";
        match TuningDb::open(&path) {
            Ok(Some(db)) => TuningSource { db: Some(db), path: Some(path), warning: None },
            Ok(None) if explicit.is_some() => TuningSource {
                warning: Some(format!("the tuning database '{}' does not exist; {fallback}", path.display())),
                ..TuningSource::default()
            },
            Ok(None) => TuningSource::default(),
            Err(e) => TuningSource { warning: Some(format!("{e}; {fallback}")), ..TuningSource::default() },
        }
    }
}
