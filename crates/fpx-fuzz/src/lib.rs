//! fpx's fuzzer, on stable Rust: a seeded mutation loop over real inputs (no cargo-fuzz, no
//! nightly, no coverage feedback).
//!
//! Three [`Target`]s take bytes: the ONNX importer (then simplify and verify what imports), the
//! artifact reader (then rebuild its graph) and the `.npy` reader (then write what it read and
//! read it back). Each input runs under `catch_unwind`; a panic is a crash, reported with the
//! input and the panic's place. Mutations: bit flips, byte sets, inserts, deletes, duplicated
//! chunks, splices of other inputs, interesting integers (0, -1, 2^31, 2^62, `u64::MAX`, ...)
//! written little-endian, as protobuf varints or as decimal text. Inputs a target accepts join
//! the pool that later mutations start from, so the loop wanders past the first checks.
//!
//! The readers' own limits bound memory: an input's size is capped, and every target only
//! parses (nothing is executed), so a small input cannot make the fuzzer allocate without end
//! unless a reader lets it. That is a finding too: under [`memcap::CappedAllocator`] (the binary
//! and the tests register it) an input that passes the memory cap is saved before the abort.
//!
//! `fpx-fuzz` (the binary) runs it for minutes (`scripts/fuzz.sh`); the crate's tests run every
//! target for a bounded number of iterations and replay `tests/data/fuzz/<target>/*`.

use fpx_artifact::{Artifact, ArtifactContents, CpuCode, CpuKernel, NodeKernels};
use fpx_ir::ops::{quant_matmul, OpRegistry};
use fpx_ir::pass::{ConstantFolding, DeadNodeElimination, PassManager};
use fpx_ir::{Graph, TensorBudget};
use fpx_quant::KernelTable;
use fpx_runtime::CpuEvaluator;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod memcap;

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `fpx_onnx::import_model_bytes`, then simplify and verify.
    Onnx,
    /// `fpx_artifact::Artifact::from_bytes`, then `graph()`.
    Artifact,
    /// `fpx_runtime::npy::from_bytes`, then a write and read back.
    Npy,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::Onnx, Target::Artifact, Target::Npy];

    /// Its name (also its folder under `tests/data/fuzz/`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Onnx => "onnx",
            Target::Artifact => "artifact",
            Target::Npy => "npy",
        }
    }

    /// The target named `s`.
    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Largest constant (in elements) constant folding may create here: the pipeline of
/// `fpx::simplify` (this test tool does not link the facade), with the default tensor budget.
const FOLD_LIMIT: usize = 1 << 20;

/// Runs one input through `target`; returns whether the target accepted it. Errors are fine;
/// only a panic (caught by [`run_caught`]) is a finding.
pub fn run_input(target: Target, bytes: &[u8]) -> bool {
    match target {
        Target::Onnx => {
            let Ok(mut graph) = fpx_onnx::import_model_bytes(bytes, None) else { return false };
            let registry = OpRegistry::standard();
            let simplified = PassManager::new()
                .with(ConstantFolding {
                    evaluator: CpuEvaluator::with_budget(TensorBudget::default()),
                    max_elements: FOLD_LIMIT,
                    budget: TensorBudget::default(),
                })
                .with(fpx_passes::FuseGelu)
                .with(fpx_passes::FuseRmsNorm)
                .with(fpx_passes::FuseRotateHalf)
                .with(DeadNodeElimination)
                .run(&mut graph, &registry);
            if simplified.is_ok() {
                let _ = fpx_ir::verify::verify(&graph, &registry);
                let _ = fpx_passes::weight_sites(&graph);
            }
            true
        }
        Target::Artifact => {
            let Ok(a) = Artifact::from_bytes(bytes.to_vec(), "fuzz.fpx") else { return false };
            let _ = (a.cpu_code(), a.ptx_code(), a.metadata(), a.sections());
            a.graph().is_ok()
        }
        Target::Npy => {
            let Ok(t) = fpx_runtime::npy::from_bytes(bytes, Path::new("fuzz.npy")) else { return false };
            // What was read writes and reads back to the same tensor.
            let again = fpx_runtime::npy::from_bytes(&fpx_runtime::npy::to_bytes(&t), Path::new("again.npy"));
            let again = again.unwrap_or_else(|e| panic!("a tensor read from .npy does not read back: {e}"));
            assert_eq!(again.shape(), t.shape(), "shape changed in a write and read back");
            assert_eq!(again.dtype(), t.dtype(), "element type changed in a write and read back");
            true
        }
    }
}

