//! `fpx bench`: run a prepared model repeatedly in-process and report latency and, per
//! quantized product, time and effective weight bandwidth.

use crate::Error;
use fpx_ir::Tensor;
use fpx_runtime::{CpuExecutor, NodeTiming};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Most measured iterations [`bench`] takes (`fpx bench --iters`): a million runs of even the
/// smallest model take minutes, and each iteration keeps its timings.
pub const MAX_ITERS: usize = 1_000_000;

/// Most worker threads [`bench`] and [`read_bandwidth`] start (`--threads`): more than any
/// machine fpx targets has cores, and few enough that starting them is quick.
pub const MAX_THREADS: usize = 1024;

/// Largest buffer [`read_bandwidth`] reads, in GiB (`fpx membw --gib`).
pub const MAX_GIB: f64 = 64.0;

/// Refuses a thread count outside 1 to [`MAX_THREADS`].
pub(crate) fn check_threads(threads: usize) -> Result<(), Error> {
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(Error::Options(format!("{threads} threads: the thread count must be 1 to {MAX_THREADS}")));
    }
    Ok(())
}

/// Per-node timing summary over the measured iterations.
#[derive(Debug, Clone, Serialize)]
pub struct KernelStat {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op: String,
    /// Whether the node ran a natively compiled kernel (else the reference path).
    pub native: bool,
    /// Median time.
    pub median_us: f64,
    /// Bytes of packed weights plus scales the node reads (0 for other ops).
    pub weight_bytes: u64,
    /// `weight_bytes / median` (0 for other ops).
    pub weight_gb_per_s: f64,
}

/// What `fpx bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Measured iterations (after one warm-up).
    pub iters: usize,
    /// Worker threads.
    pub threads: usize,
    /// Median end-to-end latency.
    pub median_us: f64,
    /// Fastest iteration.
    pub min_us: f64,
    /// Slowest iteration.
    pub max_us: f64,
    /// Per QuantMatMul/MatMul/Gemm node, in graph order, then the rest summed by op.
    pub kernels: Vec<KernelStat>,
    /// Total median time per op type.
    pub per_op_us: BTreeMap<String, f64>,
}

/// Spare positions a benchmarked KV-cache input gets.
const CACHE_ROOM: usize = 16;

/// The inputs with every cache that an `fpx:KvAppend` appends to laid out with spare room, as
/// generation preallocates it (`fpx::Generator`): a timed decode step then appends in place
/// instead of growing, i.e. copying, the whole cache. Values and shapes are unchanged; an
/// input that cannot be laid out so (not floating point) stays as it is.
pub fn with_cache_room(graph: &fpx_ir::Graph, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut axes: BTreeMap<String, i64> = BTreeMap::new();
    for id in graph.node_ids() {
        let n = graph.node(id);
        if let Some(Some(past)) = n.inputs.first().filter(|_| fpx_ir::ops::kv_append::is_kv_append(n)) {
            if graph.inputs.contains(past) {
                axes.insert(graph.value(*past).name.clone(), n.attr_i("axis", 0));
            }
        }
    }
    inputs
        .iter()
        .map(|(name, t)| {
            let roomy = axes.get(name).and_then(|&axis| {
                let ax = fpx_ir::ops::normalize_axis(axis, t.rank())?;
                let len = t.shape()[ax];
                let mut room = fpx_runtime::kernels::kv_append::cache_with_capacity(t.dtype(), t.shape(), ax, len + CACHE_ROOM).ok()?;
                fill_from(&mut room, t).then_some(room)
            });
            (name.clone(), roomy.unwrap_or_else(|| t.clone()))
        })
        .collect()
}

