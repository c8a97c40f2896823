//! The byte level: a bounds-checked cursor and one reader per pgoutput message kind.
//!
//! Nothing here indexes a slice in a way that can fail or unwraps input-derived data; every
//! declared count is clamped to what the remaining bytes could hold before it sizes a `Vec`.

use bytes::Bytes;

use super::{
    Begin, Column, Commit, Datum, DecodeError, Delete, Insert, LogicalMessage, Message, OldTuple,
    Origin, RelId, Relation, ReplicaIdentity, Truncate, Tuple, TypeInfo, Update, Xid,
};
use crate::lsn::Lsn;

/// Smallest encoding of one Relation column: flags, an empty name's NUL, type OID, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;
/// Smallest encoding of one tuple column: its kind byte (`'n'` or `'u'`).
const MIN_DATUM_LEN: usize = 1;
/// Encoding of one relation OID in a Truncate.
const RELID_LEN: usize = 4;

#[cfg(test)]
thread_local! {
    /// The most bytes one `Reader::vec_for` reserved on this thread, for the allocation tests.
    pub(super) static LARGEST_RESERVATION: std::cell::Cell<usize> =
        const { std::cell::Cell::new(0) };
}

type BodyReader = fn(&mut Reader<'_>) -> Result<Message, DecodeError>;

pub(super) fn parse(data: &Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let (message, read): (&'static str, BodyReader) = match tag {
        b'B' => ("Begin", begin),
        b'C' => ("Commit", commit),
        b'O' => ("Origin", origin),
        b'R' => ("Relation", relation),
        b'Y' => ("Type", type_info),
        b'I' => ("Insert", insert),
        b'U' => ("Update", update),
        b'D' => ("Delete", delete),
        b'T' => ("Truncate", truncate),
        b'M' => ("Message", logical_message),
        other => return Err(unsupported_or_unknown(other)),
    };
    let mut reader = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = read(&mut reader)?;
    reader.finish()?;
    Ok(decoded)
}

/// Tags PostgreSQL sends only for features negotiated beyond plain protocol version 1.
fn unsupported_or_unknown(tag: u8) -> DecodeError {
    const STREAMING: &str = "streaming of in-progress transactions, proto_version 2+";
    const TWO_PHASE: &str = "two-phase commit, proto_version 3+";
    let (message, feature) = match tag {
        b'S' => ("Stream Start", STREAMING),
        b'E' => ("Stream Stop", STREAMING),
        b'c' => ("Stream Commit", STREAMING),
        b'A' => ("Stream Abort", STREAMING),
        b'b' => ("Begin Prepare", TWO_PHASE),
        b'P' => ("Prepare", TWO_PHASE),
        b'K' => ("Commit Prepared", TWO_PHASE),
        b'r' => ("Rollback Prepared", TWO_PHASE),
        b'p' => ("Stream Prepare", TWO_PHASE),
        _ => return DecodeError::UnknownTag { tag },
    };
    DecodeError::Unsupported {
        tag: char::from(tag),
        message,
        feature,
    }
}

fn begin(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Begin(Begin {
        final_lsn: r.lsn("8-byte final LSN")?,
        commit_time: r.i64("8-byte commit timestamp")?,
        xid: Xid(r.u32("4-byte transaction id")?),
    }))
}

fn commit(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Commit(Commit {
        flags: r.u8("1-byte flags")?,
        commit_lsn: r.lsn("8-byte commit LSN")?,
        end_lsn: r.lsn("8-byte end LSN")?,
        commit_time: r.i64("8-byte commit timestamp")?,
    }))
}

fn origin(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Origin(Origin {
        commit_lsn: r.lsn("8-byte origin commit LSN")?,
        name: r.string("origin name")?,
    }))
}

