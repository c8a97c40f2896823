//! The in-memory state of the example NMS (`sql/nms_example.sql`), kept current by NMS mutation
//! messages alone.
//!
//! What it owns: [`NmsModel`], what an NMS holds in memory (network elements, interfaces' oper
//! state, active alarms with their counts by severity and by element); [`MutationJson`], a
//! mirror of the mutation message's JSON form (DESIGN.md, "The NMS mutation message"), so this
//! file does not depend on the understudy library; and [`LiveModel`], the consumer's bookkeeping
//! (the LSN the model was loaded at, the last message applied, duplicates dropped).
//!
//! No I/O: rows are passed to [`NmsModel::load`] by the caller, which reads them with the
//! `LOAD_*` queries below in one REPEATABLE READ transaction on the standby, together with
//! `understudy.progress.applied_lsn` (the LSN to stream from). The file compiles both as a
//! module of the example and of the library (`#[path = "../examples/nms_memory/model.rs"]`),
//! so it uses std, serde and serde_json only.
//!
//! Invariants:
//! * An active alarm is one whose `cleared_at` is null; cleared alarms are not kept.
//! * `by_severity` and `by_element` always equal the counts recomputed from the active alarms
//!   ([`NmsModel::verify`]); an entry that drops to zero is removed, so a model fed by the stream
//!   compares equal (`==`) to one loaded fresh.
//! * [`NmsModel::apply`] is all-or-nothing: when it fails the model is unchanged, and the caller
//!   should reload it (the message needed a value the model did not have).
//! * Values are PostgreSQL's text form as JSON strings, or typed by the translation rules
//!   (integers as JSON numbers, booleans as JSON booleans): both are accepted. An unchanged
//!   TOAST value (`{"unchanged_toast": true}`) or a column absent from the message keeps the
//!   value the model has.
//! * Timestamps are kept as text. The stream's text form is the walsender's (DateStyle ISO,
//!   TimeZone UTC), so loads must run [`LOAD_SESSION_SQL`] first to get the same form.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The tables the model follows, as messages name them (`table`).
pub const ELEMENT_TABLE: &str = "nms.network_element";
pub const INTERFACE_TABLE: &str = "nms.interface";
pub const ALARM_TABLE: &str = "nms.alarm";

/// Run first inside the load transaction: values' text form as the stream sends them.
pub const LOAD_SESSION_SQL: &str = "SET LOCAL datestyle = ISO; SET LOCAL timezone = UTC; \
     SET LOCAL intervalstyle = postgres; SET LOCAL extra_float_digits = 3";
/// The standby's applied position: every transaction that committed before it is in the data.
pub const LOAD_APPLIED_LSN_SQL: &str =
    "SELECT applied_lsn::text FROM understudy.progress WHERE id = 1";
/// Rows for [`ElementRow`].
pub const LOAD_ELEMENTS_SQL: &str = "SELECT id, name, status, site FROM nms.network_element";
/// Rows for [`InterfaceRow`].
pub const LOAD_INTERFACES_SQL: &str = "SELECT ne_id, if_index::bigint, oper_up FROM nms.interface";
/// Rows for [`AlarmRow`]: active alarms only.
pub const LOAD_ALARMS_SQL: &str = "SELECT id, ne_id, if_index::bigint, probable_cause, \
     severity::text, acknowledged_at IS NOT NULL, raised_at::text \
     FROM nms.alarm WHERE cleared_at IS NULL";

/// Severities from worst to least, as `nms.severity` spells them (`cleared` is never active).
pub const SEVERITIES: [&str; 5] = ["critical", "major", "minor", "warning", "indeterminate"];

/// A network element as the NMS keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    /// `up`, `down` or `degraded`.
    pub status: String,
    pub site: String,
}

/// An active alarm as the NMS keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub ne_id: i64,
    /// `None`: an equipment-level alarm.
    pub if_index: Option<i64>,
    pub probable_cause: String,
    pub severity: String,
    pub acknowledged: bool,
    /// PostgreSQL's text form, ISO and UTC: `2026-11-26 02:40:00.123456+00`.
    pub raised_at: String,
}

/// One row of [`LOAD_ELEMENTS_SQL`].
#[derive(Debug, Clone)]
pub struct ElementRow {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub site: String,
}

/// One row of [`LOAD_INTERFACES_SQL`].
#[derive(Debug, Clone, Copy)]
pub struct InterfaceRow {
    pub ne_id: i64,
    pub if_index: i64,
    pub oper_up: bool,
}

/// One row of [`LOAD_ALARMS_SQL`].
#[derive(Debug, Clone)]
pub struct AlarmRow {
    pub id: i64,
    pub ne_id: i64,
    pub if_index: Option<i64>,
    pub probable_cause: String,
    pub severity: String,
    pub acknowledged: bool,
    pub raised_at: String,
}

/// What an NMS keeps in memory. `==` compares everything, counts included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NmsModel {
    elements: BTreeMap<i64, Element>,
    /// (ne_id, if_index) → oper_up.
    interfaces: BTreeMap<(i64, i64), bool>,
    /// Active alarms only, by id.
    alarms: BTreeMap<i64, Alarm>,
    by_severity: BTreeMap<String, usize>,
    by_element: BTreeMap<i64, usize>,
}

