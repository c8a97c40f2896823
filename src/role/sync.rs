//! Synchronous mode (opt-in): a commit on the primary returns only once the change is durable on
//! the standby side.
//!
//! How: the primary's `synchronous_standby_names` names understudy's follower by its
//! `application_name` ([`crate::follow::FollowOptions::application_name`]). The follower's
//! logical walsender then counts as a synchronous standby, and a committing backend waits until
//! the flush position the follower reports reaches the end of its commit record. The follower
//! reports as flush position what is durable on our side (guarantee 4): the journal's fsynced
//! position with `--ack journal`, the standby's applied position otherwise. So a commit that
//! returned is in the journal (or applied), never only in a socket buffer.
//!
//! This module owns:
//! * [`set_synchronous_standby`] / [`synchronous_standby_names`]: the primary's setting, changed
//!   with `ALTER SYSTEM` and a reload, and read back;
//! * [`standby_seen`]: the follower as the primary sees it (`pg_stat_replication`);
//! * [`SyncPolicy`]: the pure decision what to do while the standby is gone ([`StandbyLoss`]):
//!   keep commits waiting, or fall back to asynchronous replication after a while, with an
//!   alarm either way. Another part performs its [`SyncAction`]s.
//!
//! PostgreSQL behaviour relied on
//! (<https://www.postgresql.org/docs/15/warm-standby.html#SYNCHRONOUS-REPLICATION>,
//! <https://www.postgresql.org/docs/15/runtime-config-replication.html#GUC-SYNCHRONOUS-STANDBY-NAMES>):
//! * Any walsender whose `application_name` matches (case-insensitively) is a candidate,
//!   logical ones included; it must be in state `streaming` and have reported a flush position.
//!   The commit waits for that walsender's reported flush (`synchronous_commit = on`, the
//!   default) to pass the commit record's end, which is the `end_lsn` of pgoutput's Commit
//!   message.
//! * `pg_reload_conf()` only signals: each process applies the new value when it next handles the
//!   signal, so the value is polled on fresh statements until this session shows it.
//! * When the setting becomes empty, the checkpointer (on its reload) releases every commit that
//!   was waiting for a synchronous standby; they return as committed.
//! * `ALTER SYSTEM` cannot run in a transaction block and needs a superuser, or on PostgreSQL 15
//!   `GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::ident::quote_literal;
use crate::lsn::Lsn;
/// What to do while the synchronous standby is gone: the sidecar configuration's
/// `on_standby_loss`, decided on here.
pub use crate::sidecar::config::StandbyLoss;

/// How long a reload may take to show in this session before [`set_synchronous_standby`] gives up.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two reads of the setting while a reload is under way.
const RELOAD_POLL: Duration = Duration::from_millis(20);
/// The longest `application_name` PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer one is cut
/// and would never match.
const MAX_APPLICATION_NAME: usize = 63;

/// Make `application_name` the primary's one synchronous standby, or (`None`) have none, and
/// return once this session shows the new `synchronous_standby_names`.
///
/// `Some`: `ALTER SYSTEM SET synchronous_standby_names = '"<name>"'`. `None`: `ALTER SYSTEM RESET`;
/// if the configuration file still names a standby, it is overridden with `''`, because `None`
/// means that no commit waits for a standby. Sets `synchronous_commit = local` on `client`'s
/// session first, so nothing run on it waits for a standby.
///
/// Commits already waiting for a standby are released once the checkpointer has handled the
/// reload, which may be a moment after this returns.
pub async fn set_synchronous_standby(
    client: &Client,
    application_name: Option<&str>,
) -> Result<()> {
    client
        .batch_execute("SET synchronous_commit = local")
        .await
        .context("while setting synchronous_commit = local on the primary session")?;
    match application_name {
        Some(name) => {
            let value = standby_list(name)?;
            let sql = format!(
                "ALTER SYSTEM SET synchronous_standby_names = {}",
                quote_literal(&value)
            );
            let shown = change_and_reload(client, &sql).await?;
            if shown != value {
                bail!(
                    "synchronous_standby_names on the primary is {shown:?} after setting it to \
                     {value:?} and reloading; check the primary's server log for a configuration \
                     error"
                );
            }
        }
        None => {
            let shown =
                change_and_reload(client, "ALTER SYSTEM RESET synchronous_standby_names").await?;
            if !shown.is_empty() {
                tracing::info!(
                    from_config_file = %shown,
                    "the primary's configuration file names a synchronous standby; overriding it \
                     with ''"
                );
                let shown =
                    change_and_reload(client, "ALTER SYSTEM SET synchronous_standby_names = ''")
                        .await?;
                if !shown.is_empty() {
                    bail!(
                        "synchronous_standby_names on the primary is still {shown:?} after \
                         setting it to '' and reloading; check the primary's server log"
                    );
                }
            }
        }
    }
    Ok(())
}

