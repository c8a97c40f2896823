//! Divergence: what an old primary committed that the new primary never applied (guarantee 7).
//!
//! What it owns: reading those transactions from the old primary's logical slot without
//! consuming it ([`find`]), and saving them, before the old primary is copied again, as NMS
//! mutation messages and as SQL that would replay them ([`write`]).
//!
//! The rule is the applier's: a source transaction was applied iff its commit LSN is below the
//! applied position. So a transaction of the old primary diverges iff its commit LSN is at or
//! after `after` (the new primary's `source_applied_lsn`) and it changed at least one row
//! outside schema `understudy`, whose tables hold per-node state and are ignored entirely.
//!
//! Invariants:
//! * [`find`] never moves the slot: it reads with `pg_logical_slot_peek_binary_changes`, so a
//!   second call returns the same transactions, and the slot can still be read by a follower.
//! * Transactions come in commit order (the order logical decoding emits them); in each, the
//!   messages are numbered `seq` 1, 2, … over the changes outside `understudy` (a TRUNCATE gives
//!   one message per table), exactly as `follow` and `replay` would number them with no rules.
//! * The SQL of a change is built from pgoutput's text values only. Literals are
//!   single-quoted with quotes doubled (`standard_conforming_strings` on) and carry no cast:
//!   PostgreSQL coerces them to the column's type. Unchanged TOAST values are left out of `SET`.
//!   Rows are found as `apply` finds them: by the replica identity key (the old key when the
//!   update changed it); under REPLICA IDENTITY FULL by the whole old row, compared as text,
//!   one row only (`ctid = (SELECT ctid … LIMIT 1)`), as PostgreSQL's apply worker does.
//! * [`write`] makes the directory appear whole or not at all: the files are written and
//!   fsynced in a hidden directory that is then renamed into place, and the parent fsynced.
//!
//! PostgreSQL behaviour relied on (PG 15,
//! <https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-REPLICATION>): peeking
//! starts at the slot's `confirmed_flush_lsn` (which must be at or before `after`: the new
//! primary acknowledges only what it applied; a slot confirmed past `after` is an error, since
//! what committed in between can no longer be read) and decodes every complete transaction up to the end of
//! WAL; the Relation messages describing a table precede its first change in that session, so
//! they are seen even when sent for an earlier transaction. Peeking needs the slot idle (SQLSTATE
//! 55006 otherwise), in this database, with the pgoutput plugin. Output functions run in the
//! peeking session, so the session's DateStyle, IntervalStyle, TimeZone and extra_float_digits
//! are pinned (as `follow` pins them on its walsender) for the read, and repeated at the head
//! of `changes.sql`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::Epoch;
use crate::decode::{
    self, pg_time_to_unix_micros, Datum, DecodeError, Message, OldTuple, RelId, Relation,
    RelationCache, ReplicaIdentity, Truncate, Tuple,
};
use crate::ident::{quote_ident, quote_literal};
use crate::lsn::Lsn;
use crate::translate::{
    format_unix_micros, translate_change, translate_truncate, Mutation, Rules, TranslateError,
    TxnContext,
};

/// One transaction of the old primary that the new primary never applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DivergentTxn {
    pub xid: u32,
    /// The LSN of its commit record (on the old primary).
    pub commit_lsn: Lsn,
    /// The LSN just past its commit record.
    pub end_lsn: Lsn,
    /// Commit time, RFC 3339 UTC with milliseconds, as in [`Mutation::commit_time`].
    pub commit_time: String,
    /// Its row changes outside `understudy`; a TRUNCATE counts once per table.
    pub changes: usize,
    /// One mutation message per row change (per table for a TRUNCATE), in order.
    pub messages: Vec<Mutation>,
    /// The statements that replay it, in order, without BEGIN/COMMIT; an UPDATE that writes
    /// no column (only unchanged TOAST values) has none, so there may be fewer than `changes`.
    pub sql: Vec<String>,
}

/// Everything the old primary committed at or after `after`, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub after: Lsn,
    pub transactions: Vec<DivergentTxn>,
}

impl Divergence {
    /// Nothing diverged: the old primary committed nothing the new one lacks.
    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    /// The number of row changes (messages) over all transactions.
    pub fn rows(&self) -> usize {
        self.transactions.iter().map(|t| t.changes).sum()
    }
}

