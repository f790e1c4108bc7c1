//! OIDC user identity: validates bearer tokens (signed JWTs) issued by an
//! OpenID Connect provider.
//!
//! Discovery and the JWKS are fetched lazily over HTTPS and cached. A token
//! with an unknown `kid` triggers at most one JWKS refetch per
//! `min_refresh_interval`, and only one fetch runs at a time. Keys older than
//! `max_key_age` are refetched before use, so a key the provider withdrew
//! (rotated out, compromised) stops validating tokens; if that refetch fails,
//! tokens are refused until it succeeds (fail closed, never stale keys).
//!
//! We do not use the `openidconnect` crate: its dependency tree (reqwest,
//! oauth2, an RSA stack, ...) is too heavy for this project, and what we need
//! from OIDC is two GETs plus jsonwebtoken's verification.
//!
//! Errors are shown to clients: they never carry the token or key material.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::ServerName;
use serde_json::{Map, Value};

/// Whole discovery or JWKS request: connect, TLS, request, body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery documents and key sets are small; anything bigger is wrong.
const MAX_BODY: usize = 1 << 20;
/// A larger leeway would make `exp` meaningless.
const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// The kid is attacker-supplied; only this much of it is echoed in errors.
const MAX_KID_SHOWN: usize = 64;

/// Which provider to trust and how to read its tokens.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// e.g. "https://idp.example/realms/x"; must be https.
    pub issuer: String,
    /// The token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Claim holding the user name: "sub", "email", "preferred_username"...
    pub user_claim: String,
    /// Claim holding the groups: an array of strings (or a single string).
    pub groups_claim: String,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// An unknown `kid` refetches the JWKS at most this often.
    pub min_refresh_interval: Duration,
    /// Fetched keys are trusted this long; then the JWKS is fetched again.
    pub max_key_age: Duration,
}

impl OidcConfig {
    /// A config with the defaults: user from `sub`, groups from `groups`,
    /// 30 s leeway, 30 s between JWKS refetches, keys trusted for 10 min.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            audiences,
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(30),
            max_key_age: Duration::from_secs(600),
        }
    }
}

/// The user a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub subject: String,
    pub name: String,
    pub groups: Vec<String>,
}

/// Why a token was refused. The Display texts are sent to clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The kid (truncated; empty when the token names none).
    #[error("unknown token signing key {0:?}")]
    UnknownKey(String),
    #[error("token lacks the claim {0:?}")]
    MissingClaim(String),
    #[error("identity provider keys unavailable: {0}")]
    JwksUnavailable(String),
    #[error("token is {0} bytes, more than the {MAX_TOKEN_BYTES} accepted")]
    TooLarge(usize),
}

/// Tokens larger than this are refused before anything is decoded: a
/// generous bound (IdPs with many roles issue a few KiB) that keeps a
/// hostile token from costing a JSON parse of megabytes per request.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

impl TokenError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed_token",
            TokenError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::JwksUnavailable(_) => "jwks_unavailable",
            TokenError::TooLarge(_) => "token_too_large",
        }
    }
}

/// Validates tokens of one issuer. Share it behind an `Arc`.
pub struct Validator {
    cfg: OidcConfig,
    discovery_url: String,
    tls: Arc<rustls::ClientConfig>,
    /// Claim checks common to every token; only the algorithm varies.
    validation: Validation,
    /// Current keys; read by every validation, never held across an await.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held for the whole of a fetch: one fetch at a time.
    refresh: tokio::sync::Mutex<RefreshState>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct RefreshState {
    /// From discovery; forgotten when a JWKS fetch fails, to rediscover.
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The verification keys of one JWKS fetch.
struct KeySet {
    keys: Vec<SigningKey>,
    fetched: Instant,
}

struct SigningKey {
    jwk: Jwk,
    key: DecodingKey,
}

impl SigningKey {
    fn kid(&self) -> Option<&str> {
        self.jwk.common.key_id.as_deref()
    }
}

impl KeySet {
    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }
}

impl Validator {
    /// `tls` verifies the IdP (system roots plus any extra CAs the caller put
    /// in it).
    pub fn new(cfg: OidcConfig, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Validator> {
        parse_https_url(&cfg.issuer).map_err(|e| anyhow!("OIDC issuer: {e}"))?;
        if cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
            bail!("OIDC: at least one audience is required, and none may be empty");
        }
        if cfg.user_claim.is_empty() || cfg.groups_claim.is_empty() {
            bail!("OIDC: user_claim and groups_claim must not be empty");
        }
        if cfg.max_key_age < cfg.min_refresh_interval {
            bail!(
                "OIDC: jwks_max_age_s is at least {} s (keys could not be refetched in time)",
                cfg.min_refresh_interval.as_secs()
            );
        }
        if cfg.leeway > MAX_LEEWAY {
            bail!("OIDC: leeway is at most {} s", MAX_LEEWAY.as_secs());
        }
        // OIDC Discovery §4: strip a trailing slash before appending.
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        // We speak HTTP/1.1 only; the caller's config might offer h2.
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Validator {
            validation: base_validation(&cfg),
            cfg,
            discovery_url,
            tls: Arc::new(tls),
            keys: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            fetches: AtomicU64::new(0),
        })
    }

