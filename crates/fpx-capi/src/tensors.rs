//! Element types as ONNX numbers them, and tensors in and out of C buffers: an input is copied
//! from the caller's bytes (any alignment) into the tensor the runtime owns; an output is copied
//! into the caller's buffer.

use crate::status::Failure;
use fpx::ir::{dispatch, DType, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// An element type: ONNX's `TensorProto.DataType` number (`FPX_DTYPE_FLOAT` = 1, ...).
pub type FpxDType = i32;
/// 32-bit float.
pub const FPX_DTYPE_FLOAT: FpxDType = 1;
/// Unsigned 8-bit integer.
pub const FPX_DTYPE_UINT8: FpxDType = 2;
/// Signed 8-bit integer.
pub const FPX_DTYPE_INT8: FpxDType = 3;
/// Unsigned 16-bit integer.
pub const FPX_DTYPE_UINT16: FpxDType = 4;
/// Signed 16-bit integer.
pub const FPX_DTYPE_INT16: FpxDType = 5;
/// Signed 32-bit integer.
pub const FPX_DTYPE_INT32: FpxDType = 6;
/// Signed 64-bit integer.
pub const FPX_DTYPE_INT64: FpxDType = 7;
/// Boolean, one byte each, 0 or 1.
pub const FPX_DTYPE_BOOL: FpxDType = 9;
/// IEEE binary16, as its 16 bits.
pub const FPX_DTYPE_FLOAT16: FpxDType = 10;
/// 64-bit float.
pub const FPX_DTYPE_DOUBLE: FpxDType = 11;
/// Unsigned 32-bit integer.
pub const FPX_DTYPE_UINT32: FpxDType = 12;
/// Unsigned 64-bit integer.
pub const FPX_DTYPE_UINT64: FpxDType = 13;
/// bfloat16, as its 16 bits.
pub const FPX_DTYPE_BFLOAT16: FpxDType = 16;

/// The code of an element type.
pub(crate) fn dtype_code(d: DType) -> FpxDType {
    match d {
        DType::F32 => FPX_DTYPE_FLOAT,
        DType::U8 => FPX_DTYPE_UINT8,
        DType::I8 => FPX_DTYPE_INT8,
        DType::U16 => FPX_DTYPE_UINT16,
        DType::I16 => FPX_DTYPE_INT16,
        DType::I32 => FPX_DTYPE_INT32,
        DType::I64 => FPX_DTYPE_INT64,
        DType::Bool => FPX_DTYPE_BOOL,
        DType::F16 => FPX_DTYPE_FLOAT16,
        DType::F64 => FPX_DTYPE_DOUBLE,
        DType::U32 => FPX_DTYPE_UINT32,
        DType::U64 => FPX_DTYPE_UINT64,
        DType::BF16 => FPX_DTYPE_BFLOAT16,
    }
}

/// The element type of a code, if it is one.
pub(crate) fn dtype_of(code: FpxDType) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| dtype_code(d) == code)
}

/// Copies `bytes` (exactly `shape`'s elements of `T`, any alignment) into an array.
fn array_from_bytes<T: Copy + Default>(shape: &[usize], bytes: &[u8]) -> ArrayD<T> {
    let count: usize = shape.iter().product();
    let mut values = vec![T::default(); count];
    // SAFETY: `values` holds `count` elements of plain-data `T` (every bit pattern valid: the
    // caller only instantiates numbers and 16-bit floats), `bytes` holds exactly
    // `count * size_of::<T>()` bytes (checked by the caller), and the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), values.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(values.as_slice())) };
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("count matches the shape")
}

