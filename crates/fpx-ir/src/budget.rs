//! The size budget of one tensor: the most bytes any tensor the runtime or constant folding
//! creates may take. A model is untrusted input — a 162-byte `ConstantOfShape([2^31])` asks
//! for 8 GiB — so every output size is checked against the budget *before* it is allocated,
//! and a tensor over it is an error naming the node, not an aborted process.
//!
//! The default, [`TensorBudget::DEFAULT_MAX_BYTES`] (4 GiB per tensor), is a fixed number
//! rather than a fraction of this machine's memory so that whether a model runs does not
//! depend on the host it is tried on, and errors reproduce. 4 GiB holds any activation or
//! weight of the models fpx targets (a 128k × 8k f32 embedding is 4 GiB) while keeping a
//! hostile shape from asking for tens of gigabytes. [`ENV_VAR`] (`FPX_MAX_TENSOR_BYTES`)
//! overrides it (a byte count, or with a binary suffix: `512M`, `8GiB`); callers can set one
//! on the executor.

use crate::DType;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The environment variable that overrides the default budget: a byte count, optionally with a
/// binary suffix (`K`, `M`, `G`, `T`, with or without `iB`/`B`).
pub const ENV_VAR: &str = "FPX_MAX_TENSOR_BYTES";

/// The most bytes one tensor may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorBudget {
    /// Largest size of one tensor, in bytes.
    pub max_bytes: u64,
}

/// A tensor over the budget, or a budget that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BudgetError {
    /// The tensor would take more bytes than the budget allows (`bytes: None`: more than
    /// `u64::MAX`, the element count overflows).
    #[error(
        "a {dtype} tensor of shape {shape:?} needs {}, more than the tensor budget of {}; if the machine has the memory, raise the budget with {ENV_VAR}=<bytes>",
        bytes.map_or_else(|| "more than 2^64 bytes".to_string(), human),
        human(*max_bytes)
    )]
    TooLarge {
        /// The tensor's element type.
        dtype: DType,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Its size in bytes, when it fits a `u64`.
        bytes: Option<u64>,
        /// The budget.
        max_bytes: u64,
    },
    /// The allocator refused memory for a tensor within the budget.
    #[error("cannot allocate a {dtype} tensor of shape {shape:?} ({}): out of memory", human(*bytes))]
    OutOfMemory {
        /// The tensor's element type.
        dtype: DType,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Its size in bytes.
        bytes: u64,
    },
    /// A budget given as text (the environment variable, a command-line option) is not a size.
    #[error("invalid tensor budget '{value}' (from {source_name}): expected a byte count such as 4294967296, 512M or 8GiB")]
    BadValue {
        /// The text given.
        value: String,
        /// Where it came from (the environment variable's name, an option).
        source_name: String,
    },
}

impl TensorBudget {
    /// The default budget: 4 GiB per tensor (see the module docs for why).
    pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

    /// A budget of `max_bytes` per tensor.
    pub const fn new(max_bytes: u64) -> Self {
        TensorBudget { max_bytes }
    }

    /// The budget [`ENV_VAR`] sets, or the default when it is unset or empty; an error when it
    /// is set to something that is not a size.
    pub fn from_env() -> Result<Self, BudgetError> {
        match std::env::var(ENV_VAR) {
            Ok(v) if !v.trim().is_empty() => {
                parse_size(&v).map(TensorBudget::new).ok_or_else(|| BudgetError::BadValue { value: v, source_name: ENV_VAR.into() })
            }
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(TensorBudget::default()),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(BudgetError::BadValue { value: v.to_string_lossy().into_owned(), source_name: ENV_VAR.into() })
            }
        }
    }

    /// The size of a `dtype` tensor of `shape` in bytes; `None` when it overflows `u64`.
    pub fn bytes(dtype: DType, shape: &[usize]) -> Option<u64> {
        shape.iter().try_fold(dtype.size_bytes() as u64, |acc, &d| acc.checked_mul(d as u64))
    }

    /// Checks that a `dtype` tensor of `shape` fits the budget; returns its element count.
    /// Call it before allocating the tensor.
    pub fn check(&self, dtype: DType, shape: &[usize]) -> Result<usize, BudgetError> {
        let too_large = |bytes| BudgetError::TooLarge { dtype, shape: shape.to_vec(), bytes, max_bytes: self.max_bytes };
        let bytes = Self::bytes(dtype, shape).ok_or_else(|| too_large(None))?;
        if bytes > self.max_bytes {
            return Err(too_large(Some(bytes)));
        }
        // Within the budget, so the element count fits a usize wherever the bytes fit memory.
        usize::try_from(bytes / dtype.size_bytes() as u64).map_err(|_| too_large(Some(bytes)))
    }

    /// Checks a tensor of `dtype` and `shape` against the budget, then reserves exactly its
    /// elements with fallible allocation: an allocation the system refuses is an error, not an
    /// abort. The vector is empty, with capacity for the tensor.
    pub fn reserve<T>(&self, dtype: DType, shape: &[usize]) -> Result<Vec<T>, BudgetError> {
        let n = self.check(dtype, shape)?;
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| BudgetError::OutOfMemory {
            dtype,
            shape: shape.to_vec(),
            bytes: Self::bytes(dtype, shape).unwrap_or(u64::MAX),
        })?;
        Ok(v)
    }

    /// Like [`TensorBudget::reserve`], filled with `value`.
    pub fn filled<T: Clone>(&self, dtype: DType, shape: &[usize], value: T) -> Result<Vec<T>, BudgetError> {
        let n = self.check(dtype, shape)?;
        let mut v = self.reserve(dtype, shape)?;
        v.resize(n, value);
        Ok(v)
    }
}

