//! The words every front end (the CLI, the Python package, the C API) puts on an error: what fpx
//! was doing and on which file ("cannot load model 'm.fpx': ..."), and the error's causes joined
//! into one line, so a failure reads the same whichever way fpx was called.

use crate::Error;
use std::path::{Path, PathBuf};

/// What fpx was doing with a file when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Opening an `.onnx` model or an `.fpx` artifact to run it.
    LoadModel,
    /// Running a loaded model.
    RunModel,
    /// Compiling an ONNX model into an artifact.
    Compile,
    /// Writing an artifact.
    WriteArtifact,
    /// Comparing a model's accuracy under weight schemes.
    Report,
    /// Tuning a model's kernels.
    Tune,
}

impl Action {
    /// The words before the file's name ("load model").
    pub fn words(self) -> &'static str {
        match self {
            Action::LoadModel => "load model",
            Action::RunModel => "run model",
            Action::Compile => "compile",
            Action::WriteArtifact => "write",
            Action::Report => "report on",
            Action::Tune => "tune",
        }
    }
}

/// An [`Error`] with what fpx was doing and on which file: shown as
/// "cannot ACTION 'PATH'", its source the error itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot {} '{}'", action.words(), path.display())]
pub struct Failure {
    /// What fpx was doing.
    pub action: Action,
    /// The file it was doing it with.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: Error,
}

impl Failure {
    /// `source`, met while doing `action` with `path`.
    pub fn new(action: Action, path: &Path, source: impl Into<Error>) -> Failure {
        Failure { action, path: path.to_path_buf(), source: source.into() }
    }

    /// The whole message ([`error_message`] of this failure).
    pub fn message(&self) -> String {
        error_message(self)
    }
}

/// An error and its causes in one line, joined by ": " (as `anyhow`'s `{:#}` does), leaving out
/// a cause whose text an outer message already includes (many errors print their source, e.g.
/// "cannot open 'x': No such file or directory", and also return it as their source).
pub fn error_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in std::iter::successors(Some(error), |e| e.source()) {
        let c = cause.to_string();
        if text.is_empty() {
            text = c;
        } else if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_action_the_file_and_every_new_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let source = Error::Spill { dir: "/scratch".into(), source: io };
        let f = Failure::new(Action::Compile, Path::new("m.onnx"), source);
        // The spill error prints its io source itself: it is not repeated.
        assert_eq!(f.message(), "cannot compile 'm.onnx': cannot use a spill file in '/scratch': no such file");
        let plain = Error::Options("bad option".into());
        assert_eq!(Failure::new(Action::RunModel, Path::new("a b.fpx"), plain).message(), "cannot run model 'a b.fpx': bad option");
    }
}
