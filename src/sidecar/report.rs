//! What the sidecar reports about itself: [`SidecarStatus`], served as JSON on `GET /v1/status`
//! and, through [`prometheus`], as metrics on `GET /metrics`.
//!
//! The run loop owns the one `SidecarStatus` (behind a `watch` channel) and replaces it whenever
//! something changes; readers only ever see whole snapshots. Every field has a serde default, so
//! a CLI reads the status of a sidecar one version apart.
//!
//! Metrics follow the Prometheus text exposition format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>): every
//! family has one `# HELP` and one `# TYPE` line followed by its samples, names start with
//! `understudy_`, and every sample carries `node="NAME"`. A value the sidecar does not know (no
//! peer configured, no promotion yet) is left out rather than reported as zero, except where zero
//! is the truth (no divergence recorded, the primary not lost).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// The roles a sidecar reports, in the order the `understudy_role` samples list them.
pub const ROLES: [&str; 4] = ["starting", "primary", "standby", "fenced"];
/// The states of synchronous replication, in the order the `understudy_sync_state` samples list
/// them.
pub const SYNC_STATES: [&str; 4] = ["off", "sync", "waiting", "async_fallback"];

/// Everything one sidecar says about its node, its peer and the replication between them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SidecarStatus {
    /// This node's name from the config.
    pub node: String,
    /// One of [`ROLES`]: `fenced` is an old primary that saw a peer with a higher epoch.
    pub role: String,
    pub epoch: i64,
    /// The other node, when one is configured.
    pub peer: Option<PeerStatus>,
    /// Whether this node is following the primary's changes right now.
    pub following: bool,
    pub lsn: LsnStatus,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub sync: SyncStatus,
    pub failover: FailoverStatus,
    pub last_promotion: Option<PromotionStatus>,
    pub last_switchover: Option<SwitchoverStatus>,
    /// The last time this node found transactions of its own that the new primary lacks.
    pub divergence: Option<DivergenceStatus>,
    /// Conditions an operator should look at, one sentence each.
    pub alarms: Vec<String>,
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
    pub started_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// The other node, as last seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PeerStatus {
    pub name: String,
    pub role: Option<String>,
    pub epoch: Option<i64>,
    pub reachable: bool,
    pub last_seen_unix_ms: Option<u64>,
}

/// Positions along the path of a change, each absent until known.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LsnStatus {
    /// Received from the primary.
    pub received: Option<Lsn>,
    /// Durable in the follow journal.
    pub journaled: Option<Lsn>,
    /// Committed on this node's database.
    pub applied: Option<Lsn>,
    /// Handed to every message sink.
    pub delivered: Option<Lsn>,
    /// The primary's current WAL position.
    pub primary_current: Option<Lsn>,
}

impl LsnStatus {
    /// The positions with the `kind` label each has in the metrics.
    fn kinds(&self) -> [(&'static str, Option<Lsn>); 5] {
        [
            ("received", self.received),
            ("journaled", self.journaled),
            ("applied", self.applied),
            ("delivered", self.delivered),
            ("primary_current", self.primary_current),
        ]
    }
}

/// Synchronous replication as configured and as it stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SyncStatus {
    /// `async` or `sync`.
    pub mode: String,
    /// One of [`SYNC_STATES`].
    pub state: String,
    pub since_unix_ms: Option<u64>,
}

/// Automatic failover: whether it is on, and how close it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FailoverStatus {
    pub automatic: bool,
    pub timeout_secs: f64,
    /// How long the primary has been unreachable, while it is.
    pub primary_lost_for_secs: Option<f64>,
    /// The witness that confirms the primary is gone, when one is configured.
    pub witness: Option<String>,
}

/// The last time this node became primary.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PromotionStatus {
    pub epoch: i64,
    pub lsn: Lsn,
    pub at_unix_ms: u64,
    /// How long the promotion took.
    pub seconds: f64,
    /// `failover`, `switchover` or `manual`.
    pub kind: String,
}

/// The last planned switchover this node took part in.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SwitchoverStatus {
    /// How long neither node accepted writes.
    pub no_writer_window_ms: f64,
    pub final_lsn: Lsn,
    pub at_unix_ms: u64,
}

