//! Synchronous mode against real clusters: the primary names the follower (application_name
//! `understudy_b`) in `synchronous_standby_names`; the follower streams into a journal and
//! acknowledges what the journal holds durably (`--ack journal`).
//!
//! * A commit returns only once its transaction is durable in the journal.
//! * Policy wait: with the follower stopped a commit blocks; it returns when the follower is back.
//! * Policy fallback: the driver sees the standby gone, empties the setting after the timeout,
//!   which releases the commit already waiting; sync is restored once the follower streams again.
//! * The setting itself: names quoted, and cleared even over postgresql.conf.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use understudy::cluster::{Cluster, ClusterOptions};
use understudy::follow::{self, Ack, FollowOptions, FollowSummary, JournalFollow};
use understudy::journal::JournalHandle;
use understudy::lsn::Lsn;
use understudy::pg::conninfo::ConnInfo;
use understudy::role::sync::{
    set_synchronous_standby, standby_seen, synchronous_standby_names, StandbyLoss, SyncAction,
    SyncPolicy, SyncState,
};

use common::{assert_same_rows, wait_for, Pair};

const APP: &str = "understudy_b";
const WRITER: &str = "sync test writer";

/// A primary/standby pair, bootstrapped, with table `public.t` replicated.
async fn setup() -> Pair {
    let pair = Pair::start();
    pair.primary_client()
        .await
        .batch_execute("CREATE TABLE public.t (id int PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();
    pair.bootstrap().await;
    pair
}

/// `follow --journal DIR --ack journal` in a task, connecting to the primary as [`APP`].
struct Follower {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<FollowSummary>>,
    journal: Arc<watch::Sender<Option<JournalHandle>>>,
}

impl Follower {
    fn start(pair: &Pair, dir: &std::path::Path) -> Follower {
        let mut options = FollowOptions::new(pair.primary_info(), pair.standby_info());
        options.application_name = APP.to_string();
        let journal = Arc::new(watch::channel(None).0);
        let mut j = JournalFollow::new(dir);
        j.ack = Ack::Journal;
        j.handle = Some(journal.clone());
        options.journal = Some(j);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move { follow::follow(&options, stop_rx, None).await });
        Follower {
            stop,
            task,
            journal,
        }
    }

    /// The journal's durable position right now (in-process: no round trip).
    fn durable(&self) -> Option<Lsn> {
        self.journal.borrow().as_ref().map(|h| h.durable())
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the follower did not stop within 60 s")
            .expect("the follower task panicked")
            .expect("the follower failed");
    }
}

async fn streaming(primary: &tokio_postgres::Client) -> bool {
    standby_seen(primary, APP)
        .await
        .unwrap()
        .is_some_and(|s| s.is_streaming())
}

/// Wait until the primary counts the follower as its synchronous standby.
async fn wait_sync(primary: &tokio_postgres::Client) {
    wait_for(
        "the follower to be the primary's synchronous standby",
        Duration::from_secs(30),
        || async {
            standby_seen(primary, APP)
                .await
                .unwrap()
                .is_some_and(|s| s.is_streaming() && s.sync_state == "sync")
        },
    )
    .await;
}

/// Wait until the primary sees no streaming walsender named [`APP`].
/// Sync on with the follower streaming, then the follower stopped and gone: a commit of row 1
/// left waiting for it. When the follower went, and the commit.
async fn commit_left_waiting(
    pair: &Pair,
    p: &tokio_postgres::Client,
    dir: &std::path::Path,
) -> (Instant, JoinHandle<Result<u64, tokio_postgres::Error>>) {
    let follower = Follower::start(pair, dir);
    set_synchronous_standby(p, Some(APP)).await.unwrap();
    wait_sync(p).await;
    follower.stop().await;
    wait_gone(p).await;
    let gone_at = Instant::now();
    let commit = spawn_commit(pair, 1).await;
    wait_commit_waits_for_standby(p).await;
    (gone_at, commit)
}

async fn wait_gone(primary: &tokio_postgres::Client) {
    wait_for(
        "the follower's walsender to go away",
        Duration::from_secs(30),
        || async { !streaming(primary).await },
    )
    .await;
}

/// Insert row `id` on a connection of its own, in a task: with the standby gone it blocks.
async fn spawn_commit(pair: &Pair, id: i32) -> JoinHandle<Result<u64, tokio_postgres::Error>> {
    let client = pair.primary_info().connect(WRITER).await.unwrap();
    tokio::spawn(async move {
        client
            .execute(
                "INSERT INTO public.t VALUES ($1, 'written while the standby was gone')",
                &[&id],
            )
            .await
    })
}

