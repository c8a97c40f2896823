//! Property tests: every message kind round-trips through the test encoder, and no input
//! (arbitrary bytes, every prefix of a valid message, a corrupted byte) makes `parse` panic.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use std::mem::size_of;

use super::encode::encode;
use super::malformed::largest_reservation;
use super::*;

/// Names as PostgreSQL may send them: anything but NUL, biased towards the awkward cases.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_][a-z0-9_]{0,10}",
        "[A-Za-z \"'.;éÄ日本-]{0,12}",
        "[^\\x00]{0,24}",
    ]
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        bytes(40).prop_map(Datum::Text),
        "\\PC{0,10}".prop_map(|s| Datum::Text(Bytes::from(s))),
        bytes(40).prop_map(Datum::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    vec(datum(), 0..12).prop_map(Tuple)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn begin() -> impl Strategy<Value = Message> {
    (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
        Message::Begin(Begin {
            final_lsn,
            commit_time,
            xid: Xid(xid),
        })
    })
}

fn commit() -> impl Strategy<Value = Message> {
    (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
        |(flags, commit_lsn, end_lsn, commit_time)| {
            Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        },
    )
}

fn origin() -> impl Strategy<Value = Message> {
    (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name }))
}

fn relation() -> impl Strategy<Value = Message> {
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    (any::<u32>(), name(), name(), identity, vec(column, 0..10)).prop_map(
        |(id, namespace, name, replica_identity, columns)| {
            Message::Relation(Relation {
                id: RelId(id),
                namespace,
                name,
                replica_identity,
                columns,
            })
        },
    )
}

fn type_info() -> impl Strategy<Value = Message> {
    (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| {
        Message::Type(TypeInfo {
            id,
            namespace,
            name,
        })
    })
}

fn insert() -> impl Strategy<Value = Message> {
    (any::<u32>(), tuple()).prop_map(|(rel, new)| {
        Message::Insert(Insert {
            rel: RelId(rel),
            new,
        })
    })
}

fn update() -> impl Strategy<Value = Message> {
    (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(|(rel, old, new)| {
        Message::Update(Update {
            rel: RelId(rel),
            old,
            new,
        })
    })
}

fn delete() -> impl Strategy<Value = Message> {
    (any::<u32>(), old_tuple()).prop_map(|(rel, old)| {
        Message::Delete(Delete {
            rel: RelId(rel),
            old,
        })
    })
}

fn truncate() -> impl Strategy<Value = Message> {
    (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..10)).prop_map(
        |(cascade, restart_identity, rels)| {
            let rels = rels.into_iter().map(RelId).collect();
            Message::Truncate(Truncate {
                cascade,
                restart_identity,
                rels,
            })
        },
    )
}

fn logical_message() -> impl Strategy<Value = Message> {
    (any::<bool>(), lsn(), name(), bytes(64)).prop_map(|(transactional, lsn, prefix, content)| {
        Message::LogicalMessage(LogicalMessage {
            transactional,
            lsn,
            prefix,
            content,
        })
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        begin(),
        commit(),
        origin(),
        relation(),
        type_info(),
        insert(),
        update(),
        delete(),
        truncate(),
        logical_message(),
    ]
}

/// Encodes, decodes, and checks the result is the original; then that the encoding is exact:
/// one more byte is `TrailingBytes`, and every strict prefix is an error.
fn round_trip(original: &Message) -> Result<(), TestCaseError> {
    let encoded = encode(original);
    let decoded = parse(&Bytes::from(encoded.clone()));
    prop_assert_eq!(decoded.as_ref(), Ok(original));

    let mut longer = encoded.clone();
    longer.push(0);
    let is_trailing = matches!(
        parse(&Bytes::from(longer)),
        Err(DecodeError::TrailingBytes { .. })
    );
    prop_assert!(is_trailing, "a trailing byte was accepted");

    for len in 0..encoded.len() {
        let prefix = Bytes::copy_from_slice(&encoded[..len]);
        prop_assert!(parse(&prefix).is_err(), "prefix of {} bytes parsed", len);
    }
    Ok(())
}

/// Parses `data` (a panic fails the test) and checks that no `Vec` was sized beyond what the
/// input could fill: every element takes at least one byte of input.
fn parses_within_bounds(data: &Bytes) -> Result<(), TestCaseError> {
    let per_byte = size_of::<Column>()
        .max(size_of::<Datum>())
        .max(size_of::<RelId>());
    let reserved = largest_reservation(data);
    prop_assert!(
        reserved <= data.len() * per_byte,
        "{} bytes reserved for {:?}",
        reserved,
        data
    );
    Ok(())
}

proptest! {
    #[test]
    fn begin_round_trips(m in begin()) { round_trip(&m)?; }

    #[test]
    fn commit_round_trips(m in commit()) { round_trip(&m)?; }

    #[test]
    fn origin_round_trips(m in origin()) { round_trip(&m)?; }

    #[test]
    fn relation_round_trips(m in relation()) { round_trip(&m)?; }

    #[test]
    fn type_round_trips(m in type_info()) { round_trip(&m)?; }

    #[test]
    fn insert_round_trips(m in insert()) { round_trip(&m)?; }

    #[test]
    fn update_round_trips(m in update()) { round_trip(&m)?; }

    #[test]
    fn delete_round_trips(m in delete()) { round_trip(&m)?; }

    #[test]
    fn truncate_round_trips(m in truncate()) { round_trip(&m)?; }

    #[test]
    fn logical_message_round_trips(m in logical_message()) { round_trip(&m)?; }

    /// Arbitrary bytes never panic; most start with a real tag so the body readers get exercised.
    #[test]
    fn arbitrary_bytes_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrpZ\0".to_vec()),
        body in vec(any::<u8>(), 0..256),
        tagged in any::<bool>(),
    ) {
        let mut data = body;
        if tagged {
            data.insert(0, tag);
        }
        parses_within_bounds(&Bytes::from(data))?;
    }

    /// Corrupting one byte of a valid message (often a count or a length) gives an error or some
    /// message, never a panic or an oversized reservation.
    #[test]
    fn corrupted_messages_never_panic(
        m in message(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut data = encode(&m);
        let i = index.index(data.len());
        data[i] = byte;
        parses_within_bounds(&Bytes::from(data))?;
    }
}
