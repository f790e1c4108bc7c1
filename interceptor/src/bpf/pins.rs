//! bpffs layout, private to root:
//!
//! ```text
//! <bpffs_dir>/v<LAYOUT_VERSION>/maps/<MAP>            shared state
//! <bpffs_dir>/v<LAYOUT_VERSION>/links/<cgroup id>/<prog>
//! ```
//! The pins are the only thing that keeps the hooks attached while no
//! daemon runs, so whoever can write this tree can detach them. Every
//! directory in it is created by the daemon (root, 0700), an existing one
//! owned by someone else or writable by group/others is refused, and every
//! path below `bpffs_dir` is reached through directory fds opened with
//! `O_NOFOLLOW`: no symlink is ever followed, in any command. bpf(2) takes
//! paths, so pins are named as `/proc/self/fd/<dir fd>/<name>` (the dir fd
//! is already resolved; BPF_F_PATH_FD needs kernel 6.5, the floor is 6.1).
use anyhow::{Context, Result, bail};
use interceptor_common::LAYOUT_VERSION;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A directory of the pin tree, held open.
pub struct PinDir {
    fd: OwnedFd,
    /// For messages only; never opened by name again.
    path: PathBuf,
}

impl PinDir {
    /// The path bpf(2) and readdir resolve to this very directory.
    fn via_fd(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Path for BPF_OBJ_PIN / BPF_OBJ_GET of `name` in this directory.
    pub fn entry(&self, name: &str) -> PathBuf {
        self.via_fd().join(name)
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// A subdirectory, checked like the root; created (0700) when `create`.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Option<PinDir>> {
        open_checked(&self.fd, &self.path.join(name), name, create)
    }

    /// Names of the entries, with whether each is a directory (lstat: a
    /// symlink is reported as not a directory and never followed).
    pub fn entries(&self) -> Vec<(String, bool)> {
        std::fs::read_dir(self.via_fd())
            .map(|it| {
                it.flatten()
                    .filter_map(|e| {
                        let dir = e.file_type().ok()?.is_dir();
                        Some((e.file_name().to_str()?.to_string(), dir))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// unlinkat(2) relative to this directory (a symlink is removed itself).
    pub fn unlink(&self, name: &str) -> std::io::Result<()> {
        unlinkat(&self.fd, name, 0)
    }

    pub fn rmdir(&self, name: &str) -> std::io::Result<()> {
        unlinkat(&self.fd, name, libc::AT_REMOVEDIR)
    }
}

fn cstr(name: &str) -> std::io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn unlinkat(dir: &OwnedFd, name: &str, flags: i32) -> std::io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: the fds are open (borrowed from owners alive here), the names are NUL-terminated CStrings alive for the call, and out-pointers point to live locals.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn openat_dir(dir: libc::c_int, name: &CString) -> std::io::Result<OwnedFd> {
    // SAFETY: the fds are open (borrowed from owners alive here), the names are NUL-terminated CStrings alive for the call, and out-pointers point to live locals.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid, empty value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the fds are open (borrowed from owners alive here), the names are NUL-terminated CStrings alive for the call, and out-pointers point to live locals.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens (or creates, 0700) `name` under `parent` without following a
/// symlink, and refuses it unless root owns it and nobody else can write it.
fn open_checked(parent: &OwnedFd, path: &Path, name: &str, create: bool) -> Result<Option<PinDir>> {
    let c = cstr(name).with_context(|| format!("bad pin directory name {name:?}"))?;
    let fd = match openat_dir(parent.as_raw_fd(), &c) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
            // SAFETY: the fds are open (borrowed from owners alive here), the names are NUL-terminated CStrings alive for the call, and out-pointers point to live locals.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
            openat_dir(parent.as_raw_fd(), &c)
                .with_context(|| format!("opening {}", path.display()))?
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            bail!(
                "{} is a symlink or not a directory: refusing to use a pin directory someone else may control; remove it as root and start again",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let st = fstat(&fd).with_context(|| format!("stat {}", path.display()))?;
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        bail!(
            "{} is owned by uid {} with mode {:o}: the pin tree must be root's alone (a user who can write it can detach every hook); refusing to reuse it. Remove it as root (rm -r {}) and start again",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777,
            path.display()
        );
    }
    // Tightened only by the daemon (which creates); readers change nothing.
    // SAFETY: the fds are open (borrowed from owners alive here), the names are NUL-terminated CStrings alive for the call, and out-pointers point to live locals.
    if create && st.st_mode & 0o077 != 0 && unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("chmod 0700 {}", path.display()));
    }
    Ok(Some(PinDir {
        fd,
        path: path.to_path_buf(),
    }))
}

/// Opens `base` from `/` one component at a time with `O_NOFOLLOW`. The
/// ancestors must be root's and not writable by group or others unless
/// sticky (a bpffs mounted without `mode=` is 1777); `base` itself is checked (and
/// created when `create`) as a pin directory.
pub fn open_base(base: &Path, create: bool) -> Result<Option<PinDir>> {
    if !base.is_absolute() {
        bail!("bpffs_dir {} must be an absolute path", base.display());
    }
    let names: Vec<&std::ffi::OsStr> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir => None,
            _ => Some(Err(())),
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("bpffs_dir {} must not contain . or ..", base.display()))?;
    let Some((last, ancestors)) = names.split_last() else {
        bail!("bpffs_dir cannot be /");
    };
    let mut dir = openat_dir(libc::AT_FDCWD, &CString::new("/").unwrap())?;
    let mut path = PathBuf::from("/");
    for n in ancestors {
        path.push(n);
        let c = CString::new(n.as_bytes())?;
        dir = match openat_dir(dir.as_raw_fd(), &c) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "opening {} (the path to bpffs_dir must not go through a symlink)",
                        path.display()
                    )
                });
            }
        };
        let st = fstat(&dir)?;
        let sticky = st.st_mode & libc::S_ISVTX != 0;
        if st.st_uid != 0 || (st.st_mode & 0o022 != 0 && !sticky) {
            bail!(
                "{} (above bpffs_dir) is owned by uid {} with mode {:o}: another user could replace the pin tree",
                path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            );
        }
    }
    let name = last
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("bpffs_dir {} is not UTF-8", base.display()))?;
    open_checked(&dir, base, name, create)
}

