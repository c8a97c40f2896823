//! `understudy demo`: a local primary/standby pair on throwaway clusters.
//!
//! Starts two clusters, loads the example NMS (`sql/nms_example.sql`) and its workload
//! (`examples/nms_workload.sql`) on the primary, bootstraps the standby, follows while two
//! sessions of NMS activity (and an alarm storm every few seconds) write to the primary, prints
//! lag and throughput every second, catches up, runs `check`, and removes both clusters.
//!
//! The follower journals, serves the message stream, and the example NMS in-memory model
//! (`examples/nms_memory/`) loads itself from the standby and then follows the stream alone; at
//! the end it is compared with a model loaded fresh from the primary.
//!
//! Then the two clusters go to a pair of in-process sidecars (submodule `roles`), which run a
//! switchover and an automatic failover while the NMS keeps writing as `nms_app`.

#[path = "../examples/nms_memory/load.rs"]
mod load;
#[path = "../examples/nms_memory/model.rs"]
mod model;
#[path = "../examples/nms_memory/sse.rs"]
mod sse;

mod roles;

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::watch;

use crate::bootstrap::{self, BootstrapOptions};
use crate::cluster::{Cluster, ClusterOptions};
use crate::follow::{self, FollowOptions, FollowProgress};
use crate::lsn::Lsn;
use crate::pg::conninfo::ConnInfo;

/// The example NMS schema and seed data.
pub const NMS_SCHEMA: &str = include_str!("../sql/nms_example.sql");
/// The example NMS workload (PL/pgSQL functions the demo calls).
pub const NMS_WORKLOAD: &str = include_str!("../examples/nms_workload.sql");
/// Translation rules for the example NMS.
pub const NMS_RULES: &str = include_str!("../examples/nms_rules.toml");

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
    roles::create_nms_role(&primary, &standby).await?;
    println!(
        "example NMS loaded on the primary in {:.1} s (role nms_app on both clusters)",
        loaded.elapsed().as_secs_f64()
    );

    let mut options = BootstrapOptions::new(primary.clone(), standby.clone());
    options.progress_bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = bootstrap::bootstrap(&options, stop.clone()).await?;
    println!("{summary}");

    let (follow_stop_tx, follow_stop_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(FollowProgress::default());
    let work = std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let rules_file = work.join("nms_rules.toml");
    std::fs::write(&rules_file, NMS_RULES)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut follow_options = FollowOptions::new(primary.clone(), standby.clone());
    follow_options.journal = Some(follow::JournalFollow::new(work.join("journal")));
    let outputs = follow::outputs::Outputs {
        http: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        rules_file: Some(rules_file),
        ..Default::default()
    };
    let follower = {
        let options = follow_options.clone();
        tokio::spawn(async move {
            follow::outputs::follow_with_outputs_progress(
                options,
                outputs,
                follow_stop_rx,
                progress_tx,
            )
            .await
        })
    };
    let nms = NmsConsumer::start(&standby, port).await?;

    println!(
        "following while the example NMS writes for {} s (Ctrl-C stops early)…",
        duration.as_secs()
    );
    let interrupted = drive_workload(&primary, duration, stop.clone(), &progress_rx, &nms).await?;

    if interrupted {
        follow_stop_tx.send_replace(true);
        follower
            .await
            .map_err(|e| anyhow!("the follower task failed: {e}"))??;
        std::fs::remove_dir_all(&work).ok();
        println!("interrupted: clusters stopped and removed");
        return Ok(());
    }

    println!("workload stopped; catching up…");
    let target = follow::primary_wal_position(&primary).await?;
    let caught = Instant::now();
    let mut watching = progress_rx.clone();
    tokio::time::timeout(
        Duration::from_secs(120),
        watching.wait_for(|p| p.applied >= target),
    )
    .await
    .map_err(|_| anyhow!("the standby did not catch up with {target} within 120 s"))?
    .map_err(|_| anyhow!("the follower stopped before catching up"))?;
    let applied = progress_rx.borrow().applied;
    println!(
        "caught up to {applied} in {:.2} s",
        caught.elapsed().as_secs_f64()
    );
    follow::sync_sequences(&primary, &standby).await?;
    nms.compare_with(&primary, applied).await?;
    follow_stop_tx.send_replace(true);
    follower
        .await
        .map_err(|e| anyhow!("the follower task failed: {e}"))??;

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
    std::fs::remove_dir_all(&work).ok();
    if *stop.borrow() {
        println!("interrupted: clusters stopped and removed");
        return Ok(());
    }
    if roles::run([primary_cluster, standby_cluster], stop).await? {
        println!("interrupted: sidecars stopped, clusters stopped and removed");
    } else {
        println!("demo done: clusters stopped and removed");
    }
    Ok(())
}

