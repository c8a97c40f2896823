//! A tiny Server-Sent Events client over a tokio `TcpStream`: enough to follow understudy's
//! message stream (`GET /v1/messages`), without an HTTP library.
//!
//! * [`Endpoint`]: `http://host:port[/prefix]` (plain HTTP: the stream binds to loopback).
//! * [`Connection`]: one HTTP/1.1 GET, optional bearer token and `Last-Event-ID`; the body is
//!   read as chunked, by length, or to the end of the connection, and parsed into [`Event`]s by
//!   the rules of the HTML standard's `text/event-stream` (fields `id`, `event`, `data`,
//!   `retry`; comments; `\n`, `\r\n` or `\r` line ends).
//! * [`Subscription`]: a connection that reconnects when it drops, after a backoff, sending the
//!   last event id it saw as `Last-Event-ID`. Errors that a retry cannot fix (a bad URL, 4xx
//!   such as a wrong token) are returned; the rest are retried.
//!
//! Cancel safety: [`Connection::next_event`] and [`Subscription::next`] keep every byte read and
//! the backoff deadline in `self`, so they can sit in a `tokio::select!` next to a timer.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last event id the stream set (kept across events, as the standard says).
    pub id: Option<String>,
    /// The event type; `message` when the event named none.
    pub event: String,
    /// The data lines, joined with `\n`.
    pub data: String,
}

/// Why a connection failed.
#[derive(Debug)]
pub enum SseError {
    BadUrl(String),
    Io(io::Error),
    /// A status other than 200, with the start of the body.
    Status {
        status: u16,
        body: String,
    },
    Protocol(String),
    Timeout(&'static str),
}

impl SseError {
    /// Whether retrying cannot help: a bad URL, or a client error (wrong token, bad query,
    /// LSN no longer retained) other than 408 and 429.
    pub fn is_permanent(&self) -> bool {
        match self {
            SseError::BadUrl(_) => true,
            SseError::Status { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            _ => false,
        }
    }
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::BadUrl(u) => write!(f, "bad stream URL {u:?}: expected http://HOST:PORT"),
            SseError::Io(e) => write!(f, "{e}"),
            SseError::Status { status, body } => {
                write!(f, "the stream answered HTTP {status}")?;
                if !body.trim().is_empty() {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            SseError::Protocol(p) => write!(f, "malformed HTTP response: {p}"),
            SseError::Timeout(what) => write!(f, "timed out {what}"),
        }
    }
}

impl std::error::Error for SseError {}

impl From<io::Error> for SseError {
    fn from(e: io::Error) -> Self {
        SseError::Io(e)
    }
}

/// Where the stream is served: `http://host:port` and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Prepended to request paths; empty or starting with `/`, without a trailing `/`.
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, SseError> {
        let bad = || SseError::BadUrl(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 80,
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The path and query of understudy's message stream.
pub fn messages_path(from_lsn: Option<&str>, kind: Option<&str>, entity: Option<&str>) -> String {
    let params: Vec<String> = [("from_lsn", from_lsn), ("kind", kind), ("entity", entity)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode_query_value(v))))
        .collect();
    if params.is_empty() {
        "/v1/messages".to_string()
    } else {
        format!("/v1/messages?{}", params.join("&"))
    }
}

/// Percent-encodes what cannot stand in a query value; `/`, `:` and `*` stay as they are.
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'/'
            | b':'
            | b'*' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// How the response body is framed.
#[derive(Debug)]
enum Body {
    Chunked(Chunk),
    Length(u64),
    Close,
}

#[derive(Debug)]
enum Chunk {
    /// Reading the chunk-size line.
    Size(Vec<u8>),
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, until an empty one.
    Trailer(Vec<u8>),
    Done,
}

impl Body {
    /// Appends the payload bytes of `input` to `out`; true once the body is complete.
    fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, SseError> {
        match self {
            Body::Close => {
                out.extend_from_slice(input);
                Ok(false)
            }
            Body::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                Ok(*left == 0)
            }
            Body::Chunked(state) => {
                while !input.is_empty() {
                    match state {
                        Chunk::Size(line) | Chunk::Trailer(line) if line.len() > 4096 => {
                            return Err(SseError::Protocol("chunk header line too long".into()));
                        }
                        Chunk::Size(line) => {
                            let b = input[0];
                            input = &input[1..];
                            if b != b'\n' {
                                line.push(b);
                                continue;
                            }
                            let text = String::from_utf8_lossy(line);
                            let size = text.trim_end_matches('\r');
                            let size = size.split(';').next().unwrap_or("").trim();
                            let size = u64::from_str_radix(size, 16).map_err(|_| {
                                SseError::Protocol(format!("bad chunk size {size:?}"))
                            })?;
                            *state = if size == 0 {
                                Chunk::Trailer(Vec::new())
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Chunk::Data(left) => {
                            let n = (*left).min(input.len() as u64) as usize;
                            out.extend_from_slice(&input[..n]);
                            input = &input[n..];
                            *left -= n as u64;
                            if *left == 0 {
                                *state = Chunk::DataEnd;
                            }
                        }
                        Chunk::DataEnd => {
                            let b = input[0];
                            input = &input[1..];
                            match b {
                                b'\r' => {}
                                b'\n' => *state = Chunk::Size(Vec::new()),
                                _ => {
                                    return Err(SseError::Protocol(
                                        "chunk data not followed by CRLF".into(),
                                    ))
                                }
                            }
                        }
                        Chunk::Trailer(line) => {
                            let b = input[0];
                            input = &input[1..];
                            if b != b'\n' {
                                line.push(b);
                            } else if line.is_empty() || line.as_slice() == b"\r" {
                                *state = Chunk::Done;
                            } else {
                                line.clear();
                            }
                        }
                        Chunk::Done => return Ok(true),
                    }
                }
                Ok(matches!(state, Chunk::Done))
            }
        }
    }
}

/// Parses `text/event-stream` bytes into events.
#[derive(Debug, Default)]
pub struct EventParser {
    line: Vec<u8>,
    /// The previous line ended with `\r`: a `\n` right after it belongs to that line end.
    after_cr: bool,
    data: String,
    has_data: bool,
    event: String,
    last_id: Option<String>,
    /// The reconnection time the stream asked for, in ms.
    pub retry_ms: Option<u64>,
}

impl EventParser {
    pub fn new() -> EventParser {
        EventParser::default()
    }

