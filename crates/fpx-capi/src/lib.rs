//! fpx's C API (`libfpx_c.so`, header `include/fpx.h`): load an `.fpx` artifact, list its inputs
//! and outputs, run it over caller-provided buffers. Every function returns an [`FpxStatus`]
//! (`fpx_last_error()` says why it failed), never unwinds a panic into C, and takes NULL
//! pointers as errors, not crashes. A loaded model may be run from several threads at once.
//!
//! ```c
//! FpxModel *m;
//! if (fpx_load("model.fpx", &m) != FPX_STATUS_OK) { fprintf(stderr, "%s\n", fpx_last_error()); return 1; }
//! FpxInput in = { "input", FPX_DTYPE_FLOAT, 3, shape, data, sizeof data };
//! FpxOutput out = { .data = buf, .capacity = sizeof buf };
//! fpx_run(m, &in, 1, &out, 1);
//! fpx_free(m);
//! ```

mod status;
mod tensors;

pub use status::FpxStatus;
use status::{guard, Failure};
use tensors::{byte_size, dtype_code, dtype_of, tensor_from_bytes, write_bytes};
pub use tensors::{
    FpxDType, FPX_DTYPE_BFLOAT16, FPX_DTYPE_BOOL, FPX_DTYPE_DOUBLE, FPX_DTYPE_FLOAT, FPX_DTYPE_FLOAT16, FPX_DTYPE_INT16, FPX_DTYPE_INT32,
    FPX_DTYPE_INT64, FPX_DTYPE_INT8, FPX_DTYPE_UINT16, FPX_DTYPE_UINT32, FPX_DTYPE_UINT64, FPX_DTYPE_UINT8,
};

use fpx::ir::{Dim, Value};
use fpx::{Action, Runnable};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

/// The version of this API: a program built against a header of another version should not
/// use the library (compare `fpx_api_version()` with `FPX_API_VERSION`).
pub const FPX_API_VERSION: u32 = 1;

/// The most dimensions an output can have (the length of `FpxOutput.shape`).
pub const FPX_MAX_RANK: usize = 8;

/// A graph input or output, as `fpx_inputs` / `fpx_outputs` describe it. Its pointers stay valid
/// until the model is freed.
#[repr(C)]
pub struct FpxTensorInfo {
    /// The value's name (UTF-8, NUL-terminated).
    pub name: *const c_char,
    /// Its element type (`FPX_DTYPE_*`; 0 if unknown).
    pub dtype: FpxDType,
    /// Its number of dimensions (-1 if unknown).
    pub rank: i64,
    /// `rank` sizes: a fixed size, or -1 for a size bound at run time.
    pub dims: *const i64,
    /// `rank` names: a symbolic dimension's name (equal names are equal sizes), else NULL.
    pub dim_names: *const *const c_char,
}

/// One input of `fpx_run`: the caller's row-major data.
#[repr(C)]
pub struct FpxInput {
    /// The input's name (UTF-8, NUL-terminated).
    pub name: *const c_char,
    /// Its element type (`FPX_DTYPE_*`).
    pub dtype: FpxDType,
    /// Number of dimensions.
    pub rank: usize,
    /// `rank` sizes (may be NULL when `rank` is 0).
    pub shape: *const i64,
    /// The elements, row-major, any alignment (bools one byte each, 16-bit floats as bits).
    pub data: *const c_void,
    /// Bytes at `data`: must equal the elements' size.
    pub byte_size: usize,
}

/// One output of `fpx_run`, in the order `fpx_outputs` lists them: the caller's buffer, and what
/// fpx wrote into it.
#[repr(C)]
pub struct FpxOutput {
    /// The caller's buffer (may be NULL when `capacity` is 0).
    pub data: *mut c_void,
    /// Bytes available at `data`.
    pub capacity: usize,
    /// Written by fpx: the element type.
    pub dtype: FpxDType,
    /// Written by fpx: the number of dimensions.
    pub rank: usize,
    /// Written by fpx: the first `rank` entries are the sizes.
    pub shape: [i64; FPX_MAX_RANK],
    /// Written by fpx: the bytes the output takes (written to `data` when they fit).
    pub byte_size: usize,
}

/// Text and numbers behind a model's [`FpxTensorInfo`]s, kept alive with the model (the infos
/// point into these heap buffers, which do not move when the table does).
struct InfoTable {
    infos: Vec<FpxTensorInfo>,
    _names: Vec<CString>,
    _symbols: Vec<CString>,
    _dims: Vec<Vec<i64>>,
    _dim_names: Vec<Vec<*const c_char>>,
}

