//! The public API: round trip, determinism, atomic write, and damaged or foreign files.

use fpx_artifact::{
    to_bytes, write, Artifact, ArtifactContents, ArtifactError, CpuCode, CpuKernel, GpuActivations, GpuKernel, GpuTiles, NodeKernels,
    PtxCode, PtxModule, SectionKind, FORMAT_VERSION,
};
use fpx_ir::half::{bf16, f16};
use fpx_ir::ndarray::{ArrayD, IxDyn};
use fpx_ir::{Attribute, DType, Dim, Graph, Node, Tensor, TensorType, ValueId};
use fpx_quant::act8::Activations;
use fpx_quant::{Format, KernelTable};
use fpx_test_support::{Rng, TempDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Helpers

fn arr<T: Clone>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// A graph exercising every feature the format stores: every element type of constant
/// (including a rank-0, an empty and a non-contiguous one), symbolic and unknown dims,
/// unranked and untyped values, every attribute kind, omitted optional inputs (in the middle
/// and at the end), a constant and a graph input that are graph outputs, several opset
/// imports, nodes added out of order, and a hole left by a removed node.
/// The quantized product of [`rich_graph`]'s node `quant`, which the code entries serve.
fn quant_gemm() -> fpx_quant::QuantGemm {
    fpx_quant::QuantGemm { format: Format::Fp6E2M3, k: 32, n: 3, group_size: 0, activations: Activations::Int8 }
}

fn rich_graph() -> Graph {
    let mut r = Rng::new(0x1234_5678_9abc_def1);
    let mut g = Graph::new("rich");
    g.opsets.insert(String::new(), 17);
    g.opsets.insert("fpx".into(), 1);
    g.opsets.insert("com.example".into(), 3);

    let batch = Dim::Sym("batch".into());
    let x = g.add_input("x", TensorType { dtype: DType::F32, shape: Some(vec![batch.clone(), Dim::Fixed(64)]) }).unwrap();
    let ids = g.add_input("ids", TensorType { dtype: DType::I64, shape: Some(vec![Dim::Unknown, Dim::Sym("seq".into())]) }).unwrap();
    let anything = g.add_input("anything", TensorType::unranked(DType::F16)).unwrap();

    // Every element type, with awkward values.
    let weights: Vec<f32> = (0..64 * 32).map(|i| ((i as f32) * 0.37).sin()).collect();
    let w = g.add_constant("w", Tensor::F32(arr(&[64, 32], weights))).unwrap();
    let specials = vec![f32::from_bits(0x7fc0_1234), -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE / 4.0, 1.0];
    let specials = g.add_constant("specials", Tensor::F32(arr(&[2, 3], specials))).unwrap();
    g.add_constant("f64", Tensor::F64(arr(&[3], vec![f64::from_bits(0x7ff8_0000_0000_0042), -0.0, 1e300]))).unwrap();
    g.add_constant("f16", Tensor::F16(arr(&[2, 2], vec![f16::from_f32(1.5), f16::NAN, f16::from_bits(0x8001), f16::MAX]))).unwrap();
    g.add_constant("bf16", Tensor::BF16(arr(&[3], vec![bf16::from_f32(-2.25), bf16::INFINITY, bf16::from_bits(0x0001)]))).unwrap();
    g.add_constant("i8", Tensor::I8(arr(&[4], vec![i8::MIN, -1, 0, i8::MAX]))).unwrap();
    g.add_constant("i16", Tensor::I16(arr(&[2], vec![i16::MIN, i16::MAX]))).unwrap();
    g.add_constant("i32", Tensor::I32(arr(&[], vec![-123_456]))).unwrap(); // rank 0
    g.add_constant("i64", Tensor::I64(arr(&[2, 0, 3], vec![]))).unwrap(); // no elements
    let packed = g.add_constant("packed", Tensor::U8(arr(&[777], r.bytes(777)))).unwrap();
    g.add_constant("u16", Tensor::U16(arr(&[3], vec![0, 1, u16::MAX]))).unwrap();
    g.add_constant("u32", Tensor::U32(arr(&[2], vec![u32::MAX, 7]))).unwrap();
    g.add_constant("u64", Tensor::U64(arr(&[2], vec![u64::MAX, 1 << 40]))).unwrap();
    let mask = g.add_constant("mask", Tensor::Bool(arr(&[5], vec![true, false, false, true, true]))).unwrap();
    // Stored transposed (not in standard layout): must be written in logical order.
    let t = arr(&[2, 3], (0..6).map(|i| i as f32).collect()).reversed_axes();
    assert!(!t.is_standard_layout());
    let scales = g.add_constant("scales", Tensor::F32(t)).unwrap();
    let clip_max = g.add_constant("clip_max", Tensor::scalar_f32(6.0)).unwrap();

    let h = g.value_named("h");
    let c = g.value_named("c");
    let q = g.value_named("q");
    g.value_named("dangling"); // neither typed nor defined
    g.set_type(h, Some(TensorType { dtype: DType::F32, shape: Some(vec![batch.clone(), Dim::Fixed(32)]) }));
    g.set_type(c, Some(TensorType::of_rank(DType::F32, 2)));

    // Consumers first: the writer must put them in topological order.
    let mut quant = Node::new("quant", "QuantMatMul", 1, vec![Some(c), Some(packed), Some(scales), None], vec![q]);
    quant.domain = "fpx".into();
    fpx_ir::ops::quant_matmul::write(&mut quant, &quant_gemm());
    g.add_node(quant).unwrap();
    g.add_node(Node::new("clip", "Clip", 17, vec![Some(h), None, Some(clip_max)], vec![c])).unwrap();
    // A node that is removed again, leaving a hole in the node indices.
    let tmp = g.value_named("tmp");
    let doomed = g.add_node(Node::new("doomed", "Neg", 17, vec![Some(x)], vec![tmp])).unwrap();
    g.remove_node(doomed).unwrap();
    let mut mm = Node::new("mm", "MatMul", 17, vec![Some(x), Some(w)], vec![h]);
    mm.attrs.insert("alpha".into(), Attribute::Float(-0.0));
    mm.attrs.insert("nan".into(), Attribute::Float(f32::from_bits(0x7fa0_0001)));
    mm.attrs.insert("count".into(), Attribute::Int(i64::MIN));
    mm.attrs.insert("label".into(), Attribute::String("ünïcode ✓".into()));
    mm.attrs.insert("value".into(), Attribute::Tensor(Tensor::vec_i64(vec![1, -2, 3])));
    mm.attrs.insert("flags".into(), Attribute::Tensor(Tensor::Bool(arr(&[2, 2], vec![true, false, true, true]))));
    mm.attrs.insert("half".into(), Attribute::Tensor(Tensor::F16(arr(&[], vec![f16::from_f32(0.5)]))));
    mm.attrs.insert("floats".into(), Attribute::Floats(vec![1.5, -0.0, f32::MAX]));
    mm.attrs.insert("ints".into(), Attribute::Ints(vec![-1, 0, i64::MAX]));
    mm.attrs.insert("no_ints".into(), Attribute::Ints(vec![]));
    mm.attrs.insert("strings".into(), Attribute::Strings(vec!["a".into(), String::new(), "c".into()]));
    g.add_node(mm).unwrap();
    let mut custom = Node::new("custom", "Thing", 3, vec![Some(ids), Some(anything), Some(ids)], vec![g.value_named("thing_out")]);
    custom.domain = "com.example".into();
    g.add_node(custom).unwrap();

    g.outputs = vec![q, mask, specials, x];
    g
}

fn rich_contents() -> ArtifactContents {
    let mut r = Rng::new(42);
    let cpu = vec![
        CpuCode {
            target: "x86-64-v3".into(),
            features: vec!["avx2".into(), "fma".into(), "f16c".into()],
            shared_object: r.bytes(3001),
            kernels: vec![NodeKernels {
                node: "quant".into(),
                table: KernelTable::new(vec![
                    (
                        8,
                        CpuKernel {
                            symbol: "fpx_quant_gemv".into(),
                            column_split: 16,
                            activations: Activations::Int8,
                            threads: 0,
                            config: None,
                        },
                    ),
                    (
                        0,
                        CpuKernel {
                            symbol: "fpx_quant_gemm".into(),
                            column_split: 64,
                            activations: Activations::Int8,
                            threads: 0,
                            config: None,
                        },
                    ),
                ])
                .unwrap(),
            }],
        },
        // An empty shared object: a zero-length section.
        CpuCode {
            target: "generic".into(),
            features: vec![],
            shared_object: vec![],
            kernels: vec![NodeKernels {
                node: "quant".into(),
                table: KernelTable::single(CpuKernel {
                    symbol: "q".into(),
                    column_split: 16,
                    activations: Activations::Int8,
                    threads: 0,
                    config: None,
                }),
            }],
        },
    ];
    let metadata = BTreeMap::from([("weights".to_string(), "fp6-auto".to_string()), ("source".to_string(), "model.onnx".to_string())]);
    let module = |name: &str, entries: &[&str], r: &mut Rng| PtxModule {
        name: name.into(),
        ptx: format!(
            "// {name}\n.version 9.0\n.target sm_90\n{}",
            r.bytes(700).iter().map(|b| (b'a' + b % 26) as char).collect::<String>()
        ),
        entries: entries.iter().map(|e| e.to_string()).collect(),
    };
    let gemm = |module: &str, kernel: &str, reduce: &str, split_k: u32| GpuKernel {
        module: module.into(),
        kernel: kernel.into(),
        reduce: (!reduce.is_empty()).then(|| reduce.into()),
        tiles: GpuTiles {
            format: Format::Fp6E2M3,
            activations: GpuActivations::F16,
            n: quant_gemm().n as u64,
            k: quant_gemm().k as u64,
            m_tile: 16,
            warps: 4,
            warp_ntiles: 2,
            k_tiles: 2,
            stages: 4,
            split_k,
        },
        tuned: split_k > 1,
    };
    let ptx = vec![
        PtxCode {
            arch: "sm_80".into(),
            sm_count: 108,
            modules: vec![
                module("g1", &["g1", "g1_reduce"], &mut r),
                module("g2", &["g2"], &mut r),
                module("ops", &["fpx_add_f16"], &mut r),
            ],
            kernels: vec![NodeKernels {
                node: "quant".into(),
                table: KernelTable::new(vec![(16, gemm("g1", "g1", "g1_reduce", 3)), (0, gemm("g2", "g2", "", 1))]).unwrap(),
            }],
        },
        PtxCode {
            arch: "sm_90".into(),
            sm_count: 132,
            modules: vec![module("g2", &["g2"], &mut r)],
            kernels: vec![NodeKernels { node: "quant".into(), table: KernelTable::single(gemm("g2", "g2", "", 1)) }],
        },
    ];
    ArtifactContents { graph: rich_graph(), cpu, ptx, metadata }
}

/// Bit-exact tensor equality (NaN payloads and the sign of zero included).
fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    fn bits<T: Copy, U: PartialEq>(x: &ArrayD<T>, y: &ArrayD<T>, f: impl Fn(T) -> U) -> bool {
        x.shape() == y.shape() && x.iter().zip(y.iter()).all(|(p, q)| f(*p) == f(*q))
    }
    if a.dtype() != b.dtype() || a.shape() != b.shape() {
        return false;
    }
    match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => bits(x, y, f32::to_bits),
        (Tensor::F64(x), Tensor::F64(y)) => bits(x, y, f64::to_bits),
        (Tensor::F16(x), Tensor::F16(y)) => bits(x, y, f16::to_bits),
        (Tensor::BF16(x), Tensor::BF16(y)) => bits(x, y, bf16::to_bits),
        _ => a == b,
    }
}

