//! Reading an artifact: map the file, check everything, rebuild the graph on demand.

use crate::decode::{build_graph, Constants};
use crate::format::{align_up, NodeKernels, FORMAT_VERSION, HEADER_LEN, MAGIC};
use crate::manifest as pb;
use crate::validate::{check_code, check_tables, CheckedCpu, CheckedPtx};
use crate::{ArtifactError, CpuKernel, GpuKernel, SectionInfo, SectionKind};
use fpx_ir::stored::ByteSource;
use fpx_ir::Graph;
use memmap2::Mmap;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Native CPU code of one target, borrowed from the artifact.
#[derive(Debug, Clone, Copy)]
pub struct CpuCodeRef<'a> {
    /// The CPU the code was generated for.
    pub target: &'a str,
    /// CPU features the code requires.
    pub features: &'a [String],
    /// The shared object's bytes (in the file's mapping).
    pub shared_object: &'a [u8],
    /// Per quantized product, its kernels by M.
    pub kernels: &'a [NodeKernels<CpuKernel>],
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
    /// Per quantized product, its GEMM kernels by M.
    pub kernels: &'a [NodeKernels<GpuKernel>],
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

/// An artifact's bytes as the source of the constants its graph leaves in place.
struct ArtifactBytes {
    what: String,
    bytes: Bytes,
}

impl fmt::Debug for ArtifactBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactBytes({})", self.what)
    }
}

impl ByteSource for ArtifactBytes {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let data = self.bytes.as_slice();
        let range = usize::try_from(offset).ok().and_then(|start| Some(start..start.checked_add(buf.len())?));
        let src = range.and_then(|r| data.get(r)).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("'{}'", self.what)
    }
    fn mapped(&self) -> Option<&[u8]> {
        Some(self.bytes.as_slice())
    }
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
    bytes: Arc<ArtifactBytes>,
    version: u32,
    manifest: pb::Manifest,
    sections: Vec<SectionInfo>,
    cpu: Vec<CheckedCpu>,
    ptx: Vec<CheckedPtx>,
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
        // Only a regular file: a FIFO would block, a device would map or read without end.
        let (file, len) = fpx_ir::file::open_regular(path).map_err(|e| ArtifactError::io("open", path, e))?;
        let bytes = if len < 4096 {
            // Tiny (so surely damaged or foreign) files are read: mapping an empty file fails on some systems.
            let read = fpx_ir::file::read_exact_len(file, len, len);
            Bytes::Owned(read.map_err(|e| ArtifactError::io("read", path, e))?)
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
                let text = sections[m.section].bytes_in(bytes.as_slice()).unwrap_or_default();
                if let Err(e) = std::str::from_utf8(text) {
                    let message = format!("the PTX of module '{}' for {} is not UTF-8 text ({e})", m.name, p.arch);
                    return Err(ArtifactError::corrupt(&what, message));
                }
            }
        }
        // Build the graph once without copying constants: every check `graph` makes happens now.
        let graph = build_graph(&what, &manifest, &sections, Constants::Check(bytes.as_slice()))?;
        check_tables(&what, &graph, &cpu, &ptx)?;
        let bytes = Arc::new(ArtifactBytes { what: what.clone(), bytes });
        Ok(Artifact { what, bytes, version, manifest, sections, cpu, ptx })
    }

    /// Rebuilds the graph. Packed weights (`uint8` constants of 1 MiB or more) stay in the
    /// mapped file as [`fpx_ir::StoredTensor`]s that kernels read in place, so opening a large
    /// artifact costs its page-ins, not a copy; other constants are copied into tensors.
    pub fn graph(&self) -> Result<Graph, ArtifactError> {
        let source: Arc<dyn ByteSource> = self.bytes.clone();
        build_graph(&self.what, &self.manifest, &self.sections, Constants::Map(&source))
    }

    /// Rebuilds the graph with every constant copied out of the file into a tensor.
    pub fn graph_loaded(&self) -> Result<Graph, ArtifactError> {
        build_graph(&self.what, &self.manifest, &self.sections, Constants::Load(self.bytes.bytes.as_slice()))
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
                kernels: &p.kernels,
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

    /// The file's path (or the name given to [`Artifact::from_bytes`]), as errors name it.
    pub fn name(&self) -> &str {
        &self.what
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
        self.bytes.bytes.as_slice().len() as u64
    }

    /// The bytes of section `i` (checked in bounds when the file was opened).
    fn section_bytes(&self, i: usize) -> &[u8] {
        self.sections[i].bytes_in(self.bytes.bytes.as_slice()).unwrap_or_default()
    }
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
    if version < FORMAT_VERSION {
        return Err(ArtifactError::OlderVersion { what: what.into(), found: version, supported: FORMAT_VERSION });
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
        let kind = SectionKind::from_pb(s.kind).ok_or_else(|| corrupt(format!("{label} has an unknown kind ({})", s.kind)))?;
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
        sections.push(SectionInfo { name: s.name.clone(), kind, offset: s.offset, length: s.length, checksum: s.crc32 });
        pos = end;
    }
    // Every section's checksum, the sections in parallel (opening a large artifact is reading it
    // once); the first mismatch in file order is the one reported.
    use rayon::prelude::*;
    let computed: Vec<u32> =
        sections.par_iter().map(|s| crc32fast::hash(&data[s.offset as usize..(s.offset + s.length) as usize])).collect();
    if let Some((i, (s, found))) = sections.iter().zip(computed).enumerate().find(|(_, (s, c))| *c != s.checksum) {
        return Err(ArtifactError::ChecksumMismatch {
            what: what.into(),
            section: format!("section #{i} '{}' ({})", s.name, s.kind),
            expected: s.checksum,
            found,
        });
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
