//! What `fpx inspect` reports about a model.

use fpx_ir::{Graph, TensorType};
use serde::Serialize;
use std::collections::BTreeMap;

/// A MatMul/Gemm whose weight is a constant: the candidates for quantization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightMatmul {
    /// `MatMul` or `Gemm`.
    pub op: String,
    /// Weight shape as stored.
    pub weight_shape: Vec<usize>,
    /// Whether the weight is used transposed (Gemm `transB = 1`).
    pub transposed: bool,
    /// How many nodes have this op and weight shape.
    pub count: usize,
}

/// A named tensor and its static type, rendered as text.
#[derive(Debug, Clone, Serialize)]
pub struct IoSpec {
    /// Value name.
    pub name: String,
    /// Type like `float[batch, seq, 384]`.
    #[serde(rename = "type")]
    pub ty: String,
}

/// A summary of a model: opsets, op counts, inputs/outputs, parameters, weight matmuls.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Graph name.
    pub name: String,
    /// Opset imports (domain `""` is ONNX).
    pub opsets: BTreeMap<String, i64>,
    /// Node count per op type.
    pub op_counts: BTreeMap<String, usize>,
    /// Total nodes.
    pub nodes: usize,
    /// Graph inputs.
    pub inputs: Vec<IoSpec>,
    /// Graph outputs.
    pub outputs: Vec<IoSpec>,
    /// Elements over all constants.
    pub parameters: usize,
    /// The weights the graph holds ([`weight_storage`]): quantized ones counted as the `k × n`
    /// values they stand for.
    pub weights: usize,
    /// Bytes holding them (codes, scales, float constants).
    pub weight_bytes: usize,
    /// MatMul/Gemm nodes with a constant weight, grouped by shape.
    pub weight_matmuls: Vec<WeightMatmul>,
    /// The LoRC corrections the quantized products carry ([`lorc_storage`]), if any.
    pub lorc: Option<LorcStorage>,
}

/// The LoRC factors of a graph's quantized products.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LorcStorage {
    /// Products with factors.
    pub products: usize,
    /// The largest rank.
    pub max_rank: usize,
    /// Bytes of the factors, codes and scales (each distinct factor once).
    pub bytes: usize,
    /// How they are stored (`f16`, or a float format such as `fp8-e4m3`); `mixed` when
    /// products differ.
    pub storage: String,
}

/// The LoRC factors (inputs 5 and 6 of `fpx:QuantMatMul`, and 7, the scales of quantized ones) a
/// graph holds: `None` without any.
pub fn lorc_storage(graph: &Graph) -> Option<LorcStorage> {
    use fpx_ir::ops::quant_matmul::{is_quant_matmul, lorc_storage, LORC_SCALES_INPUT, LORC_U_INPUT, LORC_V_INPUT};
    let (mut products, mut max_rank) = (0, 0);
    let mut factors = std::collections::BTreeSet::new();
    let mut storages = std::collections::BTreeSet::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let Some(Some(u)) = node.inputs.get(LORC_U_INPUT).copied().filter(|_| is_quant_matmul(node)) else { continue };
        products += 1;
        storages.insert(lorc_storage(node).map_or("unknown", |s| s.name()));
        // The rank: U's columns ([K, r]), or the scales' ([2, r]) of quantized factors.
        let scales = node.inputs.get(LORC_SCALES_INPUT).copied().flatten();
        if let Some((_, shape)) = graph.constant_type(scales.unwrap_or(u)) {
            max_rank = max_rank.max(shape.get(1).copied().unwrap_or(0));
        }
        factors.insert(u);
        factors.extend([LORC_V_INPUT, LORC_SCALES_INPUT].iter().filter_map(|&i| node.inputs.get(i).copied().flatten()));
    }
    let bytes = factors.iter().filter_map(|&v| graph.constant_type(v)).map(|(t, s)| s.iter().product::<usize>() * t.size_bytes()).sum();
    let storage = if storages.len() == 1 { storages.first().copied().unwrap_or_default() } else { "mixed" }.to_string();
    (products > 0).then_some(LorcStorage { products, max_rank, bytes, storage })
}

