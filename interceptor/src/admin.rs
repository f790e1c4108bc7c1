//! Admin endpoints.
//!
//! - Unix socket (root only, mode 0600): the control API the CLI uses
//!   (`/v1/sessions`), plus health and metrics.
//! - Loopback TCP: health and metrics only. Workloads cannot reach it: its
//!   port is protected in the kernel (connect refused, bind refused).
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

/// The control socket: root only, or root and the approvers group.
pub fn bind_socket(path: &Path, approvers_group: Option<&str>) -> Result<UnixListener> {
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
    if let Some(g) = approvers_group {
        let gid = group_id(g).with_context(|| format!("approvers_group {g:?} does not exist"))?;
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(l)
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 65536];
    // SAFETY: a C struct of integers and pointers: all zeroes is a valid, empty value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc =
        // SAFETY: every pointer is to a live local of its type, and `buf` is as long as the length passed.
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// What the admin API reads and acts on: the store, the counters, the
/// kernel hooks' counters and the approval desk; never the proxy itself.
pub struct AdminState {
    pub store: Arc<crate::store::Store>,
    pub stats: Arc<crate::metrics::Stats>,
    pub kernel: Arc<crate::bpf::Hooks>,
    pub oidc: Option<Arc<crate::identity::oidc::Validator>>,
    pub approvals: Arc<crate::approval::Approvals>,
    /// The group whose members may decide approvals.
    pub approvers_group: Option<String>,
}

pub async fn serve_unix(listener: UnixListener, proxy: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Who is calling, from the kernel (SO_PEERCRED): approvers act
        // under this identity.
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        spawn_conn(
            TokioIo::new(stream),
            proxy.clone(),
            Surface::Control,
            Some(cred.uid()),
        );
    }
}

pub async fn serve_tcp(listener: TcpListener, proxy: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        spawn_conn(TokioIo::new(stream), proxy.clone(), Surface::Public, None);
    }
}

fn spawn_conn<I>(io: I, proxy: Arc<AdminState>, surface: Surface, peer_uid: Option<u32>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move {
                let resp = match (req.method(), req.uri().path(), peer_uid) {
                    (&Method::POST, p, Some(uid)) if p.starts_with("/v1/approvals/") => {
                        decide(req, &proxy, uid).await
                    }
                    (&Method::POST, "/v1/audit/exported", Some(uid)) => {
                        exported(req, &proxy, uid).await
                    }
                    _ => route(req, &proxy, surface),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    });
}

fn route(req: Request<Incoming>, proxy: &AdminState, surface: Surface) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match (req.uri().path(), surface) {
        ("/healthz", _) => text(StatusCode::OK, "ok\n"),
        ("/metrics", _) => text(StatusCode::OK, &metrics(proxy)),
        ("/v1/sessions", Surface::Control) => {
            let q = req.uri().query();
            let limit = query_param(q, "limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100usize);
            // The filter travels as one JSON query parameter, percent-encoded.
            let filter =
                match query_param(q, "filter").map(|f| serde_json::from_str(&pct_decode(f))) {
                    None => crate::store::SessionFilter::default(),
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": format!("filter: {e}")}),
                        );
                    }
                };
            match proxy.store.find(&filter, limit) {
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
        ("/v1/approvals", Surface::Control) => {
            match if query_param(req.uri().query(), "state") == Some("pending") {
                proxy.store.pending_approvals()
            } else {
                proxy.store.approvals(1000)
            } {
                Ok(a) => json(StatusCode::OK, &a),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
            }
        }
        (p, Surface::Control) if p.starts_with("/v1/approvals/") => {
            match p
                .trim_start_matches("/v1/approvals/")
                .parse::<u64>()
                .map(|id| proxy.store.approval(id))
            {
                Ok(Ok(Some(a))) => json(StatusCode::OK, &a),
                Ok(Ok(None)) => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "no such approval"}),
                ),
                Ok(Err(e)) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
                Err(_) => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "approval ids are numbers"}),
                ),
            }
        }
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

