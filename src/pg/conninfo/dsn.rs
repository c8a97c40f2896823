//! The text of a DSN, before tokio-postgres sees it: libpq's key=value grammar and the query
//! part of a URI, so the keys tokio-postgres does not know can be taken out.
//! Grammar: <https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-CONNSTRING>.

use super::ConnInfoError;

/// Keys libpq knows and tokio-postgres does not; we take them out before tokio-postgres parses.
const LIBPQ_ONLY_KEYS: &[&str] = &["sslmode", "sslrootcert", "passfile"];

/// Split a DSN into what tokio-postgres should parse and the libpq-only keys we read ourselves.
pub(super) fn extract_libpq_only_keys(
    dsn: &str,
) -> Result<(String, Vec<(String, String)>), ConnInfoError> {
    let mut taken = Vec::new();
    if let Some(scheme) = ["postgresql://", "postgres://"]
        .into_iter()
        .find(|p| dsn.starts_with(p))
    {
        // As tokio-postgres does: credentials end at the first '@', the query starts after it.
        let after_creds = dsn.find('@').map_or(scheme.len(), |at| at + 1);
        let Some(q) = dsn[after_creds..].find('?').map(|q| q + after_creds) else {
            return Ok((dsn.to_string(), taken));
        };
        let mut kept = Vec::new();
        for pair in dsn[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            if LIBPQ_ONLY_KEYS.contains(&key.as_str()) {
                taken.push((key, percent_decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let mut rest = dsn[..q].to_string();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        return Ok((rest, taken));
    }
    let mut rest = String::new();
    for (key, value) in keyword_pairs(dsn)? {
        if LIBPQ_ONLY_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            rest.push_str(&format!("{key}='{quoted}' "));
        }
    }
    Ok((rest, taken))
}

/// libpq's key=value grammar: `key = value`, the value either bare (ends at white space) or in
/// single quotes; a backslash takes the next character literally in both.
fn keyword_pairs(dsn: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!(
                "missing \"=\" after \"{key}\"; expected libpq key=value pairs \
                 (host=db1 port=5432 user=nms dbname=nms) or a postgres:// URI"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError(format!(
                            "unterminated quoted value for \"{key}\""
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError("a URI parameter is not UTF-8".into()))
}
