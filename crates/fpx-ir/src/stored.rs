//! Constants kept in a file instead of memory: an ONNX model's external data, read where it
//! lies, and the large results of compile passes, spilled to a scratch file. A graph holds a
//! [`StoredTensor`] (where the bytes are, their type and shape) and reads it only when a pass
//! or the artifact writer needs the data, one tensor at a time, so a compile's memory follows
//! the largest tensor rather than the model.
//!
//! Reads are positional (`pread`), not memory maps: the data is converted as it is read
//! anyway, concurrent readers need no shared cursor, and a file truncated under us gives an
//! error instead of a `SIGBUS`.

use crate::le_bytes::{stream_tensor, tensor_from_bytes};
use crate::{DType, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A constant at least this large goes to the graph's spill file (when it has one).
pub const SPILL_MIN_BYTES: usize = 1 << 20;

/// Bytes read or converted at a time when a stored tensor is streamed.
const CHUNK_ELEMENTS: usize = 1 << 18;

/// A file a stored tensor's bytes are read from, at an offset.
pub trait ByteSource: Send + Sync + fmt::Debug {
    /// Fills `buf` from `offset` (positional: no shared cursor, so threads may read at once).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file, for error messages.
    fn describe(&self) -> String;
    /// The whole file, when it is mapped into memory (an opened artifact): stored tensors of it
    /// can then be used in place, without a copy ([`StoredTensor::mapped_bytes`]).
    fn mapped(&self) -> Option<&[u8]> {
        None
    }
}

/// An open, regular file read by position (an ONNX model's external data file).
#[derive(Debug)]
pub struct FileBytes {
    file: File,
    path: PathBuf,
}

impl FileBytes {
    /// Wraps an opened file; `path` names it in errors.
    pub fn new(file: File, path: PathBuf) -> Self {
        FileBytes { file, path }
    }
}

impl ByteSource for FileBytes {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn describe(&self) -> String {
        format!("'{}'", self.path.display())
    }
}

/// A compile's scratch file: large constants that passes produce are appended here and read
/// back when needed. It is unlinked as soon as it is created, so nothing is left behind
/// whatever happens; the space is freed when the last tensor stored in it is dropped.
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    dir: PathBuf,
    end: Mutex<u64>,
}

