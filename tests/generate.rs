//! Generation with a KV cache (`fpx::Generator`, `fpx generate`) on the model zoo's decoders:
//! greedy tokens equal, token for token, an independent greedy loop driven through onnxruntime
//! (`scripts/zoo/greedy_reference.py` wrote them to `greedy.json` beside each fixture); sampling
//! with a seed repeats; end-of-sequence stops; graphs that are not decoders are refused by name.

use fpx::generate::{GenerateError, SignatureError, StopReason};
use fpx::{GenerateOptions, Generator, SamplingOptions, SignatureNames};
use fpx_test_support::data::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The zoo fixtures with a greedy reference, with their references.
fn greedy_fixtures() -> Vec<(PathBuf, serde_json::Value)> {
    let dir = workspace_root().join("tests/data/zoo");
    let mut v: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p.join("greedy.json")).ok()?;
            Some((p, serde_json::from_str(&text).expect("greedy.json parses")))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().expect("a list of token ids").iter().map(|t| t.as_i64().expect("an integer")).collect()
}

fn open(fixture: &Path) -> fpx::Runnable {
    fpx::open(&fixture.join("model.onnx")).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()))
}

#[test]
fn greedy_generation_equals_onnxruntime_token_for_token_on_every_zoo_decoder() {
    let fixtures = greedy_fixtures();
    assert!(fixtures.len() >= 9, "the zoo has a greedy reference per decoder family, found {}", fixtures.len());
    let mut failures = Vec::new();
    for (fixture, reference) in &fixtures {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let model = open(fixture);
        let generator = Generator::new(&model, &SignatureNames::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = ids(&reference["tokens"]);
        let options = GenerateOptions { max_new_tokens: want.len(), ..Default::default() };
        let mut streamed = Vec::new();
        let got = generator.generate(&ids(&reference["prompt"]), &options, |t| streamed.push(t)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.tokens, streamed, "{name}: the callback sees every token in order");
        assert_eq!(got.stop, StopReason::MaxTokens);
        println!(
            "{name:28} {} tokens, min top-2 gap {:.1e}: {}",
            want.len(),
            reference["min_top2_logit_gap"].as_f64().unwrap_or(f64::NAN),
            if got.tokens == want { "same" } else { "DIFFERENT" }
        );
        if got.tokens != want {
            failures.push(format!("{name}: fpx {:?} vs onnxruntime {want:?}", got.tokens));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeded_sampling_repeats_and_eos_stops() {
    let (fixture, reference) = greedy_fixtures().into_iter().find(|(p, _)| p.ends_with("llama-torchscript-kv")).expect("the LLaMA fixture");
    let model = open(&fixture);
    let generator = Generator::new(&model, &SignatureNames::default()).unwrap();
    let prompt = ids(&reference["prompt"]);
    let sampled = |seed| {
        let sampling = SamplingOptions { temperature: 1.0, top_k: 50, top_p: 0.95, seed };
        generator.generate(&prompt, &GenerateOptions { max_new_tokens: 12, sampling, eos: vec![] }, |_| {}).unwrap().tokens
    };
    let (a, b, c) = (sampled(7), sampled(7), sampled(8));
    assert_eq!(a, b, "the same seed gives the same tokens");
    assert_ne!(a, c, "another seed gives other tokens");
    // Stopping at the third greedy token, which is then the last one returned.
    let greedy = ids(&reference["tokens"]);
    let options = GenerateOptions { max_new_tokens: 16, sampling: SamplingOptions::default(), eos: vec![greedy[2]] };
    let stopped = generator.generate(&prompt, &options, |_| {}).unwrap();
    let first = greedy.iter().position(|&t| t == greedy[2]).unwrap();
    assert_eq!(stopped.tokens, greedy[..=first].to_vec());
    assert_eq!(stopped.stop, StopReason::Eos);
    assert_eq!(stopped.stats.generated_tokens, first + 1);
    assert!(generator.generate(&[], &options, |_| {}).is_err_and(|e| matches!(e, fpx::Error::Generate(GenerateError::EmptyPrompt))));
}

#[test]
fn graphs_that_are_not_decoders_are_refused_by_name() {
    let zoo = workspace_root().join("tests/data/zoo");
    // An encoder: no logits output.
    let bert = open(&zoo.join("bert-torchscript"));
    let err = Generator::new(&bert, &SignatureNames::default()).unwrap_err().to_string();
    assert!(err.contains("no logits output named 'logits'") && err.contains("--logits-name"), "{err}");
    // A decoder whose cache outputs are named otherwise: the pairing names the output it wanted.
    let llama = open(&zoo.join("llama-torchscript-kv"));
    let names = SignatureNames { present_prefix: "next.".into(), ..Default::default() };
    match Generator::new(&llama, &names) {
        Err(fpx::Error::Generate(GenerateError::Signature(SignatureError::UnpairedCache { input, output, .. }))) => {
            assert_eq!((input.as_str(), output.as_str()), ("past_key_values.0.key", "next.0.key"));
        }
        other => panic!("expected an unpaired cache, got {other:?}"),
    }
}

#[test]
fn the_cli_streams_the_same_tokens_and_prints_timings() {
    let (fixture, reference) = greedy_fixtures().into_iter().find(|(p, _)| p.ends_with("llama-torchscript-kv")).expect("the LLaMA fixture");
    let prompt: Vec<String> = ids(&reference["prompt"]).iter().map(i64::to_string).collect();
    let want: Vec<String> = ids(&reference["tokens"]).iter().map(i64::to_string).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_fpx"))
        .args(["generate", fixture.join("model.onnx").to_str().unwrap(), "--prompt-ids", &prompt.join(","), "--max-new-tokens"])
        .arg(want.len().to_string())
        .output()
        .expect("fpx runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), want.join(" "));
    for needle in ["time to first token", "prefill", "decode", "tokens/s"] {
        assert!(stderr.contains(needle), "'{needle}' not in {stderr}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_fpx"))
        .args(["generate", fixture.join("model.onnx").to_str().unwrap(), "--prompt-ids", "1,x", "--top-p", "0.5"])
        .output()
        .expect("fpx runs");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'x' in --prompt-ids is not a token id"));
}

#[test]
fn the_tokenizer_matches_hugging_face_and_streams_whole_characters() {
    let zoo = workspace_root().join("tests/data/zoo");
    let codec = fpx::generate::TextCodec::open(&zoo.join("tokenizer.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(zoo.join("tokenizer-cases.json")).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let ids = ids(&case["ids"]);
        if let Some(text) = case["text"].as_str() {
            assert_eq!(codec.encode(text).unwrap(), ids, "encoding {text:?}");
        }
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(codec.decode(&ids).unwrap(), decoded);
        // Streamed one id at a time, the pieces add up to the whole decoding, and no piece ends
        // inside a multi-byte character.
        let mut stream = codec.stream();
        let mut pieces = String::new();
        for &id in &ids {
            pieces += &stream.push(id).unwrap();
        }
        pieces += &stream.finish().unwrap();
        assert_eq!(pieces, decoded);
    }
    assert!(codec.decode(&[256]).is_err(), "an id outside the vocabulary is an error");
    let err = fpx::generate::TextCodec::open(&zoo.join("manifest.json")).unwrap_err().to_string();
    assert!(err.contains("manifest.json"), "{err}");
}

#[test]
fn the_cli_takes_text_with_a_tokenizer_and_prints_text() {
    let zoo = workspace_root().join("tests/data/zoo");
    let fixture = zoo.join("llama-torchscript-kv");
    let codec = fpx::generate::TextCodec::open(&zoo.join("tokenizer.json")).unwrap();
    let model = open(&fixture);
    let generator = Generator::new(&model, &SignatureNames::default()).unwrap();
    let prompt = codec.encode("Once upon a time").unwrap();
    let tokens = generator.generate(&prompt, &GenerateOptions { max_new_tokens: 10, ..Default::default() }, |_| {}).unwrap().tokens;
    let out = Command::new(env!("CARGO_BIN_EXE_fpx"))
        .args([
            "generate",
            fixture.join("model.onnx").to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "10",
            "--tokenizer",
        ])
        .arg(zoo.join("tokenizer.json"))
        .output()
        .expect("fpx runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'), codec.decode(&tokens).unwrap());
}

/// The model as imported and simplified, without the KV-cache rewrite (the plain graph).
fn plain_executor(path: &Path) -> fpx::runtime::CpuExecutor {
    use fpx::ir::ops::OpRegistry;
    use fpx::ir::pass::{ConstantFolding, DeadNodeElimination, PassManager};
    let mut graph = fpx::onnx::load_model(path).unwrap();
    let fold = || ConstantFolding {
        evaluator: fpx::runtime::CpuEvaluator::default(),
        max_elements: 1 << 20,
        budget: fpx::ir::TensorBudget::default(),
    };
    PassManager::new()
        .with(fold())
        .with(fpx::passes::FoldKnownShapes)
        .with(fold())
        .with(fpx::passes::FuseGelu)
        .with(DeadNodeElimination)
        .run(&mut graph, &OpRegistry::standard())
        .unwrap();
    fpx::runtime::CpuExecutor::new(graph).unwrap()
}

#[test]
fn the_in_place_cache_gives_the_plain_graphs_logits_at_every_step_of_a_50_step_generation() {
    use fpx::ir::ndarray::{ArrayD, IxDyn};
    use fpx::ir::Tensor;
    let fixtures = greedy_fixtures();
    assert!(fixtures.len() >= 9);
    for (fixture, _) in &fixtures {
        let name = fixture.file_name().unwrap().to_string_lossy().to_string();
        let path = fixture.join("model.onnx");
        let rewritten = fpx::open(&path).unwrap();
        let appends = rewritten
            .graph()
            .node_ids()
            .into_iter()
            .filter(|&id| fpx::ir::ops::kv_append::is_kv_append(rewritten.graph().node(id)))
            .count();
        let signature = Generator::new(&rewritten, &SignatureNames::default()).unwrap().signature().clone();
        assert_eq!(appends, signature.cache.len(), "{name}: every cache Concat is rewritten");
        let plain = plain_executor(&path);
        let steps = 50;
        let empty = |capacity: usize| -> Vec<(String, Tensor)> {
            signature
                .cache
                .iter()
                .map(|s| {
                    let shape: Vec<usize> =
                        s.dims.iter().enumerate().map(|(a, d)| if a == s.seq_axis { 0 } else { d.fixed().unwrap_or(1) }).collect();
                    (s.past.clone(), fpx::runtime::kernels::kv_append::cache_with_capacity(s.dtype, &shape, s.seq_axis, capacity).unwrap())
                })
                .collect()
        };
        let (mut plain_cache, mut cache) = (empty(0), empty(4 + steps));
        let mut tokens = vec![3i64, 14, 15, 92];
        let mut pointers: Option<Vec<*const f32>> = None;
        for step in 0..steps {
            let past = if step == 0 { 0 } else { 3 + step };
            let new: Vec<i64> = if step == 0 { tokens.clone() } else { vec![*tokens.last().unwrap()] };
            let row = |v: Vec<i64>| Tensor::from(ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v).unwrap());
            let mut inputs =
                vec![("input_ids".to_string(), row(new.clone())), ("attention_mask".to_string(), row(vec![1; past + new.len()]))];
            if signature.position_ids.is_some() {
                inputs.push(("position_ids".to_string(), row((past as i64..(past + new.len()) as i64).collect())));
            }
            let with = |cache: Vec<(String, Tensor)>| {
                let mut all = inputs.clone();
                all.extend(cache);
                all
            };
            let a = plain.run(with(std::mem::take(&mut plain_cache))).unwrap();
            let b = rewritten.run(with(std::mem::take(&mut cache))).unwrap();
            let (la, lb) = (a[0].1.to_f64_vec(), b[0].1.to_f64_vec());
            let scale = la.iter().fold(0f64, |m, x| m.max(x.abs()));
            let err = la.iter().zip(&lb).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= 1e-5 * scale, "{name} step {step}: logits differ by {err} (scale {scale})");
            let vocab = a[0].1.shape()[2];
            let last = &la[la.len() - vocab..];
            let next = (0..vocab).max_by(|&i, &j| last[i].total_cmp(&last[j]).then(j.cmp(&i))).unwrap() as i64;
            tokens.push(next);
            // The presents move (no copy) into the next step's pasts.
            let pair = |mut out: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
                signature
                    .cache
                    .iter()
                    .map(|s| {
                        let i = out.iter().position(|(n, _)| *n == s.present).unwrap();
                        (s.past.clone(), out.swap_remove(i).1)
                    })
                    .collect()
            };
            plain_cache = pair(a);
            cache = pair(b);
            // Every step after the first writes into the same buffers: nothing moved.
            let now: Vec<*const f32> = cache.iter().map(|(_, t)| t.as_f32().unwrap().as_ptr()).collect();
            if let Some(before) = &pointers {
                assert_eq!(before, &now, "{name} step {step}: the cache was reallocated");
            }
            pointers = Some(now);
        }
    }
}

/// Logits cosine an int8 table may cost (per-row int8: 0.7 % RMS error on the table).
const INT8_COSINE_DROP: f64 = 2e-4;
/// Logits cosine a table tied to an fp6-e3m2 LM head may cost (it shares the head's 6-bit
/// codes: 5 % RMS error on the table, for one copy of the weight).
const TIED_COSINE_DROP: f64 = 3e-3;

/// Int8 embedding tables (quantized whatever their size here; tied ones sharing the head's
/// weight) against float tables, FP6 e3m2 weights and f32 activations in both, on every zoo
/// decoder: on every input set of the fixture the logits' cosine to onnxruntime's FP32 reference
/// drops by at most [`INT8_COSINE_DROP`] ([`TIED_COSINE_DROP`] when tied), and the first greedy
/// token is the same. (Later tokens of these tiny random models can flip where two logits
/// nearly tie; the table prints how many stay.)
#[test]
fn int8_embedding_tables_keep_logits_and_greedy_tokens() {
    use crate::zoo::{first_line, measure, Fixture};
    use fpx::quant::Format;
    use fpx::{QuantizeOptions, WeightScheme};
    let base = QuantizeOptions { embeddings: None, ..QuantizeOptions::new(WeightScheme::Fixed(Format::Fp6E3M2)) };
    let int8 = QuantizeOptions { embeddings: Some(Format::Int8), embedding_min_elements: 0, ..base };
    let mut failures = Vec::new();
    for (dir, reference) in greedy_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let fixture = Fixture::load(&dir);
        let path = dir.join("model.onnx");
        let (plain, quantized) = (fpx::open_with(&path, &base).unwrap(), fpx::open_with(&path, &int8).unwrap());
        let g = quantized.graph();
        let lookups: Vec<_> = g.node_ids().into_iter().filter(|&n| fpx::ir::ops::quant_gather::is_quant_gather(g.node(n))).collect();
        assert!(!lookups.is_empty(), "{name}: no embedding table was quantized");
        // Tied: a lookup reads the packed weight of a product (the LM head).
        let tied = lookups.iter().any(|&l| {
            let packed = g.node(l).inputs[0];
            g.node_ids().into_iter().any(|n| fpx::ir::ops::quant_matmul::is_quant_matmul(g.node(n)) && g.node(n).inputs[1] == packed)
        });
        let allowed = if tied { TIED_COSINE_DROP } else { INT8_COSINE_DROP };
        let (_, cos_plain) = measure(&fixture, |i| plain.run(i).map_err(first_line)).unwrap();
        let (_, cos_int8) = measure(&fixture, |i| quantized.run(i).map_err(first_line)).unwrap();
        let prompt = ids(&reference["prompt"]);
        let options = GenerateOptions { max_new_tokens: 12, ..Default::default() };
        let run =
            |m: &fpx::Runnable| Generator::new(m, &SignatureNames::default()).unwrap().generate(&prompt, &options, |_| {}).unwrap().tokens;
        let (a, b) = (run(&plain), run(&quantized));
        let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let kind = if tied { "tied (head's fp6-e3m2)" } else { "int8" };
        println!(
            "{name:28} {} lookups, {kind:22} logits cosine {cos_plain:.6} -> {cos_int8:.6}, first {same} of 12 greedy tokens the same",
            lookups.len()
        );
        if cos_int8.is_nan() || cos_int8 < cos_plain - allowed || a[0] != b[0] {
            failures.push(format!("{name}: cosine {cos_plain:.6} -> {cos_int8:.6}, tokens {a:?} vs {b:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