/// How [`NmsModel::apply`] took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A table the model follows.
    Changed,
    /// A table the model does not follow (alarm history, samples, ...).
    Ignored,
}

/// A message the model cannot apply; the model is unchanged and should be reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// `commit_lsn:seq` of the message.
    pub id: String,
    pub table: String,
    pub reason: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message {} ({}) cannot be applied to the in-memory model: {}; reload the model \
             from the standby and stream from its applied LSN",
            self.id, self.table, self.reason
        )
    }
}

impl std::error::Error for ApplyError {}

/// The JSON form of an NMS mutation message, as far as a consumer needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct MutationJson {
    pub commit_lsn: String,
    #[serde(default)]
    pub lsn: String,
    #[serde(default)]
    pub xid: u64,
    #[serde(default)]
    pub commit_time: String,
    pub seq: u32,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub entity: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub op: String,
    /// `schema.table`, unquoted.
    pub table: String,
    #[serde(default)]
    pub key: Map<String, Value>,
    #[serde(default)]
    pub new: Option<Map<String, Value>>,
    #[serde(default)]
    pub old: Option<Map<String, Value>>,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub truncated: Vec<String>,
}

impl MutationJson {
    /// `commit_lsn:seq`, as in the stream's event ids.
    pub fn id_text(&self) -> String {
        format!("{}:{}", self.commit_lsn, self.seq)
    }

    /// The message's position, or `None` when `commit_lsn` is not an LSN.
    pub fn id(&self) -> Option<MessageId> {
        Some(MessageId {
            commit_lsn: parse_lsn(&self.commit_lsn)?,
            seq: self.seq,
        })
    }

    /// Whether the new row carries an unchanged-TOAST marker.
    pub fn has_unchanged_toast(&self) -> bool {
        self.new
            .as_ref()
            .is_some_and(|row| row.values().any(is_unchanged_toast))
    }

    fn error(&self, reason: impl Into<String>) -> ApplyError {
        ApplyError {
            id: self.id_text(),
            table: self.table.clone(),
            reason: reason.into(),
        }
    }
}

/// A message's place in the stream: source commit order, then order within the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    pub commit_lsn: u64,
    pub seq: u32,
}

impl MessageId {
    /// Parses `X/Y:seq`.
    pub fn parse(text: &str) -> Option<MessageId> {
        let (lsn, seq) = text.rsplit_once(':')?;
        Some(MessageId {
            commit_lsn: parse_lsn(lsn)?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", format_lsn(self.commit_lsn), self.seq)
    }
}

/// Parses PostgreSQL's `X/Y` LSN form.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Formats an LSN as PostgreSQL does: `X/Y`, upper-case hex.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `{"unchanged_toast": true}`: the value did not change and was not sent.
pub fn is_unchanged_toast(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.get("unchanged_toast") == Some(&Value::Bool(true)))
}

/// A column of a message's row.
enum Col<'a> {
    /// Not in the row, or an unchanged-TOAST marker: keep the model's value.
    Kept,
    Null,
    Val(&'a Value),
}

fn col<'a>(row: &'a Map<String, Value>, name: &str) -> Col<'a> {
    match row.get(name) {
        None => Col::Kept,
        Some(v) if is_unchanged_toast(v) => Col::Kept,
        Some(Value::Null) => Col::Null,
        Some(v) => Col::Val(v),
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "t" | "true" => Some(true),
            "f" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "t" } else { "f" }.to_string()),
        _ => None,
    }
}

/// A NOT NULL column's new value, or the model's when it was not sent.
fn required<T: Clone>(
    row: &Map<String, Value>,
    name: &str,
    current: Option<&T>,
    convert: fn(&Value) -> Option<T>,
) -> Result<T, String> {
    match col(row, name) {
        Col::Val(v) => {
            convert(v).ok_or_else(|| format!("column {name} has an unexpected value {v}"))
        }
        Col::Null => Err(format!("column {name} is null")),
        Col::Kept => current.cloned().ok_or_else(|| {
            format!(
                "column {name} was not sent (unchanged TOAST) and the model has no value for it"
            )
        }),
    }
}

/// A nullable column's new value, or the model's when it was not sent.
fn nullable<T: Clone>(
    row: &Map<String, Value>,
    name: &str,
    current: Option<&Option<T>>,
    convert: fn(&Value) -> Option<T>,
) -> Result<Option<T>, String> {
    match col(row, name) {
        Col::Val(v) => convert(v)
            .map(Some)
            .ok_or_else(|| format!("column {name} has an unexpected value {v}")),
        Col::Null => Ok(None),
        Col::Kept => current.cloned().ok_or_else(|| {
            format!(
                "column {name} was not sent (unchanged TOAST) and the model has no value for it"
            )
        }),
    }
}

