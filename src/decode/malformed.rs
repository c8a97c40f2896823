//! Malformed input: every error path names the message, the byte offset and what was expected;
//! unsupported protocol features are told apart from garbage; lying counts cost nothing.

use bytes::Bytes;

use super::tests::msg;
use super::*;

#[test]
fn errors_name_the_message_the_offset_and_what_was_expected() {
    // Insert: tag 0, relid 1..5, 'N' 5, count 6..8, kind 8, 't' 9..13 value, kind 14, length 15..
    let insert = msg(&[
        b"I",
        &1u32.to_be_bytes(),
        b"N",
        &2u16.to_be_bytes(),
        b"t",
        &1i32.to_be_bytes(),
        b"x",
        b"t",
        &[0, 0],
    ]);
    let err = parse(&insert).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pgoutput Insert message truncated at byte 15: expected 4-byte column length"
    );

    check(
        Bytes::new(),
        "empty pgoutput message: expected a 1-byte message tag",
    );
    check(
        msg(&[b"Z"]),
        "unknown pgoutput message tag 0x5A at byte 0: understudy decodes pgoutput \
         protocol version 1 only",
    );
    check(
        msg(&[b"B", &[0; 8]]),
        "pgoutput Begin message truncated at byte 9: expected 8-byte commit timestamp",
    );
    check(
        msg(&[b"B", &[0; 20], b"!"]),
        "pgoutput Begin message has 1 unexpected bytes after its end at byte 21",
    );
    check(
        msg(&[b"O", &[0; 8], b"abc"]),
        "pgoutput Origin message truncated at byte 9: expected NUL-terminated origin \
         name",
    );
    check(
        msg(&[b"O", &[0; 8], b"ab\xFFc\0"]),
        "pgoutput Origin message has invalid origin name at byte 11: not valid UTF-8 \
         (understudy sets client_encoding=UTF8)",
    );
    check(
        msg(&[b"R", &[0; 4], b"s\0t\0x"]),
        "pgoutput Relation message has invalid replica identity at byte 9: 'x' is not \
         one of 'd', 'n', 'f', 'i'",
    );
    check(
        msg(&[b"R", &[0; 4], b"s\0t\0d", &1u16.to_be_bytes(), &[2]]),
        "pgoutput Relation message has invalid column flags at byte 12: 0x02 has bits \
         other than 1 (key column)",
    );
    check(
        msg(&[b"I", &[0; 4], b"K"]),
        "pgoutput Insert message has invalid tuple marker at byte 5: 'K' where 'N' was \
         expected",
    );
    check(
        msg(&[b"U", &[0; 4], b"X"]),
        "pgoutput Update message has invalid tuple marker at byte 5: 'X' where 'K', 'O' \
         or 'N' was expected",
    );
    check(
        msg(&[b"U", &[0; 4], b"K", &[0, 0], b"O"]),
        "pgoutput Update message has invalid tuple marker at byte 8: 'O' where 'N' was \
         expected",
    );
    check(
        msg(&[b"D", &[0; 4], b"N"]),
        "pgoutput Delete message has invalid tuple marker at byte 5: 'N' where 'K' or \
         'O' was expected",
    );
    check(
        msg(&[b"I", &[0; 4], b"N", &1u16.to_be_bytes(), &[0]]),
        "pgoutput Insert message has invalid column kind at byte 8: 0x00 is not one of \
         'n', 'u', 't', 'b'",
    );
    check(
        msg(&[
            b"I",
            &[0; 4],
            b"N",
            &1u16.to_be_bytes(),
            b"t",
            &(-1i32).to_be_bytes(),
        ]),
        "pgoutput Insert message has invalid length at byte 9: -1 is negative (column)",
    );
    check(
        msg(&[
            b"I",
            &[0; 4],
            b"N",
            &1u16.to_be_bytes(),
            b"b",
            &5i32.to_be_bytes(),
            b"abc",
        ]),
        "pgoutput Insert message truncated at byte 13: expected 5-byte column value (3 \
         bytes remain)",
    );
    check(
        msg(&[b"T", &[0; 4], &[4]]),
        "pgoutput Truncate message has invalid option bits at byte 5: 0x04 has bits \
         other than 1 (CASCADE) and 2 (RESTART IDENTITY)",
    );
    check(
        msg(&[b"M", &[3]]),
        "pgoutput Message message has invalid flags at byte 1: 0x03 has bits other than \
         1 (transactional)",
    );
    check(
        msg(&[b"M", &[0], &[0; 8], b"p\0", &7i32.to_be_bytes()]),
        "pgoutput Message message truncated at byte 16: expected 7-byte content value \
         (0 bytes remain)",
    );
}

fn check(bytes: Bytes, expected: &str) {
    assert_eq!(
        parse(&bytes).unwrap_err().to_string(),
        expected,
        "{bytes:?}"
    );
}

#[test]
fn streaming_and_two_phase_tags_are_unsupported_not_unknown() {
    for tag in *b"SEcAbPKrp" {
        let err = parse(&msg(&[&[tag], &[0; 32]])).unwrap_err();
        assert!(
            matches!(err, DecodeError::Unsupported { tag: t, .. } if t == char::from(tag)),
            "{}: {err:?}",
            char::from(tag)
        );
        let text = err.to_string();
        assert!(
            text.contains("did not request") && text.contains("proto_version '1'"),
            "{text}"
        );
    }
}

/// Parses `data` and returns the largest `Vec` reservation (in bytes) the parse made.
pub(super) fn largest_reservation(data: &Bytes) -> usize {
    wire::LARGEST_RESERVATION.with(|largest| largest.set(0));
    let _ = parse(data);
    wire::LARGEST_RESERVATION.with(|largest| largest.get())
}

#[test]
fn huge_declared_counts_fail_fast_without_allocating() {
    // 60000 tuple columns, no data.
    let insert = msg(&[b"I", &1u32.to_be_bytes(), b"N", &60_000u16.to_be_bytes()]);
    assert!(matches!(
        parse(&insert),
        Err(DecodeError::Truncated { offset: 8, .. })
    ));
    assert_eq!(largest_reservation(&insert), 0);
    // 65535 relation columns, one byte of data.
    let relation = msg(&[
        b"R",
        &1u32.to_be_bytes(),
        b"s\0t\0d",
        &u16::MAX.to_be_bytes(),
        &[1],
    ]);
    assert!(matches!(
        parse(&relation),
        Err(DecodeError::Truncated { offset: 13, .. })
    ));
    assert_eq!(largest_reservation(&relation), 0);
    // Four billion truncated relations, one present: room for one is reserved, not 16 GiB.
    let truncate = msg(&[b"T", &u32::MAX.to_be_bytes(), &[0], &7u32.to_be_bytes()]);
    assert!(matches!(
        parse(&truncate),
        Err(DecodeError::Truncated { offset: 10, .. })
    ));
    assert_eq!(largest_reservation(&truncate), std::mem::size_of::<RelId>());
    // A 2 GiB value in a 13-byte message.
    let big = msg(&[
        b"I",
        &1u32.to_be_bytes(),
        b"N",
        &1u16.to_be_bytes(),
        b"t",
        &i32::MAX.to_be_bytes(),
    ]);
    assert!(matches!(
        parse(&big),
        Err(DecodeError::Truncated { offset: 13, .. })
    ));
}
