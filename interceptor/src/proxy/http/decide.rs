//! decide: the canonical head, the policy's decision (reading the body
//! when a rule needs it), approval, then the credential: everything
//! before a byte goes upstream.
use super::*;

/// Reads the body a `body_regex` rule needs (identity-encoded, at most
/// BODY_INSPECT_MAX) and puts it back for forwarding. What cannot be
/// inspected is refused: a guardrail on bodies never passes one unread.
pub(super) async fn read_for_inspection(
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

impl HttpConn {
    /// attribute → decide → inject: everything before a byte goes upstream.
    pub(super) async fn admit(
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
            injected = inject::inject(req, &cred, &secret)
                .map_err(|r| r.by_rule(decision.rule.clone()))?;
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
    pub(super) async fn decide_reading(
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
    pub(super) fn decide(
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
}
