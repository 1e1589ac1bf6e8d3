//! Every generated kernel against an independent f64 reference: `fpx_quant::quantize` of random
//! weights → `QuantizedMatrix::dequantize` → f64 matmul, on random X, for shapes whose K and N
//! are not multiples of any tile or vector width, M from 1 to 200, both variants, every format,
//! per-channel, aligned and ragged groups, and column sub-ranges. Plus determinism and targets.

use fpx_llvm::{compile_cpu, Activations, CompiledCpu, CpuTarget, QuantGemm, Variant};
use fpx_quant::act8::Int8Activations;
use fpx_quant::layout::{pack, PackedShape};
use fpx_quant::{fold, quantize, Format, QuantConfig};
use fpx_test_support::{skip, Requirement, Rng, TempDir};

type KernelFn = unsafe extern "C" fn(*const f32, i64, *const u8, *const f32, *const f32, *mut f32, i64, i64);

/// A loaded kernel library; the file lives in a temp dir removed on drop (after the library
/// is unloaded: fields drop in order).
struct Lib {
    lib: libloading::Library,
    _dir: TempDir,
}

impl Lib {
    fn load(compiled: &CompiledCpu) -> Lib {
        let dir = TempDir::new("llvm-kernels");
        let path = dir.join("kernels.so");
        std::fs::write(&path, &compiled.shared_object).unwrap();
        // SAFETY: the library is fpx-llvm's output: plain functions, no initializers.
        let lib = unsafe { libloading::Library::new(&path) }.unwrap();
        Lib { lib, _dir: dir }
    }

    fn kernel(&self, symbol: &str) -> KernelFn {
        // SAFETY: every exported kernel has the documented C signature.
        unsafe { *self.lib.get::<KernelFn>(symbol.as_bytes()).unwrap_or_else(|e| panic!("{symbol}: {e}")) }
    }
}

/// A quantized weight ready for a kernel, with its exactly dequantized `[k][n]` values.
struct Weight {
    spec: QuantGemm,
    packed: Vec<u8>,
    /// Scales as the kernel takes them (bias-shift factor folded in), `[groups][n]`.
    scales: Vec<f32>,
    dequantized: Vec<f32>,
}

impl Weight {
    fn new(spec: QuantGemm, seed: u64) -> Weight {
        let mut rng = Rng::new(seed);
        let w = rng.normals(spec.k * spec.n);
        let cfg = QuantConfig {
            format: spec.format,
            group_size: (spec.group_size > 0).then_some(spec.group_size),
            scale_search: false,
            pow2_scales: false,
        };
        let q = quantize("w", &w, spec.k, spec.n, &cfg).unwrap();
        let packed = pack(&q.codes, &PackedShape::new(spec.n, spec.k, spec.format.bits()));
        let factor = fold::storage_factor(spec.format);
        let scales = q.scales.iter().map(|s| s * factor).collect();
        Weight { spec, packed, scales, dequantized: q.dequantize() }
    }

    /// Runs `kernel` on `m` random rows for columns `[nb, ne)` of a NaN-poisoned Y and checks
    /// every element: inside the range against the f64 reference, outside still NaN. Int8
    /// kernels get the rows quantized, and the reference multiplies what those codes stand for.
    fn check(&self, kernel: KernelFn, m: usize, range: std::ops::Range<usize>, with_bias: bool, seed: u64, what: &str) {
        let (nb, ne) = (range.start, range.end);
        let QuantGemm { k, n, .. } = self.spec;
        let mut rng = Rng::new(seed);
        let mut x = rng.normals(m * k);
        let bias = rng.normals(n);
        let mut y = vec![f32::NAN; m * n];
        let bias_ptr = if with_bias { bias.as_ptr() } else { std::ptr::null() };
        let int8 = (self.spec.activations == Activations::Int8).then(|| Int8Activations::quantize(&x, m, k));
        let x_ptr = match &int8 {
            Some(q) => {
                x = q.dequantized();
                q.as_ptr()
            }
            None => x.as_ptr(),
        };
        // SAFETY: buffers sized as the ABI requires.
        unsafe { kernel(x_ptr, m as i64, self.packed.as_ptr(), self.scales.as_ptr(), bias_ptr, y.as_mut_ptr(), nb as i64, ne as i64) };
        for r in 0..m {
            let mut want = vec![0f64; n];
            let mut magnitude = 0f64;
            for (kk, &xv) in x[r * k..(r + 1) * k].iter().enumerate() {
                for (c, wv) in want.iter_mut().enumerate() {
                    let t = xv as f64 * self.dequantized[kk * n + c] as f64;
                    *wv += t;
                    magnitude += t.abs();
                }
            }
            if with_bias {
                for (wv, b) in want.iter_mut().zip(&bias) {
                    *wv += *b as f64;
                    magnitude += b.abs() as f64;
                }
            }
            let tol = 1e-4 * (magnitude / n as f64).max(want.iter().fold(0f64, |a, v| a.max(v.abs()))).max(1e-30);
            for c in 0..n {
                let got = y[r * n + c];
                if (nb..ne).contains(&c) {
                    let err = (got as f64 - want[c]).abs();
                    assert!(err <= tol, "{what}: m {m} range [{nb}, {ne}) y[{r}][{c}] = {got}, want {} (tol {tol:e})", want[c]);
                } else {
                    assert!(got.is_nan(), "{what}: m {m} range [{nb}, {ne}) wrote y[{r}][{c}] = {got} outside the range");
                }
            }
        }
    }
}

