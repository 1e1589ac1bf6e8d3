//! NVRTC → PTX (with a compile cache), `ptxas -v` resource checks, and the driver probe.
//!
//! cudarc loads NVRTC and the driver by bare library name and panics if they are missing, so
//! every entry point checks `is_culib_present()` first and returns a [`CudaError`] instead.
//! When NVRTC is not on the loader path, [`load_nvrtc`] preloads `libnvrtc-builtins.so.13.0`
//! and `libnvrtc.so.13` by absolute path from the CUDA home ([`cuda_home`]: [`set_cuda_home`],
//! else `FPX_CUDA_HOME`); the dynamic loader then resolves cudarc's bare-name `dlopen` (and
//! NVRTC's own `dlopen` of the builtins) to the already-loaded copies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{instantiate, GemmConfig, FP6_GEMM_TEMPLATE};
use crate::{Arch, CudaError};

/// PTX text for one GEMM config and arch, with the names of its kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ptx {
    /// The architecture it was compiled for.
    pub arch: Arch,
    /// The GEMM kernel's entry name.
    pub kernel: String,
    /// The PTX source (what the artifact stores and the driver JIT-loads).
    pub src: Arc<str>,
}

static CUDA_HOME: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Overrides the CUDA home (the folder with `lib/libnvrtc.so.13` and `bin/ptxas`) for this
/// process; takes precedence over `FPX_CUDA_HOME`.
pub fn set_cuda_home(path: impl Into<PathBuf>) {
    *CUDA_HOME.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.into());
}

/// The CUDA home: the [`set_cuda_home`] override, else `FPX_CUDA_HOME`, else `None`.
pub fn cuda_home() -> Option<PathBuf> {
    if let Some(p) = CUDA_HOME.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Some(p);
    }
    std::env::var_os("FPX_CUDA_HOME").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Libraries preloaded by absolute path; kept loaded for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Makes NVRTC loadable, or says why it is not: Ok if cudarc already finds it; otherwise
/// preloads it from `home` (or [`cuda_home`]) `/lib` and checks again.
pub fn load_nvrtc(home: Option<&Path>) -> Result<(), CudaError> {
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let home = home.map(Path::to_path_buf).or_else(cuda_home);
    let Some(home) = home else {
        return Err(CudaError::NoNvrtc("not on LD_LIBRARY_PATH and FPX_CUDA_HOME is not set".into()));
    };
    let lib = home.join("lib");
    let mut preloaded = PRELOADED.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = lib.join(name);
        // SAFETY: loading NVRTC runs its (trusted, vendor) initializers only.
        match unsafe { libloading::Library::new(&path) } {
            Ok(l) => preloaded.push(l),
            Err(e) => return Err(CudaError::NoNvrtc(format!("cannot load {}: {e}", path.display()))),
        }
    }
    drop(preloaded);
    // SAFETY: as above.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoNvrtc(format!("preloaded from {} but cudarc still cannot open it", lib.display())))
    }
}

/// Ok if the CUDA driver library can be loaded; [`CudaError::NoDriver`] otherwise (never
/// panics). Says nothing about whether a GPU is present beyond the library.
pub fn driver_available() -> Result<(), CudaError> {
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoDriver)
    }
}

/// The compile cache key: (template hash, config, arch). The template hash makes a stale
/// entry impossible if the template text ever differs (e.g. a future on-disk cache).
type CacheKey = (u64, GemmConfig, Arch);

fn cache() -> &'static Mutex<HashMap<CacheKey, Ptx>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Ptx>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A hash of the GEMM template text (part of the cache key): 64-bit FNV-1a, the same on every
/// machine and Rust version, so the tuning database can record it ([`template_checksum`]).
pub fn template_hash() -> u64 {
    static HASH: OnceLock<u64> = OnceLock::new();
    *HASH
        .get_or_init(|| FP6_GEMM_TEMPLATE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)))
}

/// [`template_hash`] as 16 hex digits: what the tuning database keys GPU results by, so that a
/// changed GEMM template makes the configs tuned for the old one stale.
pub fn template_checksum() -> String {
    format!("{:016x}", template_hash())
}

/// Number of NVRTC compilations this process has run (cache misses); for tests and logs.
pub fn nvrtc_compilations() -> u64 {
    COMPILATIONS.load(Ordering::Relaxed)
}