/// The writer's backend is waiting for a synchronous standby (not for a lock or anything else).
async fn wait_commit_waits_for_standby(primary: &tokio_postgres::Client) {
    wait_for(
        "the commit to wait for the synchronous standby (wait_event SyncRep)",
        Duration::from_secs(10),
        || async {
            primary
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND wait_event = 'SyncRep'",
                    &[&WRITER],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
}

async fn on_standby(pair: &Pair, id: i32) -> bool {
    pair.standby_client()
        .await
        .query_opt("SELECT 1 FROM public.t WHERE id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

/// One probe of the sidecar's driver: ask the primary, decide, perform. Alarms are collected in
/// `alarms`, setting changes in `performed`.
async fn drive(
    p: &tokio_postgres::Client,
    policy: &mut SyncPolicy,
    alarms: &mut Vec<SyncAction>,
    performed: &mut Vec<SyncAction>,
) {
    let streaming = streaming(p).await;
    for action in policy.observe(Instant::now(), streaming) {
        match &action {
            SyncAction::FallBackToAsync => set_synchronous_standby(p, None).await.unwrap(),
            SyncAction::RestoreSync => set_synchronous_standby(p, Some(APP)).await.unwrap(),
            SyncAction::RaiseAlarm(_) | SyncAction::ClearAlarm => {
                alarms.push(action);
                continue;
            }
        }
        performed.push(action);
    }
}

/// (a) Each commit returns only once the follower's journal holds it durably.
///
/// What is compared, and why it is sound: synchronous commit waits until the walsender's reported
/// flush position reaches the end of the transaction's commit record, `E`. We obtain `E` exactly
/// from the WAL (pg_walinspect: the COMMIT record of the transaction's xid between the insert
/// position read inside the transaction and the flush position read after COMMIT), and check the
/// journal's durable position read in-process the instant COMMIT returned: `durable >= E`.
/// Weaker bounds were rejected: `durable >= pg_current_wal_lsn()` read after COMMIT can fail for
/// a correct follower (WAL other processes wrote after our commit, which nobody waited for), and
/// `durable >= pg_current_wal_insert_lsn()` read before COMMIT can pass for a wrong one (an idle
/// keepalive position can reach it while our commit is not yet in the journal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_returns_only_once_durable_in_the_journal() {
    let pair = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = pair.primary_client().await;
    p.batch_execute("CREATE EXTENSION pg_walinspect")
        .await
        .unwrap();
    let follower = Follower::start(&pair, dir.path());
    wait_for("the follower to stream", Duration::from_secs(30), || {
        streaming(&p)
    })
    .await;

    set_synchronous_standby(&p, Some(APP)).await.unwrap();
    assert_eq!(
        synchronous_standby_names(&p).await.unwrap(),
        format!("\"{APP}\"")
    );
    wait_sync(&p).await;

    let w = pair.primary_info().connect(WRITER).await.unwrap();
    let sync: String = w
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, "on", "the writer must commit synchronously");
    for id in 1..=20i32 {
        w.batch_execute("BEGIN").await.unwrap();
        w.execute("INSERT INTO public.t VALUES ($1, 'synchronous')", &[&id])
            .await
            .unwrap();
        let row = w
            .query_one(
                "SELECT pg_current_xact_id()::xid::text, pg_current_wal_insert_lsn()::text",
                &[],
            )
            .await
            .unwrap();
        let (xid, before): (String, String) = (row.get(0), row.get(1));
        w.batch_execute("COMMIT").await.unwrap();
        let durable = follower.durable();

        let after: String = w
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let end: String = p
            .query_one(
                "SELECT end_lsn::text FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn) \
                 WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' \
                   AND xid::text = $3",
                &[&before, &after, &xid],
            )
            .await
            .unwrap_or_else(|e| panic!("the COMMIT record of xid {xid} between {before} and {after}: {e}"))
            .get(0);
        let end: Lsn = end.parse().unwrap();
        let durable = durable.expect("the journal is open while the follower streams");
        assert!(
            durable >= end,
            "commit {id} (xid {xid}) returned with its commit record ending at {end}, but the \
             journal was durable only up to {durable}"
        );
        let seen = standby_seen(&p, APP)
            .await
            .unwrap()
            .expect("the follower is connected");
        assert_eq!(seen.sync_state, "sync", "{seen:?}");
        assert!(
            seen.flush_lsn.is_some_and(|f| f >= end),
            "pg_stat_replication shows flush {:?} below commit end {end} after the commit returned",
            seen.flush_lsn
        );
    }

    wait_for(
        "the standby to apply all 20 rows",
        Duration::from_secs(30),
        || on_standby(&pair, 20),
    )
    .await;
    follower.stop().await;
    p.batch_execute("DROP EXTENSION pg_walinspect")
        .await
        .unwrap();
    assert_same_rows(&pair).await;
}

/// (b) Policy wait: with the follower stopped a commit blocks; when it is back the commit
/// returns and the row is on the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_waits_for_the_standby_until_it_returns() {
    let pair = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = pair.primary_client().await;
    let (_, mut commit) = commit_left_waiting(&pair, &p, dir.path()).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut commit)
            .await
            .is_err(),
        "the commit returned within 2 s although no synchronous standby was connected"
    );
    let visible: i64 = p
        .query_one("SELECT count(*) FROM public.t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        visible, 0,
        "a transaction waiting for its synchronous standby is not yet visible to other sessions"
    );

    let follower = Follower::start(&pair, dir.path());
    let returned = tokio::time::timeout(Duration::from_secs(30), commit)
        .await
        .expect("the commit did not return within 30 s of the follower's return")
        .unwrap()
        .expect("the commit failed");
    assert_eq!(returned, 1);
    wait_for("row 1 on the standby", Duration::from_secs(30), || {
        on_standby(&pair, 1)
    })
    .await;
    follower.stop().await;
    assert_same_rows(&pair).await;
}

