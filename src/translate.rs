//! Turns decoded row changes into NMS mutation messages, by translation rules, without I/O.
//!
//! What it owns: the [`Mutation`] message of DESIGN.md ("The NMS mutation message") and its JSON
//! form, the translation of one pgoutput change into it ([`translate_change`],
//! [`translate_truncate`]), and the translation [`Rules`] that name each change for the NMS
//! (their TOML format is documented in the `rules` submodule and in `examples/nms_rules.toml`).
//! The only I/O is [`Rules::load`] reading the rules file.
//!
//! Invariants:
//! * One message per row change; a TRUNCATE gives one message per truncated table. `seq` is the
//!   1-based position of the message within its source transaction and is the caller's to count.
//! * The JSON form is deterministic: fields in the declared order of [`Mutation`], row values in
//!   the column order of the relation ([`Row`] is an ordered map, not a hash or B-tree map).
//! * Values keep PostgreSQL's text output form as JSON strings, unless the table's `values`
//!   rule types a column as `integer` or `boolean` (a value that does not parse as that type
//!   stays a string). SQL NULL is JSON `null`. An unchanged TOAST value is the object
//!   `{"unchanged_toast": true}` ([`unchanged_toast`]), never `null`: it means "the value did not
//!   change and was not sent", and a consumer must keep the value it has.
//! * `key` identifies the row after the change (from the new tuple) for inserts and updates, and
//!   the removed row (from the old tuple) for deletes. When an update changes the key, `old`
//!   carries the previous key. Key columns are those pgoutput flags as replica identity (so under
//!   REPLICA IDENTITY FULL the whole row), unless the table's rules name them with `key = [..]`.
//! * `old` is present only when the stream carried it: the old key (`'K'`, key columns only) or
//!   the whole old row (`'O'`, REPLICA IDENTITY FULL).
//! * `changed` lists column names in relation order:
//!   - insert: every column that is not NULL;
//!   - update with the whole old row: every column whose value differs from the old one;
//!   - update with the old key only: key columns whose value differs, and every other column
//!     sent in the new tuple (the old values are unknown), except unchanged TOAST ones;
//!   - update without an old tuple: pgoutput omits it only when the key did not change, so every
//!     non-key column sent in the new tuple except unchanged TOAST ones (under REPLICA IDENTITY
//!     FULL, where every column is a key column, every sent column);
//!   - delete and truncate: empty.
//! * A change that does not fit its relation (another relation id, another column count) or
//!   holds a value understudy cannot carry (binary format, text that is not UTF-8) is a
//!   [`TranslateError`], never a guess.
//!
//! PostgreSQL behaviour relied on (PG 15, see `decode`): the tuple of a change lists the
//! relation's published columns in order; an Update carries an old tuple only under REPLICA
//! IDENTITY FULL or when the key changed (or holds an out-of-line value); understudy requests
//! text-format values; commit times are µs since 2000-01-01 UTC
//! (<https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{
    pg_time_to_unix_micros, Begin, Column, Datum, Message, OldTuple, RelId, Relation,
    ReplicaIdentity, Truncate, Tuple, Xid,
};
use crate::lsn::Lsn;

mod row;
mod rules;
#[cfg(test)]
mod tests;
mod time;

pub use row::{is_unchanged_toast, unchanged_toast, Row};
pub use rules::{Rules, RulesError, ValueType};
pub use time::format_unix_micros;

/// The operation a [`Mutation`] reports; serialised in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    /// The lower-case name, as in JSON and in the rules file.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }

    /// The past tense used in default kinds: `<entity>.inserted` and so on.
    pub fn past_tense(self) -> &'static str {
        match self {
            Op::Insert => "inserted",
            Op::Update => "updated",
            Op::Delete => "deleted",
            Op::Truncate => "truncated",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One NMS mutation message: a row change (or one table of a TRUNCATE), named for the NMS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    /// The LSN of the source transaction's commit record.
    pub commit_lsn: Lsn,
    /// The WAL position of this change (the XLogData `wal_start` it arrived in).
    pub lsn: Lsn,
    pub xid: u32,
    /// Commit time, RFC 3339 UTC with milliseconds: `2026-11-26T02:40:00.123Z`.
    pub commit_time: String,
    /// 1-based position within the source transaction.
    pub seq: u32,
    pub kind: String,
    pub entity: String,
    pub op: Op,
    /// `schema.table`, unquoted.
    pub table: String,
    /// The replica identity columns and their values (empty for truncate).
    pub key: Row,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Row>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Row>,
    #[serde(default)]
    pub changed: Vec<String>,
    /// Truncate only: every table the TRUNCATE statement emptied, in the order sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
    /// Truncate only: `TRUNCATE ... CASCADE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<bool>,
    /// Truncate only: `TRUNCATE ... RESTART IDENTITY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_identity: Option<bool>,
}

