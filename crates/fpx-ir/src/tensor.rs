//! Tensors: an n-dimensional array of one of the [`DType`]s.

use crate::DType;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// A dense tensor. Each variant holds an `ndarray` array of the matching element type.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// Elements of ONNX `float`: 32-bit IEEE binary32.
    F32(ArrayD<f32>),
    /// Elements of ONNX `double`: 64-bit IEEE binary64.
    F64(ArrayD<f64>),
    /// Elements of ONNX `float16`: IEEE binary16.
    F16(ArrayD<f16>),
    /// Elements of ONNX `bfloat16`: the top half of a binary32.
    BF16(ArrayD<bf16>),
    /// Elements of ONNX `int8`.
    I8(ArrayD<i8>),
    /// Elements of ONNX `int16`.
    I16(ArrayD<i16>),
    /// Elements of ONNX `int32`.
    I32(ArrayD<i32>),
    /// Elements of ONNX `int64`.
    I64(ArrayD<i64>),
    /// Elements of ONNX `uint8`.
    U8(ArrayD<u8>),
    /// Elements of ONNX `uint16`.
    U16(ArrayD<u16>),
    /// Elements of ONNX `uint32`.
    U32(ArrayD<u32>),
    /// Elements of ONNX `uint64`.
    U64(ArrayD<u64>),
    /// Elements of ONNX `bool` (one byte, 0 or 1, when stored).
    Bool(ArrayD<bool>),
}

/// Runs `$body` with `$a` bound to the inner array of tensor `$t`, whatever its element type.
/// `Tensor::from(array)` turns a result array back into a tensor.
#[macro_export]
macro_rules! dispatch {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $body,
            $crate::Tensor::F64($a) => $body,
            $crate::Tensor::F16($a) => $body,
            $crate::Tensor::BF16($a) => $body,
            $crate::Tensor::I8($a) => $body,
            $crate::Tensor::I16($a) => $body,
            $crate::Tensor::I32($a) => $body,
            $crate::Tensor::I64($a) => $body,
            $crate::Tensor::U8($a) => $body,
            $crate::Tensor::U16($a) => $body,
            $crate::Tensor::U32($a) => $body,
            $crate::Tensor::U64($a) => $body,
            $crate::Tensor::Bool($a) => $body,
        }
    };
}

/// An element type a [`Tensor`] can hold, with the conversions ONNX `Cast` needs.
pub trait Elem: Copy + Default + PartialEq + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// The tag of this element type.
    const DTYPE: DType;
    /// Widen to f64 (exact for every type but large 64-bit integers).
    fn to_f64(self) -> f64;
    /// Narrow from f64: round-to-nearest for floats, truncate-and-saturate for integers, `!= 0` for bool.
    fn from_f64(v: f64) -> Self;
    /// Convert to i64 (floats truncate toward zero).
    fn to_i64(self) -> i64;
    /// Convert from i64 (wrapping for narrower integers, as a C cast does).
    fn from_i64(v: i64) -> Self;
    /// Wrap an array of this type into a tensor.
    fn wrap(a: ArrayD<Self>) -> Tensor;
    /// Borrow the array if the tensor holds this type.
    fn view(t: &Tensor) -> Option<&ArrayD<Self>>;
}