thread_local! {
    /// Set while this thread runs a fuzz input: its panics are recorded, not printed.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records the panics of inputs run by [`run_caught`] instead
/// of printing them; other panics go to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                if c.is_some() {
                    let place = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    *c = Some(format!("{place}: {message}"));
                    true
                } else {
                    false
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs one input, catching a panic: `Err(where and what)` if it panicked.
pub fn run_caught(target: Target, bytes: &[u8]) -> Result<bool, String> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let result = catch_unwind(AssertUnwindSafe(|| run_input(target, bytes)));
    let message = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    result.map_err(|_| if message.is_empty() { "panic (no message)".to_string() } else { message })
}

/// A small seeded generator (SplitMix64, [`fpx_quant::seeded`]): the same seed gives the same
/// run.
#[derive(Debug, Clone)]
pub struct Rng(fpx_quant::seeded::SplitMix64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(fpx_quant::seeded::SplitMix64::new(seed ^ 0x5851_f42d_4c95_7f2d))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Integers that tend to sit on the edges of checks.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    1 << 31,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX, // -1
];

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Mutates an input of `target`: for an artifact, three times in four only its manifest, then the
/// header's length and the manifest's checksum are fixed and the sections kept in place (so the
/// mutation reaches the manifest's decoding and checks instead of the checksum test); otherwise
/// the bytes as they are ([`mutate`]).
pub fn mutate_for(target: Target, rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], max_len: usize) {
    if target == Target::Onnx && rng.below(3) == 0 {
        if let Some(edited) = mutate_onnx_model(rng, input) {
            *input = edited;
            input.truncate(max_len);
            return;
        }
    }
    if target == Target::Artifact && rng.below(4) != 0 {
        if let Some((manifest, sections_at)) = artifact_parts(input) {
            let mut m = manifest.to_vec();
            mutate(rng, &mut m, &[], max_len);
            *input = artifact_assemble(input, &m, sections_at);
            input.truncate(max_len);
            return;
        }
    }
    mutate(rng, input, pool, max_len);
}

/// Op types a node may be switched to (attributes and inputs then rarely fit: that is the point).
const OPS: [&str; 32] = [
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Div",
    "Reshape",
    "Transpose",
    "Softmax",
    "Gather",
    "Concat",
    "Slice",
    "Expand",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Pad",
    "Conv",
    "LayerNormalization",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "ReduceMean",
    "Where",
    "Cast",
    "Shape",
    "Constant",
    "Einsum",
    "TopK",
    "CumSum",
    "OneHot",
    "Flatten",
    "Erf",
];

