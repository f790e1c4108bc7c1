//! mask: responses as they stream back to the skill, and request bodies
//! of `mask_request` rules on their way upstream.
use super::*;

/// What masking one body leaves for its request's record: the values
/// masked, by kind, and the masked bytes kept within the session's cap.
pub(super) struct Tap {
    counts: Arc<std::sync::Mutex<crate::masking::Counts>>,
    captured: Arc<std::sync::Mutex<Vec<u8>>>,
    room: usize,
}

impl Tap {
    /// A tap for one more body of `conn`'s session, with what its
    /// recording cap has left.
    fn new(conn: &HttpConn) -> Tap {
        Tap {
            counts: Default::default(),
            captured: Default::default(),
            room: conn
                .record_cap
                .saturating_sub(conn.recorded.load(Ordering::Relaxed)) as usize,
        }
    }

    fn capture(&self) -> crate::masking::body::Capture {
        crate::masking::body::Capture {
            buf: self.captured.clone(),
            cap: self.room,
        }
    }

    /// The values masked so far, by kind.
    pub(super) fn counts(&self) -> crate::masking::Counts {
        self.counts.lock().unwrap().clone()
    }

    /// The masked body kept for the record, counted against `conn`'s cap.
    pub(super) fn take_captured(&self, conn: &HttpConn) -> Option<String> {
        let b = std::mem::take(&mut *self.captured.lock().unwrap());
        if b.is_empty() {
            return None;
        }
        conn.recorded.fetch_add(b.len() as u64, Ordering::Relaxed);
        Some(String::from_utf8_lossy(&b).into_owned())
    }
}

impl HttpConn {
    /// `mask_request = true`: the request body is masked with the rule's
    /// profile on its way upstream (what a skill sends out is inspected too).
    pub(super) fn mask_request_body(
        &self,
        parts: &mut http::request::Parts,
        body: ReqBody,
        decision: &Decision,
        policy: &crate::policy::Policy,
        ctx: &mut RequestCtx,
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
        ctx.rec.masked.insert("request_body".into(), 0);
        let tap = Tap::new(self);
        let masker = crate::masking::StreamMasker::new(profile, &[] as &[&str]);
        let (counts, capture) = (tap.counts.clone(), tap.capture());
        ctx.request_tap = Some(tap);
        Ok(
            crate::masking::body::MaskedBody::new(body, decoder, masker, json, counts)
                .capture(capture)
                .budget(self.proxy.body_budget.lease(&self.workload))
                .cpu_meter(self.proxy.mask_cpu.meter(&self.workload))
                .boxed(),
        )
    }

