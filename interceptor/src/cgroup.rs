//! cgroup v2 lookups: where the hierarchy is mounted, which cgroups are
//! workloads, and which cgroup a kernel cgroup id names.
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mount point of the cgroup2 hierarchy, read from /proc/self/mountinfo
/// (it is /sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    find_mount(&info, "cgroup2").context(
        "no cgroup2 filesystem is mounted (see /proc/self/mountinfo); \
         interceptor needs the unified cgroup hierarchy (cgroup v2)",
    )
}

/// Mount point of the first filesystem of type `fstype` in mountinfo text.
pub fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mounts_of(mountinfo, fstype).into_iter().next()
}

/// Mount points of every filesystem of type `fstype` in mountinfo text.
pub fn mounts_of(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mounts(mountinfo)
        .filter(|(_, t)| *t == fstype)
        .map(|(point, _)| point)
        .collect()
}

/// Every mount in mountinfo text: (mount point, filesystem type), in order.
pub fn mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str)> {
    // Format (proc(5)): id parent maj:min root mountpoint opts [optional...] - fstype source superopts
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let point = left.split_whitespace().nth(4)?;
        Some((PathBuf::from(unescape_octal(point)), fstype))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A configured workload cgroup.
#[derive(Clone, Debug)]
pub struct WorkloadCgroup {
    /// Path relative to the cgroup2 mount, without leading slash ("skills.slice").
    pub rel: String,
    pub abs: PathBuf,
}

/// The configured cgroup's path under the mount (it is given relative to the
/// mount, or absolute under it); no `..`.
fn absolute(mount: &Path, spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    let abs = if p.is_absolute() {
        if !p.starts_with(mount) {
            bail!(
                "cgroup {spec} is not under the cgroup2 mount {}; give it relative to that mount",
                mount.display()
            );
        }
        p.to_path_buf()
    } else {
        mount.join(spec.trim_start_matches('/'))
    };
    if abs
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("cgroup {spec}: '..' is not allowed");
    }
    Ok(abs)
}

/// Resolves a configured cgroup (relative to the mount, or absolute under it).
pub fn resolve(mount: &Path, spec: &str) -> Result<WorkloadCgroup> {
    let abs = absolute(mount, spec)?;
    if !abs.join("cgroup.procs").is_file() {
        bail!(
            "cgroup {spec} does not exist ({} has no cgroup.procs); create it \
             (mkdir {}) or start its systemd slice first",
            abs.display(),
            abs.display()
        );
    }
    let rel = abs
        .strip_prefix(mount)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Ok(WorkloadCgroup { rel, abs })
}

/// `interceptor prepare-cgroups` (the unit's `ExecStartPre=+`): under
/// systemd the daemon starts before skills.slice (the unit orders
/// `Before=skills.slice`, so no skill runs unintercepted at boot), so the
/// slice's cgroup does not exist yet. Missing `*.slice` directories are
/// created empty, with the name systemd gives them; systemd adopts an
/// existing directory when the slice starts. Anything else that is missing
/// stays an error at `run`: a typo must not silently attach to an empty cgroup.
pub fn create_missing_slices(mount: &Path, spec: &str) -> Result<()> {
    let abs = absolute(mount, spec)?;
    let rel = abs.strip_prefix(mount).unwrap();
    let mut dir = mount.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        if dir.exists() {
            continue;
        }
        if !c.as_os_str().to_string_lossy().ends_with(".slice") {
            return Ok(());
        }
        match std::fs::create_dir(&dir) {
            // Printed: the CLI has no log subscriber; systemd journals stdout.
            Ok(()) => println!("created {} ahead of systemd's slice", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    Ok(())
}

/// The cgroup (relative path) of a process, from /proc/PID/cgroup ("0::/path").
pub fn cgroup_of(pid: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    v2_path(&text).context("process has no cgroup v2 entry")
}

/// The cgroup v2 path (the `0::` line) of /proc/PID/cgroup text, relative
/// to the mount.
pub fn v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

/// True when `inner` is `outer` or below it (both relative paths).
pub fn is_within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Maps the kernel's cgroup id (the inode number of the cgroup directory) to
/// the cgroup's path, by walking the workload subtrees. Cached; a miss walks
/// again, because cgroups come and go.
pub struct CgroupNames {
    mount: PathBuf,
    roots: Vec<PathBuf>,
    cache: Mutex<HashMap<u64, String>>,
}

impl CgroupNames {
    pub fn new(mount: PathBuf, roots: Vec<PathBuf>) -> Self {
        Self {
            mount,
            roots,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self, id: u64) -> Option<String> {
        if let Some(n) = self.cache.lock().unwrap().get(&id) {
            return Some(n.clone());
        }
        let mut found = HashMap::new();
        for root in &self.roots {
            walk(root, &mut |dir, ino| {
                let rel = dir.strip_prefix(&self.mount).unwrap_or(dir);
                found.insert(ino, rel.to_string_lossy().into_owned());
            });
        }
        let mut cache = self.cache.lock().unwrap();
        // Replace rather than extend: ids of removed cgroups must not linger.
        *cache = found;
        cache.get(&id).cloned()
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    f(dir, meta.ino());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let info = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
41 33 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 33 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            find_mount(info, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_mount(info, "bpf"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let info = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            find_mount(info, "cgroup2"),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn creates_missing_slices_only() {
        let mount = std::env::temp_dir().join(format!("interceptor-slices-{}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        create_missing_slices(&mount, "skills.slice/skills-team.slice").unwrap();
        assert!(mount.join("skills.slice/skills-team.slice").is_dir());
        // A missing non-slice component (a typo, a cgroup nobody made) is left
        // alone, and nothing below it is created either.
        create_missing_slices(&mount, "skils/x.slice").unwrap();
        assert!(!mount.join("skils").exists());
        assert!(create_missing_slices(&mount, "../x.slice").is_err());
        create_missing_slices(&mount, "other.service").unwrap();
        let err = resolve(&mount, "other.service").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!mount.join("other.service").exists());
        std::fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn within() {
        assert!(is_within("skills.slice/a.service", "skills.slice"));
        assert!(is_within("skills.slice", "skills.slice"));
        assert!(!is_within("skills.slice2", "skills.slice"));
        assert!(is_within("anything", ""));
    }
}