fn same_attr(a: &Attribute, b: &Attribute) -> bool {
    match (a, b) {
        (Attribute::Float(x), Attribute::Float(y)) => x.to_bits() == y.to_bits(),
        (Attribute::Floats(x), Attribute::Floats(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
        (Attribute::Tensor(x), Attribute::Tensor(y)) => same_tensor(x, y),
        _ => a == b,
    }
}

/// Compares two graphs field by field (Graph has no PartialEq). Value ids must be the same;
/// nodes are matched by name (they are unique here) and compared in topological order.
fn assert_same_graph(a: &Graph, b: &Graph) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.opsets, b.opsets);
    assert_eq!(a.inputs, b.inputs);
    assert_eq!(a.outputs, b.outputs);
    let va: Vec<ValueId> = a.value_ids().collect();
    assert_eq!(va, b.value_ids().collect::<Vec<_>>(), "value ids");
    let node_name = |g: &Graph, p: Option<(fpx_ir::NodeId, usize)>| p.map(|(n, slot)| (g.node(n).name.clone(), slot));
    for id in va {
        let (x, y) = (a.value(id), b.value(id));
        assert_eq!(x.name, y.name);
        assert_eq!(x.ty, y.ty, "type of {}", x.name);
        match (&x.constant, &y.constant) {
            (None, None) => {}
            (Some(p), Some(q)) => assert!(same_tensor(p, q), "constant {}: {p:?} vs {q:?}", x.name),
            _ => panic!("constant-ness of {} differs", x.name),
        }
        assert_eq!(node_name(a, x.producer), node_name(b, y.producer), "producer of {}", x.name);
        let mut ca: Vec<String> = x.consumers.iter().map(|&n| a.node(n).name.clone()).collect();
        let mut cb: Vec<String> = y.consumers.iter().map(|&n| b.node(n).name.clone()).collect();
        ca.sort();
        cb.sort();
        assert_eq!(ca, cb, "consumers of {}", x.name);
    }
    let names = |g: &Graph| g.topo_order().unwrap().into_iter().map(|n| g.node(n).name.clone()).collect::<Vec<_>>();
    let mut na = names(a);
    let nb = names(b);
    assert_eq!(na.len(), nb.len());
    na.sort();
    let mut sorted_b = nb.clone();
    sorted_b.sort();
    assert_eq!(na, sorted_b, "node names");
    for id in b.node_ids() {
        let y = b.node(id);
        let x = a.node(a.node_ids().into_iter().find(|&n| a.node(n).name == y.name).unwrap());
        assert_eq!((&x.op_type, &x.domain, x.opset), (&y.op_type, &y.domain, y.opset), "node {}", x.name);
        assert_eq!(x.inputs, y.inputs, "inputs of {}", x.name);
        assert_eq!(x.outputs, y.outputs, "outputs of {}", x.name);
        assert_eq!(x.attrs.keys().collect::<Vec<_>>(), y.attrs.keys().collect::<Vec<_>>(), "attributes of {}", x.name);
        for (k, v) in &x.attrs {
            assert!(same_attr(v, &y.attrs[k]), "attribute {k} of {}: {v:?} vs {:?}", x.name, y.attrs[k]);
        }
    }
}

