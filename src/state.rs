//! understudy's own state on the standby database (`sql/understudy.sql`, schema `understudy`).
//!
//! * `understudy.source`: which primary the standby was copied from (system identifier, timeline,
//!   slot, publication, consistent point) and whether the copy is complete (`copying`/`ready`).
//! * `understudy.progress`: `applied_lsn`, the position before which every primary transaction is
//!   applied. It is written in the same standby transaction as the changes it covers, so it can
//!   never disagree with the data (guarantee 2, exactly-once apply).
//!
//! Invariant: the flush position understudy reports to the primary never passes `applied_lsn`.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::lsn::Lsn;

/// The schema understudy keeps its own state in, on every node.
pub const SCHEMA: &str = "understudy";

/// Advisory lock key held by the one applier of a standby database (follow, replay, promote).
pub(crate) const APPLY_LOCK: (i32, i32) = (0x756e_6465, 1);

/// The SQL that creates understudy's schema.
pub const SCHEMA_SQL: &str = include_str!("../sql/understudy.sql");

/// Bootstrap is still copying, or is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    Copying,
    Ready,
}

/// The `understudy.source` row.
#[derive(Clone, Debug)]
pub struct Source {
    pub primary_system_id: String,
    pub primary_timeline: u32,
    pub primary_dbname: String,
    pub slot_name: String,
    pub publication: String,
    pub consistent_point: Lsn,
    pub state: SourceState,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// The `understudy.progress` row.
#[derive(Clone, Debug)]
pub struct Progress {
    pub applied_lsn: Lsn,
    pub last_commit_lsn: Option<Lsn>,
    /// `last_commit_time` as text (ISO, UTC), when a transaction was applied.
    pub last_commit_time: Option<String>,
}

/// Create understudy's schema (idempotent).
pub async fn install(client: &Client) -> Result<()> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("while creating understudy's schema on the standby")
}

/// Read the source row, or `None` when this database was never bootstrapped.
pub async fn read_source(client: &Client) -> Result<Option<Source>> {
    if !schema_exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT primary_system_id, primary_timeline, primary_dbname, slot_name, publication, \
                    consistent_point::text, state, started_at::text, finished_at::text \
             FROM understudy.source WHERE id = 1",
            &[],
        )
        .await
        .context("while reading understudy.source on the standby")?;
    let Some(row) = row else { return Ok(None) };
    let lsn: String = row.get(5);
    let state: String = row.get(6);
    Ok(Some(Source {
        primary_system_id: row.get(0),
        primary_timeline: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
        primary_dbname: row.get(2),
        slot_name: row.get(3),
        publication: row.get(4),
        consistent_point: lsn.parse()?,
        state: if state == "ready" {
            SourceState::Ready
        } else {
            SourceState::Copying
        },
        started_at: row.get(7),
        finished_at: row.get(8),
    }))
}

/// Read the progress row, or `None` when there is none yet.
pub async fn read_progress(client: &Client) -> Result<Option<Progress>> {
    if !schema_exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT applied_lsn::text, last_commit_lsn::text, \
                    to_char(last_commit_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM understudy.progress WHERE id = 1",
            &[],
        )
        .await
        .context("while reading understudy.progress on the standby")?;
    let Some(row) = row else { return Ok(None) };
    let applied: String = row.get(0);
    let last: Option<String> = row.get(1);
    Ok(Some(Progress {
        applied_lsn: applied.parse()?,
        last_commit_lsn: last.map(|l| l.parse()).transpose()?,
        last_commit_time: row.get(2),
    }))
}

/// Whether the `understudy` schema exists in this database.
pub async fn schema_exists(client: &Client) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass('understudy.progress') IS NOT NULL", &[])
        .await
        .context("while looking for understudy's schema")?;
    Ok(row.get(0))
}
