//! Skips that a machine meant to have something can turn into failures.
//!
//! A test that needs something absent (a GPU, an AVX-512 VNNI CPU, the real models in
//! `../shared/models`) skips with a printed reason. `FPX_REQUIRE` lists what this machine must
//! have (any of `gpu`, `vnni`, `models`, `capi`, comma-separated, or `all`); a skip of a listed
//! requirement panics instead, so a run on a machine that should have it cannot pass by
//! skipping (`scripts/gpu-check.sh` sets `FPX_REQUIRE=gpu`).

use std::fmt;

/// Something a test may need that not every machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// An NVIDIA GPU (sm_80 or newer) with a driver, and NVRTC.
    Gpu,
    /// A CPU with AVX-512 VBMI and VNNI.
    Vnni,
    /// The real models of `../shared/models` and the ONNX backend node tests.
    Models,
    /// The C API's library `libfpx_c.so` built beside the tests, and a C compiler
    /// (scripts/test.sh builds the one and requires both).
    Capi,
}

impl Requirement {
    /// Every requirement.
    pub const ALL: [Requirement; 4] = [Requirement::Gpu, Requirement::Vnni, Requirement::Models, Requirement::Capi];

    /// The name `FPX_REQUIRE` uses.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Gpu => "gpu",
            Requirement::Vnni => "vnni",
            Requirement::Models => "models",
            Requirement::Capi => "capi",
        }
    }

    /// Whether `FPX_REQUIRE` lists this requirement.
    pub fn required(self) -> bool {
        required_in(std::env::var("FPX_REQUIRE").ok().as_deref(), self)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the `FPX_REQUIRE` value `list` names `r`. An unknown name panics, so a typo cannot
/// silently require nothing.
pub fn required_in(list: Option<&str>, r: Requirement) -> bool {
    let Some(list) = list else { return false };
    let mut hit = false;
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" || word == r.name() {
            hit = true;
        } else if !Requirement::ALL.iter().any(|q| q.name() == word) {
            panic!("FPX_REQUIRE='{list}': unknown requirement '{word}' (use gpu, vnni, models, capi or all)");
        }
    }
    hit
}

/// Skips `test` because `why` (prints `SKIP <test>: <why>`), or panics when `FPX_REQUIRE`
/// lists `needs`.
pub fn skip(needs: Requirement, test: &str, why: &str) {
    if needs.required() {
        panic!("{test}: FPX_REQUIRE={} requires {needs}, but: {why}", std::env::var("FPX_REQUIRE").unwrap_or_default());
    }
    eprintln!("SKIP {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_lists_parse() {
        assert!(!required_in(None, Requirement::Gpu));
        assert!(required_in(Some("gpu"), Requirement::Gpu));
        assert!(!required_in(Some("gpu"), Requirement::Vnni));
        assert!(required_in(Some(" models , vnni"), Requirement::Vnni));
        assert!(required_in(Some("all"), Requirement::Models));
        assert!(!required_in(Some(""), Requirement::Gpu));
        assert!(std::panic::catch_unwind(|| required_in(Some("gpus"), Requirement::Gpu)).is_err());
    }

    /// In a child process (this test binary, this test only): `skip` fails the test when
    /// FPX_REQUIRE names the requirement, and prints SKIP when it names another.
    #[test]
    fn skip_fails_the_test_only_when_required() {
        if std::env::var_os("FPX_TEST_SKIP_PROBE").is_some() {
            skip(Requirement::Gpu, "probe", "no GPU in this probe");
            return;
        }
        let run = |require: &str| {
            let exe = std::env::current_exe().expect("the test binary");
            std::process::Command::new(exe)
                .args(["require::tests::skip_fails_the_test_only_when_required", "--exact", "--nocapture", "--test-threads=1"])
                .env("FPX_TEST_SKIP_PROBE", "1")
                .env("FPX_REQUIRE", require)
                .output()
                .expect("the test binary runs")
        };
        let required = run("gpu");
        let err = String::from_utf8_lossy(&required.stderr);
        assert!(!required.status.success() && err.contains("FPX_REQUIRE=gpu requires gpu, but: no GPU in this probe"), "{err}");
        let other = run("vnni,models");
        let err = String::from_utf8_lossy(&other.stderr);
        assert!(other.status.success() && err.contains("SKIP probe: no GPU in this probe"), "{err}");
    }
}
