//! Table tests: hand-written messages laid out as the PostgreSQL 15 docs give them, and the
//! helpers (quoting, time, cache, text access). Malformed input is in `malformed.rs`.

use bytes::Bytes;

use super::*;

/// Concatenates the parts of a hand-written message.
pub(super) fn msg(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn begin_commit_and_origin_by_the_docs() {
    let begin = msg(&[
        b"B",
        &0x0000_0001_0154_31A8u64.to_be_bytes(), // final LSN 1/15431A8
        &848_981_880_391_531i64.to_be_bytes(),   // commit time
        &736u32.to_be_bytes(),                   // xid
    ]);
    assert_eq!(
        parse(&begin),
        Ok(Message::Begin(Begin {
            final_lsn: "1/15431A8".parse().unwrap(),
            commit_time: 848_981_880_391_531,
            xid: Xid(736),
        }))
    );

    let commit = msg(&[
        b"C",
        &[0],                          // flags
        &0x0154_31A8u64.to_be_bytes(), // commit LSN
        &0x0154_31D8u64.to_be_bytes(), // end LSN
        &(-5i64).to_be_bytes(),        // commit time before 2000
    ]);
    assert_eq!(
        parse(&commit),
        Ok(Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x0154_31A8),
            end_lsn: Lsn(0x0154_31D8),
            commit_time: -5,
        }))
    );

    let origin = msg(&[b"O", &0x0ABC_DEF0u64.to_be_bytes(), b"nms_primary\0"]);
    assert_eq!(
        parse(&origin),
        Ok(Message::Origin(Origin {
            commit_lsn: Lsn(0x0ABC_DEF0),
            name: "nms_primary".into(),
        }))
    );
}

#[test]
fn relation_and_type_by_the_docs() {
    let relation = msg(&[
        b"R",
        &16392u32.to_be_bytes(),
        b"Odd \"Schema\"\0",
        "tÄble name\0".as_bytes(),
        b"i",
        &2u16.to_be_bytes(),
        &[1],
        b"id\0",
        &23u32.to_be_bytes(),
        &(-1i32).to_be_bytes(),
        &[0],
        b"note\0",
        &1043u32.to_be_bytes(),
        &24i32.to_be_bytes(), // varchar(20): typmod is length + 4
    ]);
    let Ok(Message::Relation(rel)) = parse(&relation) else {
        panic!("not a relation: {:?}", parse(&relation));
    };
    assert_eq!(rel.id, RelId(16392));
    assert_eq!(rel.namespace, "Odd \"Schema\"");
    assert_eq!(rel.name, "tÄble name");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Index);
    assert_eq!(
        rel.columns,
        vec![
            Column {
                is_key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1
            },
            Column {
                is_key: false,
                name: "note".into(),
                type_oid: 1043,
                type_modifier: 24
            },
        ]
    );

    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let m = msg(&[
            b"R",
            &1u32.to_be_bytes(),
            b"s\0t\0",
            &[byte],
            &0u16.to_be_bytes(),
        ]);
        assert!(
            matches!(parse(&m), Ok(Message::Relation(r)) if r.replica_identity == identity),
            "{identity:?}"
        );
    }

    let ty = msg(&[b"Y", &16385u32.to_be_bytes(), b"public\0sev\0"]);
    assert_eq!(
        parse(&ty),
        Ok(Message::Type(TypeInfo {
            id: 16385,
            namespace: "public".into(),
            name: "sev".into()
        }))
    );
}

#[test]
fn changes_by_the_docs() {
    let insert = msg(&[
        b"I",
        &16392u32.to_be_bytes(),
        b"N",
        &4u16.to_be_bytes(),
        b"t",
        &1i32.to_be_bytes(),
        b"1",
        b"n",
        b"u",
        b"b",
        &3i32.to_be_bytes(),
        &[0, 0xFF, 0x10],
    ]);
    let expected_new = Tuple(vec![
        text("1"),
        Datum::Null,
        Datum::UnchangedToast,
        Datum::Binary(Bytes::from_static(&[0, 0xFF, 0x10])),
    ]);
    assert_eq!(
        parse(&insert),
        Ok(Message::Insert(Insert {
            rel: RelId(16392),
            new: expected_new.clone()
        }))
    );

    let one = |v: &'static [u8]| msg(&[&1u16.to_be_bytes(), b"t", &1i32.to_be_bytes(), v]);
    let rel = &16392u32.to_be_bytes();
    for (marker, old) in [
        (&b""[..], None),
        (b"K", Some(OldTuple::Key(Tuple(vec![text("1")])))),
        (b"O", Some(OldTuple::Full(Tuple(vec![text("1")])))),
    ] {
        let old_bytes = if marker.is_empty() {
            Bytes::new()
        } else {
            one(b"1")
        };
        let update = msg(&[b"U", rel, marker, &old_bytes, b"N", &one(b"2")]);
        assert_eq!(
            parse(&update),
            Ok(Message::Update(Update {
                rel: RelId(16392),
                old,
                new: Tuple(vec![text("2")]),
            }))
        );
    }

    let delete_key = msg(&[b"D", rel, b"K", &one(b"9")]);
    assert_eq!(
        parse(&delete_key),
        Ok(Message::Delete(Delete {
            rel: RelId(16392),
            old: OldTuple::Key(Tuple(vec![text("9")]))
        }))
    );
    let delete_full = msg(&[b"D", rel, b"O", &one(b"9")]);
    assert!(matches!(
        parse(&delete_full),
        Ok(Message::Delete(Delete {
            old: OldTuple::Full(_),
            ..
        }))
    ));
}

