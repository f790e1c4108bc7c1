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
//! - `sock_create`: IPv4/IPv6 sockets outside the allow-list (ICMP ping
//!   sockets, SCTP, DCCP, UDP-Lite, L2TP/IP, raw, ...) are refused at
//!   `socket()`, so nothing the proxy cannot carry ever exists.
//! - `lsm_cgroup/socket_create` (where the BPF LSM runs): the same for every
//!   other family (vsock, TIPC, RDS, packet, ...); AF_UNIX and netlink
//!   route/diag stay, as libc needs them.
//! - `cgroup_skb/ingress`: a workload socket receives only what the proxy
//!   sends it (its sockets carry `proxy_mark`), RSTs, and handshakes an
//!   `[[inbound]]` rule allows; nothing else comes in.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, BPF_TCP_ESTABLISHED,
        BPF_TCP_LISTEN, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, lsm_cgroup, map, sock_ops},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use interceptor_common::{
    AF_INET, AF_INET6, CONFIG_F_ALLOW_UDP, Config, ConnRecord, EVENT_INBOUND_CLOSE,
    EVENT_INBOUND_OPEN, EVENT_INBOUND_PENDING, Heartbeat, INBOUND_CONNS_MAX,
    INBOUND_KEY_FIXED_BITS, InboundEvent, InboundKey, InboundTuple, TupleKey, counters, kinds,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0; // the syscall fails with EPERM

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_SCTP: u32 = 132;
const IPPROTO_MPTCP: u32 = 262;
const AF_UNIX: i32 = 1;
const AF_NETLINK: i32 = 16;
const NETLINK_ROUTE: i32 = 0;
const NETLINK_SOCK_DIAG: i32 = 4;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

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
/// `[[inbound]]` rules: (port, proto, family, peer prefix) → rule bit mask.
#[map(name = "ICPT_INBOUND_RULES")]
static INBOUND_RULES: LpmTrie<InboundKey, u64> =
    LpmTrie::pinned(1024, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
/// Workload cgroup id → the inbound rules whose workload matches it; kept
/// current by the daemon as cgroups come and go.
#[map(name = "ICPT_INBOUND_CGROUPS")]
static INBOUND_CGROUPS: HashMap<u64, u64> = HashMap::pinned(4096, 0);
/// Inbound connections let in by rule, from the SYN until the daemon has
/// recorded their end (see `INBOUND_CONNS_MAX`).
#[map(name = "ICPT_INBOUND_CONNS")]
static INBOUND_CONNS: HashMap<InboundTuple, InboundEvent> = HashMap::pinned(INBOUND_CONNS_MAX, 0);
/// The proxy's own connects that landed on a workload's listener, keyed by
/// the proxy's end (its local address and port): the proxy looks its new
/// upstream connection up here and never sends a credential over one.
#[map(name = "ICPT_WORKLOAD_PEERS")]
// LRU and large: evicting one entry between the proxy's SYN and its
// lookup (microseconds) would take tens of thousands of proxy connects.
static WORKLOAD_PEERS: LruHashMap<TupleKey, u64> = LruHashMap::pinned(65536, 0);
/// Inbound open/close events for the daemon to record.
#[map(name = "ICPT_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

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
    let Some(hb) = HEARTBEAT.get(0) else {
        return false;
    };
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
/// `family` is the socket's own; an address of another family makes the
/// kernel fail the connect after this program ran, so it is refused here
/// and no record outlives it.
#[inline(always)]
fn gate(sa: &bpf_sock_addr, cfg: &Config, family: u32) -> Option<i32> {
    if sa.user_family != family {
        return Some(REFUSE);
    }
    match (sa.type_, sa.protocol) {
        (SOCK_STREAM, IPPROTO_TCP) | (SOCK_STREAM, IPPROTO_MPTCP) => None,
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

/// Drops the record a refused connect may have left from an earlier
/// attempt on the same socket.
#[inline(always)]
fn forget(ctx: &SockAddrContext) {
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let _ = BY_COOKIE.remove(cookie);
}

/// Where a connect is headed, as read from the socket address.
#[derive(Clone, Copy)]
enum Dest {
    /// An IPv4 socket's address (network byte order).
    V4(u32),
    /// An IPv6 socket connecting to a v4-mapped address (`::ffff:a.b.c.d`).
    Mapped(u32),
    V6([u32; 4]),
}

impl Dest {
    /// The local host: where the proxy's own ports live.
    #[inline(always)]
    fn is_local(self) -> bool {
        match self {
            Dest::V4(ip) | Dest::Mapped(ip) => v4_is_local(ip),
            Dest::V6(ip) => v6_is_local(&ip),
        }
    }

    /// The address and family the record keeps (a v4-mapped destination
    /// is recorded as the IPv4 address it is).
    #[inline(always)]
    fn recorded(self) -> ([u32; 4], u16) {
        match self {
            Dest::V4(ip) | Dest::Mapped(ip) => ([ip, 0, 0, 0], AF_INET),
            Dest::V6(ip) => (ip, AF_INET6),
        }
    }
}

/// The one body of connect4 and connect6: refuse what the proxy cannot
/// carry or must not be asked, remember the original destination under the
/// socket's cookie, and point the socket at the proxy. `family` is a
/// constant in each caller, so each program keeps only the context fields
/// its attach type may touch (the verifier refuses `user_ip6` in connect4).
#[inline(always)]
fn redirect(ctx: &SockAddrContext, family: u32) -> i32 {
    let Some(cfg) = config() else { return REFUSE };
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(v) = gate(sa, cfg, family) {
        if v == REFUSE {
            forget(ctx);
        }
        return v;
    }
    let v6 = family == AF_INET6 as u32;
    let dest = if v6 {
        let ip = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        if v6_is_v4_mapped(&ip) {
            Dest::Mapped(ip[3])
        } else {
            Dest::V6(ip)
        }
    } else {
        Dest::V4(sa.user_ip4)
    };
    let port = u16::from_be(sa.user_port as u16);
    // The proxy's own ports are never a workload's destination, on any
    // local address and whatever the socket did before (a restart replaces
    // these programs in place, so no second copy ever sees a rewritten
    // address).
    if dest.is_local() && is_protected(cfg, port) {
        forget(ctx);
        count(counters::REFUSED_PROTECTED);
        return REFUSE;
    }
    if !daemon_alive(cfg) {
        forget(ctx);
        count(counters::REFUSED_STALE);
        return REFUSE;
    }
    let (addr, recorded_family) = dest.recorded();
    if !remember(ctx, addr, port, recorded_family, v6 as u32) {
        count(counters::REFUSED_RECORD);
        return REFUSE;
    }
    // IPv4 goes to 127.0.0.1, v4-mapped to ::ffff:127.0.0.1 (the v4
    // listener), IPv6 to ::1.
    match dest {
        Dest::V4(_) => sa.user_ip4 = u32::to_be(0x7f00_0001),
        Dest::Mapped(_) => {
            sa.user_ip6[0] = 0;
            sa.user_ip6[1] = 0;
            sa.user_ip6[2] = u32::to_be(0xffff);
            sa.user_ip6[3] = u32::to_be(0x7f00_0001);
        }
        Dest::V6(_) => {
            sa.user_ip6[0] = 0;
            sa.user_ip6[1] = 0;
            sa.user_ip6[2] = 0;
            sa.user_ip6[3] = u32::to_be(1);
        }
    }
    sa.user_port = u16::to_be(cfg.proxy_port) as u32;
    count(counters::REDIRECTED);
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn icpt_connect4(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, AF_INET as u32)
}

#[cgroup_sock_addr(connect6)]
pub fn icpt_connect6(ctx: SockAddrContext) -> i32 {
    redirect(&ctx, AF_INET6 as u32)
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
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_inbound_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops as *mut _) };
            let _ = BY_COOKIE.remove(cookie);
            on_inbound_close(&ctx);
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
    let Some(rec) = (unsafe { BY_COOKIE.get(cookie) }) else {
        return;
    };
    let rec = *rec;
    let family = ctx.family() as u16;
    let key = if family == AF_INET {
        TupleKey {
            addr: [ctx.local_ip4(), 0, 0, 0],
            port: ctx.local_port() as u16,
            family: AF_INET,
        }
    } else {
        let ip = ctx.local_ip6();
        if v6_is_v4_mapped(&ip) {
            TupleKey {
                addr: [ip[3], 0, 0, 0],
                port: ctx.local_port() as u16,
                family: AF_INET,
            }
        } else {
            TupleKey {
                addr: ip,
                port: ctx.local_port() as u16,
                family: AF_INET6,
            }
        }
    };
    let _ = BY_TUPLE.insert(key, rec, 0);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// The peer of a passive (accepted) socket, v4-mapped folded to IPv4.
#[inline(always)]
fn inbound_tuple(ctx: &SockOpsContext) -> InboundTuple {
    // sock_ops keeps the remote port in network order in the upper half.
    let peer_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    let local_port = ctx.local_port() as u16;
    if ctx.family() == AF_INET as u32 {
        return InboundTuple {
            peer: [ctx.remote_ip4(), 0, 0, 0],
            peer_port,
            local_port,
            family: AF_INET,
            _pad: 0,
        };
    }
    let ip = ctx.remote_ip6();
    if v6_is_v4_mapped(&ip) {
        InboundTuple {
            peer: [ip[3], 0, 0, 0],
            peer_port,
            local_port,
            family: AF_INET,
            _pad: 0,
        }
    } else {
        InboundTuple {
            peer: ip,
            peer_port,
            local_port,
            family: AF_INET6,
            _pad: 0,
        }
    }
}

/// A workload accepted a connection. Only those an `[[inbound]]` rule let
/// in have an entry (made at their SYN); the proxy's own connects to a
/// workload's server are recorded by the proxy as outbound sessions.
#[inline(always)]
fn on_inbound_established(ctx: &SockOpsContext) {
    let t = inbound_tuple(ctx);
    let Some(entry) = INBOUND_CONNS.get_ptr_mut(&t) else {
        return;
    };
    let ev = unsafe { &mut *entry };
    ev.kind = EVENT_INBOUND_OPEN;
    ev.cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.ops as *mut _) };
    ev.local = if t.family == AF_INET {
        [ctx.local_ip4(), 0, 0, 0]
    } else {
        let ip = ctx.local_ip6();
        if v6_is_v4_mapped(&ip) {
            [ip[3], 0, 0, 0]
        } else {
            ip
        }
    };
    count(counters::INBOUND_ACCEPTED);
    // Wakes the daemon; the record is the map entry.
    let _ = EVENTS.output::<InboundEvent>(ev, 0);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// The end of an accepted inbound connection, marked on its entry; the
/// daemon removes the entry once it has recorded it.
#[inline(always)]
fn on_inbound_close(ctx: &SockOpsContext) {
    let t = inbound_tuple(ctx);
    let Some(entry) = INBOUND_CONNS.get_ptr_mut(&t) else {
        return;
    };
    let ev = unsafe { &mut *entry };
    if ev.kind != EVENT_INBOUND_OPEN {
        return;
    }
    ev.kind = EVENT_INBOUND_CLOSE;
    unsafe {
        ev.bytes_in = (*ctx.ops).bytes_received;
        ev.bytes_out = (*ctx.ops).bytes_acked;
    }
    let _ = EVENTS.output::<InboundEvent>(ev, 0);
}

/// `socket()` of an IPv4/IPv6 socket: only what the proxy carries (TCP,
/// MPTCP) and the kinds the operator allowed. The protocol is resolved by
/// the time this runs (0 became IPPROTO_TCP/UDP/...).
#[cgroup_sock(sock_create)]
pub fn icpt_sock_create(ctx: SockContext) -> i32 {
    let Some(cfg) = config() else { return REFUSE };
    let sk = unsafe { &*ctx.sock };
    let allowed = cfg.socket_kinds
        | if cfg.flags & CONFIG_F_ALLOW_UDP != 0 {
            kinds::UDP
        } else {
            0
        };
    let need = match (sk.type_, sk.protocol) {
        (SOCK_STREAM, IPPROTO_TCP) => return ALLOW,
        (SOCK_STREAM, IPPROTO_MPTCP) => kinds::MPTCP,
        (SOCK_DGRAM, IPPROTO_UDP) => kinds::UDP,
        (SOCK_DGRAM, IPPROTO_ICMP) | (SOCK_DGRAM, IPPROTO_ICMPV6) => kinds::ICMP,
        (_, IPPROTO_SCTP) => kinds::SCTP,
        // Raw, DCCP, UDP-Lite, L2TP/IP, SMC over inet, anything new.
        _ => 0,
    };
    if need != 0 && allowed & need != 0 {
        return ALLOW;
    }
    count(counters::REFUSED_SOCKET);
    REFUSE
}

/// `socket()` of any family, through the BPF LSM (the cgroup hook above
/// only sees IPv4/IPv6). Kernel-internal sockets are left alone.
#[lsm_cgroup(hook = "socket_create")]
pub fn icpt_lsm_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || family == AF_INET as i32 || family == AF_INET6 as i32 {
        return 1;
    }
    let Some(cfg) = config() else { return 0 };
    let need = match (family, protocol) {
        (AF_UNIX, _) => kinds::UNIX,
        (AF_NETLINK, NETLINK_ROUTE) => kinds::NETLINK_ROUTE,
        (AF_NETLINK, NETLINK_SOCK_DIAG) => kinds::NETLINK_DIAG,
        _ => 0,
    };
    if need != 0 && cfg.socket_kinds & need != 0 {
        return 1;
    }
    count(counters::REFUSED_SOCKET);
    0
}

const INGRESS_PASS: i32 = 1;
const INGRESS_DROP: i32 = 0;

/// What the inbound filter needs from a packet's headers.
struct Packet {
    version: u8,
    proto: u8,
    peer: [u32; 4],
    /// Network byte order, as in the header.
    peer_port_be: u16,
    local_port_be: u16,
    tcp_flags: u8,
}

/// Reads the IP and TCP/UDP headers (cgroup_skb data starts at the network
/// header). IPv6 extension headers are not walked: such packets do not
/// match a rule and are dropped unless the proxy sent them.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Packet> {
    let first: u8 = ctx.load(0).ok()?;
    let (version, proto, peer, l4) = match first >> 4 {
        4 => {
            let proto: u8 = ctx.load(9).ok()?;
            let saddr: u32 = ctx.load(12).ok()?;
            (4u8, proto, [saddr, 0, 0, 0], ((first & 0x0f) as usize) * 4)
        }
        6 => {
            let proto: u8 = ctx.load(6).ok()?;
            let saddr: [u32; 4] = ctx.load(8).ok()?;
            (6u8, proto, saddr, 40usize)
        }
        _ => return None,
    };
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    let tcp_flags = if proto == IPPROTO_TCP as u8 {
        ctx.load::<u8>(l4 + 13).ok()?
    } else {
        0
    };
    Some(Packet {
        version,
        proto,
        peer,
        peer_port_be: ports[0],
        local_port_be: ports[1],
        tcp_flags,
    })
}