impl InfoTable {
    fn new(values: Vec<&Value>) -> InfoTable {
        let cstring = |s: &str| CString::new(s.replace('\0', " ")).expect("NULs were replaced");
        let (mut names, mut symbols, mut dims, mut dim_names, mut infos) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for v in values {
            let shape = v.ty.as_ref().and_then(|t| t.shape.as_deref()).unwrap_or(&[]);
            let sizes: Vec<i64> = shape.iter().map(|d| d.fixed().map_or(-1, |n| n as i64)).collect();
            let mut syms: Vec<*const c_char> = Vec::with_capacity(shape.len());
            for d in shape {
                match d {
                    Dim::Sym(sym) => {
                        let s = cstring(sym);
                        syms.push(s.as_ptr());
                        symbols.push(s);
                    }
                    _ => syms.push(std::ptr::null()),
                }
            }
            let name = cstring(&v.name);
            infos.push(FpxTensorInfo {
                name: name.as_ptr(),
                dtype: v.ty.as_ref().map_or(0, |t| dtype_code(t.dtype)),
                rank: v.ty.as_ref().and_then(|t| t.shape.as_ref()).map_or(-1, |s| s.len() as i64),
                dims: sizes.as_ptr(),
                dim_names: syms.as_ptr(),
            });
            names.push(name);
            dims.push(sizes);
            dim_names.push(syms);
        }
        InfoTable { infos, _names: names, _symbols: symbols, _dims: dims, _dim_names: dim_names }
    }
}

/// A loaded model (opaque to C): `fpx_load` makes one, `fpx_free` frees it.
pub struct FpxModel {
    runnable: Runnable,
    path: PathBuf,
    inputs: InfoTable,
    outputs: InfoTable,
}

// SAFETY: the raw pointers in the info tables point into heap buffers the model owns and never
// changes after loading; they are only read. `Runnable` itself is Send + Sync (asserted below).
unsafe impl Send for FpxModel {}
const _: () = {
    fn send_and_sync<T: Send + Sync>() {}
    let _ = send_and_sync::<Runnable>;
};
// SAFETY: as above: nothing behind the pointers is written after `fpx_load`.
unsafe impl Sync for FpxModel {}

/// A `&str` of a C string argument.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// The version of the API this library implements (`FPX_API_VERSION` of its header).
#[no_mangle]
pub extern "C" fn fpx_api_version() -> u32 {
    FPX_API_VERSION
}

