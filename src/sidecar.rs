//! `understudy run --config FILE`: the sidecar beside each NMS node.
//!
//! ```text
//!   every probe_interval:  own database ──▶ role, epoch (authoritative)
//!                          peer database ──▶ PeerSeen / PeerUnreachable ──▶ machine::step ──▶ actions
//!   HTTP (/v1/switchover, /v1/promote) ──▶ commands ───────────────────────▶ machine::step ──▶ actions
//! ```
//!
//! The same loop runs on both nodes; the databases say who is what (`understudy.node`).
//! * **No state yet** ([`first_start`]): the node takes its role from the peer's, or, on a fresh
//!   pair, from `nms.initial_primary` or from which database holds the NMS's data.
//! * **Standby**: copies the primary if its database was never bootstrapped (or the copy did not
//!   finish), keeps the NMS read-only, follows (through the journal when configured), and, with
//!   automatic failover, promotes once the primary has been unreachable for the timeout and the
//!   witness agrees (the fence hook first).
//! * **Primary**: watches its standby; in synchronous mode it names the standby in
//!   `synchronous_standby_names` and applies the standby-loss policy. It fences itself the
//!   moment it sees a peer at a higher epoch.
//! * **Fenced**: an old primary. With `auto_rejoin` it rejoins the new primary as its standby
//!   ([`crate::role::rejoin`]): what diverged is saved first.
//!
//! The role logic is [`crate::role::machine::step`]; this module performs its actions. Every
//! action is idempotent and the state is rebuilt from the database on each probe, so a sidecar
//! killed half-way picks up where the database says it is.

pub mod config;
pub mod direct;
mod first_start;
mod follower;
pub mod http;
pub mod ledger;
pub mod local;
pub mod report;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use crate::bootstrap::{self, BootstrapOptions};
use crate::lsn::Lsn;
use crate::role::machine::{self, Action, Event, Hook, NodeState, Policy};
use crate::role::node::{self, NodeRecord};
use crate::role::promote::{self, PromoteOptions, PromoteSummary};
use crate::role::{guard, rejoin, switchover, sync, Role};
use crate::state::{self, SourceState};

use config::{application_name, slot_for, Config, SyncMode, Witness};
use first_start::PeerFacts;
pub use follower::apply_journal;
use follower::Follower;
use http::{Command, Request};
use report::SidecarStatus;

/// How long after a failed rejoin the sidecar tries again.
const REJOIN_RETRY: Duration = Duration::from_secs(30);

/// The prefix of the alarm an isolated primary raises.
const ISOLATED: &str = "isolated: ";

/// Run the sidecar until `shutdown` turns true.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let addr = cfg.this_node().http;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "while listening on {addr} (nodes.{}.http): is another sidecar running there? \
             Choose a free address in {}",
            cfg.this,
            cfg.path.display()
        )
    })?;
    let (commands_tx, mut commands) = mpsc::channel::<Request>(4);
    let mut sidecar = Sidecar::new(cfg, shutdown.clone());
    let server = tokio::spawn(http::serve(
        listener,
        sidecar.status_rx.clone(),
        commands_tx,
        sidecar.cfg.http.token.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        node = %sidecar.cfg.this,
        "sidecar running; status on http://{addr}/v1/status"
    );
    let mut ticker = tokio::time::interval(sidecar.cfg.failover.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                // A dropped switch means nobody can stop us any more: stop now.
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(req) = commands.recv() => {
                let outcome = sidecar.command(req.command).await;
                if let Err(e) = &outcome {
                    sidecar.error(e);
                }
                sidecar.publish();
                let _ = req.reply.send(outcome.map_err(|e| format!("{e:#}")));
            }
            _ = ticker.tick() => {
                match sidecar.tick().await {
                    Ok(()) => sidecar.clear_error(),
                    Err(e) => sidecar.error(&e),
                }
                sidecar.publish();
            }
        }
    }
    if let Some(f) = sidecar.follower.take() {
        f.stop().await;
    }
    server.await.ok();
    Ok(())
}

struct Sidecar {
    cfg: Config,
    shutdown: watch::Receiver<bool>,
    status: SidecarStatus,
    status_tx: watch::Sender<SidecarStatus>,
    status_rx: watch::Receiver<SidecarStatus>,
    own: Option<Client>,
    peer: Option<Client>,
    /// The role controller's view; rebuilt whenever the database says otherwise.
    machine: Option<NodeState>,
    follower: Option<Follower>,
    /// Since when the peer has not answered (it answered before).
    lost_since: Option<Instant>,
    peer_current_lsn: Option<Lsn>,
    sync_policy: Option<sync::SyncPolicy>,
    /// The follower failed and is waiting to be started again.
    follower_retry_at: Option<Instant>,
    /// When write privileges of the NMS roles were last looked for (standby and fenced).
    guard_checked: Option<Instant>,
    /// The alarms the synchronous-mode policy raised (cleared together).
    sync_alarms: Vec<String>,
    /// A rejoin failed: not before this.
    rejoin_retry_at: Option<Instant>,
}