impl Default for TensorBudget {
    fn default() -> Self {
        TensorBudget::new(Self::DEFAULT_MAX_BYTES)
    }
}

impl fmt::Display for TensorBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human(self.max_bytes))
    }
}

impl FromStr for TensorBudget {
    type Err = BudgetError;

    /// Parses a byte count with an optional binary suffix (`4294967296`, `512M`, `8GiB`, `1t`).
    fn from_str(s: &str) -> Result<Self, BudgetError> {
        parse_size(s).map(TensorBudget::new).ok_or_else(|| BudgetError::BadValue { value: s.into(), source_name: "the option".into() })
    }
}

/// A byte count with an optional binary suffix; `None` when it is not one or overflows.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// `bytes` for people: `8 GiB (8589934592 bytes)`, or the plain count below 1 KiB.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let v = if v.fract() == 0.0 { format!("{v}") } else { format!("{v:.1}") };
    format!("{v} {} ({bytes} bytes)", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_bytes_with_overflow_and_names_the_variable() {
        let b = TensorBudget::new(1 << 20);
        assert_eq!(b.check(DType::F32, &[256, 1024]), Ok(256 * 1024));
        let e = b.check(DType::F32, &[256, 1025]).unwrap_err();
        assert!(matches!(e, BudgetError::TooLarge { bytes: Some(1049600), .. }));
        let msg = e.to_string();
        assert!(msg.contains("[256, 1025]") && msg.contains("1 MiB") && msg.contains(ENV_VAR), "{msg}");
        let e = b.check(DType::I64, &[usize::MAX, usize::MAX]).unwrap_err();
        assert!(matches!(e, BudgetError::TooLarge { bytes: None, .. }));
        assert!(e.to_string().contains("more than 2^64 bytes"));
        // An empty dimension makes an empty tensor, whatever the others.
        assert_eq!(b.check(DType::F32, &[0, usize::MAX]), Ok(0));
        assert_eq!(TensorBudget::default().to_string(), "4 GiB (4294967296 bytes)");
    }

    #[test]
    fn reserve_and_filled_allocate_exactly_within_the_budget() {
        let b = TensorBudget::new(64);
        let v: Vec<f32> = b.reserve(DType::F32, &[4, 4]).unwrap();
        assert!(v.is_empty() && v.capacity() >= 16);
        assert_eq!(b.filled(DType::F32, &[2, 3], 1.5f32).unwrap(), vec![1.5; 6]);
        assert!(b.filled(DType::F64, &[3, 3], 0.0f64).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        for (s, n) in [("4294967296", 4u64 << 30), ("512M", 512 << 20), ("8GiB", 8 << 30), (" 1t ", 1 << 40), ("3kb", 3072), ("7B", 7)] {
            assert_eq!(s.parse::<TensorBudget>().unwrap().max_bytes, n, "{s}");
        }
        for s in ["", "-1", "1.5G", "12X", "G", "99999999999999999999T"] {
            assert!(s.parse::<TensorBudget>().is_err(), "{s}");
        }
    }
}
