//! The SQL the dispatcher runs for each row change, built from a pgoutput Relation.
//!
//! Values travel as text parameters (pgoutput's text form) and the server parses them with each
//! column's own input function, so enums, domains, arrays, ranges and composites need no casts:
//! the parameter types are inferred from the target columns when the statement is prepared.
//!
//! Row identity follows the relation's replica identity:
//! * DEFAULT / USING INDEX: `WHERE key = $n` on the key columns (the old key when the UPDATE
//!   changed it, else the new row's key);
//! * FULL: the whole old row, `IS NOT DISTINCT FROM` per column (text comparison for types
//!   without an equality operator), one row only (`ctid = (SELECT ctid … LIMIT 1)`), as
//!   PostgreSQL's own apply worker changes one row even when duplicates exist.
//!
//! Unchanged TOAST values are left out of the `SET` list, never written as NULL.

use crate::decode::{Relation, ReplicaIdentity};
use crate::ident::quote_ident;

/// What a cached statement does; with the relation id it is the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    Insert,
    /// `set` says which columns are written; `full` says the row is found by the whole old row
    /// (replica identity FULL) rather than by the key.
    Update {
        set: SetColumns,
        full: bool,
    },
    Delete {
        full: bool,
    },
}

/// The columns an UPDATE writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SetColumns {
    /// Every column (the key changed, or the identity is FULL).
    All,
    /// Every column but the key columns, which did not change: this also keeps
    /// `GENERATED ALWAYS AS IDENTITY` keys, which may not be assigned, out of the statement.
    NonKey,
    /// Exactly these columns (some values are unchanged TOAST).
    Only(Box<[u16]>),
}

impl SetColumns {
    /// The column indexes written, in order.
    pub(crate) fn indexes(&self, rel: &Relation) -> Vec<usize> {
        match self {
            SetColumns::All => (0..rel.columns.len()).collect(),
            SetColumns::NonKey => (0..rel.columns.len())
                .filter(|&i| !rel.columns[i].is_key)
                .collect(),
            SetColumns::Only(cols) => cols.iter().map(|&c| usize::from(c)).collect(),
        }
    }
}

/// Type OIDs that have no default equality operator, compared as text under FULL identity:
/// json, xml, point, lseg, path, box (its `=` compares areas), polygon, line, circle and their arrays.
const NO_EQUALITY: &[u32] = &[
    114, 142, 600, 601, 602, 603, 604, 628, 718, 199, 143, 1017, 1018, 1019, 1020, 1027, 629, 719,
];

/// The columns that identify a row under DEFAULT / USING INDEX identity.
pub(crate) fn key_columns(rel: &Relation) -> Vec<usize> {
    rel.columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect()
}

/// Build the SQL for `shape` on `rel`. Parameters: for INSERT every column in order; for UPDATE
/// the `set` columns, then the identity values; for DELETE the identity values. Identity values
/// are the key columns, or every column under FULL.
pub(crate) fn build(rel: &Relation, shape: &Shape) -> String {
    let table = rel.qualified_name();
    match shape {
        Shape::Insert => {
            let cols: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
            let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            // OVERRIDING SYSTEM VALUE: the primary's value wins over GENERATED ALWAYS identities.
            format!(
                "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                cols.join(", "),
                params.join(", ")
            )
        }
        Shape::Update { set, full } => {
            let set_cols = set.indexes(rel);
            let assignments: Vec<String> = set_cols
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{} = ${}", quote_ident(&rel.columns[c].name), i + 1))
                .collect();
            let (predicate, _) = identity_predicate(rel, *full, set_cols.len() + 1);
            format!(
                "UPDATE {table} SET {} WHERE {}",
                assignments.join(", "),
                row_filter(&table, &predicate, *full)
            )
        }
        Shape::Delete { full } => {
            let (predicate, _) = identity_predicate(rel, *full, 1);
            format!(
                "DELETE FROM {table} WHERE {}",
                row_filter(&table, &predicate, *full)
            )
        }
    }
}

fn row_filter(table: &str, predicate: &str, full: bool) -> String {
    if full {
        format!("ctid = (SELECT ctid FROM {table} WHERE {predicate} LIMIT 1)")
    } else {
        predicate.to_string()
    }
}

/// `WHERE` terms matching the identity values, numbered from `first`; returns the terms and the
/// number of parameters used.
fn identity_predicate(rel: &Relation, full: bool, first: usize) -> (String, usize) {
    let cols: Vec<usize> = if full {
        (0..rel.columns.len()).collect()
    } else {
        key_columns(rel)
    };
    let terms: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let col = &rel.columns[c];
            let name = quote_ident(&col.name);
            let n = first + i;
            if !full {
                format!("{name} = ${n}")
            } else if NO_EQUALITY.contains(&col.type_oid) {
                format!("{name}::text IS NOT DISTINCT FROM ${n}::text")
            } else {
                format!("{name} IS NOT DISTINCT FROM ${n}")
            }
        })
        .collect();
    (terms.join(" AND "), cols.len())
}

/// Whether UPDATE/DELETE find rows by the whole old row.
pub(crate) fn uses_full_identity(rel: &Relation) -> bool {
    rel.replica_identity == ReplicaIdentity::Full
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Column, RelId};

    fn rel(identity: ReplicaIdentity) -> Relation {
        let col = |name: &str, key: bool, oid: u32| Column {
            is_key: key,
            name: name.to_string(),
            type_oid: oid,
            type_modifier: -1,
        };
        Relation {
            id: RelId(1),
            namespace: "Types Test".into(),
            name: "Order".into(),
            replica_identity: identity,
            columns: vec![
                col("id", true, 23),
                col("select", false, 25),
                col("quo\"te", false, 114),
            ],
        }
    }

    #[test]
    fn insert_lists_every_column_quoted() {
        assert_eq!(
            build(&rel(ReplicaIdentity::Default), &Shape::Insert),
            "INSERT INTO \"Types Test\".\"Order\" (\"id\", \"select\", \"quo\"\"te\") \
             OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)"
        );
    }

    #[test]
    fn update_by_key_skips_unchanged_columns() {
        let shape = Shape::Update {
            set: SetColumns::Only(vec![0, 1].into_boxed_slice()),
            full: false,
        };
        assert_eq!(
            build(&rel(ReplicaIdentity::Default), &shape),
            "UPDATE \"Types Test\".\"Order\" SET \"id\" = $1, \"select\" = $2 WHERE \"id\" = $3"
        );
    }

    #[test]
    fn update_with_unchanged_key_leaves_the_key_alone() {
        let shape = Shape::Update {
            set: SetColumns::NonKey,
            full: false,
        };
        assert_eq!(
            build(&rel(ReplicaIdentity::Default), &shape),
            "UPDATE \"Types Test\".\"Order\" SET \"select\" = $1, \"quo\"\"te\" = $2 WHERE \"id\" = $3"
        );
    }

    #[test]
    fn full_identity_matches_one_row_null_safely() {
        let sql = build(&rel(ReplicaIdentity::Full), &Shape::Delete { full: true });
        assert_eq!(
            sql,
            "DELETE FROM \"Types Test\".\"Order\" WHERE ctid = (SELECT ctid FROM \"Types Test\".\"Order\" \
             WHERE \"id\" IS NOT DISTINCT FROM $1 AND \"select\" IS NOT DISTINCT FROM $2 \
             AND \"quo\"\"te\"::text IS NOT DISTINCT FROM $3::text LIMIT 1)"
        );
    }
}
