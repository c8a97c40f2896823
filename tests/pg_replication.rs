//! The replication connection against real PostgreSQL: IDENTIFY_SYSTEM, slots with exported
//! snapshots, streaming pgoutput, keepalives and wal_sender_timeout, status updates, errors.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use understudy::cluster::{Cluster, ClusterOptions};
use understudy::lsn::Lsn;
use understudy::pg::conninfo::ConnInfo;
use understudy::pg::replication::{ReplicationConnection, ReplicationMessage, SnapshotAction};

const APP: &str = "pg_replication test";
const PGOUTPUT: &[(&str, &str)] = &[("proto_version", "1"), ("publication_names", "nms_pub")];

/// A cluster with database `nms`, table `items` holding row (1, 'before'), and publication
/// `nms_pub` for it (made before any slot, as pgoutput needs).
async fn setup(settings: &[(&str, &str)]) -> (Cluster, ConnInfo, tokio_postgres::Client) {
    let c = Cluster::start(&ClusterOptions {
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .unwrap();
    c.create_database("nms").unwrap();
    let info =
        ConnInfo::parse_with(&c.dsn("nms"), &|_| None, Some(Path::new("/nonexistent"))).unwrap();
    let client = info.connect(APP).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items VALUES (1, 'before');
             CREATE PUBLICATION nms_pub FOR TABLE items;",
        )
        .await
        .unwrap();
    (c, info, client)
}

/// The parts of pgoutput (protocol 1) these tests look at.
#[derive(Debug, PartialEq)]
enum Pgoutput {
    Begin { final_lsn: Lsn },
    Relation { name: String },
    Insert { values: Vec<Option<String>> },
    Commit { commit_lsn: Lsn, end_lsn: Lsn },
    Other(u8),
}

fn cstring(b: &mut Bytes) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap();
    let s = String::from_utf8(b.split_to(end).to_vec()).unwrap();
    b.advance(1);
    s
}

fn decode(mut b: Bytes) -> Pgoutput {
    match b.get_u8() {
        b'B' => Pgoutput::Begin {
            final_lsn: Lsn(b.get_u64()),
        },
        b'R' => {
            b.get_u32();
            let namespace = cstring(&mut b);
            let name = cstring(&mut b);
            Pgoutput::Relation {
                name: format!("{namespace}.{name}"),
            }
        }
        b'I' => {
            b.get_u32();
            assert_eq!(b.get_u8(), b'N');
            let values = (0..b.get_u16())
                .map(|_| match b.get_u8() {
                    b't' => {
                        let len = b.get_u32() as usize;
                        Some(String::from_utf8(b.split_to(len).to_vec()).unwrap())
                    }
                    _ => None,
                })
                .collect();
            Pgoutput::Insert { values }
        }
        b'C' => {
            b.get_u8();
            Pgoutput::Commit {
                commit_lsn: Lsn(b.get_u64()),
                end_lsn: Lsn(b.get_u64()),
            }
        }
        other => Pgoutput::Other(other),
    }
}

/// pgoutput messages up to and including the next Commit, answering keepalives on the way.
async fn next_transaction(repl: &mut ReplicationConnection) -> Vec<Pgoutput> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, repl.recv())
            .await
            .expect("no Commit within 20 s")
            .unwrap()
            .expect("the stream ended");
        match msg {
            ReplicationMessage::XLogData { data, .. } => {
                let m = decode(data);
                let done = matches!(m, Pgoutput::Commit { .. });
                messages.push(m);
                if done {
                    return messages;
                }
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested: true,
                ..
            } => repl
                .send_status(wal_end, Lsn(1), Lsn(1), false)
                .await
                .unwrap(),
            ReplicationMessage::Keepalive { .. } => {}
        }
    }
}

