//! `understudy bootstrap`: the consistent initial copy (the patent's first synchronisation).
//!
//! Order (guarantee 3, no gap and no overlap):
//! 1. preflight, before anything is created (every problem at once, each with its fix);
//! 2. the publication (before the slot: pgoutput reads publications through the slot's
//!    historic snapshot, so a publication made later would not exist for it);
//! 3. the slot, created on a replication connection with an exported snapshot; that connection
//!    stays open and idle until every reader has imported the snapshot;
//! 4. the schema's pre-data section, dumped under the snapshot;
//! 5. the data, copied in parallel under the snapshot;
//! 6. the post-data section (indexes, constraints, triggers), restored in parallel;
//! 7. sequences; then `understudy.source` turns `ready` and `understudy.progress` starts at the
//!    slot's consistent point, which is where `follow` begins streaming.
//!
//! An interrupted or failed bootstrap drops the slot it made (so the primary does not keep WAL
//! for it) and leaves `understudy.source` in state `copying`: a rerun refuses and names
//! `--force`, which drops the partial copy and starts again. The exported snapshot dies with its
//! connection, so a copy cannot be resumed consistently.

mod copy;
mod preflight;
mod progress;
mod schema;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::ident::{quote_ident, quote_literal};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;
use crate::pg::replication::{ReplicationConnection, SnapshotAction};

/// What `bootstrap` needs.
#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    pub primary: ConnInfo,
    pub standby: ConnInfo,
    /// Parallel copy workers (and pg_restore jobs for post-data).
    pub jobs: usize,
    pub slot: String,
    pub publication: String,
    /// Drop what the standby holds (and an old slot of the same name) first.
    pub force: bool,
    /// Draw progress bars (else a log line now and then).
    pub progress_bars: bool,
}

/// The default slot name.
pub const DEFAULT_SLOT: &str = "understudy";
/// The default publication name.
pub const DEFAULT_PUBLICATION: &str = "understudy";

impl BootstrapOptions {
    pub fn new(primary: ConnInfo, standby: ConnInfo) -> BootstrapOptions {
        BootstrapOptions {
            primary,
            standby,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            slot: DEFAULT_SLOT.to_string(),
            publication: DEFAULT_PUBLICATION.to_string(),
            force: false,
            progress_bars: false,
        }
    }
}

/// What bootstrap did.
#[derive(Clone, Debug)]
pub struct BootstrapSummary {
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub consistent_point: Lsn,
    pub slot: String,
}

impl std::fmt::Display for BootstrapSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = self.bytes as f64 / 1e6;
        write!(
            f,
            "bootstrap done: {} tables, {} rows, {:.1} MB in {:.1} s ({:.1} MB/s); streaming starts at {} on slot {}",
            self.tables,
            self.rows,
            mb,
            self.seconds,
            mb / self.seconds.max(0.001),
            self.consistent_point,
            self.slot
        )
    }
}

