//! Golden tests on real pgoutput bytes captured from PostgreSQL 15.18
//! (`tests/fixtures/pgoutput/`, whose README says how they were made).

use bytes::Bytes;

use super::encode::encode;
use super::*;

const TEXT_STREAM: &str = include_str!("../../tests/fixtures/pgoutput/text_stream.hex");
const BINARY_STREAM: &str = include_str!("../../tests/fixtures/pgoutput/binary_stream.hex");

/// One captured message: the slot's LSN and xid columns, and the pgoutput bytes.
struct Captured {
    line: usize,
    xid: u32,
    data: Bytes,
}

fn captured(fixture: &str) -> Vec<Captured> {
    fixture
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#') && !line.trim().is_empty())
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [lsn, xid, hex] = fields.as_slice() else {
                panic!("fixture line {}: expected `lsn xid hex`: {line}", i + 1)
            };
            lsn.parse::<Lsn>().expect("fixture LSN");
            Captured {
                line: i + 1,
                xid: xid.parse().expect("fixture xid"),
                data: unhex(hex),
            }
        })
        .collect()
}

fn unhex(hex: &str) -> Bytes {
    assert!(hex.len().is_multiple_of(2), "odd-length hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect::<Vec<u8>>()
        .into()
}

fn decoded(fixture: &str) -> Vec<Message> {
    captured(fixture)
        .into_iter()
        .map(|c| parse(&c.data).unwrap_or_else(|e| panic!("fixture line {}: {e}", c.line)))
        .collect()
}

fn texts(tuple: &Tuple) -> Vec<Option<&str>> {
    tuple.0.iter().map(Datum::as_text).collect()
}

#[test]
fn every_captured_message_decodes_and_re_encodes_byte_for_byte() {
    for fixture in [TEXT_STREAM, BINARY_STREAM] {
        let all = captured(fixture);
        assert_eq!(all.len(), 58);
        for c in all {
            let message = parse(&c.data).unwrap_or_else(|e| panic!("line {}: {e}", c.line));
            assert_eq!(encode(&message), c.data, "line {}: {message:?}", c.line);
            if let Message::Begin(begin) = message {
                assert_eq!(begin.xid, Xid(c.xid), "line {}", c.line);
            }
        }
    }
}

#[test]
fn captured_stream_has_every_message_kind() {
    let mut kinds: Vec<&str> = decoded(TEXT_STREAM).iter().map(Message::kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let expected = [
        "Begin", "Commit", "Delete", "Insert", "Message", "Origin", "Relation", "Truncate", "Type",
        "Update",
    ];
    assert_eq!(kinds, expected);
}

#[test]
fn first_transaction_fields() {
    let m = decoded(TEXT_STREAM);
    let Message::Begin(begin) = &m[0] else {
        panic!("{:?}", m[0])
    };
    assert_eq!(begin.final_lsn.to_string(), "0/15431A8");
    assert_eq!(begin.xid, Xid(736));

    assert_eq!(
        m[1],
        Message::Type(TypeInfo {
            id: 16385,
            namespace: "public".into(),
            name: "sev".into()
        })
    );

    let Message::Relation(rel) = &m[2] else {
        panic!("{:?}", m[2])
    };
    assert_eq!(rel.qualified_name(), r#""Odd ""Schema"""."tÄble name""#);
    assert_eq!(rel.display_name(), "Odd \"Schema\".tÄble name");
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<(bool, &str, u32, i32)> = rel
        .columns
        .iter()
        .map(|c| (c.is_key, c.name.as_str(), c.type_oid, c.type_modifier))
        .collect();
    assert_eq!(
        columns,
        [
            (true, "id", 23, -1),
            (false, "select", 25, -1),
            (false, "s", 16385, -1),
            (false, "big", 25, -1)
        ]
    );

    let Message::Insert(insert) = &m[3] else {
        panic!("{:?}", m[3])
    };
    assert_eq!(insert.rel, rel.id);
    let big = "x".repeat(10_000);
    assert_eq!(
        texts(&insert.new),
        [
            Some("1"),
            Some("héllo \"world\""),
            Some("major"),
            Some(big.as_str())
        ]
    );
    let Message::Insert(second) = &m[4] else {
        panic!("{:?}", m[4])
    };
    assert_eq!(second.new.0[1..3], [Datum::Null, Datum::Null]);

    let Message::Commit(commit) = &m[5] else {
        panic!("{:?}", m[5])
    };
    assert_eq!(commit.flags, 0);
    assert_eq!(commit.commit_lsn, begin.final_lsn);
    assert_eq!(commit.end_lsn.to_string(), "0/15431D8");
    assert_eq!(commit.commit_time, begin.commit_time);
}

#[test]
fn updates_and_deletes_under_each_replica_identity() {
    let m = decoded(TEXT_STREAM);
    // Default identity, key unchanged, TOASTed column untouched: no old tuple, 'u' for it.
    let Message::Update(u) = &m[7] else {
        panic!("{:?}", m[7])
    };
    assert_eq!(u.old, None);
    assert_eq!(u.new.0[3], Datum::UnchangedToast);
    assert_eq!(
        texts(&u.new)[..3],
        [Some("1"), Some("changed"), Some("major")]
    );
    // Key changed (id 2 -> 10): old key only, other columns NULL.
    let Message::Update(u) = &m[10] else {
        panic!("{:?}", m[10])
    };
    let Some(OldTuple::Key(old)) = &u.old else {
        panic!("{u:?}")
    };
    assert_eq!(old.0, [text("2"), Datum::Null, Datum::Null, Datum::Null]);
    assert_eq!(u.new.0[0], text("10"));
    let Message::Delete(d) = &m[13] else {
        panic!("{:?}", m[13])
    };
    assert_eq!(
        d.old,
        OldTuple::Key(Tuple(vec![
            text("10"),
            Datum::Null,
            Datum::Null,
            Datum::Null
        ]))
    );

    // REPLICA IDENTITY FULL: whole old row on update and delete.
    let Message::Relation(events) = &m[16] else {
        panic!("{:?}", m[16])
    };
    assert_eq!(events.display_name(), "public.events");
    assert_eq!(events.replica_identity, ReplicaIdentity::Full);
    assert!(
        events.columns.iter().all(|c| c.is_key),
        "FULL marks every column as key"
    );
    assert_eq!(events.columns[2].type_modifier, 24, "varchar(20)");
    let Message::Update(u) = &m[20] else {
        panic!("{:?}", m[20])
    };
    let Some(OldTuple::Full(old)) = &u.old else {
        panic!("{u:?}")
    };
    assert_eq!(
        texts(old),
        [Some("7"), Some("\\x00ff10"), Some("note"), Some("12.50")]
    );
    assert_eq!(texts(&u.new)[3], Some("99.99"));
    let Message::Delete(d) = &m[23] else {
        panic!("{:?}", m[23])
    };
    assert!(matches!(&d.old, OldTuple::Full(t) if texts(t)[3] == Some("99.99")));

    // REPLICA IDENTITY USING INDEX (a, b); REPLICA IDENTITY NOTHING.
    let Message::Relation(keyed) = &m[26] else {
        panic!("{:?}", m[26])
    };
    assert_eq!(keyed.replica_identity, ReplicaIdentity::Index);
    let keys: Vec<bool> = keyed.columns.iter().map(|c| c.is_key).collect();
    assert_eq!(keys, [true, true, false]);
    let Message::Update(u) = &m[30] else {
        panic!("{:?}", m[30])
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(Tuple(vec![
            text("1"),
            text("2"),
            Datum::Null
        ])))
    );
    let Message::Relation(ins_only) = &m[36] else {
        panic!("{:?}", m[36])
    };
    assert_eq!(ins_only.replica_identity, ReplicaIdentity::Nothing);
}

#[test]
fn messages_truncates_and_origins() {
    let m = decoded(TEXT_STREAM);
    let Message::LogicalMessage(tx) = &m[40] else {
        panic!("{:?}", m[40])
    };
    assert!(tx.transactional);
    assert_eq!(tx.lsn.to_string(), "0/1543A60");
    assert_eq!(tx.prefix, "understudy");
    assert_eq!(tx.content, "transactional payload".as_bytes());
    // Non-transactional: outside any Begin/Commit.
    let Message::LogicalMessage(non_tx) = &m[43] else {
        panic!("{:?}", m[43])
    };
    assert!(!non_tx.transactional);
    assert_eq!(non_tx.prefix, "understudy/nontx");
    assert_eq!(non_tx.content, &[0u8, 1, 2, 3][..]);

    let Message::Truncate(t) = &m[46] else {
        panic!("{:?}", m[46])
    };
    assert_eq!(
        (t.cascade, t.restart_identity, t.rels.as_slice()),
        (true, true, &[RelId(0x401D)][..])
    );
    let Message::Truncate(t) = &m[51] else {
        panic!("{:?}", m[51])
    };
    assert_eq!((t.cascade, t.restart_identity), (false, false));
    assert_eq!(t.rels, [RelId(0x4016), RelId(0x400F)]);

    // A transaction replayed from origin `nms_primary` at 2026-11-26T04:00:00Z.
    let Message::Begin(b) = &m[53] else {
        panic!("{:?}", m[53])
    };
    assert_eq!(pg_time_to_unix_micros(b.commit_time), 1_795_665_600_000_000);
    assert_eq!(
        m[54],
        Message::Origin(Origin {
            commit_lsn: "0/ABCDEF0".parse().unwrap(),
            name: "nms_primary".into()
        })
    );
}

#[test]
fn binary_stream_carries_send_format_values() {
    let text = decoded(TEXT_STREAM);
    let binary = decoded(BINARY_STREAM);
    // Same messages; only the datums differ.
    for (t, b) in text.iter().zip(&binary) {
        assert_eq!(t.kind(), b.kind());
    }
    let Message::Insert(i) = &binary[3] else {
        panic!("{:?}", binary[3])
    };
    assert_eq!(
        i.new.0[0],
        Datum::Binary(Bytes::copy_from_slice(&1i32.to_be_bytes()))
    );
    assert_eq!(
        i.new.0[1],
        Datum::Binary(Bytes::from_static("héllo \"world\"".as_bytes()))
    );
    let Message::Insert(i) = &binary[17] else {
        panic!("{:?}", binary[17])
    };
    assert_eq!(
        i.new.0[0],
        Datum::Binary(Bytes::copy_from_slice(&7i64.to_be_bytes()))
    );
    assert_eq!(
        i.new.0[1],
        Datum::Binary(Bytes::from_static(&[0, 0xFF, 0x10]))
    );
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}