/// Why the divergence could not be read. Definite: retrying changes nothing until someone acts.
#[derive(Debug, thiserror::Error)]
pub enum DivergenceError {
    #[error(
        "replication slot {slot} does not exist on the old primary, so what it committed at or \
         after {after} cannot be determined: nothing can read that WAL any more. Compare the \
         old primary's tables with the new primary's before copying it again, or copy it again \
         accepting that its writes after {after} are lost"
    )]
    SlotMissing { slot: String, after: Lsn },
    #[error(
        "replication slot {slot} on the old primary has been invalidated (wal_status 'lost': \
         the WAL it needed was removed, see max_slot_wal_keep_size), so what it committed at or \
         after {after} cannot be determined. Compare the old primary's tables with the new \
         primary's before copying it again, or copy it again accepting that its writes after \
         {after} are lost"
    )]
    SlotLost { slot: String, after: Lsn },
    #[error(
        "replication slot {slot} on the old primary has confirmed {confirmed}, past {after} \
         where the new primary's apply stopped, so transactions committed in between can no \
         longer be read from it and the divergence cannot be determined. Compare the old \
         primary's tables with the new primary's before copying it again, or copy it again \
         accepting that its writes after {after} may be lost"
    )]
    SlotPast {
        slot: String,
        confirmed: Lsn,
        after: Lsn,
    },
    #[error(
        "replication slot {slot} on the old primary is in use by process {pid} (a walsender \
         streaming from it), and an active slot cannot be read: stop the follower streaming \
         from it, or run SELECT pg_terminate_backend({pid}) on the old primary, and try again"
    )]
    SlotActive { slot: String, pid: i32 },
    #[error(
        "replication slot {slot} on the old primary is a {slot_type} slot with plugin {plugin}, \
         not a logical pgoutput slot, so it is not the slot the new primary followed: check \
         slot_name in the new primary's understudy.source"
    )]
    NotPgoutput {
        slot: String,
        slot_type: String,
        plugin: String,
    },
    #[error(
        "replication slot {slot} belongs to database {slot_database}, but the connection to \
         the old primary is to database {connected}: connect to {slot_database}"
    )]
    OtherDatabase {
        slot: String,
        slot_database: String,
        connected: String,
    },
    #[error(
        "the change at {lsn} (transaction {xid}) names relation {rel}, which no Relation message \
         described since the slot's confirmed position; the divergence cannot be read from this \
         slot, so compare the old primary's tables with the new primary's by hand"
    )]
    UnknownRelation { rel: RelId, lsn: Lsn, xid: String },
    #[error("while decoding the message at {lsn} of slot {slot}: {source}")]
    Decode {
        slot: String,
        lsn: Lsn,
        source: DecodeError,
    },
    #[error("while translating the change at {lsn}: {source}")]
    Translate { lsn: Lsn, source: TranslateError },
    #[error("cannot write the change at {lsn} to {table} as SQL: {problem}")]
    Sql {
        lsn: Lsn,
        table: String,
        problem: String,
    },
    #[error(
        "the slot's stream is out of order at {lsn}: {problem}; this is a bug in understudy or \
         a corrupt stream"
    )]
    Stream { lsn: Lsn, problem: String },
}

