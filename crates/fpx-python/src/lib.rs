//! fpx's Python package: the private extension module `fpx._native`, which `python/fpx`
//! re-exports as `fpx`. Each function is a thin layer over the `fpx` library: compile, load and
//! run, report, generate. Errors are `fpx.FpxError` with the CLI's messages; long work releases
//! the GIL.

mod arrays;
mod compile;
mod generate;
mod model;
mod options;
mod report;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::path::PathBuf;

create_exception!(fpx, FpxError, PyException, "An fpx error: the message is the one the `fpx` command line prints.");

/// The `FpxError` of any library error, its message [`fpx::error_message`]'s (the CLI's).
pub(crate) fn error(e: &(dyn std::error::Error + 'static)) -> PyErr {
    FpxError::new_err(fpx::error_message(e))
}

/// The message of `error`, met while doing `action` with `path` (the CLI's text, e.g. "cannot
/// load model 'm.fpx': ..."), as a plain string that may cross `Python::detach`.
pub(crate) fn failed(action: fpx::Action, path: &std::path::Path, error: impl Into<fpx::Error>) -> String {
    fpx::Failure::new(action, path, error).message()
}

/// Loads an `.fpx` artifact (its compiled kernels) or an `.onnx` model (the reference path,
/// quantized in memory when `weights` names a scheme).
#[pyfunction]
#[pyo3(signature = (path, *, weights = None, activations = "f32", group_size = None, scale_search = false, scale_pow2 = false,
    embeddings = Some("int8"), lorc = None, lorc_factors = "f16"))]
// One argument per Python keyword.
#[allow(clippy::too_many_arguments)]
fn load(
    py: Python<'_>,
    path: PathBuf,
    weights: Option<&str>,
    activations: &str,
    group_size: Option<usize>,
    scale_search: bool,
    scale_pow2: bool,
    embeddings: Option<&str>,
    lorc: Option<usize>,
    lorc_factors: &str,
) -> PyResult<model::Model> {
    let kwargs = options::QuantKwargs {
        weights,
        activations,
        group_size,
        scale_search,
        scale_pow2,
        embeddings,
        fused_epilogues: true,
        lorc,
        lorc_factors,
    };
    let options = kwargs.options(fpx::WeightScheme::None)?;
    let runnable =
        py.detach(|| fpx::open_with(&path, &options).map_err(|e| failed(fpx::Action::LoadModel, &path, e))).map_err(FpxError::new_err)?;
    Ok(model::Model { runnable: std::sync::Arc::new(runnable), path })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FpxError", m.py().get_type::<FpxError>())?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(compile::compile, m)?)?;
    m.add_function(wrap_pyfunction!(report::report, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::TensorInfo>()?;
    m.add_class::<compile::CompileSummary>()?;
    m.add_class::<generate::Generator>()?;
    m.add_class::<generate::Generation>()?;
    Ok(())
}
