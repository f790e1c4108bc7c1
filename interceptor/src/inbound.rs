//! Inbound connections. The kernel drops everything that arrives at a
//! workload socket unless the proxy sent it or an `[[inbound]]` rule allows
//! it for that workload; this module turns the rules into the kernel's maps
//! and records every connection a workload accepted by rule as a session.
use crate::bpf::Hooks;
use crate::cgroup::{CgroupNames, WorkloadCgroup};
use crate::policy::{Action, Policy};
use crate::proxy::Proxy;
use crate::store::{self, Session, State, Workload};
use aya::maps::{MapData, RingBuf};
use interceptor_common::{
    AF_INET, EVENT_INBOUND_CLOSE, EVENT_INBOUND_OPEN, EVENT_INBOUND_PENDING, InboundEvent,
    InboundKey,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const IPPROTO_TCP: u8 = 6;

/// The kernel's longest-prefix entries: (key, peer prefix length, mask of
/// the rules, by index, that allow it). Rules sharing a key share an entry.
pub fn kernel_rules(policy: &Policy) -> Vec<(InboundKey, u32, u64)> {
    let mut out: Vec<(InboundKey, u32, u64)> = Vec::new();
    for (i, r) in policy.inbound.iter().enumerate() {
        for port in &r.ports {
            for net in &r.peers {
                let (version, addr) = match net.network() {
                    IpAddr::V4(a) => (4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
                    IpAddr::V6(a) => (6, words(a)),
                };
                let key = InboundKey {
                    port_be: port.to_be(),
                    proto: IPPROTO_TCP,
                    ip_version: version,
                    addr,
                };
                let bits = net.prefix_len() as u32;
                match out.iter_mut().find(|(k, b, _)| *k == key && *b == bits) {
                    Some(e) => e.2 |= 1 << i,
                    None => out.push((key, bits, 1 << i)),
                }
            }
        }
    }
    out
}

/// Every cgroup under the workload roots whose path some inbound rule's
/// workload matches, by cgroup id → mask of those rules.
pub fn cgroup_masks(policy: &Policy, mount: &Path, roots: &[WorkloadCgroup]) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    if policy.inbound.is_empty() {
        return out;
    }
    let mut stack: Vec<std::path::PathBuf> = roots.iter().map(|r| r.abs.clone()).collect();
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let rel = dir.strip_prefix(mount).unwrap_or(&dir).to_string_lossy();
        let mask = policy
            .inbound
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches_workload(&rel))
            .fold(0u64, |m, (i, _)| m | 1 << i);
        if mask != 0 {
            out.insert(meta.ino(), mask);
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Pushes the current policy's inbound rules and the matching cgroups to
/// the kernel (at start, on reload, and as cgroups come and go).
pub fn sync(proxy: &Proxy, hooks: &Hooks, mount: &Path, roots: &[WorkloadCgroup]) {
    let policy = proxy.policy();
    let rules = kernel_rules(&policy);
    let cgroups = cgroup_masks(&policy, mount, roots);
    if let Err(e) = hooks.set_inbound(&rules, &cgroups) {
        tracing::error!(error = %format!("{e:#}"), "could not update the kernel's inbound rules; inbound stays as it was");
    }
}

/// Handshakes let in but never completed are forgotten after this (above
/// the kernel's SYN-ACK retries, about 63 s).
const PENDING_EXPIRY: Duration = Duration::from_secs(120);
/// How often the kernel's entries are swept when no doorbell rings.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Records each connection a workload accepted by rule as a session,
/// opened then closed with its byte counts. The kernel keeps every such
/// connection in a map from its SYN until this has recorded its end (the
/// ring buffer only rings the bell), so a burst delays records, it does not
/// lose them. A daemon that starts finds what its predecessor left.
pub async fn record(proxy: Arc<Proxy>, hooks: Arc<Hooks>, ring: RingBuf<MapData>) {
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open for as
    // long as it is registered.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the inbound ring buffer; sweeping every 250 ms instead");
            None
        }
    };
    let mut open: HashMap<u64, Session> = HashMap::new();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        match fd.as_mut() {
            Some(fd) => tokio::select! {
                _ = tick.tick() => {}
                guard = fd.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        // The doorbell's copies are not needed: drain them.
                        while guard.get_inner_mut().next().is_some() {}
                        guard.clear_ready();
                    }
                }
            },
            None => {
                tick.tick().await;
            }
        }
        sweep(&proxy, &hooks, &mut open);
    }
}

/// One pass over the kernel's entries; returns how many records it wrote.
fn sweep(proxy: &Proxy, hooks: &Hooks, open: &mut HashMap<u64, Session>) -> usize {
    let now = crate::bpf::monotonic_ns();
    let mut wrote = 0;
    for (t, ev) in hooks.inbound_conns() {
        match ev.kind {
            EVENT_INBOUND_PENDING
                if now.saturating_sub(ev.since_ns) > PENDING_EXPIRY.as_nanos() as u64 =>
            {
                hooks.forget_inbound(&t);
            }
            EVENT_INBOUND_OPEN if !open.contains_key(&ev.cookie) => {
                open.insert(ev.cookie, opened(proxy, &ev));
                wrote += 1;
            }
            EVENT_INBOUND_CLOSE => {
                let mut s = match open.remove(&ev.cookie) {
                    Some(s) => s,
                    None => opened(proxy, &ev),
                };
                s.state = State::Closed;
                s.ended_ms = Some(store::now_ms());
                s.bytes_up = ev.bytes_out;
                s.bytes_down = ev.bytes_in;
                if let Err(e) = proxy.store.put(&s) {
                    // Kept in the kernel: the next sweep tries again.
                    tracing::error!(session = s.id, error = %e, "could not record the session");
                    open.insert(ev.cookie, s);
                    continue;
                }
                hooks.forget_inbound(&t);
                wrote += 1;
            }
            _ => {}
        }
    }
    wrote
}

