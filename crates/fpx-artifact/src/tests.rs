//! Tests that need the crate's internals: the schema file agrees with the prost declarations,
//! and manifests that decode but are inconsistent are rejected with a clear error.

use crate::manifest as pb;
use crate::write::assemble;
use crate::{
    to_bytes, Artifact, ArtifactContents, ArtifactError, CpuCode, CpuKernel, GpuActivations, GpuKernel, GpuTiles, NodeKernels, PtxCode,
    PtxModule, HEADER_LEN,
};
use fpx_ir::{Attribute, DType, Graph, Node, Tensor, TensorType};
use fpx_quant::act8::Activations;
use fpx_quant::{Format, KernelTable};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// artifact.proto ⇄ manifest.rs

/// Names with their tag or number.
type Numbered = BTreeSet<(String, u32)>;

/// Fields (name, tag) and oneof names of each message, and values (name, number) of each enum.
#[derive(Debug, Default, PartialEq)]
struct Schema {
    messages: BTreeMap<String, (Numbered, BTreeSet<String>)>,
    enums: BTreeMap<String, Numbered>,
}

fn snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn camel(snake: &str) -> String {
    snake.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect()
}

fn ident_after<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(keyword)?;
    rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()
}

/// Reads the prost declarations (written in the style manifest.rs documents).
fn rust_schema(src: &str) -> Schema {
    enum Pending {
        Nothing,
        Tag(u32),
        Oneof,
    }
    let mut schema = Schema::default();
    let mut module: Option<String> = None;
    let mut item: Option<(String, bool)> = None; // (message or enum name, is a top-level enum)
    let mut pending = Pending::Nothing;
    for line in src.lines() {
        let t = line.trim();
        if line == "}" {
            // Closes a top-level item or module (what is inside a module is indented).
            item = None;
            module = None;
            continue;
        }
        if t.starts_with("///") || t.starts_with("#[derive") || t.starts_with("#[repr") {
            continue;
        }
        if let Some(m) = ident_after(t, "pub mod ") {
            module = Some(m.to_string());
        } else if let Some(s) = ident_after(t, "pub struct ") {
            schema.messages.entry(s.to_string()).or_default();
            item = Some((s.to_string(), false));
        } else if let Some(e) = ident_after(t, "pub enum ") {
            item = Some(match &module {
                // A oneof: its variants are fields of the parent message.
                Some(m) => (camel(m), false),
                None => {
                    schema.enums.entry(e.to_string()).or_default();
                    (e.to_string(), true)
                }
            });
        } else if t.starts_with("#[prost(") {
            pending = if t.contains("oneof = ") {
                Pending::Oneof
            } else {
                Pending::Tag(t.split("tag = \"").nth(1).expect("a tag").split('"').next().unwrap().parse().unwrap())
            };
        } else {
            let (name, is_enum) = item.clone().unwrap_or_default();
            let field = || match t.strip_prefix("pub ") {
                Some(f) => f.trim_start_matches("r#").split(':').next().unwrap().to_string(),
                None => snake(t.split('(').next().unwrap()),
            };
            match std::mem::replace(&mut pending, Pending::Nothing) {
                Pending::Tag(n) => {
                    schema.messages.get_mut(&name).unwrap().0.insert((field(), n));
                }
                Pending::Oneof => {
                    schema.messages.get_mut(&name).unwrap().1.insert(field());
                }
                Pending::Nothing if is_enum => {
                    if let Some((variant, number)) = t.trim_end_matches(',').split_once(" = ") {
                        let full = format!("{}_{}", snake(&name), snake(variant)).to_ascii_uppercase();
                        schema.enums.get_mut(&name).unwrap().insert((full, number.parse().unwrap()));
                    }
                }
                Pending::Nothing => {}
            }
        }
    }
    schema
}

