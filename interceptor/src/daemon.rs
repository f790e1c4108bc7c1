//! `interceptor run`: start-up checks, wiring, signals, shutdown.
use crate::admin;
use crate::bpf::{HookSettings, Hooks};
use crate::cgroup::{self, CgroupNames, WorkloadCgroup};
use crate::config::{Config, LogFormat, Overrides, UdpMode};
use crate::credentials::Credentials;
use crate::identity::oidc::{OidcConfig, Validator};
use crate::metrics::Stats;
use crate::policy::Policy;
use crate::proxy::{Clock, Proxy};
use crate::store::Store;
use crate::tls::Tls;
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};

const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

pub fn run(o: Overrides) -> Result<()> {
    // Everything the daemon creates (store, CA key, logs) is root's alone,
    // whatever umask it was started with.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    let cfg = Config::load(&o)?;
    let started = crate::config::file_table(&o)?;
    init_logging(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .enable_all()
        .build()?;
    // An error is printed once, by main.
    rt.block_on(serve(
        cfg,
        ConfigSource {
            overrides: o,
            started,
        },
    ))
}

/// Where the configuration came from, read again on SIGHUP.
struct ConfigSource {
    overrides: Overrides,
    /// The file's keys at start-up.
    started: toml::Table,
}

impl ConfigSource {
    /// interceptor.toml read again: the policy directory and credentials
    /// reload live, the file's own keys only at a restart. Says which
    /// changed, or that the file would not start the daemon now.
    fn check(&self) {
        if let Err(e) = Config::load(&self.overrides) {
            tracing::error!(error = %format!("{e:#}"), "interceptor.toml is not valid now: the daemon keeps the values it started with, and would not start with this file");
            return;
        }
        match crate::config::file_table(&self.overrides) {
            Ok(now) => {
                let keys = crate::config::changed_keys(&self.started, &now);
                if !keys.is_empty() {
                    tracing::warn!(
                        ?keys,
                        "interceptor.toml changed: these keys take effect when the daemon restarts (the policy directory and credentials reload live)"
                    );
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reading interceptor.toml"),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INTERCEPTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a file or the journal gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().flatten_event(true).init(),
        LogFormat::Text => b.init(),
    }
}

async fn serve(cfg: Config, source: ConfigSource) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "interceptor run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load and attach cgroup programs)"
        );
    }
    let mount = cgroup::cgroup2_mount()?;
    let cgroups = cfg
        .cgroups
        .iter()
        .map(|c| cgroup::resolve(&mount, c))
        .collect::<Result<Vec<_>>>()?;
    // The daemon's own upstream connects would be redirected to itself.
    let own = cgroup::cgroup_of("self")?;
    if let Some(cg) = cgroups.iter().find(|cg| cgroup::is_within(&own, &cg.rel)) {
        bail!(
            "the daemon runs inside the workload cgroup {} (its own cgroup is /{own}); \
             start it outside the cgroups it intercepts",
            cg.rel
        );
    }

    let policy = Policy::load_dir(&cfg.policies).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid policy:\n  {}", list.join("\n  "))
    })?;
    tracing::info!(dir = %cfg.policies.display(), rules = policy.rules.len(), "policy loaded");
    if policy.rules.is_empty() {
        tracing::warn!(dir = %cfg.policies.display(), "no rules: every connection and request of the workload is denied");
    }
    crate::state_dir::secure(&cfg.state_dir)?;
    let mut store = Store::open_with(&cfg.state_dir, &cfg.store)?;
    if let Some(r) = store.take_repair() {
        // A power cut (or a full disk) cut a record's write short: it was
        // never acknowledged. Said in the log and in the chain itself.
        tracing::warn!(segment = %r.tail.segment.display(), offset = r.tail.offset, bytes = r.tail.bytes,
            "the audit log ended in an unfinished record; cut it off");
        store.audit(
            "log_repaired",
            &serde_json::json!({"segment": r.tail.segment, "offset": r.tail.offset, "bytes_dropped": r.tail.bytes}),
        )?;
    }
    let tls = Tls::load_or_create(&cfg.state_dir, &cfg.upstream_ca_files)?;
    let (oidc, user_header) = oidc_validator(&cfg)?;
    let clock = test_clock()?;
    let interrupted_approvals = store.interrupt_pending_approvals()?;
    if interrupted_approvals > 0 {
        tracing::warn!(
            approvals = interrupted_approvals,
            "approvals left pending by a previous run marked interrupted"
        );
    }
    let webhook = cfg
        .approval_webhook
        .as_deref()
        .map(|u| crate::webhook::Webhook::new(u, tls.client.clone()).map(Arc::new))
        .transpose()?;
    let interrupted = store.close_interrupted()?;
    if interrupted > 0 {
        tracing::warn!(
            sessions = interrupted,
            "sessions left open by a previous run marked interrupted"
        );
    }

    // The kernel must never hand the proxy's ports to a workload socket as
    // an ephemeral port (listen() without bind() runs no bind hook).
    let protected_ports = vec![cfg.listen_port, cfg.admin_listen.port()];
    crate::reserved_ports::reserve(&protected_ports)?;
    // Listeners before hooks: once the hooks redirect, someone must accept.
    // Their mark is what lets their packets into workload sockets.
    let v4 = bind_proxy(
        SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.listen_port)),
        cfg.proxy_mark,
    )?;
    let v6 = match bind_proxy(
        SocketAddr::from((Ipv6Addr::LOCALHOST, cfg.listen_port)),
        cfg.proxy_mark,
    ) {
        Ok(l) => Some(l),
        Err(e) => {
            // IPv6 connects are then refused (redirected to a closed port).
            tracing::warn!(
                "no IPv6 proxy listener, IPv6 connects from the workload will fail: {e:#}"
            );
            None
        }
    };
    let admin_tcp = TcpListener::bind(cfg.admin_listen).await.with_context(|| {
        format!(
            "binding the admin listener {} (is another daemon running? use --admin-listen)",
            cfg.admin_listen
        )
    })?;
    let admin_unix = admin::bind_socket(&cfg.admin_socket, cfg.approvers_group.as_deref())?;

    let hooks = Arc::new(Hooks::attach(
        &cfg.bpffs_dir,
        &cgroups,
        &HookSettings {
            proxy_port: cfg.listen_port,
            protected_ports: protected_ports.clone(),
            allow_udp: cfg.udp == UdpMode::Allow,
            heartbeat_timeout: cfg.heartbeat_timeout,
            proxy_mark: cfg.proxy_mark,
            socket_kinds: cfg.socket_kinds,
            conn_map_entries: cfg.conn_map_entries,
        },
    )?);
    tracing::info!(
        sockets = ?crate::config::socket_kind_names(cfg.socket_kinds, cfg.udp == UdpMode::Allow),
        lsm = hooks.lsm,
        "workload sockets allowed (everything else fails with EPERM)"
    );
    let nofile = crate::proxy::intake::raise_nofile();
    let per_workload = cfg
        .max_connections_per_workload
        .unwrap_or_else(|| crate::proxy::intake::default_cap(nofile));
    tracing::info!(
        nofile,
        max_connections_per_workload = per_workload,
        "connection limits"
    );
    let stats = Arc::new(Stats::default());
    let store = Arc::new(store);
    let approvals = Arc::new(crate::approval::Approvals::default());
    let proxy = Proxy::new(
        &cfg,
        crate::proxy::Parts {
            kernel: hooks.clone(),
            names: CgroupNames::new(
                mount.clone(),
                cgroups.iter().map(|c| c.abs.clone()).collect(),
            ),
            policy,
            store: store.clone(),
            stats: stats.clone(),
            tls,
            oidc,
            user_header,
            clock,
            approvals: approvals.clone(),
            webhook,
            connections_per_workload: per_workload,
        },
    );

    report_credentials(&proxy.policy.read().unwrap(), &proxy.credentials);
    let hb = hooks.clone();
    // systemd's watchdog is fed by the same task as the kernel heartbeat:
    // if this task stalls, both notice.
    let watchdog = watchdog_enabled();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tick.tick().await;
            match hb.beat() {
                Ok(()) if watchdog => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(error = %e, "heartbeat write failed; connects will be refused")
                }
            }
        }
    });
    // Skills must run under uids nothing outside the workload uses (a
    // same-uid process outside can be ptraced and its sockets used).
    crate::hostcheck::spawn_shared_uid_watch(cgroups.clone());
    crate::inbound::sync(&proxy, &hooks, &mount, &cgroups);
    if let Some(ring) = hooks.take_events() {
        tokio::spawn(crate::inbound::record(proxy.clone(), hooks.clone(), ring));
    }
    let cgroup_watch = watch_cgroups(proxy.clone(), hooks.clone(), mount.clone(), cgroups.clone())?;
    tokio::spawn(enforce_retention(
        proxy.clone(),
        cfg.retention,
        cfg.retention_max_bytes,
        cfg.audit_retention,
    ));
    tokio::spawn(return_freed_memory());
    tokio::spawn(proxy.clone().serve(v4));
    if let Some(v6) = v6 {
        tokio::spawn(proxy.clone().serve(v6));
    }
    let admin_state = Arc::new(admin::AdminState {
        store,
        stats,
        kernel: hooks.clone(),
        oidc: proxy.oidc.clone(),
        approvals,
        approvers_group: cfg.approvers_group.clone(),
    });
    tokio::spawn(admin::serve_tcp(admin_tcp, admin_state.clone()));
    tokio::spawn(admin::serve_unix(admin_unix, admin_state));
    // The signals are ours before anyone is told we are ready: a SIGTERM
    // right after READY=1 killed the daemon without its stopping steps
    // (seen in CI under load: no STOPPING=1, nothing detached).
    let (_policy_watcher, mut policy_changed) = watch_policies(&cfg.policies)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(
        cgroups = ?cgroups.iter().map(|c| c.rel.as_str()).collect::<Vec<_>>(),
        port = cfg.listen_port,
        admin = %cfg.admin_listen,
        socket = %cfg.admin_socket.display(),
        "ready"
    );
    // Type=notify: systemd starts skills.slice only after this.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                source.check();
                reload(&proxy, &cfg);
                crate::inbound::sync(&proxy, &hooks, &mount, &cgroups);
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
            Some(()) = policy_changed.recv() => {
                // Editors write in several steps: let the burst settle.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while policy_changed.try_recv().is_ok() {}
                reload(&proxy, &cfg);
                crate::inbound::sync(&proxy, &hooks, &mount, &cgroups);
            }
        }
    }

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Held requests get a clear answer before the connections go away.
    let held = proxy.approvals.interrupt_all();
    if held > 0 {
        let _ = proxy.store.interrupt_pending_approvals();
        tracing::warn!(
            approvals = held,
            "stopping: held requests answered 503 approval_interrupted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if cfg.detach_on_exit {
        drop(cgroup_watch);
        let n = crate::bpf::detach_all(&cfg.bpffs_dir)?;
        if let Err(e) = crate::reserved_ports::release(&protected_ports) {
            tracing::warn!(error = %format!("{e:#}"), "could not release the reserved ports");
        }
        tracing::info!(
            links = n,
            "stopping; hooks detached, the workload connects directly now"
        );
    } else {
        hooks.stop_beating()?;
        tracing::info!(
            "stopping; hooks stay attached and refuse connects until the daemon is back"
        );
    }
    // Responses already on their way finish (new connects are refused in the
    // kernel now); bounded, so a restart's gap stays short.
    let left = proxy.drain(DRAIN_LIMIT).await;
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "stopping: requests still in flight after {DRAIN_LIMIT:?} are cut"
        );
    }
    let _ = std::fs::remove_file(&cfg.admin_socket);
    proxy.store.flush()?;
    Ok(())
}