/// This layout's directories under an open base.
pub struct Layout {
    pub base: PinDir,
    pub maps: PinDir,
    pub links: PinDir,
}

pub fn version_dir() -> String {
    format!("v{LAYOUT_VERSION}")
}

impl Layout {
    /// Creates what is missing (the daemon).
    pub fn create(base: &Path) -> Result<Layout> {
        let base = open_base(base, true)?.expect("created");
        let root = base.subdir(&version_dir(), true)?.expect("created");
        let maps = root.subdir("maps", true)?.expect("created");
        let links = root.subdir("links", true)?.expect("created");
        Ok(Layout { base, maps, links })
    }

    /// The link directory of one cgroup, named by its id so a re-created
    /// cgroup of the same name does not inherit a dead link's pins.
    pub fn links_for(&self, cgroup_id: u64) -> Result<PinDir> {
        Ok(self
            .links
            .subdir(&cgroup_id.to_string(), true)?
            .expect("created"))
    }
}

/// The link directories of every layout under `base`, opened and checked.
pub fn link_dirs(base: &PinDir) -> Result<Vec<(String, u64, PinDir)>> {
    let mut out = Vec::new();
    for (version, is_dir) in base.entries() {
        if !is_dir || !version.starts_with('v') {
            continue;
        }
        let Some(vdir) = base.subdir(&version, false)? else {
            continue;
        };
        let Some(links) = vdir.subdir("links", false)? else {
            continue;
        };
        for (cg, is_dir) in links.entries() {
            let Ok(id) = cg.parse::<u64>() else { continue };
            if !is_dir {
                continue;
            }
            if let Some(d) = links.subdir(&cg, false)? {
                out.push((version.clone(), id, d));
            }
        }
    }
    Ok(out)
}

