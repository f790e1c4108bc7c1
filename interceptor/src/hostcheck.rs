//! Host preconditions (`interceptor doctor`) and the daemon's periodic
//! shared-uid watch. Every check is a plain function that only reads the
//! host (no mkdir, no mount, no store) and returns findings.
//!
//! The shared-uid scan exists because the kernel hooks cannot stop this: a
//! skill may ptrace or `pidfd_getfd` any process of its own uid, and a
//! process of that uid outside the workload cgroups holds sockets the hooks
//! never saw. Skills must run under uids nothing outside the workload uses.
use crate::cgroup::{self, WorkloadCgroup};
use crate::config::Config;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The oldest kernel the VM suite proves (Debian 12).
const KERNEL_FLOOR: (u32, u32) = (6, 1);
const SKILL_UIDS_FIX: &str = "run skills under uids nothing outside the workload cgroups uses: \
     DynamicUser=yes or a dedicated user per skill unit";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One result of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    /// One line: what was seen.
    pub detail: String,
    /// What to do about it (none when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The process a finding is about (shared uid, root or foreign socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Ok, detail.into(), None)
    }
    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, detail.into(), Some(fix.into()))
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Fail, detail.into(), Some(fix.into()))
    }
    fn new(check: &'static str, status: Status, detail: String, fix: Option<String>) -> Self {
        Finding {
            check,
            status,
            detail,
            fix,
            process: None,
        }
    }
    fn about(mut self, p: &Process) -> Self {
        self.process = Some(p.clone());
        self
    }
}

/// A check that could not be carried out (as opposed to one that failed).
#[derive(Clone, Debug, Serialize)]
pub struct CheckError {
    pub check: &'static str,
    pub error: String,
}

/// Everything `doctor` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<CheckError>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|f| f.status == Status::Fail)
    }
}

/// Runs every check against this host and `cfg`.
pub fn run_all(cfg: &Config) -> Report {
    let mut r = Report::default();
    r.checks.extend(kernel());
    let workloads = match cgroup::cgroup2_mount() {
        Ok(mount) => {
            r.checks.push(Finding::ok(
                "cgroup2",
                format!("mounted at {}", mount.display()),
            ));
            workload_cgroups(&mount, &cfg.cgroups, &mut r.checks)
        }
        Err(e) => {
            r.checks.push(Finding::fail(
                "cgroup2",
                format!("{e:#}"),
                "mount the unified hierarchy (cgroup v2)",
            ));
            Vec::new()
        }
    };
    r.checks.extend(bpffs(&cfg.bpffs_dir));
    r.checks.extend(pin_tree(&cfg.bpffs_dir));
    r.checks.push(ping_group_range());
    r.checks
        .extend(reserved_ports(cfg.listen_port, cfg.admin_listen.port()));
    r.checks.push(ptrace_scope());
    r.checks.push(bpf_lsm(&cfg.bpffs_dir));
    r.checks.push(Finding::ok(
        "sockets",
        format!(
            "workloads may create: {} (everything else fails with EPERM; allow_sockets)",
            crate::config::socket_kind_names(
                cfg.socket_kinds,
                cfg.udp == crate::config::UdpMode::Allow
            )
            .join(", ")
        ),
    ));
    r.checks.extend(hooks(&cfg.bpffs_dir, &workloads));
    match scan_processes(&workloads) {
        Ok(procs) => {
            r.checks.extend(shared_uid_findings(&procs));
            match foreign_socket_findings(&procs, &workloads) {
                Ok(f) => r.checks.extend(f),
                Err(e) => r.checks.push(Finding::warn(
                    "foreign-sockets",
                    format!("could not map sockets to cgroups: {e:#}"),
                    "check that NETLINK_SOCK_DIAG (inet_diag, tcp_diag, udp_diag) is available",
                )),
            }
        }
        Err(e) => r.errors.push(CheckError {
            check: "shared-uid",
            error: format!("{e:#}"),
        }),
    }
    r.ok = !r.failed() && r.errors.is_empty();
    r
}

