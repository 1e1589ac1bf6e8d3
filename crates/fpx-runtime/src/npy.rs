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
    // The byte order is one ASCII character, so splitting after it is on a character boundary
    // (an empty descr or one starting with a multi-byte character is simply unsupported).
    let code = d.strip_prefix(['<', '|', '>'])?;
    if d.starts_with('>') && !code.ends_with('1') {
        return None;
    }
    DType::ALL.into_iter().find(|&t| descr(t)[1..] == *code && t != DType::BF16)
}

/// A value in the header dict.
#[derive(Debug, PartialEq)]
enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A strict reader of the header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`: string keys, string, boolean
/// or tuple-of-integers values, optional trailing commas, whitespace anywhere between tokens.
struct HeaderParser<'a> {
    rest: &'a str,
}

impl<'a> HeaderParser<'a> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\n', '\r']);
    }

    /// Consumes `c` (after whitespace) if it comes next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed header: expected '{c}' {what}"))
        }
    }

    fn string(&mut self) -> Result<&'a str, String> {
        self.skip_ws();
        let quote = match self.rest.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err("malformed header: expected a quoted string".into()),
        };
        let body = &self.rest[1..];
        let end = body.find(quote).ok_or("malformed header: unterminated string")?;
        let s = &body[..end];
        if s.contains('\\') {
            return Err("malformed header: escapes in strings are not supported".into());
        }
        self.rest = &body[end + 1..];
        Ok(s)
    }

    fn dim(&mut self) -> Result<usize, String> {
        self.skip_ws();
        let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
        if digits == 0 {
            let got: String = self.rest.chars().take(12).collect();
            return Err(format!("bad dimension in shape at '{got}' (each must be a non-negative integer)"));
        }
        let n = self.rest[..digits].parse::<usize>().map_err(|_| format!("dimension {} is too large", &self.rest[..digits]))?;
        self.rest = &self.rest[digits..];
        // Python 2 wrote long integers with an `L` suffix.
        self.rest = self.rest.strip_prefix('L').unwrap_or(self.rest);
        Ok(n)
    }

    /// `()`, `(n,)`, `(a, b)` or `(a, b,)`; `(n)` is not a tuple and `(2,,7)` is malformed.
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(', "to open the shape tuple")?;
        let mut dims = Vec::new();
        if self.eat(')') {
            return Ok(dims);
        }
        loop {
            dims.push(self.dim()?);
            if self.eat(')') {
                if dims.len() == 1 {
                    return Err("malformed shape: a one-dimensional shape needs a trailing comma, as in (n,)".into());
                }
                return Ok(dims);
            }
            self.expect(',', "or ')' after a dimension in the shape")?;
            if self.eat(')') {
                return Ok(dims);
            }
        }
    }

    fn value(&mut self) -> Result<Value<'a>, String> {
        self.skip_ws();
        if self.rest.starts_with(['\'', '"']) {
            return self.string().map(Value::Str);
        }
        if self.rest.starts_with('(') {
            return self.tuple().map(Value::Tuple);
        }
        for (word, b) in [("True", true), ("False", false)] {
            if let Some(r) = self.rest.strip_prefix(word) {
                self.rest = r;
                return Ok(Value::Bool(b));
            }
        }
        let got: String = self.rest.chars().take(12).collect();
        Err(format!("malformed header: unexpected value '{got}'"))
    }

    /// The dict's entries; a key given twice is an error (in Python the later one would
    /// silently win, so such a header is ambiguous).
    fn dict(mut self) -> Result<Vec<(&'a str, Value<'a>)>, String> {
        self.expect('{', "at the start of the header")?;
        let mut entries: Vec<(&str, Value)> = Vec::new();
        while !self.eat('}') {
            let key = self.string()?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("malformed header: key '{key}' appears twice"));
            }
            self.expect(':', &format!("after the key '{key}'"))?;
            let value = self.value()?;
            entries.push((key, value));
            if !self.eat(',') {
                self.expect('}', "or ',' after a value")?;
                break;
            }
        }
        self.skip_ws();
        if !self.rest.is_empty() {
            return Err("malformed header: text after the closing '}'".into());
        }
        Ok(entries)
    }
}

fn parse_header(h: &str) -> Result<(DType, bool, Vec<usize>), String> {
    let entries = HeaderParser { rest: h }.dict()?;
    let (mut d, mut fortran, mut shape) = (None, None, None);
    for (key, value) in entries {
        match (key, value) {
            ("descr", Value::Str(s)) => d = Some(s),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", v) => return Err(format!("bad value {v:?} for '{key}'")),
            (other, _) => return Err(format!("unexpected key '{other}' in the header (expected 'descr', 'fortran_order', 'shape')")),
        }
    }
    let d = d.ok_or("header has no 'descr'")?;
    let dtype = dtype_of(d)
        .ok_or_else(|| format!("unsupported element type '{d}' (supported: little-endian float16/32/64, int8–64, uint8–64, bool)"))?;
    let fortran = fortran.ok_or("header has no 'fortran_order'")?;
    let shape = shape.ok_or("header has no 'shape'")?;
    Ok((dtype, fortran, shape))
}

/// The number of elements of `shape`, if an array of that shape and element size can exist:
/// the product of its non-zero dimensions (every partial product) and that times `elem_bytes`
/// must fit `isize`, as ndarray requires even of an empty array.
fn element_count(shape: &[usize], elem_bytes: usize) -> Option<usize> {
    let nonzero = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1)).filter(|&p| p <= isize::MAX as usize))?;
    nonzero.checked_mul(elem_bytes.max(1)).filter(|&b| b <= isize::MAX as usize)?;
    Some(if shape.contains(&0) { 0 } else { nonzero })
}

fn decode<T: Elem>(bytes: &[u8], shape: &[usize], fortran: bool, conv: impl Fn(&[u8]) -> T) -> Result<Tensor, String> {
    let size = std::mem::size_of::<T>().max(1);
    let v: Vec<T> = bytes.chunks_exact(size).map(conv).collect();
    let a = if fortran { ArrayD::from_shape_vec(IxDyn(shape).f(), v) } else { ArrayD::from_shape_vec(IxDyn(shape), v) };
    let a = a.map_err(|e| format!("shape {shape:?} cannot hold the data: {e}"))?;
    Ok(Tensor::from(a.as_standard_layout().into_owned()))
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
    let count = element_count(&shape, dtype.size_bytes()).ok_or_else(|| err(path, format!("shape {shape:?} is too large")))?;
    let data = &bytes[start + hlen..];
    let need = count * dtype.size_bytes();
    if data.len() != need {
        return Err(err(path, format!("data holds {} bytes, but shape {shape:?} of {dtype} needs {need}", data.len())));
    }
    macro_rules! le {
        ($t:ty) => {
            decode::<$t>(data, &shape, fortran, |b| <$t>::from_le_bytes(b.try_into().expect("chunk size")))
        };
    }
    let tensor = match dtype {
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
    };
    tensor.map_err(|m| err(path, m))
}

/// Reads a `.npy` file (a regular file only: a FIFO or device is refused, see
/// [`fpx_ir::file::read_regular`]).
pub fn read(path: &Path) -> Result<Tensor, RuntimeError> {
    let bytes = fpx_ir::file::read_regular(path, fpx_ir::file::NO_LIMIT).map_err(|e| err(path, format!("cannot read: {e}")))?;
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

    /// A version-1 `.npy` file with this exact header text and data.
    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn error_of(bytes: &[u8]) -> String {
        let e = from_bytes(bytes, Path::new("case.npy")).unwrap_err().to_string();
        assert!(e.contains("case.npy"), "the error names the file: {e}");
        e
    }

    #[test]
    fn empty_or_multibyte_descr_is_an_error() {
        // Found by fuzzing: the descr was split at byte 1.
        let e = error_of(&npy("{'descr': '', 'fortran_order': False, 'shape': (), }\n", &[0; 4]));
        assert!(e.contains("unsupported element type ''"), "{e}");
        let e = error_of(&npy("{'descr': '\u{e9}f4', 'fortran_order': False, 'shape': (), }\n", &[0; 4]));
        assert!(e.contains("unsupported element type"), "{e}");
        let e = error_of(&npy("{'descr': '\u{20ac}', 'fortran_order': False, 'shape': (), }\n", &[0; 4]));
        assert!(e.contains("unsupported element type"), "{e}");
    }

    #[test]
    fn huge_shapes_with_a_zero_dimension_are_errors() {
        // Found by fuzzing: 0 elements passed the length check, then ndarray refused the shape.
        for shape in
            ["(0, 4611686018427387904, 64)", "(4611686018427387904, 64, 0)", "(0, 18446744073709551615)", "(0, 2305843009213693952,)"]
        {
            let e = error_of(&npy(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n"), &[]));
            assert!(e.contains("is too large"), "{shape}: {e}");
            let e = error_of(&npy(&format!("{{'descr': '<f4', 'fortran_order': True, 'shape': {shape}, }}\n"), &[]));
            assert!(e.contains("is too large"), "{shape}: {e}");
        }
        // Empty arrays of a representable shape are fine.
        let t = from_bytes(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1024, 64), }\n", &[]), Path::new("e.npy"));
        assert_eq!(t.unwrap().shape(), &[0, 1024, 64]);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        // numpy's header is a dict literal, where the later key wins; we took the first.
        // A header with a key twice is malformed.
        let e = error_of(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'shape': (2,), }\n", &[0; 8]));
        assert!(e.contains("key 'shape' appears twice"), "{e}");
        let e = error_of(&npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (), }\n", &[0; 4]));
        assert!(e.contains("key 'descr' appears twice"), "{e}");
        let e = error_of(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'extra': 1}\n", &[0; 4]));
        assert!(e.contains("unexpected"), "{e}");
    }

    #[test]
    fn shape_tuples_are_parsed_strictly() {
        for bad in ["(2,,7,)", "(,)", "(2,,)", "(,2)", "(3)", "(2 3)", "(-1,)", "(2, 3", "2, 3", "(2.0,)", "(1e3,)"] {
            let e = error_of(&npy(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {bad}, }}\n"), &[0; 4]));
            assert!(e.contains("shape") || e.contains("malformed"), "{bad}: {e}");
        }
        for (good, dims) in [
            ("()", vec![]),
            ("(1,)", vec![1]),
            ("(1, 1)", vec![1, 1]),
            ("(1, 1,)", vec![1, 1]),
            ("( 1 ,1 , )", vec![1, 1]),
            ("(1L, 1L)", vec![1, 1]),
        ] {
            let h = format!("{{ 'descr' : '<f4' ,'fortran_order':False,\t'shape': {good} }}   \n");
            let t = from_bytes(&npy(&h, &[0; 4]), Path::new("g.npy")).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(t.shape(), &dims[..], "{good}");
        }
    }

    #[test]
    fn malformed_headers_are_errors() {
        for h in [
            "",
            "{",
            "}",
            "{'descr': '<f4'",
            "{'descr' '<f4'}",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': ()} x",
            "{'descr: '<f4'}",
        ] {
            error_of(&npy(h, &[0; 4]));
        }
    }

    #[test]
    fn fifos_and_devices_are_refused_at_once() {
        let dir = fpx_test_support::TempDir::new("npy-special");
        for (path, want) in fpx_test_support::special::special_files(&dir, "input.npy") {
            let shown = path.display().to_string();
            let e = fpx_test_support::special::within_10s("npy::read", move || read(&path).unwrap_err().to_string());
            assert!(e.contains(&shown) && e.contains(want), "{e}");
        }
    }
}
