//! RFC 3339 text for commit times, without a date crate: the proleptic Gregorian calendar of
//! PostgreSQL's `timestamptz`, in UTC, to the millisecond.

/// Formats µs since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`, truncating to milliseconds
/// (toward the past, also before 1970). Years outside 0..=9999 print with more digits or a sign;
/// no commit time is there.
pub fn format_unix_micros(micros: i64) -> String {
    let millis = micros.div_euclid(1000);
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Year, month (1..=12), day (1..=31) of a day count since 1970-01-01, after Howard Hinnant's
/// `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::pg_time_to_unix_micros;

    #[test]
    fn formats_known_instants() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_660_800_123_456, "2026-11-26T02:40:00.123Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000Z"),
            (1_709_251_199_999_999, "2024-02-29T23:59:59.999Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-62_135_596_800_000_000, "0001-01-01T00:00:00.000Z"),
            (253_402_300_799_999_000, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_unix_micros(micros), text, "{micros}");
        }
    }

    #[test]
    fn postgres_epoch_and_just_before_it() {
        assert_eq!(
            format_unix_micros(pg_time_to_unix_micros(0)),
            "2000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_unix_micros(pg_time_to_unix_micros(-1)),
            "1999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_is_consecutive() {
        // 1900-03-01 .. 2300-03-01 crosses the 1900/2100/2200 non-leap and 2000 leap rules.
        let mut prev = civil_from_days(-25_508); // 1900-03-01
        assert_eq!(prev, (1900, 3, 1));
        for days in -25_507..(-25_508 + 146_097) {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1) && pd >= 28;
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{prev:?} -> {y}-{m}-{d}"
            );
            if (pm, pd) == (2, 29) {
                assert!(
                    py % 4 == 0 && (py % 100 != 0 || py % 400 == 0),
                    "{py}-02-29"
                );
            }
            prev = (y, m, d);
        }
        assert_eq!(prev, (2300, 2, 28));
    }
}
