//! Element-type codes and stored shapes (the bytes themselves: `fpx_ir::le_bytes`).

use fpx_ir::DType;

/// The manifest's code for an element type (the ONNX `TensorProto.DataType` code).
pub(crate) fn dtype_code(dtype: DType) -> i32 {
    // ONNX codes are all below 32.
    fpx_ir::onnx_code(dtype) as i32
}

/// The element type for a manifest code, if it is one fpx knows.
pub(crate) fn dtype_from_code(code: i32) -> Option<DType> {
    fpx_ir::onnx_dtype(i64::from(code))
}

pub(crate) use fpx_ir::le_bytes::{stream_tensor, tensor_bytes, tensor_from_bytes};

/// Checks a stored shape against the byte length of its data: every dim fits `usize`, and the
/// element count times the element size equals `len` (checked arithmetic throughout).
/// Returns the shape as sizes.
pub(crate) fn checked_shape(dtype: DType, shape: &[u64], len: u64) -> Result<Vec<usize>, String> {
    let dims =
        shape.iter().map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large"))).collect::<Result<Vec<_>, _>>()?;
    let count =
        shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or_else(|| format!("the element count of shape {shape:?} overflows"))?;
    let bytes = count.checked_mul(dtype.size_bytes() as u64).ok_or_else(|| format!("the byte size of shape {shape:?} overflows"))?;
    if bytes != len {
        return Err(format!("{count} {dtype} elements of shape {shape:?} take {bytes} bytes, but the data is {len} bytes"));
    }
    Ok(dims)
}