/// Transactions of this node that the new primary never received, set aside in `dir`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DivergenceStatus {
    pub dir: String,
    pub transactions: usize,
    pub rows: usize,
    pub at_unix_ms: u64,
}

/// The status as Prometheus text exposition format 0.0.4.
pub fn prometheus(s: &SidecarStatus) -> String {
    let mut out = Exposition::new(&s.node);
    out.family("understudy_up", "1 while the sidecar answers.");
    out.sample(&[], 1.0);

    out.family(
        "understudy_role",
        "1 for the node's current role (starting, primary, standby or fenced), 0 for the others.",
    );
    for role in ROLES {
        out.sample(&[("role", role)], flag(s.role == role));
    }
    if !ROLES.contains(&s.role.as_str()) {
        out.sample(&[("role", &s.role)], 1.0);
    }

    out.family(
        "understudy_epoch",
        "The node's epoch: it grows with every promotion.",
    );
    out.sample(&[], s.epoch as f64);

    out.family(
        "understudy_following",
        "1 while the node follows the primary's changes.",
    );
    out.sample(&[], flag(s.following));

    if let Some(peer) = &s.peer {
        out.family(
            "understudy_peer_reachable",
            "1 while the peer sidecar answers.",
        );
        out.sample(&[("peer", &peer.name)], flag(peer.reachable));
        if let Some(epoch) = peer.epoch {
            out.family("understudy_peer_epoch", "The peer's epoch, as last seen.");
            out.sample(&[("peer", &peer.name)], epoch as f64);
        }
        if let Some(ms) = peer.last_seen_unix_ms {
            out.family(
                "understudy_peer_last_seen_timestamp_seconds",
                "When the peer last answered, in seconds since the Unix epoch.",
            );
            out.sample(&[("peer", &peer.name)], seconds(ms));
        }
    }

    let known: Vec<_> = s
        .lsn
        .kinds()
        .into_iter()
        .filter_map(|(kind, lsn)| lsn.map(|l| (kind, l)))
        .collect();
    if !known.is_empty() {
        out.family(
            "understudy_lsn_bytes",
            "WAL positions as byte offsets: received, journaled, applied, delivered, and the \
             primary's current one.",
        );
        for (kind, lsn) in known {
            out.sample(&[("kind", kind)], lsn.0 as f64);
        }
    }

    if let Some(bytes) = s.lag_bytes {
        out.family(
            "understudy_lag_bytes",
            "WAL bytes between the primary's current position and the applied one.",
        );
        out.sample(&[], bytes as f64);
    }
    if let Some(secs) = s.lag_seconds {
        out.family(
            "understudy_lag_seconds",
            "Seconds since the last applied transaction committed on the primary, while behind.",
        );
        out.sample(&[], secs);
    }

    out.family(
        "understudy_sync_state",
        "1 for the state of synchronous replication (off, sync, waiting, async_fallback), 0 for \
         the others.",
    );
    for state in SYNC_STATES {
        out.sample(&[("state", state)], flag(s.sync.state == state));
    }
    if !SYNC_STATES.contains(&s.sync.state.as_str()) {
        out.sample(&[("state", &s.sync.state)], 1.0);
    }
    out.family(
        "understudy_sync_mode",
        "1 for the configured replication mode (async or sync).",
    );
    out.sample(&[("mode", &s.sync.mode)], 1.0);

    out.family(
        "understudy_failover_automatic",
        "1 when the node promotes itself once the primary is lost for the timeout.",
    );
    out.sample(&[], flag(s.failover.automatic));
    out.family(
        "understudy_failover_timeout_seconds",
        "How long the primary must be lost before an automatic failover.",
    );
    out.sample(&[], s.failover.timeout_secs);
    out.family(
        "understudy_primary_lost_seconds",
        "How long the primary has been unreachable; 0 while it is not.",
    );
    out.sample(&[], s.failover.primary_lost_for_secs.unwrap_or(0.0));

    if let Some(p) = &s.last_promotion {
        out.family(
            "understudy_last_promotion_seconds",
            "How long the last promotion of this node took.",
        );
        out.sample(&[("kind", &p.kind)], p.seconds);
        out.family(
            "understudy_last_promotion_timestamp_seconds",
            "When this node was last promoted, in seconds since the Unix epoch.",
        );
        out.sample(&[("kind", &p.kind)], seconds(p.at_unix_ms));
    }
    if let Some(sw) = &s.last_switchover {
        out.family(
            "understudy_last_switchover_no_writer_window_seconds",
            "How long neither node accepted writes during the last switchover.",
        );
        out.sample(&[], sw.no_writer_window_ms / 1000.0);
        out.family(
            "understudy_last_switchover_timestamp_seconds",
            "When the last switchover ended, in seconds since the Unix epoch.",
        );
        out.sample(&[], seconds(sw.at_unix_ms));
    }

    let (transactions, rows) = s
        .divergence
        .as_ref()
        .map_or((0, 0), |d| (d.transactions, d.rows));
    out.family(
        "understudy_divergent_transactions",
        "Transactions of this node the new primary never received, set aside at the last \
         divergence; 0 when none was found.",
    );
    out.sample(&[], transactions as f64);
    out.family(
        "understudy_divergent_rows",
        "Rows those divergent transactions changed.",
    );
    out.sample(&[], rows as f64);

    out.family(
        "understudy_alarms",
        "Conditions an operator should look at (see /v1/status for the text).",
    );
    out.sample(&[], s.alarms.len() as f64);

    if let Some(ms) = s.last_error_unix_ms {
        out.family(
            "understudy_last_error_timestamp_seconds",
            "When the last error happened, in seconds since the Unix epoch.",
        );
        out.sample(&[], seconds(ms));
    }
    out.family(
        "understudy_start_time_seconds",
        "When the sidecar started, in seconds since the Unix epoch.",
    );
    out.sample(&[], seconds(s.started_unix_ms));
    out.family(
        "understudy_status_updated_timestamp_seconds",
        "When the status last changed, in seconds since the Unix epoch.",
    );
    out.sample(&[], seconds(s.updated_unix_ms));
    out.text
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn seconds(unix_ms: u64) -> f64 {
    unix_ms as f64 / 1000.0
}

/// Writes families in order: a family's HELP and TYPE, then its samples.
struct Exposition {
    text: String,
    /// `node="…"`, escaped once.
    node_label: String,
    family: &'static str,
}

impl Exposition {
    fn new(node: &str) -> Self {
        let mut node_label = String::from("node=\"");
        escape_label(&mut node_label, node);
        node_label.push('"');
        Exposition {
            text: String::with_capacity(4096),
            node_label,
            family: "",
        }
    }

    /// Starts a gauge family; `help` must be one line without backslashes.
    fn family(&mut self, name: &'static str, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']), "{name}: HELP needs escaping");
        self.family = name;
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{}{{{}", self.family, self.node_label);
        for (name, value) in labels {
            let _ = write!(self.text, ",{name}=\"");
            escape_label(&mut self.text, value);
            self.text.push('"');
        }
        self.text.push_str("} ");
        write_value(&mut self.text, value);
        self.text.push('\n');
    }
}