/// The weights a graph holds and the bytes that hold them: each quantized weight (the packed
/// input of `fpx:QuantMatMul` and `fpx:QuantGather`, once however many nodes read it) counts
/// `k × n` weights and its bytes, its scales count bytes only, and every other float constant
/// counts its elements and bytes. `8 × bytes / weights` is the artifact's bits per weight.
pub fn weight_storage(graph: &Graph) -> (usize, usize) {
    use fpx_ir::ops::{quant_gather, quant_matmul};
    let mut quantized: BTreeMap<fpx_ir::ValueId, usize> = BTreeMap::new();
    let mut scales = std::collections::BTreeSet::new();
    for id in graph.node_ids() {
        let node = graph.node(id);
        let (packed_at, scales_at) = if quant_matmul::is_quant_matmul(node) {
            (1, 2)
        } else if quant_gather::is_quant_gather(node) {
            (0, 1)
        } else {
            continue;
        };
        let Ok(gemm) = quant_matmul::read(node) else { continue };
        if let Some(Some(p)) = node.inputs.get(packed_at) {
            quantized.insert(*p, gemm.k * gemm.n);
        }
        if let Some(Some(s)) = node.inputs.get(scales_at) {
            scales.insert(*s);
        }
        // LoRC factors count bytes only, like scales: they correct weights already counted.
        if quant_matmul::is_quant_matmul(node) {
            scales.extend(
                [quant_matmul::LORC_U_INPUT, quant_matmul::LORC_V_INPUT, quant_matmul::LORC_SCALES_INPUT]
                    .iter()
                    .filter_map(|&i| node.inputs.get(i).copied().flatten()),
            );
        }
    }
    let (mut weights, mut bytes) = (0, 0);
    for v in graph.value_ids() {
        let Some((dtype, shape)) = graph.constant_type(v) else { continue };
        let len: usize = shape.iter().product();
        let size = len * dtype.size_bytes();
        if let Some(&w) = quantized.get(&v) {
            weights += w;
            bytes += size;
        } else if scales.contains(&v) {
            bytes += size;
        } else if dtype.is_float() {
            weights += len;
            bytes += size;
        }
    }
    (weights, bytes)
}

/// The MatMul/Gemm nodes quantization will rewrite ([`fpx_passes::weight_sites`]), grouped by
/// op and weight shape (none for a graph with a cycle, which nothing can run).
pub fn weight_matmuls(graph: &Graph) -> Vec<WeightMatmul> {
    let mut groups: BTreeMap<(String, Vec<usize>, bool), usize> = BTreeMap::new();
    for site in fpx_passes::weight_sites(graph).unwrap_or_default() {
        let shape = graph.constant_type(site.weight).map(|(_, s)| s.to_vec()).unwrap_or_default();
        *groups.entry((graph.node(site.node).op_type.clone(), shape, site.transposed)).or_insert(0) += 1;
    }
    groups.into_iter().map(|((op, weight_shape, transposed), count)| WeightMatmul { op, weight_shape, transposed, count }).collect()
}

fn type_text(ty: &Option<TensorType>) -> String {
    ty.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

impl ModelSummary {
    /// Summarizes a graph.
    pub fn of(graph: &Graph) -> ModelSummary {
        let mut op_counts = BTreeMap::new();
        for id in graph.node_ids() {
            *op_counts.entry(graph.node(id).op_type.clone()).or_insert(0) += 1;
        }
        let io = |ids: &[fpx_ir::ValueId]| {
            ids.iter().map(|&v| IoSpec { name: graph.value(v).name.clone(), ty: type_text(&graph.value(v).ty) }).collect()
        };
        let (weights, weight_bytes) = weight_storage(graph);
        ModelSummary {
            name: graph.name.clone(),
            opsets: graph.opsets.clone(),
            op_counts,
            nodes: graph.node_count(),
            inputs: io(&graph.inputs),
            outputs: io(&graph.outputs),
            parameters: graph.parameter_count(),
            weights,
            weight_bytes,
            weight_matmuls: weight_matmuls(graph),
            lorc: lorc_storage(graph),
        }
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model: {}", if self.name.is_empty() { "(unnamed)" } else { &self.name });
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{}={v}", if d.is_empty() { "ai.onnx" } else { d })).collect();
        let _ = writeln!(s, "opsets: {}", opsets.join(", "));
        let _ = writeln!(s, "inputs:");
        for i in &self.inputs {
            let _ = writeln!(s, "  {}: {}", i.name, i.ty);
        }
        let _ = writeln!(s, "outputs:");
        for o in &self.outputs {
            let _ = writeln!(s, "  {}: {}", o.name, o.ty);
        }
        let _ = writeln!(s, "parameters: {} ({:.2} MB as f32)", self.parameters, self.parameters as f64 * 4.0 / 1e6);
        if self.weights > 0 {
            let _ = writeln!(
                s,
                "weights: {} in {:.2} MB: {:.2} bits per weight",
                self.weights,
                self.weight_bytes as f64 / 1e6,
                8.0 * self.weight_bytes as f64 / self.weights as f64
            );
        }
        if let Some(l) = &self.lorc {
            let _ = writeln!(
                s,
                "LoRC: {} products corrected at rank {} by {} factors: {:.3} MB added ({:.2}% of the weight bytes)",
                l.products,
                l.max_rank,
                l.storage,
                l.bytes as f64 / 1e6,
                100.0 * l.bytes as f64 / self.weight_bytes.max(1) as f64
            );
        }
        let _ = writeln!(s, "nodes: {}", self.nodes);
        let mut ops: Vec<_> = self.op_counts.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            let _ = writeln!(s, "  {op:<24} {n}");
        }
        let total: usize = self.weight_matmuls.iter().map(|w| w.count).sum();
        let _ = writeln!(s, "matmuls with a constant weight: {total}");
        for w in &self.weight_matmuls {
            let _ = writeln!(s, "  {} x {} W{:?}{}", w.count, w.op, w.weight_shape, if w.transposed { " (transB)" } else { "" });
        }
        s
    }
}

