//! Helpers shared by fpx's tests (never a dependency of shipped code).
//!
//! - [`Rng`]: a seeded, dependency-free random generator, so every test's data is reproducible;
//! - [`TempDir`]: a fresh folder removed on drop;
//! - [`onnx`]: small ONNX models built in Rust (no Python needed);
//! - [`data`]: where optional test data lives (`../shared/models`, the ONNX node tests);
//! - [`special`]: a FIFO, `/dev/zero` and a symlink to it, which readers must refuse at once;
//! - [`require`]: skips that `FPX_REQUIRE` turns into failures.

pub mod data;
pub mod onnx;
pub mod require;
mod rng;
pub mod special;
mod temp;

pub use require::{skip, Requirement};
pub use rng::Rng;
pub use temp::TempDir;
