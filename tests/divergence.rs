//! Divergence against real clusters: after the standby caught up, what the primary commits is
//! exactly what `divergence::find` reports (understudy's own schema ignored), peeking leaves the
//! slot as it was, and the saved `changes.sql` brings the standby level with the primary.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{assert_same_rows, table_contents, wait_for, Pair};
use understudy::lsn::Lsn;
use understudy::pg::replication::ReplicationConnection;
use understudy::role::divergence::{self, Divergence, DivergenceError};
use understudy::role::Epoch;
use understudy::translate::{Mutation, Op};

/// The publication the standby was bootstrapped from, as recorded on the standby.
async fn publication(pair: &Pair) -> String {
    pair.standby_client()
        .await
        .query_one(
            "SELECT publication FROM understudy.source WHERE id = 1",
            &[],
        )
        .await
        .expect("read understudy.source on the standby")
        .get(0)
}

/// Runs `sql` in one transaction on `client` and returns its xid (32 bits, as pgoutput sends).
async fn commit(client: &mut tokio_postgres::Client, sql: &str) -> u32 {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(sql).await.unwrap();
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    (xid & 0xFFFF_FFFF) as u32
}

/// The standby lacks what the primary committed since it caught up (so the SQL has work to do).
async fn assert_standby_behind(pair: &Pair) {
    let p = table_contents(&pair.primary_client().await).await;
    let s = table_contents(&pair.standby_client().await).await;
    assert_ne!(p, s, "the standby already has the primary's rows");
}

