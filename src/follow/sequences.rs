//! Sequences are not replicated by logical decoding (PostgreSQL 15 docs, 31.6 Restrictions), so
//! follow brings each standby sequence forward to the primary's value from time to time, and once
//! more at the end of a bounded run. A sequence is never moved backwards: a value the standby has
//! is never handed out twice after a promotion.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::pg::conninfo::ConnInfo;

const LIST: &str = "SELECT format('%I.%I', schemaname, sequencename), last_value \
                    FROM pg_sequences WHERE schemaname <> 'understudy' AND last_value IS NOT NULL";

/// Bring every standby sequence at least to the primary's value. Returns how many moved.
pub async fn sync_sequences(primary: &ConnInfo, standby: &ConnInfo) -> Result<usize> {
    let p = primary
        .connect("understudy sequences")
        .await
        .context("while connecting to the primary")?;
    let s = standby
        .connect("understudy sequences")
        .await
        .context("while connecting to the standby")?;
    let (on_primary, on_standby) = tokio::try_join!(p.query(LIST, &[]), s.query(LIST, &[]))
        .context("while reading sequences")?;
    let standby_values: std::collections::HashMap<String, i64> = on_standby
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    let mut moved = 0;
    for row in &on_primary {
        let name: String = row.get(0);
        let value: i64 = row.get(1);
        if standby_values.get(&name).is_some_and(|&v| v >= value) {
            continue;
        }
        let exists: bool = s
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?
            .get(0);
        if !exists {
            tracing::warn!("sequence {name} exists on the primary but not on the standby");
            continue;
        }
        // setval takes the sequence's lock; the GREATEST guards against a concurrent advance.
        s.execute(
            "SELECT setval($1::text::regclass, GREATEST($2::bigint, coalesce( \
                 (SELECT last_value FROM pg_sequences \
                  WHERE format('%I.%I', schemaname, sequencename) = $1::text), $2::bigint)))",
            &[&name, &value],
        )
        .await
        .with_context(|| format!("while setting sequence {name} on the standby"))?;
        moved += 1;
    }
    Ok(moved)
}

/// Run [`sync_sequences`] every `interval` until aborted; failures are logged and retried.
pub(super) async fn periodic(primary: ConnInfo, standby: ConnInfo, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        match sync_sequences(&primary, &standby).await {
            Ok(n) if n > 0 => tracing::debug!("brought {n} sequences forward on the standby"),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not bring sequences forward: {e:#}"),
        }
    }
}
