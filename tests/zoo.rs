//! The model zoo (`tests/data/zoo`, made by `scripts/zoo/generate.py`): tiny random-weight
//! transformers as the TorchScript and dynamo exporters emit them, decoders with a KV cache. For
//! every fixture, fpx runs every input set in FP32 and must match onnxruntime's outputs (relative
//! max error <= 1e-4 over the positions the attention mask keeps), then an fp6-e2m3 artifact must
//! keep cosine >= 0.99 against that reference. Fixtures fpx cannot run yet are listed in
//! `tests/data/zoo/known_failures.txt` (`fixture # first error`); a listed fixture that passes
//! fails the test, and so does an unlisted one that fails. `--nocapture` prints the table.

use fpx::ir::Tensor;
use fpx::quant::Format;
use fpx::report::cosine;
use fpx::{CompileOptions, QuantizeOptions, WeightScheme};
use fpx_test_support::data::workspace_root;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// FP32 outputs against onnxruntime: max |fpx - reference| / max |reference| over kept positions.
const FP32_MAX_REL_ERR: f64 = 1e-4;
/// An fp6-e2m3 artifact's outputs against the reference, over kept positions.
const FP6_MIN_COSINE: f64 = 0.99;

pub(crate) fn zoo_dir() -> PathBuf {
    workspace_root().join("tests").join("data").join("zoo")
}

pub(crate) fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One output of a fixture and the axis of its positions (`None`: every element is compared).
pub(crate) struct OutputSpec {
    name: String,
    position_axis: Option<usize>,
}

/// One input set: its folder and, per batch row, which positions are compared.
pub(crate) struct InputSet {
    name: String,
    dir: PathBuf,
    keep: Option<Vec<Vec<bool>>>,
}

/// What the manifest of a fixture says.
pub(crate) struct Fixture {
    pub(crate) name: String,
    pub(crate) model: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<OutputSpec>,
    sets: Vec<InputSet>,
}

impl Fixture {
    pub(crate) fn load(dir: &Path) -> Fixture {
        let m = read_json(&dir.join("manifest.json"));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().expect("a list").iter().map(|s| s.as_str().expect("a string").to_string()).collect()
        };
        let outputs = m["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .filter(|o| o["compared"].as_bool() == Some(true))
            .map(|o| OutputSpec {
                name: o["name"].as_str().expect("name").to_string(),
                position_axis: o["position_axis"].as_u64().map(|a| a as usize),
            })
            .collect();
        let sets = m["sets"]
            .as_array()
            .expect("sets")
            .iter()
            .map(|s| {
                let name = s["name"].as_str().expect("set name").to_string();
                let keep = s["keep"]
                    .as_array()
                    .map(|rows| rows.iter().map(|r| r.as_str().expect("keep row").chars().map(|c| c == '1').collect()).collect());
                InputSet { dir: dir.join(&name), name, keep }
            })
            .collect();
        Fixture {
            name: m["fixture"].as_str().expect("fixture").to_string(),
            model: dir.join("model.onnx"),
            inputs: strings(&m["inputs"]),
            outputs,
            sets,
        }
    }
}

/// The first line of an error (fpx errors can carry a chain on further lines).
pub(crate) fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn read_npy(path: &Path) -> Result<Tensor, String> {
    fpx::runtime::npy::read(path).map_err(|e| format!("fixture data: {e}"))
}

/// The elements of `t` at kept positions: along `axis`, the last `shape[axis]` columns of each
/// batch row's keep mask (a KV form's mask spans past and new positions).
fn kept_values(t: &Tensor, keep: Option<&Vec<Vec<bool>>>, axis: Option<usize>) -> Result<Vec<f64>, String> {
    let values = t.to_f64_vec();
    let (Some(keep), Some(axis)) = (keep, axis) else { return Ok(values) };
    let shape = t.shape();
    if axis >= shape.len() || shape.is_empty() || keep.len() != shape[0] {
        return Err(format!("shape {shape:?} does not fit the keep mask ({} rows) at axis {axis}", keep.len()));
    }
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let per_row: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let row = &keep[i / per_row.max(1)];
        if row.len() < n {
            return Err(format!("keep row of {} positions for an axis of {n}", row.len()));
        }
        if row[row.len() - n + (i / inner.max(1)) % n] {
            out.push(v);
        }
    }
    Ok(out)
}