/// %XX decoding for the one JSON parameter our own CLI sends
/// (`pct_encode`): a dozen lines rather than a dependency.
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything but RFC 3986 unreserved characters as %XX.
pub fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// `POST /v1/approvals/ID/approve|deny` with `{"reason": ..., "window_s": ...}`,
/// as the peer's account.
async fn decide(req: Request<Incoming>, proxy: &AdminState, uid: u32) -> Response<Full<Bytes>> {
    let err = |status, msg: String| json(status, &serde_json::json!({ "error": msg }));
    let path = req
        .uri()
        .path()
        .trim_start_matches("/v1/approvals/")
        .to_string();
    let Some((id, verb)) = path.split_once('/') else {
        return err(
            StatusCode::NOT_FOUND,
            "POST /v1/approvals/ID/approve or /deny".into(),
        );
    };
    let Ok(id) = id.parse::<u64>() else {
        return err(StatusCode::BAD_REQUEST, "approval ids are numbers".into());
    };
    let approve = match verb {
        "approve" => true,
        "deny" => false,
        _ => return err(StatusCode::NOT_FOUND, "approve or deny".into()),
    };
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return err(StatusCode::BAD_REQUEST, "body too large".into()),
    };
    #[derive(serde::Deserialize, Default)]
    struct Body {
        reason: Option<String>,
        window_s: Option<u64>,
    }
    let b: Body = if body.is_empty() {
        Body::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let Ok(Some(a)) = proxy.store.approval(id) else {
        return err(StatusCode::NOT_FOUND, format!("no approval {id}"));
    };
    let approver = crate::approval::Approver::from_peer(uid, proxy.approvers_group.as_deref());
    let window = b.window_s.map(std::time::Duration::from_secs);
    match proxy.approvals.decide(
        a,
        &approver,
        approve,
        b.reason,
        window,
        crate::store::now_ms(),
    ) {
        Ok(a) => {
            if let Err(e) = proxy
                .store
                .put_approval(&a)
                .and_then(|_| proxy.store.flush())
            {
                return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            let _ = proxy.store.audit(
                "approval",
                &serde_json::json!({"approval": a.id, "decision": a.state, "approver": a.approver, "reason": a.reason,
                                   "rule": a.rule, "workload": a.workload, "window_until_ms": a.window_until_ms}),
            );
            tracing::info!(approval = a.id, approver = %approver.name, state = ?a.state, "approval decided");
            json(StatusCode::OK, &a)
        }
        Err(e @ crate::approval::DecideError::NotPending(_)) => {
            err(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => err(StatusCode::FORBIDDEN, e.to_string()),
    }
}

/// `POST /v1/audit/exported` with `{"through": SEQ}`: the caller's export
/// has every record up to SEQ, so audit retention may remove them. Root
/// only (an approver must not be able to age the log out).
async fn exported(req: Request<Incoming>, proxy: &AdminState, uid: u32) -> Response<Full<Bytes>> {
    let err = |status, msg: String| json(status, &serde_json::json!({ "error": msg }));
    if uid != 0 {
        return err(
            StatusCode::FORBIDDEN,
            "only root may mark the audit log exported".into(),
        );
    }
    #[derive(serde::Deserialize)]
    struct Body {
        through: u64,
    }
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return err(StatusCode::BAD_REQUEST, "body too large".into()),
    };
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match proxy.store.mark_audit_exported(b.through) {
        Ok(now) => json(StatusCode::OK, &serde_json::json!({ "exported": now })),
        Err(e) => err(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

/// Prometheus text exposition.
fn metrics(proxy: &AdminState) -> String {
    let s = &proxy.stats;
    let k = proxy.kernel.counters();
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
        "interceptor_connections_over_cap_total",
        "Connections refused because their workload held max_connections_per_workload.",
        "counter",
        c(&s.over_cap),
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
        "interceptor_requests_in_flight",
        "HTTP exchanges from request to the end of the response.",
        "gauge",
        c(&s.in_flight),
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
        "interceptor_kernel_refused_record_total",
        "Connects refused: the record could not be allocated (the maps are LRU: a flood evicts, it does not fill).",
        "counter",
        k.refused_record,
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
    put(
        "interceptor_kernel_refused_socket_total",
        "socket() calls refused: a kind outside the allow-list.",
        "counter",
        k.refused_socket,
    );
    put(
        "interceptor_kernel_dropped_inbound_total",
        "Packets to workload sockets dropped: not from the proxy, no inbound rule.",
        "counter",
        k.dropped_inbound,
    );
    put(
        "interceptor_kernel_inbound_accepted_total",
        "Inbound connections accepted by rule.",
        "counter",
        k.inbound_accepted,
    );
    put(
        "interceptor_kernel_inbound_backpressure_total",
        "Inbound SYNs a rule allows held back (dropped, the peer retries) until their connection can be recorded.",
        "counter",
        k.inbound_backpressure,
    );
    put(
        "interceptor_hooks_tampered_total",
        "Programs found detached from a workload cgroup and re-attached.",
        "counter",
        proxy
            .kernel
            .tampered
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    put(
        "interceptor_shared_uid_findings_total",
        "Shared-uid scan findings (a process outside the workload under a skill's uid, or a skill running as root), summed over scans.",
        "counter",
        crate::hostcheck::SHARED_UID_FINDINGS.load(Ordering::Relaxed),
    );
    out
}

/// CLI side: POST JSON to the admin socket; `Ok(None)` when no daemon listens.
pub async fn post(
    socket: &Path,
    path: &str,
    body: serde_json::Value,
) -> Result<Option<(StatusCode, Bytes)>> {
    let req = Request::post(path)
        .header("host", "interceptor")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    send(socket, req).await
}

/// CLI side: GET a path on the admin socket. `Ok(None)` when no daemon
/// listens there (the caller may then read the store directly).
pub async fn get(socket: &Path, path: &str) -> Result<Option<(StatusCode, Bytes)>> {
    let req = Request::get(path)
        .header("host", "interceptor")
        .body(Full::new(Bytes::new()))?;
    send(socket, req).await
}

async fn send(socket: &Path, req: Request<Full<Bytes>>) -> Result<Option<(StatusCode, Bytes)>> {
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
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Some((status, body)))
}
