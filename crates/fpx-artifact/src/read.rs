//! Reading an artifact: map the file, check everything, rebuild the graph on demand.

use crate::data::{checked_shape, dtype_from_code, tensor_from_bytes};
use crate::manifest as pb;
use crate::write::align_up;
use crate::{ArtifactError, GpuGemmEntry, KernelEntry, FORMAT_VERSION, HEADER_LEN, MAGIC};
use fpx_ir::{Attribute, DType, Dim, Graph, Node, Tensor, TensorType, ValueId};
use memmap2::Mmap;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// The data of one constant value (raw little-endian elements).
    Constant,
    /// A CPU shared object.
    CpuSharedObject,
    /// PTX for one GPU architecture.
    Ptx,
    /// Anything else.
    Other,
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SectionKind::Constant => "constant",
            SectionKind::CpuSharedObject => "cpu shared object",
            SectionKind::Ptx => "ptx",
            SectionKind::Other => "other",
        })
    }
}

/// One entry of the section table, as `fpx inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// A name for people: the constant's value name, or `cpu:<target>`.
    pub name: String,
    /// What the section holds.
    pub kind: SectionKind,
    /// Byte offset from the start of the file (a multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of the section's bytes.
    pub checksum: u32,
}

/// Native CPU code of one target, borrowed from the artifact.
#[derive(Debug, Clone, Copy)]
pub struct CpuCodeRef<'a> {
    /// The CPU the code was generated for.
    pub target: &'a str,
    /// CPU features the code requires.
    pub features: &'a [String],
    /// The shared object's bytes (in the file's mapping).
    pub shared_object: &'a [u8],
    /// Which exported symbols implement which node.
    pub kernels: &'a [KernelEntry],
}

/// GPU code of one architecture, borrowed from the artifact.
#[derive(Debug, Clone)]
pub struct PtxCodeRef<'a> {
    /// The architecture, e.g. `sm_90`.
    pub arch: &'a str,
    /// The SM count the tile heuristic assumed.
    pub sm_count: u32,
    /// The PTX modules.
    pub modules: Vec<PtxModuleRef<'a>>,
    /// Per node, the GEMM kernel for each range of M (ascending `max_m`, the last 0 = any).
    pub gemms: &'a [GpuGemmEntry],
}

/// One PTX module, borrowed from the artifact.
#[derive(Debug, Clone, Copy)]
pub struct PtxModuleRef<'a> {
    /// Its name.
    pub name: &'a str,
    /// The PTX text (checked to be UTF-8 when the file was opened).
    pub ptx: &'a str,
    /// Its kernel entry points.
    pub entries: &'a [String],
}

/// The bytes of an artifact: a read-only memory map of the file, or a buffer.
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A checked CPU code entry.
pub(crate) struct CpuEntry {
    target: String,
    features: Vec<String>,
    section: usize,
    kernels: Vec<KernelEntry>,
}

/// A checked PTX module entry.
pub(crate) struct PtxModuleEntry {
    name: String,
    section: usize,
    entries: Vec<String>,
}

/// A checked GPU code entry.
pub(crate) struct PtxEntry {
    arch: String,
    sm_count: u32,
    modules: Vec<PtxModuleEntry>,
    gemms: Vec<GpuGemmEntry>,
}

/// An opened artifact: the file's bytes (memory-mapped) and its decoded, fully checked manifest.
///
/// Opening checks the header, the format version, the manifest's checksum and contents (every
/// index, element type and shape), and the bounds and checksum of every section, so the
/// accessors cannot fail on a damaged file except where they say so.
///
/// The mapping assumes nobody changes the file while it is open (as with any mmap'ed file).
/// An artifact contains native code: open only artifacts you trust.
pub struct Artifact {
    what: String,
    bytes: Bytes,
    version: u32,
    manifest: pb::Manifest,
    sections: Vec<SectionInfo>,
    cpu: Vec<CpuEntry>,
    ptx: Vec<PtxEntry>,
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("file", &self.what)
            .field("format_version", &self.version)
            .field("producer", &self.manifest.producer)
            .field("bytes", &self.file_bytes())
            .field("sections", &self.sections.len())
            .finish()
    }
}

