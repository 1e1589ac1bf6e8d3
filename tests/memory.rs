//! A compile's memory follows its largest tensor, not the model: `fpx compile` of models with
//! external data, measured as the child process's peak resident memory (`ru_maxrss`).

use fpx_test_support::onnx::{external_float_tensor, model, node, save, value};
use fpx_test_support::{Rng, TempDir};
use std::io::Write;
use std::path::Path;

/// Output channels of every weight and their K: 2048 x 2048 f32 = 16 MiB each.
const D: usize = 2048;

/// Writes `model.onnx` into `dir`: `y = x · W_0 · W_1 ⋯ W_{layers-1}`, every W external data
/// in `weights.bin`, random and seeded.
fn chain(dir: &Path, layers: usize) {
    let mut rng = Rng::new(7 + layers as u64);
    let mut data = std::io::BufWriter::new(std::fs::File::create(dir.join("weights.bin")).unwrap());
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    let mut bytes = vec![0u8; D * D * 4];
    for i in 0..layers {
        for b in bytes.chunks_exact_mut(4) {
            b.copy_from_slice(&((rng.uniform() as f32 - 0.5) * 0.05).to_le_bytes());
        }
        data.write_all(&bytes).unwrap();
        inits.push(external_float_tensor(&format!("w{i}"), &[D as i64, D as i64], "weights.bin", (i * D * D * 4) as u64));
        let x = if i == 0 { "x".to_string() } else { format!("h{i}") };
        let y = if i + 1 == layers { "y".to_string() } else { format!("h{}", i + 1) };
        nodes.push(node("MatMul", &format!("mm{i}"), &[&x, &format!("w{i}")], &[&y]));
    }
    data.flush().unwrap();
    let d = D.to_string();
    save(&model(nodes, vec![value("x", &["1", &d])], vec![value("y", &["1", &d])], inits), &dir.join("model.onnx"));
}

/// Compiles `dir/model.onnx` with the `fpx` binary (one CPU level, to keep it quick) and
/// returns the peak resident memory it reports (its own `VmHWM`: a child's `ru_maxrss` would
/// count the test process it was spawned from).
fn compile_peak(dir: &Path) -> u64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fpx"))
        .args(["compile", "--quiet", "--cpu", "x86-64-v3", "-o"])
        .arg(dir.join("model.fpx"))
        .arg(dir.join("model.onnx"))
        .output()
        .expect("fpx runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fpx compile failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("model.fpx").is_file());
    let mib = stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no peak memory in: {stdout}"));
    (mib * (1u64 << 20) as f64) as u64
}

#[test]
fn compile_memory_tracks_the_largest_tensor_not_the_total() {
    let tensor = (D * D * 4) as u64;
    let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut peaks = Vec::new();
    for layers in [6, 24] {
        let dir = TempDir::new(&format!("memory-{layers}"));
        chain(dir.path(), layers);
        let peak = compile_peak(dir.path());
        println!("{layers} weights of {:.0} MiB ({:.0} MiB in all): peak {:.0} MiB", mb(tensor), mb(layers as u64 * tensor), mb(peak));
        peaks.push(peak);
        if layers == 6 {
            runs_in_place(dir.path());
        }
    }
    // 18 more weights (288 MiB) cost less than two of them: the passes hold a bounded working
    // set, the rest waits in its file (the spill file's pages are not this process's memory).
    let grew = peaks[1].saturating_sub(peaks[0]);
    assert!(grew < 2 * tensor, "peak grew by {:.0} MiB for 18 more weights of {:.0} MiB", mb(grew), mb(tensor));
    // And the peak is well below what holding the model would take.
    assert!(peaks[1] < 24 * tensor, "peak {:.0} MiB for a {:.0} MiB model", mb(peaks[1]), mb(24 * tensor));
}

/// The artifact's packed weights are read in place from the mapped file (no copy), and the
/// native kernels reading them give what the reference kernels give on copied constants.
fn runs_in_place(dir: &Path) {
    let artifact = fpx::artifact::Artifact::open(&dir.join("model.fpx")).unwrap();
    let mapped = artifact.graph().unwrap();
    let in_place = mapped.value_ids().filter(|&v| mapped.stored(v).is_some_and(|s| s.mapped_bytes().is_some())).count();
    assert_eq!(in_place, 6, "every packed weight stays in the file");
    let loaded = fpx::runtime::LoadedArtifact::from_artifact(artifact).unwrap();
    let reference =
        fpx::runtime::CpuExecutor::new(fpx::artifact::Artifact::open(&dir.join("model.fpx")).unwrap().graph_loaded().unwrap()).unwrap();
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..D).map(|_| rng.uniform() as f32 - 0.5).collect();
    let x = fpx::ir::Tensor::from(fpx::ir::ndarray::ArrayD::from_shape_vec(fpx::ir::ndarray::IxDyn(&[1, D]), x).unwrap());
    let got = loaded.run(vec![("x".into(), x.clone())]).unwrap().remove(0).1.to_f32();
    let want = reference.run(vec![("x".into(), x)]).unwrap().remove(0).1.to_f32();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (a, b) in got.iter().zip(want.iter()) {
        assert!((a - b).abs() <= 1e-3 * scale, "native in place {a} vs reference {b} (scale {scale})");
    }
}