/// A label value: backslash, double quote and line feed are escaped.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A value as Go's `ParseFloat` reads it (Rust would print `inf`).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    /// A status with every field set.
    pub(crate) fn full() -> SidecarStatus {
        SidecarStatus {
            node: "a".into(),
            role: "standby".into(),
            epoch: 3,
            peer: Some(PeerStatus {
                name: "b".into(),
                role: Some("primary".into()),
                epoch: Some(3),
                reachable: true,
                last_seen_unix_ms: Some(1_700_000_000_500),
            }),
            following: true,
            lsn: LsnStatus {
                received: Some(Lsn(0x1_0000_0010)),
                journaled: Some(Lsn(0x1_0000_0008)),
                applied: Some(Lsn(0x1_0000_0000)),
                delivered: None,
                primary_current: Some(Lsn(0x1_0000_0020)),
            },
            lag_bytes: Some(32),
            lag_seconds: Some(0.25),
            sync: SyncStatus {
                mode: "sync".into(),
                state: "async_fallback".into(),
                since_unix_ms: Some(1_700_000_000_000),
            },
            failover: FailoverStatus {
                automatic: true,
                timeout_secs: 10.0,
                primary_lost_for_secs: Some(2.5),
                witness: Some("10.0.0.9:8433".into()),
            },
            last_promotion: Some(PromotionStatus {
                epoch: 3,
                lsn: Lsn(0x1_0000_0000),
                at_unix_ms: 1_699_999_000_000,
                seconds: 1.75,
                kind: "switchover".into(),
            }),
            last_switchover: Some(SwitchoverStatus {
                no_writer_window_ms: 840.0,
                final_lsn: Lsn(0x1_0000_0000),
                at_unix_ms: 1_699_999_000_000,
            }),
            divergence: Some(DivergenceStatus {
                dir: "/var/lib/understudy/divergent/3".into(),
                transactions: 2,
                rows: 7,
                at_unix_ms: 1_699_999_000_000,
            }),
            alarms: vec!["the peer is unreachable".into(), "lag over 10 s".into()],
            last_error: Some("connection refused".into()),
            last_error_unix_ms: Some(1_699_999_500_000),
            started_unix_ms: 1_699_990_000_000,
            updated_unix_ms: 1_700_000_000_600,
        }
    }

    /// One sample: its family name, its labels (unescaped) and its value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// Reads the exposition line by line as Prometheus would, checking what the format requires:
    /// HELP and TYPE once per family and before its samples, samples of a family together, values
    /// that parse, label values correctly escaped.
    fn parse(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        let mut helps = HashSet::new();
        let mut types = HashSet::new();
        let mut finished = HashSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{name}: empty HELP");
                assert!(helps.insert(name.to_string()), "{name}: HELP twice");
                if let Some(prev) = current.replace(name.to_string()) {
                    if prev != name {
                        finished.insert(prev);
                    }
                }
                assert!(!finished.contains(name), "{name}: family split");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(kind, "gauge", "{name}");
                assert!(helps.contains(name), "{name}: TYPE before HELP");
                assert!(types.insert(name.to_string()), "{name}: TYPE twice");
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let sample = parse_sample(line);
            assert!(
                sample.name.starts_with("understudy_"),
                "{line}: name prefix"
            );
            assert_eq!(current.as_deref(), Some(sample.name.as_str()), "{line}");
            assert!(types.contains(&sample.name), "{line}: no TYPE");
            samples.push(sample);
        }
        assert_eq!(helps, types, "every family has HELP and TYPE");
        samples
    }

    fn parse_sample(line: &str) -> Sample {
        let open = line
            .find('{')
            .unwrap_or_else(|| panic!("{line}: no labels"));
        let name = &line[..open];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}: metric name"
        );
        let mut chars = line[open + 1..].chars();
        let mut labels = BTreeMap::new();
        loop {
            let mut label = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                assert!(c.is_ascii_alphanumeric() || c == '_', "{line}: label name");
                label.push(c);
            }
            assert_eq!(chars.next(), Some('"'), "{line}: label value opens");
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("{line}: bad escape {other:?}"),
                    },
                    Some('"') => break,
                    Some('\n') | None => panic!("{line}: unterminated label value"),
                    Some(c) => value.push(c),
                }
            }
            assert!(
                labels.insert(label.clone(), value).is_none(),
                "{line}: {label} twice"
            );
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("{line}: after a label value: {other:?}"),
            }
        }
        let rest: String = chars.collect();
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("{line}: no space before the value"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{line}: value {v:?}")),
        };
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn full_status_parses_with_the_values() {
        let samples = parse(&prometheus(&full()));
        assert!(samples.iter().all(|s| s.labels["node"] == "a"));
        let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(v("understudy_up", &[]), Some(1.0));
        assert_eq!(v("understudy_role", &[("role", "standby")]), Some(1.0));
        for role in ["starting", "primary", "fenced"] {
            assert_eq!(v("understudy_role", &[("role", role)]), Some(0.0), "{role}");
        }
        assert_eq!(v("understudy_epoch", &[]), Some(3.0));
        assert_eq!(v("understudy_following", &[]), Some(1.0));
        assert_eq!(v("understudy_peer_reachable", &[("peer", "b")]), Some(1.0));
        assert_eq!(
            v("understudy_lsn_bytes", &[("kind", "received")]),
            Some(0x1_0000_0010u64 as f64)
        );
        assert_eq!(
            v("understudy_lsn_bytes", &[("kind", "primary_current")]),
            Some(0x1_0000_0020u64 as f64)
        );
        assert_eq!(v("understudy_lsn_bytes", &[("kind", "delivered")]), None);
        assert_eq!(v("understudy_lag_bytes", &[]), Some(32.0));
        assert_eq!(v("understudy_lag_seconds", &[]), Some(0.25));
        assert_eq!(
            v("understudy_sync_state", &[("state", "async_fallback")]),
            Some(1.0)
        );
        assert_eq!(v("understudy_sync_state", &[("state", "sync")]), Some(0.0));
        assert_eq!(v("understudy_primary_lost_seconds", &[]), Some(2.5));
        assert_eq!(v("understudy_last_promotion_seconds", &[]), Some(1.75));
        assert_eq!(
            v("understudy_last_switchover_no_writer_window_seconds", &[]),
            Some(0.84)
        );
        assert_eq!(v("understudy_divergent_transactions", &[]), Some(2.0));
        assert_eq!(v("understudy_alarms", &[]), Some(2.0));
        assert_eq!(
            v("understudy_status_updated_timestamp_seconds", &[]),
            Some(1_700_000_000.6)
        );
    }

    #[test]
    fn empty_status_leaves_out_what_is_unknown() {
        let status = SidecarStatus {
            node: "b".into(),
            role: "starting".into(),
            ..SidecarStatus::default()
        };
        let samples = parse(&prometheus(&status));
        let names: HashSet<_> = samples.iter().map(|s| s.name.as_str()).collect();
        for absent in [
            "understudy_peer_reachable",
            "understudy_lsn_bytes",
            "understudy_lag_bytes",
            "understudy_lag_seconds",
            "understudy_last_promotion_seconds",
            "understudy_last_switchover_no_writer_window_seconds",
        ] {
            assert!(!names.contains(absent), "{absent} should be left out");
        }
        let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(v("understudy_role", &[("role", "starting")]), Some(1.0));
        assert_eq!(v("understudy_divergent_transactions", &[]), Some(0.0));
        assert_eq!(v("understudy_primary_lost_seconds", &[]), Some(0.0));
        assert_eq!(v("understudy_alarms", &[]), Some(0.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let tricky = "n\"o\\d\ne";
        let mut status = full();
        status.node = tricky.into();
        status.role = "odd \"role\"".into();
        status.peer.as_mut().unwrap().name = "back\\slash".into();
        let text = prometheus(&status);
        assert!(
            text.contains(r#"node="n\"o\\d\ne""#),
            "escaped in the text: {text}"
        );
        let samples = parse(&text);
        assert!(samples.iter().all(|s| s.labels["node"] == tricky));
        // An unknown role is still reported, next to the four known ones at 0.
        assert_eq!(
            value(&samples, "understudy_role", &[("role", "odd \"role\"")]),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "understudy_role", &[("role", "standby")]),
            Some(0.0)
        );
        assert_eq!(
            value(
                &samples,
                "understudy_peer_reachable",
                &[("peer", "back\\slash")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn special_values_use_the_go_spelling() {
        let mut status = full();
        status.lag_seconds = Some(f64::INFINITY);
        status.failover.primary_lost_for_secs = Some(f64::NAN);
        let text = prometheus(&status);
        assert!(text.contains("understudy_lag_seconds{node=\"a\"} +Inf\n"));
        assert!(text.contains("understudy_primary_lost_seconds{node=\"a\"} NaN\n"));
        parse(&text);
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let status = full();
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""applied":"1/0""#), "LSNs as text: {text}");
        let back: SidecarStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back, status);
        // A field this version does not know is ignored; one it lacks takes its default.
        let partial: SidecarStatus =
            serde_json::from_str(r#"{"node":"a","role":"primary","future":1}"#).unwrap();
        assert_eq!(partial.role, "primary");
        assert_eq!(partial.lsn, LsnStatus::default());
    }
}