impl Artifact {
    /// Opens (memory-maps) and checks the artifact at `path`.
    pub fn open(path: &Path) -> Result<Artifact, ArtifactError> {
        let file = File::open(path).map_err(|e| ArtifactError::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| ArtifactError::io("read", path, e))?;
        if meta.is_dir() {
            return Err(ArtifactError::io(
                "open",
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is a folder, not a file"),
            ));
        }
        let len = meta.len();
        let bytes = if len < 4096 {
            // Tiny (so surely damaged or foreign) files are read: mapping an empty file fails on some systems.
            Bytes::Owned(std::fs::read(path).map_err(|e| ArtifactError::io("read", path, e))?)
        } else {
            // SAFETY: the map is read-only; like every user of mmap we rely on nobody truncating
            // or rewriting the file while it is mapped (writers replace artifacts by rename).
            Bytes::Mapped(unsafe { Mmap::map(&file) }.map_err(|e| ArtifactError::io("memory-map", path, e))?)
        };
        Artifact::parse(path.display().to_string(), bytes)
    }

    /// Checks an artifact held in memory; `name` stands for the file in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Artifact, ArtifactError> {
        Artifact::parse(name.to_string(), Bytes::Owned(bytes))
    }

    fn parse(what: String, bytes: Bytes) -> Result<Artifact, ArtifactError> {
        let (version, manifest, sections) = parse_layout(&what, bytes.as_slice())?;
        let (cpu, ptx) = check_code(&what, &manifest, &sections)?;
        for p in &ptx {
            for m in &p.modules {
                let text = slice(bytes.as_slice(), &sections[m.section]).unwrap_or_default();
                if let Err(e) = std::str::from_utf8(text) {
                    let message = format!("the PTX of module '{}' for {} is not UTF-8 text ({e})", m.name, p.arch);
                    return Err(ArtifactError::corrupt(&what, message));
                }
            }
        }
        // Build the graph once without copying constants: every check `graph` makes happens now.
        build_graph(&what, &manifest, &sections, Constants::Check(bytes.as_slice()))?;
        Ok(Artifact { what, bytes, version, manifest, sections, cpu, ptx })
    }

    /// Rebuilds the graph; constants are copied out of the file into tensors.
    pub fn graph(&self) -> Result<Graph, ArtifactError> {
        build_graph(&self.what, &self.manifest, &self.sections, Constants::Load(self.bytes.as_slice()))
    }

    /// The native CPU code entries, in file order.
    pub fn cpu_code(&self) -> Vec<CpuCodeRef<'_>> {
        self.cpu
            .iter()
            .map(|c| CpuCodeRef {
                target: &c.target,
                features: &c.features,
                shared_object: self.section_bytes(c.section),
                kernels: &c.kernels,
            })
            .collect()
    }

    /// The GPU code entries (one per architecture), in file order.
    pub fn ptx_code(&self) -> Vec<PtxCodeRef<'_>> {
        self.ptx
            .iter()
            .map(|p| PtxCodeRef {
                arch: &p.arch,
                sm_count: p.sm_count,
                modules: p
                    .modules
                    .iter()
                    .map(|m| PtxModuleRef {
                        name: &m.name,
                        // Checked to be UTF-8 in `parse`.
                        ptx: std::str::from_utf8(self.section_bytes(m.section)).unwrap_or_default(),
                        entries: &m.entries,
                    })
                    .collect(),
                gemms: &p.gemms,
            })
            .collect()
    }

    /// The free-form metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.manifest.metadata
    }

    /// The section table, in file order.
    pub fn sections(&self) -> Vec<SectionInfo> {
        self.sections.clone()
    }

    /// The format version in the file's header.
    pub fn format_version(&self) -> u32 {
        self.version
    }

    /// Who wrote the file (`fpx <version>`).
    pub fn producer(&self) -> &str {
        &self.manifest.producer
    }

    /// The file's size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// The bytes of section `i` (checked in bounds when the file was opened).
    fn section_bytes(&self, i: usize) -> &[u8] {
        slice(self.bytes.as_slice(), &self.sections[i]).unwrap_or_default()
    }
}

/// The bytes of a section, if they lie inside `data`.
fn slice<'a>(data: &'a [u8], s: &SectionInfo) -> Option<&'a [u8]> {
    let start = usize::try_from(s.offset).ok()?;
    let end = start.checked_add(usize::try_from(s.length).ok()?)?;
    data.get(start..end)
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Says what a foreign file looks like, from its first bytes.
fn describe_foreign(data: &[u8]) -> String {
    let head = &data[..data.len().min(8)];
    let guess = if head.starts_with(b"\x93NUMPY") {
        " (a NumPy .npy file)"
    } else if head.starts_with(b"\x7fELF") {
        " (an ELF binary)"
    } else if head.starts_with(b"PK\x03\x04") {
        " (a zip archive)"
    } else if head.first() == Some(&0x08) {
        " (perhaps an ONNX model: compile it with `fpx compile` first)"
    } else {
        ""
    };
    format!("it starts with b\"{}\" instead of the magic bytes b\"FPX\\0ART\\0\"{guess}", head.escape_ascii())
}

