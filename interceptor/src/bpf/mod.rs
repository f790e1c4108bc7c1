//! Kernel side, user half: load the embedded programs, attach them to the
//! workload cgroups, pin them, feed the heartbeat, keep them attached, and
//! look up original destinations for accepted connections.
//!
//! Restart without a gap: links and maps are pinned in bpffs, so they keep
//! redirecting (and refusing, once the heartbeat goes stale) while no daemon
//! runs. A new daemon reuses the pinned maps and replaces the program of
//! each pinned link in place (BPF_LINK_UPDATE): there is never a moment
//! with no program, nor one with two.
//!
//! Tampering: the daemon holds an fd of every link besides its pin (a
//! removed pin then detaches nothing), and [`Hooks::verify`] asks the kernel
//! which programs each workload cgroup runs; a missing one is re-attached.
mod pins;
mod sys;

use crate::cgroup::WorkloadCgroup;
use anyhow::{Context, Result, anyhow, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, LsmCgroup,
    SockOps,
};
use aya::{Btf, Ebpf, EbpfLoader};
use interceptor_common::{
    AF_INET, AF_INET6, CONFIG_F_ALLOW_UDP, Config, ConnRecord, Heartbeat, InboundEvent, InboundKey,
    InboundTuple, MAX_PROTECTED_PORTS, TupleKey, counters, maps, programs,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use pins::{check_tree as check_pin_tree, ensure_bpffs};

/// The kernel object, built by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("INTERCEPTOR_BPF_OBJECT_PATH"));

/// With bpf links (kernel >= 5.7) the kernel takes no attach flags and always
/// stacks programs as if BPF_F_ALLOW_MULTI; `Single` is what sends 0.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// What the kernel programs need to know.
pub struct HookSettings {
    pub proxy_port: u16,
    pub protected_ports: Vec<u16>,
    pub allow_udp: bool,
    pub heartbeat_timeout: Duration,
    /// SO_MARK of the proxy's sockets (see `Config::proxy_mark`).
    pub proxy_mark: u32,
    /// `interceptor_common::kinds` bits allowed besides TCP.
    pub socket_kinds: u32,
    /// Capacity of the connection record maps.
    pub conn_map_entries: u32,
}

/// Attached hooks plus the maps the daemon keeps using.
pub struct Hooks {
    attacher: Mutex<Attacher>,
    heartbeat: Mutex<Array<MapData, Heartbeat>>,
    by_tuple: Mutex<HashMap<MapData, TupleKey, ConnRecord>>,
    counters: PerCpuArray<MapData, u64>,
    inbound_rules: Mutex<LpmTrie<MapData, InboundKey, u64>>,
    inbound_cgroups: Mutex<HashMap<MapData, u64, u64>>,
    /// What `set_inbound` last wrote: the 1 s tick rewrites nothing unchanged.
    inbound_applied: Mutex<Option<InboundState>>,
    events: Mutex<Option<RingBuf<MapData>>>,
    inbound_conns: Mutex<HashMap<MapData, InboundTuple, InboundEvent>>,
    workload_peers: Mutex<HashMap<MapData, TupleKey, u64>>,
    /// Programs found missing from a workload cgroup and re-attached.
    pub tampered: AtomicU64,
    /// Whether the BPF LSM program (non-inet socket families) is in use.
    pub lsm: bool,
}

struct Attacher {
    bpf: Ebpf,
    layout: pins::Layout,
    /// The programs attached to every cgroup (ATTACHED, plus the LSM one
    /// where the BPF LSM runs), with their kernel ids (for `verify`).
    programs: Vec<(&'static str, u32)>,
    /// Workload cgroup (relative path) → what is attached to it.
    attached: std::collections::HashMap<String, Attachment>,
}

struct Attachment {
    cgroup_id: u64,
    /// Held for prog queries; the links also hold the cgroup.
    cgroup: std::fs::File,
    /// One fd per program: as long as the daemon runs, removing a pin
    /// detaches nothing.
    links: Vec<(&'static str, OwnedFd)>,
}

type InboundState = (
    Vec<(InboundKey, u32, u64)>,
    std::collections::HashMap<u64, u64>,
);

/// One program found detached from a workload cgroup (and re-attached).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tampered {
    pub cgroup: String,
    pub program: &'static str,
}

/// Kernel counters, summed over CPUs.
#[derive(Debug, Default, serde::Serialize)]
pub struct KernelCounters {
    pub redirected: u64,
    pub refused_stale: u64,
    pub refused_protected: u64,
    pub refused_record: u64,
    pub refused_udp: u64,
    pub refused_bind: u64,
    pub refused_socket: u64,
    pub dropped_inbound: u64,
    pub inbound_accepted: u64,
    pub inbound_backpressure: u64,
}

impl Hooks {
    /// Loads, attaches and pins everything. On return the cgroups are covered
    /// by this daemon's programs and no older ones.
    pub fn attach(bpffs_dir: &Path, cgroups: &[WorkloadCgroup], s: &HookSettings) -> Result<Hooks> {
        check_kernel()?;
        ensure_bpffs(bpffs_dir)?;
        let layout = pins::Layout::create(bpffs_dir)?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps.entry(""))
            .map_max_entries(maps::BY_COOKIE, s.conn_map_entries)
            .map_max_entries(maps::BY_TUPLE, s.conn_map_entries)
            .load(OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object: {e}"))
            .context("is this kernel >= 6.1 with cgroup BPF? (CONFIG_CGROUP_BPF)")?;
        for name in programs::ATTACHED {
            load_program(&mut bpf, name)?;
        }
        let mut names: Vec<&'static str> = programs::ATTACHED.to_vec();
        let lsm = match lsm_usable(&mut bpf) {
            Ok(()) => {
                names.push(programs::LSM_SOCKET_CREATE);
                true
            }
            Err(why) => {
                tracing::warn!(
                    "{why}: sockets of families other than IPv4/IPv6 (vsock, TIPC, RDS, packet, ...) are not refused in the kernel; \
                     use RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK in skill units (see README, Limits)"
                );
                false
            }
        };

        // Settings first, so the programs never run with a zeroed config
        // (which would refuse every connect).
        let mut config: Array<_, Config> = Array::try_from(take(&mut bpf, maps::CONFIG)?)?;
        config
            .set(0, kernel_config(s)?, 0)
            .context("writing the kernel config map")?;
        let mut heartbeat: Array<_, Heartbeat> = Array::try_from(take(&mut bpf, maps::HEARTBEAT)?)?;
        heartbeat.set(
            0,
            Heartbeat {
                monotonic_ns: monotonic_ns(),
            },
            0,
        )?;

        let programs = names
            .into_iter()
            .map(|n| Ok((n, program_id(&mut bpf, n)?)))
            .collect::<Result<_>>()?;
        let mut a = Attacher {
            bpf,
            layout,
            programs,
            attached: Default::default(),
        };
        // Links pinned by an earlier daemon (any layout version), by cgroup id.
        let mut previous = pins::link_dirs(&a.layout.base)?;
        for cg in cgroups {
            a.attach_cgroup(cg, &mut previous)
                .with_context(|| format!("attaching to cgroup {}", cg.rel))?;
        }
        // What is left belongs to cgroups no longer configured, or dead ones.
        for (_, _, dir) in &previous {
            detach_dir(dir);
        }
        pins::remove_stale(&a.layout.base)?;

        Ok(Hooks {
            heartbeat: Mutex::new(heartbeat),
            by_tuple: Mutex::new(HashMap::try_from(take(&mut a.bpf, maps::BY_TUPLE)?)?),
            counters: PerCpuArray::try_from(take(&mut a.bpf, maps::COUNTERS)?)?,
            inbound_rules: Mutex::new(LpmTrie::try_from(take(&mut a.bpf, maps::INBOUND_RULES)?)?),
            inbound_applied: Mutex::new(None),
            inbound_cgroups: Mutex::new(HashMap::try_from(take(
                &mut a.bpf,
                maps::INBOUND_CGROUPS,
            )?)?),
            events: Mutex::new(Some(RingBuf::try_from(take(&mut a.bpf, maps::EVENTS)?)?)),
            inbound_conns: Mutex::new(HashMap::try_from(take(&mut a.bpf, maps::INBOUND_CONNS)?)?),
            workload_peers: Mutex::new(HashMap::try_from(take(&mut a.bpf, maps::WORKLOAD_PEERS)?)?),
            attacher: Mutex::new(a),
            tampered: AtomicU64::new(0),
            lsm,
        })
    }

    /// Makes sure the hooks cover the cgroup now at `cg`'s path. systemd
    /// removes and re-creates unit cgroups; a link stays with the dead one,
    /// so a new cgroup of the same name needs its own. Returns true when it
    /// attached (the cgroup is new), false when it was covered already or is
    /// absent.
    pub fn ensure_attached(&self, cg: &WorkloadCgroup) -> Result<bool> {
        let current = match std::fs::metadata(&cg.abs) {
            Ok(m) => m.ino(),
            Err(_) => return Ok(false),
        };
        let mut a = self.attacher.lock().unwrap();
        if a.attached.get(&cg.rel).map(|x| x.cgroup_id) == Some(current) {
            return Ok(false);
        }
        let old = a.attached.get(&cg.rel).map(|x| x.cgroup_id);
        a.attach_cgroup(cg, &mut Vec::new())?;
        if let Some(old) = old {
            // The dead cgroup's links: detaching them frees it.
            if let Some(dir) = a.layout.links.subdir(&old.to_string(), false)? {
                detach_dir(&dir);
            }
            let _ = a.layout.links.rmdir(&old.to_string());
        }
        Ok(true)
    }

    /// Asks the kernel which programs each workload cgroup runs (not the
    /// pins: the kernel's own list) and re-attaches any of ours that is
    /// missing at once. Returns what was missing.
    pub fn verify(&self) -> Result<Vec<Tampered>> {
        let mut a = self.attacher.lock().unwrap();
        let mut missing = Vec::new();
        let rels: Vec<String> = a.attached.keys().cloned().collect();
        for rel in rels {
            for (name, want) in a.programs.clone() {
                let att = &a.attached[&rel];
                let ids = sys::cgroup_prog_ids(att.cgroup.as_fd(), attach_type(name))
                    .with_context(|| format!("querying the programs of cgroup {rel}"))?;
                if ids.contains(&want) {
                    continue;
                }
                missing.push(Tampered {
                    cgroup: rel.clone(),
                    program: name,
                });
                let Attacher {
                    bpf,
                    layout,
                    attached,
                    ..
                } = &mut *a;
                let att = attached.get_mut(&rel).unwrap();
                let dir = layout.links_for(att.cgroup_id)?;
                let fd = attach_fresh(bpf, name, &att.cgroup, &dir)?;
                att.links.retain(|(n, _)| *n != name);
                att.links.push((name, fd));
            }
        }
        if !missing.is_empty() {
            self.tampered
                .fetch_add(missing.len() as u64, Ordering::Relaxed);
        }
        Ok(missing)
    }

    /// Refreshes the heartbeat; the programs refuse connects when it is stale.
    pub fn beat(&self) -> Result<()> {
        let mut hb = self.heartbeat.lock().unwrap();
        hb.set(
            0,
            Heartbeat {
                monotonic_ns: monotonic_ns(),
            },
            0,
        )?;
        Ok(())
    }

    /// Makes the programs refuse connects now instead of after the timeout.
    pub fn stop_beating(&self) -> Result<()> {
        let mut hb = self.heartbeat.lock().unwrap();
        hb.set(0, Heartbeat { monotonic_ns: 0 }, 0)?;
        Ok(())
    }

    /// The record of the connection whose client end is `peer`, removed from
    /// the map (each record is consumed exactly once).
    pub fn take_original(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = tuple_key(peer);
        let mut map = self.by_tuple.lock().unwrap();
        let rec = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(rec)
    }

    /// Whether the proxy's upstream connection whose local end is `local`
    /// landed on a workload's socket (the workload cgroup id), as the kernel
    /// saw the proxy's SYN arrive; the entry is consumed.
    pub fn upstream_is_workload(&self, local: SocketAddr) -> Option<u64> {
        let key = tuple_key(local);
        let mut map = self.workload_peers.lock().unwrap();
        let id = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(id)
    }

    /// Replaces the inbound rules the kernel filter applies: `rules` are
    /// (key, peer prefix length, rule mask); `cgroups` maps each workload
    /// cgroup id to the rules whose workload it is.
    pub fn set_inbound(
        &self,
        rules: &[(InboundKey, u32, u64)],
        cgroups: &std::collections::HashMap<u64, u64>,
    ) -> Result<()> {
        let mut applied = self.inbound_applied.lock().unwrap();
        if applied
            .as_ref()
            .is_some_and(|(r, c)| r.as_slice() == rules && c == cgroups)
        {
            return Ok(());
        }
        let mut trie = self.inbound_rules.lock().unwrap();
        let want: Vec<Key<InboundKey>> = rules
            .iter()
            .map(|(k, bits, _)| Key::new(interceptor_common::INBOUND_KEY_FIXED_BITS + bits, *k))
            .collect();
        for (key, (_, _, mask)) in want.iter().zip(rules) {
            trie.insert(key, mask, 0)?;
        }
        let stale: Vec<Key<InboundKey>> = trie
            .keys()
            .flatten()
            .filter(|k| {
                !want
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
        let mut cg = self.inbound_cgroups.lock().unwrap();
        for (id, mask) in cgroups {
            cg.insert(id, mask, 0)?;
        }
        let stale: Vec<u64> = cg
            .keys()
            .flatten()
            .filter(|id| !cgroups.contains_key(id))
            .collect();
        for id in stale {
            let _ = cg.remove(&id);
        }
        *applied = Some((rules.to_vec(), cgroups.clone()));
        Ok(())
    }

    /// The inbound connections the kernel let in by rule and the daemon has
    /// not finished recording.
    pub fn inbound_conns(&self) -> Vec<(InboundTuple, InboundEvent)> {
        self.inbound_conns
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .collect()
    }

    /// Drops an inbound entry once recorded (or expired).
    pub fn forget_inbound(&self, t: &InboundTuple) {
        let _ = self.inbound_conns.lock().unwrap().remove(t);
    }

    /// The inbound doorbell ring buffer, once (for the task that reads it).
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.events.lock().unwrap().take()
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            redirected: sum(counters::REDIRECTED),
            refused_stale: sum(counters::REFUSED_STALE),
            refused_protected: sum(counters::REFUSED_PROTECTED),
            refused_record: sum(counters::REFUSED_RECORD),
            refused_udp: sum(counters::REFUSED_UDP),
            refused_bind: sum(counters::REFUSED_BIND),
            refused_socket: sum(counters::REFUSED_SOCKET),
            dropped_inbound: sum(counters::DROPPED_INBOUND),
            inbound_accepted: sum(counters::INBOUND_ACCEPTED),
            inbound_backpressure: sum(counters::INBOUND_BACKPRESSURE),
        }
    }
}

impl Attacher {
    /// Covers one cgroup with every program: a link pinned for it by an
    /// earlier daemon gets this daemon's program in place; a missing one is
    /// attached and pinned right away (a loader that dies before pinning
    /// leaves no hook behind). Entries of `previous` it used are removed.
    fn attach_cgroup(
        &mut self,
        cg: &WorkloadCgroup,
        previous: &mut Vec<(String, u64, pins::PinDir)>,
    ) -> Result<()> {
        let cgroup = std::fs::File::open(&cg.abs)
            .with_context(|| format!("opening {}", cg.abs.display()))?;
        // The id of the cgroup behind this very fd, whatever the path names later.
        let cgroup_id = cgroup.metadata()?.ino();
        let dir = self.layout.links_for(cgroup_id)?;
        // Links an earlier daemon pinned for this very cgroup (any layout).
        let old: Vec<pins::PinDir> = previous
            .extract_if(.., |(_, id, _)| *id == cgroup_id)
            .map(|(_, _, d)| d)
            .collect();
        let mut links = Vec::new();
        for (name, _) in self.programs.clone() {
            let fd = match self.take_over(&old, &dir, name)? {
                Some(fd) => fd,
                None => attach_fresh(&mut self.bpf, name, &cgroup, &dir)?,
            };
            links.push((name, fd));
        }
        // Leftovers: programs this build no longer has, duplicates.
        for d in &old {
            let current = same_dir(d, &dir);
            for (entry, _) in d.entries() {
                if !current || !self.programs.iter().any(|(n, _)| *n == entry) {
                    detach_pin(d, &entry);
                }
            }
        }
        self.attached.insert(
            cg.rel.clone(),
            Attachment {
                cgroup_id,
                cgroup,
                links,
            },
        );
        Ok(())
    }

    /// Gives a link pinned earlier for `name` (under any layout, named
    /// `name` or `name-<generation>`) this daemon's program, and makes sure
    /// it is pinned at `dir/name`.
    fn take_over(
        &mut self,
        old: &[pins::PinDir],
        dir: &pins::PinDir,
        name: &'static str,
    ) -> Result<Option<OwnedFd>> {
        for d in old {
            for (entry, is_dir) in d.entries() {
                let prog = entry.split_once('-').map_or(entry.as_str(), |(p, _)| p);
                if is_dir || prog != name {
                    continue;
                }
                let Ok(fd) = sys::obj_get(&d.entry(&entry)) else {
                    continue;
                };
                let prog_fd = program_fd(&mut self.bpf, name)?;
                if let Err(e) = sys::link_update(fd.as_fd(), prog_fd.as_fd()) {
                    // A detached link cannot be updated: attach afresh.
                    tracing::warn!(link = %entry, error = %e, "could not update a pinned link");
                    continue;
                }
                if !(same_dir(d, dir) && entry == name) {
                    let _ = dir.unlink(name);
                    sys::obj_pin(fd.as_fd(), &dir.entry(name))
                        .with_context(|| format!("pinning {}/{name}", dir.display()))?;
                    let _ = d.unlink(&entry);
                }
                return Ok(Some(fd));
            }
        }
        Ok(None)
    }
}

/// Two opened directories are the same one.
fn same_dir(a: &pins::PinDir, b: &pins::PinDir) -> bool {
    let ino = |d: &pins::PinDir| {
        std::fs::metadata(d.entry("."))
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    ino(a).is_some() && ino(a) == ino(b)
}

/// Detaches and unpins one pinned link.
fn detach_pin(dir: &pins::PinDir, name: &str) {
    if let Ok(fd) = sys::obj_get(&dir.entry(name)) {
        let _ = sys::link_detach(fd.as_fd());
    }
    if let Err(e) = dir.unlink(name) {
        tracing::warn!(path = %format!("{}/{name}", dir.display()), error = %e, "could not remove an old pinned link");
    }
}

fn detach_dir(dir: &pins::PinDir) {
    for (name, is_dir) in dir.entries() {
        if !is_dir {
            detach_pin(dir, &name);
        }
    }
}

/// Attaches one program to one cgroup and pins the link at `dir/name`
/// before anything else; returns the daemon's own fd of the link.
fn attach_fresh(
    bpf: &mut Ebpf,
    name: &'static str,
    cgroup: &std::fs::File,
    dir: &pins::PinDir,
) -> Result<OwnedFd> {
    let link: FdLink = match name {
        programs::SOCK_OPS => {
            let p: &mut SockOps = prog(bpf, name)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            p.take_link(id)?.try_into()?
        }
        programs::POST_BIND4 | programs::POST_BIND6 | programs::SOCK_CREATE => {
            let p: &mut CgroupSock = prog(bpf, name)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            p.take_link(id)?.try_into()?
        }
        programs::INGRESS => {
            let p: &mut CgroupSkb = prog(bpf, name)?;
            let id = p.attach(cgroup, CgroupSkbAttachType::Ingress, ATTACH_MODE)?;
            p.take_link(id)?.try_into()?
        }
        programs::LSM_SOCKET_CREATE => {
            let p: &mut LsmCgroup = prog(bpf, name)?;
            let id = p.attach(cgroup)?;
            p.take_link(id)?.into()
        }
        _ => {
            let p: &mut CgroupSockAddr = prog(bpf, name)?;
            let id = p.attach(cgroup, ATTACH_MODE)?;
            p.take_link(id)?.try_into()?
        }
    };
    let path = dir.entry(name);
    let _ = dir.unlink(name);
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning {}/{name}", dir.display()))?;
    let fd = sys::obj_get(&path).with_context(|| format!("opening {}/{name}", dir.display()))?;
    drop(pinned);
    Ok(fd)
}

fn attach_type(name: &str) -> u32 {
    use sys::attach::*;
    match name {
        programs::SOCK_CREATE => INET_SOCK_CREATE,
        programs::INGRESS => INET_INGRESS,
        programs::SOCK_OPS => SOCK_OPS,
        programs::POST_BIND4 => INET4_POST_BIND,
        programs::POST_BIND6 => INET6_POST_BIND,
        programs::GETPEERNAME4 => INET4_GETPEERNAME,
        programs::GETPEERNAME6 => INET6_GETPEERNAME,
        programs::SENDMSG4 => UDP4_SENDMSG,
        programs::SENDMSG6 => UDP6_SENDMSG,
        programs::CONNECT4 => INET4_CONNECT,
        programs::CONNECT6 => INET6_CONNECT,
        programs::LSM_SOCKET_CREATE => LSM_CGROUP,
        _ => unreachable!("unknown program {name}"),
    }
}

/// `interceptor detach`: remove every hook and the shared maps. Connects
/// from the workload then go direct again; this is the explicit way out.
/// (A running daemon would re-attach what it finds missing: the command
/// refuses while one answers, and the daemon stops its checks first.)
pub fn detach_all(bpffs_dir: &Path) -> Result<usize> {
    pins::remove_all(bpffs_dir)
}

fn check_kernel() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "interceptor run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach cgroup programs)"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); interceptor needs a kernel >= 6.1 built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// Loads the LSM program where the kernel runs the BPF LSM and lets it
/// load; otherwise says why not.
fn lsm_usable(bpf: &mut Ebpf) -> Result<(), String> {
    if !lsm_active() {
        return Err("the BPF LSM is not active (no `bpf` in /sys/kernel/security/lsm)".into());
    }
    load_program(bpf, programs::LSM_SOCKET_CREATE)
        .map_err(|e| format!("the BPF LSM program did not load ({e:#})"))
}

/// Whether the kernel runs the BPF LSM (`bpf` in the active LSM list).
/// securityfs is mounted when it is not (as systemd does at boot).
pub fn lsm_active() -> bool {
    let read = || std::fs::read_to_string("/sys/kernel/security/lsm");
    let list = read().or_else(|_| {
        // SAFETY: static NUL-terminated strings and a null data pointer, which mount(2) accepts.
        let rc = unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        read()
    });
    list.is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"))
}

fn kernel_config(s: &HookSettings) -> Result<Config> {
    let mut protected = [0u16; MAX_PROTECTED_PORTS];
    if s.protected_ports.len() > MAX_PROTECTED_PORTS {
        bail!("at most {MAX_PROTECTED_PORTS} protected ports");
    }
    for (slot, p) in protected.iter_mut().zip(&s.protected_ports) {
        *slot = *p;
    }
    Ok(Config {
        proxy_port: s.proxy_port,
        _pad0: 0,
        flags: if s.allow_udp { CONFIG_F_ALLOW_UDP } else { 0 },
        protected_ports: protected,
        heartbeat_timeout_ns: s.heartbeat_timeout.as_nanos() as u64,
        proxy_mark: s.proxy_mark,
        socket_kinds: s.socket_kinds,
    })
}

fn take(bpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

/// Loads one program of the object into the kernel.
fn load_program(bpf: &mut Ebpf, name: &str) -> Result<()> {
    let p = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    let r = match p {
        aya::programs::Program::LsmCgroup(l) => {
            let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
            l.load("socket_create", &btf)
        }
        aya::programs::Program::SockOps(p) => p.load(),
        aya::programs::Program::CgroupSock(p) => p.load(),
        aya::programs::Program::CgroupSkb(p) => p.load(),
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        _ => bail!("program {name} has an unexpected type"),
    };
    r.map_err(|e| anyhow!("loading program {name}: {e:#}"))
}

/// A loaded program of the object, by type.
fn prog<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()?)
}

fn program_fd(bpf: &mut Ebpf, name: &str) -> Result<OwnedFd> {
    let p = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    Ok(p.fd()?.as_fd().try_clone_to_owned()?)
}

fn program_id(bpf: &mut Ebpf, name: &str) -> Result<u32> {
    let p = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    Ok(p.info()?.id())
}

/// The programs not attached to the cgroup now at `cg`'s path
/// (`interceptor check-hooks`, which gates skills.slice at boot): for each
/// program, the link pinned for this cgroup id must exist and its program
/// must be in the kernel's list for the cgroup. A re-created cgroup has a
/// new id, hence none.
pub fn missing_hooks(bpffs_dir: &Path, cg: &WorkloadCgroup) -> Result<Vec<&'static str>> {
    let cgroup =
        std::fs::File::open(&cg.abs).with_context(|| format!("opening {}", cg.abs.display()))?;
    let id = cgroup.metadata()?.ino();
    let dir = pins::open_base(bpffs_dir, false)?
        .map(|b| b.subdir(&pins::version_dir(), false))
        .transpose()?
        .flatten()
        .map(|v| v.subdir("links", false))
        .transpose()?
        .flatten()
        .map(|l| l.subdir(&id.to_string(), false))
        .transpose()?
        .flatten();
    // The LSM program is attached only where the kernel lets it load: it
    // counts when the daemon pinned it.
    let mut names: Vec<&'static str> = programs::ATTACHED.to_vec();
    if dir.as_ref().is_some_and(|d| {
        d.entries()
            .iter()
            .any(|(n, _)| n == programs::LSM_SOCKET_CREATE)
    }) {
        names.push(programs::LSM_SOCKET_CREATE);
    }
    Ok(names
        .into_iter()
        .filter(|name| {
            let attached = || -> Option<bool> {
                let fd = sys::obj_get(&dir.as_ref()?.entry(name)).ok()?;
                let prog = sys::link_prog_id(fd.as_fd()).ok()?;
                let ids = sys::cgroup_prog_ids(cgroup.as_fd(), attach_type(name)).ok()?;
                Some(ids.contains(&prog))
            };
            attached() != Some(true)
        })
        .collect())
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec and CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn tuple_key(peer: SocketAddr) -> TupleKey {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => TupleKey {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            port: peer.port(),
            family: AF_INET,
        },
        IpAddr::V6(v6) => TupleKey {
            addr: words(v6),
            port: peer.port(),
            family: AF_INET6,
        },
    }
}