static COMPILATIONS: AtomicU64 = AtomicU64::new(0);

/// Instantiates `cfg` and compiles it with NVRTC for `arch` (`--gpu-architecture=compute_XX`,
/// C++17). Cached in memory per (template hash, config, arch). Errors: [`CudaError::NoNvrtc`]
/// if NVRTC cannot be loaded, [`CudaError::Compile`] with NVRTC's log.
pub fn compile_ptx(cfg: &GemmConfig, arch: Arch) -> Result<Ptx, CudaError> {
    let key = (template_hash(), cfg.clone(), arch);
    if let Some(p) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let src = instantiate(cfg)?;
    let kernel = cfg.kernel_name();
    let ptx = nvrtc_ptx(&src, &kernel, arch, &COMPILATIONS)?;
    let ptx = Ptx { arch, kernel, src: ptx };
    cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, ptx.clone());
    Ok(ptx)
}

/// NVRTC → PTX text for `arch` (`compute_XX`, C++17), the translation unit named `unit.cu`;
/// counts the compilation in `counter`. Errors: [`CudaError::NoNvrtc`], or
/// [`CudaError::Compile`] with NVRTC's log.
pub(crate) fn nvrtc_ptx(src: &str, unit: &str, arch: Arch, counter: &AtomicU64) -> Result<Arc<str>, CudaError> {
    load_nvrtc(None)?;
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch.compute()),
        options: vec!["--std=c++17".into()],
        name: Some(format!("{unit}.cu")),
        ..Default::default()
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile {
        kernel: unit.to_string(),
        arch,
        message: match &e {
            cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => format!("{nvrtc:?}: {}", log.to_string_lossy()),
            other => format!("{other:?}"),
        },
    })?;
    Ok(ptx.to_src().into())
}

/// ptxas's resource usage for one entry function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Entry function name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of spill stores.
    pub spill_stores: u32,
    /// Bytes of spill loads.
    pub spill_loads: u32,
    /// Bytes of stack frame.
    pub stack_bytes: u32,
    /// Bytes of static shared memory (the GEMM's is dynamic, so 0).
    pub shared_bytes: u32,
}

/// What `ptxas -v` says about a PTX module: the worst case over its entry functions, and each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// Most registers per thread of any kernel.
    pub registers: u32,
    /// Spill-store bytes, summed over kernels.
    pub spill_stores: u32,
    /// Spill-load bytes, summed over kernels.
    pub spill_loads: u32,
    /// Most static shared memory of any kernel.
    pub shared_bytes: u32,
    /// Per kernel.
    pub kernels: Vec<KernelResources>,
}

/// `ptxas` on PATH, else `<cuda home>/bin/ptxas`.
pub fn find_ptxas() -> Option<PathBuf> {
    find_cuda_tool("ptxas")
}

/// The CUDA command-line tool `name` on PATH, else in `<cuda home>/bin`.
pub(crate) fn find_cuda_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| cuda_home().map(|h| h.join("bin").join(name)).filter(|p| p.is_file()))
}

/// Assembles `ptx` with `ptxas -arch=sm_XX -v` and parses the resource report.
pub fn ptxas_check(ptx: &Ptx, arch: Arch) -> Result<PtxasReport, CudaError> {
    assemble(&ptx.src, arch).map(|(report, _)| report)
}