/// The kind of a section-table entry, if it is a valid one.
pub(crate) fn section_kind(kind: i32) -> Option<SectionKind> {
    match pb::SectionKind::try_from(kind) {
        Ok(pb::SectionKind::Constant) => Some(SectionKind::Constant),
        Ok(pb::SectionKind::CpuSharedObject) => Some(SectionKind::CpuSharedObject),
        Ok(pb::SectionKind::Ptx) => Some(SectionKind::Ptx),
        Ok(pb::SectionKind::Other) => Some(SectionKind::Other),
        Ok(pb::SectionKind::Unspecified) | Err(_) => None,
    }
}

/// Checks the header, the manifest's checksum and encoding, and the section table's layout and
/// checksums.
fn parse_layout(what: &str, data: &[u8]) -> Result<(u32, pb::Manifest, Vec<SectionInfo>), ArtifactError> {
    let corrupt = |m: String| ArtifactError::corrupt(what, m);
    let n = data.len();
    let magic_len = n.min(MAGIC.len());
    if n == 0 {
        return Err(ArtifactError::NotAnArtifact { what: what.into(), message: "the file is empty".into() });
    }
    if data[..magic_len] != MAGIC[..magic_len] {
        return Err(ArtifactError::NotAnArtifact { what: what.into(), message: describe_foreign(data) });
    }
    let header_len = HEADER_LEN as usize;
    if n < header_len {
        return Err(corrupt(format!("the file is {n} bytes, shorter than the {header_len}-byte header (truncated?)")));
    }
    let version = u32_at(data, 8);
    if version == 0 {
        return Err(corrupt("the header's format version is 0, which no fpx writes".into()));
    }
    if version > FORMAT_VERSION {
        return Err(ArtifactError::NewerVersion { what: what.into(), found: version, supported: FORMAT_VERSION });
    }
    let manifest_len = u32_at(data, 12) as usize;
    let manifest_end = header_len.checked_add(manifest_len);
    let crc_end = manifest_end.and_then(|e| e.checked_add(4)).filter(|&e| e <= n).ok_or_else(|| {
        corrupt(format!(
            "the header says the manifest and its checksum take {} bytes, but the file has only {} bytes after the header (truncated?)",
            manifest_len as u64 + 4,
            n - header_len
        ))
    })?;
    let manifest_end = crc_end - 4;
    let manifest_bytes = &data[header_len..manifest_end];
    let (stored, computed) = (u32_at(data, manifest_end), crc32fast::hash(manifest_bytes));
    if stored != computed {
        return Err(ArtifactError::ChecksumMismatch {
            what: what.into(),
            section: "the manifest".into(),
            expected: stored,
            found: computed,
        });
    }
    let manifest = pb::Manifest::decode(manifest_bytes).map_err(|e| corrupt(format!("the manifest does not decode: {e}")))?;

    let mut sections = Vec::with_capacity(manifest.sections.len());
    let mut pos = crc_end as u64;
    for (i, s) in manifest.sections.iter().enumerate() {
        let label = format!("section #{i} '{}'", s.name);
        let kind = section_kind(s.kind).ok_or_else(|| corrupt(format!("{label} has an unknown kind ({})", s.kind)))?;
        let expected = align_up(pos).ok_or_else(|| corrupt(format!("{label} lies past 2^64 bytes")))?;
        if s.offset != expected {
            return Err(corrupt(format!("{label} starts at byte {}, but the layout puts it at byte {expected}", s.offset)));
        }
        let end = s.offset.checked_add(s.length).filter(|&e| e <= n as u64).ok_or_else(|| {
            corrupt(format!("{label} ({} bytes from byte {}) runs past the end of the file at byte {n} (truncated?)", s.length, s.offset))
        })?;
        // Both ends are within the file, so they fit usize.
        if data[pos as usize..s.offset as usize].iter().any(|&b| b != 0) {
            return Err(corrupt(format!("the padding before {label} is not zero")));
        }
        let info = SectionInfo { name: s.name.clone(), kind, offset: s.offset, length: s.length, checksum: s.crc32 };
        let computed = crc32fast::hash(&data[s.offset as usize..end as usize]);
        if computed != s.crc32 {
            return Err(ArtifactError::ChecksumMismatch {
                what: what.into(),
                section: format!("{label} ({kind})"),
                expected: s.crc32,
                found: computed,
            });
        }
        sections.push(info);
        pos = end;
    }
    if pos != n as u64 {
        let extra = n as u64 - pos;
        return Err(corrupt(format!(
            "{extra} unexpected byte{} follow the end of the last section at byte {pos}",
            if extra == 1 { "" } else { "s" }
        )));
    }
    Ok((version, manifest, sections))
}

