//! Table-driven cases, one or more per rule, and whole scenarios.

use super::*;

const MANUAL: Policy = Policy {
    automatic_failover: false,
    failover_timeout_ms: 30,
    fence_hook: false,
    auto_rejoin: false,
};

const AUTO: Policy = Policy {
    automatic_failover: true,
    failover_timeout_ms: 30,
    fence_hook: false,
    auto_rejoin: true,
};

const AUTO_FENCE_HOOK: Policy = Policy {
    fence_hook: true,
    ..AUTO
};

fn node(role: Role, epoch: i64, policy: Policy) -> NodeState {
    NodeState::new(role, Epoch(epoch), policy)
}

/// `state` having last seen its peer as `role` at `epoch`.
fn seen(mut state: NodeState, role: Role, epoch: i64, reachable: bool) -> NodeState {
    state.peer = Some(Peer {
        role,
        epoch: Epoch(epoch),
    });
    state.peer_reachable = reachable;
    state
}

fn following(mut state: NodeState) -> NodeState {
    state.following = true;
    state
}

fn watching(mut state: NodeState, watch: Watch) -> NodeState {
    state.watch = watch;
    state
}

fn draining(mut state: NodeState) -> NodeState {
    state.draining = true;
    state
}

/// A standby of epoch 1, following its reachable primary of epoch 1.
fn healthy_standby(policy: Policy) -> NodeState {
    following(seen(node(Role::Standby, 1, policy), Role::Primary, 1, true))
}

/// `promotion_plan(epoch)`, preceded by `before`.
fn promoting(before: &[Action], epoch: i64) -> Vec<Action> {
    let mut v = before.to_vec();
    v.extend(promotion_plan(Epoch(epoch)));
    v
}

struct Case {
    name: &'static str,
    state: NodeState,
    event: Event,
    role: Role,
    epoch: i64,
    actions: Vec<Action>,
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let (next, actions) = step(&case.state, case.event);
        assert_eq!(actions, case.actions, "{}: actions", case.name);
        assert_eq!(next.role, case.role, "{}: role", case.name);
        assert_eq!(next.epoch, Epoch(case.epoch), "{}: epoch", case.name);
    }
}

fn peer(role: Role, epoch: i64) -> Event {
    Event::PeerSeen {
        role,
        epoch: Epoch(epoch),
    }
}