fn spec(format: Format, k: usize, n: usize, group_size: usize) -> QuantGemm {
    QuantGemm { format, k, n, group_size, activations: Activations::F32 }
}

fn spec8(format: Format, k: usize, n: usize, group_size: usize) -> QuantGemm {
    QuantGemm { activations: Activations::Int8, ..spec(format, k, n, group_size) }
}

/// Shapes (K, N, group size): tails in K and N, per-channel, aligned and ragged groups; the last
/// two span several int8 K panels (16 tiles each), the last with groups across panel ends.
const SHAPES: [(usize, usize, usize); 14] = [
    (1, 1, 0),
    (31, 15, 0),
    (33, 17, 0),
    (100, 40, 0),
    (100, 40, 48),
    (100, 40, 32),
    (384, 384, 0),
    (384, 17, 32),
    (33, 384, 0),
    (100, 15, 64),
    (70, 33, 20),
    (64, 48, 0),
    (600, 40, 0),
    (1056, 40, 96),
];

fn ms_for(k: usize, n: usize) -> &'static [usize] {
    if k * n > 100_000 {
        &[1, 2, 5, 7, 9, 64]
    } else {
        &[1, 2, 5, 6, 7, 8, 9, 64, 200]
    }
}

fn check_format(format: Format, target: CpuTarget) {
    let specs: Vec<QuantGemm> = SHAPES.iter().map(|&(k, n, g)| spec(format, k, n, g)).collect();
    check_specs(&specs, target);
}

/// Int8 activations: the shapes whose groups are whole tiles.
fn check_format_int8(format: Format, target: CpuTarget) {
    let specs: Vec<QuantGemm> = SHAPES.iter().filter(|s| s.2 % 32 == 0).map(|&(k, n, g)| spec8(format, k, n, g)).collect();
    assert!(specs.len() >= 9);
    check_specs(&specs, target);
}

fn check_specs(specs: &[QuantGemm], target: CpuTarget) {
    let compiled = compile_cpu(specs, target).unwrap();
    assert_eq!(compiled.symbols.len(), 2 * specs.len());
    let lib = Lib::load(&compiled);
    for (i, s) in specs.iter().enumerate() {
        let weight = Weight::new(*s, 1000 + i as u64);
        for variant in Variant::ALL {
            let symbol = fpx_llvm::symbol(s, variant);
            let kernel = lib.kernel(&symbol);
            for (j, &m) in ms_for(s.k, s.n).iter().enumerate() {
                weight.check(kernel, m, 0..s.n, j % 2 == 0, 7 * j as u64 + i as u64, &symbol);
            }
            // Column sub-ranges starting at multiples of 16, ending anywhere.
            if s.n > 16 {
                weight.check(kernel, 3, 16..s.n, true, 99, &symbol);
                weight.check(kernel, 9, 0..16, false, 98, &symbol);
                weight.check(kernel, 2, 16..(s.n - 3).max(17), true, 97, &symbol);
            }
            weight.check(kernel, 1, 0..s.n.min(5), true, 96, &symbol);
            // An empty range and m = 0 write nothing.
            weight.check(kernel, 2, 0..0, true, 95, &symbol);
            weight.check(kernel, 0, 0..s.n, true, 94, &symbol);
        }
    }
}