/// Reads the .proto file (the subset of the language it uses).
fn proto_schema(src: &str) -> Schema {
    let mut schema = Schema::default();
    let mut stack: Vec<(String, String)> = Vec::new(); // (kind, name)
    for line in src.lines() {
        let t = line.split("//").next().unwrap().trim();
        if t.is_empty() || t.starts_with("syntax") || t.starts_with("package") {
            continue;
        }
        if t == "}" {
            stack.pop().expect("balanced braces");
            continue;
        }
        if let Some(rest) = t.strip_suffix('{') {
            let (kind, name) = rest.trim().split_once(' ').expect("`kind name {`");
            match kind {
                "message" => {
                    schema.messages.entry(name.to_string()).or_default();
                }
                "enum" => {
                    schema.enums.entry(name.to_string()).or_default();
                }
                "oneof" => {
                    let msg = &stack.last().expect("oneof in a message").1;
                    schema.messages.get_mut(msg).unwrap().1.insert(name.to_string());
                }
                _ => panic!("unexpected block {t}"),
            }
            stack.push((kind.to_string(), name.to_string()));
            continue;
        }
        let (lhs, number) = t.strip_suffix(';').expect("a field ends with ;").split_once('=').expect("a field has = N");
        let number: u32 = number.trim().parse().unwrap();
        let name = lhs.split_whitespace().last().unwrap().to_string();
        let (kind, block) = stack.iter().rev().find(|(k, _)| k != "oneof").expect("inside a block");
        if kind == "enum" {
            schema.enums.get_mut(block).unwrap().insert((name, number));
        } else {
            schema.messages.get_mut(block).unwrap().0.insert((name, number));
        }
    }
    assert!(stack.is_empty(), "unbalanced braces");
    schema
}

#[test]
fn proto_file_matches_the_prost_declarations() {
    let rust = rust_schema(include_str!("manifest.rs"));
    let proto = proto_schema(include_str!("../artifact.proto"));
    // The parsers found something (not two empty schemas agreeing).
    assert!(rust.messages.len() == 23 && rust.messages["Manifest"].0.len() == 6, "{rust:#?}");
    assert!(rust.messages["Attribute"].0.contains(&("f".to_string(), 2)), "{rust:#?}");
    assert!(rust.messages["Value"].0.contains(&("type".to_string(), 2)), "{rust:#?}");
    assert_eq!(rust.enums["SectionKind"].len(), 5, "{rust:#?}");
    for (name, r) in &rust.messages {
        assert_eq!(Some(r), proto.messages.get(name), "message {name}: manifest.rs vs artifact.proto");
    }
    for (name, r) in &rust.enums {
        assert_eq!(Some(r), proto.enums.get(name), "enum {name}: manifest.rs vs artifact.proto");
    }
    assert_eq!(rust, proto);
}

// ---------------------------------------------------------------------------------------------
// Manifests that decode but do not hold together

fn small_contents() -> ArtifactContents {
    let mut g = Graph::new("small");
    g.opsets.insert(String::new(), 17);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2])).unwrap();
    let w = g.add_constant("w", Tensor::F32(fpx_ir::ndarray::ArrayD::from_elem(vec![2], 1.5))).unwrap();
    let m = g.add_constant("mask", Tensor::Bool(fpx_ir::ndarray::ArrayD::from_elem(vec![3], true))).unwrap();
    let a = g.value_named("a");
    let b = g.value_named("b");
    let mut n = Node::new("add", "Add", 17, vec![Some(x), Some(w)], vec![a]);
    n.attrs.insert("t".into(), Attribute::Tensor(Tensor::vec_i64(vec![1, 2])));
    g.add_node(n).unwrap();
    g.add_node(Node::new("neg", "Neg", 17, vec![Some(a)], vec![b])).unwrap();
    // The quantized product the code entries serve (added last: the value and node numbers of
    // the other nodes stay as the cases below count them).
    g.opsets.insert(fpx_ir::ops::FPX_DOMAIN.into(), 1);
    let q = g.value_named("q");
    let mut qmm = Node::new("qmm", fpx_ir::ops::quant_matmul::OP_TYPE, 1, vec![Some(b), Some(w), Some(w)], vec![q]);
    qmm.domain = fpx_ir::ops::FPX_DOMAIN.into();
    let gemm = fpx_quant::QuantGemm { format: Format::Fp6E2M3, k: 64, n: 2, group_size: 0, activations: Activations::Int8 };
    fpx_ir::ops::quant_matmul::write(&mut qmm, &gemm);
    g.add_node(qmm).unwrap();
    g.outputs = vec![b, m];
    let cpu = vec![CpuCode {
        target: "generic".into(),
        features: vec![],
        shared_object: vec![7; 100],
        kernels: vec![NodeKernels {
            node: "qmm".into(),
            table: KernelTable::new(vec![
                (8, CpuKernel { symbol: "g1".into(), column_split: 16, activations: Activations::Int8, threads: 0, config: None }),
                (
                    0,
                    CpuKernel {
                        symbol: "g2_v1r4p16".into(),
                        column_split: 32,
                        activations: Activations::Int8,
                        threads: 1,
                        config: Some(crate::CpuConfig {
                            variant: crate::Variant::Gemm,
                            tiling: crate::CpuTiling { gemv_rows: 1, gemm_rows: 4, panel_tiles: 16 },
                            tuned: true,
                        }),
                    },
                ),
            ])
            .unwrap(),
        }],
    }];
    let tiles = GpuTiles {
        format: Format::Fp6E2M3,
        activations: GpuActivations::Bf16,
        n: 2,
        k: 64,
        m_tile: 8,
        warps: 4,
        warp_ntiles: 2,
        k_tiles: 2,
        stages: 3,
        split_k: 2,
    };
    let gemm = |kernel: &str, reduce: &str| GpuKernel {
        module: "gemm".into(),
        kernel: kernel.into(),
        reduce: (!reduce.is_empty()).then(|| reduce.into()),
        tiles,
        // One tuned row among heuristic ones: the flag must survive the round trip per row.
        tuned: kernel == "k128",
    };
    let ptx = vec![PtxCode {
        arch: "sm_90".into(),
        sm_count: 132,
        modules: vec![PtxModule {
            name: "gemm".into(),
            ptx: ".version 9.0\n".into(),
            entries: vec!["k16".into(), "k16_reduce".into(), "k128".into()],
        }],
        kernels: vec![NodeKernels {
            node: "qmm".into(),
            table: KernelTable::new(vec![(16, gemm("k16", "k16_reduce")), (0, gemm("k128", ""))]).unwrap(),
        }],
    }];
    ArtifactContents { graph: g, cpu, ptx, metadata: BTreeMap::new() }
}