// ---- kernel ---------------------------------------------------------------

fn kernel() -> Vec<Finding> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version = match parse_kernel_version(release) {
        Some(v) if v >= KERNEL_FLOOR => Finding::ok("kernel", format!("{release} (>= 6.1)")),
        Some(_) => Finding::fail(
            "kernel",
            format!("{release} is older than 6.1, the oldest kernel interceptor is tested on"),
            "run on Linux 6.1 or newer",
        ),
        None => Finding::warn(
            "kernel",
            format!("cannot read the kernel version ({release:?})"),
            "check /proc/sys/kernel/osrelease",
        ),
    };
    let btf = if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Finding::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        Finding::fail(
            "btf",
            "/sys/kernel/btf/vmlinux is missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    };
    vec![version, btf]
}

/// "6.18.44-fc-v769" -> (6, 18).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

// ---- cgroups and hooks ----------------------------------------------------

/// One finding per configured cgroup; returns those that exist.
fn workload_cgroups(mount: &Path, specs: &[String], out: &mut Vec<Finding>) -> Vec<WorkloadCgroup> {
    let mut found = Vec::new();
    for spec in specs {
        match cgroup::resolve(mount, spec) {
            Ok(cg) => {
                out.push(Finding::ok(
                    "workload-cgroup",
                    format!("{} exists", cg.abs.display()),
                ));
                found.push(cg);
            }
            Err(e) => out.push(Finding::fail(
                "workload-cgroup",
                format!("{e:#}"),
                "create the cgroup or start its slice (interceptor prepare-cgroups)",
            )),
        }
    }
    found
}

fn hooks(bpffs_dir: &Path, workloads: &[WorkloadCgroup]) -> Vec<Finding> {
    workloads
        .iter()
        .map(|cg| match crate::bpf::missing_hooks(bpffs_dir, cg) {
            Ok(missing) if missing.is_empty() => {
                Finding::ok("hooks", format!("{}: all hooks attached", cg.rel))
            }
            Ok(missing) => Finding::fail(
                "hooks",
                format!("{}: not attached: {}", cg.rel, missing.join(", ")),
                "start the daemon (interceptor.service / interceptor run)",
            ),
            Err(e) => Finding::fail(
                "hooks",
                format!("{}: cannot read the pinned hooks: {e:#}", cg.rel),
                "start the daemon (interceptor.service / interceptor run)",
            ),
        })
        .collect()
}

// ---- bpffs ----------------------------------------------------------------

/// A mount from /proc/self/mountinfo.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
}

/// The mount whose mount point is the longest prefix of `path` (the one
/// that holds it).
fn mount_holding(mountinfo: &str, path: &Path) -> Option<Mount> {
    cgroup::mounts(mountinfo)
        .filter(|(point, _)| path.starts_with(point))
        .map(|(point, fstype)| Mount {
            point,
            fstype: fstype.to_string(),
        })
        // The last of equally long ones: a later mount hides an earlier one.
        .max_by_key(|m| m.point.components().count())
}

fn bpffs(dir: &Path) -> Vec<Finding> {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(i) => i,
        Err(e) => {
            return vec![Finding::warn(
                "bpffs",
                format!("cannot read /proc/self/mountinfo: {e}"),
                "mount /proc",
            )];
        }
    };
    let Some(m) = mount_holding(&info, dir).filter(|m| m.fstype == "bpf") else {
        return vec![Finding::warn(
            "bpffs",
            format!("no bpf filesystem holds {}", dir.display()),
            "the daemon mounts bpffs at /sys/fs/bpf when it starts; mount it there yourself with mode=0700",
        )];
    };
    match std::fs::metadata(&m.point) {
        Ok(meta) if meta.mode() & 0o022 != 0 => vec![Finding::fail(
            "bpffs",
            format!(
                "bpffs at {} has mode {:o}: anyone may create entries at its root",
                m.point.display(),
                meta.mode() & 0o7777
            ),
            format!(
                "mount it with mode=0700 (chmod 0700 {} for now)",
                m.point.display()
            ),
        )],
        Ok(_) => vec![Finding::ok(
            "bpffs",
            format!("{} is a bpffs, private to root", m.point.display()),
        )],
        Err(e) => vec![Finding::warn(
            "bpffs",
            format!("cannot stat {}: {e}", m.point.display()),
            "run doctor as root",
        )],
    }
}

