//! The throwaway-cluster harness itself: start, query, restart, drop.
use understudy::cluster::{Cluster, ClusterOptions, StopMode};

#[test]
fn starts_queries_restarts_and_cleans_up() {
    let mut c = Cluster::start(&ClusterOptions::default()).unwrap();
    assert_eq!(
        c.psql_socket("postgres", "SHOW wal_level").unwrap(),
        "logical"
    );
    c.create_database("nms").unwrap();
    c.psql_socket(
        "nms",
        "CREATE TABLE t(id int primary key); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    c.stop(StopMode::Immediate).unwrap();
    assert!(c.psql_socket("nms", "SELECT 1").is_err());
    c.restart().unwrap();
    assert_eq!(c.psql_socket("nms", "SELECT count(*) FROM t").unwrap(), "1");
    let root = c.socket_dir().to_path_buf();
    drop(c);
    assert!(
        !root.exists(),
        "cluster directory should be removed on drop"
    );
}
