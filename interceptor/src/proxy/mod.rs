//! The data path, one way: accept → attribute → decide → (inspect) →
//! inject → forward → record.
mod body;
pub mod canonical;
mod detect;
mod http;
pub mod intake;
mod refusal;
mod tcp;
pub mod upstream;
mod websocket;

#[cfg(test)]
mod pipeline_tests;

use crate::bpf::original_destination;
use crate::cgroup::CgroupNames;
use crate::credentials::Credentials;
use crate::identity::{self, oidc::Validator};
use crate::policy::{Action, Decision, Policy, Subject, TlsMode, Verdict};
use crate::store::{self, RequestRecord, Session, State, Store};
use crate::tls::Tls;
use detect::Protocol;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

pub use crate::metrics::{InFlight, Stats};

/// What the data path asks the kernel: where a redirected connection was
/// headed and who opened it (the record its connect hook left), and
/// whether a socket the proxy opened landed on a workload's own listener.
/// `bpf::Hooks` answers in the daemon; the in-process tests stand in.
pub trait Redirects: Send + Sync {
    fn take_original(&self, peer: SocketAddr) -> Option<interceptor_common::ConnRecord>;
    fn upstream_is_workload(&self, local: SocketAddr) -> Option<u64>;
}

impl Redirects for crate::bpf::Hooks {
    fn take_original(&self, peer: SocketAddr) -> Option<interceptor_common::ConnRecord> {
        crate::bpf::Hooks::take_original(self, peer)
    }

    fn upstream_is_workload(&self, local: SocketAddr) -> Option<u64> {
        crate::bpf::Hooks::upstream_is_workload(self, local)
    }
}

/// What a proxy is made of besides its configuration, built by the daemon
/// (or a test) and handed over.
pub struct Parts {
    pub kernel: Arc<dyn Redirects>,
    pub names: CgroupNames,
    pub policy: Policy,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub tls: Tls,
    pub oidc: Option<Arc<Validator>>,
    /// Where users present their token.
    pub user_header: ::http::HeaderName,
    pub clock: Clock,
    pub approvals: Arc<crate::approval::Approvals>,
    pub webhook: Option<Arc<crate::webhook::Webhook>>,
    /// `max_connections_per_workload`, resolved against the fd limit.
    pub connections_per_workload: usize,
}

/// The time policy sees; tests may pin it (INTERCEPTOR_TEST_NOW).
#[derive(Clone, Copy)]
pub struct Clock {
    fixed: Option<jiff::Timestamp>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock { fixed: None }
    }

    pub fn fixed(t: jiff::Timestamp) -> Clock {
        Clock { fixed: Some(t) }
    }

    pub fn now(&self) -> jiff::Timestamp {
        self.fixed.unwrap_or_else(jiff::Timestamp::now)
    }
}

/// Everything a connection handler reads; shared by all connections.
pub struct Proxy {
    pub kernel: Arc<dyn Redirects>,
    pub names: CgroupNames,
    /// SO_MARK on every socket the proxy opens towards an upstream: a
    /// workload's own server (reached through the proxy) accepts only
    /// connections that carry it.
    pub mark: u32,
    pub policy: RwLock<Arc<Policy>>,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub connect_timeout: Duration,
    /// First bytes, TLS handshake and each request head from a client
    /// within this. Waiting as long for a client's first bytes costs a
    /// server-first protocol nothing: destination rules decide those before
    /// anything is read.
    pub header_timeout: Duration,
    /// A request body may pause this long.
    pub body_timeout: Duration,
    pub limits: Arc<intake::ConnLimits>,
    pub body_budget: Arc<crate::memory_budget::BodyBudget>,
    pub tls: Tls,
    pub upstreams: upstream::Pool,
    pub credentials: Credentials,
    pub oidc: Option<Arc<Validator>>,
    /// Where users present their token (default Proxy-Authorization).
    pub user_header: ::http::HeaderName,
    pub clock: Clock,
    pub approvals: Arc<crate::approval::Approvals>,
    /// Masked response bodies recorded per session, at most (bytes).
    pub record_body_bytes: u64,
    /// The CPU masking one body may use.
    pub mask_cpu: std::sync::Arc<crate::masking::cpu_allowance::MaskCpu>,
    pub approvers_group: Option<String>,
    /// Requests held for an approver per workload, at most.
    pub max_pending_approvals: usize,
    pub webhook: Option<Arc<crate::webhook::Webhook>>,
}

