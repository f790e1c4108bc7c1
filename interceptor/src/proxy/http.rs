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
    /// Captured masked bodies of responses still streaming, by request seq.
    pub pending_bodies:
        std::sync::Mutex<std::collections::HashMap<u64, Arc<std::sync::Mutex<Vec<u8>>>>>,
    /// Masking counts of responses still streaming, by request seq.
    pub pending_counts: std::sync::Mutex<
        std::collections::HashMap<u64, Arc<std::sync::Mutex<crate::masking::Counts>>>,
    >,
}

/// A request's decision record in the audit log: its number, and its
/// ticket until the index has the request.
struct Audited {
    seq: u64,
    ticket: Option<store::Ticket>,
}

/// A request's decision, as its audit record holds it.
#[derive(serde::Serialize)]
struct RequestAudit<'a> {
    session: u64,
    seq: u64,
    workload: &'a str,
    destination: &'a str,
    user: Option<&'a str>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    decision: Action,
    rule: Option<&'a str>,
    reason: &'a str,
    injected: Option<&'a str>,
    code: Option<&'a str>,
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
        let started = std::time::Instant::now();
        let mut rec = RequestRecord {
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
            user: None,
            decision: Action::Deny,
            rule: None,
            reason: String::new(),
            injected: None,
            masked: Default::default(),
            response_body: None,
            request_body: None,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            messages_up: 0,
            messages_down: 0,
            duration_ms: 0,
            error: None,
        };
        let span = tracing::info_span!("request", seq);
        let mut audited = None;
        let result = self
            .clone()
            .exchange(req, &mut rec, &mut audited)
            .instrument(span)
            .await;
        if rec.reason.is_empty()
            && let Err(r) = &result
        {
            // Refused before the policy was asked (bad token, misdirected).
            rec.reason = r.message.clone();
        }
        // A request forwarded was audited before it went upstream; one
        // refused before that is audited now, with its refusal's code.
        let audited = match audited {
            Some(a) => Ok(a),
            None => self.audit(&rec, result.as_ref().err().map(|r| r.code())),
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
                tracing::error!(session = self.session, seq = rec.seq, error = %format!("{e:#}"), "audit log unavailable; withholding the response");
                rec.status = 503;
                rec.error = Some("audit log unavailable".into());
                self.proxy.record_request(&rec, ticket);
                return Ok(
                    Refusal::new(Why::AuditUnavailable, "the audit log cannot be written")
                        .response(),
                );
            }
        };
        match result {
            Ok(resp) => Ok(self.clone().track(resp, rec, ticket, started, in_flight)),
            Err(refusal) => {
                rec.status = refusal.status().as_u16();
                rec.error.get_or_insert_with(|| refusal.message.clone());
                let resp = refusal.response();
                rec.duration_ms = started.elapsed().as_millis() as u64;
                self.proxy.record_request(&rec, ticket);
                Ok(resp)
            }
        }
    }

    /// Holds the request until an approver decides, or the rule's timeout.
    async fn await_approval(&self, rec: &mut RequestRecord, d: &Decision) -> Result<(), Refusal> {
        use crate::approval::{Approval, Asking, Outcome, State};
        let spec = d.effects.approval.expect("approve rules carry their spec");
        let rule = d.rule.clone().unwrap_or_default();
        let store = &self.proxy.store;
        let now = store::now_ms();
        let destination = self.destination.to_string();
        let asking = Asking {
            workload: &self.workload,
            uid: self.uid,
            user: rec.user.as_deref(),
            rule: &rule,
            method: &rec.method,
            host: &rec.host,
            target: &rec.path,
            destination: &destination,
            tls: self.sni.is_some(),
        };
        if self.proxy.approvals.window_open(&asking, now) {
            rec.reason = format!("approved earlier for rule {rule} (window open)");
            return Ok(());
        }
        let unavailable = || {
            Refusal::new(
                Why::ApprovalUnavailable,
                "the approval could not be recorded",
            )
        };
        let mut a = Approval {
            id: store.next_approval_id(),
            created_ms: now,
            state: State::Pending,
            rule: rule.clone(),
            workload: self.workload.clone(),
            pid: self.pid,
            uid: self.uid,
            user: rec.user.clone(),
            method: rec.method.clone(),
            host: rec.host.clone(),
            path: rec.path.clone(),
            destination,
            tls: self.sni.is_some(),
            session: self.session,
            expires_ms: now + spec.timeout.as_millis() as u64,
            decided_ms: None,
            approver: None,
            reason: None,
            window_until_ms: None,
            window_s: spec.window.map(|w| w.as_secs()),
            window_scope: spec.window_scope,
        };
        let rx = self
            .proxy
            .approvals
            .hold(a.id, &self.workload, self.proxy.max_pending_approvals)
            .map_err(|e| {
                Refusal::new(Why::TooManyPending, e.to_string()).by_rule(d.rule.clone())
            })?;
        // From here the approval is withdrawn if this future is dropped
        // (the client went away): it must not stay pending, take the
        // workload's room, or be approved for nobody.
        let mut held = Held {
            proxy: self.proxy.clone(),
            id: a.id,
            answered: false,
        };
        store.put_approval(&a).map_err(|_| unavailable())?;
        store.flush_async().await.map_err(|_| unavailable())?;
        let text = format!(
            "interceptor: approval {} pending: {} wants {} {} (rule {rule}{}). \
             `interceptor approvals approve {}` or `deny {} --reason ...` within {} s",
            a.id,
            a.workload,
            a.method,
            a.url(),
            a.user
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            a.id,
            a.id,
            spec.timeout.as_secs()
        );
        tracing::warn!(approval = a.id, "{text}");
        if let Some(w) = &self.proxy.webhook {
            w.announce(text);
        }
        let outcome = match tokio::time::timeout(spec.timeout, rx).await {
            Ok(Ok(o)) => o,
            _ => Outcome::Expired,
        };
        held.answered = true;
        match outcome {
            Outcome::Approved { by } => {
                rec.reason = format!("approved by {by} (approval {})", a.id);
                Ok(())
            }
            Outcome::Denied { by, reason } => Err(Refusal::new(Why::ApprovalDenied, format!("denied by {by}: {reason} (approval {})", a.id)).by_rule(d.rule.clone())),
            Outcome::Interrupted => Err(Refusal::new(Why::ApprovalInterrupted, format!(
                    "the interceptor is restarting; approval {} was not decided, send the request again",
                    a.id
                )).by_rule(d.rule.clone())),
            Outcome::Expired => {
                self.proxy.approvals.forget(a.id);
                if let Ok(Some(cur)) = store.approval(a.id)
                    && cur.state == State::Pending
                {
                    a.state = State::Expired;
                    a.decided_ms = Some(store::now_ms());
                    a.approver = Some("timeout".into());
                    let _ = store.put_approval(&a);
                }
                Err(Refusal::new(Why::ApprovalExpired, format!(
                        "no approver answered within {} s (approval {})",
                        spec.timeout.as_secs(),
                        a.id
                    )).by_rule(d.rule.clone()))
            }
        }
    }

    /// `mask_request = true`: the request body is masked with the rule's
    /// profile on its way upstream (what a skill sends out is inspected too).
    fn mask_request_body(
        &self,
        parts: &mut http::request::Parts,
        body: ReqBody,
        decision: &Decision,
        policy: &crate::policy::Policy,
        rec: &mut RequestRecord,
    ) -> Result<ReqBody, Refusal> {
        let profile = decision
            .effects
            .mask
            .as_ref()
            .and_then(|m| policy.masks.get(m).cloned());
        let Some(profile) = profile else {
            return Ok(body);
        };
        let (decoder, json) =
            crate::masking::body::prepare(&mut parts.headers, &profile).map_err(|why| {
                Refusal::new(
                    Why::UninspectableRequest,
                    format!("the request body cannot be masked: {why}"),
                )
            })?;
        let counts = Arc::new(std::sync::Mutex::new(crate::masking::Counts::new()));
        rec.masked.insert("request_body".into(), 0);
        self.pending_counts
            .lock()
            .unwrap()
            .insert(u64::MAX - rec.seq, counts.clone());
        let masker = crate::masking::StreamMasker::new(profile, &[] as &[&str]);
        let capture = self.capture(u64::MAX - rec.seq);
        Ok(
            crate::masking::body::MaskedBody::new(body, decoder, masker, json, counts)
                .capture(capture)
                .budget(self.proxy.body_budget.lease(&self.workload))
                .cpu_meter(self.proxy.mask_cpu.meter(&self.workload))
                .boxed(),
        )
    }

    /// Where a masked body is kept for the record, under `key` (the request's
    /// seq for its response, `u64::MAX - seq` for its request body), within
    /// what the session's recording cap has left.
    fn capture(&self, key: u64) -> crate::masking::body::Capture {
        let room = self
            .record_cap
            .saturating_sub(self.recorded.load(Ordering::Relaxed)) as usize;
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        self.pending_bodies.lock().unwrap().insert(key, buf.clone());
        crate::masking::body::Capture { buf, cap: room }
    }

    /// Takes a captured body for the record, counting it against the cap.
    fn take_captured(&self, key: u64) -> Option<String> {
        let b = self.pending_bodies.lock().unwrap().remove(&key)?;
        let b = b.lock().unwrap();
        if b.is_empty() {
            return None;
        }
        self.recorded.fetch_add(b.len() as u64, Ordering::Relaxed);
        Some(String::from_utf8_lossy(&b).into_owned())
    }

    /// Appends the request's decision to the hash-chained audit log.
    fn audit(&self, rec: &RequestRecord, code: Option<&str>) -> Result<Audited, Refusal> {
        let destination = self.destination.to_string();
        let data = RequestAudit {
            session: rec.session,
            seq: rec.seq,
            workload: &self.workload,
            destination: &destination,
            user: rec.user.as_deref(),
            method: &rec.method,
            host: &rec.host,
            path: &rec.path,
            decision: rec.decision,
            rule: rec.rule.as_deref(),
            reason: &rec.reason,
            injected: rec.injected.as_deref(),
            code,
        };
        match self.proxy.store.audit_indexed("request", &data) {
            Ok(t) => Ok(Audited {
                seq: t.seq,
                ticket: Some(t),
            }),
            Err(e) => {
                tracing::error!(session = self.session, seq = rec.seq, error = %format!("{e:#}"), "could not append to the audit log");
                Err(Refusal::new(
                    Why::AuditUnavailable,
                    "the audit log cannot be written",
                ))
            }
        }
    }

    /// attribute → decide → inject → forward, for one request.
    async fn exchange(
        self: Arc<Self>,
        req: Request<Incoming>,
        rec: &mut RequestRecord,
        audited: &mut Option<Audited>,
    ) -> Result<Response<RespBody>, Refusal> {
        let upgrade = upgrade_of(&req);
        // A body read for inspection is put back as bytes.
        let mut req = req.map(InBody::Left);
        let admitted = match self.admit(&mut req, rec).await {
            Ok(d) => d,
            Err(refusal) => {
                // Read what the client is still sending, so the answer is
                // not lost to a reset of its unread upload.
                drain(req.into_body()).await;
                return Err(refusal);
            }
        };
        self.forward(req, rec, admitted, upgrade, audited).await
    }

    /// attribute → decide → inject: everything before a byte goes upstream.
    async fn admit(
        &self,
        req: &mut Request<InBody>,
        rec: &mut RequestRecord,
    ) -> Result<Admitted, Refusal> {
        // The host from the absolute-form URI or Host, before the target is
        // rewritten to origin-form below.
        let host = self.host_of(req)?;
        rec.host = host.clone();
        // One canonical head: decided on, recorded, and forwarded.
        let method = canonical::method(req.method().as_str())
            .map_err(Refusal::not_canonical)?
            .to_string();
        // A form servers read differently is refused, unless the rule that
        // decides it opts in and decides its decoded reading too (below).
        let (path, tolerated) = match canonical::path(req.uri().path()) {
            Ok(p) => (p, None),
            Err(why) if why.tolerable() => match canonical::tolerated(req.uri().path()) {
                Ok(t) => (t.forwarded.clone(), Some((why, t))),
                Err(_) => return Err(Refusal::not_canonical(why)),
            },
            Err(why) => return Err(Refusal::not_canonical(why)),
        };
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        rec.path = target.clone();
        *req.uri_mut() = target
            .parse()
            .map_err(|_| Refusal::not_canonical(canonical::NotCanonical::BadEscape))?;
        let user = self.user_of(req).await?;
        rec.user = user.as_ref().map(|u| u.name.clone());

        let policy = self.proxy.policy();
        let head = RequestHead {
            host: &host,
            method: &method,
            path: &path,
            user: user.as_ref(),
        };
        let mut body = None;
        let mut lease = self.proxy.body_budget.lease(&self.workload);
        let mut decision = self
            .decide_reading(&policy, &head, req, &mut body, &mut lease)
            .await?;
        if let Some((why, t)) = &tolerated {
            // Both readings of the path must come to the same rule, and
            // that rule must accept the form.
            let read_as = RequestHead {
                path: &t.read_as,
                ..head
            };
            let other = self
                .decide_reading(&policy, &read_as, req, &mut body, &mut lease)
                .await?;
            let accepted = decision.action != Action::Deny
                && other.rule == decision.rule
                && other.action == decision.action
                && decision.effects.non_canonical.covers(t.forms);
            if other.action == Action::Deny {
                decision = other;
            } else if !accepted {
                return Err(Refusal::new(
                    Why::NonCanonicalRequest,
                    format!(
                        "{why} (a rule may accept it with non_canonical = [...] when both \
                         readings, {:?} and {:?}, come to that rule)",
                        t.forwarded, t.read_as
                    ),
                ));
            }
        }
        rec.decision = decision.action;
        rec.rule = decision.rule.clone();
        rec.reason = decision.reason.clone();
        // Debug, not info: the request's record (sessions show, audit
        // export) is its log, and a line per request cost ~16 µs of it.
        tracing::debug!(
            session = self.session, seq = rec.seq, workload = %self.workload, user = rec.user.as_deref().unwrap_or("-"),
            method = %rec.method, host = %host, path = %path, decision = ?decision.action,
            rule = decision.rule.as_deref().unwrap_or("-"), "request"
        );
        if decision.action == Action::Deny {
            return Err(Refusal::denied(&decision));
        }
        if decision.action == Action::Approve {
            // Held before anything is injected or sent upstream.
            self.await_approval(rec, &decision).await?;
        }
        if decision.effects.require_user && user.is_none() {
            return Err(Refusal::new(
                Why::UserTokenRequired,
                "this rule requires a user token (Proxy-Authorization: Bearer ...)",
            ));
        }
        if let (Some(max), Some(len)) = (decision.effects.max_body, content_length(req))
            && len > max
        {
            return Err(Refusal::too_large(max, &decision));
        }

        strip_hop_by_hop(req.headers_mut());
        let mut injected = Vec::new();
        if let Some(name) = &decision.effects.inject {
            let cred = policy.credentials.get(name).cloned().ok_or_else(|| {
                Refusal::new(
                    Why::CredentialUnavailable,
                    format!("credential {name} is not defined"),
                )
                .by_rule(decision.rule.clone())
            })?;
            let secret = self.proxy.credentials.get(&cred.source).map_err(|e| {
                // The error names the source, never the value.
                tracing::error!(credential = %cred.name, error = %format!("{e:#}"), "credential unavailable");
                Refusal::new(Why::CredentialUnavailable, format!("credential {} is unavailable", cred.name))
                    .by_rule(decision.rule.clone())
            })?;
            injected = inject(req, &cred, &secret).map_err(|r| r.by_rule(decision.rule.clone()))?;
            rec.injected = Some(cred.name.clone());
        }
        Ok(Admitted {
            decision,
            policy,
            _lease: lease,
            host,
            injected,
        })
    }

    /// The decision on one request head, reading the body (once, kept in
    /// `body`) if a rule that could match needs it.
    async fn decide_reading(
        &self,
        policy: &crate::policy::Policy,
        head: &RequestHead<'_>,
        req: &mut Request<InBody>,
        body: &mut Option<InspectedBody>,
        lease: &mut crate::memory_budget::Lease,
    ) -> Result<Decision, Refusal> {
        if let Verdict::Decided(d) = self.decide(policy, head, req.headers(), body.as_ref()) {
            return Ok(d);
        }
        if body.is_none() {
            let read = read_for_inspection(req, self.proxy.body_timeout, lease).await?;
            *body = Some(InspectedBody::new(read.to_vec()));
        }
        Ok(
            match self.decide(policy, head, req.headers(), body.as_ref()) {
                Verdict::Decided(d) => d,
                Verdict::NeedsInspection => Decision::default_deny(),
            },
        )
    }

    /// The policy's verdict on one request; without its body, rules that
    /// need the body leave it undecided.
    fn decide(
        &self,
        policy: &crate::policy::Policy,
        head: &RequestHead,
        headers: &http::HeaderMap,
        body: Option<&InspectedBody>,
    ) -> Verdict {
        let info = RequestInfo {
            host: head.host,
            method: head.method,
            path: head.path,
            headers,
            user: head.user,
            body,
        };
        policy.decide(&Subject {
            workload: &self.workload,
            destination: self.destination,
            now: self.proxy.clock.now(),
            sni: self.sni.as_deref(),
            request: Some(&info),
            last_stage: body.is_some(),
        })
    }

    /// forward: stream the request upstream, the response back.
    async fn forward(
        self: &Arc<Self>,
        mut req: Request<InBody>,
        rec: &mut RequestRecord,
        admitted: Admitted,
        upgrade: Option<HeaderValue>,
        audited: &mut Option<Audited>,
    ) -> Result<Response<RespBody>, Refusal> {
        let Admitted {
            decision,
            policy,
            _lease,
            host,
            injected,
        } = admitted;
        // Only WebSocket is ever upgraded to, and only where the rule says;
        // any other protocol (h2c above all: h2 streams after it would never
        // be decided) is ignored, as RFC 9110 lets a server do, and the
        // request is answered as HTTP/1.1.
        let websocket = match &upgrade {
            Some(p) if p.as_bytes().eq_ignore_ascii_case(b"websocket") => {
                if !decision.effects.websocket {
                    return Err(Refusal::new(
                        Why::UpgradeNotAllowed,
                        format!(
                            "rule {} does not allow WebSocket (upgrade = [\"websocket\"])",
                            decision.rule.as_deref().unwrap_or("-")
                        ),
                    )
                    .by_rule(decision.rule.clone()));
                }
                let key = websocket_key(req.headers())?;
                // Messages are held whole until complete: what one
                // connection may hold counts against the workload's budget
                // while the WebSocket is open.
                let mut lease = self.proxy.body_budget.lease(&self.workload);
                if !lease.grow(super::websocket::HELD_PER_CONNECTION as u64) {
                    return Err(Refusal::new(
                        Why::InspectionCapacity,
                        format!(
                            "this workload already holds {} MiB for inspection in request \
                             bodies and WebSockets (inspect_buffer_mb_per_workload)",
                            lease.limit() >> 20
                        ),
                    ));
                }
                Some((key, lease))
            }
            Some(p) => {
                tracing::info!(session = self.session, seq = rec.seq, protocol = ?p, "upgrade ignored");
                None
            }
            None => None,
        };
        req.headers_mut().remove("http2-settings");
        let client_upgrade = websocket.is_some().then(|| hyper::upgrade::on(&mut req));
        let max_body = decision.effects.max_body;
        let up_count = Arc::new(AtomicU64::new(0));
        let (mut parts, body) = req.into_parts();
        let limited = LimitedBody::new(body, max_body, up_count.clone(), self.proxy.body_timeout);
        let idled = limited.idled.clone();
        let mut body: ReqBody = limited.boxed();
        if decision.effects.mask_request {
            body = self.mask_request_body(&mut parts, body, &decision, &policy, rec)?;
        }
        // A part of a body cannot be masked as the whole would be: a secret
        // cut by a range (or split between the parts of a multipart
        // answer) would pass in pieces. Masked or credentialed requests
        // ask for whole bodies, in the server's default charset (a server
        // that honours `Accept-Charset: utf-16` would send text the
        // detectors cannot read; such a body is refused, see body.rs).
        if decision.effects.mask.is_some() || !injected.is_empty() {
            parts.headers.remove(header::RANGE);
            parts.headers.remove(header::IF_RANGE);
            parts.headers.remove(header::ACCEPT_CHARSET);
        }
        let mut upstream_req = Request::from_parts(parts, body);
        // Origin-form; the pool adds scheme and authority for HTTP/2.
        let pq = upstream_req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *upstream_req.uri_mut() = pq.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        // Exactly one host goes upstream: the one decided on.
        let authority = self.authority_for(&host);
        let v = HeaderValue::from_str(&authority)
            .map_err(|_| Refusal::new(Why::BadHost, "the host is not a valid header value"))?;
        upstream_req.headers_mut().insert(header::HOST, v);
        let key = Key {
            addr: self.destination,
            tls_name: self.sni.clone(),
            credentialed: !injected.is_empty(),
        };
        // The decision is in the kernel before a byte of the request goes
        // upstream; its sync (`always`) overlaps the round trip.
        *audited = Some(self.audit(rec, None)?);
        let result = match &websocket {
            // A WebSocket needs its own HTTP/1.1 connection. No extension
            // is offered: compressed frames could not be masked.
            Some(_) => {
                let h = upstream_req.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.remove(header::SEC_WEBSOCKET_EXTENSIONS);
                self.proxy.upstreams.send_upgrade(&key, upstream_req).await
            }
            None => self.proxy.upstreams.send(&key, upstream_req).await,
        };
        rec.bytes_up = up_count.load(Ordering::Relaxed);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if max_body.is_some_and(|m| rec.bytes_up > m) {
                    return Err(Refusal::too_large(max_body.unwrap(), &decision));
                }
                if idled.load(Ordering::Relaxed) {
                    return Err(Refusal::new(
                        Why::RequestBodyTimeout,
                        format!(
                            "the client sent no request body bytes for {:?}",
                            self.proxy.body_timeout
                        ),
                    ));
                }
                let why = match e {
                    super::upstream::UpstreamError::Tls(..) => Why::UpstreamTls,
                    super::upstream::UpstreamError::WorkloadPeer(..) => Why::UpstreamIsWorkload,
                    _ => Why::UpstreamUnavailable,
                };
                tracing::warn!(session = self.session, seq = rec.seq, error = %e, "upstream request failed");
                return Err(Refusal::new(why, e.to_string()));
            }
        };
        // mask: the headers first (every response with a profile or an
        // injected secret), then the body as it streams.
        let profile = decision
            .effects
            .mask
            .as_ref()
            .and_then(|m| policy.masks.get(m).cloned());
        let mut masker = (profile.is_some() || !injected.is_empty()).then(|| {
            crate::masking::StreamMasker::new(
                profile
                    .clone()
                    .unwrap_or_else(|| Arc::new(crate::masking::Profile::empty())),
                &injected,
            )
        });
        if let Some(m) = masker.as_mut() {
            crate::masking::mask_headers(resp.headers_mut(), m);
        }
        // The upstream's own reason phrase is text we do not read: the
        // client gets the standard one for the status.
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(m) = masker.take() {
                rec.masked.extend(m.counts);
            }
            let (Some(client), Some((key, lease))) = (client_upgrade, websocket) else {
                return Err(Refusal::new(
                    Why::UnexpectedUpgrade,
                    "the upstream switched protocols although no upgrade was asked for",
                ));
            };
            check_websocket_accept(resp.headers(), &key)?;
            let relay = super::websocket::Relay::new(
                profile.unwrap_or_else(|| Arc::new(crate::masking::Profile::empty())),
                &injected,
                decision.effects.mask_request,
                self.record_cap
                    .saturating_sub(self.recorded.load(Ordering::Relaxed)) as usize,
                lease,
                self.proxy.mask_cpu.meter(&self.workload),
            );
            let ticket = audited.as_mut().and_then(|a| a.ticket.take());
            self.tunnel(
                relay,
                client,
                hyper::upgrade::on(&mut resp),
                rec.clone(),
                ticket,
            );
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as BoxError).boxed(),
            ));
        }
        // Transfer-Encoding stays until the masker has seen it (a coding
        // other than chunked reaches us undecoded).
        let transfer = resp.headers_mut().remove(header::TRANSFER_ENCODING);
        strip_hop_by_hop(resp.headers_mut());
        let (mut parts, body) = resp.into_parts();
        let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
        let Some(masker) = masker else {
            return Ok(Response::from_parts(parts, body));
        };
        if let Some(t) = transfer {
            parts.headers.insert(header::TRANSFER_ENCODING, t);
        }
        let profile = profile.unwrap_or_else(|| Arc::new(crate::masking::Profile::empty()));
        let media = crate::masking::body::media_type(&parts.headers);
        let events = crate::masking::body::event_framing(media.as_deref(), &parts.headers);
        let sse_profile = profile.clone();
        let (decoder, json) = match crate::masking::body::prepare(&mut parts.headers, &profile) {
            Ok(d) => d,
            Err(why)
                if profile.on_uninspectable == crate::masking::Uninspectable::Pass
                    && injected.is_empty() =>
            {
                tracing::warn!(session = self.session, seq = rec.seq, %why, "response passed unmasked (on_uninspectable = \"pass\")");
                parts.headers.remove(header::TRANSFER_ENCODING);
                rec.masked.extend(masker.counts);
                rec.masked.insert("uninspectable_passed".into(), 1);
                return Ok(Response::from_parts(parts, body));
            }
            Err(why) => {
                return Err(Refusal::new(
                    Why::UninspectableResponse,
                    format!("the response cannot be masked: {why}"),
                ));
            }
        };
        // The body changes: its validator no longer holds either.
        parts.headers.remove(header::ETAG);
        let counts = Arc::new(std::sync::Mutex::new(crate::masking::Counts::new()));
        self.pending_counts
            .lock()
            .unwrap()
            .insert(rec.seq, counts.clone());
        // Record what the skill received (masked), within the session's cap.
        let pass =
            profile.on_uninspectable == crate::masking::Uninspectable::Pass && injected.is_empty();
        let mut body = crate::masking::body::MaskedBody::new(body, decoder, masker, json, counts)
            .pass_opaque(pass)
            .capture(self.capture(rec.seq))
            .budget(self.proxy.body_budget.lease(&self.workload))
            .cpu_meter(self.proxy.mask_cpu.meter(&self.workload));
        match events {
            Some(Framing::Sse) => {
                body = body.events(Box::new(crate::masking::sse::SseMasker::new(
                    sse_profile,
                    &injected,
                )));
            }
            Some(framing @ (Framing::Lines | Framing::TypedLines)) => {
                let paths = sse_profile.json_paths.clone();
                let prototype = crate::masking::StreamMasker::new(sse_profile, &injected);
                body = body.events(Box::new(
                    crate::masking::ndjson::NdjsonMasker::new(prototype, paths)
                        .typed(framing == Framing::TypedLines),
                ));
            }
            // JSON field paths buffer the document and decide it whole.
            Some(Framing::Array) if !body.buffers_whole() => {
                let elements = crate::masking::sse::SseMasker::new(sse_profile.clone(), &injected);
                let bytes = crate::masking::StreamMasker::new(sse_profile, &injected);
                body = body.events(Box::new(crate::masking::json_array::JsonArrayMasker::new(
                    elements, bytes,
                )));
            }
            // Untyped or plain text: perhaps a stream under no label.
            None if media.as_deref().is_none_or(|t| t == "text/plain") && !body.buffers_whole() => {
                let proto = crate::masking::StreamMasker::new(sse_profile.clone(), &injected);
                body = body.events(Box::new(crate::masking::sniff::Sniffed::new(
                    crate::masking::sse::SseMasker::new(sse_profile, &injected),
                    crate::masking::ndjson::NdjsonMasker::new(proto.sibling(), Vec::new()),
                    proto,
                )));
            }
            Some(Framing::Array) | None => {}
        }
        if body.buffers_whole() {
            return buffered(parts, body).await;
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// After a 101 both sides speak WebSocket: relayed frame by frame, and
    /// the request's record is rewritten with its messages when it ends.
    fn tunnel(
        self: &Arc<Self>,
        relay: super::websocket::Relay,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        mut rec: RequestRecord,
        ticket: Option<store::Ticket>,
    ) {
        let conn = self.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((c, u)) => {
                    let out = relay.run(c, u).await;
                    rec.bytes_up += out.bytes_up;
                    rec.bytes_down = out.bytes_down;
                    rec.messages_up = out.messages_up;
                    rec.messages_down = out.messages_down;
                    rec.masked.extend(out.masked);
                    rec.error = out.error.map(|e| format!("websocket: {e}"));
                    if !out.transcript.is_empty() {
                        conn.recorded
                            .fetch_add(out.transcript.len() as u64, Ordering::Relaxed);
                        rec.response_body = Some(out.transcript);
                    }
                }
                Err(e) => rec.error = Some(format!("upgrade failed: {e}")),
            }
            rec.status = 101;
            conn.proxy.record_request(&rec, ticket);
        });
    }

    /// Wraps the response body so the request is recorded when it ends.
    fn track(
        self: Arc<Self>,
        resp: Response<RespBody>,
        mut rec: RequestRecord,
        ticket: Option<store::Ticket>,
        started: std::time::Instant,
        in_flight: super::InFlight,
    ) -> Response<RespBody> {
        rec.status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = TrackedBody::new(body, move |bytes, error| {
            // The exchange ends with its response body.
            let _in_flight = in_flight;
            rec.bytes_down = bytes;
            rec.duration_ms = started.elapsed().as_millis() as u64;
            if let Some(e) = error {
                rec.error = Some(e);
            }
            if let Some(c) = self.pending_counts.lock().unwrap().remove(&rec.seq) {
                rec.masked.extend(c.lock().unwrap().clone());
            }
            if let Some(c) = self
                .pending_counts
                .lock()
                .unwrap()
                .remove(&(u64::MAX - rec.seq))
            {
                for (k, v) in c.lock().unwrap().iter() {
                    rec.masked.insert(format!("request:{k}"), *v);
                }
                rec.masked.remove("request_body");
            }
            rec.request_body = self.take_captured(u64::MAX - rec.seq);
            rec.response_body = self.take_captured(rec.seq);
            self.bytes_up.fetch_add(rec.bytes_up, Ordering::Relaxed);
            self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
            self.proxy.record_request(&rec, ticket);
        });
        Response::from_parts(parts, body.boxed())
    }

    /// The host the request is for. Inside TLS it must be the name the
    /// upstream certificate is verified for (no domain fronting).
    fn host_of<B>(&self, req: &Request<B>) -> Result<String, Refusal> {
        let claimed = req
            .uri()
            .authority()
            .map(|a| a.host().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| strip_port(h).to_string())
            })
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        match (&self.sni, claimed) {
            (Some(sni), Some(h)) if !h.eq_ignore_ascii_case(sni) => Err(Refusal::new(
                Why::MisdirectedRequest,
                format!("the request is for {h:?} but the TLS connection is for {sni:?}"),
            )),
            (Some(sni), _) => Ok(sni.to_ascii_lowercase()),
            (None, Some(h)) => Ok(h),
            (None, None) => Ok(self.destination.ip().to_string()),
        }
    }

    /// The `Host` sent upstream for the decided host: with the port unless
    /// it is the scheme's default.
    fn authority_for(&self, host: &str) -> String {
        let default = if self.sni.is_some() { 443 } else { 80 };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match self.destination.port() {
            p if p == default => host,
            p => format!("{host}:{p}"),
        }
    }

    /// Validates and removes the user token (never forwarded).
    async fn user_of<B>(&self, req: &mut Request<B>) -> Result<Option<User>, Refusal> {
        let header = self.proxy.user_header.clone();
        let Some(value) = req.headers_mut().remove(&header) else {
            return Ok(None);
        };
        let Some(oidc) = &self.proxy.oidc else {
            return Err(Refusal::new(
                Why::OidcNotConfigured,
                "a user token was sent but no OIDC issuer is configured",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Refusal::new(
                    Why::Token("malformed_token"),
                    format!("{header} must be \"Bearer <token>\""),
                )
            })?;
        oidc.validate(token)
            .await
            .map(Some)
            .map_err(|e| Refusal::new(Why::Token(e.code()), e.to_string()))
    }
}

