//! The parallel data copy: every worker reads the primary under the slot's exported snapshot and
//! streams COPY data straight into the standby, table part by table part.
//!
//! * Every worker opens `REPEATABLE READ` and imports the snapshot before its first query, so all
//!   parts see the primary exactly as of the slot's consistent point (guarantee 3).
//! * Tables larger than a part are split into ranges of heap blocks (`ctid` ranges, which
//!   PostgreSQL 14+ scans as TID ranges), so several workers can share one large table.
//! * COPY is binary, except for tables with a column whose binary form embeds type OIDs that
//!   differ between the two databases (composites, arrays of user-defined types): text there.
//! * The standby side runs with `session_replication_role = replica`: no triggers fire.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::pg::conninfo::ConnInfo;

/// Split tables larger than this into parts.
const PART_BYTES: i64 = 64 * 1024 * 1024;

/// One unit of copy work.
#[derive(Clone, Debug)]
pub(super) struct Part {
    /// `schema.table`, quoted.
    pub table: String,
    /// `schema.table` for people.
    pub display: String,
    pub columns: String,
    /// Block range `[from, to)`, or `None` for the whole table.
    pub blocks: Option<(i64, i64)>,
    pub part: i32,
    pub bytes_estimate: i64,
    pub binary: bool,
    pub partitioned: bool,
}

/// A finished part.
#[derive(Clone, Debug)]
pub(super) struct Copied {
    pub display: String,
    pub part: i32,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Shared counters the progress display reads.
#[derive(Default)]
pub(super) struct CopyCounters {
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
    pub parts_done: AtomicU64,
}

/// List the published tables and cut them into parts, largest first.
pub(super) async fn plan(primary: &Client, publication: &str, jobs: usize) -> Result<Vec<Part>> {
    let rows = primary
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname, \
                    c.relkind::text, pg_relation_size(c.oid), \
                    current_setting('block_size')::bigint, \
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) \
                       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                        AND NOT a.attisdropped AND a.attgenerated = ''), \
                    EXISTS (SELECT 1 FROM pg_attribute a \
                              JOIN pg_type t ON t.oid = a.atttypid \
                              LEFT JOIN pg_type b ON b.oid = t.typbasetype \
                              LEFT JOIN pg_type e ON e.oid = coalesce(nullif(b.typelem, 0), t.typelem) \
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                               AND (t.typtype = 'c' OR b.typtype = 'c' OR e.oid >= 16384)) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 AND pt.schemaname <> 'understudy' ORDER BY 4 DESC",
            &[&publication],
        )
        .await
        .context("while listing the published tables")?;
    let mut parts = Vec::new();
    for row in rows {
        let table: String = row.get(0);
        let display: String = row.get(1);
        let relkind: String = row.get(2);
        let size: i64 = row.get(3);
        let block_size: i64 = row.get(4);
        let columns: Option<String> = row.get(5);
        let text_only: bool = row.get(6);
        let partitioned = relkind == "p";
        let base = Part {
            table,
            display,
            columns: columns.unwrap_or_default(),
            blocks: None,
            part: 0,
            bytes_estimate: size,
            binary: !text_only,
            partitioned,
        };
        let target = PART_BYTES.max(size / (jobs as i64 * 2).max(1));
        if partitioned || size <= target || size <= PART_BYTES {
            parts.push(base);
            continue;
        }
        let blocks = size / block_size + 1;
        let per_part = (target / block_size).max(1);
        let mut from = 0;
        let mut n = 0;
        while from < blocks {
            // The last part is open-ended: it also takes rows in blocks added after the size read.
            let to = if from + per_part >= blocks {
                i64::MAX
            } else {
                from + per_part
            };
            parts.push(Part {
                blocks: Some((from, to)),
                part: n,
                bytes_estimate: per_part * block_size,
                ..base.clone()
            });
            n += 1;
            from += per_part;
        }
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes_estimate));
    Ok(parts)
}

/// One copy worker: imports the snapshot, then takes parts until none are left.
pub(super) async fn worker(
    primary: ConnInfo,
    standby: ConnInfo,
    snapshot: String,
    queue: Arc<Mutex<VecDeque<Part>>>,
    counters: Arc<CopyCounters>,
    current: Arc<Mutex<String>>,
) -> Result<Vec<Copied>> {
    let src = primary
        .connect("understudy bootstrap")
        .await
        .context("while connecting a copy worker to the primary")?;
    src.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::ident::quote_literal(&snapshot)
    ))
    .await
    .context("while importing the slot's snapshot (the exporting connection must stay open)")?;
    let dst = standby
        .connect("understudy bootstrap")
        .await
        .context("while connecting a copy worker to the standby")?;
    dst.batch_execute("SET session_replication_role = replica")
        .await
        .context("while setting up the standby copy session")?;
    let mut done = Vec::new();
    loop {
        let part = queue.lock().expect("queue lock").pop_front();
        let Some(part) = part else { break };
        *current.lock().expect("current lock") = part.display.clone();
        let copied = copy_part(&src, &dst, &part, &counters)
            .await
            .with_context(|| format!("while copying {}", part.display))?;
        counters.parts_done.fetch_add(1, Ordering::Relaxed);
        done.push(copied);
    }
    current.lock().expect("current lock").clear();
    src.batch_execute("COMMIT").await.ok();
    Ok(done)
}

async fn copy_part(
    src: &Client,
    dst: &Client,
    part: &Part,
    counters: &CopyCounters,
) -> Result<Copied> {
    let started = Instant::now();
    let format = if part.binary { "binary" } else { "text" };
    let only = if part.partitioned { "" } else { "ONLY " };
    let filter = match part.blocks {
        None => String::new(),
        Some((from, i64::MAX)) => format!(" WHERE ctid >= '({from},0)'::tid"),
        Some((from, to)) => format!(" WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid"),
    };
    let out_sql = format!(
        "COPY (SELECT {cols} FROM {only}{table}{filter}) TO STDOUT (FORMAT {format})",
        cols = part.columns,
        table = part.table
    );
    let in_sql = format!(
        "COPY {table} ({cols}) FROM STDIN (FORMAT {format})",
        table = part.table,
        cols = part.columns
    );
    let reader = src.copy_out(out_sql.as_str()).await?;
    let writer = dst.copy_in::<_, bytes::Bytes>(in_sql.as_str()).await?;
    futures_util::pin_mut!(reader);
    futures_util::pin_mut!(writer);
    let mut bytes = 0u64;
    while let Some(chunk) = reader.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        counters
            .bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        // `feed`, not `send`: the sink batches rows into 4 KiB CopyData messages only when it is
        // not flushed after each one.
        writer.feed(chunk).await?;
    }
    let rows = writer.finish().await?;
    counters.rows.fetch_add(rows, Ordering::Relaxed);
    Ok(Copied {
        display: part.display.clone(),
        part: part.part,
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