/// How long a stopping daemon waits for HTTP exchanges in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Re-attaches to a workload cgroup that was removed and re-created (systemd
/// does that to unit cgroups). inotify on the parent directories reacts
/// within milliseconds; a 1 s poll backs it up. Between the mkdir and the
/// attach a process moved into the new cgroup is not yet covered: keep that
/// window short, and prefer a slice that persists as the workload cgroup.
///
/// The same tick asks the kernel whether every program is still attached
/// to every workload cgroup (anything root can do, e.g. `bpftool cgroup
/// detach`, shows here), re-attaches what is missing and records it, and
/// keeps the inbound rules' cgroup list current.
fn watch_cgroups(
    proxy: Arc<Proxy>,
    hooks: Arc<Hooks>,
    mount: std::path::PathBuf,
    cgroups: Vec<WorkloadCgroup>,
) -> Result<CgroupWatch> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .context("starting the cgroup watcher (inotify)")?;
    for cg in &cgroups {
        if let Some(parent) = cg.abs.parent() {
            watcher
                .watch(parent, notify::RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", parent.display()))?;
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = rx.recv() => {}
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            for cg in &cgroups {
                match hooks.ensure_attached(cg) {
                    Ok(true) => {
                        tracing::warn!(cgroup = %cg.rel, "workload cgroup was re-created; hooks attached to the new one")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(cgroup = %cg.rel, error = %format!("{e:#}"), "could not attach to the re-created cgroup")
                    }
                }
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            match hooks.verify() {
                Ok(missing) => {
                    for t in missing {
                        tracing::error!(cgroup = %t.cgroup, program = t.program, "a kernel hook was detached from a workload cgroup; re-attached it");
                        let data = serde_json::json!({ "cgroup": t.cgroup, "program": t.program });
                        if let Err(e) = proxy.store.audit("hooks_tampered", &data) {
                            tracing::error!(error = %e, "could not append to the audit log");
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "could not verify the kernel hooks")
                }
            }
            crate::inbound::sync(&proxy, &hooks, &mount, &cgroups);
        }
    });
    Ok(CgroupWatch {
        _watcher: watcher,
        stop: stop2,
    })
}

/// The cgroup watcher; dropping it stops re-attaching (a daemon that
/// detaches on exit must not fight itself).
struct CgroupWatch {
    _watcher: notify::RecommendedWatcher,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for CgroupWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// As sd_watchdog_enabled(3): WATCHDOG_USEC set, and WATCHDOG_PID unset or
/// ours. (sd-notify's own check also requires WATCHDOG_PID.)
fn watchdog_enabled() -> bool {
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let pid = std::env::var("WATCHDOG_PID")
        .ok()
        .map(|v| v.parse::<u32>().ok());
    usec.is_some_and(|u| u > 0) && pid.is_none_or(|p| p == Some(std::process::id()))
}

/// Retention, while the daemon runs: by age, then by size.
/// glibc keeps memory freed by its per-thread arenas: after a burst (bodies
/// read for inspection, a flood) the daemon's RSS would stay at its peak.
/// Handing it back every 30 s costs a walk of the arenas.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only hands free memory back to the system; no live allocation is touched.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

async fn enforce_retention(
    proxy: Arc<Proxy>,
    max_age: Duration,
    max_bytes: u64,
    audit_max_age: Option<Duration>,
) {
    // Checked often enough for short test retentions, rarely enough to cost nothing.
    let every = (max_age / 4).clamp(Duration::from_millis(500), Duration::from_secs(300));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = &proxy.store;
        let cutoff = crate::store::now_ms().saturating_sub(max_age.as_millis() as u64);
        match store
            .prune_before(cutoff)
            .and_then(|a| Ok(a + store.prune_to_size(max_bytes)?))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "retention removed old sessions"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "retention failed"),
        }
        let Some(audit_max_age) = audit_max_age else {
            continue;
        };
        let cutoff = crate::store::now_ms().saturating_sub(audit_max_age.as_millis() as u64);
        match store.prune_audit(cutoff) {
            Ok(p) if p.segments == 0 => {}
            Ok(p) => {
                tracing::info!(
                    segments = p.segments,
                    through = p.through,
                    "audit retention removed exported segments"
                );
                let data = serde_json::json!({ "segments": p.segments, "through": p.through });
                if let Err(e) = store.audit("audit_pruned", &data) {
                    tracing::error!(error = %e, "could not append to the audit log");
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "audit retention failed"),
        }
    }
}

