//! fpx: an ahead-of-time compiler for weight-quantized ONNX models.
//!
//! This facade ties the stages together (import → IR → passes → codegen → artifact → runtime)
//! and holds no stage's logic: [`compile`] runs the pipeline, [`open`] gives one runnable for an
//! `.onnx` model (the CPU reference executor) or an `.fpx` artifact (its compiled kernels):
//!
//! ```no_run
//! let model = fpx::open("model.fpx".as_ref())?; // or "model.onnx"
//! let x = fpx::runtime::npy::read("input.npy".as_ref())?;
//! let outputs = model.run(vec![("input".to_string(), x)])?;
//! # Ok::<(), fpx::Error>(())
//! ```

pub mod bench;
mod compile;
mod failure;
pub mod generate;
mod paths;
pub mod peak;
pub mod report;
mod runnable;
mod summary;
mod tune;

/// This process's peak resident memory (`VmHWM` of `/proc/self/status`, Linux), which `fpx
/// compile` reports. Unlike `getrusage`'s `ru_maxrss` it counts only what this program used,
/// not the memory of the process it was started from before `exec`.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

pub use compile::{
    compile, compile_with_progress, quantized_products, CompileOptions, Compiled, CpuLevels, GpuTuningUse, Progress, Stage, Target,
    TuningUse,
};
pub use failure::{error_message, Action, Failure};
pub use fpx_artifact as artifact;
pub use fpx_cuda as cuda;
pub use fpx_ir as ir;
pub use fpx_llvm as llvm;
pub use fpx_onnx as onnx;
pub use fpx_passes as passes;
pub use fpx_passes::{QuantSummary, QuantizeOptions, WeightScheme};
pub use fpx_quant as quant;
pub use fpx_quant::act8::Activations;
pub use fpx_runtime as runtime;
pub use fpx_runtime::LoadedArtifact;
pub use fpx_tune as tuning;
pub use generate::{GenerateOptions, Generation, Generator, SamplingOptions, SignatureNames};
pub use paths::{check_artifact_path, check_model_file, same_file};
pub use runnable::{is_artifact, open, open_with, Runnable};
pub use summary::{
    weight_matmuls, weight_storage, ArtifactSummary, CpuKernelSpec, GpuKernelSpec, IoSpec, ModelSummary, PtxCodeSpec, WeightMatmul,
};
pub use tune::{host_level, tune, tune_gpu, tune_gpu_shapes, tune_shapes, GpuTuneSummary, TuneOptions, TuneSummary, TuningSource};

use fpx_ir::ops::OpRegistry;
use fpx_ir::pass::{ConstantFolding, DeadNodeElimination, PassManager};
use fpx_ir::{Graph, Tensor};
use fpx_runtime::{CpuEvaluator, CpuExecutor};
use std::path::Path;