/// Checks every directory of the tree under `base` without changing it
/// (`interceptor doctor`): false when there is none yet.
pub fn check_tree(base_path: &Path) -> Result<bool> {
    let Some(base) = open_base(base_path, false)? else {
        return Ok(false);
    };
    for (version, is_dir) in base.entries() {
        if !is_dir {
            continue;
        }
        if let Some(vdir) = base.subdir(&version, false)? {
            vdir.subdir("maps", false)?;
        }
    }
    link_dirs(&base)?;
    Ok(true)
}

/// Removes empty link directories and the maps and directories of layouts
/// other than this one (no program uses them any more).
pub fn remove_stale(base: &PinDir) -> Result<()> {
    for (version, is_dir) in base.entries() {
        if !is_dir || !version.starts_with('v') {
            continue;
        }
        let Some(vdir) = base.subdir(&version, false)? else {
            continue;
        };
        if let Some(links) = vdir.subdir("links", false)? {
            for (cg, is_dir) in links.entries() {
                if is_dir {
                    let _ = links.rmdir(&cg);
                }
            }
        }
        if version != version_dir() {
            let _ = vdir.rmdir("links");
            if let Some(maps) = vdir.subdir("maps", false)? {
                for (m, _) in maps.entries() {
                    let _ = maps.unlink(&m);
                }
            }
            let _ = vdir.rmdir("maps");
            let _ = base.rmdir(&version);
        }
    }
    Ok(())
}

/// Removes everything the daemon pinned under `base` and `base` itself:
/// links (detached first, so a process holding one cannot keep it), maps,
/// directories. Returns how many links were removed.
pub fn remove_all(base_path: &Path) -> Result<usize> {
    let Some(base) = open_base(base_path, false)? else {
        return Ok(0);
    };
    let mut n = 0;
    for (_, _, dir) in link_dirs(&base)? {
        for (name, _) in dir.entries() {
            if let Ok(fd) = super::sys::obj_get(&dir.entry(&name)) {
                use std::os::fd::AsFd;
                let _ = super::sys::link_detach(fd.as_fd());
            }
            dir.unlink(&name)
                .with_context(|| format!("removing {}/{name}", dir.display()))?;
            n += 1;
        }
    }
    for (version, is_dir) in base.entries() {
        if !is_dir {
            continue;
        }
        if let Some(vdir) = base.subdir(&version, false)? {
            if let Some(maps) = vdir.subdir("maps", false)? {
                for (m, _) in maps.entries() {
                    maps.unlink(&m)
                        .with_context(|| format!("removing {}/{m}", maps.display()))?;
                }
            }
            let _ = vdir.rmdir("maps");
            if let Some(links) = vdir.subdir("links", false)? {
                for (cg, _) in links.entries() {
                    let _ = links.rmdir(&cg);
                }
            }
            let _ = vdir.rmdir("links");
        }
        let _ = base.rmdir(&version);
    }
    drop(base);
    let _ = std::fs::remove_dir(base_path);
    Ok(n)
}

/// bpffs must hold `dir`; mount it at /sys/fs/bpf (mode 0700) when it is
/// missing there (it is not mounted on every host).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if crate::cgroup::mounts_of(&mountinfo, "bpf")
        .iter()
        .any(|m| dir.starts_with(m))
    {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !dir.starts_with(default) {
        bail!(
            "{} is not on a bpffs mount; mount one (mount -t bpf -o mode=0700 bpf DIR) or use a directory under /sys/fs/bpf",
            dir.display()
        );
    }
    std::fs::create_dir_all(default)?;
    // mode=0700: a bpffs root of 1777 lets any user plant directories.
    // SAFETY: static NUL-terminated strings and a null data pointer, which mount(2) accepts.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mounting bpffs at /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf (mode 0700)");
    Ok(())
}
