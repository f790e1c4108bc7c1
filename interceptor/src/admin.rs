//! Admin endpoints.
//!
//! - Unix socket (root only, mode 0600): the control API the CLI uses
//!   (`/v1/sessions`), plus health and metrics.
//! - Loopback TCP: health and metrics only. Workloads cannot reach it: its
//!   port is protected in the kernel (connect refused, bind refused).
use crate::proxy::Proxy;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::{TcpListener, UnixListener};

#[derive(Clone, Copy)]
enum Surface {
    /// Full API.
    Control,
    /// Health and metrics only.
    Public,
}

pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A stale socket from a killed daemon would make bind fail.
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve_unix(listener: UnixListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        spawn_conn(TokioIo::new(stream), proxy.clone(), Surface::Control);
    }
}

pub async fn serve_tcp(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        spawn_conn(TokioIo::new(stream), proxy.clone(), Surface::Public);
    }
}

fn spawn_conn<I>(io: I, proxy: Arc<Proxy>, surface: Surface)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(route(req, &proxy, surface)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    });
}

fn route(req: Request<Incoming>, proxy: &Proxy, surface: Surface) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match (req.uri().path(), surface) {
        ("/healthz", _) => text(StatusCode::OK, "ok\n"),
        ("/metrics", _) => text(StatusCode::OK, &metrics(proxy)),
        ("/v1/sessions", Surface::Control) => {
            let limit = query_param(req.uri().query(), "limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100usize);
            match proxy.store.recent(limit) {
                Ok(s) => json(StatusCode::OK, &s),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
            }
        }
        ("/v1/audit", Surface::Control) => {
            let q = req.uri().query();
            let num = |k| query_param(q, k).and_then(|v| v.parse::<u64>().ok());
            let limit = num("limit").unwrap_or(10_000).min(100_000) as usize;
            match proxy.store.audit_records(
                num("after").unwrap_or(0),
                num("since_ms").unwrap_or(0),
                limit,
            ) {
                Ok(r) => json(StatusCode::OK, &r),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
            }
        }
        ("/v1/audit/verify", Surface::Control) => match proxy.store.audit_verify() {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": e.to_string()}),
            ),
        },
        (p, Surface::Control) if p.starts_with("/v1/sessions/") => {
            let id = p.trim_start_matches("/v1/sessions/").parse::<u64>();
            match id.map(|id| proxy.store.session_with_requests(id)) {
                Ok(Ok(Some(v))) => json(StatusCode::OK, &v),
                Ok(Ok(None)) => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "no such session"}),
                ),
                Ok(Err(e)) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
                Err(_) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "session ids are numbers"}),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn query_param<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(v).unwrap_or_default(),
        )))
        .unwrap()
}

/// Prometheus text exposition.
fn metrics(proxy: &Proxy) -> String {
    let s = &proxy.stats;
    let k = proxy.hooks.counters();
    let mut out = String::new();
    let mut put = |name: &str, help: &str, kind: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    put(
        "interceptor_connections_accepted_total",
        "Redirected connections accepted.",
        "counter",
        c(&s.accepted),
    );
    put(
        "interceptor_connections_allowed_total",
        "Connections allowed by policy.",
        "counter",
        c(&s.allowed),
    );
    put(
        "interceptor_connections_denied_total",
        "Connections denied by policy.",
        "counter",
        c(&s.denied),
    );
    put(
        "interceptor_connections_unattributed_total",
        "Connections refused for lack of a kernel record.",
        "counter",
        c(&s.unattributed),
    );
    put(
        "interceptor_upstream_errors_total",
        "Upstream connects that failed.",
        "counter",
        c(&s.upstream_errors),
    );
    put(
        "interceptor_connections_active",
        "Connections being forwarded.",
        "gauge",
        c(&s.active),
    );
    put(
        "interceptor_bytes_up_total",
        "Bytes workload to upstream.",
        "counter",
        c(&s.bytes_up),
    );
    put(
        "interceptor_bytes_down_total",
        "Bytes upstream to workload.",
        "counter",
        c(&s.bytes_down),
    );
    put(
        "interceptor_requests_total",
        "HTTP requests decided.",
        "counter",
        c(&s.requests),
    );
    if let Some(o) = &proxy.oidc {
        put(
            "interceptor_oidc_jwks_fetches_total",
            "JWKS fetch attempts.",
            "counter",
            o.jwks_fetches(),
        );
    }
    put(
        "interceptor_kernel_redirected_total",
        "Connects redirected in the kernel.",
        "counter",
        k.redirected,
    );
    put(
        "interceptor_kernel_refused_stale_total",
        "Connects refused: daemon heartbeat stale.",
        "counter",
        k.refused_stale,
    );
    put(
        "interceptor_kernel_refused_protected_total",
        "Connects refused: proxy's own port.",
        "counter",
        k.refused_protected,
    );
    put(
        "interceptor_kernel_refused_map_full_total",
        "Connects refused: record not stored.",
        "counter",
        k.refused_map_full,
    );
    put(
        "interceptor_kernel_refused_udp_total",
        "UDP or non-TCP sockets refused.",
        "counter",
        k.refused_udp,
    );
    put(
        "interceptor_kernel_refused_bind_total",
        "Binds of protected ports refused.",
        "counter",
        k.refused_bind,
    );
    out
}

/// CLI side: GET a path on the admin socket. `Ok(None)` when no daemon
/// listens there (the caller may then read the store directly).
pub async fn get(socket: &Path, path: &str) -> Result<Option<(StatusCode, Bytes)>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "interceptor")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Some((status, body)))
}