/// The pins must be reachable only through root-owned real directories
/// nobody else can write: otherwise a workload could swap a component for
/// a symlink or remove the pins. The daemon's own check, run read-only.
fn pin_tree(dir: &Path) -> Vec<Finding> {
    match crate::bpf::check_pin_tree(dir) {
        Ok(true) => vec![Finding::ok(
            "pin-tree",
            format!(
                "{}: root-owned real directories, writable by root only",
                dir.display()
            ),
        )],
        Ok(false) => vec![Finding::warn(
            "pin-tree",
            format!("{} does not exist (daemon not started yet)", dir.display()),
            "start the daemon; it creates the pin tree",
        )],
        Err(e) => vec![Finding::fail(
            "pin-tree",
            format!("{e:#}"),
            format!(
                "make every component of {} a root-owned directory (no symlink) that only root can write",
                dir.display()
            ),
        )],
    }
}

// ---- sysctls and LSMs -----------------------------------------------------

fn ping_group_range() -> Finding {
    let path = "/proc/sys/net/ipv4/ping_group_range";
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match parse_two(&text) {
        Some((lo, hi)) if lo > hi => Finding::ok(
            "ping-group-range",
            format!("{lo} {hi}: no group may create ICMP sockets"),
        ),
        Some((lo, hi)) => Finding::warn(
            "ping-group-range",
            format!(
                "{lo} {hi}: groups {lo}-{hi} may create unprivileged ICMP sockets \
                 (the daemon's sock_create hook refuses them in the workload anyway)"
            ),
            "sysctl -w net.ipv4.ping_group_range='1 0' unless something needs it",
        ),
        None => Finding::warn(
            "ping-group-range",
            format!("cannot read {path}"),
            "check the sysctl net.ipv4.ping_group_range",
        ),
    }
}

/// Two whitespace-separated numbers ("1\t0", "32768\t60999").
fn parse_two(text: &str) -> Option<(u32, u32)> {
    let mut it = text.split_whitespace().map(str::parse::<u32>);
    let pair = (it.next()?.ok()?, it.next()?.ok()?);
    it.next().is_none().then_some(pair)
}

/// A workload may bind (autobind, or connect without bind) any port of the
/// ephemeral range that is not reserved; the proxy's ports must not be one.
fn reserved_ports(proxy: u16, admin: u16) -> Vec<Finding> {
    let range = crate::reserved_ports::ephemeral_range();
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .context("reading ip_local_reserved_ports")
        .and_then(|t| crate::reserved_ports::parse(&t));
    let (range, reserved) = match (range, reserved) {
        (Ok(r), Ok(l)) => (r, l),
        (Err(e), _) | (_, Err(e)) => {
            return vec![Finding::warn(
                "reserved-ports",
                format!("{e:#}"),
                "check the sysctls net.ipv4.ip_local_port_range and ip_local_reserved_ports",
            )];
        }
    };
    [("proxy", proxy), ("admin", admin)]
        .into_iter()
        .map(|(what, port)| port_finding(what, port, range, &reserved))
        .collect()
}

