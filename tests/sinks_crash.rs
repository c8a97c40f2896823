//! Sinks of the real `understudy follow` binary (a webhook to a real HTTP receiver and an exec
//! sink appending to a file) while the follower is SIGKILLed at random moments under the NMS
//! workload: each sink gets every message (no gap against `understudy replay`), in id order
//! (first arrivals), at least once.
mod common;
mod sink_support;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;
use understudy::lsn::Lsn;

use common::{file_tail, load_nms, Pair};
use sink_support::Receiver;

const KILLS: u32 = 10;

/// A message id `commit_lsn:seq`, ordered numerically.
fn parse_id(id: &str) -> (Lsn, u32) {
    let (lsn, seq) = id
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("'{id}' is not commit_lsn:seq"));
    (
        lsn.parse()
            .unwrap_or_else(|e| panic!("'{id}': bad commit LSN: {e:?}")),
        seq.parse()
            .unwrap_or_else(|e| panic!("'{id}': bad seq: {e:?}")),
    )
}

fn id_of(m: &Value) -> String {
    m["id"]
        .as_str()
        .unwrap_or_else(|| panic!("message without a string id: {m}"))
        .to_string()
}

fn log_handle(log: &Path) -> std::fs::File {
    OpenOptions::new().append(true).open(log).unwrap()
}

fn append(log: &Path, line: &str) {
    writeln!(log_handle(log), "{line}").unwrap();
}

/// The exec sink's file: ids in arrival order, and how many lines were torn (a follower killed
/// while writing to `cat` leaves a partial line that the next run's first line is appended to).
fn exec_ids(file: &Path) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut ids = Vec::new();
    let mut torn = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            ids.push(id_of(&v));
            continue;
        }
        // A torn line: the whole message that follows the partial one is the first suffix
        // starting at `{"id":"` that parses as one JSON value (a partial prefix never does).
        torn += 1;
        let recovered = line
            .match_indices("{\"id\":\"")
            .filter(|(i, _)| *i > 0)
            .find_map(|(i, _)| serde_json::from_str::<Value>(&line[i..]).ok());
        if let Some(v) = recovered {
            ids.push(id_of(&v));
        } else {
            // The partial message was the last thing in the file (never appended to): ignore.
            eprintln!("exec file: unrecoverable torn line of {} bytes", line.len());
        }
    }
    (ids, torn)
}

/// Deduplicate keeping the first arrival; assert strictly increasing (commit_lsn, seq).
fn first_arrivals_in_order(sink: &str, arrivals: &[String]) -> (Vec<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut firsts: Vec<String> = Vec::new();
    let mut duplicates = 0;
    for id in arrivals {
        if seen.insert(id.clone()) {
            if let Some(prev) = firsts.last() {
                assert!(
                    parse_id(prev) < parse_id(id),
                    "{sink}: message {id} first arrived after {prev} (out of order; arrival \
                     index {})",
                    firsts.len()
                );
            }
            firsts.push(id.clone());
        } else {
            duplicates += 1;
        }
    }
    (firsts, duplicates)
}

