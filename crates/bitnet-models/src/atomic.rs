//! Output files that appear under their final name complete or not at all.
//!
//! [`AtomicFile`] writes into a fresh hidden temporary file beside the
//! target (same directory, so the final `rename` is atomic on one file
//! system), flushes and `fsync`s it, then renames it into place and syncs
//! the directory. An error, a panic or an early return drops the writer,
//! which removes the temporary file; a killed process leaves at most a
//! dot-prefixed `*.tmp` file, never a half-written file under the final
//! name. A disk that fills up surfaces as a write or sync error, and the
//! target is untouched. [`AtomicDir`] does the same for a directory of
//! files (an HF checkpoint).
//!
//! An existing target is refused unless the caller passes `force`: a
//! conversion should not silently replace a model.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Refuses an existing `path` unless `force`.
pub fn check_target(path: &Path, force: bool) -> Result<()> {
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(Error::InFile {
            path: path.to_path_buf(),
            message: "already exists; pass --force to replace it".into(),
        });
    }
    Ok(())
}

/// A fresh temporary path beside `path` created by `create`, which must
/// fail with `AlreadyExists` when the name is taken.
fn fresh_beside<T>(
    path: &Path,
    mut create: impl FnMut(&Path) -> std::io::Result<T>,
) -> Result<(PathBuf, T)> {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let pid = std::process::id();
    sweep_stale(path, &name, pid);
    for attempt in 0..10_000u32 {
        let tmp = path.with_file_name(format!(".{name}.{pid}.{attempt}.tmp"));
        match create(&tmp) {
            Ok(v) => return Ok((tmp, v)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&tmp, "create")(e)),
        }
    }
    Err(Error::InFile {
        path: path.to_path_buf(),
        message: "no free temporary name beside it".into(),
    })
}

/// Removes temporary files or directories for the same target left by
/// processes that no longer run (a `kill -9` or a crash mid-write leaves
/// them; nothing else can). Best effort, and only where `/proc` says which
/// processes run, so a live writer's file is never touched.
fn sweep_stale(path: &Path, name: &str, own_pid: u32) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|f| f.strip_suffix(".tmp"))
        else {
            continue;
        };
        let mut parts = rest.split('.');
        let (Some(pid), Some(attempt), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), attempt.parse::<u32>()) else {
            continue;
        };
        if pid == own_pid || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let stale = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&stale),
            _ => fs::remove_file(&stale),
        };
    }
}

/// Syncs the directory holding `path` so the rename itself is durable.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Best effort: some file systems refuse to open directories for sync.
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}

/// A file being written under a temporary name (see the module docs).
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicFile")
            .field("target", &self.target)
            .field("tmp", &self.tmp)
            .finish()
    }
}

impl AtomicFile {
    /// Starts writing `path`; refuses an existing `path` unless `force`.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        check_target(path, force)?;
        let (tmp, file) = fresh_beside(path, |p| {
            OpenOptions::new().write(true).create_new(true).open(p)
        })?;
        Ok(AtomicFile {
            target: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The temporary file's path (for error messages).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes, syncs and renames the file into place. On failure (a full
    /// disk usually shows up here, when the last buffered bytes are
    /// written or synced) the temporary file is removed.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().ok_or_else(|| Error::InFile {
            path: self.tmp.clone(),
            message: "committed twice".into(),
        })?;
        let placed = (|| {
            let file = out
                .into_inner()
                .map_err(|e| Error::io(&self.tmp, "write")(e.into_error()))?;
            file.sync_all().map_err(Error::io(&self.tmp, "sync"))?;
            drop(file);
            fs::rename(&self.tmp, &self.target).map_err(Error::io(&self.target, "rename"))
        })();
        if placed.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        placed?;
        sync_parent(&self.target);
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.out {
            Some(o) => o.write(buf),
            None => Err(std::io::Error::other("file already committed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A directory being filled under a temporary name, renamed into place
/// when complete. With `force`, an existing target directory is removed
/// just before the rename (the one moment the old model is gone and the
/// new one not yet in place).
#[derive(Debug)]
pub struct AtomicDir {
    target: PathBuf,
    tmp: PathBuf,
    force: bool,
    done: bool,
}

impl AtomicDir {
    /// Starts filling `path`; refuses an existing `path` unless `force`.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        check_target(path, force)?;
        let (tmp, ()) = fresh_beside(path, |p| fs::create_dir(p))?;
        Ok(AtomicDir {
            target: path.to_path_buf(),
            tmp,
            force,
            done: false,
        })
    }

    /// The temporary directory to write files into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the directory into place.
    pub fn commit(mut self) -> Result<()> {
        if self.force && fs::symlink_metadata(&self.target).is_ok() {
            let meta =
                fs::symlink_metadata(&self.target).map_err(Error::io(&self.target, "stat"))?;
            if meta.is_dir() {
                fs::remove_dir_all(&self.target).map_err(Error::io(&self.target, "remove"))?;
            } else {
                fs::remove_file(&self.target).map_err(Error::io(&self.target, "remove"))?;
            }
        }
        fs::rename(&self.tmp, &self.target).map_err(Error::io(&self.target, "rename"))?;
        sync_parent(&self.target);
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_appears_until_commit_and_a_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.gguf");
        let mut f = AtomicFile::create(&target, false).unwrap();
        f.write_all(b"half").unwrap();
        assert!(!target.exists());
        drop(f);
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temp removed");
        let mut f = AtomicFile::create(&target, false).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        let err = AtomicFile::create(&target, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        let mut f = AtomicFile::create(&target, true).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn directories_too() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("hf");
        let d = AtomicDir::create(&target, false).unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        drop(d);
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let d = AtomicDir::create(&target, false).unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        d.commit().unwrap();
        assert!(AtomicDir::create(&target, false).is_err());
        let d = AtomicDir::create(&target, true).unwrap();
        fs::write(d.path().join("b"), b"2").unwrap();
        d.commit().unwrap();
        assert!(target.join("b").exists() && !target.join("a").exists());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn temporaries_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.gguf");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let own = std::process::id();
        let dead_file = dir.path().join(format!(".m.gguf.{dead}.0.tmp"));
        let dead_dir = dir.path().join(format!(".m.gguf.{dead}.1.tmp"));
        let live = dir.path().join(".m.gguf.1.0.tmp"); // pid 1 always runs
        let mine = dir.path().join(format!(".m.gguf.{own}.7.tmp"));
        let other_target = dir.path().join(format!(".n.gguf.{dead}.0.tmp"));
        let unrelated = dir.path().join(".m.gguf.notes.tmp");
        for f in [&dead_file, &live, &mine, &other_target, &unrelated] {
            fs::write(f, b"x").unwrap();
        }
        fs::create_dir(&dead_dir).unwrap();
        fs::write(dead_dir.join("model.safetensors"), b"x").unwrap();
        let f = AtomicFile::create(&target, false).unwrap();
        assert!(!dead_file.exists() && !dead_dir.exists());
        for kept in [&live, &mine, &other_target, &unrelated] {
            assert!(kept.exists(), "{} must stay", kept.display());
        }
        drop(f);
    }

    #[test]
    fn a_failed_commit_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: the target is a non-empty directory.
        let target = dir.path().join("m.gguf");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"old").unwrap();
        let mut f = AtomicFile::create(&target, true).unwrap();
        f.write_all(b"new").unwrap();
        assert!(f.commit().is_err());
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temp removed");
    }
}