    /// Feeds bytes; complete events are pushed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Event>) {
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(out);
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self, out: &mut VecDeque<Event>) {
        let raw = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&raw);
        let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
        if line.is_empty() {
            if self.has_data {
                let mut data = std::mem::take(&mut self.data);
                if data.ends_with('\n') {
                    data.pop();
                }
                let event = std::mem::take(&mut self.event);
                out.push_back(Event {
                    id: self.last_id.clone(),
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data,
                });
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => {
                self.last_id = (!value.is_empty()).then(|| value.to_string());
            }
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
    }
}

/// One open stream.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    body: Body,
    parser: EventParser,
    events: VecDeque<Event>,
    ended: bool,
    read_buf: Vec<u8>,
    /// Drop the connection when nothing arrives for this long (`None`: wait for ever).
    pub idle_timeout: Option<Duration>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER: usize = 64 * 1024;

impl Connection {
    /// Connects and sends the GET; returns once the response headers say 200 and event-stream.
    pub async fn open(
        endpoint: &Endpoint,
        path_and_query: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Connection, SseError> {
        let addr = (endpoint.host.as_str(), endpoint.port);
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| SseError::Timeout("connecting to the stream"))??;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "GET {}{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nUser-Agent: nms_memory\r\n",
            endpoint.prefix,
            path_and_query,
            endpoint.host_header()
        );
        if let Some(t) = token {
            request.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;

        let mut head = Vec::with_capacity(1024);
        let mut buf = vec![0u8; 8192];
        let header_end = loop {
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_HEADER {
                return Err(SseError::Protocol("response headers too long".into()));
            }
            let n = tokio::time::timeout(CONNECT_TIMEOUT, stream.read(&mut buf))
                .await
                .map_err(|_| SseError::Timeout("waiting for the stream's response headers"))??;
            if n == 0 {
                return Err(SseError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream closed the connection before answering",
                )));
            }
            head.extend_from_slice(&buf[..n]);
        };
        let rest = head.split_off(header_end);
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or_else(|| SseError::Protocol(format!("bad status line {status_line:?}")))?;
        let mut chunked = false;
        let mut length = None;
        let mut content_type = String::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "content-length" => length = value.parse::<u64>().ok(),
                "content-type" => content_type = value.to_ascii_lowercase(),
                _ => {}
            }
        }
        let body = if chunked {
            Body::Chunked(Chunk::Size(Vec::new()))
        } else if let Some(n) = length {
            Body::Length(n)
        } else {
            Body::Close
        };
        let mut conn = Connection {
            stream,
            body,
            parser: EventParser::new(),
            events: VecDeque::new(),
            ended: false,
            read_buf: buf,
            idle_timeout: None,
        };
        if status != 200 {
            let body = conn.read_error_body(rest).await;
            return Err(SseError::Status { status, body });
        }
        if !content_type.starts_with("text/event-stream") {
            return Err(SseError::Protocol(format!(
                "expected Content-Type text/event-stream, got {content_type:?}"
            )));
        }
        conn.take(&rest)?;
        Ok(conn)
    }

    /// Up to 2 kB of an error response's body, for the message.
    async fn read_error_body(&mut self, first: Vec<u8>) -> String {
        let mut body = Vec::new();
        let mut done = self.body.decode(&first, &mut body).unwrap_or(true);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !done && body.len() < 2048 {
            let read =
                tokio::time::timeout_at(deadline, self.stream.read(&mut self.read_buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {
                    done = self
                        .body
                        .decode(&self.read_buf[..n], &mut body)
                        .unwrap_or(true);
                }
                _ => break,
            }
        }
        body.truncate(2048);
        String::from_utf8_lossy(&body).into_owned()
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        let mut payload = Vec::with_capacity(bytes.len());
        if self.body.decode(bytes, &mut payload)? {
            self.ended = true;
        }
        self.parser.feed(&payload, &mut self.events);
        Ok(())
    }

    /// The next event; `Ok(None)` when the server ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            if self.ended {
                return Ok(None);
            }
            let read = self.stream.read(&mut self.read_buf);
            let n = match self.idle_timeout {
                Some(t) => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| SseError::Timeout("waiting for stream data"))??,
                None => read.await?,
            };
            if n == 0 {
                self.ended = true;
                continue;
            }
            let chunk = self.read_buf[..n].to_vec();
            self.take(&chunk)?;
        }
    }

    /// The reconnection delay the server asked for, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry_ms.map(Duration::from_millis)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A stream that reconnects, resuming after the last event id it saw.