/// Writes `d`, checks the files, and returns `changes.sql`.
fn write_and_check(d: &Divergence, node: &str, epoch: Epoch) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = divergence::write(tmp.path(), node, epoch, d).expect("write the divergence");
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    let prefix = format!("divergence-{node}-epoch{epoch}-");
    let stamp = name
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{name}"));
    assert_eq!(stamp.len(), "20261126T024000Z".len(), "{name}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{name}"
    );
    let entries: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "only the finished directory: {entries:?}");

    // One message per line, in commit order, in the JSON form sinks emit; ids unique.
    let jsonl = std::fs::read_to_string(dir.join("messages.jsonl")).unwrap();
    let expected: Vec<&Mutation> = d.transactions.iter().flat_map(|t| &t.messages).collect();
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(lines.len(), d.rows(), "one line per row change");
    let mut ids = HashSet::new();
    for (line, m) in lines.iter().zip(&expected) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let id = v["id"].as_str().expect("an id").to_string();
        let parsed: Mutation = serde_json::from_value(v).expect("a mutation message");
        assert_eq!((id.as_str(), parsed.seq), (m.id().as_str(), m.seq));
        assert_eq!(*line, understudy::messages::to_json(m));
        assert!(ids.insert(id.clone()), "id {id} appears twice");
    }

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["node"], node);
    assert_eq!(summary["epoch"], epoch.0);
    assert_eq!(summary["after"], d.after.to_string());
    assert_eq!(summary["transactions"], d.transactions.len());
    assert_eq!(summary["rows"], d.rows());
    assert_eq!(
        summary["first_commit_lsn"],
        d.transactions[0].commit_lsn.to_string()
    );
    assert_eq!(
        summary["last_commit_lsn"],
        d.transactions.last().unwrap().commit_lsn.to_string()
    );
    assert!(summary["created_at"].as_str().unwrap().ends_with('Z'));

    let sql = std::fs::read_to_string(dir.join("changes.sql")).unwrap();
    assert_eq!(sql.matches("\nBEGIN;\n").count(), d.transactions.len());
    for t in &d.transactions {
        let header = format!(
            "-- xid {}, commit LSN {}, committed {}",
            t.xid, t.commit_lsn, t.commit_time
        );
        assert!(sql.contains(&header), "no `{header}` in changes.sql");
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_exactly_the_transactions_committed_after_the_applied_position() {
    let pair = Pair::start();
    let mut p = pair.primary_client().await;
    p.batch_execute(
        "CREATE SCHEMA div; \
         CREATE TABLE div.item (id integer PRIMARY KEY, name text); \
         CREATE TABLE div.small (id integer PRIMARY KEY); \
         INSERT INTO div.item SELECT g, 'seed ' || g FROM generate_series(1, 5) g; \
         INSERT INTO div.small VALUES (1), (2); \
         CREATE SCHEMA IF NOT EXISTS understudy; \
         CREATE TABLE understudy.divergence_probe (id integer PRIMARY KEY)",
    )
    .await
    .unwrap();
    pair.bootstrap().await;
    commit(
        &mut p,
        "INSERT INTO div.item VALUES (100, 'applied before')",
    )
    .await;
    commit(
        &mut p,
        "UPDATE div.item SET name = 'applied too' WHERE id = 5",
    )
    .await;
    pair.catch_up().await;
    let applied = pair.applied_lsn().await;
    let slot = pair.slot_name().await;
    let publication = publication(&pair).await;

    // (sql, row changes outside understudy); the probe-only transaction must not appear.
    let work: &[(&str, usize)] = &[
        (
            "INSERT INTO div.item VALUES (6, 'six'), (7, 'it''s seven'), (8, NULL)",
            3,
        ),
        (
            "UPDATE div.item SET name = 'renamed' WHERE id = 1; \
             UPDATE div.item SET id = 20 WHERE id = 2",
            2,
        ),
        ("DELETE FROM div.item WHERE id = 3", 1),
        ("TRUNCATE div.small", 1),
        ("INSERT INTO understudy.divergence_probe VALUES (1)", 0),
        (
            "INSERT INTO understudy.divergence_probe VALUES (2); \
             UPDATE div.item SET name = 'with probe' WHERE id = 4",
            1,
        ),
    ];
    let mut expected = Vec::new();
    for (sql, rows) in work {
        let xid = commit(&mut p, sql).await;
        if *rows > 0 {
            expected.push((xid, *rows));
        }
    }

    let d = divergence::find(&p, &slot, &publication, applied)
        .await
        .expect("find the divergence");
    assert_eq!(d.after, applied);
    let got: Vec<(u32, usize)> = d.transactions.iter().map(|t| (t.xid, t.changes)).collect();
    assert_eq!(got, expected, "(xid, row changes) in commit order");
    assert_eq!(d.rows(), 8);
    assert!(!d.is_empty());
    let mut previous = Lsn::ZERO;
    for t in &d.transactions {
        assert!(t.commit_lsn >= applied, "{} before {applied}", t.commit_lsn);
        assert!(t.commit_lsn > previous && t.end_lsn > t.commit_lsn);
        previous = t.commit_lsn;
        assert!(t.commit_time.ends_with('Z'), "{}", t.commit_time);
        assert_eq!(t.messages.len(), t.changes);
        for (i, m) in t.messages.iter().enumerate() {
            assert_eq!(
                (m.xid, m.commit_lsn, m.seq),
                (t.xid, t.commit_lsn, i as u32 + 1)
            );
            assert!(m.table.starts_with("div."), "{}", m.table);
            assert!(m.lsn >= applied);
        }
    }
    let all = serde_json::to_string(
        &d.transactions
            .iter()
            .flat_map(|t| &t.messages)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !all.contains("applied"),
        "an applied transaction leaked in: {all}"
    );
    let key_change = &d.transactions[1].messages[1];
    assert_eq!(key_change.op, Op::Update);
    assert_eq!(key_change.key.get("id"), Some(&serde_json::json!("20")));
    assert_eq!(key_change.key.len(), 1);
    let old_key = key_change
        .old
        .as_ref()
        .expect("the old key of a key change");
    assert_eq!(old_key.get("id"), Some(&serde_json::json!("2")));
    let truncate = &d.transactions[3].messages[0];
    assert_eq!(
        (truncate.op, truncate.table.as_str()),
        (Op::Truncate, "div.small")
    );

    // Peeking consumed nothing.
    let again = divergence::find(&p, &slot, &publication, applied)
        .await
        .expect("find the divergence a second time");
    assert_eq!(again, d, "a second find must return the same");

    // A later `after` leaves out what committed before it.
    let later = divergence::find(&p, &slot, &publication, d.transactions[2].commit_lsn)
        .await
        .unwrap();
    assert_eq!(later.transactions, d.transactions[2..].to_vec());

    // The saved SQL replays the divergence on the standby.
    let sql = write_and_check(&d, "node-a", Epoch(3));
    assert_standby_behind(&pair).await;
    pair.standby_client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("changes.sql failed on the standby: {e:?}\n{sql}"));
    assert_same_rows(&pair).await;

    // A missing slot: a clear error naming it.
    let e = divergence::find(&p, "no_such_slot", &publication, applied)
        .await
        .expect_err("a missing slot must be an error");
    let text = format!("{e:#}");
    assert!(
        matches!(
            e.downcast_ref::<DivergenceError>(),
            Some(DivergenceError::SlotMissing { .. })
        ),
        "{text}"
    );
    assert!(
        text.contains("no_such_slot") && text.contains("cannot be determined"),
        "{text}"
    );

    // A point before the slot's confirmed position: what committed in between is gone.
    let e = divergence::find(&p, &slot, &publication, Lsn(1))
        .await
        .expect_err("a point before the slot's confirmed position must be an error");
    assert!(
        matches!(
            e.downcast_ref::<DivergenceError>(),
            Some(DivergenceError::SlotPast { .. })
        ),
        "{e:#}"
    );

    // A slot in use by a walsender: the error names its pid.
    let mut holder = ReplicationConnection::connect(&pair.primary_info(), "divergence-test")
        .await
        .unwrap();
    let options = [
        ("proto_version", "1"),
        ("publication_names", publication.as_str()),
    ];
    holder
        .start_logical(&slot, Lsn::ZERO, &options)
        .await
        .unwrap();
    let e = divergence::find(&p, &slot, &publication, applied)
        .await
        .expect_err("an active slot must be an error");
    match e.downcast_ref::<DivergenceError>() {
        Some(DivergenceError::SlotActive { pid, .. }) => {
            assert_eq!(Some(*pid), holder.backend_pid(), "{e:#}")
        }
        _ => panic!("not the active-slot error: {e:#}"),
    }
    assert!(format!("{e:#}").contains("pg_terminate_backend"), "{e:#}");
    holder.close().await;
    let slot_name = slot.clone();
    wait_for("the slot to become idle", Duration::from_secs(10), || {
        let slot = slot_name.clone();
        let p = &p;
        async move {
            p.query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map(|r| !r.get::<_, bool>(0))
            .unwrap_or(false)
        }
    })
    .await;
    let after_all = divergence::find(&p, &slot, &publication, applied)
        .await
        .unwrap();
    assert_eq!(after_all, d, "the slot still holds the same divergence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sql_replays_every_type_identity_toast_and_truncate() {
    let pair = Pair::start();
    let mut p = pair.primary_client().await;
    p.batch_execute(include_str!("fixtures/types_schema.sql"))
        .await
        .unwrap();
    pair.bootstrap().await;
    for round in 1..=6 {
        p.execute("SELECT \"Types Test\".mutate($1)", &[&round])
            .await
            .unwrap();
    }
    pair.catch_up().await;
    let applied = pair.applied_lsn().await;
    let slot = pair.slot_name().await;
    let publication = publication(&pair).await;

    let mut rows: i64 = 0;
    for round in 7..=30 {
        let n: i32 = p
            .query_one("SELECT \"Types Test\".mutate($1)", &[&round])
            .await
            .unwrap()
            .get(0);
        rows += i64::from(n);
    }
    // One message per table emptied: parent and child, then ident.
    commit(&mut p, "TRUNCATE \"Types Test\".parent CASCADE").await;
    commit(&mut p, "TRUNCATE \"Types Test\".ident RESTART IDENTITY").await;
    rows += 3;
    p.batch_execute(
        "INSERT INTO \"Types Test\".ident (label, created_at) VALUES ('after truncate', now()); \
         INSERT INTO \"Types Test\".parent VALUES (100, 'new parent'); \
         INSERT INTO \"Types Test\".child VALUES (1000, 100, 'new child')",
    )
    .await
    .unwrap();
    rows += 3;
    for round in 31..=40 {
        let n: i32 = p
            .query_one("SELECT \"Types Test\".mutate($1)", &[&round])
            .await
            .unwrap()
            .get(0);
        rows += i64::from(n);
    }

    let d = divergence::find(&p, &slot, &publication, applied)
        .await
        .expect("find the divergence");
    assert_eq!(d.transactions.len(), 24 + 2 + 1 + 10);
    assert_eq!(d.rows() as i64, rows, "one message per row change");
    let sql = write_and_check(&d, "old_primary", Epoch(1));
    // Rows found by the whole old row (REPLICA IDENTITY FULL) and by a changed key.
    assert!(sql.contains("WHERE ctid = (SELECT ctid FROM \"Types Test\".\"full_ident\""));
    assert!(sql.contains("UPDATE \"Types Test\".\"toasted\" SET \"id\" = "));
    assert_standby_behind(&pair).await;
    pair.standby_client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("changes.sql failed on the standby: {e:?}"));
    assert_same_rows(&pair).await;
}