impl Sidecar {
    fn new(cfg: Config, shutdown: watch::Receiver<bool>) -> Sidecar {
        let now = unix_ms();
        let status = SidecarStatus {
            node: cfg.this.clone(),
            role: "starting".into(),
            started_unix_ms: now,
            updated_unix_ms: now,
            peer: Some(report::PeerStatus {
                name: cfg.peer().name.clone(),
                ..Default::default()
            }),
            sync: report::SyncStatus {
                mode: match cfg.sync.mode {
                    SyncMode::Async => "async".into(),
                    SyncMode::Sync => "sync".into(),
                },
                state: "off".into(),
                since_unix_ms: None,
            },
            failover: report::FailoverStatus {
                automatic: cfg.failover.automatic,
                timeout_secs: cfg.failover.timeout.as_secs_f64(),
                primary_lost_for_secs: None,
                witness: cfg.failover.witness.as_ref().map(|w| match w {
                    Witness::Tcp(a) => format!("tcp:{a}"),
                    Witness::Command(c) => format!("cmd:{c}"),
                }),
            },
            ..Default::default()
        };
        let (status_tx, status_rx) = watch::channel(status.clone());
        Sidecar {
            cfg,
            shutdown,
            status,
            status_tx,
            status_rx,
            own: None,
            peer: None,
            machine: None,
            follower: None,
            lost_since: None,
            peer_current_lsn: None,
            sync_policy: None,
            follower_retry_at: None,
            guard_checked: None,
            sync_alarms: Vec::new(),
            rejoin_retry_at: None,
        }
    }

    fn policy(&self) -> Policy {
        Policy {
            automatic_failover: self.cfg.failover.automatic,
            failover_timeout_ms: self
                .cfg
                .failover
                .timeout
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            fence_hook: self.cfg.hooks.fence.is_some(),
            auto_rejoin: self.cfg.failover.auto_rejoin,
        }
    }

    // ----- one probe -------------------------------------------------------------------------

    async fn tick(&mut self) -> Result<()> {
        let own = self.read_own().await?;
        let peer = self.probe_peer().await;
        let Some(own) = own else {
            return self.first_start(peer).await;
        };
        let policy = self.policy();
        let mut state = match self.machine {
            Some(s) if s.role == own.role && s.epoch == own.epoch => s,
            Some(s) => NodeState {
                role: own.role,
                epoch: own.epoch,
                following: self.follower.is_some(),
                ..s
            },
            None => {
                let mut s = NodeState::new(own.role, own.epoch, policy);
                s.following = self.follower.is_some();
                // A standby follows a primary at its own epoch by construction: failover is
                // armed even if the primary is already gone when this sidecar starts (the
                // witness still has to agree).
                if own.role == Role::Standby {
                    s.peer = Some(machine::Peer {
                        role: Role::Primary,
                        epoch: own.epoch,
                    });
                }
                // A primary with recorded grants had isolated itself (or a switchover stopped
                // half-way): it resumes once it sees its standby at its epoch.
                if own.role == Role::Primary {
                    s.isolated = self.has_recorded_grants().await?;
                }
                s
            }
        };
        state.policy = policy;
        self.status.role = own.role.as_str().into();
        self.status.epoch = own.epoch.0;
        let event = match &peer {
            Ok(Some(p)) => {
                self.lost_since = None;
                Some(Event::PeerSeen {
                    role: p.role,
                    epoch: p.epoch,
                })
            }
            Ok(None) => {
                self.lost_since = None;
                None
            }
            Err(e) if server_answered(e) => {
                self.lost_since = None;
                tracing::warn!(node = %self.cfg.this, "{e:#}");
                None
            }
            Err(_) => {
                let since = *self.lost_since.get_or_insert_with(Instant::now);
                Some(Event::PeerUnreachable {
                    for_ms: since.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
                })
            }
        };
        self.status.failover.primary_lost_for_secs = self
            .lost_since
            .filter(|_| own.role == Role::Standby)
            .map(|s| s.elapsed().as_secs_f64());
        if let Some(event) = event {
            let (next, actions) = machine::step(&state, event);
            state = next;
            self.machine = Some(state);
            self.perform(actions, "failover").await?;
        } else {
            self.machine = Some(state);
        }
        match self.machine.map(|s| s.role) {
            Some(Role::Standby) => self.standby_duties(peer.is_ok()).await?,
            Some(Role::Primary) => self.primary_duties().await?,
            _ => {}
        }
        if self.machine.is_some_and(|s| s.role != Role::Primary) {
            self.check_guard().await?;
        }
        self.refresh_lsns().await;
        Ok(())
    }