impl Proxy {
    pub fn new(cfg: &crate::config::Config, p: Parts) -> Arc<Proxy> {
        Arc::new(Proxy {
            kernel: p.kernel.clone(),
            names: p.names,
            mark: cfg.proxy_mark,
            policy: RwLock::new(Arc::new(p.policy)),
            store: p.store,
            stats: p.stats.clone(),
            connect_timeout: cfg.connect_timeout,
            header_timeout: cfg.client_header_timeout,
            body_timeout: cfg.client_body_timeout,
            limits: intake::ConnLimits::new(p.connections_per_workload, p.stats),
            body_budget: crate::memory_budget::BodyBudget::new(
                cfg.inspect_buffer_per_workload,
                cfg.inspect_buffer_total,
            ),
            upstreams: upstream::Pool::new(
                p.tls.client.clone(),
                cfg.connect_timeout,
                cfg.proxy_mark,
                p.kernel,
            ),
            tls: p.tls,
            credentials: Credentials::new(cfg.credentials_dir.clone()),
            oidc: p.oidc,
            user_header: p.user_header,
            clock: p.clock,
            approvals: p.approvals,
            record_body_bytes: cfg.record_body_bytes,
            mask_cpu: crate::masking::cpu_allowance::MaskCpu::new(cfg.mask_cpu, cfg.mask_cpu_cores),
            approvers_group: cfg.approvers_group.clone(),
            max_pending_approvals: cfg.max_pending_approvals,
            webhook: p.webhook,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap().clone()
    }

    /// Waits until no HTTP exchange is in flight, or `limit`: a stopping
    /// daemon lets responses already on their way finish instead of cutting
    /// them (new connects are refused in the kernel meanwhile). Returns how
    /// many were still in flight at the limit.
    pub async fn drain(&self, limit: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.stats.in_flight.load(Ordering::Relaxed);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accepts forever on one listener (127.0.0.1 or ::1).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((conn, peer)) => {
                    let me = self.clone();
                    // Everything logged about this connection carries its
                    // peer and, once it has one, its session id.
                    let span = tracing::info_span!(
                        "conn",
                        %peer,
                        session = tracing::field::Empty
                    );
                    tokio::spawn(async move { me.handle(conn, peer).await }.instrument(span));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(self: Arc<Self>, conn: TcpStream, peer: SocketAddr) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = conn.set_nodelay(true);

        // attribute
        let Some(rec) = self.kernel.take_original(peer) else {
            // Not redirected by our hooks (or the record is gone): never
            // forward what we cannot attribute.
            self.stats.unattributed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "connection without a kernel record refused");
            reset(conn);
            return;
        };
        let workload = identity::workload(&rec, &self.names);
        // Fairness before any work: a workload at its cap is refused here.
        let Some(_slot) = self.limits.acquire(&workload.cgroup) else {
            reset(conn);
            return;
        };
        let destination = original_destination(&rec);
        let id = self.store.next_session_id();
        tracing::Span::current().record("session", id);
        let mut session = Session {
            id,
            started_ms: store::now_ms(),
            ended_ms: None,
            state: State::Open,
            workload,
            destination: destination.to_string(),
            client: peer.to_string(),
            protocol: "tcp".into(),
            sni: None,
            requests: 0,
            decision: Action::Deny,
            rule: None,
            reason: String::new(),
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        };
        if session.workload.cgroup.is_empty() {
            let d = Decision::deny(format!(
                "cgroup id {} is not under a workload cgroup",
                rec.cgroup_id
            ));
            return self.refuse(conn, session, &d).await;
        }

        // decide, inspecting as far as the policy needs
        let policy = self.policy();
        let cgroup = session.workload.cgroup.clone();
        let subject = |sni: Option<&str>, last_stage: bool| -> Verdict {
            policy.decide(&Subject {
                workload: &cgroup,
                destination,
                now: self.clock.now(),
                sni,
                request: None,
                last_stage,
            })
        };
        if let Verdict::Decided(d) = subject(None, false) {
            return self.forward_opaque(conn, session, &d).await;
        }
        match detect::protocol(&conn, self.header_timeout).await {
            Protocol::Http => {
                session.protocol = "http".into();
                self.inspect_http(conn, session, None).await
            }
            Protocol::Tls => {
                let sni = match crate::tls::peek_server_name(&conn, self.header_timeout).await {
                    Ok(sni) => sni,
                    Err(e) => {
                        session.error = Some(format!("TLS: {e:#}"));
                        return self
                            .refuse(
                                conn,
                                session,
                                &Decision::deny("unreadable TLS ClientHello".into()),
                            )
                            .await;
                    }
                };
                session.sni = sni.clone();
                let name = sni.clone().unwrap_or_else(|| destination.ip().to_string());
                match subject(Some(&name), false) {
                    Verdict::Decided(d) if d.action == Action::Deny => {
                        self.refuse(conn, session, &d).await
                    }
                    Verdict::Decided(d) if d.effects.tls == TlsMode::Passthrough => {
                        session.protocol = "tls-passthrough".into();
                        self.forward_opaque(conn, session, &d).await
                    }
                    _ => {
                        session.protocol = "tls".into();
                        self.inspect_http(conn, session, Some(name)).await
                    }
                }
            }
            Protocol::Opaque => {
                let d = match subject(None, true) {
                    Verdict::Decided(d) => d,
                    Verdict::NeedsInspection => Decision::default_deny(),
                };
                self.forward_opaque(conn, session, &d).await
            }
        }
    }

    /// Records the decision, then refuses (RST).
    async fn refuse(&self, conn: TcpStream, mut session: Session, d: &Decision) {
        session.decision = Action::Deny;
        session.rule = d.rule.clone();
        session.reason = d.reason.clone();
        let audited = self.announce_decision(&session);
        if let Some(seq) = audited {
            // `always`: the refusal is on disk before the workload sees it.
            let _ = self.store.durable(seq).await;
        }
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        reset(conn);
        self.finish(session).await;
    }

    /// A connection decided as a whole: bytes both ways, not looked into.
    async fn forward_opaque(&self, conn: TcpStream, mut session: Session, d: &Decision) {
        if d.action == Action::Deny {
            return self.refuse(conn, session, d).await;
        }
        session.decision = Action::Allow;
        session.rule = d.rule.clone();
        session.reason = d.reason.clone();
        // The decision is in the kernel (audit log) before the upstream
        // hears of the connection: a crash can interrupt a session, never
        // erase it. With `audit_sync = "always"` its fdatasync overlaps the
        // connect, and no byte is relayed before it is done.
        let Some(seq) = self.announce_decision(&session) else {
            // Fail closed: no forwarding without a record.
            reset(conn);
            return;
        };
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        let destination: SocketAddr = session.destination.parse().expect("formatted by us");
        let (durable, connected) = tokio::join!(
            self.store.durable(seq),
            tokio::time::timeout(self.connect_timeout, connect_marked(destination, self.mark)),
        );
        if let Err(e) = durable {
            tracing::error!(session = session.id, error = %e, "audit log not durable; refusing");
            reset(conn);
            return;
        }
        let upstream = match connected {
            Ok(Ok(u)) => {
                // Opaque TCP carries no credential; consume the kernel's note.
                if let Ok(l) = u.local_addr() {
                    let _ = self.kernel.upstream_is_workload(l);
                }
                u
            }
            Ok(Err(e)) => return self.upstream_failed(conn, session, e.to_string()).await,
            Err(_) => {
                return self
                    .upstream_failed(conn, session, "connect timed out".into())
                    .await;
            }
        };
        let _ = upstream.set_nodelay(true);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let t = tcp::splice(conn, upstream).await;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.bytes_up.fetch_add(t.up, Ordering::Relaxed);
        self.stats.bytes_down.fetch_add(t.down, Ordering::Relaxed);
        session.bytes_up = t.up;
        session.bytes_down = t.down;
        session.error = t.error;
        self.finish(session).await;
    }

    /// HTTP on the connection (inside TLS when `sni` is given): each request
    /// is decided on its own.
    async fn inspect_http(
        self: &Arc<Self>,
        conn: TcpStream,
        mut session: Session,
        sni: Option<String>,
    ) {
        session.decision = Action::Allow;
        session.reason = "inspected: decided per request".into();
        // Each request is audited and made durable on its own; the
        // connection's record only has to be in the kernel.
        if self.announce_decision(&session).is_none() {
            reset(conn);
            return;
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let destination = session.destination.parse().expect("formatted by us");
        let ctx = Arc::new(http::HttpConn {
            proxy: self.clone(),
            session: session.id,
            workload: session.workload.cgroup.clone(),
            pid: session.workload.pid,
            uid: session.workload.uid,
            destination,
            sni: sni.clone(),
            seq: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            record_cap: self.record_body_bytes,
        });
        let result = match &sni {
            None => serve_http(conn, ctx.clone(), self.header_timeout).await,
            Some(name) => match self.tls.server_config(name) {
                Ok(cfg) => match tokio::time::timeout(
                    self.header_timeout,
                    tokio_rustls::TlsAcceptor::from(cfg).accept(conn),
                )
                .await
                {
                    Ok(Ok(tls)) => serve_http(tls, ctx.clone(), self.header_timeout).await,
                    Ok(Err(e)) => Err(format!(
                        "TLS handshake with the client failed (does it trust the interceptor CA?): {e}"
                    )),
                    Err(_) => Err("the client did not finish its TLS handshake in time".into()),
                },
                Err(e) => Err(format!("cannot mint a certificate for {name:?}: {e:#}")),
            },
        };
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        session.requests = ctx.seq.load(Ordering::Relaxed);
        session.bytes_up = ctx.bytes_up.load(Ordering::Relaxed);
        session.bytes_down = ctx.bytes_down.load(Ordering::Relaxed);
        self.stats
            .bytes_up
            .fetch_add(session.bytes_up, Ordering::Relaxed);
        self.stats
            .bytes_down
            .fetch_add(session.bytes_down, Ordering::Relaxed);
        if let Err(e) = &result {
            // Also what a client that never finished its TLS handshake or
            // its request looks like from here.
            tracing::info!(session = session.id, error = %e, "connection ended with an error");
        }
        session.error = result.err();
        self.finish(session).await;
    }

    /// Logs the connection's decision, appends it to the audit log and
    /// records the session (open). `None`: the log took nothing, so the
    /// connection must not go on.
    fn announce_decision(&self, s: &Session) -> Option<u64> {
        let w = &s.workload;
        tracing::info!(
            session = s.id,
            cgroup = %w.cgroup, pid = w.pid, exe = %w.exe, uid = w.uid,
            destination = %s.destination, protocol = %s.protocol, sni = s.sni.as_deref().unwrap_or("-"),
            decision = ?s.decision, rule = s.rule.as_deref().unwrap_or("-"), reason = %s.reason,
            "connection"
        );
        let data = ConnectionAudit {
            session: s.id,
            workload: &w.cgroup,
            cgroup_id: w.cgroup_id,
            pid: w.pid,
            exe: &w.exe,
            uid: w.uid,
            destination: &s.destination,
            protocol: &s.protocol,
            sni: s.sni.as_deref(),
            decision: s.decision,
            rule: s.rule.as_deref(),
            reason: &s.reason,
        };
        let ticket = match self.store.audit_indexed("connection", &data) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(session = s.id, error = %format!("{e:#}"), "could not append to the audit log");
                return None;
            }
        };
        let seq = ticket.seq;
        if let Err(e) = self.store.put_audited(s, ticket) {
            tracing::error!(session = s.id, error = %e, "could not record the session");
        }
        Some(seq)
    }

    async fn upstream_failed(&self, conn: TcpStream, mut session: Session, error: String) {
        self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(session = session.id, destination = %session.destination, %error, "upstream connect failed");
        reset(conn);
        session.error = Some(format!("upstream: {error}"));
        self.finish(session).await;
    }

    /// The closed session goes to the index (its decision is in the audit
    /// log already; a crash before the index has it marks it interrupted).
    async fn finish(&self, mut session: Session) {
        session.state = State::Closed;
        session.ended_ms = Some(store::now_ms());
        if let Err(e) = self.store.put(&session) {
            tracing::error!(session = session.id, error = %e, "could not record the session");
        }
    }

    /// `ticket`: the request's decision record in the audit log, out until
    /// the index has the request.
    pub fn record_request(&self, r: &RequestRecord, ticket: Option<store::Ticket>) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.put_request(r, ticket) {
            tracing::error!(session = r.session, seq = r.seq, error = %e, "could not record the request");
        }
    }
}