    /// mask: the response body as it streams (or whole, for JSON field
    /// paths), its headers already masked; framed by what it carries (SSE
    /// events, JSON lines, a JSON array, or perhaps a stream under no label).
    pub(super) async fn mask_response(
        self: &Arc<Self>,
        mut resp: Response<Incoming>,
        masker: Option<crate::masking::StreamMasker>,
        profile: Option<Arc<crate::masking::Profile>>,
        injected: &[Zeroizing<String>],
        ctx: &mut RequestCtx,
    ) -> Result<Response<RespBody>, Refusal> {
        // Transfer-Encoding stays until the masker has seen it (a coding
        // other than chunked reaches us undecoded).
        let transfer = resp.headers_mut().remove(header::TRANSFER_ENCODING);
        strip_hop_by_hop(resp.headers_mut());
        let (mut parts, body) = resp.into_parts();
        let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
        let Some(masker) = masker else {
            return Ok(Response::from_parts(parts, body));
        };
        let whole = small_known_length(&parts, &ctx.rec.method);
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
                tracing::warn!(session = self.session, seq = ctx.rec.seq, %why, "response passed unmasked (on_uninspectable = \"pass\")");
                parts.headers.remove(header::TRANSFER_ENCODING);
                ctx.rec.masked.extend(masker.counts);
                ctx.rec.masked.insert("uninspectable_passed".into(), 1);
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
        // Record what the skill received (masked), within the session's cap.
        let tap = Tap::new(self);
        let (counts, capture) = (tap.counts.clone(), tap.capture());
        ctx.response_tap = Some(tap);
        let pass =
            profile.on_uninspectable == crate::masking::Uninspectable::Pass && injected.is_empty();
        let mut body = crate::masking::body::MaskedBody::new(body, decoder, masker, json, counts)
            .pass_opaque(pass)
            .capture(capture)
            .budget(self.proxy.body_budget.lease(&self.workload))
            .cpu_meter(self.proxy.mask_cpu.meter(&self.workload));
        match events {
            Some(Framing::Sse) => {
                body = body.events(Box::new(crate::masking::sse::SseMasker::new(
                    sse_profile,
                    injected,
                )));
            }
            Some(framing @ (Framing::Lines | Framing::TypedLines)) => {
                let paths = sse_profile.json_paths.clone();
                let prototype = crate::masking::StreamMasker::new(sse_profile, injected);
                body = body.events(Box::new(
                    crate::masking::ndjson::NdjsonMasker::new(prototype, paths)
                        .typed(framing == Framing::TypedLines),
                ));
            }
            // JSON field paths buffer the document and decide it whole.
            Some(Framing::Array) if !body.buffers_whole() => {
                let elements = crate::masking::sse::SseMasker::new(sse_profile.clone(), injected);
                let bytes = crate::masking::StreamMasker::new(sse_profile, injected);
                body = body.events(Box::new(crate::masking::json_array::JsonArrayMasker::new(
                    elements, bytes,
                )));
            }
            // Untyped or plain text: perhaps a stream under no label.
            None if media.as_deref().is_none_or(|t| t == "text/plain") && !body.buffers_whole() => {
                let proto = crate::masking::StreamMasker::new(sse_profile.clone(), injected);
                body = body.events(Box::new(crate::masking::sniff::Sniffed::new(
                    crate::masking::sse::SseMasker::new(sse_profile, injected),
                    crate::masking::ndjson::NdjsonMasker::new(proto.sibling(), Vec::new()),
                    proto,
                )));
            }
            Some(Framing::Array) | None => {}
        }
        if let Some(len) = whole
            && events.is_none()
        {
            let mut lease = self.proxy.body_budget.lease(&self.workload);
            if lease.grow(len) {
                return masked_whole(parts, body.boxed(), lease).await;
            }
        }
        if body.buffers_whole() {
            return buffered(parts, body).await;
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

/// Bodies of a known length up to this are masked whole and answered with
/// a `Content-Length` (their masked length) rather than chunked.
const WHOLE_BODY_MAX: u64 = 64 * 1024;

/// The length of a response body small enough to mask whole: stated by
/// the upstream, not compressed (its decoded size is unknown), and a body
/// the client will read (not the answer to HEAD, not 204 or 304).
fn small_known_length(parts: &http::response::Parts, method: &str) -> Option<u64> {
    let h = &parts.headers;
    let len: u64 = h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    let plain = h
        .get(header::CONTENT_ENCODING)
        .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let has_body = method != "HEAD"
        && !matches!(
            parts.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        )
        && !parts.status.is_informational();
    (len <= WHOLE_BODY_MAX && plain && has_body && !h.contains_key(header::TRANSFER_ENCODING))
        .then_some(len)
}

/// A small body masked whole, then sent in one piece with its masked
/// length: what a client that reads `Content-Length` (or needs one)
/// expects of an answer that was not streamed. An upstream that breaks off
/// gets the client a 502, not a cut-off 200. Trailers, if any, follow.
async fn masked_whole(
    mut parts: http::response::Parts,
    body: RespBody,
    _lease: crate::memory_budget::Lease,
) -> Result<Response<RespBody>, Refusal> {
    let collected = body.collect().await.map_err(|e| {
        Refusal::new(
            Why::UninspectableResponse,
            format!("the response cannot be masked: {e}"),
        )
    })?;
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let body = Full::new(bytes)
        .map_err(|never: std::convert::Infallible| -> BoxError { match never {} })
        .with_trailers(async move { trailers.map(Ok) });
    Ok(Response::from_parts(parts, body.boxed()))
}

/// A body masked whole before any of it goes out (JSON field paths): its
/// first frame comes only once the document is masked, so an error (not
/// JSON, over the budget) is still a clean 502, not a cut-off 200.
pub(super) async fn buffered(
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
