//! The configuration of `understudy run --config FILE`: one TOML file per sidecar, the same shape
//! on both nodes of the pair, each file naming its own node (`node = "a"`). See
//! `examples/understudy.toml` for every key.
//!
//! Owns turning that file into a validated [`Config`]. Invariants of a `Config` from
//! [`Config::parse`]: exactly two nodes, in file order, with names that fit inside replication
//! slot names and `application_name` (`^[a-z][a-z0-9_]{0,30}$`); `this` names one of them; their
//! `http` addresses and their databases (host, port, dbname) differ; relative paths are resolved
//! against the config file's directory; every timeout and `probe_interval` is non-zero.
//!
//! Every refusal names the file, the key (`failover.timeout`) and what to do. Errors and `Debug`
//! never carry a password or the HTTP token.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::follow::{Ack, DEFAULT_JOURNAL_MAX_BYTES};
use crate::pg::conninfo::ConnInfo;

/// Where a node's sidecar listens when its `http` is not given.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7480";
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_FALLBACK_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_SEQUENCE_MARGIN: i64 = 1000;
const DEFAULT_DIVERGENCE_DIR: &str = "divergence";
const EXAMPLE: &str = "see examples/understudy.toml";

/// The sidecar's configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from, as given.
    pub path: PathBuf,
    /// This node's name: one of `nodes`.
    pub this: String,
    /// Exactly two, in file order.
    pub nodes: Vec<NodeConfig>,
    pub nms: NmsConfig,
    pub hooks: HooksConfig,
    pub failover: FailoverConfig,
    pub sync: SyncConfig,
    pub http: HttpConfig,
    pub journal: JournalConfig,
    pub divergence_dir: PathBuf,
    /// Mutation messages for this node's NMS while it is standby (from its journal).
    pub messages: MessagesConfig,
}

/// `[messages]`: what the follower delivers to this node's NMS, as `follow --sink/--http/--rules`.
#[derive(Clone, Debug, Default)]
pub struct MessagesConfig {
    pub sinks: Vec<crate::notify::SinkConfig>,
    /// Serve the SSE message stream here (its bearer token is `http.token`).
    pub stream: Option<SocketAddr>,
    pub rules: Option<PathBuf>,
}

impl MessagesConfig {
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty() && self.stream.is_none()
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub database: ConnInfo,
    /// Where this node's sidecar listens (and where its peer reaches it).
    pub http: SocketAddr,
    /// Follow through a durable journal in this directory.
    pub journal: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct NmsConfig {
    /// The NMS's database roles, made read-only on a standby. Never empty.
    pub roles: Vec<String>,
    /// The node that starts as primary when neither database holds state.
    pub initial_primary: Option<String>,
}

/// Shell commands, run with `sh -c`.
#[derive(Clone, Debug)]
pub struct HooksConfig {
    pub promote: Option<String>,
    /// Run before an automatic failover: power off or firewall the old primary.
    pub fence: Option<String>,
    /// Run when this node stops being primary.
    pub demote: Option<String>,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct FailoverConfig {
    pub automatic: bool,
    /// How long the primary is unreachable before an automatic failover.
    pub timeout: Duration,
    /// Less than `timeout`.
    pub probe_interval: Duration,
    pub connect_timeout: Duration,
    /// Always `Some` when `automatic`.
    pub witness: Option<Witness>,
    /// Positive.
    pub sequence_margin: i64,
    pub auto_rejoin: bool,
    /// Switchover: how long open NMS transactions may finish before they are terminated.
    pub drain_timeout: Duration,
}

/// What must answer before this node may fail over automatically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Witness {
    /// `host:port` that must accept a TCP connection.
    Tcp(String),
    /// A shell command that must exit 0.
    Command(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub mode: SyncMode,
    pub on_standby_loss: StandbyLoss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Async,
    Sync,
}

/// In synchronous mode, what the primary does when its standby is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyLoss {
    /// Commits wait until the standby is back.
    Wait,
    /// Fall back to asynchronous replication after the standby has been gone this long.
    Async { after: Duration },
}

#[derive(Clone)]
pub struct HttpConfig {
    /// Bearer token required by the POST endpoints.
    pub token: Option<String>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub max_bytes: u64,
    pub ack: Ack,
}

/// The replication slot that node `consumer` streams from, on its peer.
pub fn slot_for(consumer: &str) -> String {
    format!("understudy_{consumer}")
}

/// The `application_name` of node `consumer`'s follower on its peer (what
/// `synchronous_standby_names` lists).
pub fn application_name(consumer: &str) -> String {
    format!("understudy_{consumer}")
}

/// `500ms`, `10s`, `2m`, `1h`: a whole number and a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "'{s}' is not a duration: give a whole number and a unit (ms, s, m or h), such as \
             \"500ms\", \"10s\", \"2m\" or \"1h\""
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// `1073741824`, `512MiB`, `1GiB`: bytes, with B/KiB/MiB/GiB.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "'{s}' is not a size: give bytes as a whole number with B, KiB, MiB or GiB, such as \
             \"512MiB\" or \"1GiB\""
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// `tcp:HOST:PORT` or `cmd:COMMAND`.
fn parse_witness(s: &str) -> Result<Witness, String> {
    let forms =
        "give \"tcp:HOST:PORT\" (must accept a connection) or \"cmd:COMMAND\" (must exit 0)";
    if let Some(addr) = s.strip_prefix("tcp:") {
        let bad =
            || format!("'{s}' is not a TCP witness: {forms}; an IPv6 host goes in [brackets]");
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let bare_v6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
        if host.is_empty() || bare_v6 || !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(bad());
        }
        Ok(Witness::Tcp(addr.to_string()))
    } else if let Some(command) = s.strip_prefix("cmd:") {
        match command.trim().is_empty() {
            true => Err(format!("'{s}' has no command: {forms}")),
            false => Ok(Witness::Command(command.to_string())),
        }
    } else {
        Err(format!("'{s}' is not a witness: {forms}"))
    }
}

