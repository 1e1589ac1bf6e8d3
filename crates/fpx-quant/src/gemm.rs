//! The quantized matrix product as every stage sees it: [`QuantGemm`] (what one
//! `fpx:QuantMatMul` computes) and [`KernelTable`] (which kernel a backend runs for which M).
//!
//! The quantize pass writes a `QuantGemm` into the node's attributes (`fpx_ir::ops::quant_matmul`
//! converts both ways), the reference kernel, both code generators and the runtimes read it back
//! from there, and each backend answers a model's `QuantGemm`s with one `KernelTable` per node,
//! which the artifact stores and the runtime picks from by M. The auto-tuner writes the same
//! tables.

use crate::act8::{self, Activations};
use crate::layout::PackedShape;
use crate::Format;
use std::fmt;

/// Largest K, N or group size a quantized product may have: the kernels compute some offsets
/// in 32-bit arithmetic, so every dimension stays well inside `i32`.
pub const MAX_DIM: usize = 1 << 30;

/// One quantized matrix product `Y[m][n] = X[m][k] · W[k][n] (+ bias)`, with `W` stored as codes
/// of `format` and one scale per output channel and group of `group_size` rows of K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuantGemm {
    /// Code format of the packed weight.
    pub format: Format,
    /// Reduction length (columns of X, rows of W).
    pub k: usize,
    /// Output channels (columns of W and Y).
    pub n: usize,
    /// Rows of K per scale group; 0 = one group (one scale per output channel).
    pub group_size: usize,
    /// What the weights multiply.
    pub activations: Activations,
}

/// Why a [`QuantGemm`] is not one fpx can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    /// K or N is 0 or exceeds [`MAX_DIM`].
    #[error("{}", dimensions_message(*k, *n))]
    Dimensions {
        /// The reduction length.
        k: usize,
        /// The output channels.
        n: usize,
    },
    /// The group size exceeds [`MAX_DIM`].
    #[error("group size {group_size} must be at most {MAX_DIM}")]
    GroupTooLarge {
        /// The group size.
        group_size: usize,
    },
    /// The weight format has no integer values that int8 activations could multiply.
    #[error("{format} weights cannot take int8 activations (only {} can)", int8_format_list())]
    Int8Format {
        /// The format.
        format: Format,
    },
    /// Int8 activations are quantized per block of 32 columns of K; weight groups must align.
    #[error("int8 activations need one scale per output channel or groups that are a multiple of {}, not {group_size}", act8::BLOCK)]
    Int8Groups {
        /// The group size.
        group_size: usize,
    },
}

/// What [`GemmError::Dimensions`] says: which dimension is empty or too large.
fn dimensions_message(k: usize, n: usize) -> String {
    if k == 0 || n == 0 {
        format!("K = {k} and N = {n} must be positive")
    } else {
        format!("K = {k} and N = {n} must be at most {MAX_DIM}")
    }
}

/// The rules a group size must follow whatever the weight's shape: at most [`MAX_DIM`], and with
/// int8 activations (quantized per block of [`act8::BLOCK`] columns) a multiple of that block or
/// 0 (per channel). [`QuantGemm::validate`] and the quantization options both check them here.
pub fn check_group_size(group_size: usize, activations: Activations) -> Result<(), GemmError> {
    if group_size > MAX_DIM {
        return Err(GemmError::GroupTooLarge { group_size });
    }
    if activations == Activations::Int8 && !group_size.is_multiple_of(act8::BLOCK) {
        return Err(GemmError::Int8Groups { group_size });
    }
    Ok(())
}

impl QuantGemm {
    /// Checks that fpx can run this product: dimensions in range, and int8 activations only
    /// with a format that [`takes_int8_activations`] and groups aligned to their blocks.
    pub fn validate(&self) -> Result<(), GemmError> {
        if self.k == 0 || self.n == 0 || self.k > MAX_DIM || self.n > MAX_DIM {
            return Err(GemmError::Dimensions { k: self.k, n: self.n });
        }
        if self.activations == Activations::Int8 && !takes_int8_activations(self.format) {
            return Err(GemmError::Int8Format { format: self.format });
        }
        check_group_size(self.group_size, self.activations)
    }

    /// The number of scale groups along K: `ceil(k / group_size)`, or 1 per channel.
    pub fn groups(&self) -> usize {
        if self.group_size == 0 {
            1
        } else {
            self.k.div_ceil(self.group_size)
        }
    }

