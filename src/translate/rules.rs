//! Translation rules: which `entity` and `kind` each change gets, and how values are typed.
//!
//! The rules file is TOML (an annotated example is `examples/nms_rules.toml`):
//!
//! ```toml
//! [tables."nms.alarm"]                 # "schema.table" as on the primary, unquoted
//! entity = "alarm"                     # default: the table name, "nms.alarm"
//! key = ["id"]                         # optional: the message key columns (see below)
//! values = { id = "integer" }          # optional: "text" (default), "integer", "boolean"
//!
//! [[tables."nms.alarm".insert]]        # insert, update, delete, truncate: ordered kind rules
//! kind = "alarm.raised"
//!
//! [[tables."nms.alarm".update]]
//! kind = "alarm.cleared"
//! changed = ["cleared_at"]             # update only: any of these columns changed
//! new = { cleared_at = { is_null = false } }
//! old = { severity = { equals = "critical" } }
//! ```
//!
//! Matching: a change of a table takes the `kind` of the first rule of its operation whose
//! conditions all hold (first match wins). With no rule matching, or no rules for the table, the
//! kind is `<entity>.inserted|updated|deleted|truncated`, so a table that is not in the file at
//! all gives `nms.alarm.inserted` and so on. Conditions:
//! * `changed = [..]` (update rules only): at least one of the columns is in the message's
//!   `changed` list (see the `translate` module for how it is computed);
//! * `new = { col = COND }` (insert, update) and `old = { col = COND }` (update, delete), every
//!   column's COND holding, where COND is `{ equals = "text" }` (PostgreSQL's text form, before
//!   any `values` typing), `{ is_null = true }` or `{ is_null = false }` (both keys together
//!   mean "not NULL and equal"). An unchanged TOAST value is not NULL and equals nothing. An old
//!   value the stream did not carry (a non-key column without REPLICA IDENTITY FULL, or no old
//!   tuple at all) matches no condition.
//! * truncate rules take no conditions.
//!
//! `key` names the columns of a message's `key` instead of the replica identity's, for tables
//! under REPLICA IDENTITY FULL (where pgoutput flags every column as key). It applies wherever
//! the whole row is known; a delete that carries only the old key keeps the identity columns.
//!
//! Checked at load, each with the file, the line and the reason: TOML syntax, unknown keys and
//! wrong types, a table name without its schema, an empty entity or kind, and conditions that
//! cannot match (`changed` outside update rules or empty, `new` on delete or truncate rules, `old`
//! on insert or truncate rules, an empty condition, `is_null = true` with `equals`, a rule after
//! an unconditional one of the same operation). [`Rules::validate_against`] checks table and
//! column names against the primary's catalog.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::Op;
use crate::decode::{Datum, OldTuple, Relation, Tuple};

mod parse;
#[cfg(test)]
mod tests;

/// The JSON type a column's text value is given in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// PostgreSQL's text output form, as a JSON string.
    #[default]
    Text,
    /// A JSON number when the text is an integer that fits 64 bits, else the string.
    Integer,
    /// `t` / `f` as JSON `true` / `false`, anything else the string.
    Boolean,
}

impl ValueType {
    /// The JSON value of PostgreSQL's text form `text`.
    pub fn convert(self, text: &str) -> Value {
        match self {
            ValueType::Integer => {
                if let Ok(n) = text.parse::<i64>() {
                    return Value::from(n);
                }
                if let Ok(n) = text.parse::<u64>() {
                    return Value::from(n);
                }
            }
            ValueType::Boolean => match text {
                "t" => return Value::Bool(true),
                "f" => return Value::Bool(false),
                _ => {}
            },
            ValueType::Text => {}
        }
        Value::String(text.to_string())
    }
}

/// A rules file could not be used. Definite: fix the file (or the names in it) and restart.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}; check the --rules path")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}: {reason}", place(file, *line))]
    Invalid {
        file: String,
        line: Option<usize>,
        reason: String,
    },
}

impl RulesError {
    /// The 1-based line the problem is on, when it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            RulesError::Invalid { line, .. } => *line,
            RulesError::Read { .. } => None,
        }
    }
}

fn place(file: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{file} line {line}"),
        None => file.to_string(),
    }
}

/// A name in the rules file and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    name: String,
    line: usize,
}

/// One value condition: what a column's datum must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Null,
    NotNull,
    Equals(String),
}

impl Test {
    fn holds(&self, datum: Option<&Datum>) -> bool {
        match (self, datum) {
            (_, None) => false,
            (Test::Null, Some(d)) => matches!(d, Datum::Null),
            (Test::NotNull, Some(d)) => !matches!(d, Datum::Null),
            (Test::Equals(s), Some(Datum::Text(b))) => b.as_ref() == s.as_bytes(),
            (Test::Equals(_), Some(_)) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    column: Located,
    test: Test,
}

/// One `[[tables."s.t".<op>]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KindRule {
    kind: String,
    line: usize,
    /// Any of these changed; empty means no condition.
    changed: Vec<Located>,
    new: Vec<Cond>,
    old: Vec<Cond>,
}

impl KindRule {
    fn is_unconditional(&self) -> bool {
        self.changed.is_empty() && self.new.is_empty() && self.old.is_empty()
    }

