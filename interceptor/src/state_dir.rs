//! The state directory holds every workload's recorded requests: it is
//! root's alone (0700, files 0600) whatever the umask or an earlier version
//! left behind, and one that another user owns or can write is refused.
use anyhow::{Context, Result, bail};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub fn secure(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
            // `recursive` applies the mode to the last component only when
            // the umask allows it: set it explicitly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("stat {}", dir.display())),
        Ok(m) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if !m.is_dir() {
                bail!(
                    "state directory {} is not a directory (a symlink?)",
                    dir.display()
                );
            }
            if m.uid() != me || m.mode() & 0o022 != 0 {
                bail!(
                    "state directory {} is owned by uid {} with mode {:o}: another user could read or replace the records; \
                     give it to root with mode 0700 (chown root: {0}; chmod 0700 {0}) or use another state_dir",
                    dir.display(),
                    m.uid(),
                    m.mode() & 0o7777
                );
            }
            if m.mode() & 0o077 != 0 {
                tracing::warn!(dir = %dir.display(), mode = format!("{:o}", m.mode() & 0o7777), "state directory was readable by others; made it 0700 and its files 0600");
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    tighten_files(dir)
}

/// Files an earlier version created 0644 become 0600 (directories 0700).
fn tighten_files(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if m.mode() & 0o077 != 0 {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(want))?;
        }
        if m.is_dir() {
            tighten_files(&e.path())?;
        }
    }
    Ok(())
}