#[derive(Debug)]
pub struct Subscription {
    pub endpoint: Endpoint,
    pub path_and_query: String,
    pub token: Option<String>,
    /// Sent as `Last-Event-ID` when (re)connecting.
    pub last_event_id: Option<String>,
    /// First reconnection delay (or the server's `retry`), doubled per failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub idle_timeout: Option<Duration>,
    /// Print each disconnection to stderr.
    pub log: bool,
    /// Connections opened so far.
    pub connects: u64,
    conn: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
    server_retry: Option<Duration>,
}

impl Subscription {
    pub fn new(
        endpoint: Endpoint,
        path_and_query: String,
        token: Option<String>,
        last_event_id: Option<String>,
    ) -> Subscription {
        Subscription {
            endpoint,
            path_and_query,
            token,
            last_event_id,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            idle_timeout: None,
            log: false,
            connects: 0,
            conn: None,
            failures: 0,
            retry_at: None,
            server_retry: None,
        }
    }

    /// The next event, reconnecting as often as needed; errors only when retrying cannot help.
    pub async fn next(&mut self) -> Result<Event, SseError> {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            if self.conn.is_none() {
                let opened = Connection::open(
                    &self.endpoint,
                    &self.path_and_query,
                    self.token.as_deref(),
                    self.last_event_id.as_deref(),
                )
                .await;
                match opened {
                    Ok(mut c) => {
                        c.idle_timeout = self.idle_timeout;
                        self.connects += 1;
                        self.conn = Some(c);
                    }
                    Err(e) if e.is_permanent() => return Err(e),
                    Err(e) => {
                        self.failed(&format!("cannot open the stream: {e}"));
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            match conn.next_event().await {
                Ok(Some(ev)) => {
                    self.failures = 0;
                    if let Some(r) = conn.retry() {
                        self.server_retry = Some(r);
                    }
                    if ev.id.is_some() {
                        self.last_event_id.clone_from(&ev.id);
                    }
                    return Ok(ev);
                }
                Ok(None) => {
                    self.conn = None;
                    self.failed("the stream ended");
                }
                Err(e) => {
                    self.conn = None;
                    self.failed(&format!("the stream broke: {e}"));
                }
            }
        }
    }

    /// Drops the connection and schedules the next attempt.
    fn failed(&mut self, why: &str) {
        self.conn = None;
        let base = self.server_retry.unwrap_or(self.backoff);
        let delay = base
            .saturating_mul(1 << self.failures.min(6))
            .min(self.max_backoff.max(base));
        self.failures += 1;
        if self.log {
            eprintln!(
                "{why}; reconnecting in {} ms (resuming after {})",
                delay.as_millis(),
                self.last_event_id.as_deref().unwrap_or("nothing yet")
            );
        }
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Closes the connection now (the next call reconnects at once, with `Last-Event-ID`).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = EventParser::new();
        let mut out = VecDeque::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out.into_iter().collect()
    }

    #[test]
    fn parses_events_across_any_split() {
        let text = b": keepalive\r\nid: 0/16B3748:1\r\nevent: mutation\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n\
                     data:plain\n\nid\nevent: x\ndata\n\n\rretry: 1500\r\r";
        let whole = parse_all(&[text]);
        let expected = vec![
            Event {
                id: Some("0/16B3748:1".into()),
                event: "mutation".into(),
                data: "{\"a\":\n1}".into(),
            },
            Event {
                id: Some("0/16B3748:1".into()),
                event: "message".into(),
                data: "plain".into(),
            },
            Event {
                id: None,
                event: "x".into(),
                data: "".into(),
            },
        ];
        assert_eq!(whole, expected);
        for split in 1..text.len() {
            assert_eq!(
                parse_all(&[&text[..split], &text[split..]]),
                expected,
                "split at {split}"
            );
        }
        let mut p = EventParser::new();
        p.feed(text, &mut VecDeque::new());
        assert_eq!(p.retry_ms, Some(1500));
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(parse_all(&[b"event: mutation\nid: 1\n\n"]).is_empty());
        // but its id sticks
        let evs = parse_all(&[b"id: 7\n\ndata: x\n\n"]);
        assert_eq!(evs[0].id.as_deref(), Some("7"));
    }

    #[test]
    fn decodes_chunked_bodies_byte_by_byte() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\n";
        let mut b = Body::Chunked(Chunk::Size(Vec::new()));
        let mut out = Vec::new();
        let mut done = false;
        for byte in body.iter() {
            assert!(!done);
            done = b.decode(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert!(done);
        assert_eq!(out, b"hello, world");
        let mut bad = Body::Chunked(Chunk::Size(Vec::new()));
        assert!(bad.decode(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn parses_endpoints_and_paths() {
        let e = Endpoint::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let e = Endpoint::parse("http://[::1]:9/nms/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("::1", 9, "/nms")
        );
        assert_eq!(e.host_header(), "[::1]:9");
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
        assert_eq!(
            messages_path(Some("0/1A2B400"), Some("alarm.*"), Some("a b&c")),
            "/v1/messages?from_lsn=0/1A2B400&kind=alarm.*&entity=a%20b%26c"
        );
        assert_eq!(messages_path(None, None, None), "/v1/messages");
    }

    /// A one-connection-at-a-time server: answers each request with `responses[i]` and returns
    /// the requests it saw.
    async fn serve(responses: Vec<Vec<u8>>) -> (Endpoint, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for response in responses {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while find(&req, b"\r\n\r\n").is_none() {
                    let n = s.read(&mut buf).await.unwrap();
                    req.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8(req).unwrap());
                s.write_all(&response).await.unwrap();
                s.shutdown().await.unwrap();
            }
            requests
        });
        (
            Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            task,
        )
    }

    fn chunked(events: &str) -> Vec<u8> {
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        // split into two chunks to exercise the framing
        let (a, b) = events.split_at(events.len() / 2);
        for part in [a, b] {
            r.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    }

    #[tokio::test]
    async fn reconnects_with_last_event_id_and_token() {
        let (endpoint, server) = serve(vec![
            chunked("id: 0/10:1\nevent: mutation\ndata: {\"n\":1}\n\nid: 0/10:2\nevent: mutation\ndata: {\"n\":2}\n\n"),
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nstarting".to_vec(),
            chunked("id: 0/20:1\nevent: mutation\ndata: {\"n\":3}\n\n"),
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 9\r\n\r\nbad token".to_vec(),
        ])
        .await;
        let mut sub = Subscription::new(
            endpoint,
            messages_path(Some("0/10"), None, None),
            Some("s3cret".into()),
            None,
        );
        sub.backoff = Duration::from_millis(10);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(sub.next().await.unwrap().data);
        }
        assert_eq!(got, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        let err = sub.next().await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert_eq!(err.to_string(), "the stream answered HTTP 401: bad token");
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /v1/messages?from_lsn=0/10 HTTP/1.1\r\n"));
        assert!(requests[0].contains("Authorization: Bearer s3cret\r\n"));
        assert!(!requests[0].contains("Last-Event-ID"));
        assert!(
            requests[1].contains("Last-Event-ID: 0/10:2\r\n"),
            "{}",
            requests[1]
        );
        assert!(requests[2].contains("Last-Event-ID: 0/10:2\r\n"));
        assert!(requests[3].contains("Last-Event-ID: 0/20:1\r\n"));
        assert_eq!(sub.connects, 2);
    }
}
