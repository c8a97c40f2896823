//! `understudy bench`: understudy against the tools people compare it with, side by side in one
//! run on this machine, with a Markdown report.
//!
//! * Initial copy of the same primary: `understudy bootstrap` vs `pg_dump -Fd -j N | pg_restore
//!   -j N` vs PostgreSQL's native logical replication (`CREATE SUBSCRIPTION … copy_data`).
//! * Catch-up after a backlog of NMS transactions written while nobody streamed: `understudy
//!   follow --until-caught-up` vs the native subscription re-enabled (time until a marker row
//!   committed after the backlog is visible on the subscriber).
//! * Switchover and failover ([`roles`]): a pair of in-process sidecars under a steady NMS write
//!   load; the no-writer window and the failover time, checked against what the NMS was told.
//!
//! Timings on a shared machine are noisy: compare the ratios within one report.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;

use crate::bootstrap::{self, BootstrapOptions};
use crate::cluster::{pg_bindir, Cluster, ClusterOptions};
use crate::follow::{self, Ack, FollowOptions, JournalFollow, StopAt};
use crate::pg::conninfo::ConnInfo;

mod latency;
mod roles;
// The demo includes the same client; the bench reads the stream the same way.
#[allow(clippy::duplicate_mod)]
#[path = "../examples/nms_memory/sse.rs"]
mod sse;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Rows in the bulk table copied at bootstrap.
    pub rows: i64,
    /// NMS transactions in the catch-up backlog.
    pub transactions: i64,
    /// Parallel jobs for every copying tool.
    pub jobs: usize,
    /// Planned switchovers in the switchover and failover section (0 with `failovers` 0 skips
    /// the section).
    pub switchovers: usize,
    /// Automatic failovers in that section.
    pub failovers: usize,
    /// Only the switchover and failover section: no copy, catch-up or latency measures.
    pub roles_only: bool,
}

struct Timing {
    what: &'static str,
    tool: &'static str,
    seconds: f64,
    note: String,
}