/// An integer key column: from `key`, else from `fallback` (the new or old row).
fn key_int(
    key: &Map<String, Value>,
    fallback: Option<&Map<String, Value>>,
    name: &str,
) -> Result<i64, String> {
    key.get(name)
        .or_else(|| fallback.and_then(|row| row.get(name)))
        .and_then(as_int)
        .ok_or_else(|| format!("the message carries no integer key column {name}"))
}

/// The row's key before and after the change: `old` holds the previous key when it changed.
fn keys<K>(
    m: &MutationJson,
    get: impl Fn(&Map<String, Value>, Option<&Map<String, Value>>) -> Result<K, String>,
) -> Result<(K, K), String> {
    let after = get(&m.key, m.new.as_ref().or(m.old.as_ref()))?;
    let before = match &m.old {
        Some(old) => get(old, None)?,
        None => get(&m.key, m.new.as_ref())?,
    };
    Ok((before, after))
}

impl NmsModel {
    /// An empty model.
    pub fn new() -> NmsModel {
        NmsModel::default()
    }

    /// The model from rows read with the `LOAD_*` queries (all in one snapshot).
    pub fn load(
        elements: impl IntoIterator<Item = ElementRow>,
        interfaces: impl IntoIterator<Item = InterfaceRow>,
        alarms: impl IntoIterator<Item = AlarmRow>,
    ) -> NmsModel {
        let mut model = NmsModel::default();
        for e in elements {
            model.elements.insert(
                e.id,
                Element {
                    name: e.name,
                    status: e.status,
                    site: e.site,
                },
            );
        }
        for i in interfaces {
            model.interfaces.insert((i.ne_id, i.if_index), i.oper_up);
        }
        for a in alarms {
            model.put_alarm(
                a.id,
                Alarm {
                    ne_id: a.ne_id,
                    if_index: a.if_index,
                    probable_cause: a.probable_cause,
                    severity: a.severity,
                    acknowledged: a.acknowledged,
                    raised_at: a.raised_at,
                },
            );
        }
        model
    }

    pub fn elements(&self) -> &BTreeMap<i64, Element> {
        &self.elements
    }

    /// (ne_id, if_index) → oper_up.
    pub fn interfaces(&self) -> &BTreeMap<(i64, i64), bool> {
        &self.interfaces
    }

    /// Active alarms by id.
    pub fn active_alarms(&self) -> &BTreeMap<i64, Alarm> {
        &self.alarms
    }

    /// Active alarms per severity (severities without any are absent).
    pub fn alarms_by_severity(&self) -> &BTreeMap<String, usize> {
        &self.by_severity
    }

    /// Active alarms per network element (elements without any are absent).
    pub fn alarms_by_element(&self) -> &BTreeMap<i64, usize> {
        &self.by_element
    }

    /// Applies one message. Tables the model does not follow are [`Applied::Ignored`].
    pub fn apply(&mut self, m: &MutationJson) -> Result<Applied, ApplyError> {
        let result = match m.table.as_str() {
            ELEMENT_TABLE => self.apply_element(m),
            INTERFACE_TABLE => self.apply_interface(m),
            ALARM_TABLE => self.apply_alarm(m),
            _ => return Ok(Applied::Ignored),
        };
        result.map(|()| Applied::Changed).map_err(|r| m.error(r))
    }

    fn apply_element(&mut self, m: &MutationJson) -> Result<(), String> {
        let id = |row: &Map<String, Value>, fb: Option<&Map<String, Value>>| key_int(row, fb, "id");
        match m.op.as_str() {
            "insert" | "update" => {
                let new = m
                    .new
                    .as_ref()
                    .ok_or("an insert or update without a new row")?;
                let (before, after) = keys(m, id)?;
                let current = self.elements.get(&before);
                let element = Element {
                    name: required(new, "name", current.map(|e| &e.name), as_text)?,
                    status: required(new, "status", current.map(|e| &e.status), as_text)?,
                    site: required(new, "site", current.map(|e| &e.site), as_text)?,
                };
                self.elements.remove(&before);
                self.elements.insert(after, element);
            }
            "delete" => {
                let id = key_int(&m.key, m.old.as_ref(), "id")?;
                self.elements.remove(&id);
            }
            "truncate" => self.elements.clear(),
            op => return Err(format!("unknown op {op:?}")),
        }
        Ok(())
    }

    fn apply_interface(&mut self, m: &MutationJson) -> Result<(), String> {
        let key = |row: &Map<String, Value>, fb: Option<&Map<String, Value>>| {
            Ok((key_int(row, fb, "ne_id")?, key_int(row, fb, "if_index")?))
        };
        match m.op.as_str() {
            "insert" | "update" => {
                let new = m
                    .new
                    .as_ref()
                    .ok_or("an insert or update without a new row")?;
                let (before, after) = keys(m, key)?;
                let oper_up = required(new, "oper_up", self.interfaces.get(&before), as_bool)?;
                self.interfaces.remove(&before);
                self.interfaces.insert(after, oper_up);
            }
            "delete" => {
                let k = key(&m.key, m.old.as_ref())?;
                self.interfaces.remove(&k);
            }
            "truncate" => self.interfaces.clear(),
            op => return Err(format!("unknown op {op:?}")),
        }
        Ok(())
    }

