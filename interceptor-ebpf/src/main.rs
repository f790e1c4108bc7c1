//! Kernel side of interceptor: cgroup hooks attached to the workload cgroups.
//!
//! - `connect4/6`: record the original destination (by socket cookie) and
//!   rewrite it to the proxy listener on loopback; refuse when the daemon's
//!   heartbeat is stale, when the destination is one of the proxy's own ports,
//!   or when the record cannot be stored (fail closed).
//! - `sock_ops` (ACTIVE_ESTABLISHED): copy the record to a map keyed by the
//!   client's local address, which the proxy knows from `accept()`.
//! - `getpeername4/6`: show the skill the address it dialled.
//! - `post_bind4/6`: a workload may not bind the proxy's ports.
//! - `sendmsg4/6` and UDP `connect`: UDP is refused unless the operator allowed
//!   it (it is not proxied yet).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use interceptor_common::{
    AF_INET, AF_INET6, CONFIG_F_ALLOW_UDP, Config, ConnRecord, Heartbeat, TupleKey, counters,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0; // the syscall fails with EPERM

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;

// Pinned by name so a restarted daemon (and a second, stacked copy of these
// programs during a restart) shares the same state.
#[map(name = "ICPT_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);
#[map(name = "ICPT_HEARTBEAT")]
static HEARTBEAT: Array<Heartbeat> = Array::pinned(1, 0);
#[map(name = "ICPT_BY_COOKIE")]
static BY_COOKIE: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(65536, 0);
#[map(name = "ICPT_BY_TUPLE")]
static BY_TUPLE: LruHashMap<TupleKey, ConnRecord> = LruHashMap::pinned(65536, 0);
#[map(name = "ICPT_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// True while the daemon refreshed its heartbeat recently. Never-started (0)
/// counts as stale.
#[inline(always)]
fn daemon_alive(cfg: &Config) -> bool {
    let Some(hb) = HEARTBEAT.get(0) else { return false };
    let now = unsafe { bpf_ktime_get_ns() };
    hb.monotonic_ns != 0 && now.wrapping_sub(hb.monotonic_ns) <= cfg.heartbeat_timeout_ns
}

#[inline(always)]
fn is_protected(cfg: &Config, port: u16) -> bool {
    let mut i = 0;
    while i < cfg.protected_ports.len() {
        let p = cfg.protected_ports[i];
        if p != 0 && p == port {
            return true;
        }
        i += 1;
    }
    false
}

/// 127.0.0.0/8 or 0.0.0.0 (which Linux routes to the local host); `ip` in
/// network byte order.
#[inline(always)]
fn v4_is_local(ip: u32) -> bool {
    let host = u32::from_be(ip);
    host >> 24 == 127 || host == 0
}

#[inline(always)]
fn v6_is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && u32::from_be(ip[2]) == 0xffff
}

#[inline(always)]
fn v6_is_local(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == 0 || u32::from_be(ip[3]) == 1)
}

/// Common checks for a TCP/UDP connect; `Some(verdict)` ends the program.
#[inline(always)]
fn gate(sa: &bpf_sock_addr, cfg: &Config) -> Option<i32> {
    match (sa.type_, sa.protocol) {
        (SOCK_STREAM, IPPROTO_TCP) => None,
        (SOCK_DGRAM, _) if cfg.flags & CONFIG_F_ALLOW_UDP != 0 => Some(ALLOW),
        _ => {
            // UDP not allowed, SCTP, anything else the proxy cannot carry.
            count(counters::REFUSED_UDP);
            Some(REFUSE)
        }
    }
}

/// Store the record under the socket cookie. `false` when the map refused it.
#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u32; 4], port: u16, family: u16, socket_v6: u32) -> bool {
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let rec = ConnRecord {
        addr,
        port,
        family,
        socket_v6,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cookie,
    };
    BY_COOKIE.insert(cookie, rec, 0).is_ok()
}

/// A stacked copy of these programs (daemon restart) already rewrote this
/// connect to the proxy: let it through untouched.
#[inline(always)]
fn already_redirected(ctx: &SockAddrContext, cfg: &Config, port: u16) -> bool {
    if port != cfg.proxy_port {
        return false;
    }
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    unsafe { BY_COOKIE.get(cookie).is_some() }
}

