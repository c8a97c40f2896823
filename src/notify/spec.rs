//! Sink configuration and its command-line form, `KIND:[OPTIONS:]TARGET`.
//!
//! ```text
//! webhook:http://127.0.0.1:8080/hook
//! webhook:batch=100,timeout=10s:http://nms.local:8080/hook
//! exec:kinds=alarm.*|ne.*,interval=1s:zabbix_server -R config_cache_reload
//! notify:nms_changes
//! notify:entities=alarm,name=alarms:nms_alarms
//! ```
//!
//! OPTIONS is a comma-separated list of `key=value`; it is there when the text after `KIND:`
//! starts with a lower-case `key=` before any `:` (a target that itself looks like that, such as
//! a command starting with `a=b`, is written after an empty option list: `exec::a=b cmd`).
//! Lists inside a value are separated by `|`, and a repeated key adds to its list.
//!
//! | option | sinks | meaning (default) |
//! | --- | --- | --- |
//! | `name=NAME` | all | the cursor's name in `<journal>/cursors/` (kind and a hash of the target) |
//! | `from=now\|oldest\|LSN` | all | where a sink without a cursor starts (`now`: the applied position) |
//! | `kinds=GLOB\|…` | all | only messages whose kind matches a glob (all) |
//! | `entities=NAME\|…` | all | only messages of these entities (all) |
//! | `batch=N` | all | at most N messages per delivery (webhook 500, notify 100, exec 10000) |
//! | `timeout=DURATION` | webhook, exec | per request / the command is killed after (30s) |
//! | `interval=DURATION` | exec | at most one run per interval (1s) |
//!
//! Durations are a number and a unit: `250ms`, `1s`, `2m`, `1h`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::filter::Filter;
use super::webhook::HttpUrl;
use crate::lsn::Lsn;

/// What a sink does; parsed from `KIND:[OPTIONS:]TARGET` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// POST batches of messages as a JSON array.
    Webhook { url: HttpUrl, options: SinkOptions },
    /// Run `sh -c command` with the messages as JSON lines on its stdin, debounced.
    Exec {
        command: String,
        interval: Duration,
        options: SinkOptions,
    },
    /// `NOTIFY channel` on the standby database, one notification per message.
    Notify {
        channel: String,
        options: SinkOptions,
    },
}

/// What every sink has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOptions {
    /// Names the cursor file; unique among the sinks of one journal.
    pub name: String,
    pub filter: Filter,
    /// Where a sink without a cursor starts.
    pub from: StartFrom,
    /// At most this many messages per delivery.
    pub batch: usize,
    /// A request (webhook) or a run of the command (exec) that takes longer fails.
    pub timeout: Duration,
}

/// Where a sink that has no cursor yet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// At the standby's applied position: only what is applied from now on.
    #[default]
    Now,
    /// At the oldest transaction the journal holds.
    Oldest,
    /// At the transactions committing at or after this LSN.
    Lsn(Lsn),
}

impl SinkConfig {
    pub fn options(&self) -> &SinkOptions {
        match self {
            SinkConfig::Webhook { options, .. }
            | SinkConfig::Exec { options, .. }
            | SinkConfig::Notify { options, .. } => options,
        }
    }

    /// `webhook`, `exec` or `notify`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Exec { .. } => "exec",
            SinkConfig::Notify { .. } => "notify",
        }
    }
}

impl fmt::Display for SinkConfig {
    /// The kind, name and target, for logs (a webhook URL's query string is left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.options().name;
        match self {
            SinkConfig::Webhook { url, .. } => write!(f, "webhook {name} ({})", url.redacted()),
            SinkConfig::Exec { command, .. } => write!(f, "exec {name} ({command})"),
            SinkConfig::Notify { channel, .. } => write!(f, "notify {name} (channel {channel})"),
        }
    }
}

/// A sink spec could not be understood; the text says what is wrong and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink '{spec}': {reason}")]
pub struct SinkSpecError {
    spec: String,
    reason: String,
}

const USAGE: &str = "expected webhook:[OPTIONS:]http://HOST:PORT/PATH, \
                     exec:[OPTIONS:]COMMAND or notify:[OPTIONS:]CHANNEL";

impl FromStr for SinkConfig {
    type Err = SinkSpecError;