macro_rules! int_elem {
    ($t:ty, $d:ident) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$d(a)
            }
            fn view(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t {
                    Tensor::$d(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}
int_elem!(i8, I8);
int_elem!(i16, I16);
int_elem!(i32, I32);
int_elem!(i64, I64);
int_elem!(u8, U8);
int_elem!(u16, U16);
int_elem!(u32, U32);
int_elem!(u64, U64);

macro_rules! float_elem {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl Elem for $t {
            const DTYPE: DType = DType::$d;
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_i64(self) -> i64 {
                $to(self) as i64
            }
            fn from_i64(v: i64) -> Self {
                $from(v as f64)
            }
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$d(a)
            }
            fn view(t: &Tensor) -> Option<&ArrayD<Self>> {
                match t {
                    Tensor::$d(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}
float_elem!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
float_elem!(f64, F64, |x: f64| x, |v: f64| v);
float_elem!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
float_elem!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);

impl Elem for bool {
    const DTYPE: DType = DType::Bool;
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn wrap(a: ArrayD<Self>) -> Tensor {
        Tensor::Bool(a)
    }
    fn view(t: &Tensor) -> Option<&ArrayD<Self>> {
        match t {
            Tensor::Bool(a) => Some(a),
            _ => None,
        }
    }
}

impl<T: Elem> From<ArrayD<T>> for Tensor {
    fn from(a: ArrayD<T>) -> Self {
        T::wrap(a)
    }
}

fn cast_array<S: Elem, D: Elem>(a: &ArrayD<S>) -> ArrayD<D> {
    let int_path = (S::DTYPE.is_int() || S::DTYPE == DType::Bool) && (D::DTYPE.is_int() || D::DTYPE == DType::Bool);
    if int_path {
        a.mapv(|x| D::from_i64(x.to_i64()))
    } else {
        a.mapv(|x| D::from_f64(x.to_f64()))
    }
}

fn cast_to<D: Elem>(t: &Tensor) -> ArrayD<D> {
    dispatch!(t, a => cast_array::<_, D>(a))
}

impl Tensor {
    /// A tensor of zeros (false for bool) of the given type and shape.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        fn z<T: Elem>(shape: &[usize]) -> Tensor {
            Tensor::from(ArrayD::<T>::default(IxDyn(shape)))
        }
        match dtype {
            DType::F32 => z::<f32>(shape),
            DType::F64 => z::<f64>(shape),
            DType::F16 => z::<f16>(shape),
            DType::BF16 => z::<bf16>(shape),
            DType::I8 => z::<i8>(shape),
            DType::I16 => z::<i16>(shape),
            DType::I32 => z::<i32>(shape),
            DType::I64 => z::<i64>(shape),
            DType::U8 => z::<u8>(shape),
            DType::U16 => z::<u16>(shape),
            DType::U32 => z::<u32>(shape),
            DType::U64 => z::<u64>(shape),
            DType::Bool => z::<bool>(shape),
        }
    }

    /// A rank-0 f32 tensor.
    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::F32(ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// A 1-D i64 tensor.
    pub fn vec_i64(v: Vec<i64>) -> Tensor {
        let n = v.len();
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), v).expect("1-D shape matches length"))
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::F16(_) => DType::F16,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::I16(_) => DType::I16,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::U8(_) => DType::U8,
            Tensor::U16(_) => DType::U16,
            Tensor::U32(_) => DType::U32,
            Tensor::U64(_) => DType::U64,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        dispatch!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch!(self, a => a.len())
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    /// Converts to another element type with ONNX `Cast` semantics.
    pub fn cast(&self, to: DType) -> Tensor {
        if self.dtype() == to {
            return self.clone();
        }
        match to {
            DType::F32 => Tensor::from(cast_to::<f32>(self)),
            DType::F64 => Tensor::from(cast_to::<f64>(self)),
            DType::F16 => Tensor::from(cast_to::<f16>(self)),
            DType::BF16 => Tensor::from(cast_to::<bf16>(self)),
            DType::I8 => Tensor::from(cast_to::<i8>(self)),
            DType::I16 => Tensor::from(cast_to::<i16>(self)),
            DType::I32 => Tensor::from(cast_to::<i32>(self)),
            DType::I64 => Tensor::from(cast_to::<i64>(self)),
            DType::U8 => Tensor::from(cast_to::<u8>(self)),
            DType::U16 => Tensor::from(cast_to::<u16>(self)),
            DType::U32 => Tensor::from(cast_to::<u32>(self)),
            DType::U64 => Tensor::from(cast_to::<u64>(self)),
            DType::Bool => Tensor::from(cast_to::<bool>(self)),
        }
    }

    /// The values as f32 (converted when the tensor holds another type).
    pub fn to_f32(&self) -> ArrayD<f32> {
        use half::slice::HalfFloatSliceExt;
        // 16-bit floats in standard layout convert as slices (F16C where the CPU has it).
        fn slice<T>(a: &ArrayD<T>, convert: impl Fn(&[T], &mut [f32])) -> Option<ArrayD<f32>> {
            let s = a.as_slice()?;
            let mut out = vec![0f32; s.len()];
            convert(s, &mut out);
            ArrayD::from_shape_vec(a.raw_dim(), out).ok()
        }
        let fast = match self {
            Tensor::F32(a) => return a.clone(),
            Tensor::F16(a) => slice(a, |s, o| s.convert_to_f32_slice(o)),
            Tensor::BF16(a) => slice(a, |s, o| s.convert_to_f32_slice(o)),
            _ => None,
        };
        fast.unwrap_or_else(|| cast_to::<f32>(self))
    }

    /// The values as f64 (converted when the tensor holds another type).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            Tensor::F64(a) => a.clone(),
            other => cast_to::<f64>(other),
        }
    }

    /// The values as a flat i64 vector (index math: shapes, axes, indices).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        dispatch!(self, a => a.iter().map(|x| x.to_i64()).collect())
    }

    /// The values as a flat f64 vector.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch!(self, a => a.iter().map(|x| x.to_f64()).collect())
    }

    /// Borrow as an f32 array, if that is the type held.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        f32::view(self)
    }

    /// Borrow as an i64 array, if that is the type held.
    pub fn as_i64(&self) -> Option<&ArrayD<i64>> {
        i64::view(self)
    }

    /// Borrow as a bool array, if that is the type held.
    pub fn as_bool(&self) -> Option<&ArrayD<bool>> {
        bool::view(self)
    }

    /// The same data with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Option<Tensor> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(self.len()) {
            return None;
        }
        dispatch!(self, a => a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(shape)).ok().map(Tensor::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_tensors_convert_to_f32_in_any_layout() {
        let bits: Vec<u16> = (0..=u16::MAX).step_by(7).collect();
        let n = bits.len() - bits.len() % 6;
        let halves = ArrayD::from_shape_vec(IxDyn(&[6, n / 6]), bits[..n].iter().map(|&b| f16::from_bits(b)).collect()).unwrap();
        let brains = ArrayD::from_shape_vec(IxDyn(&[6, n / 6]), bits[..n].iter().map(|&b| bf16::from_bits(b)).collect()).unwrap();
        let same = |a: &ArrayD<f32>, b: &ArrayD<f32>| {
            a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
        };
        // Contiguous (the slice conversion) and transposed (element by element) give the same values.
        for t in [Tensor::F16(halves.clone()), Tensor::F16(halves.t().to_owned()), Tensor::F16(halves.clone().reversed_axes())] {
            let want = match &t {
                Tensor::F16(a) => a.mapv(|v| v.to_f32()),
                _ => unreachable!(),
            };
            assert!(same(&t.to_f32(), &want));
        }
        for t in [Tensor::BF16(brains.clone()), Tensor::BF16(brains.reversed_axes())] {
            let want = match &t {
                Tensor::BF16(a) => a.mapv(|v| v.to_f32()),
                _ => unreachable!(),
            };
            assert!(same(&t.to_f32(), &want));
        }
    }

    #[test]
    fn cast_follows_onnx_rules() {
        let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[4]), vec![-1.7, 0.0, 2.5, 300.0]).unwrap());
        assert_eq!(t.cast(DType::I64).to_i64_vec(), vec![-1, 0, 2, 300]);
        assert_eq!(t.cast(DType::Bool).to_i64_vec(), vec![1, 0, 1, 1]);
        assert_eq!(t.cast(DType::U8).to_i64_vec(), vec![0, 0, 2, 255]);
        let big = Tensor::vec_i64(vec![i64::MAX, -3]);
        assert_eq!(big.cast(DType::I64), big);
        assert_eq!(big.cast(DType::I32).to_i64_vec(), vec![-1, -3]);
        let h = t.cast(DType::F16).to_f32();
        assert_eq!(h.as_slice().unwrap(), &[-1.7001953, 0.0, 2.5, 300.0]);
    }

    #[test]
    fn reshape_keeps_order_and_rejects_bad_counts() {
        let t = Tensor::vec_i64((0..6).collect());
        let r = t.reshape(&[2, 3]).unwrap();
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(r.to_i64_vec(), (0..6).collect::<Vec<_>>());
        assert!(t.reshape(&[4, 2]).is_none());
    }
}
