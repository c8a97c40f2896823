//! The example NMS memory (`examples/nms_memory/`) fed by `understudy follow --http`'s message
//! stream equals a model freshly loaded from the primary after a mixed workload, across a
//! SIGKILL and restart of the follower and restarts of the consumer (resumed with
//! `Last-Event-ID`, and dropped and reloaded from the standby).
mod common;

#[path = "../examples/nms_memory/load.rs"]
mod load;
#[path = "../examples/nms_memory/model.rs"]
mod model;
#[path = "../examples/nms_memory/sse.rs"]
mod sse;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use understudy::pg::conninfo::ConnInfo;

use common::{file_tail, load_nms, wait_for, Pair};
use load::Side;
use model::{format_lsn, parse_lsn, LiveModel, MessageId, NmsModel};
use sse::{messages_path, Endpoint, Subscription};

const TOKEN: &str = "nms-memory-test-token";
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nms_rules.toml");
/// A table the model ignores, written last so the stream's last message is known.
const MARKER_TABLE: &str = "public.nms_memory_marker";

/// Which of the flags this test needs `understudy follow --help` lists.
struct FollowFlags {
    token: bool,
}

fn follow_flags() -> FollowFlags {
    let out = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["follow", "--help"])
        .output()
        .expect("run understudy follow --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = ["--journal", "--rules", "--http"]
        .into_iter()
        .filter(|f| !help.contains(&format!("{f} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "`understudy follow` has no {} flag yet: this test needs `follow --journal DIR --rules \
         FILE --http 127.0.0.1:PORT [--http-token T]` serving GET /v1/messages; follow --help:\n{help}",
        missing.join(", ")
    );
    FollowFlags {
        token: help.contains("--http-token"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn append(log: &Path, line: &str) {
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    writeln!(f, "{line}").unwrap();
}

fn log_handle(log: &Path) -> std::fs::File {
    OpenOptions::new().append(true).open(log).unwrap()
}

/// `understudy follow --journal --rules --http` as a child process.
struct Follower {
    child: Child,
    args: Vec<String>,
    log: PathBuf,
    runs: u32,
}

impl Follower {
    fn start(pair: &Pair, journal: &Path, port: u16, token: bool, log: &Path) -> Follower {
        let mut args: Vec<String> = vec![
            "follow".into(),
            "--journal".into(),
            journal.display().to_string(),
            "--rules".into(),
            RULES.into(),
            "--http".into(),
            format!("127.0.0.1:{port}"),
        ];
        if token {
            args.extend(["--http-token".into(), TOKEN.into()]);
        }
        let child = Follower::spawn(pair, &args, log, 1);
        Follower {
            child,
            args,
            log: log.to_path_buf(),
            runs: 1,
        }
    }

    fn spawn(pair: &Pair, args: &[String], log: &Path, run: u32) -> Child {
        append(
            log,
            &format!("===== follow run {run}: {} =====", args.join(" ")),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pair.understudy_command(&args)
            .env("UNDERSTUDY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log_handle(log))
            .stderr(log_handle(log))
            .spawn()
            .expect("spawn understudy follow")
    }

    /// Panics when the follower exited by itself.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{when}: `understudy follow` exited by itself ({status}); log {}:\n{}",
                self.log.display(),
                file_tail(&self.log, 60)
            );
        }
    }

    /// SIGKILL, then start it again on the same journal and port.
    fn kill_and_restart(&mut self, pair: &Pair) {
        self.assert_running("before SIGKILL");
        self.child.kill().expect("SIGKILL the follower");
        let status = self.child.wait().unwrap();
        append(&self.log, &format!("===== killed ({status}) ====="));
        self.runs += 1;
        self.child = Follower::spawn(pair, &self.args, &self.log, self.runs);
    }
}

/// A failing test must not leave a follower retrying against stopped clusters.
impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two NMS sessions calling `nms.workload_tick` (one source transaction per call); session 0
/// also raises an alarm storm every `storm_every`.
struct Workload {
    halt: watch::Sender<bool>,
    sessions: JoinSet<(u64, u64, Option<String>)>,
}

impl Workload {
    async fn start(primary: &ConnInfo, storm_every: Duration) -> Workload {
        let (halt, halt_rx) = watch::channel(false);
        let mut sessions = JoinSet::new();
        for session in 0..2i32 {
            let client = primary.connect("nms_memory workload").await.unwrap();
            let halt_rx = halt_rx.clone();
            sessions.spawn(async move {
                let (mut ticks, mut storms) = (0u64, 0u64);
                let mut last_storm = Instant::now() - storm_every; // the first storm at once
                while !*halt_rx.borrow() {
                    let seed = (ticks as i32).wrapping_mul(2).wrapping_add(session);
                    if let Err(e) = client
                        .execute("SELECT nms.workload_tick($1::int)", &[&seed])
                        .await
                    {
                        return (ticks, storms, Some(format!("workload_tick({seed}): {e}")));
                    }
                    ticks += 1;
                    if session == 0 && last_storm.elapsed() >= storm_every {
                        if let Err(e) = client.execute("SELECT nms.alarm_storm(20, 8)", &[]).await {
                            return (ticks, storms, Some(format!("alarm_storm: {e}")));
                        }
                        storms += 1;
                        last_storm = Instant::now();
                    }
                }
                (ticks, storms, None)
            });
        }
        Workload { halt, sessions }
    }

    /// Stops the sessions; fails on any session error; returns (ticks, storms).
    async fn stop(mut self) -> (u64, u64) {
        self.halt.send_replace(true);
        let (mut ticks, mut storms) = (0, 0);
        while let Some(s) = self.sessions.join_next().await {
            let (t, s, error) = s.expect("workload session panicked");
            assert!(error.is_none(), "workload session failed: {error:?}");
            ticks += t;
            storms += s;
        }
        (ticks, storms)
    }
}

/// What a consumer has taken so far.
#[derive(Debug, Clone, Default)]
struct Progress {
    last: Option<MessageId>,
    messages: u64,
    marker_seen: bool,
    error: Option<String>,
}

/// The example's consumer loop in a task: stream events into a [`LiveModel`].
struct Consumer {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    task: JoinHandle<(LiveModel, Subscription)>,
}

impl Consumer {
    /// Streams from the model's load point, or after `last_event_id` when given.
    fn start(endpoint: &Endpoint, token: bool, mut live: LiveModel) -> Consumer {
        let (stop, mut stop_rx) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(Progress {
            last: live.last,
            messages: live.stats.messages,
            ..Progress::default()
        });
        let mut sub = Subscription::new(
            endpoint.clone(),
            messages_path(Some(&live.stream_from_lsn()), None, None),
            token.then(|| TOKEN.to_string()),
            live.last_event_id(),
        );
        sub.backoff = Duration::from_millis(50);
        sub.max_backoff = Duration::from_millis(500);
        sub.log = true;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    event = sub.next() => {
                        let event = match event {
                            Ok(e) => e,
                            Err(e) => {
                                progress_tx.send_modify(|p| p.error = Some(format!("stream: {e}")));
                                break;
                            }
                        };
                        if event.event == "error" {
                            eprintln!("the stream reported an error: {}", event.data);
                            continue;
                        }
                        if event.event != "mutation" {
                            continue;
                        }
                        let marker = event.data.contains(MARKER_TABLE);
                        match live.offer_event(event.id.as_deref(), &event.data) {
                            Ok(_) => progress_tx.send_modify(|p| {
                                p.last = live.last;
                                p.messages = live.stats.messages;
                                p.marker_seen |= marker;
                            }),
                            Err(e) => {
                                progress_tx.send_modify(|p| p.error = Some(e.to_string()));
                                break;
                            }
                        }
                    }
                }
            }
            (live, sub)
        });
        Consumer {
            stop,
            progress,
            task,
        }
    }

    fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until `more` messages past `from` were taken (or the marker, once written).
    async fn wait_messages(&self, more: u64, what: &str, log: &Path) -> u64 {
        let from = self.progress().messages;
        let mut rx = self.progress.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = rx.borrow_and_update().clone();
            assert!(
                p.error.is_none(),
                "{what}: the consumer stopped: {}",
                p.error.unwrap()
            );
            if p.messages >= from + more {
                return p.messages;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                panic!(
                    "{what}: timed out waiting for {more} more messages (had {}, last {:?}); \
                     follow log {}:\n{}",
                    p.messages,
                    p.last.map(|i| i.to_string()),
                    log.display(),
                    file_tail(log, 60)
                );
            }
        }
    }

    /// Stops the task; returns the model and the subscription as they stand.
    async fn stop(self) -> (LiveModel, Subscription) {
        let p = self.progress();
        assert!(
            p.error.is_none(),
            "the consumer stopped: {}",
            p.error.unwrap()
        );
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the consumer did not stop within 10 s")
            .expect("consumer task")
    }
}

