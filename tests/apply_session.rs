//! The apply session against a real server: many statements under one Sync, an error in the
//! middle of a batch (its position and SQLSTATE, and a usable session after ROLLBACK), a batch
//! far larger than the socket buffers in both directions (no deadlock), authentication and a
//! lost backend; then the dispatcher (`Applier::connect`) over it: changes, divergence, a schema
//! mismatch and a refused row, each reported as before and rolled back whole.
mod common;

use std::time::Duration;

use bytes::Bytes;
use understudy::apply::{Applier, ApplyError};
use understudy::cluster::{Cluster, ClusterOptions};
use understudy::decode::{
    Begin, Column, Commit, Datum, Delete, Insert, Message, OldTuple, RelId, Relation,
    ReplicaIdentity, Tuple, Update, Xid,
};
use understudy::lsn::Lsn;
use understudy::pg::conninfo::ConnInfo;
use understudy::pg::session::{Param, Session};

struct Server {
    cluster: Cluster,
    info: ConnInfo,
}

fn start() -> Server {
    common::init_logs();
    let cluster = Cluster::start(&ClusterOptions::default()).expect("start a cluster");
    cluster.create_database("nms").unwrap();
    let info = ConnInfo::parse(&cluster.dsn("nms")).unwrap();
    Server { cluster, info }
}

impl Server {
    async fn session(&self) -> Session {
        Session::connect(&self.info, "apply session test")
            .await
            .expect("open a session")
    }

    async fn client(&self) -> tokio_postgres::Client {
        self.info.connect("test").await.unwrap()
    }
}

fn text(s: impl ToString) -> Param {
    Param::Text(Bytes::from(s.to_string()))
}

