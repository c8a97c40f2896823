//! Sequences at promotion: every sequence of the promoted node is brought above anything the
//! old primary can have handed out, so no value is ever handed out twice.
//!
//! Logical decoding does not carry sequences (PostgreSQL 15 docs, 31.6 Restrictions), so the
//! standby's sequences lag. When the old primary answers, its `pg_sequences.last_value` is the
//! floor: it counts cached values too, so nothing the primary handed out is above it. When it
//! does not answer, the floor is the highest value the standby can see (its own sequence, kept
//! near the primary's by `follow`, and the largest value in the columns the sequence owns, serial
//! or identity), plus a margin of `margin` steps for what the primary handed out and never sent.
//! A sequence is never moved backwards, and never past its bounds (capped, with a warning).

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// The standby's sequences, outside understudy's schema.
const LIST: &str = "SELECT format('%I.%I', schemaname, sequencename), last_value, increment_by, \
                           min_value, max_value \
                    FROM pg_sequences WHERE schemaname <> 'understudy'";

/// Each sequence with the column it owns (serial, or identity), as quoted names.
const OWNED: &str = "SELECT format('%I.%I', sn.nspname, s.relname), \
                            format('%I.%I', tn.nspname, t.relname), quote_ident(a.attname), \
                            ps.seqincrement \
                     FROM pg_depend d \
                     JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                     JOIN pg_sequence ps ON ps.seqrelid = s.oid \
                     JOIN pg_namespace sn ON sn.oid = s.relnamespace \
                     JOIN pg_class t ON t.oid = d.refobjid \
                     JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                     JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
                     WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
                       AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 \
                       AND sn.nspname <> 'understudy'";

/// Where the floors came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SequenceSource {
    /// The old primary answered: its own values.
    OldPrimary,
    /// It did not (the reason): the standby's data plus the margin.
    Data { why: String },
}

/// What happened to the sequences.
#[derive(Clone, Debug)]
pub struct SequenceReport {
    pub source: SequenceSource,
    /// Sequences moved, with the value they were set to.
    pub moved: Vec<(String, i64)>,
    /// How many sequences were looked at.
    pub total: usize,
    pub warnings: Vec<String>,
}

impl fmt::Display for SequenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} sequences brought forward ",
            self.moved.len(),
            self.total
        )?;
        match &self.source {
            SequenceSource::OldPrimary => f.write_str("to the old primary's values"),
            SequenceSource::Data { why } => {
                write!(f, "past the data plus the margin (old primary: {why})")
            }
        }
    }
}

/// One standby sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sequence {
    pub name: String,
    /// `None` until the sequence was first used.
    pub last_value: Option<i64>,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
}

/// What to do with one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Already at or beyond the floor.
    Keep,
    Set(i64),
    /// The floor is beyond the sequence's bound: set to the bound.
    Capped(i64),
}

/// The value `seq` must reach: `floor` (the highest value the old primary can have handed
/// out, when known) plus `margin` steps, never backwards, within bounds. With no floor at all
/// the margin counts from the sequence's start.
pub(super) fn target(seq: &Sequence, floor: Option<i64>, margin: i64) -> Target {
    let ascending = seq.increment > 0;
    let start = if ascending { seq.min } else { seq.max };
    let base = floor.unwrap_or(start);
    let want = i128::from(base) + i128::from(margin) * i128::from(seq.increment);
    let (want, capped) = if ascending {
        (want.min(i128::from(seq.max)), want > i128::from(seq.max))
    } else {
        (want.max(i128::from(seq.min)), want < i128::from(seq.min))
    };
    // In range now: the bounds are i64.
    let want = want as i64;
    if let Some(current) = seq.last_value {
        let enough = if ascending {
            current >= want
        } else {
            current <= want
        };
        if enough {
            return Target::Keep;
        }
    } else if floor.is_none() && margin == 0 {
        return Target::Keep;
    }
    if capped {
        Target::Capped(want)
    } else {
        Target::Set(want)
    }
}

/// The old primary's sequences: quoted name -> `last_value` (`None` when never used).
pub(super) async fn read_primary(primary: &Client) -> Result<HashMap<String, Option<i64>>> {
    let rows = primary
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value \
             FROM pg_sequences WHERE schemaname <> 'understudy'",
            &[],
        )
        .await
        .context("while reading the old primary's sequences")?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1)))
        .collect())
}