    /// Checks the token and returns its user. Discovery and JWKS are fetched
    /// lazily on first use and cached.
    ///
    /// ECDSA signatures are accepted in both their low-S and high-S forms
    /// (an IdP's signer produces either; few normalise). Malleability cannot
    /// matter here: a token is never an identifier (nothing is cached,
    /// deduplicated, approved or recorded by the token's bytes), only its
    /// verified claims are used, and the second form carries the same claims
    /// under the same key (a test proves both forms give the same user).
    pub async fn validate(&self, token: &str) -> Result<User, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge(token.len()));
        }
        let (alg, kid) = inspect_header(token)?;
        tracing::debug!(
            kid = kid.as_deref().unwrap_or("-"),
            alg = ?alg,
            issuer = %self.cfg.issuer,
            "validating token"
        );
        let keys = self.keys_for(kid.as_deref()).await?;
        let key = select_key(&keys, kid.as_deref(), alg)?;
        let claims = self.verify(token, key, alg)?;
        self.user_from(&claims)
    }

    /// Number of JWKS fetches so far (attempts, successful or not).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn cached_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keys that should hold `kid`: the cached ones, or freshly fetched ones
    /// if the kid is unknown and the rate limit allows a fetch. The caller
    /// still has to look the kid up: rate-limited or not, it may be missing.
    async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, TokenError> {
        let satisfies = |keys: &KeySet| {
            keys.fetched.elapsed() < self.cfg.max_key_age && kid.is_none_or(|k| keys.has_kid(k))
        };
        if let Some(keys) = self.cached_keys()
            && satisfies(&keys)
        {
            return Ok(keys);
        }
        let mut state = self.refresh.lock().await;
        // Whoever held the lock before us may have fetched what we need.
        let cached = self.cached_keys();
        if let Some(keys) = &cached
            && satisfies(keys)
        {
            return Ok(keys.clone());
        }
        let expired = cached
            .as_ref()
            .is_some_and(|k| k.fetched.elapsed() >= self.cfg.max_key_age);
        if let Some(at) = state.last_attempt
            && at.elapsed() < self.cfg.min_refresh_interval
        {
            // Expired keys are not used while a refetch waits: fail closed.
            return cached.filter(|_| !expired).ok_or_else(|| {
                let cause = state.last_error.as_deref().unwrap_or(if expired {
                    "the cached keys expired"
                } else {
                    "no keys yet"
                });
                TokenError::JwksUnavailable(format!("{cause} (retrying later)"))
            });
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch_keys(&mut state).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
                state.last_error = None;
                Ok(keys)
            }
            Err(cause) => {
                tracing::warn!(issuer = %self.cfg.issuer, error = %cause, "OIDC key fetch failed");
                state.last_error = Some(cause.clone());
                Err(TokenError::JwksUnavailable(cause))
            }
        }
    }

    /// Discovery (once, until a JWKS fetch fails) and the JWKS itself.
    async fn fetch_keys(&self, state: &mut RefreshState) -> Result<KeySet, String> {
        let jwks_uri = match state.jwks_uri.take() {
            Some(uri) => uri,
            None => self.discover().await?,
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = get(&self.tls, &jwks_uri)
            .await
            .map_err(|cause| format!("JWKS {jwks_uri}: {cause}"))?;
        let keys = parse_jwks(&body).map_err(|cause| format!("JWKS {jwks_uri}: {cause}"))?;
        tracing::debug!(issuer = %self.cfg.issuer, keys = keys.keys.len(), "JWKS fetched");
        state.jwks_uri = Some(jwks_uri);
        Ok(keys)
    }

    /// Reads the discovery document and returns its `jwks_uri`.
    async fn discover(&self) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = &self.discovery_url;
        let body = get(&self.tls, url)
            .await
            .map_err(|cause| format!("discovery {url}: {cause}"))?;
        let doc: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("discovery {url}: not a discovery document: {e}"))?;
        // OIDC Discovery §4.3: a mismatch means someone else's keys.
        if doc.issuer != self.cfg.issuer {
            return Err(format!(
                "discovery {url}: issuer {:?} is not the configured issuer",
                doc.issuer
            ));
        }
        parse_https_url(&doc.jwks_uri).map_err(|e| format!("discovery {url}: jwks_uri {e}"))?;
        Ok(doc.jwks_uri)
    }

    /// Signature and the registered claims (jsonwebtoken), then `iat`.
    fn verify(
        &self,
        token: &str,
        key: &SigningKey,
        alg: Algorithm,
    ) -> Result<Map<String, Value>, TokenError> {
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(e, key.kid()))?;
        check_iat(&data.claims, self.cfg.leeway)?;
        Ok(data.claims)
    }

    fn user_from(&self, claims: &Map<String, Value>) -> Result<User, TokenError> {
        Ok(User {
            subject: string_claim(claims, "sub")?,
            name: string_claim(claims, &self.cfg.user_claim)?,
            groups: groups_claim(claims, &self.cfg.groups_claim)?,
        })
    }
}

fn base_validation(cfg: &OidcConfig) -> Validation {
    let mut v = Validation::new(Algorithm::ES256);
    v.leeway = cfg.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&cfg.issuer]);
    v.set_audience(&cfg.audiences);
    // jsonwebtoken skips the iss/aud checks when the claim is absent.
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// Checks the token's shape and algorithm before anything else parses it,
/// and returns the algorithm and kid. jsonwebtoken cannot even parse
/// `alg: none`; that must come out as a refused algorithm, not as garbage.
fn inspect_header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    let malformed = |why: &str| TokenError::Malformed(why.to_string());
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "expected three dot-separated parts (a signed JWT)",
        ));
    };
    if b64url_decode(payload).is_none() || b64url_decode(signature).is_none() {
        return Err(malformed("payload or signature is not base64url"));
    }
    let raw = b64url_decode(header).ok_or_else(|| malformed("header is not base64url"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&raw).map_err(|_| malformed("header is not a JSON object"))?;
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(malformed("header has no alg"));
    };
    let alg = allowed_algorithm(alg)?;
    // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
    if header.contains_key("crit") {
        return Err(malformed("critical header extensions are not supported"));
    }
    let parsed = jsonwebtoken::decode_header(token).map_err(|_| malformed("header is invalid"))?;
    Ok((alg, parsed.kid))
}

/// Refuses unsigned and symmetric tokens. HS* is refused outright: with a
/// public key as the HMAC secret anyone could sign (RS/HS key confusion).
fn allowed_algorithm(name: &str) -> Result<Algorithm, TokenError> {
    if name.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgorithmNotAllowed(
            "unsigned tokens (none) are refused".into(),
        ));
    }
    let alg: Algorithm = name
        .parse()
        .map_err(|_| TokenError::AlgorithmNotAllowed("unsupported algorithm".into()))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(TokenError::AlgorithmNotAllowed(format!(
            "{alg:?}: symmetric algorithms are refused"
        )));
    }
    Ok(alg)
}