/// Checks the CPU and PTX entries' section references.
pub(crate) fn check_code(what: &str, m: &pb::Manifest, sections: &[SectionInfo]) -> Result<(Vec<CpuEntry>, Vec<PtxEntry>), ArtifactError> {
    let section = |i: u32, want: SectionKind, who: String| -> Result<usize, ArtifactError> {
        let s = sections.get(i as usize).ok_or_else(|| {
            ArtifactError::corrupt(what, format!("{who} refers to section #{i}, but there are only {} sections", sections.len()))
        })?;
        if s.kind != want {
            return Err(ArtifactError::corrupt(
                what,
                format!("{who} refers to section #{i} '{}', which holds a {}, not a {want}", s.name, s.kind),
            ));
        }
        Ok(i as usize)
    };
    let ptx = m.ptx_code.iter().map(|p| check_ptx(what, p, &section)).collect::<Result<Vec<_>, _>>()?;
    let mut archs = BTreeMap::new();
    for p in &ptx {
        if archs.insert(p.arch.as_str(), ()).is_some() {
            return Err(ArtifactError::corrupt(what, format!("the GPU code for '{}' is listed twice", p.arch)));
        }
    }
    let cpu = m
        .cpu_code
        .iter()
        .map(|c| {
            Ok(CpuEntry {
                target: c.target.clone(),
                features: c.features.clone(),
                section: section(c.section, SectionKind::CpuSharedObject, format!("the CPU code for '{}'", c.target))?,
                kernels: c
                    .kernels
                    .iter()
                    .map(|k| KernelEntry {
                        node: k.node.clone(),
                        gemv: k.gemv.clone(),
                        gemm: k.gemm.clone(),
                        int8_activations: k.int8_activations,
                    })
                    .collect(),
            })
        })
        .collect::<Result<_, ArtifactError>>()?;
    Ok((cpu, ptx))
}

/// Checks one architecture's GPU code: modules point at PTX sections, names are unique, every
/// GEMM names an existing module and entry, and each node's M ranges ascend and end with 0.
fn check_ptx(
    what: &str,
    p: &pb::PtxCode,
    section: &dyn Fn(u32, SectionKind, String) -> Result<usize, ArtifactError>,
) -> Result<PtxEntry, ArtifactError> {
    let bad = |message: String| ArtifactError::corrupt(what, format!("the GPU code for '{}': {message}", p.arch));
    let mut modules: Vec<PtxModuleEntry> = Vec::with_capacity(p.modules.len());
    for m in &p.modules {
        if modules.iter().any(|e| e.name == m.name) {
            return Err(bad(format!("module '{}' is listed twice", m.name)));
        }
        let s = section(m.section, SectionKind::Ptx, format!("PTX module '{}' for '{}'", m.name, p.arch))?;
        modules.push(PtxModuleEntry { name: m.name.clone(), section: s, entries: m.entries.clone() });
    }
    let mut last_max: BTreeMap<&str, u64> = BTreeMap::new();
    for g in &p.gemms {
        let module = modules
            .iter()
            .find(|e| e.name == g.module)
            .ok_or_else(|| bad(format!("node '{}' uses module '{}', which is not there", g.node, g.module)))?;
        for entry in [&g.kernel, &g.reduce].into_iter().filter(|e| !e.is_empty()) {
            if !module.entries.contains(entry) {
                return Err(bad(format!("node '{}' uses kernel '{entry}', which module '{}' does not have", g.node, g.module)));
            }
        }
        match last_max.insert(&g.node, g.max_m) {
            Some(0) => return Err(bad(format!("node '{}' has a GEMM after its unbounded one", g.node))),
            Some(prev) if g.max_m != 0 && g.max_m <= prev => {
                return Err(bad(format!("node '{}' lists M ranges out of order ({prev}, then {})", g.node, g.max_m)))
            }
            _ => {}
        }
    }
    if let Some((node, _)) = last_max.iter().find(|(_, &m)| m != 0) {
        return Err(bad(format!("node '{node}' has no GEMM for large M (the last entry must have max_m 0)")));
    }
    let gemms = p.gemms.iter().map(GpuGemmEntry::from).collect();
    Ok(PtxEntry { arch: p.arch.clone(), sm_count: p.sm_count, modules, gemms })
}