/// A structure-aware edit of a serialized ONNX model: an op type, an attribute's integers, a
/// node's inputs, an initializer's dims or element type, or an opset version is changed, and
/// the model re-serialized. `None` if the bytes do not parse as a model.
fn mutate_onnx_model(rng: &mut Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    use fpx_onnx::onnx_protobuf::{Message, ModelProto};
    let mut m = ModelProto::parse_from_bytes(bytes).ok()?;
    let int = |rng: &mut Rng| -> i64 {
        match rng.below(3) {
            0 => INTERESTING[rng.below(INTERESTING.len())] as i64,
            1 => rng.below(8) as i64 - 3,
            _ => (INTERESTING[rng.below(INTERESTING.len())] as i64).wrapping_neg(),
        }
    };
    let g = m.graph.as_mut()?;
    let names: Vec<String> = g.node.iter().flat_map(|n| n.input.iter().chain(&n.output).cloned()).collect();
    match rng.below(7) {
        0 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            g.node[i].op_type = OPS[rng.below(OPS.len())].to_string();
        }
        1 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            let n = &mut g.node[i];
            if n.attribute.is_empty() || rng.below(4) == 0 {
                let mut a = fpx_onnx::onnx_protobuf::AttributeProto::new();
                a.name = ["axis", "perm", "axes", "keepdims", "to", "group", "pads", "transA", "epsilon"][rng.below(9)].into();
                n.attribute.push(a);
            }
            let j = rng.below(n.attribute.len());
            let a = &mut n.attribute[j];
            let kind = [1, 2, 3, 4, 6, 7][rng.below(6)];
            a.type_ = protobuf::EnumOrUnknown::from_i32(kind);
            a.i = int(rng);
            a.ints = (0..rng.below(5)).map(|_| int(rng)).collect();
        }
        2 if !g.node.is_empty() && !names.is_empty() => {
            let i = rng.below(g.node.len());
            let n = &mut g.node[i];
            let name = names[rng.below(names.len())].clone();
            match rng.below(3) {
                0 => n.input.push(name),
                1 if !n.input.is_empty() => {
                    let k = rng.below(n.input.len());
                    n.input[k] = name;
                }
                _ => {
                    n.input.pop();
                }
            }
        }
        3 if !g.initializer.is_empty() => {
            let i = rng.below(g.initializer.len());
            let t = &mut g.initializer[i];
            if t.dims.is_empty() || rng.below(4) == 0 {
                t.dims.push(int(rng));
            } else {
                let k = rng.below(t.dims.len());
                t.dims[k] = int(rng);
            }
        }
        4 if !g.initializer.is_empty() => {
            let i = rng.below(g.initializer.len());
            g.initializer[i].data_type = rng.below(26) as i32;
        }
        5 if !m.opset_import.is_empty() => {
            let i = rng.below(m.opset_import.len());
            m.opset_import[i].version = int(rng);
        }
        _ if g.node.len() > 1 => {
            let (a, b) = (rng.below(g.node.len()), rng.below(g.node.len()));
            g.node.swap(a, b);
        }
        _ => return None,
    }
    m.write_to_bytes().ok()
}

/// The manifest of artifact bytes and where its first section starts (see `fpx_artifact`'s
/// layout: a 16-byte header with the manifest's length at 12..16, the manifest, its CRC-32, then
/// sections at multiples of 64).
fn artifact_parts(b: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?) as usize;
    let end = 16usize.checked_add(len)?;
    if end.checked_add(4)? > b.len() {
        return None;
    }
    Some((&b[16..end], (end + 4).next_multiple_of(64).min(b.len())))
}

/// `orig` with its manifest replaced by `manifest` (length and checksum fixed), its sections
/// kept at `sections_at` if the new manifest leaves room (else right after it, aligned).
fn artifact_assemble(orig: &[u8], manifest: &[u8], sections_at: usize) -> Vec<u8> {
    let mut out = orig[..12].to_vec();
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&crc32fast::hash(manifest).to_le_bytes());
    let at = if out.len() <= sections_at { sections_at } else { out.len().next_multiple_of(64) };
    out.resize(at, 0);
    out.extend_from_slice(&orig[sections_at..]);
    out
}

/// Applies one to four random mutations to `input`, keeping it at most `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, input, pool);
        input.truncate(max_len);
    }
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = input.len();
    let at = rng.below(len + 1);
    let interesting = INTERESTING[rng.below(INTERESTING.len())];
    match rng.below(10) {
        // Flip a bit.
        0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
        // Set a byte.
        1 if len > 0 => input[at.min(len - 1)] = rng.next_u64() as u8,
        // Insert random bytes.
        2 => {
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let n = 1 + rng.below(16.min(len - at.min(len - 1)));
            let from = at.min(len - 1);
            input.drain(from..(from + n).min(len));
        }
        // Duplicate a chunk.
        4 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below(64.min(len - from));
            let chunk = input[from..from + n].to_vec();
            input.splice(at..at, chunk);
        }
        // Splice in a range of another input (or replace the tail with it).
        5 if !pool.is_empty() => {
            let other = &pool[rng.below(pool.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below(256.min(other.len() - from));
                if rng.below(2) == 0 {
                    input.truncate(at);
                }
                input.splice(at.min(input.len())..at.min(input.len()), other[from..from + n].iter().copied());
            }
        }
        // An interesting integer, little-endian, 1/2/4/8 bytes wide.
        6 if len > 0 => {
            let width = [1, 2, 4, 8][rng.below(4)];
            let from = at.min(len - 1);
            let bytes = interesting.to_le_bytes();
            let n = width.min(len - from);
            input[from..from + n].copy_from_slice(&bytes[..n]);
        }
        // An interesting integer as a protobuf varint, replacing the varint at that place.
        7 if len > 0 => {
            let from = at.min(len - 1);
            let mut end = from;
            while end < len && input[end] & 0x80 != 0 && end - from < 10 {
                end += 1;
            }
            let end = (end + 1).min(len);
            input.splice(from..end, varint(interesting));
        }
        // An interesting integer as decimal text, replacing the next run of digits (npy headers,
        // external-data offsets).
        8 => {
            if let Some(start) = input[at.min(len)..].iter().position(u8::is_ascii_digit).map(|p| p + at.min(len)) {
                let end = input[start..].iter().position(|b| !b.is_ascii_digit()).map_or(len, |p| p + start);
                let text = if rng.below(4) == 0 { format!("-{interesting}") } else { interesting.to_string() };
                input.splice(start..end, text.into_bytes());
            }
        }
        // Truncate.
        _ => input.truncate(at),
    }
}