/// Picks the key for `kid` that fits `alg`. Without a kid only a JWKS with
/// a single key is unambiguous.
fn select_key<'a>(
    keys: &'a KeySet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'a SigningKey, TokenError> {
    let candidates: Vec<&SigningKey> = match (kid, keys.keys.as_slice()) {
        (Some(kid), _) => keys.keys.iter().filter(|k| k.kid() == Some(kid)).collect(),
        (None, [only]) => vec![only],
        (None, _) => Vec::new(),
    };
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(shown_kid(kid.unwrap_or(""))));
    }
    candidates
        .into_iter()
        .find(|k| key_fits(&k.jwk, alg))
        .ok_or_else(|| TokenError::AlgorithmNotAllowed(format!("{alg:?} does not fit the key")))
}

/// The algorithm must be one the key type can mean (RSA: RS*/PS*, EC:
/// ES256/ES384 on the matching curve, OKP: EdDSA on Ed25519), and the one
/// the JWK pins when it pins one.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    use Algorithm::*;
    let type_fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, ES256) | (EllipticCurve::P384, ES384)
        ),
        AlgorithmParameters::OctetKeyPair(okp) => {
            okp.curve == EllipticCurve::Ed25519 && alg == EdDSA
        }
        AlgorithmParameters::OctetKey(_) => false,
    };
    let pinned_fits = jwk
        .common
        .key_algorithm
        .is_none_or(|pinned| signing_algorithm(pinned) == Some(alg));
    type_fits && pinned_fits
}

/// The JWS algorithm a JWK `alg` names; None for encryption algorithms.
fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => return None,
    })
}

fn map_jwt_error(e: jsonwebtoken::errors::Error, kid: Option<&str>) -> TokenError {
    match e.into_kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => {
            TokenError::AlgorithmNotAllowed("algorithm does not fit the key".into())
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            TokenError::Malformed("not a base64url-encoded JWT".into())
        }
        ErrorKind::Json(_) => TokenError::Malformed("claims are not a JSON object".into()),
        // A published key ring cannot use: the signature cannot be checked.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => {
            tracing::warn!(
                kid = kid.unwrap_or("-"),
                "JWKS key unusable for verification"
            );
            TokenError::BadSignature
        }
        // Signing and `sub` errors: not produced by decoding with our settings.
        _ => TokenError::Malformed("token could not be verified".into()),
    }
}

/// jsonwebtoken ignores `iat`; one beyond now + leeway is not valid yet.
fn check_iat(claims: &Map<String, Value>, leeway: Duration) -> Result<(), TokenError> {
    let iat = match claims.get("iat") {
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| TokenError::Malformed("iat is not a number".into()))?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    if iat > now + leeway.as_secs_f64() {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// A claim by name or, when no claim has that exact name, by a dotted path
/// into nested objects ("realm_access.roles", as Keycloak puts roles).
/// Exact names come first: namespaced claims such as
/// "https://example.com/groups" contain dots themselves.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.as_object()?.get(part))
    })
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<String, TokenError> {
    match claim(claims, name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            Err(TokenError::MissingClaim(name.to_string()))
        }
        Some(_) => Err(TokenError::Malformed(format!(
            "claim {name:?} is not a string"
        ))),
    }
}

/// Absent means no groups; a single string is one group.
fn groups_claim(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, TokenError> {
    let not_strings = || TokenError::Malformed(format!("claim {name:?} must hold strings"));
    match claim(claims, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(not_strings))
            .collect(),
        Some(_) => Err(not_strings()),
    }
}

fn shown_kid(kid: &str) -> String {
    kid.chars().take(MAX_KID_SHOWN).collect()
}

/// Parses a JWKS into jsonwebtoken's `JwkSet`, key by key: a key it cannot
/// represent (an X25519 or P-521 key, say) is skipped instead of failing
/// the whole set. Only keys we can verify signatures with are kept.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let set = JwkSet {
        keys: raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect(),
    };
    let keys: Vec<SigningKey> = set
        .keys
        .into_iter()
        .filter(is_signature_key)
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(SigningKey { jwk, key })
        })
        .collect();
    if keys.is_empty() {
        return Err("no usable signature keys".into());
    }
    Ok(KeySet {
        keys,
        fetched: Instant::now(),
    })
}

/// Asymmetric keys of a type and curve we verify, not marked for encryption.
fn is_signature_key(jwk: &Jwk) -> bool {
    let usable_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => true,
        AlgorithmParameters::EllipticCurve(ec) => {
            matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384)
        }
        AlgorithmParameters::OctetKeyPair(okp) => okp.curve == EllipticCurve::Ed25519,
        AlgorithmParameters::OctetKey(_) => false,
    };
    let for_signatures = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    usable_type && for_signatures
}

/// Checks that `url` is an absolute https URL without credentials. The
/// messages do not repeat the URL (it might hold credentials).
fn parse_https_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a valid URL".to_string())?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https URL".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".into());
    };
    if authority.as_str().contains('@') {
        return Err("must not contain credentials".into());
    }
    if authority.host().is_empty() {
        return Err("has no host".into());
    }
    Ok(uri)
}

