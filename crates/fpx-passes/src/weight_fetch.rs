//! Reading the quantizer's weights: each weight's data fetched as stored (from memory or its
//! file) on a reader thread one batch ahead of the quantizer, into buffers reused from weight
//! to weight, and handed to the quantizer as stored (it converts and transposes block by block
//! in cache). Reading overlaps quantizing, and a compile of hundreds of weights does not fault
//! in fresh pages for each.

use fpx_ir::{DType, Graph, IrError, StoredTensor, Tensor, ValueId};
use fpx_quant::{WeightLayout, WeightValues};
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
    /// Calls `f` with the values as the quantizer takes them ([`fpx_quant::quantize_values`]):
    /// fetched bytes and f32 tensors where they are, other tensors converted to f32 first.
    /// `transposed` says the data is `[n][k]` (a Gemm's `transB` weight), not `[k][n]`.
    pub(crate) fn with_values<R>(&self, transposed: bool, f: impl FnOnce(WeightValues<'_>, WeightLayout) -> R) -> R {
        let layout = if transposed { WeightLayout::ChannelMajor } else { WeightLayout::InputMajor };
        match self {
            Fetched::Bytes { bytes, dtype } => f(
                match dtype {
                    DType::F16 => WeightValues::F16(bytes),
                    DType::BF16 => WeightValues::Bf16(bytes),
                    _ => WeightValues::F32Le(bytes),
                },
                layout,
            ),
            Fetched::Tensor(t) => match &**t {
                Tensor::F32(a) if a.is_standard_layout() => f(WeightValues::F32(a.as_slice().expect("standard layout")), layout),
                other => {
                    let converted = other.to_f32();
                    f(WeightValues::F32(converted.as_slice().expect("a new array is in standard layout")), layout)
                }
            },
        }
    }

    /// Hands fetched bytes back to `buffers` for a later weight.
    pub(crate) fn recycle(self, buffers: &Buffers) {
        if let Fetched::Bytes { bytes, .. } = self {
            buffers.give_bytes(bytes);
        }
    }
}

/// Buffers handed back after use and handed out again: fetched bytes, codes and packed codes.
/// Each request takes the smallest buffer that holds it without being more than twice its size,
/// else the largest smaller one (to grow), else a new one. So what the pools keep is bounded by
/// the buffers in flight (a batch quantized, one read ahead, one being spilled) and memory
/// follows the largest weights, not the model. The size cap keeps each kind to its own buffers:
/// a weight's packed codes (a fifth of its f32 bytes) never hold a whole fetched weight's buffer,
/// resident since it was read, while they wait for the spill file; without it, how many full
/// size buffers a compile ends up with depended on how far the spill writer lagged, and its
/// peak memory moved by 16 MiB steps from run to run.
#[derive(Default)]
pub(crate) struct Buffers {
    bytes: Mutex<Vec<Vec<u8>>>,
}

fn best_fit<T>(pool: &Mutex<Vec<Vec<T>>>, len: usize) -> Vec<T> {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = |i: usize| pool[i].capacity();
    let fits = (0..pool.len()).filter(|&i| capacity(i) >= len && capacity(i) <= len.saturating_mul(2)).min_by_key(|&i| capacity(i));
    let grows = || (0..pool.len()).filter(|&i| capacity(i) < len).max_by_key(|&i| capacity(i));
    fits.or_else(grows).map(|i| pool.swap_remove(i)).unwrap_or_default()
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
}

#[cfg(test)]
mod tests {
    use super::Buffers;

    fn buffer(capacity: usize) -> Vec<u8> {
        Vec::with_capacity(capacity)
    }

    #[test]
    fn a_request_takes_a_buffer_of_its_own_size_grows_a_smaller_one_and_leaves_a_much_larger_one() {
        let pool = Buffers::default();
        for capacity in [16 << 20, 3 << 20, 1 << 20] {
            pool.give_bytes(buffer(capacity));
        }
        // Fits: the 3 MiB one for 3 MiB, not the 16 MiB one.
        assert_eq!(pool.bytes(3 << 20).capacity(), 3 << 20);
        // Packed codes of 2 MiB: the 16 MiB fetch buffer is over twice that, so the 1 MiB one
        // (the largest smaller) is taken to grow.
        assert_eq!(pool.bytes(2 << 20).capacity(), 1 << 20);
        // Only the 16 MiB one is left: a 4 MiB request gets a new buffer, 16 MiB requests it.
        assert_eq!(pool.bytes(4 << 20).capacity(), 0);
        assert_eq!(pool.bytes(9 << 20).capacity(), 16 << 20);
        assert_eq!(pool.bytes(1).capacity(), 0);
    }
}