/// Settings pinned while peeking and at the head of `changes.sql`: the text form of values
/// depends on them. The same as `follow` pins on its walsender, plus `bytea_output`.
const PINNED: &[(&str, &str)] = &[
    ("datestyle", "ISO"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

const PEEK: &str = "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes(\
     $1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)";

/// Reads, without consuming, every transaction on `old_primary`'s slot that commits at or after
/// `after` and changes a row outside `understudy`.
///
/// Runs in a transaction of its own on `old_primary` (BEGIN … COMMIT, settings pinned with
/// `SET LOCAL`); if the returned future is dropped half-way, that session is left inside it.
pub async fn find(
    old_primary: &Client,
    slot: &str,
    publication: &str,
    after: Lsn,
) -> Result<Divergence> {
    check_slot(old_primary, slot, after).await?;
    let mut begin = String::from("BEGIN;");
    for (name, value) in PINNED {
        begin.push_str(&format!(" SET LOCAL {name} = {};", quote_literal(value)));
    }
    old_primary
        .batch_execute(&begin)
        .await
        .context("while starting the transaction that reads the old primary's slot")?;
    let read = peek(old_primary, slot, publication, after).await;
    let end = old_primary
        .batch_execute(if read.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    match read {
        Ok(d) => {
            end.context("while ending the transaction that read the old primary's slot")?;
            Ok(d)
        }
        Err(e) => {
            let code = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.code());
            if code == Some(&SqlState::OBJECT_IN_USE) || code == Some(&SqlState::UNDEFINED_OBJECT) {
                // The slot went away or became busy after the check: say which, plainly.
                check_slot(old_primary, slot, after).await?;
            }
            Err(e)
        }
    }
}

/// The slot exists, is idle, is a pgoutput slot of this database and still has its WAL.
async fn check_slot(client: &Client, slot: &str, after: Lsn) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT slot_type, coalesce(plugin::text, ''), coalesce(database::text, ''), \
                    active_pid, coalesce(wal_status, ''), current_database()::text, \
                    confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context("while looking up the slot on the old primary")?;
    let slot = slot.to_string();
    let Some(row) = row else {
        return Err(DivergenceError::SlotMissing { slot, after }.into());
    };
    let (slot_type, plugin): (String, String) = (row.get(0), row.get(1));
    let (slot_database, connected): (String, String) = (row.get(2), row.get(5));
    if let Some(pid) = row.get::<_, Option<i32>>(3) {
        return Err(DivergenceError::SlotActive { slot, pid }.into());
    }
    if slot_type != "logical" || plugin != "pgoutput" {
        let plugin = if plugin.is_empty() {
            "none".into()
        } else {
            plugin
        };
        return Err(DivergenceError::NotPgoutput {
            slot,
            slot_type,
            plugin,
        }
        .into());
    }
    if slot_database != connected {
        return Err(DivergenceError::OtherDatabase {
            slot,
            slot_database,
            connected,
        }
        .into());
    }
    if row.get::<_, String>(4) == "lost" {
        return Err(DivergenceError::SlotLost { slot, after }.into());
    }
    // Peeking starts at the confirmed position: anything committed before it is gone.
    if let Some(confirmed) = row.get::<_, Option<&str>>(6) {
        let confirmed: Lsn = confirmed
            .parse()
            .context("while reading the slot's position")?;
        if confirmed > after {
            return Err(DivergenceError::SlotPast {
                slot,
                confirmed,
                after,
            }
            .into());
        }
    }
    Ok(())
}

/// Streams the slot's messages through a [`Reader`].
async fn peek(client: &Client, slot: &str, publication: &str, after: Lsn) -> Result<Divergence> {
    // pgoutput splits publication_names as a list of identifiers: quote the one name.
    let publications = quote_ident(publication);
    let params: [&(dyn ToSql + Sync); 2] = [&slot, &publications];
    let rows = client
        .query_raw(PEEK, params)
        .await
        .with_context(|| format!("while peeking at replication slot {slot} on the old primary"))?;
    futures_util::pin_mut!(rows);
    let mut reader = Reader::new(slot, after);
    while let Some(row) = rows
        .try_next()
        .await
        .with_context(|| format!("while peeking at replication slot {slot} on the old primary"))?
    {
        let lsn: &str = row.get(0);
        let lsn: Lsn = lsn.parse().context("while reading the slot's LSNs")?;
        let xid: &str = row.get(1);
        let data = Bytes::copy_from_slice(row.get::<_, &[u8]>(2));
        reader.message(lsn, xid, &data)?;
    }
    reader.finish()
}

/// The transaction being read.
struct Open {
    ctx: TxnContext,
    /// Commits at or after `after`: its changes are kept.
    diverged: bool,
    seq: u32,
    messages: Vec<Mutation>,
    sql: Vec<String>,
}

/// Turns the slot's messages, one at a time, into divergent transactions.
struct Reader {
    slot: String,
    after: Lsn,
    relations: RelationCache,
    rules: Rules,
    open: Option<Open>,
    done: Vec<DivergentTxn>,
}

impl Reader {
    fn new(slot: &str, after: Lsn) -> Self {
        Reader {
            slot: slot.to_string(),
            after,
            relations: RelationCache::new(),
            rules: Rules::none(),
            open: None,
            done: Vec::new(),
        }
    }

    fn message(&mut self, lsn: Lsn, xid: &str, data: &Bytes) -> Result<(), DivergenceError> {
        let msg = decode::parse(data).map_err(|source| DivergenceError::Decode {
            slot: self.slot.clone(),
            lsn,
            source,
        })?;
        let stream = |problem: &str| DivergenceError::Stream {
            lsn,
            problem: problem.to_string(),
        };
        match msg {
            Message::Relation(r) => {
                self.relations.insert(r);
            }
            Message::Begin(b) => {
                if self.open.is_some() {
                    return Err(stream("a Begin inside a transaction"));
                }
                self.open = Some(Open {
                    ctx: TxnContext::from(&b),
                    diverged: b.final_lsn >= self.after,
                    seq: 0,
                    messages: Vec::new(),
                    sql: Vec::new(),
                });
            }
            Message::Commit(c) => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| stream("a Commit outside a transaction"))?;
                if open.diverged && !open.messages.is_empty() {
                    self.done.push(DivergentTxn {
                        xid: open.ctx.xid.0,
                        commit_lsn: c.commit_lsn,
                        end_lsn: c.end_lsn,
                        commit_time: format_unix_micros(pg_time_to_unix_micros(c.commit_time)),
                        changes: open.messages.len(),
                        messages: open.messages,
                        sql: open.sql,
                    });
                }
            }
            Message::Insert(_) | Message::Update(_) | Message::Delete(_) => {
                let Some(open) = self.open.as_mut() else {
                    return Err(stream("a row change outside a transaction"));
                };
                if !open.diverged {
                    return Ok(());
                }
                let id = match &msg {
                    Message::Insert(i) => i.rel,
                    Message::Update(u) => u.rel,
                    Message::Delete(d) => d.rel,
                    _ => unreachable!("matched a row change above"),
                };
                let rel = self
                    .relations
                    .get(id)
                    .ok_or_else(|| unknown(id, lsn, xid))?;
                if rel.schema() == crate::state::SCHEMA {
                    return Ok(());
                }
                let seq = open.seq.saturating_add(1);
                let mutation = translate_change(rel, &msg, &open.ctx, seq, lsn, &self.rules)
                    .map_err(|source| DivergenceError::Translate { lsn, source })?;
                let sql = change_sql(rel, &msg).map_err(|problem| DivergenceError::Sql {
                    lsn,
                    table: rel.display_name(),
                    problem,
                })?;
                open.seq = seq;
                open.messages.extend(mutation);
                open.sql.extend(sql);
            }
            Message::Truncate(t) => {
                let Some(open) = self.open.as_mut() else {
                    return Err(stream("a Truncate outside a transaction"));
                };
                if !open.diverged {
                    return Ok(());
                }
                let mut rels = Vec::with_capacity(t.rels.len());
                for &id in &t.rels {
                    let rel = self
                        .relations
                        .get(id)
                        .ok_or_else(|| unknown(id, lsn, xid))?;
                    if rel.schema() != crate::state::SCHEMA {
                        rels.push(rel);
                    }
                }
                if rels.is_empty() {
                    return Ok(());
                }
                let kept = Truncate {
                    cascade: t.cascade,
                    restart_identity: t.restart_identity,
                    rels: rels.iter().map(|r| r.id).collect(),
                };
                let first = open.seq.saturating_add(1);
                let ms = translate_truncate(&rels, &kept, &open.ctx, first, lsn, &self.rules)
                    .map_err(|source| DivergenceError::Translate { lsn, source })?;
                open.seq = open.seq.saturating_add(rels.len() as u32);
                open.messages.extend(ms);
                open.sql.push(truncate_sql(&rels, &kept));
            }
            Message::Origin(_) | Message::Type(_) | Message::LogicalMessage(_) => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<Divergence> {
        if let Some(open) = self.open {
            return Err(DivergenceError::Stream {
                lsn: open.ctx.commit_lsn,
                problem: format!("transaction {} has no Commit", open.ctx.xid),
            }
            .into());
        }
        Ok(Divergence {
            after: self.after,
            transactions: self.done,
        })
    }
}

fn unknown(rel: RelId, lsn: Lsn, xid: &str) -> DivergenceError {
    DivergenceError::UnknownRelation {
        rel,
        lsn,
        xid: xid.to_string(),
    }
}

/// A value as an SQL literal; `None` for an unchanged TOAST value (not sent).
fn literal(d: &Datum, column: &str) -> Result<Option<String>, String> {
    match d {
        Datum::Null => Ok(Some("NULL".into())),
        Datum::UnchangedToast => Ok(None),
        Datum::Text(_) => d
            .as_text()
            .map(|t| Some(quote_literal(t)))
            .ok_or_else(|| format!("column {column} is not valid UTF-8")),
        Datum::Binary(_) => Err(format!("column {column} arrived in binary format")),
    }
}

/// The statement that replays one Insert, Update or Delete of `rel`; `None` when the change
/// writes nothing (an update of unchanged TOAST values only).
fn change_sql(rel: &Relation, change: &Message) -> Result<Option<String>, String> {
    let table = rel.qualified_name();
    let column = |i: usize| rel.columns.get(i).map_or("?", |c| c.name.as_str());
    match change {
        Message::Insert(i) => {
            let mut cols = Vec::with_capacity(i.new.0.len());
            let mut values = Vec::with_capacity(i.new.0.len());
            for (n, d) in i.new.0.iter().enumerate() {
                let value = literal(d, column(n))?
                    .ok_or_else(|| format!("column {} of a new row was not sent", column(n)))?;
                cols.push(quote_ident(column(n)));
                values.push(value);
            }
            // OVERRIDING SYSTEM VALUE: the old primary's value wins over GENERATED ALWAYS.
            Ok(Some(format!(
                "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({});",
                cols.join(", "),
                values.join(", ")
            )))
        }
        Message::Update(u) => {
            let full = rel.replica_identity == ReplicaIdentity::Full;
            let (identity, old) = match (&u.old, full) {
                (Some(OldTuple::Full(o)), _) => (full_predicate(rel, o)?, Some(o)),
                (Some(OldTuple::Key(o)), false) => (key_predicate(rel, o)?, Some(o)),
                (None, false) => (key_predicate(rel, &u.new)?, None),
                (_, true) => {
                    return Err(
                        "an update under REPLICA IDENTITY FULL came without its old row".into(),
                    )
                }
            };
            let mut set = Vec::new();
            for (n, d) in u.new.0.iter().enumerate() {
                let Some(value) = literal(d, column(n))? else {
                    continue;
                };
                let is_key = rel.columns.get(n).is_some_and(|c| c.is_key);
                let write = match (&u.old, old) {
                    // The whole old row: write what differs.
                    (Some(OldTuple::Full(_)), Some(o)) => o.0.get(n) != Some(d),
                    // The old key: key columns that changed, every other column sent.
                    (_, Some(o)) => !is_key || o.0.get(n) != Some(d),
                    // No old tuple: the key did not change.
                    (_, None) => !is_key,
                };
                if write {
                    set.push(format!("{} = {value}", quote_ident(column(n))));
                }
            }
            if set.is_empty() {
                return Ok(None);
            }
            Ok(Some(format!(
                "UPDATE {table} SET {} WHERE {identity};",
                set.join(", ")
            )))
        }
        Message::Delete(d) => {
            let identity = match &d.old {
                OldTuple::Full(o) => full_predicate(rel, o)?,
                OldTuple::Key(o) => key_predicate(rel, o)?,
            };
            Ok(Some(format!("DELETE FROM {table} WHERE {identity};")))
        }
        _ => Ok(None),
    }
}

/// `"k1" = 'v1' AND …` over the replica identity key columns of `t`.
fn key_predicate(rel: &Relation, t: &Tuple) -> Result<String, String> {
    let mut terms = Vec::new();
    for (col, d) in rel.columns.iter().zip(&t.0).filter(|(c, _)| c.is_key) {
        let name = quote_ident(&col.name);
        match literal(d, &col.name)? {
            None => return Err(format!("key column {} was not sent", col.name)),
            Some(v) if v == "NULL" => terms.push(format!("{name} IS NULL")),
            Some(v) => terms.push(format!("{name} = {v}")),
        }
    }
    if terms.is_empty() {
        return Err(format!(
            "{} has no replica identity columns to find the row by",
            rel.display_name()
        ));
    }
    Ok(terms.join(" AND "))
}

/// One row equal to the whole old row `t`, each column compared as text (json and the
/// geometric types have no equality operator; the text forms agree under the pinned settings).
fn full_predicate(rel: &Relation, t: &Tuple) -> Result<String, String> {
    let mut terms = Vec::new();
    for (col, d) in rel.columns.iter().zip(&t.0) {
        let name = quote_ident(&col.name);
        match literal(d, &col.name)? {
            None => {} // an out-of-line old value that was not sent: cannot compare on it
            Some(v) if v == "NULL" => terms.push(format!("{name} IS NULL")),
            Some(v) => terms.push(format!("{name}::text IS NOT DISTINCT FROM {v}")),
        }
    }
    let predicate = if terms.is_empty() {
        "true".to_string()
    } else {
        terms.join(" AND ")
    };
    let table = rel.qualified_name();
    Ok(format!(
        "ctid = (SELECT ctid FROM {table} WHERE {predicate} LIMIT 1)"
    ))
}

/// `TRUNCATE t1, t2 [RESTART IDENTITY] [CASCADE];`, as `apply` runs it: pgoutput lists every
/// table the statement emptied, partitions and cascaded tables included.
fn truncate_sql(rels: &[&Relation], t: &Truncate) -> String {
    let names: Vec<String> = rels.iter().map(|r| r.qualified_name()).collect();
    format!(
        "TRUNCATE {}{}{};",
        names.join(", "),
        if t.restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if t.cascade { " CASCADE" } else { "" }
    )
}

/// Writes `d` under `dir` into a new directory `divergence-<node>-epoch<epoch>-<UTC
/// yyyymmddThhmmssZ>/` holding `messages.jsonl` (one message per line, in commit order, in the
/// JSON form every sink emits), `changes.sql` (each transaction as a comment, BEGIN, its
/// statements, COMMIT) and `summary.json`. The files and directories are fsynced, and the
/// directory appears only once complete. Returns its path.
pub fn write(dir: &Path, node: &str, epoch: Epoch, d: &Divergence) -> Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX));
    let created_at = format_unix_micros(now);
    // 2026-11-26T02:40:00.123Z -> 20261126T024000Z
    let stamp: String = created_at
        .get(..19)
        .unwrap_or(&created_at)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let node_part: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = format!("divergence-{node_part}-epoch{epoch}-{stamp}Z");
    fs::create_dir_all(dir)
        .with_context(|| format!("while creating the divergence directory {}", dir.display()))?;
    let mut name = base.clone();
    let mut n = 1;
    while dir.join(&name).exists() || dir.join(format!(".{name}.partial")).exists() {
        n += 1;
        name = format!("{base}-{n}");
    }
    let target = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    fs::create_dir(&partial).with_context(|| format!("while creating {}", partial.display()))?;
    let written = write_files(&partial, node, epoch, d, &created_at).and_then(|()| {
        sync_dir(&partial)?;
        fs::rename(&partial, &target).with_context(|| {
            format!("while moving {} to {}", partial.display(), target.display())
        })?;
        sync_dir(dir)
    });
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(target)
}

