//! Bytes of the streaming replication protocol, without I/O.
//!
//! Owns (a) cutting whole backend messages off the front of a read buffer, including
//! CopyBothResponse (`'W'`), which postgres-protocol 0.6.12 cannot parse (it consumes the bytes
//! and fails, so we peek at the header first), and (b) the CopyData payloads of
//! <https://www.postgresql.org/docs/15/protocol-replication.html>:
//!
//! ```text
//! 'w' XLogData         walStart u64 | walEnd u64 | sendTime i64 | data…
//! 'k' PrimaryKeepalive walEnd u64 | sendTime i64 | replyRequested u8
//! 'r' StandbyStatus    write u64 | flush u64 | apply u64 | clientTime i64 | replyRequested u8
//! ```
//!
//! All integers are big-endian; times are microseconds since 2000-01-01 00:00 UTC.
//! Invariants: a buffer is only ever consumed by whole messages, so a caller that stops between
//! reads loses nothing; malformed input is an error, never a panic.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::{Header, Message};

use super::ReplicationMessage;
use crate::lsn::Lsn;

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
/// PostgreSQL never sends a message over 1 GB; a larger length means the stream is corrupt.
const MAX_MESSAGE_LEN: usize = 1 << 30;
/// Seconds from 1970-01-01 to 2000-01-01, the PostgreSQL epoch.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// One backend message cut from the read buffer.
pub(crate) enum Frame {
    /// CopyBothResponse: the server entered COPY BOTH (START_REPLICATION succeeded).
    CopyBothResponse,
    /// Any message postgres-protocol understands.
    Message(Message),
}

/// Cut the next whole message off `buf`, or `None` (buffer untouched) if it is not all there.
pub(crate) fn next_frame(buf: &mut BytesMut) -> io::Result<Option<Frame>> {
    let Some(header) = Header::parse(buf)? else {
        return Ok(None);
    };
    let total = header.len() as usize + 1;
    if total > MAX_MESSAGE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {total} bytes announced; the stream is corrupt"),
        ));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == COPY_BOTH_RESPONSE_TAG {
        buf.advance(total);
        return Ok(Some(Frame::CopyBothResponse));
    }
    match Message::parse(buf)? {
        Some(message) => Ok(Some(Frame::Message(message))),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a whole message did not parse",
        )),
    }
}

/// A CopyData payload that is not a well-formed replication message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    #[error("{what} message of {len} bytes is too short (needs {need})")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown replication message type {0:#04x}")]
    UnknownTag(u8),
    #[error("empty CopyData message")]
    Empty,
}

const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
const STATUS_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// Read a server CopyData payload: XLogData or a keepalive. `data` of XLogData shares `payload`.
pub(crate) fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, FramingError> {
    let tag = *payload.first().ok_or(FramingError::Empty)?;
    let need = |what, need| {
        if payload.len() < need {
            Err(FramingError::Truncated {
                what,
                len: payload.len(),
                need,
            })
        } else {
            Ok(())
        }
    };
    let mut body = &payload[1..];
    match tag {
        b'w' => {
            need("XLogData", XLOG_HEADER)?;
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let send_time = body.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: payload.slice(XLOG_HEADER..),
            })
        }
        b'k' => {
            need("keepalive", KEEPALIVE_LEN)?;
            let wal_end = Lsn(body.get_u64());
            let send_time = body.get_i64();
            let reply_requested = body.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(FramingError::UnknownTag(other)),
    }
}