/// A 64-bit FNV-1a hash (names crash files).
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A panic found by [`fuzz`].
#[derive(Debug, Clone)]
pub struct Crash {
    /// Where and what the panic was.
    pub message: String,
    /// The input.
    pub input: Vec<u8>,
}

impl Crash {
    /// The file name to save the input under: `crash-<hash>`.
    pub fn file_name(&self) -> String {
        format!("crash-{:016x}", hash(&self.input))
    }
}

/// How long [`fuzz`] runs: a number of executions, a deadline, or whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// At most this many executions.
    pub iterations: Option<u64>,
    /// At most this long.
    pub time: Option<Duration>,
}

/// What a run of [`fuzz`] did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: Target,
    /// Inputs run.
    pub executions: u64,
    /// Inputs the target accepted.
    pub accepted: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// The slowest single input.
    pub slowest: Duration,
    /// Crashes, one per distinct panic place and message.
    pub crashes: Vec<Crash>,
}

impl Report {
    /// Executions per second.
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Fuzzes `target` from `seeds` with the generator seeded by `seed`, within `budget`.
pub fn fuzz(target: Target, seeds: &[Vec<u8>], seed: u64, budget: Budget) -> Report {
    let mut rng = Rng::new(seed ^ hash(target.name().as_bytes()));
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0) * 2 + 4096;
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let pool_cap = seeds.len() + 256;
    let start = Instant::now();
    let mut report = Report { target, executions: 0, accepted: 0, elapsed: Duration::ZERO, slowest: Duration::ZERO, crashes: vec![] };
    let mut seen = BTreeMap::new();
    loop {
        if budget.iterations.is_some_and(|n| report.executions >= n) || budget.time.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        let mut input = if pool.is_empty() { Vec::new() } else { pool[rng.below(pool.len())].clone() };
        mutate_for(target, &mut rng, &mut input, &pool, max_len);
        let t = Instant::now();
        memcap::CappedAllocator::running(&input);
        let result = run_caught(target, &input);
        report.slowest = report.slowest.max(t.elapsed());
        report.executions += 1;
        match result {
            Ok(true) => {
                report.accepted += 1;
                if pool.len() < pool_cap {
                    pool.push(input);
                } else {
                    let i = seeds.len() + rng.below(pool_cap - seeds.len());
                    pool[i] = input;
                }
            }
            Ok(false) => {}
            Err(message) => {
                if !seen.contains_key(&message) {
                    seen.insert(message.clone(), ());
                    report.crashes.push(Crash { message, input });
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// The workspace root (where `examples/` and `tests/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The saved inputs of `target` under `tests/data/fuzz/<target>/` (regressions and crashes),
/// with their paths.
pub fn saved_inputs(target: Target) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = workspace_root().join("tests/data/fuzz").join(target.name());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.into_iter().filter_map(|p| fpx_ir::file::read_regular(&p, 1 << 26).ok().map(|b| (p, b))).collect()
}

/// The seeds of `target`: the bundled example (its model, or its input and output arrays, or an
/// artifact built from it in memory), small inputs made here, and the saved inputs.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    let root = workspace_root();
    let example = root.join("examples/tiny-transformer");
    let read = |p: &Path| fpx_ir::file::read_regular(p, 1 << 26).unwrap_or_else(|e| panic!("cannot read seed {}: {e}", p.display()));
    let mut out = Vec::new();
    match target {
        Target::Onnx => {
            out.push(small_onnx_model());
            out.push(read(&example.join("model.onnx")));
        }
        Target::Npy => {
            out.push(read(&example.join("input.npy")));
            out.push(read(&example.join("ref_output.npy")));
            let small = fpx_ir::Tensor::vec_i64(vec![1, -2, 3, 4, 5, 6]).reshape(&[2, 3]).expect("reshape");
            for dt in fpx_ir::DType::ALL.into_iter().filter(|&d| d != fpx_ir::DType::BF16) {
                out.push(fpx_runtime::npy::to_bytes(&small.cast(dt)));
            }
        }
        Target::Artifact => {
            let model = fpx_onnx::import_model_bytes(&small_onnx_model(), None).expect("the small seed model imports");
            out.push(artifact_bytes(model.clone(), false));
            out.push(artifact_bytes(model, true));
            let example = fpx_onnx::load_model(&example.join("model.onnx")).expect("the example imports");
            out.push(artifact_bytes(example, true));
        }
    }
    out.extend(saved_inputs(target).into_iter().map(|(_, b)| b));
    out
}

/// A small ONNX model (MatMul with a constant weight, Add, Relu, Transpose, Softmax, Reshape),
/// so mutations land on structure rather than on weight bytes.
pub fn small_onnx_model() -> Vec<u8> {
    use fpx_test_support::onnx::*;
    let w = float_tensor("w", &[8, 16], &(0..128).map(|i| (i as f32 - 64.0) / 32.0).collect::<Vec<_>>());
    let b = float_tensor("b", &[16], &(0..16).map(|i| i as f32 / 8.0).collect::<Vec<_>>());
    let mut shape = fpx_onnx::onnx_protobuf::TensorProto::new();
    shape.name = "shape".into();
    shape.dims = vec![2];
    shape.data_type = 7; // INT64
    shape.int64_data = vec![4, 8];
    let nodes = vec![
        node("MatMul", "mm", &["x", "w"], &["h"]),
        node("Add", "add", &["h", "b"], &["hb"]),
        node("Relu", "relu", &["hb"], &["r"]),
        node_with("Transpose", "tr", &["r"], &["t"], vec![attr_ints("perm", &[1, 0])]),
        node_with("Softmax", "sm", &["t"], &["s"], vec![attr_int("axis", -1)]),
        node("Reshape", "rs", &["s", "shape"], &["y"]),
    ];
    let m = model(nodes, vec![value("x", &["2", "8"])], vec![value_info("y", 1, None)], vec![w, b, shape]);
    fpx_onnx::onnx_protobuf::Message::write_to_bytes(&m).expect("serializes")
}

/// The bytes of an artifact of `graph`, quantized (FP6) with CPU kernel tables pointing into a
/// fake shared object if `quantized` (the reader checks the tables, it never loads the code).
fn artifact_bytes(mut graph: Graph, quantized: bool) -> Vec<u8> {
    let mut cpu = vec![];
    if quantized {
        let opts = fpx_passes::QuantizeOptions::new(fpx_passes::WeightScheme::Fp6Auto);
        fpx_passes::quantize_weights(&mut graph, &opts).expect("quantizes");
        let mut kernels = vec![];
        for id in graph.topo_order().expect("acyclic") {
            let n = graph.node(id);
            if quant_matmul::is_quant_matmul(n) {
                let q = quant_matmul::read(n).expect("valid");
                let kernel = |symbol: &str| CpuKernel {
                    symbol: symbol.into(),
                    column_split: fpx_quant::layout::TILE_N as u32,
                    activations: q.activations,
                    threads: 0,
                    config: None,
                };
                let table = KernelTable::new(vec![(8, kernel("gemv")), (0, kernel("gemm"))]).expect("table");
                kernels.push(NodeKernels { node: n.name.clone(), table });
            }
        }
        cpu.push(CpuCode {
            target: "x86-64-v3".into(),
            features: vec!["avx2".into(), "fma".into()],
            shared_object: vec![0x7f; 97],
            kernels,
        });
    }
    let metadata = BTreeMap::from([("weights".to_string(), "fuzz".to_string())]);
    fpx_artifact::to_bytes(&ArtifactContents { graph, cpu, ptx: vec![], metadata }).expect("the seed artifact writes")
}