    async fn own_client(&mut self) -> Result<&mut Client> {
        let alive = self.own.as_ref().is_some_and(|c| !c.is_closed());
        if !alive {
            let me = self.cfg.this_node();
            let c = tokio::time::timeout(
                self.cfg.failover.connect_timeout,
                me.database.connect("understudy sidecar"),
            )
            .await
            .map_err(|_| anyhow!("this node's database did not answer in time"))?
            .with_context(|| {
                format!(
                    "while connecting to this node's database {}",
                    me.database.redacted()
                )
            })?;
            c.batch_execute("SET synchronous_commit = local").await?;
            self.own = Some(c);
        }
        Ok(self.own.as_mut().expect("connected above"))
    }

    async fn has_recorded_grants(&mut self) -> Result<bool> {
        let client = self.own_client().await?;
        let n: i64 = client
            .query_one(
                "SELECT CASE WHEN to_regclass('understudy.recorded_grant') IS NULL THEN 0 \
                 ELSE (SELECT count(*) FROM understudy.recorded_grant) END",
                &[],
            )
            .await
            .context("while reading understudy.recorded_grant")?
            .get(0);
        Ok(n > 0)
    }

    async fn read_own(&mut self) -> Result<Option<NodeRecord>> {
        let limit = self.cfg.failover.connect_timeout;
        let client = self.own_client().await?;
        match tokio::time::timeout(limit, node::read_state(&*client)).await {
            Ok(r) => r,
            Err(_) => {
                self.own = None;
                Err(anyhow!(
                    "this node's database did not answer within {limit:?}"
                ))
            }
        }
    }

    /// The peer's node record; `Err` when it does not answer.
    async fn probe_peer(&mut self) -> Result<Option<NodeRecord>> {
        let limit = self.cfg.failover.connect_timeout;
        let result = tokio::time::timeout(limit, async {
            if self.peer.as_ref().is_none_or(|c| c.is_closed()) {
                let c = self
                    .cfg
                    .peer()
                    .database
                    .connect("understudy sidecar")
                    .await?;
                c.batch_execute("SET synchronous_commit = local").await?;
                self.peer = Some(c);
            }
            let c = self.peer.as_ref().expect("connected above");
            let record = node::read_state(c).await?;
            let lsn: Option<String> = c
                .query_one(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                     ELSE pg_current_wal_lsn()::text END",
                    &[],
                )
                .await?
                .get(0);
            anyhow::Ok((record, lsn))
        })
        .await
        .map_err(|_| anyhow!("no answer within {limit:?}"))
        .and_then(|r| r);
        let peer = self.status.peer.get_or_insert_with(Default::default);
        peer.name = self.cfg.peer().name.clone();
        match result {
            Ok((record, lsn)) => {
                peer.reachable = true;
                peer.last_seen_unix_ms = Some(unix_ms());
                peer.role = record.as_ref().map(|r| r.role.as_str().to_string());
                peer.epoch = record.as_ref().map(|r| r.epoch.0);
                self.peer_current_lsn = lsn.and_then(|l| l.parse().ok());
                Ok(record)
            }
            Err(e) => {
                self.peer = None;
                self.peer_current_lsn = None;
                if server_answered(&e) {
                    // Too many connections, a password problem, a restart in progress: the
                    // server is there. Not a reason to take over; the error is reported.
                    peer.reachable = true;
                    peer.last_seen_unix_ms = Some(unix_ms());
                    return Err(e.context("the peer's database answered with an error"));
                }
                peer.reachable = false;
                Err(e)
            }
        }
    }

    // ----- first start -----------------------------------------------------------------------