    fn matches(&self, facts: &Facts<'_>) -> bool {
        let columns = &facts.rel.columns;
        (self.changed.is_empty()
            || facts.changed.iter().any(|&i| {
                let name = columns.get(i).map(|c| c.name.as_str());
                self.changed.iter().any(|c| Some(c.name.as_str()) == name)
            }))
            && self
                .new
                .iter()
                .all(|c| c.test.holds(facts.new_value(&c.column.name)))
            && self
                .old
                .iter()
                .all(|c| c.test.holds(facts.old_value(&c.column.name)))
    }
}

/// The rules of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TableRules {
    line: usize,
    entity: Option<String>,
    /// The message key columns, when the file overrides the replica identity's.
    key: Option<Vec<Located>>,
    values: Vec<(Located, ValueType)>,
    /// Indexed by [`op_index`].
    ops: [Vec<KindRule>; 4],
}

impl TableRules {
    /// The type of `column`'s values in messages.
    pub(super) fn value_type(&self, column: &str) -> ValueType {
        self.values
            .iter()
            .find(|(c, _)| c.name == column)
            .map_or(ValueType::Text, |(_, t)| *t)
    }

    /// Whether `column` belongs in a message's `key`, when the file says (`key = [..]`).
    pub(super) fn in_key(&self, column: &str) -> Option<bool> {
        let key = self.key.as_ref()?;
        Some(key.iter().any(|k| k.name == column))
    }

    /// Every column name the table's rules mention, with its line.
    fn columns(&self) -> impl Iterator<Item = &Located> {
        let rules = self.ops.iter().flatten();
        let key = self.key.iter().flatten();
        let values = self.values.iter().map(|(c, _)| c);
        key.chain(values).chain(rules.flat_map(|r| {
            let conds = r.new.iter().chain(&r.old).map(|c| &c.column);
            r.changed.iter().chain(conds)
        }))
    }
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
        Op::Truncate => 3,
    }
}

/// What rule conditions look at: one change of `rel`, with its changed column indexes.
pub(super) struct Facts<'a> {
    pub(super) rel: &'a Relation,
    pub(super) new: Option<&'a Tuple>,
    pub(super) old: Option<&'a OldTuple>,
    pub(super) changed: &'a [usize],
}

impl Facts<'_> {
    fn index(&self, column: &str) -> Option<usize> {
        self.rel.columns.iter().position(|c| c.name == column)
    }

    fn new_value(&self, column: &str) -> Option<&Datum> {
        self.new?.0.get(self.index(column)?)
    }

    /// The old value, when the stream carried it (whole old row, or a key column of the old key).
    fn old_value(&self, column: &str) -> Option<&Datum> {
        let i = self.index(column)?;
        match self.old? {
            OldTuple::Full(t) => t.0.get(i),
            OldTuple::Key(t) if self.rel.columns.get(i)?.is_key => t.0.get(i),
            OldTuple::Key(_) => None,
        }
    }
}

/// The entity and kind of a change of `table`; see the module doc for the matching.
pub(super) fn classify(
    rules: Option<&TableRules>,
    table: &str,
    op: Op,
    facts: &Facts<'_>,
) -> (String, String) {
    let entity = rules.and_then(|t| t.entity.as_deref()).unwrap_or(table);
    let rule = rules.and_then(|t| t.ops[op_index(op)].iter().find(|r| r.matches(facts)));
    let kind = match rule {
        Some(r) => r.kind.clone(),
        None => format!("{entity}.{}", op.past_tense()),
    };
    (entity.to_string(), kind)
}

/// Translation rules for every table, as loaded from one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    source: String,
    tables: HashMap<String, TableRules>,
}

impl Rules {
    /// No rules: every table gets the default entity and kinds.
    pub fn none() -> Self {
        Rules::default()
    }

    /// Reads and checks a rules file; errors name `path` and the line.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_toml_str(&text, &name)
    }

    /// Parses and checks rules; errors name `source_name` and the line.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, RulesError> {
        let tables = parse::parse(text).map_err(|(line, reason)| RulesError::Invalid {
            file: source_name.to_string(),
            line,
            reason,
        })?;
        Ok(Rules {
            source: source_name.to_string(),
            tables,
        })
    }

    /// The file the rules came from (empty for [`Rules::none`]).
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// The tables the rules name, sorted.
    pub fn tables(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tables.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub(super) fn table(&self, name: &str) -> Option<&TableRules> {
        self.tables.get(name)
    }

    /// Checks every table and column the rules name against the primary's catalog
    /// (`schema.table` → its column names); the first problem in file order is the error.
    pub fn validate_against(
        &self,
        catalog: &HashMap<String, Vec<String>>,
    ) -> Result<(), RulesError> {
        let mut problems: Vec<(usize, String)> = Vec::new();
        for (name, table) in &self.tables {
            let Some(columns) = catalog.get(name) else {
                let hint = suggest(name, catalog.keys().map(String::as_str));
                problems.push((
                    table.line,
                    format!("table {name} does not exist on the primary{hint}"),
                ));
                continue;
            };
            for c in table.columns() {
                if !columns.contains(&c.name) {
                    let hint = suggest(&c.name, columns.iter().map(String::as_str));
                    problems.push((
                        c.line,
                        format!("column {} does not exist in {name}{hint}", c.name),
                    ));
                }
            }
        }
        match problems.into_iter().min() {
            None => Ok(()),
            Some((line, reason)) => Err(RulesError::Invalid {
                file: self.source.clone(),
                line: Some(line),
                reason,
            }),
        }
    }
}

/// ` (did you mean X?)` for the closest candidate, if one is close enough to be a typo.
fn suggest<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (edit_distance(wrong, c), c))
        .filter(|&(d, c)| d <= 2 || d * 3 <= c.chars().count())
        .min();
    match best {
        Some((_, c)) => format!(" (did you mean {c}?)"),
        None => String::new(),
    }
}

/// Levenshtein distance over characters, ignoring ASCII case differences.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().map(|c| c.to_ascii_lowercase()).enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
