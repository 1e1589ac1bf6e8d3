//! The FP6 GEMM on a GPU against an independent CPU reference (decode every code, multiply in
//! f64): random codes and FP16 activations (fixed seeds), the MiniLM and LLaMA-2 linear shapes
//! plus awkward ones, M from 1 to 1000, both FP6 formats, with and without bias, outputs
//! poisoned first. Without a CUDA driver or device every test prints SKIP and passes (fails
//! with `FPX_REQUIRE=gpu`); on a GPU machine `scripts/gpu-check.sh` runs them (and
//! compute-sanitizer over them).

use fpx_cuda::device::{GemmOperands, Gpu, GpuGemm};
use fpx_cuda::{heuristic_config, Act, Fp6Format, GemmConfig};
use fpx_quant::layout::{pack, PackedShape};
use half::f16;

use fpx_test_support::Rng;

use crate::common::{open_gpu, LINEAR_SHAPES};

/// GPU 0 with NVRTC ready, or `None` after skipping `test` ([`open_gpu`]).
fn gpu_or_skip(test: &str) -> Option<Gpu> {
    open_gpu(test).map(|(gpu, _)| gpu)
}

/// One random problem: codes `[n][k]`, true scales, bias, X `[m][k_pad]` as FP16 bits.
struct Problem {
    format: Fp6Format,
    n: usize,
    k: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Problem {
    fn new(format: Fp6Format, n: usize, k: usize, with_bias: bool, seed: u64) -> Problem {
        let mut r = Rng::new(seed);
        let codes = (0..n * k).map(|_| r.below(64) as u8).collect();
        let spread = (k as f64).sqrt();
        let scales = (0..n).map(|_| ((0.25 + r.uniform()) / spread) as f32).collect();
        let bias = with_bias.then(|| (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect());
        Problem { format, n, k, codes, scales, bias }
    }

    fn activations(&self, m: usize, seed: u64) -> Vec<u16> {
        let mut r = Rng::new(seed);
        let k_pad = self.k.div_ceil(32) * 32;
        let mut x = vec![0u16; m * k_pad];
        for row in x.chunks_mut(k_pad) {
            for v in &mut row[..self.k] {
                *v = f16::from_f64(r.uniform() * 2.0 - 1.0).to_bits();
            }
        }
        x
    }

    /// `y[row][col]` in f64 from the decoded codes and the FP16 activations.
    fn reference(&self, x: &[u16], row: usize, col: usize) -> f64 {
        let k_pad = self.k.div_ceil(32) * 32;
        let q = self.format.quant_format();
        let xr = &x[row * k_pad..row * k_pad + self.k];
        let wr = &self.codes[col * self.k..(col + 1) * self.k];
        let dot: f64 = xr.iter().zip(wr).map(|(&xv, &c)| f16::from_bits(xv).to_f64() * q.decode(c) as f64).sum();
        dot * self.scales[col] as f64 + self.bias.as_ref().map_or(0.0, |b| b[col] as f64)
    }
}

/// Runs `cfg` on the GPU for `m` rows and checks a sample of outputs (every one for small
/// problems): per element `|y - ref| <= 2e-3 |ref| + 2e-3 rms(ref)`, and per row the relative
/// L2 error `<= 2e-3`. Returns the worst relative L2 error seen.
fn check(gpu: &Gpu, gemm: &GpuGemm, p: &Problem, m: usize, seed: u64) -> f64 {
    let cfg = &gemm.cfg;
    let shape = PackedShape::new(p.n, p.k, 6);
    let packed = pack(&p.codes, &shape);
    let factor = fpx_quant::fold::storage_factor(p.format.quant_format());
    let folded: Vec<f32> = p.scales.iter().map(|s| s * factor).collect();
    let x = p.activations(m, seed);
    let (dx, dw, ds) = (gpu.upload(&x).unwrap(), gpu.upload(&packed).unwrap(), gpu.upload(&folded).unwrap());
    let db = p.bias.as_ref().map(|b| gpu.upload(b).unwrap());
    let mut dy = gpu.upload(&vec![0xffffu16; m * p.n]).unwrap();
    let mut ws = gemm.workspace(gpu, m).unwrap();
    gemm.launch(gpu, m, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: db.as_ref(), y: &mut dy, ws: Some(&mut ws) }).unwrap();
    let y = gpu.download(&dy).unwrap();
    // Split-K: the last split of each output block reset its counter, and a second launch on the
    // same workspace gives the same bits (the splits are summed in a fixed order).
    assert!(ws.counters(gpu).unwrap().iter().all(|&c| c == 0), "{}: counters left non-zero", cfg.kernel_name());
    let mut dy2 = gpu.upload(&vec![0xffffu16; m * p.n]).unwrap();
    gemm.launch(gpu, m, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: db.as_ref(), y: &mut dy2, ws: Some(&mut ws) }).unwrap();
    assert!(gpu.download(&dy2).unwrap() == y, "{}: M={m} a second launch gave other bits", cfg.kernel_name());