    fn apply_alarm(&mut self, m: &MutationJson) -> Result<(), String> {
        let id = |row: &Map<String, Value>, fb: Option<&Map<String, Value>>| key_int(row, fb, "id");
        match m.op.as_str() {
            "insert" | "update" => {
                let new = m
                    .new
                    .as_ref()
                    .ok_or("an insert or update without a new row")?;
                let (before, after) = keys(m, id)?;
                let current = self.alarms.get(&before);
                let active = match col(new, "cleared_at") {
                    Col::Null => true,
                    Col::Val(_) => false,
                    // Not sent: unchanged, and the model holds exactly the active alarms.
                    Col::Kept if m.op == "insert" => {
                        return Err("an insert without cleared_at".into())
                    }
                    Col::Kept => current.is_some(),
                };
                if !active {
                    self.remove_alarm(before);
                    self.remove_alarm(after);
                    return Ok(());
                }
                let acknowledged = match col(new, "acknowledged_at") {
                    Col::Null => false,
                    Col::Val(_) => true,
                    Col::Kept => current.map(|a| a.acknowledged).ok_or(
                        "column acknowledged_at was not sent (unchanged TOAST) and the model has \
                         no value for it",
                    )?,
                };
                let alarm = Alarm {
                    ne_id: required(new, "ne_id", current.map(|a| &a.ne_id), as_int)?,
                    if_index: nullable(new, "if_index", current.map(|a| &a.if_index), as_int)?,
                    probable_cause: required(
                        new,
                        "probable_cause",
                        current.map(|a| &a.probable_cause),
                        as_text,
                    )?,
                    severity: required(new, "severity", current.map(|a| &a.severity), as_text)?,
                    acknowledged,
                    raised_at: required(new, "raised_at", current.map(|a| &a.raised_at), as_text)?,
                };
                self.remove_alarm(before);
                self.remove_alarm(after);
                self.put_alarm(after, alarm);
            }
            "delete" => {
                let id = key_int(&m.key, m.old.as_ref(), "id")?;
                self.remove_alarm(id);
            }
            "truncate" => {
                self.alarms.clear();
                self.by_severity.clear();
                self.by_element.clear();
            }
            op => return Err(format!("unknown op {op:?}")),
        }
        Ok(())
    }

    fn put_alarm(&mut self, id: i64, alarm: Alarm) {
        self.remove_alarm(id);
        *self.by_severity.entry(alarm.severity.clone()).or_default() += 1;
        *self.by_element.entry(alarm.ne_id).or_default() += 1;
        self.alarms.insert(id, alarm);
    }

    fn remove_alarm(&mut self, id: i64) {
        let Some(alarm) = self.alarms.remove(&id) else {
            return;
        };
        decrement(&mut self.by_severity, &alarm.severity);
        decrement(&mut self.by_element, &alarm.ne_id);
    }

    /// Checks the counts against the active alarms.
    pub fn verify(&self) -> Result<(), String> {
        let mut by_severity: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_element: BTreeMap<i64, usize> = BTreeMap::new();
        for a in self.alarms.values() {
            *by_severity.entry(a.severity.clone()).or_default() += 1;
            *by_element.entry(a.ne_id).or_default() += 1;
        }
        if by_severity != self.by_severity {
            return Err(format!(
                "counts by severity {:?} differ from the active alarms' {by_severity:?}",
                self.by_severity
            ));
        }
        if by_element != self.by_element {
            return Err("counts by network element differ from the active alarms'".into());
        }
        Ok(())
    }

    /// Up to `limit` differences between two models, one line each (empty when equal).
    pub fn diff(&self, other: &NmsModel, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps("element", &self.elements, &other.elements, &mut out);
        diff_maps("interface", &self.interfaces, &other.interfaces, &mut out);
        diff_maps("active alarm", &self.alarms, &other.alarms, &mut out);
        diff_maps(
            "severity count",
            &self.by_severity,
            &other.by_severity,
            &mut out,
        );
        diff_maps(
            "element alarm count",
            &self.by_element,
            &other.by_element,
            &mut out,
        );
        if out.len() > limit {
            let more = out.len() - limit;
            out.truncate(limit);
            out.push(format!("... and {more} more"));
        }
        out
    }

    /// One line: elements and their states, interfaces down, active alarms by severity.
    pub fn summary(&self) -> String {
        let status = |s: &str| self.elements.values().filter(|e| e.status == s).count();
        let oper_down = self.interfaces.values().filter(|up| !**up).count();
        let mut severities: Vec<String> = SEVERITIES
            .iter()
            .map(|s| format!("{} {s}", self.by_severity.get(*s).copied().unwrap_or(0)))
            .collect();
        for (s, n) in &self.by_severity {
            if !SEVERITIES.contains(&s.as_str()) {
                severities.push(format!("{n} {s}"));
            }
        }
        let unacked = self.alarms.values().filter(|a| !a.acknowledged).count();
        let worst = self
            .by_element
            .iter()
            .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
            .map(|(id, n)| {
                let name = self
                    .elements
                    .get(id)
                    .map_or_else(|| format!("#{id}"), |e| e.name.clone());
                format!("; most on {name} ({n})")
            })
            .unwrap_or_default();
        format!(
            "{} elements ({} down, {} degraded), {} interfaces ({} oper down), {} active \
             alarms: {} ({} unacknowledged){}",
            self.elements.len(),
            status("down"),
            status("degraded"),
            self.interfaces.len(),
            oper_down,
            self.alarms.len(),
            severities.join(", "),
            unacked,
            worst
        )
    }
}

