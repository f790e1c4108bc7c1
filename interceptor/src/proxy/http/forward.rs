//! forward: the request upstream (audited first), the response back,
//! masked as it streams; WebSocket after a 101.
use super::*;

/// The client's `Sec-WebSocket-Key` (RFC 6455 4.1), version 13 only.
pub(super) fn websocket_key(h: &http::HeaderMap) -> Result<HeaderValue, Refusal> {
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
pub(super) fn check_websocket_accept(
    h: &http::HeaderMap,
    key: &HeaderValue,
) -> Result<(), Refusal> {
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

impl HttpConn {
    /// forward: stream the request upstream, the response back.
    pub(super) async fn forward(
        self: &Arc<Self>,
        mut req: Request<InBody>,
        ctx: &mut RequestCtx,
        admitted: Admitted,
        upgrade: Option<HeaderValue>,
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
                if !lease.grow(crate::proxy::websocket::HELD_PER_CONNECTION as u64) {
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
                tracing::info!(session = self.session, seq = ctx.rec.seq, protocol = ?p, "upgrade ignored");
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
            body = self.mask_request_body(&mut parts, body, &decision, &policy, ctx)?;
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
        ctx.audited = Some(self.audit(&ctx.rec, None)?);
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
        let rec = &mut ctx.rec;
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
                    crate::proxy::upstream::UpstreamError::Tls(..) => Why::UpstreamTls,
                    crate::proxy::upstream::UpstreamError::WorkloadPeer(..) => {
                        Why::UpstreamIsWorkload
                    }
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
            let relay = crate::proxy::websocket::Relay::new(
                profile.unwrap_or_else(|| Arc::new(crate::masking::Profile::empty())),
                &injected,
                decision.effects.mask_request,
                self.record_cap
                    .saturating_sub(self.recorded.load(Ordering::Relaxed)) as usize,
                lease,
                self.proxy.mask_cpu.meter(&self.workload),
            );
            let ticket = ctx.audited.as_mut().and_then(|a| a.ticket.take());
            self.tunnel(
                relay,
                client,
                hyper::upgrade::on(&mut resp),
                ctx.rec.clone(),
                ticket,
            );
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as BoxError).boxed(),
            ));
        }
        self.mask_response(resp, masker, profile, &injected, ctx)
            .await
    }

    /// After a 101 both sides speak WebSocket: relayed frame by frame, and
    /// the request's record is rewritten with its messages when it ends.
    pub(super) fn tunnel(
        self: &Arc<Self>,
        relay: crate::proxy::websocket::Relay,
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
}
