//! The exported functions called as C calls them, on the bundled model compiled here: argument
//! checks, the buffer protocol, run errors with the CLI's text, outputs equal to the Rust API's.

use super::*;
use fpx::ir::Tensor;
use std::ffi::CString;
use std::path::Path;

fn last_error() -> String {
    let p = fpx_last_error();
    assert!(!p.is_null(), "a failed call leaves a message");
    // SAFETY: fpx_last_error returns NULL or a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The bundled model compiled for this host into a fresh folder, its input, and the Rust API's output.
fn artifact() -> (PathBuf, Tensor, Tensor) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("examples/tiny-transformer");
    let dir = std::env::temp_dir().join(format!("fpx-capi-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.fpx");
    let options = fpx::CompileOptions { cpu: fpx::CpuLevels::Only(fpx::llvm::CpuTarget::Native), ..Default::default() };
    fpx::compile(&example.join("model.onnx"), &options).unwrap().save(&path).unwrap();
    let x = fpx::runtime::npy::read(&example.join("input.npy")).unwrap();
    let y = fpx::open(&path).unwrap().run(vec![("input".into(), x.clone())]).unwrap().remove(0).1;
    (path, x, y)
}

/// A tensor's shape as `fpx_run` takes it.
fn dims(t: &Tensor) -> Vec<i64> {
    t.shape().iter().map(|&d| d as i64).collect()
}

/// An `f32` input over borrowed name, shape and data (which must outlive the call).
fn f32_input(name: &CString, shape: &[i64], data: &[f32]) -> FpxInput {
    FpxInput {
        name: name.as_ptr(),
        dtype: FPX_DTYPE_FLOAT,
        rank: shape.len(),
        shape: shape.as_ptr(),
        data: data.as_ptr().cast(),
        byte_size: std::mem::size_of_val(data),
    }
}

/// An output written into `buffer` (NULL with capacity 0 when it is empty).
fn output_into(buffer: &mut [f32]) -> FpxOutput {
    let data = if buffer.is_empty() { std::ptr::null_mut() } else { buffer.as_mut_ptr().cast() };
    FpxOutput { data, capacity: std::mem::size_of_val(buffer), dtype: 0, rank: 0, shape: [0; FPX_MAX_RANK], byte_size: 0 }
}

#[test]
fn the_exported_functions_check_their_arguments_and_run_the_model() {
    let (path, x, want) = artifact();
    let mut model: *mut FpxModel = std::ptr::null_mut();
    // SAFETY (every call below): arguments are valid or deliberately NULL, as documented.
    unsafe {
        assert_eq!(fpx_load(std::ptr::null(), &mut model), FpxStatus::InvalidArgument);
        assert_eq!(last_error(), "fpx_load: path is NULL");
        let missing = CString::new("/nonexistent/m.fpx").unwrap();
        assert_eq!(fpx_load(missing.as_ptr(), &mut model), FpxStatus::Load);
        assert!(model.is_null() && last_error().starts_with("cannot load model '/nonexistent/m.fpx': "), "{}", last_error());
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        assert_eq!(fpx_load(c_path.as_ptr(), &mut model), FpxStatus::Ok);
        assert!(fpx_last_error().is_null());

        let (mut infos, mut count): (*const FpxTensorInfo, usize) = (std::ptr::null(), 0);
        assert_eq!(fpx_inputs(model, &mut infos, &mut count), FpxStatus::Ok);
        assert_eq!(count, 1);
        let info = &*infos;
        assert_eq!(CStr::from_ptr(info.name).to_str().unwrap(), "input");
        assert_eq!((info.dtype, info.rank), (FPX_DTYPE_FLOAT, 3));
        assert_eq!(std::slice::from_raw_parts(info.dims, 3), [-1, -1, 64]);
        let names = std::slice::from_raw_parts(info.dim_names, 3);
        assert_eq!(CStr::from_ptr(names[0]).to_str().unwrap(), "batch");
        assert!(names[2].is_null());
        assert_eq!(fpx_outputs(model, std::ptr::null_mut(), &mut count), FpxStatus::InvalidArgument);

        let (name, shape) = (CString::new("input").unwrap(), dims(&x));
        let data = x.as_f32().unwrap().as_slice().unwrap();
        let mut input = f32_input(&name, &shape, data);
        let mut out = output_into(&mut []);
        assert_eq!(fpx_run(std::ptr::null(), &input, 1, &mut out, 1), FpxStatus::InvalidArgument);
        assert_eq!(fpx_run(model, &input, 1, &mut out, 2), FpxStatus::InvalidArgument);
        assert_eq!(last_error(), "fpx_run: the model has 1 outputs, output_count is 2");
        // No buffer: the status and the output's fields say what it needs.
        assert_eq!(fpx_run(model, &input, 1, &mut out, 1), FpxStatus::BufferTooSmall);
        assert_eq!((out.dtype, out.rank, &out.shape[..3], out.byte_size), (FPX_DTYPE_FLOAT, 3, &[2, 7, 64][..], 2 * 7 * 64 * 4));
        let mut y = vec![0f32; 2 * 7 * 64];
        out.data = y.as_mut_ptr().cast();
        out.capacity = std::mem::size_of_val(y.as_slice());
        assert_eq!(fpx_run(model, &input, 1, &mut out, 1), FpxStatus::Ok);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(want.as_f32().unwrap().as_slice().unwrap()), "the Rust API's output, bit for bit");

        // Run errors carry the CLI's text; argument errors name the input.
        input.dtype = FPX_DTYPE_DOUBLE;
        input.byte_size *= 2;
        let doubles: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        input.data = doubles.as_ptr().cast();
        assert_eq!(fpx_run(model, &input, 1, &mut out, 1), FpxStatus::Run);
        assert_eq!(last_error(), format!("cannot run model '{}': input 'input': expected element type float, got double", path.display()));
        input.dtype = 99;
        assert_eq!(fpx_run(model, &input, 1, &mut out, 1), FpxStatus::InvalidArgument);
        assert_eq!(last_error(), "input 'input': dtype 99 is not an FPX_DTYPE_* code");
        assert_eq!(fpx_run(model, std::ptr::null(), 0, &mut out, 1), FpxStatus::Run);
        assert!(last_error().contains("input 'input': missing"), "{}", last_error());
        fpx_free(model);
        fpx_free(std::ptr::null_mut());
    }
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn one_model_runs_from_several_threads() {
    let (path, x, want) = artifact();
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut model: *mut FpxModel = std::ptr::null_mut();
    // SAFETY: a valid path and out-pointer.
    assert_eq!(unsafe { fpx_load(c_path.as_ptr(), &mut model) }, FpxStatus::Ok);
    let shared = model as usize;
    let want = want.as_f32().unwrap().as_slice().unwrap().to_vec();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let (name, shape) = (CString::new("input").unwrap(), dims(&x));
                let input = f32_input(&name, &shape, x.as_f32().unwrap().as_slice().unwrap());
                for _ in 0..10 {
                    let mut y = vec![0f32; want.len()];
                    let mut out = output_into(&mut y);
                    // SAFETY: the model lives until the scope ends; buffers as described.
                    assert_eq!(unsafe { fpx_run(shared as *const FpxModel, &input, 1, &mut out, 1) }, FpxStatus::Ok);
                    assert_eq!(y, want);
                }
            });
        }
    });
    // SAFETY: loaded above, freed once, no run in progress.
    unsafe { fpx_free(model) };
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}
