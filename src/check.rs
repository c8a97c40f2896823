//! `understudy check`: with writes quiet, compare every replicated table row for row, and every
//! sequence, between the primary and the standby.
//!
//! Each table is reduced on each side to its row count and a hash of the sorted hashes of its
//! rows' text forms (a multiset comparison that needs no key and no collation). Both sessions pin
//! the settings that shape text output (DateStyle, TimeZone, IntervalStyle, extra_float_digits)
//! so equal values print equally. For a table that differs, the rows found on one side only are
//! listed (up to [`SHOWN_ROWS`] each way).

use std::collections::HashSet;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::pg::conninfo::ConnInfo;
use crate::state;

/// Rows listed per side for a table that differs.
pub const SHOWN_ROWS: usize = 10;

const SESSION: &str = "SET datestyle = ISO; SET timezone = UTC; SET intervalstyle = postgres; \
                       SET extra_float_digits = 3";

/// The outcome of a comparison.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub tables: usize,
    pub rows: u64,
    pub sequences: usize,
    /// One line per difference found.
    pub differences: Vec<String>,
}

impl CheckReport {
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compare the primary and the standby.
pub async fn check(primary: &ConnInfo, standby: &ConnInfo) -> Result<CheckReport> {
    let s = standby
        .connect("understudy check")
        .await
        .context("while connecting to the standby")?;
    let source = state::read_source(&s).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} was never bootstrapped: run `understudy bootstrap` first",
            standby.redacted()
        )
    })?;
    let p = primary
        .connect("understudy check")
        .await
        .context("while connecting to the primary")?;
    p.batch_execute(SESSION).await?;
    s.batch_execute(SESSION).await?;

    let tables: Vec<String> = p
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables \
             WHERE pubname = $1 AND schemaname <> 'understudy' ORDER BY 1",
            &[&source.publication],
        )
        .await
        .context("while listing the published tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = CheckReport::default();
    for table in &tables {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h COLLATE \"C\")), '') \
             FROM (SELECT md5(t::text) AS h FROM ONLY {table} t) rows"
        );
        let (a, b) = tokio::join!(p.query_one(&sql, &[]), s.query_one(&sql, &[]));
        let a = a.with_context(|| format!("while reading {table} on the primary"))?;
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                report
                    .differences
                    .push(format!("{table}: cannot be read on the standby: {e}"));
                continue;
            }
        };
        let (count_p, hash_p): (i64, String) = (a.get(0), a.get(1));
        let (count_s, hash_s): (i64, String) = (b.get(0), b.get(1));
        report.tables += 1;
        report.rows += count_p as u64;
        if hash_p != hash_s || count_p != count_s {
            report.differences.push(format!(
                "{table}: {count_p} rows on the primary, {count_s} on the standby, contents differ"
            ));
            report
                .differences
                .extend(row_differences(&p, &s, table).await?);
        }
    }
    report.sequences = compare_sequences(&p, &s, &mut report.differences).await?;
    Ok(report)
}

async fn row_differences(p: &Client, s: &Client, table: &str) -> Result<Vec<String>> {
    let sql = format!("SELECT md5(t::text), t::text FROM ONLY {table} t");
    let (a, b) = tokio::try_join!(p.query(&sql, &[]), s.query(&sql, &[]))?;
    let hashes = |rows: &[tokio_postgres::Row]| -> HashSet<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let (ha, hb) = (hashes(&a), hashes(&b));
    let mut out = Vec::new();
    for (rows, other, side) in [(&a, &hb, "primary"), (&b, &ha, "standby")] {
        let only: Vec<String> = rows
            .iter()
            .filter(|r| !other.contains(&r.get::<_, String>(0)))
            .map(|r| r.get::<_, String>(1))
            .collect();
        for row in only.iter().take(SHOWN_ROWS) {
            let shown: String = row.chars().take(200).collect();
            out.push(format!("{table}: only on the {side}: {shown}"));
        }
        if only.len() > SHOWN_ROWS {
            out.push(format!(
                "{table}: … and {} more rows only on the {side}",
                only.len() - SHOWN_ROWS
            ));
        }
    }
    Ok(out)
}

async fn compare_sequences(p: &Client, s: &Client, differences: &mut Vec<String>) -> Result<usize> {
    let sql = "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
               WHERE schemaname <> 'understudy' ORDER BY 1";
    let (a, b) = tokio::try_join!(p.query(sql, &[]), s.query(sql, &[]))?;
    let standby: std::collections::HashMap<String, Option<i64>> =
        b.iter().map(|r| (r.get(0), r.get(1))).collect();
    for row in &a {
        let name: String = row.get(0);
        let value: Option<i64> = row.get(1);
        match standby.get(&name) {
            None => differences.push(format!("sequence {name}: missing on the standby")),
            Some(sv) if sv.unwrap_or(0) < value.unwrap_or(0) => differences.push(format!(
                "sequence {name}: {} on the primary, {} on the standby (behind)",
                value.map_or("unused".into(), |v| v.to_string()),
                sv.map_or("unused".into(), |v| v.to_string())
            )),
            Some(_) => {}
        }
    }
    Ok(a.len())
}