fn dtype(what: &str, code: i32, who: &dyn Fn() -> String) -> Result<DType, ArtifactError> {
    dtype_from_code(code).ok_or_else(|| ArtifactError::corrupt(what, format!("{} has an unknown element type code {code}", who())))
}

fn type_from_pb(what: &str, t: &pb::TensorType, value: &str) -> Result<TensorType, ArtifactError> {
    let dtype = dtype(what, t.dtype, &|| format!("the type of value '{value}'"))?;
    let shape = match &t.shape {
        None => None,
        Some(s) => Some(
            s.dims
                .iter()
                .enumerate()
                .map(|(j, d)| match &d.kind {
                    Some(pb::dim::Kind::Fixed(n)) => usize::try_from(*n)
                        .map(Dim::Fixed)
                        .map_err(|_| ArtifactError::corrupt(what, format!("dimension {j} of value '{value}' ({n}) is too large"))),
                    Some(pb::dim::Kind::Symbolic(s)) => Ok(Dim::Sym(s.clone())),
                    Some(pb::dim::Kind::Unknown(_)) => Ok(Dim::Unknown),
                    None => Err(ArtifactError::corrupt(
                        what,
                        format!("dimension {j} of value '{value}' is neither fixed, symbolic nor unknown"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(TensorType { dtype, shape })
}

fn attr_from_pb(what: &str, a: &pb::Attribute, node: &str) -> Result<Attribute, ArtifactError> {
    use pb::attribute::Value as V;
    Ok(match &a.value {
        None => return Err(ArtifactError::corrupt(what, format!("attribute '{}' of node '{node}' has no value", a.name))),
        Some(V::F(x)) => Attribute::Float(*x),
        Some(V::I(x)) => Attribute::Int(*x),
        Some(V::S(s)) => Attribute::String(s.clone()),
        Some(V::Floats(v)) => Attribute::Floats(v.values.clone()),
        Some(V::Ints(v)) => Attribute::Ints(v.values.clone()),
        Some(V::Strings(v)) => Attribute::Strings(v.values.clone()),
        Some(V::T(t)) => {
            let who = || format!("tensor attribute '{}' of node '{node}'", a.name);
            let dt = dtype(what, t.dtype, &who)?;
            let tensor = checked_shape(dt, &t.shape, t.data.len() as u64)
                .and_then(|shape| tensor_from_bytes(dt, &shape, &t.data))
                .map_err(|m| ArtifactError::corrupt(what, format!("{}: {m}", who())))?;
            Attribute::Tensor(tensor)
        }
    })
}

/// What [`build_graph`] does with constants' data (the file's bytes).
#[derive(Clone, Copy)]
pub(crate) enum Constants<'a> {
    /// Copy it into tensors.
    Load(&'a [u8]),
    /// Only check it (bools are 0 or 1); stand in empty tensors.
    Check(&'a [u8]),
    /// There is no data yet (the writer checking its own manifest); stand in empty tensors.
    Skip,
}

/// Rebuilds the graph from the manifest, checking every index, element type and shape first.
pub(crate) fn build_graph(
    what: &str,
    m: &pb::Manifest,
    sections: &[SectionInfo],
    constants: Constants<'_>,
) -> Result<Graph, ArtifactError> {
    let corrupt = |msg: String| ArtifactError::corrupt(what, msg);
    let g = m.graph.as_ref().ok_or_else(|| corrupt("the manifest has no graph".into()))?;
    let mut graph = Graph::new(g.name.clone());
    for o in &g.opset_imports {
        if graph.opsets.insert(o.domain.clone(), o.version).is_some() {
            return Err(corrupt(format!("the graph imports domain '{}' twice", o.domain)));
        }
    }

    let n_values = g.values.len();
    if u32::try_from(n_values).is_err() {
        return Err(corrupt(format!("the graph has {n_values} values, more than 2^32")));
    }
    let value = |i: u32, who: &dyn Fn() -> String| -> Result<ValueId, ArtifactError> {
        if (i as usize) < n_values {
            Ok(ValueId(i))
        } else {
            Err(corrupt(format!("{} refers to value #{i}, but the graph has only {n_values} values", who())))
        }
    };

    for (i, v) in g.values.iter().enumerate() {
        let id = graph.value_named(&v.name);
        if id.0 as usize != i {
            return Err(corrupt(format!("values #{} and #{i} are both named '{}'", id.0, v.name)));
        }
        let ty = v.r#type.as_ref().map(|t| type_from_pb(what, t, &v.name)).transpose()?;
        if let Some(c) = &v.constant {
            let who = format!("the constant '{}'", v.name);
            let s = sections.get(c.section as usize).ok_or_else(|| {
                corrupt(format!("{who} refers to section #{}, but there are only {} sections", c.section, sections.len()))
            })?;
            if s.kind != SectionKind::Constant {
                return Err(corrupt(format!(
                    "{who} refers to section #{} '{}', which holds a {}, not a constant",
                    c.section, s.name, s.kind
                )));
            }
            let dt = dtype(what, c.dtype, &|| who.clone())?;
            let shape =
                checked_shape(dt, &c.shape, s.length).map_err(|e| corrupt(format!("{who} (section #{} '{}'): {e}", c.section, s.name)))?;
            let bytes = |data| slice(data, s).ok_or_else(|| corrupt(format!("{who}: section #{} lies outside the file", c.section)));
            let tensor = match constants {
                Constants::Load(data) => tensor_from_bytes(dt, &shape, bytes(data)?).map_err(|e| corrupt(format!("{who}: {e}")))?,
                Constants::Check(data) => {
                    if dt == DType::Bool && bytes(data)?.iter().any(|&b| b > 1) {
                        return Err(corrupt(format!("{who}: a bool element is neither 0 nor 1")));
                    }
                    Tensor::zeros(dt, &[0])
                }
                Constants::Skip => Tensor::zeros(dt, &[0]),
            };
            graph.set_constant(id, Arc::new(tensor));
        }
        graph.set_type(id, ty);
    }

    graph.inputs = g.inputs.iter().map(|&i| value(i, &|| "a graph input".into())).collect::<Result<_, _>>()?;
    graph.outputs = g.outputs.iter().map(|&i| value(i, &|| "a graph output".into())).collect::<Result<_, _>>()?;

    // Which node (by position) produces each value, to check the topological order.
    let mut producer: Vec<Option<usize>> = vec![None; n_values];
    for (k, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            let o = value(o, &|| format!("an output of node '{}'", n.name))?;
            if let Some(p) = producer[o.0 as usize].replace(k) {
                return Err(corrupt(format!(
                    "value '{}' is produced by both node '{}' and node '{}'",
                    g.values[o.0 as usize].name, g.nodes[p].name, n.name
                )));
            }
        }
    }

    for (k, n) in g.nodes.iter().enumerate() {
        let who = || format!("an input of node '{}'", n.name);
        let mut inputs = Vec::with_capacity(n.inputs.len());
        for slot in &n.inputs {
            let v = slot.value.map(|i| value(i, &who)).transpose()?;
            if let Some(v) = v {
                if let Some(p) = producer[v.0 as usize].filter(|&p| p >= k) {
                    return Err(corrupt(format!(
                        "the nodes are not in topological order: node '{}' reads value '{}' before node '{}' produces it",
                        n.name, g.values[v.0 as usize].name, g.nodes[p].name
                    )));
                }
            }
            inputs.push(v);
        }
        let outputs = n.outputs.iter().map(|&o| ValueId(o)).collect();
        let mut attrs = BTreeMap::new();
        for a in &n.attributes {
            if attrs.insert(a.name.clone(), attr_from_pb(what, a, &n.name)?).is_some() {
                return Err(corrupt(format!("node '{}' has attribute '{}' twice", n.name, a.name)));
            }
        }
        let node =
            Node { name: n.name.clone(), op_type: n.op_type.clone(), domain: n.domain.clone(), opset: n.opset, attrs, inputs, outputs };
        graph.add_node(node).map_err(|source| ArtifactError::Ir { what: what.into(), source })?;
    }
    Ok(graph)
}
