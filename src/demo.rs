//! `understudy demo`: a local primary/standby pair on throwaway clusters.
//!
//! Starts two clusters, loads the example NMS (`sql/nms_example.sql`) and its workload
//! (`examples/nms_workload.sql`) on the primary, bootstraps the standby, follows while two
//! sessions of NMS activity (and an alarm storm every few seconds) write to the primary, prints
//! lag and throughput every second, catches up, runs `check`, and removes both clusters.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::watch;

use crate::bootstrap::{self, BootstrapOptions};
use crate::cluster::{Cluster, ClusterOptions};
use crate::follow::{self, FollowOptions, FollowProgress, StopAt};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;

/// The example NMS schema and seed data.
pub const NMS_SCHEMA: &str = include_str!("../sql/nms_example.sql");
/// The example NMS workload (PL/pgSQL functions the demo calls).
pub const NMS_WORKLOAD: &str = include_str!("../examples/nms_workload.sql");

/// Run the demo for `duration` of workload; `stop` turning true ends it early, cleanly.
pub async fn run(duration: Duration, stop: watch::Receiver<bool>) -> Result<()> {
    println!("starting two throwaway PostgreSQL clusters…");
    let (primary_cluster, standby_cluster) = tokio::task::spawn_blocking(|| {
        let p = Cluster::start(&ClusterOptions::default())?;
        let s = Cluster::start(&ClusterOptions::default())?;
        p.create_database("nms")?;
        s.create_database("nms")?;
        Ok::<_, anyhow::Error>((p, s))
    })
    .await??;
    let primary = ConnInfo::parse(&primary_cluster.dsn("nms"))?;
    let standby = ConnInfo::parse(&standby_cluster.dsn("nms"))?;
    println!(
        "primary on 127.0.0.1:{}, standby on 127.0.0.1:{}",
        primary_cluster.port(),
        standby_cluster.port()
    );

    let loaded = Instant::now();
    let client = primary.connect("understudy demo").await?;
    client
        .batch_execute(NMS_SCHEMA)
        .await
        .context("while loading the example NMS schema")?;
    client
        .batch_execute(NMS_WORKLOAD)
        .await
        .context("while loading the example NMS workload")?;
    println!(
        "example NMS loaded on the primary in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );

    let mut options = BootstrapOptions::new(primary.clone(), standby.clone());
    options.progress_bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = bootstrap::bootstrap(&options, stop.clone()).await?;
    println!("{summary}");

    let (follow_stop_tx, follow_stop_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(FollowProgress::default());
    let follow_options = FollowOptions::new(primary.clone(), standby.clone());
    let follower = {
        let options = follow_options.clone();
        tokio::spawn(
            async move { follow::follow(&options, follow_stop_rx, Some(progress_tx)).await },
        )
    };

    println!(
        "following while the example NMS writes for {} s (Ctrl-C stops early)…",
        duration.as_secs()
    );
    let interrupted = drive_workload(&primary, duration, stop.clone(), &progress_rx).await?;

    follow_stop_tx.send_replace(true);
    follower
        .await
        .map_err(|e| anyhow!("the follower task failed: {e}"))??;
    if interrupted {
        println!("interrupted: clusters stopped and removed");
        return Ok(());
    }

    println!("workload stopped; catching up…");
    let mut catch_up = follow_options;
    catch_up.stop_at = StopAt::CaughtUp;
    let caught = Instant::now();
    let done = follow::follow(&catch_up, stop.clone(), None).await?;
    println!(
        "caught up to {} in {:.2} s",
        done.applied,
        caught.elapsed().as_secs_f64()
    );

    let report = crate::check::check(&primary, &standby).await?;
    for d in &report.differences {
        println!("{d}");
    }
    if !report.identical() {
        return Err(anyhow!(
            "check found {} difference(s) between primary and standby",
            report.differences.len()
        ));
    }
    println!(
        "check: standby identical to primary ({} tables, {} rows, {} sequences)",
        report.tables, report.rows, report.sequences
    );
    drop(primary_cluster);
    drop(standby_cluster);
    println!("demo done: clusters stopped and removed");
    Ok(())
}

/// Two NMS sessions of ticks plus an alarm storm every 5 s; a line of lag and throughput every
/// second. Returns whether it was interrupted.
async fn drive_workload(
    primary: &ConnInfo,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
    progress: &watch::Receiver<FollowProgress>,
) -> Result<bool> {
    let (halt_tx, halt_rx) = watch::channel(false);
    let mut sessions = tokio::task::JoinSet::new();
    for session in 0..2i32 {
        let client = primary.connect("nms workload").await?;
        let halt = halt_rx.clone();
        sessions.spawn(async move {
            let mut ticks = 0u64;
            let mut last_storm = Instant::now();
            while !*halt.borrow() {
                let seed = (ticks as i32).wrapping_mul(2).wrapping_add(session);
                client
                    .execute("SELECT nms.workload_tick($1)", &[&seed])
                    .await
                    .context("workload tick")?;
                if session == 0 && last_storm.elapsed() > Duration::from_secs(5) {
                    client
                        .execute("SELECT nms.alarm_storm(20, 8)", &[])
                        .await
                        .context("alarm storm")?;
                    last_storm = Instant::now();
                }
                ticks += 1;
            }
            Ok::<u64, anyhow::Error>(ticks)
        });
    }
    let watcher = primary.connect("understudy demo").await?;
    let started = Instant::now();
    let mut last = *progress.borrow();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut interrupted = false;
    while started.elapsed() < duration {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => { interrupted = true; break; }
        }
        let wal: String = watcher
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let wal: Lsn = wal.parse()?;
        let now = *progress.borrow();
        println!(
            "t={:>3}s  primary {}  standby applied {}  lag {:>7.1} kB  {:>5} txn/s  {:>6} rows/s",
            started.elapsed().as_secs(),
            wal,
            now.applied,
            wal.bytes_since(now.applied) as f64 / 1024.0,
            now.transactions.saturating_sub(last.transactions),
            now.rows.saturating_sub(last.rows),
        );
        last = now;
    }
    halt_tx.send_replace(true);
    let mut ticks = 0;
    while let Some(r) = sessions.join_next().await {
        ticks += r.map_err(|e| anyhow!("workload session failed: {e}"))??;
    }
    println!("workload: {ticks} NMS transactions written");
    Ok(interrupted)
}