#[test]
fn rule_1_a_higher_epoch_fences() {
    use Role::*;
    run(vec![
        Case {
            name: "split brain: old primary restarted sees the new primary",
            state: node(Primary, 1, MANUAL),
            event: peer(Primary, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![Action::FenceSelf],
        },
        Case {
            name: "primary sees a standby with a higher epoch",
            state: node(Primary, 1, MANUAL),
            event: peer(Standby, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![Action::FenceSelf],
        },
        Case {
            name: "following standby sees a higher epoch: stops following, fences",
            state: healthy_standby(MANUAL),
            event: peer(Primary, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![Action::StopFollowing, Action::FenceSelf],
        },
        Case {
            name: "two primaries at one epoch: both fence",
            state: node(Primary, 3, MANUAL),
            event: peer(Primary, 3),
            role: Fenced,
            epoch: 3,
            actions: vec![Action::FenceSelf],
        },
        Case {
            name: "draining primary sees the promoted standby",
            state: draining(node(Primary, 1, AUTO)),
            event: peer(Primary, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![Action::FenceSelf],
        },
        Case {
            name: "the new primary sees the stale old one: stays, does nothing",
            state: node(Primary, 2, MANUAL),
            event: peer(Primary, 1),
            role: Primary,
            epoch: 2,
            actions: vec![],
        },
        Case {
            name: "already fenced, manual rejoin: stays fenced",
            state: node(Fenced, 1, MANUAL),
            event: peer(Primary, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![],
        },
    ]);
}

#[test]
fn rule_2_never_follow_a_fenced_or_stale_source() {
    use Role::*;
    run(vec![
        Case {
            name: "standby stops following a fenced peer",
            state: healthy_standby(MANUAL),
            event: peer(Fenced, 1),
            role: Standby,
            epoch: 1,
            actions: vec![Action::StopFollowing],
        },
        Case {
            name: "standby stops following a primary of an older epoch",
            state: following(node(Standby, 2, MANUAL)),
            event: peer(Primary, 1),
            role: Standby,
            epoch: 2,
            actions: vec![Action::StopFollowing],
        },
        Case {
            name: "standby does not start following a stale primary",
            state: node(Standby, 2, MANUAL),
            event: peer(Primary, 1),
            role: Standby,
            epoch: 2,
            actions: vec![],
        },
        Case {
            name: "standby starts following its primary",
            state: node(Standby, 1, MANUAL),
            event: peer(Primary, 1),
            role: Standby,
            epoch: 1,
            actions: vec![Action::StartFollowing],
        },
        Case {
            name: "standby already following: nothing",
            state: healthy_standby(MANUAL),
            event: peer(Primary, 1),
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "fenced node does not follow a primary of its own epoch",
            state: node(Fenced, 1, AUTO),
            event: peer(Primary, 1),
            role: Fenced,
            epoch: 1,
            actions: vec![],
        },
    ]);
}

#[test]
fn rule_3_promotion_raises_the_epoch() {
    use Role::*;
    run(vec![
        Case {
            name: "primary gone: promote",
            state: following(seen(node(Standby, 1, MANUAL), Primary, 1, false)),
            event: Event::PromoteRequested { force: false },
            role: Primary,
            epoch: 2,
            actions: promoting(&[Action::StopFollowing], 2),
        },
        Case {
            name: "never saw a peer: promote",
            state: node(Standby, 0, MANUAL),
            event: Event::PromoteRequested { force: false },
            role: Primary,
            epoch: 1,
            actions: promoting(&[], 1),
        },
        Case {
            name: "primary still answers: refused",
            state: healthy_standby(MANUAL),
            event: Event::PromoteRequested { force: false },
            role: Standby,
            epoch: 1,
            actions: vec![Action::Refuse(Refusal::PeerIsPrimary)],
        },
        Case {
            name: "primary still answers, forced: promote",
            state: healthy_standby(MANUAL),
            event: Event::PromoteRequested { force: true },
            role: Primary,
            epoch: 2,
            actions: promoting(&[Action::StopFollowing], 2),
        },
        Case {
            name: "fenced: refused",
            state: seen(node(Fenced, 1, MANUAL), Primary, 3, false),
            event: Event::PromoteRequested { force: false },
            role: Fenced,
            epoch: 1,
            actions: vec![Action::Refuse(Refusal::Fenced)],
        },
        Case {
            name: "fenced, forced: goes above the peer's epoch",
            state: seen(node(Fenced, 1, MANUAL), Primary, 3, false),
            event: Event::PromoteRequested { force: true },
            role: Primary,
            epoch: 4,
            actions: promoting(&[], 4),
        },
        Case {
            name: "already primary: refused",
            state: node(Primary, 2, MANUAL),
            event: Event::PromoteRequested { force: true },
            role: Primary,
            epoch: 2,
            actions: vec![Action::Refuse(Refusal::AlreadyPrimary)],
        },
    ]);
}

#[test]
fn promotion_plan_makes_the_slot_before_any_write() {
    let plan = promotion_plan(Epoch(7));
    let at = |a: Action| plan.iter().position(|&x| x == a).unwrap();
    assert!(at(Action::SyncSequences) < at(Action::LiftReadOnly));
    assert!(at(Action::CreateReverseSlot) < at(Action::LiftReadOnly));
    assert!(at(Action::BumpEpoch(Epoch(7))) < at(Action::LiftReadOnly));
    assert_eq!(plan.last(), Some(&Action::RunHook(Hook::Promote)));
}

#[test]
fn rule_4_automatic_failover_needs_timeout_and_witness() {
    use Role::*;
    let lost = |p| watching(healthy_standby(p), Watch::PrimaryLost);
    let asked = |p| {
        let mut s = watching(healthy_standby(p), Watch::AwaitingWitness);
        s.peer_reachable = false;
        s
    };
    run(vec![
        Case {
            name: "stream lost: the clock starts, nothing else",
            state: healthy_standby(AUTO),
            event: Event::StreamLost,
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "unreachable for less than the timeout: wait",
            state: healthy_standby(AUTO),
            event: Event::PeerUnreachable { for_ms: 29 },
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "unreachable for the timeout: ask the witness",
            state: healthy_standby(AUTO),
            event: Event::PeerUnreachable { for_ms: 30 },
            role: Standby,
            epoch: 1,
            actions: vec![Action::AskWitness],
        },
        Case {
            name: "timer fired after the loss: ask the witness",
            state: lost(AUTO),
            event: Event::FailoverTimeout,
            role: Standby,
            epoch: 1,
            actions: vec![Action::AskWitness],
        },
        Case {
            name: "timer fired while healthy: nothing",
            state: healthy_standby(AUTO),
            event: Event::FailoverTimeout,
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "already asked: do not ask twice",
            state: asked(AUTO),
            event: Event::PeerUnreachable { for_ms: 300 },
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "manual policy: never asks",
            state: lost(MANUAL),
            event: Event::FailoverTimeout,
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "never saw a primary: no failover",
            state: node(Standby, 1, AUTO),
            event: Event::PeerUnreachable { for_ms: 300 },
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "witness ok: promote",
            state: asked(AUTO),
            event: Event::WitnessAnswered { ok: true },
            role: Primary,
            epoch: 2,
            actions: promoting(&[Action::StopFollowing], 2),
        },
        Case {
            name: "witness ok, fence hook configured: it runs first",
            state: asked(AUTO_FENCE_HOOK),
            event: Event::WitnessAnswered { ok: true },
            role: Primary,
            epoch: 2,
            actions: promoting(&[Action::RunHook(Hook::Fence), Action::StopFollowing], 2),
        },
        Case {
            name: "witness says we are isolated: stay standby",
            state: asked(AUTO),
            event: Event::WitnessAnswered { ok: false },
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "an answer nobody asked for is ignored",
            state: lost(AUTO),
            event: Event::WitnessAnswered { ok: true },
            role: Standby,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "a fenced node never fails over",
            state: watching(
                seen(node(Fenced, 1, AUTO), Primary, 1, false),
                Watch::PrimaryLost,
            ),
            event: Event::FailoverTimeout,
            role: Fenced,
            epoch: 1,
            actions: vec![],
        },
    ]);
}

#[test]
fn the_primary_coming_back_cancels_a_pending_failover() {
    let mut s = healthy_standby(AUTO);
    for event in [
        Event::StreamLost,
        Event::PeerUnreachable { for_ms: 31 },
        peer(Role::Primary, 1),
    ] {
        s = step(&s, event).0;
    }
    assert_eq!(s.watch, Watch::Healthy);
    let (after, actions) = step(&s, Event::WitnessAnswered { ok: true });
    assert_eq!(actions, vec![]);
    assert_eq!(after.role, Role::Standby);
    // A witness that said no leaves the clock running: the next timeout asks again.
    let mut s = healthy_standby(AUTO);
    for event in [
        Event::PeerUnreachable { for_ms: 31 },
        Event::WitnessAnswered { ok: false },
    ] {
        s = step(&s, event).0;
    }
    assert_eq!(step(&s, Event::FailoverTimeout).1, vec![Action::AskWitness]);
}

#[test]
fn rule_5_a_fenced_node_rejoins_as_standby() {
    use Role::*;
    let rejoining = vec![
        Action::SaveDivergence,
        Action::AdoptEpoch(Epoch(2)),
        Action::StartFollowing,
    ];
    run(vec![
        Case {
            name: "automatic rejoin when the new primary is seen",
            state: node(Fenced, 1, AUTO),
            event: peer(Primary, 2),
            role: Standby,
            epoch: 2,
            actions: rejoining.clone(),
        },
        Case {
            name: "rejoin on request",
            state: seen(node(Fenced, 1, MANUAL), Primary, 2, true),
            event: Event::RejoinRequested,
            role: Standby,
            epoch: 2,
            actions: rejoining,
        },
        Case {
            name: "no rejoin towards a fenced peer",
            state: node(Fenced, 1, AUTO),
            event: peer(Fenced, 2),
            role: Fenced,
            epoch: 1,
            actions: vec![],
        },
        Case {
            name: "rejoin refused when not fenced",
            state: healthy_standby(MANUAL),
            event: Event::RejoinRequested,
            role: Standby,
            epoch: 1,
            actions: vec![Action::Refuse(Refusal::NothingToRejoin)],
        },
        Case {
            name: "rejoin refused without a newer primary",
            state: seen(node(Fenced, 2, MANUAL), Primary, 2, true),
            event: Event::RejoinRequested,
            role: Fenced,
            epoch: 2,
            actions: vec![Action::Refuse(Refusal::NothingToRejoin)],
        },
    ]);
}

#[test]
fn switchover_fences_writers_then_promotes() {
    use Role::*;
    run(vec![
        Case {
            name: "on the primary: fence the writers, keep serving the stream",
            state: seen(node(Primary, 1, MANUAL), Standby, 1, true),
            event: Event::SwitchoverRequested,
            role: Primary,
            epoch: 1,
            actions: vec![Action::FenceWriters],
        },
        Case {
            name: "on the standby: fence the primary, catch up, promote",
            state: healthy_standby(MANUAL),
            event: Event::SwitchoverRequested,
            role: Primary,
            epoch: 2,
            actions: promoting(
                &[
                    Action::FencePeer,
                    Action::WaitCaughtUp,
                    Action::StopFollowing,
                ],
                2,
            ),
        },
        Case {
            name: "on a standby whose primary does not answer: refused",
            state: seen(node(Standby, 1, MANUAL), Primary, 1, false),
            event: Event::SwitchoverRequested,
            role: Standby,
            epoch: 1,
            actions: vec![Action::Refuse(Refusal::PeerNotPrimary)],
        },
        Case {
            name: "on a fenced node: refused",
            state: node(Fenced, 1, MANUAL),
            event: Event::SwitchoverRequested,
            role: Fenced,
            epoch: 1,
            actions: vec![Action::Refuse(Refusal::Fenced)],
        },
    ]);
    // The draining primary is still a source: its standby keeps following it.
    let (s, actions) = step(&healthy_standby(MANUAL), peer(Primary, 1));
    assert!(s.following && actions.is_empty());
}

/// Two nodes, a partition, a failover, the old primary coming back with writers: at the end
/// exactly one primary, and the old one follows it at the new epoch.
#[test]
fn split_brain_resolves_to_one_writer() {
    let mut a = seen(node(Role::Primary, 1, AUTO), Role::Standby, 1, true);
    let mut b = healthy_standby(AUTO);
    // Partition: b loses a; the witness agrees b is not the isolated side.
    for event in [
        Event::StreamLost,
        Event::PeerUnreachable { for_ms: 30 },
        Event::WitnessAnswered { ok: true },
    ] {
        b = step(&b, event).0;
    }
    assert_eq!((b.role, b.epoch), (Role::Primary, Epoch(2)));
    // a, cut off, still believes it is the primary; the partition heals and they meet.
    let (a1, a_actions) = step(
        &a,
        Event::PeerSeen {
            role: b.role,
            epoch: b.epoch,
        },
    );
    let (b1, b_actions) = step(
        &b,
        Event::PeerSeen {
            role: a.role,
            epoch: a.epoch,
        },
    );
    assert_eq!(a1.role, Role::Fenced);
    assert_eq!(a_actions, vec![Action::FenceSelf]);
    assert_eq!(b1.role, Role::Primary);
    assert_eq!(b_actions, vec![]);
    a = a1;
    b = b1;
    // Next probe: a is fenced and rejoins b as standby.
    let (a2, actions) = step(
        &a,
        Event::PeerSeen {
            role: b.role,
            epoch: b.epoch,
        },
    );
    assert_eq!(
        actions,
        vec![
            Action::SaveDivergence,
            Action::AdoptEpoch(Epoch(2)),
            Action::StartFollowing
        ]
    );
    assert_eq!(
        (a2.role, a2.epoch, a2.following),
        (Role::Standby, Epoch(2), true)
    );
    let primaries = [a2.role, b.role]
        .iter()
        .filter(|&&r| r == Role::Primary)
        .count();
    assert_eq!(primaries, 1);
}

#[test]
fn rule_4b_an_isolated_primary_stops_writing_until_it_sees_its_standby() {
    use Role::*;
    let primary = seen(node(Primary, 2, AUTO), Standby, 2, true);
    // Cut off from the standby for the timeout: ask the witness.
    let (asked, actions) = step(&primary, Event::PeerUnreachable { for_ms: 30 });
    assert_eq!(actions, vec![Action::AskWitness]);
    // Not yet the timeout: nothing.
    let (_, actions) = step(&primary, Event::PeerUnreachable { for_ms: 29 });
    assert!(actions.is_empty());
    // The witness answers: keep writing (the standby is the cut-off side, or only the link).
    let (kept, actions) = step(&asked, Event::WitnessAnswered { ok: true });
    assert_eq!(
        (actions, kept.role, kept.isolated),
        (vec![], Primary, false)
    );
    // No witness either: this is the isolated side; refuse writes, keep the role and epoch.
    let (isolated, actions) = step(&asked, Event::WitnessAnswered { ok: false });
    assert_eq!(actions, vec![Action::Isolate]);
    assert_eq!(
        (isolated.role, isolated.epoch, isolated.isolated),
        (Primary, Epoch(2), true)
    );
    // Asked nothing more while isolated.
    let (_, actions) = step(&isolated, Event::PeerUnreachable { for_ms: 90 });
    assert!(actions.is_empty());
    // The standby is back at this epoch (it did not take over): writes resume.
    let (resumed, actions) = step(&isolated, peer(Standby, 2));
    assert_eq!(actions, vec![Action::Resume]);
    assert!(!resumed.isolated);
    // It did take over: fence, as any primary seeing a higher epoch.
    let (fenced, actions) = step(&isolated, peer(Primary, 3));
    assert_eq!(actions, vec![Action::FenceSelf]);
    assert_eq!((fenced.role, fenced.isolated), (Fenced, false));
    // Without automatic failover nobody takes over, so a primary never isolates itself.
    let manual = seen(node(Primary, 2, MANUAL), Standby, 2, true);
    let (_, actions) = step(&manual, Event::PeerUnreachable { for_ms: 300 });
    assert!(actions.is_empty());
}
