//! `understudy status`: the slot on the primary, the applied position on the standby, and the lag
//! between them, as text or JSON; with `--journal DIR`, the follow journal too (its files, and
//! what the follower last reported about it: the journal is not opened, which would take its lock).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::follow::JournalReport;
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::state;

/// The slot as the primary sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    pub active: bool,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// WAL the slot keeps on the primary, in bytes.
    pub retained_wal_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// Everything `status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub primary_wal_lsn: Lsn,
    pub slot: SlotStatus,
    pub bootstrap_state: String,
    pub applied_lsn: Lsn,
    pub last_commit_lsn: Option<Lsn>,
    pub last_commit_time: Option<String>,
    pub lag_bytes: u64,
    /// Seconds since the last applied transaction committed on the primary, while behind.
    pub lag_seconds: f64,
    /// The follow journal, when asked for (`--journal DIR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalStatus>,
}

/// A follow journal: its segment files, and what the follower last reported.
#[derive(Clone, Debug, Serialize)]
pub struct JournalStatus {
    pub dir: String,
    /// Segment files in the directory.
    pub segments: usize,
    /// Bytes in the segment files.
    pub size_bytes: u64,
    /// `--journal-max-bytes` of the follower that reported.
    pub max_bytes: Option<u64>,
    /// The journal holds every transaction committing at or after this LSN.
    pub oldest_lsn: Option<Lsn>,
    /// Every transaction committing before this LSN is fsynced in the journal.
    pub durable_lsn: Option<Lsn>,
    /// The journal is full: follow is not reading the primary's stream.
    pub full: Option<bool>,
    /// `journal` or `applied`.
    pub ack: Option<String>,
    /// Whether the follower was running when it last reported.
    pub follower_running: Option<bool>,
    pub follower_pid: Option<u32>,
    /// Seconds since the follower last reported (about every second while it runs).
    pub reported_seconds_ago: Option<f64>,
}

/// Read a follow journal's state without opening it.
pub fn read_journal(dir: &Path) -> Result<JournalStatus> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "while reading journal directory {} (give the --journal DIR that follow uses)",
            dir.display()
        )
    })?;
    let (mut segments, mut size_bytes) = (0, 0);
    for entry in entries {
        let entry = entry.with_context(|| format!("while reading {}", dir.display()))?;
        if entry.file_name().to_string_lossy().ends_with(".seg") {
            segments += 1;
            size_bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    let report = JournalReport::read(dir)
        .with_context(|| format!("while reading the follower's report in {}", dir.display()))?;
    Ok(JournalStatus {
        dir: dir.display().to_string(),
        segments,
        size_bytes,
        max_bytes: report.as_ref().map(|r| r.max_bytes),
        oldest_lsn: report.as_ref().map(|r| r.oldest_lsn),
        durable_lsn: report.as_ref().map(|r| r.durable_lsn),
        full: report.as_ref().map(|r| r.full),
        ack: report.as_ref().map(|r| r.ack.clone()),
        follower_running: report.as_ref().map(|r| r.running),
        follower_pid: report.as_ref().map(|r| r.pid),
        reported_seconds_ago: report.as_ref().map(|r| r.age_seconds()),
    })
}

impl std::fmt::Display for JournalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal:          {}: {} segments, {} bytes",
            self.dir, self.segments, self.size_bytes
        )?;
        let (Some(max), Some(oldest), Some(durable)) =
            (self.max_bytes, self.oldest_lsn, self.durable_lsn)
        else {
            return write!(f, " (no follower has reported on it)");
        };
        write!(
            f,
            " of at most {max}, oldest {oldest}, durable {durable}, ack {} (follow pid {} {} {:.1} s ago)",
            self.ack.as_deref().unwrap_or("-"),
            self.follower_pid.unwrap_or(0),
            if self.follower_running == Some(true) {
                "reported"
            } else {
                "stopped"
            },
            self.reported_seconds_ago.unwrap_or(0.0)
        )?;
        if self.full == Some(true) {
            write!(
                f,
                "\njournal FULL:     follow stopped reading the primary's stream: the slot does \
                 not advance and the primary retains WAL until the standby applies and retention \
                 frees space"
            )?;
        }
        Ok(())
    }
}

