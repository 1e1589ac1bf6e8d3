//! Running an `.fpx` artifact: open it, pick the CPU code this machine can run, load its shared
//! object from memory, bind each quantized product's kernel table to the node it serves, and
//! prepare the executor (every other node runs its reference kernel).

use crate::native::{missing_cpu_features, NativeLibrary, NativeQmm};
use crate::{CpuExecutor, KernelRegistry, RuntimeError};
use fpx_artifact::{Artifact, CpuCodeRef};
use fpx_ir::ops::quant_matmul;
use fpx_ir::{Graph, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// An artifact ready to run on the CPU: its graph on the [`CpuExecutor`], quantized products
/// through the artifact's compiled kernels.
#[derive(Debug)]
pub struct LoadedArtifact {
    executor: CpuExecutor,
    artifact: Artifact,
    native_target: Option<String>,
}

impl LoadedArtifact {
    /// Opens an `.fpx` file, checks it, loads its CPU code for this machine and prepares it.
    ///
    /// An artifact carries native code, which runs in this process: open only artifacts you trust.
    pub fn open(path: &Path) -> Result<LoadedArtifact, RuntimeError> {
        LoadedArtifact::from_artifact(Artifact::open(path)?)
    }

    /// Prepares an opened artifact (see [`LoadedArtifact::open`]).
    pub fn from_artifact(artifact: Artifact) -> Result<LoadedArtifact, RuntimeError> {
        let graph = artifact.graph()?;
        let codes = artifact.cpu_code();
        let mut native = HashMap::new();
        let mut libraries = Vec::new();
        let mut native_target = None;
        if let Some(first) = codes.first() {
            // The first entry whose features this CPU has (the compiler lists the fastest first).
            let Some(code) = codes.iter().find(|c| missing_cpu_features(c.features).is_empty()) else {
                return Err(RuntimeError::MissingCpuFeatures {
                    artifact: artifact.name().to_string(),
                    target: first.target.to_string(),
                    missing: missing_cpu_features(first.features),
                });
            };
            // SAFETY: an artifact's code is trusted (see the README's security note).
            let lib = Arc::new(unsafe { NativeLibrary::load(code.shared_object)? });
            native = bind_kernels(&graph, code, &lib)?;
            libraries.push(lib);
            native_target = Some(code.target.to_string());
        }
        let executor = CpuExecutor::with_native(graph, &KernelRegistry::standard(), native, libraries)?;
        Ok(LoadedArtifact { executor, artifact, native_target })
    }

    /// Runs the model on named inputs; returns the outputs in graph order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        self.executor.run(inputs)
    }

    /// The executor (for benchmarks and profiling).
    pub fn executor(&self) -> &CpuExecutor {
        &self.executor
    }

    /// Sets the tensor budget of its runs (see [`CpuExecutor::with_budget`]).
    pub fn set_budget(&mut self, budget: fpx_ir::TensorBudget) {
        self.executor.set_budget(budget);
    }

    /// The graph that runs.
    pub fn graph(&self) -> &Graph {
        self.executor.graph()
    }

    /// The artifact (manifest, sections, metadata).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The CPU the loaded native code was compiled for (`None`: no native code, reference
    /// kernels only).
    pub fn native_target(&self) -> Option<&str> {
        self.native_target.as_deref()
    }
}

/// Each kernel table of `code` bound to its node: every symbol resolved in `lib`. The reader has
/// checked the tables against the graph (each names a quantized product, takes its activations,
/// and every product has one).
fn bind_kernels(graph: &Graph, code: &CpuCodeRef<'_>, lib: &NativeLibrary) -> Result<HashMap<String, NativeQmm>, RuntimeError> {
    let nodes: HashMap<&str, &fpx_ir::Node> = graph.node_ids().into_iter().map(|id| graph.node(id)).map(|n| (n.name.as_str(), n)).collect();
    let mut bound = HashMap::new();
    for k in code.kernels {
        let bad = |message: String| RuntimeError::NativeCode { message: format!("node '{}': {message}", k.node) };
        let node = nodes.get(k.node.as_str()).ok_or_else(|| bad("the graph has no such node".into()))?;
        if !quant_matmul::is_quant_matmul(node) {
            return Err(bad(format!("kernels are given for a {} node, not a quantized product", node.op_type)));
        }
        let gemm = quant_matmul::read(node)?;
        let kernels = lib.bind(&k.table)?;
        bound.insert(k.node.clone(), NativeQmm { gemm, kernels });
    }
    Ok(bound)
}
