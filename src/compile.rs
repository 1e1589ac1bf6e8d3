//! `fpx compile`: the ahead-of-time pipeline as a few named steps over one graph. A model is
//! imported, simplified and weight-quantized; each backend takes the model's quantized products
//! ([`fpx_quant::QuantGemm`], read from the nodes) and returns its code with a kernel table per
//! node (CPU: `fpx_llvm::cpu_code`, GPU: `fpx_cuda::plan::ptx_code`); everything goes into one
//! `.fpx` artifact, which `fpx_runtime::LoadedArtifact` runs.

use crate::{simplify, Error, QuantSummary, QuantizeOptions, WeightScheme};
use fpx_artifact::{Artifact, ArtifactContents, WriteSummary};
use fpx_ir::ops::{quant_matmul, OpRegistry};
use fpx_ir::Graph;
use fpx_llvm::{CpuChoice, CpuTarget};
use fpx_quant::act8::Activations;
use fpx_quant::{Format, KernelTable, QuantGemm};
use fpx_runtime::LoadedArtifact;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Which code an artifact carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// CPU kernels generated with LLVM.
    Cpu,
    /// PTX for NVIDIA GPUs (sm_80 and sm_90) through NVRTC; FP6 weights, per-channel scales.
    Cuda,
    /// Both.
    All,
}

impl Target {
    /// Every target, as `--target` lists them.
    pub const ALL: [Target; 3] = [Target::Cpu, Target::Cuda, Target::All];

    /// The name `--target` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
            Target::All => "all",
        }
    }

    fn has_cpu(self) -> bool {
        self != Target::Cuda
    }

    fn has_gpu(self) -> bool {
        self != Target::Cpu
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// Parses [`Target::name`].
    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| format!("unknown target '{s}'; choose cpu, cuda or all"))
    }
}

impl std::fmt::Display for Target {
    /// Writes [`Target::name`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which CPU code an artifact carries: several instruction-set levels the loader picks from
/// (the default: fast on AVX-512 VNNI hosts, still running on any AVX2 one), or one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuLevels {
    /// x86-64-v4-vnni and x86-64-v3 code; the loader runs the first this CPU supports.
    Auto,
    /// Code for one target only.
    Only(CpuTarget),
}

impl CpuLevels {
    /// The targets compiled, fastest first (the order the loader tries them in).
    pub fn targets(self) -> Vec<CpuTarget> {
        match self {
            CpuLevels::Auto => vec![CpuTarget::X86_64V4Vnni, CpuTarget::X86_64V3],
            CpuLevels::Only(t) => vec![t],
        }
    }

    /// The name `--cpu` takes: `auto` or a [`CpuTarget`] name.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevels::Auto => "auto",
            CpuLevels::Only(t) => t.name(),
        }
    }
}

impl std::str::FromStr for CpuLevels {
    type Err = String;

    /// Parses [`CpuLevels::name`].
    fn from_str(s: &str) -> Result<CpuLevels, String> {
        if s == "auto" {
            return Ok(CpuLevels::Auto);
        }
        s.parse::<CpuTarget>().map(CpuLevels::Only).map_err(|_| {
            let names: Vec<&str> = CpuTarget::ALL.iter().map(|t| t.name()).collect();
            format!("unknown CPU target '{s}'; choose auto, {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for CpuLevels {
    /// Writes [`CpuLevels::name`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything `fpx compile` decides.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileOptions {
    /// How weights are quantized.
    pub quantize: QuantizeOptions,
    /// Which code to generate.
    pub target: Target,
    /// Which CPU code to generate: by default two levels (x86-64-v4-vnni, x86-64-v3), of which
    /// the loader runs the best the host has; or one target (`Native` is fastest on the build
    /// machine only).
    pub cpu: CpuLevels,
    /// Run an FP16/BF16 graph in `f32` between its inputs and outputs
    /// ([`fpx_passes::UpcastHalfPrecision`]), so it takes the `f32` fast paths and kernels
    /// (default); `false` keeps 16-bit tensors, which only the slow reference kernels take.
    pub upcast_half: bool,
    /// Where the compile keeps large intermediate constants (packed weights and the like) so
    /// that its memory follows the largest tensor, not the model: an unlinked scratch file in this
    /// folder. `None` is the system's temporary folder; `fpx compile` uses the output's folder
    /// (a `tmpfs` there would hold the spilled bytes in memory).
    pub scratch_dir: Option<PathBuf>,
    /// Tuned kernel choices (`fpx tune`): for each CPU level, a product this machine has
    /// current entries for gets their tables; every other product (and every bucket without an
    /// entry) the heuristic's. `None`: the heuristic everywhere.
    pub tuning: Option<fpx_tune::TuningDb>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            quantize: QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2)),
            target: Target::Cpu,
            cpu: CpuLevels::Auto,
            upcast_half: true,
            scratch_dir: None,
            tuning: None,
        }
    }
}

