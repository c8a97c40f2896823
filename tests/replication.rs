//! Bootstrap + follow against real clusters: every common type, hard identifiers, every replica
//! identity, TOAST, key changes, deletes, truncates, interleaved transactions, partitions.
mod common;

use common::{assert_same_rows, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_identifiers_and_identities_replicate_exactly() {
    let pair = Pair::start();
    let p = pair.primary_client().await;
    p.batch_execute(include_str!("fixtures/types_schema.sql"))
        .await
        .unwrap();
    pair.bootstrap().await;
    assert_same_rows(&pair).await;

    for round in 1..=40 {
        p.execute("SELECT \"Types Test\".mutate($1)", &[&round])
            .await
            .unwrap();
    }
    pair.catch_up().await;
    assert_same_rows(&pair).await;

    p.batch_execute(
        "TRUNCATE \"Types Test\".parent CASCADE; \
         TRUNCATE \"Types Test\".ident RESTART IDENTITY; \
         INSERT INTO \"Types Test\".ident (label, created_at) VALUES ('after truncate', now()); \
         INSERT INTO \"Types Test\".parent VALUES (100, 'new parent'); \
         INSERT INTO \"Types Test\".child VALUES (1000, 100, 'new child')",
    )
    .await
    .unwrap();
    pair.catch_up().await;
    let s = pair.standby_client().await;
    let ident: i64 = s
        .query_one(
            "SELECT id FROM \"Types Test\".ident WHERE label = 'after truncate'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ident, 1, "RESTART IDENTITY must reach the standby's data");

    for round in 41..=60 {
        p.execute("SELECT \"Types Test\".mutate($1)", &[&round])
            .await
            .unwrap();
    }
    pair.catch_up().await;
    assert_same_rows(&pair).await;

    let out = pair.understudy(&["check"]);
    assert!(
        out.status.success(),
        "check found differences: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
