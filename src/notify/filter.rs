//! Which messages a sink or a stream consumer wants: kinds by glob, entities by name.

use crate::translate::Mutation;

/// A message matches when its kind matches one of `kinds` (or `kinds` is empty) and its entity
/// is one of `entities` (or `entities` is empty): OR within a list, AND between the two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Globs: `*` matches any run of characters (dots included), `?` one character.
    pub kinds: Vec<String>,
    /// Exact entity names.
    pub entities: Vec<String>,
}

impl Filter {
    /// Whether nothing is filtered out.
    pub fn is_all(&self) -> bool {
        self.kinds.is_empty() && self.entities.is_empty()
    }

    pub fn matches(&self, m: &Mutation) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|g| glob_match(g, &m.kind)))
            && (self.entities.is_empty() || self.entities.contains(&m.entity))
    }
}

/// Shell-style matching of `text` against `pattern` (`*` and `?`, no escapes or classes), in
/// linear time: on a mismatch after a `*`, the star absorbs one more character and matching
/// resumes from there.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_as_a_shell_does() {
        for (pattern, text, expected) in [
            ("alarm.*", "alarm.raised", true),
            ("alarm.*", "alarm.", true),
            ("alarm.*", "alarms.raised", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("*.updated", "nms.ne.updated", true),
            ("*.updated", "nms.ne.inserted", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("nms.alarm.inserted", "nms.alarm.inserted", true),
            ("**x", "abx", true),
            ("é*", "élan", true),
        ] {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }
}