    fn from_str(spec: &str) -> Result<SinkConfig, SinkSpecError> {
        let err = |reason: String| SinkSpecError {
            spec: redact_spec(spec),
            reason,
        };
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| err(format!("no sink kind; {USAGE}")))?;
        let (opts, target) = split_options(rest);
        let target = target.trim();
        if target.is_empty() {
            return Err(err(format!("nothing after the options; {USAGE}")));
        }
        let mut o = RawOptions::parse(opts).map_err(err)?;
        let (default_batch, allowed): (usize, &[&str]) = match kind {
            "webhook" => (500, &["timeout"]),
            "exec" => (10_000, &["timeout", "interval"]),
            "notify" => (100, &[]),
            other => return Err(err(format!("unknown sink kind '{other}'; {USAGE}"))),
        };
        o.check_keys(allowed).map_err(err)?;
        let options = SinkOptions {
            name: match o.take_one("name").map_err(err)? {
                Some(n) => valid_name(&n).map_err(err)?,
                None => format!("{kind}-{:016x}", fnv1a(target.as_bytes())),
            },
            filter: Filter {
                kinds: o.take_list("kinds"),
                entities: o.take_list("entities"),
            },
            from: match o.take_one("from").map_err(err)?.as_deref() {
                None | Some("now") => StartFrom::Now,
                Some("oldest") => StartFrom::Oldest,
                Some(lsn) => StartFrom::Lsn(
                    lsn.parse()
                        .map_err(|e| err(format!("from: {e}; or use from=now or from=oldest")))?,
                ),
            },
            batch: match o.take_one("batch").map_err(err)? {
                None => default_batch,
                Some(n) => match n.parse::<usize>() {
                    Ok(n) if (1..=100_000).contains(&n) => n,
                    _ => return Err(err(format!("batch={n}: expected 1 to 100000 messages"))),
                },
            },
            timeout: o
                .take_duration("timeout")
                .map_err(err)?
                .unwrap_or(Duration::from_secs(30)),
        };
        if options.filter.kinds.iter().any(|k| k.is_empty())
            || options.filter.entities.iter().any(|e| e.is_empty())
        {
            return Err(err(
                "an empty kind or entity in a filter matches nothing".into()
            ));
        }
        Ok(match kind {
            "webhook" => SinkConfig::Webhook {
                url: target.parse().map_err(err)?,
                options,
            },
            "exec" => SinkConfig::Exec {
                command: target.to_string(),
                interval: o
                    .take_duration("interval")
                    .map_err(err)?
                    .unwrap_or(Duration::from_secs(1)),
                options,
            },
            _ => {
                if target.len() > 63 {
                    return Err(err(format!(
                        "channel '{target}' is longer than PostgreSQL's 63-byte identifiers"
                    )));
                }
                SinkConfig::Notify {
                    channel: target.to_string(),
                    options,
                }
            }
        })
    }
}

/// A spec for error messages: a webhook URL's query string may hold a secret.
fn redact_spec(spec: &str) -> String {
    match spec.split_once('?') {
        Some((head, _)) if spec.starts_with("webhook:") => format!("{head}?…"),
        _ => spec.to_string(),
    }
}

/// (options, target): the options are there when the text starts with `key=` before any ':'.
fn split_options(rest: &str) -> (&str, &str) {
    if let Some(target) = rest.strip_prefix(':') {
        return ("", target);
    }
    let Some((head, target)) = rest.split_once(':') else {
        return ("", rest);
    };
    let key_len = head
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
        .count();
    if key_len > 0 && head.as_bytes().get(key_len) == Some(&b'=') {
        (head, target)
    } else {
        ("", rest)
    }
}

/// `key=value` pairs, each key's values in order.
struct RawOptions(Vec<(String, Vec<String>)>);

