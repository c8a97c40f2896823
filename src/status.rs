//! `understudy status`: the slot on the primary, the applied position on the standby, and the lag
//! between them, as text or JSON.

use anyhow::{Context, Result};
use serde::Serialize;

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
    let lag_seconds = match (&progress, lag_bytes) {
        (_, 0) => 0.0,
        (Some(pr), _) if pr.last_commit_time.is_some() => {
            let secs: Option<f64> = p
                .query_one(
                    "SELECT extract(epoch FROM now() - $1::text::timestamptz)::float8",
                    &[&pr.last_commit_time],
                )
                .await?
                .get(0);
            secs.unwrap_or(0.0).max(0.0)
        }
        _ => 0.0,
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
        )
    }
}
