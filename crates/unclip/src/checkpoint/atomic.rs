//! Writes that are either complete or absent: data goes to a temporary sibling and is renamed
//! into place, so a crash or a full disk never destroys what was saved before.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

fn temporary_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    path.with_file_name(format!(".{name}.{tag}-{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Runs `write` on a temporary path beside `path`, then renames it over `path`.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temporary_sibling(path, "write");
    if let Err(err) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    readable_by_all(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Some writers (the safetensors crate) create files readable by their owner only; a model
/// folder is meant to be shared, so files get the usual rw-r--r--.
#[cfg(unix)]
fn readable_by_all(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn readable_by_all(_: &Path) -> Result<()> {
    Ok(())
}

/// Builds a directory with `fill` under a temporary name and swaps it in place of `dir`.
/// If `dir` existed it is replaced only after the new one is complete.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let staging = temporary_sibling(dir, "new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    if let Err(err) = fill(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(err);
    }
    if dir.exists() {
        let old = temporary_sibling(dir, "old");
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&staging, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("unclip-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weights.bin");
        write_atomic(&path, b"old").unwrap();
        let failed = write_atomic_with(&path, |_| Err(Error::InvalidInput("disk full".into())));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "saved files are readable by all");
        }
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        let sub = dir.join("ckpt");
        replace_dir(&sub, |d| write_atomic(&d.join("a"), b"1")).unwrap();
        assert!(replace_dir(&sub, |_| Err(Error::InvalidInput("x".into()))).is_err());
        assert_eq!(std::fs::read(sub.join("a")).unwrap(), b"1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