impl RawOptions {
    fn parse(text: &str) -> Result<RawOptions, String> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("option '{item}' is not key=value"))?;
            match out.iter_mut().find(|(key, _)| key == k) {
                Some((_, vs)) => vs.push(v.to_string()),
                None => out.push((k.to_string(), vec![v.to_string()])),
            }
        }
        Ok(RawOptions(out))
    }

    fn check_keys(&self, kind_specific: &[&str]) -> Result<(), String> {
        const COMMON: [&str; 5] = ["name", "from", "kinds", "entities", "batch"];
        for (k, _) in &self.0 {
            if !COMMON.contains(&k.as_str()) && !kind_specific.contains(&k.as_str()) {
                let mut known: Vec<&str> = COMMON.to_vec();
                known.extend_from_slice(kind_specific);
                return Err(format!(
                    "unknown option '{k}' for this sink; known: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn take(&mut self, key: &str) -> Vec<String> {
        match self.0.iter().position(|(k, _)| k == key) {
            Some(i) => self.0.remove(i).1,
            None => Vec::new(),
        }
    }

    fn take_one(&mut self, key: &str) -> Result<Option<String>, String> {
        let mut values = self.take(key);
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(format!("option '{key}' is given more than once")),
        }
    }

    fn take_list(&mut self, key: &str) -> Vec<String> {
        self.take(key)
            .iter()
            .flat_map(|v| v.split('|'))
            .map(str::to_string)
            .collect()
    }

    fn take_duration(&mut self, key: &str) -> Result<Option<Duration>, String> {
        self.take_one(key)?
            .map(|v| parse_duration(&v).map_err(|e| format!("{key}={v}: {e}")))
            .transpose()
    }
}

/// `250ms`, `1s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a number and a unit (ms, s, m, h), such as 500ms or 2s";
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| expected.to_string())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| expected.to_string())?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(expected.to_string()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| expected.to_string())
}

fn valid_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "name '{name}': use letters, digits, '.', '_' and '-' (it names a file), not \
             starting with '.'"
        ))
    }
}

/// FNV-1a, 64 bits: a stable short hash for default sink names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> SinkConfig {
        spec.parse()
            .unwrap_or_else(|e| panic!("{spec} should parse: {e}"))
    }

    #[test]
    fn parses_the_documented_specs() {
        let SinkConfig::Webhook { url, options } = parse("webhook:http://127.0.0.1:8080/hook")
        else {
            panic!("not a webhook")
        };
        assert_eq!(url.to_string(), "http://127.0.0.1:8080/hook");
        assert_eq!(options.batch, 500);
        assert!(options.filter.is_all());
        assert_eq!(options.from, StartFrom::Now);
        assert!(options.name.starts_with("webhook-"), "{}", options.name);

        let SinkConfig::Exec {
            command,
            interval,
            options,
        } = parse("exec:kinds=alarm.*|ne.*,interval=1s:zabbix_server -R config_cache_reload")
        else {
            panic!("not exec")
        };
        assert_eq!(command, "zabbix_server -R config_cache_reload");
        assert_eq!(interval, Duration::from_secs(1));
        assert_eq!(options.filter.kinds, ["alarm.*", "ne.*"]);

        let SinkConfig::Notify { channel, options } =
            parse("notify:entities=alarm,entities=ne,name=alarms,from=0/16B3748:nms_alarms")
        else {
            panic!("not notify")
        };
        assert_eq!(channel, "nms_alarms");
        assert_eq!(options.name, "alarms");
        assert_eq!(options.filter.entities, ["alarm", "ne"]);
        assert_eq!(options.from, StartFrom::Lsn("0/16B3748".parse().unwrap()));

        let SinkConfig::Exec { command, .. } = parse("exec::a=b cmd") else {
            panic!("not exec")
        };
        assert_eq!(command, "a=b cmd");
        let SinkConfig::Exec { command, .. } = parse("exec:echo a:b") else {
            panic!("not exec")
        };
        assert_eq!(command, "echo a:b");
    }

    #[test]
    fn default_names_are_stable_and_depend_on_the_target_only() {
        let a = parse("webhook:http://h:1/x");
        let b = parse("webhook:batch=10:http://h:1/x");
        let c = parse("webhook:http://h:1/y");
        assert_eq!(a.options().name, b.options().name);
        assert_ne!(a.options().name, c.options().name);
        assert_eq!(a.options().name, "webhook-3ab95eafd9bf87d7");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("webhook", "no sink kind"),
            ("kafka:topic", "unknown sink kind 'kafka'"),
            ("notify:", "nothing after the options"),
            ("webhook:https://h/x", "only http://"),
            ("webhook:ftp://h/x", "http://"),
            ("exec:interval=soon:cmd", "interval=soon"),
            ("exec:kinds=:cmd", "empty kind"),
            ("notify:retries=3:ch", "unknown option 'retries'"),
            ("notify:interval=1s:ch", "unknown option 'interval'"),
            ("notify:name=../x:ch", "name '../x'"),
            ("notify:name=a,name=b:ch", "more than once"),
            ("notify:batch=0:ch", "batch=0"),
            ("notify:from=yesterday:ch", "from:"),
            ("webhook:http://h:99999/x", "port"),
        ] {
            let e = spec.parse::<SinkConfig>().expect_err(spec).to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let long = format!("notify:{}", "c".repeat(64));
        assert!(long.parse::<SinkConfig>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
