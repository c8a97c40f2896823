//! Reading a rules file: TOML into spanned raw structures, then the load-time checks into
//! [`TableRules`]. Every problem carries the byte offset it is at, turned into a line number.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use toml::Spanned;

use super::{op_index, Cond, KindRule, Located, TableRules, Test, ValueType};
use crate::translate::Op;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tables: BTreeMap<Spanned<String>, RawTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    entity: Option<Spanned<String>>,
    key: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    values: BTreeMap<Spanned<String>, ValueType>,
    #[serde(default)]
    insert: Vec<RawRule>,
    #[serde(default)]
    update: Vec<RawRule>,
    #[serde(default)]
    delete: Vec<RawRule>,
    #[serde(default)]
    truncate: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    kind: Spanned<String>,
    changed: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    new: BTreeMap<Spanned<String>, RawCond>,
    #[serde(default)]
    old: BTreeMap<Spanned<String>, RawCond>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCond {
    equals: Option<String>,
    is_null: Option<bool>,
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Load-time problems, by byte offset; the first in the file is reported.
struct Problems<'t> {
    text: &'t str,
    found: Vec<(usize, String)>,
}

impl Problems<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, reason: String) {
        self.found.push((spanned.span().start, reason));
    }

    fn line<T>(&self, spanned: &Spanned<T>) -> usize {
        line_of(self.text, spanned.span().start)
    }
}

/// Parses and checks a rules file: the tables by name, or the line (when known) and reason of
/// the first problem.
pub(super) fn parse(text: &str) -> Result<HashMap<String, TableRules>, (Option<usize>, String)> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        (line, e.message().trim().replace('\n', "; "))
    })?;
    let mut p = Problems {
        text,
        found: Vec::new(),
    };
    let mut tables = HashMap::with_capacity(raw.tables.len());
    for (name, table) in raw.tables {
        let compiled = check_table(&mut p, &name, table);
        tables.insert(name.into_inner(), compiled);
    }
    match p.found.into_iter().min() {
        None => Ok(tables),
        Some((offset, reason)) => Err((Some(line_of(text, offset)), reason)),
    }
}

fn check_table(p: &mut Problems<'_>, name: &Spanned<String>, raw: RawTable) -> TableRules {
    let qualified = name
        .get_ref()
        .split_once('.')
        .is_some_and(|(s, t)| !s.is_empty() && !t.is_empty());
    if !qualified {
        p.at(
            name,
            format!(
                "table \"{}\" is not schema-qualified: name it as \"schema.table\", like \
                 \"public.{}\"",
                name.get_ref(),
                name.get_ref().trim_matches('.')
            ),
        );
    }
    let mut entity = None;
    if let Some(e) = raw.entity {
        if e.get_ref().trim().is_empty() {
            p.at(
                &e,
                format!(
                    "entity of {} is empty: give the NMS's name for its rows, or leave entity \
                     out to use the table name",
                    name.get_ref()
                ),
            );
        }
        entity = Some(e.into_inner());
    }
    let key = raw.key.map(|list| {
        if list.get_ref().is_empty() {
            p.at(
                &list,
                format!(
                    "key of {} is empty: list the columns that identify a row, or leave key \
                     out to use the replica identity",
                    name.get_ref()
                ),
            );
        }
        list.into_inner()
            .into_iter()
            .map(|c| located(p, c))
            .collect()
    });
    let values = raw
        .values
        .into_iter()
        .map(|(column, ty)| (located(p, column), ty))
        .collect();
    let mut ops: [Vec<KindRule>; 4] = Default::default();
    for (op, rules) in [
        (Op::Insert, raw.insert),
        (Op::Update, raw.update),
        (Op::Delete, raw.delete),
        (Op::Truncate, raw.truncate),
    ] {
        ops[op_index(op)] = check_rules(p, name.get_ref(), op, rules);
    }
    TableRules {
        line: p.line(name),
        entity,
        key,
        values,
        ops,
    }
}

fn located(p: &Problems<'_>, name: Spanned<String>) -> Located {
    Located {
        line: p.line(&name),
        name: name.into_inner(),
    }
}

fn check_rules(p: &mut Problems<'_>, table: &str, op: Op, raw: Vec<RawRule>) -> Vec<KindRule> {
    let mut rules: Vec<KindRule> = Vec::with_capacity(raw.len());
    for r in raw {
        if r.kind.get_ref().trim().is_empty() {
            p.at(
                &r.kind,
                format!("a {op} rule of {table} has an empty kind: give the name the NMS expects"),
            );
        }
        if let Some(catch_all) = rules.iter().find(|r| r.is_unconditional()) {
            p.at(
                &r.kind,
                format!(
                    "{op} rule \"{}\" of {table} can never match: the rule at line {} has no \
                     conditions and takes every {op} first (first match wins); move the \
                     catch-all last",
                    r.kind.get_ref(),
                    catch_all.line
                ),
            );
        }
        let mut changed = Vec::new();
        if let Some(list) = r.changed {
            if op != Op::Update {
                p.at(
                    &list,
                    format!(
                        "`changed` cannot match in a {op} rule: only updates have changed \
                         columns; use `new` or `old` conditions instead"
                    ),
                );
            } else if list.get_ref().is_empty() {
                p.at(
                    &list,
                    "`changed = []` can never match: list at least one column, or leave \
                     `changed` out"
                        .to_string(),
                );
            }
            changed = list
                .into_inner()
                .into_iter()
                .map(|c| located(p, c))
                .collect();
        }
        let new = check_conds(p, op, "new", r.new);
        let old = check_conds(p, op, "old", r.old);
        rules.push(KindRule {
            line: p.line(&r.kind),
            kind: r.kind.into_inner(),
            changed,
            new,
            old,
        });
    }
    rules
}

fn check_conds(
    p: &mut Problems<'_>,
    op: Op,
    side: &str,
    raw: BTreeMap<Spanned<String>, RawCond>,
) -> Vec<Cond> {
    let impossible = match (side, op) {
        ("new", Op::Delete | Op::Truncate) => Some("a deleted or truncated row has no new values"),
        ("old", Op::Insert | Op::Truncate) => {
            Some("an inserted or truncated row has no old values")
        }
        _ => None,
    };
    let mut conds = Vec::with_capacity(raw.len());
    for (column, cond) in raw {
        if let Some(why) = impossible {
            p.at(
                &column,
                format!(
                    "`{side}` condition on {} cannot match in a {op} rule: {why}",
                    column.get_ref()
                ),
            );
        }
        let col = column.get_ref();
        let test = match (cond.is_null, cond.equals) {
            (None, None) => {
                p.at(
                    &column,
                    format!(
                        "condition on {col} is empty: give equals = \"…\", is_null = true or \
                         is_null = false"
                    ),
                );
                Test::NotNull
            }
            (Some(true), Some(v)) => {
                p.at(
                    &column,
                    format!(
                        "condition on {col} cannot match: a value cannot be NULL and equal \
                         \"{v}\"; keep one of is_null = true and equals"
                    ),
                );
                Test::Null
            }
            (Some(true), None) => Test::Null,
            (Some(false), None) => Test::NotNull,
            (_, Some(v)) => Test::Equals(v),
        };
        conds.push(Cond {
            column: located(p, column),
            test,
        });
    }
    conds
}