#[test]
fn truncate_and_logical_message_by_the_docs() {
    for (options, cascade, restart_identity) in [
        (0u8, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, true),
    ] {
        let m = msg(&[
            b"T",
            &2u32.to_be_bytes(),
            &[options],
            &16406u32.to_be_bytes(),
            &16399u32.to_be_bytes(),
        ]);
        assert_eq!(
            parse(&m),
            Ok(Message::Truncate(Truncate {
                cascade,
                restart_identity,
                rels: vec![RelId(16406), RelId(16399)],
            }))
        );
    }

    let m = msg(&[
        b"M",
        &[1],
        &0x0154_3A60u64.to_be_bytes(),
        b"understudy\0",
        &4i32.to_be_bytes(),
        &[0, 1, 2, 3],
    ]);
    assert_eq!(
        parse(&m),
        Ok(Message::LogicalMessage(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x0154_3A60),
            prefix: "understudy".into(),
            content: Bytes::from_static(&[0, 1, 2, 3]),
        }))
    );
}

#[test]
fn datums_are_slices_of_the_input() {
    let data = msg(&[
        b"I",
        &1u32.to_be_bytes(),
        b"N",
        &1u16.to_be_bytes(),
        b"t",
        &3i32.to_be_bytes(),
        b"abc",
    ]);
    let Ok(Message::Insert(insert)) = parse(&data) else {
        panic!("not an insert")
    };
    let [Datum::Text(value)] = insert.new.0.as_slice() else {
        panic!("not one text datum")
    };
    let range = data.as_ptr_range();
    assert!(
        range.contains(&value.as_ptr()),
        "value was copied, not sliced"
    );
    assert_eq!(value.as_ptr_range().end, range.end);
}

#[test]
fn qualified_name_quotes_every_part() {
    let rel = |namespace: &str, name: &str| Relation {
        id: RelId(1),
        namespace: namespace.into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![],
    };
    for (namespace, name, quoted, display) in [
        ("public", "events", r#""public"."events""#, "public.events"),
        ("NMS", "Alarms", r#""NMS"."Alarms""#, "NMS.Alarms"),
        (
            "my schema",
            "alarm log",
            r#""my schema"."alarm log""#,
            "my schema.alarm log",
        ),
        (
            "Odd \"Schema\"",
            "a\"\"b",
            r#""Odd ""Schema"""."a""""b""#,
            "Odd \"Schema\".a\"\"b",
        ),
        ("public", "select", r#""public"."select""#, "public.select"),
        ("user", "order", r#""user"."order""#, "user.order"),
        (
            "",
            "pg_class",
            r#""pg_catalog"."pg_class""#,
            "pg_catalog.pg_class",
        ),
        ("schéma", "tÄble", r#""schéma"."tÄble""#, "schéma.tÄble"),
    ] {
        let r = rel(namespace, name);
        assert_eq!(r.qualified_name(), quoted);
        assert_eq!(r.display_name(), display);
    }
    assert_eq!(crate::ident::quote_ident(""), r#""""#);
    assert_eq!(crate::ident::quote_ident("\""), r#""""""#);
}

#[test]
fn as_text_only_for_utf8_text_datums() {
    assert_eq!(text("héllo").as_text(), Some("héllo"));
    assert_eq!(Datum::Text(Bytes::from_static(b"\xFF")).as_text(), None);
    assert_eq!(Datum::Binary(Bytes::from_static(b"abc")).as_text(), None);
    assert_eq!(Datum::Null.as_text(), None);
    assert_eq!(Datum::UnchangedToast.as_text(), None);
}

#[test]
fn pg_time_converts_to_unix_micros() {
    assert_eq!(pg_time_to_unix_micros(0), 946_684_800_000_000);
    // 2026-11-26T04:00:00Z, as PostgreSQL 15 sent it for the origin transaction in golden.rs.
    assert_eq!(
        pg_time_to_unix_micros(848_980_800_000_000),
        1_795_665_600_000_000
    );
    assert_eq!(pg_time_to_unix_micros(-946_684_800_000_000), 0);
    assert_eq!(pg_time_to_unix_micros(i64::MAX), i64::MAX);
}

#[test]
fn relation_cache_keeps_the_latest_shape() {
    let mut cache = RelationCache::new();
    assert!(cache.is_empty());
    let shape = |name: &str| Relation {
        id: RelId(42),
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![],
    };
    assert_eq!(cache.insert(shape("v1")), None);
    assert_eq!(cache.insert(shape("v2")).map(|r| r.name), Some("v1".into()));
    assert_eq!(cache.get(RelId(42)).map(|r| r.name.as_str()), Some("v2"));
    assert_eq!(cache.get(RelId(43)), None);
    assert_eq!(cache.len(), 1);
}

#[test]
fn ids_display_as_numbers() {
    assert_eq!(RelId(16392).to_string(), "16392");
    assert_eq!(Xid(u32::MAX).to_string(), "4294967295");
    assert_eq!(
        Message::LogicalMessage(LogicalMessage {
            transactional: false,
            lsn: Lsn(0),
            prefix: String::new(),
            content: Bytes::new(),
        })
        .kind(),
        "Message"
    );
}
