//! `fpx.compile`: an ONNX model to an `.fpx` artifact, as `fpx compile` does, with the GIL
//! released and an optional progress callback.

use crate::options::QuantKwargs;
use crate::{error, failed, FpxError};
use fpx::{Action, CompileOptions, CpuLevels, Progress, Target, WeightScheme};
use pyo3::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a compile did: sizes, weights, code.
#[pyclass(frozen, module = "fpx", get_all)]
#[derive(Debug, Clone)]
pub struct CompileSummary {
    /// The ONNX model compiled.
    pub model: PathBuf,
    /// The artifact written.
    pub output: PathBuf,
    /// Wall time of the compile and the write, in seconds.
    pub seconds: f64,
    /// Size of the artifact file in bytes.
    pub artifact_bytes: u64,
    /// The weight scheme (e.g. "fp6-e3m2").
    pub weights: String,
    /// Quantized products (MatMul/Gemm with a constant weight).
    pub layers: usize,
    /// Bytes of those weights as the model stored them.
    pub weight_bytes_in: usize,
    /// Bytes of their codes and scales.
    pub weight_bytes_out: usize,
    /// Bits per weight over every weight the artifact holds (quantized or not).
    pub bits_per_weight: f64,
    /// Distinct CPU kernels generated.
    pub kernels: usize,
    /// The CPU levels the artifact carries, fastest first (e.g. ["x86-64-v4-vnni", "x86-64-v3"]).
    pub cpu_targets: Vec<String>,
    /// The GPU architectures it carries PTX for (e.g. ["sm_80", "sm_90"]).
    pub gpu_archs: Vec<String>,
    /// The tuning database used (`fpx tune`), if any.
    pub tuning_db: Option<PathBuf>,
    /// Products whose kernels came from it (the most over the CPU levels and GPU architectures).
    pub tuned_products: usize,
}

#[pymethods]
impl CompileSummary {
    fn __repr__(&self) -> String {
        format!(
            "CompileSummary(output='{}', weights='{}', layers={}, bits_per_weight={:.2}, artifact_bytes={}, seconds={:.2})",
            self.output.display(),
            self.weights,
            self.layers,
            self.bits_per_weight,
            self.artifact_bytes,
            self.seconds
        )
    }
}

/// Compiles the ONNX model `model` into the artifact `output` (written atomically) and returns
/// what it did. Options as `fpx compile`'s flags; `progress(stage, done, total)` is called as each
/// stage starts (`done` and `total` None) and as weights are quantized (bytes).
#[pyfunction]
#[pyo3(signature = (model, output, *, weights = "fp6-e3m2", activations = "f32", target = "cpu", cpu = "auto", group_size = None,
    scale_search = false, scale_pow2 = false, embeddings = Some("int8"), fused_epilogues = true, keep_half_precision = false, tuning_db = None,
    no_tuning = false, progress = None, lorc = None, lorc_factors = "f16"))]
#[allow(clippy::too_many_arguments)]
pub fn compile(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    weights: &str,
    activations: &str,
    target: &str,
    cpu: &str,
    group_size: Option<usize>,
    scale_search: bool,
    scale_pow2: bool,
    embeddings: Option<&str>,
    fused_epilogues: bool,
    keep_half_precision: bool,
    tuning_db: Option<PathBuf>,
    no_tuning: bool,
    progress: Option<Py<PyAny>>,
    lorc: Option<usize>,
    lorc_factors: &str,
) -> PyResult<CompileSummary> {
    let kwargs = QuantKwargs {
        weights: Some(weights),
        activations,
        group_size,
        scale_search,
        scale_pow2,
        embeddings,
        fused_epilogues,
        lorc,
        lorc_factors,
    };
    let quantize = kwargs.options(WeightScheme::None)?;
    let target: Target = target.parse().map_err(|e| FpxError::new_err(format!("target='{target}': {e}")))?;
    let cpu: CpuLevels = cpu.parse().map_err(|e| FpxError::new_err(format!("cpu='{cpu}': {e}")))?;
    fpx::check_model_file(&model).map_err(|e| error(&e))?;
    fpx::check_artifact_path(&output, &model, "output").map_err(|e| error(&e))?;
    let scratch_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if no_tuning && tuning_db.is_some() {
        return Err(FpxError::new_err("tuning_db and no_tuning=True exclude each other"));
    }
    let tuning = if no_tuning { fpx::TuningSource::default() } else { fpx::TuningSource::resolve(tuning_db.as_deref()) };
    if let Some(w) = &tuning.warning {
        PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyUserWarning>(), &std::ffi::CString::new(w.as_str()).unwrap_or_default(), 1)?;
    }
    let options =
        CompileOptions { quantize, target, cpu, upcast_half: !keep_half_precision, scratch_dir: Some(scratch_dir), tuning: tuning.db };
    let start = Instant::now();
    // The callback's first exception is raised after the compile (which cannot stop half-way).
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        let compiled = fpx::compile_with_progress(&model, &options, |p| {
            let Some(cb) = progress.as_ref().filter(|_| callback_error.is_none()) else { return };
            let (stage, done, total) = match p {
                Progress::Stage(s) => (s.label(), None, None),
                Progress::Weights { done, total } => (fpx::Stage::Quantize.label(), Some(done), Some(total)),
            };
            if let Err(e) = Python::attach(|py| cb.call1(py, (stage, done, total))) {
                callback_error = Some(e);
            }
        })
        .map_err(|e| failed(Action::Compile, &model, e))?;
        let written = compiled.save(&output).map_err(|e| failed(Action::WriteArtifact, &output, e))?;
        Ok::<_, String>((compiled, written))
    });
    let (compiled, written) = result.map_err(FpxError::new_err)?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    let (weights_held, bytes_held) = fpx::weight_storage(&compiled.contents.graph);
    let q = &compiled.quantization;
    Ok(CompileSummary {
        model,
        output,
        seconds: start.elapsed().as_secs_f64(),
        artifact_bytes: written.bytes,
        weights: options.quantize.scheme.name().to_string(),
        layers: q.layers.len(),
        weight_bytes_in: q.weight_bytes_in,
        weight_bytes_out: q.weight_bytes_out,
        bits_per_weight: if weights_held > 0 { 8.0 * bytes_held as f64 / weights_held as f64 } else { 0.0 },
        kernels: compiled.kernels,
        tuning_db: tuning.path,
        tuned_products: compiled.tuning.iter().map(|u| u.tuned).chain(compiled.gpu_tuning.iter().map(|u| u.tuned)).max().unwrap_or(0),
        cpu_targets: compiled.contents.cpu.iter().map(|c| c.target.clone()).collect(),
        gpu_archs: compiled.contents.ptx.iter().map(|c| c.arch.clone()).collect(),
    })
}