/// Copies `src`'s values into `dst` (same shape and float type, any layout); false otherwise.
fn fill_from(dst: &mut Tensor, src: &Tensor) -> bool {
    match (dst, src) {
        (Tensor::F32(d), Tensor::F32(s)) if d.shape() == s.shape() => d.assign(s),
        (Tensor::F16(d), Tensor::F16(s)) if d.shape() == s.shape() => d.assign(s),
        (Tensor::BF16(d), Tensor::BF16(s)) if d.shape() == s.shape() => d.assign(s),
        (Tensor::F64(d), Tensor::F64(s)) if d.shape() == s.shape() => d.assign(s),
        _ => return false,
    }
    true
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Runs `executor` `iters` times (plus one warm-up) on `threads` threads.
/// `iters` must be 1 to [`MAX_ITERS`] and `threads` 1 to [`MAX_THREADS`].
pub fn bench(executor: &CpuExecutor, inputs: &[(String, Tensor)], iters: usize, threads: usize) -> Result<BenchReport, Error> {
    bench_with_outputs(executor, inputs, iters, threads).map(|(report, _)| report)
}

/// Like [`bench`], and also returns the outputs of the warm-up run (`fpx bench --output-dir`:
/// what the timed runs computed, for an accuracy check beside the timing, without a second
/// process or run).
pub fn bench_with_outputs(
    executor: &CpuExecutor,
    inputs: &[(String, Tensor)],
    iters: usize,
    threads: usize,
) -> Result<(BenchReport, Vec<(String, Tensor)>), Error> {
    if !(1..=MAX_ITERS).contains(&iters) {
        return Err(Error::Options(format!("{iters} iterations: the iteration count must be 1 to {MAX_ITERS}")));
    }
    check_threads(threads)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| fpx_passes::PassError::Option(format!("cannot start {threads} threads: {e}")))?;
    let inputs = with_cache_room(executor.graph(), inputs);
    pool.install(|| -> Result<(BenchReport, Vec<(String, Tensor)>), Error> {
        let outputs = executor.run(inputs.to_vec())?;
        let mut totals = Vec::with_capacity(iters);
        let mut per_node: Vec<Vec<NodeTiming>> = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let mut prof = Vec::new();
            // The run takes its inputs by value: the copy is made before the clock starts.
            let run_inputs = inputs.to_vec();
            let t = Instant::now();
            let outputs = executor.run_profiled(run_inputs, Some(&mut prof))?;
            totals.push(t.elapsed().as_secs_f64() * 1e6);
            // Dropped after the clock stops (a decoder's present caches are megabytes to unmap),
            // as onnxruntime's caller drops its outputs after `session.run` returns.
            drop(outputs);
            per_node.push(prof);
        }
        let g = executor.graph();
        let weight_bytes = |name: &str| -> u64 {
            g.node_ids()
                .into_iter()
                .map(|id| g.node(id))
                .find(|n| n.name == name && fpx_ir::ops::quant_matmul::is_quant_matmul(n))
                .map(|n| {
                    n.inputs[1..3]
                        .iter()
                        .flatten()
                        .filter_map(|v| g.constant_type(*v))
                        .map(|(dtype, shape)| (shape.iter().product::<usize>() * dtype.size_bytes()) as u64)
                        .sum()
                })
                .unwrap_or(0)
        };
        let mut kernels = Vec::new();
        let mut per_op: BTreeMap<String, f64> = BTreeMap::new();
        for (i, first) in per_node[0].iter().enumerate() {
            let mut times: Vec<f64> = per_node.iter().map(|p| p[i].seconds * 1e6).collect();
            let med = median(&mut times);
            *per_op.entry(first.op.clone()).or_default() += med;
            if [fpx_ir::ops::quant_matmul::OP_TYPE, "MatMul", "Gemm"].contains(&first.op.as_str()) {
                let wb = weight_bytes(&first.node);
                kernels.push(KernelStat {
                    node: first.node.clone(),
                    op: first.op.clone(),
                    native: first.native,
                    median_us: med,
                    weight_bytes: wb,
                    weight_gb_per_s: if med > 0.0 { wb as f64 / (med * 1e-6) / 1e9 } else { 0.0 },
                });
            }
        }
        let (min, max) = (totals.iter().copied().fold(f64::INFINITY, f64::min), totals.iter().copied().fold(0.0, f64::max));
        let report = BenchReport {
            iters: iters.max(1),
            threads: threads.max(1),
            median_us: median(&mut totals),
            min_us: min,
            max_us: max,
            kernels,
            per_op_us: per_op,
        };
        Ok((report, outputs))
    })
}

impl BenchReport {
    /// The text table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} iterations, {} threads: median {:.1} us, min {:.1} us, max {:.1} us",
            self.iters, self.threads, self.median_us, self.min_us, self.max_us
        );
        let _ = writeln!(s, "\n{:<48} {:<12} {:>7} {:>11} {:>11} {:>9}", "node", "op", "native", "median_us", "weight_MB", "GB/s");
        for k in &self.kernels {
            let _ = writeln!(
                s,
                "{:<48} {:<12} {:>7} {:>11.1} {:>11.3} {:>9.2}",
                k.node.chars().rev().take(48).collect::<Vec<_>>().into_iter().rev().collect::<String>(),
                k.op,
                if k.native { "yes" } else { "no" },
                k.median_us,
                k.weight_bytes as f64 / 1e6,
                k.weight_gb_per_s
            );
        }
        let _ = writeln!(s, "\ntime per op type (sum of medians):");
        let mut ops: Vec<_> = self.per_op_us.iter().collect();
        ops.sort_by(|a, b| b.1.total_cmp(a.1));
        for (op, us) in ops {
            let _ = writeln!(s, "  {op:<24} {us:>10.1} us");
        }
        s
    }
}

/// A measured memory read bandwidth.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Worker threads.
    pub threads: usize,
    /// Bytes read per pass.
    pub bytes: u64,
    /// Seconds of the best pass.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub gb_per_s: f64,
    /// Passes measured.
    pub passes: usize,
}

