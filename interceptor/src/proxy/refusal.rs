//! Requests the proxy answers itself. Each reason is one `Why`, with one
//! stable code (the JSON body's `error`, what scripts, alerts and the audit
//! log match on) and one status; the message says the particulars.
use super::http::RespBody;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A policy rule denies the request.
    Denied,
    BodyTooLarge,
    TooManyPending,
    ApprovalDenied,
    ApprovalExpired,
    /// The daemon stopped while the request waited for a decision.
    ApprovalInterrupted,
    ApprovalUnavailable,
    AuditUnavailable,
    /// A body a rule or profile must read cannot be read (its encoding).
    UninspectableRequest,
    /// A body a rule must read is over the inspection limit.
    UninspectableRequestSize,
    UninspectableResponse,
    NonCanonicalRequest,
    UserTokenRequired,
    OidcNotConfigured,
    /// A user token that does not validate: the validator's own code.
    Token(&'static str),
    CredentialUnavailable,
    UpgradeNotAllowed,
    UnexpectedUpgrade,
    /// The client's WebSocket handshake is not one.
    BadWebsocketHandshake,
    /// The upstream's 101 does not complete the handshake that was sent.
    UpstreamBadHandshake,
    InspectionCapacity,
    BadHost,
    MisdirectedRequest,
    RequestBodyTimeout,
    BadRequestBody,
    UpstreamTls,
    UpstreamIsWorkload,
    UpstreamUnavailable,
}

impl Why {
    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Why::Denied => "denied",
            Why::BodyTooLarge => "body_too_large",
            Why::TooManyPending => "too_many_pending",
            Why::ApprovalDenied => "approval_denied",
            Why::ApprovalExpired => "approval_expired",
            Why::ApprovalInterrupted => "approval_interrupted",
            Why::ApprovalUnavailable => "approval_unavailable",
            Why::AuditUnavailable => "audit_unavailable",
            Why::UninspectableRequest | Why::UninspectableRequestSize => "uninspectable_request",
            Why::UninspectableResponse => "uninspectable_response",
            Why::NonCanonicalRequest => "non_canonical_request",
            Why::UserTokenRequired => "user_token_required",
            Why::OidcNotConfigured => "oidc_not_configured",
            Why::Token(code) => code,
            Why::CredentialUnavailable => "credential_unavailable",
            Why::UpgradeNotAllowed => "upgrade_not_allowed",
            Why::UnexpectedUpgrade => "unexpected_upgrade",
            Why::BadWebsocketHandshake | Why::UpstreamBadHandshake => "bad_websocket_handshake",
            Why::InspectionCapacity => "inspection_capacity",
            Why::BadHost => "bad_host",
            Why::MisdirectedRequest => "misdirected_request",
            Why::RequestBodyTimeout => "request_body_timeout",
            Why::BadRequestBody => "bad_request_body",
            Why::UpstreamTls => "upstream_tls",
            Why::UpstreamIsWorkload => "upstream_is_workload",
            Why::UpstreamUnavailable => "upstream_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Why::Denied | Why::ApprovalDenied | Why::ApprovalExpired | Why::UpgradeNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Why::BodyTooLarge | Why::UninspectableRequestSize => StatusCode::PAYLOAD_TOO_LARGE,
            Why::TooManyPending => StatusCode::TOO_MANY_REQUESTS,
            Why::ApprovalInterrupted
            | Why::ApprovalUnavailable
            | Why::AuditUnavailable
            | Why::InspectionCapacity => StatusCode::SERVICE_UNAVAILABLE,
            Why::UninspectableRequest => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Why::NonCanonicalRequest
            | Why::BadHost
            | Why::BadRequestBody
            | Why::BadWebsocketHandshake => StatusCode::BAD_REQUEST,
            Why::UserTokenRequired | Why::OidcNotConfigured | Why::Token(_) => {
                StatusCode::UNAUTHORIZED
            }
            Why::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Why::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Why::UninspectableResponse
            | Why::CredentialUnavailable
            | Why::UnexpectedUpgrade
            | Why::UpstreamBadHandshake
            | Why::UpstreamTls
            | Why::UpstreamIsWorkload
            | Why::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A request the proxy answers itself, with a JSON body that says why.
pub struct Refusal {
    pub why: Why,
    pub message: String,
    /// The rule that decided it, when one did.
    pub rule: Option<String>,
}

impl Refusal {
    pub fn new(why: Why, message: impl Into<String>) -> Refusal {
        Refusal {
            why,
            message: message.into(),
            rule: None,
        }
    }

    pub fn by_rule(mut self, rule: Option<String>) -> Refusal {
        self.rule = rule;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.why.status()
    }

    pub fn code(&self) -> &'static str {
        self.why.code()
    }

    pub fn response(&self) -> Response<RespBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.message,
            "rule": self.rule,
            "by": "interceptor",
        });
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(Bytes::from(body.to_string()))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .expect("static response")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are an interface (alerts and scripts match on them):
    /// each is written down here, so a change is a visible one.
    #[test]
    fn codes_and_statuses_are_stable() {
        let table = [
            (Why::Denied, "denied", 403),
            (Why::BodyTooLarge, "body_too_large", 413),
            (Why::TooManyPending, "too_many_pending", 429),
            (Why::ApprovalDenied, "approval_denied", 403),
            (Why::ApprovalExpired, "approval_expired", 403),
            (Why::ApprovalInterrupted, "approval_interrupted", 503),
            (Why::ApprovalUnavailable, "approval_unavailable", 503),
            (Why::AuditUnavailable, "audit_unavailable", 503),
            (Why::UninspectableRequest, "uninspectable_request", 415),
            (Why::UninspectableRequestSize, "uninspectable_request", 413),
            (Why::UninspectableResponse, "uninspectable_response", 502),
            (Why::NonCanonicalRequest, "non_canonical_request", 400),
            (Why::UserTokenRequired, "user_token_required", 401),
            (Why::OidcNotConfigured, "oidc_not_configured", 401),
            (Why::Token("token_expired"), "token_expired", 401),
            (Why::CredentialUnavailable, "credential_unavailable", 502),
            (Why::UpgradeNotAllowed, "upgrade_not_allowed", 403),
            (Why::UnexpectedUpgrade, "unexpected_upgrade", 502),
            (Why::BadWebsocketHandshake, "bad_websocket_handshake", 400),
            (Why::UpstreamBadHandshake, "bad_websocket_handshake", 502),
            (Why::InspectionCapacity, "inspection_capacity", 503),
            (Why::BadHost, "bad_host", 400),
            (Why::MisdirectedRequest, "misdirected_request", 421),
            (Why::RequestBodyTimeout, "request_body_timeout", 408),
            (Why::BadRequestBody, "bad_request_body", 400),
            (Why::UpstreamTls, "upstream_tls", 502),
            (Why::UpstreamIsWorkload, "upstream_is_workload", 502),
            (Why::UpstreamUnavailable, "upstream_unavailable", 502),
        ];
        for (why, code, status) in table {
            assert_eq!(
                (why.code(), why.status().as_u16()),
                (code, status),
                "{why:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_body_says_why_and_which_rule() {
        let r = Refusal::new(Why::Denied, "no").by_rule(Some("r1".into()));
        let resp = r.response();
        assert_eq!(resp.status(), 403);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":"denied","message":"no","rule":"r1","by":"interceptor"})
        );
    }
}