/// A stage of compilation, reported to a progress callback as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the ONNX model.
    Import,
    /// FP16/BF16 to `f32` (unless kept), constant folding, fusions, dead nodes.
    Simplify,
    /// Quantizing weights.
    Quantize,
    /// Generating and linking CPU kernels.
    Codegen,
    /// Compiling GPU kernels to PTX.
    GpuCodegen,
    /// Building the artifact.
    Package,
}

impl Stage {
    /// Every stage in order.
    pub const ALL: [Stage; 6] = [Stage::Import, Stage::Simplify, Stage::Quantize, Stage::Codegen, Stage::GpuCodegen, Stage::Package];

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Import => "import",
            Stage::Simplify => "simplify",
            Stage::Quantize => "quantize weights",
            Stage::Codegen => "generate CPU kernels (LLVM)",
            Stage::GpuCodegen => "generate GPU kernels (NVRTC)",
            Stage::Package => "package",
        }
    }
}

/// A compiled model, in memory: save it or run it.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// What goes into the file.
    pub contents: ArtifactContents,
    /// What quantization did.
    pub quantization: QuantSummary,
    /// Distinct CPU kernels generated (entry points in the shared object).
    pub kernels: usize,
    /// How the tuning database was used, per CPU level (empty without one).
    pub tuning: Vec<TuningUse>,
    /// How it was used for the GPU code, per architecture that has tuned results (empty
    /// without one, or without GPU code).
    pub gpu_tuning: Vec<GpuTuningUse>,
}

/// How a compile used the tuning database for one GPU architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuTuningUse {
    /// The architecture.
    pub arch: fpx_cuda::Arch,
    /// The GPU whose results were used ([`fpx_tune::TuningDb::gpu_for`]).
    pub gpu: fpx_tune::GpuMachine,
    /// Quantized products (nodes) in the model.
    pub products: usize,
    /// Of those, the ones with current tuned results (the rest use the heuristic).
    pub tuned: usize,
    /// The distinct shapes of the tuned products.
    pub tuned_shapes: Vec<QuantGemm>,
    /// Results for these products made with another GEMM template, ignored.
    pub stale_entries: usize,
}

/// How a compile used the tuning database for one CPU level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuningUse {
    /// The CPU level.
    pub target: CpuTarget,
    /// Quantized products (nodes) in the model.
    pub products: usize,
    /// Of those, the ones with current tuned entries (the rest use the heuristic).
    pub tuned: usize,
    /// The distinct shapes of the tuned products.
    pub tuned_shapes: Vec<QuantGemm>,
    /// Entries for this machine and level made by another kernel generator, ignored.
    pub stale_entries: usize,
}

impl Compiled {
    /// Writes the artifact atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<WriteSummary, Error> {
        Ok(fpx_artifact::write(path, &self.contents)?)
    }

    /// Loads the compiled model for running without writing a file.
    pub fn load(&self) -> Result<LoadedArtifact, Error> {
        let bytes = fpx_artifact::to_bytes(&self.contents)?;
        Ok(LoadedArtifact::from_artifact(Artifact::from_bytes(bytes, "<compiled in memory>")?)?)
    }
}

/// Compiles an ONNX model into an artifact in memory.
pub fn compile(path: &Path, options: &CompileOptions) -> Result<Compiled, Error> {
    compile_with_progress(path, options, |_| {})
}

/// What a compile reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A stage starts.
    Stage(Stage),
    /// Bytes of weights (as the model stores them) quantized so far, of `total`.
    Weights {
        /// Quantized so far.
        done: u64,
        /// All the weights to quantize.
        total: u64,
    },
}

