//! Times the FP6 (e3m2, per-channel) GEMV kernel at M = 1 (and a few larger M) with 1 and 2
//! threads splitting N, and prints GB/s of packed weight bytes read.
//!
//! With `--activations int8` the median includes quantizing the rows (as the runtime does per
//! product, with the same AVX-512 quantizer where the CPU has it); "kernel GOP/s" times the
//! kernel alone, and "% peak" sets it against this machine's `vpdpbusd` throughput, measured
//! first (AVX-512 VNNI hosts only).
//!
//! `cargo run -p fpx-llvm --release --example gemv_bench -- [--target native|v3|v4|v4vnni] [--sizes 4096,8192,384x1536] [--reps N]
//!  [--ms 1,8,32] [--format fp6-e2m3] [--activations f32|int8] [--variant gemv|gemm|both]`
//!
//! "cold" rotates over enough copies of the weight to exceed the last-level cache, so every
//! call streams from DRAM; "hot" reuses one copy (L3-resident when it fits).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use fpx_llvm::{compile_cpu, Activations, CpuTarget, QuantGemm, Variant};
use fpx_quant::act8::Int8Activations;
use fpx_quant::layout::PackedShape;
use fpx_quant::Format;
use fpx_test_support::Rng;

type KernelFn = unsafe extern "C" fn(*const f32, i64, *const u8, *const f32, *const f32, *mut f32, i64, i64);

/// Raw pointers handed to worker threads (the buffers outlive every call).
#[derive(Clone, Copy)]
struct Call {
    f: KernelFn,
    x: *const f32,
    m: i64,
    packed: *const u8,
    scales: *const f32,
    y: *mut f32,
    nb: i64,
    ne: i64,
}

// SAFETY: the pointed-to buffers are only read, except y, whose column ranges are disjoint.
unsafe impl Send for Call {}

