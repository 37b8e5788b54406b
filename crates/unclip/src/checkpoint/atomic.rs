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
///
/// The rename replaces a directory entry, so what is at `path` decides where the bytes go: a
/// symbolic link is followed (its target is rewritten, the link kept), a device or pipe is written
/// in place (renaming over `/dev/null` would replace the device), and an existing file keeps its
/// permissions. Errors name `path`, never the temporary file, which is removed on failure.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let target = follow_links(path)?;
    let existing = std::fs::metadata(&target).ok();
    if let Some(meta) = &existing {
        if meta.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is a folder; allowed: a file name (a new one, or a file to replace)",
                path.display()
            )));
        }
        if !meta.is_file() {
            return write(&target).map_err(|err| renamed(err, &target, path));
        }
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temporary_sibling(&target, "write");
    let written = write(&tmp)
        .and_then(|()| match &existing {
            Some(meta) => {
                std::fs::set_permissions(&tmp, meta.permissions()).map_err(|e| Error::io(&tmp, e))
            }
            None => readable_by_all(&tmp),
        })
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| Error::io(&tmp, e)));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(renamed(err, &tmp, path));
    }
    Ok(())
}

/// The file a path finally names: symbolic links followed, also when the last one dangles.
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current).map_err(|e| Error::io(&current, e))?;
                current = match current.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(Error::InvalidInput(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// An I/O error about `from` (an internal name) restated about `to` (the name the user gave).
fn renamed(err: Error, from: &Path, to: &Path) -> Error {
    match err {
        Error::Io { path, cause } if path == from => Error::Io {
            path: to.to_path_buf(),
            cause,
        },
        other => other,
    }
}

/// Some writers (the safetensors crate) create files readable by their owner only; a model
/// folder is meant to be shared, so new files get the usual rw-r--r--.
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
    if dir.exists() && !dir.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} exists and is not a folder; allowed: a new folder name, or a folder to replace",
            dir.display()
        )));
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

    #[cfg(unix)]
    #[test]
    fn links_are_followed_modes_kept_and_errors_name_the_given_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("unclip-atomic-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A link: the target is rewritten, the link stays a link.
        let target = dir.join("real.png");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.join("link.png");
        std::os::unix::fs::symlink("real.png", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // An existing file keeps its mode.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&target, b"newer").unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A folder is refused; a path under a file fails naming that path, leaving nothing.
        let err = write_atomic(&dir, b"x").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let under_file = target.join("x.png");
        let err = write_atomic(&under_file, b"x").unwrap_err().to_string();
        assert!(err.contains("real.png"), "{err}");
        assert!(!err.contains(".tmp"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the file and the link remain: {names:?}"
        );
        // replace_dir refuses to put a folder where a file is.
        let err = replace_dir(&target, |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
