//! The `.fpx` artifact: one file holding a compiled graph, its constants and its native code.
//!
//! Layout (integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | magic `FPX\0ART\0` |
//! | 8..12 | format version, `u32` ([`FORMAT_VERSION`]) |
//! | 12..16 | manifest length `M`, `u32` |
//! | 16..16+M | the manifest: protobuf (schema in `artifact.proto`, messages in `manifest.rs`) |
//! | 16+M..20+M | CRC-32 of the manifest bytes |
//! | then | the sections, in section-table order, each at the next multiple of 64 (zero padding) |
//!
//! The file ends where its last section ends. The manifest holds the producer, the graph
//! (values with types and constant references, nodes in topological order with attributes,
//! graph inputs and outputs, opset imports), the section table (name, kind, offset, length,
//! CRC-32), CPU code entries (target, features, shared-object section, and per quantized
//! product a [`fpx_quant::KernelTable`] of [`CpuKernel`]s), GPU code entries (PTX modules, and
//! per product a table of [`GpuKernel`]s with their [`GpuTiles`]) and free-form metadata. Each constant is one section of raw
//! little-endian elements in row-major order (bool as one byte).
//!
//! [`write`] is atomic and deterministic; [`Artifact::open`] memory-maps a file and checks
//! everything (header, version, manifest, every section's bounds and checksum) so a damaged,
//! truncated, foreign, older or newer file is a clear [`ArtifactError`], never a panic.
//!
//! Files: `format.rs` (what an artifact holds, shared by both sides), `read.rs` (open and
//! check), `write.rs` (lay out and write), `validate.rs` (the code entries' rules), `decode.rs`
//! (the manifest's graph), `data.rs` (tensor bytes), `manifest.rs` (the protobuf messages). This crate
//! executes nothing — but an artifact carries native code: load only artifacts you trust.
//!
//! ```
//! use fpx_artifact::{to_bytes, Artifact, ArtifactContents};
//!
//! let mut contents = ArtifactContents::default();
//! contents.metadata.insert("weights".into(), "fp6-auto".into());
//! let bytes = to_bytes(&contents)?; // or `fpx_artifact::write(path, &contents)?`
//! let artifact = Artifact::from_bytes(bytes, "example.fpx")?; // or `Artifact::open(path)?`
//! assert_eq!(artifact.metadata()["weights"], "fp6-auto");
//! let graph = artifact.graph()?;
//! assert_eq!(graph.node_count(), 0);
//! # Ok::<(), fpx_artifact::ArtifactError>(())
//! ```

mod data;
mod decode;
mod error;
mod format;
mod manifest;
mod read;
mod validate;
mod write;

#[cfg(test)]
mod tests;

pub use error::ArtifactError;
pub use format::{
    missing_cpu_features, ArtifactContents, CpuCode, CpuConfig, CpuKernel, CpuTiling, GpuActivations, GpuKernel, GpuTiles, NodeKernels,
    PtxCode, PtxModule, SectionInfo, SectionKind, Variant, WriteSummary, FORMAT_VERSION, HEADER_LEN, MAGIC, SECTION_ALIGN,
};
pub use read::{Artifact, CpuCodeRef, PtxCodeRef, PtxModuleRef};
pub use validate::is_plain_name;
pub use write::{to_bytes, write};