fn port_finding(
    what: &str,
    port: u16,
    (lo, hi): (u16, u16),
    reserved: &std::collections::BTreeSet<u16>,
) -> Finding {
    if reserved.contains(&port) {
        return Finding::ok(
            "reserved-ports",
            format!("{what} port {port} is in ip_local_reserved_ports"),
        );
    }
    if !(lo..=hi).contains(&port) {
        return Finding::ok(
            "reserved-ports",
            format!("{what} port {port} is outside ip_local_port_range {lo}-{hi}"),
        );
    }
    Finding::fail(
        "reserved-ports",
        format!(
            "{what} port {port} is inside ip_local_port_range {lo}-{hi} and not reserved: \
             a workload could get it as its ephemeral port"
        ),
        format!(
            "add {port} to net.ipv4.ip_local_reserved_ports (in /etc/sysctl.d/), or move the port below {lo}"
        ),
    )
}

fn ptrace_scope() -> Finding {
    let fix = format!(
        "sysctl -w kernel.yama.ptrace_scope=1 (persist it in /etc/sysctl.d/), and {SKILL_UIDS_FIX}"
    );
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Err(_) => Finding::warn(
            "ptrace-scope",
            "Yama is not active: a process may ptrace (and pidfd_getfd) any process of its uid",
            fix,
        ),
        Ok(v) if v.trim() == "0" => Finding::warn(
            "ptrace-scope",
            "kernel.yama.ptrace_scope = 0: a process may ptrace (and pidfd_getfd) any process of its uid",
            fix,
        ),
        Ok(v) => Finding::ok(
            "ptrace-scope",
            format!("kernel.yama.ptrace_scope = {}", v.trim()),
        ),
    }
}

/// Whether the daemon pinned its LSM program for some workload cgroup.
fn lsm_program_pinned(bpffs_dir: &Path) -> bool {
    let links = bpffs_dir.join(format!("v{}/links", interceptor_common::LAYOUT_VERSION));
    std::fs::read_dir(links)
        .into_iter()
        .flatten()
        .flatten()
        .any(|cg| {
            cg.path()
                .join(interceptor_common::programs::LSM_SOCKET_CREATE)
                .symlink_metadata()
                .is_ok()
        })
}

fn bpf_lsm(bpffs_dir: &Path) -> Finding {
    let fix = "non-inet socket families (vsock, TIPC, RDS, packet...) cannot be refused in the kernel; \
               add `bpf` to the `lsm=` boot parameter or use systemd `RestrictAddressFamilies=` in skill units";
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) if list.trim().split(',').any(|l| l == "bpf") => {
            if lsm_program_pinned(bpffs_dir) {
                Finding::ok(
                    "bpf-lsm",
                    format!(
                        "active LSMs: {}; the daemon's socket_create program is attached",
                        list.trim()
                    ),
                )
            } else {
                Finding::warn(
                    "bpf-lsm",
                    format!(
                        "the BPF LSM is active ({}) but the daemon's program is not attached (did it fail to load? see the daemon's log)",
                        list.trim()
                    ),
                    fix,
                )
            }
        }
        Ok(list) => Finding::warn(
            "bpf-lsm",
            format!("the BPF LSM is not active (LSMs: {})", list.trim()),
            fix,
        ),
        Err(_) => Finding::warn(
            "bpf-lsm",
            "securityfs is not mounted (/sys/kernel/security/lsm): cannot tell whether the BPF LSM is active",
            format!("mount -t securityfs securityfs /sys/kernel/security and check again; {fix}"),
        ),
    }
}

// ---- processes: shared uids -----------------------------------------------

/// A process, as the shared-uid scan saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    pub euid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// cgroup path relative to the cgroup2 root ("user.slice/...").
    pub cgroup: String,
    /// The workload cgroup it runs in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

impl Process {
    fn describe(&self) -> String {
        let exe = self.exe.as_deref().unwrap_or("?");
        format!("pid {} ({}, {exe})", self.pid, self.comm)
    }
}

