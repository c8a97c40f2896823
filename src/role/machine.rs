//! The role controller: a pure `step(state, event) -> (state, actions)` for one node.
//!
//! No I/O happens here. The sidecar feeds events (what the health monitor, the stream and the
//! operator saw) and performs the actions it gets back, in order, stopping at the first that
//! fails. The database is authoritative ([`node`](super::node) changes role and epoch in one
//! transaction): after a failed action the sidecar rebuilds the state from it.
//!
//! Rules, each tested from a table of cases below:
//!
//! 1. **Higher epoch fences.** A node that sees a peer with a higher epoch than its own becomes
//!    [`Role::Fenced`] ([`Action::FenceSelf`]: read-only for the NMS) and stops following.
//!    Two primaries at the same epoch both fence: no writer is better than two.
//! 2. **Never a source when fenced or stale.** A standby stops following a peer that is fenced
//!    or has a lower epoch than its own.
//! 3. **Promotion raises the epoch** above both its own and the last one seen on the peer. The
//!    steps come in a fixed order ([`promotion_plan`]): the reverse slot exists and the
//!    sequences are safe before the NMS may write.
//! 4. **Automatic failover** (opt-in) only for a standby whose primary was lost, once the
//!    timeout passed *and* the witness says this node is not the isolated side. A primary that
//!    is seen again cancels it. The fence hook, when configured, runs first.
//!    The other side of it (rule 4b): **an isolated primary stops writing**. A primary that has
//!    lost its standby for the failover timeout *and* cannot reach the witness is probably the
//!    cut-off side, about to be replaced: it refuses NMS writes ([`Action::Isolate`]) until it
//!    sees its standby again at its own epoch ([`Action::Resume`]), or fences itself on seeing a
//!    higher one.
//! 5. **Rejoin.** A fenced node that sees a primary with a higher epoch rejoins as its standby
//!    (automatically when the policy says so, else on request): it saves what diverged, takes
//!    the peer's epoch and follows.
//! 6. Operator commands that would break the rules are refused ([`Action::Refuse`]), unless a
//!    promotion is forced.

use std::fmt;

use super::{Epoch, Role};

/// How this node may change roles on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    /// Promote without an operator when the primary is lost (and the witness agrees).
    pub automatic_failover: bool,
    /// How long (milliseconds) the primary must be unreachable before automatic failover is
    /// considered.
    pub failover_timeout_ms: u64,
    /// A fence hook (power off or firewall the old primary) is configured: run it first.
    pub fence_hook: bool,
    /// A fenced node rejoins as standby as soon as it sees the new primary.
    pub auto_rejoin: bool,
}

/// The peer as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    pub epoch: Epoch,
}

/// What a standby's health monitor thinks of its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Watch {
    /// The primary was seen, or nothing is wrong.
    #[default]
    Healthy,
    /// The stream broke or the primary stopped answering; the failover clock runs.
    PrimaryLost,
    /// The timeout passed; the witness was asked whether this node may take over.
    AwaitingWitness,
}

/// One node's view of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    pub epoch: Epoch,
    /// The peer as last seen, if ever.
    pub peer: Option<Peer>,
    /// The last probe of the peer got an answer.
    pub peer_reachable: bool,
    /// A follower is (supposed to be) streaming from the peer into this database.
    pub following: bool,
    /// A primary's writers are fenced for a switchover; it still serves its final WAL.
    pub draining: bool,
    /// A primary that lost both its standby and the witness: NMS writes refused (rule 4b).
    pub isolated: bool,
    pub watch: Watch,
    pub policy: Policy,
}

impl NodeState {
    /// A node as its database records it, before it has seen its peer.
    pub fn new(role: Role, epoch: Epoch, policy: Policy) -> NodeState {
        NodeState {
            role,
            epoch,
            peer: None,
            peer_reachable: false,
            following: false,
            draining: false,
            isolated: false,
            watch: Watch::Healthy,
            policy,
        }
    }

    /// The peer is known to be the primary this standby follows: same epoch, and answering.
    fn peer_is_current_primary(&self) -> bool {
        self.peer
            .is_some_and(|p| p.role == Role::Primary && p.epoch == self.epoch)
    }
}

/// Something that happened to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer answered with its recorded role and epoch.
    PeerSeen { role: Role, epoch: Epoch },
    /// The peer has not answered for this long (milliseconds).
    PeerUnreachable { for_ms: u64 },
    /// The replication stream from the primary broke.
    StreamLost,
    /// The failover timer, started when the primary was lost, fired.
    FailoverTimeout,
    /// The witness answered: `ok` means this node is not the isolated side.
    WitnessAnswered { ok: bool },
    /// The operator asked for a promotion (`understudy promote`); `force` overrides the checks.
    PromoteRequested { force: bool },
    /// The operator asked for a planned switchover.
    SwitchoverRequested,
    /// The operator asked a fenced node to rejoin as standby.
    RejoinRequested,
}