/// Run the benchmark and return the report.
pub async fn run(options: &BenchOptions) -> Result<String> {
    let roles = options.switchovers + options.failovers > 0;
    let mut out = if options.roles_only {
        if !roles {
            bail!(
                "nothing to measure: only the switchover and failover section was asked for, \
                 with no switchover and no failover; ask for at least one of either"
            );
        }
        format!(
            "understudy bench: switchover and failover only; {} cores\n",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    } else {
        copies_and_catch_up(options).await?
    };
    if roles {
        let measured = roles::measure(options.switchovers, options.failovers)
            .await
            .context("while measuring switchover and failover")?;
        out.push('\n');
        out.push_str(&measured.to_markdown());
    }
    Ok(out)
}

/// Initial copy, catch-up and latency, on four clusters of their own (gone when it returns).
async fn copies_and_catch_up(options: &BenchOptions) -> Result<String> {
    let clusters = tokio::task::spawn_blocking(|| {
        let mut v = Vec::new();
        for _ in 0..4 {
            let c = Cluster::start(&ClusterOptions::default())?;
            c.create_database("nms")?;
            v.push(c);
        }
        Ok::<_, anyhow::Error>(v)
    })
    .await??;
    let info = |c: &Cluster| ConnInfo::parse(&c.dsn("nms"));
    let primary = info(&clusters[0])?;
    let ours = info(&clusters[1])?;
    let native = info(&clusters[2])?;
    let dumped = info(&clusters[3])?;

    let p = primary.connect("understudy bench").await?;
    p.batch_execute(crate::demo::NMS_SCHEMA).await?;
    p.batch_execute(crate::demo::NMS_WORKLOAD).await?;
    p.batch_execute(&format!(
        "CREATE SCHEMA bench; \
         CREATE TABLE bench.marker (id int PRIMARY KEY); \
         CREATE TABLE bench.events (id bigint PRIMARY KEY, ne_id int NOT NULL, severity text NOT NULL, \
            raised_at timestamptz NOT NULL, message text NOT NULL); \
         INSERT INTO bench.events SELECT g, g % 5000, (ARRAY['minor','major','critical'])[1 + g % 3], \
            timestamptz '2026-01-01' + g * interval '1 second', md5(g::text) || ' link down on port ' || (g % 48) \
            FROM generate_series(1, {}) g; \
         ANALYZE",
        options.rows
    ))
    .await
    .context("while loading the bulk table")?;
    let size: i64 = p
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    let mut timings = Vec::new();

    // Initial copy, three ways.
    let started = Instant::now();
    let mut boot = BootstrapOptions::new(primary.clone(), ours.clone());
    boot.jobs = options.jobs;
    let (_never, stop) = watch::channel(false);
    let summary = bootstrap::bootstrap(&boot, stop.clone()).await?;
    timings.push(Timing {
        what: "initial copy",
        tool: "understudy bootstrap",
        seconds: started.elapsed().as_secs_f64(),
        note: format!("{} rows, consistent snapshot + slot", summary.rows),
    });

    let started = Instant::now();
    dump_restore(&clusters[0], &clusters[3], options.jobs).await?;
    timings.push(Timing {
        what: "initial copy",
        tool: "pg_dump -Fd + pg_restore",
        seconds: started.elapsed().as_secs_f64(),
        note: format!(
            "-j {}; no slot, so no way to stream afterwards",
            options.jobs
        ),
    });
    drop(dumped);

    let n = native.connect("understudy bench").await?;
    let started = Instant::now();
    schema_only(&clusters[0], &clusters[2]).await?;
    n.batch_execute(&format!(
        "CREATE SUBSCRIPTION native CONNECTION '{}' PUBLICATION understudy WITH (copy_data = true)",
        clusters[0].dsn("nms")
    ))
    .await
    .context("while creating the native subscription")?;
    wait_until("the native initial sync", Duration::from_secs(1800), || async {
        let row = n
            .query_one(
                "SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*) FROM pg_subscription_rel",
                &[],
            )
            .await;
        matches!(row, Ok(r) if r.get::<_, i64>(0) == 0 && r.get::<_, i64>(1) > 0)
    })
    .await?;
    timings.push(Timing {
        what: "initial copy",
        tool: "native logical replication",
        seconds: started.elapsed().as_secs_f64(),
        note: "schema by pg_dump, then CREATE SUBSCRIPTION until every table is ready".into(),
    });

    // Catch-up after a backlog written while neither side streams.
    n.batch_execute("ALTER SUBSCRIPTION native DISABLE").await?;
    wait_until("the native walsender to stop", Duration::from_secs(60), || async {
        matches!(p.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'native' AND active", &[]).await,
                 Ok(r) if r.get::<_, i64>(0) == 0)
    })
    .await?;
    let wal_before: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let written = Instant::now();
    write_backlog(&p, 0, options.transactions).await?;
    p.batch_execute("INSERT INTO bench.marker VALUES (1)")
        .await?;
    let wal_after: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let backlog = wal_after
        .parse::<crate::lsn::Lsn>()?
        .bytes_since(wal_before.parse()?);
    let write_seconds = written.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut follow_options = FollowOptions::new(primary.clone(), ours.clone());
    follow_options.stop_at = StopAt::CaughtUp;
    let followed = follow::follow(&follow_options, stop.clone(), None).await?;
    let ours_seconds = started.elapsed().as_secs_f64();
    let followed_rate = followed.transactions as f64 / ours_seconds;
    timings.push(Timing {
        what: "catch-up",
        tool: "understudy follow",
        seconds: ours_seconds,
        note: format!(
            "{} txns, {} rows: {:.0} txn/s",
            followed.transactions,
            followed.rows,
            followed.transactions as f64 / ours_seconds
        ),
    });

    let started = Instant::now();
    n.batch_execute("ALTER SUBSCRIPTION native ENABLE").await?;
    wait_until("the native subscription to catch up", Duration::from_secs(1800), || async {
        matches!(n.query_one("SELECT count(*) FROM bench.marker", &[]).await, Ok(r) if r.get::<_, i64>(0) == 1)
    })
    .await?;
    let native_seconds = started.elapsed().as_secs_f64();
    timings.push(Timing {
        what: "catch-up",
        tool: "native logical replication",
        seconds: native_seconds,
        note: format!("{:.0} txn/s", followed.transactions as f64 / native_seconds),
    });
    n.batch_execute("ALTER SUBSCRIPTION native DISABLE; ALTER SUBSCRIPTION native SET (slot_name = NONE); DROP SUBSCRIPTION native")
        .await
        .ok();

    // Cost of journaling: the same backlog again, caught up through a journal, acknowledging
    // what is durable in it, then what is applied.
    let work =
        std::env::temp_dir().join(format!("understudy-bench-journal-{}", std::process::id()));
    std::fs::remove_dir_all(&work).ok();
    for (round, (ack, tool)) in [
        (Ack::Journal, "understudy follow --journal --ack journal"),
        (Ack::Applied, "understudy follow --journal --ack applied"),
    ]
    .into_iter()
    .enumerate()
    {
        write_backlog(
            &p,
            (round as i64 + 1) * options.transactions,
            options.transactions,
        )
        .await?;
        let mut journal = JournalFollow::new(work.join(format!("journal-{round}")));
        journal.ack = ack;
        let mut follow_options = FollowOptions::new(primary.clone(), ours.clone());
        follow_options.stop_at = StopAt::CaughtUp;
        follow_options.journal = Some(journal);
        let started = Instant::now();
        let followed = follow::follow(&follow_options, stop.clone(), None).await?;
        let seconds = started.elapsed().as_secs_f64();
        let rate = followed.transactions as f64 / seconds;
        timings.push(Timing {
            what: "catch-up",
            tool,
            seconds,
            note: format!(
                "{} txns, {} rows: {:.0} txn/s, {:.2}x the throughput without a journal",
                followed.transactions,
                followed.rows,
                rate,
                rate / (followed_rate.max(1e-9))
            ),
        });
    }

    // End-to-end latency: primary commit to message delivered on the SSE stream.
    let latency = latency::measure(&primary, &ours, &work.join("journal-latency")).await?;
    std::fs::remove_dir_all(&work).ok();
    timings.push(Timing {
        what: "latency",
        tool: "commit → message delivered (p50 / p99 / max)",
        seconds: latency.p50_ms / 1000.0,
        note: latency.to_string(),
    });

    let report = crate::check::check(&primary, &ours).await?;
    if !report.identical() {
        bail!(
            "after the benchmark the standby differs: {:?}",
            report.differences
        );
    }

    let mut out = String::new();
    out.push_str(&format!(
        "understudy bench: {} bulk rows, database {:.0} MB; backlog of {} NMS transactions, {:.1} MB of WAL (written in {:.1} s); {} jobs, {} cores\n\n",
        options.rows,
        size as f64 / 1e6,
        options.transactions,
        backlog as f64 / 1e6,
        write_seconds,
        options.jobs,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    out.push_str("| measure | tool | seconds | vs understudy | note |\n|---|---|---:|---:|---|\n");
    for t in &timings {
        if t.what == "latency" {
            out.push_str(&format!(
                "| {} | {} | – | – | {} |\n",
                t.what, t.tool, t.note
            ));
            continue;
        }
        let ours = timings
            .iter()
            .find(|o| o.what == t.what && o.tool.starts_with("understudy"))
            .map_or(t.seconds, |o| o.seconds);
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.2}x | {} |\n",
            t.what,
            t.tool,
            t.seconds,
            t.seconds / ours.max(1e-9),
            t.note
        ));
    }
    out.push_str(&format!(
        "\nafter the run `understudy check` found the standby identical ({} tables, {} rows)\n",
        report.tables, report.rows
    ));
    Ok(out)
}