/// Every user process; kernel threads and processes that exit meanwhile
/// are left out.
pub fn scan_processes(workloads: &[WorkloadCgroup]) -> Result<Vec<Process>> {
    let entries = std::fs::read_dir("/proc").context("reading /proc")?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(p) = read_process(pid, workloads) {
            out.push(p);
        }
    }
    if out.is_empty() {
        bail!("no process readable under /proc (is it mounted, with hidepid?)");
    }
    Ok(out)
}

/// None for kernel threads and for a process that exited while being read.
fn read_process(pid: u32, workloads: &[WorkloadCgroup]) -> Option<Process> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let (uid, euid) = parse_uids(&status)?;
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let ppid = parse_status_field(&status, "PPid:")?;
    if exe.is_none() && (ppid == 2 || pid == 2) {
        return None; // kthreadd and its children
    }
    let cgroup = cgroup::v2_path(&std::fs::read_to_string(dir.join("cgroup")).ok()?)?;
    let workload = workloads
        .iter()
        .find(|w| cgroup::is_within(&cgroup, &w.rel))
        .map(|w| w.rel.clone());
    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
    Some(Process {
        pid,
        uid,
        euid,
        comm: comm.trim_end().to_string(),
        exe,
        cgroup,
        workload,
    })
}

/// Real and effective uid from /proc/PID/status ("Uid:\treal\teff\tsaved\tfs").
fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut it = line.split_whitespace().map(str::parse::<u32>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

fn parse_status_field(status: &str, key: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .parse()
        .ok()
}

/// Fails for each workload process running as root, and for each process
/// outside the workload cgroups that shares a uid with a workload process.
pub fn shared_uid_findings(procs: &[Process]) -> Vec<Finding> {
    let inside: Vec<&Process> = procs.iter().filter(|p| p.workload.is_some()).collect();
    let mut out = Vec::new();
    for p in inside.iter().filter(|p| p.uid == 0 || p.euid == 0) {
        out.push(
            Finding::fail(
                "workload-root",
                format!(
                    "{} runs as root in workload cgroup {}",
                    p.describe(),
                    p.cgroup
                ),
                format!(
                    "skills must not run as root (root can detach the hooks or leave the cgroup); {SKILL_UIDS_FIX}"
                ),
            )
            .about(p),
        );
    }
    // Root is its own finding above; listing every root process of the host
    // on top of it would drown the report.
    let uids: BTreeSet<u32> = inside
        .iter()
        .flat_map(|p| [p.uid, p.euid])
        .filter(|&u| u != 0)
        .collect();
    for p in procs.iter().filter(|p| p.workload.is_none()) {
        let Some(uid) = [p.uid, p.euid].into_iter().find(|u| uids.contains(u)) else {
            continue;
        };
        out.push(
            Finding::fail(
                "shared-uid",
                format!(
                    "{} runs as uid {uid} outside the workload cgroups (in /{}), and uid {uid} runs skills: \
                     a skill can ptrace it or take its sockets with pidfd_getfd",
                    p.describe(),
                    p.cgroup
                ),
                SKILL_UIDS_FIX,
            )
            .about(p),
        );
    }
    if out.is_empty() {
        let list: Vec<String> = uids.iter().map(u32::to_string).collect();
        out.push(Finding::ok(
            "shared-uid",
            format!(
                "{} workload process(es), uids [{}]: none shared with a process outside",
                inside.len(),
                list.join(", ")
            ),
        ));
    }
    out
}

/// Findings of the shared-uid scan (shared uids and workload processes
/// running as root), counted over the daemon's lifetime.
pub static SHARED_UID_FINDINGS: AtomicU64 = AtomicU64::new(0);

/// The daemon's watch: the shared-uid scan at start and every 60 s, each
/// finding logged at warn and counted in [`SHARED_UID_FINDINGS`].
// Called from the daemon's start-up (wired in daemon.rs separately).
pub fn spawn_shared_uid_watch(workloads: Vec<WorkloadCgroup>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let w = workloads.clone();
            // Reading /proc is blocking file I/O.
            let scan = tokio::task::spawn_blocking(move || {
                scan_processes(&w).map(|p| shared_uid_findings(&p))
            })
            .await;
            match scan {
                Ok(Ok(findings)) => log_findings(&findings),
                Ok(Err(e)) => tracing::warn!("shared-uid scan failed: {e:#}"),
                Err(e) => tracing::warn!("shared-uid scan panicked: {e}"),
            }
        }
    })
}

