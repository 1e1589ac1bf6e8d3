//! The ranges of M (rows of activations) a kernel choice is tuned for.

use std::fmt;

/// A range of M: 1, 2–4, 5–8, 9–16, 17–32, 33–64, 65–128, 129–256, > 256. Decode steps are
/// M = batch size; prompts and encoders are M = tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MBucket {
    /// M = 1.
    M1,
    /// M in 2..=4.
    M2To4,
    /// M in 5..=8.
    M5To8,
    /// M in 9..=16.
    M9To16,
    /// M in 17..=32.
    M17To32,
    /// M in 33..=64.
    M33To64,
    /// M in 65..=128.
    M65To128,
    /// M in 129..=256.
    M129To256,
    /// M above 256.
    Above256,
}

impl MBucket {
    /// Every bucket, in order of M.
    pub const ALL: [MBucket; 9] = [
        MBucket::M1,
        MBucket::M2To4,
        MBucket::M5To8,
        MBucket::M9To16,
        MBucket::M17To32,
        MBucket::M33To64,
        MBucket::M65To128,
        MBucket::M129To256,
        MBucket::Above256,
    ];

    /// The smallest and largest M of the bucket (`u64::MAX` above 256).
    pub fn range(self) -> (u64, u64) {
        match self {
            MBucket::M1 => (1, 1),
            MBucket::M2To4 => (2, 4),
            MBucket::M5To8 => (5, 8),
            MBucket::M9To16 => (9, 16),
            MBucket::M17To32 => (17, 32),
            MBucket::M33To64 => (33, 64),
            MBucket::M65To128 => (65, 128),
            MBucket::M129To256 => (129, 256),
            MBucket::Above256 => (257, u64::MAX),
        }
    }

    /// The kernel table's bound for this bucket: its largest M, 0 (unbounded) above 256.
    pub fn max_m(self) -> u64 {
        match self {
            MBucket::Above256 => 0,
            b => b.range().1,
        }
    }

    /// The M values a candidate is timed at: both ends of a small bucket (register blocks
    /// change inside 2–8), the top of a larger one, 512 above 256.
    pub fn samples(self) -> Vec<usize> {
        match self {
            MBucket::M2To4 | MBucket::M5To8 => {
                let (lo, hi) = self.range();
                vec![lo as usize, hi as usize]
            }
            MBucket::Above256 => vec![512],
            b => vec![b.range().1 as usize],
        }
    }

    /// The bucket holding `m` (`m` ≥ 1).
    pub fn of(m: u64) -> MBucket {
        MBucket::ALL.into_iter().find(|b| m <= b.range().1).unwrap_or(MBucket::Above256)
    }

    /// `1`, `2-4`, …, `>256`: how the database and the tables write it.
    pub fn label(self) -> &'static str {
        match self {
            MBucket::M1 => "1",
            MBucket::M2To4 => "2-4",
            MBucket::M5To8 => "5-8",
            MBucket::M9To16 => "9-16",
            MBucket::M17To32 => "17-32",
            MBucket::M33To64 => "33-64",
            MBucket::M65To128 => "65-128",
            MBucket::M129To256 => "129-256",
            MBucket::Above256 => ">256",
        }
    }

    /// The bucket with this [`label`](MBucket::label).
    pub fn parse(s: &str) -> Option<MBucket> {
        MBucket::ALL.into_iter().find(|b| b.label() == s)
    }

    /// The buckets up to and including the one holding `max_m`.
    pub fn up_to(max_m: u64) -> Vec<MBucket> {
        let last = MBucket::of(max_m.max(1));
        MBucket::ALL.into_iter().filter(|b| *b <= last).collect()
    }
}

impl fmt::Display for MBucket {
    /// Writes [`MBucket::label`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for MBucket {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl<'de> serde::Deserialize<'de> for MBucket {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MBucket, D::Error> {
        let s = String::deserialize(d)?;
        MBucket::parse(&s).ok_or_else(|| {
            let labels: Vec<&str> = MBucket::ALL.iter().map(|b| b.label()).collect();
            serde::de::Error::custom(format!("unknown M bucket '{s}' (one of {})", labels.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_m_once_and_round_trip() {
        for m in 1..=600u64 {
            let b = MBucket::of(m);
            let (lo, hi) = b.range();
            assert!(lo <= m && m <= hi, "{m} in {b}");
            for s in b.samples() {
                assert_eq!(MBucket::of(s as u64), b, "sample {s} of {b}");
            }
        }
        for b in MBucket::ALL {
            assert_eq!(MBucket::parse(b.label()), Some(b));
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<MBucket>(&json).unwrap(), b);
        }
        assert!(serde_json::from_str::<MBucket>("\"3-7\"").unwrap_err().to_string().contains("unknown M bucket '3-7'"));
        assert_eq!(MBucket::up_to(16), &MBucket::ALL[..4]);
        assert_eq!(MBucket::Above256.max_m(), 0);
    }
}
