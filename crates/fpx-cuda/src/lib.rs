//! fpx's CUDA side: the `kernels-templates/` GEMM instantiated per (shape, tile config), NVRTC
//! → PTX through cudarc, `ptxas -v` resource checks, and launch geometry.
//!
//! Everything here builds and runs without a GPU or a CUDA installation: NVRTC and the driver
//! are loaded at run time (cudarc's `dynamic-loading`), and their absence is a [`CudaError`]
//! that says what is missing ([`CudaError::NoNvrtc`], [`CudaError::NoDriver`]), never a panic.
//!
//! - [`config`]: [`GemmConfig`] (format, activation type, N, K, token tile, warps, stages,
//!   split-K), [`heuristic_config`] (the analytic default: a parallelism model picks the split),
//!   [`search_space`] (what a tuner may time),
//!   [`launch_geometry`] and [`instantiate`] (template source + `extern "C"` kernels).
//! - [`compile`]: [`compile_ptx`] (NVRTC, with an in-memory cache keyed by template hash,
//!   config and arch), [`ptxas_check`] (registers, spills, shared memory from `ptxas -v`),
//!   [`driver_available`].
//! - [`sass`]: static SASS evidence (nvdisasm): the main loop's instructions per K step for
//!   dequantization, copies and MMAs, registers and blocks per SM, by probe builds.
//! - [`w4a8`]: the W4A8 GEMM of ZeroQuant-FP (FP4 weights, FP8 activations quantized per token,
//!   FP8 tensor cores on sm_90): its config, row quantizer and template instantiation.
//! - [`plan`]: the GPU half of an artifact: per architecture, a kernel table per quantized
//!   product ([`plan::ptx_code`]) and one PTX module per distinct config.
//! - [`ops`]: the rest of a transformer on the GPU: header-free templates (elementwise unary and
//!   binary ops with numpy broadcasting, casts, LayerNormalization, Softmax, ReduceSum/Mean,
//!   Gather, Transpose) in FP16 or FP32 storage with FP32 math, one PTX module per family
//!   ([`compile_ops_ptx`]), every [`OpKernel`] with its arguments and [`ops::launch_config`],
//!   and the planners that turn ONNX shapes into kernel arguments ([`binary_plan`],
//!   [`transpose_plan`], [`gather_plan`]), checked on the CPU by replaying the kernels' index
//!   math. Not checked without a GPU: their numerical results on a device and their speed.
//!
//! # What is checked without a GPU, and what is not
//!
//! Checked here (tests): every config [`heuristic_config`] picks for the MiniLM and LLaMA-2
//! linear shapes compiles with NVRTC for sm_80 and sm_90 and assembles with `ptxas` with no
//! spills and no stack; a CPU emulation of the kernel (the cp.async streams' chunk placement and
//! guards into a byte image of shared memory, every byte written once, fragment reads,
//! dequantization, `mma.m16n8k16` by its PTX fragment definition, guarded epilogue, split-K
//! ranges and reduction) hands every MMA bit-exact operands and matches decode-then-multiply,
//! for the heuristic's configs, every config of the tuner's [`search_space`] on awkward shapes
//! and the model shapes' first and last blocks; the static SASS budgets ([`sass`]: instructions
//! per copy, BF16 vs FP16 dequantization, blocks per SM); the launch geometry covers every
//! output exactly once; the split-K plan; the no-NVRTC / no-driver errors.
//!
//! Not checked without a GPU: that the hardware executes the PTX as the emulation assumes
//! (numerical results on a device), `cp.async` zero-fill and the evict-first policy at run
//! time, the absence of races and misaligned accesses (compute-sanitizer), and speed.
//!
//! Launch requirements: `X` and `W` 16-byte aligned (`cuMemAlloc` gives 256); `X` rows of
//! `k_pad()` elements with zero padding columns; configs above 48 KiB of shared memory need
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (the heuristic stays within 48 KiB);
//! per-channel scales only (no K groups yet).

