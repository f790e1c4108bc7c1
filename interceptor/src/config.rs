//! Daemon configuration: `/etc/interceptor/interceptor.toml`, overridden by flags.
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/interceptor/interceptor.toml";
/// Istio uses 0x539, Calico and Cilium the high and 0x0f00 bits: this one
/// collides with none of them.
pub const DEFAULT_PROXY_MARK: u32 = 0x1ce7;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UdpMode {
    /// UDP from the workload is refused in the kernel (default: it is not proxied yet).
    Deny,
    /// UDP goes out directly, unrecorded. An explicit operator choice.
    Allow,
}

/// The file format. Every field is optional; see [`Config::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cgroups: Option<Vec<String>>,
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_socket: Option<PathBuf>,
    policies: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    bpffs_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    udp: Option<UdpMode>,
    heartbeat_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    client_header_timeout_ms: Option<u64>,
    client_body_timeout_ms: Option<u64>,
    max_connections_per_workload: Option<usize>,
    inspect_buffer_mb_per_workload: Option<u64>,
    inspect_buffer_mb_total: Option<u64>,
    detach_on_exit: Option<bool>,
    credentials_dir: Option<PathBuf>,
    upstream_ca_files: Option<Vec<PathBuf>>,
    oidc: Option<OidcFile>,
    approvers_group: Option<String>,
    max_pending_approvals: Option<usize>,
    approval_webhook: Option<String>,
    retention_days: Option<f64>,
    audit_retention_days: Option<f64>,
    retention_max_mb: Option<u64>,
    audit_sync: Option<AuditSync>,
    audit_sync_interval: Option<String>,
    audit_segment_size: Option<String>,
    store_cache_size: Option<String>,
    record_body_kb: Option<u64>,
    mask_cpu_base_ms: Option<u64>,
    mask_cpu_ns_per_byte: Option<u64>,
    mask_cpu_cores_per_workload: Option<f64>,
    allow_sockets: Option<Vec<String>>,
    proxy_mark: Option<u32>,
    conn_map_entries: Option<u32>,
    worker_threads: Option<usize>,
}

/// `audit_sync`: what a record survives before its effect is answered.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum AuditSync {
    Always,
    Interval,
}

/// `[oidc]`: where user tokens come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub user_claim: Option<String>,
    pub groups_claim: Option<String>,
    pub leeway_s: Option<u64>,
    /// Fetched signing keys are trusted this long, then refetched (600).
    pub jwks_max_age_s: Option<u64>,
    /// Request header carrying `Bearer <jwt>` (removed before forwarding).
    pub header: Option<String>,
    /// Extra CAs to trust the issuer's HTTPS with (PEM files).
    pub ca_files: Option<Vec<PathBuf>>,
}

pub use crate::audit::log::DEFAULT_SYNC_INTERVAL as DEFAULT_AUDIT_SYNC_INTERVAL;