/// Bring the sequences on `standby` forward: to the old primary's values ([`read_primary`])
/// when they could be read, else (the reason why not) past the data by `margin` steps.
pub(super) async fn bring_forward(
    standby: &Client,
    on_primary: Result<HashMap<String, Option<i64>>, String>,
    margin: i64,
) -> Result<SequenceReport> {
    let sequences: Vec<Sequence> = standby
        .query(LIST, &[])
        .await
        .context("while listing the sequences on the standby")?
        .iter()
        .map(|r| Sequence {
            name: r.get(0),
            last_value: r.get(1),
            increment: r.get(2),
            min: r.get(3),
            max: r.get(4),
        })
        .collect();
    let mut warnings = Vec::new();
    let (source, floors, margin) = match on_primary {
        Ok(on_primary) => {
            for name in on_primary.keys() {
                if !sequences.iter().any(|s| &s.name == name) {
                    warnings.push(format!(
                        "sequence {name} exists on the old primary but not here"
                    ));
                }
            }
            let floors: HashMap<String, Option<i64>> = sequences
                .iter()
                .map(|s| (s.name.clone(), on_primary.get(&s.name).copied().flatten()))
                .collect();
            (SequenceSource::OldPrimary, floors, 0)
        }
        Err(why) => {
            let data = data_extremes(standby).await?;
            let floors = sequences
                .iter()
                .map(|s| {
                    let seen = [s.last_value, data.get(&s.name).copied().flatten()];
                    let best = if s.increment > 0 {
                        seen.into_iter().flatten().max()
                    } else {
                        seen.into_iter().flatten().min()
                    };
                    (s.name.clone(), best)
                })
                .collect();
            (SequenceSource::Data { why }, floors, margin)
        }
    };
    let mut moved = Vec::new();
    for seq in &sequences {
        let floor = floors.get(&seq.name).copied().flatten();
        let value = match target(seq, floor, margin) {
            Target::Keep => continue,
            Target::Set(v) => v,
            Target::Capped(v) => {
                warnings.push(format!(
                    "sequence {} needs a value beyond its bound; set to {v}, so it is exhausted \
                     (raise its MAXVALUE/MINVALUE)",
                    seq.name
                ));
                v
            }
        };
        standby
            .execute(
                "SELECT setval($1::text::regclass, $2, true)",
                &[&seq.name, &value],
            )
            .await
            .with_context(|| format!("while setting sequence {} to {value}", seq.name))?;
        moved.push((seq.name.clone(), value));
    }
    Ok(SequenceReport {
        source,
        moved,
        total: sequences.len(),
        warnings,
    })
}

/// For each owned sequence, the furthest value in the column it owns (the largest for an
/// ascending sequence, the smallest for a descending one).
async fn data_extremes(standby: &Client) -> Result<HashMap<String, Option<i64>>> {
    let owned = standby
        .query(OWNED, &[])
        .await
        .context("while finding the columns the sequences own")?;
    let mut out = HashMap::new();
    for row in owned {
        let (seq, table, column): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let agg = if row.get::<_, i64>(3) > 0 {
            "max"
        } else {
            "min"
        };
        let value: Option<i64> = standby
            .query_one(&format!("SELECT {agg}({column})::bigint FROM {table}"), &[])
            .await
            .with_context(|| format!("while reading the furthest {table}.{column}"))?
            .get(0);
        out.insert(seq, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(last: Option<i64>, increment: i64) -> Sequence {
        Sequence {
            name: "nms.alarm_id_seq".into(),
            last_value: last,
            increment,
            min: if increment > 0 { 1 } else { -1000 },
            max: if increment > 0 { 1000 } else { -1 },
        }
    }

    #[test]
    fn targets() {
        let cases = [
            // (sequence, floor, margin, expected)
            (
                "behind the primary",
                seq(Some(10), 1),
                Some(50),
                0,
                Target::Set(50),
            ),
            (
                "at the primary",
                seq(Some(50), 1),
                Some(50),
                0,
                Target::Keep,
            ),
            (
                "ahead: never backwards",
                seq(Some(60), 1),
                Some(50),
                0,
                Target::Keep,
            ),
            ("primary never used it", seq(None, 1), None, 0, Target::Keep),
            (
                "data plus margin",
                seq(Some(10), 1),
                Some(40),
                100,
                Target::Set(140),
            ),
            (
                "margin counts steps",
                seq(Some(10), 5),
                Some(40),
                100,
                Target::Set(540),
            ),
            (
                "nothing known: margin from the start",
                seq(None, 1),
                None,
                100,
                Target::Set(101),
            ),
            (
                "beyond the bound",
                seq(Some(10), 1),
                Some(990),
                100,
                Target::Capped(1000),
            ),
            (
                "descending",
                seq(Some(-10), -1),
                Some(-40),
                100,
                Target::Set(-140),
            ),
            (
                "descending, ahead",
                seq(Some(-500), -1),
                Some(-40),
                100,
                Target::Keep,
            ),
            (
                "descending, capped",
                seq(Some(-10), -1),
                Some(-990),
                100,
                Target::Capped(-1000),
            ),
        ];
        for (name, s, floor, margin, want) in cases {
            assert_eq!(target(&s, floor, margin), want, "{name}");
        }
    }
}
