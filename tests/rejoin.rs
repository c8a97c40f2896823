//! `understudy rejoin` by hand (no sidecar): an old primary that the standby was promoted away
//! from comes back as the new primary's standby. Nothing it committed after the promotion point
//! is lost: with nothing diverged it follows the reverse slot without a copy; with writes of its
//! own after the promotion it saves them (mutation messages and SQL), is copied again, and exits 2.
mod common;

use std::time::Duration;

use common::{assert_same_rows, load_nms, Pair};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use understudy::bootstrap::{self, BootstrapOptions};
use understudy::follow::{self, FollowOptions, StopAt};
use understudy::pg::conninfo::ConnInfo;
use understudy::role::promote::{self, PromoteOptions};
use understudy::role::{guard, node, Role};

fn roles() -> Vec<String> {
    vec!["nms_app".to_string()]
}

/// a (the pair's primary cluster) bootstrapped into b, caught up, then b promoted while a still
/// runs: the state a rejoin starts from. Returns the config file for node a.
async fn promoted_away(pair: &Pair, dir: &std::path::Path) -> std::path::PathBuf {
    let config = copied(pair, dir).await;
    let options = PromoteOptions {
        nms_roles: roles(),
        reverse_slot: "understudy_a".into(),
        node_name: Some("b".into()),
        ..PromoteOptions::default()
    };
    let summary = promote::promote(&pair.standby_info(), Some(&pair.primary_info()), &options)
        .await
        .unwrap();
    assert_eq!(summary.epoch.0, 1);
    config
}

/// a (the pair's primary cluster, node a) bootstrapped into b (node b), caught up, both recorded
/// at epoch 0, b read-only for the NMS. Returns the config file for node a.
async fn copied(pair: &Pair, dir: &std::path::Path) -> std::path::PathBuf {
    let p = pair.primary_client().await;
    let mut s = pair.standby_client().await;
    for c in [&p, &s] {
        c.batch_execute("CREATE ROLE nms_app LOGIN").await.unwrap();
    }
    load_nms(&p).await;
    p.batch_execute(
        "CREATE TABLE nms.ledger (seq bigint PRIMARY KEY, node text NOT NULL);
         GRANT USAGE ON SCHEMA nms TO nms_app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA nms TO nms_app;
         INSERT INTO nms.ledger SELECT g, 'a' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    node::ensure_node(&p, "a", Role::Primary).await.unwrap();
    let mut b = BootstrapOptions::new(pair.primary_info(), pair.standby_info());
    b.slot = "understudy_b".into();
    b.jobs = 2;
    let (_tx, rx) = watch::channel(false);
    bootstrap::bootstrap(&b, rx).await.unwrap();
    node::ensure_node(&s, "b", Role::Standby).await.unwrap();
    let tables = guard::replicated_tables(&s).await.unwrap();
    guard::make_read_only(&mut s, &roles(), &tables)
        .await
        .unwrap();
    p.batch_execute("INSERT INTO nms.ledger SELECT g, 'a' FROM generate_series(101, 200) g")
        .await
        .unwrap();
    let mut f = FollowOptions::new(pair.primary_info(), pair.standby_info());
    f.stop_at = StopAt::CaughtUp;
    let (_tx, rx) = watch::channel(false);
    follow::follow(&f, rx, None).await.unwrap();

    let config = dir.join("a.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"a\"\ndivergence_dir = \"divergence\"\n\
             [nodes.a]\ndatabase = \"{}\"\nhttp = \"127.0.0.1:1\"\n\
             [nodes.b]\ndatabase = \"{}\"\nhttp = \"127.0.0.1:2\"\n\
             [nms]\nroles = [\"nms_app\"]\n",
            pair.primary_dsn(),
            pair.standby_dsn()
        ),
    )
    .unwrap();
    config
}

/// Run `understudy rejoin --config CONFIG`, expect exit code `code`; its standard output.
fn rejoin(config: &std::path::Path, code: i32) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["rejoin", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn nms_app(port: u16) -> tokio_postgres::Client {
    ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=nms_app dbname=nms"
    ))
    .unwrap()
    .connect("nms")
    .await
    .unwrap()
}

