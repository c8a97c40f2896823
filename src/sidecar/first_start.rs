//! The first start of a pair: which node becomes primary when this database holds no state.
//!
//! Both sidecars apply the same rule to the same facts, so they agree without talking:
//! 1. A peer that already has a role decides: a primary makes this node its standby.
//! 2. Neither has state: the node `nms.initial_primary` names, else the only database that
//!    holds NMS data (rows in tables outside the system schemas and `understudy`).
//! 3. Anything else (both hold data, neither does, or the peer cannot be asked) waits for the
//!    operator or the peer, with the reason.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::role::node::NodeRecord;
use crate::role::Role;

/// What this node learned about its peer for the decision.
#[derive(Clone, Debug)]
pub enum PeerFacts {
    Unreachable(String),
    /// Reachable: its node record (if any) and whether it holds NMS data.
    Seen {
        record: Option<NodeRecord>,
        has_data: bool,
    },
}

/// The role this node takes, or why it cannot decide yet.
pub fn decide(
    me: &str,
    peer_name: &str,
    my_data: bool,
    peer: &PeerFacts,
    initial_primary: Option<&str>,
) -> Result<Role, String> {
    let (record, peer_data) = match peer {
        PeerFacts::Unreachable(why) => {
            return Err(format!(
                "this database holds no understudy state and the peer {peer_name} cannot be asked \
                 ({why}): waiting for it, since both must be seen to choose the primary"
            ))
        }
        PeerFacts::Seen { record, has_data } => (record, *has_data),
    };
    if let Some(r) = record {
        return match r.role {
            Role::Primary => Ok(Role::Standby),
            other => Err(format!(
                "the peer {peer_name} is recorded as {} at epoch {} but this database has no \
                 state: it cannot be this node's standby. If this database was replaced, run \
                 `understudy promote --force` on the peer (or restore this database)",
                other.as_str(),
                r.epoch
            )),
        };
    }
    if let Some(p) = initial_primary {
        return Ok(if p == me {
            Role::Primary
        } else {
            Role::Standby
        });
    }
    match (my_data, peer_data) {
        (true, false) => Ok(Role::Primary),
        (false, true) => Ok(Role::Standby),
        (true, true) => Err(format!(
            "both databases ({me} and {peer_name}) hold NMS data and neither has understudy state: \
             set nms.initial_primary to the node whose data is right; the other is copied over"
        )),
        (false, false) => Err(format!(
            "neither database ({me} nor {peer_name}) holds NMS data: set nms.initial_primary to \
             the node where the NMS will write"
        )),
    }
}

/// Whether the database holds NMS data: any row in a table outside the system schemas and
/// `understudy`.
pub async fn has_data(client: &Client) -> Result<bool> {
    let tables = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', \
                   'understudy') AND n.nspname NOT LIKE 'pg\\_%'",
            &[],
        )
        .await
        .context("while listing tables")?;
    for t in tables {
        let name: String = t.get(0);
        let any = client
            .query_opt(&format!("SELECT 1 FROM {name} LIMIT 1"), &[])
            .await
            .with_context(|| format!("while looking for rows in {name}"))?;
        if any.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Epoch;

    fn seen(role: Option<Role>, has_data: bool) -> PeerFacts {
        PeerFacts::Seen {
            record: role.map(|role| NodeRecord {
                name: "b".into(),
                role,
                epoch: Epoch(3),
                updated_at: String::new(),
            }),
            has_data,
        }
    }

    #[test]
    fn both_nodes_agree_from_the_same_facts() {
        // (my data, peer facts, initial_primary) -> role of "a"; "b" sees the mirror image.
        type Case = (bool, bool, Option<&'static str>, Result<Role, ()>);
        let cases: &[Case] = &[
            (true, false, None, Ok(Role::Primary)),
            (false, true, None, Ok(Role::Standby)),
            (true, true, None, Err(())),
            (false, false, None, Err(())),
            (true, true, Some("b"), Ok(Role::Standby)),
            (false, false, Some("a"), Ok(Role::Primary)),
            (false, true, Some("a"), Ok(Role::Primary)),
        ];
        for (mine, theirs, initial, expect) in cases {
            let a = decide("a", "b", *mine, &seen(None, *theirs), *initial).map_err(|_| ());
            assert_eq!(
                &a, expect,
                "a with data {mine}, b {theirs}, initial {initial:?}"
            );
            let b = decide("b", "a", *theirs, &seen(None, *mine), *initial).map_err(|_| ());
            let mirror = expect.map(|r| match r {
                Role::Primary => Role::Standby,
                _ => Role::Primary,
            });
            assert_eq!(b, mirror, "b's view of the same facts");
        }
    }

    #[test]
    fn a_peer_with_a_role_decides() {
        assert_eq!(
            decide("a", "b", true, &seen(Some(Role::Primary), false), Some("a")),
            Ok(Role::Standby)
        );
        let e = decide("a", "b", false, &seen(Some(Role::Standby), true), None).unwrap_err();
        assert!(e.contains("recorded as standby"), "{e}");
    }

    #[test]
    fn an_unreachable_peer_means_waiting() {
        let e = decide(
            "a",
            "b",
            true,
            &PeerFacts::Unreachable("refused".into()),
            Some("a"),
        )
        .unwrap_err();
        assert!(e.contains("cannot be asked (refused)"), "{e}");
    }
}
