//! Output folders: one writer at a time, and a finished or checkpointed run is never replaced
//! by accident.
//!
//! - [`OutputLock`]: an exclusive lock on a folder, held from before the first write until the
//!   writer exits. It is a file `.sae-lock` naming the owner (pid, host, start time, command)
//!   with an advisory `flock` on it, which the kernel drops when the owner dies: after a crash
//!   or `kill -9` the next writer takes the lock at once, with nothing to clean up.
//! - [`existing_run`]: what a folder already holds (a training run, an SAE, an activation
//!   store, a sweep, a walkthrough report), described for the error that refuses to overwrite it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{io, Error, Result};

/// The lock file's name inside an output folder.
pub const LOCK_FILE: &str = ".sae-lock";

/// Who holds a lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockOwner {
    /// Process id of the owner.
    pub pid: u32,
    /// Host name of the machine the owner runs on.
    pub host: String,
    /// Unix seconds.
    pub started: u64,
    /// The owner's command line, its arguments joined by spaces.
    pub command: String,
}

impl std::fmt::Display for LockOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {}, since {} ({})",
            self.pid,
            self.host,
            format_utc(self.started),
            self.command
        )
    }
}

/// An exclusive hold on an output folder; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Locks `dir` (creating it) for this process, or fails at once naming the current owner.
    pub fn acquire(dir: &Path) -> Result<Self> {
        io::create_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        // A writer that unlinks its lock file on exit can race with one that opened it just
        // before: retry until the file we locked is the one at `path`.
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io("opening the lock file", &path, e))?;
            if !try_lock(&file).map_err(|e| Error::io("locking", &path, e))? {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let owner = serde_json::from_str::<LockOwner>(&text)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|_| "another process".into());
                return Err(Error::Locked {
                    path: dir.into(),
                    owner,
                });
            }
            if !same_file(&file, &path) {
                continue;
            }
            let owner = LockOwner {
                pid: std::process::id(),
                host: hostname(),
                started: unix_now(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let text = serde_json::to_string(&owner).unwrap_or_default();
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| file.write_all(text.as_bytes()))
                .and_then(|_| file.flush())
                .map_err(|e| Error::io("writing the lock file", &path, e))?;
            return Ok(Self { file, path });
        }
        Err(Error::Locked {
            path: dir.into(),
            owner: "processes that keep taking and releasing it".into(),
        })
    }

    /// The folder it holds.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so no one can take a file about to vanish.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM UTC` from Unix seconds (Hinnant's days-to-civil algorithm).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// When `path` was last written, for messages.
fn modified(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or_else(|| "an unknown date".into(), |d| format_utc(d.as_secs()))
}

/// What an output folder already holds, described in a few words ("a topk SAE training run
/// at step 1000 of 1000, saved 2026-11-28 18:33 UTC"), or `None` when it holds no run.
pub fn existing_run(dir: &Path) -> Option<String> {
    let json = |name: &str| io::read_json::<serde_json::Value>(&dir.join(name)).ok();
    let trainer = dir.join("trainer.json");
    if let Some(t) = json("trainer.json") {
        let arch =
            serde_json::from_value::<crate::sae::Architecture>(t["sae"]["architecture"].clone())
                .map_or("?", |a| a.name());
        return Some(format!(
            "a {arch} SAE training run at step {} of {}, saved {}",
            t["step"],
            t["train"]["steps"],
            modified(&trainer)
        ));
    }
    if let Some(c) = json("cfg.json") {
        return Some(format!(
            "a saved {} SAE with {} features, saved {}",
            c["metadata"]["training_architecture"]
                .as_str()
                .or(c["architecture"].as_str())
                .unwrap_or("?"),
            c["d_sae"],
            modified(&dir.join("cfg.json"))
        ));
    }
    if let Some(m) = json("meta.json") {
        return Some(format!(
            "an activation store of {} rows from {} at {}, written {}",
            m["rows"],
            m["model"].as_str().unwrap_or("?"),
            m["hook"].as_str().unwrap_or("?"),
            modified(&dir.join("meta.json"))
        ));
    }
    if let Some(s) = json("stream.json") {
        return Some(format!(
            "a streaming training job ({} buffer generations so far), written {}",
            s["generations"].as_array().map_or(0, Vec::len),
            modified(&dir.join("stream.json"))
        ));
    }
    if json("sweep.json").is_some() {
        return Some(format!(
            "a sweep, written {}",
            modified(&dir.join("sweep.json"))
        ));
    }
    if let Some(m) = json("metrics.json") {
        return Some(format!(
            "a walkthrough report ({} SAE on {}), written {}",
            m["d_sae"],
            m["model"].as_str().unwrap_or("?"),
            modified(&dir.join("metrics.json"))
        ));
    }
    None
}

/// Refuses to write into `dir` when it holds a run, unless `overwrite`.
pub fn refuse_existing(dir: &Path, overwrite: bool) -> Result<()> {
    match existing_run(dir) {
        Some(what) if !overwrite => Err(Error::OutputExists {
            path: dir.into(),
            what,
        }),
        _ => Ok(()),
    }
}

/// Removes the files of an earlier run from `dir` (the `--overwrite` of a folder), leaving
/// anything else there alone.
pub fn clear_run(dir: &Path) -> Result<()> {
    const RUN_FILES: [&str; 9] = [
        "trainer.json",
        "stream.json",
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "metrics.json",
        "meta.json",
        "sweep.json",
        "made_from.json",
    ];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = RUN_FILES.contains(&name.as_str())
            || name.starts_with("trainer_state-")
            || (name.starts_with("shard-") && name.ends_with(".safetensors"));
        if ours {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::io("removing", entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_795_797_240), "2026-11-27 16:34 UTC");
    }

    #[test]
    fn a_second_lock_on_the_same_folder_fails_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputLock::acquire(dir.path()).unwrap();
        let err = OutputLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!dir.path().join(LOCK_FILE).exists());
        OutputLock::acquire(dir.path()).unwrap();
    }
}