/// [`compile`], calling `progress` as each stage starts and as weights are quantized.
pub fn compile_with_progress(path: &Path, options: &CompileOptions, mut progress: impl FnMut(Progress)) -> Result<Compiled, Error> {
    check_options(options)?;
    let (graph, quantization) = quantized_graph(path, options, &mut progress)?;
    let gemms = quantized_products(&graph)?;
    progress(Progress::Stage(Stage::Codegen));
    let mut cpu = Vec::new();
    let mut kernels = 0;
    let mut tuning = Vec::new();
    if options.target.has_cpu() && !gemms.is_empty() {
        // Each level is its own LLVM context and module: they compile side by side.
        use rayon::prelude::*;
        let machine = options.tuning.as_ref().map(|_| fpx_tune::CpuMachine::host());
        let planned = options
            .cpu
            .targets()
            .into_iter()
            .map(|t| plan_cpu_kernels(&gemms, t, options.tuning.as_ref().zip(machine.as_ref())))
            .collect::<Result<Vec<_>, Error>>()?;
        let codes = planned.par_iter().map(|(t, plans, _)| fpx_llvm::cpu_code_with(plans, *t)).collect::<Result<Vec<_>, _>>()?;
        tuning = planned.into_iter().filter_map(|(_, _, used)| used).collect();
        kernels = codes
            .iter()
            .map(|c| c.kernels.iter().flat_map(|k| k.table.rows().iter().map(|(_, e)| e.symbol.as_str())).collect::<BTreeSet<_>>().len())
            .max()
            .unwrap_or(0);
        cpu = codes;
    }
    progress(Progress::Stage(Stage::GpuCodegen));
    let (ptx, gpu_tuning) = if options.target.has_gpu() {
        let (tables, used) = plan_gpu_tables(&gemms, options.tuning.as_ref())?;
        (fpx_cuda::plan::ptx_code(&gemms, &|arch, g| tables.get(&(arch, *g)).cloned())?, used)
    } else {
        (Vec::new(), Vec::new())
    };
    progress(Progress::Stage(Stage::Package));
    let metadata = metadata(path, &options.quantize);
    Ok(Compiled { contents: ArtifactContents { graph, cpu, ptx, metadata }, quantization, kernels, tuning, gpu_tuning })
}

/// The tuned GPU kernel tables `db` holds for `gemms`, per architecture from the GPU with the
/// most results for them, and how the database was used; empty without a database.
type PlannedGpu = (BTreeMap<(fpx_cuda::Arch, QuantGemm), fpx_cuda::plan::TunedTable>, Vec<GpuTuningUse>);

fn plan_gpu_tables(gemms: &[(String, QuantGemm)], db: Option<&fpx_tune::TuningDb>) -> Result<PlannedGpu, Error> {
    let mut tables = BTreeMap::new();
    let mut uses = Vec::new();
    let Some(db) = db else { return Ok((tables, uses)) };
    let products: Vec<QuantGemm> = gemms.iter().map(|(_, g)| *g).collect();
    for arch in fpx_cuda::Arch::ALL {
        let Some(gpu) = db.gpu_for(arch, &products) else { continue };
        let mut used = GpuTuningUse { arch, gpu: gpu.clone(), products: gemms.len(), tuned: 0, tuned_shapes: Vec::new(), stale_entries: 0 };
        let mut seen = BTreeSet::new();
        for (_, g) in gemms {
            let lookup = db.gpu_table(&gpu, arch, g, fpx_cuda::plan::planned_sm_count(arch)).map_err(fpx_tune::TuneError::from)?;
            if seen.insert(*g) {
                used.stale_entries += lookup.stale;
            }
            if let Some(table) = lookup.table {
                used.tuned += 1;
                if !used.tuned_shapes.contains(g) {
                    used.tuned_shapes.push(*g);
                }
                tables.insert((arch, *g), table);
            }
        }
        uses.push(used);
    }
    Ok((tables, uses))
}

/// Each product of `gemms` with the kernel table `db` holds for it on `target` of `machine`
/// (`None`: the heuristic's), and how the database was used.
type PlannedCpu = (CpuTarget, Vec<(String, QuantGemm, Option<KernelTable<CpuChoice>>)>, Option<TuningUse>);

/// The kernel tables for one CPU level: tuned ones from the database where it has them.
fn plan_cpu_kernels(
    gemms: &[(String, QuantGemm)],
    target: CpuTarget,
    db: Option<(&fpx_tune::TuningDb, &fpx_tune::CpuMachine)>,
) -> Result<PlannedCpu, Error> {
    let Some((db, machine)) = db else {
        return Ok((target, gemms.iter().map(|(n, g)| (n.clone(), *g, None)).collect(), None));
    };
    let default = fpx_llvm::default_tiling(target)?;
    let mut used = TuningUse { target, products: gemms.len(), tuned: 0, tuned_shapes: Vec::new(), stale_entries: 0 };
    let mut stale_shapes = BTreeSet::new();
    let plans = gemms
        .iter()
        .map(|(n, g)| {
            let lookup = db.cpu_table(machine, target.name(), g, default);
            if lookup.table.is_some() {
                used.tuned += 1;
                if !used.tuned_shapes.contains(g) {
                    used.tuned_shapes.push(*g);
                }
            }
            if lookup.stale > 0 && stale_shapes.insert(*g) {
                used.stale_entries += lookup.stale;
            }
            (n.clone(), *g, lookup.table)
        })
        .collect();
    Ok((target, plans, Some(used)))
}