/// Any error of the fpx library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or importing the ONNX model failed.
    #[error(transparent)]
    Import(#[from] fpx_onnx::ImportError),
    /// The graph is invalid or a pass failed.
    #[error(transparent)]
    Ir(#[from] fpx_ir::IrError),
    /// Running the graph failed.
    #[error(transparent)]
    Runtime(#[from] fpx_runtime::RuntimeError),
    /// Quantization failed (a non-finite weight, a bad option).
    #[error(transparent)]
    Quantize(#[from] fpx_passes::PassError),
    /// Generating CPU code failed.
    #[error(transparent)]
    Codegen(#[from] fpx_llvm::LlvmError),
    /// Writing or reading an artifact failed.
    #[error(transparent)]
    Artifact(#[from] fpx_artifact::ArtifactError),
    /// Generating or running GPU code failed (NVRTC, the CUDA driver).
    #[error(transparent)]
    Cuda(#[from] fpx_cuda::CudaError),
    /// The tensor budget could not be read (a malformed `FPX_MAX_TENSOR_BYTES`).
    #[error(transparent)]
    Budget(#[from] fpx_ir::BudgetError),
    /// Generation could not run (not a decoder graph, bad options, a malformed step output).
    #[error(transparent)]
    Generate(#[from] generate::GenerateError),
    /// Tuning failed, or the tuning database cannot be read or written.
    #[error(transparent)]
    Tune(#[from] fpx_tune::TuneError),
    /// A model or output path cannot be used (missing, a folder, the model itself).
    #[error("{0}")]
    Path(String),
    /// The options do not fit each other or the model (e.g. int8 activations with a GPU target).
    #[error("{0}")]
    Options(String),
    /// The compile's scratch file could not be created or written.
    #[error("cannot use a spill file in '{dir}': {source}")]
    Spill {
        /// The folder it was to be created in.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Largest constant (in elements) that constant folding may create.
const FOLD_LIMIT: usize = 1 << 20;

/// The standard clean-up pipeline: fold constants, fold the reads of known dimensions out of
/// the exporters' shape arithmetic and fold again, fuse exporter op chains (erf GELU, RMS norm,
/// rotary embedding, attention),
/// turn KV-cache concatenations into in-place appends (`fpx:KvAppend`), then drop dead nodes.
/// Folding creates no tensor over the budget `FPX_MAX_TENSOR_BYTES` sets (default
/// [`fpx_ir::TensorBudget::DEFAULT_MAX_BYTES`]).
pub fn simplify(graph: &mut Graph) -> Result<(), Error> {
    simplify_with(graph, fpx_ir::TensorBudget::from_env()?)
}

/// [`simplify`] with an explicit tensor budget for constant folding.
pub fn simplify_with(graph: &mut Graph, budget: fpx_ir::TensorBudget) -> Result<(), Error> {
    let registry = OpRegistry::standard();
    PassManager::new()
        .with(ConstantFolding { evaluator: CpuEvaluator::with_budget(budget), max_elements: FOLD_LIMIT, budget })
        .with(fpx_passes::FoldKnownShapes)
        .with(ConstantFolding { evaluator: CpuEvaluator::with_budget(budget), max_elements: FOLD_LIMIT, budget })
        .with(fpx_passes::FuseGelu)
        .with(fpx_passes::FuseRmsNorm)
        .with(fpx_passes::FuseRotateHalf)
        .with(fpx_passes::FuseAttention)
        .with(fpx_passes::AppendKvCache)
        .with(DeadNodeElimination)
        .run(graph, &registry)?;
    Ok(())
}

/// An ONNX model imported, simplified, optionally weight-quantized, and ready to run on the
/// CPU (quantized products through the reference `QuantMatMul` path).
#[derive(Debug)]
pub struct Model {
    executor: CpuExecutor,
    quantization: Option<QuantSummary>,
}

impl Model {
    /// Imports an `.onnx` file (external data only from its folder) and prepares it to run in
    /// floating point (the FP32 reference).
    pub fn open(path: &Path) -> Result<Model, Error> {
        Model::open_with(path, &QuantizeOptions::new(WeightScheme::None))
    }

    /// Imports an `.onnx` file and quantizes its constant-weight products as `options` say.
    pub fn open_with(path: &Path, options: &QuantizeOptions) -> Result<Model, Error> {
        let graph = fpx_onnx::load_model(path)?;
        Model::from_graph_with(graph, options)
    }

    /// Prepares an already imported graph (floating point).
    pub fn from_graph(graph: Graph) -> Result<Model, Error> {
        Model::from_graph_with(graph, &QuantizeOptions::new(WeightScheme::None))
    }

    /// Prepares an already imported graph, quantizing as `options` say.
    pub fn from_graph_with(mut graph: Graph, options: &QuantizeOptions) -> Result<Model, Error> {
        options.validate()?;
        simplify(&mut graph)?;
        let quantization = match options.scheme {
            WeightScheme::None => None,
            _ => {
                let s = fpx_passes::quantize_weights(&mut graph, options)?;
                fpx_ir::verify::verify(&graph, &OpRegistry::standard())?;
                Some(s)
            }
        };
        Ok(Model { executor: CpuExecutor::new(graph)?, quantization })
    }

    /// The prepared executor (for benchmarking and profiling).
    pub fn executor(&self) -> &CpuExecutor {
        &self.executor
    }

    /// Sets the tensor budget of its runs: every tensor a kernel creates is checked against it
    /// before it is allocated (default: `FPX_MAX_TENSOR_BYTES`, else 4 GiB per tensor).
    pub fn set_budget(&mut self, budget: fpx_ir::TensorBudget) {
        self.executor.set_budget(budget);
    }

    /// What quantization did, per layer (`None` for a floating-point model).
    pub fn quantization(&self) -> Option<&QuantSummary> {
        self.quantization.as_ref()
    }

    /// The graph that runs (after simplification).
    pub fn graph(&self) -> &Graph {
        self.executor.graph()
    }

    /// Runs the model on named inputs; returns the outputs in graph order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
        Ok(self.executor.run(inputs)?)
    }
}

/// The file name `fpx run` gives an output: every character that is not an ASCII letter or
/// digit becomes `_`, then `.npy`.
pub fn output_file_name(name: &str) -> String {
    let stem: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{stem}.npy")
}
