//! Message tests: the JSON shape against DESIGN.md, values and markers, key/old/changed for every
//! kind of old tuple, truncate, and the errors. Rule matching is in `rules/tests.rs`.

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::decode::{Delete, Insert, Update};

mod edges;

pub(super) fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A tuple from `Some(text)` / `None` (NULL); `"<toast>"` is an unchanged TOAST value.
pub(super) fn tuple(values: &[Option<&str>]) -> Tuple {
    Tuple(
        values
            .iter()
            .map(|v| match v {
                None => Datum::Null,
                Some("<toast>") => Datum::UnchangedToast,
                Some(s) => text(s),
            })
            .collect(),
    )
}

/// A relation `schema.name` with `(column, is_key)` columns.
pub(super) fn rel(
    id: u32,
    schema: &str,
    name: &str,
    identity: ReplicaIdentity,
    cols: &[(&str, bool)],
) -> Relation {
    Relation {
        id: RelId(id),
        namespace: schema.into(),
        name: name.into(),
        replica_identity: identity,
        columns: cols
            .iter()
            .map(|&(name, is_key)| Column {
                is_key,
                name: name.into(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    }
}

pub(super) fn ctx() -> TxnContext {
    TxnContext::from(&Begin {
        final_lsn: "0/1A2B400".parse().unwrap(),
        // 2026-11-26T02:40:00.123456Z in µs since 2000-01-01
        commit_time: 1_795_660_800_123_456 - 946_684_800_000_000,
        xid: Xid(731),
    })
}

pub(super) fn lsn() -> Lsn {
    "0/1A2B3C4".parse().unwrap()
}

pub(super) fn alarms() -> Relation {
    let cols = [("id", true), ("severity", false), ("cleared_at", false)];
    rel(16400, "public", "alarms", ReplicaIdentity::Default, &cols)
}

pub(super) fn update(rel: &Relation, old: Option<OldTuple>, new: Tuple) -> Message {
    Message::Update(Update {
        rel: rel.id,
        old,
        new,
    })
}

pub(super) fn one(rel: &Relation, m: &Message, rules: &Rules) -> Mutation {
    translate_change(rel, m, &ctx(), 3, lsn(), rules)
        .unwrap()
        .expect("a row change")
}

const DESIGN_EXAMPLE: &str = r#"{"commit_lsn":"0/1A2B400","lsn":"0/1A2B3C4","xid":731,"commit_time":"2026-11-26T02:40:00.123Z",
 "seq":3,"kind":"alarm.cleared","entity":"alarm","op":"update","table":"public.alarms",
 "key":{"id":42},"new":{"id":42,"severity":"critical","cleared_at":"2026-11-26T02:39:59Z"},
 "changed":["cleared_at"]}"#;

const ALARMS_RULES: &str = r#"
[tables."public.alarms"]
entity = "alarm"
values = { id = "integer" }
[[tables."public.alarms".update]]
kind = "alarm.cleared"
changed = ["cleared_at"]
new = { cleared_at = { is_null = false } }
"#;

#[test]
fn json_shape_is_the_design_example_byte_for_byte() {
    let compact = DESIGN_EXAMPLE.replace("\n ", "");
    let mut new = Row::default();
    new.push("id".into(), json!(42));
    new.push("severity".into(), json!("critical"));
    new.push("cleared_at".into(), json!("2026-11-26T02:39:59Z"));
    let mut key = Row::default();
    key.push("id".into(), json!(42));
    let m = Mutation {
        commit_lsn: "0/1A2B400".parse().unwrap(),
        lsn: lsn(),
        xid: 731,
        commit_time: "2026-11-26T02:40:00.123Z".into(),
        seq: 3,
        kind: "alarm.cleared".into(),
        entity: "alarm".into(),
        op: Op::Update,
        table: "public.alarms".into(),
        key,
        new: Some(new),
        old: None,
        changed: vec!["cleared_at".into()],
        truncated: vec![],
        cascade: None,
        restart_identity: None,
    };
    assert_eq!(serde_json::to_string(&m).unwrap(), compact);
    assert_eq!(serde_json::from_str::<Mutation>(DESIGN_EXAMPLE).unwrap(), m);
    assert_eq!(m.id(), "0/1A2B400:3");
}

#[test]
fn translated_update_with_full_old_row_is_the_design_example_plus_old() {
    let rules = Rules::from_toml_str(ALARMS_RULES, "rules.toml").unwrap();
    let rel = alarms();
    let new = tuple(&[Some("42"), Some("critical"), Some("2026-11-26T02:39:59Z")]);
    let old = OldTuple::Full(tuple(&[Some("42"), Some("critical"), None]));
    let m = one(&rel, &update(&rel, Some(old), new), &rules);
    let mut expected: Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
    expected["old"] = json!({"id": 42, "severity": "critical", "cleared_at": null});
    assert_eq!(serde_json::to_value(&m).unwrap(), expected);
}

#[test]
fn translated_update_without_old_tuple_golden_text() {
    // Under REPLICA IDENTITY DEFAULT with an unchanged key pgoutput sends no old tuple, so every
    // non-key column counts as changed.
    let rules = Rules::from_toml_str(ALARMS_RULES, "rules.toml").unwrap();
    let rel = alarms();
    let new = tuple(&[Some("42"), Some("critical"), Some("2026-11-26T02:39:59Z")]);
    let m = one(&rel, &update(&rel, None, new), &rules);
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        r#"{"commit_lsn":"0/1A2B400","lsn":"0/1A2B3C4","xid":731,"commit_time":"2026-11-26T02:40:00.123Z","seq":3,"kind":"alarm.cleared","entity":"alarm","op":"update","table":"public.alarms","key":{"id":42},"new":{"id":42,"severity":"critical","cleared_at":"2026-11-26T02:39:59Z"},"changed":["severity","cleared_at"]}"#
    );
}

#[test]
fn column_order_is_the_relation_order_and_round_trips() {
    let cols = [("zeta", true), ("alpha", false), ("mid", false)];
    let rel = rel(7, "s", "t", ReplicaIdentity::Default, &cols);
    let insert = Message::Insert(Insert {
        rel: rel.id,
        new: tuple(&[Some("1"), None, Some("x")]),
    });
    let m = one(&rel, &insert, &Rules::none());
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        json.contains(r#""new":{"zeta":"1","alpha":null,"mid":"x"}"#),
        "{json}"
    );
    assert_eq!(m.changed, ["zeta", "mid"]);
    let back: Mutation = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert!(serde_json::from_str::<Row>(r#"{"a":"1","a":"2"}"#).is_err());
}

fn element() -> Relation {
    let cols = [("id", true), ("status", false), ("notes", false)];
    rel(
        16384,
        "nms",
        "network_element",
        ReplicaIdentity::Default,
        &cols,
    )
}

#[test]
fn unchanged_toast_is_marked_never_null() {
    let rel = element();
    let m = one(
        &rel,
        &update(&rel, None, tuple(&[Some("7"), Some("up"), Some("<toast>")])),
        &Rules::none(),
    );
    let new = m.new.as_ref().unwrap();
    assert!(is_unchanged_toast(new.get("notes").unwrap()));
    assert_eq!(new.get("notes"), Some(&json!({"unchanged_toast": true})));
    assert_eq!(m.changed, ["status"], "unchanged TOAST is not a change");
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        json.contains(r#""notes":{"unchanged_toast":true}"#),
        "{json}"
    );
    assert!(!json.contains("null"), "{json}");
    assert!(!is_unchanged_toast(&Value::Null));
    assert!(!is_unchanged_toast(
        &json!({"unchanged_toast": true, "x": 1})
    ));
}

#[test]
fn changed_columns_by_what_the_stream_carried() {
    let full = rel(
        1,
        "nms",
        "alarm",
        ReplicaIdentity::Full,
        &[("id", true), ("sev", true), ("note", true), ("at", true)],
    );
    let new = tuple(&[Some("1"), Some("major"), Some("<toast>"), None]);
    let cases: Vec<(&str, &Relation, Option<OldTuple>, Vec<&str>)> = vec![
        // whole old row: exactly the differing columns; TOAST unchanged is not a change
        (
            "full old",
            &full,
            Some(OldTuple::Full(tuple(&[
                Some("1"),
                Some("minor"),
                Some("n"),
                None,
            ]))),
            vec!["sev"],
        ),
        (
            "full old, NULL to value",
            &full,
            Some(OldTuple::Full(tuple(&[
                Some("1"),
                Some("major"),
                Some("n"),
                Some("x"),
            ]))),
            vec!["at"],
        ),
        // FULL without an old tuple (never sent by PostgreSQL): every sent column
        ("full, none", &full, None, vec!["id", "sev", "at"]),
    ];
    for (what, rel, old, expected) in cases {
        let m = one(rel, &update(rel, old, new.clone()), &Rules::none());
        assert_eq!(m.changed, expected, "{what}");
    }

    let def = rel(
        2,
        "nms",
        "interface",
        ReplicaIdentity::Default,
        &[
            ("ne_id", true),
            ("if_index", true),
            ("name", false),
            ("n", false),
        ],
    );
    let new = tuple(&[Some("5"), Some("9"), Some("eth9"), Some("<toast>")]);
    let key_old = |ne: &str, ifx: &str| OldTuple::Key(tuple(&[Some(ne), Some(ifx), None, None]));
    for (what, old, expected) in [
        // key changed: the differing key columns, and every other sent column
        (
            "key only",
            Some(key_old("5", "3")),
            vec!["if_index", "name"],
        ),
        // old key sent though equal (out-of-line key value): no key column changed
        ("key only, same", Some(key_old("5", "9")), vec!["name"]),
        // no old tuple: the key did not change
        ("none", None, vec!["name"]),
    ] {
        let m = one(&def, &update(&def, old, new.clone()), &Rules::none());
        assert_eq!(m.changed, expected, "{what}");
    }
}

#[test]
fn key_new_and_old_per_operation() {
    let def = rel(
        2,
        "nms",
        "interface",
        ReplicaIdentity::Default,
        &[("ne_id", true), ("if_index", true), ("name", false)],
    );
    let old_key = OldTuple::Key(tuple(&[Some("5"), Some("3"), None]));
    let new = tuple(&[Some("5"), Some("9"), Some("eth9")]);

    let m = one(
        &def,
        &update(&def, Some(old_key.clone()), new),
        &Rules::none(),
    );
    assert_eq!(
        serde_json::to_value(&m.key).unwrap(),
        json!({"ne_id": "5", "if_index": "9"})
    );
    assert_eq!(
        serde_json::to_value(&m.old).unwrap(),
        json!({"ne_id": "5", "if_index": "3"}),
        "key-only old keeps only the key columns"
    );

    let del = Message::Delete(Delete {
        rel: def.id,
        old: old_key,
    });
    let m = one(&def, &del, &Rules::none());
    assert_eq!(m.op, Op::Delete);
    assert_eq!(m.kind, "nms.interface.deleted");
    assert_eq!(
        serde_json::to_value(&m.key).unwrap(),
        json!({"ne_id": "5", "if_index": "3"})
    );
    assert!(m.new.is_none() && m.changed.is_empty());
    let json = serde_json::to_value(&m).unwrap();
    assert!(json.get("new").is_none() && json["changed"] == json!([]));

    let del_full = Message::Delete(Delete {
        rel: def.id,
        old: OldTuple::Full(tuple(&[Some("5"), Some("3"), Some("eth3")])),
    });
    let m = one(&def, &del_full, &Rules::none());
    assert_eq!(
        serde_json::to_value(&m.old).unwrap(),
        json!({"ne_id": "5", "if_index": "3", "name": "eth3"})
    );
}

#[test]
fn context_comes_from_begin_and_seq_lsn_from_the_caller() {
    let rel = alarms();
    let m = translate_change(
        &rel,
        &update(&rel, None, tuple(&[Some("1"), None, None])),
        &ctx(),
        17,
        Lsn(0x99),
        &Rules::none(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(m.commit_lsn.to_string(), "0/1A2B400");
    assert_eq!(m.lsn, Lsn(0x99));
    assert_eq!((m.xid, m.seq), (731, 17));
    assert_eq!(m.commit_time, "2026-11-26T02:40:00.123Z");
    assert_eq!(ctx().commit_time_micros, 1_795_660_800_123_456);
}

#[test]
fn value_types_convert_or_keep_the_text() {
    for (ty, input, expected) in [
        (ValueType::Integer, "42", json!(42)),
        (ValueType::Integer, "-9223372036854775808", json!(i64::MIN)),
        (ValueType::Integer, "18446744073709551615", json!(u64::MAX)),
        (ValueType::Integer, "1e3", json!("1e3")),
        (
            ValueType::Integer,
            "99999999999999999999",
            json!("99999999999999999999"),
        ),
        (ValueType::Boolean, "t", json!(true)),
        (ValueType::Boolean, "f", json!(false)),
        (ValueType::Boolean, "maybe", json!("maybe")),
        (ValueType::Text, "42", json!("42")),
    ] {
        assert_eq!(ty.convert(input), expected, "{ty:?} {input}");
    }
}