/// Import, simplify and quantize: the graph whose products the backends (and the tuner) take.
pub(crate) fn quantized_graph(
    path: &Path,
    options: &CompileOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Graph, QuantSummary), Error> {
    progress(Progress::Stage(Stage::Import));
    let mut graph: Graph = fpx_onnx::load_model(path)?;
    // Large external data stays in its files; large constants in memory and those the passes
    // create (packed weights) go to a scratch file: memory follows the largest tensor.
    // A folder where no file can be made (the write will say so, naming the artifact) falls
    // back to the system's temporary folder, and failing that to memory.
    let scratch = options.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill = fpx_ir::stored::SpillFile::create_in(&scratch).or_else(|_| fpx_ir::stored::SpillFile::create_in(&std::env::temp_dir()));
    if let Ok(spill) = spill {
        graph.spill_large_constants(spill).map_err(|source| Error::Spill { dir: scratch.clone(), source })?;
    }
    progress(Progress::Stage(Stage::Simplify));
    // Bytes of each constant as the model stores it (the upcast makes 16-bit weights f32).
    let stored: HashMap<String, usize> = if options.upcast_half {
        graph.value_ids().filter_map(|v| Some((graph.value(v).name.clone(), graph.constant_stored_bytes(v)?))).collect()
    } else {
        HashMap::new()
    };
    let upcast = options.upcast_half && fpx_passes::upcast_half_precision(&mut graph)?;
    simplify(&mut graph)?;
    progress(Progress::Stage(Stage::Quantize));
    let mut quantization = fpx_passes::quantize_weights_with_progress(&mut graph, &options.quantize, &mut |done, total| {
        progress(Progress::Weights { done, total })
    })?;
    if upcast {
        // Report the weights' size as stored, not as the f32 they were quantized from.
        let weights: BTreeSet<&str> = quantization.layers.iter().map(|l| l.weight.as_str()).collect();
        if let Some(bytes) = weights.iter().map(|w| stored.get(*w).copied()).sum::<Option<usize>>() {
            quantization.weight_bytes_in = bytes;
        }
    }
    // Shape inference reads every QuantMatMul's attributes (an invalid one is an error naming
    // the node) and checks the rest of the graph, so what compiles also runs.
    fpx_ir::verify::verify(&graph, &OpRegistry::standard())?;
    // And the checks `fpx run` makes when it prepares the graph (a CPU kernel for every node),
    // so an artifact that could never run is refused here, naming the node, not at run time.
    fpx_runtime::CpuExecutor::check(graph.clone())?;
    Ok((graph, quantization))
}

/// Checks the options against each other before any work.
fn check_options(options: &CompileOptions) -> Result<(), Error> {
    options.quantize.validate()?;
    if options.quantize.scheme == WeightScheme::None {
        return Err(Error::Options(
            "an artifact holds quantized weights: pick a weight scheme (e.g. fp6-e3m2), or run the .onnx directly".into(),
        ));
    }
    if options.quantize.lorc_rank.is_some() && options.target.has_gpu() {
        return Err(Error::Options(
            "LoRC corrections (--lorc) are applied by the CPU runtime: the GPU kernels do not add them; use --target cpu".into(),
        ));
    }
    let activations = options.quantize.activations;
    if activations != Activations::F32 && options.target.has_gpu() {
        return Err(Error::Options(format!(
            "{activations} activations are for CPU code: the GPU kernels multiply FP16 activations; use --target cpu, or f32 activations for cuda|all"
        )));
    }
    Ok(())
}

/// Every quantized product of `graph` as (node name, [`QuantGemm`]), in topological order.
pub fn quantized_products(graph: &Graph) -> Result<Vec<(String, QuantGemm)>, Error> {
    let mut out = Vec::new();
    for id in graph.topo_order()? {
        let n = graph.node(id);
        if quant_matmul::is_quant_matmul(n) {
            out.push((n.name.clone(), quant_matmul::read(n)?));
        }
    }
    Ok(out)
}

/// The facts `fpx inspect` shows about how an artifact was built.
fn metadata(path: &Path, q: &QuantizeOptions) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("weights".to_string(), q.scheme.name().to_string());
    m.insert("group_size".to_string(), q.group_size.map_or("per-channel".to_string(), |g| g.to_string()));
    m.insert("scale_search".to_string(), q.scale_search.to_string());
    if q.pow2_scales {
        m.insert("scale_pow2".to_string(), "true".to_string());
    }
    m.insert("activations".to_string(), q.activations.name().to_string());
    if let Some(rank) = q.lorc_rank {
        m.insert("lorc_rank".to_string(), rank.to_string());
        m.insert("lorc_factors".to_string(), q.lorc_factors.name().to_string());
    }
    m.insert("source".to_string(), path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default());
    m
}
