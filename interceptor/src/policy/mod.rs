//! Policy: ordered rules from `*.toml` files, first match wins, default deny.
//!
//! A connection is decided in stages, with what is known at each: the
//! workload and original destination when it is accepted; the TLS server
//! name once the ClientHello is read; the HTTP request (host, method, path,
//! headers, user) once it arrives. A rule that needs more than the current
//! stage knows makes the proxy read on ("needs inspection"); a rule that is
//! satisfied decides. Rules that match on nothing but workload, destination
//! and time decide the whole connection without looking into it.
mod body_forms;
mod destination;
mod file;
mod time_window;

pub use body_forms::InspectedBody;
pub use destination::Destination;
pub use file::PolicyError;

use crate::identity::oidc::User;
use globset::GlobSet;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use time_window::TimeWindow;

/// What a rule decides; a record not yet decided says `Deny` (fail closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    #[default]
    Deny,
    /// Hold the request until a human approves or denies it.
    Approve,
}

/// How a rule with `action = "approve"` waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// Unanswered this long: denied.
    pub timeout: std::time::Duration,
    /// An approval also lets the same request through for this long
    /// without asking again (if set; the approver may give another).
    pub window: Option<std::time::Duration>,
    /// What that window covers (`approval_window_scope`).
    pub window_scope: crate::approval::WindowScope,
}

/// What to do with TLS to destinations an allow rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Terminate with a leaf of the local CA, inspect, re-encrypt upstream.
    #[default]
    Intercept,
    /// Forward the bytes untouched (pinned clients); only SNI and workload
    /// are known, and recorded.
    Passthrough,
}

/// `scheme`: whether a rule matches requests inside intercepted TLS (the
/// upstream's certificate is verified for the host) or in cleartext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Path forms servers read differently, which a rule may still accept
/// (`non_canonical = ["encoded_slash", "parameters", "non_ascii"]`) for an
/// API that needs them; refused everywhere else (proxy/canonical.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathForms {
    /// `%2F` inside a segment.
    pub encoded_slash: bool,
    /// `;` path parameters.
    pub parameters: bool,
    /// Escaped UTF-8 (`%C3%A9`).
    pub non_ascii: bool,
}

impl PathForms {
    pub fn all() -> PathForms {
        PathForms {
            encoded_slash: true,
            parameters: true,
            non_ascii: true,
        }
    }

    /// Whether every form in `used` is one of these.
    pub fn covers(&self, used: PathForms) -> bool {
        (self.encoded_slash || !used.encoded_slash)
            && (self.parameters || !used.parameters)
            && (self.non_ascii || !used.non_ascii)
    }
}

/// How a credential reaches the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `header: format` with `{secret}` replaced.
    Header {
        name: http::HeaderName,
        format: String,
    },
    /// `Authorization: Basic base64(user:secret)`.
    Basic { user: String },
    /// A query parameter.
    Query { param: String },
}

/// A credential the proxy injects; the secret itself lives in the
/// credential store, never in the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    /// `file:NAME|PATH`, `systemd:NAME` or `env:VAR`.
    pub source: String,
    pub placement: Placement,
}

#[derive(Debug)]
pub struct Rule {
    pub id: String,
    /// "file:line" where the rule starts.
    pub origin: String,
    workloads: Option<GlobSet>,
    destinations: Option<Vec<Destination>>,
    scheme: Option<Scheme>,
    time: Option<TimeWindow>,
    hosts: Option<GlobSet>,
    methods: Option<Vec<String>>,
    paths: Option<GlobSet>,
    path_regex: Option<regex::Regex>,
    /// Over the request body (read up to [`BODY_INSPECT_MAX`] first).
    body_regex: Option<regex::bytes::RegexSet>,
    /// Lower-case header name → value glob (all must match).
    headers: Vec<(String, globset::GlobMatcher)>,
    users: Option<GlobSet>,
    /// Any of these groups.
    groups: Option<Vec<String>>,
    pub action: Action,
    pub reason: Option<String>,
    pub effects: Effects,
}

/// What a rule does besides allowing or denying; its decision carries them
/// unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effects {
    /// The credential to inject.
    pub inject: Option<String>,
    /// A `[mask.NAME]` profile for the responses.
    pub mask: Option<String>,
    /// Mask the request body with the same profile.
    pub mask_request: bool,
    pub max_body: Option<u64>,
    pub require_user: bool,
    pub tls: TlsMode,
    pub approval: Option<ApprovalSpec>,
    /// `upgrade = ["websocket"]`: a WebSocket upgrade may go through (its
    /// frames are then parsed, recorded and masked). No other upgrade ever.
    pub websocket: bool,
    /// Non-canonical path forms this rule accepts.
    pub non_canonical: PathForms,
}