/// Read the status of a primary/standby pair.
pub async fn read(primary: &ConnInfo, standby: &ConnInfo) -> Result<Status> {
    let s = standby
        .connect("understudy status")
        .await
        .context("while connecting to the standby")?;
    let source = state::read_source(&s).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} was never bootstrapped: run `understudy bootstrap` first",
            standby.redacted()
        )
    })?;
    let progress = state::read_progress(&s).await?;
    let p = primary
        .connect("understudy status")
        .await
        .context("while connecting to the primary")?;
    let wal: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let primary_wal_lsn: Lsn = wal.parse()?;
    let slot_row = p
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&source.slot_name],
        )
        .await?;
    let slot = match slot_row {
        Some(r) => SlotStatus {
            name: source.slot_name.clone(),
            exists: true,
            active: r.get(0),
            confirmed_flush_lsn: r
                .get::<_, Option<String>>(1)
                .map(|t| t.parse())
                .transpose()?,
            retained_wal_bytes: r.get(2),
            wal_status: r.get(3),
        },
        None => SlotStatus {
            name: source.slot_name.clone(),
            exists: false,
            active: false,
            confirmed_flush_lsn: None,
            retained_wal_bytes: None,
            wal_status: None,
        },
    };
    let applied = progress.as_ref().map_or(Lsn::ZERO, |p| p.applied_lsn);
    let lag_bytes = primary_wal_lsn.bytes_since(applied);
    // While behind: seconds since the last applied transaction committed on the primary (or,
    // before any, since bootstrap finished): the age of the oldest change not yet applied is at
    // most that.
    let reference = progress
        .as_ref()
        .and_then(|pr| pr.last_commit_time.clone())
        .or(source.finished_at.clone());
    let lag_seconds = match (lag_bytes, reference) {
        (0, _) | (_, None) => 0.0,
        (_, Some(at)) => {
            let secs: Option<f64> = p
                .query_one(
                    "SELECT extract(epoch FROM now() - $1::text::timestamptz)::float8",
                    &[&at],
                )
                .await?
                .get(0);
            secs.unwrap_or(0.0).max(0.0)
        }
    };
    Ok(Status {
        primary_wal_lsn,
        slot,
        bootstrap_state: format!("{:?}", source.state).to_lowercase(),
        applied_lsn: applied,
        last_commit_lsn: progress.as_ref().and_then(|p| p.last_commit_lsn),
        last_commit_time: progress.and_then(|p| p.last_commit_time),
        lag_bytes,
        lag_seconds,
        journal: None,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "bootstrap:        {}", self.bootstrap_state)?;
        writeln!(f, "primary WAL:      {}", self.primary_wal_lsn)?;
        if self.slot.exists {
            writeln!(
                f,
                "slot {}:   {}, confirmed flush {}, retains {} bytes of WAL, wal_status {}",
                self.slot.name,
                if self.slot.active {
                    "active"
                } else {
                    "inactive"
                },
                self.slot
                    .confirmed_flush_lsn
                    .map_or("-".into(), |l| l.to_string()),
                self.slot.retained_wal_bytes.unwrap_or(0),
                opt(&self.slot.wal_status)
            )?;
        } else {
            writeln!(
                f,
                "slot {}:   MISSING on the primary (run `understudy bootstrap --force`)",
                self.slot.name
            )?;
        }
        writeln!(f, "standby applied:  {}", self.applied_lsn)?;
        writeln!(
            f,
            "last transaction: commit {} at {}",
            self.last_commit_lsn.map_or("-".into(), |l| l.to_string()),
            opt(&self.last_commit_time)
        )?;
        write!(
            f,
            "lag:              {} bytes, {:.1} s",
            self.lag_bytes, self.lag_seconds
        )?;
        if let Some(j) = &self.journal {
            write!(f, "\n{j}")?;
        }
        Ok(())
    }
}