fn write_files(
    at: &Path,
    node: &str,
    epoch: Epoch,
    d: &Divergence,
    created_at: &str,
) -> Result<()> {
    write_file(&at.join("messages.jsonl"), |out| {
        for m in d.transactions.iter().flat_map(|t| &t.messages) {
            writeln!(out, "{}", crate::messages::to_json(m))?;
        }
        Ok(())
    })?;
    write_file(&at.join("changes.sql"), |out| {
        // A comment ends at a line break: keep the node's name on one line.
        let node_line: String = node.chars().filter(|c| !c.is_control()).collect();
        writeln!(
            out,
            "-- Transactions that node {node_line} committed at or after {} and that the new \
             primary never applied\n-- (epoch {epoch}, saved {created_at}). Values are in \
             the text form of these settings:",
            d.after
        )?;
        for (name, value) in PINNED {
            writeln!(out, "SET {name} = {};", quote_literal(value))?;
        }
        writeln!(out, "SET standard_conforming_strings = on;")?;
        for t in &d.transactions {
            writeln!(
                out,
                "\n-- xid {}, commit LSN {}, committed {}, {} row change(s)\nBEGIN;",
                t.xid, t.commit_lsn, t.commit_time, t.changes
            )?;
            for s in &t.sql {
                writeln!(out, "{s}")?;
            }
            writeln!(out, "COMMIT;")?;
        }
        Ok(())
    })?;
    let summary = serde_json::json!({
        "node": node,
        "epoch": epoch.0,
        "after": d.after,
        "transactions": d.transactions.len(),
        "rows": d.rows(),
        "first_commit_lsn": d.transactions.first().map(|t| t.commit_lsn),
        "last_commit_lsn": d.transactions.last().map(|t| t.commit_lsn),
        "created_at": created_at,
    });
    write_file(&at.join("summary.json"), |out| {
        serde_json::to_writer_pretty(&mut *out, &summary)?;
        writeln!(out)?;
        Ok(())
    })
}

/// Creates `path`, fills it with `fill`, and fsyncs it.
fn write_file(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let what = || format!("while writing {}", path.display());
    let file = File::create(path).with_context(what)?;
    let mut out = BufWriter::new(file);
    fill(&mut out).with_context(what)?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(what)?;
    file.sync_all().with_context(what)
}

/// Makes the entries of directory `path` durable.
fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("while syncing directory {}", path.display()))
}
