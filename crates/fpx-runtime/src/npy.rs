//! `.npy` files (NumPy's array format, versions 1–3): read any numeric array into a
//! [`Tensor`], write a tensor back. Little-endian data, C or Fortran order on read.

use crate::RuntimeError;
use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::{ArrayD, IxDyn, ShapeBuilder};
use fpx_ir::{dispatch, DType, Elem, Tensor};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

fn err(path: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::File { path: path.to_path_buf(), message: message.into() }
}

/// The numpy `descr` of an element type.
fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::BF16 => "<V2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

fn dtype_of(d: &str) -> Option<DType> {
    let (order, code) = d.split_at(1);
    if order == ">" && !code.ends_with('1') {
        return None;
    }
    DType::ALL.into_iter().find(|&t| descr(t)[1..] == *code && t != DType::BF16)
}

/// The value of `'key':` in the header dict, up to the next top-level comma or brace.
fn header_field<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let start = h.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = h[start..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(inner) = rest.strip_prefix('(') {
        return Some(&inner[..inner.find(')')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_header(h: &str) -> Result<(DType, bool, Vec<usize>), String> {
    let d = header_field(h, "descr").ok_or("header has no 'descr'")?.trim_matches(|c| c == '\'' || c == '"');
    let dtype = dtype_of(d)
        .ok_or_else(|| format!("unsupported element type '{d}' (supported: little-endian float16/32/64, int8–64, uint8–64, bool)"))?;
    let fortran = match header_field(h, "fortran_order").ok_or("header has no 'fortran_order'")? {
        "True" => true,
        "False" => false,
        other => return Err(format!("bad fortran_order '{other}'")),
    };
    let shape = header_field(h, "shape")
        .ok_or("header has no 'shape'")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad dimension '{s}' in shape")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dtype, fortran, shape))
}

fn decode<T: Elem>(bytes: &[u8], shape: &[usize], fortran: bool, conv: impl Fn(&[u8]) -> T) -> Tensor {
    let size = std::mem::size_of::<T>().max(1);
    let v: Vec<T> = bytes.chunks_exact(size).map(conv).collect();
    let a = if fortran { ArrayD::from_shape_vec(IxDyn(shape).f(), v) } else { ArrayD::from_shape_vec(IxDyn(shape), v) };
    Tensor::from(a.expect("length checked").as_standard_layout().into_owned())
}

/// Parses `.npy` bytes; `path` is only used in error messages.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Tensor, RuntimeError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err(path, "not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| err(path, "truncated .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err(path, "the .npy header is not text"))?;
    let (dtype, fortran, shape) = parse_header(header).map_err(|m| err(path, m))?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err(path, "shape too large"))?;
    let data = &bytes[start + hlen..];
    let need = count.checked_mul(dtype.size_bytes()).ok_or_else(|| err(path, "shape too large"))?;
    if data.len() != need {
        return Err(err(path, format!("data holds {} bytes, but shape {shape:?} of {dtype} needs {need}", data.len())));
    }
    macro_rules! le {
        ($t:ty) => {
            decode::<$t>(data, &shape, fortran, |b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
        };
    }
    Ok(match dtype {
        DType::F32 => le!(f32),
        DType::F64 => le!(f64),
        DType::F16 => decode::<f16>(data, &shape, fortran, |b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))),
        DType::BF16 => decode::<bf16>(data, &shape, fortran, |b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))),
        DType::I8 => le!(i8),
        DType::I16 => le!(i16),
        DType::I32 => le!(i32),
        DType::I64 => le!(i64),
        DType::U8 => le!(u8),
        DType::U16 => le!(u16),
        DType::U32 => le!(u32),
        DType::U64 => le!(u64),
        DType::Bool => decode::<bool>(data, &shape, fortran, |b| b[0] != 0),
    })
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    from_bytes(&bytes, path)
}

/// Little-endian bytes of every element, in standard (C) order.
fn element_bytes(t: &Tensor) -> Vec<u8> {
    trait Le {
        fn put_le(&self, out: &mut Vec<u8>);
    }
    macro_rules! le_impl {
        ($($t:ty),*) => { $(impl Le for $t { fn put_le(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_le_bytes()) } })* };
    }
    le_impl!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);
    impl Le for f16 {
        fn put_le(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_bits().to_le_bytes())
        }
    }
    impl Le for bf16 {
        fn put_le(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_bits().to_le_bytes())
        }
    }
    impl Le for bool {
        fn put_le(&self, out: &mut Vec<u8>) {
            out.push(*self as u8)
        }
    }
    let mut out = Vec::with_capacity(t.len() * t.dtype().size_bytes());
    dispatch!(t, a => a.iter().for_each(|x| x.put_le(&mut out)));
    out
}

/// Encodes a tensor as `.npy` (version 1.0) bytes. bfloat16 is written as raw 2-byte values (`<V2`).
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape() {
        [] => String::new(),
        [d] => format!("{d},"),
        dims => dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': ({shape}), }}", descr(t.dtype()));
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * t.dtype().size_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&element_bytes(t));
    out
}

/// Writes a tensor to a `.npy` file, through a temporary file renamed into place.
pub fn write(path: &Path, t: &Tensor) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("npy.tmp");
    let res = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&to_bytes(t))?;
        f.sync_all()
    });
    res.and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replaces the first occurrence of `from` (same length as `to`) in `bytes`.
    fn patch(mut bytes: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("pattern present");
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        bytes
    }

    #[test]
    fn round_trips_every_type() {
        for dt in DType::ALL {
            let src = Tensor::vec_i64(vec![0, 1, -2, 3, 4, 5]).cast(dt).reshape(&[2, 3]).unwrap();
            let back = from_bytes(&to_bytes(&src), Path::new("x.npy"));
            if dt == DType::BF16 {
                assert!(back.is_err(), "bf16 has no numpy type and is not read back");
                continue;
            }
            assert_eq!(back.unwrap(), src, "{dt}");
        }
        let scalar = Tensor::scalar_f32(2.5);
        assert_eq!(from_bytes(&to_bytes(&scalar), Path::new("s.npy")).unwrap(), scalar);
    }

    #[test]
    fn fortran_order_is_transposed_into_c_order() {
        let b = patch(
            to_bytes(&Tensor::vec_i64(vec![1, 2, 3, 4, 5, 6]).reshape(&[2, 3]).unwrap()),
            "'fortran_order': False",
            "'fortran_order': True ",
        );
        let t = from_bytes(&b, Path::new("f.npy")).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_i64_vec(), vec![1, 3, 5, 2, 4, 6]);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let p = Path::new("bad.npy");
        for bytes in [&b""[..], b"hello world", b"\x93NUMPY\x01\x00\xff\xff{", b"\x93NUMPY\x09\x00\x00\x00"] {
            assert!(from_bytes(bytes, p).is_err());
        }
        let mut good = to_bytes(&Tensor::scalar_f32(1.0));
        good.pop();
        let e = from_bytes(&good, p).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains("needs 4"), "{e}");
        let weird = patch(to_bytes(&Tensor::scalar_f32(1.0)), "<f4", "<c8");
        assert!(from_bytes(&weird, p).unwrap_err().to_string().contains("unsupported element type"));
    }
}