fn log_findings(findings: &[Finding]) {
    for f in findings.iter().filter(|f| f.status != Status::Ok) {
        SHARED_UID_FINDINGS.fetch_add(1, Ordering::Relaxed);
        let Some(p) = &f.process else { continue };
        tracing::warn!(
            check = f.check,
            pid = p.pid,
            uid = p.uid,
            euid = p.euid,
            exe = p.exe.as_deref().unwrap_or("?"),
            cgroup = %p.cgroup,
            "{}",
            f.detail
        );
    }
}

// ---- sockets created in another cgroup ------------------------------------

/// A socket a workload process holds that was created in a cgroup outside
/// the workload (passed in over SCM_RIGHTS, taken with pidfd_getfd, or held
/// across a move into the cgroup): the hooks never saw it, since they act
/// on the cgroup the socket was created in. Only TCP/UDP sockets of the
/// network namespace doctor runs in that are bound or connected are listed
/// by the kernel; others are not judged.
fn foreign_socket_findings(
    procs: &[Process],
    workloads: &[WorkloadCgroup],
) -> Result<Vec<Finding>> {
    let owners = socket_cgroups()?;
    let ours = workload_cgroup_ids(workloads);
    let mut out = Vec::new();
    let mut seen = 0usize;
    for p in procs.iter().filter(|p| p.workload.is_some()) {
        for ino in socket_inodes(p.pid) {
            let Some(&cg) = owners.get(&ino) else {
                continue;
            };
            seen += 1;
            if !ours.contains(&cg) {
                out.push(
                    Finding::fail(
                        "foreign-sockets",
                        format!(
                            "{} in {} holds socket inode {ino}, created in cgroup id {cg} outside the workload: \
                             its traffic bypasses the proxy",
                            p.describe(),
                            p.cgroup
                        ),
                        format!("stop the process and find who passed it the socket; {SKILL_UIDS_FIX}"),
                    )
                    .about(p),
                );
            }
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            "foreign-sockets",
            format!(
                "{seen} TCP/UDP socket(s) of workload processes, all created inside the workload"
            ),
        ));
    }
    Ok(out)
}

/// Socket inodes among a process's fds ("socket:[1234]").
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| parse_socket_link(&l.to_string_lossy()))
        .collect()
}

fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Cgroup ids (directory inodes) of the workload cgroups and everything below.
fn workload_cgroup_ids(workloads: &[WorkloadCgroup]) -> HashSet<u64> {
    fn walk(dir: &Path, ids: &mut HashSet<u64>) {
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return;
        };
        ids.insert(meta.ino());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), ids);
            }
        }
    }
    let mut ids = HashSet::new();
    for w in workloads {
        walk(&w.abs, &mut ids);
    }
    ids
}

/// INET_DIAG_CGROUP_ID (linux/inet_diag.h, kernel >= 5.7); the crate has no
/// variant for it and hands it over as a raw attribute.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// Socket inode -> id of the cgroup it was created in, for every TCP and
/// UDP socket (v4 and v6) of this network namespace (NETLINK_SOCK_DIAG).
fn socket_cgroups() -> Result<HashMap<u64, u64>> {
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)
        .context("opening a NETLINK_SOCK_DIAG socket")?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut out = HashMap::new();
    for family in [AF_INET, AF_INET6] {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            dump_inet(&sock, family, proto, &mut out)
                .with_context(|| format!("sock_diag dump (family {family}, protocol {proto})"))?;
        }
    }
    Ok(out)
}

