//! Rules tests: matching (first match wins, each condition, defaults), every load-time rejection
//! with its line, validation against a catalog, and the example rules file.

use std::collections::HashMap;

use crate::decode::{Delete, Insert, Message, OldTuple, Relation, ReplicaIdentity, Update};
use crate::translate::tests::{one, rel, tuple};
use crate::translate::{Rules, RulesError};

mod bad;
mod example;

fn rules(text: &str) -> Rules {
    Rules::from_toml_str(text, "rules.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn alarm() -> Relation {
    rel(
        10,
        "nms",
        "alarm",
        ReplicaIdentity::Default,
        &[
            ("id", true),
            ("severity", false),
            ("acknowledged_by", false),
            ("cleared_at", false),
        ],
    )
}

/// The kind of an update of nms.alarm from `old` (whole row, key only or none) to `new`.
fn update_kind(rules: &Rules, old: Option<OldTuple>, new: &[Option<&str>]) -> String {
    let rel = alarm();
    let m = Message::Update(Update {
        rel: rel.id,
        old,
        new: tuple(new),
    });
    one(&rel, &m, rules).kind
}

const CLEARED: [Option<&str>; 4] = [Some("1"), Some("cleared"), None, Some("2026-01-01")];
const OPEN: [Option<&str>; 4] = [Some("1"), Some("major"), None, None];

#[test]
fn first_match_wins() {
    let r = rules(
        r#"
[[tables."nms.alarm".update]]
kind = "first"
new = { cleared_at = { is_null = false } }
[[tables."nms.alarm".update]]
kind = "second"
new = { severity = { equals = "cleared" } }
[[tables."nms.alarm".update]]
kind = "third"
"#,
    );
    assert_eq!(update_kind(&r, None, &CLEARED), "first");
    let sev_only = [Some("1"), Some("cleared"), None, None];
    assert_eq!(update_kind(&r, None, &sev_only), "second");
    assert_eq!(update_kind(&r, None, &OPEN), "third");
}

#[test]
fn changed_is_any_of() {
    let r = rules(
        r#"
[[tables."nms.alarm".update]]
kind = "ack_or_clear"
changed = ["acknowledged_by", "cleared_at"]
"#,
    );
    let full = |row: [Option<&str>; 4]| Some(OldTuple::Full(tuple(&row)));
    let acked = [Some("1"), Some("major"), Some("bob"), None];
    assert_eq!(update_kind(&r, full(OPEN), &acked), "ack_or_clear");
    let cleared = [Some("1"), Some("major"), None, Some("now")];
    assert_eq!(update_kind(&r, full(OPEN), &cleared), "ack_or_clear");
    let escalated = [Some("1"), Some("critical"), None, None];
    assert_eq!(update_kind(&r, full(OPEN), &escalated), "nms.alarm.updated");
}

#[test]
fn each_value_condition() {
    let r = rules(
        r#"
[tables."nms.alarm"]
entity = "alarm"
[[tables."nms.alarm".update]]
kind = "is_null"
new = { cleared_at = { is_null = true }, acknowledged_by = { is_null = true } }
[[tables."nms.alarm".update]]
kind = "equals_and_not_null"
new = { acknowledged_by = { equals = "bob", is_null = false } }
[[tables."nms.alarm".update]]
kind = "not_null"
new = { acknowledged_by = { is_null = false } }
"#,
    );
    assert_eq!(update_kind(&r, None, &OPEN), "is_null");
    let bob = [Some("1"), Some("major"), Some("bob"), None];
    assert_eq!(update_kind(&r, None, &bob), "equals_and_not_null");
    let eve = [Some("1"), Some("major"), Some("eve"), None];
    assert_eq!(update_kind(&r, None, &eve), "not_null");
    let neither = [Some("1"), Some("major"), None, Some("now")];
    assert_eq!(update_kind(&r, None, &neither), "alarm.updated");
    // unchanged TOAST: not NULL, equal to nothing
    let toast = [Some("1"), Some("major"), Some("<toast>"), None];
    assert_eq!(update_kind(&r, None, &toast), "not_null");
}

#[test]
fn old_conditions_hold_only_where_the_old_value_was_sent() {
    let r = rules(
        r#"
[[tables."nms.alarm".update]]
kind = "escalated_from_major"
changed = ["severity"]
old = { severity = { equals = "major" } }
[[tables."nms.alarm".update]]
kind = "was_unacknowledged"
old = { acknowledged_by = { is_null = true } }
[[tables."nms.alarm".update]]
kind = "old_id_known"
old = { id = { is_null = false } }
"#,
    );
    let critical = [Some("1"), Some("critical"), None, None];
    let full_old = Some(OldTuple::Full(tuple(&OPEN)));
    assert_eq!(update_kind(&r, full_old, &critical), "escalated_from_major");
    let minor = Some(OldTuple::Full(tuple(&[
        Some("1"),
        Some("minor"),
        None,
        None,
    ])));
    assert_eq!(update_kind(&r, minor, &critical), "was_unacknowledged");
    // key-only old: severity and acknowledged_by unknown (not NULL), the key column known
    let key_old = Some(OldTuple::Key(tuple(&[Some("0"), None, None, None])));
    assert_eq!(update_kind(&r, key_old, &critical), "old_id_known");
    assert_eq!(update_kind(&r, None, &critical), "nms.alarm.updated");
}

#[test]
fn insert_and_delete_rules_and_default_kinds() {
    let r = rules(
        r#"
[tables."nms.alarm"]
entity = "alarm"
[[tables."nms.alarm".insert]]
kind = "alarm.raised_critical"
new = { severity = { equals = "critical" } }
[[tables."nms.alarm".delete]]
kind = "alarm.purged"
old = { id = { is_null = false } }
"#,
    );
    let rel = alarm();
    let insert = |sev: &str| {
        Message::Insert(Insert {
            rel: rel.id,
            new: tuple(&[Some("1"), Some(sev), None, None]),
        })
    };
    assert_eq!(
        one(&rel, &insert("critical"), &r).kind,
        "alarm.raised_critical"
    );
    let m = one(&rel, &insert("minor"), &r);
    assert_eq!(
        (m.entity.as_str(), m.kind.as_str()),
        ("alarm", "alarm.inserted")
    );
    let delete = Message::Delete(Delete {
        rel: rel.id,
        old: OldTuple::Key(tuple(&[Some("1"), None, None, None])),
    });
    assert_eq!(one(&rel, &delete, &r).kind, "alarm.purged");

    // a table the file does not name: entity and kinds from its name
    let other = rel_named("public", "events");
    let m = one(
        &other,
        &Message::Insert(Insert {
            rel: other.id,
            new: tuple(&[Some("1")]),
        }),
        &r,
    );
    assert_eq!(
        (m.entity.as_str(), m.kind.as_str()),
        ("public.events", "public.events.inserted")
    );
    assert_eq!(m.table, "public.events");
}

fn rel_named(schema: &str, name: &str) -> Relation {
    rel(20, schema, name, ReplicaIdentity::Default, &[("id", true)])
}

#[test]
fn key_override_and_value_types() {
    let r = rules(
        r#"
[tables."nms.alarm"]
key = ["id"]
values = { id = "integer" }
"#,
    );
    let full = rel(
        10,
        "nms",
        "alarm",
        ReplicaIdentity::Full,
        &[
            ("id", true),
            ("severity", true),
            ("acknowledged_by", true),
            ("cleared_at", true),
        ],
    );
    let m = one(
        &full,
        &Message::Update(Update {
            rel: full.id,
            old: Some(OldTuple::Full(tuple(&OPEN))),
            new: tuple(&CLEARED),
        }),
        &r,
    );
    assert_eq!(serde_json::to_string(&m.key).unwrap(), r#"{"id":1}"#);
    assert_eq!(m.changed, ["severity", "cleared_at"]);
    let without = one(
        &full,
        &Message::Insert(Insert {
            rel: full.id,
            new: tuple(&OPEN),
        }),
        &Rules::none(),
    );
    assert_eq!(without.key.len(), 4, "FULL identity: every column is key");

    // a delete that carries only the old key keeps the identity's columns: the others are unknown
    let index = rel(
        10,
        "nms",
        "alarm",
        ReplicaIdentity::Index,
        &[
            ("id", true),
            ("severity", true),
            ("acknowledged_by", false),
            ("cleared_at", false),
        ],
    );
    let delete = Message::Delete(Delete {
        rel: index.id,
        old: OldTuple::Key(tuple(&[Some("1"), Some("major"), None, None])),
    });
    let m = one(&index, &delete, &r);
    assert_eq!(
        serde_json::to_string(&m.key).unwrap(),
        r#"{"id":1,"severity":"major"}"#
    );
}

fn catalog(tables: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
    tables
        .iter()
        .map(|(t, cols)| (t.to_string(), cols.iter().map(|c| c.to_string()).collect()))
        .collect()
}

#[test]
fn validation_against_the_catalog_names_line_and_fix() {
    let cat = catalog(&[
        ("nms.alarm", &["id", "severity", "cleared_at"]),
        ("nms.interface", &["ne_id", "if_index", "oper_up"]),
    ]);
    let text = r#"# rules
[tables."nms.alarm"]
entity = "alarm"
[[tables."nms.alarm".update]]
kind = "alarm.cleared"
changed = ["cleared_at"]
new = { cleared_at = { is_null = false } }

[tables."nms.interface"]
values = { if_index = "integer" }

[tables."nms.alarms"]
entity = "typo"
"#;
    let err = rules(text).validate_against(&cat).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rules.toml line 12: table nms.alarms does not exist on the primary (did you mean nms.alarm?)"
    );

    let ok = text.replace("[tables.\"nms.alarms\"]\nentity = \"typo\"\n", "");
    rules(&ok).validate_against(&cat).unwrap();

    for (from, to, line, reason) in [
        (
            "changed = [\"cleared_at\"]",
            "changed = [\"cleard_at\"]",
            6,
            "column cleard_at does not exist in nms.alarm (did you mean cleared_at?)",
        ),
        (
            "new = { cleared_at",
            "new = { clear",
            7,
            "column clear does not exist in nms.alarm",
        ),
        (
            "values = { if_index",
            "values = { ifindex",
            10,
            "column ifindex does not exist in nms.interface (did you mean if_index?)",
        ),
        (
            "entity = \"alarm\"",
            "key = [\"idx\"]",
            3,
            "column idx does not exist in nms.alarm (did you mean id?)",
        ),
        (
            "[tables.\"nms.interface\"]\n",
            "[tables.\"other.thing\"]\n",
            9,
            "table other.thing does not exist on the primary",
        ),
    ] {
        let bad = ok.replace(from, to);
        assert_ne!(bad, ok, "{from}");
        let err = rules(&bad).validate_against(&cat).unwrap_err();
        assert_eq!(err.line(), Some(line), "{err}");
        assert_eq!(err.to_string(), format!("rules.toml line {line}: {reason}"));
    }

    // several problems: the first in the file is reported
    let two = ok
        .replace("cleared_at\"]", "nope\"]")
        .replace("[tables.\"nms.interface\"]", "[tables.\"nms.x\"]");
    assert_eq!(
        rules(&two).validate_against(&cat).unwrap_err().line(),
        Some(6)
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[tables.\"nms.alarm\"]\n\n[[tables.\"nms.alarm\".insert]]\nkind = \"\"\n",
    )
    .unwrap();
    let err = Rules::load(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{} line 4: ", path.display())),
        "{text}"
    );

    let missing = dir.path().join("missing.toml");
    let err = Rules::load(&missing).unwrap_err();
    assert!(matches!(err, RulesError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing.toml"), "{err}");
    assert!(err.line().is_none());
}