    async fn first_start(&mut self, peer: Result<Option<NodeRecord>>) -> Result<()> {
        let facts = match peer {
            Err(e) => PeerFacts::Unreachable(format!("{e:#}")),
            Ok(record) => {
                let has_data = match self.peer.as_ref() {
                    Some(c) => first_start::has_data(c).await?,
                    None => false,
                };
                PeerFacts::Seen { record, has_data }
            }
        };
        let my_data = first_start::has_data(self.own_client().await?).await?;
        let role = first_start::decide(
            &self.cfg.this,
            &self.cfg.peer().name,
            my_data,
            &facts,
            self.cfg.nms.initial_primary.as_deref(),
        )
        .map_err(|why| anyhow!(why))?;
        tracing::info!(node = %self.cfg.this, "first start: this node is the {}", role.as_str());
        let name = self.cfg.this.clone();
        let peer_epoch = match &facts {
            PeerFacts::Seen {
                record: Some(r), ..
            } => r.epoch,
            _ => crate::role::Epoch(0),
        };
        let roles = self.cfg.nms.roles.clone();
        let client = self.own_client().await?;
        node::ensure_node(&*client, &name, role).await?;
        if role == Role::Standby {
            // A standby of a primary at epoch N is at epoch N: a lower epoch would fence it.
            node::record_role(client, Role::Standby, peer_epoch).await?;
            let tables = guard::replicated_tables(&*client).await?;
            guard::make_read_only(client, &roles, &tables).await?;
        }
        Ok(())
    }

    // ----- standby ---------------------------------------------------------------------------

    async fn standby_duties(&mut self, peer_answers: bool) -> Result<()> {
        if let Some(f) = self.follower.as_mut() {
            if let Some(why) = f.ended().await {
                self.follower = None;
                self.follower_retry_at = Some(Instant::now() + Duration::from_secs(5));
                if let Some(s) = self.machine.as_mut() {
                    s.following = false;
                }
                bail!("following stopped: {why}");
            }
            self.status.following = true;
            return Ok(());
        }
        self.status.following = false;
        let wants = self.machine.is_some_and(|s| s.following)
            || self.machine.is_some_and(|s| {
                s.peer
                    .is_some_and(|p| p.role == Role::Primary && p.epoch == s.epoch)
            });
        if !wants || !peer_answers {
            return Ok(());
        }
        if self.follower_retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.ensure_copied().await?;
        let tables = {
            let c = self.own_client().await?;
            guard::replicated_tables(&*c).await?
        };
        let roles = self.cfg.nms.roles.clone();
        guard::make_read_only(self.own_client().await?, &roles, &tables).await?;
        self.follower = Some(Follower::start(&self.cfg));
        self.follower_retry_at = None;
        if let Some(s) = self.machine.as_mut() {
            s.following = true;
        }
        self.status.following = true;
        tracing::info!(node = %self.cfg.this, "following {}", self.cfg.peer().name);
        Ok(())
    }

    /// Bootstrap this node from the primary when its database was never copied (or the copy
    /// did not finish).
    async fn ensure_copied(&mut self) -> Result<()> {
        let source = state::read_source(self.own_client().await?).await?;
        if source
            .as_ref()
            .is_some_and(|s| s.state == SourceState::Ready)
        {
            return Ok(());
        }
        let me = self.cfg.this_node().clone();
        tracing::info!(node = %me.name, "copying the primary's database (first start of this standby)");
        let mut options =
            BootstrapOptions::new(self.cfg.peer().database.clone(), me.database.clone());
        options.slot = slot_for(&me.name);
        options.force = true;
        self.own = None;
        let summary = bootstrap::bootstrap(&options, self.shutdown.clone())
            .await
            .context("while copying the primary's database to this standby")?;
        tracing::info!(
            rows = summary.rows,
            seconds = summary.seconds,
            "copy done; following from {}",
            summary.consistent_point
        );
        if let Some(dir) = &me.journal {
            rejoin::empty_journal(dir)?;
        }
        // --force dropped every schema here, understudy's node row with it: record it again, at
        // the primary's epoch.
        let peer_epoch = match self.peer.as_ref() {
            Some(p) => node::read_state(p).await?.map(|r| r.epoch),
            None => None,
        };
        let client = self.own_client().await?;
        node::ensure_node(&*client, &me.name, Role::Standby).await?;
        if let Some(e) = peer_epoch {
            node::record_role(client, Role::Standby, e).await?;
        }
        Ok(())
    }

    // ----- primary ---------------------------------------------------------------------------