#[test]
fn fp6_e3m2() {
    check_format(Format::Fp6E3M2, CpuTarget::X86_64V3);
}

#[test]
fn fp6_e2m3() {
    check_format(Format::Fp6E2M3, CpuTarget::X86_64V3);
}

#[test]
fn fp5_e2m2() {
    check_format(Format::Fp5E2M2, CpuTarget::X86_64V3);
}

#[test]
fn fp4_e2m1() {
    check_format(Format::Fp4E2M1, CpuTarget::X86_64V3);
}

#[test]
fn fp8_e4m3() {
    check_format(Format::Fp8E4M3, CpuTarget::X86_64V3);
}

#[test]
fn fp8_e5m2() {
    check_format(Format::Fp8E5M2, CpuTarget::X86_64V3);
}

#[test]
fn int4() {
    check_format(Format::Int4, CpuTarget::X86_64V3);
}

#[test]
fn int8() {
    check_format(Format::Int8, CpuTarget::X86_64V3);
}

#[test]
fn fp6_e2m3_int8_activations() {
    check_format_int8(Format::Fp6E2M3, CpuTarget::X86_64V3);
}

#[test]
fn fp4_e2m1_int8_activations() {
    check_format_int8(Format::Fp4E2M1, CpuTarget::X86_64V3);
}

#[test]
fn int4_int8_activations() {
    check_format_int8(Format::Int4, CpuTarget::X86_64V3);
}

/// `Err` naming what this CPU lacks of `features`, as the artifact loader checks them.
fn host_supports(features: &[String]) -> Result<(), String> {
    let missing = fpx_artifact::missing_cpu_features(features);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("this CPU lacks {}", missing.join(", ")))
    }
}

/// Every feature LLVM reports for the host (what a `native` library records) is one the
/// loader knows and finds on this host.
#[test]
fn loader_detects_every_host_feature() {
    let (name, features) = fpx_llvm::host_cpu();
    assert!(features.iter().any(|f| f == "sse3"), "{name}: {features:?}");
    assert_eq!(host_supports(&features), Ok(()), "{name}: {features:?}");
    assert!(host_supports(&["no-such-feature".to_string()]).is_err());
}

/// Whether this host runs the 512-bit VBMI + VNNI int8 kernels (`CpuTarget::Native` picks
/// them there); if not, skips `test` (a failure when `FPX_REQUIRE` lists `vnni`).
fn host_has_vnni8(test: &str) -> bool {
    let has = std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512vnni");
    if !has {
        skip(Requirement::Vnni, test, "this CPU lacks AVX-512 VBMI or VNNI");
    }
    has
}

#[test]
fn fp6_e2m3_int8_activations_vnni() {
    if !host_has_vnni8("fp6_e2m3_int8_activations_vnni") {
        return;
    }
    check_format_int8(Format::Fp6E2M3, CpuTarget::X86_64V4Vnni);
}

#[test]
fn int4_and_fp4_int8_activations_vnni() {
    if !host_has_vnni8("int4_and_fp4_int8_activations_vnni") {
        return;
    }
    check_format_int8(Format::Int4, CpuTarget::X86_64V4Vnni);
    check_format_int8(Format::Fp4E2M1, CpuTarget::X86_64V4Vnni);
}