    let mut r = Rng::new(seed ^ 0x5eed);
    let rows: Vec<usize> = if m <= 64 { (0..m).collect() } else { (0..24).map(|_| r.below(m)).chain([0, m - 1]).collect() };
    let cols: Vec<usize> =
        if p.n <= 512 { (0..p.n).collect() } else { (0..80).map(|_| r.below(p.n)).chain((0..16).chain(p.n - 16..p.n)).collect() };
    let mut worst = 0f64;
    for &row in &rows {
        let want: Vec<f64> = cols.iter().map(|&c| p.reference(&x, row, c)).collect();
        let got: Vec<f64> = cols.iter().map(|&c| f16::from_bits(y[row * p.n + c]).to_f64()).collect();
        let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        let (mut err2, mut ref2) = (0.0, 0.0);
        for ((&c, g), w) in cols.iter().zip(&got).zip(&want) {
            assert!(g.is_finite(), "{}: M={m} y[{row}][{c}] = {g} (unwritten or overflow)", cfg.kernel_name());
            assert!((g - w).abs() <= 2e-3 * w.abs() + 2e-3 * rms, "{}: M={m} y[{row}][{c}] = {g}, want {w} (rms {rms})", cfg.kernel_name());
            err2 += (g - w) * (g - w);
            ref2 += w * w;
        }
        let rel = (err2 / ref2.max(1e-30)).sqrt();
        assert!(rel <= 2e-3, "{}: M={m} row {row} relative L2 error {rel}", cfg.kernel_name());
        worst = worst.max(rel);
    }
    worst
}

/// The shapes: MiniLM's and the LLaMA-2 linear layers (K × N), plus awkward ones.
fn shapes() -> impl Iterator<Item = (usize, usize)> {
    LINEAR_SHAPES.into_iter().chain([(100, 40), (4128, 1000)])
}

const MS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1000];

#[test]
fn fp6_gemm_matches_the_cpu_reference_on_every_shape_and_m() {
    let Some(gpu) = gpu_or_skip("fp6_gemm_matches_the_cpu_reference_on_every_shape_and_m") else { return };
    eprintln!("GPU: {} ({} SMs, compute {}.{})", gpu.name, gpu.sm_count, gpu.capability.0, gpu.capability.1);
    for (i, (k, n)) in shapes().enumerate() {
        let format = if i % 2 == 0 { Fp6Format::E3M2 } else { Fp6Format::E2M3 };
        let p = Problem::new(format, n, k, i % 3 == 0, 1000 + i as u64);
        let mut worst = 0f64;
        for (j, &m) in MS.iter().enumerate() {
            let cfg = GemmConfig { format, ..heuristic_config(n, k, m, gpu.sm_count) };
            let gemm = GpuGemm::load(&gpu, &cfg).unwrap();
            worst = worst.max(check(&gpu, &gemm, &p, m, 77 + j as u64));
        }
        eprintln!("  K={k:>5} N={n:>5} {format:?}: worst relative L2 error {worst:.2e} over M in {MS:?}");
    }
}

/// A config is correct for every M, not just the one it was chosen for (the artifact picks one
/// config per M range): split-K configs at large M, non-split configs at M = 1, every token tile.
#[test]
fn any_config_is_correct_for_any_m() {
    let Some(gpu) = gpu_or_skip("any_config_is_correct_for_any_m") else { return };
    let p = Problem::new(Fp6Format::E3M2, 1000, 4128, true, 5);
    for m_tile in [8, 16, 32, 64] {
        for split_k in [1, 3, 7] {
            let base = heuristic_config(p.n, p.k, m_tile, gpu.sm_count);
            let cfg = GemmConfig { split_k, ..base };
            let gemm = GpuGemm::load(&gpu, &cfg).unwrap();
            for m in [1, 7, 65, 300] {
                check(&gpu, &gemm, &p, m, m as u64);
            }
        }
    }
}

