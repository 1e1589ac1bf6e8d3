//! `fpx compile` and `fpx::load`: the ahead-of-time path. A model is imported, simplified and
//! weight-quantized, a CPU kernel is generated per distinct (N, K, format, group size) with
//! LLVM, and everything goes into one `.fpx` artifact that [`load`] maps and runs.

use crate::{simplify, Error, QuantSummary, QuantizeOptions, WeightScheme};
use fpx_artifact::{Artifact, ArtifactContents, CpuCode, KernelEntry, WriteSummary};
use fpx_ir::ops::{OpRegistry, FPX_DOMAIN};
use fpx_ir::{Graph, Tensor};
use fpx_llvm::{Activations, CpuTarget, KernelSpec, Variant};
use fpx_quant::Format;
use fpx_runtime::native::{missing_cpu_features, NativeLibrary, NativeQmm};
use fpx_runtime::{CpuExecutor, KernelRegistry};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

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

/// Everything `fpx compile` decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompileOptions {
    /// How weights are quantized.
    pub quantize: QuantizeOptions,
    /// Which code to generate.
    pub target: Target,
    /// Which CPU the CPU code is for (x86-64-v3 runs on any AVX2 machine; `Native` is fastest
    /// on the build machine only).
    pub cpu: CpuTarget,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            quantize: QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2)),
            target: Target::Cpu,
            cpu: CpuTarget::X86_64V3,
        }
    }
}

/// A stage of compilation, reported to a progress callback as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the ONNX model.
    Import,
    /// Constant folding, dead nodes.
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
    /// Distinct kernels generated (each in two variants).
    pub kernels: usize,
}

impl Compiled {
    /// Writes the artifact atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<WriteSummary, Error> {
        Ok(fpx_artifact::write(path, &self.contents)?)
    }

    /// Loads the compiled model for running without writing a file.
    pub fn load(&self) -> Result<Loaded, Error> {
        let bytes = fpx_artifact::to_bytes(&self.contents)?;
        Loaded::from_artifact(Artifact::from_bytes(bytes, "<compiled in memory>")?)
    }
}

/// The kernel spec of a QuantMatMul node.
fn spec_of(node: &fpx_ir::Node) -> Option<KernelSpec> {
    let format = Format::parse(node.attr_s("format", ""))?;
    let activations = Activations::parse(node.attr_s("activations", "f32"))?;
    Some(KernelSpec {
        format,
        k: node.attr_i("k", 0) as usize,
        n: node.attr_i("n", 0) as usize,
        group_size: node.attr_i("group_size", 0) as usize,
        activations,
    })
}

/// Checks every node's kernel spec before generating code ([`KernelSpec::validate`], which
/// [`fpx_llvm::compile_cpu`] would run anyway), so that an error names the node.
fn check_specs(nodes: &[(String, KernelSpec)]) -> Result<(), Error> {
    for (node, s) in nodes {
        s.validate().map_err(|source| Error::Kernel { node: node.clone(), source })?;
    }
    Ok(())
}

/// Compiles an ONNX model into an artifact in memory.
pub fn compile(path: &Path, options: &CompileOptions) -> Result<Compiled, Error> {
    compile_with_progress(path, options, |_| {})
}

