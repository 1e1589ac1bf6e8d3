//! Writing an artifact: lay out the manifest and sections, stream them to a temporary file,
//! fsync, rename over the destination.

use crate::data::{dtype_code, stream_tensor, tensor_bytes};
use crate::decode::{build_graph, Constants};
use crate::format::{align_up, cpu_rows, gpu_rows, producer, FORMAT_VERSION, HEADER_LEN, MAGIC, SECTION_ALIGN};
use crate::manifest as pb;
use crate::validate::{check_code, check_tables};
use crate::{ArtifactContents, ArtifactError, SectionInfo, WriteSummary};
use fpx_ir::stored::StreamError;
use fpx_ir::{Attribute, Dim, Graph, NodeId, StoredTensor, Tensor, TensorType, ValueId};
use prost::Message;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a section's bytes come from.
enum Source<'a> {
    Tensor(&'a Tensor),
    /// A constant kept in a file (external data, the compile's spill file): read chunk by chunk.
    Stored(&'a StoredTensor),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    /// Hands the section's bytes to `sink`; a stored constant that cannot be read is an error.
    fn stream(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match self {
            Source::Tensor(t) => stream_tensor(t, sink),
            Source::Stored(s) => s.stream(sink).map_err(|e| match e {
                StreamError::Read(message) => io::Error::other(message),
                StreamError::Sink(e) => e,
            }),
            Source::Bytes(b) => sink(b),
        }
    }
}

/// A laid-out artifact, ready to be streamed: the final manifest and the sources of its sections.
struct Plan<'a> {
    manifest: Vec<u8>,
    sections: Vec<(u64, Source<'a>)>,
    total: u64,
}

/// Builds the artifact's bytes in memory (the same bytes [`write`] puts in a file).
pub fn to_bytes(contents: &ArtifactContents) -> Result<Vec<u8>, ArtifactError> {
    let what = "<in-memory artifact>";
    let plan = plan(contents, what)?;
    let mut out = Vec::with_capacity(usize::try_from(plan.total).unwrap_or(0));
    plan.emit(&mut out).map_err(|e| ArtifactError::Graph { what: what.into(), message: e.to_string() })?;
    Ok(out)
}

/// Writes the artifact to `path` atomically: the bytes go to a new temporary file in the same
/// folder, which is flushed to disk and then renamed over `path`. On any error the temporary
/// file is removed and `path` is left as it was. The same contents always give the same bytes.
/// Memory use stays small whatever the size of the constants: they are streamed (twice: once
/// for the checksums, once to the file; spilled constants, whose checksums are known, once).
pub fn write(path: &Path, contents: &ArtifactContents) -> Result<WriteSummary, ArtifactError> {
    let what = path.display().to_string();
    let plan = plan(contents, &what)?;
    let Some(file_name) = path.file_name() else {
        return Err(ArtifactError::io("write", path, io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp, file) = create_temp(&dir, &file_name.to_string_lossy())?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        plan.emit(&mut w).map_err(|e| ArtifactError::io("write", &tmp, e))?;
        w.flush().map_err(|e| ArtifactError::io("write", &tmp, e))?;
        drop(w);
        file.sync_all().map_err(|e| ArtifactError::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ArtifactError::io(format!("move the finished temporary file '{}' to", tmp.display()), path, e))
    })();
    drop(file);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename durable; not every platform lets a folder be opened and synced.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(WriteSummary { bytes: plan.total, sections: plan.sections.len() })
}

/// Creates a temporary file with a fresh name next to the destination.
fn create_temp(dir: &Path, file_name: &str) -> Result<(PathBuf, File), ArtifactError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}.{}-{n}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // Left over from an earlier process with the same id: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 1000 => continue,
            Err(e) => return Err(ArtifactError::io(format!("create a temporary file for '{file_name}' in"), dir, e)),
        }
    }
}

