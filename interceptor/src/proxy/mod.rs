//! The data path, one way: accept → attribute → decide → forward → record.
mod tcp;

use crate::bpf::{Hooks, original_destination};
use crate::cgroup::CgroupNames;
use crate::identity;
use crate::policy::{Action, Decision, Policy, Subject};
use crate::store::{self, Session, State, Store};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Counters for /metrics.
#[derive(Default, Debug, serde::Serialize)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub unattributed: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub active: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// Everything a connection handler reads; shared by all connections.
pub struct Proxy {
    pub hooks: Hooks,
    pub names: CgroupNames,
    pub policy: RwLock<Arc<Policy>>,
    pub store: Store,
    pub stats: Stats,
    pub connect_timeout: Duration,
}

impl Proxy {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap().clone()
    }

    /// Accepts forever on one listener (127.0.0.1 or ::1).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((conn, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.handle(conn, peer).await });
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
        let Some(rec) = self.hooks.take_original(peer) else {
            // Not redirected by our hooks (or the record is gone): never
            // forward what we cannot attribute.
            self.stats.unattributed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "connection without a kernel record refused");
            reset(conn);
            return;
        };
        let workload = identity::workload(&rec, &self.names);
        let destination = original_destination(&rec);

        // decide
        let decision = if workload.cgroup.is_empty() {
            Decision {
                action: Action::Deny,
                rule: None,
                reason: format!("cgroup id {} is not under a workload cgroup", rec.cgroup_id),
            }
        } else {
            self.policy().decide(&Subject {
                workload: &workload.cgroup,
                destination,
            })
        };

        let mut session = Session {
            id: self.store.next_id().unwrap_or(0),
            started_ms: store::now_ms(),
            ended_ms: None,
            state: State::Open,
            workload,
            destination: destination.to_string(),
            client: peer.to_string(),
            decision: decision.action,
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
            bytes_up: 0,
            bytes_down: 0,
            error: None,
        };
        let w = &session.workload;
        tracing::info!(
            session = session.id,
            cgroup = %w.cgroup, pid = w.pid, exe = %w.exe, uid = w.uid,
            %destination, decision = ?decision.action, rule = decision.rule.as_deref().unwrap_or("-"),
            reason = %decision.reason,
            "connection"
        );

        if decision.action == Action::Deny {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            reset(conn);
            self.finish(session).await;
            return;
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        // The decision is on disk before any byte is forwarded: a crash can
        // interrupt a session, never erase it. The upstream connect overlaps
        // the flush (a SYN carries no data).
        self.record(&session);
        let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(destination));
        let (flushed, connected) = tokio::join!(self.store.flush_async(), connect);
        if let Err(e) = flushed {
            // Fail closed: no forwarding without a durable record.
            tracing::error!(session = session.id, error = %e, "session store flush failed; refusing");
            reset(conn);
            return;
        }

        // forward
        let upstream = match connected {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return self.upstream_failed(conn, session, e.to_string()).await,
            Err(_) => return self.upstream_failed(conn, session, "connect timed out".into()).await,
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

    async fn upstream_failed(&self, conn: TcpStream, mut session: Session, error: String) {
        self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(session = session.id, destination = %session.destination, %error, "upstream connect failed");
        reset(conn);
        session.error = Some(format!("upstream: {error}"));
        self.finish(session).await;
    }

    /// The closed record is durable before the handler ends, so a crash
    /// right after a connection loses nothing about it.
    async fn finish(&self, mut session: Session) {
        session.state = State::Closed;
        session.ended_ms = Some(store::now_ms());
        self.record(&session);
        if let Err(e) = self.store.flush_async().await {
            tracing::error!(session = session.id, error = %e, "could not flush the session store");
        }
    }

    // record
    fn record(&self, session: &Session) {
        if let Err(e) = self.store.put(session) {
            tracing::error!(session = session.id, error = %e, "could not record the session");
        }
    }
}

/// Closes with RST, so the client sees a refused connection at once rather
/// than an orderly, data-less close.
fn reset(conn: TcpStream) {
    // Deprecated because a non-zero linger blocks on drop; zero does not.
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}
