//! Part two of `understudy demo`: the two clusters of part one go to a pair of in-process
//! sidecars ([`LocalPair`]), which run a planned switchover and then an automatic failover while
//! the example NMS keeps writing as `nms_app` to whichever node accepts its writes.
//!
//! What it shows, and how it knows:
//! * The standby of part one is taken over as it is: node `b` already holds a finished copy
//!   (`understudy.source` is ready), so its sidecar follows `a` without copying again. A copy
//!   (`bootstrap --force`) drops and recreates schema `nms`, so the schema's OID before and
//!   after says whether one happened.
//! * The NMS's grants on its tables reach the standby with the bootstrap copy (`pg_dump` carries
//!   them), so they are given on the primary before bootstrap, once the role exists on both
//!   clusters (roles are cluster-wide and never copied). The standby's sidecar records and
//!   revokes them on `b` and gives them back when `b` is promoted.
//! * The new primary takes over the NMS's state: its NMS model, loaded with the example
//!   loader, equals the old primary's. For the comparison the writers are pinned (they finish
//!   on the node they write to and wait, instead of moving on) so that both databases stand
//!   still while they are read.
//! * Failover: the primary's PostgreSQL stops at once (`pg_ctl stop -m immediate`) and its
//!   sidecar with it, as when the machine dies. Once the standby has promoted itself, the old
//!   primary's PostgreSQL comes back without its sidecar, so what it had committed can be read
//!   and compared with the new primary before its sidecar fences it and rejoins (following if
//!   nothing diverged, copying again after saving what did).
//!
//! Ctrl-C at any point ends the scenario; the writers and both sidecars stop, and the clusters
//! are stopped and removed when the pair is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{load, model, NmsSession};
use crate::cluster::{Cluster, StopMode};
use crate::pg::conninfo::ConnInfo;
use crate::sidecar::local::{LocalOptions, LocalPair, NAMES};

/// The NMS's database role: it writes the NMS tables and nothing else.
const NMS_ROLE: &str = "nms_app";
/// Its write privileges on the example NMS, given on the primary before bootstrap.
const NMS_GRANTS: &str = "GRANT USAGE ON SCHEMA nms TO nms_app;
     GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA nms TO nms_app;
     GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA nms TO nms_app;";
/// Automatic failover after this long without the primary.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on every wait for the pair to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// NMS sessions writing in part two.
const SESSIONS: i32 = 2;

/// Create the NMS's role on both clusters and give it writes on the NMS tables on the primary.
/// Run before bootstrap: the copy carries the grants to the standby.
pub(super) async fn create_nms_role(primary: &ConnInfo, standby: &ConnInfo) -> Result<()> {
    for info in [primary, standby] {
        info.connect("understudy demo")
            .await?
            .batch_execute(&format!("CREATE ROLE {NMS_ROLE} LOGIN"))
            .await
            .with_context(|| format!("while creating role {NMS_ROLE}"))?;
    }
    primary
        .connect("understudy demo")
        .await?
        .batch_execute(NMS_GRANTS)
        .await
        .with_context(|| format!("while granting {NMS_ROLE} writes on the NMS tables"))
}