/// A persistent pool: worker `i` computes column slice `i` of every call.
struct Pool {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    jobs: Vec<Arc<std::sync::Mutex<Option<Call>>>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let start = Arc::new(Barrier::new(threads));
        let done = Arc::new(Barrier::new(threads));
        let jobs: Vec<_> = (0..threads).map(|_| Arc::new(std::sync::Mutex::new(None))).collect();
        for job in jobs.iter().skip(1) {
            let (start, done, job) = (start.clone(), done.clone(), job.clone());
            std::thread::spawn(move || loop {
                start.wait();
                let call: Option<Call> = *job.lock().unwrap();
                match call {
                    Some(c) => unsafe { (c.f)(c.x, c.m, c.packed, c.scales, std::ptr::null(), c.y, c.nb, c.ne) },
                    None => return,
                }
                done.wait();
            });
        }
        Pool { start, done, jobs }
    }

    /// Runs one call split over the pool's threads at multiples of 16 columns.
    fn run(&self, f: KernelFn, (x, m): (*const f32, usize), packed: &[u8], scales: &[f32], y: &mut [f32], n: usize) {
        let t = self.jobs.len();
        let tiles = n.div_ceil(16);
        for (i, job) in self.jobs.iter().enumerate() {
            let nb = (tiles * i / t * 16).min(n);
            let ne = (tiles * (i + 1) / t * 16).min(n);
            let call = Call {
                f,
                x,
                m: m as i64,
                packed: packed.as_ptr(),
                scales: scales.as_ptr(),
                y: y.as_mut_ptr(),
                nb: nb as i64,
                ne: ne as i64,
            };
            *job.lock().unwrap() = Some(call);
        }
        self.start.wait();
        let c = self.jobs[0].lock().unwrap().unwrap();
        // SAFETY: buffers sized for the kernel's spec; slices disjoint.
        unsafe { (c.f)(c.x, c.m, c.packed, c.scales, std::ptr::null(), c.y, c.nb, c.ne) };
        self.done.wait();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for job in &self.jobs {
            *job.lock().unwrap() = None;
        }
        self.start.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let target = match get("--target").as_deref() {
        None | Some("native") => CpuTarget::Native,
        Some("v3") => CpuTarget::X86_64V3,
        Some("v4") => CpuTarget::X86_64V4,
        Some("v4vnni") => CpuTarget::X86_64V4Vnni,
        Some(t) => panic!("unknown target {t}"),
    };
    // Each size is K x N ("384x1536") or a square N ("4096").
    let sizes: Vec<(usize, usize)> = get("--sizes")
        .unwrap_or_else(|| "4096,8192".into())
        .split(',')
        .map(|s| match s.split_once('x') {
            Some((k, n)) => (k.parse().expect("K"), n.parse().expect("N")),
            None => (s.parse().expect("size"), s.parse().expect("size")),
        })
        .collect();
    let reps: usize = get("--reps").map(|s| s.parse().unwrap()).unwrap_or(50);
    let ms: Vec<usize> = get("--ms").unwrap_or_else(|| "1,2,4,8".into()).split(',').map(|s| s.parse().unwrap()).collect();
    let format = get("--format").map(|f| Format::parse(&f).expect("format")).unwrap_or(Format::Fp6E3M2);
    let activations = get("--activations").map(|a| Activations::parse(&a).expect("activations: f32 or int8")).unwrap_or_default();
    let variants: Vec<Variant> = match get("--variant").as_deref() {
        None | Some("gemv") => vec![Variant::Gemv],
        Some("gemm") => vec![Variant::Gemm],
        Some("both") => vec![Variant::Gemv, Variant::Gemm],
        Some(v) => panic!("unknown variant {v}"),
    };

    let specs: Vec<QuantGemm> = sizes.iter().map(|&(k, n)| QuantGemm { format, k, n, group_size: 0, activations }).collect();
    let t0 = Instant::now();
    let compiled = compile_cpu(&specs, target).expect("compile");
    println!(
        "compiled {} kernels for {} in {:.2} s ({} KiB)",
        compiled.symbols.len(),
        compiled.target,
        t0.elapsed().as_secs_f64(),
        compiled.shared_object.len() / 1024
    );
    let dir = std::env::temp_dir().join(format!("fpx-gemv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kernels.so");
    std::fs::write(&path, &compiled.shared_object).unwrap();
    // SAFETY: fpx-llvm output.
    let lib = unsafe { libloading::Library::new(&path) }.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let peak = (activations == Activations::Int8).then(vnni_peak_gops).flatten();
    match peak {
        Some(p) => println!("int8 multiply-add peak (vpdpbusd zmm, one core, measured): {p:.0} GOP/s"),
        None if activations == Activations::Int8 => println!("int8 peak: not measured (no AVX-512 VNNI here)"),
        None => {}
    }
    println!(
        "{:<22} {:>3} {:>7} {:>5} {:>11} {:>6} {:>14} {:>9} {:>12} {:>7}",
        "kernel", "thr", "cache", "m", "median", "GB/s", "(best GB/s)", "GFLOP/s", "kernel GOP/s", "% peak"
    );
    for spec in &specs {
        let (k, n) = (spec.k, spec.n);
        let bytes = PackedShape::new(n, k, format.bits()).total_bytes();
        let copies = (96 << 20) / bytes + 1; // > 32 MiB L3 several times over
        let mut rng = Rng::new(42);
        let packed: Vec<Vec<u8>> = (0..copies).map(|_| rng.bytes(bytes)).collect();
        let scales: Vec<f32> = (0..n).map(|i| 1e-4 * (1.0 + (i % 7) as f32)).collect();
        let mmax = *ms.iter().max().unwrap();
        let x: Vec<f32> = (0..mmax * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let mut y = vec![0f32; mmax * n];
        for &variant in &variants {
            let symbol = fpx_llvm::symbol(spec, variant);
            // SAFETY: exported by the library with the documented signature.
            let f: KernelFn = unsafe { *lib.get::<KernelFn>(symbol.as_bytes()).unwrap() };
            for threads in [1, 2] {
                let pool = Pool::new(threads);
                for &m in &ms {
                    for cold in [true, false] {
                        let (mut times, mut kernel_times) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
                        for rep in 0..reps + 3 {
                            let w = if cold { &packed[rep % copies] } else { &packed[0] };
                            let t = Instant::now();
                            // Int8 kernels take the rows quantized: timed, as the runtime does it per call.
                            let q = (activations == Activations::Int8).then(|| Int8Activations::quantize(&x[..m * k], m, k));
                            let xp = q.as_ref().map_or(x.as_ptr(), |q| q.as_ptr());
                            let tk = Instant::now();
                            pool.run(f, (xp, m), w, &scales, &mut y, n);
                            if rep >= 3 {
                                times.push(t.elapsed().as_secs_f64());
                                kernel_times.push(tk.elapsed().as_secs_f64());
                            }
                        }
                        times.sort_by(f64::total_cmp);
                        kernel_times.sort_by(f64::total_cmp);
                        let med = times[times.len() / 2];
                        let best = times[0];
                        let kernel_gops = 2.0 * (m * k * n) as f64 / kernel_times[kernel_times.len() / 2] / 1e9;
                        let of_peak = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * kernel_gops / (p * threads as f64)));
                        println!(
                            "{:<22} {:>3} {:>7} {:>5} {:>8.3} ms {:>6.1} {:>14} {:>9.1} {:>12.1} {:>7}",
                            format!("{}x{} {}", k, n, variant),
                            threads,
                            if cold { "cold" } else { "hot" },
                            m,
                            med * 1e3,
                            bytes as f64 / med / 1e9,
                            format!("({:.1})", bytes as f64 / best / 1e9),
                            2.0 * (m * k * n) as f64 / med / 1e9,
                            kernel_gops,
                            of_peak
                        );
                    }
                }
            }
        }
    }
}

/// One core's `vpdpbusd` (512-bit) throughput in GOP/s (2 operations per byte product),
/// measured with twelve independent chains; `None` without AVX-512 VNNI.
fn vnni_peak_gops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn chains(iters: u64) -> i32 {
            let (a, b) = (_mm512_set1_epi32(0x0101_0101), _mm512_set1_epi32(0x0202_0202));
            let mut acc = [_mm512_setzero_si512(); 12];
            for _ in 0..iters {
                for c in acc.iter_mut() {
                    *c = _mm512_dpbusd_epi32(*c, a, b);
                }
            }
            acc.iter().fold(0, |s, c| s.wrapping_add(_mm512_reduce_add_epi32(*c)))
        }
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")) {
            return None;
        }
        let iters = 20_000_000u64;
        // SAFETY: the CPU has AVX-512 F and VNNI (checked above).
        std::hint::black_box(unsafe { chains(iters / 10) });
        let t = Instant::now();
        // SAFETY: as above.
        std::hint::black_box(unsafe { chains(iters) });
        Some(iters as f64 * 12.0 * 64.0 * 2.0 / t.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