#[cgroup_sock_addr(connect4)]
pub fn icpt_connect4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return REFUSE };
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(v) = gate(sa, cfg) {
        return v;
    }
    let ip = sa.user_ip4;
    let port = u16::from_be(sa.user_port as u16);
    if v4_is_local(ip) && is_protected(cfg, port) {
        if already_redirected(&ctx, cfg, port) {
            return ALLOW;
        }
        count(counters::REFUSED_PROTECTED);
        return REFUSE;
    }
    if !daemon_alive(cfg) {
        count(counters::REFUSED_STALE);
        return REFUSE;
    }
    if !remember(&ctx, [ip, 0, 0, 0], port, AF_INET, 0) {
        count(counters::REFUSED_MAP_FULL);
        return REFUSE;
    }
    sa.user_ip4 = u32::to_be(0x7f00_0001);
    sa.user_port = u16::to_be(cfg.proxy_port) as u32;
    count(counters::REDIRECTED);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn icpt_connect6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return REFUSE };
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(v) = gate(sa, cfg) {
        return v;
    }
    let ip = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let port = u16::from_be(sa.user_port as u16);
    let mapped = v6_is_v4_mapped(&ip);
    let local = if mapped { v4_is_local(ip[3]) } else { v6_is_local(&ip) };
    if local && is_protected(cfg, port) {
        if already_redirected(&ctx, cfg, port) {
            return ALLOW;
        }
        count(counters::REFUSED_PROTECTED);
        return REFUSE;
    }
    if !daemon_alive(cfg) {
        count(counters::REFUSED_STALE);
        return REFUSE;
    }
    let stored = if mapped {
        remember(&ctx, [ip[3], 0, 0, 0], port, AF_INET, 1)
    } else {
        remember(&ctx, ip, port, AF_INET6, 1)
    };
    if !stored {
        count(counters::REFUSED_MAP_FULL);
        return REFUSE;
    }
    // v4-mapped goes to ::ffff:127.0.0.1 (the v4 listener), IPv6 to ::1.
    sa.user_ip6[0] = 0;
    sa.user_ip6[1] = 0;
    if mapped {
        sa.user_ip6[2] = u32::to_be(0xffff);
        sa.user_ip6[3] = u32::to_be(0x7f00_0001);
    } else {
        sa.user_ip6[2] = 0;
        sa.user_ip6[3] = u32::to_be(1);
    }
    sa.user_port = u16::to_be(cfg.proxy_port) as u32;
    count(counters::REDIRECTED);
    ALLOW
}

/// UDP sendto()/sendmsg() with an explicit destination.
#[inline(always)]
fn udp_sendmsg() -> i32 {
    match config() {
        Some(cfg) if cfg.flags & CONFIG_F_ALLOW_UDP != 0 => ALLOW,
        _ => {
            count(counters::REFUSED_UDP);
            REFUSE
        }
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn icpt_sendmsg4(_ctx: SockAddrContext) -> i32 {
    udp_sendmsg()
}

#[cgroup_sock_addr(sendmsg6)]
pub fn icpt_sendmsg6(_ctx: SockAddrContext) -> i32 {
    udp_sendmsg()
}

#[inline(always)]
fn original(ctx: &SockAddrContext) -> Option<&'static ConnRecord> {
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    unsafe { BY_COOKIE.get(cookie) }
}

// getpeername programs must return 1 (the verifier rejects anything else).
#[cgroup_sock_addr(getpeername4)]
pub fn icpt_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = original(&ctx) {
        if rec.family == AF_INET {
            let sa = unsafe { &mut *ctx.sock_addr };
            sa.user_ip4 = rec.addr[0];
            sa.user_port = u16::to_be(rec.port) as u32;
        }
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn icpt_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(rec) = original(&ctx) {
        let sa = unsafe { &mut *ctx.sock_addr };
        if rec.family == AF_INET {
            sa.user_ip6[0] = 0;
            sa.user_ip6[1] = 0;
            sa.user_ip6[2] = u32::to_be(0xffff);
            sa.user_ip6[3] = rec.addr[0];
        } else {
            sa.user_ip6[0] = rec.addr[0];
            sa.user_ip6[1] = rec.addr[1];
            sa.user_ip6[2] = rec.addr[2];
            sa.user_ip6[3] = rec.addr[3];
        }
        sa.user_port = u16::to_be(rec.port) as u32;
    }
    1
}

#[inline(always)]
fn bind_guard(ctx: &SockContext) -> i32 {
    let Some(cfg) = config() else { return REFUSE };
    let port = unsafe { (*ctx.sock).src_port } as u16;
    if is_protected(cfg, port) {
        count(counters::REFUSED_BIND);
        return REFUSE;
    }
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn icpt_post_bind4(ctx: SockContext) -> i32 {
    bind_guard(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn icpt_post_bind6(ctx: SockContext) -> i32 {
    bind_guard(&ctx)
}

#[sock_ops]
pub fn icpt_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops as *mut _) };
            let _ = BY_COOKIE.remove(cookie);
        }
        _ => {}
    }
    1
}

/// Runs before the client's final ACK, so the record exists before the
/// proxy's `accept()` returns. The proxy deletes the tuple entry after its
/// lookup; the cookie entry goes when the socket closes.
#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops as *mut _) };
    let Some(rec) = (unsafe { BY_COOKIE.get(cookie) }) else { return };
    let rec = *rec;
    let family = ctx.family() as u16;
    let key = if family == AF_INET {
        TupleKey { addr: [ctx.local_ip4(), 0, 0, 0], port: ctx.local_port() as u16, family: AF_INET }
    } else {
        let ip = ctx.local_ip6();
        if v6_is_v4_mapped(&ip) {
            TupleKey { addr: [ip[3], 0, 0, 0], port: ctx.local_port() as u16, family: AF_INET }
        } else {
            TupleKey { addr: ip, port: ctx.local_port() as u16, family: AF_INET6 }
        }
    };
    let _ = BY_TUPLE.insert(key, rec, 0);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