/// The primary's `synchronous_standby_names` as this session sees it (`""`: none).
pub async fn synchronous_standby_names(client: &Client) -> Result<String> {
    let row = client
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .context("while reading synchronous_standby_names on the primary")?;
    Ok(row.get(0))
}

/// `synchronous_standby_names` naming `application_name` alone, double-quoted as the setting's
/// syntax needs (embedded double quotes doubled).
fn standby_list(application_name: &str) -> Result<String> {
    if application_name.is_empty() {
        bail!("the synchronous standby's application_name is empty; give the follower a name");
    }
    if application_name.len() > MAX_APPLICATION_NAME {
        bail!(
            "application_name {application_name:?} is longer than {MAX_APPLICATION_NAME} bytes; \
             PostgreSQL would cut it and never match it as a synchronous standby: choose a \
             shorter one"
        );
    }
    if !application_name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        bail!(
            "application_name {application_name:?} holds characters other than printable ASCII, \
             which PostgreSQL replaces with '?', so it would never match as a synchronous \
             standby: choose a plain ASCII name"
        );
    }
    Ok(format!("\"{}\"", application_name.replace('"', "\"\"")))
}

/// Run `sql` (an `ALTER SYSTEM`), reload, and return the setting once this session has applied
/// the reload.
async fn change_and_reload(client: &Client, sql: &str) -> Result<String> {
    let before: String = client
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .await
        .context("while reading the primary's configuration load time")?
        .get(0);
    client.batch_execute(sql).await.map_err(|e| {
        let fix = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            ": connect as a superuser, or GRANT ALTER SYSTEM ON PARAMETER \
             synchronous_standby_names to this user"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("while running {sql} on the primary{fix}"))
    })?;
    client
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .context(
            "while reloading the primary's configuration (pg_reload_conf needs a superuser or \
             GRANT EXECUTE ON FUNCTION pg_reload_conf() to this user)",
        )?;
    // Each statement is a fresh command: the backend applies a pending reload before running it.
    let started = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT pg_conf_load_time() > $1::text::timestamptz, \
                 current_setting('synchronous_standby_names')",
                &[&before],
            )
            .await
            .context("while reading synchronous_standby_names on the primary")?;
        if row.get::<_, bool>(0) {
            return Ok(row.get(1));
        }
        if started.elapsed() >= RELOAD_TIMEOUT {
            bail!(
                "the primary did not reload its configuration within {RELOAD_TIMEOUT:?} after \
                 {sql}; check that its postmaster is alive and its server log"
            );
        }
        tokio::time::sleep(RELOAD_POLL).await;
    }
}

/// The follower as the primary sees it: its row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq)]
pub struct StandbySeen {
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// What the follower last reported as flushed (for understudy: durable on its side).
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub flush_lag_secs: Option<f64>,
}

impl StandbySeen {
    /// Streaming: the only state in which PostgreSQL counts a walsender as synchronous.
    pub fn is_streaming(&self) -> bool {
        self.state == "streaming"
    }
}