    async fn primary_duties(&mut self) -> Result<()> {
        self.status.following = false;
        let standby_app = application_name(&self.cfg.peer().name);
        let mode = self.cfg.sync.mode;
        let loss = self.cfg.sync.on_standby_loss;
        let client = self.own_client().await?;
        let seen = sync::standby_seen(&*client, &standby_app).await?;
        let current = switchover::current_lsn(&*client).await?;
        let names = sync::synchronous_standby_names(&*client).await?;
        if let Some(s) = &seen {
            self.status.lsn.primary_current = Some(current);
            self.status.lsn.applied = s.flush_lsn;
            self.status.lag_bytes = s.flush_lsn.map(|f| current.0.saturating_sub(f.0));
            self.status.lag_seconds = s.flush_lag_secs.or(Some(0.0));
        }
        if mode == SyncMode::Async {
            return Ok(());
        }
        let streaming = seen.as_ref().is_some_and(|s| s.is_streaming());
        // A primary found without a synchronous standby (just promoted, or restarted during a
        // fallback) asks for one again only once the standby streams (policy `async`).
        let policy = self.sync_policy.get_or_insert_with(|| {
            if names.trim().is_empty() {
                sync::SyncPolicy::fallen_back(loss, Instant::now())
            } else {
                sync::SyncPolicy::new(loss)
            }
        });
        let actions = policy.observe(Instant::now(), streaming);
        let state = policy.state().clone();
        let client = self.own_client().await?;
        let mut raised = Vec::new();
        let mut cleared = false;
        for action in actions {
            match action {
                sync::SyncAction::FallBackToAsync => {
                    sync::set_synchronous_standby(&*client, None).await?;
                }
                sync::SyncAction::RestoreSync => {
                    sync::set_synchronous_standby(&*client, Some(&standby_app)).await?;
                }
                sync::SyncAction::RaiseAlarm(text) => {
                    tracing::warn!("{text}");
                    raised.push(text);
                }
                sync::SyncAction::ClearAlarm => cleared = true,
            }
        }
        if cleared {
            let mine = std::mem::take(&mut self.sync_alarms);
            self.status.alarms.retain(|a| !mine.contains(a));
        }
        for text in raised {
            if !self.status.alarms.contains(&text) {
                self.status.alarms.push(text.clone());
                self.sync_alarms.push(text);
            }
        }
        let fallen_back = matches!(state, sync::SyncState::AsyncFallback { .. });
        if !fallen_back && names.trim().is_empty() {
            let client = self.own_client().await?;
            sync::set_synchronous_standby(&*client, Some(&standby_app)).await?;
        }
        self.status.sync.state = match state {
            sync::SyncState::Sync => "sync",
            sync::SyncState::Waiting { .. } => "waiting",
            sync::SyncState::AsyncFallback { .. } => "async_fallback",
        }
        .into();
        Ok(())
    }