/// Part two: hand `clusters` (primary first) to two sidecars, switch over, fail over. Returns
/// whether `stop` interrupted it; either way the clusters are gone when it returns.
pub(super) async fn run(clusters: [Cluster; 2], mut stop: watch::Receiver<bool>) -> Result<bool> {
    let options = LocalOptions {
        nms_roles: vec![NMS_ROLE.to_string()],
        failover_timeout: Some(FAILOVER_TIMEOUT),
        initial_primary: 0,
        ..LocalOptions::default()
    };
    let mut pair = LocalPair::new(clusters, "nms", &options)?;
    let mut writer = None;
    // Biased: an interrupt wins over the next step of the scenario.
    let outcome = tokio::select! {
        biased;
        _ = async {
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => None,
        r = scenario(&mut pair, &mut writer) => Some(r),
    };
    let stopped = match writer {
        Some(w) => w.stop().await,
        None => Ok([0, 0]),
    };
    let sidecars = pair.stop_all().await;
    drop(pair);
    match outcome {
        None => Ok(true),
        Some(r) => {
            r?;
            let acked = stopped?;
            sidecars.context("while stopping the sidecars")?;
            println!(
                "workload in part two: {} NMS transactions acknowledged by a, {} by b",
                acked[0], acked[1]
            );
            Ok(false)
        }
    }
}

async fn scenario(pair: &mut LocalPair, writer: &mut Option<Writer>) -> Result<()> {
    println!(
        "\npart two: two sidecars take the pair over (automatic failover after {} s)",
        FAILOVER_TIMEOUT.as_secs()
    );
    let b_schema = schema_oid(pair, 1).await?;
    println!(
        "nms_app may write on b before its sidecar starts: {} (the grants came with the copy)",
        may_write(pair, 1).await?
    );
    let started = Instant::now();
    pair.start(0);
    pair.start(1);
    let (p, _) = pair.settled(0, SETTLE_TIMEOUT).await?;
    println!(
        "sidecars settled in {:.1} s: a is primary (epoch {}), b follows it {}; nms_app may \
         write on b: {}",
        started.elapsed().as_secs_f64(),
        p.epoch,
        if schema_oid(pair, 1).await? == b_schema {
            "from part one's copy (not copied again)"
        } else {
            "after COPYING AGAIN (schema nms was recreated)"
        },
        may_write(pair, 1).await?
    );

    let nodes = [
        nms_conninfo(&pair.clusters[0])?,
        nms_conninfo(&pair.clusters[1])?,
    ];
    let w = writer.insert(Writer::start(nodes, 0));
    println!("the NMS writes as nms_app ({SESSIONS} sessions) to whichever node accepts:");
    show_writes(pair, w, 2).await?;

    // Planned switchover a -> b.
    w.set(Gate::Pinned);
    println!("switchover a -> b…");
    let reply = pair.switchover(0).await?;
    println!("  reply: {reply}");
    println!(
        "  no-writer window {:.0} ms",
        reply["no_writer_window_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let (p, _) = pair.settled(1, SETTLE_TIMEOUT).await?;
    println!(
        "  settled: primary is {} (epoch {}), {} follows it",
        p.node, p.epoch, NAMES[0]
    );
    let (old, new) = (load_model(pair, 0).await?, load_model(pair, 1).await?);
    if old != new {
        bail!(
            "after the switchover b's NMS model differs from a's: {}",
            old.diff(&new, 5).join("; ")
        );
    }
    let tables = table_differences(pair, 0, 1).await?;
    if !tables.1.is_empty() {
        bail!(
            "after the switchover b's NMS tables differ from a's: {}",
            tables.1.join("; ")
        );
    }
    println!("  b's NMS model, loaded from b: {}", new.summary());
    println!(
        "  equal to the old primary a's (and all {} NMS tables, row for row)",
        tables.0
    );
    w.set(Gate::Open);
    show_writes(pair, w, 2).await?;

    // Automatic failover: b's machine dies.
    let (dead, heir) = (1, 0);
    let above = pair.status(heir).await.map_or(0, |s| s.epoch);
    let dead_schema = schema_oid(pair, dead).await?;
    w.set(Gate::Pinned);
    println!(
        "failover: {}'s PostgreSQL stops at once (immediate), its sidecar with it…",
        NAMES[dead]
    );
    let killed = Instant::now();
    tokio::task::block_in_place(|| pair.clusters[dead].stop(StopMode::Immediate))
        .context("while stopping the primary's cluster")?;
    pair.stop(dead).await?;
    let promoted = pair.promoted(heir, above, Duration::from_secs(30)).await?;
    let writable = killed.elapsed();
    println!(
        "  {} writable {:.2} s after the kill (failover timeout {} s); the promotion itself took \
         {:.3} s",
        NAMES[heir],
        writable.as_secs_f64(),
        FAILOVER_TIMEOUT.as_secs(),
        promoted
            .last_promotion
            .as_ref()
            .map_or(f64::NAN, |p| p.seconds)
    );
    tokio::task::block_in_place(|| pair.clusters[dead].restart())
        .context("while restarting the old primary's cluster")?;
    let (old, new) = (load_model(pair, dead).await?, load_model(pair, heir).await?);
    println!(
        "  {}'s PostgreSQL is back (its sidecar not yet); {}'s NMS model, loaded from {}: {}",
        NAMES[dead],
        NAMES[heir],
        NAMES[heir],
        new.summary()
    );
    if old == new {
        println!(
            "  equal to what the old primary {} had committed",
            NAMES[dead]
        );
    } else {
        println!(
            "  differs from what {} had committed (asynchronous: its last commits had not \
             reached {}): {}",
            NAMES[dead],
            NAMES[heir],
            old.diff(&new, 5).join("; ")
        );
    }
    let (compared, differing) = table_differences(pair, dead, heir).await?;
    if differing.is_empty() {
        println!("  all {compared} NMS tables equal row for row");
    } else {
        println!(
            "  NMS tables, row for row: {} of {compared} differ ({})",
            differing.len(),
            differing.join("; ")
        );
    }
    pair.start(dead);
    let (_, s) = pair.settled(heir, SETTLE_TIMEOUT).await?;
    let copied = schema_oid(pair, dead).await? != dead_schema;
    println!(
        "  {} rejoined as standby of {} (epoch {}) {}; {}",
        NAMES[dead],
        NAMES[heir],
        s.epoch,
        if copied {
            "by copying again"
        } else {
            "by following (no copy)"
        },
        match &s.divergence {
            None => "nothing diverged".to_string(),
            Some(d) => format!(
                "{} transaction(s) ({} rows) of its own diverged, saved in {}",
                d.transactions, d.rows, d.dir
            ),
        }
    );
    if copied == differing.is_empty() || copied != s.divergence.is_some() {
        println!(
            "  (surprising: tables {}, divergence {}, copied again {copied})",
            if differing.is_empty() {
                "equal"
            } else {
                "differed"
            },
            if s.divergence.is_some() {
                "recorded"
            } else {
                "none"
            }
        );
    }
    w.set(Gate::Open);
    show_writes(pair, w, 2).await?;
    println!(
        "  {}'s NMS model, loaded from {} as the NMS writes on: {}",
        NAMES[heir],
        NAMES[heir],
        load_model(pair, heir).await?.summary()
    );
    Ok(())
}

/// One line a second for `seconds`: NMS transactions acknowledged by each node, and roles.
async fn show_writes(pair: &LocalPair, writer: &mut Writer, seconds: u64) -> Result<()> {
    let mut last = writer.acked();
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        writer.check()?;
        let now = writer.acked();
        let mut roles = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let role = pair.status(i).await.map_or("no answer".into(), |s| s.role);
            roles.push(format!("{name} {role}"));
        }
        println!(
            "  NMS txn/s  a {:>4}  b {:>4}   ({})",
            now[0] - last[0],
            now[1] - last[1],
            roles.join(", ")
        );
        last = now;
    }
    Ok(())
}

async fn superuser(pair: &LocalPair, i: usize) -> Result<Client> {
    Ok(pair.configs[i]
        .this_node()
        .database
        .connect("understudy demo")
        .await?)
}

async fn load_model(pair: &LocalPair, i: usize) -> Result<model::NmsModel> {
    let client = superuser(pair, i).await?;
    let (model, _) = load::load(&client, load::Side::Primary)
        .await
        .with_context(|| format!("while loading the NMS model from {}", NAMES[i]))?;
    Ok(model)
}

/// Compare every table of schema `nms` (partitions, not their parents) between nodes `x` and
/// `y` by row count and a hash of the sorted row hashes; how many were compared, and each that
/// differs with its row counts.
async fn table_differences(pair: &LocalPair, x: usize, y: usize) -> Result<(usize, Vec<String>)> {
    let (cx, cy) = (superuser(pair, x).await?, superuser(pair, y).await?);
    let tables: Vec<String> = cx
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'nms' AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut differing = Vec::new();
    for table in &tables {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') \
             FROM (SELECT md5(t::text) AS h FROM {table} t) rows"
        );
        let (rx, ry) = (
            cx.query_one(&sql, &[]).await?,
            cy.query_one(&sql, &[]).await?,
        );
        let (nx, hx): (i64, String) = (rx.get(0), rx.get(1));
        let (ny, hy): (i64, String) = (ry.get(0), ry.get(1));
        if hx != hy {
            differing.push(format!(
                "{table}: {nx} rows on {}, {ny} on {}",
                NAMES[x], NAMES[y]
            ));
        }
    }
    Ok((tables.len(), differing))
}