impl SpillFile {
    /// Creates an (already unlinked) spill file in `dir`. Put it on the disk the artifact goes
    /// to: a `tmpfs` would keep the spilled bytes in memory.
    pub fn create_in(dir: &Path) -> io::Result<Arc<SpillFile>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let path = dir.join(format!(".fpx-spill.{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => {
                    std::fs::remove_file(&path)?;
                    return Ok(Arc::new(SpillFile { file, dir: dir.to_path_buf(), end: Mutex::new(0) }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 1000 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends `t`'s bytes and returns where they are. Several threads may store at once.
    pub fn store(self: &Arc<Self>, t: &Tensor) -> io::Result<StoredTensor> {
        let len = (t.len() * t.dtype().size_bytes()) as u64;
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            let offset = *end;
            *end += len;
            offset
        };
        let mut pos = offset;
        let mut crc = crc32fast::Hasher::new();
        stream_tensor(t, &mut |b: &[u8]| {
            self.file.write_all_at(b, pos)?;
            crc.update(b);
            pos += b.len() as u64;
            Ok::<(), io::Error>(())
        })?;
        let mut stored = StoredTensor::new(self.clone(), offset, t.dtype(), t.shape().to_vec());
        stored.crc32 = Some(crc.finalize());
        Ok(stored)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when nothing was spilled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ByteSource for SpillFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn describe(&self) -> String {
        format!("the spill file in '{}'", self.dir.display())
    }
}

/// Why streaming a [`StoredTensor`] stopped.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The file could not be read (the message names it and the offset).
    Read(String),
    /// The sink returned an error.
    Sink(E),
}

/// A constant whose bytes stay in a file: `stored`-typed little-endian elements at `offset`,
/// read as `dtype` (an element-wise cast, as [`Tensor::cast`], when they differ).
#[derive(Clone)]
pub struct StoredTensor {
    source: Arc<dyn ByteSource>,
    offset: u64,
    stored: DType,
    dtype: DType,
    shape: Vec<usize>,
    /// CRC-32 of the stored bytes, when known from writing them (a spilled tensor), so an
    /// artifact writer need not read them back to checksum them.
    crc32: Option<u32>,
}

impl fmt::Debug for StoredTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredTensor({} {:?} at {} of {}", self.dtype, self.shape, self.offset, self.source.describe())?;
        if self.stored != self.dtype {
            write!(f, ", stored as {}", self.stored)?;
        }
        write!(f, ")")
    }
}

impl StoredTensor {
    /// `dtype` elements of `shape` at `offset` of `source` (the caller checked they lie inside it).
    pub fn new(source: Arc<dyn ByteSource>, offset: u64, dtype: DType, shape: Vec<usize>) -> Self {
        StoredTensor { source, offset, stored: dtype, dtype, shape, crc32: None }
    }

    /// CRC-32 of the bytes as loaded, when known without reading them: the checksum taken as
    /// a spilled tensor was written, if it is loaded as stored (no cast).
    pub fn loaded_crc32(&self) -> Option<u32> {
        self.crc32.filter(|_| self.stored == self.dtype)
    }

    /// The element type it loads as.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The element type of the bytes in the file.
    pub fn stored_dtype(&self) -> DType {
        self.stored
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes once loaded (as [`Self::dtype`]).
    pub fn loaded_bytes(&self) -> usize {
        self.len() * self.dtype.size_bytes()
    }

    /// Bytes in the file.
    pub fn stored_bytes(&self) -> usize {
        self.len() * self.stored.size_bytes()
    }

    /// The same bytes, loaded as `dtype`: what `Tensor::cast` of the loaded tensor gives,
    /// computed when it is read (so a 16-bit weight made `f32` costs nothing until it is used).
    pub fn cast(&self, dtype: DType) -> StoredTensor {
        StoredTensor { dtype, ..self.clone() }
    }

    /// The bytes in place, without reading or copying them: for a tensor of a memory-mapped
    /// file loaded as it is stored (kernels read packed weights straight from an artifact).
    pub fn mapped_bytes(&self) -> Option<&[u8]> {
        if self.stored != self.dtype {
            return None;
        }
        let start = usize::try_from(self.offset).ok()?;
        self.source.mapped()?.get(start..start.checked_add(self.stored_bytes())?)
    }

    /// Where it is, for errors.
    pub fn describe(&self) -> String {
        format!("{} bytes at offset {} of {}", self.stored_bytes(), self.offset, self.source.describe())
    }

    fn read(&self, buf: &mut [u8], element: usize) -> Result<(), String> {
        let at = self.offset + (element * self.stored.size_bytes()) as u64;
        self.source
            .read_exact_at(buf, at)
            .map_err(|e| format!("cannot read {} bytes at offset {at} of {}: {e}", buf.len(), self.source.describe()))
    }

    /// Reads the data. An error says which file and offset could not be read.
    pub fn load(&self) -> Result<Tensor, String> {
        let n = self.len();
        if self.dtype == DType::F32 && matches!(self.stored, DType::F16 | DType::BF16) {
            // The common upcast, converted chunk by chunk into the result (no stored-size copy).
            let mut out = Vec::new();
            out.try_reserve_exact(n).map_err(|_| format!("{} bytes do not fit in memory", n * 4))?;
            let mut buf = vec![0u8; CHUNK_ELEMENTS.min(n) * 2];
            let mut bits: Vec<u16> = Vec::with_capacity(CHUNK_ELEMENTS.min(n));
            let mut at = 0;
            while at < n {
                let count = CHUNK_ELEMENTS.min(n - at);
                let b = &mut buf[..count * 2];
                self.read(b, at)?;
                bits.clear();
                bits.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
                let start = out.len();
                out.resize(start + count, 0.0);
                // The slice conversions use the CPU's F16C instructions where it has them.
                if self.stored == DType::F16 {
                    bits.reinterpret_cast::<f16>().convert_to_f32_slice(&mut out[start..]);
                } else {
                    bits.reinterpret_cast::<bf16>().convert_to_f32_slice(&mut out[start..]);
                }
                at += count;
            }
            let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&self.shape), out).map_err(|e| e.to_string())?;
            return Ok(Tensor::from(a));
        }
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(self.stored_bytes()).map_err(|_| format!("{} bytes do not fit in memory", self.stored_bytes()))?;
        bytes.resize(self.stored_bytes(), 0);
        self.read(&mut bytes, 0)?;
        let t = tensor_from_bytes(self.stored, &self.shape, &bytes)
            .map_err(|e| format!("{} does not hold the tensor: {e}", self.describe()))?;
        drop(bytes);
        Ok(if self.stored == self.dtype { t } else { t.cast(self.dtype) })
    }

    /// Reads the data as stored (little-endian bytes of [`StoredTensor::stored_dtype`], not
    /// converted) into `buf`, replacing its contents and reusing its allocation: for a
    /// consumer that converts while it rearranges (the quantizer's transpose).
    pub fn read_stored_into(&self, buf: &mut Vec<u8>) -> Result<(), String> {
        let len = self.stored_bytes();
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.try_reserve_exact(len - buf.len()).map_err(|_| format!("{len} bytes do not fit in memory"))?;
            buf.resize(len, 0);
        }
        self.read(buf, 0)
    }

