//! bpffs layout:
//!
//! ```text
//! <bpffs_dir>/v<LAYOUT_VERSION>/maps/<MAP>                  shared state
//! <bpffs_dir>/v<LAYOUT_VERSION>/links/<cgroup id>/<prog>-<generation>
//! ```
//! The version keeps an upgraded daemon from reusing maps of another layout;
//! links of every version are found (and replaced) on start.
use anyhow::{Context, Result, bail};
use aya::programs::links::PinnedLink;
use interceptor_common::LAYOUT_VERSION;
use std::path::{Path, PathBuf};

pub struct Layout {
    base: PathBuf,
    root: PathBuf,
}

impl Layout {
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_path_buf(),
            root: base.join(format!("v{LAYOUT_VERSION}")),
        }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// The link directory of one cgroup, named by its id so a re-created
    /// cgroup of the same name does not inherit a dead link's pins.
    pub fn links_for(&self, cgroup_id: u64) -> Result<PathBuf> {
        let dir = self.root.join("links").join(cgroup_id.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The pinned links of one cgroup id in this layout.
    pub fn links_of(&self, cgroup_id: u64) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.join("links").join(cgroup_id.to_string()))
            .map(|it| it.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Every pinned link of every layout version under the base directory.
    pub fn existing_links(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for version in read_dirs(&self.base) {
            for cg in read_dirs(&version.join("links")) {
                if let Ok(entries) = std::fs::read_dir(&cg) {
                    out.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
        out
    }
}

fn read_dirs(p: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(p)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Unpins a link; with no other holder the kernel detaches it.
pub fn remove_link(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            link.unpin().context("unpinning")?;
        }
        // Not a link (or unreadable): remove the file all the same.
        Err(_) => std::fs::remove_file(path)?,
    }
    Ok(())
}

/// Drops empty link directories (cgroups no longer covered, old layouts).
pub fn remove_empty_dirs(layout: &Layout) {
    for version in read_dirs(&layout.base) {
        for cg in read_dirs(&version.join("links")) {
            let _ = std::fs::remove_dir(&cg);
        }
        let _ = std::fs::remove_dir(version.join("links"));
        if version != layout.root {
            // An old layout's maps are used by no program any more.
            for m in std::fs::read_dir(version.join("maps"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_file(m.path());
            }
            let _ = std::fs::remove_dir(version.join("maps"));
            let _ = std::fs::remove_dir(&version);
        }
    }
}

/// `interceptor detach`: remove every hook and the shared maps. Connects from
/// the workload then go direct again; this is the explicit way out.
pub fn detach_all(base: &Path) -> Result<usize> {
    let layout = Layout::new(base);
    let links = layout.existing_links();
    let n = links.len();
    for l in links {
        remove_link(&l).with_context(|| format!("removing {}", l.display()))?;
    }
    for version in read_dirs(base) {
        for m in std::fs::read_dir(version.join("maps"))
            .into_iter()
            .flatten()
            .flatten()
        {
            std::fs::remove_file(m.path())?;
        }
        let _ = std::fs::remove_dir(version.join("maps"));
        for cg in read_dirs(&version.join("links")) {
            let _ = std::fs::remove_dir(&cg);
        }
        let _ = std::fs::remove_dir(version.join("links"));
        let _ = std::fs::remove_dir(&version);
    }
    let _ = std::fs::remove_dir(base);
    Ok(n)
}

/// bpffs must hold `dir`; mount it at /sys/fs/bpf when it is missing there
/// (it is not mounted on every host).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let bpf_mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "bpf" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect();
    if bpf_mounts.iter().any(|m| dir.starts_with(m)) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !dir.starts_with(default) {
        bail!(
            "{} is not on a bpffs mount; mount one (mount -t bpf bpf DIR) or use a directory under /sys/fs/bpf",
            dir.display()
        );
    }
    std::fs::create_dir_all(default)?;
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs at /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}