    /// The shape of the packed 4+2 weight.
    pub fn packed_shape(&self) -> PackedShape {
        PackedShape::new(self.n, self.k, self.format.bits())
    }

    /// Whether there is one scale per output channel (no groups along K, or one group that
    /// covers K).
    pub fn per_channel(&self) -> bool {
        self.group_size == 0 || self.group_size >= self.k
    }
}

impl fmt::Display for QuantGemm {
    /// `fp6-e3m2 k=384 n=1536 per-channel` (`g128` for groups, then the activations' tag: `a8` for
    /// int8, `f8e4m3` for FP8 e4m3).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} k={} n={}", self.format, self.k, self.n)?;
        match self.group_size {
            0 => f.write_str(" per-channel")?,
            g => write!(f, " g{g}")?,
        }
        if self.activations != Activations::F32 {
            write!(f, " {}", self.activations.tag())?;
        }
        Ok(())
    }
}

/// Whether products with `format` weights may take int8 activations: the format's stored values
/// are small integers in a power-of-two unit ([`act8::int8_units`]) and its codes are 4 or 6 bits
/// wide (what the byte decoders of the int8 kernels unpack). This is the one answer every stage
/// uses: option checks, the quantize pass, the kernels and the CLI help.
pub fn takes_int8_activations(format: Format) -> bool {
    matches!(format.bits(), 4 | 6) && act8::int8_units(format).is_some()
}

/// The formats that [`takes_int8_activations`], in [`Format::ALL`] order.
pub fn int8_formats() -> impl Iterator<Item = Format> {
    Format::ALL.into_iter().filter(|f| takes_int8_activations(*f))
}

/// [`int8_formats`] as text: `fp6-e2m3, fp4-e2m1 or int4`.
pub fn int8_format_list() -> String {
    let names: Vec<&str> = int8_formats().map(Format::name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    }
}

/// Which kernel entry serves which number of rows M: `(max_m, entry)` rows in ascending
/// `max_m`, the last with `max_m == 0` meaning "any larger M". Each backend returns one per
/// quantized product; the runtime picks from it with [`KernelTable::pick`], the CPU and the GPU
/// alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable<E> {
    rows: Vec<(u64, E)>,
}

/// Why a list of `(max_m, entry)` rows is not a [`KernelTable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No rows at all.
    #[error("no kernel listed")]
    Empty,
    /// A row's `max_m` does not exceed the previous one's.
    #[error("M ranges out of order ({previous}, then {next})")]
    OutOfOrder {
        /// The previous row's `max_m`.
        previous: u64,
        /// The offending row's `max_m`.
        next: u64,
    },
    /// The last row has a bound: large M would have no kernel.
    #[error("no kernel for M above {0} (the last row must have max_m 0)")]
    Unbounded(u64),
}

impl<E> KernelTable<E> {
    /// A table from rows in ascending `max_m`, the last with `max_m == 0`.
    pub fn new(rows: Vec<(u64, E)>) -> Result<KernelTable<E>, TableError> {
        let Some(&(last, _)) = rows.last() else { return Err(TableError::Empty) };
        if last != 0 {
            return Err(TableError::Unbounded(last));
        }
        for w in rows.windows(2) {
            let (previous, next) = (w[0].0, w[1].0);
            if previous == 0 || (next != 0 && next <= previous) {
                return Err(TableError::OutOfOrder { previous, next });
            }
        }
        Ok(KernelTable { rows })
    }

    /// One entry for every M.
    pub fn single(entry: E) -> KernelTable<E> {
        KernelTable { rows: vec![(0, entry)] }
    }

    /// The entry for `m` rows: the first row whose `max_m` is at least `m`, else the last.
    pub fn pick(&self, m: usize) -> &E {
        let m = m as u64;
        let row = self.rows.iter().find(|(max_m, _)| *max_m == 0 || m <= *max_m);
        // `new` guarantees a last row with max_m 0, which every m reaches.
        &row.unwrap_or(&self.rows[self.rows.len() - 1]).1
    }

    /// The rows, in ascending `max_m` (the last 0).
    pub fn rows(&self) -> &[(u64, E)] {
        &self.rows
    }