/// a follows b from the reverse slot until it has what b has.
async fn a_follows_b(pair: &Pair) {
    let mut f = FollowOptions::new(pair.standby_info(), pair.primary_info());
    f.stop_at = StopAt::CaughtUp;
    let (_tx, rx) = watch::channel(false);
    tokio::time::timeout(Duration::from_secs(60), follow::follow(&f, rx, None))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_diverged_follows_the_reverse_slot_without_a_copy() {
    let pair = Pair::start();
    let dir = tempfile::tempdir().unwrap();
    let config = promoted_away(&pair, dir.path()).await;
    // The NMS writes on the new primary before the old one is back.
    let on_b = nms_app(pair.standby.port()).await;
    on_b.batch_execute("INSERT INTO nms.ledger SELECT g, 'b' FROM generate_series(201, 250) g")
        .await
        .unwrap();

    let stdout = rejoin(&config, 0);
    assert!(stdout.contains("nothing diverged"), "{stdout}");
    assert!(
        stdout.contains("following the new primary from"),
        "{stdout}"
    );

    a_follows_b(&pair).await;
    assert_same_rows(&pair).await;
    let a = pair.primary_client().await;
    let rec = node::read_state(&a).await.unwrap().unwrap();
    assert_eq!((rec.role, rec.epoch.0), (Role::Standby, 1));
    // The slot b used to follow a is gone (nothing would ever read it again).
    let slots: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'understudy_b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    // a is read-only for the NMS now.
    let e = nms_app(pair.primary.port())
        .await
        .batch_execute("INSERT INTO nms.ledger VALUES (999999, 'a')")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_promotion_are_saved_and_the_old_primary_is_copied_again() {
    let pair = Pair::start();
    let dir = tempfile::tempdir().unwrap();
    let config = promoted_away(&pair, dir.path()).await;
    // Split brain: the NMS still writes to the old primary after b took over.
    let on_a = nms_app(pair.primary.port()).await;
    for seq in [301i64, 302, 303] {
        on_a.execute("INSERT INTO nms.ledger VALUES ($1, 'stray')", &[&seq])
            .await
            .unwrap();
    }
    on_a.batch_execute("UPDATE nms.ledger SET node = 'changed' WHERE seq = 5")
        .await
        .unwrap();
    let on_b = nms_app(pair.standby.port()).await;
    on_b.batch_execute("INSERT INTO nms.ledger VALUES (400, 'b')")
        .await
        .unwrap();

    let stdout = rejoin(&config, 2);
    assert!(
        stdout.contains("DIVERGED: 4 transaction(s), 4 row change(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("copied again from the new primary"),
        "{stdout}"
    );

    // The divergence file holds exactly the stray writes, as messages and as SQL.
    let saved: Vec<_> = std::fs::read_dir(dir.path().join("divergence"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let messages = std::fs::read_to_string(saved[0].path().join("messages.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = messages
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{messages}");
    let seqs: Vec<String> = lines
        .iter()
        .filter(|m| m["op"] == "insert")
        .map(|m| m["new"]["seq"].to_string().trim_matches('"').to_string())
        .collect();
    assert_eq!(seqs, ["301", "302", "303"]);
    let sql = std::fs::read_to_string(saved[0].path().join("changes.sql")).unwrap();
    assert!(
        sql.contains("'stray'") && sql.contains("'changed'"),
        "{sql}"
    );

    // The old primary now has exactly the new primary's rows, and follows it.
    let b = pair.standby_client().await;
    b.batch_execute("INSERT INTO nms.ledger VALUES (401, 'b')")
        .await
        .unwrap();
    a_follows_b(&pair).await;
    assert_same_rows(&pair).await;
    let a = pair.primary_client().await;
    let stray: i64 = a
        .query_one(
            "SELECT count(*) FROM nms.ledger WHERE node IN ('stray', 'changed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stray, 0, "a diverged row survived on the rejoined node");
    let rec = node::read_state(&a).await.unwrap().unwrap();
    assert_eq!((rec.role, rec.epoch.0), (Role::Standby, 1));

    // Running it again changes nothing.
    let again = rejoin(&config, 0);
    assert!(again.contains("already the standby"), "{again}");
}

/// `understudy switchover` with no sidecar running: directly on the databases, nothing lost, the
/// old primary follows the new one without a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_without_sidecars_acts_on_the_databases() {
    let pair = Pair::start();
    let dir = tempfile::tempdir().unwrap();
    let config = copied(&pair, dir.path()).await;
    let on_a = nms_app(pair.primary.port()).await;
    on_a.batch_execute("INSERT INTO nms.ledger SELECT g, 'a' FROM generate_series(201, 300) g")
        .await
        .unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["switchover", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("directly on the databases"), "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reply["primary"], "b", "{reply}");
    assert!(
        reply["old_primary"]
            .as_str()
            .unwrap()
            .contains("following the new primary"),
        "{reply}"
    );

    // The NMS session on a is refused now; the one on b writes.
    let e = on_a
        .batch_execute("INSERT INTO nms.ledger VALUES (999999, 'a')")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let on_b = nms_app(pair.standby.port()).await;
    let on_b_rows: i64 = on_b
        .query_one("SELECT count(*) FROM nms.ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_b_rows, 300, "every row a acknowledged is on b");
    on_b.batch_execute("INSERT INTO nms.ledger VALUES (301, 'b')")
        .await
        .unwrap();
    a_follows_b(&pair).await;
    assert_same_rows(&pair).await;
    for (c, role) in [
        (pair.primary_client().await, Role::Standby),
        (pair.standby_client().await, Role::Primary),
    ] {
        let rec = node::read_state(&c).await.unwrap().unwrap();
        assert_eq!((rec.role, rec.epoch.0), (role, 1));
    }
}