impl Plan<'_> {
    /// Streams header, manifest, manifest checksum and the sections (with zero padding) to `w`.
    fn emit(&self, w: &mut dyn Write) -> io::Result<()> {
        let manifest_len = u32::try_from(self.manifest.len()).map_err(io::Error::other)?;
        w.write_all(&MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_le_bytes())?;
        w.write_all(&manifest_len.to_le_bytes())?;
        w.write_all(&self.manifest)?;
        w.write_all(&crc32fast::hash(&self.manifest).to_le_bytes())?;
        let mut pos = HEADER_LEN + self.manifest.len() as u64 + 4;
        let zeros = [0u8; SECTION_ALIGN as usize];
        for (offset, source) in &self.sections {
            let pad =
                offset.checked_sub(pos).filter(|p| *p < SECTION_ALIGN).ok_or_else(|| io::Error::other("section layout is inconsistent"))?;
            w.write_all(&zeros[..pad as usize])?;
            pos = *offset;
            source.stream(&mut |b: &[u8]| {
                pos += b.len() as u64;
                w.write_all(b)
            })?;
        }
        if pos != self.total {
            return Err(io::Error::other(format!("wrote {pos} bytes where the layout says {}", self.total)));
        }
        Ok(())
    }
}

/// Sets every section's offset (each at the first aligned position after what precedes it)
/// and returns the encoded manifest and the file's total length. The offsets change the
/// manifest's encoded length, which moves the sections; this repeats until it settles (it
/// always does: lengths only grow, and each offset's encoding is at most 10 bytes).
pub(crate) fn layout(manifest: &mut pb::Manifest, what: &str) -> Result<(Vec<u8>, u64), ArtifactError> {
    let too_big = || ArtifactError::Graph { what: what.to_string(), message: "the artifact would be larger than 2^64 bytes".into() };
    let data_start_for = |m: &pb::Manifest| align_up(HEADER_LEN + m.encoded_len() as u64 + 4);
    let mut start = data_start_for(manifest).ok_or_else(too_big)?;
    let total = loop {
        let mut pos = start;
        for s in &mut manifest.sections {
            s.offset = align_up(pos).ok_or_else(too_big)?;
            pos = s.offset.checked_add(s.length).ok_or_else(too_big)?;
        }
        let need = data_start_for(manifest).ok_or_else(too_big)?;
        if need == start {
            break if manifest.sections.is_empty() { HEADER_LEN + manifest.encoded_len() as u64 + 4 } else { pos };
        }
        start = need;
    };
    let bytes = manifest.encode_to_vec();
    if u32::try_from(bytes.len()).is_err() {
        return Err(ArtifactError::Graph {
            what: what.to_string(),
            message: format!("the manifest is {} bytes, more than the format's limit of 4 GiB", bytes.len()),
        });
    }
    Ok((bytes, total))
}

/// Assembles a file from a manifest and the bytes of its sections (layout and checksums are
/// recomputed). For tests that need a file with a deliberately inconsistent manifest.
#[cfg(test)]
pub(crate) fn assemble(mut manifest: pb::Manifest, sections: &[Vec<u8>]) -> Vec<u8> {
    for (s, b) in manifest.sections.iter_mut().zip(sections) {
        s.length = b.len() as u64;
        s.crc32 = crc32fast::hash(b);
    }
    let (bytes, total) = layout(&mut manifest, "test").unwrap();
    let offsets: Vec<u64> = manifest.sections.iter().map(|s| s.offset).collect();
    let plan = Plan { manifest: bytes, sections: offsets.into_iter().zip(sections.iter().map(|b| Source::Bytes(b))).collect(), total };
    let mut out = Vec::new();
    plan.emit(&mut out).unwrap();
    out
}