/// The session of an accepted inbound connection, recorded and audited.
/// The kernel knows the workload's cgroup and the rules; which process
/// accepts is not known when the handshake completes.
fn opened(proxy: &Proxy, ev: &InboundEvent) -> Session {
    let s = session_of(proxy, ev);
    tracing::info!(
        session = s.id, cgroup = %s.workload.cgroup, local = %s.destination, peer = %s.client,
        rule = s.rule.as_deref().unwrap_or("-"), "inbound connection accepted"
    );
    let data = serde_json::json!({
        "session": s.id, "workload": s.workload.cgroup, "cgroup_id": s.workload.cgroup_id,
        "local": s.destination, "peer": s.client, "decision": s.decision, "rule": s.rule,
    });
    let recorded = proxy
        .store
        .audit_indexed("inbound", &data)
        .and_then(|ticket| proxy.store.put_audited(&s, ticket));
    if let Err(e) = recorded {
        tracing::error!(session = s.id, error = %format!("{e:#}"), "could not record the inbound session");
    }
    s
}

fn session_of(proxy: &Proxy, ev: &InboundEvent) -> Session {
    let policy = proxy.policy();
    let rule = (0..64)
        .find(|i| ev.rules & (1 << i) != 0)
        .and_then(|i| policy.inbound.get(i));
    let reason = match rule {
        Some(r) => format!("inbound connection allowed by [[inbound]] at {}", r.origin),
        None => "inbound connection allowed by a rule since reloaded away".into(),
    };
    let rule = rule.map(|r| r.id.clone());
    Session {
        id: proxy.store.next_session_id(),
        started_ms: store::now_ms(),
        ended_ms: None,
        state: State::Open,
        workload: workload_of(&proxy.names, ev.cgroup_id),
        destination: addr(ev.family, &ev.local, ev.local_port).to_string(),
        client: addr(ev.family, &ev.peer, ev.peer_port).to_string(),
        protocol: "inbound".into(),
        sni: None,
        requests: 0,
        decision: Action::Allow,
        rule,
        reason,
        bytes_up: 0,
        bytes_down: 0,
        error: None,
    }
}

fn workload_of(names: &CgroupNames, cgroup_id: u64) -> Workload {
    Workload {
        cgroup: names.name(cgroup_id).unwrap_or_default(),
        cgroup_id,
        ..Default::default()
    }
}

fn addr(family: u16, a: &[u32; 4], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(a[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    };
    SocketAddr::new(ip, port)
}

fn words(v6: Ipv6Addr) -> [u32; 4] {
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_prefix_entries_sharing_keys() {
        let dir = std::env::temp_dir().join(format!("icpt-inbound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.toml"),
            "[[inbound]]\nid = \"a\"\nworkload = \"skills.slice\"\nport = 8080\npeer = [\"10.0.0.0/8\", \"::1\"]\n\n\
             [[inbound]]\nid = \"b\"\nworkload = \"x.service\"\nport = [8080, 9090]\npeer = \"10.1.2.3/8\"\n",
        )
        .unwrap();
        let p = Policy::load_dir(&dir).unwrap();
        let k = kernel_rules(&p);
        // 10.0.0.0/8 on 8080 is shared by both rules (b's peer is truncated).
        let shared = k
            .iter()
            .find(|(key, bits, _)| {
                key.port_be == 8080u16.to_be() && *bits == 8 && key.ip_version == 4
            })
            .unwrap();
        assert_eq!(shared.2, 0b11);
        assert_eq!(shared.0.addr[0].to_ne_bytes(), [10, 0, 0, 0]);
        assert!(
            k.iter()
                .any(|(key, bits, m)| key.ip_version == 6 && *bits == 128 && *m == 1)
        );
        assert!(
            k.iter()
                .any(|(key, _, m)| key.port_be == 9090u16.to_be() && *m == 0b10)
        );
        assert_eq!(k.len(), 3);
        assert!(p.inbound[1].matches_workload("skills.slice/x.service"));
        assert!(!p.inbound[1].matches_workload("skills.slice/y.service"));
        std::fs::write(dir.join("p.toml"), "[[inbound]]\nid = \"c\"\nworkload = \"w\"\nport = 1\npeer = \"nope\"\nproto = \"udp\"\n").unwrap();
        let errs = Policy::load_dir(&dir).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("p.toml:6") && e.contains("udp")),
            "{text:?}"
        );
        assert!(text.iter().any(|e| e.contains("\"nope\"")), "{text:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
