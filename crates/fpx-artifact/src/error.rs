//! Errors: each names the file (or the in-memory artifact's name) and what is wrong with it.

use std::path::PathBuf;
use thiserror::Error;

/// Something went wrong writing or reading an artifact.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The operating system refused an operation on a file.
    #[error("cannot {op} '{}': {source}", path.display())]
    Io {
        /// What was being done (`open`, `write`, `rename ... to`, ...).
        op: String,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the artifact magic bytes.
    #[error("'{what}' is not an fpx artifact: {message}")]
    NotAnArtifact {
        /// The file.
        what: String,
        /// What it looks like instead.
        message: String,
    },
    /// The file was written by a newer fpx, in a format version this one cannot read.
    #[error("'{what}' is an fpx artifact of format version {found}, but this fpx reads only version {supported}: use a newer fpx, or recompile the model with this one")]
    NewerVersion {
        /// The file.
        what: String,
        /// The version in the file's header.
        found: u32,
        /// The one version this crate reads ([`crate::FORMAT_VERSION`]).
        supported: u32,
    },
    /// The file was written by an older fpx, in a format version whose fields mean something
    /// else to this one.
    #[error("'{what}' is an fpx artifact of format version {found}, written by an older fpx; this fpx reads only version {supported}: recompile the model with `fpx compile`")]
    OlderVersion {
        /// The file.
        what: String,
        /// The version in the file's header.
        found: u32,
        /// The one version this crate reads ([`crate::FORMAT_VERSION`]).
        supported: u32,
    },
    /// The file is damaged or inconsistent: truncated, bad lengths or offsets, a manifest that
    /// does not decode or refers to things that are not there.
    #[error("'{what}' is a damaged fpx artifact: {message}")]
    Corrupt {
        /// The file.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The bytes of the manifest or of a section do not match their checksum.
    #[error(
        "'{what}' is a damaged fpx artifact: the checksum of {section} does not match (stored {expected:#010x}, computed {found:#010x})"
    )]
    ChecksumMismatch {
        /// The file.
        what: String,
        /// The part whose bytes are damaged: `the manifest` or `section #N 'name' (kind)`.
        section: String,
        /// The checksum stored in the file.
        expected: u32,
        /// The checksum of the bytes as they are.
        found: u32,
    },
    /// The graph cannot be stored (on write), e.g. it has a cycle or is too large for the format.
    #[error("cannot write '{what}': {message}")]
    Graph {
        /// The file being written.
        what: String,
        /// What is wrong with the contents.
        message: String,
    },
    /// Rebuilding the graph from the artifact failed in the IR (e.g. a value defined twice).
    #[error("'{what}' holds a graph that cannot be rebuilt: {source}")]
    Ir {
        /// The file.
        what: String,
        /// The IR's error.
        #[source]
        source: fpx_ir::IrError,
    },
}

impl ArtifactError {
    pub(crate) fn corrupt(what: &str, message: impl Into<String>) -> Self {
        ArtifactError::Corrupt { what: what.to_string(), message: message.into() }
    }

    pub(crate) fn io(op: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArtifactError::Io { op: op.into(), path: path.into(), source }
    }
}