/// max |got - want| / max |want|; NaN anywhere in `got` is an infinite error.
fn relative_max_error(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    got.iter().zip(want).map(|(g, w)| if g.is_nan() { f64::INFINITY } else { (g - w).abs() }).fold(0f64, f64::max) / scale
}

/// Runs every input set through `run` and measures each compared output against the reference:
/// the worst relative max error and the lowest cosine.
pub(crate) fn measure(
    fixture: &Fixture,
    run: impl Fn(Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, String>,
) -> Result<(f64, f64), String> {
    let (mut worst_err, mut worst_cos) = (0f64, 1f64);
    for set in &fixture.sets {
        let inputs = fixture
            .inputs
            .iter()
            .map(|n| Ok((n.clone(), read_npy(&set.dir.join(format!("input.{n}.npy")))?)))
            .collect::<Result<Vec<_>, String>>()?;
        let outputs = run(inputs).map_err(|e| format!("{}: {e}", set.name))?;
        for spec in &fixture.outputs {
            let got = outputs
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(_, t)| t)
                .ok_or_else(|| format!("{}: no output '{}'", set.name, spec.name))?;
            let want = read_npy(&set.dir.join(format!("ref.{}.npy", spec.name)))?;
            if got.shape() != want.shape() {
                return Err(format!("{}/{}: shape {:?} != reference {:?}", set.name, spec.name, got.shape(), want.shape()));
            }
            let g = kept_values(got, set.keep.as_ref(), spec.position_axis)?;
            let w = kept_values(&want, set.keep.as_ref(), spec.position_axis)?;
            worst_err = worst_err.max(relative_max_error(&g, &w));
            worst_cos = worst_cos.min(if g.iter().any(|v| v.is_nan()) { f64::NAN } else { cosine(&g, &w) });
        }
    }
    Ok((worst_err, worst_cos))
}

/// What one fixture did.
#[derive(Default)]
struct Outcome {
    fp32_rel_err: Option<f64>,
    fp6_cosine: Option<f64>,
    /// `fpx:Attention` nodes after simplification (every fixture has two attention layers).
    fused_attention: Option<usize>,
    error: Option<String>,
}

/// Attention layers of every zoo fixture (two-layer models), each of which the standard
/// pipeline must fuse into one `fpx:Attention` node.
const ATTENTION_LAYERS: usize = 2;

/// Fixtures whose attention is not fused yet, with why (they must fuse none).
const NOT_FUSED: &[(&str, &str)] = &[
    ("bloom-dynamo-kv", "ALiBi: baddbmm on [B*H, Sq, Skv] scores plus a 3-D bias, reshaped to 4-D before the mask"),
    ("bloom-torchscript-kv", "ALiBi: baddbmm on [B*H, Sq, Skv] scores plus a 3-D bias, reshaped to 4-D before the mask"),
    ("mpnet-dynamo", "relative position bias: two additive terms (bias, then mask) before the Softmax"),
    ("mpnet-torchscript", "relative position bias: two additive terms (bias, then mask) before the Softmax"),
];