/// Ends a spawned connection task when its request is done or abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// GET over HTTPS (HTTP/1.1, one connection per request: fetches are rare),
/// with a time limit and a body size cap. Returns the body of a 200 answer.
async fn get(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Bytes, String> {
    tokio::time::timeout(FETCH_TIMEOUT, get_unbounded(tls, url))
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}

async fn get_unbounded(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Bytes, String> {
    let uri = parse_https_url(url)?;
    let authority = uri.authority().ok_or("has no host")?.clone();
    // IPv6 literals come bracketed in URLs, bare in socket addresses and SNI.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|_| "invalid host name".to_string())?;

    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(body.to_bytes())
}

/// Strict base64url without padding, as JWS uses it (RFC 7515 §2): other
/// characters, padding and non-zero leftover bits are refused (the `base64`
/// engine's defaults), so two texts never decode to the same bytes.
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use jsonwebtoken::{EncodingKey, Header};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    const AUDIENCE: &str = "interceptor";
    const DISCOVERY_PATH: &str = "/realms/test/.well-known/openid-configuration";
    const JWKS_PATH: &str = "/realms/test/protocol/openid-connect/certs";

    fn ring() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn b64(data: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// A signing key of the test IdP, with its public JWK.
    struct TestKey {
        kid: String,
        alg: Algorithm,
        encoding: EncodingKey,
        jwk: Value,
        public_pem: String,
    }

    impl TestKey {
        fn es256(kid: &str) -> TestKey {
            let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = kp.public_key_raw(); // 0x04 || x || y
            assert_eq!(raw.len(), 65);
            TestKey {
                kid: kid.into(),
                alg: Algorithm::ES256,
                encoding: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
                jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                            "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
                public_pem: kp.public_key_pem(),
            }
        }

        /// Without `alg` in the JWK, as some IdPs publish them.
        fn ed25519(kid: &str) -> TestKey {
            let kp = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            TestKey {
                kid: kid.into(),
                alg: Algorithm::EdDSA,
                encoding: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                            "x": b64(kp.public_key_raw())}),
                public_pem: kp.public_key_pem(),
            }
        }

        fn sign(&self, claims: &Value) -> String {
            self.sign_as(self.alg, &self.kid, claims)
        }

        fn sign_as(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    fn jwks(keys: &[&TestKey]) -> Value {
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// What the local IdP serves, changeable by the test, with hit counts.
    struct IdpState {
        discovery: Mutex<Value>,
        jwks: Mutex<Value>,
        discovery_hits: AtomicU64,
        jwks_hits: AtomicU64,
    }

    impl IdpState {
        fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
            let body = match req.uri().path() {
                DISCOVERY_PATH => {
                    self.discovery_hits.fetch_add(1, Ordering::SeqCst);
                    self.discovery.lock().unwrap().clone()
                }
                JWKS_PATH => {
                    self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                    self.jwks.lock().unwrap().clone()
                }
                _ => {
                    let mut not_found = Response::new(Full::new(Bytes::new()));
                    *not_found.status_mut() = http::StatusCode::NOT_FOUND;
                    return not_found;
                }
            };
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        }
    }

    /// A real OIDC issuer on 127.0.0.1 over HTTPS, with its own test CA.
    struct Idp {
        issuer: String,
        ca: CertificateDer<'static>,
        state: Arc<IdpState>,
    }

    /// A CA and a leaf for 127.0.0.1 signed by it: (CA cert, leaf cert, leaf key).
    fn test_pki() -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
            .unwrap();
        let key = PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into();
        (ca.der().clone(), leaf.der().clone(), key)
    }

    impl Idp {
        async fn start(keys: &[&TestKey]) -> Idp {
            let (ca, leaf, leaf_key) = test_pki();
            let server = rustls::ServerConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf], leaf_key)
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("https://{}", listener.local_addr().unwrap());
            let issuer = format!("{base}/realms/test");
            let state = Arc::new(IdpState {
                discovery: Mutex::new(
                    json!({"issuer": issuer, "jwks_uri": format!("{base}{JWKS_PATH}")}),
                ),
                jwks: Mutex::new(jwks(keys)),
                discovery_hits: AtomicU64::new(0),
                jwks_hits: AtomicU64::new(0),
            });
            tokio::spawn(serve(
                listener,
                TlsAcceptor::from(Arc::new(server)),
                state.clone(),
            ));
            Idp { issuer, ca, state }
        }

        fn client_tls(&self) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            Arc::new(
                rustls::ClientConfig::builder_with_provider(ring())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }

        fn config(&self) -> OidcConfig {
            OidcConfig::new(&self.issuer, vec![AUDIENCE.into()])
        }

        fn validator(&self, cfg: OidcConfig) -> Validator {
            Validator::new(cfg, self.client_tls()).unwrap()
        }

        fn publish(&self, keys: &[&TestKey]) {
            *self.state.jwks.lock().unwrap() = jwks(keys);
        }

        fn set_discovery(&self, doc: Value) {
            *self.state.discovery.lock().unwrap() = doc;
        }

        fn jwks_hits(&self) -> u64 {
            self.state.jwks_hits.load(Ordering::SeqCst)
        }

        fn discovery_hits(&self) -> u64 {
            self.state.discovery_hits.load(Ordering::SeqCst)
        }

        /// Claims of a valid token for this issuer.
        fn claims(&self) -> Value {
            json!({"iss": self.issuer, "aud": AUDIENCE, "sub": "user-1",
                   "email": "alice@example.test", "groups": ["dev", "ops"],
                   "iat": now(), "exp": now() + 300})
        }
    }

    async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<IdpState>) {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                // Handshakes fail on purpose in the untrusted-certificate test.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| {
                    let response = state.respond(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    /// Validates, expects the error `code`, and checks that the error text
    /// carries no part of the token.
    async fn refused(v: &Validator, token: &str, code: &str) -> TokenError {
        let err = v.validate(token).await.expect_err(code);
        assert_eq!(err.code(), code, "{err}");
        let text = err.to_string();
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!text.contains(part), "error text leaks the token: {text}");
        }
        err
    }

    #[tokio::test]
    async fn oversized_tokens_are_refused_before_any_work() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let mut claims = idp.claims();
        claims["pad"] = json!("x".repeat(300 * 1024));
        refused(&v, &key.sign(&claims), "token_too_large").await;
        assert_eq!(v.jwks_fetches(), 0, "nothing fetched for a refused token");
    }

    #[tokio::test]
    async fn the_high_s_form_of_an_ecdsa_signature_gives_the_same_user() {
        // P-256's group order n, big-endian: s' = n - s is the other valid
        // signature for the same token (see Validator::validate).
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let token = key.sign(&idp.claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut rs = b64url_decode(sig).unwrap();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = N[i] as i16 - rs[32 + i] as i16 - borrow;
            rs[32 + i] = d.rem_euclid(256) as u8;
            borrow = (d < 0) as i16;
        }
        let other = format!("{head}.{}", b64(&rs));
        assert_ne!(other, token);
        assert_eq!(
            v.validate(&other).await.unwrap(),
            v.validate(&token).await.unwrap()
        );
    }

    #[tokio::test]
    async fn valid_es256_token_gives_the_user_and_groups() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let mut cfg = idp.config();
        cfg.user_claim = "email".into();
        let v = idp.validator(cfg);

        let user = v.validate(&key.sign(&idp.claims())).await.unwrap();
        assert_eq!(
            user,
            User {
                subject: "user-1".into(),
                name: "alice@example.test".into(),
                groups: vec!["dev".into(), "ops".into()],
            }
        );
        // Cached: a second token costs no fetch.
        v.validate(&key.sign(&idp.claims())).await.unwrap();
        assert_eq!(
            (v.jwks_fetches(), idp.jwks_hits(), idp.discovery_hits()),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn valid_eddsa_token_with_audience_list_and_single_group() {
        let ed = TestKey::ed25519("ed1");
        let ec = TestKey::es256("ec1");
        let idp = Idp::start(&[&ec, &ed]).await;
        let v = idp.validator(idp.config());

        let claims = with(idp.claims(), "aud", json!(["other-service", AUDIENCE]));
        let claims = with(claims, "groups", json!("admins"));
        let user = v.validate(&ed.sign(&claims)).await.unwrap();
        assert_eq!(user.name, "user-1"); // user_claim defaults to sub
        assert_eq!(user.groups, vec!["admins".to_string()]);
    }

    #[tokio::test]
    async fn user_and_groups_claims() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let mut cfg = idp.config();
        cfg.user_claim = "preferred_username".into();
        cfg.groups_claim = "roles".into();
        let v = idp.validator(cfg);

        let claims = with(idp.claims(), "preferred_username", json!("alice"));
        let user = v.validate(&key.sign(&claims)).await.unwrap();
        assert_eq!((user.name.as_str(), user.groups.len()), ("alice", 0)); // no "roles"

        let err = refused(&v, &key.sign(&idp.claims()), "missing_claim").await;
        assert_eq!(err, TokenError::MissingClaim("preferred_username".into()));
        let no_sub = without(with(idp.claims(), "preferred_username", json!("a")), "sub");
        refused(&v, &key.sign(&no_sub), "missing_claim").await;
        let bad_roles = with(claims, "roles", json!([1, 2]));
        refused(&v, &key.sign(&bad_roles), "malformed_token").await;
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let payload = b64(idp.claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT", "kid": "k1"})
                .to_string()
                .as_bytes());
            let err = refused(&v, &format!("{header}.{payload}."), "algorithm_not_allowed").await;
            assert!(err.to_string().contains("none"), "{err}");
        }
        // Refused before any key was needed.
        assert_eq!(idp.discovery_hits(), 0);
    }

    #[tokio::test]
    async fn hs256_key_confusion_is_refused() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        // The attacker knows the public key and uses it as the HMAC secret.
        let secrets = [
            key.public_pem.clone(),
            key.jwk.to_string(),
            key.jwk["x"].to_string(),
        ];
        for secret in secrets {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let mut header = Header::new(alg);
                header.kid = Some("k1".into());
                let forged = jsonwebtoken::encode(
                    &header,
                    &idp.claims(),
                    &EncodingKey::from_secret(secret.as_bytes()),
                )
                .unwrap();
                refused(&v, &forged, "algorithm_not_allowed").await;
            }
        }
        // Even a symmetric key the IdP itself publishes is never used.
        let mut with_oct = jwks(&[&key]);
        let secret = b"a shared secret of thirty-two b!";
        with_oct["keys"]
            .as_array_mut()
            .unwrap()
            .push(json!({"kty": "oct", "kid": "sym", "alg": "HS256", "k": b64(secret)}));
        *idp.state.jwks.lock().unwrap() = with_oct;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("sym".into());
        let token = jsonwebtoken::encode(&header, &idp.claims(), &EncodingKey::from_secret(secret))
            .unwrap();
        refused(&v, &token, "algorithm_not_allowed").await;
    }

    #[tokio::test]
    async fn algorithm_must_fit_the_key() {
        let ec = TestKey::es256("ec1");
        let ed = TestKey::ed25519("ed1");
        let mut pinned = TestKey::es256("pinned");
        pinned.jwk["alg"] = json!("ES384"); // inconsistent JWK: pins another alg
        let idp = Idp::start(&[&ec, &ed, &pinned]).await;
        let v = idp.validator(idp.config());
        let claims = idp.claims();
        let payload = b64(claims.to_string().as_bytes());
        let hand_made = |alg: &str, kid: &str| {
            let header = b64(json!({"alg": alg, "kid": kid}).to_string().as_bytes());
            format!("{header}.{payload}.{}", b64(&[7u8; 64]))
        };

        // EdDSA signature presented under the EC key's kid.
        refused(
            &v,
            &ed.sign_as(Algorithm::EdDSA, "ec1", &claims),
            "algorithm_not_allowed",
        )
        .await;
        // ES256 signature presented under the Ed25519 key's kid.
        refused(
            &v,
            &ec.sign_as(Algorithm::ES256, "ed1", &claims),
            "algorithm_not_allowed",
        )
        .await;
        // ES384 claimed for a P-256 key.
        refused(&v, &hand_made("ES384", "ec1"), "algorithm_not_allowed").await;
        // RS256 claimed for an EC key.
        refused(&v, &hand_made("RS256", "ec1"), "algorithm_not_allowed").await;
        // The JWK pins ES384: a correct ES256 signature is still refused.
        refused(&v, &pinned.sign(&claims), "algorithm_not_allowed").await;
        // Algorithms we do not implement.
        refused(&v, &hand_made("ES512", "ec1"), "algorithm_not_allowed").await;
        refused(&v, &hand_made("RSA-OAEP", "ec1"), "algorithm_not_allowed").await;
        // The right pairs still work.
        v.validate(&ec.sign(&claims)).await.unwrap();
        v.validate(&ed.sign(&claims)).await.unwrap();
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let key = TestKey::es256("k1");
        let ed = TestKey::ed25519("ed1");
        let idp = Idp::start(&[&key, &ed]).await;
        let v = idp.validator(idp.config());
        let token = key.sign(&idp.claims());
        let parts: Vec<&str> = token.split('.').collect();

        // Payload changed after signing (privilege escalation attempt).
        let evil = b64(with(idp.claims(), "sub", json!("admin"))
            .to_string()
            .as_bytes());
        let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(
            refused(&v, &tampered, "bad_signature").await,
            TokenError::BadSignature
        );

        // Signature of another token by the same key.
        let other = key.sign(&with(idp.claims(), "sub", json!("bob")));
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            other.split('.').nth(2).unwrap()
        );
        refused(&v, &swapped, "bad_signature").await;

        // An attacker's own key under the IdP's kid, both key types.
        refused(
            &v,
            &TestKey::es256("k1").sign(&idp.claims()),
            "bad_signature",
        )
        .await;
        refused(
            &v,
            &TestKey::ed25519("ed1").sign(&idp.claims()),
            "bad_signature",
        )
        .await;

        // Empty signature.
        refused(&v, &format!("{}.{}.", parts[0], parts[1]), "bad_signature").await;
        v.validate(&token).await.unwrap();
    }

    #[tokio::test]
    async fn expiry_and_not_before() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let c = Idp::claims;

        refused(
            &v,
            &key.sign(&with(c(&idp), "exp", json!(now() - 3600))),
            "token_expired",
        )
        .await;
        refused(
            &v,
            &key.sign(&with(c(&idp), "nbf", json!(now() + 3600))),
            "token_not_yet_valid",
        )
        .await;
        refused(
            &v,
            &key.sign(&with(c(&idp), "iat", json!(now() + 3600))),
            "token_not_yet_valid",
        )
        .await;
        let err = refused(&v, &key.sign(&without(c(&idp), "exp")), "missing_claim").await;
        assert_eq!(err, TokenError::MissingClaim("exp".into()));
        refused(
            &v,
            &key.sign(&with(c(&idp), "exp", json!("tomorrow"))),
            "missing_claim",
        )
        .await;
        refused(
            &v,
            &key.sign(&with(c(&idp), "iat", json!("today"))),
            "malformed_token",
        )
        .await;
        // nbf in the past is fine.
        v.validate(&key.sign(&with(c(&idp), "nbf", json!(now() - 60))))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn leeway_is_honoured() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let lenient = idp.validator(idp.config()); // 30 s
        let mut strict_cfg = idp.config();
        strict_cfg.leeway = Duration::ZERO;
        let strict = idp.validator(strict_cfg);

        let just_expired = key.sign(&with(idp.claims(), "exp", json!(now() - 10)));
        let almost_valid = key.sign(&with(idp.claims(), "nbf", json!(now() + 10)));
        let issued_ahead = key.sign(&with(idp.claims(), "iat", json!(now() + 10)));
        for token in [&just_expired, &almost_valid, &issued_ahead] {
            lenient.validate(token).await.unwrap();
        }
        refused(&strict, &just_expired, "token_expired").await;
        refused(&strict, &almost_valid, "token_not_yet_valid").await;
        refused(&strict, &issued_ahead, "token_not_yet_valid").await;
        // Beyond the leeway.
        let long_expired = key.sign(&with(idp.claims(), "exp", json!(now() - 45)));
        refused(&lenient, &long_expired, "token_expired").await;
    }

    #[tokio::test]
    async fn wrong_issuer_and_audience() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let c = Idp::claims;

        let cases = [
            (
                with(c(&idp), "iss", json!("https://evil.example/realms/test")),
                "wrong_issuer",
            ),
            (
                with(c(&idp), "iss", json!(format!("{}/", idp.issuer))),
                "wrong_issuer",
            ),
            (without(c(&idp), "iss"), "missing_claim"),
            (
                with(c(&idp), "aud", json!("someone-else")),
                "wrong_audience",
            ),
            (with(c(&idp), "aud", json!(["a", "b"])), "wrong_audience"),
            (with(c(&idp), "aud", json!([])), "wrong_audience"),
            (without(c(&idp), "aud"), "missing_claim"),
        ];
        for (claims, code) in cases {
            refused(&v, &key.sign(&claims), code).await;
        }
    }

    #[tokio::test]
    async fn malformed_tokens() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let good = key.sign(&idp.claims());
        let parts: Vec<&str> = good.split('.').collect();
        let header_of = |h: Value| b64(h.to_string().as_bytes());

        let cases = [
            String::new(),
            "garbage".into(),
            format!("{}.{}", parts[0], parts[1]), // two segments
            format!("{good}.{}.{}", parts[1], parts[2]), // five (JWE shape)
            format!("!!!.{}.{}", parts[1], parts[2]), // header not base64url
            format!("{}.{}=.{}", parts[0], parts[1], parts[2]), // padding
            format!("{}.{}.{}*", parts[0], parts[1], parts[2]), // signature not base64url
            format!("{}.{}.{}", b64(b"hello"), parts[1], parts[2]), // header not JSON
            format!("{}.{}.{}", header_of(json!(["ES256"])), parts[1], parts[2]),
            format!(
                "{}.{}.{}",
                header_of(json!({"kid": "k1"})),
                parts[1],
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                header_of(json!({"alg": 256})),
                parts[1],
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                header_of(json!({"alg": "ES256", "kid": "k1", "crit": ["b64"], "b64": false})),
                parts[1],
                parts[2]
            ),
        ];
        for token in cases {
            refused(&v, &token, "malformed_token").await;
        }
        // Claims that are not a JSON object, correctly signed.
        let signed_array = key.sign(&json!(["not", "claims"]));
        refused(&v, &signed_array, "malformed_token").await;
    }

    #[tokio::test]
    async fn unknown_kid_is_refused_after_a_refresh() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let mut cfg = idp.config();
        cfg.min_refresh_interval = Duration::ZERO;
        let v = idp.validator(cfg);
        v.validate(&key.sign(&idp.claims())).await.unwrap();
        assert_eq!(v.jwks_fetches(), 1);

        let ghost = TestKey::es256("ghost");
        let err = refused(&v, &ghost.sign(&idp.claims()), "unknown_key").await;
        assert_eq!(err, TokenError::UnknownKey("ghost".into()));
        assert_eq!((v.jwks_fetches(), idp.jwks_hits()), (2, 2));
        // Discovery is not repeated for a refresh.
        assert_eq!(idp.discovery_hits(), 1);

        // A huge kid is not echoed back whole.
        let long_kid = "x".repeat(5000);
        let err = refused(
            &v,
            &ghost.sign_as(Algorithm::ES256, &long_kid, &idp.claims()),
            "unknown_key",
        )
        .await;
        assert!(err.to_string().len() < 200, "{err}");

        // No kid with several keys in the JWKS is ambiguous.
        let other = TestKey::es256("k2");
        idp.publish(&[&key, &other]);
        let mut no_kid = Header::new(Algorithm::ES256);
        no_kid.kid = None;
        let token = jsonwebtoken::encode(&no_kid, &idp.claims(), &key.encoding).unwrap();
        v.validate(&ghost.sign(&idp.claims())).await.unwrap_err(); // refetch: now two keys
        refused(&v, &token, "unknown_key").await;
    }

    #[test]
    fn claims_by_exact_name_or_dotted_path() {
        let claims = json!({
            "realm_access": {"roles": ["admin", "dev"]},
            "https://example.com/groups": ["ns"],
            "profile": {"email": "a@example.test"},
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(
            groups_claim(claims, "realm_access.roles").unwrap(),
            ["admin", "dev"]
        );
        assert_eq!(
            groups_claim(claims, "https://example.com/groups").unwrap(),
            ["ns"]
        );
        assert_eq!(
            string_claim(claims, "profile.email").unwrap(),
            "a@example.test"
        );
        assert!(
            groups_claim(claims, "realm_access.nope")
                .unwrap()
                .is_empty()
        );
        assert!(string_claim(claims, "profile.email.x").is_err());
    }

    #[tokio::test]
    async fn token_without_kid_uses_the_only_key() {
        let key = TestKey::ed25519("only");
        let idp = Idp::start(&[&key]).await;
        let v = idp.validator(idp.config());
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &idp.claims(), &key.encoding)
                .unwrap();
        assert_eq!(v.validate(&token).await.unwrap().subject, "user-1");
    }

    #[tokio::test]
    async fn key_rotation_takes_one_refetch() {
        let old = TestKey::es256("2024");
        let new = TestKey::ed25519("2025");
        let idp = Idp::start(&[&old]).await;
        let mut cfg = idp.config();
        cfg.min_refresh_interval = Duration::from_millis(500);
        let v = idp.validator(cfg);
        v.validate(&old.sign(&idp.claims())).await.unwrap();

        // The IdP rotates: the new key appears and the old one is withdrawn.
        idp.publish(&[&new]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        v.validate(&new.sign(&idp.claims())).await.unwrap();
        assert_eq!((v.jwks_fetches(), idp.jwks_hits()), (2, 2));
        v.validate(&new.sign(&idp.claims())).await.unwrap();
        assert_eq!(v.jwks_fetches(), 2);

        // The withdrawn key no longer works (and the refetch it asks for is
        // rate-limited).
        refused(&v, &old.sign(&idp.claims()), "unknown_key").await;
        assert_eq!(v.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn keys_expire_and_a_failed_refetch_fails_closed() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let mut cfg = idp.config();
        cfg.min_refresh_interval = Duration::from_millis(200);
        cfg.max_key_age = Duration::from_millis(1000);
        let v = idp.validator(cfg);
        let token = key.sign(&idp.claims());
        v.validate(&token).await.unwrap();
        v.validate(&token).await.unwrap();
        assert_eq!(v.jwks_fetches(), 1);

        // The provider withdraws the key (say it leaked). No unknown kid
        // prompts a refetch: the keys' age does, and the old key is gone.
        let next = TestKey::es256("k2");
        idp.publish(&[&next]);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        refused(&v, &token, "unknown_key").await;
        assert_eq!(v.jwks_fetches(), 2);
        v.validate(&next.sign(&idp.claims())).await.unwrap();

        // The provider's JWKS breaks: once the keys expire, tokens are
        // refused rather than checked against stale keys, also while the
        // refetch is rate-limited.
        *idp.state.jwks.lock().unwrap() = json!({"keys": "broken"});
        tokio::time::sleep(Duration::from_millis(1050)).await;
        refused(&v, &next.sign(&idp.claims()), "jwks_unavailable").await;
        refused(&v, &next.sign(&idp.claims()), "jwks_unavailable").await;

        // It recovers: tokens validate again.
        idp.publish(&[&next]);
        tokio::time::sleep(Duration::from_millis(250)).await;
        v.validate(&next.sign(&idp.claims())).await.unwrap();

        // A key age shorter than the refetch interval is refused up front.
        let mut cfg = idp.config();
        cfg.max_key_age = Duration::from_secs(10);
        assert!(Validator::new(cfg, idp.client_tls()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let mut cfg = idp.config();
        cfg.min_refresh_interval = Duration::from_secs(1);
        let v = Arc::new(idp.validator(cfg));
        v.validate(&key.sign(&idp.claims())).await.unwrap();
        assert_eq!(v.jwks_fetches(), 1);

        let unknown: Vec<String> = (0..20)
            .map(|i| TestKey::es256(&format!("unknown-{i}")).sign(&idp.claims()))
            .collect();
        // Within the interval of the first fetch: no refetch at all.
        for token in &unknown[..5] {
            refused(&v, token, "unknown_key").await;
        }
        assert_eq!(v.jwks_fetches(), 1);

        // After it: a burst of unknown kids, at once, costs one fetch.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let burst: Vec<_> = unknown
            .iter()
            .cloned()
            .map(|token| {
                let v = v.clone();
                tokio::spawn(async move { v.validate(&token).await })
            })
            .collect();
        for task in burst {
            assert_eq!(task.await.unwrap().unwrap_err().code(), "unknown_key");
        }
        for token in &unknown[..5] {
            refused(&v, token, "unknown_key").await;
        }
        assert_eq!((v.jwks_fetches(), idp.jwks_hits()), (2, 2));
        // Known kids are unaffected by the rate limit.
        v.validate(&key.sign(&idp.claims())).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_use_fetches_once() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        // No rate limit to hide behind: waiters must reuse the first fetch.
        let mut cfg = idp.config();
        cfg.min_refresh_interval = Duration::ZERO;
        let v = Arc::new(idp.validator(cfg));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (v, token) = (v.clone(), key.sign(&idp.claims()));
                tokio::spawn(async move { v.validate(&token).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            (idp.discovery_hits(), idp.jwks_hits(), v.jwks_fetches()),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn discovery_with_another_issuer_is_rejected() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let real = idp.state.discovery.lock().unwrap().clone();
        idp.set_discovery(with(
            real,
            "issuer",
            json!("https://evil.example/realms/test"),
        ));
        let v = idp.validator(idp.config());

        let token = key.sign(&idp.claims());
        let err = refused(&v, &token, "jwks_unavailable").await;
        let text = err.to_string();
        assert!(
            text.contains("issuer") && text.contains(DISCOVERY_PATH),
            "{text}"
        );
        assert_eq!((idp.jwks_hits(), v.jwks_fetches()), (0, 0));
        // A failing IdP is not hammered either: the retry waits for the interval.
        refused(&v, &token, "jwks_unavailable").await;
        assert_eq!(idp.discovery_hits(), 1);
    }

    #[tokio::test]
    async fn discovery_with_a_plain_http_jwks_uri_is_rejected() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let jwks_uri = format!(
            "http://{}{JWKS_PATH}",
            idp.issuer
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap()
        );
        idp.set_discovery(json!({"issuer": idp.issuer, "jwks_uri": jwks_uri}));
        let v = idp.validator(idp.config());
        let err = refused(&v, &key.sign(&idp.claims()), "jwks_unavailable").await;
        assert!(
            err.to_string().contains("jwks_uri must be an https URL"),
            "{err}"
        );
        assert_eq!(idp.jwks_hits(), 0);
    }

    #[tokio::test]
    async fn idp_with_an_untrusted_certificate_is_unavailable() {
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        // The client trusts another CA only.
        let (other_ca, _, _) = test_pki();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(other_ca).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let v = Validator::new(idp.config(), Arc::new(tls)).unwrap();

        let err = refused(&v, &key.sign(&idp.claims()), "jwks_unavailable").await;
        let text = err.to_string();
        assert!(
            text.contains(&idp.issuer) && text.contains("certificate"),
            "{text}"
        );
        assert_eq!(idp.discovery_hits(), 0);
    }

    #[tokio::test]
    async fn unreachable_idp_is_unavailable() {
        // Bind and drop: nothing listens on that port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = TestKey::es256("k1");
        let idp = Idp::start(&[&key]).await;
        let cfg = OidcConfig::new(
            format!("https://127.0.0.1:{port}/realms/test"),
            vec![AUDIENCE.into()],
        );
        let v = idp.validator(cfg);
        let err = refused(&v, &key.sign(&idp.claims()), "jwks_unavailable").await;
        assert!(err.to_string().contains("connect:"), "{err}");
    }

    #[test]
    fn config_is_checked() {
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let ok = OidcConfig::new("https://idp.example/realms/x", vec!["a".into()]);
        assert!(Validator::new(ok.clone(), tls.clone()).is_ok());
        let bad = [
            OidcConfig {
                issuer: "http://idp.example/realms/x".into(),
                ..ok.clone()
            },
            OidcConfig {
                issuer: "https://user:pw@idp.example/".into(),
                ..ok.clone()
            },
            OidcConfig {
                issuer: "idp.example".into(),
                ..ok.clone()
            },
            OidcConfig {
                audiences: vec![],
                ..ok.clone()
            },
            OidcConfig {
                user_claim: String::new(),
                ..ok.clone()
            },
            OidcConfig {
                leeway: Duration::from_secs(3600),
                ..ok.clone()
            },
        ];
        for cfg in bad {
            let err = Validator::new(cfg.clone(), tls.clone())
                .err()
                .expect("refused");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn error_codes_are_stable() {
        let s = String::new;
        let codes: Vec<&str> = [
            TokenError::Malformed(s()),
            TokenError::AlgorithmNotAllowed(s()),
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::UnknownKey(s()),
            TokenError::MissingClaim(s()),
            TokenError::JwksUnavailable(s()),
        ]
        .iter()
        .map(TokenError::code)
        .collect();
        assert_eq!(
            codes,
            [
                "malformed_token",
                "algorithm_not_allowed",
                "bad_signature",
                "token_expired",
                "token_not_yet_valid",
                "wrong_issuer",
                "wrong_audience",
                "unknown_key",
                "missing_claim",
                "jwks_unavailable"
            ]
        );
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64(b"hello"), "aGVsbG8");
        assert_eq!(b64(b""), "");
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0xfb, 0xff, 0xfe]] {
            assert_eq!(b64url_decode(&b64(data)).as_deref(), Some(data));
        }
        assert_eq!(b64(&[0xfb, 0xff]), "-_8");
        for bad in ["aGVsbG9", "aGVsbG8=", "a", "aG+s", "aG/s", "aG s"] {
            assert_eq!(b64url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn jwks_keeps_only_usable_signature_keys() {
        let good = TestKey::es256("good");
        let ed = TestKey::ed25519("ed");
        let body = json!({"keys": [
            {"kty": "OKP", "crv": "X25519", "kid": "dh", "x": b64(&[9; 32])},
            {"kty": "oct", "kid": "sym", "k": b64(b"secret")},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": b64(&[1; 66]), "y": b64(&[2; 66])},
            {"kty": "RSA", "use": "enc", "kid": "enc", "alg": "RSA-OAEP",
             "n": b64(&[0xc5; 256]), "e": "AQAB"},
            {"kty": "whatever"},
            good.jwk,
            ed.jwk,
        ]});
        let set = parse_jwks(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["good", "ed"]);
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn validator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Validator>();
        check::<Arc<Validator>>();
    }
}