/// One section of an artifact, for `fpx inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct SectionSpec {
    /// Section name (a constant's value name, or `cpu:<target>`).
    pub name: String,
    /// `constant`, `cpu shared object`, `ptx`, ...
    pub kind: String,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub bytes: u64,
    /// CRC-32 of the contents.
    pub crc32: u32,
}

/// The CPU code of an artifact, for `fpx inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct CpuCodeSpec {
    /// The CPU the code was compiled for.
    pub target: String,
    /// Features it requires.
    pub features: Vec<String>,
    /// Size of the shared object.
    pub shared_object_bytes: usize,
    /// Whether this machine can run it.
    pub runs_here: bool,
    /// Whether the loader picks it here: the first entry this machine can run (the compiler
    /// lists the fastest level first).
    pub picked_here: bool,
    /// Per node and range of M, the kernel that runs.
    pub kernels: Vec<CpuKernelSpec>,
}

/// The CPU kernel one node calls for a range of M.
#[derive(Debug, Clone, Serialize)]
pub struct CpuKernelSpec {
    /// The node.
    pub node: String,
    /// Largest M it serves (0 = any larger M).
    pub max_m: u64,
    /// The exported symbol.
    pub symbol: String,
    /// Threads split N at multiples of this.
    pub column_split: u32,
    /// `f32` or `int8`.
    pub activations: String,
    /// What the node fuses after its product (`none`, or e.g. `silu-gated + residual`).
    pub epilogue: String,
    /// The loop and blocking (`gemv v2 r3 p8`), or `unrecorded` (artifacts written before
    /// fpx recorded them).
    pub config: String,
    /// Most threads N is split across (0 = all).
    pub threads: u32,
    /// Whether the auto-tuner chose this kernel (else fpx's heuristic did).
    pub tuned: bool,
}

/// The GPU GEMM one node launches for a range of M.
#[derive(Debug, Clone, Serialize)]
pub struct GpuKernelSpec {
    /// The node.
    pub node: String,
    /// Largest M it serves (0 = any larger M).
    pub max_m: u64,
    /// The GEMM entry point.
    pub kernel: String,
    /// The tile configuration (`key=value` words).
    pub config: String,
    /// Chosen by the auto-tuner (`fpx tune --device cuda`), else by fpx's heuristic.
    pub tuned: bool,
}

/// The fused epilogue of the quantized product named `node` (`none` when there is none, or
/// the node is missing or malformed: the reader has checked the graph already).
fn epilogue_of(graph: &Graph, node: &str) -> String {
    let found = graph.node_ids().into_iter().map(|id| graph.node(id)).find(|n| n.name == node);
    found
        .and_then(|n| {
            let gemm = fpx_ir::ops::quant_matmul::read(n).ok()?;
            fpx_ir::ops::quant_matmul::epilogue(n, &gemm).ok()
        })
        .map_or_else(|| "none".to_string(), |e| e.to_string())
}