/// Hot reload: any change in the policy directory triggers a reload.
fn watch_policies(
    dir: &std::path::Path,
) -> Result<(
    notify::RecommendedWatcher,
    tokio::sync::mpsc::UnboundedReceiver<()>,
)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if e.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .context("starting the policy watcher (inotify)")?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((w, rx))
}

/// SIGHUP or a change in the directory: a valid policy replaces the old one
/// atomically for new connections and requests (open ones keep going); an
/// invalid one is logged with file:line:col and the old one stays in force.
/// Says which of the policy's credentials cannot be read now (a missing
/// file was only noticed at request time).
fn report_credentials(policy: &Policy, creds: &Credentials) {
    for (name, source, error) in crate::credentials::unreadable(policy, creds) {
        tracing::warn!(credential = %name, %source, %error, "credential cannot be read: requests that inject it get a 502 until it can");
    }
}

fn reload(proxy: &Proxy, cfg: &Config) {
    match Policy::load_dir(&cfg.policies) {
        Ok(p) => {
            tracing::info!(rules = p.rules.len(), "policy reloaded");
            if p.rules.is_empty() {
                tracing::warn!("no rules: every connection and request of the workload is denied");
            }
            report_credentials(&p, &proxy.credentials);
            *proxy.policy.write().unwrap() = Arc::new(p);
        }
        Err(errors) => {
            for e in errors {
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
            }
        }
    }
}