impl Mutation {
    /// The message's identity in the stream, `commit_lsn:seq` (SSE id, idempotency key).
    pub fn id(&self) -> String {
        format!("{}:{}", self.commit_lsn, self.seq)
    }
}

/// What every message of one source transaction shares, taken from its Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnContext {
    /// The LSN of the commit record ([`Begin::final_lsn`]).
    pub commit_lsn: Lsn,
    pub xid: Xid,
    /// Commit time in µs since the Unix epoch (not PostgreSQL's 2000 epoch).
    pub commit_time_micros: i64,
}

impl From<&Begin> for TxnContext {
    fn from(b: &Begin) -> Self {
        TxnContext {
            commit_lsn: b.final_lsn,
            xid: b.xid,
            commit_time_micros: pg_time_to_unix_micros(b.commit_time),
        }
    }
}

/// A change could not be turned into a message. Definite: the same change fails again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "a change for relation {change} was translated with the shape of relation {given}; this \
         is a bug in understudy (the relation cache was not consulted by id)"
    )]
    RelationMismatch { change: RelId, given: RelId },
    #[error(
        "a change to {table} carries {got} values but the relation has {expected} published \
         columns; the relation cache is stale or the stream is corrupt, so stop and restart \
         the stream from the last applied LSN"
    )]
    Width {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error(
        "column {column} of {table} arrived in binary format; understudy requests text values, \
         so check that START_REPLICATION does not pass binary 'true'"
    )]
    Binary { table: String, column: String },
    #[error(
        "column {column} of {table} is not valid UTF-8; understudy sets client_encoding=UTF8 on \
         the replication connection, so the stream is corrupt"
    )]
    NotUtf8 { table: String, column: String },
}

/// Translates one Insert, Update or Delete of `rel` into a message; `Ok(None)` for any other
/// message (a Truncate names several relations: use [`translate_truncate`]).
///
/// `lsn` is the WAL position of the change, `seq` its 1-based position in the transaction.
pub fn translate_change(
    rel: &Relation,
    change: &Message,
    ctx: &TxnContext,
    seq: u32,
    lsn: Lsn,
    rules: &Rules,
) -> Result<Option<Mutation>, TranslateError> {
    let (op, rel_id, new, old) = match change {
        Message::Insert(i) => (Op::Insert, i.rel, Some(&i.new), None),
        Message::Update(u) => (Op::Update, u.rel, Some(&u.new), u.old.as_ref()),
        Message::Delete(d) => (Op::Delete, d.rel, None, Some(&d.old)),
        _ => return Ok(None),
    };
    if rel_id != rel.id {
        return Err(TranslateError::RelationMismatch {
            change: rel_id,
            given: rel.id,
        });
    }
    let table = rel.display_name();
    let table_rules = rules.table(&table);
    let width = |t: &Tuple| {
        if t.0.len() == rel.columns.len() {
            Ok(())
        } else {
            Err(TranslateError::Width {
                table: table.clone(),
                expected: rel.columns.len(),
                got: t.0.len(),
            })
        }
    };
    if let Some(t) = new {
        width(t)?;
    }
    if let Some(OldTuple::Key(t) | OldTuple::Full(t)) = old {
        width(t)?;
    }

    let row = |t: &Tuple, keep: &dyn Fn(&Column) -> bool| -> Result<Row, TranslateError> {
        let mut row = Row::with_capacity(t.0.len());
        for (col, datum) in rel.columns.iter().zip(&t.0) {
            if !keep(col) {
                continue;
            }
            let ty = table_rules.map_or(ValueType::Text, |t| t.value_type(&col.name));
            row.push(col.name.clone(), value(datum, ty, &table, &col.name)?);
        }
        Ok(row)
    };
    let all = |_: &Column| true;
    let identity = |c: &Column| c.is_key;
    let message_key = |c: &Column| {
        table_rules
            .and_then(|t| t.in_key(&c.name))
            .unwrap_or(c.is_key)
    };
    let key = match (new, old) {
        (Some(t), _) | (None, Some(OldTuple::Full(t))) => row(t, &message_key)?,
        (None, Some(OldTuple::Key(t))) => row(t, &identity)?,
        (None, None) => Row::default(),
    };
    let new_row = new.map(|t| row(t, &all)).transpose()?;
    let old_row = match old {
        Some(OldTuple::Key(t)) => Some(row(t, &identity)?),
        Some(OldTuple::Full(t)) => Some(row(t, &all)?),
        None => None,
    };
    let changed = changed_columns(rel, op, new, old);
    let facts = rules::Facts {
        rel,
        new,
        old,
        changed: &changed,
    };
    let (entity, kind) = rules::classify(table_rules, &table, op, &facts);
    Ok(Some(Mutation {
        commit_lsn: ctx.commit_lsn,
        lsn,
        xid: ctx.xid.0,
        commit_time: format_unix_micros(ctx.commit_time_micros),
        seq,
        kind,
        entity,
        op,
        table,
        key,
        new: new_row,
        old: old_row,
        changed: changed
            .iter()
            .map(|&i| rel.columns[i].name.clone())
            .collect(),
        truncated: Vec::new(),
        cascade: None,
        restart_identity: None,
    }))
}

