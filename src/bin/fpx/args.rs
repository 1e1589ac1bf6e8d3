//! The command line's arguments (clap): one struct per command, one flattened group per shared
//! concern (quantization, scales, device). Values parse into the library's own types
//! (`FromStr`), so a bad value is refused by clap with the type's message.

use clap::{Args, Parser, Subcommand};
use fpx::{Activations, CpuLevels, Target, WeightScheme};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "fpx",
    version,
    about = "Ahead-of-time compiler for weight-quantized (FP6) ONNX models",
    long_about = "fpx imports an ONNX model into its own graph IR, rewrites matrix products with constant \
weights into FP6 quantized products, generates kernels for each GEMM shape (CPU with LLVM, CUDA with NVRTC) and \
writes one runnable .fpx artifact.\n\n`fpx compile` builds an artifact; `fpx run` and `fpx bench` run an .onnx model \
(the FP32 reference, optionally quantized in memory) or an .fpx artifact; `fpx report` compares weight schemes \
against FP32; `fpx inspect` summarizes a model or an artifact.",
    after_help = "Examples:\n  fpx compile model.onnx -o model.fpx\n  fpx run model.fpx --input input_ids=ids.npy --output-dir out/\n  \
fpx inspect model.onnx"
)]
/// The `fpx` command line.
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Compile an ONNX model ahead of time into one .fpx artifact: weights quantized (FP6 by
    /// default), a kernel generated for each GEMM shape (CPU with LLVM; PTX with --target cuda),
    /// everything checksummed.
    #[command(
        after_help = "Example:\n  fpx compile model.onnx -o model.fpx --weights fp6-e3m2 --cpu x86-64-v3\n  fpx run model.fpx --input x=x.npy --output-dir out/\n  fpx compile model.onnx -o fast.fpx --weights fp6-e2m3 --activations int8   # byte dot products\n\n\
An artifact contains native code: load only artifacts you trust."
    )]
    Compile(CompileArgs),
    /// Run a model (.onnx, or an .fpx artifact from `fpx compile`) on inputs from .npy files and
    /// write every output as DIR/<name>.npy.
    #[command(after_help = "Each output is written to DIR/<name>.npy, where every character of the output name that is \
not a letter or digit becomes '_' (e.g. 'last_hidden_state' -> last_hidden_state.npy, 'out:0' -> out_0.npy).\n\n\
Example:\n  fpx run model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --output-dir out/")]
    Run(RunArgs),
    /// Compare weight schemes: run FP32 and each scheme on the same inputs and print, per scheme,
    /// each output's max-abs and relative error and cosine vs FP32, and per layer the weight
    /// relative RMSE. This is how to choose between FP6, FP4 and INT4.
    #[command(after_help = "Schemes are comma-separated, each with modifiers in any order: ':gN' for a group size along K \