async fn prepare_items(s: &mut Session) {
    s.simple_query("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    s.prepare("begin", "BEGIN").await.unwrap();
    s.prepare("commit", "COMMIT").await.unwrap();
    s.prepare("insert", "INSERT INTO items (id, note) VALUES ($1, $2)")
        .await
        .unwrap();
    s.prepare("update", "UPDATE items SET note = $1 WHERE id = $2")
        .await
        .unwrap();
}

#[tokio::test]
async fn ten_thousand_statements_share_one_sync() {
    let server = start();
    let mut s = server.session().await;
    prepare_items(&mut s).await;

    s.queue_execute("begin", &[]).await.unwrap();
    for id in 1..=10_000 {
        let note = if id % 10 == 0 {
            Param::Null
        } else {
            text(format!("note {id}"))
        };
        s.queue_execute("insert", &[text(id), note]).await.unwrap();
    }
    s.queue_execute("update", &[text("changed"), text(7)])
        .await
        .unwrap();
    s.queue_execute("update", &[text("nobody"), text(10_001)])
        .await
        .unwrap();
    s.queue_execute("commit", &[]).await.unwrap();
    assert_eq!(s.queued(), 10_004);
    let counts = s.sync().await.expect("the batch succeeds");
    assert_eq!(s.queued(), 0);

    assert_eq!(counts.len(), 10_004, "one count per statement");
    assert_eq!(counts[0], 0, "BEGIN");
    assert!(
        counts[1..=10_000].iter().all(|&n| n == 1),
        "each INSERT adds a row"
    );
    assert_eq!(
        &counts[10_001..],
        &[1, 0, 0],
        "UPDATE hit, UPDATE missed, COMMIT"
    );

    let c = server.client().await;
    let row = c
        .query_one(
            "SELECT count(*), sum(id), count(note), \
             (SELECT note FROM items WHERE id = 7), (SELECT note FROM items WHERE id = 9999) \
             FROM items",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
    assert_eq!(row.get::<_, i64>(1), 50_005_000);
    assert_eq!(row.get::<_, i64>(2), 9_000, "every tenth note is NULL");
    assert_eq!(row.get::<_, String>(3), "changed");
    assert_eq!(row.get::<_, String>(4), "note 9999");
    s.close().await;
}

#[tokio::test]
async fn an_error_names_its_statement_and_the_session_recovers_after_rollback() {
    let server = start();
    let mut s = server.session().await;
    prepare_items(&mut s).await;

    // A unique violation at execution: statement 51 of the batch (BEGIN is statement 0).
    s.queue_execute("begin", &[]).await.unwrap();
    for id in 1..=100 {
        let id = if id == 51 { 3 } else { id };
        s.queue_execute("insert", &[text(id), text("x")])
            .await
            .unwrap();
    }
    s.queue_execute("commit", &[]).await.unwrap();
    let e = s.sync().await.expect_err("a duplicate key fails the batch");
    assert_eq!(e.position(), 51, "{e}");
    assert!(e.completed.iter().skip(1).all(|&n| n == 1));
    assert_eq!(e.error.code(), Some("23505"), "{e}");
    s.simple_query("ROLLBACK").await.unwrap();

    // A bad integer fails in Bind, before the statement runs: still statement 2.
    s.queue_execute("begin", &[]).await.unwrap();
    s.queue_execute("insert", &[text(1), text("a")])
        .await
        .unwrap();
    s.queue_execute("insert", &[text("forty-two"), text("b")])
        .await
        .unwrap();
    s.queue_execute("insert", &[text(3), text("c")])
        .await
        .unwrap();
    s.queue_execute("commit", &[]).await.unwrap();
    let e = s.sync().await.expect_err("a bad integer fails the batch");
    assert_eq!((e.position(), e.error.code()), (2, Some("22P02")), "{e}");
    s.simple_query("ROLLBACK").await.unwrap();

    // Nothing of either batch committed; the session still works.
    let c = server.client().await;
    let count = |c: tokio_postgres::Client| async move {
        let row = c
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert_eq!(count(server.client().await).await, 0);
    s.queue_execute("begin", &[]).await.unwrap();
    s.queue_execute("insert", &[text(1), text("kept")])
        .await
        .unwrap();
    s.queue_execute("commit", &[]).await.unwrap();
    assert_eq!(s.sync().await.unwrap(), vec![0, 1, 0]);
    assert_eq!(count(c).await, 1);

    // A statement that cannot be prepared fails at once, with its SQLSTATE.
    let e = s
        .prepare("bad", "UPDATE items SET missing = $1 WHERE id = $2")
        .await
        .expect_err("undefined column");
    assert_eq!(e.code(), Some("42703"), "{e}");
    // A simple query while a batch is open is refused without breaking the session.
    s.queue_execute("insert", &[text(2), text("later")])
        .await
        .unwrap();
    assert!(s.simple_query("SELECT 1").await.is_err());
    assert_eq!(
        s.sync().await.unwrap(),
        vec![1],
        "outside BEGIN, Sync commits"
    );
    assert_eq!(count(server.client().await).await, 2);
    drop(server.cluster);
}

#[tokio::test]
async fn a_100_mb_batch_in_both_directions_does_not_deadlock() {
    let server = start();
    let mut s = server.session().await;
    // Each statement sends 1 KB and gets 1 KB back (a DataRow): far more than the socket
    // buffers hold either way, so the batch finishes only if the answers are read while it is
    // still being written.
    s.prepare("echo", "SELECT $1::text").await.unwrap();
    let value = text("x".repeat(1000));
    let statements = 100_000;
    let batch = async {
        for _ in 0..statements {
            s.queue_execute("echo", std::slice::from_ref(&value))
                .await
                .unwrap();
        }
        s.sync().await
    };
    let counts = tokio::time::timeout(Duration::from_secs(120), batch)
        .await
        .expect("a 100 MB batch finished within 120 s (a deadlock would not)")
        .expect("the batch succeeds");
    assert_eq!(counts.len(), statements);
    assert!(counts.iter().all(|&n| n == 1));
}

#[tokio::test]
async fn scram_authentication_and_a_terminated_backend() {
    common::init_logs();
    let cluster = Cluster::start(&ClusterOptions {
        password: Some("apply-pw".into()),
        ..Default::default()
    })
    .unwrap();
    let info =
        |extra: &str| ConnInfo::parse(&format!("{} {extra}", cluster.dsn("postgres"))).unwrap();
    let e = Session::connect(&info("password=wrong-pw"), "test")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(e.code(), Some("28P01"), "{e}");
    assert!(!format!("{e} {e:?}").contains("wrong-pw"), "{e}");

    let good = info("password=apply-pw");
    let mut s = Session::connect(&good, "apply session test").await.unwrap();
    s.prepare("one", "SELECT 1").await.unwrap();
    s.queue_execute("one", &[]).await.unwrap();
    assert_eq!(s.sync().await.unwrap(), vec![1]);

    // The backend goes away under an open batch: the server's own reason (57P01), transient,
    // and the session refuses further work.
    let pid = s.backend_pid().expect("BackendKeyData gives the pid");
    let admin = good.connect("test").await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    s.queue_execute("one", &[]).await.unwrap();
    let e = s.sync().await.expect_err("the backend is gone");
    assert!(e.error.is_transient(), "{e}");
    assert!(
        e.error.code() == Some("57P01") || e.error.code().is_none(),
        "{e}"
    );
    let again = s.simple_query("SELECT 1").await.expect_err("broken");
    assert!(again.to_string().contains("open a new one"), "{again}");
}

// ---------------------------------------------------------------------------------------------
// The dispatcher over a session.

fn devices(columns: &[&str]) -> Relation {
    Relation {
        id: RelId(16_500),
        namespace: "public".into(),
        name: "devices".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|&name| Column {
                is_key: name == "id",
                name: name.into(),
                type_oid: if name == "id" { 23 } else { 25 },
                type_modifier: -1,
            })
            .collect(),
    }
}

fn row(values: &[&str]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| Datum::Text(Bytes::from(v.to_string())))
            .collect(),
    )
}