/// The `pg_stat_replication` row of the walsender with `application_name` (compared as
/// PostgreSQL does for `synchronous_standby_names`: case-insensitively), `None` when there is
/// none. When several match (an old connection not yet gone), a streaming one, newest first.
/// Without superuser or `pg_read_all_stats` the positions read as `None`.
pub async fn standby_seen(client: &Client, application_name: &str) -> Result<Option<StandbySeen>> {
    let row = client
        .query_opt(
            "SELECT coalesce(state, ''), coalesce(sync_state, ''), flush_lsn::text, \
                    replay_lsn::text, extract(epoch FROM flush_lag)::float8 \
             FROM pg_stat_replication WHERE lower(application_name) = lower($1) \
             ORDER BY state = 'streaming' DESC, backend_start DESC LIMIT 1",
            &[&application_name],
        )
        .await
        .context("while reading pg_stat_replication on the primary")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lsn = |i: usize| -> Result<Option<Lsn>> {
        row.get::<_, Option<String>>(i)
            .map(|t| t.parse::<Lsn>())
            .transpose()
            .context("while reading an LSN from pg_stat_replication")
    };
    Ok(Some(StandbySeen {
        state: row.get(0),
        sync_state: row.get(1),
        flush_lsn: lsn(2)?,
        replay_lsn: lsn(3)?,
        flush_lag_secs: row.get(4),
    }))
}

/// Where synchronous mode stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// The standby streams and is the synchronous standby.
    Sync,
    /// The standby is gone and the setting still names it: commits wait.
    Waiting { since: Instant },
    /// The standby was gone too long: the setting names none, commits do not wait.
    AsyncFallback { since: Instant },
}

/// What the caller performs for the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Empty `synchronous_standby_names` (`set_synchronous_standby(client, None)`).
    FallBackToAsync,
    /// Name the standby again (`set_synchronous_standby(client, Some(name))`).
    RestoreSync,
    RaiseAlarm(String),
    ClearAlarm,
}

/// The fallback policy: fed, at every probe, whether the standby is connected and streaming;
/// answers with what to do. Pure: time comes in as `now`.
///
/// * Streaming: back to [`SyncState::Sync`], restoring the setting after a fallback and clearing
///   the alarm if one was raised.
/// * Gone with [`StandbyLoss::Wait`]: [`SyncState::Waiting`] and one alarm.
/// * Gone with [`StandbyLoss::Async`]: [`SyncState::Waiting`] (no alarm yet), then once `after`
///   has passed since it went, [`SyncAction::FallBackToAsync`] and one alarm.
///
/// Sync is restored only when the standby streams again, never on a timer.
#[derive(Clone, Debug)]
pub struct SyncPolicy {
    loss: StandbyLoss,
    state: SyncState,
    /// An alarm is raised and not yet cleared.
    alarmed: bool,
}

impl SyncPolicy {
    /// A policy for a primary whose setting names the standby.
    pub fn new(loss: StandbyLoss) -> SyncPolicy {
        SyncPolicy {
            loss,
            state: SyncState::Sync,
            alarmed: false,
        }
    }

    /// A policy for a primary found with an empty setting (for example after a restart during
    /// a fallback): the first probe that sees the standby streaming restores sync; one that does
    /// not raises the alarm (or, with [`StandbyLoss::Wait`], restores sync at once and waits).
    pub fn fallen_back(loss: StandbyLoss, since: Instant) -> SyncPolicy {
        SyncPolicy {
            loss,
            state: SyncState::AsyncFallback { since },
            alarmed: false,
        }
    }

    pub fn state(&self) -> &SyncState {
        &self.state
    }

    /// One probe at `now`: is the standby connected and streaming?
    pub fn observe(&mut self, now: Instant, standby_streaming: bool) -> Vec<SyncAction> {
        let mut actions = Vec::new();
        if standby_streaming {
            if matches!(self.state, SyncState::AsyncFallback { .. }) {
                actions.push(SyncAction::RestoreSync);
            }
            if std::mem::take(&mut self.alarmed) {
                actions.push(SyncAction::ClearAlarm);
            }
            self.state = SyncState::Sync;
            return actions;
        }
        match (&self.state, self.loss) {
            (SyncState::Sync, _) => {
                self.state = SyncState::Waiting { since: now };
                if self.loss == StandbyLoss::Wait {
                    self.raise(&mut actions, wait_alarm());
                }
                self.fall_back_if_due(now, &mut actions);
            }
            (SyncState::Waiting { .. }, _) => self.fall_back_if_due(now, &mut actions),
            (SyncState::AsyncFallback { .. }, StandbyLoss::Wait) => {
                // The policy says commits wait: never stay asynchronous under it.
                actions.push(SyncAction::RestoreSync);
                self.state = SyncState::Waiting { since: now };
                self.alarmed = false;
                self.raise(&mut actions, wait_alarm());
            }
            (SyncState::AsyncFallback { .. }, StandbyLoss::Async { after }) => {
                if !self.alarmed {
                    self.raise(&mut actions, fallback_alarm(after));
                }
            }
        }
        actions
    }

