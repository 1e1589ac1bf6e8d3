//! GPU benchmark: fpx's FP6 GEMM vs cuBLAS FP16 (`cublasGemmEx`, what `torch.matmul` calls
//! for FP16) in one run, on the LLaMA-2 linear shapes and MiniLM's, for several M; beside each,
//! the HBM floor: the bytes the product must move (weights, X, Y and split-K partials) at the
//! measured device copy bandwidth. Times are from DRAM: every timed launch follows a write of
//! twice the L2 size, with its own event pair, and nothing waits on the host between launches
//! (so launch latency stays out; `Gpu::time_cold_us`); a back-to-back column (many launches
//! between two events, L2 warm) shows the decode-loop steady state, where MiniLM-sized
//! products are launch-bound. Prints a table (and JSON with `--json FILE`) with the issue's
//! targets: M <= 16 at least 2.2x cuBLAS, M = 1 at least 80% of HBM bandwidth, M = 128 not
//! slower than cuBLAS.
//!
//! `cargo run -p fpx-cuda --release --example gpu_bench -- [--quick] [--reps N] [--json FILE]`

use fpx_cuda::device::{Cublas, GemmOperands, Gpu, GpuGemm};
use fpx_cuda::{heuristic_config, CudaError};
use fpx_quant::layout::{pack, PackedShape};

const SHAPES: [(usize, usize); 9] =
    [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192), (8192, 10240), (384, 1536), (1536, 384)];
const MS: [usize; 7] = [1, 2, 4, 8, 16, 32, 128];

struct Row {
    k: usize,
    n: usize,
    m: usize,
    fpx_us: f64,
    fpx_warm_us: f64,
    cublas_us: Option<f64>,
    floor_us: f64,
    kernel: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = value("--reps").map_or(50, |v| v.parse().expect("--reps N"));
    if let Err(e) = run(quick, reps, value("--json")) {
        eprintln!("gpu_bench: error: {e}");
        std::process::exit(1);
    }
}