/// [`compile`], calling `progress` as each stage starts.
pub fn compile_with_progress(path: &Path, options: &CompileOptions, mut progress: impl FnMut(Stage)) -> Result<Compiled, Error> {
    options.quantize.validate()?;
    if options.quantize.activations == Activations::Int8 && options.target != Target::Cpu {
        return Err(Error::Options(
            "--activations int8 is for CPU code: the GPU kernels multiply FP16 activations; use --target cpu, or f32 activations for cuda|all".into(),
        ));
    }
    progress(Stage::Import);
    let mut graph: Graph = fpx_onnx::load_model(path)?;
    progress(Stage::Simplify);
    simplify(&mut graph)?;
    progress(Stage::Quantize);
    let quantization = fpx_passes::quantize_weights(&mut graph, &options.quantize)?;
    fpx_ir::verify::verify(&graph, &OpRegistry::standard())?;
    progress(Stage::Codegen);
    let mut nodes: Vec<(String, KernelSpec)> = Vec::new();
    for id in graph.topo_order()? {
        let n = graph.node(id);
        if n.domain == FPX_DOMAIN && n.op_type == "QuantMatMul" {
            if let Some(spec) = spec_of(n) {
                nodes.push((n.name.clone(), spec));
            }
        }
    }
    let specs: Vec<KernelSpec> = nodes.iter().map(|(_, s)| *s).collect();
    let mut cpu = Vec::new();
    let mut distinct_kernels = 0;
    if options.target != Target::Cuda && !specs.is_empty() {
        check_specs(&nodes)?;
        let compiled = fpx_llvm::compile_cpu(&specs, options.cpu)?;
        // compile_cpu deduplicates specs and emits each in every variant.
        distinct_kernels = compiled.symbols.len() / Variant::ALL.len();
        let kernels = nodes
            .iter()
            .map(|(node, s)| KernelEntry {
                node: node.clone(),
                gemv: s.symbol(Variant::Gemv),
                gemm: s.symbol(Variant::Gemm),
                int8_activations: s.activations == Activations::Int8,
            })
            .collect();
        cpu.push(CpuCode { target: compiled.target, features: compiled.features, shared_object: compiled.shared_object, kernels });
    }
    progress(Stage::GpuCodegen);
    let ptx = if options.target == Target::Cpu { Vec::new() } else { crate::gpu_codegen::ptx_code(&nodes)? };
    progress(Stage::Package);
    let mut metadata = BTreeMap::new();
    metadata.insert("weights".to_string(), options.quantize.scheme.name().to_string());
    metadata.insert("group_size".to_string(), options.quantize.group_size.map_or("per-channel".to_string(), |g| g.to_string()));
    metadata.insert("scale_search".to_string(), options.quantize.scale_search.to_string());
    metadata.insert("activations".to_string(), options.quantize.activations.name().to_string());
    metadata.insert("source".to_string(), path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default());
    Ok(Compiled { contents: ArtifactContents { graph, cpu, ptx, metadata }, quantization, kernels: distinct_kernels })
}

/// A loaded artifact, ready to run: its graph on the CPU executor, QuantMatMul nodes through
/// the artifact's compiled kernels.
#[derive(Debug)]
pub struct Loaded {
    executor: CpuExecutor,
    artifact: Artifact,
    native_target: Option<String>,
}

impl Loaded {
    fn from_artifact(artifact: Artifact) -> Result<Loaded, Error> {
        let graph = artifact.graph()?;
        let codes = artifact.cpu_code();
        let mut native = HashMap::new();
        let mut libraries = Vec::new();
        let mut native_target = None;
        if !codes.is_empty() {
            let usable = codes.iter().find(|c| missing_cpu_features(c.features).is_empty());
            let Some(code) = usable else {
                let c = &codes[0];
                return Err(fpx_runtime::RuntimeError::File {
                    path: artifact.producer().into(),
                    message: format!(
                        "this artifact's CPU code was compiled for '{}' and needs CPU features this machine lacks: {}; recompile with `fpx compile --cpu x86-64-v3` (or --cpu native on this machine)",
                        c.target,
                        missing_cpu_features(c.features).join(", ")
                    ),
                }
                .into());
            };
            // SAFETY: an artifact's code is trusted (see the README's security note).
            let lib = Arc::new(unsafe { NativeLibrary::load(code.shared_object)? });
            for k in code.kernels {
                let (gemv, gemm) = (lib.qmm(&k.gemv)?, lib.qmm(&k.gemm)?);
                native.insert(k.node.clone(), NativeQmm { gemv, gemm, int8_activations: k.int8_activations });
            }
            libraries.push(lib);
            native_target = Some(code.target.to_string());
        }
        let executor = CpuExecutor::with_native(graph, &KernelRegistry::standard(), native, libraries)?;
        Ok(Loaded { executor, artifact, native_target })
    }

    /// Runs the model on named inputs; returns the outputs in graph order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
        Ok(self.executor.run(inputs)?)
    }

    /// The executor (for benchmarks and profiling).
    pub fn executor(&self) -> &CpuExecutor {
        &self.executor
    }

    /// The artifact (manifest, sections, metadata).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The CPU the loaded native code was compiled for (`None`: no native code, reference kernels only).
    pub fn native_target(&self) -> Option<&str> {
        self.native_target.as_deref()
    }
}

/// Opens an `.fpx` artifact, checks it, loads its CPU code for this machine, and prepares it to run.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    Loaded::from_artifact(Artifact::open(path)?)
}