/// Node names go into slot names and `application_name`: `^[a-z][a-z0-9_]{0,30}$`.
fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 31
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Config {
    /// Read and parse the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "cannot read the config file {}: {e}; check the path given to --config",
                path.display()
            )
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate `text`, read from `path` (named in errors; relative paths in the file
    /// resolve against its directory). Reads `http.token_file`, and the pgpass file for DSNs
    /// without a password.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let at = |key: &str, what: String| refuse(path, key, what);

        let raw_nodes = raw.nodes.map(|n| n.0).unwrap_or_default();
        if raw_nodes.len() != 2 {
            let names: Vec<&str> = raw_nodes.iter().map(|(n, _)| n.as_str()).collect();
            return Err(at(
                "nodes",
                format!(
                    "has {} node(s) [{}]; a pair has exactly two: give one [nodes.NAME] section \
                     for each node, such as [nodes.a] and [nodes.b]",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
        let nodes = raw_nodes
            .into_iter()
            .map(|(name, node)| node_config(path, &base, name, node))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (a, b) = (&nodes[0], &nodes[1]);
        if a.http == b.http {
            return Err(at(
                &format!("nodes.{}.http", b.name),
                format!(
                    "is {}, the same as nodes.{}.http (the default is {DEFAULT_HTTP}); give each \
                     node's sidecar its own address",
                    b.http, a.name
                ),
            ));
        }
        if same_database(&a.database, &b.database) {
            return Err(at(
                &format!("nodes.{}.database", b.name),
                format!(
                    "names the same database as nodes.{} (host={} port={} dbname={}); each node \
                     needs its own PostgreSQL server: fix the host, port or dbname",
                    a.name,
                    b.database.host(),
                    b.database.port(),
                    b.database.dbname()
                ),
            ));
        }
        let names = format!("{} or {}", a.name, b.name);
        let this = raw.node.ok_or_else(|| {
            at(
                "node",
                format!(
                    "is missing; name this node at the top of the file: node = \"{}\" (one of \
                     {names})",
                    a.name
                ),
            )
        })?;
        if !nodes.iter().any(|n| n.name == this) {
            return Err(at(
                "node",
                format!("is '{this}', which is not a node of [nodes]; give {names}"),
            ));
        }

        let nms = raw.nms.ok_or_else(|| {
            at(
                "nms",
                "is missing; add an [nms] section with roles = [\"...\"], the NMS's database roles"
                    .into(),
            )
        })?;
        let roles = nms.roles.unwrap_or_default();
        if roles.is_empty() {
            return Err(at(
                "nms.roles",
                "is missing or empty; list the NMS's database roles, which are made read-only on \
                 a standby: roles = [\"nms_app\"]"
                    .into(),
            ));
        }
        if roles.iter().any(|r| r.trim().is_empty()) {
            return Err(at(
                "nms.roles",
                "holds an empty role name; remove it or give the role's name".into(),
            ));
        }
        if let Some(p) = &nms.initial_primary {
            if !nodes.iter().any(|n| &n.name == p) {
                return Err(at(
                    "nms.initial_primary",
                    format!("is '{p}', which is not a node of [nodes]; give {names} or remove it"),
                ));
            }
        }

        let hooks = raw.hooks;
        for (key, command) in [
            ("hooks.promote", &hooks.promote),
            ("hooks.fence", &hooks.fence),
            ("hooks.demote", &hooks.demote),
        ] {
            if command.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return Err(at(
                    key,
                    "is empty; give a shell command or remove the key".into(),
                ));
            }
        }
        let hooks = HooksConfig {
            promote: hooks.promote,
            fence: hooks.fence,
            demote: hooks.demote,
            timeout: nonzero(path, "hooks.timeout", hooks.timeout, DEFAULT_HOOK_TIMEOUT)?,
        };

        let f = raw.failover;
        let timeout = nonzero(
            path,
            "failover.timeout",
            f.timeout,
            DEFAULT_FAILOVER_TIMEOUT,
        )?;
        let probe_interval = nonzero(
            path,
            "failover.probe_interval",
            f.probe_interval,
            DEFAULT_PROBE_INTERVAL,
        )?;
        if probe_interval >= timeout {
            return Err(at(
                "failover.probe_interval",
                format!(
                    "is {probe_interval:?}, not less than failover.timeout ({timeout:?}); probe \
                     several times per timeout: lower probe_interval or raise timeout"
                ),
            ));
        }
        let automatic = f.automatic.unwrap_or(false);
        let witness = f.witness.map(|w| w.0);
        if automatic && witness.is_none() {
            return Err(at(
                "failover.witness",
                "is missing, and failover.automatic = true needs it (without a witness, a node \
                 cut off from its peer would promote itself); give witness = \"tcp:HOST:PORT\" \
                 or \"cmd:COMMAND\", or set automatic = false"
                    .into(),
            ));
        }
        let sequence_margin = f.sequence_margin.unwrap_or(DEFAULT_SEQUENCE_MARGIN);
        if sequence_margin <= 0 {
            return Err(at(
                "failover.sequence_margin",
                format!("is {sequence_margin}; give a positive number, such as 1000"),
            ));
        }
        let failover = FailoverConfig {
            automatic,
            timeout,
            probe_interval,
            connect_timeout: nonzero(
                path,
                "failover.connect_timeout",
                f.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            witness,
            sequence_margin,
            auto_rejoin: f.auto_rejoin.unwrap_or(true),
            drain_timeout: nonzero(
                path,
                "failover.drain_timeout",
                f.drain_timeout,
                DEFAULT_DRAIN_TIMEOUT,
            )?,
        };

        let s = raw.sync;
        let on_standby_loss = match (s.on_standby_loss, s.fallback_after) {
            (None | Some(RawStandbyLoss::Wait), Some(_)) => {
                return Err(at(
                    "sync.fallback_after",
                    "applies only with on_standby_loss = \"async\"; set that, or remove \
                     fallback_after"
                        .into(),
                ))
            }
            (None | Some(RawStandbyLoss::Wait), None) => StandbyLoss::Wait,
            (Some(RawStandbyLoss::Async), after) => StandbyLoss::Async {
                after: after.map_or(DEFAULT_FALLBACK_AFTER, |d| d.0),
            },
        };
        let sync = SyncConfig {
            mode: s.mode.unwrap_or(SyncMode::Async),
            on_standby_loss,
        };

        let token = match (raw.http.token, raw.http.token_file) {
            (Some(_), Some(_)) => {
                return Err(at(
                    "http.token",
                    "and http.token_file are both given; keep one".into(),
                ))
            }
            (Some(token), None) if token.trim().is_empty() => {
                return Err(at(
                    "http.token",
                    "is empty; give a secret, or remove it to leave POST endpoints open".into(),
                ))
            }
            (Some(token), None) => Some(token),
            (None, Some(file)) => Some(read_token(path, &base, &file)?),
            (None, None) => None,
        };

        let max_bytes = raw
            .journal
            .max_bytes
            .map_or(DEFAULT_JOURNAL_MAX_BYTES, |b| b.0);
        if max_bytes == 0 {
            return Err(at(
                "journal.max_bytes",
                "is zero; give the journal room, such as \"1GiB\"".into(),
            ));
        }
        let journal = JournalConfig {
            max_bytes,
            ack: match raw.journal.ack {
                None | Some(RawAck::Journal) => Ack::Journal,
                Some(RawAck::Applied) => Ack::Applied,
            },
        };

        let divergence_dir = match raw.divergence_dir {
            Some(d) if d.trim().is_empty() => {
                return Err(at(
                    "divergence_dir",
                    format!(
                        "is empty; give a directory, or remove it for \"{DEFAULT_DIVERGENCE_DIR}\" \
                         next to the config file"
                    ),
                ))
            }
            Some(d) => base.join(d),
            None => base.join(DEFAULT_DIVERGENCE_DIR),
        };

        let mut messages = MessagesConfig::default();
        for (i, spec) in raw.messages.sinks.unwrap_or_default().iter().enumerate() {
            let sink = spec
                .parse()
                .map_err(|e| at("messages.sinks", format!("entry {} ({spec:?}): {e}", i + 1)))?;
            messages.sinks.push(sink);
        }
        if let Some(addr) = raw.messages.stream {
            messages.stream = Some(
                crate::http::parse_listen(&addr)
                    .map_err(|e| at("messages.stream", format!("{e}; give PORT or IP:PORT")))?,
            );
        }
        messages.rules = raw.messages.rules.map(|r| base.join(r));
        if !messages.is_empty() {
            let me = nodes.iter().find(|n| n.name == this);
            if me.is_some_and(|n| n.journal.is_none()) {
                return Err(at(
                    "messages",
                    format!(
                        "needs this node's journal (messages are read from it): set \
                         nodes.{this}.journal"
                    ),
                ));
            }
        }

        Ok(Config {
            path: path.to_path_buf(),
            this,
            nodes,
            nms: NmsConfig {
                roles,
                initial_primary: nms.initial_primary,
            },
            hooks,
            failover,
            sync,
            http: HttpConfig { token },
            journal,
            divergence_dir,
            messages,
        })
    }

    /// This node.
    pub fn this_node(&self) -> &NodeConfig {
        self.node(&self.this)
            .expect("a parsed Config names one of its nodes")
    }

    /// The other node of the pair.
    pub fn peer(&self) -> &NodeConfig {
        self.nodes
            .iter()
            .find(|n| n.name != self.this)
            .expect("a parsed Config has two nodes")
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// This config as node `name` sees it (`--node NAME` overriding the file's `node`).
    pub fn with_node(mut self, name: &str) -> anyhow::Result<Config> {
        if self.node(name).is_none() {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow::bail!(
                "--node {name}: {} has no [nodes.{name}]; give one of {}",
                self.path.display(),
                names.join(", ")
            );
        }
        self.this = name.to_string();
        Ok(self)
    }
}

fn refuse(path: &Path, key: &str, what: String) -> anyhow::Error {
    anyhow!("{}: `{key}` {what}", path.display())
}

fn nonzero(
    path: &Path,
    key: &str,
    value: Option<Dur>,
    default: Duration,
) -> anyhow::Result<Duration> {
    let d = value.map_or(default, |d| d.0);
    if d.is_zero() {
        return Err(refuse(
            path,
            key,
            format!(
                "is zero; give a positive duration, such as \"{}s\"",
                default.as_secs()
            ),
        ));
    }
    Ok(d)
}

fn node_config(path: &Path, base: &Path, name: String, raw: RawNode) -> anyhow::Result<NodeConfig> {
    if !valid_node_name(&name) {
        return Err(refuse(
            path,
            &format!("nodes.{name}"),
            "is not a usable node name (it goes into replication slot names): use 1 to 31 \
             lowercase letters, digits or _, starting with a letter, such as [nodes.a]"
                .into(),
        ));
    }
    let key = |k: &str| format!("nodes.{name}.{k}");
    let dsn = raw.database.ok_or_else(|| {
        refuse(
            path,
            &key("database"),
            "is missing; give this node's PostgreSQL as libpq key=value pairs \
             (\"host=127.0.0.1 port=5432 dbname=nms user=understudy\") or a postgresql:// URI"
                .into(),
        )
    })?;
    let database = ConnInfo::parse(&dsn)
        .map_err(|e| refuse(path, &key("database"), format!("is not usable: {e}")))?;
    if database.application_name().is_some() {
        return Err(refuse(
            path,
            &key("database"),
            "sets application_name (or PGAPPNAME is set); understudy names its connections \
             itself (synchronous_standby_names lists them): remove application_name from the \
             connection string and unset PGAPPNAME"
                .into(),
        ));
    }
    let http = match raw.http {
        None => DEFAULT_HTTP.parse().expect("the default address parses"),
        Some(text) => text.trim().parse().map_err(|_| {
            refuse(
                path,
                &key("http"),
                format!("is '{text}', not an IP:PORT address; give one such as \"127.0.0.1:7480\""),
            )
        })?,
    };
    let journal = match raw.journal {
        Some(dir) if dir.trim().is_empty() => {
            return Err(refuse(
                path,
                &key("journal"),
                "is empty; give a directory, or remove it to follow without a journal".into(),
            ))
        }
        dir => dir.map(|d| base.join(d)),
    };
    Ok(NodeConfig {
        name,
        database,
        http,
        journal,
    })
}

/// Two DSNs for one server and database (loopback names taken as one host).
fn same_database(a: &ConnInfo, b: &ConnInfo) -> bool {
    let host = |c: &ConnInfo| match c.host().as_str() {
        "localhost" | "127.0.0.1" | "::1" => "localhost".to_string(),
        other => other.to_string(),
    };
    host(a) == host(b) && a.port() == b.port() && a.dbname() == b.dbname()
}

fn read_token(path: &Path, base: &Path, file: &str) -> anyhow::Result<String> {
    let file = base.join(file);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("while reading {}", file.display()))
        .map_err(|e| {
            refuse(
                path,
                "http.token_file",
                format!("cannot be read ({e:#}); create it or fix the path"),
            )
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(refuse(
            path,
            "http.token_file",
            format!("{} is empty; write the token into it", file.display()),
        ));
    }
    Ok(token.to_string())
}

/// A TOML or shape error, with the line, the dotted key and what to do.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim_end();
    let Some(span) = e.span() else {
        return anyhow!("{}: {message}; {EXAMPLE}", path.display());
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let line_no = text[..line_start].matches('\n').count() + 1;
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim())
        .unwrap_or("");
    let key = match line.find('=') {
        _ if line.trim_start().starts_with('[') => None,
        Some(eq) if eq < start - line_start => Some(line[..eq].trim()),
        _ => text
            .get(span.clone())
            .map(str::trim)
            .filter(|k| !k.is_empty()),
    };
    let key = match (table, key) {
        (_, None) => String::new(),
        ("", Some(k)) => format!("`{k}`: "),
        (t, Some(k)) => format!("`{t}.{k}`: "),
    };
    let fix = if let Some(field) = message.strip_prefix("unknown field `") {
        let field = field.split('`').next().unwrap_or("");
        if !table.is_empty() && ["node", "divergence_dir"].contains(&field) {
            format!("; `{field}` belongs at the top level: move it above the first [section]")
        } else {
            "; remove it or correct its spelling".to_string()
        }
    } else {
        format!("; {EXAMPLE}")
    };
    anyhow!(
        "{}:{line_no}: {key}{}{fix}",
        path.display(),
        message.replace('\n', " ")
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Option<String>,
    divergence_dir: Option<String>,
    nodes: Option<RawNodes>,
    nms: Option<RawNms>,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    messages: RawMessages,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMessages {
    sinks: Option<Vec<String>>,
    stream: Option<String>,
    rules: Option<String>,
}

/// `[nodes.NAME]` tables, in file order.
struct RawNodes(Vec<(String, RawNode)>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    database: Option<String>,
    http: Option<String>,
    journal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNms {
    roles: Option<Vec<String>>,
    initial_primary: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    promote: Option<String>,
    fence: Option<String>,
    demote: Option<String>,
    timeout: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    automatic: Option<bool>,
    timeout: Option<Dur>,
    probe_interval: Option<Dur>,
    connect_timeout: Option<Dur>,
    witness: Option<WitnessText>,
    sequence_margin: Option<i64>,
    auto_rejoin: Option<bool>,
    drain_timeout: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSync {
    mode: Option<SyncMode>,
    on_standby_loss: Option<RawStandbyLoss>,
    fallback_after: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawStandbyLoss {
    Wait,
    Async,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    token: Option<String>,
    token_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    max_bytes: Option<Bytes>,
    ack: Option<RawAck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAck {
    Journal,
    Applied,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct WitnessText(Witness);

impl TryFrom<String> for WitnessText {
    type Error = String;

    fn try_from(s: String) -> Result<WitnessText, String> {
        parse_witness(&s).map(WitnessText)
    }
}

/// A duration string, parsed where it is read so errors point at it.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"10s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size: an integer (bytes) or a string with a unit.
struct Bytes(u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"1GiB\", \"512MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n).map(Bytes).map_err(|_| {
                    E::custom(format!("{n} is negative: give a size such as \"1GiB\""))
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bytes, E> {
                parse_bytes(s).map(Bytes).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawNodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawNodes, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNodes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of nodes, [nodes.a] and [nodes.b]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNodes, A::Error> {
                let mut nodes = Vec::new();
                while let Some(entry) = map.next_entry::<String, RawNode>()? {
                    nodes.push(entry);
                }
                Ok(RawNodes(nodes))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/understudy/understudy.toml";
    const BASE: &str = r#"
node = "a"
[nodes.a]
database = "host=127.0.0.1 port=5432 dbname=nms user=understudy"
http = "127.0.0.1:7480"
[nodes.b]
database = "postgresql://understudy@127.0.0.1:5433/nms"
http = "127.0.0.1:7481"
[nms]
roles = ["nms_app"]
"#;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new(PATH))
    }

    /// The base config with `extra` appended (sections that BASE lacks).
    fn with(extra: &str) -> anyhow::Result<Config> {
        parse(&format!("{BASE}{extra}"))
    }

    /// The error for `text`, asserting it names the file and every one of `needles`.
    fn refused(text: &str, needles: &[&str]) {
        let e = match parse(text) {
            Ok(c) => panic!("accepted, expected a refusal naming {needles:?}: {c:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.starts_with(PATH),
            "error does not start with the path: {e}"
        );
        for n in needles {
            assert!(e.contains(n), "error lacks {n:?}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.path, Path::new(PATH));
        assert_eq!(c.this, "a");
        assert_eq!(c.nodes.len(), 2);
        let (a, b) = (&c.nodes[0], &c.nodes[1]);
        assert_eq!((a.name.as_str(), b.name.as_str()), ("a", "b"));
        assert_eq!((a.database.port(), a.database.dbname()), (5432, "nms"));
        assert_eq!((b.database.port(), b.database.user()), (5433, "understudy"));
        assert_eq!(a.http, "127.0.0.1:7480".parse().unwrap());
        assert_eq!((a.journal.as_ref(), b.journal.as_ref()), (None, None));
        assert_eq!(c.nms.roles, ["nms_app"]);
        assert_eq!(c.nms.initial_primary, None);
        let h = &c.hooks;
        assert_eq!((&h.promote, &h.fence, &h.demote), (&None, &None, &None));
        assert_eq!(h.timeout, Duration::from_secs(60));
        let f = &c.failover;
        assert!(!f.automatic);
        assert_eq!(f.timeout, Duration::from_secs(10));
        assert_eq!(f.probe_interval, Duration::from_secs(1));
        assert_eq!(f.connect_timeout, Duration::from_secs(2));
        assert_eq!(f.witness, None);
        assert_eq!(f.sequence_margin, 1000);
        assert!(f.auto_rejoin);
        assert_eq!(f.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.sync.mode, SyncMode::Async);
        assert_eq!(c.sync.on_standby_loss, StandbyLoss::Wait);
        assert_eq!(c.http.token, None);
        assert_eq!(c.journal.max_bytes, 1 << 30);
        assert_eq!(c.journal.ack, Ack::Journal);
        assert_eq!(c.divergence_dir, Path::new("/etc/understudy/divergence"));
    }

    #[test]
    fn default_http_address() {
        let text = BASE.replace("http = \"127.0.0.1:7480\"\n", "");
        let c = parse(&text).unwrap();
        assert_eq!(c.nodes[0].http, DEFAULT_HTTP.parse().unwrap());
    }

    #[test]
    fn every_field() {
        let text = r#"
node = "beta"
divergence_dir = "/srv/div"
[nodes.beta]
database = "host=db2 port=5433 dbname=nms user=u"
http = "10.0.0.2:9000"
journal = "/var/lib/understudy/journal"
[nodes.alpha]
database = "host=db1 port=5432 dbname=nms user=u"
http = "10.0.0.1:9000"
journal = "j"
[nms]
roles = ["nms_app", "nms_report"]
initial_primary = "alpha"
[hooks]
promote = "systemctl start nms"
fence = "ipmitool power off"
demote = "systemctl stop nms"
timeout = "2m"
[failover]
automatic = true
timeout = "30s"
probe_interval = "500ms"
connect_timeout = "3s"
witness = "cmd:ping -c1 gw"
sequence_margin = 50
auto_rejoin = false
drain_timeout = "1h"
[sync]
mode = "sync"
on_standby_loss = "async"
fallback_after = "20s"
[http]
token = "s3cret"
[journal]
max_bytes = 4096
ack = "applied"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.this, "beta");
        // File order, not alphabetical.
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["beta", "alpha"]);
        assert_eq!(c.this_node().name, "beta");
        assert_eq!(c.peer().name, "alpha");
        assert_eq!(c.peer().database.host(), "db1");
        assert_eq!(c.peer().http, "10.0.0.1:9000".parse().unwrap());
        assert_eq!(
            c.this_node().journal.as_deref(),
            Some(Path::new("/var/lib/understudy/journal"))
        );
        assert_eq!(
            c.peer().journal.as_deref(),
            Some(Path::new("/etc/understudy/j"))
        );
        assert_eq!(c.nms.roles, ["nms_app", "nms_report"]);
        assert_eq!(c.nms.initial_primary.as_deref(), Some("alpha"));
        assert_eq!(c.hooks.promote.as_deref(), Some("systemctl start nms"));
        assert_eq!(c.hooks.fence.as_deref(), Some("ipmitool power off"));
        assert_eq!(c.hooks.demote.as_deref(), Some("systemctl stop nms"));
        assert_eq!(c.hooks.timeout, Duration::from_secs(120));
        let f = &c.failover;
        assert!(f.automatic);
        assert_eq!(f.timeout, Duration::from_secs(30));
        assert_eq!(f.probe_interval, Duration::from_millis(500));
        assert_eq!(f.connect_timeout, Duration::from_secs(3));
        assert_eq!(f.witness, Some(Witness::Command("ping -c1 gw".into())));
        assert_eq!(f.sequence_margin, 50);
        assert!(!f.auto_rejoin);
        assert_eq!(f.drain_timeout, Duration::from_secs(3600));
        assert_eq!(c.sync.mode, SyncMode::Sync);
        let after = Duration::from_secs(20);
        assert_eq!(c.sync.on_standby_loss, StandbyLoss::Async { after });
        assert_eq!(c.http.token.as_deref(), Some("s3cret"));
        assert_eq!(c.journal.max_bytes, 4096);
        assert_eq!(c.journal.ack, Ack::Applied);
        assert_eq!(c.divergence_dir, Path::new("/srv/div"));
    }

    #[test]
    fn fallback_after_defaults_with_async_loss() {
        let c = with("[sync]\nmode = \"sync\"\non_standby_loss = \"async\"\n").unwrap();
        let after = Duration::from_secs(10);
        assert_eq!(c.sync.on_standby_loss, StandbyLoss::Async { after });
        let c = with("[sync]\non_standby_loss = \"wait\"\n").unwrap();
        assert_eq!(c.sync.on_standby_loss, StandbyLoss::Wait);
    }

    #[test]
    fn tcp_witness() {
        let c = with("[failover]\nautomatic = true\nwitness = \"tcp:192.168.1.1:22\"\n").unwrap();
        assert_eq!(
            c.failover.witness,
            Some(Witness::Tcp("192.168.1.1:22".into()))
        );
        assert_eq!(
            parse_witness("tcp:[::1]:22"),
            Ok(Witness::Tcp("[::1]:22".into()))
        );
        assert_eq!(
            parse_witness("tcp:gw.lan:7"),
            Ok(Witness::Tcp("gw.lan:7".into()))
        );
        for bad in [
            "tcp:",
            "tcp:host",
            "tcp::22",
            "tcp:h:0",
            "tcp:h:99999",
            "tcp:::1:22",
            "cmd:",
            "cmd:  ",
            "ping gw",
            "",
        ] {
            assert!(parse_witness(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            (" 0s ", Duration::ZERO),
            ("3 s", Duration::from_secs(3)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10sec",
            "1d",
            "10S",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("such as \"500ms\""), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("1GiB", 1 << 30),
            ("512MiB", 512 << 20),
            ("64KiB", 64 << 10),
            ("100B", 100),
            ("1073741824", 1 << 30),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text:?}");
        }
        for bad in ["", "GiB", "1GB", "1G", "1.5GiB", "-1", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
        let c = with("[journal]\nmax_bytes = \"2GiB\"\n").unwrap();
        assert_eq!(c.journal.max_bytes, 2 << 30);
    }

    #[test]
    fn node_names() {
        for good in ["a", "node_2", "n234567890123456789012345678901"] {
            assert!(valid_node_name(good), "{good}");
        }
        for bad in [
            "",
            "A",
            "2a",
            "_a",
            "a-b",
            "a.b",
            "é",
            "n2345678901234567890123456789012",
        ] {
            assert!(!valid_node_name(bad), "{bad}");
        }
        refused(
            &BASE.replace("nodes.b]", "nodes.Bee]"),
            &["`nodes.Bee`", "lowercase"],
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/token"), "  tok\n").unwrap();
        let text = format!(
            "divergence_dir = \"div\"\n{}[http]\ntoken_file = \"secrets/token\"\n",
            BASE.replace(
                "http = \"127.0.0.1:7481\"",
                "http = \"127.0.0.1:7481\"\njournal = \"jb\""
            )
        );
        let c = Config::parse(&text, &dir.path().join("u.toml")).unwrap();
        assert_eq!(c.http.token.as_deref(), Some("tok"));
        assert_eq!(c.nodes[1].journal, Some(dir.path().join("jb")));
        assert_eq!(c.divergence_dir, dir.path().join("div"));
    }

    #[test]
    fn debug_hides_token_and_password() {
        let text = BASE.replace("user=understudy\"", "user=understudy password=hunter2\"");
        let c = parse(&format!("{text}[http]\ntoken = \"s3cret\"\n")).unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn node_lookup_and_override() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.node("b").unwrap().database.port(), 5433);
        assert!(c.node("c").is_none());
        assert_eq!(
            (c.this_node().name.as_str(), c.peer().name.as_str()),
            ("a", "b")
        );
        let b = c.clone().with_node("b").unwrap();
        assert_eq!(
            (b.this_node().name.as_str(), b.peer().name.as_str()),
            ("b", "a")
        );
        let e = c.with_node("c").unwrap_err().to_string();
        assert!(
            e.contains("--node c") && e.contains(PATH) && e.contains("a, b"),
            "{e}"
        );
    }

    #[test]
    fn names_in_postgres() {
        assert_eq!(slot_for("a"), "understudy_a");
        assert_eq!(application_name("node_2"), "understudy_node_2");
    }

    #[test]
    fn example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/understudy.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!((c.this.as_str(), c.peer().name.as_str()), ("a", "b"));
        assert_eq!(c.peer().database.port(), 5433);
        assert!(c.hooks.fence.is_some() && c.failover.witness.is_some());
        assert!(c.http.token.is_some());
        assert_eq!(c.divergence_dir, path.parent().unwrap().join("divergence"));
    }

    #[test]
    fn load_names_a_missing_file() {
        let e = Config::load(Path::new("/nonexistent/u.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/u.toml") && e.contains("--config"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys() {
        refused(
            &format!("nod = \"a\"\n{BASE}"),
            &["`nod`", "unknown field", "remove it"],
        );
        refused(
            &format!("{BASE}[failover]\ntimout = \"1s\"\n"),
            &["`failover.timout`", "unknown field", ":12:"],
        );
        refused(
            &BASE.replace("http = \"127.0.0.1:7481\"", "htp = \"x\""),
            &["`nodes.b.htp`", "unknown field"],
        );
        refused(
            &format!("{BASE}[failovr]\n"),
            &["`failovr`", "unknown field"],
        );
        refused(
            &format!("{BASE}[journal]\ndivergence_dir = \"d\"\n"),
            &["`journal.divergence_dir`", "above the first [section]"],
        );
        refused(
            &format!("{BASE}[http]\ntoken = \"x\"\nextra = 1\n"),
            &["`http.extra`"],
        );
    }

    #[test]
    fn bad_toml_and_types() {
        refused(
            &format!("{BASE}[hooks]\ntimeout = \"60\"\n"),
            &["`hooks.timeout`", "such as \"500ms\""],
        );
        refused(
            &format!("{BASE}[hooks]\ntimeout = 60\n"),
            &["`hooks.timeout`", "duration string"],
        );
        refused(
            &format!("{BASE}[failover]\nautomatic = \"yes\"\n"),
            &["`failover.automatic`", "boolean"],
        );
        refused(
            &format!("{BASE}[failover]\nsequence_margin = \"1\"\n"),
            &["`failover.sequence_margin`", "expected i64"],
        );
        refused(
            &format!("{BASE}[nms\n"),
            &[":11:", "examples/understudy.toml"],
        );
        refused(&format!("node = \"a\"\n{BASE}"), &["duplicate"]);
        refused(
            &BASE.replace("[\"nms_app\"]", "\"nms_app\""),
            &["`nms.roles`", "sequence"],
        );
    }

    #[test]
    fn node_refusals() {
        let only_a = &BASE[..BASE.find("[nodes.b]").unwrap()];
        refused(
            &format!("{only_a}[nms]\nroles = [\"r\"]\n"),
            &["`nodes`", "has 1 node(s) [a]", "exactly two"],
        );
        refused(
            &format!("{BASE}[nodes.c]\ndatabase = \"port=5434\"\nhttp = \"127.0.0.1:1\"\n"),
            &["`nodes`", "3 node(s)"],
        );
        refused(
            "node = \"a\"\n[nms]\nroles = [\"r\"]\n",
            &["`nodes`", "0 node(s)"],
        );
        refused(
            &BASE.replace("node = \"a\"", ""),
            &["`node` is missing", "node = \"a\""],
        );
        refused(
            &BASE.replace("node = \"a\"", "node = \"c\""),
            &["`node`", "'c'", "a or b"],
        );
        refused(
            &BASE.replace(
                "database = \"postgresql://understudy@127.0.0.1:5433/nms\"",
                "",
            ),
            &["`nodes.b.database` is missing", "postgresql://"],
        );
        refused(
            &BASE.replace("127.0.0.1:7481", "localhost:7481"),
            &["`nodes.b.http`", "IP:PORT"],
        );
        refused(
            &BASE.replace("127.0.0.1:7481", "127.0.0.1:7480"),
            &["`nodes.b.http`", "same as nodes.a.http"],
        );
        let no_http = BASE
            .replace("http = \"127.0.0.1:7480\"\n", "")
            .replace("http = \"127.0.0.1:7481\"\n", "");
        refused(&no_http, &["`nodes.b.http`", "default is 127.0.0.1:7480"]);
        refused(
            &BASE.replace("5433", "5432"),
            &[
                "`nodes.b.database`",
                "same database as nodes.a",
                "port=5432 dbname=nms",
            ],
        );
        refused(
            &BASE.replace("@127.0.0.1:5433", "@localhost:5432"),
            &["`nodes.b.database`", "same database"],
        );
        refused(
            &BASE.replace("/nms\"", "/nms?application_name=x\""),
            &["`nodes.b.database`", "application_name"],
        );
        refused(
            &BASE.replace(
                "http = \"127.0.0.1:7481\"",
                "http = \"127.0.0.1:7481\"\njournal = \"\"",
            ),
            &["`nodes.b.journal` is empty"],
        );
    }

    #[test]
    fn bad_dsn_error_has_no_password() {
        let text = BASE.replace("user=understudy\"", "password=hunter2 bogus=1\"");
        refused(
            &text,
            &[
                "`nodes.a.database` is not usable",
                "invalid connection string",
            ],
        );
        let e = format!("{:#}", parse(&text).unwrap_err());
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn nms_refusals() {
        let base = BASE.replace("[nms]\nroles = [\"nms_app\"]\n", "");
        refused(&base, &["`nms` is missing", "roles = "]);
        refused(
            &format!("{base}[nms]\n"),
            &["`nms.roles` is missing or empty"],
        );
        refused(
            &format!("{base}[nms]\nroles = []\n"),
            &["`nms.roles` is missing or empty"],
        );
        refused(
            &format!("{base}[nms]\nroles = [\"a\", \" \"]\n"),
            &["`nms.roles`", "empty role name"],
        );
        refused(
            &format!("{base}[nms]\nroles = [\"r\"]\ninitial_primary = \"c\"\n"),
            &["`nms.initial_primary`", "'c'", "a or b"],
        );
    }

    #[test]
    fn hooks_refusals() {
        for key in ["promote", "fence", "demote"] {
            refused(
                &format!("{BASE}[hooks]\n{key} = \" \"\n"),
                &[&format!("`hooks.{key}` is empty"), "shell command"],
            );
        }
        refused(
            &format!("{BASE}[hooks]\ntimeout = \"0s\"\n"),
            &["`hooks.timeout` is zero", "positive"],
        );
    }

    #[test]
    fn failover_refusals() {
        for key in [
            "timeout",
            "probe_interval",
            "connect_timeout",
            "drain_timeout",
        ] {
            refused(
                &format!("{BASE}[failover]\n{key} = \"0ms\"\n"),
                &[&format!("`failover.{key}` is zero")],
            );
        }
        refused(
            &format!("{BASE}[failover]\ntimeout = \"1s\"\n"),
            &[
                "`failover.probe_interval`",
                "not less than failover.timeout",
            ],
        );
        refused(
            &format!("{BASE}[failover]\nprobe_interval = \"10s\"\n"),
            &["`failover.probe_interval`"],
        );
        refused(
            &format!("{BASE}[failover]\nautomatic = true\n"),
            &["`failover.witness` is missing", "automatic = false"],
        );
        refused(
            &format!("{BASE}[failover]\nwitness = \"ping gw\"\n"),
            &["`failover.witness`", "tcp:HOST:PORT"],
        );
        refused(
            &format!("{BASE}[failover]\nsequence_margin = 0\n"),
            &["`failover.sequence_margin` is 0", "positive"],
        );
        refused(
            &format!("{BASE}[failover]\nsequence_margin = -5\n"),
            &["`failover.sequence_margin` is -5"],
        );
    }

    #[test]
    fn sync_refusals() {
        refused(
            &format!("{BASE}[sync]\nmode = \"quorum\"\n"),
            &["`sync.mode`", "`async`", "`sync`"],
        );
        refused(
            &format!("{BASE}[sync]\non_standby_loss = \"drop\"\n"),
            &["`sync.on_standby_loss`", "`wait`"],
        );
        refused(
            &format!("{BASE}[sync]\nfallback_after = \"5s\"\n"),
            &["`sync.fallback_after`", "on_standby_loss = \"async\""],
        );
        refused(
            &format!("{BASE}[sync]\non_standby_loss = \"async\"\nfallback_after = \"5\"\n"),
            &["`sync.fallback_after`", "not a duration"],
        );
    }

    #[test]
    fn http_refusals() {
        refused(
            &format!("{BASE}[http]\ntoken = \"t\"\ntoken_file = \"f\"\n"),
            &["`http.token`", "token_file are both given"],
        );
        refused(
            &format!("{BASE}[http]\ntoken = \"  \"\n"),
            &["`http.token` is empty"],
        );
        refused(
            &format!("{BASE}[http]\ntoken_file = \"/nonexistent/token\"\n"),
            &["`http.token_file` cannot be read", "/nonexistent/token"],
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "\n \n").unwrap();
        let text = format!(
            "{BASE}[http]\ntoken_file = {:?}\n",
            file.path().display().to_string()
        );
        refused(&text, &["`http.token_file`", "is empty"]);
    }

    #[test]
    fn journal_refusals() {
        refused(
            &format!("{BASE}[journal]\nmax_bytes = 0\n"),
            &["`journal.max_bytes` is zero"],
        );
        refused(
            &format!("{BASE}[journal]\nmax_bytes = \"1GB\"\n"),
            &["`journal.max_bytes`", "KiB, MiB or GiB"],
        );
        refused(
            &format!("{BASE}[journal]\nmax_bytes = -1\n"),
            &["`journal.max_bytes`", "negative"],
        );
        refused(
            &format!("{BASE}[journal]\nmax_bytes = 1.5\n"),
            &["`journal.max_bytes`", "a size such as"],
        );
        refused(
            &format!("{BASE}[journal]\nack = \"flush\"\n"),
            &["`journal.ack`", "`journal`", "`applied`"],
        );
        refused(
            &format!("divergence_dir = \"\"\n{BASE}"),
            &["`divergence_dir` is empty"],
        );
    }
}