/// Run bootstrap; `shutdown` turning true interrupts it cleanly.
pub async fn bootstrap(
    options: &BootstrapOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<BootstrapSummary> {
    let started = Instant::now();
    validate_name("slot", &options.slot)?;
    let primary = options
        .primary
        .connect("understudy bootstrap")
        .await
        .context("while connecting to the primary")?;
    let standby = options
        .standby
        .connect("understudy bootstrap")
        .await
        .context("while connecting to the standby")?;
    let bindir = schema::tools_dir()?;

    let findings = preflight::Preflight {
        primary: &primary,
        standby: &standby,
        slot: &options.slot,
        publication: &options.publication,
        force: options.force,
    }
    .run()
    .await?;

    if findings.drop_old_slot {
        primary
            .execute("SELECT pg_drop_replication_slot($1)", &[&options.slot])
            .await
            .context("while dropping the old replication slot (--force)")?;
    }
    if findings.clean_standby {
        clean_standby(&standby).await?;
    }
    if !findings.publication_exists {
        primary
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR ALL TABLES",
                quote_ident(&options.publication)
            ))
            .await
            .context("while creating the publication")?;
    }

    let mut repl = ReplicationConnection::connect(&options.primary, "understudy bootstrap")
        .await
        .context("while opening the replication connection to the primary")?;
    let system = repl
        .identify_system()
        .await
        .context("while identifying the primary")?;
    let slot = repl
        .create_logical_slot(&options.slot, SnapshotAction::Export, false)
        .await
        .context("while creating the replication slot")?;
    let snapshot = slot
        .snapshot_name
        .clone()
        .ok_or_else(|| anyhow!("the primary exported no snapshot with the new slot"))?;
    tracing::info!(slot = %options.slot, consistent_point = %slot.consistent_point, "slot created");

    let copy = copy_under_snapshot(
        options,
        &primary,
        &standby,
        &bindir,
        &system,
        slot.consistent_point,
        &snapshot,
        shutdown,
    )
    .await;
    // The snapshot is no longer needed once every reader has finished.
    repl.close().await;
    match copy {
        Ok((tables, rows, bytes)) => Ok(BootstrapSummary {
            tables,
            rows,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
            consistent_point: slot.consistent_point,
            slot: options.slot.clone(),
        }),
        Err(e) => {
            let dropped = primary
                .execute("SELECT pg_drop_replication_slot($1)", &[&options.slot])
                .await;
            let slot_note = match dropped {
                Ok(_) => format!("slot {} was dropped", options.slot),
                Err(_) => format!(
                    "slot {0} could not be dropped: drop it with SELECT pg_drop_replication_slot('{0}') \
                     so the primary does not keep WAL for it",
                    options.slot
                ),
            };
            Err(e.context(format!(
                "bootstrap did not finish ({slot_note}); the standby holds a partial copy: run \
                 `understudy bootstrap --force` with the same arguments to start again"
            )))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn copy_under_snapshot(
    options: &BootstrapOptions,
    primary: &Client,
    standby: &Client,
    bindir: &std::path::Path,
    system: &crate::pg::replication::SystemIdentity,
    consistent_point: Lsn,
    snapshot: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(usize, u64, u64)> {
    crate::state::install(standby).await?;
    standby
        .execute(
            "INSERT INTO understudy.source (primary_system_id, primary_timeline, primary_dbname, \
             slot_name, publication, consistent_point, state) \
             VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn, 'copying')",
            &[
                &system.system_id,
                &(system.timeline as i32),
                &options.primary.dbname(),
                &options.slot,
                &options.publication,
                &consistent_point.to_string(),
            ],
        )
        .await
        .context("while recording the bootstrap on the standby")?;

    let work = async {
        let dir = tempfile_dir()?;
        let archive = dir.join("schema.dump");
        schema::dump(bindir, &options.primary, snapshot, &archive).await?;
        schema::restore(bindir, &options.standby, &archive, "pre-data", 1).await?;

        let parts = copy::plan(primary, &options.publication, options.jobs).await?;
        let tables = parts
            .iter()
            .map(|p| p.display.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let total_bytes: i64 = parts.iter().map(|p| p.bytes_estimate).sum();
        let part_count = parts.len();
        let queue = Arc::new(Mutex::new(parts.into_iter().collect::<VecDeque<_>>()));
        let counters = Arc::new(copy::CopyCounters::default());
        let jobs = options.jobs.max(1);
        let mut workers = tokio::task::JoinSet::new();
        let mut currents = Vec::new();
        for _ in 0..jobs {
            let current = Arc::new(Mutex::new(String::new()));
            currents.push(current.clone());
            workers.spawn(copy::worker(
                options.primary.clone(),
                options.standby.clone(),
                snapshot.to_string(),
                queue.clone(),
                counters.clone(),
                current,
            ));
        }
        let display = progress::Display::start(
            options.progress_bars,
            total_bytes.max(0) as u64,
            part_count as u64,
            counters.clone(),
            currents,
        );
        let mut copied = Vec::new();
        while let Some(joined) = workers.join_next().await {
            let result = joined.map_err(|e| anyhow!("a copy worker failed: {e}"))?;
            copied.extend(result?);
        }
        display.finish();
        for c in &copied {
            standby
                .execute(
                    "INSERT INTO understudy.bootstrap_table (relation, part, rows, bytes, seconds) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&c.display, &c.part, &(c.rows as i64), &(c.bytes as i64), &c.seconds],
                )
                .await?;
        }
        schema::restore(bindir, &options.standby, &archive, "post-data", jobs).await?;
        crate::follow::sync_sequences(&options.primary, &options.standby).await?;
        std::fs::remove_dir_all(&dir).ok();
        let rows = copied.iter().map(|c| c.rows).sum();
        let bytes = copied.iter().map(|c| c.bytes).sum();
        Ok::<_, anyhow::Error>((tables, rows, bytes))
    };
    let result = tokio::select! {
        r = work => r?,
        _ = shutdown.wait_for(|stop| *stop) => return Err(anyhow!("interrupted")),
    };

    standby
        .batch_execute(&format!(
            "BEGIN; \
             UPDATE understudy.source SET state = 'ready', finished_at = now(); \
             INSERT INTO understudy.progress (applied_lsn) VALUES ({}::pg_lsn); \
             COMMIT",
            quote_literal(&consistent_point.to_string())
        ))
        .await
        .context("while marking the bootstrap complete on the standby")?;
    Ok(result)
}

/// Drop every schema of the standby database (`--force`), leaving an empty `public`.
async fn clean_standby(standby: &Client) -> Result<()> {
    standby
        .batch_execute(
            "DO $$ DECLARE s text; BEGIN \
               FOR s IN SELECT nspname FROM pg_namespace \
                        WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP \
                 EXECUTE format('DROP SCHEMA %I CASCADE', s); \
               END LOOP; \
               CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
               GRANT USAGE ON SCHEMA public TO PUBLIC; \
             END $$",
        )
        .await
        .context("while dropping the standby's old contents (--force)")
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "understudy-bootstrap-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
    Ok(dir)
}

/// Slot names: what PostgreSQL accepts (lower-case letters, digits, underscore; 63 bytes).
fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "invalid {what} name '{name}': use 1 to 63 lower-case letters, digits or underscores"
        ))
    }
}
