//! The pgpass file: passwords kept out of DSNs, read exactly as libpq reads them.
//!
//! Format (<https://www.postgresql.org/docs/15/libpq-pgpass.html>): one entry per line,
//! `hostname:port:database:username:password`. A field that is exactly `*` matches anything; a
//! backslash makes the next character literal (`\:` and `\\`). Lines starting with `#` are
//! comments. The first matching line wins. The password field runs to the next unescaped `:` or
//! the end of the line.
//!
//! As libpq does on Unix, the file is ignored (with a warning) unless it is a regular file that
//! the group and others cannot access (mode 0600 or stricter).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The password for `host:port:dbname:user` from the pgpass file at `path`, if the file exists,
/// is private enough, and has a matching line.
pub(crate) fn read_password(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file {} is not a plain file; ignoring it",
            path.display()
        );
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; ignoring it (as libpq does): run \
             chmod 0600 {}",
            path.display(),
            path.display()
        );
        return None;
    }
    let contents = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read password file {}: {e}", path.display());
            return None;
        }
    };
    find_password(&contents, host, &port.to_string(), dbname, user)
}

/// The first matching entry's password in pgpass-formatted `contents`.
pub(crate) fn find_password(
    contents: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    contents
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let fields = split_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let wanted = [host, port, dbname, user];
            let all_match = fields
                .iter()
                .zip(wanted)
                .all(|(field, want)| field.wildcard || field.text == want);
            all_match.then(|| fields[4].text.clone())
        })
}

struct Field {
    text: String,
    /// The field was exactly an unescaped `*`.
    wildcard: bool,
}

/// Split a line at unescaped colons, undoing backslash escapes.
fn split_fields(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut text = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                escaped_any = true;
                text.extend(chars.next());
            }
            ':' => {
                let wildcard = text == "*" && !escaped_any;
                fields.push(Field {
                    text: std::mem::take(&mut text),
                    wildcard,
                });
                escaped_any = false;
            }
            c => text.push(c),
        }
    }
    let wildcard = text == "*" && !escaped_any;
    fields.push(Field { text, wildcard });
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let file = "\
# comment line:with:colons:and:stuff
db1:5432:nms:alice:first
*:5432:*:alice:second
*:*:*:*:catchall
";
        let f = |h, p, d, u| find_password(file, h, p, d, u);
        assert_eq!(f("db1", "5432", "nms", "alice").as_deref(), Some("first"));
        assert_eq!(f("db2", "5432", "nms", "alice").as_deref(), Some("second"));
        assert_eq!(
            f("db1", "5432", "other", "alice").as_deref(),
            Some("second")
        );
        assert_eq!(
            f("db1", "5433", "nms", "alice").as_deref(),
            Some("catchall")
        );
        assert_eq!(f("db1", "5432", "nms", "bob").as_deref(), Some("catchall"));
    }

    #[test]
    fn no_match_and_short_lines_give_nothing() {
        let file = "db1:5432:nms:alice:pw\nshort:line\n\n";
        assert_eq!(find_password(file, "db2", "5432", "nms", "alice"), None);
        assert_eq!(find_password(file, "short", "line", "x", "y"), None);
        assert_eq!(find_password("", "a", "1", "b", "c"), None);
    }

    #[test]
    fn escapes_colons_backslashes_and_literal_stars() {
        let file = "\
fe80\\:\\:1:5432:nms:alice:v6
h:5432:d\\*b:alice:literal-star
h:5432:nms:alice:pa\\:ss\\\\word:ignored-field
";
        assert_eq!(
            find_password(file, "fe80::1", "5432", "nms", "alice").as_deref(),
            Some("v6")
        );
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(
            find_password(file, "h", "5432", "d*b", "alice").as_deref(),
            Some("literal-star")
        );
        assert_eq!(
            find_password(file, "h", "5432", "nms", "alice").as_deref(),
            Some("pa:ss\\word")
        );
    }

    #[test]
    fn crlf_line_endings_are_tolerated() {
        let file = "h:1:d:u:pw\r\n";
        assert_eq!(
            find_password(file, "h", "1", "d", "u").as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn file_is_ignored_unless_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "h:5432:d:u:secret\n").unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o600).unwrap();
        assert_eq!(
            read_password(&path, "h", 5432, "d", "u").as_deref(),
            Some("secret")
        );
        set(0o400).unwrap();
        assert_eq!(
            read_password(&path, "h", 5432, "d", "u").as_deref(),
            Some("secret")
        );
        set(0o640).unwrap();
        assert_eq!(read_password(&path, "h", 5432, "d", "u"), None);
        set(0o604).unwrap();
        assert_eq!(read_password(&path, "h", 5432, "d", "u"), None);
        assert_eq!(
            read_password(dir.path(), "h", 5432, "d", "u"),
            None,
            "a directory"
        );
        assert_eq!(
            read_password(&dir.path().join("missing"), "h", 5432, "d", "u"),
            None
        );
    }
}