/// Translates a Truncate into one message per truncated table, in the order sent, numbered
/// `first_seq`, `first_seq + 1`, …; `rels` are the relations of `t.rels`, in that order.
pub fn translate_truncate(
    rels: &[&Relation],
    t: &Truncate,
    ctx: &TxnContext,
    first_seq: u32,
    lsn: Lsn,
    rules: &Rules,
) -> Result<Vec<Mutation>, TranslateError> {
    for (i, &id) in t.rels.iter().enumerate() {
        let given = rels.get(i).map(|r| r.id).unwrap_or(RelId(0));
        if given != id {
            return Err(TranslateError::RelationMismatch { change: id, given });
        }
    }
    let names: Vec<String> = rels.iter().map(|r| r.display_name()).collect();
    let commit_time = format_unix_micros(ctx.commit_time_micros);
    let mut out = Vec::with_capacity(rels.len());
    for (i, (rel, table)) in rels.iter().zip(&names).enumerate() {
        let facts = rules::Facts {
            rel,
            new: None,
            old: None,
            changed: &[],
        };
        let (entity, kind) = rules::classify(rules.table(table), table, Op::Truncate, &facts);
        out.push(Mutation {
            commit_lsn: ctx.commit_lsn,
            lsn,
            xid: ctx.xid.0,
            commit_time: commit_time.clone(),
            seq: first_seq.saturating_add(i as u32),
            kind,
            entity,
            op: Op::Truncate,
            table: table.clone(),
            key: Row::default(),
            new: None,
            old: None,
            changed: Vec::new(),
            truncated: names.clone(),
            cascade: Some(t.cascade),
            restart_identity: Some(t.restart_identity),
        });
    }
    Ok(out)
}

/// One column value as JSON; see the module invariants.
fn value(datum: &Datum, ty: ValueType, table: &str, column: &str) -> Result<Value, TranslateError> {
    let text = match datum {
        Datum::Null => return Ok(Value::Null),
        Datum::UnchangedToast => return Ok(unchanged_toast()),
        Datum::Binary(_) => {
            return Err(TranslateError::Binary {
                table: table.into(),
                column: column.into(),
            })
        }
        Datum::Text(_) => datum.as_text().ok_or_else(|| TranslateError::NotUtf8 {
            table: table.into(),
            column: column.into(),
        })?,
    };
    Ok(ty.convert(text))
}

/// The indexes of the changed columns, in relation order; see the module invariants.
fn changed_columns(
    rel: &Relation,
    op: Op,
    new: Option<&Tuple>,
    old: Option<&OldTuple>,
) -> Vec<usize> {
    let Some(new) = new else {
        return Vec::new();
    };
    let sent = |d: &Datum| !matches!(d, Datum::UnchangedToast);
    let full_identity = rel.replica_identity == ReplicaIdentity::Full;
    rel.columns
        .iter()
        .zip(&new.0)
        .enumerate()
        .filter(|(i, (col, d))| match (op, old) {
            (Op::Insert, _) => !matches!(d, Datum::Null),
            (_, Some(OldTuple::Full(o))) => sent(d) && o.0.get(*i) != Some(*d),
            (_, Some(OldTuple::Key(o))) if col.is_key => sent(d) && o.0.get(*i) != Some(*d),
            (_, Some(OldTuple::Key(_))) => sent(d),
            (_, None) => sent(d) && (full_identity || !col.is_key),
        })
        .map(|(i, _)| i)
        .collect()
}