/// The OIDC validator, when `[oidc]` is configured, and the header users
/// present tokens in.
fn oidc_validator(cfg: &Config) -> Result<(Option<Arc<Validator>>, http::HeaderName)> {
    let Some(o) = &cfg.oidc else {
        return Ok((None, http::header::PROXY_AUTHORIZATION));
    };
    let header = match &o.header {
        Some(h) => http::HeaderName::from_bytes(h.as_bytes())
            .with_context(|| format!("[oidc] header {h:?}"))?,
        None => http::header::PROXY_AUTHORIZATION,
    };
    let mut oc = OidcConfig::new(o.issuer.clone(), o.audiences.clone());
    if let Some(c) = &o.user_claim {
        oc.user_claim = c.clone();
    }
    if let Some(c) = &o.groups_claim {
        oc.groups_claim = c.clone();
    }
    if let Some(l) = o.leeway_s {
        oc.leeway = Duration::from_secs(l);
    }
    if let Some(a) = o.jwks_max_age_s {
        oc.max_key_age = Duration::from_secs(a);
    }
    let tls = Arc::new(crate::tls::client_config(
        o.ca_files.as_deref().unwrap_or_default(),
    )?);
    Ok((Some(Arc::new(Validator::new(oc, tls)?)), header))
}

/// INTERCEPTOR_TEST_NOW=<RFC 3339> pins the clock policy time windows see.
/// For tests; logged loudly.
fn test_clock() -> Result<Clock> {
    match std::env::var("INTERCEPTOR_TEST_NOW") {
        Ok(v) => {
            let t: jiff::Timestamp = v
                .parse()
                .with_context(|| format!("INTERCEPTOR_TEST_NOW={v:?}"))?;
            tracing::warn!(now = %t, "policy clock pinned by INTERCEPTOR_TEST_NOW (tests only)");
            Ok(Clock::fixed(t))
        }
        Err(_) => Ok(Clock::system()),
    }
}

fn bind_proxy(addr: SocketAddr, mark: u32) -> Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    // Accepted sockets inherit the mark: responses reach the workload.
    crate::proxy::set_mark(&sock, mark).context("setting SO_MARK on the proxy listener")?;
    sock.bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("proxy port {addr} is already in use (another interceptor, or pick one with --listen)")
        } else {
            anyhow::anyhow!("binding the proxy listener {addr}: {e}")
        }
    })?;
    Ok(sock.listen(4096)?)
}