/// Fixtures whose rotary embeddings (`q·cos + rotate_half(q)·sin`, and the same for k) must each
/// fuse into one `fpx:RotateHalf`: both exporters' decoders (dynamo's slice bounds are constants,
/// TorchScript's compute `x.shape[-1] / 2` in the graph). The opset-23 exports use
/// `RotaryEmbedding`; the rest have no rotary embedding.
const ROPE_FUSED: &[&str] = &[
    "gemma-dynamo-kv",
    "gemma-torchscript-kv",
    "gpt-neox-dynamo-kv",
    "gpt-neox-torchscript-kv",
    "llama-dynamo-kv",
    "llama-torchscript-kv",
    "mistral-dynamo-kv",
    "mistral-torchscript-kv",
    "phi3-dynamo-kv",
    "phi3-torchscript-kv",
    "qwen2-dynamo-kv",
    "qwen2-torchscript-kv",
];

fn check(fixture: &Fixture) -> Outcome {
    let mut out = Outcome::default();
    let model = match fpx::Model::open(&fixture.model) {
        Ok(m) => m,
        Err(e) => return Outcome { error: Some(format!("open: {}", first_line(e))), ..out },
    };
    let graph = model.graph();
    let fused = graph.node_ids().into_iter().filter(|&n| fpx::ir::ops::fused_attention::is_fused_attention(graph.node(n))).count();
    out.fused_attention = Some(fused);
    let expected = if NOT_FUSED.iter().any(|(n, _)| *n == fixture.name) { 0 } else { ATTENTION_LAYERS };
    if fused != expected {
        out.error = Some(format!("{fused} attention nodes fused, expected {expected}"));
    }
    let rotations = graph.node_ids().into_iter().filter(|&n| fpx::ir::ops::rotate_half::is_rotate_half(graph.node(n))).count();
    if ROPE_FUSED.contains(&fixture.name.as_str()) && rotations != 2 * ATTENTION_LAYERS {
        out.error = Some(format!("{rotations} rotary embeddings fused, expected {} (q and k per layer)", 2 * ATTENTION_LAYERS));
    }
    match measure(fixture, |inputs| model.run(inputs).map_err(first_line)) {
        Ok((err, _)) => {
            out.fp32_rel_err = Some(err);
            if out.error.is_some() {
                return out;
            }
            if err.is_nan() || err > FP32_MAX_REL_ERR {
                out.error = Some(format!("FP32 relative max error {err:.2e} > {FP32_MAX_REL_ERR:e}"));
                return out;
            }
        }
        Err(e) => return Outcome { error: Some(format!("run {e}")), ..out },
    }
    let options =
        CompileOptions { quantize: QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E2M3)), ..crate::common::compile_options() };
    let loaded = match fpx::compile(&fixture.model, &options) {
        Ok(compiled) => match compiled.load() {
            Ok(l) => l,
            Err(e) => return Outcome { error: Some(format!("fp6-e2m3 load: {}", first_line(e))), ..out },
        },
        Err(e) => return Outcome { error: Some(format!("fp6-e2m3 compile: {}", first_line(e))), ..out },
    };
    match measure(fixture, |inputs| loaded.run(inputs).map_err(first_line)) {
        Ok((_, cos)) => {
            out.fp6_cosine = Some(cos);
            if cos.is_nan() || cos < FP6_MIN_COSINE {
                out.error = Some(format!("fp6-e2m3 cosine {cos:.5} < {FP6_MIN_COSINE}"));
            }
        }
        Err(e) => out.error = Some(format!("fp6-e2m3 run {e}")),
    }
    out
}

/// Every op of the model (subgraphs included) that fpx has no schema for at the model's opset,
/// as `Op` or `Op@opset`: the whole list, where opening the model reports only the first.
fn unsupported_ops(path: &Path) -> Result<BTreeSet<String>, String> {
    use fpx::ir::ops::{canonical_domain, OpRegistry};
    use fpx::onnx::onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto};
    fn walk<'a>(g: &'a GraphProto, nodes: &mut Vec<&'a NodeProto>) {
        for n in &g.node {
            nodes.push(n);
            for a in &n.attribute {
                a.g.as_ref().into_iter().chain(&a.graphs).for_each(|sub| walk(sub, nodes));
            }
        }
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let registry = OpRegistry::standard();
    let mut nodes = Vec::new();
    if let Some(g) = model.graph.as_ref() {
        walk(g, &mut nodes);
    }
    let mut out = BTreeSet::new();
    for n in nodes {
        let domain = canonical_domain(&n.domain);
        let opset = model.opset_import.iter().find(|o| canonical_domain(&o.domain) == domain).map_or(0, |o| o.version);
        let shown = if domain.is_empty() { n.op_type.clone() } else { format!("{domain}.{}", n.op_type) };
        match registry.get(domain, &n.op_type) {
            None => out.insert(shown),
            Some(def) if !def.opsets.contains(&opset) => out.insert(format!("{shown}@{opset}")),
            Some(_) => false,
        };
    }
    Ok(out)
}