/// A connection's decision, as its audit record holds it.
#[derive(serde::Serialize)]
struct ConnectionAudit<'a> {
    session: u64,
    workload: &'a str,
    cgroup_id: u64,
    pid: u32,
    exe: &'a str,
    uid: u32,
    destination: &'a str,
    protocol: &'a str,
    sni: Option<&'a str>,
    decision: Action,
    rule: Option<&'a str>,
    reason: &'a str,
}

/// Serves HTTP/1.1 or HTTP/2 (ALPN or prior knowledge) on one connection.
/// An HTTP/1.1 request head (also the wait for the next one on a kept-alive
/// connection) must arrive within `header_timeout`; HTTP/2 connections are
/// pinged and closed when the client stops answering.
async fn serve_http<I>(
    io: I,
    ctx: Arc<http::HttpConn>,
    header_timeout: Duration,
) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| ctx.clone().handle(req));
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    // 100 concurrent streams, as Envoy: each may hold a body being read.
    b.http2()
        .max_concurrent_streams(100)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(header_timeout)
        .keep_alive_timeout(header_timeout);
    b.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc)
        .await
        .map_err(|e| e.to_string())
}

/// SO_MARK (needs CAP_NET_ADMIN, which the daemon has and workloads lack).
pub fn set_mark(sock: &tokio::net::TcpSocket, mark: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the socket's fd is open for the call, and the value points to a live u32 of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An upstream connection from a marked socket.
pub async fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // 0 is every socket's mark already (and setting it needs
    // CAP_NET_ADMIN, which the in-process tests do not have).
    if mark != 0 {
        set_mark(&sock, mark)?;
    }
    sock.connect(addr).await
}

/// Closes with RST, so the client sees a refused connection at once rather
/// than an orderly, data-less close.
fn reset(conn: TcpStream) {
    // Deprecated because a non-zero linger blocks on drop; zero does not.
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}