/// A hook the operator configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Make sure the old primary cannot write (power off, firewall) before taking over.
    Fence,
    /// Start or activate the NMS on the new primary.
    Promote,
}

/// Something the sidecar must do, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this database read-only for the NMS ([`guard::make_read_only`](super::guard::make_read_only))
    /// and record role `fenced`.
    FenceSelf,
    /// Switchover on the primary: make this database read-only for the NMS but keep serving
    /// the stream until the standby has the final LSN.
    FenceWriters,
    /// Ask the peer (the primary) to fence its writers: switchover.
    FencePeer,
    /// Wait until the peer's final LSN is applied here: switchover.
    WaitCaughtUp,
    StopFollowing,
    StartFollowing,
    /// Ask the witness whether this node may take over.
    AskWitness,
    /// Bring every sequence above anything the old primary can have handed out.
    SyncSequences,
    /// Create the logical slot the old primary will follow from, on this database.
    CreateReverseSlot,
    /// Record role `primary` at this epoch, in one transaction.
    BumpEpoch(Epoch),
    /// Restore the NMS's write privileges ([`guard::lift_read_only`](super::guard::lift_read_only)).
    LiftReadOnly,
    RunHook(Hook),
    /// Save what this node committed after the promotion point and the new primary never got.
    SaveDivergence,
    /// Record role `standby` at the peer's epoch.
    AdoptEpoch(Epoch),
    /// Refuse NMS writes on this primary, keeping its role and epoch (rule 4b).
    Isolate,
    /// Give them back: the standby is seen again at this node's epoch.
    Resume,
    /// The request breaks a rule; nothing was done.
    Refuse(Refusal),
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AlreadyPrimary,
    /// The primary still answers: a switchover is the way, or force.
    PeerIsPrimary,
    /// This node is fenced: rejoin first, or force.
    Fenced,
    /// A switchover needs a primary that answers.
    PeerNotPrimary,
    /// Only a fenced node rejoins, and only a primary with a higher epoch.
    NothingToRejoin,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::AlreadyPrimary => "this node is already the primary",
            Refusal::PeerIsPrimary => {
                "the primary still answers; use `understudy switchover`, or promote with --force \
                 if it must be abandoned (it fences itself when it sees the new epoch)"
            }
            Refusal::Fenced => {
                "this node is fenced (its peer has a higher epoch); run `understudy rejoin`, or \
                 promote with --force if the peer is gone for good"
            }
            Refusal::PeerNotPrimary => {
                "a switchover needs the primary to answer; use `understudy promote` if it is gone"
            }
            Refusal::NothingToRejoin => {
                "only a fenced node rejoins, and only a primary with a higher epoch; nothing to do"
            }
        })
    }
}

/// The steps of a promotion to `epoch`, in the order [`promote`](super::promote::promote)
/// performs them: the sequences are safe and the reverse slot exists before the NMS may write.
pub fn promotion_plan(epoch: Epoch) -> [Action; 5] {
    [
        Action::SyncSequences,
        Action::CreateReverseSlot,
        Action::BumpEpoch(epoch),
        Action::LiftReadOnly,
        Action::RunHook(Hook::Promote),
    ]
}

/// Apply `event` to `state`: the next state and what to do.
pub fn step(state: &NodeState, event: Event) -> (NodeState, Vec<Action>) {
    let mut next = *state;
    let mut actions = Vec::new();
    match event {
        Event::PeerSeen { role, epoch } => peer_seen(&mut next, &mut actions, role, epoch),
        Event::PeerUnreachable { for_ms } => {
            next.peer_reachable = false;
            if isolation_armed(&next) && for_ms >= next.policy.failover_timeout_ms {
                ask_witness(&mut next, &mut actions);
            }
            if failover_armed(&next) {
                if next.watch == Watch::Healthy {
                    next.watch = Watch::PrimaryLost;
                }
                if for_ms >= next.policy.failover_timeout_ms {
                    ask_witness(&mut next, &mut actions);
                }
            }
        }
        Event::StreamLost => {
            if next.role == Role::Standby && next.watch == Watch::Healthy {
                next.watch = Watch::PrimaryLost;
            }
        }
        Event::FailoverTimeout => {
            if failover_armed(&next) && next.watch != Watch::Healthy {
                ask_witness(&mut next, &mut actions);
            }
        }
        Event::WitnessAnswered { ok } => {
            if next.role == Role::Primary && next.watch == Watch::AwaitingWitness {
                next.watch = Watch::PrimaryLost;
                if !ok {
                    next.isolated = true;
                    actions.push(Action::Isolate);
                }
            }
            if next.role == Role::Standby && next.watch == Watch::AwaitingWitness {
                if ok {
                    if next.policy.fence_hook {
                        actions.push(Action::RunHook(Hook::Fence));
                    }
                    promote(&mut next, &mut actions);
                } else {
                    // This node may be the isolated one: keep waiting, ask again next timeout.
                    next.watch = Watch::PrimaryLost;
                }
            }
        }
        Event::PromoteRequested { force } => match next.role {
            Role::Primary => actions.push(Action::Refuse(Refusal::AlreadyPrimary)),
            Role::Fenced if !force => actions.push(Action::Refuse(Refusal::Fenced)),
            Role::Standby
                if !force
                    && next.peer_reachable
                    && next.peer.is_some_and(|p| p.role == Role::Primary) =>
            {
                actions.push(Action::Refuse(Refusal::PeerIsPrimary))
            }
            Role::Standby | Role::Fenced => promote(&mut next, &mut actions),
        },
        Event::SwitchoverRequested => match next.role {
            Role::Fenced => actions.push(Action::Refuse(Refusal::Fenced)),
            Role::Primary => {
                next.draining = true;
                actions.push(Action::FenceWriters);
            }
            Role::Standby if next.peer_reachable && next.peer_is_current_primary() => {
                actions.extend([Action::FencePeer, Action::WaitCaughtUp]);
                promote(&mut next, &mut actions);
            }
            Role::Standby => actions.push(Action::Refuse(Refusal::PeerNotPrimary)),
        },
        Event::RejoinRequested => match next.peer {
            Some(p)
                if next.role == Role::Fenced && p.role == Role::Primary && p.epoch > next.epoch =>
            {
                rejoin(&mut next, &mut actions, p.epoch)
            }
            _ => actions.push(Action::Refuse(Refusal::NothingToRejoin)),
        },
    }
    (next, actions)
}