/// Consecutive rows of the same node, grouped (tables are stored node by node).
fn by_node<T>(rows: &[T], node: impl Fn(&T) -> &String) -> Vec<Vec<&T>> {
    let mut out: Vec<Vec<&T>> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(group) if node(group[0]) == node(r) => group.push(r),
            _ => out.push(vec![r]),
        }
    }
    out
}

/// `M <= 8`, or `larger M` for the unbounded row.
fn m_range(max_m: u64) -> String {
    if max_m == 0 {
        "larger M".to_string()
    } else {
        format!("M <= {max_m}")
    }
}

/// The GPU code of an artifact for one architecture, for `fpx inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct PtxCodeSpec {
    /// The architecture, e.g. `sm_90`.
    pub arch: String,
    /// The SM count the tile configs were planned for.
    pub sm_count: u32,
    /// (module name, PTX bytes, entry points).
    pub modules: Vec<(String, usize, Vec<String>)>,
    /// Per node and range of M, the GEMM that runs.
    pub gemms: Vec<GpuKernelSpec>,
}

/// A summary of an `.fpx` artifact: manifest, sections, kernels, targets.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSummary {
    /// Format version of the file.
    pub format_version: u32,
    /// The fpx that wrote it.
    pub producer: String,
    /// File size.
    pub file_bytes: u64,
    /// Build metadata (weight scheme, source model, ...).
    pub metadata: BTreeMap<String, String>,
    /// The graph, summarized like an ONNX model.
    pub graph: ModelSummary,
    /// Every section.
    pub sections: Vec<SectionSpec>,
    /// CPU code per target.
    pub cpu: Vec<CpuCodeSpec>,
    /// GPU code per architecture.
    pub gpu: Vec<PtxCodeSpec>,
}