fn run(quick: bool, reps: usize, json: Option<String>) -> Result<(), CudaError> {
    let gpu = Gpu::open(0)?;
    let copy_gbs = gpu.copy_bandwidth_gbs(1 << 30)?;
    // A copy reads and writes each byte: the read (or write) bandwidth is half the total.
    let hbm_gbs = copy_gbs / 2.0;
    println!(
        "GPU: {} ({} SMs, compute {}.{}, L2 {} MiB); device copy {copy_gbs:.0} GB/s (read + write), HBM floor at {hbm_gbs:.0} GB/s",
        gpu.name,
        gpu.sm_count,
        gpu.capability.0,
        gpu.capability.1,
        gpu.l2_bytes >> 20
    );
    let cublas = match Cublas::new(&gpu) {
        Ok(c) => Some(c),
        Err(e) => {
            println!("cuBLAS column skipped: {e}");
            None
        }
    };
    let mut flush = gpu.l2_flush_buffer()?;
    let shapes: &[(usize, usize)] = if quick { &SHAPES[..2] } else { &SHAPES };
    let mut rows = Vec::new();
    for &(k, n) in shapes {
        let shape = PackedShape::new(n, k, 6);
        let codes: Vec<u8> = (0..n * k).map(|i| ((i * 2654435761) >> 7) as u8 & 63).collect();
        let packed = pack(&codes, &shape);
        let dw = gpu.upload(&packed)?;
        let ds = gpu.upload(&vec![1e-3f32; n])?;
        let max_m = *MS.last().unwrap();
        let dx = gpu.upload(&vec![0x3c00u16; max_m * shape.k_pad])?; // 1.0 in FP16
        let mut dy = gpu.zeros::<u16>(max_m * n)?;
        // cuBLAS operands: W as FP16 [k][n].
        let dwh = if cublas.is_some() { Some(gpu.upload(&vec![0x2000u16; k * n])?) } else { None };
        let dxh = gpu.upload(&vec![0x3c00u16; max_m * k])?;
        for &m in &MS {
            let cfg = heuristic_config(n, k, m, gpu.sm_count);
            let gemm = GpuGemm::load(&gpu, &cfg)?;
            let mut ws = gemm.workspace(&gpu, m)?;
            let mut launch =
                || gemm.launch(&gpu, m, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: None, y: &mut dy, ws: Some(&mut ws) });
            let fpx_us = gpu.time_cold_us(reps, &mut flush, &mut launch)?;
            let fpx_warm_us = gpu.time_back_to_back_us(reps, &mut launch)?;
            let cublas_us = match (&cublas, &dwh) {
                (Some(c), Some(w)) => Some(gpu.time_cold_us(reps, &mut flush, || c.hgemm(m, n, k, &dxh, w, &mut dy))?),
                _ => None,
            };
            // Bytes the FP6 product must move: weights and scales once, X read, Y written, and
            // the split-K partials written and read back.
            let bytes = packed.len() + 4 * n + 2 * m * shape.k_pad + 2 * m * n + 2 * cfg.workspace_bytes(m);
            rows.push(Row {
                k,
                n,
                m,
                fpx_us,
                fpx_warm_us,
                cublas_us,
                floor_us: bytes as f64 / (hbm_gbs * 1e9) * 1e6,
                kernel: cfg.kernel_name(),
            });
        }
    }

    println!(
        "\n{:>12} {:>5} {:>9} {:>9} {:>10} {:>8} {:>9} {:>6}  target",
        "K x N", "M", "fpx us", "warm us", "cuBLAS us", "speedup", "floor us", "% HBM"
    );
    let mut missed = 0;
    for r in &rows {
        let speedup = r.cublas_us.map(|c| c / r.fpx_us);
        let frac = r.floor_us / r.fpx_us;
        let target = match (r.m, speedup) {
            (1, s) => {
                let ok = frac >= 0.8 && s.is_none_or(|s| s >= 2.2);
                format!("{} (>= 80% HBM, >= 2.2x)", if ok { "met" } else { "MISSED" })
            }
            (m, Some(s)) if m <= 16 => format!("{} (>= 2.2x)", if s >= 2.2 { "met" } else { "MISSED" }),
            (128, Some(s)) => format!("{} (>= 1.0x)", if s >= 1.0 { "met" } else { "MISSED" }),
            _ => String::new(),
        };
        missed += target.starts_with("MISSED") as usize;
        println!(
            "{:>12} {:>5} {:>9.1} {:>9.1} {:>10} {:>8} {:>9.1} {:>5.0}%  {target}",
            format!("{}x{}", r.k, r.n),
            r.m,
            r.fpx_us,
            r.fpx_warm_us,
            r.cublas_us.map_or("-".into(), |c| format!("{c:.1}")),
            speedup.map_or("-".into(), |s| format!("{s:.2}x")),
            r.floor_us,
            100.0 * frac
        );
    }
    println!("targets missed: {missed}");
    if let Some(path) = json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"k\":{},\"n\":{},\"m\":{},\"fpx_us\":{:.3},\"fpx_back_to_back_us\":{:.3},\"cublas_us\":{},\"hbm_floor_us\":{:.3},\"kernel\":\"{}\"}}",
                    r.k,
                    r.n,
                    r.m,
                    r.fpx_us,
                    r.fpx_warm_us,
                    r.cublas_us.map_or("null".into(), |c| format!("{c:.3}")),
                    r.floor_us,
                    r.kernel
                )
            })
            .collect();
        let text = format!(
            "{{\"gpu\":\"{}\",\"sm_count\":{},\"copy_gb_per_s\":{copy_gbs:.1},\"timing\":\"L2 flushed, median of {reps}\",\"rows\":[{}]}}\n",
            gpu.name.replace('"', "'"),
            gpu.sm_count,
            items.join(",")
        );
        std::fs::write(&path, text)?;
    }
    Ok(())
}
