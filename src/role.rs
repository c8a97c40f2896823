//! Roles: which node may write, and the moves between roles (guarantee 6, one writer).
//!
//! ```text
//!   events (health, operator) ─▶ machine::step ─▶ actions ─▶ performers (guard, node, promote)
//!                                     ▲                              │
//!                                     └──── understudy.node ◀────────┘  (role + epoch, per database)
//! ```
//!
//! * [`machine`]: the pure role controller, `step(state, event) -> (state, actions)`. Every
//!   decision that is hard to get right (fence on a higher epoch, when failover is allowed, how
//!   a fenced node comes back) lives there and is table-tested.
//! * [`node`]: the cluster state each database carries in schema `understudy`
//!   (`sql/roles.sql`): this node's name, role and epoch, and the history of epochs.
//! * [`guard`]: the read-only standby: write privileges of the NMS's roles revoked on the
//!   replicated tables, recorded exactly, and restored on promotion.
//! * [`promote`]: turns a standby into the primary: sequences, the reverse slot, a new epoch,
//!   writes allowed, the promote hook.
//!
//! Invariant: a database's role and epoch change in one transaction ([`node::bump_epoch`]), and
//! an epoch never goes down. When the machine's view and a database disagree (a performer failed
//! half-way), the database is right: rebuild the state from [`node::read_state`].

use std::fmt;
use std::str::FromStr;

pub mod divergence;
pub mod guard;
pub mod machine;
pub mod node;
pub mod promote;
pub mod rejoin;
pub mod switchover;
pub mod sync;

/// A node's generation as the writer. Promotion raises it; it never goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a node is doing with its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the primary; its database is read-only for the NMS.
    Standby,
    /// The one writer: the NMS writes here, the standby follows it.
    Primary,
    /// Saw a peer with a higher epoch (or was told to stop writing): read-only for the NMS,
    /// never a source for a follower, until it rejoins as standby.
    Fenced,
}

impl Role {
    /// The text stored in `understudy.node.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Primary => "primary",
            Role::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `standby`, `primary`, `fenced`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}; expected standby, primary or fenced")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "standby" => Ok(Role::Standby),
            "primary" => Ok(Role::Primary),
            "fenced" => Ok(Role::Fenced),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_text_round_trips() {
        for role in [Role::Standby, Role::Primary, Role::Fenced] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("leader".parse::<Role>().is_err());
    }

    #[test]
    fn epochs_order_and_advance() {
        assert!(Epoch(2) > Epoch(1));
        assert_eq!(Epoch(1).next(), Epoch(2));
        assert_eq!(Epoch(i64::MAX).next(), Epoch(i64::MAX));
    }
}
