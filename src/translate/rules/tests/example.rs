//! `examples/nms_rules.toml` loads, validates against the example NMS of `sql/nms_example.sql`,
//! and names the workload's changes as its comments say.

use std::collections::HashMap;
use std::path::Path;

use crate::decode::{Delete, Insert, Message, OldTuple, Relation, ReplicaIdentity, Update};
use crate::translate::tests::{one, rel, tuple};
use crate::translate::Rules;

/// The tables and columns of sql/nms_example.sql, written out by hand.
fn nms_catalog() -> HashMap<String, Vec<String>> {
    let tables: &[(&str, &[&str])] = &[
        (
            "nms.network_element",
            &[
                "id",
                "name",
                "vendor",
                "model",
                "mgmt_ip",
                "site",
                "status",
                "config",
                "last_seen",
                "notes",
            ],
        ),
        (
            "nms.interface",
            &[
                "ne_id",
                "if_index",
                "name",
                "speed_mbps",
                "admin_up",
                "oper_up",
                "mac",
                "addresses",
            ],
        ),
        (
            "nms.alarm",
            &[
                "id",
                "ne_id",
                "if_index",
                "probable_cause",
                "severity",
                "raised_at",
                "acknowledged_at",
                "acknowledged_by",
                "cleared_at",
                "details",
            ],
        ),
        (
            "nms.alarm_history",
            &["id", "alarm_id", "event", "severity", "at"],
        ),
        (
            "nms.perf_sample",
            &[
                "ne_id",
                "if_index",
                "sampled_at",
                "in_octets",
                "out_octets",
                "cpu_pct",
                "latency_ms",
            ],
        ),
        (
            "nms.config_change",
            &[
                "id",
                "ne_id",
                "changed_by",
                "changed_at",
                "diff",
                "before",
                "after",
            ],
        ),
    ];
    tables
        .iter()
        .map(|(t, cols)| (t.to_string(), cols.iter().map(|c| c.to_string()).collect()))
        .collect()
}

fn example() -> Rules {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nms_rules.toml");
    Rules::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn relation(id: u32, name: &str, identity: ReplicaIdentity) -> Relation {
    let catalog = nms_catalog();
    let cols = &catalog[&format!("nms.{name}")];
    let key: &[&str] = match name {
        "interface" => &["ne_id", "if_index"],
        _ => &["id"],
    };
    let full = identity == ReplicaIdentity::Full;
    let cols: Vec<(&str, bool)> = cols
        .iter()
        .map(|c| (c.as_str(), full || key.contains(&c.as_str())))
        .collect();
    rel(id, "nms", name, identity, &cols)
}

#[test]
fn example_rules_load_and_validate_against_the_example_nms() {
    let rules = example();
    rules.validate_against(&nms_catalog()).unwrap();
    assert_eq!(rules.tables().len(), 6);
    // and a catalog without one of its tables is caught
    let mut catalog = nms_catalog();
    catalog.remove("nms.config_change");
    let err = rules.validate_against(&catalog).unwrap_err();
    assert!(
        err.to_string()
            .contains("table nms.config_change does not exist"),
        "{err}"
    );
}

#[test]
fn example_rules_name_the_workload_changes() {
    let rules = example();
    let alarm = relation(1, "alarm", ReplicaIdentity::Default);
    //        id   ne  if   cause  severity  raised ack_at ack_by cleared details
    let open = [
        Some("5"),
        Some("2"),
        None,
        Some("Fan failure"),
        Some("major"),
        Some("t0"),
        None,
        None,
        None,
        Some("{}"),
    ];
    let mut cleared = open;
    cleared[4] = Some("cleared");
    cleared[8] = Some("t2");
    let mut acked = open;
    acked[6] = Some("t1");
    acked[7] = Some("noc-bob");

    let insert = Message::Insert(Insert {
        rel: alarm.id,
        new: tuple(&open),
    });
    let m = one(&alarm, &insert, &rules);
    assert_eq!(
        (m.entity.as_str(), m.kind.as_str()),
        ("alarm", "alarm.raised")
    );
    assert_eq!(serde_json::to_string(&m.key).unwrap(), r#"{"id":5}"#);
    assert_eq!(
        m.new.as_ref().unwrap().get("ne_id"),
        Some(&serde_json::json!(2))
    );

    let update = |rel: &Relation, old: Option<OldTuple>, new: &[Option<&str>]| {
        let m = Message::Update(Update {
            rel: rel.id,
            old,
            new: tuple(new),
        });
        one(rel, &m, &rules).kind
    };
    // REPLICA IDENTITY DEFAULT: clearing is exact, the rest falls back to alarm.updated
    assert_eq!(update(&alarm, None, &cleared), "alarm.cleared");
    assert_eq!(update(&alarm, None, &acked), "alarm.updated");
    // REPLICA IDENTITY FULL: acknowledgement and escalation too, and the key stays the id
    let full = relation(1, "alarm", ReplicaIdentity::Full);
    let old = || Some(OldTuple::Full(tuple(&open)));
    assert_eq!(update(&full, old(), &acked), "alarm.acknowledged");
    let mut escalated = open;
    escalated[4] = Some("critical");
    assert_eq!(update(&full, old(), &escalated), "alarm.severity_changed");
    let mut bumped = open;
    bumped[9] = Some(r#"{"count": 2}"#);
    assert_eq!(update(&full, old(), &bumped), "alarm.updated");

    let mut key_only = [None; 10];
    key_only[0] = Some("5");
    let delete = Message::Delete(Delete {
        rel: alarm.id,
        old: OldTuple::Key(tuple(&key_only)),
    });
    assert_eq!(one(&alarm, &delete, &rules).kind, "alarm.purged");

    // ifIndex renumbering is exact under DEFAULT: the old key is sent
    let iface = relation(2, "interface", ReplicaIdentity::Default);
    let new = [
        Some("7"),
        Some("13"),
        Some("et-0/0/12"),
        Some("100000"),
        Some("t"),
        Some("f"),
        None,
        Some("{}"),
    ];
    let old_key = OldTuple::Key(tuple(&[
        Some("7"),
        Some("3"),
        None,
        None,
        None,
        None,
        None,
        None,
    ]));
    assert_eq!(update(&iface, Some(old_key), &new), "interface.renumbered");
    assert_eq!(update(&iface, None, &new), "interface.updated");
    let m = one(
        &iface,
        &Message::Insert(Insert {
            rel: iface.id,
            new: tuple(&new),
        }),
        &rules,
    );
    assert_eq!(
        m.new.unwrap().get("oper_up"),
        Some(&serde_json::json!(false))
    );

    let history = relation(3, "alarm_history", ReplicaIdentity::Default);
    for event in ["raised", "acknowledged", "cleared", "severity_changed"] {
        let row = [Some("1"), Some("5"), Some(event), Some("major"), Some("t")];
        let m = one(
            &history,
            &Message::Insert(Insert {
                rel: history.id,
                new: tuple(&row),
            }),
            &rules,
        );
        assert_eq!(m.kind, format!("alarm_event.{event}"));
    }

    // a table the rules leave out keeps the default names
    let part = rel(
        4,
        "nms",
        "perf_sample_p_today",
        ReplicaIdentity::Default,
        &[("ne_id", true)],
    );
    let m = one(
        &part,
        &Message::Insert(Insert {
            rel: part.id,
            new: tuple(&[Some("1")]),
        }),
        &rules,
    );
    assert_eq!(m.kind, "nms.perf_sample_p_today.inserted");
}
