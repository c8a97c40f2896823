//! `replay` against real PostgreSQL: the journal's messages again from an LSN, to stdout (the same
//! messages and ids a webhook received), to the sinks, and applied to a standby; and the error
//! for an LSN the journal no longer keeps.

mod common;
mod sink_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use understudy::lsn::Lsn;
use understudy::notify::{replay_to_sinks, run_sinks, SinkConfig, SinkContext};
use understudy::replay::{self, ReplayTarget};

use common::{assert_same_rows, wait_for};
use sink_support::{expected_messages, journal_until, open_journal, setup, Receiver};

fn commit_lsn(m: &Value) -> Lsn {
    m["commit_lsn"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_the_messages_emitted_from_an_lsn() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let until = sink_support::workload(&s, 0, 80).await;
    let durable = journal_until(&s, &mut journal, s.start, until).await;

    // What a webhook sink emitted, as its receiver saw it.
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let configs: Vec<SinkConfig> = vec![format!("webhook:from=oldest:{}", receiver.url)
        .parse()
        .unwrap()];
    let total = expected_messages(&journal, s.start, &s.rules).len();
    let (_applied_tx, applied) = watch::channel(durable);
    let (stop_tx, stop) = watch::channel(false);
    let ctx = SinkContext {
        journal: journal.handle(),
        journal_dir: dir.path().to_path_buf(),
        applied,
        rules: Arc::clone(&s.rules),
        standby: None,
    };
    let sinks = tokio::spawn(async move { run_sinks(&configs, ctx, stop).await });
    wait_for(
        "the webhook to receive everything",
        Duration::from_secs(60),
        || async { receiver.count() >= total },
    )
    .await;
    stop_tx.send_replace(true);
    sinks.await.unwrap().unwrap();
    let emitted = receiver.messages();
    assert_eq!(emitted.len(), total);

    // From an LSN in the middle, with and without an end.
    let from = commit_lsn(&emitted[emitted.len() / 2]);
    let to = commit_lsn(&emitted[emitted.len() * 3 / 4]);
    let from_on: Vec<Value> = emitted
        .iter()
        .filter(|m| commit_lsn(m) >= from)
        .cloned()
        .collect();
    let between: Vec<Value> = from_on
        .iter()
        .filter(|m| commit_lsn(m) <= to)
        .cloned()
        .collect();
    assert!(between.len() < from_on.len() && !between.is_empty());
    let lines = |to: Option<Lsn>| {
        let mut out = Vec::new();
        replay::write_messages(&journal.handle(), from, to, Arc::clone(&s.rules), &mut out)
            .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(None), from_on, "replay from {from}");
    assert_eq!(lines(Some(to)), between, "replay from {from} to {to}");

    // Pushed again to a sink: the same messages with the same ids (a fresh receiver).
    let again = Receiver::start(0, Duration::ZERO).await;
    let configs: Vec<SinkConfig> = vec![format!("webhook:{}", again.url).parse().unwrap()];
    let (_stop_tx, stop) = watch::channel(false);
    replay_to_sinks(
        &configs,
        &journal.handle(),
        Arc::clone(&s.rules),
        None,
        from,
        None,
        stop,
    )
    .await
    .unwrap();
    assert_eq!(again.messages(), from_on);

    // The command's entry point, on the closed journal: to stdout.
    drop(journal);
    let summary = replay::replay(
        dir.path(),
        from,
        None,
        ReplayTarget::Stdout,
        Arc::clone(&s.rules),
    )
    .await
    .unwrap();
    assert_eq!(summary.messages as usize, from_on.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_standby_applies_exactly_once() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let until = sink_support::workload(&s, 0, 100).await;
    journal_until(&s, &mut journal, s.start, until).await;
    drop(journal);
    let standby = s.pair.standby_info();
    let applied_before = s.pair.applied_lsn().await;

    // A start after what the standby applied would leave a gap.
    let err = replay::replay(
        dir.path(),
        Lsn(applied_before.0 + 1),
        None,
        ReplayTarget::Standby(standby.clone()),
        Arc::clone(&s.rules),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("would be missing"), "{err:#}");

    let summary = replay::replay(
        dir.path(),
        s.start,
        None,
        ReplayTarget::Standby(standby.clone()),
        Arc::clone(&s.rules),
    )
    .await
    .unwrap();
    assert!(summary.transactions > 50, "{summary:?}");
    assert_same_rows(&s.pair).await;
    assert_eq!(Some(s.pair.applied_lsn().await), summary.applied);

    // Again: everything is skipped, nothing applied twice.
    let again = replay::replay(
        dir.path(),
        s.start,
        None,
        ReplayTarget::Standby(standby),
        Arc::clone(&s.rules),
    )
    .await
    .unwrap();
    assert_eq!(again.transactions, 0, "{again:?}");
    assert_same_rows(&s.pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_before_the_journal_says_what_is_oldest_and_to_bootstrap() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = sink_support::open_journal_with(dir.path(), s.start, 16 * 1024);
    let until = sink_support::workload(&s, 0, 150).await;
    let durable = journal_until(&s, &mut journal, s.start, until).await;
    let retained = journal.retain(durable, None, None).unwrap();
    assert!(!retained.removed.is_empty(), "retention removed nothing");
    let oldest = journal.oldest_lsn();
    assert!(oldest > s.start);
    drop(journal);

    let err = replay::replay(
        dir.path(),
        s.start,
        None,
        ReplayTarget::Stdout,
        Arc::clone(&s.rules),
    )
    .await
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "LSN {} is older than the journal keeps (the oldest available is {oldest})",
            s.start
        )),
        "{text}"
    );
    assert!(text.contains("bootstrap"), "{text}");

    // From the oldest LSN kept, it works.
    replay::replay(
        dir.path(),
        oldest,
        None,
        ReplayTarget::Stdout,
        Arc::clone(&s.rules),
    )
    .await
    .unwrap();

    // A directory that is not a journal.
    let empty = tempfile::tempdir().unwrap();
    let err = replay::replay(
        &empty.path().join("missing"),
        oldest,
        None,
        ReplayTarget::Stdout,
        Arc::clone(&s.rules),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
