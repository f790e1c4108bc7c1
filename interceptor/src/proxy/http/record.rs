//! record: the decision in the audit log, the request in the index when
//! its response ends (with what masking its bodies left).
use super::*;

/// A request's decision record in the audit log: its number, and its
/// ticket until the index has the request.
pub(super) struct Audited {
    pub(super) seq: u64,
    pub(super) ticket: Option<store::Ticket>,
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

impl HttpConn {
    /// Appends the request's decision to the hash-chained audit log.
    pub(super) fn audit(
        &self,
        rec: &RequestRecord,
        code: Option<&str>,
    ) -> Result<Audited, Refusal> {
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

    /// Wraps the response body so the request is recorded when it ends.
    pub(super) fn track(
        self: Arc<Self>,
        resp: Response<RespBody>,
        ctx: RequestCtx,
        ticket: Option<store::Ticket>,
        in_flight: crate::proxy::InFlight,
    ) -> Response<RespBody> {
        let RequestCtx {
            mut rec,
            started,
            response_tap,
            request_tap,
            ..
        } = ctx;
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
            if let Some(tap) = &response_tap {
                rec.masked.extend(tap.counts());
                rec.response_body = tap.take_captured(&self);
            }
            if let Some(tap) = &request_tap {
                for (k, v) in tap.counts().iter() {
                    rec.masked.insert(format!("request:{k}"), *v);
                }
                rec.masked.remove("request_body");
                rec.request_body = tap.take_captured(&self);
            }
            self.bytes_up.fetch_add(rec.bytes_up, Ordering::Relaxed);
            self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
            self.proxy.record_request(&rec, ticket);
        });
        Response::from_parts(parts, body.boxed())
    }
}