/// Two NMS sessions of ticks plus an alarm storm every 5 s; a line of lag and throughput every
/// second. Returns whether it was interrupted.
async fn drive_workload(
    primary: &ConnInfo,
    duration: Duration,
    mut stop: watch::Receiver<bool>,
    progress: &watch::Receiver<FollowProgress>,
    nms: &NmsConsumer,
) -> Result<bool> {
    let (halt_tx, halt_rx) = watch::channel(false);
    let mut sessions = tokio::task::JoinSet::new();
    for session in 0..2i32 {
        let client = primary.connect("nms workload").await?;
        let halt = halt_rx.clone();
        sessions.spawn(async move {
            let mut nms = NmsSession::new(session);
            while !*halt.borrow() {
                nms.step(&client).await.context("NMS workload")?;
            }
            Ok::<u64, anyhow::Error>(nms.transactions)
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
        println!("        standby NMS memory: {}", nms.summary());
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

/// One NMS session of the example workload: ticks (`nms.workload_tick`), and on session 0 an
/// alarm storm every 5 s. Each call is one autocommit transaction.
struct NmsSession {
    session: i32,
    ticks: i32,
    last_storm: Instant,
    /// Transactions committed.
    transactions: u64,
}

impl NmsSession {
    fn new(session: i32) -> NmsSession {
        NmsSession {
            session,
            ticks: 0,
            last_storm: Instant::now(),
            transactions: 0,
        }
    }

    /// The session's next transaction. On an error it did not commit, and the next call
    /// tries the same one again.
    async fn step(&mut self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        if self.session == 0 && self.last_storm.elapsed() > Duration::from_secs(5) {
            client.execute("SELECT nms.alarm_storm(20, 8)", &[]).await?;
            self.last_storm = Instant::now();
        } else {
            let seed = self.ticks.wrapping_mul(2).wrapping_add(self.session);
            client
                .execute("SELECT nms.workload_tick($1)", &[&seed])
                .await?;
            self.ticks = self.ticks.wrapping_add(1);
        }
        self.transactions += 1;
        Ok(())
    }
}

/// The example NMS model on the standby side: loaded from the standby, then fed by the stream.
struct NmsConsumer {
    live: std::sync::Arc<std::sync::Mutex<model::LiveModel>>,
    task: tokio::task::JoinHandle<()>,
}

impl NmsConsumer {
    async fn start(standby: &ConnInfo, port: u16) -> Result<NmsConsumer> {
        let client = standby.connect("nms memory").await?;
        let (loaded, lsn) = load::load(&client, load::Side::Standby).await?;
        println!(
            "standby NMS memory loaded from the standby at {}: {}",
            model::format_lsn(lsn),
            loaded.summary()
        );
        let live = std::sync::Arc::new(std::sync::Mutex::new(model::LiveModel::new(loaded, lsn)));
        let endpoint = sse::Endpoint::parse(&format!("http://127.0.0.1:{port}"))?;
        let from = live.lock().expect("model lock").stream_from_lsn();
        let mut sub = sse::Subscription::new(
            endpoint,
            sse::messages_path(Some(&from), None, None),
            None,
            None,
        );
        let feed = live.clone();
        let task = tokio::spawn(async move {
            while let Ok(event) = sub.next().await {
                if event.event != "mutation" {
                    continue;
                }
                let mut live = feed.lock().expect("model lock");
                if let Err(e) = live.offer_event(event.id.as_deref(), &event.data) {
                    eprintln!("the NMS model could not apply a message: {e}");
                    return;
                }
            }
        });
        Ok(NmsConsumer { live, task })
    }

    fn summary(&self) -> String {
        self.live.lock().expect("model lock").model.summary()
    }

    /// Wait until the stream has delivered everything applied, then compare with the primary.
    async fn compare_with(self, primary: &ConnInfo, applied: Lsn) -> Result<()> {
        let client = primary.connect("nms memory").await?;
        let (fresh, _) = load::load(&client, load::Side::Primary).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let same = self.live.lock().expect("model lock").model == fresh;
            if same {
                println!(
                    "standby NMS memory, fed by the message stream alone, equals a fresh load from the primary: {}",
                    fresh.summary()
                );
                self.task.abort();
                return Ok(());
            }
            if Instant::now() > deadline {
                self.task.abort();
                return Err(anyhow!(
                    "the standby NMS memory did not reach the primary's state (applied {applied}): {} vs {}",
                    self.summary(),
                    fresh.summary()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