(e.g. int4:g128), ':p2' for power-of-two scales (e.g. fp4-e2m1:g128:p2), and the activations: ':a8' for int8, ':fp8' \
for FP8 e4m3 per token, ':fp8-e5m2' for FP8 e5m2 (e.g. fp4-e2m1:fp8:p2, ZeroQuant-FP's W4A8).\n\n\
Example:\n  fpx report model.onnx --input input_ids=ids.npy --input attention_mask=mask.npy --schemes fp6-e3m2,fp6-e2m3,int4,int4:g128 --html report.html")]
    Report(ReportArgs),
    /// Time a model in-process: median/min/max latency over repeated runs, and per matrix product
    /// its time and effective weight bandwidth (weight bytes / time).
    #[command(after_help = "Example:\n  fpx bench model.fpx --input input_ids=ids.npy --iters 50 --threads 2 --json")]
    Bench(BenchArgs),
    /// Generate tokens with a decoder LLM exported with its KV cache (optimum's or
    /// torch.onnx.export's `past_key_values.N.key/value` -> `present.N.key/value`): the prompt runs
    /// in one step, then one token per step, each step's cache fed back; tokens are printed as they
    /// come, then time to first token, prefill and decode tokens/s.
    #[command(after_help = "Greedy unless --temperature is above 0. Inputs and outputs are found by name (input_ids, \
attention_mask, position_ids, past_key_values.*, logits, present.*); the --*-name and --*-prefix flags name them where a \
model differs.\n\n\
Example:\n  fpx generate llama.fpx --prompt-ids 1,15043,29892 --max-new-tokens 32\n  \
fpx generate llama-kv.onnx --prompt-ids prompt.npy --temperature 0.8 --top-p 0.95 --seed 7 --eos 2\n  \
fpx generate llama.fpx --tokenizer tokenizer.json --prompt 'Once upon a time' --max-new-tokens 64")]
    Generate(crate::generate_cmd::GenerateArgs),
    /// Auto-tune the kernels of a model's quantized products on this machine: for each product and
    /// range of M (1, 2-4, 5-8, ..., >256) search the loop (GEMV or GEMM), register blocking, panel
    /// size and thread split, check every candidate against a reference before timing it, and keep
    /// the fastest in the tuning database that `fpx compile` reads.
    #[command(
        after_help = "The budget is split over products by the bytes of weight they stream; a candidate is kept only if it beats fpx's heuristic by 5% head to head, so a tuned artifact is never slower than an untuned one by more than noise. Results are keyed by this machine (CPU model, features, threads), the CPU level, the kernel generator's checksum (a new fpx version makes old entries stale) and the product's shape, and merged into the database.\n\n\
Default database: $FPX_TUNING_DB, else $XDG_CACHE_HOME/fpx/tuning.json, else ~/.cache/fpx/tuning.json.\n\n\
Example:\n  fpx tune model.onnx --budget 120 --max-m 16     # decode-sized M only\n  \
fpx tune --shape fp6-e3m2:4096x11008 --shape fp6-e3m2:11008x4096\n  \
fpx compile model.onnx -o model.fpx              # uses the default database when present\n  \
fpx inspect model.fpx                            # shows which kernels came from tuning"
    )]
    Tune(TuneArgs),
    /// Summarize a model: opsets, op counts, inputs/outputs, parameters, and every MatMul/Gemm
    /// with a constant weight (what quantization will rewrite); for an artifact also its
    /// sections and, per node and range of M, the kernel that runs.
    Inspect(InspectArgs),
    /// Measure this machine's memory read bandwidth (a max-reduction over a large buffer), the
    /// ceiling a weight-streaming kernel is compared with.
    Membw(MembwArgs),
    /// Measure this machine's arithmetic peaks: int8 dot products (vpdpbusd, or the AVX2
    /// sequence) and f32 FMAs per second, the ceilings a compute-bound product is compared with.
    Peak(PeakArgs),
}

/// The model argument of commands that take an .onnx model or an .fpx artifact.
#[derive(Args)]
pub struct ModelArg {
    /// The model: an .onnx file or an .fpx artifact (told apart by the file's first bytes).
    pub model: PathBuf,
}

/// `--input NAME=FILE.npy`, repeated.
#[derive(Args)]
pub struct InputArgs {
    /// A graph input as NAME=FILE.npy; repeat for each input of the model.
    #[arg(short, long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
}

/// How weights get their scales: shared by every command that quantizes.
#[derive(Args, Clone, Copy)]
pub struct ScaleArgs {
    /// Quantization group size along K (default: one scale per output channel).
    #[arg(long, value_name = "N")]
    pub group_size: Option<usize>,
    /// Search a clipping ratio per channel/group that minimizes the weight's squared error.
    #[arg(long)]
    pub scale_search: bool,
    /// Constrain every weight scale to a power of two: per channel/group the exponent with the least weight error
    /// (not just the one above the absmax), as ZeroQuant-FP's W4A8 does so that scaling is an exponent add. With
    /// --scale-search, the searched clipping ratios' exponents are candidates too.
    #[arg(long)]
    pub scale_pow2: bool,
}