/// Effective configuration of `interceptor run`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Workload cgroups, relative to the cgroup2 mount or absolute.
    pub cgroups: Vec<String>,
    /// Proxy listener port; the proxy listens on 127.0.0.1 and ::1.
    pub listen_port: u16,
    /// Health and metrics listener (loopback).
    pub admin_listen: SocketAddr,
    /// Control API (sessions, approvals, audit); Unix socket, root only,
    /// or 0660 with `approvers_group`.
    pub admin_socket: PathBuf,
    pub policies: PathBuf,
    pub state_dir: PathBuf,
    /// Where programs, links and maps are pinned.
    pub bpffs_dir: PathBuf,
    pub log_format: LogFormat,
    pub udp: UdpMode,
    pub heartbeat_timeout: Duration,
    pub connect_timeout: Duration,
    pub detach_on_exit: bool,
    /// Where `file:NAME` credentials live.
    pub credentials_dir: PathBuf,
    /// Extra CAs (PEM) trusted for upstream TLS, besides the system roots.
    pub upstream_ca_files: Vec<PathBuf>,
    pub oidc: Option<OidcFile>,
    /// Members may approve and deny held requests (root always may).
    pub approvers_group: Option<String>,
    /// A client must have sent its first bytes, its TLS handshake and each
    /// request head within this (slowloris; also how long a client may wait
    /// before speaking and still be read as HTTP).
    pub client_header_timeout: Duration,
    /// A request body may pause this long between bytes.
    pub client_body_timeout: Duration,
    /// Open connections per workload, at most; `None`: a quarter of the
    /// daemon's file descriptor limit.
    pub max_connections_per_workload: Option<usize>,
    /// Request bodies held for inspection per workload, at most (bytes).
    pub inspect_buffer_per_workload: u64,
    /// The same, for the whole daemon (bytes).
    pub inspect_buffer_total: u64,
    /// Requests held for an approver per workload, at most (then 429).
    pub max_pending_approvals: usize,
    /// Pending approvals are POSTed here (Slack-compatible JSON).
    pub approval_webhook: Option<String>,
    /// Sessions older than this are removed (the audit log is kept).
    pub retention: Duration,
    /// Above this store size the oldest sessions go first.
    pub retention_max_bytes: u64,
    /// Audit segments older than this may be removed once exported
    /// (`audit export --mark-exported`); `None`: the log is kept whole.
    pub audit_retention: Option<Duration>,
    /// The audit log's sync mode and segment size, sled's cache.
    pub store: crate::store::Options,
    /// Masked response bodies recorded per session, at most.
    pub record_body_bytes: u64,
    /// The CPU masking one body may use (then it is cut off).
    pub mask_cpu: crate::masking::cpu_allowance::CpuAllowance,
    /// CPU a workload's masking may use across all its bodies at once.
    pub mask_cpu_cores: f64,
    /// Socket kinds a workload may create besides TCP
    /// (`interceptor_common::kinds` bits); the rest fail with EPERM.
    pub socket_kinds: u32,
    /// SO_MARK on the proxy's own sockets; the kernel lets packets with it
    /// (and only those, besides `[[inbound]]` rules) reach workload sockets.
    pub proxy_mark: u32,
    /// Capacity of the kernel's connection record maps (LRU).
    pub conn_map_entries: u32,
    /// Threads of the proxy's async runtime (default: one per CPU).
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cgroups: vec!["skills.slice".into()],
            listen_port: 15001,
            admin_listen: "127.0.0.1:15000".parse().unwrap(),
            admin_socket: "/run/interceptor/admin.sock".into(),
            policies: "/etc/interceptor/policies".into(),
            state_dir: "/var/lib/interceptor".into(),
            bpffs_dir: "/sys/fs/bpf/interceptor".into(),
            log_format: LogFormat::Text,
            udp: UdpMode::Deny,
            heartbeat_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            detach_on_exit: false,
            credentials_dir: "/etc/interceptor/credentials".into(),
            upstream_ca_files: Vec::new(),
            oidc: None,
            approvers_group: None,
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(30),
            max_connections_per_workload: None,
            inspect_buffer_per_workload: 64 << 20,
            inspect_buffer_total: 512 << 20,
            max_pending_approvals: 16,
            approval_webhook: None,
            retention: Duration::from_secs(30 * 86400),
            retention_max_bytes: 4 << 30,
            audit_retention: None,
            store: Default::default(),
            record_body_bytes: 64 << 10,
            mask_cpu: Default::default(),
            // Debug builds (the test suite's) mask about twenty times
            // slower, as CpuAllowance's default says.
            mask_cpu_cores: if cfg!(debug_assertions) { 20.0 } else { 1.0 },
            socket_kinds: interceptor_common::kinds::DEFAULT,
            proxy_mark: DEFAULT_PROXY_MARK,
            conn_map_entries: 65536,
            worker_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Flags of `interceptor run` that override the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Configuration file [default: /etc/interceptor/interceptor.toml if present]
    #[arg(long, value_name = "FILE", env = "INTERCEPTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Workload cgroup, relative to the cgroup2 mount or absolute (repeatable)
    #[arg(
        long = "cgroup",
        value_name = "PATH",
        env = "INTERCEPTOR_CGROUPS",
        value_delimiter = ','
    )]
    pub cgroups: Vec<String>,
    /// Proxy listener, loopback only: PORT, 127.0.0.1:PORT or [::1]:PORT
    #[arg(long, value_name = "ADDR:PORT", env = "INTERCEPTOR_LISTEN")]
    pub listen: Option<String>,
    /// Health/metrics listener on loopback (ADDR:PORT)
    #[arg(long, value_name = "ADDR:PORT", env = "INTERCEPTOR_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Control socket
    #[arg(long, value_name = "PATH", env = "INTERCEPTOR_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Policy directory (*.toml)
    #[arg(long, value_name = "DIR", env = "INTERCEPTOR_POLICIES")]
    pub policies: Option<PathBuf>,
    /// State directory (session store)
    #[arg(long, value_name = "DIR", env = "INTERCEPTOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned links and maps
    #[arg(long, value_name = "DIR", env = "INTERCEPTOR_BPFFS_DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// Log format
    #[arg(long, value_enum, env = "INTERCEPTOR_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Detach the kernel hooks on SIGTERM/SIGINT (default: keep them, blocking)
    #[arg(long, env = "INTERCEPTOR_DETACH_ON_EXIT")]
    pub detach_on_exit: bool,
}