/// The 512-bit VNNI and the 256-bit AVX2 int8 kernels compute the same operations in the same
/// order: bit-identical outputs on every int8 shape and several m (direct and panel loops).
#[test]
fn vnni_and_avx2_int8_kernels_agree_bit_for_bit() {
    if !host_has_vnni8("vnni_and_avx2_int8_kernels_agree_bit_for_bit") {
        return;
    }
    let specs: Vec<QuantGemm> = SHAPES
        .iter()
        .filter(|s| s.2 % 32 == 0)
        .flat_map(|&(k, n, g)| [spec8(Format::Fp6E2M3, k, n, g), spec8(Format::Int4, k, n, g)])
        .collect();
    let (v3, vnni) = (compile_cpu(&specs, CpuTarget::X86_64V3).unwrap(), compile_cpu(&specs, CpuTarget::X86_64V4Vnni).unwrap());
    let (v3, vnni) = (Lib::load(&v3), Lib::load(&vnni));
    for (i, s) in specs.iter().enumerate() {
        let weight = Weight::new(*s, 700 + i as u64);
        let bias = Rng::new(800 + i as u64).normals(s.n);
        for m in [1, 3, 8, 9, 40] {
            let q = Int8Activations::quantize(&Rng::new(900 + m as u64).normals(m * s.k), m, s.k);
            let run = |lib: &Lib| {
                let mut y = vec![f32::NAN; m * s.n];
                let f = lib.kernel(&fpx_llvm::symbol(s, Variant::Gemm));
                // SAFETY: buffers sized as the ABI requires.
                unsafe {
                    f(q.as_ptr(), m as i64, weight.packed.as_ptr(), weight.scales.as_ptr(), bias.as_ptr(), y.as_mut_ptr(), 0, s.n as i64)
                };
                y
            };
            let (a, b) = (run(&v3), run(&vnni));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{}: m {m}: AVX2 and VNNI outputs differ",
                fpx_llvm::symbol(s, Variant::Gemm)
            );
        }
    }
}

/// The AVX2 int8 kernels give a row the same bits whether it runs alone or with another row
/// (the direct GEMV, `m <= 6`) or among nine (the panel loop): both compute each tile's exact
/// `i32` dot products, convert and scale them in the same operations, and fold the `f32` sums
/// into the outputs at the same K tiles (every 16), so at any K.
#[test]
fn avx2_int8_direct_and_panel_rows_agree_bit_for_bit() {
    let asm = fpx_llvm::emit_ir_and_asm(&[spec8(Format::Fp6E2M3, 384, 384, 0)], CpuTarget::X86_64V3).unwrap().1;
    assert!(asm.contains("vpsignb") && asm.contains("vpmaddubsw"), "the AVX2 int8 code lacks the direct kernel's byte operations");
    check_rows_agree(CpuTarget::X86_64V3);
}

/// The same for the VNNI int8 kernels: a row alone (direct, `m <= 8`), in a pair, or among nine
/// (the pair kernel over two n-tiles at a time, the single n-tile panel kernel for an odd last
/// one).
#[test]
fn vnni_int8_direct_panel_and_pair_rows_agree_bit_for_bit() {
    if !host_has_vnni8("vnni_int8_direct_panel_and_pair_rows_agree_bit_for_bit") {
        return;
    }
    check_rows_agree(CpuTarget::X86_64V4Vnni);
}

