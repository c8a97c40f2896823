//! The journal as the follower last reported it: `follow-status.json` in the journal directory,
//! rewritten (write to a temporary file, then rename) about once a second and whenever the
//! journal fills up or frees space, so `understudy status --journal DIR` can show it without
//! opening the journal (which would take its lock and recover it).
//!
//! The file is advisory: it is not fsynced and nothing reads it to decide anything; the journal's
//! segments stay the only source of truth. The journal ignores files that are not segments.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// The report's file name inside the journal directory.
pub const REPORT_FILE: &str = "follow-status.json";

/// What the follower last reported about its journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalReport {
    /// The follower's process id.
    pub pid: u32,
    /// When this was written, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Every transaction committing before this LSN is fsynced in the journal.
    pub durable_lsn: Lsn,
    /// The journal holds every transaction committing at or after this LSN.
    pub oldest_lsn: Lsn,
    /// Bytes in the segment files.
    pub size_bytes: u64,
    /// `--journal-max-bytes`.
    pub max_bytes: u64,
    /// Reading from the primary is paused until retention frees space.
    pub full: bool,
    /// `journal` or `applied`: what the flush position acknowledged to the primary stands for.
    pub ack: String,
    /// Whether the follower is still running (false in the report it writes when it stops).
    pub running: bool,
}

impl JournalReport {
    /// Seconds since the report was written (0 when the clock went backwards).
    pub fn age_seconds(&self) -> f64 {
        let now = unix_ms(SystemTime::now());
        now.saturating_sub(self.updated_unix_ms) as f64 / 1000.0
    }
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Replace the report in `dir`.
pub(super) fn write(dir: &Path, report: &JournalReport) -> io::Result<()> {
    let tmp = dir.join(format!("{REPORT_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join(REPORT_FILE))
}

impl JournalReport {
    /// The report in `dir`, `None` when no follower has written one.
    pub fn read(dir: &Path) -> io::Result<Option<JournalReport>> {
        match std::fs::read(dir.join(REPORT_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JournalReport::read(dir.path()).unwrap(), None);
        let report = JournalReport {
            pid: 42,
            updated_unix_ms: unix_ms(SystemTime::now()),
            durable_lsn: "0/16B3748".parse().unwrap(),
            oldest_lsn: "0/1000000".parse().unwrap(),
            size_bytes: 1234,
            max_bytes: 1 << 30,
            full: true,
            ack: "journal".into(),
            running: true,
        };
        write(dir.path(), &report).unwrap();
        assert_eq!(
            JournalReport::read(dir.path()).unwrap(),
            Some(report.clone())
        );
        assert!(report.age_seconds() < 60.0);
    }
}
