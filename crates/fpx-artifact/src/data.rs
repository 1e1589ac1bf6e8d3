//! Tensor data ⇄ raw little-endian bytes, and element-type codes.

use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{DType, Tensor};

/// The manifest's code for an element type (the ONNX `TensorProto.DataType` code).
pub(crate) fn dtype_code(dtype: DType) -> i32 {
    // ONNX codes are all below 32.
    fpx_ir::onnx_code(dtype) as i32
}

/// The element type for a manifest code, if it is one fpx knows.
pub(crate) fn dtype_from_code(code: i32) -> Option<DType> {
    fpx_ir::onnx_dtype(i64::from(code))
}

/// An element type with a fixed little-endian byte encoding.
trait LeElem: Copy {
    /// Bytes per element.
    const SIZE: usize;
    /// Appends the element's bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Reads an element from exactly [`Self::SIZE`] bytes; `None` if they are not a valid element.
    fn get(b: &[u8]) -> Option<Self>;
}

macro_rules! le_elem {
    ($($t:ty),*) => {$(
        impl LeElem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(b.try_into().ok()?))
            }
        }
    )*};
}
le_elem!(f32, f64, f16, bf16, i8, i16, i32, i64, u8, u16, u32, u64);

impl LeElem for bool {
    const SIZE: usize = 1;
    fn put(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn get(b: &[u8]) -> Option<Self> {
        match b {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

/// Bytes handed to the sink at a time when streaming a tensor.
const CHUNK: usize = 1 << 16;

fn stream<T: LeElem, E>(a: &ArrayD<T>, sink: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    let mut buf = Vec::with_capacity(CHUNK.min(a.len().saturating_mul(T::SIZE)));
    // `iter` walks the logical (row-major) order whatever the memory layout.
    for &x in a.iter() {
        x.put(&mut buf);
        if buf.len() >= CHUNK {
            sink(&buf)?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        sink(&buf)?;
    }
    Ok(())
}

/// Hands the tensor's elements, as raw little-endian bytes in row-major order, to `sink` in chunks.
pub(crate) fn stream_tensor<E>(t: &Tensor, sink: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    fpx_ir::dispatch!(t, a => stream(a, sink))
}

/// The tensor's elements as raw little-endian bytes in row-major order.
pub(crate) fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream_tensor::<()>(t, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    out
}

fn decode<T: LeElem>(shape: &[usize], bytes: &[u8]) -> Result<ArrayD<T>, String> {
    let v =
        bytes.chunks_exact(T::SIZE).map(T::get).collect::<Option<Vec<T>>>().ok_or_else(|| "an element is not a valid value".to_string())?;
    if v.len() * T::SIZE != bytes.len() {
        return Err(format!("{} bytes is not a whole number of {}-byte elements", bytes.len(), T::SIZE));
    }
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("the elements do not fit the shape {shape:?}: {e}"))
}

/// Rebuilds a tensor from raw little-endian bytes (the caller has checked the length).
pub(crate) fn tensor_from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
    Ok(match dtype {
        DType::F32 => Tensor::from(decode::<f32>(shape, bytes)?),
        DType::F64 => Tensor::from(decode::<f64>(shape, bytes)?),
        DType::F16 => Tensor::from(decode::<f16>(shape, bytes)?),
        DType::BF16 => Tensor::from(decode::<bf16>(shape, bytes)?),
        DType::I8 => Tensor::from(decode::<i8>(shape, bytes)?),
        DType::I16 => Tensor::from(decode::<i16>(shape, bytes)?),
        DType::I32 => Tensor::from(decode::<i32>(shape, bytes)?),
        DType::I64 => Tensor::from(decode::<i64>(shape, bytes)?),
        DType::U8 => Tensor::from(decode::<u8>(shape, bytes)?),
        DType::U16 => Tensor::from(decode::<u16>(shape, bytes)?),
        DType::U32 => Tensor::from(decode::<u32>(shape, bytes)?),
        DType::U64 => Tensor::from(decode::<u64>(shape, bytes)?),
        DType::Bool => Tensor::from(decode::<bool>(shape, bytes)?),
    })
}

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