/// Everything that arrives at a workload socket. Passes what the proxy
/// sent (its mark), RSTs (they open nothing and make a refused connect fail
/// fast), datagrams on connected UDP sockets when UDP is allowed, and TCP
/// that an `[[inbound]]` rule allows for this workload; drops the rest.
#[cgroup_skb(ingress)]
pub fn icpt_ingress(ctx: SkBuffContext) -> i32 {
    let Some(cfg) = config() else {
        return INGRESS_DROP;
    };
    let skb = ctx.skb.skb;
    if cfg.proxy_mark != 0 && unsafe { (*skb).mark } == cfg.proxy_mark {
        // A handshake starting at a workload listener.
        if sock_state(&ctx) == Some(BPF_TCP_LISTEN) {
            note_workload_peer(&ctx);
        }
        return INGRESS_PASS;
    }
    let Some(p) = parse(&ctx) else {
        count(counters::DROPPED_INBOUND);
        return INGRESS_DROP;
    };
    if p.proto == IPPROTO_TCP as u8 && p.tcp_flags & TCP_FLAG_RST != 0 {
        return INGRESS_PASS;
    }
    // A connected UDP socket only receives from its peer.
    if p.proto == IPPROTO_UDP as u8
        && cfg.flags & CONFIG_F_ALLOW_UDP != 0
        && sock_state(&ctx) == Some(BPF_TCP_ESTABLISHED)
    {
        return INGRESS_PASS;
    }
    if p.proto == IPPROTO_TCP as u8 && inbound_allowed(&ctx, &p) {
        return INGRESS_PASS;
    }
    count(counters::DROPPED_INBOUND);
    INGRESS_DROP
}