/// How weights are quantized: the one flag group of `fpx compile`, `fpx run` and `fpx bench`.
#[derive(Args, Clone, Copy)]
pub struct QuantArgs {
    /// Weight scheme for every MatMul/Gemm with a constant weight (default: fp6-e3m2 for compile, none for run/bench).
    #[arg(long, value_name = "SCHEME", long_help = weights_help())]
    pub weights: Option<WeightScheme>,
    #[command(flatten)]
    pub scales: ScaleArgs,
    /// What quantized products multiply the weights with: f32 (exact), int8 (byte dot products) or FP8 per token.
    #[arg(long, value_name = "f32|int8|fp8-e4m3|fp8-e5m2", default_value = "f32", long_help = activations_help())]
    pub activations: Activations,
    /// LoRC: correct each quantized weight with a rank-RANK product U·V, the truncated SVD of its quantization
    /// error W − Q(W) (factors stored as --lorc-factors says: FP16 by default, 2·RANK·(K+N) bytes per weight), which
    /// the product adds as (X·U)·V. Ranks 4 to 16 recover much of FP4's error for ~3% more bytes on 384-wide layers
    /// (FP16 factors). CPU code only.
    #[arg(long, value_name = "RANK")]
    pub lorc: Option<usize>,
    /// How LoRC factors are stored: f16, or a float format's codes with one scale per rank component and factor:
    /// fp8-e4m3 (ZeroQuant-FP's choice, half the bytes of f16), fp8-e5m2, fp6-e2m3 or fp6-e3m2 (3/8 of f16),
    /// fp5-e2m2, fp4-e2m1. The product multiplies the decoded factors in f32. Needs --lorc.
    #[arg(long, value_name = "f16|FORMAT", default_value = "f16", value_parser = parse_factor_storage)]
    pub lorc_factors: fpx::quant::lorc::FactorStorage,
    /// Keep bias adds, activations, gated MLPs and residual adds as separate nodes instead of
    /// fusing them into the quantized products (for comparison; fused is faster and equal to rounding).
    #[arg(long)]
    pub no_fused_epilogues: bool,
    /// Quantize embedding tables (a Gather from a constant table of 65,536 elements or more) with this weight format,
    /// one scale per row; the lookup decodes only the rows it reads. A table tied to the LM head shares the head's
    /// quantized weight (one copy). Default int8 (4x smaller, MiniLM's pooled cosine moves by 4e-5); none keeps the tables.
    /// Only with quantized weights: --weights none keeps every weight.
    #[arg(long, value_name = "FORMAT|none", default_value = "int8")]
    pub embeddings: EmbeddingFormat,
}

/// `--lorc-factors`: `f16` or a float format's name.
fn parse_factor_storage(s: &str) -> Result<fpx::quant::lorc::FactorStorage, String> {
    fpx::quant::lorc::FactorStorage::parse(s).ok_or_else(|| {
        let floats: Vec<&str> = fpx::quant::Format::ALL.iter().filter(|f| f.is_float()).map(|f| f.name()).collect();
        format!("unknown LoRC factor storage '{s}'; choose f16 or one of {}", floats.join(", "))
    })
}

/// `--embeddings`: a weight format, or none.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingFormat(pub Option<fpx::quant::Format>);

impl std::str::FromStr for EmbeddingFormat {
    type Err = String;

    /// `none` or a [`fpx::quant::Format`] name.
    fn from_str(s: &str) -> Result<EmbeddingFormat, String> {
        if s == "none" {
            return Ok(EmbeddingFormat(None));
        }
        fpx::quant::Format::parse(s).map(|f| EmbeddingFormat(Some(f))).ok_or_else(|| {
            let names: Vec<&str> = fpx::quant::Format::ALL.iter().map(|f| f.name()).collect();
            format!("unknown embedding format '{s}'; choose none or one of {}", names.join(", "))
        })
    }
}

/// The long help of `--weights`, listing the schemes `WeightScheme` parses.
fn weights_help() -> String {
    format!(
        "Weight scheme for every MatMul/Gemm with a constant weight: {}. fp6-auto picks, per layer, the 6-bit format \
with the lower weight error. Default: fp6-e3m2 for `fpx compile`; none (FP32) for run and bench of an .onnx model \
(an artifact was quantized when it was compiled).",
        fpx::passes::SCHEME_NAMES.join(" | ")
    )
}

/// The long help of `--activations`, with the formats that can take int8 from the one rule
/// (`fpx::quant::takes_int8_activations`) and the activation block size.
fn activations_help() -> String {
    let block = fpx::quant::act8::BLOCK;
    format!(
        "What quantized products multiply the weights with: f32 (exact), or int8 (activations quantized per row and \
block of {block} columns at run time, like onnxruntime's MatMulNBits accuracy_level 4: byte dot products, with int8 \
rounding), or fp8-e4m3 / fp8-e5m2 (ZeroQuant-FP's W4A8: each row rounded to FP8 at run time with a \
power-of-two scale per row, saturating; the FP8 values are exact in f32, so the kernels multiply them exactly and \
only accumulate in f32: the accuracy of FP8 activations on CPUs, plus one rounding pass over each X). int8 needs weights with small \
integer values ({}), one scale per channel or groups that are a multiple of {block}; int8 and fp8 need CPU code \
(--target cpu).",
        fpx::quant::gemm::int8_format_list()
    )
}

/// `--max-tensor-bytes`: the size budget of every tensor a run allocates.
#[derive(Args, Clone, Copy)]
pub struct BudgetArg {
    /// Largest tensor a run may allocate, in bytes or with a binary suffix (512M, 8GiB); a node
    /// whose output would be larger is refused, naming it. Default: FPX_MAX_TENSOR_BYTES, else 4 GiB.
    #[arg(long, value_name = "BYTES")]
    pub max_tensor_bytes: Option<fpx::ir::TensorBudget>,
}

