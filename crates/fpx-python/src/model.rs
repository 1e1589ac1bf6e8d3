//! `fpx.Model`: a loaded `.fpx` artifact (or an `.onnx` model on the reference path) that runs
//! NumPy arrays, with the GIL released while it runs, from any number of threads.

use crate::arrays::{numpy_name, tensor_from_py, tensor_to_py};
use crate::{failed, FpxError};
use fpx::ir::{Dim, Tensor, Value};
use fpx::{Action, Runnable};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::path::PathBuf;
use std::sync::Arc;

/// A graph input or output: its name, NumPy dtype and shape, each dimension an int (fixed), a
/// str (symbolic: equal names are equal sizes) or None (unknown).
#[pyclass(frozen, module = "fpx", get_all)]
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The value's name in the graph.
    pub name: String,
    /// NumPy dtype name ("float32", "int64", ...).
    pub dtype: String,
    /// One entry per dimension, None for a dimension nothing is known about (the whole shape
    /// None when even the rank is unknown).
    pub shape: Option<Vec<Option<DimValue>>>,
}

/// A known dimension as Python sees it: an int or a str.
#[derive(Debug, Clone, IntoPyObject)]
pub enum DimValue {
    /// A fixed size.
    Fixed(usize),
    /// A symbolic size.
    Symbol(String),
}

#[pymethods]
impl TensorInfo {
    fn __repr__(&self) -> String {
        let shape = match &self.shape {
            None => "None".to_string(),
            Some(dims) => {
                let parts: Vec<String> = dims
                    .iter()
                    .map(|d| match d {
                        Some(DimValue::Fixed(n)) => n.to_string(),
                        Some(DimValue::Symbol(s)) => format!("'{s}'"),
                        None => "None".to_string(),
                    })
                    .collect();
                if parts.len() == 1 {
                    format!("({},)", parts[0])
                } else {
                    format!("({})", parts.join(", "))
                }
            }
        };
        format!("TensorInfo(name='{}', dtype='{}', shape={shape})", self.name, self.dtype)
    }
}

fn infos(values: Vec<&Value>) -> Vec<TensorInfo> {
    values
        .into_iter()
        .map(|v| TensorInfo {
            name: v.name.clone(),
            dtype: v.ty.as_ref().map_or("unknown", |t| numpy_name(t.dtype)).to_string(),
            shape: v.ty.as_ref().and_then(|t| t.shape.as_ref()).map(|dims| {
                dims.iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Some(DimValue::Fixed(*n)),
                        Dim::Sym(s) => Some(DimValue::Symbol(s.clone())),
                        Dim::Unknown => None,
                    })
                    .collect()
            }),
        })
        .collect()
}

/// A model ready to run: `fpx.load("model.fpx")` (compiled kernels) or `fpx.load("model.onnx")`
/// (the reference path). Runs release the GIL; one model serves any number of threads.
#[pyclass(frozen, module = "fpx")]
pub struct Model {
    pub(crate) runnable: Arc<Runnable>,
    pub(crate) path: PathBuf,
}

impl Model {
    /// Converts `feeds` (a mapping of input name to array-like) into named tensors.
    pub(crate) fn feeds(feeds: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Tensor)>> {
        let mapping = feeds.cast::<PyDict>().map_err(|_| {
            FpxError::new_err(format!(
                "inputs are a dict of input name to array, e.g. {{'input_ids': array}}; got {}",
                feeds.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        let mut out = Vec::with_capacity(mapping.len());
        for (key, value) in mapping.iter() {
            let name: String = key.extract().map_err(|_| FpxError::new_err(format!("input names are str; got {key}")))?;
            let tensor = tensor_from_py(&name, &value)?;
            out.push((name, tensor));
        }
        Ok(out)
    }

    /// Runs on tensors with the GIL released; the error names the model's file as the CLI does.
    pub(crate) fn run_tensors(&self, py: Python<'_>, feeds: Vec<(String, Tensor)>) -> PyResult<Vec<(String, Tensor)>> {
        let runnable = &self.runnable;
        let path = &self.path;
        py.detach(|| runnable.run(feeds).map_err(|e| failed(Action::RunModel, path, e))).map_err(FpxError::new_err)
    }
}

#[pymethods]
impl Model {
    /// Runs the model. `feeds` maps each input's name to an array (NumPy or array-like, of the
    /// input's dtype); returns a dict of output name to NumPy array, in the graph's output order.
    fn run<'py>(&self, py: Python<'py>, feeds: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let tensors = Model::feeds(feeds)?;
        let outputs = self.run_tensors(py, tensors)?;
        let dict = PyDict::new(py);
        for (name, tensor) in outputs {
            let array = tensor_to_py(py, &name, tensor)?;
            dict.set_item(name, array)?;
        }
        Ok(dict)
    }

    /// The inputs a run takes (graph inputs that are not constants).
    #[getter]
    fn inputs(&self) -> Vec<TensorInfo> {
        infos(self.runnable.run_inputs())
    }

    /// The graph outputs a run returns, in order.
    #[getter]
    fn outputs(&self) -> Vec<TensorInfo> {
        infos(self.runnable.run_outputs())
    }

    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// "artifact" for a compiled `.fpx`, "onnx" for a model on the reference path.
    #[getter]
    fn kind(&self) -> &'static str {
        match *self.runnable {
            Runnable::Onnx(_) => "onnx",
            Runnable::Artifact(_) => "artifact",
        }
    }

    /// The CPU level whose code runs (e.g. "x86-64-v3"); None on the reference path.
    #[getter]
    fn cpu_target(&self) -> Option<String> {
        self.runnable.native_target().map(str::to_string)
    }

    /// Times `iters` runs on these inputs from Rust, without Python in the loop: the Rust API's
    /// own time, which the Python overhead benchmark compares `run` with. Returns seconds per run.
    #[pyo3(signature = (feeds, iters = 100))]
    fn _time_rust_run(&self, py: Python<'_>, feeds: &Bound<'_, PyAny>, iters: usize) -> PyResult<f64> {
        let tensors = Model::feeds(feeds)?;
        let runnable = &self.runnable;
        let path = &self.path;
        py.detach(|| {
            let start = std::time::Instant::now();
            for _ in 0..iters.max(1) {
                runnable.run(tensors.clone()).map_err(|e| failed(Action::RunModel, path, e))?;
            }
            Ok::<f64, String>(start.elapsed().as_secs_f64() / iters.max(1) as f64)
        })
        .map_err(FpxError::new_err)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let names = |v: Vec<TensorInfo>| PyTuple::new(py, v.into_iter().map(|i| i.name)).map(|t| t.to_string());
        Ok(format!(
            "fpx.Model('{}', kind='{}', inputs={}, outputs={})",
            self.path.display(),
            self.kind(),
            names(self.inputs())?,
            names(self.outputs())?
        ))
    }
}
