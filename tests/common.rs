//! Helpers of the integration tests: comparing tensors and reading `.npy` files (temp folders,
//! ONNX builders, test-data locators and skips come from `fpx-test-support`).

use fpx::ir::Tensor;
use std::path::Path;

/// Compares `got` with `want`: same element type and shape; floats within
/// `atol + rtol * |want|` (NaN matches NaN), everything else exactly. Returns a description of the
/// first difference.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("element type {} != expected {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} != expected {:?}", got.shape(), want.shape()));
    }
    if want.dtype().is_float() {
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs();
            if !ok {
                return Err(format!("element {i}: {a} != expected {b}"));
            }
        }
    } else {
        let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            return Err(format!("element {i}: {} != expected {}", g[i], w[i]));
        }
    }
    Ok(())
}

/// Largest absolute difference between two float tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Reads a `.npy` file that a test depends on.
pub fn npy(path: &Path) -> Tensor {
    fpx::runtime::npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Compile options for tests that are not about CPU levels: only the host's best code
/// (`--cpu native`: AVX-512 VNNI where the host has it, AVX2 otherwise), half the LLVM work of
/// the default two levels, so the suite stays quick. Tests of the levels set them.
pub fn compile_options() -> fpx::CompileOptions {
    fpx::CompileOptions { cpu: fpx::CpuLevels::Only(fpx::llvm::CpuTarget::Native), ..fpx::CompileOptions::default() }
}
