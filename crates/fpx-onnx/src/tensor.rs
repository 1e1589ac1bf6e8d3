//! `TensorProto` ⇄ [`Tensor`]: every numeric element type, from `raw_data` (little-endian),
//! the typed fields, or external data.

use crate::external::{read_external, ExternalFiles};
use crate::ImportError;
use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::stored::SPILL_MIN_BYTES;
use fpx_ir::StoredTensor;
use fpx_ir::{onnx_code, onnx_dtype, DType, Tensor};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{Message, TensorProto};
use protobuf::Enum;
use std::path::Path;

/// Converts an ONNX `TensorProto` into a [`Tensor`]. External data is resolved inside
/// `base_dir` (the model's folder); with `None`, a tensor with external data is an error.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, ImportError> {
    convert(t, &t.name, base_dir)
}

/// Reads a file holding one serialized `TensorProto` (as the ONNX backend tests'
/// `test_data_set_0/input_0.pb`) and returns its name and data.
pub fn load_tensor_pb(path: &Path) -> Result<(String, Tensor), ImportError> {
    let bytes = crate::read_file(path)?;
    let t = TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| ImportError::Parse { what: path.display().to_string(), message: format!("not a valid ONNX TensorProto: {e}") })?;
    let name = if t.name.is_empty() { path.display().to_string() } else { t.name.clone() };
    let tensor = convert(&t, &name, path.parent())?;
    Ok((t.name, tensor))
}