fn decrement<K: Ord + Clone>(counts: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

fn diff_maps<K: Ord + fmt::Debug, V: PartialEq + fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    out: &mut Vec<String>,
) {
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{what} {k:?}: only on the left: {v:?}")),
            Some(w) if w != v => out.push(format!(
                "{what} {k:?}: {v:?} on the left, {w:?} on the right"
            )),
            Some(_) => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            out.push(format!("{what} {k:?}: only on the right: {w:?}"));
        }
    }
}

/// How [`LiveModel::offer`] took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Applied to a table the model follows.
    Applied,
    /// A table the model does not follow; its position is recorded.
    Ignored,
    /// Already in the model: committed before the load point, or at or before the last
    /// message taken (a redelivery after a reconnect).
    AlreadySeen,
}

/// What a [`LiveModel`] has been fed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages offered, duplicates included.
    pub messages: u64,
    /// Messages applied to followed tables.
    pub applied: u64,
    /// Messages of tables the model does not follow.
    pub ignored: u64,
    /// Duplicates and messages already in the loaded snapshot.
    pub already_seen: u64,
    /// Applied updates that changed a row's key (`old` present).
    pub key_changes: u64,
    /// Applied messages whose new row had an unchanged-TOAST marker.
    pub unchanged_toast: u64,
    /// Applied truncates.
    pub truncates: u64,
    /// Applied messages per `kind`.
    pub kinds: BTreeMap<String, u64>,
}

/// A model and where it stands in the message stream.
#[derive(Debug, Clone)]
pub struct LiveModel {
    pub model: NmsModel,
    /// The LSN the model was loaded at (the standby's applied LSN in the load snapshot): every
    /// transaction whose commit LSN is below it is already in the model.
    pub loaded_at: u64,
    /// The last message taken; resume after it (`Last-Event-ID`).
    pub last: Option<MessageId>,
    pub stats: Stats,
}

impl LiveModel {
    pub fn new(model: NmsModel, loaded_at: u64) -> LiveModel {
        LiveModel {
            model,
            loaded_at,
            last: None,
            stats: Stats::default(),
        }
    }

    /// The id to resume after (`Last-Event-ID`), once a message was taken.
    pub fn last_event_id(&self) -> Option<String> {
        self.last.map(|id| id.to_string())
    }

    /// The `from_lsn` to ask the stream for.
    pub fn stream_from_lsn(&self) -> String {
        format_lsn(self.loaded_at)
    }

    /// Takes one message, dropping what the model already holds.
    pub fn offer(&mut self, m: &MutationJson) -> Result<Offer, ApplyError> {
        self.stats.messages += 1;
        let id = m
            .id()
            .ok_or_else(|| m.error(format!("commit_lsn {:?} is not an LSN", m.commit_lsn)))?;
        if id.commit_lsn < self.loaded_at || self.last.is_some_and(|last| id <= last) {
            self.stats.already_seen += 1;
            return Ok(Offer::AlreadySeen);
        }
        let applied = self.model.apply(m)?;
        self.last = Some(id);
        Ok(match applied {
            Applied::Ignored => {
                self.stats.ignored += 1;
                Offer::Ignored
            }
            Applied::Changed => {
                self.stats.applied += 1;
                if m.op == "update" && m.old.is_some() {
                    self.stats.key_changes += 1;
                }
                if m.has_unchanged_toast() {
                    self.stats.unchanged_toast += 1;
                }
                if m.op == "truncate" {
                    self.stats.truncates += 1;
                }
                *self.stats.kinds.entry(m.kind.clone()).or_default() += 1;
                Offer::Applied
            }
        })
    }