/// Assembles PTX text with `ptxas -arch=sm_XX -v`: the resource report and the cubin (ELF)
/// bytes, which `nvdisasm` reads ([`crate::sass`]).
pub fn assemble(ptx: &str, arch: Arch) -> Result<(PtxasReport, Vec<u8>), CudaError> {
    let ptxas = find_ptxas().ok_or_else(|| CudaError::NoPtxas("not on PATH and no FPX_CUDA_HOME/bin/ptxas".into()))?;
    let stem = temp_stem("ptxas");
    let (ptx_path, cubin_path) = (stem.with_extension("ptx"), stem.with_extension("cubin"));
    std::fs::write(&ptx_path, ptx.as_bytes())?;
    let out = Command::new(&ptxas).arg(format!("-arch={}", arch.sm())).arg("-v").arg(&ptx_path).arg("-o").arg(&cubin_path).output();
    let _ = std::fs::remove_file(&ptx_path);
    let cubin = std::fs::read(&cubin_path);
    let _ = std::fs::remove_file(&cubin_path);
    let out = out.map_err(|e| CudaError::NoPtxas(format!("cannot run {}: {e}", ptxas.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(CudaError::Ptxas { arch, message: format!("{}: {stderr}", out.status) });
    }
    let report = parse_ptxas_verbose(&stderr);
    if report.kernels.is_empty() {
        return Err(CudaError::Ptxas { arch, message: format!("no resource report in ptxas output: {stderr}") });
    }
    let cubin = cubin.map_err(|e| CudaError::Ptxas { arch, message: format!("ptxas wrote no cubin: {e}") })?;
    Ok((report, cubin))
}

/// A fresh path stem in the temp folder for one external tool run (process id + sequence).
pub(crate) fn temp_stem(tool: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!("fpx-{tool}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)))
}

/// The number before `unit` in `line` (`"40 registers"` → 40).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Parses `ptxas -v` stderr:
///
/// ```text
/// ptxas info    : Compiling entry function 'name' for 'sm_80'
/// ptxas info    : Function properties for name
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 40 registers, used 1 barriers, 384 bytes cmem[0]
/// ```
pub fn parse_ptxas_verbose(stderr: &str) -> PtxasReport {
    let mut kernels: Vec<KernelResources> = Vec::new();
    for line in stderr.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(KernelResources { name, ..Default::default() });
            continue;
        }
        let Some(k) = kernels.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    PtxasReport {
        registers: kernels.iter().map(|k| k.registers).max().unwrap_or(0),
        spill_stores: kernels.iter().map(|k| k.spill_stores).sum(),
        spill_loads: kernels.iter().map(|k| k.spill_loads).sum(),
        shared_bytes: kernels.iter().map(|k| k.shared_bytes).max().unwrap_or(0),
        kernels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let stderr = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k_reduce' for 'sm_80'
ptxas info    : Function properties for k_reduce
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, used 0 barriers, 392 bytes cmem[0]
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
";
        let r = parse_ptxas_verbose(stderr);
        assert_eq!((r.registers, r.spill_stores, r.spill_loads, r.shared_bytes), (255, 12, 8, 1024));
        assert_eq!(r.kernels.len(), 2);
        assert_eq!(
            r.kernels[0],
            KernelResources { name: "k_reduce".into(), registers: 22, spill_stores: 0, spill_loads: 0, stack_bytes: 0, shared_bytes: 0 }
        );
        assert_eq!((r.kernels[1].name.as_str(), r.kernels[1].stack_bytes), ("k", 16));
        assert_eq!(parse_ptxas_verbose("garbage\n"), PtxasReport::default());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = CudaError::NoNvrtc("x".into()).to_string();
        assert!(e.contains("no NVRTC found") && e.contains("LD_LIBRARY_PATH") && e.contains("FPX_CUDA_HOME"), "{e}");
        let e = CudaError::NoDriver.to_string();
        assert!(e.starts_with("no CUDA driver found"), "{e}");
        assert!(CudaError::NoPtxas("x".into()).to_string().contains("FPX_CUDA_HOME"));
    }

    #[test]
    fn nvrtc_from_a_missing_home_is_an_error_not_a_panic() {
        // Only meaningful where NVRTC is not already on the loader path (or preloaded by
        // another test): then a bogus home must give NoNvrtc naming the file.
        // SAFETY: only dlopen attempts.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return;
        }
        let e = load_nvrtc(Some(Path::new("/nonexistent/cuda"))).unwrap_err();
        assert!(matches!(&e, CudaError::NoNvrtc(m) if m.contains("/nonexistent/cuda/lib")), "{e}");
    }

    #[test]
    fn template_checksum_is_fnv1a_of_the_template() {
        // FNV-1a's published test vector, then the template's own hash recomputed byte by byte.
        let fnv = |bytes: &[u8]| bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(template_hash(), fnv(FP6_GEMM_TEMPLATE.as_bytes()));
        assert_eq!(template_checksum(), format!("{:016x}", fnv(FP6_GEMM_TEMPLATE.as_bytes())));
        assert_eq!(template_checksum().len(), 16);
    }
}
