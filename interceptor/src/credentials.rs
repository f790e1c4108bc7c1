//! Secrets the proxy injects and the skill never sees.
//!
//! Sources: `file:NAME` (under the credentials directory, or an absolute
//! path), `systemd:NAME` (`$CREDENTIALS_DIRECTORY/NAME`, from systemd's
//! `LoadCredential=`), `env:VAR` (the daemon's environment). Files are
//! re-read when their modification time or size changes. Values live in
//! zeroizing memory and are never logged, recorded or put in errors.
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

pub type Secret = Arc<Zeroizing<String>>;

pub struct Credentials {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    /// (mtime ns, size, inode) of the file it came from; `None` for env.
    stamp: Option<(i64, u64, u64)>,
    value: Secret,
}

impl Credentials {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The current value of a source. Errors name the source, not the value.
    pub fn get(&self, source: &str) -> Result<Secret> {
        let (kind, name) = source
            .split_once(':')
            .context("malformed credential source")?;
        match kind {
            "env" => {
                if let Some(c) = self.cache.lock().unwrap().get(source) {
                    return Ok(c.value.clone());
                }
                let v = std::env::var(name)
                    .with_context(|| format!("environment variable {name} is not set"))?;
                let value: Secret = Arc::new(Zeroizing::new(v));
                self.cache.lock().unwrap().insert(
                    source.into(),
                    Cached {
                        stamp: None,
                        value: value.clone(),
                    },
                );
                Ok(value)
            }
            "file" => self.file(source, &self.path_of(name)),
            "systemd" => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").context(
                    "CREDENTIALS_DIRECTORY is not set (no LoadCredential= in the unit?)",
                )?;
                if name.contains('/') {
                    bail!("systemd credential names cannot contain '/'");
                }
                self.file(source, &Path::new(&dir).join(name))
            }
            other => bail!("unknown credential source kind {other:?}"),
        }
    }

    fn path_of(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn file(&self, source: &str, path: &Path) -> Result<Secret> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("credential file {}", path.display()))?;
        let stamp = Some((
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.size(),
            meta.ino(),
        ));
        if let Some(c) = self.cache.lock().unwrap().get(source)
            && c.stamp == stamp
        {
            return Ok(c.value.clone());
        }
        let raw = Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading credential file {}", path.display()))?,
        );
        let text = std::str::from_utf8(&raw)
            .with_context(|| format!("credential file {} is not UTF-8", path.display()))?;
        // One trailing newline is how editors and `echo` write files.
        let value = text.strip_suffix('\n').unwrap_or(text);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            bail!("credential file {} is empty", path.display());
        }
        if value.contains(['\r', '\n']) {
            bail!("credential file {} has more than one line", path.display());
        }
        let value: Secret = Arc::new(Zeroizing::new(value.to_string()));
        self.cache.lock().unwrap().insert(
            source.into(),
            Cached {
                stamp,
                value: value.clone(),
            },
        );
        tracing::info!(source, "credential loaded");
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_reload_when_they_change() {
        let dir = std::env::temp_dir().join(format!("icpt-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gh"), "first\n").unwrap();
        let c = Credentials::new(dir.clone());
        assert_eq!(c.get("file:gh").unwrap().as_str(), "first");
        std::fs::write(dir.join("gh"), "second-longer").unwrap();
        assert_eq!(c.get("file:gh").unwrap().as_str(), "second-longer");
        std::fs::write(dir.join("multi"), "a\nb\n").unwrap();
        let e = c.get("file:multi").unwrap_err().to_string();
        assert!(
            e.contains("more than one line") && !e.contains("a\nb"),
            "{e}"
        );
        assert!(
            c.get("file:missing")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("ICPT_TEST_SECRET", "s3cret") };
        assert_eq!(c.get("env:ICPT_TEST_SECRET").unwrap().as_str(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