async fn query_text(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn identify_system_matches_the_server() {
    let (_c, info, client) = setup(&[]).await;
    let mut repl = ReplicationConnection::connect(&info, APP).await.unwrap();
    let id = repl.identify_system().await.unwrap();
    let system_id = query_text(
        &client,
        "SELECT system_identifier::text FROM pg_control_system()",
    );
    assert_eq!(Some(id.system_id), system_id.await);
    let timeline = query_text(
        &client,
        "SELECT timeline_id::text FROM pg_control_checkpoint()",
    );
    assert_eq!(Some(id.timeline.to_string()), timeline.await);
    assert_eq!(id.dbname.as_deref(), Some("nms"));
    let now: Lsn = query_text(&client, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !id.xlogpos.is_zero() && id.xlogpos <= now,
        "{} vs {now}",
        id.xlogpos
    );
    repl.close().await;
}

#[tokio::test]
async fn exported_snapshot_hands_off_to_the_stream() {
    let (_c, info, client) = setup(&[]).await;
    let mut holder = ReplicationConnection::connect(&info, APP).await.unwrap();
    let slot = holder
        .create_logical_slot("nms_slot", SnapshotAction::Export, false)
        .await
        .unwrap();
    assert_eq!(slot.slot_name, "nms_slot");
    let snapshot = slot.snapshot_name.clone().expect("an exported snapshot");
    assert!(!slot.consistent_point.is_zero());

    client
        .execute("INSERT INTO items VALUES (2, 'after')", &[])
        .await
        .unwrap();

    // The snapshot, imported while `holder` stays idle, does not see the later row.
    let copier = info.connect(APP).await.unwrap();
    copier
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .unwrap();
    let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM items";
    assert_eq!(query_text(&copier, ids).await.as_deref(), Some("1"));
    assert_eq!(query_text(&client, ids).await.as_deref(), Some("1,2"));

    // A second replication connection streams from consistent_point and gets exactly that row.
    let mut stream = ReplicationConnection::connect(&info, APP).await.unwrap();
    stream
        .start_logical("nms_slot", slot.consistent_point, PGOUTPUT)
        .await
        .unwrap();
    let tx = next_transaction(&mut stream).await;
    copier.batch_execute("COMMIT").await.unwrap();
    assert_eq!(tx.len(), 4, "{tx:?}");
    let (Pgoutput::Begin { final_lsn }, Pgoutput::Commit { commit_lsn, .. }) = (&tx[0], &tx[3])
    else {
        panic!("not Begin … Commit: {tx:?}");
    };
    assert_eq!(final_lsn, commit_lsn);
    assert_eq!(
        tx[1],
        Pgoutput::Relation {
            name: "public.items".into()
        }
    );
    assert_eq!(
        tx[2],
        Pgoutput::Insert {
            values: vec![Some("2".into()), Some("after".into())]
        }
    );

    // stop_streaming leaves the connection ready for queries.
    stream.stop_streaming().await.unwrap();
    assert_eq!(
        stream.identify_system().await.unwrap().dbname.as_deref(),
        Some("nms")
    );
    stream.close().await;
    holder.close().await;
}

/// Stream for `idle`, answering keepalives when `answer`; the number of replies requested, or
/// the error that ended the stream.
async fn idle_stream(
    repl: &mut ReplicationConnection,
    idle: Duration,
    answer: bool,
) -> Result<usize, understudy::pg::PgError> {
    let end = Instant::now() + idle;
    let mut requested = 0;
    while Instant::now() < end {
        // Short timeouts cancel recv() often: it must lose nothing when cancelled.
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(300), repl.recv()).await else {
            continue;
        };
        match msg? {
            Some(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            }) => {
                if reply_requested {
                    requested += 1;
                    if answer {
                        repl.send_status(wal_end, wal_end, wal_end, false).await?;
                    }
                }
            }
            Some(ReplicationMessage::XLogData { .. }) => {}
            None => panic!("the server ended the stream"),
        }
    }
    Ok(requested)
}

#[tokio::test]
async fn keepalive_replies_keep_the_stream_alive_past_wal_sender_timeout() {
    let (_c, info, client) = setup(&[("wal_sender_timeout", "2s")]).await;
    let mut answering = ReplicationConnection::connect(&info, APP).await.unwrap();
    let mut silent = ReplicationConnection::connect(&info, APP).await.unwrap();
    for (repl, slot) in [(&mut answering, "answering"), (&mut silent, "silent")] {
        repl.create_logical_slot(slot, SnapshotAction::Nothing, false)
            .await
            .unwrap();
        repl.start_logical(slot, Lsn::ZERO, PGOUTPUT).await.unwrap();
    }
    let idle = Duration::from_secs(5);
    let (answered, ignored) = tokio::join!(
        idle_stream(&mut answering, idle, true),
        idle_stream(&mut silent, idle, false)
    );
    // The control: without replies the server drops the connection at wal_sender_timeout.
    let e = ignored.expect_err("the silent connection should have been dropped");
    assert!(e.is_transient(), "{e}");
    let requested = answered.unwrap();
    assert!(
        requested >= 2,
        "only {requested} keepalives asked for a reply in 5 s"
    );

    // Still streaming: a new row arrives, and the server lists this walsender.
    client
        .execute("INSERT INTO items VALUES (3, 'later')", &[])
        .await
        .unwrap();
    let tx = next_transaction(&mut answering).await;
    assert!(tx.contains(&Pgoutput::Insert {
        values: vec![Some("3".into()), Some("later".into())]
    }));
    let pid = answering.backend_pid().unwrap();
    let listed = format!("SELECT count(*)::text FROM pg_stat_replication WHERE pid = {pid}");
    assert_eq!(query_text(&client, &listed).await.as_deref(), Some("1"));
    answering.stop_streaming().await.unwrap();
    answering.close().await;
}

