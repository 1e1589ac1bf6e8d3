//! Reading the quantizer's weights: each weight's data fetched as stored (from memory or its
//! file) on a reader thread one batch ahead of the quantizer, into buffers reused from weight
//! to weight, and made channel-major f32 in one parallel pass (16-bit weights converted while
//! they are transposed). Reading overlaps quantizing, and a compile of hundreds of weights
//! does not fault in fresh pages for each.

use fpx_ir::{DType, Graph, IrError, StoredTensor, Tensor, ValueId};
use fpx_quant::channel_major::{channel_major_into, to_f32_into, WeightValues};
use std::sync::{Arc, Mutex};

/// Where a weight's data is: taken from the graph before quantizing starts, so a reader
/// thread can fetch without borrowing the graph the quantizer rewrites.
pub(crate) enum WeightSource {
    /// An in-memory constant.
    Memory(Arc<Tensor>),
    /// A constant kept in a file.
    Stored { name: String, tensor: StoredTensor },
}

impl WeightSource {
    /// The data of constant `v`, if it is one.
    pub(crate) fn of(graph: &Graph, v: ValueId) -> Option<WeightSource> {
        if let Some(t) = graph.constant(v) {
            return Some(WeightSource::Memory(t.clone()));
        }
        let tensor = graph.stored(v)?.clone();
        Some(WeightSource::Stored { name: graph.value(v).name.clone(), tensor })
    }

    /// Reads the data: a file's float bytes as stored (converted later, while transposed),
    /// anything else as a tensor.
    pub(crate) fn fetch(&self, buffers: &Buffers) -> Result<Fetched, IrError> {
        match self {
            WeightSource::Memory(t) => Ok(Fetched::Tensor(t.clone())),
            WeightSource::Stored { name, tensor } => {
                let error = |message: String| IrError::ConstantData { value: name.clone(), message };
                let stored = tensor.stored_dtype();
                if matches!(stored, DType::F32 | DType::F16 | DType::BF16) {
                    let mut bytes = buffers.bytes(tensor.stored_bytes());
                    tensor.read_stored_into(&mut bytes).map_err(error)?;
                    Ok(Fetched::Bytes { bytes, dtype: stored })
                } else {
                    Ok(Fetched::Tensor(Arc::new(tensor.load().map_err(error)?)))
                }
            }
        }
    }
}

/// A weight's data as fetched.
pub(crate) enum Fetched {
    /// Little-endian float bytes of `dtype` (F32, F16 or BF16).
    Bytes { bytes: Vec<u8>, dtype: DType },
    /// A tensor.
    Tensor(Arc<Tensor>),
}

impl Fetched {
    /// The values as f32 `[n][k]` (channel-major), where `transposed` says the data is `[n][k]`
    /// already (a Gemm's `transB` weight) and is otherwise `[k][n]`. An f32 tensor that is
    /// channel-major already is read where it is; anything else is converted into `floats`,
    /// and its fetched bytes go back to `buffers` at once.
    pub(crate) fn into_channel_major<'a>(
        self,
        k: usize,
        n: usize,
        transposed: bool,
        floats: &'a mut Vec<f32>,
        buffers: &Buffers,
    ) -> ChannelMajor<'a> {
        match self {
            Fetched::Tensor(t) if transposed && matches!(&*t, Tensor::F32(a) if a.is_standard_layout()) => ChannelMajor::Tensor(t),
            Fetched::Tensor(t) => {
                let converted;
                let values: &[f32] = match &*t {
                    Tensor::F32(a) if a.is_standard_layout() => a.as_slice().expect("standard layout"),
                    other => {
                        converted = other.to_f32();
                        converted.as_slice().expect("a new array is in standard layout")
                    }
                };
                convert(WeightValues::F32(values), k, n, transposed, floats);
                ChannelMajor::Floats(floats)
            }
            Fetched::Bytes { bytes, dtype } => {
                let values = match dtype {
                    DType::F16 => WeightValues::F16(&bytes),
                    DType::BF16 => WeightValues::Bf16(&bytes),
                    _ => WeightValues::F32Le(&bytes),
                };
                convert(values, k, n, transposed, floats);
                buffers.give_bytes(bytes);
                ChannelMajor::Floats(floats)
            }
        }
    }
}

fn convert(values: WeightValues<'_>, k: usize, n: usize, transposed: bool, floats: &mut Vec<f32>) {
    if transposed {
        to_f32_into(values, floats);
    } else {
        channel_major_into(values, k, n, floats);
    }
}

/// A weight as channel-major f32: an f32 tensor read where it is, or the converted values.
pub(crate) enum ChannelMajor<'a> {
    /// An f32 tensor already `[n][k]`.
    Tensor(Arc<Tensor>),
    /// Converted values (a reused buffer).
    Floats(&'a mut Vec<f32>),
}

impl ChannelMajor<'_> {
    /// The `[n][k]` values.
    pub(crate) fn values(&self) -> &[f32] {
        match self {
            ChannelMajor::Tensor(t) => match &**t {
                Tensor::F32(a) => a.as_slice().expect("checked standard layout"),
                _ => unreachable!("only f32 tensors are read in place"),
            },
            ChannelMajor::Floats(v) => v,
        }
    }
}

/// Buffers handed back after use and handed out again: fetched bytes, codes and packed codes,
/// and converted floats. Each request takes the smallest buffer that holds it (or the largest,
/// to grow), so what the pools keep is bounded by the buffers in flight (a batch quantized, one
/// read ahead) and memory still follows the largest weights, not the model.
#[derive(Default)]
pub(crate) struct Buffers {
    bytes: Mutex<Vec<Vec<u8>>>,
    floats: Mutex<Vec<Vec<f32>>>,
}

fn best_fit<T>(pool: &Mutex<Vec<Vec<T>>>, len: usize) -> Vec<T> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let fits = (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
    let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
    pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
}

impl Buffers {
    /// A byte buffer for about `len` bytes (contents unspecified).
    pub(crate) fn bytes(&self, len: usize) -> Vec<u8> {
        best_fit(&self.bytes, len)
    }

    /// Hands a byte buffer back.
    pub(crate) fn give_bytes(&self, b: Vec<u8>) {
        if b.capacity() > 0 {
            self.bytes.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        }
    }

    /// A float buffer for about `len` values (contents unspecified).
    pub(crate) fn floats(&self, len: usize) -> Vec<f32> {
        best_fit(&self.floats, len)
    }

    /// Hands a float buffer back.
    pub(crate) fn give_floats(&self, f: Vec<f32>) {
        if f.capacity() > 0 {
            self.floats.lock().unwrap_or_else(|e| e.into_inner()).push(f);
        }
    }
}