/// The OID of schema `nms` on node `i`: a copy (`bootstrap --force`) recreates it.
async fn schema_oid(pair: &LocalPair, i: usize) -> Result<i64> {
    Ok(superuser(pair, i)
        .await?
        .query_one("SELECT 'nms'::regnamespace::oid::int8", &[])
        .await?
        .get(0))
}

/// Whether the NMS role may insert alarms on node `i`.
async fn may_write(pair: &LocalPair, i: usize) -> Result<bool> {
    Ok(superuser(pair, i)
        .await?
        .query_one(
            "SELECT has_table_privilege($1, 'nms.alarm', 'INSERT')",
            &[&NMS_ROLE],
        )
        .await?
        .get(0))
}

fn nms_conninfo(cluster: &Cluster) -> Result<ConnInfo> {
    Ok(ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user={NMS_ROLE} dbname=nms connect_timeout=1",
        cluster.port()
    ))?)
}

/// What the writers may do when their node refuses a write or goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// Move on to the other node.
    Open,
    /// Wait (the demo is comparing the two databases).
    Pinned,
    /// Stop.
    Halt,
}

/// The example NMS workload as `nms_app`: sessions that write to one node until it refuses
/// (SQLSTATE 42501: the standby's guard) or goes away, then to the other.
struct Writer {
    gate: watch::Sender<Gate>,
    acked: Arc<[AtomicU64; 2]>,
    sessions: JoinSet<Result<()>>,
}