    fn fall_back_if_due(&mut self, now: Instant, actions: &mut Vec<SyncAction>) {
        let (SyncState::Waiting { since }, StandbyLoss::Async { after }) = (&self.state, self.loss)
        else {
            return;
        };
        if now.saturating_duration_since(*since) >= after {
            self.state = SyncState::AsyncFallback { since: now };
            actions.push(SyncAction::FallBackToAsync);
            self.raise(actions, fallback_alarm(after));
        }
    }

    fn raise(&mut self, actions: &mut Vec<SyncAction>, text: String) {
        self.alarmed = true;
        actions.push(SyncAction::RaiseAlarm(text));
    }
}

fn wait_alarm() -> String {
    "commits on the primary are waiting for the standby: it is not streaming, and the policy \
     is to wait; they return once it streams again"
        .to_string()
}

fn fallback_alarm(after: Duration) -> String {
    format!(
        "fell back to asynchronous replication: the standby was not streaming for {:.1} s; \
         transactions committed now can be lost on failover until it streams again",
        after.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_list_quotes_the_name() {
        assert_eq!(standby_list("understudy_b").unwrap(), "\"understudy_b\"");
        assert_eq!(standby_list("a\"b, c").unwrap(), "\"a\"\"b, c\"");
        assert!(standby_list("").is_err());
        assert!(standby_list(&"x".repeat(64)).is_err());
        assert!(standby_list("nœud").is_err());
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Sync,
        Waiting,
        AsyncFallback,
    }

    fn kind(s: &SyncState) -> Kind {
        match s {
            SyncState::Sync => Kind::Sync,
            SyncState::Waiting { .. } => Kind::Waiting,
            SyncState::AsyncFallback { .. } => Kind::AsyncFallback,
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Act {
        Fall,
        Restore,
        Raise,
        Clear,
    }

    fn act(a: &SyncAction) -> Act {
        match a {
            SyncAction::FallBackToAsync => Act::Fall,
            SyncAction::RestoreSync => Act::Restore,
            SyncAction::RaiseAlarm(_) => Act::Raise,
            SyncAction::ClearAlarm => Act::Clear,
        }
    }

    const ASYNC_1S: StandbyLoss = StandbyLoss::Async {
        after: Duration::from_secs(1),
    };

    /// (case, policy, start in fallback?, probes as (ms since start, streaming?, expected
    /// actions, expected state after)).
    type Case = (
        &'static str,
        StandbyLoss,
        bool,
        &'static [(u64, bool, &'static [Act], Kind)],
    );

    const CASES: &[Case] = &[
        (
            "streaming throughout: nothing to do",
            StandbyLoss::Wait,
            false,
            &[(0, true, &[], Kind::Sync), (500, true, &[], Kind::Sync)],
        ),
        (
            "wait: gone raises the alarm once, back clears it, no setting changes",
            StandbyLoss::Wait,
            false,
            &[
                (0, true, &[], Kind::Sync),
                (100, false, &[Act::Raise], Kind::Waiting),
                (5_000, false, &[], Kind::Waiting),
                (60_000, false, &[], Kind::Waiting),
                (60_100, true, &[Act::Clear], Kind::Sync),
                (60_200, true, &[], Kind::Sync),
            ],
        ),
        (
            "wait: gone again after coming back raises a new alarm",
            StandbyLoss::Wait,
            false,
            &[
                (0, false, &[Act::Raise], Kind::Waiting),
                (100, true, &[Act::Clear], Kind::Sync),
                (200, false, &[Act::Raise], Kind::Waiting),
            ],
        ),
        (
            "async: back before the timeout, no alarm and no fallback",
            ASYNC_1S,
            false,
            &[
                (0, false, &[], Kind::Waiting),
                (999, false, &[], Kind::Waiting),
                (1_000, true, &[], Kind::Sync),
            ],
        ),
        (
            "async: the timeout counts from the first probe that saw it gone",
            ASYNC_1S,
            false,
            &[
                (0, true, &[], Kind::Sync),
                (500, false, &[], Kind::Waiting),
                (1_400, false, &[], Kind::Waiting),
                (1_500, false, &[Act::Fall, Act::Raise], Kind::AsyncFallback),
                (9_000, false, &[], Kind::AsyncFallback),
                (9_100, true, &[Act::Restore, Act::Clear], Kind::Sync),
                (9_200, true, &[], Kind::Sync),
            ],
        ),
        (
            "async: a flapping standby restarts the timeout",
            ASYNC_1S,
            false,
            &[
                (0, false, &[], Kind::Waiting),
                (900, true, &[], Kind::Sync),
                (1_000, false, &[], Kind::Waiting),
                (1_900, false, &[], Kind::Waiting),
                (2_000, false, &[Act::Fall, Act::Raise], Kind::AsyncFallback),
            ],
        ),
        (
            "async after zero: falls back at the first probe that sees it gone",
            StandbyLoss::Async {
                after: Duration::ZERO,
            },
            false,
            &[(0, false, &[Act::Fall, Act::Raise], Kind::AsyncFallback)],
        ),
        (
            "found fallen back, standby streaming: restore, nothing to clear",
            ASYNC_1S,
            true,
            &[(0, true, &[Act::Restore], Kind::Sync)],
        ),
        (
            "found fallen back, standby gone: the alarm is raised once, no second fallback",
            ASYNC_1S,
            true,
            &[
                (0, false, &[Act::Raise], Kind::AsyncFallback),
                (5_000, false, &[], Kind::AsyncFallback),
                (5_100, true, &[Act::Restore, Act::Clear], Kind::Sync),
            ],
        ),
        (
            "found fallen back under the wait policy: restore at once and wait",
            StandbyLoss::Wait,
            true,
            &[
                (0, false, &[Act::Restore, Act::Raise], Kind::Waiting),
                (100, false, &[], Kind::Waiting),
                (200, true, &[Act::Clear], Kind::Sync),
            ],
        ),
    ];

    #[test]
    fn policy_table() {
        let start = Instant::now();
        for (case, loss, fallen, probes) in CASES {
            let mut policy = if *fallen {
                SyncPolicy::fallen_back(*loss, start)
            } else {
                SyncPolicy::new(*loss)
            };
            for (i, (ms, streaming, want_actions, want_state)) in probes.iter().enumerate() {
                let actions = policy.observe(start + Duration::from_millis(*ms), *streaming);
                let got: Vec<Act> = actions.iter().map(act).collect();
                assert_eq!(
                    got, *want_actions,
                    "{case}: probe {i} at {ms} ms, streaming {streaming}: actions {actions:?}"
                );
                assert_eq!(
                    kind(policy.state()),
                    *want_state,
                    "{case}: probe {i} at {ms} ms, streaming {streaming}: state"
                );
            }
        }
    }

    #[test]
    fn alarms_say_what_happened() {
        let start = Instant::now();
        let mut wait = SyncPolicy::new(StandbyLoss::Wait);
        let raised = wait.observe(start, false);
        assert!(
            matches!(&raised[..], [SyncAction::RaiseAlarm(t)] if t.starts_with("commits on the primary are waiting for the standby")),
            "{raised:?}"
        );
        let mut fallback = SyncPolicy::new(ASYNC_1S);
        fallback.observe(start, false);
        let fell = fallback.observe(start + Duration::from_secs(2), false);
        assert!(
            matches!(&fell[..], [SyncAction::FallBackToAsync, SyncAction::RaiseAlarm(t)]
                if t.starts_with("fell back to asynchronous replication")
                    && t.contains("can be lost on failover")),
            "{fell:?}"
        );
    }

    #[test]
    fn fallback_time_is_when_it_fell_back() {
        let start = Instant::now();
        let mut policy = SyncPolicy::new(ASYNC_1S);
        policy.observe(start, false);
        assert_eq!(policy.state(), &SyncState::Waiting { since: start });
        let later = start + Duration::from_millis(1_200);
        policy.observe(later, false);
        assert_eq!(policy.state(), &SyncState::AsyncFallback { since: later });
    }
}
