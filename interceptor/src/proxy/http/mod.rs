//! HTTP/1.1 and HTTP/2 (plaintext, or inside intercepted TLS): every request
//! is attributed, decided, given its credential, forwarded and recorded.
use super::Proxy;
use super::body::{LimitedBody, TrackedBody};
use super::canonical;
pub use super::refusal::{Refusal, Why};
use super::upstream::{BoxError, Key, ReqBody};
use crate::credentials::Secret;
use crate::identity::oidc::User;
use crate::masking::sse_fields::Framing;
use crate::policy::{
    Action, BODY_INSPECT_MAX, Credential, Decision, InspectedBody, Placement, RequestInfo, Subject,
    Verdict,
};
use crate::store::{self, RequestRecord};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;
use zeroize::Zeroizing;

mod approve;
mod attribute;
mod decide;
mod forward;
mod inject;
mod mask;
mod record;

use record::Audited;

pub type RespBody = BoxBody<Bytes, BoxError>;

/// A request body as it arrived, or as read for inspection and put back.
type InBody = http_body_util::Either<Incoming, Full<Bytes>>;

/// What policy sees of a request besides its headers and body.
#[derive(Clone, Copy)]
struct RequestHead<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
    user: Option<&'a User>,
}

/// One intercepted connection.
pub struct HttpConn {
    pub proxy: Arc<Proxy>,
    pub session: u64,
    pub workload: String,
    /// The process that opened the connection (approvals check it is not
    /// also the approver).
    pub pid: u32,
    pub uid: u32,
    pub destination: SocketAddr,
    /// The TLS server name for intercepted TLS; `None` for plaintext.
    pub sni: Option<String>,
    pub seq: AtomicU64,
    /// Body bytes of all requests and responses, for the session record.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Bytes of masked bodies recorded on this session so far.
    pub recorded: AtomicU64,
    /// Masked bodies recorded per session, at most.
    pub record_cap: u64,
}

/// One request on its way through the phases, owned by it from the first
/// byte to the end of its response body: the record it becomes in the
/// index, its decision's audit record once appended, and the taps on the
/// bodies being masked. What only an admitted request has (the decision,
/// the policy snapshot, the injected secret) is an `Admitted`, which
/// `decide` returns and `forward` consumes.
struct RequestCtx {
    rec: RequestRecord,
    started: std::time::Instant,
    audited: Option<Audited>,
    /// The response body's masking, while it streams.
    response_tap: Option<mask::Tap>,
    /// A `mask_request` body's masking on its way upstream.
    request_tap: Option<mask::Tap>,
}

/// A request that passed policy, carrying what the response needs: the
/// decision and the policy snapshot it was made with (a reload while the
/// upstream answers does not change the profile its response is masked by).
struct Admitted {
    decision: Decision,
    policy: Arc<crate::policy::Policy>,
    /// Memory held by a body read for inspection, until it has gone upstream.
    _lease: crate::memory_budget::Lease,
    host: String,
    /// Forms of the injected secret, masked in the response whatever the policy says.
    injected: Vec<Zeroizing<String>>,
}

/// Headers that belong to one hop (RFC 9110 7.6.1) and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

impl HttpConn {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, std::convert::Infallible> {
        let in_flight = super::InFlight::new(&self.proxy.stats.in_flight);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = RequestRecord {
            session: self.session,
            seq,
            started_ms: store::now_ms(),
            method: req.method().to_string(),
            host: String::new(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        let mut ctx = RequestCtx {
            rec,
            started: std::time::Instant::now(),
            audited: None,
            response_tap: None,
            request_tap: None,
        };
        let span = tracing::info_span!("request", seq);
        let result = self.clone().exchange(req, &mut ctx).instrument(span).await;
        if ctx.rec.reason.is_empty()
            && let Err(r) = &result
        {
            // Refused before the policy was asked (bad token, misdirected).
            ctx.rec.reason = r.message.clone();
        }
        // A request forwarded was audited before it went upstream; one
        // refused before that is audited now, with its refusal's code.
        let audited = match ctx.audited.take() {
            Some(a) => Ok(a),
            None => self.audit(&ctx.rec, result.as_ref().err().map(|r| r.code())),
        };
        // The decision's audit record is as durable as `audit_sync`
        // promises before its response goes out (for `always`, the sync
        // ran while the upstream answered).
        let audited = match audited {
            Ok(a) => match self.proxy.store.durable(a.seq).await {
                Ok(()) => Ok(a),
                Err(e) => Err((e, a.ticket)),
            },
            Err(r) => Err((anyhow::anyhow!(r.message), None)),
        };
        let ticket = match audited {
            Ok(a) => a.ticket,
            Err((e, ticket)) => {
                let rec = &mut ctx.rec;
                tracing::error!(session = self.session, seq = rec.seq, error = %format!("{e:#}"), "audit log unavailable; withholding the response");
                rec.status = 503;
                rec.error = Some("audit log unavailable".into());
                self.proxy.record_request(rec, ticket);
                return Ok(
                    Refusal::new(Why::AuditUnavailable, "the audit log cannot be written")
                        .response(),
                );
            }
        };
        match result {
            Ok(resp) => Ok(self.clone().track(resp, ctx, ticket, in_flight)),
            Err(refusal) => {
                let rec = &mut ctx.rec;
                rec.status = refusal.status().as_u16();
                rec.error.get_or_insert_with(|| refusal.message.clone());
                let resp = refusal.response();
                rec.duration_ms = ctx.started.elapsed().as_millis() as u64;
                self.proxy.record_request(rec, ticket);
                Ok(resp)
            }
        }
    }

    /// attribute → decide → inject → forward, for one request.
    async fn exchange(
        self: Arc<Self>,
        req: Request<Incoming>,
        ctx: &mut RequestCtx,
    ) -> Result<Response<RespBody>, Refusal> {
        let upgrade = upgrade_of(&req);
        // A body read for inspection is put back as bytes.
        let mut req = req.map(InBody::Left);
        let admitted = match self.admit(&mut req, &mut ctx.rec).await {
            Ok(d) => d,
            Err(refusal) => {
                // Read what the client is still sending, so the answer is
                // not lost to a reset of its unread upload.
                drain(req.into_body()).await;
                return Err(refusal);
            }
        };
        self.forward(req, ctx, admitted, upgrade).await
    }
}

/// Reads and discards up to 1 MiB or 2 s of a refused request's body.
async fn drain<B: hyper::body::Body<Data = Bytes> + Unpin>(mut body: B) {
    let limit = 1 << 20;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > limit {
                break;
            }
        }
    })
    .await;
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade`
/// plus `Upgrade: <protocol>`), e.g. websocket.
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !wants || req.version() != http::Version::HTTP_11 {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h
            .split_once(']')
            .map_or(h, |(a, _)| a.trim_start_matches('['));
    }
    h.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(h, |(a, _)| a)
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

impl Refusal {
    fn not_canonical(why: canonical::NotCanonical) -> Refusal {
        Refusal::new(Why::NonCanonicalRequest, why.to_string())
    }

    fn denied(d: &Decision) -> Refusal {
        Refusal::new(Why::Denied, d.reason.clone()).by_rule(d.rule.clone())
    }

    fn too_large(max: u64, d: &Decision) -> Refusal {
        Refusal::new(
            Why::BodyTooLarge,
            format!("the request body exceeds {max} bytes"),
        )
        .by_rule(d.rule.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("api.example.com:443"), "api.example.com");
        assert_eq!(strip_port("api.example.com"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