impl Writer {
    fn start(nodes: [ConnInfo; 2], first: usize) -> Writer {
        let (gate, _) = watch::channel(Gate::Open);
        let acked = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut sessions = JoinSet::new();
        for session in 0..SESSIONS {
            sessions.spawn(write(
                NmsSession::new(session),
                nodes.clone(),
                first,
                gate.subscribe(),
                acked.clone(),
            ));
        }
        Writer {
            gate,
            acked,
            sessions,
        }
    }

    fn set(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    fn acked(&self) -> [u64; 2] {
        [
            self.acked[0].load(Ordering::Relaxed),
            self.acked[1].load(Ordering::Relaxed),
        ]
    }

    /// The first failure of a session, if one ended.
    fn check(&mut self) -> Result<()> {
        match self.sessions.try_join_next() {
            None => Ok(()),
            Some(r) => r.map_err(|e| anyhow!("an NMS session failed: {e}"))?,
        }
    }

    /// Stop every session; what each node acknowledged.
    async fn stop(mut self) -> Result<[u64; 2]> {
        self.set(Gate::Halt);
        while let Some(r) = self.sessions.join_next().await {
            r.map_err(|e| anyhow!("an NMS session failed: {e}"))??;
        }
        Ok(self.acked())
    }
}

/// What a failed NMS transaction means for the session.
enum Failure {
    /// Try the same transaction again on the same node (serialization failure, deadlock).
    Retry,
    /// The node refuses NMS writes: it is a standby or fenced.
    Refused,
    /// The connection is gone (server stopped, session terminated).
    Lost,
    /// Anything else is a bug worth stopping for.
    Definite,
}

impl Failure {
    fn of(e: &tokio_postgres::Error) -> Failure {
        let Some(code) = e.code() else {
            return Failure::Lost;
        };
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            Failure::Retry
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            Failure::Refused
        } else if code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            Failure::Lost
        } else {
            Failure::Definite
        }
    }
}

/// One NMS session: one connection per node, kept across refusals (the guard's grants come
/// back to open sessions on promotion).
async fn write(
    mut nms: NmsSession,
    nodes: [ConnInfo; 2],
    mut node: usize,
    mut gate: watch::Receiver<Gate>,
    acked: Arc<[AtomicU64; 2]>,
) -> Result<()> {
    let mut clients: [Option<Client>; 2] = [None, None];
    while *gate.borrow() != Gate::Halt {
        if clients[node].as_ref().is_none_or(|c| c.is_closed()) {
            let connecting = nodes[node].connect("nms workload");
            match tokio::time::timeout(Duration::from_secs(1), connecting).await {
                Ok(Ok(c)) => clients[node] = Some(c),
                _ => {
                    node = move_on(node, &mut gate).await;
                    continue;
                }
            }
        }
        let client = clients[node].as_ref().expect("connected above");
        match nms.step(client).await {
            Ok(()) => {
                acked[node].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => match Failure::of(&e) {
                Failure::Retry => {}
                Failure::Refused => node = move_on(node, &mut gate).await,
                Failure::Lost => {
                    clients[node] = None;
                    node = move_on(node, &mut gate).await;
                }
                Failure::Definite => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("NMS workload on node {}", NAMES[node])))
                }
            },
        }
    }
    Ok(())
}

/// The node to try after `node` refused or went away: the other one, once the gate allows.
/// The pause bounds the pace while neither node accepts writes (during a failover).
async fn move_on(node: usize, gate: &mut watch::Receiver<Gate>) -> usize {
    let _ = gate.wait_for(|g| *g != Gate::Pinned).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    1 - node
}
