//! Map keys and values shared by the kernel programs (`interceptor-ebpf`) and
//! the daemon (`interceptor`). Plain `#[repr(C)]` data with explicit padding,
//! so both sides agree on the layout byte for byte.
#![cfg_attr(not(test), no_std)]

/// Bump when any type below changes layout: the pin directory carries it, so
/// a daemon never reuses maps pinned by an incompatible build.
pub const LAYOUT_VERSION: u32 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Map names as the kernel object declares them (also their pin names).
pub mod maps {
    pub const CONFIG: &str = "ICPT_CONFIG";
    pub const HEARTBEAT: &str = "ICPT_HEARTBEAT";
    pub const BY_COOKIE: &str = "ICPT_BY_COOKIE";
    pub const BY_TUPLE: &str = "ICPT_BY_TUPLE";
    pub const COUNTERS: &str = "ICPT_COUNTERS";
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

    /// Attached to every workload cgroup, in this order: sock_ops and
    /// getpeername before connect, so a connect that is redirected is also
    /// recorded and hidden.
    pub const ATTACHED: [&str; 9] = [
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

/// Indexes into the per-CPU counters array.
pub mod counters {
    pub const REDIRECTED: u32 = 0;
    pub const REFUSED_STALE: u32 = 1;
    pub const REFUSED_PROTECTED: u32 = 2;
    pub const REFUSED_MAP_FULL: u32 = 3;
    pub const REFUSED_UDP: u32 = 4;
    pub const REFUSED_BIND: u32 = 5;
    pub const COUNT: u32 = 6;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are #[repr(C)], Copy, with explicit padding and no
    // pointers, so any byte pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Heartbeat {}
    unsafe impl aya::Pod for super::ConnRecord {}
    unsafe impl aya::Pod for super::TupleKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    // The kernel object and the daemon are compiled separately: any layout
    // change must be deliberate (and bump LAYOUT_VERSION).
    #[test]
    fn map_value_layouts_are_stable() {
        assert_eq!((size_of::<Config>(), align_of::<Config>()), (32, 8));
        assert_eq!((size_of::<Heartbeat>(), align_of::<Heartbeat>()), (8, 8));
        assert_eq!((size_of::<ConnRecord>(), align_of::<ConnRecord>()), (56, 8));
        assert_eq!((size_of::<TupleKey>(), align_of::<TupleKey>()), (20, 4));
        assert_eq!(LAYOUT_VERSION, 1);
    }
}