/// The Standby Status Update (`'r'`) payload.
pub(crate) fn standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time: i64,
    reply_requested: bool,
) -> [u8; STATUS_LEN] {
    let mut out = [0u8; STATUS_LEN];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

/// Microseconds from the PostgreSQL epoch (2000-01-01 UTC) to `t`; negative before it.
pub(crate) fn pg_time_micros(t: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// What the server sends: the encoders the tests check the parser against.
    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(data);
        b.freeze()
    }

    fn keepalive(end: u64, time: i64, reply: u8) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(end);
        b.put_i64(time);
        b.put_u8(reply);
        b.freeze()
    }

    #[test]
    fn xlogdata_round_trip() {
        let msg = parse_copy_data(xlogdata(0x1_0000_0010, 0x1_0000_0020, -5, b"B123")).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x1_0000_0010),
                wal_end: Lsn(0x1_0000_0020),
                send_time: -5,
                data: Bytes::from_static(b"B123"),
            }
        );
        let empty = parse_copy_data(xlogdata(0, 0, 0, b"")).unwrap();
        assert!(matches!(empty, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn keepalive_round_trip() {
        for (reply, expected) in [(0u8, false), (1, true), (7, true)] {
            let msg = parse_copy_data(keepalive(0x16A5738, 123_456, reply)).unwrap();
            assert_eq!(
                msg,
                ReplicationMessage::Keepalive {
                    wal_end: Lsn(0x16A5738),
                    send_time: 123_456,
                    reply_requested: expected,
                }
            );
        }
    }

    #[test]
    fn truncated_and_unknown_payloads_are_errors() {
        let x = xlogdata(1, 2, 3, b"");
        for len in 0..x.len() {
            assert!(
                parse_copy_data(x.slice(..len)).is_err(),
                "xlogdata cut at {len}"
            );
        }
        let k = keepalive(1, 2, 1);
        for len in 0..k.len() {
            assert!(
                parse_copy_data(k.slice(..len)).is_err(),
                "keepalive cut at {len}"
            );
        }
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"z123")),
            Err(FramingError::UnknownTag(b'z'))
        );
    }

    #[test]
    fn standby_status_layout() {
        let r = standby_status(Lsn(0x0102), Lsn(0x0304), Lsn(0x0506), 0x0708, true);
        let mut b = &r[..];
        assert_eq!(b.get_u8(), b'r');
        assert_eq!(b.get_u64(), 0x0102);
        assert_eq!(b.get_u64(), 0x0304);
        assert_eq!(b.get_u64(), 0x0506);
        assert_eq!(b.get_i64(), 0x0708);
        assert_eq!(b.get_u8(), 1);
        assert!(b.is_empty());
        assert_eq!(standby_status(Lsn(1), Lsn(1), Lsn(1), 0, false)[33], 0);
    }

    #[test]
    fn pg_epoch_is_2000_01_01() {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(pg_time_micros(epoch), 0);
        assert_eq!(
            pg_time_micros(epoch + Duration::from_micros(1_500_000)),
            1_500_000
        );
        assert_eq!(pg_time_micros(epoch - Duration::from_secs(1)), -1_000_000);
        // 2026-01-01 is 26 years (and 7 leap days) after the epoch.
        let y2026 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(pg_time_micros(y2026), (26 * 365 + 7) * 86_400 * 1_000_000);
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_are_cut_only_when_whole() {
        // CopyBothResponse: format 0, no columns. Then a CopyData, then ReadyForQuery.
        let mut wire = frame(b'W', &[0, 0, 0]);
        wire.extend(frame(b'd', &keepalive(9, 9, 1)));
        wire.extend(frame(b'Z', b"I"));
        for split in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut seen = Vec::new();
            while let Some(f) = next_frame(&mut buf).unwrap() {
                seen.push(f);
            }
            let consumed = split - buf.len();
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                seen.push(f);
            }
            assert!(buf.is_empty(), "split at {split}: {consumed} consumed");
            let kinds: Vec<&str> = seen
                .iter()
                .map(|f| match f {
                    Frame::CopyBothResponse => "W",
                    Frame::Message(Message::CopyData(_)) => "d",
                    Frame::Message(Message::ReadyForQuery(_)) => "Z",
                    Frame::Message(_) => "?",
                })
                .collect();
            assert_eq!(kinds, ["W", "d", "Z"], "split at {split}");
        }
    }

    #[test]
    fn corrupt_lengths_are_errors() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert!(next_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(next_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 4][..]);
        assert!(next_frame(&mut buf).is_err(), "not a backend message");
    }
}