/// (c) Policy fallback: the driver falls back to asynchronous replication after 1 s, which
/// releases the commit already waiting; sync is restored once the follower streams again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_releases_waiting_commits_and_sync_comes_back() {
    let pair = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let p = pair.primary_client().await;
    let after = Duration::from_secs(1);
    let mut policy = SyncPolicy::new(StandbyLoss::Async { after });
    let mut alarms = Vec::new();
    let mut performed = Vec::new();
    let (gone_at, commit) = commit_left_waiting(&pair, &p, dir.path()).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(policy.state(), SyncState::AsyncFallback { .. }) {
        assert!(
            Instant::now() < deadline,
            "no fallback within 20 s: {:?}",
            policy.state()
        );
        assert!(
            !commit.is_finished(),
            "the commit returned before the fallback, {:?} after the standby went",
            gone_at.elapsed()
        );
        drive(&p, &mut policy, &mut alarms, &mut performed).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone_at.elapsed() >= after,
        "fell back {:?} after the standby went, before the {after:?} timeout",
        gone_at.elapsed()
    );
    assert_eq!(performed, vec![SyncAction::FallBackToAsync]);
    assert!(
        matches!(&alarms[..], [SyncAction::RaiseAlarm(t)] if t.starts_with("fell back to asynchronous replication")),
        "{alarms:?}"
    );
    assert_eq!(synchronous_standby_names(&p).await.unwrap(), "");

    // Emptying the setting releases the commit that was already waiting.
    let returned = tokio::time::timeout(Duration::from_secs(10), commit)
        .await
        .expect("the waiting commit was not released within 10 s of the fallback")
        .unwrap()
        .expect("the released commit failed");
    assert_eq!(returned, 1);
    let committed: i64 = p
        .query_one("SELECT count(*) FROM public.t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        committed, 1,
        "the released commit is visible on the primary"
    );
    // New commits do not wait either.
    let second = spawn_commit(&pair, 2).await;
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("a commit after the fallback waited")
        .unwrap()
        .unwrap();

    // The standby returns: the driver restores sync and clears the alarm.
    let follower = Follower::start(&pair, dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(policy.state(), SyncState::Sync) {
        assert!(
            Instant::now() < deadline,
            "sync not restored within 30 s: {:?}",
            policy.state()
        );
        drive(&p, &mut policy, &mut alarms, &mut performed).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        performed,
        vec![SyncAction::FallBackToAsync, SyncAction::RestoreSync]
    );
    assert_eq!(alarms.last(), Some(&SyncAction::ClearAlarm), "{alarms:?}");
    assert_eq!(
        synchronous_standby_names(&p).await.unwrap(),
        format!("\"{APP}\"")
    );
    wait_sync(&p).await;
    // Synchronous again: a commit returns (the standby streams) and is durable in the journal.
    let third = spawn_commit(&pair, 3).await;
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("a commit with the standby back did not return")
        .unwrap()
        .unwrap();
    wait_for(
        "rows 1 to 3 on the standby",
        Duration::from_secs(30),
        || async {
            on_standby(&pair, 1).await && on_standby(&pair, 2).await && on_standby(&pair, 3).await
        },
    )
    .await;
    follower.stop().await;
    assert_same_rows(&pair).await;
}

/// `None` means no synchronous standby even when postgresql.conf names one; names are quoted as
/// the setting's syntax needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_is_quoted_and_cleared_over_the_config_file() {
    common::init_logs();
    let options = ClusterOptions {
        settings: vec![(
            "synchronous_standby_names".to_string(),
            "\"from_conf\"".to_string(),
        )],
        ..Default::default()
    };
    let cluster = Cluster::start(&options).expect("start a cluster");
    let info = ConnInfo::parse(&cluster.dsn("postgres")).unwrap();
    let c = info.connect("test").await.unwrap();
    assert_eq!(
        synchronous_standby_names(&c).await.unwrap(),
        "\"from_conf\""
    );

    set_synchronous_standby(&c, Some("odd \"name\", b"))
        .await
        .unwrap();
    assert_eq!(
        synchronous_standby_names(&c).await.unwrap(),
        "\"odd \"\"name\"\", b\""
    );
    // A fresh session sees it too: the setting is the server's, not this session's.
    let fresh = info.connect("test").await.unwrap();
    assert_eq!(
        synchronous_standby_names(&fresh).await.unwrap(),
        "\"odd \"\"name\"\", b\""
    );

    set_synchronous_standby(&c, None).await.unwrap();
    assert_eq!(synchronous_standby_names(&c).await.unwrap(), "");
    let sync_commit: String = c
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync_commit, "local");

    let err = set_synchronous_standby(&c, Some(&"x".repeat(64)))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("longer than 63 bytes"),
        "{err:#}"
    );
}