fn kind(e: &ArtifactError) -> &'static str {
    match e {
        ArtifactError::Io { .. } => "Io",
        ArtifactError::NotAnArtifact { .. } => "NotAnArtifact",
        ArtifactError::NewerVersion { .. } => "NewerVersion",
        ArtifactError::OlderVersion { .. } => "OlderVersion",
        ArtifactError::Corrupt { .. } => "Corrupt",
        ArtifactError::ChecksumMismatch { .. } => "ChecksumMismatch",
        ArtifactError::Graph { .. } => "Graph",
        ArtifactError::Ir { .. } => "Ir",
    }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny-transformer").join(name)
}

// ---------------------------------------------------------------------------------------------
// Round trip and determinism

#[test]
fn round_trip_keeps_everything() {
    let contents = rich_contents();
    let dir = TempDir::new("roundtrip");
    let path = dir.path().join("model.fpx");
    let summary = write(&path, &contents).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert!(bytes.len() > 4096, "big enough to be memory-mapped");

    for a in [Artifact::open(&path).unwrap(), Artifact::from_bytes(bytes.clone(), "mem.fpx").unwrap()] {
        assert_eq!(a.format_version(), FORMAT_VERSION);
        assert_eq!(a.producer(), format!("fpx {}", env!("CARGO_PKG_VERSION")));
        assert_eq!(a.file_bytes(), bytes.len() as u64);
        assert_eq!(a.metadata(), &contents.metadata);
        assert_same_graph(&contents.graph, &a.graph().unwrap());

        let code = a.cpu_code();
        assert_eq!(code.len(), contents.cpu.len());
        for (r, c) in code.iter().zip(&contents.cpu) {
            assert_eq!(r.target, c.target);
            assert_eq!(r.features, &c.features[..]);
            assert_eq!(r.shared_object, &c.shared_object[..]);
            assert_eq!(r.kernels, &c.kernels[..]);
        }

        let ptx = a.ptx_code();
        assert_eq!(ptx.len(), contents.ptx.len());
        for (r, c) in ptx.iter().zip(&contents.ptx) {
            assert_eq!((r.arch, r.sm_count, r.kernels), (c.arch.as_str(), c.sm_count, &c.kernels[..]));
            assert_eq!(r.modules.len(), c.modules.len());
            for (rm, cm) in r.modules.iter().zip(&c.modules) {
                assert_eq!((rm.name, rm.ptx, rm.entries), (cm.name.as_str(), cm.ptx.as_str(), &cm.entries[..]));
            }
        }

        let sections = a.sections();
        assert_eq!(summary.sections, sections.len());
        let n_constants = contents.graph.value_ids().filter(|&v| contents.graph.constant(v).is_some()).count();
        let n_ptx: usize = contents.ptx.iter().map(|p| p.modules.len()).sum();
        assert_eq!(sections.len(), n_constants + contents.cpu.len() + n_ptx);
        assert_eq!(sections.last().unwrap().name, "ptx:sm_90:g2");
        assert!(sections[sections.len() - n_ptx..].iter().all(|s| s.kind == SectionKind::Ptx));
        assert!(sections[..n_constants].iter().all(|s| s.kind == SectionKind::Constant));
        assert_eq!(sections[n_constants].name, "cpu:x86-64-v3");
        assert_eq!(sections[n_constants].kind, SectionKind::CpuSharedObject);
        let w = sections.iter().find(|s| s.name == "w").unwrap();
        assert_eq!(w.length, 64 * 32 * 4);
        assert_eq!(&bytes[w.offset as usize..w.offset as usize + 4], &(0.0f32).sin().to_le_bytes());
        let mut end = 0;
        for s in &sections {
            assert_eq!(s.offset % 64, 0, "{s:?}");
            assert!(s.offset >= end);
            assert_eq!(s.checksum, crc32_reference(&bytes[s.offset as usize..(s.offset + s.length) as usize]));
            end = s.offset + s.length;
        }
        assert_eq!(end, bytes.len() as u64);
    }
}