impl Config {
    pub fn load(o: &Overrides) -> Result<Config> {
        let file = match file_path(o) {
            Some(p) => read_file(&p)?,
            None => File::default(),
        };
        let mut c = Config::default();
        if let Some(v) = file.cgroups {
            c.cgroups = v;
        }
        if let Some(v) = file.listen {
            c.listen_port = parse_listen(&v).context("config `listen`")?;
        }
        if let Some(v) = file.admin_listen {
            c.admin_listen = parse_admin(&v).context("config `admin_listen`")?;
        }
        if let Some(v) = file.admin_socket {
            c.admin_socket = v;
        }
        if let Some(v) = file.policies {
            c.policies = v;
        }
        if let Some(v) = file.state_dir {
            c.state_dir = v;
        }
        if let Some(v) = file.bpffs_dir {
            c.bpffs_dir = v;
        }
        if let Some(v) = file.log_format {
            c.log_format = v;
        }
        if let Some(v) = file.udp {
            c.udp = v;
        }
        if let Some(v) = file.heartbeat_timeout_ms {
            if v < 1000 {
                bail!(
                    "config `heartbeat_timeout_ms` must be at least 1000 (the daemon beats every 250 ms)"
                );
            }
            c.heartbeat_timeout = Duration::from_millis(v);
        }
        if let Some(v) = file.connect_timeout_ms {
            c.connect_timeout = Duration::from_millis(v);
        }
        if let Some(v) = file.client_header_timeout_ms {
            if v < 100 {
                bail!("config `client_header_timeout_ms` must be at least 100");
            }
            c.client_header_timeout = Duration::from_millis(v);
        }
        if let Some(v) = file.client_body_timeout_ms {
            if v < 100 {
                bail!("config `client_body_timeout_ms` must be at least 100");
            }
            c.client_body_timeout = Duration::from_millis(v);
        }
        if let Some(mb) = file.inspect_buffer_mb_per_workload {
            if mb == 0 {
                bail!("config `inspect_buffer_mb_per_workload` must be at least 1");
            }
            c.inspect_buffer_per_workload = mb << 20;
        }
        if let Some(mb) = file.inspect_buffer_mb_total {
            if mb == 0 {
                bail!("config `inspect_buffer_mb_total` must be at least 1");
            }
            c.inspect_buffer_total = mb << 20;
        }
        if let Some(n) = file.max_connections_per_workload {
            if n == 0 {
                bail!("config `max_connections_per_workload` must be at least 1");
            }
            c.max_connections_per_workload = Some(n);
        }
        if let Some(v) = file.detach_on_exit {
            c.detach_on_exit = v;
        }
        if let Some(v) = file.credentials_dir {
            c.credentials_dir = v;
        }
        if let Some(v) = file.upstream_ca_files {
            c.upstream_ca_files = v;
        }
        c.approvers_group = file.approvers_group;
        if let Some(n) = file.max_pending_approvals {
            if n == 0 {
                bail!("config `max_pending_approvals` must be at least 1");
            }
            c.max_pending_approvals = n;
        }
        if let Some(d) = file.retention_days {
            if !d.is_finite() || d <= 0.0 {
                bail!("config `retention_days` must be positive");
            }
            c.retention = Duration::from_secs_f64(d * 86400.0);
        }
        if let Some(d) = file.audit_retention_days {
            if !d.is_finite() || d <= 0.0 {
                bail!("config `audit_retention_days` must be positive");
            }
            c.audit_retention = Some(Duration::from_secs_f64(d * 86400.0));
        }
        if let Some(mb) = file.retention_max_mb {
            c.retention_max_bytes = mb << 20;
        }
        let interval = match &file.audit_sync_interval {
            Some(t) => crate::units::duration(t)
                .map_err(|e| anyhow::anyhow!("config `audit_sync_interval`: {e}"))?,
            None => DEFAULT_AUDIT_SYNC_INTERVAL,
        };
        if interval > Duration::from_secs(1) {
            bail!(
                "config `audit_sync_interval` may be at most 1s (records older than it are not on disk)"
            );
        }
        c.store.audit_sync = match file.audit_sync {
            Some(AuditSync::Always) => crate::audit::SyncMode::Always,
            Some(AuditSync::Interval) | None => crate::audit::SyncMode::Interval(interval),
        };
        if let Some(t) = &file.audit_segment_size {
            let n = crate::units::size(t)
                .map_err(|e| anyhow::anyhow!("config `audit_segment_size`: {e}"))?;
            if n < 1 << 20 {
                bail!("config `audit_segment_size` must be at least 1MiB");
            }
            c.store.audit_segment_bytes = n;
        }
        if let Some(t) = &file.store_cache_size {
            c.store.cache_bytes = crate::units::size(t)
                .map_err(|e| anyhow::anyhow!("config `store_cache_size`: {e}"))?;
        }
        if let Some(n) = file.worker_threads {
            if !(1..=1024).contains(&n) {
                bail!("config `worker_threads` must be between 1 and 1024");
            }
            c.worker_threads = n;
        }
        if let Some(kb) = file.record_body_kb {
            c.record_body_bytes = kb << 10;
        }
        if let Some(ms) = file.mask_cpu_base_ms {
            c.mask_cpu.base = Duration::from_millis(ms);
        }
        if let Some(ns) = file.mask_cpu_ns_per_byte {
            if ns == 0 {
                bail!("config `mask_cpu_ns_per_byte` must be at least 1");
            }
            c.mask_cpu.per_byte = Duration::from_nanos(ns);
        }
        if let Some(cores) = file.mask_cpu_cores_per_workload {
            if !(cores > 0.0 && cores.is_finite()) {
                bail!("config `mask_cpu_cores_per_workload` must be more than 0 (1.0 is one core)");
            }
            c.mask_cpu_cores = cores;
        }
        if let Some(list) = file.allow_sockets {
            c.socket_kinds = parse_socket_kinds(&list).context("config `allow_sockets`")?;
        }
        if c.socket_kinds & interceptor_common::kinds::UDP != 0 {
            c.udp = UdpMode::Allow;
        }
        if let Some(m) = file.proxy_mark {
            if m == 0 {
                bail!("config `proxy_mark` cannot be 0 (every unmarked packet carries 0)");
            }
            c.proxy_mark = m;
        }
        if let Some(n) = file.conn_map_entries {
            if !(64..=1 << 24).contains(&n) {
                bail!("config `conn_map_entries` must be between 64 and 16777216");
            }
            c.conn_map_entries = n;
        }
        if let Some(w) = file.approval_webhook {
            if !(w.starts_with("https://") || w.starts_with("http://")) {
                bail!("approval_webhook {w:?} must be an http(s):// URL");
            }
            c.approval_webhook = Some(w);
        }
        if let Some(o) = file.oidc {
            if !o.issuer.starts_with("https://") {
                bail!("[oidc] issuer {:?} must be an https:// URL", o.issuer);
            }
            if o.audiences.is_empty() {
                bail!("[oidc] audiences must name at least one audience");
            }
            c.oidc = Some(o);
        }
        // Flags win over the file.
        if !o.cgroups.is_empty() {
            c.cgroups = o.cgroups.clone();
        }
        if let Some(v) = &o.listen {
            c.listen_port = parse_listen(v).context("--listen")?;
        }
        if let Some(v) = &o.admin_listen {
            c.admin_listen = parse_admin(v).context("--admin-listen")?;
        }
        if let Some(v) = &o.admin_socket {
            c.admin_socket = v.clone();
        }
        if let Some(v) = &o.policies {
            c.policies = v.clone();
        }
        if let Some(v) = &o.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &o.bpffs_dir {
            c.bpffs_dir = v.clone();
        }
        if let Some(v) = o.log_format {
            c.log_format = v;
        }
        c.detach_on_exit |= o.detach_on_exit;
        if c.cgroups.is_empty() {
            bail!("no workload cgroup configured (`cgroups` in the config file or --cgroup)");
        }
        if c.admin_listen.port() == c.listen_port {
            bail!(
                "the admin listener and the proxy listener cannot share port {}",
                c.listen_port
            );
        }
        Ok(c)
    }
}