fn words(v6: Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The destination the workload dialled.
pub fn original_destination(rec: &ConnRecord) -> SocketAddr {
    let ip = if rec.family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(rec.addr[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in rec.addr.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    };
    SocketAddr::new(ip, rec.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The object the binary embeds declares every map and program the
    /// daemon asks for by name, of the kind it attaches it as, and nothing
    /// the daemon does not know (a rename on either side fails here, not
    /// at load time on a host).
    #[test]
    fn the_embedded_object_has_every_map_and_program_by_name() {
        use aya_obj::ProgramSection as S;
        use aya_obj::programs::CgroupSockAddrAttachType as Addr;
        let obj = aya_obj::Object::parse(OBJECT).expect("the embedded eBPF object parses");
        let expected_maps = [
            maps::CONFIG,
            maps::HEARTBEAT,
            maps::BY_COOKIE,
            maps::BY_TUPLE,
            maps::COUNTERS,
            maps::INBOUND_RULES,
            maps::INBOUND_CGROUPS,
            maps::INBOUND_CONNS,
            maps::EVENTS,
            maps::WORKLOAD_PEERS,
        ];
        for m in expected_maps {
            assert!(
                obj.maps.contains_key(m),
                "map {m} missing: {:?}",
                obj.maps.keys()
            );
        }
        let mut expected_programs: Vec<&str> = programs::ATTACHED.to_vec();
        expected_programs.push(programs::LSM_SOCKET_CREATE);
        for p in &expected_programs {
            assert!(
                obj.programs.contains_key(*p),
                "program {p} missing: {:?}",
                obj.programs.keys()
            );
        }
        for name in obj.programs.keys() {
            assert!(
                expected_programs.contains(&name.as_str()),
                "program {name} is unknown to the daemon"
            );
        }
        let kind = |p: &str| &obj.programs[p].section;
        assert!(matches!(
            kind(programs::CONNECT4),
            S::CgroupSockAddr {
                attach_type: Addr::Connect4
            }
        ));
        assert!(matches!(
            kind(programs::CONNECT6),
            S::CgroupSockAddr {
                attach_type: Addr::Connect6
            }
        ));
        assert!(matches!(
            kind(programs::SENDMSG4),
            S::CgroupSockAddr {
                attach_type: Addr::UDPSendMsg4
            }
        ));
        assert!(matches!(
            kind(programs::SENDMSG6),
            S::CgroupSockAddr {
                attach_type: Addr::UDPSendMsg6
            }
        ));
        assert!(matches!(
            kind(programs::GETPEERNAME4),
            S::CgroupSockAddr {
                attach_type: Addr::GetPeerName4
            }
        ));
        assert!(matches!(
            kind(programs::GETPEERNAME6),
            S::CgroupSockAddr {
                attach_type: Addr::GetPeerName6
            }
        ));
        assert!(matches!(kind(programs::SOCK_OPS), S::SockOps));
        assert!(matches!(kind(programs::INGRESS), S::CgroupSkb { .. }));
        assert!(matches!(kind(programs::LSM_SOCKET_CREATE), S::LsmCgroup));
    }

    #[test]
    fn tuple_keys_normalise_v4_mapped() {
        let a = tuple_key("127.0.0.1:4000".parse().unwrap());
        let b = tuple_key("[::ffff:127.0.0.1]:4000".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.family, AF_INET);
        assert_eq!(a.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        let c = tuple_key("[::1]:4000".parse().unwrap());
        assert_eq!(c.family, AF_INET6);
        assert_eq!(c.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn original_destination_round_trips() {
        for s in ["10.1.2.3:443", "[2001:db8::7]:8443"] {
            let sa: SocketAddr = s.parse().unwrap();
            let k = tuple_key(sa);
            let rec = ConnRecord {
                addr: k.addr,
                port: k.port,
                family: k.family,
                ..Default::default()
            };
            assert_eq!(original_destination(&rec), sa);
        }
    }
}
