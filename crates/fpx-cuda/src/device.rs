//! Running fpx's GEMMs on a GPU through the CUDA driver API (cudarc): open a device, load a
//! config's PTX, launch the FP6 GEMM ([`GpuGemm`]) or the W4A8 pair ([`GpuW4a8`]: row quantizer
//! and FP8 GEMM), time them with CUDA events.
//!
//! Nothing here runs without a GPU: [`Gpu::open`] turns a missing driver or device into a
//! [`CudaError`] (cudarc would panic on a missing library; [`crate::driver_available`] is
//! checked first). This is what the GPU tests (`tests/gpu.rs`), the GPU benchmark
//! (`examples/gpu_bench.rs`) and `scripts/gpu-check.sh` use.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};

use crate::config::{launch_geometry, DEFAULT_SHARED_LIMIT};
use crate::w4a8::W4a8Config;
use crate::{compile_ptx, driver_available, Arch, CudaError, GemmConfig};

fn driver(what: &str) -> impl Fn(DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e:?}"))
}

/// One GPU: its context and stream, and what fpx needs to know about it.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The device's name (e.g. "NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Streaming multiprocessors (what the tile heuristic plans waves over).
    pub sm_count: usize,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// Bytes of L2 cache (what a benchmark must evict between timed runs).
    pub l2_bytes: usize,
    /// The CUDA version the driver supports, e.g. `13.0` (`cuDriverGetVersion`).
    pub driver: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("name", &self.name).field("sm_count", &self.sm_count).field("capability", &self.capability).finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`. Errors: [`CudaError::NoDriver`] without a driver library,
    /// [`CudaError::Driver`] when there is no such device or it cannot be initialized.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        driver_available()?;
        let ctx = CudaContext::new(ordinal).map_err(driver("cannot open GPU device"))?;
        let attr = |a| ctx.attribute(a).map_err(driver("cannot query the GPU"));
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
        let capability = (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let l2_bytes = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
        let name = ctx.name().map_err(driver("cannot query the GPU"))?;
        let stream = ctx.default_stream();
        let mut version: std::ffi::c_int = 0;
        // SAFETY: the driver library is loaded (the context exists); the call writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result().map_err(driver("cannot query the driver version"))?;
        let driver = format!("{}.{}", version / 1000, version % 1000 / 10);
        Ok(Gpu { ctx, stream, name, sm_count, capability, l2_bytes, driver })
    }

    /// The newest architecture fpx emits PTX for that this GPU runs (sm_90 PTX needs 9.x or
    /// newer; sm_80 PTX runs on 8.x and newer). `None` below 8.0 (no `cp.async`).
    pub fn arch(&self) -> Option<Arch> {
        match self.capability.0 {
            ..=7 => None,
            8 => Some(Arch::Sm80),
            _ => Some(Arch::Sm90),
        }
    }

    /// Loads a PTX module (e.g. [`crate::compile_ops_ptx`]'s or an artifact's) into this GPU's
    /// context; get kernels from it with `load_function(name)`.
    pub fn load_module(&self, ptx: &str) -> Result<Arc<CudaModule>, CudaError> {
        self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(driver("the driver cannot load the PTX"))
    }

    /// The stream everything runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies `data` to a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_htod(data).map_err(driver("cannot copy to the GPU"))
    }

    /// A zeroed device buffer of `len` elements.
    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>, CudaError> {
        self.stream.alloc_zeros(len.max(1)).map_err(driver("cannot allocate GPU memory"))
    }

    /// Copies a device buffer back.
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(&self, data: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.clone_dtoh(data).map_err(driver("cannot copy from the GPU"))
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver("GPU work failed"))
    }

    /// Milliseconds `work` takes on the stream, measured with CUDA events (median of `reps`
    /// after one warm-up call).
    pub fn time_ms(&self, reps: usize, mut work: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        work()?;
        self.synchronize()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps.max(1));
        let start = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
        let end = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
        for _ in 0..reps.max(1) {
            start.record(&self.stream).map_err(driver("cannot record an event"))?;
            work()?;
            end.record(&self.stream).map_err(driver("cannot record an event"))?;
            times.push(start.elapsed_ms(&end).map_err(driver("cannot time GPU work"))? as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Microseconds one `work` takes from DRAM, median of `reps`: every repetition is queued
    /// behind a write of `flush` (a buffer of at least twice the L2, see [`Gpu::l2_flush_buffer`])
    /// that evicts the previous repetition's data from L2, and is bracketed by its own pair of
    /// events; nothing waits on the host until all are queued, so launch latency is not inside
    /// the samples (the queue runs ahead of the GPU).
    pub fn time_cold_us(
        &self,
        reps: usize,
        flush: &mut CudaSlice<u8>,
        mut work: impl FnMut() -> Result<(), CudaError>,
    ) -> Result<f64, CudaError> {
        work()?;
        self.synchronize()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            self.stream.memset_zeros(flush).map_err(driver("cannot flush L2"))?;
            let start = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
            let end = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
            start.record(&self.stream).map_err(driver("cannot record an event"))?;
            work()?;
            end.record(&self.stream).map_err(driver("cannot record an event"))?;
            events.push((start, end));
        }
        self.synchronize()?;
        let mut times = Vec::with_capacity(events.len());
        for (start, end) in &events {
            times.push(start.elapsed_ms(end).map_err(driver("cannot time GPU work"))? as f64 * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Microseconds per `work` when `reps` run back to back between one pair of events (after
    /// a warm-up): the steady state of a decode loop, launch gaps and L2 reuse included.
    pub fn time_back_to_back_us(&self, reps: usize, mut work: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        work()?;
        self.synchronize()?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
        let end = self.ctx.new_event(flags).map_err(driver("cannot create an event"))?;
        start.record(&self.stream).map_err(driver("cannot record an event"))?;
        for _ in 0..reps.max(1) {
            work()?;
        }
        end.record(&self.stream).map_err(driver("cannot record an event"))?;
        Ok(start.elapsed_ms(&end).map_err(driver("cannot time GPU work"))? as f64 * 1e3 / reps.max(1) as f64)
    }

    /// A scratch buffer twice the L2 size (at least 64 MiB) for [`Gpu::time_cold_us`].
    pub fn l2_flush_buffer(&self) -> Result<CudaSlice<u8>, CudaError> {
        self.zeros((2 * self.l2_bytes).max(64 << 20))
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read + bytes written, over `bytes` per
    /// copy): the "HBM bandwidth" the GEMM's weight streaming is compared with.
    pub fn copy_bandwidth_gbs(&self, bytes: usize) -> Result<f64, CudaError> {
        let src: CudaSlice<u8> = self.zeros(bytes)?;
        let mut dst: CudaSlice<u8> = self.zeros(bytes)?;
        let ms = self.time_ms(10, || self.stream.memcpy_dtod(&src, &mut dst).map_err(driver("device copy failed")))?;
        Ok(2.0 * bytes as f64 / (ms * 1e-3) / 1e9)
    }
}

/// One GEMM config loaded on a GPU: its kernel (split-K sums in the kernel itself).
pub struct GpuGemm {
    /// The config.
    pub cfg: GemmConfig,
    gemm: CudaFunction,
}

/// What a split-K config needs beside its operands, for up to `max_m` tokens: FP32 partial sums
/// (`split_k x m x n`) and one arrival counter per output block, zeroed here once; every launch
/// leaves the counters zero, so one workspace serves any number of launches with `m <= max_m`
/// (on one stream: concurrent launches must not share it).
pub struct SplitKWorkspace {
    partials: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    max_m: usize,
}

impl SplitKWorkspace {
    /// Allocates (zeroed) a workspace for `cfg` and up to `max_m` tokens.
    pub fn new(gpu: &Gpu, cfg: &GemmConfig, max_m: usize) -> Result<SplitKWorkspace, CudaError> {
        Ok(SplitKWorkspace { partials: gpu.zeros(cfg.workspace_bytes(max_m) / 4)?, counters: gpu.zeros(cfg.counter_slots(max_m))?, max_m })
    }

    /// The most tokens a launch may use it for.
    pub fn max_m(&self) -> usize {
        self.max_m
    }

    /// The arrival counters, copied to the host (all zero between launches; for tests).
    pub fn counters(&self, gpu: &Gpu) -> Result<Vec<u32>, CudaError> {
        gpu.download(&self.counters)
    }
}

/// The device operands of one product `Y[M][N] = X[M][K_PAD] · dequant(W)` (see the template's
/// header for the layouts).
pub struct GemmOperands<'a> {
    /// FP16/BF16 activations, `[m][k_pad]`, padding columns zero.
    pub x: &'a CudaSlice<u16>,
    /// The packed 4+2 planes.
    pub w: &'a CudaSlice<u8>,
    /// Folded per-channel scales, `[n]`.
    pub scales: &'a CudaSlice<f32>,
    /// Optional bias, `[n]`.
    pub bias: Option<&'a CudaSlice<f32>>,
    /// Output, `[m][n]`.
    pub y: &'a mut CudaSlice<u16>,
    /// The split-K workspace, made for this config ([`SplitKWorkspace::new`]) and at least `m`
    /// tokens; required when `split_k > 1`, unused otherwise.
    pub ws: Option<&'a mut SplitKWorkspace>,
}

impl GpuGemm {
    /// Compiles (NVRTC, cached) and loads `cfg` for `gpu`'s architecture.
    pub fn load(gpu: &Gpu, cfg: &GemmConfig) -> Result<GpuGemm, CudaError> {
        let arch = gpu.arch().ok_or_else(|| {
            CudaError::Driver(format!(
                "{} has compute capability {}.{}; fpx's GPU kernels need 8.0 or newer",
                gpu.name, gpu.capability.0, gpu.capability.1
            ))
        })?;
        let ptx = compile_ptx(cfg, arch)?;
        Self::from_ptx(gpu, cfg, &ptx.src, &ptx.kernel, None)
    }

    /// Loads a GEMM from PTX text (e.g. an artifact's module) with the given entry name. A
    /// separate `reduce` entry marks PTX from before split-K was fused into the GEMM (fpx
    /// artifacts of format 3 compiled before this change, whose GEMM takes no counters): it is
    /// refused with a message to recompile.
    pub fn from_ptx(gpu: &Gpu, cfg: &GemmConfig, ptx: &str, kernel: &str, reduce: Option<&str>) -> Result<GpuGemm, CudaError> {
        if let Some(r) = reduce {
            return Err(CudaError::Config(format!(
                "{kernel} comes with a separate split-K reduction kernel '{r}': GPU code from an older fpx, whose GEMM arguments \
                 differ; recompile the model with this fpx"
            )));
        }
        let module = gpu.load_module(ptx)?;
        let gemm = module.load_function(kernel).map_err(driver("the PTX lacks the GEMM entry"))?;
        if cfg.shared_bytes() > DEFAULT_SHARED_LIMIT {
            gemm.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_bytes() as i32)
                .map_err(driver("cannot raise the shared-memory limit"))?;
        }
        Ok(GpuGemm { cfg: cfg.clone(), gemm })
    }

    /// A zeroed split-K workspace for this config and up to `max_m` tokens.
    pub fn workspace(&self, gpu: &Gpu, max_m: usize) -> Result<SplitKWorkspace, CudaError> {
        SplitKWorkspace::new(gpu, &self.cfg, max_m)
    }

    /// Queues the product for `m` rows on `gpu`'s stream: one launch (the workspace is required
    /// when the config splits K; buffer sizes are checked).
    pub fn launch(&self, gpu: &Gpu, m: usize, ops: GemmOperands<'_>) -> Result<(), CudaError> {
        let c = &self.cfg;
        let short = |what: &str, have: usize, need: usize| {
            CudaError::Config(format!("{}: the {what} buffer has {have} elements, {need} needed for M = {m}", c.kernel_name()))
        };
        let need_w = fpx_quant::layout::PackedShape::new(c.n, c.k, 6).total_bytes();
        for (what, have, need) in [
            ("X", ops.x.len(), m * c.k_pad()),
            ("W", ops.w.len(), need_w),
            ("scales", ops.scales.len(), c.n),
            ("Y", ops.y.len(), m * c.n),
            ("bias", ops.bias.map_or(c.n, |b| b.len()), c.n),
        ] {
            if have < need {
                return Err(short(what, have, need));
            }
        }
        if m == 0 {
            return Ok(());
        }
        let m_arg = i32::try_from(m).map_err(|_| CudaError::Config(format!("M = {m} does not fit the kernel's int")))?;
        let null: u64 = 0;
        let name = c.kernel_name();
        let cfg = gemm_launch_config(c, &name, c.shared_bytes(), m)?;
        let ws = checked_workspace(c, &name, m, ops.ws)?;
        let mut b = gpu.stream.launch_builder(&self.gemm);
        b.arg(ops.x).arg(ops.w).arg(ops.scales);
        match ops.bias {
            Some(bias) => b.arg(bias),
            None => b.arg(&null),
        };
        b.arg(&mut *ops.y);
        match ws {
            Some(ws) => b.arg(&mut ws.partials).arg(&mut ws.counters),
            None => b.arg(&null).arg(&null),
        };
        b.arg(&m_arg);
        // SAFETY: the arguments match the kernel's signature (see `instantiate`) and the buffers
        // were checked to be large enough for `m`; the counters are zero between launches.
        unsafe { b.launch(cfg) }.map_err(driver("the GEMM launch failed"))?;
        Ok(())
    }
}

/// The launch config of a GEMM with `cfg`'s tiling (`name` for messages) and `shared` bytes of
/// dynamic shared memory for `m` tokens, refused when the channel blocks exceed the grid.
fn gemm_launch_config(cfg: &GemmConfig, name: &str, shared: usize, m: usize) -> Result<LaunchConfig, CudaError> {
    let (grid, block, _) = launch_geometry(cfg, m);
    if grid[1] as usize > crate::config::MAX_GRID_YZ {
        return Err(CudaError::Config(format!(
            "{name}: {} blocks of {} channels exceed the grid's {} (N too large for this tiling)",
            grid[1],
            cfg.block_n(),
            crate::config::MAX_GRID_YZ
        )));
    }
    Ok(LaunchConfig { grid_dim: (grid[0], grid[1], grid[2]), block_dim: (block[0], block[1], block[2]), shared_mem_bytes: shared as u32 })
}

/// The split-K workspace of a launch of `cfg`'s tiling for `m` tokens: required and checked
/// against `m` when the tiling splits K, ignored otherwise.
fn checked_workspace<'w>(
    cfg: &GemmConfig,
    name: &str,
    m: usize,
    ws: Option<&'w mut SplitKWorkspace>,
) -> Result<Option<&'w mut SplitKWorkspace>, CudaError> {
    match ws {
        Some(ws) if cfg.split_k > 1 => {
            if ws.max_m < m || ws.partials.len() < cfg.workspace_bytes(m) / 4 || ws.counters.len() < cfg.counter_slots(m) {
                return Err(CudaError::Config(format!(
                    "{name}: the split-K workspace holds {} tokens ({} partials, {} counters), M = {m} needs {} and {}",
                    ws.max_m,
                    ws.partials.len(),
                    ws.counters.len(),
                    cfg.workspace_bytes(m) / 4,
                    cfg.counter_slots(m)
                )));
            }
            Ok(Some(ws))
        }
        None if cfg.split_k > 1 => Err(CudaError::Config(format!(
            "{name} splits K {} ways and needs a split-K workspace (its `workspace`), none was given",
            cfg.split_k
        ))),
        _ => Ok(None),
    }
}

/// The W4A8 kernel pair ([`crate::w4a8`]) loaded on a GPU with FP8 `mma` (compute capability
/// 8.9 or newer): the row quantizer and the GEMM.
pub struct GpuW4a8 {
    /// The config it was compiled for.
    pub cfg: W4a8Config,
    quantize: CudaFunction,
    gemm: CudaFunction,
}

/// The device operands of one W4A8 product (see `kernels-templates/w4a8_gemm.cu`).
pub struct W4a8Operands<'a> {
    /// FP16 activations, `[m][k]` (no padding).
    pub x: &'a CudaSlice<u16>,
    /// The quantizer's output and the GEMM's input: FP8 codes `[m][k_pad]`.
    pub xq: &'a mut CudaSlice<u8>,
    /// The quantizer's per-row scales, `[m]`.
    pub xscale: &'a mut CudaSlice<f32>,
    /// The FP4 codes in the 4+2 layout (no high plane).
    pub w: &'a CudaSlice<u8>,
    /// Per-channel scales with the FP16 storage factor folded in, `[n]`.
    pub scales: &'a CudaSlice<f32>,
    /// Optional bias, `[n]`.
    pub bias: Option<&'a CudaSlice<f32>>,
    /// FP16 output, `[m][n]`.
    pub y: &'a mut CudaSlice<u16>,
    /// The split-K workspace ([`GpuW4a8::workspace`]) when the config splits K.
    pub ws: Option<&'a mut SplitKWorkspace>,
}

impl GpuW4a8 {
    /// Compiles `cfg` for the GPU (sm_89 code on 8.9, sm_90 on 9.0 and newer) and loads both
    /// kernels; a GPU without FP8 `mma` is a [`CudaError::Driver`] naming its capability.
    pub fn load(gpu: &Gpu, cfg: &W4a8Config) -> Result<GpuW4a8, CudaError> {
        let arch = match gpu.capability {
            (8, minor) if minor >= 9 => Arch::Sm89,
            (major, _) if major >= 9 => Arch::Sm90,
            (major, minor) => {
                return Err(CudaError::Driver(format!(
                    "{} has compute capability {major}.{minor}; the W4A8 GEMM needs FP8 mma (8.9 or newer)",
                    gpu.name
                )))
            }
        };
        let ptx = crate::w4a8::compile_ptx(cfg, arch)?;
        let module = gpu.load_module(&ptx.src)?;
        let gemm = module.load_function(&ptx.kernel).map_err(driver("the PTX lacks the W4A8 GEMM entry"))?;
        let quantize = module.load_function(&cfg.quantize_kernel_name()).map_err(driver("the PTX lacks the row quantizer entry"))?;
        if cfg.shared_bytes() > DEFAULT_SHARED_LIMIT {
            gemm.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_bytes() as i32)
                .map_err(driver("cannot raise the shared-memory limit"))?;
        }
        Ok(GpuW4a8 { cfg: cfg.clone(), quantize, gemm })
    }

    /// A zeroed split-K workspace for this config and up to `max_m` tokens.
    pub fn workspace(&self, gpu: &Gpu, max_m: usize) -> Result<SplitKWorkspace, CudaError> {
        SplitKWorkspace::new(gpu, &self.cfg.tiling(), max_m)
    }

    /// Queues the row quantizer and the GEMM for `m` rows on `gpu`'s stream (buffer sizes
    /// checked; the workspace required when the config splits K).
    pub fn launch(&self, gpu: &Gpu, m: usize, ops: W4a8Operands<'_>) -> Result<(), CudaError> {
        let c = &self.cfg;
        let (tiling, name) = (c.tiling(), c.kernel_name());
        let need_w = fpx_quant::layout::PackedShape::new(c.n, c.k, 4).total_bytes();
        for (what, have, need) in [
            ("X", ops.x.len(), m * c.k),
            ("Xq", ops.xq.len(), m * c.k_pad()),
            ("row scales", ops.xscale.len(), m),
            ("W", ops.w.len(), need_w),
            ("scales", ops.scales.len(), c.n),
            ("Y", ops.y.len(), m * c.n),
            ("bias", ops.bias.map_or(c.n, |b| b.len()), c.n),
        ] {
            if have < need {
                return Err(CudaError::Config(format!("{name}: the {what} buffer has {have} elements, {need} needed for M = {m}")));
            }
        }
        if m == 0 {
            return Ok(());
        }
        let m_arg = i32::try_from(m).map_err(|_| CudaError::Config(format!("M = {m} does not fit the kernel's int")))?;
        let null: u64 = 0;
        let gemm_cfg = gemm_launch_config(&tiling, &name, c.shared_bytes(), m)?;
        let ws = checked_workspace(&tiling, &name, m, ops.ws)?;
        let (qgrid, qblock) = c.quantize_geometry(m);
        let qcfg =
            LaunchConfig { grid_dim: (qgrid[0], qgrid[1], qgrid[2]), block_dim: (qblock[0], qblock[1], qblock[2]), shared_mem_bytes: 0 };
        let mut q = gpu.stream.launch_builder(&self.quantize);
        q.arg(ops.x).arg(&mut *ops.xq).arg(&mut *ops.xscale).arg(&m_arg);
        // SAFETY: the arguments match the quantizer's signature (`w4a8::instantiate`); X holds m
        // rows of k, Xq m rows of k_pad, the scales m values (checked above).
        unsafe { q.launch(qcfg) }.map_err(driver("the row quantizer launch failed"))?;
        let mut b = gpu.stream.launch_builder(&self.gemm);
        b.arg(&*ops.xq).arg(&*ops.xscale).arg(ops.w).arg(ops.scales);
        match ops.bias {
            Some(bias) => b.arg(bias),
            None => b.arg(&null),
        };
        b.arg(&mut *ops.y);
        match ws {
            Some(ws) => b.arg(&mut ws.partials).arg(&mut ws.counters),
            None => b.arg(&null).arg(&null),
        };
        b.arg(&m_arg);
        // SAFETY: the arguments match the GEMM's signature (`w4a8::instantiate`), the buffers were
        // checked for `m`, the stream orders it after the quantizer; counters are zero between launches.
        unsafe { b.launch(gemm_cfg) }.map_err(driver("the W4A8 GEMM launch failed"))?;
        Ok(())
    }
}

/// cuBLAS FP16 GEMM (FP32 accumulation, default algorithm): the peer the GPU benchmark
/// compares with, the same call `torch.matmul` makes for FP16 tensors.
pub struct Cublas {
    blas: cudarc::cublas::CudaBlas,
    stream: Arc<CudaStream>,
}

impl Cublas {
    /// A cuBLAS handle on `gpu`'s stream; an error (not a panic) when libcublas is absent.
    pub fn new(gpu: &Gpu) -> Result<Cublas, CudaError> {
        // SAFETY: only tries to dlopen the candidate library names.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::Driver(
                "libcublas is not loadable (install the CUDA toolkit's cuBLAS or put it on LD_LIBRARY_PATH)".into(),
            ));
        }
        let blas = cudarc::cublas::CudaBlas::new(gpu.stream.clone())
            .map_err(|e| CudaError::Driver(format!("cannot create a cuBLAS handle: {e:?}")))?;
        Ok(Cublas { blas, stream: gpu.stream.clone() })
    }

    /// `Y[m][n] = X[m][k] · W[k][n]`, all row-major FP16 (as bits).
    pub fn hgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        if x.len() < m * k || w.len() < k * n || y.len() < m * n {
            return Err(CudaError::Config(format!("hgemm {m}x{n}x{k}: a buffer is too small")));
        }
        let dim = |v: usize| i32::try_from(v).map_err(|_| CudaError::Config(format!("hgemm dimension {v} is too large")));
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let stream = &self.stream;
        let (xp, _rx) = x.device_ptr(stream);
        let (wp, _rw) = w.device_ptr(stream);
        let (yp, _ry) = y.device_ptr_mut(stream);
        // Row-major Y = X·W is column-major Yᵀ = Wᵀ·Xᵀ: (n × k) · (k × m), no transposes.
        // SAFETY: the pointers are live device buffers of the checked sizes on this stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_N,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const _,
                wp as *const _,
                cudaDataType::CUDA_R_16F,
                ni,
                xp as *const _,
                cudaDataType::CUDA_R_16F,
                ki,
                (&beta) as *const f32 as *const _,
                yp as *mut _,
                cudaDataType::CUDA_R_16F,
                ni,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Driver(format!("cuBLAS GemmEx failed: {e:?}")))
    }
}