fn relation(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let id = RelId(r.u32("4-byte relation OID")?);
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let at = r.pos;
    let replica_identity = match r.u8("1-byte replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => {
            return Err(r.invalid(
                at,
                "replica identity",
                format!("{} is not one of 'd', 'n', 'f', 'i'", show_byte(other)),
            ))
        }
    };
    let count = usize::from(r.u16("2-byte column count")?);
    let mut columns = r.vec_for(count, MIN_COLUMN_LEN);
    for _ in 0..count {
        let at = r.pos;
        let flags = r.u8("1-byte column flags")?;
        if flags & !1 != 0 {
            return Err(r.invalid(
                at,
                "column flags",
                format!("0x{flags:02X} has bits other than 1 (key column)"),
            ));
        }
        columns.push(Column {
            is_key: flags & 1 != 0,
            name: r.string("column name")?,
            type_oid: r.u32("4-byte column type OID")?,
            type_modifier: r.i32("4-byte column type modifier")?,
        });
    }
    Ok(Message::Relation(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    }))
}

fn type_info(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message::Type(TypeInfo {
        id: r.u32("4-byte type OID")?,
        namespace: r.string("type namespace")?,
        name: r.string("type name")?,
    }))
}

fn insert(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let rel = RelId(r.u32("4-byte relation OID")?);
    let at = r.pos;
    match r.u8("1-byte tuple marker 'N'")? {
        b'N' => {}
        other => return Err(r.invalid(at, "tuple marker", expected_markers(other, "'N'"))),
    }
    Ok(Message::Insert(Insert {
        rel,
        new: tuple(r)?,
    }))
}

fn update(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let rel = RelId(r.u32("4-byte relation OID")?);
    let at = r.pos;
    let old = match r.u8("1-byte tuple marker 'K', 'O' or 'N'")? {
        b'N' => None,
        marker @ (b'K' | b'O') => {
            let old = tuple(r)?;
            let at = r.pos;
            match r.u8("1-byte tuple marker 'N'")? {
                b'N' => {}
                other => return Err(r.invalid(at, "tuple marker", expected_markers(other, "'N'"))),
            }
            Some(if marker == b'K' {
                OldTuple::Key(old)
            } else {
                OldTuple::Full(old)
            })
        }
        other => {
            let problem = expected_markers(other, "'K', 'O' or 'N'");
            return Err(r.invalid(at, "tuple marker", problem));
        }
    };
    Ok(Message::Update(Update {
        rel,
        old,
        new: tuple(r)?,
    }))
}

fn delete(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let rel = RelId(r.u32("4-byte relation OID")?);
    let at = r.pos;
    let old = match r.u8("1-byte tuple marker 'K' or 'O'")? {
        b'K' => OldTuple::Key(tuple(r)?),
        b'O' => OldTuple::Full(tuple(r)?),
        other => return Err(r.invalid(at, "tuple marker", expected_markers(other, "'K' or 'O'"))),
    };
    Ok(Message::Delete(Delete { rel, old }))
}

fn truncate(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let count = usize::try_from(r.u32("4-byte relation count")?).unwrap_or(usize::MAX);
    let at = r.pos;
    let options = r.u8("1-byte option bits")?;
    if options & !3 != 0 {
        return Err(r.invalid(
            at,
            "option bits",
            format!("0x{options:02X} has bits other than 1 (CASCADE) and 2 (RESTART IDENTITY)"),
        ));
    }
    let mut rels = r.vec_for(count, RELID_LEN);
    for _ in 0..count {
        rels.push(RelId(r.u32("4-byte relation OID")?));
    }
    Ok(Message::Truncate(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        rels,
    }))
}

fn logical_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let at = r.pos;
    let flags = r.u8("1-byte flags")?;
    if flags & !1 != 0 {
        return Err(r.invalid(
            at,
            "flags",
            format!("0x{flags:02X} has bits other than 1 (transactional)"),
        ));
    }
    Ok(Message::LogicalMessage(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn: r.lsn("8-byte message LSN")?,
        prefix: r.string("prefix")?,
        content: r.counted("4-byte content length", "content")?,
    }))
}