/// The TCP state of the socket a packet is for (UDP: ESTABLISHED when
/// connected).
#[inline(always)]
fn sock_state(ctx: &SkBuffContext) -> Option<u32> {
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let full = unsafe { aya_ebpf::helpers::bpf_sk_fullsock(sk) };
    (!full.is_null()).then(|| unsafe { (*full).state })
}

/// The proxy's SYN reached a workload listener: remember the proxy's end
/// before the SYN-ACK goes back, so before the proxy's connect() returns.
#[inline(always)]
fn note_workload_peer(ctx: &SkBuffContext) {
    let Some(p) = parse(ctx) else { return };
    if p.proto != IPPROTO_TCP as u8 || p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return;
    }
    let port = u16::from_be(p.peer_port_be);
    let (addr, family) = match p.version {
        4 => (p.peer, AF_INET),
        _ if v6_is_v4_mapped(&p.peer) => ([p.peer[3], 0, 0, 0], AF_INET),
        _ => (p.peer, AF_INET6),
    };
    let key = TupleKey { addr, port, family };
    let cgroup_id = unsafe { aya_ebpf::helpers::bpf_skb_cgroup_id(ctx.skb.skb) };
    let _ = WORKLOAD_PEERS.insert(&key, &cgroup_id, 0);
}