    /// Takes one stream event: `id` the event's id (checked against the message when given),
    /// `data` the message JSON.
    pub fn offer_event(&mut self, id: Option<&str>, data: &str) -> Result<Offer, ApplyError> {
        let m: MutationJson = serde_json::from_str(data).map_err(|e| ApplyError {
            id: id.unwrap_or("?").to_string(),
            table: "?".into(),
            reason: format!("the event data is not a mutation message: {e}"),
        })?;
        if let Some(id) = id {
            if MessageId::parse(id) != m.id() {
                return Err(m.error(format!(
                    "the event id {id:?} does not match the message's commit_lsn:seq"
                )));
            }
        }
        self.offer(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: Value) -> MutationJson {
        serde_json::from_value(v).unwrap()
    }

    fn seeded() -> NmsModel {
        NmsModel::load(
            [
                ElementRow {
                    id: 1,
                    name: "par-core-001".into(),
                    status: "up".into(),
                    site: "PAR-TH2".into(),
                },
                ElementRow {
                    id: 2,
                    name: "lys-acc-002".into(),
                    status: "down".into(),
                    site: "LYS-01".into(),
                },
            ],
            [
                InterfaceRow {
                    ne_id: 1,
                    if_index: 1,
                    oper_up: true,
                },
                InterfaceRow {
                    ne_id: 1,
                    if_index: 2,
                    oper_up: false,
                },
            ],
            [AlarmRow {
                id: 7,
                ne_id: 2,
                if_index: None,
                probable_cause: "Node unreachable".into(),
                severity: "critical".into(),
                acknowledged: false,
                raised_at: "2026-11-26 02:00:00+00".into(),
            }],
        )
    }

    fn alarm_insert(seq: u32, id: i64, ne: i64, severity: &str) -> MutationJson {
        msg(json!({
            "commit_lsn": "0/1A2B400", "lsn": "0/1A2B3C4", "xid": 731,
            "commit_time": "2026-11-26T02:40:00.123Z", "seq": seq,
            "kind": "alarm.raised", "entity": "alarm", "op": "insert", "table": "nms.alarm",
            "key": {"id": id},
            "new": {"id": id, "ne_id": ne, "if_index": 3, "probable_cause": "Link down",
                    "severity": severity, "raised_at": "2026-11-26 02:39:59.5+00",
                    "acknowledged_at": null, "acknowledged_by": null, "cleared_at": null,
                    "details": "{\"count\": 1}"},
            "changed": ["id", "ne_id", "if_index", "probable_cause", "severity", "raised_at", "details"]
        }))
    }

    #[test]
    fn load_counts_and_summary() {
        let m = seeded();
        m.verify().unwrap();
        assert_eq!(m.alarms_by_severity().get("critical"), Some(&1));
        assert_eq!(m.alarms_by_element().get(&2), Some(&1));
        assert_eq!(
            m.summary(),
            "2 elements (1 down, 0 degraded), 2 interfaces (1 oper down), 1 active alarms: \
             1 critical, 0 major, 0 minor, 0 warning, 0 indeterminate (1 unacknowledged); \
             most on lys-acc-002 (1)"
        );
    }

    #[test]
    fn alarm_raise_ack_escalate_clear_delete() {
        let mut m = seeded();
        assert_eq!(
            m.apply(&alarm_insert(1, 42, 1, "major")).unwrap(),
            Applied::Changed
        );
        assert_eq!(m.alarms_by_severity().get("major"), Some(&1));
        assert_eq!(m.alarms_by_element().get(&1), Some(&1));
        assert_eq!(m.active_alarms()[&42].if_index, Some(3));
        assert_eq!(m.active_alarms()[&42].raised_at, "2026-11-26 02:39:59.5+00");

        // acknowledge: values typed as text by a rules file without `values` (ids as strings)
        let ack = msg(json!({
            "commit_lsn": "0/1A2B500", "seq": 1, "op": "update", "table": "nms.alarm",
            "kind": "alarm.updated", "key": {"id": "42"},
            "new": {"id": "42", "ne_id": "1", "if_index": "3", "probable_cause": "Link down",
                    "severity": "major", "raised_at": "2026-11-26 02:39:59.5+00",
                    "acknowledged_at": "2026-11-26 02:41:00+00", "acknowledged_by": "noc-bob",
                    "cleared_at": null, "details": "{}"},
            "changed": ["ne_id", "if_index", "probable_cause", "severity", "raised_at",
                        "acknowledged_at", "acknowledged_by", "details"]
        }));
        m.apply(&ack).unwrap();
        assert!(m.active_alarms()[&42].acknowledged);

        // escalate
        let mut esc = ack.clone();
        esc.new.as_mut().unwrap()["severity"] = json!("critical");
        m.apply(&esc).unwrap();
        assert_eq!(m.active_alarms()[&42].severity, "critical");
        assert_eq!(m.alarms_by_severity().get("major"), None);
        assert_eq!(m.alarms_by_severity().get("critical"), Some(&2));
        m.verify().unwrap();

        // clear: no longer active
        let mut clear = esc.clone();
        clear.kind = "alarm.cleared".into();
        let new = clear.new.as_mut().unwrap();
        new["severity"] = json!("cleared");
        new["cleared_at"] = json!("2026-11-26 02:45:00+00");
        m.apply(&clear).unwrap();
        assert!(!m.active_alarms().contains_key(&42));
        assert_eq!(m.alarms_by_element().get(&1), None);
        assert_eq!(m.alarms_by_severity().get("cleared"), None);
        m.verify().unwrap();

        // purging the cleared alarm changes nothing; deleting an active one removes it
        let purge = |id: i64| {
            msg(json!({"commit_lsn": "0/1A2B600", "seq": 1, "op": "delete",
                       "table": "nms.alarm", "key": {"id": id}, "old": {"id": id}}))
        };
        m.apply(&purge(42)).unwrap();
        m.apply(&purge(7)).unwrap();
        assert!(m.active_alarms().is_empty());
        assert!(m.alarms_by_severity().is_empty() && m.alarms_by_element().is_empty());
        m.verify().unwrap();
    }

    #[test]
    fn inserting_a_cleared_alarm_keeps_it_out() {
        let mut m = seeded();
        let mut ins = alarm_insert(1, 43, 1, "cleared");
        ins.new.as_mut().unwrap()["cleared_at"] = json!("2026-11-26 02:45:00+00");
        m.apply(&ins).unwrap();
        assert_eq!(m, seeded());
    }

    #[test]
    fn unchanged_toast_keeps_the_current_value() {
        let mut m = seeded();
        let toast = json!({"unchanged_toast": true});
        // an element whose name and site were not sent (out-of-line values left alone)
        let upd = msg(json!({
            "commit_lsn": "0/2000000", "seq": 1, "op": "update", "table": "nms.network_element",
            "kind": "element.updated", "key": {"id": 1},
            "new": {"id": 1, "name": toast, "vendor": "Cisco", "model": "ASR-9006",
                    "mgmt_ip": "10.20.0.1", "site": toast, "status": "degraded",
                    "config": "{}", "last_seen": null, "notes": toast},
            "changed": ["vendor", "model", "mgmt_ip", "status", "config", "last_seen"]
        }));
        assert!(upd.has_unchanged_toast());
        m.apply(&upd).unwrap();
        assert_eq!(
            m.elements()[&1],
            Element {
                name: "par-core-001".into(),
                status: "degraded".into(),
                site: "PAR-TH2".into()
            }
        );

        // an alarm with unchanged TOAST values keeps them, cleared_at included (still active)
        let upd = msg(json!({
            "commit_lsn": "0/2000000", "seq": 2, "op": "update", "table": "nms.alarm",
            "key": {"id": 7},
            "new": {"id": 7, "ne_id": 2, "if_index": null, "probable_cause": toast,
                    "severity": "critical", "raised_at": "2026-11-26 02:00:00+00",
                    "acknowledged_at": toast, "acknowledged_by": toast, "cleared_at": toast,
                    "details": toast}
        }));
        let before = m.clone();
        m.apply(&upd).unwrap();
        assert_eq!(m, before);

        // a marker for a value the model does not have is an error, and changes nothing
        let unknown = msg(json!({
            "commit_lsn": "0/2000000", "seq": 3, "op": "update", "table": "nms.network_element",
            "key": {"id": 99},
            "new": {"id": 99, "name": toast, "status": "up", "site": "X"}
        }));
        let err = m.apply(&unknown).unwrap_err();
        assert_eq!(err.id, "0/2000000:3");
        assert!(err.reason.contains("column name was not sent"), "{err}");
        assert_eq!(m, before);
    }

    #[test]
    fn key_changes_move_the_row() {
        let mut m = seeded();
        m.apply(&alarm_insert(1, 42, 1, "minor")).unwrap();
        // ifIndex renumbering: the primary key (ne_id, if_index) changes, old carries the old key
        let renumber = msg(json!({
            "commit_lsn": "0/3000000", "seq": 1, "op": "update", "table": "nms.interface",
            "kind": "interface.renumbered", "key": {"ne_id": 1, "if_index": 13},
            "new": {"ne_id": 1, "if_index": 13, "name": "et-0/0/1", "speed_mbps": 100000,
                    "admin_up": true, "oper_up": false, "mac": "02:00:00:00:01:02",
                    "addresses": "{}"},
            "old": {"ne_id": 1, "if_index": 2},
            "changed": ["if_index", "name", "speed_mbps", "admin_up", "oper_up", "mac", "addresses"]
        }));
        m.apply(&renumber).unwrap();
        assert_eq!(
            m.interfaces()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>(),
            vec![((1, 1), true), ((1, 13), false)]
        );
        // the alarm re-pointed to the new ifIndex, in the same transaction
        let repoint = msg(json!({
            "commit_lsn": "0/3000000", "seq": 2, "op": "update", "table": "nms.alarm",
            "key": {"id": 42},
            "new": {"id": 42, "ne_id": 1, "if_index": 13, "probable_cause": "Link down",
                    "severity": "minor", "raised_at": "2026-11-26 02:39:59.5+00",
                    "acknowledged_at": null, "acknowledged_by": null, "cleared_at": null,
                    "details": "{}"}
        }));
        m.apply(&repoint).unwrap();
        assert_eq!(m.active_alarms()[&42].if_index, Some(13));

        // an element whose id changes, with booleans as text and oper_up unchanged TOAST
        let reid = msg(json!({
            "commit_lsn": "0/3000100", "seq": 1, "op": "update", "table": "nms.network_element",
            "key": {"id": 300},
            "new": {"id": 300, "name": "lys-acc-002", "status": "up", "site": "LYS-01"},
            "old": {"id": 2}
        }));
        m.apply(&reid).unwrap();
        assert!(!m.elements().contains_key(&2));
        assert_eq!(m.elements()[&300].status, "up");

        let reif = msg(json!({
            "commit_lsn": "0/3000200", "seq": 1, "op": "update", "table": "nms.interface",
            "key": {"ne_id": "1", "if_index": "1"},
            "new": {"ne_id": "1", "if_index": "1", "oper_up": "f"}
        }));
        m.apply(&reif).unwrap();
        assert!(!m.interfaces()[&(1, 1)]);
        m.verify().unwrap();
    }

    #[test]
    fn truncate_empties_only_its_table() {
        let mut m = seeded();
        let t = |table: &str| {
            msg(
                json!({"commit_lsn": "0/4000000", "seq": 1, "op": "truncate", "table": table,
                       "key": {}, "changed": [], "truncated": ["nms.alarm", "nms.interface"]}),
            )
        };
        m.apply(&t("nms.alarm")).unwrap();
        assert!(m.active_alarms().is_empty() && m.alarms_by_severity().is_empty());
        assert_eq!(m.interfaces().len(), 2);
        m.apply(&t("nms.interface")).unwrap();
        assert!(m.interfaces().is_empty());
        assert_eq!(m.elements().len(), 2);
        m.apply(&t("nms.network_element")).unwrap();
        assert_eq!(m, NmsModel::new());
    }

    #[test]
    fn other_tables_are_ignored_and_bad_messages_rejected() {
        let mut m = seeded();
        let hist = msg(json!({"commit_lsn": "0/5000000", "seq": 1, "op": "insert",
                              "table": "nms.alarm_history", "key": {"id": 1},
                              "new": {"id": 1, "alarm_id": 7, "event": "raised"}}));
        assert_eq!(m.apply(&hist).unwrap(), Applied::Ignored);
        let bad = msg(json!({"commit_lsn": "0/5000000", "seq": 2, "op": "insert",
                             "table": "nms.alarm", "key": {"id": 8},
                             "new": {"id": 8, "ne_id": null, "cleared_at": null}}));
        let err = m.apply(&bad).unwrap_err();
        assert!(err.to_string().contains("reload the model"), "{err}");
        let nokey = msg(json!({"commit_lsn": "0/5000000", "seq": 3, "op": "delete",
                               "table": "nms.interface", "key": {}}));
        assert!(m.apply(&nokey).is_err());
        assert_eq!(m, seeded());
    }

    #[test]
    fn live_model_drops_duplicates_and_the_loaded_past() {
        let mut live = LiveModel::new(seeded(), parse_lsn("0/1A2B400").unwrap());
        assert_eq!(live.stream_from_lsn(), "0/1A2B400");
        let mut old = alarm_insert(1, 50, 1, "minor");
        old.commit_lsn = "0/1A2B3FF".into(); // committed before the load point: in the model
        assert_eq!(live.offer(&old).unwrap(), Offer::AlreadySeen);
        assert_eq!(live.last_event_id(), None);

        let first = alarm_insert(1, 42, 1, "major");
        assert_eq!(live.offer(&first).unwrap(), Offer::Applied);
        assert_eq!(live.last_event_id().as_deref(), Some("0/1A2B400:1"));
        // a redelivery after a reconnect
        assert_eq!(live.offer(&first).unwrap(), Offer::AlreadySeen);
        let data = serde_json::to_string(&json!({
            "commit_lsn": "0/1A2B400", "seq": 2, "op": "insert", "table": "nms.alarm_history",
            "key": {"id": 9}, "new": {"id": 9}
        }))
        .unwrap();
        assert_eq!(
            live.offer_event(Some("0/1A2B400:2"), &data).unwrap(),
            Offer::Ignored
        );
        assert_eq!(live.last, MessageId::parse("0/1A2B400:2"));
        assert!(live.offer_event(Some("0/1A2B400:3"), &data).is_err());
        assert!(live.offer_event(None, "not json").is_err());
        assert_eq!(live.stats.applied, 1);
        assert_eq!(live.stats.ignored, 1);
        assert_eq!(live.stats.already_seen, 2);
        assert_eq!(live.stats.kinds.get("alarm.raised"), Some(&1));
    }

    #[test]
    fn lsn_and_ids_parse_and_print() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/"), None);
        let id = MessageId::parse("0/1a2b400:3").unwrap();
        assert_eq!(id.to_string(), "0/1A2B400:3");
        assert!(MessageId::parse("0/1A2B400:4").unwrap() > id);
        assert!(MessageId::parse("0/1A2B401:1").unwrap() > id);
        assert_eq!(MessageId::parse("0/1A2B400"), None);
    }

    #[test]
    fn diff_names_the_differences() {
        let a = seeded();
        let mut b = seeded();
        assert!(a.diff(&b, 10).is_empty());
        b.apply(&alarm_insert(1, 42, 1, "major")).unwrap();
        let d = a.diff(&b, 10);
        assert!(
            d.iter()
                .any(|l| l.starts_with("active alarm 42: only on the right")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|l| l.starts_with("severity count \"major\"")),
            "{d:?}"
        );
    }
}