/// CRC-32 (IEEE), bit by bit: an independent check of the stored checksums.
fn crc32_reference(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn empty_graph_round_trips() {
    let contents = ArtifactContents::default();
    let bytes = to_bytes(&contents).unwrap();
    let a = Artifact::from_bytes(bytes.clone(), "empty.fpx").unwrap();
    assert!(a.sections().is_empty() && a.cpu_code().is_empty() && a.metadata().is_empty());
    assert_same_graph(&contents.graph, &a.graph().unwrap());
    for cut in 0..bytes.len() {
        assert!(Artifact::from_bytes(bytes[..cut].to_vec(), "cut.fpx").is_err());
    }
}

#[test]
fn writing_is_deterministic() {
    let contents = rich_contents();
    let first = to_bytes(&contents).unwrap();
    assert_eq!(first, to_bytes(&contents).unwrap());
    assert_eq!(first, to_bytes(&rich_contents()).unwrap(), "a graph built the same way gives the same bytes");

    let dir = TempDir::new("determinism");
    let (p1, p2) = (dir.path().join("a.fpx"), dir.path().join("b.fpx"));
    write(&p1, &contents).unwrap();
    write(&p2, &contents).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), first);
    assert_eq!(std::fs::read(&p2).unwrap(), first);

    // write → read → write gives the same bytes.
    let a = Artifact::open(&p1).unwrap();
    let again = ArtifactContents {
        graph: a.graph().unwrap(),
        cpu: a
            .cpu_code()
            .iter()
            .map(|c| CpuCode {
                target: c.target.into(),
                features: c.features.to_vec(),
                shared_object: c.shared_object.to_vec(),
                kernels: c.kernels.to_vec(),
            })
            .collect(),
        ptx: a
            .ptx_code()
            .iter()
            .map(|p| PtxCode {
                arch: p.arch.into(),
                sm_count: p.sm_count,
                modules: p
                    .modules
                    .iter()
                    .map(|m| PtxModule { name: m.name.into(), ptx: m.ptx.into(), entries: m.entries.to_vec() })
                    .collect(),
                kernels: p.kernels.to_vec(),
            })
            .collect(),
        metadata: a.metadata().clone(),
    };
    assert_eq!(to_bytes(&again).unwrap(), first);
}

