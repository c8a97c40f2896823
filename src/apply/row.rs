//! Row values as statement parameters: the datums of a change, and the values that find a row.

use bytes::Bytes;

use super::pipeline::Param;
use super::statement;
use super::ApplyError;
use crate::decode::{Datum, OldTuple, Relation, Tuple};
use crate::ident::quote_ident;

pub(super) fn text(s: String) -> Param {
    Param::Text(Bytes::from(s))
}

pub(super) fn param(d: &Datum) -> Result<Param, ApplyError> {
    match d {
        Datum::Null => Ok(Param::Null),
        Datum::Text(b) => Ok(Param::Text(b.clone())),
        Datum::UnchangedToast => Err(ApplyError::Stream(
            "an unchanged TOAST value was sent where a full value is needed (a key column); \
             set REPLICA IDENTITY FULL on that table on the primary"
                .into(),
        )),
        Datum::Binary(_) => Err(ApplyError::Stream(
            "the stream sent a binary value although text was requested; this is a bug in \
             understudy"
                .into(),
        )),
    }
}

/// The values that find the row: the key columns (from the old key when present), or every
/// column of the old row under FULL identity.
pub(super) fn identity_values(
    rel: &Relation,
    full: bool,
    old: Option<&OldTuple>,
    new: &Tuple,
) -> Result<Vec<Param>, ApplyError> {
    let source = match old {
        Some(OldTuple::Key(t)) | Some(OldTuple::Full(t)) => t,
        None => new,
    };
    if full {
        if !matches!(old, Some(OldTuple::Full(_))) {
            return Err(ApplyError::Stream(format!(
                "{} has REPLICA IDENTITY FULL but the change carries no old row",
                rel.display_name()
            )));
        }
        return source.0.iter().map(param).collect();
    }
    let keys = statement::key_columns(rel);
    if keys.is_empty() {
        return Err(ApplyError::Stream(format!(
            "{} has no replica identity columns, so its rows cannot be found on the standby; run \
             ALTER TABLE {} REPLICA IDENTITY FULL on the primary (or add a primary key)",
            rel.display_name(),
            rel.qualified_name()
        )));
    }
    keys.iter()
        .map(|&i| {
            source
                .0
                .get(i)
                .ok_or_else(|| {
                    ApplyError::Stream(format!("old row of {} is too short", rel.display_name()))
                })
                .and_then(param)
        })
        .collect()
}

/// `(id)=(42)` for error messages.
pub(super) fn describe_key(rel: &Relation, full: bool, values: &[Param]) -> String {
    let cols: Vec<usize> = if full {
        (0..rel.columns.len()).collect()
    } else {
        statement::key_columns(rel)
    };
    let names: Vec<String> = cols
        .iter()
        .filter_map(|&i| rel.columns.get(i).map(|c| quote_ident(&c.name)))
        .collect();
    let vals: Vec<String> = values
        .iter()
        .map(|v| match v {
            Param::Null => "NULL".to_string(),
            Param::Text(b) => {
                let s = String::from_utf8_lossy(b);
                if s.len() > 64 {
                    format!("{}…", &s[..s.floor_char_boundary(64)])
                } else {
                    s.into_owned()
                }
            }
        })
        .collect();
    format!("({})=({})", names.join(", "), vals.join(", "))
}
