//! Kernel side, user half: load the embedded programs, attach them to the
//! workload cgroups, pin them, feed the heartbeat, and look up original
//! destinations for accepted connections.
//!
//! Restart without a gap: programs and maps are pinned in bpffs, so they keep
//! redirecting (and refusing, once the heartbeat goes stale) while no daemon
//! runs. A new daemon reuses the pinned maps, stacks its own programs on the
//! cgroups, pins them, and only then removes the previous links.
mod pins;

use crate::cgroup::WorkloadCgroup;
use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader};
use interceptor_common::{
    AF_INET, AF_INET6, CONFIG_F_ALLOW_UDP, Config, ConnRecord, Heartbeat, MAX_PROTECTED_PORTS,
    TupleKey, counters, maps, programs,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub use pins::{detach_all, ensure_bpffs};

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
}

/// Attached hooks plus the maps the daemon keeps using.
pub struct Hooks {
    /// Loaded programs, kept to attach to re-created cgroups.
    attacher: Mutex<Attacher>,
    heartbeat: Mutex<Array<MapData, Heartbeat>>,
    by_tuple: Mutex<HashMap<MapData, TupleKey, ConnRecord>>,
    counters: PerCpuArray<MapData, u64>,
}

struct Attacher {
    bpf: Ebpf,
    layout: pins::Layout,
    generation: String,
    /// Workload cgroup (relative path) → id of the cgroup the links are on.
    attached: std::collections::HashMap<String, u64>,
}

/// Kernel counters, summed over CPUs.
#[derive(Debug, Default, serde::Serialize)]
pub struct KernelCounters {
    pub redirected: u64,
    pub refused_stale: u64,
    pub refused_protected: u64,
    pub refused_map_full: u64,
    pub refused_udp: u64,
    pub refused_bind: u64,
}

impl Hooks {
    /// Loads, attaches and pins everything. On return the cgroups are covered
    /// by this daemon's programs and no older ones.
    pub fn attach(bpffs_dir: &Path, cgroups: &[WorkloadCgroup], s: &HookSettings) -> Result<Hooks> {
        check_kernel()?;
        ensure_bpffs(bpffs_dir)?;
        let layout = pins::Layout::new(bpffs_dir);
        std::fs::create_dir_all(layout.maps())
            .with_context(|| format!("creating {}", layout.maps().display()))?;
        let old_links = layout.existing_links();

        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps())
            .load(OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object: {e}"))
            .context("is this kernel >= 5.10 with cgroup BPF? (CONFIG_CGROUP_BPF)")?;

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

        let generation = format!("{}-{}", std::process::id(), monotonic_ns());
        let mut attached = std::collections::HashMap::new();
        for cg in cgroups {
            let id = attach_cgroup(&mut bpf, &layout, cg, &generation)
                .with_context(|| format!("attaching to cgroup {}", cg.rel))?;
            attached.insert(cg.rel.clone(), id);
        }
        // Only now that the new programs are pinned, the old ones can go.
        for old in old_links {
            if let Err(e) = pins::remove_link(&old) {
                tracing::warn!(path = %old.display(), error = %e, "could not remove an old pinned link");
            }
        }
        pins::remove_empty_dirs(&layout);

        Ok(Hooks {
            heartbeat: Mutex::new(heartbeat),
            by_tuple: Mutex::new(HashMap::try_from(take(&mut bpf, maps::BY_TUPLE)?)?),
            counters: PerCpuArray::try_from(take(&mut bpf, maps::COUNTERS)?)?,
            attacher: Mutex::new(Attacher {
                bpf,
                layout,
                generation,
                attached,
            }),
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
        if a.attached.get(&cg.rel) == Some(&current) {
            return Ok(false);
        }
        let Attacher {
            bpf,
            layout,
            generation,
            attached,
        } = &mut *a;
        let id = attach_cgroup(bpf, layout, cg, generation)?;
        if let Some(old) = attached.insert(cg.rel.clone(), id) {
            // The dead cgroup's links: unpinning them frees it.
            for l in layout.links_of(old) {
                let _ = pins::remove_link(&l);
            }
            pins::remove_empty_dirs(layout);
        }
        Ok(true)
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
            refused_map_full: sum(counters::REFUSED_MAP_FULL),
            refused_udp: sum(counters::REFUSED_UDP),
            refused_bind: sum(counters::REFUSED_BIND),
        }
    }
}

fn check_kernel() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "interceptor run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach cgroup programs)"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); interceptor needs a kernel >= 5.10 built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
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
    })
}

fn take(bpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

/// Attaches every program to one cgroup and pins each link right away (a
/// loader that dies before pinning leaves no hook behind). Returns the id of
/// the cgroup it attached to.
fn attach_cgroup(
    bpf: &mut Ebpf,
    layout: &pins::Layout,
    cg: &WorkloadCgroup,
    generation: &str,
) -> Result<u64> {
    let dir =
        std::fs::File::open(&cg.abs).with_context(|| format!("opening {}", cg.abs.display()))?;
    // The id of the cgroup behind this very fd, whatever the path names later.
    let cgroup_id = dir.metadata()?.ino();
    let links_dir = layout.links_for(cgroup_id)?;
    let pin = |name: &str, link: FdLink| -> Result<()> {
        // bpffs refuses names containing a dot.
        let path = links_dir.join(format!("{name}-{generation}"));
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    };
    // Order matters only for the moment before all are attached (see
    // programs::ATTACHED).
    for name in programs::ATTACHED {
        let link: FdLink = match name {
            programs::SOCK_OPS => {
                let p: &mut SockOps = program(bpf, name)?;
                let id = p.attach(&dir, ATTACH_MODE)?;
                p.take_link(id)?.try_into()?
            }
            programs::POST_BIND4 | programs::POST_BIND6 => {
                let p: &mut CgroupSock = program(bpf, name)?;
                let id = p.attach(&dir, ATTACH_MODE)?;
                p.take_link(id)?.try_into()?
            }
            _ => {
                let p: &mut CgroupSockAddr = program(bpf, name)?;
                let id = p.attach(&dir, ATTACH_MODE)?;
                p.take_link(id)?.try_into()?
            }
        };
        pin(name, link)?;
    }
    Ok(cgroup_id)
}

/// The programs not attached to the cgroup now at `cg`'s path, judged by
/// the links pinned under its cgroup id (`interceptor check-hooks`, which
/// gates skills.slice at boot). A re-created cgroup has a new id, hence none.
pub fn missing_hooks(bpffs_dir: &Path, cg: &WorkloadCgroup) -> Result<Vec<&'static str>> {
    let id = std::fs::metadata(&cg.abs)
        .with_context(|| format!("reading {}", cg.abs.display()))?
        .ino();
    let pinned = pins::Layout::new(bpffs_dir).links_of(id);
    Ok(programs::ATTACHED
        .into_iter()
        .filter(|name| {
            !pinned.iter().any(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&format!("{name}-")))
                    && aya::programs::links::PinnedLink::from_pin(p).is_ok()
            })
        })
        .collect())
}

/// A program of the object, loaded into the kernel on first use.
fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    T: Loadable + 'a,
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p: &mut T = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()?;
    if !p.is_loaded() {
        p.load_it()
            .map_err(|e| anyhow!("loading program {name}: {e:#}"))?;
    }
    Ok(p)
}

/// The three program types we attach share these two operations.
trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_it(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            fn is_loaded(&self) -> bool { self.fd().is_ok() }
            fn load_it(&mut self) -> Result<(), aya::programs::ProgramError> { self.load() }
        }
    )*};
}
loadable!(SockOps, CgroupSock, CgroupSockAddr);

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
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