/// An `[[inbound]]` rule for this port and peer whose workload is the
/// socket's cgroup. A SYN that passes is remembered, so the accepted
/// connection is recorded with its cgroup and rules.
#[inline(always)]
fn inbound_allowed(ctx: &SkBuffContext, p: &Packet) -> bool {
    let key = InboundKey {
        port_be: p.local_port_be,
        proto: p.proto,
        ip_version: p.version,
        addr: p.peer,
    };
    let bits = INBOUND_KEY_FIXED_BITS + if p.version == 4 { 32 } else { 128 };
    let Some(rules) = INBOUND_RULES.get(Key::new(bits, key)) else {
        return false;
    };
    let cgroup_id = unsafe { aya_ebpf::helpers::bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(mine) = (unsafe { INBOUND_CGROUPS.get(&cgroup_id) }) else {
        return false;
    };
    let matched = *rules & *mine;
    if matched == 0 {
        return false;
    }
    if p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        return admit(p, cgroup_id, matched);
    }
    true
}

/// A SYN an inbound rule allows passes only once its connection has a
/// record: a new entry (retransmitted SYNs find theirs). No room, or the
/// tuple's previous connection not yet recorded closed: dropped, and the
/// peer's TCP retries.
#[inline(always)]
fn admit(p: &Packet, cgroup_id: u64, rules: u64) -> bool {
    let t = InboundTuple {
        peer: p.peer,
        peer_port: u16::from_be(p.peer_port_be),
        local_port: u16::from_be(p.local_port_be),
        family: if p.version == 4 { AF_INET } else { AF_INET6 },
        _pad: 0,
    };
    if let Some(e) = unsafe { INBOUND_CONNS.get(&t) } {
        if e.kind == EVENT_INBOUND_PENDING {
            return true;
        }
        count(counters::INBOUND_BACKPRESSURE);
        return false;
    }
    let ev = InboundEvent {
        kind: EVENT_INBOUND_PENDING,
        family: t.family,
        local_port: t.local_port,
        peer: t.peer,
        local: [0; 4],
        peer_port: t.peer_port,
        _pad: [0; 3],
        cookie: 0,
        cgroup_id,
        rules,
        bytes_in: 0,
        bytes_out: 0,
        since_ns: unsafe { bpf_ktime_get_ns() },
    };
    if INBOUND_CONNS.insert(&t, &ev, BPF_NOEXIST as u64).is_err() {
        count(counters::INBOUND_BACKPRESSURE);
        return false;
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
