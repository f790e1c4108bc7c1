//! inject: the credential put where the rule says, the caller's own
//! value removed first.
use super::*;

/// Puts the secret where the credential says, after removing whatever the
/// caller put there, so a skill can neither see nor choose the secret.
/// Returns every form of the secret the upstream receives, so an echo of
/// any of them is masked in the response.
pub(super) fn inject<B>(
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
pub(super) fn url_pairs(q: &str) -> Vec<(String, String)> {
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
pub(super) fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