/// `--device`.
#[derive(Args, Clone, Copy)]
pub struct DeviceArg {
    /// Where to run: cpu, or cuda (the GPU; whole-graph GPU execution is not built yet).
    #[arg(long, value_name = "cpu|cuda", default_value = "cpu")]
    pub device: Device,
}

/// Where `fpx run` and `fpx bench` run a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// This machine's CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

/// Arguments of `fpx compile`.
#[derive(Args)]
pub struct CompileArgs {
    /// The model: an .onnx file.
    pub model: PathBuf,
    /// Where to write the artifact (written to a temporary file, then renamed).
    #[arg(short, long, value_name = "OUT.fpx")]
    pub output: PathBuf,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Which code to generate: cpu (LLVM), cuda (PTX for sm_80 and sm_90 via NVRTC; needs FP6 weights with one scale
    /// per output channel, and NVRTC 13.0: scripts/setup.sh installs it), or all (both).
    #[arg(long, value_name = "cpu|cuda|all", default_value = "cpu")]
    pub target: Target,
    /// The CPU code to generate: auto (the default: x86-64-v4-vnni and x86-64-v3 code in one artifact; the loader
    /// runs the best this CPU supports, so the artifact is fast on AVX-512 VNNI hosts and still runs on any AVX2 one),
    /// or one target: x86-64-v3 (AVX2+FMA+F16C), x86-64-v4 (AVX-512), x86-64-v4-vnni (AVX-512 with VBMI and VNNI: Ice
    /// Lake, Zen 4 and later; fastest int8 activations), or native (this machine only). An artifact records the
    /// features each code needs and refuses to load on a CPU that has none of them.
    #[arg(long, value_name = "CPU", default_value = "auto")]
    pub cpu: CpuLevels,
    /// Keep an FP16/BF16 model's 16-bit tensors. By default they become f32 between the model's inputs and outputs
    /// (which keep their types), so an FP16 export runs on the same fast kernels as its FP32 twin and gives its
    /// results; kept 16-bit tensors run through the slow reference kernels with 16-bit rounding.
    #[arg(long)]
    pub keep_half_precision: bool,
    /// The tuning database to take kernel choices from (written by `fpx tune`). By default the default database
    /// ($FPX_TUNING_DB, else ~/.cache/fpx/tuning.json) when it exists; products or M ranges it has no current entry
    /// for use fpx's heuristic, and a damaged database is reported and ignored.
    #[arg(long, value_name = "FILE", conflicts_with = "no_tuning")]
    pub tuning_db: Option<PathBuf>,
    /// Ignore every tuning database: fpx's heuristic kernel choices only.
    #[arg(long)]
    pub no_tuning: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `fpx tune`.
#[derive(Args)]
pub struct TuneArgs {
    /// The model: an .onnx file (its products as `fpx compile` with the same quantization flags makes them) or an
    /// .fpx artifact. Or give --shape instead.
    #[arg(required_unless_present = "shapes", conflicts_with = "shapes")]
    pub model: Option<PathBuf>,
    /// A product to tune instead of a model's, as FORMAT:KxN[:gSIZE][:a8] (e.g. fp6-e3m2:4096x11008, or
    /// fp6-e2m3:4096x4096:a8 for int8 activations); repeat for several.
    #[arg(long = "shape", value_name = "FORMAT:KxN", value_parser = fpx::tuning::parse_product)]
    pub shapes: Vec<fpx::quant::QuantGemm>,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Where to tune: cpu (the CPU kernels' loops, blockings and thread split, for the CPU level this machine
    /// runs), or cuda (the GPU GEMM's tile configs on GPU 0: token tile, warps, tiles per warp, k-tiles per stage,
    /// stages, split-K; products must be FP6 with per-channel scales and f32 activations). `fpx compile --target
    /// cuda|all` then uses the tuned configs for that GPU's architecture.
    #[arg(long, value_name = "cpu|cuda", default_value = "cpu")]
    pub device: Device,
    /// The search's time budget in seconds, compiling candidates included.
    #[arg(long, value_name = "SECONDS", default_value = "60")]
    pub budget: f64,
    /// The tuning database to merge the results into (default: $FPX_TUNING_DB, else ~/.cache/fpx/tuning.json).
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Tune the M ranges up to the one holding this M (1 for batch-1 decoding; default: all, up to >256).
    #[arg(long, value_name = "M", default_value = "512")]
    pub max_m: u64,
    /// The CPU levels the artifact will hold (as `fpx compile --cpu`); the first this CPU runs is tuned.
    #[arg(long, value_name = "CPU", default_value = "auto")]
    pub cpu: CpuLevels,
    /// Keep an FP16/BF16 model's 16-bit tensors (as `fpx compile --keep-half-precision`).
    #[arg(long)]
    pub keep_half_precision: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Arguments of `fpx run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: RunModelArgs,
    /// Folder for the outputs (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output_dir: PathBuf,
}

/// What `fpx run` and `fpx bench` share: the model, its inputs, where and how it runs.
#[derive(Args)]
pub struct RunModelArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub inputs: InputArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub budget: BudgetArg,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// Arguments of `fpx bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: RunModelArgs,
    /// Measured iterations (after one warm-up run), 1 to 1000000.
    #[arg(long, default_value_t = 20, value_parser = iters_parser())]
    pub iters: usize,
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, value_parser = threads_parser())]
    pub threads: Option<usize>,
    /// Print JSON (field names carry their unit, e.g. median_us).
    #[arg(long)]
    pub json: bool,
    /// Also write the outputs of the warm-up run to this folder, one NAME.npy per output (as
    /// `fpx run` names them), to check accuracy beside the timing.
    #[arg(short, long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// Arguments of `fpx report`.
#[derive(Args)]
pub struct ReportArgs {
    /// The model: an .onnx file.
    pub model: PathBuf,
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Schemes to compare with FP32, comma-separated; each may take modifiers in any order: ':gN' (group size N
    /// along K), ':p2' (power-of-two scales), ':a8' (int8 activations), ':fp8' or ':fp8-e5m2' (FP8 activations),
    /// ':lorcR' (LoRC rank R, FP16 factors) or ':lorcR@FORMAT' (factors stored in a float format), e.g.
    /// fp6-e2m3:a8,int4:g128,fp4-e2m1:g128:p2,fp4-e2m1:fp8:p2:lorc8@fp8-e4m3.
    #[arg(long, value_name = "LIST", default_value = fpx::report::DEFAULT_SCHEMES)]
    pub schemes: String,
    /// Group size for schemes without their own ':gN'; scale search and power-of-two scales for every scheme.
    #[command(flatten)]
    pub scales: ScaleArgs,
    /// Also write one self-contained HTML page with plots.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// The layer (node name) whose weight histogram the HTML page shows (default: the first).
    #[arg(long, value_name = "NODE")]
    pub layer: Option<String>,
    /// Also compare [batch, seq, dim] outputs mean-pooled over this [batch, seq] input
    /// (e.g. attention_mask): the sentence embedding an embedding model's user consumes.
    #[arg(long, value_name = "INPUT")]
    pub pool_mask: Option<String>,
}

/// Arguments of `fpx inspect`.
#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write every PTX module of an artifact to DIR/<arch>/<module>.ptx (the folder is created).
    #[arg(long, value_name = "DIR")]
    pub dump_ptx: Option<PathBuf>,
}

/// Arguments of `fpx membw`.
#[derive(Args)]
pub struct MembwArgs {
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, value_parser = threads_parser())]
    pub threads: Option<usize>,
    /// Buffer size in GiB, more than 0 and at most 64, and it must fit in the memory available
    /// now (use well above the last-level cache).
    #[arg(long, default_value_t = 1.0, value_parser = parse_gib, allow_negative_numbers = true)]
    pub gib: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `fpx peak`.
#[derive(Args)]
pub struct PeakArgs {
    /// Threads run at once, each on its own loop, 1 to 1024 (default: all cores).
    #[arg(long, value_parser = threads_parser())]
    pub threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--iters`: 1 to [`fpx::bench::MAX_ITERS`].
fn iters_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=fpx::bench::MAX_ITERS as u64)
}

/// `--threads`: 1 to [`fpx::bench::MAX_THREADS`].
fn threads_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=fpx::bench::MAX_THREADS as u64)
}

/// `--gib`: a finite number of GiB in (0, [`fpx::bench::MAX_GIB`]].
fn parse_gib(s: &str) -> Result<f64, String> {
    let g: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(g.is_finite() && g > 0.0 && g <= fpx::bench::MAX_GIB) {
        return Err(format!("the size must be more than 0 and at most {} GiB", fpx::bench::MAX_GIB));
    }
    Ok(g)
}