fn peer_seen(next: &mut NodeState, actions: &mut Vec<Action>, role: Role, epoch: Epoch) {
    next.peer = Some(Peer { role, epoch });
    next.peer_reachable = true;
    if epoch > next.epoch {
        if next.role == Role::Fenced {
            if role == Role::Primary && next.policy.auto_rejoin {
                rejoin(next, actions, epoch);
            }
        } else {
            fence(next, actions);
        }
        return;
    }
    if next.role == Role::Primary {
        next.watch = Watch::Healthy;
    }
    match (next.role, role) {
        (Role::Primary, Role::Primary) if epoch == next.epoch => fence(next, actions),
        (Role::Primary, Role::Standby) if epoch == next.epoch && next.isolated => {
            next.isolated = false;
            actions.push(Action::Resume);
        }
        (Role::Standby, Role::Primary) if epoch == next.epoch => {
            next.watch = Watch::Healthy;
            if !next.following {
                next.following = true;
                actions.push(Action::StartFollowing);
            }
        }
        // A fenced peer, or one from an older epoch, is never a source.
        (Role::Standby, _) if role == Role::Fenced || epoch < next.epoch => {
            stop_following(next, actions)
        }
        _ => {}
    }
}

/// A primary under a failover policy whose standby (of its epoch) could take over.
fn isolation_armed(state: &NodeState) -> bool {
    state.role == Role::Primary
        && state.policy.automatic_failover
        && !state.isolated
        && state
            .peer
            .is_some_and(|p| p.role == Role::Standby && p.epoch == state.epoch)
}

/// A standby whose primary of the current epoch it last saw, under a failover policy.
fn failover_armed(state: &NodeState) -> bool {
    state.role == Role::Standby
        && state.policy.automatic_failover
        && state.peer_is_current_primary()
}

fn ask_witness(next: &mut NodeState, actions: &mut Vec<Action>) {
    if next.watch != Watch::AwaitingWitness {
        next.watch = Watch::AwaitingWitness;
        actions.push(Action::AskWitness);
    }
}

fn stop_following(next: &mut NodeState, actions: &mut Vec<Action>) {
    if next.following {
        next.following = false;
        actions.push(Action::StopFollowing);
    }
}

fn fence(next: &mut NodeState, actions: &mut Vec<Action>) {
    stop_following(next, actions);
    next.role = Role::Fenced;
    next.draining = false;
    next.isolated = false;
    next.watch = Watch::Healthy;
    actions.push(Action::FenceSelf);
}

fn promote(next: &mut NodeState, actions: &mut Vec<Action>) {
    let seen = next.peer.map_or(next.epoch, |p| p.epoch.max(next.epoch));
    let epoch = seen.next();
    stop_following(next, actions);
    actions.extend(promotion_plan(epoch));
    next.role = Role::Primary;
    next.epoch = epoch;
    next.draining = false;
    next.watch = Watch::Healthy;
}

fn rejoin(next: &mut NodeState, actions: &mut Vec<Action>, epoch: Epoch) {
    actions.extend([
        Action::SaveDivergence,
        Action::AdoptEpoch(epoch),
        Action::StartFollowing,
    ]);
    next.role = Role::Standby;
    next.epoch = epoch;
    next.following = true;
    next.draining = false;
    next.watch = Watch::Healthy;
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
