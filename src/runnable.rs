//! [`open`]: one runnable model for an `.onnx` file (the reference path, optionally quantized in
//! memory) or an `.fpx` artifact (its compiled kernels), told apart by the file's first bytes
//! (or its `.fpx` name).

use crate::{Error, Model, QuantSummary, QuantizeOptions, WeightScheme};
use fpx_ir::{Graph, Tensor, Value};
use fpx_runtime::{CpuExecutor, LoadedArtifact};
use std::io::Read;
use std::path::Path;

/// A model ready to run: an ONNX model on the reference path, or a loaded artifact.
#[derive(Debug)]
pub enum Runnable {
    /// An `.onnx` model, imported and simplified (and quantized in memory if asked).
    Onnx(Box<Model>),
    /// An `.fpx` artifact with its compiled kernels.
    Artifact(Box<LoadedArtifact>),
}

/// Whether `path` is meant as an artifact: it starts with the artifact magic bytes, or its name
/// ends in `.fpx` (so a damaged artifact is reported as one, not as a bad ONNX model).
pub fn is_artifact(path: &Path) -> bool {
    let mut head = [0u8; 8];
    // Only a regular file is opened (fpx_ir::file::open_regular): opening a FIFO would wait for a
    // writer. Anything else is not an artifact here; the ONNX loader then says what it is.
    let magic = fpx_ir::file::open_regular(path).and_then(|(mut f, _)| f.read_exact(&mut head)).is_ok() && head == fpx_artifact::MAGIC;
    magic || path.extension().is_some_and(|e| e == "fpx")
}

/// Opens `path` as it is: an `.fpx` artifact, or an ONNX model run in floating point.
pub fn open(path: &Path) -> Result<Runnable, Error> {
    open_with(path, &QuantizeOptions::new(WeightScheme::None))
}

/// Opens `path`; an ONNX model is quantized in memory as `options` say. An artifact was
/// quantized when it was compiled: options other than the default are an error for one.
pub fn open_with(path: &Path, options: &QuantizeOptions) -> Result<Runnable, Error> {
    if is_artifact(path) {
        if *options != QuantizeOptions::new(WeightScheme::None) {
            return Err(Error::Options(format!(
                "'{}' is an artifact, quantized when it was compiled: weight options apply to .onnx models",
                path.display()
            )));
        }
        return Ok(Runnable::Artifact(Box::new(LoadedArtifact::open(path)?)));
    }
    Ok(Runnable::Onnx(Box::new(Model::open_with(path, options)?)))
}

impl Runnable {
    /// Runs the model on named inputs; returns the outputs in graph order.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
        Ok(self.executor().run(inputs)?)
    }

    /// Sets the tensor budget of its runs: every tensor a kernel creates is checked against it
    /// before it is allocated, and one over it is an error naming the node (default: the budget
    /// `FPX_MAX_TENSOR_BYTES` sets, else [`fpx_ir::TensorBudget::DEFAULT_MAX_BYTES`]). Opening
    /// an ONNX model folds constants under the environment's budget ([`crate::simplify`]); its
    /// folding limit is far below any useful budget.
    pub fn set_budget(&mut self, budget: fpx_ir::TensorBudget) {
        match self {
            Runnable::Onnx(m) => m.set_budget(budget),
            Runnable::Artifact(a) => a.set_budget(budget),
        }
    }

    /// The tensor budget of its runs.
    pub fn budget(&self) -> fpx_ir::TensorBudget {
        self.executor().budget()
    }

    /// The executor (for benchmarks and profiling).
    pub fn executor(&self) -> &CpuExecutor {
        match self {
            Runnable::Onnx(m) => m.executor(),
            Runnable::Artifact(a) => a.executor(),
        }
    }

    /// The graph that runs.
    pub fn graph(&self) -> &Graph {
        self.executor().graph()
    }

    /// The values a run takes, in order: the graph inputs that are not constants (older ONNX
    /// exports also list initializers as inputs).
    pub fn run_inputs(&self) -> Vec<&Value> {
        let g = self.graph();
        g.inputs.iter().filter(|&&v| !g.is_constant(v)).map(|&v| g.value(v)).collect()
    }

    /// The values a run returns, in order: every graph output.
    pub fn run_outputs(&self) -> Vec<&Value> {
        let g = self.graph();
        g.outputs.iter().map(|&v| g.value(v)).collect()
    }

    /// What in-memory quantization did (`None` for a floating-point model or an artifact).
    pub fn quantization(&self) -> Option<&QuantSummary> {
        match self {
            Runnable::Onnx(m) => m.quantization(),
            Runnable::Artifact(_) => None,
        }
    }

    /// The CPU an artifact's native code was compiled for (`None` on the reference path).
    pub fn native_target(&self) -> Option<&str> {
        match self {
            Runnable::Onnx(_) => None,
            Runnable::Artifact(a) => a.native_target(),
        }
    }
}
