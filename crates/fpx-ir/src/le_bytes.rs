//! Tensor data ⇄ raw little-endian bytes in row-major order: the one encoding fpx stores
//! tensors in (ONNX `raw_data` and external data, the artifact's sections, the compile's
//! spill file).

use crate::{DType, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// An element type with a fixed little-endian byte encoding.
trait LeElem: Copy + 'static {
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
    // A row-major array of bytes is its own encoding: hand it over without copying.
    if T::SIZE == 1 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<u8>() {
        if let Some(s) = a.as_slice() {
            // SAFETY: T is u8 (checked above), so the slice's memory is bytes.
            let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len()) };
            return bytes.chunks(CHUNK).try_for_each(sink);
        }
    }
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
pub fn stream_tensor<E>(t: &Tensor, sink: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    crate::dispatch!(t, a => stream(a, sink))
}

/// The tensor's elements as raw little-endian bytes in row-major order.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * t.dtype().size_bytes());
    let _ = stream_tensor::<()>(t, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    out
}

fn decode<T: LeElem>(shape: &[usize], bytes: &[u8]) -> Result<ArrayD<T>, String> {
    if !bytes.len().is_multiple_of(T::SIZE) {
        return Err(format!("{} bytes is not a whole number of {}-byte elements", bytes.len(), T::SIZE));
    }
    let v =
        bytes.chunks_exact(T::SIZE).map(T::get).collect::<Option<Vec<T>>>().ok_or_else(|| "an element is not a valid value".to_string())?;
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("the elements do not fit the shape {shape:?}: {e}"))
}

/// Rebuilds a tensor of `dtype` and `shape` from raw little-endian bytes; an error says why
/// they do not form one (a length that does not fit the shape, a bool byte other than 0 or 1).
pub fn tensor_from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
    Ok(match dtype {
        DType::F32 => Tensor::from(decode::<f32>(shape, bytes)?),
        DType::F64 => Tensor::from(decode::<f64>(shape, bytes)?),
        DType::F16 => Tensor::from(decode::<f16>(shape, bytes)?),
        DType::BF16 => Tensor::from(decode::<bf16>(shape, bytes)?),
        DType::I8 => Tensor::from(decode::<i8>(shape, bytes)?),
        DType::I16 => Tensor::from(decode::<i16>(shape, bytes)?),
        DType::I32 => Tensor::from(decode::<i32>(shape, bytes)?),
        DType::I64 => Tensor::from(decode::<i64>(shape, bytes)?),
        // Bytes are their own encoding: one copy, no per-element decoding.
        DType::U8 => Tensor::from(
            ArrayD::from_shape_vec(IxDyn(shape), bytes.to_vec())
                .map_err(|e| format!("the elements do not fit the shape {shape:?}: {e}"))?,
        ),
        DType::U16 => Tensor::from(decode::<u16>(shape, bytes)?),
        DType::U32 => Tensor::from(decode::<u32>(shape, bytes)?),
        DType::U64 => Tensor::from(decode::<u64>(shape, bytes)?),
        DType::Bool => Tensor::from(decode::<bool>(shape, bytes)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_bad_bytes_are_named() {
        for dtype in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::U8,
            DType::U16,
            DType::U32,
            DType::U64,
            DType::Bool,
        ] {
            let t = Tensor::from(ndarray::ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0]).unwrap()).cast(dtype);
            let bytes = tensor_bytes(&t);
            assert_eq!(bytes.len(), 6 * dtype.size_bytes());
            assert_eq!(tensor_from_bytes(dtype, &[2, 3], &bytes).unwrap(), t, "{dtype}");
            assert!(tensor_from_bytes(dtype, &[2, 3], &bytes[1..]).is_err(), "{dtype}");
        }
        assert!(tensor_from_bytes(DType::Bool, &[1], &[2]).unwrap_err().contains("not a valid value"));
    }
}