/// BF16 activations: the kernel's offset dequantization path.
#[test]
fn bf16_activations_match_the_reference() {
    let Some(gpu) = gpu_or_skip("bf16_activations_match_the_reference") else { return };
    for format in [Fp6Format::E3M2, Fp6Format::E2M3] {
        let p = Problem::new(format, 384, 1536, true, 9);
        for m in [1, 16, 100] {
            let cfg = GemmConfig { format, act: Act::Bf16, ..heuristic_config(p.n, p.k, m, gpu.sm_count) };
            let gemm = GpuGemm::load(&gpu, &cfg).unwrap();
            // X as BF16: reuse the FP16 generator's values, converted.
            let x16 = p.activations(m, 3);
            let x: Vec<u16> = x16.iter().map(|&b| half::bf16::from_f32(f16::from_bits(b).to_f32()).to_bits()).collect();
            let shape = PackedShape::new(p.n, p.k, 6);
            let factor = fpx_quant::fold::storage_factor(format.quant_format());
            let folded: Vec<f32> = p.scales.iter().map(|s| s * factor).collect();
            let (dx, dw, ds) = (gpu.upload(&x).unwrap(), gpu.upload(&pack(&p.codes, &shape)).unwrap(), gpu.upload(&folded).unwrap());
            let db = gpu.upload(p.bias.as_ref().unwrap()).unwrap();
            let mut dy = gpu.upload(&vec![0xffffu16; m * p.n]).unwrap();
            let mut ws = gemm.workspace(&gpu, m).unwrap();
            gemm.launch(&gpu, m, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: Some(&db), y: &mut dy, ws: Some(&mut ws) }).unwrap();
            let y = gpu.download(&dy).unwrap();
            let xf: Vec<u16> = x.iter().map(|&b| f16::from_f32(half::bf16::from_bits(b).to_f32()).to_bits()).collect();
            for row in 0..m {
                for col in 0..p.n {
                    let want = p.reference(&xf, row, col);
                    let got = half::bf16::from_bits(y[row * p.n + col]).to_f64();
                    // BF16 output: 8 bits of mantissa.
                    assert!((got - want).abs() <= 8e-3 * want.abs() + 1e-2, "{format:?} M={m} y[{row}][{col}] = {got}, want {want}");
                }
            }
        }
    }
}

/// Too-small buffers and a missing workspace are errors, not out-of-bounds launches.
#[test]
fn undersized_operands_are_refused() {
    let Some(gpu) = gpu_or_skip("undersized_operands_are_refused") else { return };
    let p = Problem::new(Fp6Format::E3M2, 384, 384, false, 1);
    let cfg = heuristic_config(p.n, p.k, 1, gpu.sm_count);
    assert!(cfg.split_k > 1, "the heuristic splits K for a small GEMM on a big GPU: {cfg:?}");
    let gemm = GpuGemm::load(&gpu, &cfg).unwrap();
    let packed = pack(&p.codes, &PackedShape::new(p.n, p.k, 6));
    let (dx, dw, ds) = (gpu.upload(&p.activations(4, 1)).unwrap(), gpu.upload(&packed).unwrap(), gpu.upload(&p.scales).unwrap());
    let mut dy = gpu.zeros::<u16>(4 * p.n).unwrap();
    let e = gemm.launch(&gpu, 5, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: None, y: &mut dy, ws: None }).unwrap_err();
    assert!(e.to_string().contains("the X buffer has"), "{e}");
    let e = gemm.launch(&gpu, 4, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: None, y: &mut dy, ws: None }).unwrap_err();
    assert!(e.to_string().contains("needs a split-K workspace"), "{e}");
    let mut small = gemm.workspace(&gpu, 1).unwrap();
    let e = gemm.launch(&gpu, 4, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: None, y: &mut dy, ws: Some(&mut small) }).unwrap_err();
    assert!(e.to_string().contains("the split-K workspace holds 1 tokens"), "{e}");
    gemm.launch(&gpu, 0, GemmOperands { x: &dx, w: &dw, scales: &ds, bias: None, y: &mut dy, ws: None }).unwrap();
}

/// Without a driver the error says so; it never panics (this runs everywhere).
#[test]
fn opening_a_gpu_never_panics() {
    match Gpu::open(0) {
        Ok(g) => eprintln!("GPU present: {g:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("CUDA driver") || text.contains("no CUDA driver found"), "{text}");
        }
    }
    assert!(Gpu::open(4096).is_err(), "device 4096 does not exist");
}