/// Rows 0..9 of an int8 product computed alone, in pairs and all together give the same bits.
fn check_rows_agree(target: CpuTarget) {
    let specs: Vec<QuantGemm> = SHAPES.iter().filter(|s| s.2 % 32 == 0).map(|&(k, n, g)| spec8(Format::Fp6E2M3, k, n, g)).collect();
    assert!(specs.len() >= 10 && specs.iter().any(|s| s.k > 512));
    let lib = Lib::load(&compile_cpu(&specs, target).unwrap());
    for (i, s) in specs.iter().enumerate() {
        let weight = Weight::new(*s, 600 + i as u64);
        let bias = Rng::new(650 + i as u64).normals(s.n);
        let x = Rng::new(660 + i as u64).normals(9 * s.k);
        let run = |rows: std::ops::Range<usize>, variant: Variant| {
            let m = rows.len();
            let q = Int8Activations::quantize(&x[rows.start * s.k..rows.end * s.k], m, s.k);
            let mut y = vec![f32::NAN; m * s.n];
            let f = lib.kernel(&fpx_llvm::symbol(s, variant));
            // SAFETY: buffers sized as the ABI requires.
            unsafe {
                f(q.as_ptr(), m as i64, weight.packed.as_ptr(), weight.scales.as_ptr(), bias.as_ptr(), y.as_mut_ptr(), 0, s.n as i64)
            };
            y
        };
        for variant in Variant::ALL {
            let all = run(0..9, variant);
            assert!(all.iter().all(|v| v.is_finite()));
            for r in 0..9 {
                let alone = run(r..r + 1, variant);
                assert!(
                    alone.iter().zip(&all[r * s.n..(r + 1) * s.n]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: row {r} alone differs from row {r} of nine",
                    fpx_llvm::symbol(s, variant)
                );
            }
            for r in (0..8).step_by(2) {
                let pair = run(r..r + 2, variant);
                assert!(
                    pair.iter().zip(&all[r * s.n..(r + 2) * s.n]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: rows {r}..{} as a pair differ from the same rows of nine",
                    fpx_llvm::symbol(s, variant),
                    r + 2
                );
            }
        }
    }
}

/// x86-64-v4-vnni code (and native code on a VBMI + VNNI host) takes the 512-bit int8 path;
/// plain x86-64-v4 code does not.
#[test]
fn vnni_int8_path_is_chosen_by_target() {
    let asm = |specs: &[QuantGemm], target| fpx_llvm::emit_ir_and_asm(specs, target).unwrap().1;
    let vnni = |a: &str| a.contains("vpdpbusd") && a.contains("vpermb") && a.contains("vpmultishiftqb");
    let aligned = [spec8(Format::Fp6E2M3, 100, 40, 0)];
    assert!(vnni(&asm(&aligned, CpuTarget::X86_64V4Vnni)), "x86-64-v4-vnni int8 code lacks VNNI/VBMI");
    let v4 = asm(&aligned, CpuTarget::X86_64V4);
    assert!(!v4.contains("vpdpbusd") && v4.contains("vpmaddubsw"), "x86-64-v4 int8 code must not need VNNI");
    // The native check needs a VNNI host; the target checks above ran anyway.
    if !host_has_vnni8("vnni_int8_path_is_chosen_by_target (native part)") {
        return;
    }
    assert!(vnni(&asm(&aligned, CpuTarget::Native)), "native int8 code on a VNNI host lacks VNNI/VBMI");
}

/// Int8 activations stay close to the `f32` kernel on the same weights: the relative RMS
/// difference is that of 8-bit rounding (under 1%), and not zero (the rows are quantized).
#[test]
fn int8_activations_are_close_to_f32() {
    let (k, n, m) = (512, 96, 24);
    let specs = [spec(Format::Fp6E2M3, k, n, 0), spec8(Format::Fp6E2M3, k, n, 0)];
    let compiled = compile_cpu(&specs, CpuTarget::X86_64V3).unwrap();
    let lib = Lib::load(&compiled);
    let weight = Weight::new(specs[0], 77);
    let x = Rng::new(78).normals(m * k);
    let q = Int8Activations::quantize(&x, m, k);
    let run = |s: &QuantGemm, xp: *const f32| {
        let mut y = vec![f32::NAN; m * n];
        let f = lib.kernel(&fpx_llvm::symbol(s, Variant::Gemm));
        // SAFETY: buffers sized as the ABI requires.
        unsafe { f(xp, m as i64, weight.packed.as_ptr(), weight.scales.as_ptr(), std::ptr::null(), y.as_mut_ptr(), 0, n as i64) };
        y
    };
    let (exact, approx) = (run(&specs[0], x.as_ptr()), run(&specs[1], q.as_ptr()));
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in exact.iter().zip(&approx) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    let rel = (num / den).sqrt();
    assert!(rel > 1e-5 && rel < 1e-2, "relative RMS difference {rel:e}");
}

#[test]
fn int8_activations_on_avx512_and_native() {
    for target in [CpuTarget::Native, CpuTarget::X86_64V4] {
        let specs = [spec8(Format::Fp6E2M3, 100, 40, 0), spec8(Format::Int4, 64, 33, 32)];
        let compiled = compile_cpu(&specs, target).unwrap();
        if let Err(why) = host_supports(&compiled.features) {
            println!("skipping int8 on {target:?}: {why}");
            continue;
        }
        let lib = Lib::load(&compiled);
        for (i, s) in specs.iter().enumerate() {
            let weight = Weight::new(*s, 600 + i as u64);
            for m in [1, 4, 13] {
                weight.check(
                    lib.kernel(&fpx_llvm::symbol(s, Variant::Gemv)),
                    m,
                    0..s.n,
                    true,
                    m as u64,
                    &format!("{target:?} {}", fpx_llvm::symbol(s, Variant::Gemv)),
                );
            }
        }
    }
}

/// A library with a few kernels for the target tests.
fn few_specs() -> Vec<QuantGemm> {
    vec![spec(Format::Fp6E3M2, 100, 40, 0), spec(Format::Int4, 64, 33, 32), spec(Format::Fp6E2M3, 70, 33, 20)]
}

/// Runs `few_specs` compiled for `target`, or skips `test` where this CPU cannot (a failure
/// for x86-64-v4-vnni when `FPX_REQUIRE` lists `vnni`).
fn check_target(target: CpuTarget, test: &str) {
    let compiled = compile_cpu(&few_specs(), target).unwrap();
    if let Err(why) = host_supports(&compiled.features) {
        if target == CpuTarget::X86_64V4Vnni {
            skip(Requirement::Vnni, test, &why);
        } else {
            println!("skipping {test}: {why}");
        }
        return;
    }
    let lib = Lib::load(&compiled);
    for (i, s) in few_specs().iter().enumerate() {
        let weight = Weight::new(*s, 500 + i as u64);
        for variant in Variant::ALL {
            let kernel = lib.kernel(&fpx_llvm::symbol(s, variant));
            for m in [1, 5, 13] {
                weight.check(kernel, m, 0..s.n, true, m as u64, &format!("{target:?} {}", fpx_llvm::symbol(s, variant)));
            }
        }
    }
}

#[test]
fn native_target_runs() {
    check_target(CpuTarget::Native, "native_target_runs");
}

#[test]
fn v4_target_runs_where_supported() {
    check_target(CpuTarget::X86_64V4, "v4_target_runs_where_supported");
}

#[test]
fn v4_vnni_target_runs_where_supported() {
    check_target(CpuTarget::X86_64V4Vnni, "v4_vnni_target_runs_where_supported");
}

#[test]
fn compiled_library_describes_itself() {
    let specs = few_specs();
    let mut doubled = specs.clone();
    doubled.extend(specs.iter().rev().copied());
    let compiled = compile_cpu(&doubled, CpuTarget::X86_64V3).unwrap();
    assert_eq!(compiled.target, "x86-64-v3");
    for f in ["avx2", "fma", "f16c"] {
        assert!(compiled.features.iter().any(|x| x == f), "{f} missing from {:?}", compiled.features);
    }
    assert_eq!(compiled.symbols.len(), 2 * specs.len(), "duplicates removed");
    assert!(compiled.shared_object.starts_with(b"\x7fELF"));
    let lib = Lib::load(&compiled);
    for (s, v, sym) in &compiled.symbols {
        assert_eq!(*sym, fpx_llvm::symbol(s, *v));
        lib.kernel(sym);
    }
    assert_eq!(fpx_llvm::symbol(&spec(Format::Fp6E3M2, 384, 1536, 0), Variant::Gemv), "fpx_qmm_fp6_e3m2_k384_n1536_g0_gemv");
    let v4 = compile_cpu(&specs[..1], CpuTarget::X86_64V4).unwrap();
    assert!(v4.features.iter().any(|x| x == "avx512bw"));
    let vnni = compile_cpu(&specs[..1], CpuTarget::X86_64V4Vnni).unwrap();
    assert_eq!(vnni.target, "x86-64-v4-vnni");
    for f in ["avx512bw", "avx512vbmi", "avx512vnni"] {
        assert!(vnni.features.iter().any(|x| x == f), "{f} missing from {:?}", vnni.features);
    }
}

#[test]
fn output_is_deterministic() {
    let specs = few_specs();
    let a = compile_cpu(&specs, CpuTarget::X86_64V3).unwrap();
    let reversed: Vec<QuantGemm> = specs.iter().rev().copied().collect();
    let b = compile_cpu(&reversed, CpuTarget::X86_64V3).unwrap();
    assert_eq!(a.symbols, b.symbols);
    assert!(a.shared_object == b.shared_object, "same specs must give byte-identical libraries");
}

#[test]
fn bad_specs_are_errors() {
    let err = compile_cpu(&[spec(Format::Fp6E3M2, 0, 16, 0)], CpuTarget::X86_64V3).unwrap_err();
    assert!(err.to_string().contains("must be positive"), "{err}");
    let err = compile_cpu(&[spec8(Format::Fp6E3M2, 64, 16, 0)], CpuTarget::X86_64V3).unwrap_err();
    assert!(err.to_string().contains("fp6-e3m2 weights cannot take int8 activations (only fp6-e2m3, fp4-e2m1 or int4 can)"), "{err}");
    assert!(err.to_string().contains("fp6_e3m2_k64_n16_g0_a8_gemv"), "{err}");
    let err = compile_cpu(&[spec8(Format::Fp6E2M3, 64, 16, 48)], CpuTarget::X86_64V3).unwrap_err();
    assert!(err.to_string().contains("multiple of 32, not 48"), "{err}");
    let ok = spec8(Format::Fp6E2M3, 64, 16, 64);
    assert!(fpx_llvm::check(&ok).is_ok(), "check is public for callers that name the node");
    // The backend seam names the node of a product that has no kernel.
    let err = fpx_llvm::cpu_code(&[("proj".to_string(), spec8(Format::Int4, 64, 16, 48))], CpuTarget::X86_64V3).unwrap_err();
    assert!(err.to_string().starts_with("node 'proj': no CPU kernel for fpx_qmm_int4_k64_n16_g48_a8_gemv"), "{err}");
}

/// Every blocking the tuner may pick computes the same product: non-default register blocks
/// (including ones larger than the heuristic's and 1) and panel sizes, both variants, M around
/// each block size, on shapes with tails and ragged groups. Int8-activation products ignore the
/// blocking and keep their default symbols.
#[test]
fn every_tiling_computes_the_same_product() {
    use fpx_llvm::{compile_cpu_tiled, default_tiling, symbol_for, CpuTiling};
    let target = CpuTarget::X86_64V3;
    let default = default_tiling(target).unwrap();
    assert_eq!(default, CpuTiling { gemv_rows: 2, gemm_rows: 3, panel_tiles: 8 });
    let tilings = [
        CpuTiling { gemv_rows: 1, gemm_rows: 1, panel_tiles: 1 },
        CpuTiling { gemv_rows: 3, gemm_rows: 4, panel_tiles: 4 },
        CpuTiling { gemv_rows: 4, gemm_rows: 5, panel_tiles: 16 },
        CpuTiling { gemv_rows: 2, gemm_rows: 2, panel_tiles: 3 },
    ];
    let specs = [spec(Format::Fp6E3M2, 300, 40, 0), spec(Format::Fp6E2M3, 100, 33, 20), spec(Format::Fp4E2M1, 256, 48, 64)];
    let mut kernels: Vec<(QuantGemm, CpuTiling)> = specs.iter().flat_map(|s| tilings.map(|t| (*s, t))).collect();
    let int8 = spec8(Format::Fp6E2M3, 128, 32, 0);
    kernels.push((int8, tilings[1]));
    let compiled = compile_cpu_tiled(&kernels, target).unwrap();
    assert_eq!(compiled.symbols.len(), 2 * kernels.len());
    assert!(compiled.symbols.iter().any(|(_, _, s)| *s == fpx_llvm::symbol(&int8, Variant::Gemv)), "int8 keeps its default symbol");
    let lib = Lib::load(&compiled);
    for (i, s) in specs.iter().enumerate() {
        let weight = Weight::new(*s, 500 + i as u64);
        for t in tilings {
            for variant in Variant::ALL {
                let symbol = symbol_for(s, variant, t, default);
                assert!(symbol.ends_with(&format!("_v{}r{}p{}", t.gemv_rows, t.gemm_rows, t.panel_tiles)), "{symbol}");
                let kernel = lib.kernel(&symbol);
                for (j, m) in [1, 2, 3, 4, 5, 6, 7, 11, 40].into_iter().enumerate() {
                    weight.check(kernel, m, 0..s.n, j % 2 == 1, 31 * j as u64 + i as u64, &symbol);
                }
                weight.check(kernel, 3, 16..s.n, true, 77, &symbol);
            }
        }
    }
    let bad = CpuTiling { gemv_rows: 0, ..default };
    let err = compile_cpu_tiled(&[(specs[0], bad)], target).unwrap_err().to_string();
    assert!(err.contains("outside 1..="), "{err}");
}
