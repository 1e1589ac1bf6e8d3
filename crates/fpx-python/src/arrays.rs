//! NumPy arrays in and out of fpx tensors. An output's buffer is handed to NumPy as it is (no
//! copy); an input is copied once into a tensor the runtime owns (any strides, any array-like):
//! the executor takes its inputs by value and may compute in place in one whose value no later
//! node reads, which must never write into the caller's array.

use fpx::ir::{DType, Tensor};
use half::{bf16, f16};
use ndarray::ArrayD;
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::FpxError;

/// The NumPy name of an element type ("float32"); bfloat16 is ml_dtypes' name.
pub fn numpy_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I8 => "int8",
        DType::I16 => "int16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::U8 => "uint8",
        DType::U16 => "uint16",
        DType::U32 => "uint32",
        DType::U64 => "uint64",
        DType::Bool => "bool",
    }
}

/// The tensor of an input value: a NumPy array of a type fpx runs, or anything `numpy.asarray`
/// takes (a list of Python floats becomes float64, as NumPy says).
pub fn tensor_from_py(name: &str, value: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let py = value.py();
    let array = match value.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let converted = py.import("numpy")?.call_method1("asarray", (value,)).map_err(|e| {
                FpxError::new_err(format!("input '{name}' is not an array and NumPy cannot make one of it: {}", e.value(py)))
            })?;
            converted.cast_into::<PyUntypedArray>()?
        }
    };
    let descr = array.dtype();
    macro_rules! try_types {
        ($($t:ty),*) => {
            $(if descr.is_equiv_to(&numpy::dtype::<$t>(py)) {
                let typed = array.cast::<PyArrayDyn<$t>>()?;
                return Ok(Tensor::from(typed.readonly().as_array().to_owned()));
            })*
        };
    }
    try_types!(f32, f64, f16, i8, i16, i32, i64, u8, u16, u32, u64, bool);
    // bfloat16 exists only when ml_dtypes is installed: compare names before asking NumPy for it.
    if descr.to_string() == "bfloat16" {
        let typed = array.cast::<PyArrayDyn<bf16>>()?;
        return Ok(Tensor::from(typed.readonly().as_array().to_owned()));
    }
    Err(FpxError::new_err(format!(
        "input '{name}' has NumPy dtype {descr}, which fpx does not run; use one of float32, float64, float16, bfloat16, int8 to int64, uint8 to uint64 or bool"
    )))
}

fn owned<'py, T: Element>(py: Python<'py>, a: ArrayD<T>) -> Bound<'py, PyAny> {
    PyArrayDyn::from_owned_array(py, a).into_any()
}

/// The NumPy array of an output tensor, its buffer handed over without a copy.
pub fn tensor_to_py<'py>(py: Python<'py>, name: &str, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    Ok(match tensor {
        Tensor::F32(a) => owned(py, a),
        Tensor::F64(a) => owned(py, a),
        Tensor::F16(a) => owned(py, a),
        Tensor::BF16(a) => {
            // NumPy has no bfloat16 of its own; ml_dtypes provides the one the ecosystem uses.
            py.import("ml_dtypes").map_err(|_| {
                FpxError::new_err(format!(
                    "output '{name}' is bfloat16, which NumPy represents only with the ml_dtypes package: pip install ml_dtypes"
                ))
            })?;
            owned(py, a)
        }
        Tensor::I8(a) => owned(py, a),
        Tensor::I16(a) => owned(py, a),
        Tensor::I32(a) => owned(py, a),
        Tensor::I64(a) => owned(py, a),
        Tensor::U8(a) => owned(py, a),
        Tensor::U16(a) => owned(py, a),
        Tensor::U32(a) => owned(py, a),
        Tensor::U64(a) => owned(py, a),
        Tensor::Bool(a) => owned(py, a),
    })
}