// ---------------------------------------------------------------------------------------------
// Atomic write

fn cyclic_contents() -> ArtifactContents {
    let mut g = Graph::new("cycle");
    let a = g.value_named("a");
    let b = g.value_named("b");
    g.add_node(Node::new("p", "Neg", 17, vec![Some(b)], vec![a])).unwrap();
    g.add_node(Node::new("q", "Neg", 17, vec![Some(a)], vec![b])).unwrap();
    ArtifactContents { graph: g, ..Default::default() }
}

#[test]
fn write_into_a_missing_folder_fails_and_leaves_nothing() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("no/such/folder/model.fpx");
    let err = write(&path, &rich_contents()).unwrap_err();
    assert_eq!(kind(&err), "Io", "{err}");
    assert!(err.to_string().contains("no/such/folder") && err.to_string().contains("model.fpx"), "{err}");
    assert!(dir.listing().is_empty());
}

#[test]
fn a_failed_write_leaves_the_existing_file_alone() {
    let dir = TempDir::new("atomic");
    let path = dir.path().join("model.fpx");
    let small = ArtifactContents { metadata: BTreeMap::from([("k".into(), "v".into())]), ..Default::default() };
    write(&path, &small).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Contents that cannot be encoded: nothing touches the disk.
    let err = write(&path, &cyclic_contents()).unwrap_err();
    assert_eq!(kind(&err), "Graph", "{err}");
    assert!(err.to_string().contains("cycle") && err.to_string().contains("model.fpx"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir.listing(), vec!["model.fpx"]);

    // A failure after the temporary file is written (the rename onto a folder fails, as root
    // too): the temporary file is removed.
    let folder = dir.path().join("taken");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"x").unwrap();
    let err = write(&folder, &rich_contents()).unwrap_err();
    assert_eq!(kind(&err), "Io", "{err}");
    assert_eq!(dir.listing(), vec!["model.fpx", "taken"]);
    assert_eq!(std::fs::read(folder.join("keep")).unwrap(), b"x");

    // A successful write replaces the file and leaves no temporary file.
    let summary = write(&path, &rich_contents()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), summary.bytes);
    assert_eq!(dir.listing(), vec!["model.fpx", "taken"]);

    // A path that names no file.
    assert_eq!(kind(&write(Path::new("/"), &small).unwrap_err()), "Io");
}

