//! Atomic file writes: every output is written to a temporary file beside its destination and
//! renamed into place, so a crash or Ctrl-C never leaves a half-written file. Files get the
//! permissions the user's umask gives any new file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `dir/.name.tmp-<pid>.ext`: hidden, unique to this process, and keeping the extension
/// (writers such as plotters pick the format from it).
fn temp_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp-{}{ext}", std::process::id()))
}

/// Creates `dir` (and parents), with an error that says the folder cannot be written.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create output folder", dir, e))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| Error::io("cannot write into output folder", dir, e))
}

/// Writes through `write` into a temporary file, syncs it, then renames it to `path`.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|_| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Atomically writes `bytes` to `path`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io("creating", tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io("writing", tmp, e))
    })
}

/// Atomically writes `value` as pretty JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })?;
    write_bytes(path, &text)
}

/// Reads JSON from `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                what: "file",
                path: path.into(),
                hint: "was it written by sae-lib?".into(),
            }
        } else {
            Error::io("reading", path, e)
        }
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::Json {
        path: path.into(),
        source: e,
    })
}

/// Atomically saves named tensors as safetensors. Serialised here rather than by the
/// safetensors crate's own writer, whose temporary file would give the result mode 0600
/// instead of what the user's umask allows.
pub fn save_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter(), None).map_err(|e| Error::Weights {
        path: path.into(),
        message: format!("cannot serialise tensors ({e})"),
    })?;
    write_bytes(path, &bytes)
}

/// `path` made absolute, for provenance that must still point at the file from another working
/// directory: canonical where it exists, else joined to the working directory (as given if
/// even that fails).
pub fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// The process's peak resident memory (`VmHWM`), where the system reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The zip archive at `path` (a PyTorch `.bin`, a NumPy `.npz`), `what` naming the kind in
/// the error a truncated or foreign file gives.
pub fn open_zip(
    path: &Path,
    what: &str,
) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| Error::Weights {
        path: path.into(),
        message: format!(
            "truncated or not a {what} ({e}); the download was probably cut short: download it \
             again"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let r = write_atomic(&path, |tmp| {
            std::fs::write(tmp, b"partial").unwrap();
            Err(Error::Input("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_bytes(&path, b"ok").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ok");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_folder_is_a_clear_error() {
        let msg = create_dir(Path::new("/proc/no-such-dir/x"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot create output folder"), "{msg}");
    }
}