impl Default for Effects {
    fn default() -> Self {
        Effects {
            inject: None,
            mask: None,
            mask_request: false,
            max_body: None,
            require_user: false,
            tls: TlsMode::Intercept,
            approval: None,
            websocket: false,
            non_canonical: PathForms::default(),
        }
    }
}

/// One HTTP request as policy sees it.
pub struct RequestInfo<'a> {
    /// Lower-case, without port.
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    pub user: Option<&'a User>,
    /// The body, once read: rules with `body_regex` wait for it.
    pub body: Option<&'a InspectedBody>,
}

/// Request bodies a `body_regex` rule needs are read up to this size before
/// the decision; a larger one cannot be inspected and is refused.
pub const BODY_INSPECT_MAX: u64 = 1 << 20;

/// What is known about a connection at the current stage.
pub struct Subject<'a> {
    /// cgroup path relative to the cgroup2 mount.
    pub workload: &'a str,
    pub destination: SocketAddr,
    pub now: jiff::Timestamp,
    /// The TLS server name, once the ClientHello was read.
    pub sni: Option<&'a str>,
    pub request: Option<&'a RequestInfo<'a>>,
    /// Nothing more will be learnt (opaque TCP, or the request is known):
    /// rules needing more do not match.
    pub last_stage: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The rule that decided; `None` for the default deny.
    pub rule: Option<String>,
    pub reason: String,
    pub effects: Effects,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Decided(Decision),
    /// A rule that could match needs more than this stage knows.
    NeedsInspection,
}

#[derive(Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// `[[inbound]]`: what workloads may accept (nothing, without one).
    pub inbound: Vec<InboundRule>,
    pub credentials: BTreeMap<String, Credential>,
    pub masks: BTreeMap<String, std::sync::Arc<crate::masking::Profile>>,
    pub files: Vec<PathBuf>,
}

/// The kernel filter keeps inbound rules as bits of a u64.
pub const MAX_INBOUND_RULES: usize = 64;

/// An inbound rule: a workload may accept TCP connections on these local
/// ports from these peers. The kernel applies it; the daemon records every
/// accepted connection.
#[derive(Debug)]
pub struct InboundRule {
    pub id: String,
    pub origin: String,
    workloads: GlobSet,
    pub ports: Vec<u16>,
    pub peers: Vec<ipnet::IpNet>,
}

impl InboundRule {
    /// Whether the rule's workload patterns match this cgroup (relative to
    /// the cgroup2 mount).
    pub fn matches_workload(&self, cgroup: &str) -> bool {
        self.workloads.is_match(cgroup.trim_start_matches('/'))
    }
}

/// Three-valued match: a rule can also be undecidable at a stage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum M {
    Yes,
    No,
    Unknown,
}

impl M {
    fn of(b: bool) -> M {
        if b { M::Yes } else { M::No }
    }

    fn and(self, other: impl FnOnce() -> M) -> M {
        match self {
            M::No => M::No,
            M::Yes => other(),
            M::Unknown => match other() {
                M::No => M::No,
                _ => M::Unknown,
            },
        }
    }
}

impl Rule {
    /// Whether every destination names addresses: the rule then pins where
    /// its connections go, whatever host the client claims.
    pub fn pins_destination(&self) -> bool {
        self.destinations
            .as_ref()
            .is_some_and(|ds| !ds.is_empty() && ds.iter().all(Destination::pins_address))
    }

    /// True when the rule looks into requests (matchers or request-level
    /// effects); such rules never decide a connection before inspection.
    fn needs_request(&self) -> bool {
        self.methods.is_some()
            || self.paths.is_some()
            || self.path_regex.is_some()
            || self.body_regex.is_some()
            || !self.headers.is_empty()
            || self.users.is_some()
            || self.groups.is_some()
            || self.effects.inject.is_some()
            || self.effects.mask.is_some()
            || self.effects.max_body.is_some()
            || self.effects.require_user
            || self.effects.websocket
            || self.action == Action::Approve
    }