/// Bytes ahead of the chunk being read that [`max_of`] prefetches: what fpx's product kernels
/// keep in flight (16 tiles of 6-bit codes), so the ceiling is measured the way they stream.
const PREFETCH_BYTES: usize = 6 << 10;

/// Max of a slice with 32 independent lanes (`x > a` selects, as `maxps` does), so the loop
/// vectorizes and the measurement is bound by memory, not by a dependency chain. The lines
/// [`PREFETCH_BYTES`] ahead are prefetched, as the product kernels do: the hardware prefetcher
/// alone reads slower than they do.
fn max_of(c: &[f32]) -> f32 {
    let mut acc = [f32::MIN; 32];
    let mut chunks = c.chunks_exact(32);
    for ch in &mut chunks {
        #[cfg(target_arch = "x86_64")]
        for line in [0, 64] {
            let ahead = ch.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES + line);
            // SAFETY: a prefetch never faults, whatever the address (past the slice's end too).
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ahead) };
        }
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a = if x > *a { x } else { *a };
        }
    }
    let tail = chunks.remainder().iter().fold(f32::MIN, |a, &b| a.max(b));
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// Reads a `bytes`-sized buffer of f32 with a max-reduction on `threads` threads, best of 5
/// passes (after touching every page once), and returns the read bandwidth. `threads` must be 1
/// to [`MAX_THREADS`]; a buffer larger than the memory available now (`MemAvailable` of
/// `/proc/meminfo`) or than the allocator grants is an error, not an abort.
pub fn read_bandwidth(bytes: usize, threads: usize) -> Result<Bandwidth, Error> {
    use rayon::prelude::*;
    check_threads(threads)?;
    let n = (bytes / 4).max(1 << 20);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let want = n as u64 * 4;
    if let Some(avail) = mem_available() {
        if want > avail {
            return Err(Error::Options(format!(
                "a {:.2} GiB buffer does not fit in the {:.2} GiB of memory available now; use a smaller size",
                gib(want),
                gib(avail)
            )));
        }
    }
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(n).map_err(|_| Error::Options(format!("cannot allocate a {:.2} GiB buffer; use a smaller size", gib(want))))?;
    data.extend((0..n).map(|i| (i % 1021) as f32));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| fpx_passes::PassError::Option(format!("cannot start {threads} threads: {e}")))?;
    let chunk = n.div_ceil(threads.max(1) * 8);
    let mut best = f64::INFINITY;
    let mut sink = 0f32;
    for _ in 0..5 {
        let t = Instant::now();
        let m = pool.install(|| data.par_chunks(chunk).map(max_of).reduce(|| f32::MIN, f32::max));
        best = best.min(t.elapsed().as_secs_f64());
        sink += m;
    }
    std::hint::black_box(sink);
    let bytes = (n * 4) as u64;
    Ok(Bandwidth { threads: threads.max(1), bytes, seconds: best, gb_per_s: bytes as f64 / best / 1e9, passes: 5 })
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where it cannot be read).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarked_caches_get_room_and_keep_their_values() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/zoo/llama-torchscript-kv");
        let model = crate::open(&fixture.join("model.onnx")).unwrap();
        let set = fixture.join("b2-p5-s1-leftpad");
        let mut inputs = Vec::new();
        for name in ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.1.value"] {
            inputs.push((name.to_string(), fpx_runtime::npy::read(&set.join(format!("input.{name}.npy"))).unwrap()));
        }
        let roomy = with_cache_room(model.graph(), &inputs);
        for ((name, before), (_, after)) in inputs.iter().zip(&roomy) {
            assert_eq!(before.shape(), after.shape(), "{name}");
            assert_eq!(before.to_f64_vec(), after.to_f64_vec(), "{name}");
            let is_cache = name.starts_with("past_key_values.");
            let standard = after.as_f32().is_none_or(|a| a.is_standard_layout());
            assert_eq!(!standard, is_cache, "{name}: caches get room, other inputs stay as they are");
        }
        // A clone keeps the room (each timed run gets a clone).
        assert!(!roomy[3].1.clone().as_f32().unwrap().is_standard_layout());
    }

    #[test]
    fn thread_and_size_bounds_are_errors() {
        assert!(read_bandwidth(1 << 22, 0).unwrap_err().to_string().contains("1 to 1024"));
        assert!(read_bandwidth(1 << 22, MAX_THREADS + 1).unwrap_err().to_string().contains("1 to 1024"));
        // More than any machine has: refused before allocating, never an abort.
        let e = read_bandwidth(usize::MAX / 2, 1).unwrap_err().to_string();
        assert!(e.contains("GiB"), "{e}");
    }

    #[test]
    fn mem_available_reads_meminfo() {
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(mem_available().is_some_and(|b| b > 0));
        }
    }
}
