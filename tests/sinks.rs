//! Sinks and the SSE stream against real PostgreSQL, a real HTTP receiver and real commands:
//! the primary's changes are journaled from the slot, then delivered from the journal.

mod common;
mod sink_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use understudy::http::{self, HttpContext};
use understudy::lsn::Lsn;
use understudy::notify::{run_sinks, CursorFile, SinkConfig, SinkContext, MAX_NOTIFY_PAYLOAD};

use common::wait_for;
use sink_support::{expected_messages, ids, journal_until, open_journal, setup, Receiver};

fn context(
    setup: &sink_support::Setup,
    journal: &understudy::journal::Journal,
    dir: &Path,
    applied: watch::Receiver<Lsn>,
) -> SinkContext {
    SinkContext {
        journal: journal.handle(),
        journal_dir: dir.to_path_buf(),
        applied,
        rules: Arc::clone(&setup.rules),
        standby: Some(setup.pair.standby_info()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivers_every_message_in_order_once_per_id_across_a_restart() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let until = sink_support::workload(&s, 0, 80).await;
    let storm: i32 = s
        .pair
        .primary_client()
        .await
        .query_one("SELECT nms.alarm_storm(10, 8)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(storm > 0);
    let until = until.max(sink_support::marker(&s.pair.primary_client().await).await);
    let durable = journal_until(&s, &mut journal, s.start, until).await;
    let (applied_tx, applied) = watch::channel(durable);

    // Every 4th request fails (503) and each takes 20 ms: deliveries are retried and slow.
    let receiver = Receiver::start(4, Duration::from_millis(20)).await;
    let spec: SinkConfig = format!("webhook:batch=40,from=oldest,name=hook:{}", receiver.url)
        .parse()
        .unwrap();
    let configs = vec![spec];
    let expected_first = expected_messages(&journal, s.start, &s.rules);
    assert!(
        expected_first.len() > 300,
        "only {} messages",
        expected_first.len()
    );

    let (stop_tx, stop) = watch::channel(false);
    let ctx = context(&s, &journal, dir.path(), applied.clone());
    let sinks = tokio::spawn({
        let configs = configs.clone();
        let stop = stop.clone();
        async move { run_sinks(&configs, ctx, stop).await }
    });
    let third = expected_first.len() / 3;
    wait_for(
        "a third of the messages",
        Duration::from_secs(60),
        || async { receiver.count() >= third },
    )
    .await;
    // Killed mid-delivery: no shutdown, the task just stops wherever it is.
    sinks.abort();
    let _ = sinks.await;
    let after_kill = receiver.count();
    assert!(
        after_kill < expected_first.len(),
        "everything was delivered before the kill"
    );

    // More changes while the sink is down.
    let until = sink_support::workload(&s, 1000, 40).await;
    let durable = journal_until(&s, &mut journal, durable, until).await;
    applied_tx.send_replace(durable);
    let expected = expected_messages(&journal, s.start, &s.rules);
    assert!(expected.len() > expected_first.len());

    let ctx = context(&s, &journal, dir.path(), applied.clone());
    let sinks = tokio::spawn({
        let configs = configs.clone();
        async move { run_sinks(&configs, ctx, stop).await }
    });
    wait_for(
        "every message at the receiver",
        Duration::from_secs(120),
        || async { receiver.count() >= expected.len() },
    )
    .await;
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), sinks)
        .await
        .expect("sinks stop on shutdown")
        .unwrap()
        .unwrap();

    let got = receiver.messages();
    assert_eq!(ids(&got), ids(&expected), "ids, in order, each once");
    assert_eq!(got, expected, "message contents");
    let st = receiver.state.lock().unwrap();
    assert!(st.failed > 0, "no delivery failed: retries untested");
    println!(
        "{} messages in {} requests ({} failed, {} duplicates dropped by the receiver)",
        got.len(),
        st.requests,
        st.failed,
        st.duplicates
    );
    // The cursor is the last message delivered.
    let cursor = CursorFile::new(dir.path(), "hook").load().unwrap().unwrap();
    assert_eq!(
        cursor.to_string(),
        got.last().unwrap()["id"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_only_applied_transactions() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let first = sink_support::workload(&s, 0, 5).await;
    let durable_first = journal_until(&s, &mut journal, s.start, first).await;
    let until = sink_support::workload(&s, 5, 10).await;
    let durable = journal_until(&s, &mut journal, durable_first, until).await;
    let expected = expected_messages(&journal, s.start, &s.rules);
    let applied_part: Vec<Value> = expected
        .iter()
        .filter(|m| m["commit_lsn"].as_str().unwrap().parse::<Lsn>().unwrap() < durable_first)
        .cloned()
        .collect();
    assert!(!applied_part.is_empty() && applied_part.len() < expected.len());

    let (applied_tx, applied) = watch::channel(durable_first);
    let receiver = Receiver::start(0, Duration::ZERO).await;
    let configs: Vec<SinkConfig> = vec![format!("webhook:from=oldest:{}", receiver.url)
        .parse()
        .unwrap()];
    let (stop_tx, stop) = watch::channel(false);
    let ctx = context(&s, &journal, dir.path(), applied);
    let sinks = tokio::spawn(async move { run_sinks(&configs, ctx, stop).await });
    wait_for("the applied part", Duration::from_secs(30), || async {
        receiver.count() >= applied_part.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.messages(),
        applied_part,
        "nothing past the applied LSN"
    );
    applied_tx.send_replace(durable);
    wait_for("the rest", Duration::from_secs(30), || async {
        receiver.count() >= expected.len()
    })
    .await;
    assert_eq!(receiver.messages(), expected);
    stop_tx.send_replace(true);
    sinks.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_debounced_with_json_lines_retries_failures_and_kills_hung_commands() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let until = sink_support::workload(&s, 0, 120).await;
    let durable = journal_until(&s, &mut journal, s.start, until).await;
    let expected: Vec<Value> = expected_messages(&journal, s.start, &s.rules)
        .into_iter()
        .filter(|m| m["kind"].as_str().unwrap().starts_with("alarm."))
        .collect();
    assert!(
        expected.len() > 20,
        "only {} alarm messages",
        expected.len()
    );

    // The first run fails, the second hangs (killed after 1 s), then every run appends its
    // stdin to `out` and a line to `runs`.
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display();
    let command = format!(
        "if [ ! -e {w}/failed ]; then touch {w}/failed; echo 'no route to NMS' >&2; exit 3; fi; \
         if [ ! -e {w}/hung ]; then touch {w}/hung; sleep 60; fi; \
         cat >> {w}/out; echo \"$UNDERSTUDY_MESSAGES $UNDERSTUDY_FIRST_ID\" >> {w}/runs"
    );
    let configs: Vec<SinkConfig> = vec![format!(
        "exec:kinds=alarm.*,interval=300ms,timeout=1s,batch=40,from=oldest:{command}"
    )
    .parse()
    .unwrap()];
    let (applied_tx, applied) = watch::channel(Lsn::ZERO);
    let (stop_tx, stop) = watch::channel(false);
    let ctx = context(&s, &journal, dir.path(), applied);
    let started = Instant::now();
    let sinks = tokio::spawn(async move { run_sinks(&configs, ctx, stop).await });
    // Apply in steps, as a follower would, so messages trickle in.
    for step in 1..=10u64 {
        let at = Lsn(s.start.0 + (durable.0 - s.start.0) * step / 10);
        applied_tx.send_replace(if step == 10 { durable } else { at });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = work.path().join("out");
    wait_for(
        "every alarm message in the command's input",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) >= expected.len()
        },
    )
    .await;
    let elapsed = started.elapsed();
    stop_tx.send_replace(true);
    sinks.await.unwrap().unwrap();

    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, expected, "JSON lines, in order, once each");
    assert!(
        elapsed < Duration::from_secs(30),
        "the hung command was not killed in time: {elapsed:?}"
    );
    let runs = std::fs::read_to_string(work.path().join("runs")).unwrap();
    let runs: Vec<(usize, String)> = runs
        .lines()
        .map(|l| {
            let (n, id) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), id.to_string())
        })
        .collect();
    // Debounced: far fewer runs than messages, at most one per 300 ms, at most 40 lines each.
    assert!(runs.len() < expected.len() / 2, "{} runs", runs.len());
    let budget = elapsed.as_millis() as usize / 300 + 2;
    assert!(runs.len() <= budget, "{} runs in {elapsed:?}", runs.len());
    assert!(runs.iter().all(|(n, _)| (1..=40).contains(n)));
    assert!(runs.iter().any(|(n, _)| *n > 1), "no run had company");
    assert_eq!(runs[0].1, expected[0]["id"].as_str().unwrap());
    assert_eq!(runs.iter().map(|(n, _)| n).sum::<usize>(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_delivers_each_message_to_listeners_on_the_standby() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    // One message too large for a NOTIFY payload: an element with 12 kB of notes.
    s.pair
        .primary_client()
        .await
        .execute(
            "INSERT INTO nms.network_element (id, name, vendor, model, mgmt_ip, site, notes) \
             VALUES (9001, 'big-notes', 'acme', 'x1', '10.9.0.1', 'LAB', repeat('n', 12000))",
            &[],
        )
        .await
        .unwrap();
    let until = sink_support::workload(&s, 0, 30).await;
    let durable = journal_until(&s, &mut journal, s.start, until).await;
    let expected = expected_messages(&journal, s.start, &s.rules);

    // LISTEN on the standby before the sink starts.
    let (client, mut connection) =
        tokio_postgres::connect(&s.pair.standby_dsn(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client.batch_execute("LISTEN nms_changes").await.unwrap();

    let configs: Vec<SinkConfig> = vec!["notify:from=oldest,batch=25:nms_changes".parse().unwrap()];
    let (_applied_tx, applied) = watch::channel(durable);
    let (stop_tx, stop) = watch::channel(false);
    let ctx = context(&s, &journal, dir.path(), applied);
    let sinks = tokio::spawn(async move { run_sinks(&configs, ctx, stop).await });
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("notifications within 30 s")
            .unwrap();
        assert_eq!(channel, "nms_changes");
        assert!(payload.len() <= MAX_NOTIFY_PAYLOAD);
        got.push(serde_json::from_str::<Value>(&payload).unwrap());
    }
    stop_tx.send_replace(true);
    sinks.await.unwrap().unwrap();

    let mut references = 0;
    for (g, e) in got.iter().zip(&expected) {
        let too_long = e.to_string().len() > MAX_NOTIFY_PAYLOAD;
        if too_long {
            references += 1;
            assert_eq!(g["truncated"], Value::Bool(true), "{g}");
            for field in ["id", "kind", "entity", "table", "key"] {
                assert_eq!(g[field], e[field], "{field} of the reference");
            }
        } else {
            assert_eq!(g, e);
        }
    }
    assert!(references >= 1, "the 12 kB insert is sent as a reference");
    println!(
        "{} notifications, {references} of them references",
        got.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The SSE stream.

/// A streaming HTTP/1.1 GET: the status line and headers, then the body's decoded chunks.
struct SseClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub head: String,
    /// Decoded body bytes not yet parsed into events.
    body: Vec<u8>,
}

impl SseClient {
    async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut c = SseClient {
            stream,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
            body: Vec::new(),
        };
        let end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            c.fill().await;
        };
        c.head = String::from_utf8_lossy(&c.buf[..end]).to_string();
        c.buf.drain(..end);
        c.status = c.head[9..12].parse().unwrap();
        c
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
            .await
            .expect("the server sent nothing for 20 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Moves one decoded chunk of a chunked body into `body`.
    async fn chunk(&mut self) {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..i]).unwrap(), 16)
                    .unwrap();
                if self.buf.len() >= i + 2 + size + 2 {
                    self.body.extend_from_slice(&self.buf[i + 2..i + 2 + size]);
                    self.buf.drain(..i + 2 + size + 2);
                    assert!(size > 0, "the stream ended");
                    return;
                }
            }
            self.fill().await;
        }
    }

    /// The whole (non-streaming) body of an error answer.
    async fn full_body(&mut self) -> String {
        let length: usize = self
            .head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        while self.buf.len() < length {
            self.fill().await;
        }
        String::from_utf8_lossy(&self.buf[..length]).to_string()
    }

    /// The next event (comments skipped): its fields.
    async fn event(&mut self) -> Vec<(String, String)> {
        loop {
            if let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body[..i].to_vec()).unwrap();
                self.body.drain(..i + 2);
                let fields: Vec<(String, String)> = text
                    .lines()
                    .filter(|l| !l.starts_with(':'))
                    .map(|l| {
                        let (k, v) = l.split_once(':').unwrap();
                        (k.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string())
                    })
                    .collect();
                if !fields.is_empty() {
                    return fields;
                }
                continue;
            }
            self.chunk().await;
        }
    }

    /// The next `mutation` event's id and JSON.
    async fn mutation(&mut self) -> (String, Value) {
        let fields = self.event().await;
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k} in {fields:?}"))
        };
        assert_eq!(get("event"), "mutation", "{fields:?}");
        (get("id"), serde_json::from_str(&get("data")).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_serves_from_an_lsn_resumes_filters_and_needs_its_token() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let mut journal = open_journal(dir.path(), s.start);
    let until = sink_support::workload(&s, 0, 60).await;
    let durable = journal_until(&s, &mut journal, s.start, until).await;
    let expected = expected_messages(&journal, s.start, &s.rules);
    assert!(expected.len() > 50);

    let (applied_tx, applied) = watch::channel(durable);
    let (stop_tx, stop) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = HttpContext {
        journal: journal.handle(),
        applied,
        rules: Arc::clone(&s.rules),
        token: Some("s3cret".into()),
        shutdown: stop,
    };
    let server = tokio::spawn(http::serve_on(listener, ctx));
    let auth = [("Authorization", "Bearer s3cret")];

    // No token, a wrong token: 401.
    for headers in [vec![], vec![("Authorization", "Bearer nope")]] {
        let c = SseClient::get(addr, "/v1/messages", &headers).await;
        assert_eq!(c.status, 401, "{}", c.head);
        assert!(c
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"));
    }

    // From the start: every message, with its id.
    let path = format!("/v1/messages?from_lsn={}", s.start);
    let mut c = SseClient::get(addr, &path, &auth).await;
    assert_eq!(c.status, 200, "{}", c.head);
    assert!(c.head.contains("text/event-stream"), "{}", c.head);
    for e in &expected {
        let (id, data) = c.mutation().await;
        assert_eq!(&id, e["id"].as_str().unwrap());
        assert_eq!(&data, e);
    }

    // Resume after the 20th with Last-Event-ID (the from_lsn a reconnecting client still sends
    // is overridden).
    let last = expected[19]["id"].as_str().unwrap();
    let mut r = SseClient::get(addr, &path, &[auth[0], ("Last-Event-ID", last)]).await;
    for e in &expected[20..40] {
        assert_eq!(&r.mutation().await.1, e);
    }

    // From an LSN in the middle: the transactions committing at or after it.
    let mid: Lsn = expected[expected.len() / 2]["commit_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let from_mid: Vec<&Value> = expected
        .iter()
        .filter(|m| m["commit_lsn"].as_str().unwrap().parse::<Lsn>().unwrap() >= mid)
        .collect();
    let mut m = SseClient::get(addr, &format!("/v1/messages?from_lsn={mid}"), &auth).await;
    for e in &from_mid {
        assert_eq!(&&m.mutation().await.1, e);
    }

    // Filters: kinds by glob and an entity.
    let alarms: Vec<&Value> = expected
        .iter()
        .filter(|m| m["kind"].as_str().unwrap().starts_with("alarm.") && m["entity"] == "alarm")
        .collect();
    assert!(!alarms.is_empty());
    let path = format!(
        "/v1/messages?from_lsn={}&kind=alarm.*&entity=alarm",
        s.start
    );
    let mut f = SseClient::get(addr, &path, &auth).await;
    for e in &alarms {
        assert_eq!(&&f.mutation().await.1, e);
    }

    // Live: new transactions arrive once journaled and applied, not before.
    let mut live = SseClient::get(addr, "/v1/messages", &auth).await;
    assert_eq!(live.status, 200);
    let until = sink_support::workload(&s, 500, 5).await;
    let durable2 = journal_until(&s, &mut journal, durable, until).await;
    let more = expected_messages(&journal, durable, &s.rules);
    assert!(!more.is_empty());
    let early = tokio::time::timeout(Duration::from_millis(500), live.mutation()).await;
    assert!(early.is_err(), "an unapplied transaction was streamed");
    applied_tx.send_replace(durable2);
    for e in &more {
        assert_eq!(&live.mutation().await.1, e);
    }

    // Bad requests.
    let c = SseClient::get(addr, "/v1/messages?from_lsn=yesterday", &auth).await;
    assert_eq!(c.status, 400);
    let c = SseClient::get(addr, "/v1/messages?since=0/0", &auth).await;
    assert_eq!(c.status, 400);

    // Older than the journal keeps: 410 with the oldest LSN.
    let mut g = SseClient::get(addr, "/v1/messages?from_lsn=0/1", &auth).await;
    assert_eq!(g.status, 410, "{}", g.head);
    let body: Value = serde_json::from_str(&g.full_body().await).unwrap();
    assert_eq!(body["oldest_lsn"], s.start.to_string());
    assert!(
        body["error"].as_str().unwrap().contains("bootstrap"),
        "{body}"
    );

    // Shutdown ends the open streams and the server.
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn sink_setups_that_cannot_work_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = Lsn(0x1000);
    let journal = understudy::journal::Journal::open(
        dir.path(),
        start,
        understudy::journal::JournalOptions::default(),
    )
    .unwrap();
    let (_applied_tx, applied) = watch::channel(start);
    let (_stop_tx, stop) = watch::channel(false);
    let ctx = |standby| SinkContext {
        journal: journal.handle(),
        journal_dir: dir.path().to_path_buf(),
        applied: applied.clone(),
        rules: Arc::new(understudy::translate::Rules::none()),
        standby,
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["notify:a", "webhook:name=notify-x:http://h/"],
            "needs the standby",
        ),
        (
            vec!["webhook:name=x:http://h/a", "notify:name=x:b"],
            "two sinks are named 'x'",
        ),
        (
            vec!["webhook:from=0/10:http://h/"],
            "older than the journal keeps",
        ),
    ];
    for (specs, needle) in cases {
        let configs: Vec<SinkConfig> = specs.iter().map(|s| s.parse().unwrap()).collect();
        let err = understudy::notify::Sinks::start(&configs, ctx(None), stop.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{specs:?} started"));
        assert!(format!("{err:#}").contains(needle), "{specs:?}: {err:#}");
    }
    // A damaged cursor file names itself and the fix.
    std::fs::create_dir_all(dir.path().join("cursors")).unwrap();
    std::fs::write(dir.path().join("cursors/hook"), "not a cursor").unwrap();
    let configs: Vec<SinkConfig> = vec!["webhook:name=hook:http://h/".parse().unwrap()];
    let err = understudy::notify::Sinks::start(&configs, ctx(None), stop.clone())
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("delete the file"), "{err:#}");
}