#[test]
fn graphs_that_would_not_read_back_are_refused() {
    // A graph output id the graph does not have.
    let mut c = rich_contents();
    c.graph.outputs.push(ValueId(10_000));
    let err = to_bytes(&c).unwrap_err();
    assert_eq!(kind(&err), "Graph", "{err}");
    assert!(err.to_string().contains("value id 10000"), "{err}");

    // A node output also listed as a graph input (Graph::add_input would have refused it).
    let mut c = rich_contents();
    let h = c.graph.find_value("h").unwrap();
    c.graph.inputs.push(h);
    let err = to_bytes(&c).unwrap_err();
    assert_eq!(kind(&err), "Graph", "{err}");
    assert!(err.to_string().contains("would not read back") && err.to_string().contains("'h' is defined more than once"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Damaged and foreign files: errors, never panics

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = to_bytes(&rich_contents()).unwrap();
    let n = bytes.len();
    let mut cuts: Vec<usize> = (0..n).step_by(64).collect();
    cuts.extend((1..=70).map(|k| n - k));
    cuts.extend(0..64);
    for cut in cuts {
        let err = Artifact::from_bytes(bytes[..cut].to_vec(), "cut.fpx").unwrap_err();
        let expected = if cut == 0 { "NotAnArtifact" } else { "Corrupt" };
        assert_eq!(kind(&err), expected, "cut at {cut}: {err}");
        assert!(err.to_string().contains("cut.fpx"), "{err}");
    }
    // Through a file as well (small files are read, large ones mapped).
    let dir = TempDir::new("truncate");
    for cut in [0, 5, 15, 16, 100, 4095, 4096, n / 2, n - 1] {
        let p = dir.path().join(format!("cut{cut}.fpx"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = Artifact::open(&p).unwrap_err();
        assert!(matches!(kind(&err), "Corrupt" | "NotAnArtifact"), "cut at {cut}: {err}");
        assert!(err.to_string().contains(&format!("cut{cut}.fpx")), "{err}");
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = to_bytes(&rich_contents()).unwrap();
    let a = Artifact::from_bytes(bytes.clone(), "ok.fpx").unwrap();
    let sections = a.sections();
    let manifest_end = 16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let section_at = |i: usize| sections.iter().position(|s| (s.offset as usize..(s.offset + s.length) as usize).contains(&i));
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= if i % 2 == 0 { 0x01 } else { 0x80 };
        let err = Artifact::from_bytes(damaged, "flip.fpx").unwrap_err();
        let msg = err.to_string();
        match i {
            0..8 => assert_eq!(kind(&err), "NotAnArtifact", "byte {i}: {msg}"),
            // Version 3 becomes 2 (older: its fields mean something else) or 3 + 2^k (newer).
            8 => assert_eq!(kind(&err), "OlderVersion", "byte {i}: {msg}"),
            9..12 => assert_eq!(kind(&err), "NewerVersion", "byte {i}: {msg}"),
            12..16 => assert!(matches!(kind(&err), "Corrupt" | "ChecksumMismatch"), "byte {i}: {msg}"),
            _ if i < manifest_end + 4 => {
                assert_eq!(kind(&err), "ChecksumMismatch", "byte {i}: {msg}");
                assert!(msg.contains("the manifest"), "byte {i}: {msg}");
            }
            _ => match section_at(i) {
                Some(s) => {
                    assert_eq!(kind(&err), "ChecksumMismatch", "byte {i}: {msg}");
                    let name = &sections[s].name;
                    assert!(msg.contains(&format!("section #{s} '{name}'")), "byte {i} in section {name}: {msg}");
                }
                None => {
                    assert_eq!(kind(&err), "Corrupt", "byte {i}: {msg}");
                    assert!(msg.contains("padding"), "byte {i}: {msg}");
                }
            },
        }
    }
}

#[test]
fn a_damaged_section_is_named_when_opening_a_file() {
    let bytes = to_bytes(&rich_contents()).unwrap();
    let a = Artifact::from_bytes(bytes.clone(), "ok.fpx").unwrap();
    let dir = TempDir::new("flip");
    let path = dir.path().join("model.fpx");
    for (i, s) in a.sections().iter().enumerate().filter(|(_, s)| s.length > 0) {
        let mut damaged = bytes.clone();
        damaged[(s.offset + s.length / 2) as usize] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        match Artifact::open(&path) {
            Err(ArtifactError::ChecksumMismatch { what, section, expected, found }) => {
                assert_eq!(what, path.display().to_string());
                assert!(section.contains(&format!("#{i} '{}'", s.name)), "{section}");
                assert_eq!(expected, s.checksum);
                assert_ne!(found, expected);
            }
            other => panic!("section {}: expected a checksum error, got {other:?}", s.name),
        }
    }
}

#[test]
fn random_damage_to_the_manifest_never_panics() {
    // Damage that keeps the manifest's checksum valid, so the decoder and every later check
    // see it: the result may be an error or (for a harmless change) a valid artifact.
    let bytes = to_bytes(&rich_contents()).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut r = Rng::new(7);
    let mut outcomes = BTreeMap::new();
    for _ in 0..3000 {
        let mut d = bytes.clone();
        for _ in 0..1 + r.below(3) {
            let i = 16 + r.below(len);
            d[i] = match r.below(3) {
                0 => d[i] ^ (1 << r.below(8)),
                1 => r.next_u32() as u8,
                _ => d[i].wrapping_add(1),
            };
        }
        let crc = crc32_reference(&d[16..16 + len]);
        d[16 + len..20 + len].copy_from_slice(&crc.to_le_bytes());
        let outcome = match Artifact::from_bytes(d, "fuzz.fpx") {
            Ok(a) => match a.graph() {
                Ok(_) => "ok",
                Err(e) => panic!("open accepted a manifest that graph() rejects: {e}"),
            },
            Err(e) => kind(&e),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    assert!(outcomes.get("Corrupt").copied().unwrap_or(0) > 1000, "{outcomes:?}");

    // Random bytes after a valid header, with a matching checksum.
    for _ in 0..2000 {
        let n = r.below(300);
        let mut d = b"FPX\0ART\0".to_vec();
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&(n as u32).to_le_bytes());
        d.extend(r.bytes(n));
        d.extend_from_slice(&crc32_reference(&d[16..]).to_le_bytes());
        let tail = r.below(200);
        d.extend(r.bytes(tail));
        let _ = Artifact::from_bytes(d, "noise.fpx").map(|a| a.graph());
    }
}

#[test]
fn foreign_files_are_not_artifacts() {
    let onnx = example("model.onnx");
    let err = Artifact::open(&onnx).unwrap_err();
    assert_eq!(kind(&err), "NotAnArtifact", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("model.onnx") && msg.contains("not an fpx artifact") && msg.contains("ONNX"), "{msg}");

    let err = Artifact::open(&example("input.npy")).unwrap_err();
    assert_eq!(kind(&err), "NotAnArtifact", "{err}");
    assert!(err.to_string().contains("NumPy"), "{err}");

    let dir = TempDir::new("foreign");
    let empty = dir.path().join("empty.fpx");
    std::fs::write(&empty, b"").unwrap();
    let err = Artifact::open(&empty).unwrap_err();
    assert_eq!(kind(&err), "NotAnArtifact", "{err}");
    assert!(err.to_string().contains("empty"), "{err}");

    let text = dir.path().join("notes.fpx");
    std::fs::write(&text, b"hello, world").unwrap();
    assert_eq!(kind(&Artifact::open(&text).unwrap_err()), "NotAnArtifact");

    let missing = dir.path().join("missing.fpx");
    let err = Artifact::open(&missing).unwrap_err();
    assert_eq!(kind(&err), "Io", "{err}");
    assert!(err.to_string().contains("missing.fpx"), "{err}");
    let err = Artifact::open(dir.path()).unwrap_err();
    assert_eq!(kind(&err), "Io", "{err}");
    assert!(err.to_string().contains("a folder"), "{err}");
}

#[test]
fn newer_versions_are_refused() {
    let bytes = to_bytes(&rich_contents()).unwrap();
    for v in [FORMAT_VERSION + 1, 7, u32::MAX] {
        let mut d = bytes.clone();
        d[8..12].copy_from_slice(&v.to_le_bytes());
        match Artifact::from_bytes(d, "new.fpx") {
            Err(e @ ArtifactError::NewerVersion { .. }) => {
                let ArtifactError::NewerVersion { found, supported, .. } = &e else { unreachable!() };
                assert_eq!((*found, *supported), (v, FORMAT_VERSION));
                assert!(e.to_string().contains(&format!("format version {v}")), "{e}");
            }
            other => panic!("version {v}: expected NewerVersion, got {other:?}"),
        }
    }
    // Older versions are refused too: version 2 stored a GEMV/GEMM pair per node and the GPU
    // tile config as text, which this reader would misread; version 1 had no int8 kernels.
    for v in 1..FORMAT_VERSION {
        let mut d = bytes.clone();
        d[8..12].copy_from_slice(&v.to_le_bytes());
        let e = Artifact::from_bytes(d, "old.fpx").unwrap_err();
        assert_eq!(kind(&e), "OlderVersion", "{e}");
        assert!(e.to_string().contains(&format!("format version {v}")) && e.to_string().contains("recompile"), "{e}");
    }
    // A newer file is refused whatever follows its header.
    let mut d = b"FPX\0ART\0".to_vec();
    d.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(kind(&Artifact::from_bytes(d, "short.fpx").unwrap_err()), "Corrupt", "shorter than the header");
    let mut d = b"FPX\0ART\0".to_vec();
    d.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    d.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(kind(&Artifact::from_bytes(d, "new.fpx").unwrap_err()), "NewerVersion");
}

#[test]
fn fifos_and_devices_are_refused_at_once() {
    use fpx_test_support::special::{special_files, within_10s};
    let dir = TempDir::new("artifact-special");
    for (path, want) in special_files(&dir, "model.fpx") {
        let shown = path.display().to_string();
        let e = within_10s("Artifact::open", move || Artifact::open(&path).unwrap_err().to_string());
        assert!(e.contains(&shown) && e.contains(want), "{e}");
    }
}
