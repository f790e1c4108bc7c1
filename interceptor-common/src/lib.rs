//! Map keys and values shared by the kernel programs (`interceptor-ebpf`) and
//! the daemon (`interceptor`). Plain `#[repr(C)]` data with explicit padding,
//! so both sides agree on the layout byte for byte.
#![cfg_attr(not(test), no_std)]

/// Bump when any type below changes layout: the pin directory carries it, so
/// a daemon never reuses maps pinned by an incompatible build.
pub const LAYOUT_VERSION: u32 = 2;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Map names as the kernel object declares them (also their pin names).
pub mod maps {
    pub const CONFIG: &str = "ICPT_CONFIG";
    pub const HEARTBEAT: &str = "ICPT_HEARTBEAT";
    pub const BY_COOKIE: &str = "ICPT_BY_COOKIE";
    pub const BY_TUPLE: &str = "ICPT_BY_TUPLE";
    pub const COUNTERS: &str = "ICPT_COUNTERS";
    pub const INBOUND_RULES: &str = "ICPT_INBOUND_RULES";
    pub const INBOUND_CGROUPS: &str = "ICPT_INBOUND_CGROUPS";
    pub const INBOUND_CONNS: &str = "ICPT_INBOUND_CONNS";
    pub const EVENTS: &str = "ICPT_EVENTS";
    pub const WORKLOAD_PEERS: &str = "ICPT_WORKLOAD_PEERS";
}

/// Program names (the function names in the kernel object).
pub mod programs {
    pub const CONNECT4: &str = "icpt_connect4";
    pub const CONNECT6: &str = "icpt_connect6";
    pub const GETPEERNAME4: &str = "icpt_getpeername4";
    pub const GETPEERNAME6: &str = "icpt_getpeername6";
    pub const SENDMSG4: &str = "icpt_sendmsg4";
    pub const SENDMSG6: &str = "icpt_sendmsg6";
    pub const POST_BIND4: &str = "icpt_post_bind4";
    pub const POST_BIND6: &str = "icpt_post_bind6";
    pub const SOCK_OPS: &str = "icpt_sock_ops";
    pub const SOCK_CREATE: &str = "icpt_sock_create";
    pub const INGRESS: &str = "icpt_ingress";
    /// BPF LSM (cgroup-scoped): socket families outside IPv4/IPv6. Attached
    /// only where the kernel runs the BPF LSM (`bpf` in `lsm=`).
    pub const LSM_SOCKET_CREATE: &str = "icpt_lsm_socket_create";

    /// Attached to every workload cgroup, in this order: the socket
    /// allow-list and the inbound filter first (nothing may exist or arrive
    /// unfiltered), sock_ops and getpeername before connect, so a connect
    /// that is redirected is also recorded and hidden.
    pub const ATTACHED: [&str; 11] = [
        SOCK_CREATE,
        INGRESS,
        SOCK_OPS,
        POST_BIND4,
        POST_BIND6,
        GETPEERNAME4,
        GETPEERNAME6,
        SENDMSG4,
        SENDMSG6,
        CONNECT4,
        CONNECT6,
    ];
}

/// Maximum number of ports a workload may neither connect to on loopback
/// nor bind (the proxy listener, the admin listener, ...).
pub const MAX_PROTECTED_PORTS: usize = 8;

/// `flags` bits of [`Config`].
pub const CONFIG_F_ALLOW_UDP: u32 = 1;

/// Socket kinds a workload may create besides TCP (`Config::socket_kinds`
/// bits). TCP over IPv4/IPv6 is always allowed: it is what the proxy carries.
/// Everything not listed is refused with EPERM at `socket()`.
pub mod kinds {
    pub const MPTCP: u32 = 1 << 0;
    /// UDP over IPv4/IPv6 (direct, unrecorded: the operator's explicit choice).
    pub const UDP: u32 = 1 << 1;
    /// ICMP/ICMPv6 datagram ("ping") sockets (direct, unrecorded).
    pub const ICMP: u32 = 1 << 2;
    /// SCTP (direct, unrecorded).
    pub const SCTP: u32 = 1 << 3;
    pub const UNIX: u32 = 1 << 4;
    pub const NETLINK_ROUTE: u32 = 1 << 5;
    pub const NETLINK_DIAG: u32 = 1 << 6;

    /// Names in the config file and `interceptor doctor`, with their bit.
    pub const NAMES: [(&str, u32); 7] = [
        ("mptcp", MPTCP),
        ("udp", UDP),
        ("icmp", ICMP),
        ("sctp", SCTP),
        ("unix", UNIX),
        ("netlink-route", NETLINK_ROUTE),
        ("netlink-diag", NETLINK_DIAG),
    ];

    /// What libc and ordinary programs need; nothing that leaves the host
    /// around the proxy.
    pub const DEFAULT: u32 = MPTCP | UNIX | NETLINK_ROUTE | NETLINK_DIAG;
}

/// Written once by the daemon at start (index 0 of an array map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Port of the proxy listener on 127.0.0.1 and ::1, host byte order.
    pub proxy_port: u16,
    pub _pad0: u16,
    pub flags: u32,
    /// Ports refused to the workload (connect to loopback, bind), host order; 0 = unused.
    pub protected_ports: [u16; MAX_PROTECTED_PORTS],
    /// Connects are refused when the heartbeat is older than this (ns).
    pub heartbeat_timeout_ns: u64,
    /// SO_MARK of the proxy's own sockets: packets carrying it may reach a
    /// workload socket (responses on redirected connections, and the proxy's
    /// connects to a workload's own server). Setting a mark needs
    /// CAP_NET_ADMIN/CAP_NET_RAW in the host network namespace, which a
    /// workload does not have.
    pub proxy_mark: u32,
    /// [`kinds`] bits a workload may create besides TCP.
    pub socket_kinds: u32,
}