/// The manifest and section bytes of a valid artifact.
fn parts() -> (pb::Manifest, Vec<Vec<u8>>) {
    let bytes = to_bytes(&small_contents()).unwrap();
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let m = pb::Manifest::decode(&bytes[HEADER_LEN as usize..HEADER_LEN as usize + len]).unwrap();
    let sections = m.sections.iter().map(|s| bytes[s.offset as usize..(s.offset + s.length) as usize].to_vec()).collect();
    (m, sections)
}

/// Applies `damage` to a valid artifact's manifest (checksums recomputed) and expects `open` to
/// report a damaged file whose message contains `expect`.
fn rejects(expect: &str, damage: impl FnOnce(&mut pb::Manifest, &mut Vec<Vec<u8>>)) {
    let (mut m, mut sections) = parts();
    damage(&mut m, &mut sections);
    let bytes = assemble(m, &sections);
    match Artifact::from_bytes(bytes, "crafted.fpx") {
        Err(e @ ArtifactError::Corrupt { .. }) => {
            let s = e.to_string();
            assert!(s.contains(expect) && s.contains("crafted.fpx"), "expected '{expect}' in: {s}");
        }
        other => panic!("expected a Corrupt error containing '{expect}', got {other:?}"),
    }
}

fn graph(m: &mut pb::Manifest) -> &mut pb::Graph {
    m.graph.as_mut().unwrap()
}

#[test]
fn the_unmodified_parts_assemble_into_a_valid_artifact() {
    let (m, sections) = parts();
    let a = Artifact::from_bytes(assemble(m, &sections), "ok.fpx").unwrap();
    assert_eq!(a.graph().unwrap().node_count(), 3);
    assert_eq!(to_bytes(&small_contents()).unwrap().len() as u64, a.file_bytes());
}

