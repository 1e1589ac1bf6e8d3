//! The GPU search on a GPU: a LLaMA-sized and a MiniLM-sized product tuned with a small budget,
//! a planted wrong kernel (the other FP6 format's, under a neighbour's config) rejected, and
//! every kept config re-run and checked. Prints SKIP without a GPU (fails with FPX_REQUIRE=gpu);
//! `scripts/gpu-check.sh` runs it.

use std::time::{Duration, Instant};

use fpx_cuda::device::Gpu;
use fpx_cuda::{Fp6Format, GemmConfig};
use fpx_quant::Format;
use fpx_test_support::{skip, Requirement};
use fpx_tune::gpu::{heuristic_for, tune_gpu_product, DeviceRunner, GemmRunner, GpuProblem, GpuTiling};
use fpx_tune::MBucket;

use super::gemm;

#[test]
fn device_search_rejects_a_planted_kernel_and_keeps_correct_configs() {
    let test = "device_search_rejects_a_planted_kernel_and_keeps_correct_configs";
    if let Err(e) = fpx_cuda::driver_available() {
        return skip(Requirement::Gpu, test, &e.to_string());
    }
    if let Err(e) = fpx_cuda::load_nvrtc(None) {
        return skip(Requirement::Gpu, test, &format!("NVRTC is not loadable ({e})"));
    }
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => return skip(Requirement::Gpu, test, &e.to_string()),
    };
    let mut runner = DeviceRunner::new(gpu).unwrap();
    let machine = runner.machine();
    eprintln!("GPU: {machine} ({})", runner.arch());
    for (k, n, buckets) in [(4096, 4096, vec![MBucket::M1, MBucket::M9To16]), (384, 1536, vec![MBucket::M65To128])] {
        let g = gemm(Format::Fp6E3M2, k, n);
        let mut problem = GpuProblem::new(&g, 3).unwrap();
        let default = heuristic_for(&g, Fp6Format::E3M2, buckets[0], machine.sm_count);
        let planted = GemmConfig { stages: if default.stages > 2 { default.stages - 1 } else { 3 }, ..default.clone() };
        runner.plant(&planted, Fp6Format::E2M3);
        let mut rejected = Vec::new();
        let start = Instant::now();
        let found =
            tune_gpu_product(&mut runner, &mut problem, &buckets, start + Duration::from_secs(20), &mut rejected, &mut || {}).unwrap();
        assert!(
            rejected.iter().any(|r| r.candidate == GpuTiling::of(&planted) && r.reason.contains("the reference gives")),
            "{rejected:?}"
        );
        assert_eq!(found.len(), buckets.len());
        for r in &found {
            assert_ne!(r.config, planted);
            eprintln!(
                "  K={k} N={n} M {}: {} {:.1} µs vs heuristic {:.1} µs ({:.2}x), {} timed, {:.0} s",
                r.bucket,
                GpuTiling::of(&r.config),
                r.micros,
                r.default_micros,
                r.default_micros / r.micros,
                r.timed,
                start.elapsed().as_secs_f64()
            );
            // The kept config computes the product at every M of its bucket's samples.
            runner.prepare(std::slice::from_ref(&r.config)).into_iter().for_each(|x| x.unwrap());
            for m in r.bucket.samples() {
                let y = runner.run(&r.config, m).unwrap();
                problem.verify(m, &y).unwrap();
            }
        }
    }
}