/// TupleData: a column count, then per column a kind byte and, for `'t'`/`'b'`, a counted value.
fn tuple(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let count = usize::from(r.u16("2-byte tuple column count")?);
    let mut datums = r.vec_for(count, MIN_DATUM_LEN);
    for _ in 0..count {
        let at = r.pos;
        let datum = match r.u8("1-byte column kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => Datum::Text(r.counted("4-byte column length", "column")?),
            b'b' => Datum::Binary(r.counted("4-byte column length", "column")?),
            other => {
                return Err(r.invalid(
                    at,
                    "column kind",
                    format!("{} is not one of 'n', 'u', 't', 'b'", show_byte(other)),
                ))
            }
        };
        datums.push(datum);
    }
    Ok(Tuple(datums))
}

fn expected_markers(found: u8, expected: &str) -> String {
    format!("{} where {expected} was expected", show_byte(found))
}

/// A byte as `'x'` when printable ASCII, else `0xNN`.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("0x{b:02X}")
    }
}

/// A cursor over one message. `pos` never exceeds `data.len()`.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// A `Vec` with room for a declared `count` of elements encoded in at least `min_len` bytes
    /// each, but never more than the remaining bytes could encode, so a lying count is cheap.
    fn vec_for<T>(&self, count: usize, min_len: usize) -> Vec<T> {
        let capacity = count.min(self.remaining() / min_len.max(1));
        #[cfg(test)]
        LARGEST_RESERVATION.with(|largest| {
            largest.set(
                largest
                    .get()
                    .max(capacity.saturating_mul(std::mem::size_of::<T>())),
            )
        });
        Vec::with_capacity(capacity)
    }

    fn take(
        &mut self,
        n: usize,
        expected: impl FnOnce() -> String,
    ) -> Result<&'a [u8], DecodeError> {
        let data: &'a [u8] = self.data;
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end));
        match slice {
            Some(slice) => {
                self.pos += slice.len();
                Ok(slice)
            }
            None => Err(self.truncated(expected())),
        }
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        let at = self.pos;
        let slice = self.take(N, || expected.to_string())?;
        <[u8; N]>::try_from(slice).map_err(|_| DecodeError::Truncated {
            message: self.message,
            offset: at,
            expected: expected.to_string(),
        })
    }

    fn u8(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(expected).map(u8::from_be_bytes)
    }

    fn u16(&mut self, expected: &'static str) -> Result<u16, DecodeError> {
        self.array(expected).map(u16::from_be_bytes)
    }

    fn u32(&mut self, expected: &'static str) -> Result<u32, DecodeError> {
        self.array(expected).map(u32::from_be_bytes)
    }

    fn i32(&mut self, expected: &'static str) -> Result<i32, DecodeError> {
        self.array(expected).map(i32::from_be_bytes)
    }

    fn i64(&mut self, expected: &'static str) -> Result<i64, DecodeError> {
        self.array(expected).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, expected: &'static str) -> Result<Lsn, DecodeError> {
        self.array(expected).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// A NUL-terminated UTF-8 string; `what` names it in errors.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.data.get(start..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.truncated(format!("NUL-terminated {what}")));
        };
        let bytes = self.take(len, || format!("{len}-byte {what}"))?;
        let text = std::str::from_utf8(bytes).map_err(|e| {
            self.invalid(
                start + e.valid_up_to(),
                what,
                "not valid UTF-8 (understudy sets client_encoding=UTF8)".to_string(),
            )
        })?;
        let text = text.to_owned();
        self.take(1, || format!("NUL terminating the {what}"))?;
        Ok(text)
    }

    /// An Int32 length then that many bytes, returned as a zero-copy slice of the input.
    fn counted(&mut self, length: &'static str, what: &'static str) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let declared = self.i32(length)?;
        let len = usize::try_from(declared)
            .map_err(|_| self.invalid(at, "length", format!("{declared} is negative ({what})")))?;
        let start = self.pos;
        let remaining = self.remaining();
        self.take(len, || {
            format!("{len}-byte {what} value ({remaining} bytes remain)")
        })?;
        Ok(self.data.slice(start..self.pos))
    }

    fn truncated(&self, expected: String) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            offset: self.pos,
            expected,
        }
    }

    fn invalid(&self, offset: usize, field: &'static str, problem: String) -> DecodeError {
        DecodeError::Invalid {
            message: self.message,
            offset,
            field,
            problem,
        }
    }

    /// The message must end exactly here.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                extra,
            }),
        }
    }
}