/// Turns the contents into a laid-out plan; fails (before anything touches the disk) when the
/// graph cannot be stored.
fn plan<'a>(contents: &'a ArtifactContents, what: &str) -> Result<Plan<'a>, ArtifactError> {
    let bad = |message: String| ArtifactError::Graph { what: what.to_string(), message };
    let g = &contents.graph;
    let n_values = g.value_ids().count();
    let index = |id: ValueId, role: &str| -> Result<u32, ArtifactError> {
        if (id.0 as usize) < n_values {
            Ok(id.0)
        } else {
            Err(bad(format!("{role} refers to value id {}, but the graph has only {n_values} values", id.0)))
        }
    };
    let mut sections = Vec::new();
    let mut sources = Vec::new();
    let mut add_section = |name: String, kind: pb::SectionKind, length: u64, source: Source<'a>| -> Result<u32, ArtifactError> {
        let i = u32::try_from(sections.len()).map_err(|_| bad("more than 2^32 sections".into()))?;
        sections.push(pb::Section { name, kind: kind as i32, offset: 0, length, crc32: 0 });
        sources.push(source);
        Ok(i)
    };

    let mut values = Vec::with_capacity(n_values);
    for id in g.value_ids() {
        let v = g.value(id);
        let data = match (&v.constant, &v.stored) {
            (Some(t), _) => Some((t.dtype(), t.shape(), t.len(), Source::Tensor(t))),
            (None, Some(s)) => Some((s.dtype(), s.shape(), s.len(), Source::Stored(s))),
            (None, None) => None,
        };
        let constant = match data {
            None => None,
            Some((dtype, shape, len, source)) => {
                let length = (len as u64)
                    .checked_mul(dtype.size_bytes() as u64)
                    .ok_or_else(|| bad(format!("constant '{}' is too large", v.name)))?;
                let section = add_section(v.name.clone(), pb::SectionKind::Constant, length, source)?;
                Some(pb::Constant { section, dtype: dtype_code(dtype), shape: shape.iter().map(|&d| d as u64).collect() })
            }
        };
        values.push(pb::Value { name: v.name.clone(), r#type: v.ty.as_ref().map(type_to_pb), constant });
    }

    let mut nodes = Vec::with_capacity(g.node_count());
    for id in topo_order(g, n_values).map_err(bad)? {
        let n = g.node(id);
        let role = format!("node '{}'", n.name);
        let inputs = n
            .inputs
            .iter()
            .map(|i| Ok(pb::NodeInput { value: i.map(|v| index(v, &role)).transpose()? }))
            .collect::<Result<_, ArtifactError>>()?;
        let outputs = n.outputs.iter().map(|&v| index(v, &role)).collect::<Result<_, _>>()?;
        let attributes = n.attrs.iter().map(|(k, a)| pb::Attribute { name: k.clone(), value: Some(attr_to_pb(a)) }).collect();
        nodes.push(pb::Node {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            opset: n.opset,
            attributes,
            inputs,
            outputs,
        });
    }
    let inputs = g.inputs.iter().map(|&v| index(v, "a graph input")).collect::<Result<_, _>>()?;
    let outputs = g.outputs.iter().map(|&v| index(v, "a graph output")).collect::<Result<_, _>>()?;
    let opset_imports = g.opsets.iter().map(|(d, &v)| pb::OpsetImport { domain: d.clone(), version: v }).collect();

    let mut cpu_code = Vec::with_capacity(contents.cpu.len());
    for c in &contents.cpu {
        let section = add_section(
            format!("cpu:{}", c.target),
            pb::SectionKind::CpuSharedObject,
            c.shared_object.len() as u64,
            Source::Bytes(&c.shared_object),
        )?;
        cpu_code.push(pb::CpuCode { target: c.target.clone(), features: c.features.clone(), section, gemms: cpu_rows(&c.kernels) });
    }

    let mut ptx_code = Vec::with_capacity(contents.ptx.len());
    for p in &contents.ptx {
        let mut modules = Vec::with_capacity(p.modules.len());
        for m in &p.modules {
            let section = add_section(
                format!("ptx:{}:{}", p.arch, m.name),
                pb::SectionKind::Ptx,
                m.ptx.len() as u64,
                Source::Bytes(m.ptx.as_bytes()),
            )?;
            modules.push(pb::PtxModule { name: m.name.clone(), section, entries: m.entries.clone() });
        }
        ptx_code.push(pb::PtxCode { arch: p.arch.clone(), sm_count: p.sm_count, modules, gemms: gpu_rows(&p.kernels) });
    }

    for (s, src) in sections.iter_mut().zip(&sources) {
        // A spilled constant's checksum was taken as it was written: no second read.
        if let Source::Stored(t) = src {
            if let Some(crc) = t.loaded_crc32() {
                s.crc32 = crc;
                continue;
            }
        }
        let mut h = crc32fast::Hasher::new();
        src.stream(&mut |b| {
            h.update(b);
            Ok(())
        })
        .map_err(|e| bad(format!("section '{}' cannot be read: {e}", s.name)))?;
        s.crc32 = h.finalize();
    }

    let mut manifest = pb::Manifest {
        producer: producer(),
        graph: Some(pb::Graph { name: g.name.clone(), opset_imports, values, nodes, inputs, outputs }),
        sections,
        cpu_code,
        ptx_code,
        metadata: contents.metadata.clone(),
    };
    let (bytes, total) = layout(&mut manifest, what)?;
    check_reads_back(&manifest, what)?;
    let sections = manifest.sections.iter().map(|s| s.offset).zip(sources).collect();
    Ok(Plan { manifest: bytes, sections, total })
}

/// Runs the reader's checks on the manifest (all but the data's), so that whatever is written
/// can be read: a graph whose `inputs` list a value that a node also produces, say, is refused
/// here rather than by the reader.
fn check_reads_back(m: &pb::Manifest, what: &str) -> Result<(), ArtifactError> {
    let refuse = |message: String| ArtifactError::Graph { what: what.to_string(), message: format!("it would not read back: {message}") };
    let sections: Vec<SectionInfo> = m.sections.iter().map(SectionInfo::from_pb).collect();
    let checked = check_code(what, m, &sections)
        .and_then(|(cpu, ptx)| build_graph(what, m, &sections, Constants::Skip).map(|g| (g, cpu, ptx)))
        .and_then(|(g, cpu, ptx)| check_tables(what, &g, &cpu, &ptx));
    checked.map_err(|e| match e {
        ArtifactError::Corrupt { message, .. } => refuse(message),
        ArtifactError::Ir { source, .. } => refuse(source.to_string()),
        other => other,
    })
}

/// Nodes in topological order, ties broken by node index: a graph whose nodes were added in
/// topological order (as [`crate::Artifact::graph`] rebuilds them) keeps its order, so
/// write → read → write gives the same bytes.
fn topo_order(g: &Graph, n_values: usize) -> Result<Vec<NodeId>, String> {
    let ids = g.node_ids();
    let slots = ids.iter().map(|id| id.index() + 1).max().unwrap_or(0);
    let mut indegree = vec![0usize; slots];
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); slots];
    let mut present = vec![false; slots];
    for &id in &ids {
        present[id.index()] = true;
    }
    for &id in &ids {
        for v in g.node(id).inputs.iter().flatten() {
            if (v.0 as usize) >= n_values {
                continue; // reported as an out-of-range value by the caller
            }
            if let Some((p, _)) = g.value(*v).producer {
                if p.index() < slots && present[p.index()] {
                    indegree[id.index()] += 1;
                    successors[p.index()].push(id.index());
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = ids.iter().map(|id| id.index()).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(ids.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(NodeId::new(i));
        for &s in &successors[i] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.push(Reverse(s));
            }
        }
    }
    if order.len() != ids.len() {
        let stuck = ids.iter().find(|id| indegree[id.index()] > 0).map(|&id| g.node(id).describe()).unwrap_or_default();
        return Err(format!("the graph has a cycle: node {stuck} is on it or depends on it"));
    }
    Ok(order)
}

fn type_to_pb(t: &TensorType) -> pb::TensorType {
    pb::TensorType {
        dtype: dtype_code(t.dtype),
        shape: t.shape.as_ref().map(|dims| pb::Shape {
            dims: dims
                .iter()
                .map(|d| pb::Dim {
                    kind: Some(match d {
                        Dim::Fixed(n) => pb::dim::Kind::Fixed(*n as u64),
                        Dim::Sym(s) => pb::dim::Kind::Symbolic(s.clone()),
                        Dim::Unknown => pb::dim::Kind::Unknown(true),
                    }),
                })
                .collect(),
        }),
    }
}

fn attr_to_pb(a: &Attribute) -> pb::attribute::Value {
    use pb::attribute::Value as V;
    match a {
        Attribute::Float(x) => V::F(*x),
        Attribute::Int(x) => V::I(*x),
        Attribute::String(s) => V::S(s.clone()),
        Attribute::Tensor(t) => V::T(pb::TensorData {
            dtype: dtype_code(t.dtype()),
            shape: t.shape().iter().map(|&d| d as u64).collect(),
            data: tensor_bytes(t),
        }),
        Attribute::Floats(v) => V::Floats(pb::Floats { values: v.clone() }),
        Attribute::Ints(v) => V::Ints(pb::Ints { values: v.clone() }),
        Attribute::Strings(v) => V::Strings(pb::Strings { values: v.clone() }),
    }
}