/// `count` NMS transactions on the primary, one `nms.workload_tick` each, seeds from `first`.
async fn write_backlog(p: &tokio_postgres::Client, first: i64, count: i64) -> Result<()> {
    for i in first..first + count {
        p.execute("SELECT nms.workload_tick($1)", &[&(i as i32)])
            .await
            .context("while writing the backlog")?;
    }
    Ok(())
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > timeout {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn tool(program: &str, args: &[String]) -> Result<()> {
    let path = pg_bindir()?.join(program);
    let out = tokio::process::Command::new(&path)
        .args(args)
        .output()
        .await
        .with_context(|| format!("while running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn dump_restore(from: &Cluster, to: &Cluster, jobs: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("understudy-bench-dump-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    tool(
        "pg_dump",
        &[
            "-Fd".into(),
            format!("-j{jobs}"),
            "--no-publications".into(),
            "-f".into(),
            dir.display().to_string(),
            "-d".into(),
            from.dsn("nms"),
        ],
    )
    .await?;
    tool(
        "pg_restore",
        &[
            format!("-j{jobs}"),
            "-d".into(),
            to.dsn("nms"),
            dir.display().to_string(),
        ],
    )
    .await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

async fn schema_only(from: &Cluster, to: &Cluster) -> Result<()> {
    let file = std::env::temp_dir().join(format!("understudy-bench-schema-{}", std::process::id()));
    tool(
        "pg_dump",
        &[
            "-Fc".into(),
            "--schema-only".into(),
            "--no-publications".into(),
            "--exclude-schema=understudy".into(),
            "-f".into(),
            file.display().to_string(),
            "-d".into(),
            from.dsn("nms"),
        ],
    )
    .await?;
    tool(
        "pg_restore",
        &["-d".into(), to.dsn("nms"), file.display().to_string()],
    )
    .await?;
    std::fs::remove_file(&file).ok();
    Ok(())
}