#[tokio::test]
async fn status_update_moves_confirmed_flush_lsn() {
    let (_c, info, client) = setup(&[]).await;
    let mut repl = ReplicationConnection::connect(&info, APP).await.unwrap();
    let slot = repl
        .create_logical_slot("acked", SnapshotAction::Nothing, false)
        .await
        .unwrap();
    assert_eq!(slot.snapshot_name, None);
    let confirmed = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                     WHERE slot_name = 'acked'";
    let read_confirmed = || async {
        query_text(&client, confirmed)
            .await
            .unwrap()
            .parse::<Lsn>()
            .unwrap()
    };
    assert_eq!(read_confirmed().await, slot.consistent_point);

    repl.start_logical("acked", slot.consistent_point, PGOUTPUT)
        .await
        .unwrap();
    client
        .execute("INSERT INTO items VALUES (4, 'acked')", &[])
        .await
        .unwrap();
    let tx = next_transaction(&mut repl).await;
    let Some(Pgoutput::Commit { end_lsn, .. }) = tx.last() else {
        panic!("{tx:?}")
    };
    let end_lsn = *end_lsn;
    assert!(end_lsn > slot.consistent_point);
    // next_transaction answered keepalives with flush 0/1, which the slot ignores (not ahead).
    assert_eq!(read_confirmed().await, slot.consistent_point);

    repl.send_status(end_lsn, end_lsn, end_lsn, false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = read_confirmed().await;
        if now == end_lsn {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn is {now}, expected {end_lsn} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    repl.stop_streaming().await.unwrap();
    repl.close().await;
}

#[tokio::test]
async fn server_errors_carry_sqlstate_and_class() {
    let (_c, info, client) = setup(&[]).await;
    let mut repl = ReplicationConnection::connect(&info, APP).await.unwrap();

    let e = repl
        .start_logical("no_such_slot", Lsn::ZERO, PGOUTPUT)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("42704"), "{e}");
    assert!(!e.is_transient());

    repl.create_logical_slot("twice", SnapshotAction::Nothing, false)
        .await
        .unwrap();
    let e = repl
        .create_logical_slot("twice", SnapshotAction::Nothing, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("42710"), "{e}");
    assert!(!e.is_transient());

    // A slot streaming on one connection is busy for another: transient.
    repl.start_logical("twice", Lsn::ZERO, PGOUTPUT)
        .await
        .unwrap();
    let mut other = ReplicationConnection::connect(&info, APP).await.unwrap();
    let e = other
        .start_logical("twice", Lsn::ZERO, PGOUTPUT)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("55006"), "{e}");
    assert!(e.is_transient());
    repl.stop_streaming().await.unwrap();

    // A publication that does not exist fails when the first change is decoded.
    let mut bad = ReplicationConnection::connect(&info, APP).await.unwrap();
    bad.create_logical_slot("bad_pub", SnapshotAction::Nothing, false)
        .await
        .unwrap();
    bad.start_logical(
        "bad_pub",
        Lsn::ZERO,
        &[("proto_version", "1"), ("publication_names", "no_such_pub")],
    )
    .await
    .unwrap();
    client
        .execute("INSERT INTO items VALUES (5, 'x')", &[])
        .await
        .unwrap();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(20), bad.recv())
            .await
            .expect("no error within 20 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Some("42704"), "{e}");
    assert!(e.to_string().contains("no_such_pub"), "{e}");
    assert!(!e.is_transient());
    // Once broken, the connection says so instead of misbehaving.
    let e = bad.identify_system().await.unwrap_err();
    assert!(e.to_string().contains("open a new connection"), "{e}");

    // A temporary slot lives as long as its connection.
    let mut temp = ReplicationConnection::connect(&info, APP).await.unwrap();
    let slot = temp
        .create_logical_slot("temp_slot", SnapshotAction::Nothing, true)
        .await
        .unwrap();
    assert_eq!(slot.snapshot_name, None);
    let count = "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'temp_slot'";
    assert_eq!(query_text(&client, count).await.as_deref(), Some("1"));
    temp.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while query_text(&client, count).await.as_deref() != Some("0") {
        assert!(
            Instant::now() < deadline,
            "temporary slot still there after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