/// The file read: the one named, else the default one if it exists.
fn file_path(o: &Overrides) -> Option<PathBuf> {
    match &o.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    }
}

/// The config file's keys as written (empty without a file), to tell on
/// SIGHUP which of them changed since the daemon started.
pub fn file_table(o: &Overrides) -> Result<toml::Table> {
    let Some(path) = file_path(o) else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The top-level keys whose values differ between two readings.
pub fn changed_keys(before: &toml::Table, now: &toml::Table) -> Vec<String> {
    let mut keys: Vec<String> = before
        .keys()
        .chain(now.keys())
        .filter(|k| before.get(*k) != now.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn read_file(path: &Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The proxy always listens on both loopbacks (the kernel rewrites IPv4
/// connects to 127.0.0.1 and IPv6 ones to ::1), so only the port is free.
pub fn parse_listen(s: &str) -> Result<u16> {
    let port = if let Ok(p) = s.parse::<u16>() {
        p
    } else {
        let addr: SocketAddr = s
            .parse()
            .with_context(|| format!("{s:?} is not PORT, 127.0.0.1:PORT or [::1]:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("{s}: the proxy listens on loopback only (127.0.0.1 and ::1)");
        }
        addr.port()
    };
    if port == 0 {
        bail!("{s}: the proxy port cannot be 0");
    }
    Ok(port)
}

/// `allow_sockets` names (see `interceptor_common::kinds::NAMES`); "udp"
/// is the same as `udp = "allow"`.
pub fn parse_socket_kinds(names: &[String]) -> Result<u32> {
    let mut bits = 0;
    for n in names {
        let Some((_, b)) = interceptor_common::kinds::NAMES
            .iter()
            .find(|(name, _)| name == n)
        else {
            let known: Vec<&str> = interceptor_common::kinds::NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect();
            bail!(
                "unknown socket kind {n:?} (known: {}; TCP is always allowed)",
                known.join(", ")
            );
        };
        bits |= b;
    }
    Ok(bits)
}

/// The allowed socket kinds by name, TCP first (for `doctor` and logs).
pub fn socket_kind_names(bits: u32, allow_udp: bool) -> Vec<&'static str> {
    let mut out = vec!["tcp"];
    for (name, b) in interceptor_common::kinds::NAMES {
        if bits & b != 0 || (name == "udp" && allow_udp) {
            out.push(name);
        }
    }
    out
}

fn parse_admin(s: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = s
        .parse()
        .with_context(|| format!("{s:?} is not ADDR:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("{s}: the admin listener must be on loopback");
    }
    Ok(addr)
}

#[cfg(test)]
mod changed_tests {
    #[test]
    fn changed_keys_are_the_ones_whose_values_differ() {
        let a: toml::Table = toml::from_str("a = 1\nb = \"x\"\n[oidc]\nissuer = \"i\"\n").unwrap();
        let b: toml::Table =
            toml::from_str("a = 1\nb = \"y\"\nc = 2\n[oidc]\nissuer = \"j\"\n").unwrap();
        assert_eq!(super::changed_keys(&a, &b), ["b", "c", "oidc"]);
        assert!(super::changed_keys(&a, &a).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("15001").unwrap(), 15001);
        assert_eq!(parse_listen("127.0.0.1:9").unwrap(), 9);
        assert_eq!(parse_listen("[::1]:9").unwrap(), 9);
        assert!(parse_listen("0.0.0.0:9").is_err());
        assert!(parse_listen("0").is_err());
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("icpt-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"15009\"\nbogus = 1\n").unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        let err = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(err.contains("bogus"), "{err}");
        std::fs::write(&f, "listen = \"15009\"\ncgroups = [\"a\"]\n").unwrap();
        let c = Config::load(&o).unwrap();
        assert_eq!(c.listen_port, 15009);
        assert_eq!(c.cgroups, vec!["a".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn worker_threads_default_to_the_cpus_and_are_bounded() {
        let dir = std::env::temp_dir().join(format!("icpt-cfg-wt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        let o = Overrides {
            config: Some(f.clone()),
            ..Default::default()
        };
        std::fs::write(&f, "listen = \"15009\"\n").unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::load(&o).unwrap().worker_threads, cpus);
        std::fs::write(&f, "worker_threads = 1\n").unwrap();
        assert_eq!(Config::load(&o).unwrap().worker_threads, 1);
        std::fs::write(&f, "worker_threads = 0\n").unwrap();
        let err = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(err.contains("worker_threads"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
