//! Truncate, messages that are not row changes, and changes that do not fit their relation.

use bytes::Bytes;
use serde_json::json;

use super::{alarms, ctx, lsn, one, rel, text, tuple, update};
use crate::decode::{
    Begin, Datum, Insert, Message, OldTuple, RelId, ReplicaIdentity, Truncate, Tuple, Xid,
};
use crate::translate::{translate_change, translate_truncate, Mutation, Rules, TranslateError};

#[test]
fn truncate_gives_one_message_per_table_with_flags() {
    let rules = Rules::from_toml_str(
        "[tables.\"nms.alarm\"]\nentity = \"alarm\"\n[[tables.\"nms.alarm\".truncate]]\nkind = \"alarm.all_cleared\"\n",
        "rules.toml",
    )
    .unwrap();
    let a = rel(1, "nms", "alarm", ReplicaIdentity::Default, &[("id", true)]);
    let h = rel(
        2,
        "nms",
        "alarm_history",
        ReplicaIdentity::Default,
        &[("id", true)],
    );
    let t = Truncate {
        cascade: true,
        restart_identity: false,
        rels: vec![RelId(1), RelId(2)],
    };
    let ms = translate_truncate(&[&a, &h], &t, &ctx(), 4, lsn(), &rules).unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!((ms[0].seq, ms[1].seq), (4, 5));
    assert_eq!(ms[0].kind, "alarm.all_cleared");
    assert_eq!(ms[1].kind, "nms.alarm_history.truncated");
    assert_eq!(ms[1].entity, "nms.alarm_history");
    let json = serde_json::to_value(&ms[0]).unwrap();
    assert_eq!(json["op"], "truncate");
    assert_eq!(json["table"], "nms.alarm");
    assert_eq!(json["truncated"], json!(["nms.alarm", "nms.alarm_history"]));
    assert_eq!(json["cascade"], true);
    assert_eq!(json["restart_identity"], false);
    assert_eq!(json["key"], json!({}));
    assert!(json.get("new").is_none() && json.get("old").is_none());
    let back: Mutation = serde_json::from_value(json).unwrap();
    assert_eq!(back, ms[0]);

    // a row change carries none of the truncate fields
    let rel = alarms();
    let m = one(
        &rel,
        &update(&rel, None, tuple(&[Some("1"), None, None])),
        &rules,
    );
    let json = serde_json::to_value(&m).unwrap();
    for field in ["truncated", "cascade", "restart_identity"] {
        assert!(json.get(field).is_none(), "{field} in {json}");
    }

    // the relations must be those of the message, in order
    let err = translate_truncate(&[&h, &a], &t, &ctx(), 1, lsn(), &rules).unwrap_err();
    assert!(
        matches!(err, TranslateError::RelationMismatch { .. }),
        "{err}"
    );
    let err = translate_truncate(&[&a], &t, &ctx(), 1, lsn(), &rules).unwrap_err();
    assert!(
        matches!(err, TranslateError::RelationMismatch { .. }),
        "{err}"
    );
}

#[test]
fn other_messages_are_not_changes() {
    let rel = alarms();
    let begin = Message::Begin(Begin {
        final_lsn: lsn(),
        commit_time: 0,
        xid: Xid(1),
    });
    let truncate = Message::Truncate(Truncate {
        cascade: false,
        restart_identity: false,
        rels: vec![rel.id],
    });
    for m in [begin, Message::Relation(rel.clone()), truncate] {
        assert_eq!(
            translate_change(&rel, &m, &ctx(), 1, lsn(), &Rules::none()),
            Ok(None),
            "{}",
            m.kind()
        );
    }
}

#[test]
fn changes_that_do_not_fit_are_errors() {
    let rel = alarms();
    let run = |m: Message| translate_change(&rel, &m, &ctx(), 1, lsn(), &Rules::none());

    let other = Message::Insert(Insert {
        rel: RelId(99),
        new: tuple(&[Some("1"), None, None]),
    });
    let err = run(other).unwrap_err();
    assert!(
        matches!(err, TranslateError::RelationMismatch { .. }),
        "{err}"
    );

    let err = run(update(&rel, None, tuple(&[Some("1"), None]))).unwrap_err();
    assert!(
        err.to_string().contains("2 values but the relation has 3"),
        "{err}"
    );
    let short_old = Some(OldTuple::Full(tuple(&[Some("1")])));
    let err = run(update(&rel, short_old, tuple(&[Some("1"), None, None]))).unwrap_err();
    assert!(matches!(err, TranslateError::Width { got: 1, .. }), "{err}");

    let binary = Tuple(vec![
        text("1"),
        Datum::Binary(Bytes::from_static(b"\x01")),
        Datum::Null,
    ]);
    let err = run(update(&rel, None, binary)).unwrap_err();
    assert!(
        err.to_string().contains("column severity of public.alarms"),
        "{err}"
    );
    assert!(matches!(err, TranslateError::Binary { .. }));

    let bad = Tuple(vec![
        text("1"),
        Datum::Null,
        Datum::Text(Bytes::from_static(b"\xff")),
    ]);
    let err = run(update(&rel, None, bad)).unwrap_err();
    assert!(matches!(err, TranslateError::NotUtf8 { .. }), "{err}");
}