pub mod compile;
pub mod config;
pub mod device;
pub mod ops;
pub mod plan;
pub mod sass;
pub mod w4a8;

pub use compile::{
    compile_ptx, cuda_home, driver_available, find_ptxas, load_nvrtc, ptxas_check, set_cuda_home, template_checksum, KernelResources, Ptx,
    PtxasReport,
};
pub use config::{heuristic_config, instantiate, launch_geometry, search_space, Act, Fp6Format, GemmConfig, FP6_GEMM_TEMPLATE};
pub use ops::{
    binary_plan, broadcast_args, compile_family_ptx, compile_ops_ptx, gather_plan, transpose_plan, BcastArgs, BinaryOp, BinaryPlan, CastOp,
    Elem, GatherPlan, OpFamily, OpKernel, OpShapeError, OpsPtx, PermArgs, ReduceOp, TransposePlan, UnaryOp, Width,
};

/// A GPU architecture fpx emits PTX for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// Ampere (A100): `compute_80` / `sm_80`.
    Sm80,
    /// Ada (L4, L40S): `compute_89` / `sm_89`, the first with FP8 `mma.sync`. Only the W4A8
    /// GEMM ([`w4a8`]) targets it; artifacts carry sm_80 and sm_90 code ([`Arch::ALL`]), and
    /// sm_80 PTX runs on Ada.
    Sm89,
    /// Hopper (H100/H200): `compute_90` / `sm_90`.
    Sm90,
}

impl Arch {
    /// The architectures artifacts carry code for, oldest first.
    pub const ALL: [Arch; 2] = [Arch::Sm80, Arch::Sm90];

    /// The NVRTC virtual architecture (`compute_80`).
    pub fn compute(self) -> &'static str {
        match self {
            Arch::Sm80 => "compute_80",
            Arch::Sm89 => "compute_89",
            Arch::Sm90 => "compute_90",
        }
    }

    /// The ptxas real architecture (`sm_80`).
    pub fn sm(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm89 => "sm_89",
            Arch::Sm90 => "sm_90",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sm())
    }
}

/// Everything that can go wrong on the CUDA side.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libnvrtc could not be loaded.
    #[error(
        "no NVRTC found: libnvrtc.so.13 is not loadable ({0}); put FPX_CUDA_HOME/lib on LD_LIBRARY_PATH or set FPX_CUDA_HOME to a CUDA 13.0 \
         home with lib/libnvrtc.so.13 and lib/libnvrtc-builtins.so.13.0 (scripts/setup.sh writes it to .fpx-env)"
    )]
    NoNvrtc(String),
    /// The CUDA driver (libcuda) could not be loaded: no GPU machine.
    #[error("no CUDA driver found: libcuda.so is not loadable (no NVIDIA driver on this machine, or it is not on LD_LIBRARY_PATH)")]
    NoDriver,
    /// ptxas could not be found or run.
    #[error("no ptxas found: {0} (put FPX_CUDA_HOME/bin on PATH or set FPX_CUDA_HOME)")]
    NoPtxas(String),
    /// nvdisasm (for the static SASS report) could not be found, run or understood.
    #[error("nvdisasm: {0} (scripts/setup.sh installs nvidia-cuda-nvdisasm into FPX_CUDA_HOME/bin)")]
    Nvdisasm(String),
    /// NVRTC rejected the kernel source.
    #[error("NVRTC failed to compile {kernel} for {arch}: {message}")]
    Compile {
        /// The kernel's name.
        kernel: String,
        /// The target architecture.
        arch: Arch,
        /// What is wrong.
        message: String,
    },
    /// ptxas rejected the PTX or its output could not be understood.
    #[error("ptxas failed for {arch}: {message}")]
    Ptxas {
        /// The target architecture.
        arch: Arch,
        /// What is wrong.
        message: String,
    },
    /// The CUDA driver failed (no device, a failed load or launch).
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// A GEMM config that the template cannot instantiate.
    #[error("invalid GEMM config: {0}")]
    Config(String),
    /// An I/O error around the external tools.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
