//! `fpx.report`: the accuracy table of `fpx report` as Python data (dicts and lists), to be
//! asserted on, plotted or stored by an evaluation pipeline.

use crate::model::Model;
use crate::{error, failed, FpxError};
use fpx::report::{AccuracyReport, ReportOptions};
use fpx::Action;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;

fn to_dict<'py>(py: Python<'py>, r: &AccuracyReport) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("model", &r.model)?;
    out.set_item("fp32_ms", r.fp32_ms)?;
    let schemes = PyList::empty(py);
    for s in &r.schemes {
        let d = PyDict::new(py);
        d.set_item("label", &s.label)?;
        d.set_item("weight_bytes_in", s.weight_bytes_in)?;
        d.set_item("weight_bytes_out", s.weight_bytes_out)?;
        d.set_item("bytes_per_param", s.bytes_per_param())?;
        d.set_item("run_ms", s.run_ms)?;
        let outputs = PyList::empty(py);
        for o in &s.outputs {
            let e = PyDict::new(py);
            e.set_item("name", &o.name)?;
            e.set_item("max_abs", o.max_abs)?;
            e.set_item("rel", o.rel)?;
            e.set_item("cosine", o.cosine)?;
            e.set_item("mean_row_cosine", o.mean_row_cosine)?;
            e.set_item("pooled_cosine", o.pooled_cosine)?;
            outputs.append(e)?;
        }
        d.set_item("outputs", outputs)?;
        let layers = PyList::empty(py);
        for l in &s.layers {
            let e = PyDict::new(py);
            e.set_item("node", &l.node)?;
            e.set_item("op", &l.op)?;
            e.set_item("weight", &l.weight)?;
            e.set_item("k", l.k)?;
            e.set_item("n", l.n)?;
            e.set_item("format", l.format.name())?;
            e.set_item("rel_rmse", l.rel_rmse)?;
            layers.append(e)?;
        }
        d.set_item("layers", layers)?;
        schemes.append(d)?;
    }
    out.set_item("schemes", schemes)?;
    Ok(out)
}

/// Runs the ONNX model `model` in FP32 and under each weight scheme on `inputs` (a dict of input
/// name to array) and returns how far each drifts: `{"model", "fp32_ms", "schemes": [{"label",
/// "weight_bytes_in", "weight_bytes_out", "bytes_per_param", "run_ms", "outputs": [{"name", "max_abs", "rel",
/// "cosine", "mean_row_cosine", "pooled_cosine"}], "layers": [{"node", "op", "weight", "k", "n",
/// "format", "rel_rmse"}]}]}`. `schemes` as `fpx report --schemes` (e.g. "fp6-e3m2,int4:g128,fp6-e2m3:a8");
/// `pool_mask` names a `[batch, seq]` input to mean-pool `[batch, seq, dim]` outputs over.
#[pyfunction]
#[pyo3(signature = (model, inputs, *, schemes = fpx::report::DEFAULT_SCHEMES, group_size = None, scale_search = false, scale_pow2 = false,
    pool_mask = None))]
// One argument per Python keyword.
#[allow(clippy::too_many_arguments)]
pub fn report<'py>(
    py: Python<'py>,
    model: PathBuf,
    inputs: &Bound<'py, PyAny>,
    schemes: &str,
    group_size: Option<usize>,
    scale_search: bool,
    scale_pow2: bool,
    pool_mask: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let feeds = Model::feeds(inputs)?;
    let schemes = fpx::report::parse_schemes(schemes, group_size, scale_search, scale_pow2).map_err(|e| error(&e))?;
    let options = ReportOptions { schemes, histogram_layer: None, pool_mask };
    let report = py
        .detach(|| fpx::report::accuracy_report(&model, feeds, &options).map_err(|e| failed(Action::Report, &model, e)))
        .map_err(FpxError::new_err)?;
    to_dict(py, &report)
}