fn dump_inet(
    sock: &netlink_sys::Socket,
    family: u8,
    protocol: u8,
    out: &mut HashMap<u64, u64>,
) -> Result<()> {
    use netlink_packet_core::{
        NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    };
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == netlink_packet_sock_diag::constants::AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let mut req = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < data.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&data[at..])
                .map_err(|e| anyhow::anyhow!("bad sock_diag message: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(e.to_io()).context("the kernel refused the dump");
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    if let Some(cg) = r.nlas.iter().find_map(cgroup_id_nla) {
                        out.insert(u64::from(r.header.inode), cg);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

fn cgroup_id_nla(nla: &netlink_packet_sock_diag::inet::nlas::Nla) -> Option<u64> {
    use netlink_packet_core::Nla as _;
    let netlink_packet_sock_diag::inet::nlas::Nla::Other(raw) = nla else {
        return None;
    };
    if raw.kind() != INET_DIAG_CGROUP_ID || raw.value_len() != 8 {
        return None;
    }
    let mut v = [0u8; 8];
    raw.emit_value(&mut v);
    Some(u64::from_ne_bytes(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_inside_the_ephemeral_range_must_be_reserved() {
        let range = (32768, 60999);
        let none = Default::default();
        let f = port_finding("proxy", 40000, range, &none);
        assert_eq!(f.status, Status::Fail, "{}", f.detail);
        let reserved = crate::reserved_ports::parse("39000-41000").unwrap();
        assert_eq!(
            port_finding("proxy", 40000, range, &reserved).status,
            Status::Ok
        );
        assert_eq!(
            port_finding("proxy", 15001, range, &none).status,
            Status::Ok
        );
        assert_eq!(
            port_finding("proxy", 32768, range, &none).status,
            Status::Fail
        );
        assert_eq!(
            port_finding("proxy", 60999, range, &none).status,
            Status::Fail
        );
    }

    #[test]
    fn mount_holding_a_path() {
        let info = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:26 / /sys/fs/bpf rw - bpf bpf rw,mode=700
31 22 0:27 / /sys/fs/bpf2 rw - bpf bpf rw
32 1 0:28 / /mnt/with\\040space rw - bpf none rw
";
        let m = mount_holding(info, Path::new("/sys/fs/bpf/interceptor")).unwrap();
        assert_eq!(m.point, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(m.fstype, "bpf");
        // A path prefix is not a component prefix.
        let m = mount_holding(info, Path::new("/sys/fs/bpfx/interceptor")).unwrap();
        assert_eq!(m.fstype, "sysfs");
        let m = mount_holding(info, Path::new("/mnt/with space/x")).unwrap();
        assert_eq!(m.point, PathBuf::from("/mnt/with space"));
        assert_eq!(mount_holding(info, Path::new("/var/x")), None);
        // A later mount on the same point hides the earlier one.
        let stacked = format!("{info}40 30 0:40 / /sys/fs/bpf rw - tmpfs tmpfs rw\n");
        let m = mount_holding(&stacked, Path::new("/sys/fs/bpf/interceptor")).unwrap();
        assert_eq!(m.fstype, "tmpfs");
    }

    #[test]
    fn status_uid_line() {
        let status = "Name:\tsleep\nUmask:\t0022\nPPid:\t812\nUid:\t65534\t1000\t65534\t65534\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_uids(status), Some((65534, 1000)));
        assert_eq!(parse_status_field(status, "PPid:"), Some(812));
        assert_eq!(parse_uids("Name:\tx\n"), None);
        assert_eq!(parse_uids("Uid:\tx\t0\t0\t0\n"), None);
    }

    #[test]
    fn cgroup_line() {
        assert_eq!(
            cgroup::v2_path("0::/skills.slice/a.service\n").as_deref(),
            Some("skills.slice/a.service")
        );
        // Hybrid hosts list v1 hierarchies too; only the v2 line counts.
        assert_eq!(
            cgroup::v2_path("12:cpu:/x\n1:name=systemd:/user.slice\n0::/user.slice/u.scope\n")
                .as_deref(),
            Some("user.slice/u.scope")
        );
        assert_eq!(cgroup::v2_path("0::/\n").as_deref(), Some(""));
        assert_eq!(cgroup::v2_path("1:name=systemd:/\n"), None);
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_kernel_version("6.1.0-28-amd64"), Some((6, 1)));
        assert!(parse_kernel_version("5.15.0").unwrap() < KERNEL_FLOOR);
        assert_eq!(parse_kernel_version("x"), None);
        assert_eq!(parse_two("1\t0\n"), Some((1, 0)));
        assert_eq!(parse_two("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_two("1 2 3"), None);
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
    }

    fn proc(pid: u32, uid: u32, workload: Option<&str>) -> Process {
        Process {
            pid,
            uid,
            euid: uid,
            comm: "x".into(),
            exe: Some("/usr/bin/x".into()),
            cgroup: workload.unwrap_or("user.slice").into(),
            workload: workload.map(String::from),
        }
    }

    #[test]
    fn shared_uids_and_root_in_the_workload() {
        let procs = [
            proc(10, 1001, Some("skills.slice")),
            proc(11, 1001, None),
            proc(12, 1002, None),
            proc(13, 0, None),
        ];
        let f = shared_uid_findings(&procs);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].check, "shared-uid");
        assert_eq!(f[0].process.as_ref().unwrap().pid, 11);

        // Root inside: its own finding, not every root process outside.
        let f = shared_uid_findings(&[proc(10, 0, Some("skills.slice")), proc(13, 0, None)]);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].check, "workload-root");

        // Effective uid counts too.
        let mut setuid = proc(14, 1002, None);
        setuid.euid = 1001;
        let f = shared_uid_findings(&[proc(10, 1001, Some("skills.slice")), setuid]);
        assert_eq!(f[0].process.as_ref().unwrap().pid, 14);

        let f = shared_uid_findings(&[proc(10, 1001, Some("skills.slice")), proc(12, 1002, None)]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Ok);
    }

    #[test]
    fn the_watch_counts_what_is_not_ok() {
        let before = SHARED_UID_FINDINGS.load(Ordering::Relaxed);
        let mut findings = shared_uid_findings(&[
            proc(10, 1001, Some("skills.slice")),
            proc(11, 1001, None),
            proc(12, 0, Some("skills.slice")),
        ]);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        findings.push(Finding::ok("shared-uid", "nothing"));
        log_findings(&findings);
        assert_eq!(SHARED_UID_FINDINGS.load(Ordering::Relaxed) - before, 2);
    }

    #[test]
    fn pin_tree_components() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (a trusted pin tree is root-owned)");
            return;
        }
        let tmp = std::env::temp_dir().join(format!("interceptor-pintree-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("pins")).unwrap();
        let set_mode = |p: &Path, m: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        set_mode(&tmp, 0o755);
        set_mode(&tmp.join("pins"), 0o700);
        let status = |p: &Path| pin_tree(p)[0].status;
        assert_eq!(status(&tmp.join("pins")), Status::Ok);
        assert_eq!(status(&tmp.join("pins/missing")), Status::Warn);
        // Sticky world-writable: fine for an ancestor (like /tmp), not for the pin dir.
        set_mode(&tmp, 0o1777);
        assert_eq!(status(&tmp.join("pins")), Status::Ok);
        assert_eq!(status(&tmp), Status::Fail);
        set_mode(&tmp, 0o775);
        assert_eq!(status(&tmp.join("pins")), Status::Fail);
        set_mode(&tmp, 0o755);
        std::os::unix::fs::symlink(tmp.join("pins"), tmp.join("link")).unwrap();
        let f = pin_tree(&tmp.join("link"));
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].detail.contains("symlink"), "{}", f[0].detail);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