/// The daemon's liveness, CLOCK_MONOTONIC ns (what `bpf_ktime_get_ns` reads),
/// refreshed every second. Its own map so a refresh never tears `Config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub monotonic_ns: u64,
}

/// What connect4/6 saw before rewriting the destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    /// Original destination address, network byte order. IPv4 in `addr[0]`.
    pub addr: [u32; 4],
    /// Original destination port, host byte order.
    pub port: u16,
    /// AF_INET or AF_INET6 of the destination (a v4-mapped IPv6 destination is AF_INET).
    pub family: u16,
    /// 1 when the socket itself is AF_INET6 (v4-mapped destinations included).
    pub socket_v6: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub cookie: u64,
}

/// The client's side of a redirected connection, as the proxy sees it in
/// `accept()`: local address and port of the client socket. v4-mapped IPv6
/// addresses are stored as AF_INET so both listeners look up alike.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// An `[[inbound]]` rule in the kernel: longest-prefix match on this key,
/// whose first 32 bits (port, protocol, family) are always matched in full,
/// then `prefix` bits of the peer address. The value is a bit mask of the
/// inbound rules (by index) that allow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundKey {
    /// Local port, network byte order (as in the TCP header).
    pub port_be: u16,
    /// IPPROTO_TCP (the only one with rules today).
    pub proto: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// Peer address, network byte order; IPv4 in `addr[0]`.
    pub addr: [u32; 4],
}

/// Bits of the key always matched exactly (port, protocol, family).
pub const INBOUND_KEY_FIXED_BITS: u32 = 32;

/// An inbound connection by its tuple (peer and local port), the key of
/// `INBOUND_CONNS`: unique among the connections a host has at one time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundTuple {
    pub peer: [u32; 4],
    /// Host byte order.
    pub peer_port: u16,
    /// Host byte order.
    pub local_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// Capacity of `INBOUND_CONNS`. Not LRU: an evicted entry would be a
/// connection let in and not recorded. A SYN that finds no room is dropped
/// (the peer retries); the daemon removes entries once recorded closed and
/// handshakes that never completed.
pub const INBOUND_CONNS_MAX: u32 = 65536;

/// `kind` of an [`InboundEvent`]: the handshake was let in by rule; the
/// workload's socket established; it closed.
pub const EVENT_INBOUND_PENDING: u32 = 3;
pub const EVENT_INBOUND_OPEN: u32 = 1;
pub const EVENT_INBOUND_CLOSE: u32 = 2;

/// An inbound TCP connection an `[[inbound]]` rule let in, in
/// `INBOUND_CONNS` from its SYN until the daemon has recorded its end:
/// the record is the map entry (created before the SYN passes, so nothing
/// comes in unrecorded). The ring buffer carries copies only to wake the
/// daemon; a full ring loses nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundEvent {
    pub kind: u32,
    pub family: u16,
    pub local_port: u16,
    pub peer: [u32; 4],
    pub local: [u32; 4],
    pub peer_port: u16,
    pub _pad: [u16; 3],
    pub cookie: u64,
    pub cgroup_id: u64,
    pub rules: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// When the SYN came (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}

/// Indexes into the per-CPU counters array.
pub mod counters {
    pub const REDIRECTED: u32 = 0;
    pub const REFUSED_STALE: u32 = 1;
    pub const REFUSED_PROTECTED: u32 = 2;
    /// The connect's record could not be stored. The record maps are LRU: a
    /// flood evicts old records instead of filling up (an evicted record
    /// makes the proxy refuse that connection at accept), so this counts
    /// only allocation failures.
    pub const REFUSED_RECORD: u32 = 3;
    pub const REFUSED_UDP: u32 = 4;
    pub const REFUSED_BIND: u32 = 5;
    /// socket() of a kind outside the allow-list.
    pub const REFUSED_SOCKET: u32 = 6;
    /// Packets to a workload socket that neither come from the proxy nor
    /// match an `[[inbound]]` rule.
    pub const DROPPED_INBOUND: u32 = 7;
    pub const INBOUND_ACCEPTED: u32 = 8;
    /// Inbound SYNs a rule allows, dropped (the peer retries) because
    /// `INBOUND_CONNS` had no room or the tuple's last connection was not
    /// recorded yet.
    pub const INBOUND_BACKPRESSURE: u32 = 9;
    pub const COUNT: u32 = 10;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (each impl below): all types are #[repr(C)], Copy, with
    // explicit padding and no pointers, so any byte pattern the kernel
    // writes is a valid value.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Heartbeat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InboundKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InboundTuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InboundEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    // The kernel object and the daemon are compiled separately: any layout
    // change must be deliberate (and bump LAYOUT_VERSION).
    #[test]
    fn map_value_layouts_are_stable() {
        assert_eq!((size_of::<Config>(), align_of::<Config>()), (40, 8));
        assert_eq!((size_of::<Heartbeat>(), align_of::<Heartbeat>()), (8, 8));
        assert_eq!((size_of::<ConnRecord>(), align_of::<ConnRecord>()), (56, 8));
        assert_eq!((size_of::<TupleKey>(), align_of::<TupleKey>()), (20, 4));
        assert_eq!((size_of::<InboundKey>(), align_of::<InboundKey>()), (20, 4));
        assert_eq!(
            (size_of::<InboundTuple>(), align_of::<InboundTuple>()),
            (24, 4)
        );
        assert_eq!(
            (size_of::<InboundEvent>(), align_of::<InboundEvent>()),
            (96, 8)
        );
        assert_eq!(LAYOUT_VERSION, 2);
    }
}