async fn load_from(dsn: &str, side: Side) -> (NmsModel, u64) {
    let client = ConnInfo::parse(dsn)
        .unwrap()
        .connect("nms_memory load")
        .await
        .unwrap();
    load::load(&client, side).await.expect("load the model")
}

async fn lsn_of(client: &tokio_postgres::Client, sql: &str) -> u64 {
    let text: String = client.query_one(sql, &[]).await.unwrap().get(0);
    parse_lsn(&text).unwrap()
}

fn assert_models_equal(left: &NmsModel, right: &NmsModel, what: &str) {
    let diff = left.diff(right, 20);
    assert!(
        left == right && diff.is_empty(),
        "{what}:\n  {}\nleft: {}\nright: {}",
        diff.join("\n  "),
        left.summary(),
        right.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_fed_model_equals_a_fresh_load_across_restarts() {
    let flags = follow_flags();
    let pair = Pair::start();
    let p = pair.primary_client().await;
    load_nms(&p).await;
    p.batch_execute(&format!(
        "CREATE TABLE {MARKER_TABLE} (id int PRIMARY KEY, note text)"
    ))
    .await
    .unwrap();
    pair.bootstrap().await;

    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("nms-memory-follow-{}.log", std::process::id()));
    std::fs::write(&log, "").unwrap();
    eprintln!("follow log: {}", log.display());
    let port = free_port();
    let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let mut follower = Follower::start(&pair, &journal, port, flags.token, &log);

    // consumer, first life: loaded from the standby at its applied LSN
    let (model, at) = load_from(&pair.standby_dsn(), Side::Standby).await;
    eprintln!("consumer loaded at {}: {}", format_lsn(at), model.summary());
    let mut consumer = Consumer::start(&endpoint, flags.token, LiveModel::new(model, at));

    let workload = Workload::start(&pair.primary_info(), Duration::from_millis(800)).await;
    let started = Instant::now();
    consumer
        .wait_messages(300, "streaming under load", &log)
        .await;
    follower.assert_running("streaming under load");

    // 1. the follower SIGKILLed mid-stream and started again: the consumer reconnects with
    //    Last-Event-ID by itself
    follower.kill_and_restart(&pair);
    consumer
        .wait_messages(300, "after the follower's first restart", &log)
        .await;
    follower.assert_running("after the follower's first restart");

    // 2. the consumer restarted, keeping its model: resumes after its last event id
    let (live, sub) = consumer.stop().await;
    eprintln!(
        "consumer stopped after {} messages ({} connections), resuming after {:?}",
        live.stats.messages,
        sub.connects,
        live.last_event_id()
    );
    consumer = Consumer::start(&endpoint, flags.token, live);
    consumer
        .wait_messages(300, "after resuming with Last-Event-ID", &log)
        .await;

    // 3. the consumer dropped and reloaded from the standby: streams from the new applied LSN
    let (live, _) = consumer.stop().await;
    let first_life = live.stats.clone();
    drop(live);
    let (model, at) = load_from(&pair.standby_dsn(), Side::Standby).await;
    eprintln!(
        "consumer reloaded at {}: {}",
        format_lsn(at),
        model.summary()
    );
    consumer = Consumer::start(&endpoint, flags.token, LiveModel::new(model, at));
    consumer
        .wait_messages(300, "after reloading from the standby", &log)
        .await;

    // 4. both down at once: the follower SIGKILLed while the consumer is stopped, then both
    //    come back and the consumer resumes with Last-Event-ID from the restarted follower
    let (live, _) = consumer.stop().await;
    follower.kill_and_restart(&pair);
    consumer = Consumer::start(&endpoint, flags.token, live);
    consumer
        .wait_messages(300, "after restarting both", &log)
        .await;
    follower.assert_running("after restarting both");

    let (ticks, storms) = workload.stop().await;
    eprintln!(
        "workload: {ticks} ticks, {storms} storms in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(storms > 0, "no alarm storm ran");

    // Everything written is now followed by one marker transaction. Wait until follow caught up
    // (the standby's applied LSN reaches the primary's WAL position), then until the stream's
    // last message reaches the standby's last applied commit.
    p.execute(
        &format!("INSERT INTO {MARKER_TABLE} VALUES (1, 'workload done')"),
        &[],
    )
    .await
    .unwrap();
    let primary_wal = lsn_of(&p, "SELECT pg_current_wal_lsn()::text").await;
    let standby = pair.standby_client().await;
    wait_for(
        "follow to apply everything the primary wrote",
        Duration::from_secs(120),
        || {
            let standby = &standby;
            async move {
                lsn_of(standby, "SELECT applied_lsn::text FROM understudy.progress").await
                    >= primary_wal
            }
        },
    )
    .await;
    let last_commit = lsn_of(
        &standby,
        "SELECT last_commit_lsn::text FROM understudy.progress",
    )
    .await;
    let mut rx = consumer.progress.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = rx.borrow_and_update().clone();
        assert!(
            p.error.is_none(),
            "the consumer stopped: {}",
            p.error.unwrap()
        );
        if p.marker_seen && p.last.is_some_and(|l| l.commit_lsn >= last_commit) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!(
                "the stream never delivered the last applied transaction {} (consumer at {:?}, \
                 marker seen: {}); follow log {}:\n{}",
                format_lsn(last_commit),
                p.last.map(|i| i.to_string()),
                p.marker_seen,
                log.display(),
                file_tail(&log, 60)
            );
        }
    }
    let (live, _) = consumer.stop().await;
    follower.assert_running("at the end");
    drop(follower);

    // The stream-fed model equals a fresh load from the primary (and from the standby, which
    // tells a replication difference from a stream difference).
    live.model.verify().expect("the stream-fed model's counts");
    let (from_primary, _) = load_from(&pair.primary_dsn(), Side::Primary).await;
    let (from_standby, standby_at) = load_from(&pair.standby_dsn(), Side::Standby).await;
    eprintln!("stream-fed model: {}", live.model.summary());
    eprintln!("primary:          {}", from_primary.summary());
    assert_models_equal(
        &from_standby,
        &from_primary,
        &format!(
            "the standby (applied {}) differs from the primary: a replication problem, not a \
             stream one",
            format_lsn(standby_at)
        ),
    );
    assert_models_equal(
        &live.model,
        &from_primary,
        "the stream-fed model (left) differs from a fresh load of the primary (right)",
    );

    // The workload exercised what the model has to get right.
    let taken = add_stats(&first_life, &live.stats);
    eprintln!("messages taken by the consumers: {taken:?}");
    assert!(
        taken.key_changes > 0,
        "no key change (interface renumbering) reached the model"
    );
    assert!(
        taken.unchanged_toast > 0,
        "no unchanged-TOAST marker reached the model"
    );
    assert!(
        !from_primary.active_alarms().is_empty(),
        "no active alarm at the end: the comparison is weak"
    );
}

/// The counters of two lives of the consumer's model, added.
fn add_stats(a: &model::Stats, b: &model::Stats) -> model::Stats {
    let mut kinds = a.kinds.clone();
    for (k, n) in &b.kinds {
        *kinds.entry(k.clone()).or_default() += n;
    }
    model::Stats {
        messages: a.messages + b.messages,
        applied: a.applied + b.applied,
        ignored: a.ignored + b.ignored,
        already_seen: a.already_seen + b.already_seen,
        key_changes: a.key_changes + b.key_changes,
        unchanged_toast: a.unchanged_toast + b.unchanged_toast,
        truncates: a.truncates + b.truncates,
        kinds,
    }
}