impl ArtifactSummary {
    /// Summarizes an opened artifact and its rebuilt graph.
    pub fn of(a: &fpx_artifact::Artifact, graph: &Graph) -> ArtifactSummary {
        ArtifactSummary {
            format_version: a.format_version(),
            producer: a.producer().to_string(),
            file_bytes: a.file_bytes(),
            metadata: a.metadata().clone(),
            graph: ModelSummary::of(graph),
            sections: a
                .sections()
                .into_iter()
                .map(|s| SectionSpec { name: s.name, kind: s.kind.to_string(), offset: s.offset, bytes: s.length, crc32: s.checksum })
                .collect(),
            cpu: a
                .cpu_code()
                .into_iter()
                .scan(false, |picked, c| {
                    let runs_here = fpx_artifact::missing_cpu_features(c.features).is_empty();
                    let picked_here = runs_here && !*picked;
                    *picked |= runs_here;
                    Some((c, runs_here, picked_here))
                })
                .map(|(c, runs_here, picked_here)| CpuCodeSpec {
                    target: c.target.to_string(),
                    features: c.features.to_vec(),
                    shared_object_bytes: c.shared_object.len(),
                    runs_here,
                    picked_here,
                    kernels: c
                        .kernels
                        .iter()
                        .flat_map(|k| {
                            k.table.rows().iter().map(|(max_m, e)| CpuKernelSpec {
                                node: k.node.clone(),
                                max_m: *max_m,
                                symbol: e.symbol.clone(),
                                column_split: e.column_split,
                                activations: e.activations.to_string(),
                                epilogue: epilogue_of(graph, &k.node),
                                config: e.config.map_or_else(|| "unrecorded".to_string(), |c| format!("{} {}", c.variant, c.tiling)),
                                threads: e.threads,
                                tuned: e.config.is_some_and(|c| c.tuned),
                            })
                        })
                        .collect(),
                })
                .collect(),
            gpu: a
                .ptx_code()
                .into_iter()
                .map(|p| PtxCodeSpec {
                    arch: p.arch.to_string(),
                    sm_count: p.sm_count,
                    modules: p.modules.iter().map(|m| (m.name.to_string(), m.ptx.len(), m.entries.to_vec())).collect(),
                    gemms: p
                        .kernels
                        .iter()
                        .flat_map(|k| {
                            k.table.rows().iter().map(|(max_m, g)| GpuKernelSpec {
                                node: k.node.clone(),
                                max_m: *max_m,
                                kernel: g.kernel.clone(),
                                config: fpx_cuda::GemmConfig::try_from(&g.tiles)
                                    .map_or_else(|e| format!("invalid: {e}"), |c| c.to_string()),
                                tuned: g.tuned,
                            })
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "artifact: format version {}, written by {}, {:.2} MB",
            self.format_version,
            self.producer,
            self.file_bytes as f64 / 1e6
        );
        for (k, v) in &self.metadata {
            let _ = writeln!(s, "  {k}: {v}");
        }
        let _ = writeln!(s, "sections: {}", self.sections.len());
        let mut by_kind: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
        for sec in &self.sections {
            let e = by_kind.entry(&sec.kind).or_default();
            e.0 += 1;
            e.1 += sec.bytes;
        }
        for (kind, (n, b)) in by_kind {
            let _ = writeln!(s, "  {n:>5} x {kind:<18} {:>10.3} MB", b as f64 / 1e6);
        }
        let mut largest: Vec<&SectionSpec> = self.sections.iter().collect();
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.offset.cmp(&b.offset)));
        let _ = writeln!(s, "  largest:");
        for sec in largest.iter().take(5) {
            let _ =
                writeln!(s, "    {:<56} {:<18} {:>10} bytes @ {:>10}  crc32 {:08x}", sec.name, sec.kind, sec.bytes, sec.offset, sec.crc32);
        }
        for c in &self.cpu {
            let _ = writeln!(
                s,
                "cpu code: {} [{}], {:.1} KB, {} kernel choices, {}",
                c.target,
                c.features.join(","),
                c.shared_object_bytes as f64 / 1e3,
                c.kernels.len(),
                match (c.picked_here, c.runs_here) {
                    (true, _) => "runs on this machine (the loader picks it)",
                    (false, true) => "runnable on this machine, but an earlier (faster) level is picked",
                    (false, false) => "NOT runnable on this machine (missing CPU features)",
                }
            );
            let nodes = by_node(&c.kernels, |k| &k.node);
            let tuned = nodes.iter().filter(|rows| rows.iter().any(|k| k.tuned)).count();
            if tuned > 0 {
                let _ = writeln!(s, "  {tuned} of {} products use tuned kernels (fpx tune)", nodes.len());
            }
            for rows in nodes.iter().take(8) {
                let k = rows[0];
                let _ = writeln!(
                    s,
                    "  {}: [{} activations, columns split at {}, epilogue {}]",
                    k.node, k.activations, k.column_split, k.epilogue
                );
                let mut lower = 1;
                for k in rows {
                    let threads = match k.threads {
                        0 => "all threads".to_string(),
                        1 => "1 thread".to_string(),
                        t => format!("{t} threads"),
                    };
                    let range = if k.max_m == 0 { format!("M >= {lower}") } else { format!("M {lower}..={}", k.max_m) };
                    let _ = writeln!(
                        s,
                        "    {range:<14} {:<16} {threads:<12} {:<9} {}",
                        k.config,
                        if k.tuned { "tuned" } else { "heuristic" },
                        k.symbol
                    );
                    lower = k.max_m + 1;
                }
            }
            if nodes.len() > 8 {
                let _ = writeln!(s, "  ... {} more products", nodes.len() - 8);
            }
        }
        for p in &self.gpu {
            let bytes: usize = p.modules.iter().map(|m| m.1).sum();
            let _ = writeln!(
                s,
                "gpu code: {} (tiles for {} SMs), {} PTX modules, {:.1} KB, {} GEMM choices (`--dump-ptx DIR` writes the PTX)",
                p.arch,
                p.sm_count,
                p.modules.len(),
                bytes as f64 / 1e3,
                p.gemms.len()
            );
            let nodes = by_node(&p.gemms, |g| &g.node);
            let tuned = nodes.iter().filter(|rows| rows.iter().any(|g| g.tuned)).count();
            if tuned > 0 {
                let _ = writeln!(s, "  {tuned} of {} products use tuned tile configs (fpx tune --device cuda)", nodes.len());
            }
            for rows in nodes.iter().take(4) {
                let _ = writeln!(s, "  {}:", rows[0].node);
                for g in rows {
                    let how = if g.tuned { "tuned" } else { "heuristic" };
                    let _ = writeln!(s, "    {}: {} [{}] ({how})", m_range(g.max_m), g.kernel, g.config);
                }
            }
            if nodes.len() > 4 {
                let _ = writeln!(s, "  ... {} more products", nodes.len() - 4);
            }
        }
        let _ = writeln!(s, "--- graph ---");
        s.push_str(&self.graph.to_text());
        s
    }
}