/// The tensor of an input: `bytes` must hold exactly the shape's elements of `dtype`.
pub(crate) fn tensor_from_bytes(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, Failure> {
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let expected = count.and_then(|n| n.checked_mul(dtype.size_bytes()));
    if expected != Some(bytes.len()) {
        return Err(Failure::invalid(format!(
            "input '{name}': byte_size {} does not match {} elements of {} for shape {shape:?}",
            bytes.len(),
            count.map_or("too many".to_string(), |n| n.to_string()),
            dtype.name()
        )));
    }
    Ok(match dtype {
        DType::F32 => Tensor::F32(array_from_bytes(shape, bytes)),
        DType::F64 => Tensor::F64(array_from_bytes(shape, bytes)),
        DType::F16 => Tensor::F16(array_from_bytes::<u16>(shape, bytes).mapv(f16::from_bits)),
        DType::BF16 => Tensor::BF16(array_from_bytes::<u16>(shape, bytes).mapv(bf16::from_bits)),
        DType::I8 => Tensor::I8(array_from_bytes(shape, bytes)),
        DType::I16 => Tensor::I16(array_from_bytes(shape, bytes)),
        DType::I32 => Tensor::I32(array_from_bytes(shape, bytes)),
        DType::I64 => Tensor::I64(array_from_bytes(shape, bytes)),
        DType::U8 => Tensor::U8(array_from_bytes(shape, bytes)),
        DType::U16 => Tensor::U16(array_from_bytes(shape, bytes)),
        DType::U32 => Tensor::U32(array_from_bytes(shape, bytes)),
        DType::U64 => Tensor::U64(array_from_bytes(shape, bytes)),
        DType::Bool => {
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                return Err(Failure::invalid(format!("input '{name}': bool element {i} is {}, not 0 or 1", bytes[i])));
            }
            Tensor::Bool(array_from_bytes::<u8>(shape, bytes).mapv(|b| b != 0))
        }
    })
}

/// Bytes a tensor's elements take in row-major order (bools one byte, 16-bit floats two).
pub(crate) fn byte_size(t: &Tensor) -> usize {
    t.len() * t.dtype().size_bytes()
}

/// Writes a tensor's elements in row-major order into `out`, which holds [`byte_size`] bytes
/// (any alignment): one copy of a contiguous tensor, element by element otherwise.
pub(crate) fn write_bytes(t: &Tensor, out: &mut [u8]) {
    fn copy<T: Copy>(a: &ArrayD<T>, out: &mut [u8]) {
        assert_eq!(out.len(), a.len() * std::mem::size_of::<T>(), "the caller sized the buffer");
        match a.as_slice() {
            // SAFETY: `values` is `a.len()` plain-data elements; `out` has exactly their byte length.
            Some(values) => unsafe { std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), out.as_mut_ptr(), out.len()) },
            None => {
                let base = out.as_mut_ptr().cast::<T>();
                for (i, v) in a.iter().enumerate() {
                    // SAFETY: element `i` < a.len() lies inside `out` (its length is checked
                    // above); `T` is plain data; the write may be unaligned.
                    unsafe { base.add(i).write_unaligned(*v) }
                }
            }
        }
    }
    dispatch!(t, a => copy(a, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_through_bytes_and_codes() {
        for d in DType::ALL {
            assert_eq!(dtype_of(dtype_code(d)), Some(d));
            let t = Tensor::from(ndarray::Array::from_shape_fn(IxDyn(&[2, 3]), |ix| (ix[0] * 3 + ix[1]) as f64)).cast(d);
            let mut bytes = vec![0u8; byte_size(&t)];
            write_bytes(&t, &mut bytes);
            assert_eq!(bytes.len(), 6 * d.size_bytes());
            // Unaligned on purpose: the caller's buffer may start anywhere.
            let mut shifted = vec![0u8; bytes.len() + 1];
            shifted[1..].copy_from_slice(&bytes);
            assert_eq!(tensor_from_bytes("x", d, &[2, 3], &shifted[1..]).ok(), Some(t), "{d:?}");
        }
        assert_eq!(dtype_of(8), None, "strings are not run");
        // A transposed (non-contiguous) tensor is written in its logical row-major order.
        let t = Tensor::from(ndarray::Array::from_shape_fn(IxDyn(&[3, 2]), |ix| (ix[0] * 2 + ix[1]) as i32).reversed_axes());
        let mut bytes = vec![0u8; byte_size(&t)];
        write_bytes(&t, &mut bytes);
        let values: Vec<i32> = bytes.chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [0, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn a_wrong_size_or_bool_byte_is_an_error_naming_the_input() {
        let e = tensor_from_bytes("ids", DType::I64, &[2, 3], &[0; 40]).err().unwrap();
        assert_eq!(e.message, "input 'ids': byte_size 40 does not match 6 elements of int64 for shape [2, 3]");
        let e = tensor_from_bytes("mask", DType::Bool, &[2], &[1, 2]).err().unwrap();
        assert_eq!(e.message, "input 'mask': bool element 1 is 2, not 0 or 1");
        assert!(tensor_from_bytes("big", DType::F32, &[usize::MAX, 2], &[]).is_err());
    }
}
