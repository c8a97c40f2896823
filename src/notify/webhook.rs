//! The webhook sink's HTTP client: one `POST` of a JSON array per batch, over plain HTTP/1.1.
//!
//! A small client of our own on a tokio `TcpStream` rather than a general HTTP library: the
//! webhook needs one request shape, and the receiver is expected on the same host or network
//! (an NMS adapter). Each request opens a connection, sends
//!
//! ```text
//! POST /path HTTP/1.1
//! Host: host:port
//! Content-Type: application/json
//! Content-Length: N
//! Idempotency-Key: <first id>..<last id>
//! Connection: close
//! ```
//!
//! and reads the status line (the rest of the answer is read for error reports only, up to a
//! limit). Any 2xx status is success; everything else, and any I/O failure or timeout, is a
//! failure the sink retries with backoff. Only `http://` URLs: for HTTPS, put a local
//! TLS-terminating proxy in front of the receiver.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::messages::to_json;
use crate::translate::Mutation;

/// An `http://host[:port]/path[?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    host: String,
    port: u16,
    /// Path and query, starting with '/'.
    target: String,
}

impl HttpUrl {
    /// The URL without its query string (which may hold a token), for logs.
    pub fn redacted(&self) -> String {
        let path = self.target.split('?').next().unwrap_or("/");
        format!("http://{}:{}{path}", self.host, self.port)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.target)
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<HttpUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                "only http:// webhook URLs are supported; for HTTPS put a local TLS-terminating \
                 proxy in front of the receiver"
                    .to_string()
            } else {
                "a webhook URL starts with http://".to_string()
            }
        })?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err("user:password@ in a webhook URL is not supported".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6
                    .split_once(']')
                    .ok_or_else(|| "an IPv6 host needs its closing ']'".to_string())?;
                (host, rest.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port '{p}' is not a number from 1 to 65535"))?,
        };
        if host.is_empty() || target.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
            return Err("the URL has no host, or spaces or control characters".into());
        }
        Ok(HttpUrl {
            host: host.into(),
            port,
            target,
        })
    }
}

/// Why one POST failed; the sink retries it.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("could not reach {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: String,
        body: String,
    },
    #[error("{url} sent an answer that is not HTTP: {line}")]
    Malformed { url: String, line: String },
}

/// The JSON array of a batch, and its idempotency key (first and last message ids).
pub fn body_and_key(messages: &[Mutation]) -> (String, String) {
    let mut body = String::from("[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&to_json(m));
    }
    body.push(']');
    let key = match (messages.first(), messages.last()) {
        (Some(a), Some(b)) => format!("{}..{}", a.id(), b.id()),
        _ => String::new(),
    };
    (body, key)
}

/// POSTs `body` to `url`; success is a 2xx status.
pub async fn post(
    url: &HttpUrl,
    body: &str,
    idempotency_key: &str,
    timeout: Duration,
) -> Result<(), PostError> {
    let shown = url.redacted();
    match tokio::time::timeout(timeout, post_inner(url, body, idempotency_key)).await {
        Ok(result) => result.map_err(|e| match e {
            Failure::Io(source) => PostError::Io { url: shown, source },
            Failure::Status(status, body) => PostError::Status {
                url: shown,
                status,
                body,
            },
            Failure::Malformed(line) => PostError::Malformed { url: shown, line },
        }),
        Err(_) => Err(PostError::Timeout {
            url: shown,
            timeout,
        }),
    }
}

enum Failure {
    Io(std::io::Error),
    Status(String, String),
    Malformed(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// How much of an answer is kept for an error report.
const ANSWER_LIMIT: usize = 16 * 1024;

async fn post_inner(url: &HttpUrl, body: &str, key: &str) -> Result<(), Failure> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    stream.set_nodelay(true)?;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: understudy/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nIdempotency-Key: {key}\r\n\
         Connection: close\r\n\r\n",
        url.target,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;

    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if answer.len() < ANSWER_LIMIT {
            answer.extend_from_slice(&chunk[..n]);
        }
        // A success needs nothing past the status line; a failure's body is worth reading.
        if let Some(end) = answer.windows(2).position(|w| w == b"\r\n") {
            if status_code(&answer[..end]).is_some_and(|c| (200..300).contains(&c)) {
                return Ok(());
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (status_line, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
    match status_code(status_line.as_bytes()) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(_) => {
            let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let body: String = body.chars().take(300).collect();
            let status = status_line
                .split_once(' ')
                .map_or(status_line, |(_, s)| s)
                .to_string();
            Err(Failure::Status(status, body))
        }
        None => Err(Failure::Malformed(status_line.chars().take(100).collect())),
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_code(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The webhook sink's delivery target.
pub(super) struct Target {
    url: HttpUrl,
    timeout: Duration,
}

impl Target {
    pub(super) fn new(url: HttpUrl, timeout: Duration) -> Target {
        Target { url, timeout }
    }
}

impl super::Deliver for Target {
    async fn deliver(&mut self, messages: &[Mutation]) -> anyhow::Result<()> {
        let (body, key) = body_and_key(messages);
        post(&self.url, &body, &key, self.timeout).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: HttpUrl = "http://127.0.0.1:8080/hook?token=s3cret".parse().unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8080);
        assert_eq!(u.target, "/hook?token=s3cret");
        assert_eq!(u.redacted(), "http://127.0.0.1:8080/hook");
        let u: HttpUrl = "http://nms.local".parse().unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u: HttpUrl = "http://h?x=1".parse().unwrap();
        assert_eq!(u.target, "/?x=1");
        let u: HttpUrl = "http://[::1]:9000/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        for bad in [
            "https://h/",
            "h:80/x",
            "http://:80/",
            "http://h:0/",
            "http://u:p@h/",
            "http://h/a b",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH"), None);
    }
}