    /// Every 10 s on a standby or fenced node: report NMS write privileges that came back
    /// (someone granted them by hand) as an alarm.
    async fn check_guard(&mut self) -> Result<()> {
        if self
            .guard_checked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return Ok(());
        }
        self.guard_checked = Some(Instant::now());
        let roles = self.cfg.nms.roles.clone();
        let crept = guard::crept_back(&*self.own_client().await?, &roles).await?;
        const PREFIX: &str = "write privilege crept back on this read-only node: ";
        self.status.alarms.retain(|a| !a.starts_with(PREFIX));
        for c in crept.iter().take(5) {
            tracing::warn!("{PREFIX}{c}");
            self.status.alarms.push(format!("{PREFIX}{c}"));
        }
        Ok(())
    }

    async fn refresh_lsns(&mut self) {
        if let Some(f) = &self.follower {
            let p = f.progress();
            self.status.lsn.received = Some(p.received);
            self.status.lsn.applied = Some(p.applied);
            self.status.lsn.journaled = p.journal.map(|j| j.durable);
            self.status.lsn.primary_current = self.peer_current_lsn;
            self.status.lag_bytes = self
                .peer_current_lsn
                .map(|c| c.0.saturating_sub(p.applied.0));
        }
    }

    // ----- actions ---------------------------------------------------------------------------

    async fn perform(&mut self, actions: Vec<Action>, kind: &str) -> Result<()> {
        let mut promoted = false;
        let mut rejoined = false;
        for action in actions {
            tracing::debug!(?action, "performing");
            match action {
                Action::Refuse(r) => bail!("{r}"),
                Action::StopFollowing => {
                    if let Some(f) = self.follower.take() {
                        f.stop().await;
                    }
                    self.status.following = false;
                }
                Action::StartFollowing => {
                    // Started by the standby duties of this probe.
                }
                Action::FenceSelf => self.fence_self().await?,
                Action::AskWitness => {
                    let ok = self.ask_witness().await;
                    let state = self.machine.ok_or_else(|| anyhow!("no role state"))?;
                    let (next, more) = machine::step(&state, Event::WitnessAnswered { ok });
                    self.machine = Some(next);
                    return Box::pin(self.perform(more, kind)).await;
                }
                Action::RunHook(Hook::Fence) => {
                    if let Some(cmd) = self.cfg.hooks.fence.clone() {
                        run_hook("fence", &cmd, self.cfg.hooks.timeout).await?;
                    }
                }
                Action::SyncSequences
                | Action::CreateReverseSlot
                | Action::BumpEpoch(_)
                | Action::LiftReadOnly
                | Action::RunHook(Hook::Promote) => {
                    if !promoted {
                        promoted = true;
                        self.promote_now(kind, false).await?;
                    }
                }
                Action::SaveDivergence | Action::AdoptEpoch(_) => {
                    if !rejoined && self.rejoin_retry_at.is_none_or(|t| Instant::now() >= t) {
                        rejoined = true;
                        if let Err(e) = self.rejoin_now().await {
                            // Fencing, draining and peeking again every probe helps nobody:
                            // retry in a while (the error says what to do meanwhile).
                            self.rejoin_retry_at = Some(Instant::now() + REJOIN_RETRY);
                            return Err(e.context(format!(
                                "rejoin failed; retrying in {} s",
                                REJOIN_RETRY.as_secs()
                            )));
                        }
                        self.rejoin_retry_at = None;
                    }
                }
                Action::Isolate => {
                    let text = format!(
                        "this primary lost its standby and the witness for {:.0} s: NMS writes \
                         refused here until the standby is seen again (or it takes over)",
                        self.cfg.failover.timeout.as_secs_f64()
                    );
                    tracing::error!("{text}");
                    let roles = self.cfg.nms.roles.clone();
                    let client = self.own_client().await?;
                    let tables = guard::replicated_tables(&*client).await?;
                    guard::make_read_only(client, &roles, &tables).await?;
                    self.status.alarms.push(format!("{ISOLATED}{text}"));
                }
                Action::Resume => {
                    tracing::warn!("the standby is back at this epoch: NMS writes allowed again");
                    guard::lift_read_only(self.own_client().await?).await?;
                    self.status.alarms.retain(|a| !a.starts_with(ISOLATED));
                }
                Action::FenceWriters | Action::FencePeer | Action::WaitCaughtUp => {
                    // Performed by the switchover command itself.
                }
            }
        }
        Ok(())
    }

    async fn fence_self(&mut self) -> Result<()> {
        tracing::warn!(
            node = %self.cfg.this,
            "the peer has a higher epoch: fencing this node (NMS writes refused here)"
        );
        if let Some(f) = self.follower.take() {
            f.stop().await;
        }
        let (name, roles, drain) = (
            self.cfg.this.clone(),
            self.cfg.nms.roles.clone(),
            self.cfg.failover.drain_timeout,
        );
        let client = self.own_client().await?;
        // Fence first: NMS commits waiting for the standby that was promoted away are
        // terminated, never acknowledged. Only then may this database stop asking for it.
        switchover::fence_writers(
            client,
            &name,
            &roles,
            drain,
            switchover::SyncWaiters::Terminate,
        )
        .await?;
        rejoin::clear_synchronous_standby(&*client).await?;
        self.sync_policy = None;
        if let Some(cmd) = self.cfg.hooks.demote.clone() {
            if let Err(e) = run_hook("demote", &cmd, self.cfg.hooks.timeout).await {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }

    async fn ask_witness(&self) -> bool {
        let limit = self.cfg.failover.connect_timeout;
        let ok = match &self.cfg.failover.witness {
            None => false,
            Some(Witness::Tcp(addr)) => matches!(
                tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr.as_str())).await,
                Ok(Ok(_))
            ),
            Some(Witness::Command(cmd)) => run_hook("witness", cmd, limit).await.is_ok(),
        };
        if ok {
            tracing::warn!("the witness answers: this node is not the isolated side");
        } else {
            tracing::warn!("the witness does not answer: not failing over (this node may be the isolated side)");
        }
        ok
    }

    /// Stop following, apply what the journal holds, and promote this node.
    async fn promote_now(&mut self, kind: &str, force: bool) -> Result<PromoteSummary> {
        let started = Instant::now();
        if let Some(f) = self.follower.take() {
            f.stop().await;
        }
        self.status.following = false;
        let me = self.cfg.this_node().clone();
        if let Some(dir) = &me.journal {
            match follower::apply_journal(dir, &me.database).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("applied {n} journaled transaction(s) before promoting"),
                Err(e) if force => tracing::error!(
                    "promoting without applying the journal {} (forced): {e:#}. What it holds \
                     beyond the applied position is not on this node: replay it with \
                     `understudy replay --journal {} --from-lsn <applied> --to stdout`",
                    dir.display(),
                    dir.display()
                ),
                Err(e) => {
                    return Err(e.context(format!(
                        "while applying the journal {} before promoting (nothing was changed); \
                         fix the cause, or promote with force to go ahead without what the \
                         journal holds",
                        dir.display()
                    )))
                }
            }
        }
        let options = PromoteOptions {
            nms_roles: self.cfg.nms.roles.clone(),
            sequence_margin: self.cfg.failover.sequence_margin,
            reverse_slot: slot_for(&self.cfg.peer().name),
            hook: self.cfg.hooks.promote.clone(),
            hook_timeout: self.cfg.hooks.timeout,
            old_primary_timeout: self.cfg.failover.connect_timeout,
            force,
            node_name: Some(me.name.clone()),
            ..PromoteOptions::default()
        };
        let summary =
            promote::promote(&me.database, Some(&self.cfg.peer().database), &options).await?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::warn!(
            node = %me.name,
            epoch = %summary.epoch,
            "promoted ({kind}) in {seconds:.3} s; promotion LSN {}",
            summary.promotion_lsn
        );
        self.status.last_promotion = Some(report::PromotionStatus {
            epoch: summary.epoch.0,
            lsn: summary.promotion_lsn,
            at_unix_ms: unix_ms(),
            seconds,
            kind: kind.to_string(),
        });
        self.status.role = "primary".into();
        self.status.epoch = summary.epoch.0;
        self.machine = None;
        self.lost_since = None;
        self.own = None;
        self.sync_policy = None;
        Ok(summary)
    }

    async fn rejoin_now(&mut self) -> Result<()> {
        if let Some(f) = self.follower.take() {
            f.stop().await;
        }
        let me = self.cfg.this_node().clone();
        let options = rejoin::RejoinOptions {
            node_name: me.name.clone(),
            nms_roles: self.cfg.nms.roles.clone(),
            divergence_dir: self.cfg.divergence_dir.clone(),
            slot: slot_for(&me.name),
            journal: me.journal.clone(),
            drain_timeout: self.cfg.failover.drain_timeout,
            discard_unknown: false,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        self.own = None;
        let report = rejoin::rejoin(
            &me.database,
            &self.cfg.peer().database,
            &options,
            self.shutdown.clone(),
        )
        .await?;
        tracing::warn!(node = %me.name, "{}", report.to_string().trim_end());
        if let Some((dir, transactions, rows)) = &report.divergence {
            self.status.divergence = Some(report::DivergenceStatus {
                dir: dir.display().to_string(),
                transactions: *transactions,
                rows: *rows,
                at_unix_ms: unix_ms(),
            });
            self.status.alarms.push(format!(
                "{transactions} transaction(s) committed on this node after the failover never \
                 reached the new primary: saved in {}",
                dir.display()
            ));
        }
        self.machine = None;
        self.follower_retry_at = None;
        self.sync_policy = None;
        Ok(())
    }

    // ----- commands --------------------------------------------------------------------------

    async fn command(&mut self, command: Command) -> Result<serde_json::Value> {
        let own = self
            .read_own()
            .await?
            .ok_or_else(|| anyhow!("this node has no role yet (first start not done)"))?;
        let peer = self.probe_peer().await;
        let mut state = self
            .machine
            .unwrap_or_else(|| NodeState::new(own.role, own.epoch, self.policy()));
        state.role = own.role;
        state.epoch = own.epoch;
        if let Ok(Some(p)) = &peer {
            (state, _) = machine::step(
                &state,
                Event::PeerSeen {
                    role: p.role,
                    epoch: p.epoch,
                },
            );
        } else {
            state.peer_reachable = false;
        }
        match command {
            Command::Promote { force } => {
                let (next, actions) = machine::step(&state, Event::PromoteRequested { force });
                if let Some(Action::Refuse(r)) = actions.first() {
                    bail!("{r}");
                }
                self.machine = Some(next);
                let s = self.promote_now("manual", force).await?;
                Ok(serde_json::json!({
                    "promoted": self.cfg.this,
                    "epoch": s.epoch.0,
                    "promotion_lsn": s.promotion_lsn.to_string(),
                    "seconds": self.status.last_promotion.as_ref().map(|p| p.seconds),
                }))
            }
            Command::Switchover => {
                if own.role == Role::Primary {
                    // The standby's sidecar runs it: it owns the follower that must catch up.
                    let peer = self.cfg.peer().http;
                    return http::post_command(
                        peer,
                        "/v1/switchover",
                        self.cfg.http.token.as_deref(),
                        Duration::from_secs(120),
                    )
                    .await
                    .with_context(|| format!("while asking the standby's sidecar at {peer}"));
                }
                let (_, actions) = machine::step(&state, Event::SwitchoverRequested);
                if let Some(Action::Refuse(r)) = actions.first() {
                    bail!("{r}");
                }
                self.switchover().await
            }
        }
    }

    /// Planned switchover, run by the standby's sidecar.
    async fn switchover(&mut self) -> Result<serde_json::Value> {
        if self.follower.is_none() {
            bail!(
                "this standby is not following its primary right now ({}); a switchover needs it \
                 caught up",
                self.status
                    .last_error
                    .as_deref()
                    .unwrap_or("not started yet")
            );
        }
        let peer = self.cfg.peer().clone();
        let limit = self.cfg.failover.connect_timeout;
        let mut primary =
            tokio::time::timeout(limit, peer.database.connect("understudy switchover"))
                .await
                .map_err(|_| anyhow!("the primary did not answer within {limit:?}"))?
                .context("while connecting to the primary")?;
        let fenced = switchover::fence_writers(
            &mut primary,
            &peer.name,
            &self.cfg.nms.roles,
            self.cfg.failover.drain_timeout,
            switchover::SyncWaiters::Finish,
        )
        .await?;
        tracing::info!(final_lsn = %fenced.final_lsn, "primary fenced; waiting for the standby to apply its final LSN");
        let caught_up = self
            .follower
            .as_mut()
            .expect("checked above")
            .applied_past(fenced.final_lsn, Duration::from_secs(60))
            .await;
        if let Err(e) = caught_up {
            switchover::unfence(&mut primary)
                .await
                .context("while giving the primary its writers back after a failed switchover")?;
            return Err(e.context("switchover abandoned; the primary writes again"));
        }
        let summary = match self.promote_now("switchover", false).await {
            Ok(s) => s,
            Err(e) => {
                // Give the old primary its writers back only if this node did not become the
                // primary after all (the promotion may have failed after its commit).
                let mine = self.read_own().await;
                if matches!(&mine, Ok(Some(r)) if r.role == Role::Standby) {
                    let _ = switchover::unfence(&mut primary).await;
                    return Err(e.context("switchover abandoned; the primary writes again"));
                }
                return Err(e.context(
                    "the switchover's promotion reported an error after this node may have \
                     become primary; the old primary stays fenced and rejoins",
                ));
            }
        };
        let window = fenced.at.elapsed();
        self.status.last_switchover = Some(report::SwitchoverStatus {
            no_writer_window_ms: window.as_secs_f64() * 1000.0,
            final_lsn: fenced.final_lsn,
            at_unix_ms: unix_ms(),
        });
        tracing::warn!(
            "switchover done: {} is primary at epoch {}; no node accepted writes for {:.1} ms",
            self.cfg.this,
            summary.epoch,
            window.as_secs_f64() * 1000.0
        );
        Ok(serde_json::json!({
            "primary": self.cfg.this,
            "epoch": summary.epoch.0,
            "final_lsn": fenced.final_lsn.to_string(),
            "promotion_lsn": summary.promotion_lsn.to_string(),
            "no_writer_window_ms": window.as_secs_f64() * 1000.0,
            "terminated_transactions": fenced.terminated.len(),
        }))
    }

    // ----- status ----------------------------------------------------------------------------

    fn error(&mut self, e: &anyhow::Error) {
        let text = format!("{e:#}");
        if self.status.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(node = %self.cfg.this, "{text}");
        }
        self.status.last_error = Some(text);
        self.status.last_error_unix_ms = Some(unix_ms());
    }

    fn clear_error(&mut self) {
        self.status.last_error = None;
    }

    fn publish(&mut self) {
        self.status.updated_unix_ms = unix_ms();
        if let Some(s) = &self.machine {
            self.status.role = s.role.as_str().into();
            self.status.epoch = s.epoch.0;
        }
        let _ = self.status_tx.send(self.status.clone());
    }
}

/// The error came from the server itself (an SQLSTATE), not from failing to reach it.
fn server_answered(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::pg::PgError>()
            .is_some_and(|p| p.code().is_some())
            || c.downcast_ref::<tokio_postgres::Error>()
                .is_some_and(|p| p.as_db_error().is_some())
    })
}

/// Run a hook with `sh -c`, failing on a non-zero exit or the timeout.
async fn run_hook(what: &str, cmd: &str, timeout: Duration) -> Result<()> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => bail!("the {what} hook `{cmd}` did not finish within {timeout:?}"),
        Ok(Err(e)) => bail!("the {what} hook `{cmd}` could not start: {e}"),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => bail!(
            "the {what} hook `{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
