//! The `Lsn` type: a PostgreSQL write-ahead-log position.
//!
//! PostgreSQL prints an LSN as two hexadecimal halves, `X/Y` (upper and lower 32 bits); this is
//! the only text form understudy reads or writes, in config, on the command line, in JSON and in
//! its own schema (as `pg_lsn`). `0/0` is `Lsn::ZERO`, which the server treats as "invalid":
//! understudy never reports it as a flush position.
//! See <https://www.postgresql.org/docs/15/datatype-pg-lsn.html>.

use std::fmt;
use std::str::FromStr;

/// A position in the primary's write-ahead log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: no position.
    pub const ZERO: Lsn = Lsn(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The text could not be read as an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not an LSN: expected two hexadecimal numbers separated by '/', such as 0/16B3748"
)]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_postgres_form() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("a/b", 0xA_0000_000B),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.0, value, "{text}");
            assert_eq!(lsn.to_string(), text.to_uppercase());
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "16B3748",
            "0/G",
            "1/2/3",
            "123456789/0",
            "-1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn orders_numerically_and_measures_distance() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.bytes_since(a), 1);
        assert_eq!(a.bytes_since(b), 0);
    }

    #[test]
    fn serde_uses_text_form() {
        let lsn: Lsn = "2/1A2B3C4".parse().unwrap();
        let json = serde_json::to_string(&lsn).unwrap();
        assert_eq!(json, "\"2/1A2B3C4\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), lsn);
    }
}