fn begin(lsn: u64) -> Message {
    Message::Begin(Begin {
        final_lsn: Lsn(lsn),
        commit_time: 0,
        xid: Xid(lsn as u32),
    })
}

fn commit(lsn: u64) -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
        commit_time: 0,
    })
}

fn insert(values: &[&str]) -> Message {
    Message::Insert(Insert {
        rel: RelId(16_500),
        new: row(values),
    })
}

fn update(values: &[&str]) -> Message {
    Message::Update(Update {
        rel: RelId(16_500),
        old: None,
        new: row(values),
    })
}

/// Feed messages that commit nothing.
async fn apply(applier: &mut Applier, changes: Vec<Message>) -> Result<(), ApplyError> {
    for m in changes {
        assert_eq!(applier.handle(m, false).await?, None);
    }
    Ok(())
}

async fn standby_state(c: &tokio_postgres::Client) -> (String, Vec<String>) {
    let applied: String = c
        .query_one("SELECT applied_lsn::text FROM understudy.progress", &[])
        .await
        .unwrap()
        .get(0);
    let rows = c
        .query("SELECT d::text FROM devices d ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (applied, rows)
}

#[tokio::test]
async fn the_dispatcher_over_a_session_applies_and_reports_failures_as_before() {
    let server = start();
    let c = server.client().await;
    understudy::state::install(&c).await.unwrap();
    c.batch_execute(
        "INSERT INTO understudy.progress (applied_lsn) VALUES ('0/10'); \
         CREATE TABLE devices (id int PRIMARY KEY, name text); \
         INSERT INTO devices VALUES (42, 'kept')",
    )
    .await
    .unwrap();
    let mut applier = Applier::connect(&server.info, Lsn(0x10)).await.unwrap();
    let relation = Message::Relation(devices(&["id", "name"]));
    let changes = vec![
        relation.clone(),
        begin(0x100),
        insert(&["1", "a"]),
        insert(&["2", "b"]),
        update(&["1", "c"]),
        Message::Delete(Delete {
            rel: RelId(16_500),
            old: OldTuple::Key(Tuple(vec![Datum::Text(Bytes::from("2")), Datum::Null])),
        }),
    ];
    apply(&mut applier, changes).await.unwrap();
    let committed = applier.handle(commit(0x100), false).await.unwrap();
    assert_eq!(committed, Some(Lsn(0x108)));
    let expected_rows = vec!["(1,c)".to_string(), "(42,kept)".to_string()];
    assert_eq!(
        standby_state(&c).await,
        ("0/108".into(), expected_rows.clone())
    );

    // A keepalive position with nothing in flight is recorded as applied.
    assert_eq!(
        applier.idle(Lsn(0x180), true).await.unwrap(),
        Some(Lsn(0x180))
    );
    assert_eq!(standby_state(&c).await.0, "0/180");

    // An UPDATE of a row the standby lacks: divergence, named with its key; nothing of the
    // transaction stays.
    let changes = vec![begin(0x200), insert(&["3", "d"]), update(&["7", "x"])];
    apply(&mut applier, changes).await.unwrap();
    let e = applier
        .handle(commit(0x200), false)
        .await
        .expect_err("divergence");
    assert!(matches!(e, ApplyError::Diverged { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("UPDATE on public.devices matched no row for (\"id\")=(7) on the standby"),
        "{e}"
    );
    assert!(!e.is_transient());
    assert_eq!(
        standby_state(&c).await,
        ("0/180".into(), expected_rows.clone())
    );

    // A duplicate key: the server's error with its SQLSTATE, rolled back.
    let mut applier = Applier::connect(&server.info, Lsn(0x180)).await.unwrap();
    let changes = vec![
        relation.clone(),
        begin(0x300),
        insert(&["5", "e"]),
        insert(&["42", "dup"]),
    ];
    apply(&mut applier, changes).await.unwrap();
    let e = applier
        .handle(commit(0x300), false)
        .await
        .expect_err("duplicate key");
    match &e {
        ApplyError::Standby { cause, .. } => assert_eq!(cause.code(), Some("23505"), "{e}"),
        other => panic!("expected a standby error, got {other}"),
    }
    assert_eq!(
        standby_state(&c).await,
        ("0/180".into(), expected_rows.clone())
    );

    // The primary has a column the standby lacks: refused as a schema difference.
    let mut applier = Applier::connect(&server.info, Lsn(0x180)).await.unwrap();
    let changes = vec![
        Message::Relation(devices(&["id", "name", "site"])),
        begin(0x400),
        insert(&["6", "f", "north"]),
    ];
    let e = apply(&mut applier, changes)
        .await
        .expect_err("schema mismatch");
    assert!(
        e.to_string()
            .contains("public.devices does not match the primary's"),
        "{e}"
    );
    assert!(!e.is_transient());
    applier.finish().await.unwrap();
    assert_eq!(standby_state(&c).await, ("0/180".into(), expected_rows));
}
