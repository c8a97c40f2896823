//! Sink cursors on disk: `<journal dir>/cursors/<name>` holds `commit_lsn:seq`, the last message
//! the sink delivered, replaced atomically (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory), so after any crash the file holds either the old or the new
//! cursor, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::lsn::Lsn;
use crate::messages::Cursor;

/// One sink's cursor file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    dir: PathBuf,
    path: PathBuf,
}

/// A cursor file could not be read or written; the text says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error(
        "could not {action} sink cursor {} (check the journal directory's disk and \
         permissions)", path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "sink cursor {} holds '{text}', not commit_lsn:seq; delete the file to start that sink \
         again from its `from` option, or write the last delivered message id into it",
        path.display()
    )]
    Damaged { path: PathBuf, text: String },
}

impl CursorFile {
    /// The cursor of sink `name` of the journal in `journal_dir`.
    pub fn new(journal_dir: &Path, name: &str) -> CursorFile {
        let dir = journal_dir.join("cursors");
        CursorFile {
            path: dir.join(name),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored cursor, `None` when the sink has none yet.
    pub fn load(&self) -> Result<Option<Cursor>, CursorError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CursorError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| CursorError::Damaged {
                path: self.path.clone(),
                text: text.chars().take(80).collect(),
            })
    }

    /// Replaces the stored cursor atomically and durably.
    pub fn store(&self, cursor: Cursor) -> Result<(), CursorError> {
        let io = |action, source| CursorError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(|e| io("create the directory of", e))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(format!("{cursor}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io("write", e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| io("rename into", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory of", e))
    }
}

/// The stored cursors of the running sinks, for journal retention: [`KeepFrom::get`] is the
/// oldest commit LSN a sink may still need.
#[derive(Debug, Clone, Default)]
pub struct KeepFrom {
    stored: Arc<Mutex<Vec<(String, Cursor)>>>,
}

impl KeepFrom {
    /// The journal must keep every transaction committing at or after this LSN for the sinks
    /// (`None` without sinks). A sink resumes by reading from its cursor's commit LSN.
    pub fn get(&self) -> Option<Lsn> {
        self.lock().iter().map(|(_, c)| c.commit_lsn).min()
    }

    /// Each sink's stored cursor, by name.
    pub fn cursors(&self) -> Vec<(String, Cursor)> {
        self.lock().clone()
    }

    pub(super) fn set(&self, name: &str, cursor: Cursor) {
        let mut stored = self.lock();
        match stored.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c = cursor,
            None => stored.push((name.to_string(), cursor)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Cursor)>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = CursorFile::new(dir.path(), "webhook-a");
        assert_eq!(f.load().unwrap(), None);
        let c: Cursor = "0/1A2B400:3".parse().unwrap();
        f.store(c).unwrap();
        assert_eq!(f.load().unwrap(), Some(c));
        let d: Cursor = "1/0:12".parse().unwrap();
        f.store(d).unwrap();
        assert_eq!(f.load().unwrap(), Some(d));
        assert!(!f.path().with_extension("tmp").exists());
        std::fs::write(f.path(), "garbage").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("delete the file"), "{e}");
    }

    #[test]
    fn keep_from_is_the_oldest_stored_cursor() {
        let k = KeepFrom::default();
        assert_eq!(k.get(), None);
        k.set("a", "0/300:1".parse().unwrap());
        k.set("b", "0/200:9".parse().unwrap());
        assert_eq!(k.get(), Some(Lsn(0x200)));
        k.set("b", "0/400:1".parse().unwrap());
        assert_eq!(k.get(), Some(Lsn(0x300)));
    }
}
