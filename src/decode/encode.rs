//! Test-only encoder: serialises a [`Message`] to pgoutput protocol-version-1 bytes, the inverse
//! of [`super::parse`]. Written from the PostgreSQL docs' layouts, independently of the decoder,
//! and checked against bytes captured from PostgreSQL 15 in `golden.rs`.

use super::{Datum, Message, OldTuple, ReplicaIdentity, Tuple};

pub(super) fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    match message {
        Message::Begin(m) => {
            out.push(b'B');
            out.extend(m.final_lsn.0.to_be_bytes());
            out.extend(m.commit_time.to_be_bytes());
            out.extend(m.xid.0.to_be_bytes());
        }
        Message::Commit(m) => {
            out.push(b'C');
            out.push(m.flags);
            out.extend(m.commit_lsn.0.to_be_bytes());
            out.extend(m.end_lsn.0.to_be_bytes());
            out.extend(m.commit_time.to_be_bytes());
        }
        Message::Origin(m) => {
            out.push(b'O');
            out.extend(m.commit_lsn.0.to_be_bytes());
            put_string(&mut out, &m.name);
        }
        Message::Relation(m) => {
            out.push(b'R');
            out.extend(m.id.0.to_be_bytes());
            put_string(&mut out, &m.namespace);
            put_string(&mut out, &m.name);
            out.push(match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            put_u16(&mut out, m.columns.len());
            for column in &m.columns {
                out.push(u8::from(column.is_key));
                put_string(&mut out, &column.name);
                out.extend(column.type_oid.to_be_bytes());
                out.extend(column.type_modifier.to_be_bytes());
            }
        }
        Message::Type(m) => {
            out.push(b'Y');
            out.extend(m.id.to_be_bytes());
            put_string(&mut out, &m.namespace);
            put_string(&mut out, &m.name);
        }
        Message::Insert(m) => {
            out.push(b'I');
            out.extend(m.rel.0.to_be_bytes());
            out.push(b'N');
            put_tuple(&mut out, &m.new);
        }
        Message::Update(m) => {
            out.push(b'U');
            out.extend(m.rel.0.to_be_bytes());
            if let Some(old) = &m.old {
                put_old(&mut out, old);
            }
            out.push(b'N');
            put_tuple(&mut out, &m.new);
        }
        Message::Delete(m) => {
            out.push(b'D');
            out.extend(m.rel.0.to_be_bytes());
            put_old(&mut out, &m.old);
        }
        Message::Truncate(m) => {
            out.push(b'T');
            let count = u32::try_from(m.rels.len()).expect("test truncate lists fit in u32");
            out.extend(count.to_be_bytes());
            out.push(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
            for rel in &m.rels {
                out.extend(rel.0.to_be_bytes());
            }
        }
        Message::LogicalMessage(m) => {
            out.push(b'M');
            out.push(u8::from(m.transactional));
            out.extend(m.lsn.0.to_be_bytes());
            put_string(&mut out, &m.prefix);
            put_counted(&mut out, &m.content);
        }
    }
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    assert!(!s.contains('\0'), "pgoutput strings cannot hold NUL: {s:?}");
    out.extend(s.as_bytes());
    out.push(0);
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).expect("test column lists fit in u16");
    out.extend(n.to_be_bytes());
}

fn put_counted(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).expect("test values fit in i32");
    out.extend(len.to_be_bytes());
    out.extend(bytes);
}

fn put_old(out: &mut Vec<u8>, old: &OldTuple) {
    let (marker, tuple) = match old {
        OldTuple::Key(t) => (b'K', t),
        OldTuple::Full(t) => (b'O', t),
    };
    out.push(marker);
    put_tuple(out, tuple);
}

fn put_tuple(out: &mut Vec<u8>, tuple: &Tuple) {
    put_u16(out, tuple.0.len());
    for datum in &tuple.0 {
        match datum {
            Datum::Null => out.push(b'n'),
            Datum::UnchangedToast => out.push(b'u'),
            Datum::Text(v) => {
                out.push(b't');
                put_counted(out, v);
            }
            Datum::Binary(v) => {
                out.push(b'b');
                put_counted(out, v);
            }
        }
    }
}