    /// Hands the loaded data's little-endian bytes to `sink` chunk by chunk, reading (and
    /// converting) one chunk at a time.
    pub fn stream<E>(&self, sink: &mut dyn FnMut(&[u8]) -> Result<(), E>) -> Result<(), StreamError<E>> {
        let n = self.len();
        let mut buf = vec![0u8; CHUNK_ELEMENTS.min(n) * self.stored.size_bytes()];
        let mut at = 0;
        while at < n {
            let count = CHUNK_ELEMENTS.min(n - at);
            let b = &mut buf[..count * self.stored.size_bytes()];
            self.read(b, at).map_err(StreamError::Read)?;
            if self.stored == self.dtype {
                sink(b).map_err(StreamError::Sink)?;
            } else {
                let t = tensor_from_bytes(self.stored, &[count], b)
                    .map_err(|e| StreamError::Read(format!("{} does not hold the tensor: {e}", self.describe())))?;
                stream_tensor(&t.cast(self.dtype), sink).map_err(StreamError::Sink)?;
            }
            at += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DType, n: usize) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 64.0).collect();
        Tensor::from(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n]), v).unwrap()).cast(dtype)
    }

    #[test]
    fn spilled_tensors_load_and_stream_as_stored_and_cast() {
        let dir = std::env::temp_dir();
        let spill = SpillFile::create_in(&dir).unwrap();
        // Larger than one chunk, so loads and streams cross chunk boundaries.
        let n = CHUNK_ELEMENTS * 2 + 3;
        let first = spill.store(&tensor(DType::F32, 5)).unwrap();
        for dtype in [DType::F16, DType::BF16, DType::F32, DType::I32] {
            let t = tensor(dtype, n);
            let s = spill.store(&t).unwrap();
            assert_eq!(s.load().unwrap(), t, "{dtype}");
            let f32s = s.cast(DType::F32);
            // The checksum taken while spilling is the stored bytes', and only a load without a cast has it.
            assert_eq!(s.loaded_crc32(), Some(crc32fast::hash(&crate::le_bytes::tensor_bytes(&t))), "{dtype} checksum");
            assert_eq!(f32s.loaded_crc32().is_some(), dtype == DType::F32, "{dtype} checksum after a cast");
            // As stored, whatever the loaded type, into a buffer of another size.
            for mut raw in [vec![7u8; 3], vec![7u8; n * 8 + 1]] {
                f32s.read_stored_into(&mut raw).unwrap();
                assert_eq!(raw, crate::le_bytes::tensor_bytes(&t), "{dtype} as stored");
            }
            assert_eq!(f32s.load().unwrap(), t.cast(DType::F32), "{dtype} as f32");
            let mut streamed = Vec::new();
            f32s.stream::<()>(&mut |b| {
                streamed.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(streamed, crate::le_bytes::tensor_bytes(&t.cast(DType::F32)), "{dtype} streamed");
        }
        assert_eq!(first.load().unwrap(), tensor(DType::F32, 5), "earlier tensors are not overwritten");
        // The spill file left no name behind in the folder.
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!(".fpx-spill.{}-", std::process::id())))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_short_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("fpx-stored-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.bin");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let s = StoredTensor::new(Arc::new(FileBytes::new(File::open(&path).unwrap(), path.clone())), 4, DType::F32, vec![4]);
        let err = s.load().unwrap_err();
        assert!(err.contains("w.bin") && err.contains("offset 4"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
