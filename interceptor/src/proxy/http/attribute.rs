//! attribute: whose request this is and where it goes: the host (the
//! one the upstream certificate is verified for) and the OIDC user.
use super::*;

impl HttpConn {
    /// The host the request is for. Inside TLS it must be the name the
    /// upstream certificate is verified for (no domain fronting).
    pub(super) fn host_of<B>(&self, req: &Request<B>) -> Result<String, Refusal> {
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
    pub(super) fn authority_for(&self, host: &str) -> String {
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
    pub(super) async fn user_of<B>(&self, req: &mut Request<B>) -> Result<Option<User>, Refusal> {
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