/// The message of this thread's last failed fpx call (the text the `fpx` command line prints),
/// or NULL if the last call succeeded. Valid until the next fpx call on this thread.
#[no_mangle]
pub extern "C" fn fpx_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// Loads the `.fpx` artifact (or `.onnx` model, run on the reference path) at `path` into
/// `*model`. On failure `*model` is NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `model` is NULL or points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn fpx_load(path: *const c_char, model: *mut *mut FpxModel) -> FpxStatus {
    guard(|| {
        if model.is_null() {
            return Err(Failure::invalid("fpx_load: model (the FpxModel** to fill) is NULL"));
        }
        // SAFETY: checked non-NULL; the caller provides writable storage.
        unsafe { *model = std::ptr::null_mut() };
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = PathBuf::from(unsafe { str_arg(path, "fpx_load: path") }?);
        let runnable =
            fpx::open(&path).map_err(|e| Failure::new(FpxStatus::Load, fpx::Failure::new(Action::LoadModel, &path, e).message()))?;
        let (inputs, outputs) = (InfoTable::new(runnable.run_inputs()), InfoTable::new(runnable.run_outputs()));
        let boxed = Box::new(FpxModel { runnable, path, inputs, outputs });
        // SAFETY: as above.
        unsafe { *model = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Frees a model from `fpx_load` (NULL is ignored). No run may be in progress on it.
///
/// # Safety
/// `model` is NULL or a model from `fpx_load` not freed before.
#[no_mangle]
pub unsafe extern "C" fn fpx_free(model: *mut FpxModel) {
    if !model.is_null() {
        // Dropping unmaps the artifact and unloads its code; a panic there stays on this side too.
        guard(|| {
            // SAFETY: the caller passes a model from fpx_load, freed once.
            drop(unsafe { Box::from_raw(model) });
            Ok(())
        });
    }
}

/// # Safety
/// `model` is NULL or a live model; `infos` and `count` NULL or writable.
unsafe fn list(
    model: *const FpxModel,
    infos: *mut *const FpxTensorInfo,
    count: *mut usize,
    pick: fn(&FpxModel) -> &InfoTable,
) -> FpxStatus {
    guard(|| {
        if model.is_null() || infos.is_null() || count.is_null() {
            return Err(Failure::invalid("model, infos and count must not be NULL"));
        }
        // SAFETY: checked non-NULL; the caller passes a live model and writable storage.
        unsafe {
            let table = pick(&*model);
            *infos = table.infos.as_ptr();
            *count = table.infos.len();
        }
        Ok(())
    })
}

/// The graph inputs a run takes: `*infos` points to `*count` descriptions owned by the model.
///
/// # Safety
/// `model` is NULL or a live model; `infos` and `count` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fpx_inputs(model: *const FpxModel, infos: *mut *const FpxTensorInfo, count: *mut usize) -> FpxStatus {
    // SAFETY: forwarded.
    unsafe { list(model, infos, count, |m| &m.inputs) }
}

/// The graph outputs a run writes, in order: `*infos` points to `*count` descriptions owned by
/// the model.
///
/// # Safety
/// `model` is NULL or a live model; `infos` and `count` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn fpx_outputs(model: *const FpxModel, infos: *mut *const FpxTensorInfo, count: *mut usize) -> FpxStatus {
    // SAFETY: forwarded.
    unsafe { list(model, infos, count, |m| &m.outputs) }
}

/// Runs `model` on `input_count` inputs and writes its outputs (`output_count` must be the
/// number `fpx_outputs` gives) into the caller's buffers, in output order. If a buffer is too
/// small nothing is written to any: every output's `dtype`, `rank`, `shape` and `byte_size` say
/// what is needed, and the status is `FPX_STATUS_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `model` is NULL or a live model; `inputs` points to `input_count` inputs whose pointers are
/// valid for what they describe; `outputs` points to `output_count` writable outputs whose `data`
/// holds `capacity` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn fpx_run(
    model: *const FpxModel,
    inputs: *const FpxInput,
    input_count: usize,
    outputs: *mut FpxOutput,
    output_count: usize,
) -> FpxStatus {
    guard(|| {
        if model.is_null() {
            return Err(Failure::invalid("fpx_run: model is NULL"));
        }
        // SAFETY: checked non-NULL; the caller passes a live model.
        let model = unsafe { &*model };
        if (inputs.is_null() && input_count > 0) || (outputs.is_null() && output_count > 0) {
            return Err(Failure::invalid("fpx_run: inputs or outputs is NULL with a non-zero count"));
        }
        let expected = model.outputs.infos.len();
        if output_count != expected {
            return Err(Failure::invalid(format!("fpx_run: the model has {expected} outputs, output_count is {output_count}")));
        }
        let inputs: &[FpxInput] = if input_count == 0 {
            &[]
        } else {
            // SAFETY: the caller passes `input_count` inputs.
            unsafe { std::slice::from_raw_parts(inputs, input_count) }
        };
        let mut feeds = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            // SAFETY: the caller's name is NUL-terminated or NULL.
            let name = unsafe { str_arg(input.name, &format!("fpx_run: inputs[{i}].name")) }?;
            let dtype = dtype_of(input.dtype)
                .ok_or_else(|| Failure::invalid(format!("input '{name}': dtype {} is not an FPX_DTYPE_* code", input.dtype)))?;
            if input.shape.is_null() && input.rank > 0 {
                return Err(Failure::invalid(format!("input '{name}': shape is NULL with rank {}", input.rank)));
            }
            let dims: &[i64] = if input.rank == 0 {
                &[]
            } else {
                // SAFETY: the caller passes `rank` sizes.
                unsafe { std::slice::from_raw_parts(input.shape, input.rank) }
            };
            let shape = dims
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| Failure::invalid(format!("input '{name}': dimension {d} is negative"))))
                .collect::<Result<Vec<usize>, _>>()?;
            if input.data.is_null() && input.byte_size > 0 {
                return Err(Failure::invalid(format!("input '{name}': data is NULL with byte_size {}", input.byte_size)));
            }
            let bytes: &[u8] = if input.byte_size == 0 {
                &[]
            } else {
                // SAFETY: the caller passes `byte_size` readable bytes.
                unsafe { std::slice::from_raw_parts(input.data.cast::<u8>(), input.byte_size) }
            };
            feeds.push((name.to_string(), tensor_from_bytes(name, dtype, &shape, bytes)?));
        }
        let results = model
            .runnable
            .run(feeds)
            .map_err(|e| Failure::new(FpxStatus::Run, fpx::Failure::new(Action::RunModel, &model.path, e).message()))?;
        // SAFETY: the caller passes `output_count` writable outputs.
        let outs = unsafe { std::slice::from_raw_parts_mut(outputs, output_count) };
        let mut too_small = Vec::new();
        for ((name, tensor), out) in results.iter().zip(outs.iter_mut()) {
            if tensor.rank() > FPX_MAX_RANK {
                return Err(Failure::new(
                    FpxStatus::Run,
                    format!("output '{name}' has {} dimensions, more than FPX_MAX_RANK", tensor.rank()),
                ));
            }
            out.dtype = dtype_code(tensor.dtype());
            out.rank = tensor.rank();
            out.shape = [0; FPX_MAX_RANK];
            for (s, &d) in out.shape.iter_mut().zip(tensor.shape()) {
                *s = d as i64;
            }
            out.byte_size = byte_size(tensor);
            if out.byte_size > out.capacity || (out.data.is_null() && out.byte_size > 0) {
                too_small.push(format!("output '{name}' needs {} bytes, its buffer has {}", out.byte_size, out.capacity));
            }
        }
        if !too_small.is_empty() {
            return Err(Failure::new(FpxStatus::BufferTooSmall, too_small.join("; ")));
        }
        for ((_, tensor), out) in results.iter().zip(outs.iter()) {
            if out.byte_size > 0 {
                // SAFETY: `data` holds `capacity` >= `byte_size` writable bytes (checked above).
                let buffer = unsafe { std::slice::from_raw_parts_mut(out.data.cast::<u8>(), out.byte_size) };
                write_bytes(tensor, buffer);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;