/// `fixture # reason` lines (blank lines and lines starting with `#` are comments).
fn known_failures() -> BTreeMap<String, String> {
    let path = zoo_dir().join("known_failures.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once('#').unwrap_or((l, ""));
            (name.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

#[test]
fn zoo_fixtures_match_onnxruntime_and_keep_fp6_accuracy() {
    let zoo = zoo_dir();
    let index = read_json(&zoo.join("manifest.json"));
    let listed: BTreeSet<String> =
        index["fixtures"].as_array().expect("fixtures").iter().map(|f| f.as_str().expect("name").to_string()).collect();
    let folders: BTreeSet<String> = std::fs::read_dir(&zoo)
        .expect("the zoo is in the repository")
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(listed, folders, "tests/data/zoo/manifest.json lists exactly the fixture folders");
    assert!(listed.len() >= 20, "the zoo has its fixtures ({})", listed.len());
    let known = known_failures();
    let mut problems: Vec<String> =
        known.keys().filter(|k| !listed.contains(*k)).map(|k| format!("{k}: listed in known_failures.txt but no such fixture")).collect();

    let mut rows = Vec::new();
    for name in &listed {
        let fixture = Fixture::load(&zoo.join(name));
        assert_eq!(&fixture.name, name, "manifest of {name}");
        let outcome = check(&fixture);
        let missing = unsupported_ops(&fixture.model).unwrap_or_else(|e| panic!("{e}"));
        match (&outcome.error, known.get(name)) {
            (Some(e), None) => problems.push(format!("{name}: fails and is not in known_failures.txt: {e}")),
            (None, Some(_)) => problems.push(format!("{name}: passes now: remove it from known_failures.txt")),
            (Some(e), Some(reason)) if !e.contains(reason.as_str()) => {
                println!("note: {name} fails with '{e}', known_failures.txt says '{reason}'")
            }
            _ => {}
        }
        rows.push((name.clone(), outcome, missing));
    }

    let fmt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
    println!("\n{:<26} {:>12} {:>11} {:>5}  result [every op fpx lacks]", "fixture", "fp32 rel err", "fp6 cosine", "fused");
    for (name, o, missing) in &rows {
        let result = o.error.as_deref().unwrap_or("ok");
        let missing =
            if missing.is_empty() { String::new() } else { format!(" [{}]", missing.iter().cloned().collect::<Vec<_>>().join(", ")) };
        println!(
            "{name:<26} {:>12} {:>11} {:>5}  {result}{missing}",
            fmt(o.fp32_rel_err, |e| format!("{e:.1e}")),
            fmt(o.fp6_cosine, |c| format!("{c:.5}")),
            o.fused_attention.map_or("-".to_string(), |n| n.to_string())
        );
    }
    let passing = rows.iter().filter(|(_, o, _)| o.error.is_none()).count();
    println!("{passing} of {} fixtures pass; {} known failures", rows.len(), known.len());
    if let Some(failures) = index["export_failures"].as_object() {
        for (name, error) in failures {
            println!("not exported: {name}: {}", first_line(error.as_str().unwrap_or_default()));
        }
    }
    assert!(problems.is_empty(), "model zoo:\n{}", problems.join("\n"));
}
