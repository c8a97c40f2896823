//! Invariants of the role controller over random event sequences from random starting states.

use proptest::prelude::*;

use super::*;

fn any_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Standby), Just(Role::Primary), Just(Role::Fenced)]
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (any_role(), 0i64..6).prop_map(|(role, e)| Event::PeerSeen {
            role,
            epoch: Epoch(e)
        }),
        (0u64..60).prop_map(|for_ms| Event::PeerUnreachable { for_ms }),
        Just(Event::StreamLost),
        Just(Event::FailoverTimeout),
        any::<bool>().prop_map(|ok| Event::WitnessAnswered { ok }),
        any::<bool>().prop_map(|force| Event::PromoteRequested { force }),
        Just(Event::SwitchoverRequested),
        Just(Event::RejoinRequested),
    ]
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (any::<bool>(), 0u64..40, any::<bool>(), any::<bool>()).prop_map(|(a, t, f, r)| Policy {
        automatic_failover: a,
        failover_timeout_ms: t,
        fence_hook: f,
        auto_rejoin: r,
    })
}

proptest! {
    #[test]
    fn invariants_hold_for_any_event_sequence(
        role in any_role(),
        epoch in 0i64..4,
        policy in any_policy(),
        events in proptest::collection::vec(any_event(), 1..40),
    ) {
        let mut state = NodeState::new(role, Epoch(epoch), policy);
        for event in events {
            let (next, actions) = step(&state, event);
            // Epochs never go down.
            prop_assert!(next.epoch >= state.epoch);
            // A refusal changes nothing.
            if actions.iter().any(|a| matches!(a, Action::Refuse(_))) {
                prop_assert_eq!(actions.len(), 1);
                prop_assert_eq!(next, state);
            }
            // A fenced node does not follow anyone.
            if next.role == Role::Fenced {
                prop_assert!(!next.following);
            }
            // Having just seen a higher epoch, a node is never the primary.
            if let Event::PeerSeen { epoch: seen, .. } = event {
                if seen > state.epoch {
                    prop_assert!(next.role != Role::Primary);
                }
            }
            // Becoming primary raises the epoch above everything seen; the plan is in order.
            if next.role == Role::Primary && state.role != Role::Primary {
                let highest = state.peer.map_or(state.epoch, |p| p.epoch.max(state.epoch));
                prop_assert!(next.epoch > highest);
                let at = |a: Action| actions.iter().position(|&x| x == a).unwrap_or(usize::MAX);
                let lift = at(Action::LiftReadOnly);
                prop_assert!(lift < usize::MAX);
                prop_assert!(at(Action::SyncSequences) < lift);
                prop_assert!(at(Action::CreateReverseSlot) < lift);
                prop_assert!(at(Action::BumpEpoch(next.epoch)) < lift);
            }
            // Only a primary is isolated; writes resume only on seeing its standby at its epoch.
            if next.isolated {
                prop_assert_eq!(next.role, Role::Primary);
            }
            if actions.contains(&Action::Resume) {
                prop_assert!(state.isolated && next.role == Role::Primary);
                prop_assert_eq!(
                    event,
                    Event::PeerSeen { role: Role::Standby, epoch: state.epoch }
                );
            }
            // Writes are only ever opened by a promotion.
            if actions.contains(&Action::LiftReadOnly) {
                prop_assert_eq!(next.role, Role::Primary);
            }
            state = next;
        }
    }
}