/// Reads the body a `body_regex` rule needs (identity-encoded, at most
/// BODY_INSPECT_MAX) and puts it back for forwarding. What cannot be
/// inspected is refused: a guardrail on bodies never passes one unread.
async fn read_for_inspection(
    req: &mut Request<InBody>,
    idle: std::time::Duration,
    lease: &mut crate::memory_budget::Lease,
) -> Result<Bytes, Refusal> {
    let uninspectable = |kind, why: String| {
        Refusal::new(
            kind,
            format!("a policy rule inspects this request's body, and {why}"),
        )
    };
    // One `identity` at most: a second header or a list ("identity, gzip")
    // leaves which decoding the upstream applies open.
    let mut encodings = req.headers().get_all(header::CONTENT_ENCODING).iter();
    match (encodings.next(), encodings.next()) {
        (None, _) => {}
        (Some(enc), None) if enc.as_bytes().eq_ignore_ascii_case(b"identity") => {}
        (Some(enc), None) => {
            return Err(uninspectable(
                Why::UninspectableRequest,
                format!("its Content-Encoding {enc:?} cannot be inspected"),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(uninspectable(
                Why::UninspectableRequest,
                "it has more than one Content-Encoding header".into(),
            ));
        }
    }
    let too_large = || {
        uninspectable(
            Why::UninspectableRequestSize,
            format!("it is over the inspection limit of {BODY_INSPECT_MAX} bytes"),
        )
    };
    if content_length(req).is_some_and(|n| n > BODY_INSPECT_MAX) {
        return Err(too_large());
    }
    let mut body = std::mem::replace(req.body_mut(), InBody::Right(Full::default()));
    // (Trailers, rare on requests, are not kept.)
    let mut buf = bytes::BytesMut::new();
    loop {
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(Refusal::new(
                Why::RequestBodyTimeout,
                format!("the client sent no request body bytes for {idle:?}"),
            ));
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            Refusal::new(
                Why::BadRequestBody,
                format!("reading the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > BODY_INSPECT_MAX {
                return Err(too_large());
            }
            if !lease.grow(data.len() as u64) {
                return Err(Refusal::new(
                    Why::InspectionCapacity,
                    format!(
                        "this workload already holds {} MiB of request bodies for inspection \
                         (inspect_buffer_mb_per_workload); retry later",
                        lease.limit() >> 20
                    ),
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    let bytes = buf.freeze();
    *req.body_mut() = InBody::Right(Full::new(bytes.clone()));
    Ok(bytes)
}

/// A held request's approval, withdrawn if the request goes away before an
/// answer (hyper drops the request's future when its client disconnects).
struct Held {
    proxy: Arc<super::Proxy>,
    id: u64,
    answered: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.proxy.approvals.forget(self.id);
        let (proxy, id) = (self.proxy.clone(), self.id);
        let withdraw = async move {
            use crate::approval::State;
            let Ok(Some(mut a)) = proxy.store.approval(id) else {
                return;
            };
            if a.state != State::Pending {
                return;
            }
            a.state = State::Withdrawn;
            a.decided_ms = Some(store::now_ms());
            a.approver = Some("the client went away".into());
            let _ = proxy.store.put_approval(&a);
            let _ = proxy.store.flush_async().await;
            if let Ok(seq) = proxy.store.audit(
                "approval",
                &serde_json::json!({"approval": id, "decision": a.state, "rule": a.rule,
                                   "workload": a.workload, "reason": "the client went away"}),
            ) {
                let _ = proxy.store.durable(seq).await;
            }
            tracing::info!(approval = id, "approval withdrawn: the client went away");
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(withdraw);
        }
    }
}

/// The client's `Sec-WebSocket-Key` (RFC 6455 4.1), version 13 only.
fn websocket_key(h: &http::HeaderMap) -> Result<HeaderValue, Refusal> {
    let bad = |why: &str| Refusal::new(Why::BadWebsocketHandshake, why);
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(k), None) if k.len() == 24 => Ok(k.clone()),
        _ => Err(bad("exactly one 16-byte Sec-WebSocket-Key is required")),
    }
}

/// The upstream's 101 must answer our key, and take no extension (none
/// was offered): otherwise its frames are not what we can parse.
fn check_websocket_accept(h: &http::HeaderMap, key: &HeaderValue) -> Result<(), Refusal> {
    let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ok = h
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == want.as_bytes())
        && h.get(header::SEC_WEBSOCKET_EXTENSIONS).is_none()
        && h.get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            Why::UpstreamBadHandshake,
            "the upstream's 101 does not complete the WebSocket handshake that was sent",
        ))
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

/// A body masked whole before any of it goes out (JSON field paths): its
/// first frame comes only once the document is masked, so an error (not
/// JSON, over the budget) is still a clean 502, not a cut-off 200.
async fn buffered(
    parts: http::response::Parts,
    mut body: crate::masking::body::MaskedBody<BoxBody<Bytes, BoxError>>,
) -> Result<Response<RespBody>, Refusal> {
    match body.frame().await {
        Some(Err(e)) => {
            return Err(Refusal::new(
                Why::UninspectableResponse,
                format!("the response cannot be masked: {e}"),
            ));
        }
        Some(Ok(first)) => body.unread(first),
        None => {}
    }
    Ok(Response::from_parts(parts, body.boxed()))
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

/// Puts the secret where the credential says, after removing whatever the
/// caller put there, so a skill can neither see nor choose the secret.
/// Returns every form of the secret the upstream receives, so an echo of
/// any of them is masked in the response.
fn inject<B>(
    req: &mut Request<B>,
    cred: &Credential,
    secret: &Secret,
) -> Result<Vec<Zeroizing<String>>, Refusal> {
    let mut forms = vec![Zeroizing::new(secret.as_str().to_string())];
    let bad = || {
        Refusal::new(
            Why::CredentialUnavailable,
            format!("credential {} does not fit its placement", cred.name),
        )
    };
    match &cred.placement {
        Placement::Header { name, format } => {
            req.headers_mut().remove(name);
            let v = zeroize::Zeroizing::new(format.replace("{secret}", secret));
            let mut hv = HeaderValue::from_str(&v).map_err(|_| bad())?;
            hv.set_sensitive(true);
            req.headers_mut().insert(name.clone(), hv);
        }
        Placement::Basic { user } => {
            use base64::Engine;
            req.headers_mut().remove(header::AUTHORIZATION);
            let raw = zeroize::Zeroizing::new(format!("{user}:{}", secret.as_str()));
            let encoded =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()));
            let v = Zeroizing::new(format!("Basic {}", encoded.as_str()));
            forms.push(encoded);
            let mut hv = HeaderValue::from_str(&v).map_err(|_| bad())?;
            hv.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, hv);
        }
        Placement::Query { param } => {
            let uri = req.uri();
            let kept: Vec<(String, String)> = uri
                .query()
                .map(|q| {
                    url_pairs(q)
                        .into_iter()
                        .filter(|(k, _)| k != param)
                        .collect()
                })
                .unwrap_or_default();
            let mut q = String::new();
            for (k, v) in kept
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain([(param.as_str(), secret.as_str())])
            {
                if !q.is_empty() {
                    q.push('&');
                }
                q.push_str(&pct(k));
                q.push('=');
                q.push_str(&pct(v));
            }
            let pq = format!("{}?{q}", uri.path());
            *req.uri_mut() = pq.parse().map_err(|_| bad())?;
            forms.push(Zeroizing::new(pct(secret.as_str())));
        }
    }
    Ok(forms)
}

/// `a=b&c=d` → pairs, percent-decoding kept as is (we only compare keys).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// Percent-encodes everything outside RFC 3986 unreserved (values that are
/// already encoded pass through: '%' is kept for them).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