#[test]
fn inconsistent_manifests_are_rejected() {
    rejects("no graph", |m, _| m.graph = None);
    rejects("unknown kind (99)", |m, _| m.sections[0].kind = 99);
    rejects("unknown kind (0)", |m, _| m.sections[0].kind = 0);
    rejects("refers to section #9, but there are only 4 sections", |m, _| graph(m).values[1].constant.as_mut().unwrap().section = 9);
    rejects("which holds a cpu shared object, not a constant", |m, _| graph(m).values[1].constant.as_mut().unwrap().section = 2);
    rejects("unknown element type code 99", |m, _| graph(m).values[1].constant.as_mut().unwrap().dtype = 99);
    rejects("unknown element type code -1", |m, _| graph(m).values[0].r#type.as_mut().unwrap().dtype = -1);
    rejects("take 12 bytes, but the data is 8 bytes", |m, _| graph(m).values[1].constant.as_mut().unwrap().shape = vec![3]);
    rejects("overflows", |m, _| graph(m).values[1].constant.as_mut().unwrap().shape = vec![u64::MAX, 4]);
    rejects("take 8 bytes, but the data is 2 bytes", |m, s| {
        s[0] = vec![0, 0];
        graph(m).values[1].constant.as_mut().unwrap().shape = vec![2];
    });
    rejects("neither 0 nor 1", |_, s| s[1][1] = 2);
    rejects("neither fixed, symbolic nor unknown", |m, _| {
        graph(m).values[0].r#type.as_mut().unwrap().shape.as_mut().unwrap().dims[0].kind = None
    });
    rejects("both named 'x'", |m, _| graph(m).values[1].name = "x".into());
    rejects("a graph output refers to value #77", |m, _| graph(m).outputs.push(77));
    rejects("a graph input refers to value #77", |m, _| graph(m).inputs.push(77));
    rejects("an input of node 'neg' refers to value #1000", |m, _| graph(m).nodes[1].inputs[0].value = Some(1000));
    rejects("an output of node 'add' refers to value #6", |m, _| graph(m).nodes[0].outputs[0] = 6);
    rejects("not in topological order", |m, _| graph(m).nodes.swap(0, 1));
    rejects("produced by both node 'add' and node 'neg'", |m, _| graph(m).nodes[1].outputs[0] = graph(m).nodes[0].outputs[0]);
    rejects("attribute 't' of node 'add' has no value", |m, _| graph(m).nodes[0].attributes[0].value = None);
    rejects("has attribute 't' twice", |m, _| {
        let a = graph(m).nodes[0].attributes[0].clone();
        graph(m).nodes[0].attributes.push(a);
    });
    rejects("tensor attribute 't' of node 'add'", |m, _| match &mut graph(m).nodes[0].attributes[0].value {
        Some(pb::attribute::Value::T(t)) => t.shape = vec![3],
        _ => unreachable!(),
    });
    rejects("imports domain '' twice", |m, _| {
        let o = graph(m).opset_imports[0].clone();
        graph(m).opset_imports.push(o);
    });
    rejects("the CPU code for 'generic' refers to section #5", |m, _| m.cpu_code[0].section = 5);
    rejects("which holds a constant, not a cpu shared object", |m, _| m.cpu_code[0].section = 0);
    rejects("PTX module 'gemm' for 'sm_90' refers to section #0 'w', which holds a constant, not a ptx", |m, _| {
        m.ptx_code[0].modules[0].section = 0
    });
    rejects("module 'gemm' is listed twice", |m, _| {
        let module = m.ptx_code[0].modules[0].clone();
        m.ptx_code[0].modules.push(module);
    });
    rejects("the GPU code for 'sm_90' is listed twice", |m, _| {
        let code = m.ptx_code[0].clone();
        m.ptx_code.push(code);
    });
    rejects("node 'qmm' uses module 'nope', which is not there", |m, _| m.ptx_code[0].gemms[0].module = "nope".into());
    rejects("node 'qmm' uses kernel 'k64', which module 'gemm' does not have", |m, _| m.ptx_code[0].gemms[1].kernel = "k64".into());
    rejects("uses kernel 'r', which module", |m, _| m.ptx_code[0].gemms[0].reduce = "r".into());
    rejects("node 'qmm': no kernel for M above 16", |m, _| m.ptx_code[0].gemms.swap(0, 1));
    rejects("node 'qmm': no kernel for M above 1000", |m, _| m.ptx_code[0].gemms[1].max_m = 1000);
    rejects("node 'qmm': M ranges out of order (16, then 8)", |m, _| {
        let mut g = m.ptx_code[0].gemms[0].clone();
        g.max_m = 8;
        m.ptx_code[0].gemms.insert(1, g);
    });
    rejects("node 'qmm' has a GEMM without its tile configuration", |m, _| m.ptx_code[0].gemms[0].tiles = None);
    rejects("node 'qmm': unknown weight format 'fp7'", |m, _| m.ptx_code[0].gemms[0].tiles.as_mut().unwrap().format = "fp7".into());
    rejects("the kernels of node 'qmm' are not listed together", |m, _| {
        let mut other = m.ptx_code[0].gemms[0].clone();
        other.node = "neg".into();
        m.ptx_code[0].gemms.insert(1, other);
    });
    rejects("GPU code names the architecture \"../..\", which is not a plain name", |m, _| m.ptx_code[0].arch = "../..".into());
    rejects("module name \"a/b\" is not a plain name", |m, _| {
        m.ptx_code[0].modules[0].name = "a/b".into();
        m.ptx_code[0].gemms.iter_mut().for_each(|g| g.module = "a/b".into());
    });
    rejects("the CPU code for 'generic': node 'qmm': M ranges out of order (0, then 0)", |m, _| m.cpu_code[0].gemms[0].max_m = 0);
    rejects("node 'qmm' splits columns at multiples of 24, not of 16", |m, _| m.cpu_code[0].gemms[0].column_split = 24);
    rejects("node 'qmm' records the kernel blocking v1 r0 p16, outside 1..=v8 r12 p32", |m, _| {
        m.cpu_code[0].gemms[1].config.as_mut().unwrap().gemm_rows = 0
    });
    rejects("node 'qmm': unknown CPU kernel variant 5", |m, _| m.cpu_code[0].gemms[1].config.as_mut().unwrap().variant = 5);
    rejects("node 'qmm' has a kernel without a symbol", |m, _| m.cpu_code[0].gemms[1].symbol.clear());
    rejects("node 'qmm': unknown activations code 7", |m, _| m.cpu_code[0].gemms[0].activations = 7);
    rejects("the CPU code for 'generic': node 'neg' is not a quantized product of the graph", |m, _| {
        m.cpu_code[0].gemms.iter_mut().for_each(|g| g.node = "neg".into())
    });
    rejects("the CPU code for 'generic' has no kernels for the quantized product 'qmm'", |m, _| m.cpu_code[0].gemms.clear());
    rejects("kernel 'g1' takes f32 activations, but node 'qmm' multiplies int8", |m, _| {
        m.cpu_code[0].gemms.iter_mut().for_each(|g| g.activations = 0);
    });
    rejects("the GPU code for 'sm_90': kernel 'k128' was tiled for fp6-e2m3 n=2 k=96, but node 'qmm' is fp6-e2m3 k=64 n=2", |m, _| {
        m.ptx_code[0].gemms[1].tiles.as_mut().unwrap().k = 96
    });
    rejects("the CPU code for 'generic' is listed twice", |m, _| {
        let code = m.cpu_code[0].clone();
        m.cpu_code.push(code);
    });
    rejects("the PTX of module 'gemm' for sm_90 is not UTF-8", |_, s| s[3] = vec![0xff, 0xfe]);
}

#[test]
fn a_quantized_product_with_invalid_attributes_is_an_ir_error_naming_it() {
    let (mut m, sections) = parts();
    let qmm = graph(&mut m).nodes.iter_mut().find(|n| n.name == "qmm").unwrap();
    let format = qmm.attributes.iter_mut().find(|a| a.name == "format").unwrap();
    format.value = Some(pb::attribute::Value::S("fp7".into()));
    match Artifact::from_bytes(assemble(m, &sections), "bad-qmm.fpx") {
        Err(e @ ArtifactError::Ir { .. }) => {
            assert!(e.to_string().contains("node 'qmm' (QuantMatMul, opset 1): unknown weight format 'fp7'"), "{e}")
        }
        other => panic!("expected an Ir error, got {other:?}"),
    }
}

#[test]
fn a_node_defining_a_graph_input_is_an_ir_error() {
    let (mut m, sections) = parts();
    // `mask` (value #2) is a constant: a node may not define it too.
    graph(&mut m).nodes[1].outputs[0] = 2;
    match Artifact::from_bytes(assemble(m, &sections), "dup.fpx") {
        Err(e @ ArtifactError::Ir { .. }) => assert!(e.to_string().contains("'mask' is defined more than once"), "{e}"),
        other => panic!("expected an Ir error, got {other:?}"),
    }
}

#[test]
fn misplaced_sections_are_rejected() {
    let good = to_bytes(&small_contents()).unwrap();
    let (mut m, _) = parts();
    m.sections[1].offset += 64;
    let manifest = m.encode_to_vec();
    let mut file = good[..12].to_vec();
    file.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    file.extend_from_slice(&manifest);
    file.extend_from_slice(&crc32fast::hash(&manifest).to_le_bytes());
    file.extend_from_slice(&good[file.len()..]);
    let err = Artifact::from_bytes(file, "moved.fpx").unwrap_err().to_string();
    assert!(err.contains("section #1 'mask' starts at byte") && err.contains("but the layout puts it at byte"), "{err}");
}