    fn eval(&self, s: &Subject) -> M {
        let l4 = M::of(
            self.workloads
                .as_ref()
                .is_none_or(|g| g.is_match(s.workload)),
        )
        .and(|| {
            M::of(
                self.destinations
                    .as_ref()
                    .is_none_or(|ds| ds.iter().any(|d| d.matches(s.destination))),
            )
        })
        .and(|| M::of(self.time.as_ref().is_none_or(|t| t.contains(s.now))))
        .and(|| match (self.scheme, s.sni, s.request) {
            (None, _, _) => M::Yes,
            // A server name is known only inside TLS.
            (Some(want), Some(_), _) => M::of(want == Scheme::Https),
            (Some(want), None, Some(_)) => M::of(want == Scheme::Http),
            (Some(_), None, None) => M::Unknown,
        });
        let host = || match &self.hosts {
            None => M::Yes,
            Some(g) => match (s.request, s.sni) {
                (Some(r), _) => M::of(g.is_match(r.host)),
                (None, Some(sni)) => M::of(g.is_match(sni)),
                (None, None) => M::Unknown,
            },
        };
        let request = || {
            if !self.needs_request() {
                return M::Yes;
            }
            let Some(r) = s.request else {
                return M::Unknown;
            };
            self.request_matches(r)
        };
        let m = l4.and(host).and(request);
        if m == M::Unknown && s.last_stage {
            M::No
        } else {
            m
        }
    }

    fn request_matches(&self, r: &RequestInfo) -> M {
        let body = || match (&self.body_regex, r.body) {
            (None, _) => M::Yes,
            (Some(_), None) => M::Unknown,
            // A guardrail (deny, approve) holds on every form a server may
            // decode the body into; an allow rule matches the bytes as sent.
            (Some(set), Some(b)) => M::of(match self.action {
                Action::Allow => set.is_match(&b.raw),
                _ => b.forms().any(|f| set.is_match(f)),
            }),
        };
        M::of(self.request_head_matches(r)).and(body)
    }

    fn request_head_matches(&self, r: &RequestInfo) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == r.method))
            && self.paths.as_ref().is_none_or(|g| g.is_match(r.path))
            && self
                .path_regex
                .as_ref()
                .is_none_or(|re| re.is_match(r.path))
            && self.headers.iter().all(|(name, glob)| {
                // A header sent several times: a rule that lets requests
                // through matches only if every value does (what goes
                // upstream is what matched); a deny rule if any does.
                let mut values = r.headers.get_all(name.as_str()).iter().peekable();
                let one = |v: &http::HeaderValue| v.to_str().is_ok_and(|v| glob.is_match(v));
                match self.action {
                    Action::Deny => values.any(one),
                    _ => values.peek().is_some() && values.all(one),
                }
            })
            && self
                .users
                .as_ref()
                .is_none_or(|g| r.user.is_some_and(|u| g.is_match(&u.name)))
            && self.groups.as_ref().is_none_or(|want| {
                r.user
                    .is_some_and(|u| u.groups.iter().any(|g| want.contains(g)))
            })
    }

    fn decision(&self) -> Decision {
        let reason = self.reason.clone().unwrap_or_else(|| match self.action {
            Action::Allow => format!("allowed by rule {}", self.id),
            Action::Deny => format!("denied by rule {}", self.id),
            Action::Approve => format!("rule {} requires a human approval", self.id),
        });
        Decision {
            action: self.action,
            rule: Some(self.id.clone()),
            reason,
            effects: self.effects.clone(),
        }
    }
}

impl Decision {
    pub fn default_deny() -> Decision {
        Decision {
            action: Action::Deny,
            rule: None,
            reason: "no rule matched (default deny)".into(),
            effects: Effects::default(),
        }
    }

    pub fn deny(reason: String) -> Decision {
        Decision {
            reason,
            ..Decision::default_deny()
        }
    }
}

impl Policy {
    /// Loads every `*.toml` in `dir`, in file name order. All errors are
    /// reported, each with file:line:col.
    pub fn load_dir(dir: &Path) -> Result<Policy, Vec<PolicyError>> {
        file::load_dir(dir)
    }

    pub fn decide(&self, s: &Subject) -> Verdict {
        for r in &self.rules {
            match r.eval(s) {
                M::No => continue,
                M::Yes => return Verdict::Decided(r.decision()),
                M::Unknown => return Verdict::NeedsInspection,
            }
        }
        Verdict::Decided(Decision::default_deny())
    }

    /// The decision at the last stage (never "needs inspection").
    pub fn decide_final(&self, s: &Subject) -> Decision {
        debug_assert!(s.last_stage);
        match self.decide(s) {
            Verdict::Decided(d) => d,
            Verdict::NeedsInspection => Decision::default_deny(),
        }
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

#[cfg(test)]
mod tests;
