//! Secrets the proxy injects and the skill never sees.
//!
//! Sources: `file:NAME` (under the credentials directory, or an absolute
//! path), `systemd:NAME` (`$CREDENTIALS_DIRECTORY/NAME`, from systemd's
//! `LoadCredential=`), `env:VAR` (the daemon's environment). Files are
//! re-read when their modification time, size or inode changes. Values
//! live in zeroizing memory and are never logged, recorded or put in
//! errors.
//!
//! A file is not looked at on every request (a `stat` was ~8 µs of each):
//! the directories it lives in (its own, and its target's when it is a
//! symlink) are watched with inotify, and a cached value is used until
//! something happens in one of them, or for at most `RECHECK` without
//! events (file systems that send none: NFS, FUSE). Without inotify
//! (watches exhausted), every request looks, as before.
use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

pub type Secret = Arc<Zeroizing<String>>;

/// The longest a watched file's cached value is used without a look.
const RECHECK: Duration = Duration::from_secs(1);

pub struct Credentials {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Cached>>,
    watch: Option<Watch>,
}

struct Cached {
    /// (mtime ns, size, inode) of the file it came from; `None` for env.
    stamp: Option<(i64, u64, u64)>,
    value: Secret,
    /// When the file was last looked at, with the watch's generation then;
    /// `None` when its directories are not watched.
    checked: Option<(Instant, u64)>,
}

/// Directories under inotify; `generation` counts everything that
/// happened in any of them (and the watcher's own errors, such as a
/// queue overflow).
struct Watch {
    watcher: Mutex<notify::RecommendedWatcher>,
    dirs: Mutex<HashSet<PathBuf>>,
    generation: Arc<AtomicU64>,
}

impl Watch {
    fn new() -> Result<Watch> {
        let generation = Arc::new(AtomicU64::new(0));
        let bump = generation.clone();
        let watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            bump.fetch_add(1, Ordering::SeqCst);
        })?;
        Ok(Watch {
            watcher: Mutex::new(watcher),
            dirs: Mutex::new(HashSet::new()),
            generation,
        })
    }

    /// Watches the directories `path` depends on; false when one of them
    /// cannot be watched.
    fn cover(&self, path: &Path) -> bool {
        use notify::Watcher;
        let target = std::fs::canonicalize(path).ok();
        let dirs = [Some(path), target.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(Path::parent);
        let mut watched = self.dirs.lock().unwrap();
        let mut ok = true;
        for dir in dirs {
            if watched.contains(dir) {
                continue;
            }
            match self
                .watcher
                .lock()
                .unwrap()
                .watch(dir, notify::RecursiveMode::NonRecursive)
            {
                Ok(()) => {
                    watched.insert(dir.to_path_buf());
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a credential directory; its files are looked at on every request");
                    ok = false;
                }
            }
        }
        ok
    }
}

/// The credentials of `policy` whose sources cannot be read now, each
/// with why (the error names the source, never a value): a request that
/// injects one gets a 502 until it can be.
pub fn unreadable(
    policy: &crate::policy::Policy,
    creds: &Credentials,
) -> Vec<(String, String, String)> {
    policy
        .credentials
        .values()
        .filter_map(|c| {
            let e = creds.get(&c.source).err()?;
            Some((c.name.clone(), c.source.clone(), format!("{e:#}")))
        })
        .collect()
}

impl Credentials {
    pub fn new(dir: PathBuf) -> Self {
        let watch = Watch::new()
            .inspect_err(|e| tracing::warn!(error = %e, "no inotify for credential files; they are looked at on every request"))
            .ok();
        Self {
            dir,
            cache: Mutex::new(HashMap::new()),
            watch,
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
                        checked: None,
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
        if let Some(w) = &self.watch
            && let Some(c) = self.cache.lock().unwrap().get(source)
            && let Some((at, seen)) = c.checked
            && seen == w.generation.load(Ordering::SeqCst)
            && at.elapsed() < RECHECK
        {
            return Ok(c.value.clone());
        }
        // Watched before the look, and the generation read before it too:
        // a change after the look is an event that bumps the generation
        // past the one cached, so the next request looks again.
        let watched = self.watch.as_ref().is_some_and(|w| w.cover(path));
        let generation = self
            .watch
            .as_ref()
            .filter(|_| watched)
            .map(|w| w.generation.load(Ordering::SeqCst));
        let meta = std::fs::metadata(path)
            .with_context(|| format!("credential file {}", path.display()))?;
        let stamp = Some((
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.size(),
            meta.ino(),
        ));
        if let Some(c) = self.cache.lock().unwrap().get_mut(source)
            && c.stamp == stamp
        {
            c.checked = generation.map(|g| (Instant::now(), g));
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
                checked: generation.map(|g| (Instant::now(), g)),
            },
        );
        tracing::info!(source, "credential loaded");
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The new value is served well before `RECHECK` (so it was the watch
    /// that told, not the periodic look); inotify is asynchronous, so not
    /// necessarily on the very next request.
    fn seen_soon(c: &Credentials, source: &str, want: &str) {
        let deadline = Instant::now() + RECHECK / 2;
        loop {
            let got = c.get(source).unwrap();
            if got.as_str() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{source} still {:?} after {:?}",
                got.as_str(),
                RECHECK / 2
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn watched_files_are_served_from_the_cache_until_they_change() {
        let dir = std::env::temp_dir().join(format!("icpt-cred-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("api"), "one\n").unwrap();
        let c = Credentials::new(dir.clone());
        assert!(c.watch.is_some(), "inotify is available here");
        assert_eq!(c.get("file:api").unwrap().as_str(), "one");
        assert!(c.cache.lock().unwrap()["file:api"].checked.is_some());
        // Written in place.
        std::fs::write(dir.join("api"), "two\n").unwrap();
        seen_soon(&c, "file:api", "two");
        // Replaced by a rename, as editors and config tools do.
        std::fs::write(dir.join(".api.tmp"), "three\n").unwrap();
        std::fs::rename(dir.join(".api.tmp"), dir.join("api")).unwrap();
        seen_soon(&c, "file:api", "three");
        // A symlink into another directory (Kubernetes' projected
        // volumes): a change there is seen too.
        std::fs::write(dir.join("real/key"), "four\n").unwrap();
        std::os::unix::fs::symlink(dir.join("real/key"), dir.join("linked")).unwrap();
        assert_eq!(c.get("file:linked").unwrap().as_str(), "four");
        std::fs::write(dir.join("real/key"), "five-longer\n").unwrap();
        seen_soon(&c, "file:linked", "five-longer");
        // Removed: an error, not the old value.
        std::fs::remove_file(dir.join("api")).unwrap();
        let deadline = Instant::now() + RECHECK / 2;
        while c.get("file:api").is_ok() {
            assert!(Instant::now() < deadline, "a removed file still served");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_reload_when_they_change() {
        let dir = std::env::temp_dir().join(format!("icpt-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gh"), "first\n").unwrap();
        let c = Credentials::new(dir.clone());
        assert_eq!(c.get("file:gh").unwrap().as_str(), "first");
        std::fs::write(dir.join("gh"), "second-longer").unwrap();
        seen_soon(&c, "file:gh", "second-longer");
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