    /// The same table with every entry mapped (fallibly).
    pub fn try_map<F, T, Er>(&self, mut f: F) -> Result<KernelTable<T>, Er>
    where
        F: FnMut(&E) -> Result<T, Er>,
    {
        let rows = self.rows.iter().map(|(m, e)| Ok((*m, f(e)?))).collect::<Result<Vec<_>, Er>>()?;
        Ok(KernelTable { rows })
    }

    /// The same ranges of M with every entry mapped by `f`.
    pub fn map<T>(&self, mut f: impl FnMut(&E) -> T) -> KernelTable<T> {
        KernelTable { rows: self.rows.iter().map(|(m, e)| (*m, f(e))).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemm(format: Format, group_size: usize, activations: Activations) -> QuantGemm {
        QuantGemm { format, k: 256, n: 64, group_size, activations }
    }

    #[test]
    fn int8_formats_are_the_4_and_6_bit_integer_valued_ones() {
        let names: Vec<&str> = int8_formats().map(Format::name).collect();
        assert_eq!(names, ["fp6-e2m3", "fp4-e2m1", "int4"]);
        assert_eq!(int8_format_list(), "fp6-e2m3, fp4-e2m1 or int4");
        // FP5 e2m2 has integer values (quarters) but 5-bit codes: no int8 kernels decode it.
        assert!(act8::int8_units(Format::Fp5E2M2).is_some() && !takes_int8_activations(Format::Fp5E2M2));
    }

    #[test]
    fn validate_checks_dimensions_and_int8_rules() {
        for f in Format::ALL {
            assert_eq!(gemm(f, 0, Activations::F32).validate(), Ok(()));
            assert_eq!(gemm(f, 48, Activations::F32).validate(), Ok(()));
            let a8 = gemm(f, 64, Activations::Int8).validate();
            assert_eq!(a8.is_ok(), takes_int8_activations(f), "{f}");
            // FP8 activations go with every format and any groups.
            for fp8 in [Activations::Fp8E4M3, Activations::Fp8E5M2] {
                assert_eq!(gemm(f, 48, fp8).validate(), Ok(()), "{f} {fp8}");
            }
        }
        assert_eq!(gemm(Format::Fp4E2M1, 128, Activations::Fp8E4M3).to_string(), "fp4-e2m1 k=256 n=64 g128 f8e4m3");
        assert_eq!(gemm(Format::Int4, 48, Activations::Int8).validate(), Err(GemmError::Int8Groups { group_size: 48 }));
        let mut g = gemm(Format::Fp6E3M2, 0, Activations::F32);
        g.k = 0;
        assert!(matches!(g.validate(), Err(GemmError::Dimensions { .. })));
        g.k = 8;
        g.group_size = usize::MAX;
        assert_eq!(g.validate(), Err(GemmError::GroupTooLarge { group_size: usize::MAX }));
        assert!(g.validate().unwrap_err().to_string().contains(&usize::MAX.to_string()));
        let e = gemm(Format::Fp6E3M2, 0, Activations::Int8).validate().unwrap_err().to_string();
        assert!(e.contains("fp6-e3m2") && e.contains("fp6-e2m3, fp4-e2m1 or int4"), "{e}");
    }

    #[test]
    fn tables_pick_by_m_and_refuse_bad_rows() {
        let t = KernelTable::new(vec![(8, "gemv"), (64, "mid"), (0, "gemm")]).unwrap();
        let picks: Vec<&str> = [0, 1, 8, 9, 64, 65, 10_000].iter().map(|&m| *t.pick(m)).collect();
        assert_eq!(picks, ["gemv", "gemv", "gemv", "mid", "mid", "gemm", "gemm"]);
        assert_eq!(*KernelTable::single("any").pick(123), "any");
        assert_eq!(KernelTable::<u8>::new(vec![]), Err(TableError::Empty));
        assert_eq!(KernelTable::new(vec![(8, 1), (16, 2)]), Err(TableError::Unbounded(16)));
        assert_eq!(KernelTable::new(vec![(8, 1), (8, 2), (0, 3)]), Err(TableError::OutOfOrder { previous: 8, next: 8 }));
        assert_eq!(KernelTable::new(vec![(0, 1), (0, 2)]), Err(TableError::OutOfOrder { previous: 0, next: 0 }));
        let doubled: KernelTable<i32> = KernelTable::new(vec![(4, 1), (0, 2)]).unwrap().try_map(|v| Ok::<_, ()>(v * 2)).unwrap();
        assert_eq!(doubled.rows(), [(4, 2), (0, 4)]);
    }
}