/// Converts a [`Tensor`] into a `TensorProto` named `name`, its data in `raw_data` (little-endian).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut p = TensorProto::new();
    p.name = name.to_string();
    p.dims = t.shape().iter().map(|&d| d as i64).collect();
    p.data_type = onnx_code(t.dtype()) as i32;
    p.raw_data = match t {
        Tensor::F32(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::F64(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::F16(a) => encode(a, |x| x.to_bits().to_le_bytes()),
        Tensor::BF16(a) => encode(a, |x| x.to_bits().to_le_bytes()),
        Tensor::I8(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::I16(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::I32(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::I64(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::U8(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::U16(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::U32(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::U64(a) => encode(a, |x| x.to_le_bytes()),
        Tensor::Bool(a) => encode(a, |x| [*x as u8]),
    };
    p
}

fn encode<T, const N: usize>(a: &ArrayD<T>, f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() * N);
    for x in a.iter() {
        out.extend_from_slice(&f(x));
    }
    out
}

/// A readable name for an ONNX element type code.
pub(crate) fn dtype_name(code: i64) -> String {
    match i32::try_from(code).ok().and_then(DataType::from_i32) {
        Some(d) => format!("{d:?}"),
        // Types newer than the generated protobuf code (ONNX IR 11+).
        None => match code {
            23 => "FLOAT4E2M1".into(),
            24 => "FLOAT8E8M0".into(),
            25 => "UINT2".into(),
            26 => "INT2".into(),
            _ => format!("code {code}"),
        },
    }
}

/// An initializer as imported: in memory, or (large external data) left in its file.
pub(crate) enum Initializer {
    /// Read into memory.
    Loaded(Tensor),
    /// Kept in the external data file until a pass reads it.
    Stored(StoredTensor),
}

/// Imports an initializer: external data of [`SPILL_MIN_BYTES`] or more stays in its file
/// (checked, not read), everything else is read as [`convert`] reads it.
pub(crate) fn initializer(t: &TensorProto, base_dir: Option<&Path>, files: &mut ExternalFiles) -> Result<Initializer, ImportError> {
    if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) && t.segment.is_none() {
        let dtype = onnx_dtype(i64::from(t.data_type));
        let shape: Option<Vec<usize>> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        if let (Some(dtype), Some(shape)) = (dtype, shape) {
            let bytes = shape.iter().try_fold(dtype.size_bytes(), |n, &d| n.checked_mul(d));
            if let Some(bytes) = bytes.filter(|&b| b >= SPILL_MIN_BYTES) {
                return files.stored(t, &t.name, base_dir, dtype, &shape, bytes).map(Initializer::Stored);
            }
        }
    }
    convert(t, &t.name, base_dir).map(Initializer::Loaded)
}

/// `tensor_from_proto` with the name used in errors given separately (attribute tensors are often unnamed).
pub(crate) fn convert(t: &TensorProto, name: &str, base_dir: Option<&Path>) -> Result<Tensor, ImportError> {
    let err = |message: String| ImportError::Tensor { name: name.to_string(), message };
    let dtype = onnx_dtype(i64::from(t.data_type))
        .ok_or_else(|| err(format!("element type {} is not supported", dtype_name(i64::from(t.data_type)))))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| err(format!("negative dimension {d} in dims {:?}", t.dims)))?;
        count = count.checked_mul(d).ok_or_else(|| err(format!("dims {:?} have too many elements", t.dims)))?;
        shape.push(d);
    }
    let bytes = count.checked_mul(dtype.size_bytes()).ok_or_else(|| err(format!("dims {:?} have too many elements", t.dims)))?;
    if t.segment.is_some() {
        return Err(err("segmented tensors are not supported".into()));
    }
    match t.data_location.enum_value() {
        Ok(DataLocation::EXTERNAL) => {
            let raw = read_external(t, name, base_dir, bytes)?;
            return from_raw(dtype, &shape, &raw).map_err(err);
        }
        Ok(DataLocation::DEFAULT) => {}
        Err(code) => return Err(err(format!("unknown data_location {code}"))),
    }
    if !t.raw_data.is_empty() {
        if t.raw_data.len() != bytes {
            return Err(err(format!(
                "raw_data has {} bytes, but {} {dtype} elements of dims {:?} need {bytes}",
                t.raw_data.len(),
                count,
                t.dims
            )));
        }
        return from_raw(dtype, &shape, &t.raw_data).map_err(err);
    }
    from_typed(t, dtype, &shape, count).map_err(err)
}

fn array<T: fpx_ir::Elem>(shape: &[usize], v: Vec<T>) -> Result<Tensor, String> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map(Tensor::from).map_err(|e| format!("data does not fit dims {shape:?}: {e}"))
}

fn decode<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// Builds a tensor from little-endian bytes whose length the caller has checked.
fn from_raw(dtype: DType, shape: &[usize], b: &[u8]) -> Result<Tensor, String> {
    match dtype {
        DType::F32 => array(shape, decode(b, f32::from_le_bytes)),
        DType::F64 => array(shape, decode(b, f64::from_le_bytes)),
        DType::F16 => array(shape, decode(b, |x| f16::from_bits(u16::from_le_bytes(x)))),
        DType::BF16 => array(shape, decode(b, |x| bf16::from_bits(u16::from_le_bytes(x)))),
        DType::I8 => array(shape, decode(b, i8::from_le_bytes)),
        DType::I16 => array(shape, decode(b, i16::from_le_bytes)),
        DType::I32 => array(shape, decode(b, i32::from_le_bytes)),
        DType::I64 => array(shape, decode(b, i64::from_le_bytes)),
        DType::U8 => array(shape, b.to_vec()),
        DType::U16 => array(shape, decode(b, u16::from_le_bytes)),
        DType::U32 => array(shape, decode(b, u32::from_le_bytes)),
        DType::U64 => array(shape, decode(b, u64::from_le_bytes)),
        DType::Bool => array(shape, b.iter().map(|&x| x != 0).collect()),
    }
}

/// Takes `count` values from the typed field `field` (named `what` in errors).
fn take<S: Copy, T>(field: &[S], what: &str, count: usize, f: impl Fn(S) -> T) -> Result<Vec<T>, String> {
    if field.len() != count {
        return Err(format!("{what} has {} values, but the dims need {count}", field.len()));
    }
    Ok(field.iter().map(|&x| f(x)).collect())
}

/// Builds a tensor from the typed field that ONNX uses for `dtype`.
fn from_typed(t: &TensorProto, dtype: DType, shape: &[usize], n: usize) -> Result<Tensor, String> {
    let i32s = &t.int32_data;
    match dtype {
        DType::F32 => array(shape, take(&t.float_data, "float_data", n, |x| x)?),
        DType::F64 => array(shape, take(&t.double_data, "double_data", n, |x| x)?),
        DType::F16 => array(shape, take(i32s, "int32_data", n, |x| f16::from_bits(x as u16))?),
        DType::BF16 => array(shape, take(i32s, "int32_data", n, |x| bf16::from_bits(x as u16))?),
        DType::I8 => array(shape, take(i32s, "int32_data", n, |x| x as i8)?),
        DType::I16 => array(shape, take(i32s, "int32_data", n, |x| x as i16)?),
        DType::I32 => array(shape, take(i32s, "int32_data", n, |x| x)?),
        DType::I64 => array(shape, take(&t.int64_data, "int64_data", n, |x| x)?),
        DType::U8 => array(shape, take(i32s, "int32_data", n, |x| x as u8)?),
        DType::U16 => array(shape, take(i32s, "int32_data", n, |x| x as u16)?),
        DType::U32 => array(shape, take(&t.uint64_data, "uint64_data", n, |x| x as u32)?),
        DType::U64 => array(shape, take(&t.uint64_data, "uint64_data", n, |x| x)?),
        DType::Bool => array(shape, take(i32s, "int32_data", n, |x| x != 0)?),
    }
}