fn spawn_follower(pair: &Pair, args: &[&str], log: &Path) -> Child {
    pair.understudy_command(args)
        .env("UNDERSTUDY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(log_handle(log))
        .stderr(log_handle(log))
        .spawn()
        .expect("spawn understudy follow")
}

/// `understudy replay --to stdout` from `from` (or the oldest LSN the journal names when it
/// refuses `from`): the ids it emits, and the LSN it started from.
fn replay_ids(journal: &Path, rules: &Path, from: Lsn) -> (Vec<String>, Lsn) {
    let run = |from: Lsn| {
        Command::new(env!("CARGO_BIN_EXE_understudy"))
            .arg("replay")
            .arg("--journal")
            .arg(journal)
            .arg("--from-lsn")
            .arg(from.to_string())
            .arg("--to")
            .arg("stdout")
            .arg("--rules")
            .arg(rules)
            .env("NO_COLOR", "1")
            .output()
            .expect("run understudy replay")
    };
    let mut start = from;
    let mut out = run(start);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let oldest = stderr
            .split("the oldest available is ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c == ')' || c.is_whitespace()).next())
            .and_then(|l| l.parse::<Lsn>().ok())
            .unwrap_or_else(|| panic!("replay from {from} failed: {stderr}"));
        eprintln!("replay refused {from}; replaying from the oldest the journal keeps, {oldest}");
        start = oldest;
        out = run(start);
        assert!(
            out.status.success(),
            "replay from {start} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ids = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| id_of(&serde_json::from_str(l).expect("replay prints JSON lines")))
        .collect();
    (ids, start)
}

/// The no-gap check: a sink's distinct ids (from `start` on) are exactly replay's.
fn assert_no_gap(sink: &str, firsts: &[String], expected: &BTreeSet<String>, start: Lsn) {
    let got: BTreeSet<String> = firsts
        .iter()
        .filter(|id| parse_id(id).0 >= start)
        .cloned()
        .collect();
    let before = firsts.len() - got.len();
    if before > 0 {
        eprintln!("{sink}: {before} delivered ids commit before the replay start {start}");
    }
    let missing: Vec<&String> = expected.difference(&got).collect();
    let extra: Vec<&String> = got.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{sink}: {} ids replay has were never delivered (first {:?}); {} delivered ids replay \
         does not have (first {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_everything_in_order_across_follower_sigkill() {
    let seed: u64 = std::env::var("UNDERSTUDY_SINKS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("sinks crash test seed {seed} (reproduce with UNDERSTUDY_SINKS_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let pair = Pair::start();
    load_nms(&pair.primary_client().await).await;
    let summary = pair.bootstrap().await;
    let consistent_point = summary.consistent_point;

    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal");
    let exec_file = work.path().join("exec.jsonl");
    std::fs::write(&exec_file, "").unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nms_rules.toml");
    let log =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sinks-crash-follow-{seed}.log"));
    std::fs::write(&log, "").unwrap();
    eprintln!("follow log: {}", log.display());

    let receiver = Receiver::start(0, Duration::ZERO).await;
    // from=oldest: a sink without a cursor starts at the journal's beginning, not at the applied
    // position (the default `now`), so a kill before the cursor exists cannot skip anything.
    let webhook = format!("webhook:from=oldest:{}", receiver.url);
    let exec = format!(
        "exec:interval=200ms,from=oldest:cat >> '{}'",
        exec_file.display()
    );
    let journal_arg = journal.to_str().unwrap().to_string();
    let rules_arg = rules.to_str().unwrap().to_string();
    let follow_args: Vec<&str> = vec![
        "follow",
        "--journal",
        &journal_arg,
        "--rules",
        &rules_arg,
        "--sink",
        &webhook,
        "--sink",
        &exec,
    ];
    let webhook_arrivals = || {
        let st = receiver.state.lock().unwrap();
        st.messages.len() + st.duplicates
    };
    let exec_bytes = || std::fs::metadata(&exec_file).map(|m| m.len()).unwrap_or(0);

    // The workload: one session calling nms.workload_tick in a loop until halted.
    let (halt, halt_rx) = watch::channel(false);
    let client = pair
        .primary_info()
        .connect("sinks crash workload")
        .await
        .unwrap();
    let workload = tokio::spawn(async move {
        let mut ticks = 0i32;
        while !*halt_rx.borrow() {
            client
                .execute("SELECT nms.workload_tick($1::int)", &[&ticks])
                .await
                .unwrap_or_else(|e| panic!("workload_tick({ticks}): {e}"));
            ticks += 1;
        }
        ticks
    });

    for round in 1..=KILLS {
        let run_ms = rng.gen_range(200..=1500u64);
        append(
            &log,
            &format!("===== round {round}: SIGKILL after {run_ms} ms ====="),
        );
        let mut child = spawn_follower(&pair, &follow_args, &log);
        // The random moment is the point of this sleep.
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "round {round}: `understudy follow` exited by itself ({status}); log {}:\n{}",
                log.display(),
                file_tail(&log, 40)
            );
        }
        child.kill().expect("SIGKILL the follower");
        let status = child.wait().unwrap();
        append(
            &log,
            &format!("===== round {round}: killed ({status}) ====="),
        );
        eprintln!(
            "round {round}: ran {run_ms} ms; webhook arrivals {}, exec file {} bytes, standby \
             applied {}",
            webhook_arrivals(),
            exec_bytes(),
            pair.applied_lsn().await
        );
    }
    halt.send_replace(true);
    let ticks = workload.await.expect("workload task");
    let target: Lsn = pair
        .primary_client()
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    eprintln!("workload stopped after {ticks} ticks; primary WAL at {target}");
    assert!(
        webhook_arrivals() > 0 || exec_bytes() > 0,
        "no sink received anything during the kills: they never landed while delivering"
    );

    // The final run: until the standby has applied everything and both sinks are quiet for 2 s.
    append(&log, "===== final run =====");
    let child = spawn_follower(&pair, &follow_args, &log);
    let started = Instant::now();
    let mut last = (webhook_arrivals(), exec_bytes());
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (webhook_arrivals(), exec_bytes());
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        let applied = pair.applied_lsn().await;
        if applied >= target && quiet_since.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "final run: applied {applied} >= {target}, sinks quiet for 2 s after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "final run: after 180 s applied {applied} (target {target}), webhook arrivals {}, \
             exec {} bytes; log {}:\n{}",
            now.0,
            now.1,
            log.display(),
            file_tail(&log, 40)
        );
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: pid is our own child, not yet waited for.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let done = tokio::task::spawn_blocking(move || {
        common::wait_with_peak_rss(child, Duration::from_secs(30), "follow to stop on SIGTERM")
    })
    .await
    .unwrap();
    eprintln!("final follower stopped: {done:?}");

    // What the journal holds, replayed after the follower stopped.
    let (replayed, start) = replay_ids(&journal, &rules, consistent_point);
    let expected: BTreeSet<String> = replayed.iter().cloned().collect();
    assert_eq!(expected.len(), replayed.len(), "replay printed an id twice");
    assert!(
        expected.len() > 100,
        "replay from {start} has only {} messages",
        expected.len()
    );

    // Webhook: the receiver keeps first arrivals in order and counts the rest.
    let (hook_firsts, hook_dupes) = {
        let st = receiver.state.lock().unwrap();
        let ids: Vec<String> = st.messages.iter().map(id_of).collect();
        let (firsts, d) = first_arrivals_in_order("webhook", &ids);
        assert_eq!(d, 0, "the receiver already dropped duplicates");
        (firsts, st.duplicates)
    };
    let (exec_arrivals, torn) = exec_ids(&exec_file);
    let (exec_firsts, exec_dupes) = first_arrivals_in_order("exec", &exec_arrivals);

    eprintln!(
        "replay from {start} (bootstrap consistent point {consistent_point}): {} messages",
        expected.len()
    );
    eprintln!(
        "webhook: {} distinct messages, {} duplicates ({} requests)",
        hook_firsts.len(),
        hook_dupes,
        receiver.state.lock().unwrap().requests
    );
    eprintln!(
        "exec: {} distinct messages, {} duplicates, {} lines in all, {} torn lines",
        exec_firsts.len(),
        exec_dupes,
        exec_arrivals.len(),
        torn
    );
    assert_no_gap("webhook", &hook_firsts, &expected, start);
    assert_no_gap("exec", &exec_firsts, &expected, start);
}
