//! Policy files: parse, validate, and point at the exact place of every error.
use super::time_window::TimeWindow;
use super::{
    Action, Credential, Destination, Effects, InboundRule, Placement, Policy, Rule, Scheme, TlsMode,
};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// An error in a policy file, located as file:line:col (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    rule: Vec<Spanned<RuleDoc>>,
    #[serde(default)]
    credential: BTreeMap<String, Spanned<CredentialDoc>>,
    #[serde(default)]
    mask: BTreeMap<String, Spanned<MaskDoc>>,
    #[serde(default)]
    inbound: Vec<Spanned<InboundDoc>>,
}

/// `[[inbound]]`: connections a workload may accept. Nothing comes in
/// without one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboundDoc {
    id: Spanned<String>,
    workload: Spanned<OneOrMany>,
    port: Spanned<PortOrPorts>,
    /// Peer networks (CIDR or address), e.g. "10.0.0.0/8", "::1".
    peer: Spanned<OneOrMany>,
    /// Only "tcp" (the default): inbound datagrams are never let in by rule.
    proto: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortOrPorts {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskDoc {
    /// Built-in detector names, or ["all"].
    #[serde(default)]
    detectors: Vec<String>,
    /// detector → "redact" | "last4" | "hash"
    #[serde(default)]
    replace: BTreeMap<String, String>,
    /// name → regex (at most 8 KiB per match, not across lines)
    #[serde(default)]
    custom: BTreeMap<String, String>,
    #[serde(default)]
    json_paths: Vec<String>,
    /// JSON pointers of SSE fields that stream text deltas.
    #[serde(default)]
    sse_text_paths: Vec<String>,
    /// Media ranges a masked response may be; others are refused.
    #[serde(default)]
    content_types: Vec<String>,
    max_inspect: Option<Size>,
    on_uninspectable: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    id: Spanned<String>,
    workload: Option<Spanned<OneOrMany>>,
    destination: Option<Spanned<OneOrMany>>,
    /// "https": only requests inside intercepted TLS; "http": cleartext only.
    scheme: Option<Spanned<String>>,
    time: Option<Spanned<TimeDoc>>,
    host: Option<Spanned<OneOrMany>>,
    method: Option<Spanned<OneOrMany>>,
    path: Option<Spanned<OneOrMany>>,
    path_regex: Option<Spanned<String>>,
    /// Regexes over the request body; any match matches.
    body_regex: Option<Spanned<OneOrMany>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    user: Option<Spanned<OneOrMany>>,
    groups: Option<Spanned<OneOrMany>>,
    action: Spanned<String>,
    reason: Option<String>,
    inject: Option<Spanned<String>>,
    mask: Option<Spanned<String>>,
    #[serde(default)]
    mask_request: Option<Spanned<bool>>,
    max_body: Option<Spanned<Size>>,
    #[serde(default)]
    require_user: bool,
    tls: Option<Spanned<String>>,
    /// With action = "approve": how long to wait ("5m", default 5 minutes).
    approval_timeout: Option<Spanned<String>>,
    /// With action = "approve": reuse an approval this long ("30m").
    approval_window: Option<Spanned<String>>,
    /// "request" (default: same method and target) or "rule" (any request
    /// under the rule); always the same workload, uid and user.
    approval_window_scope: Option<Spanned<String>>,
    /// Protocols a request may upgrade to: only "websocket".
    upgrade: Option<Spanned<OneOrMany>>,
    /// Path forms servers read differently that this rule still accepts:
    /// "encoded_slash", "parameters", "non_ascii".
    non_canonical: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeDoc {
    days: Option<Vec<String>>,
    from: String,
    to: String,
    tz: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialDoc {
    source: String,
    header: Option<String>,
    format: Option<String>,
    basic_user: Option<String>,
    query: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A TOML reader's message in the policy's words: no serde type names
/// ("untagged enum OneOrMany"), and a near miss named.
fn plain(message: &str) -> String {
    const PLAIN: [(&str, &str); 3] = [
        (
            "untagged enum OneOrMany",
            "expected a string or a list of strings",
        ),
        (
            "untagged enum PortOrPorts",
            "expected a port number or a list of port numbers",
        ),
        (
            "untagged enum Size",
            "expected a size: a number of bytes, or a string such as \"10MiB\"",
        ),
    ];
    if let Some((_, said)) = PLAIN.iter().find(|(jargon, _)| message.contains(jargon)) {
        return said.to_string();
    }
    // "unknown field `methdo`, expected one of `id`, `method`, ..."
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once("`, expected one of ")
    {
        let names: Vec<&str> = expected.split(", ").map(|n| n.trim_matches('`')).collect();
        return format!(
            "unknown key `{field}`{}; the keys here are {}",
            did_you_mean(field, &names),
            names.join(", ")
        );
    }
    message.to_string()
}

/// " (did you mean `x`?)" for the name nearest to `given`, if one is near.
pub fn did_you_mean(given: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(given, n), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}

/// Bytes as an integer or a string with a unit ("10MB", "512KiB").
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => crate::units::size(t),
        }
    }
}

/// Byte offset → (line, col), both 1-based.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub fn load_dir(dir: &Path) -> Result<Policy, Vec<PolicyError>> {
    let err = |message: String| PolicyError {
        file: dir.to_path_buf(),
        line: 0,
        col: 0,
        message,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| vec![err(format!("cannot read the policy directory: {e}"))])?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut policy = Policy {
        files: files.clone(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    // inject and mask references, checked once every file is read.
    let mut injects: Vec<(String, PolicyError)> = Vec::new();
    let mut masks: Vec<(String, PolicyError)> = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let mut p = Parser {
                    file: f,
                    text: &text,
                    errors: &mut errors,
                };
                p.file_doc(&mut policy, &mut seen, &mut injects, &mut masks);
            }
            Err(e) => errors.push(PolicyError {
                file: f.clone(),
                line: 0,
                col: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    for (name, mut at) in injects {
        if !policy.credentials.contains_key(&name) {
            at.message =
                format!("inject: no credential named {name:?} is defined ([credential.{name}])");
            errors.push(at);
        }
    }
    // A misspelt profile would send responses out unmasked: an error, as
    // for credentials.
    for (name, mut at) in masks {
        if !policy.masks.contains_key(&name) {
            at.message =
                format!("mask: no masking profile named {name:?} is defined ([mask.{name}])");
            errors.push(at);
        }
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<PolicyError>,
}

impl Parser<'_> {
    fn err_at(&self, offset: usize, message: String) -> PolicyError {
        let (line, col) = line_col(self.text, offset);
        PolicyError {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        }
    }

    fn push(&mut self, offset: usize, message: String) {
        let e = self.err_at(offset, message);
        self.errors.push(e);
    }

    fn file_doc(
        &mut self,
        policy: &mut Policy,
        seen: &mut HashMap<String, String>,
        injects: &mut Vec<(String, PolicyError)>,
        masks: &mut Vec<(String, PolicyError)>,
    ) {
        let doc: FileDoc = match toml::from_str(self.text) {
            Ok(d) => d,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let mut message = plain(e.message());
                // Say which key: the value's own line names it.
                let line_start = self.text[..offset.min(self.text.len())]
                    .rfind('\n')
                    .map_or(0, |i| i + 1);
                let line = self.text[line_start..].lines().next().unwrap_or("");
                if message.starts_with("expected")
                    && let Some((key, _)) = line.split_once('=')
                {
                    message = format!("`{}`: {message}", key.trim());
                }
                self.push(offset, message);
                return;
            }
        };
        for (name, c) in doc.credential {
            let start = c.span().start;
            match credential(&name, c.into_inner()) {
                Ok(cred) => {
                    if policy.credentials.insert(name.clone(), cred).is_some() {
                        self.push(start, format!("credential {name:?} is defined twice"));
                    }
                }
                Err(m) => self.push(start, format!("credential {name:?}: {m}")),
            }
        }
        for (name, m) in doc.mask {
            let start = m.span().start;
            match mask_profile(&name, m.into_inner()) {
                Ok(p) => {
                    if policy
                        .masks
                        .insert(name.clone(), std::sync::Arc::new(p))
                        .is_some()
                    {
                        self.push(start, format!("masking profile {name:?} is defined twice"));
                    }
                }
                Err(e) => self.push(start, format!("mask {name:?}: {e}")),
            }
        }
        for spanned in doc.inbound {
            let start = spanned.span().start;
            let (line, _) = line_col(self.text, start);
            let origin = format!("{}:{line}", self.file.display());
            if let Some(r) = self.inbound(spanned.into_inner(), origin.clone(), seen) {
                if policy.inbound.len() == super::MAX_INBOUND_RULES {
                    self.push(
                        start,
                        format!("at most {} [[inbound]] rules", super::MAX_INBOUND_RULES),
                    );
                } else {
                    policy.inbound.push(r);
                }
            }
        }
        for spanned in doc.rule {
            let (line, _) = line_col(self.text, spanned.span().start);
            let origin = format!("{}:{line}", self.file.display());
            if let Some(rule) =
                self.rule(spanned.into_inner(), origin.clone(), seen, injects, masks)
            {
                policy.rules.push(rule);
            }
        }
    }

    fn rule(
        &mut self,
        r: RuleDoc,
        origin: String,
        seen: &mut HashMap<String, String>,
        injects: &mut Vec<(String, PolicyError)>,
        masks: &mut Vec<(String, PolicyError)>,
    ) -> Option<Rule> {
        let before = self.errors.len();
        let id = r.id.get_ref().trim().to_string();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.push(
                r.id.span().start,
                format!("rule id {id:?} must be non-empty letters, digits, '-', '_' or '.'"),
            );
        } else if let Some(prev) = seen.insert(id.clone(), origin.clone()) {
            self.push(
                r.id.span().start,
                format!("duplicate rule id {id:?} (first defined at {prev})"),
            );
        }
        let action = match r.action.get_ref().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "approve" => Action::Approve,
            other => {
                self.push(
                    r.action.span().start,
                    format!(
                        "unknown action {other:?}; expected \"allow\", \"deny\" or \"approve\""
                    ),
                );
                Action::Deny
            }
        };
        // A pattern without '/' is also a unit name: "billing.service"
        // matches skills.slice/billing.service wherever the unit lives.
        let workloads = self.globs(&r.workload, "workload", true, false, |p| {
            let p = p.trim_start_matches('/');
            if p.contains('/') {
                vec![p.to_string()]
            } else {
                vec![p.to_string(), format!("**/{p}")]
            }
        });
        let destinations = r.destination.as_ref().map(|d| {
            d.get_ref()
                .items()
                .into_iter()
                .filter_map(|s| match Destination::parse(s) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        self.push(d.span().start, format!("destination: {e}"));
                        None
                    }
                })
                .collect()
        });
        let scheme = match r
            .scheme
            .as_ref()
            .map(|s| (s.span().start, s.get_ref().as_str()))
        {
            None => None,
            Some((_, "https")) => Some(Scheme::Https),
            Some((_, "http")) => Some(Scheme::Http),
            Some((at, other)) => {
                self.push(
                    at,
                    format!("unknown scheme {other:?}; expected \"https\" or \"http\""),
                );
                None
            }
        };
        let time = r.time.as_ref().and_then(|t| {
            let doc = t.get_ref();
            TimeWindow::parse(doc.days.as_deref(), &doc.from, &doc.to, doc.tz.as_deref())
                .map_err(|e| self.push(t.span().start, format!("time: {e}")))
                .ok()
        });
        let hosts = self.globs(&r.host, "host", true, false, |p| {
            vec![p.to_ascii_lowercase()]
        });
        let methods = r.method.as_ref().map(|m| {
            m.get_ref()
                .items()
                .into_iter()
                .map(|x| {
                    if !x.chars().all(|c| c.is_ascii_alphabetic()) {
                        self.push(
                            m.span().start,
                            format!("method {x:?} is not an HTTP method"),
                        );
                    }
                    x.to_ascii_uppercase()
                })
                .collect()
        });
        // Paths are matched in their canonical form (proxy/canonical.rs).
        // `/admin/**` also matches `/admin` itself: a deny rule written
        // that way must not leave the bare prefix open.
        // Paths are matched in their canonical form (proxy/canonical.rs),
        // without regard to case and to a trailing slash: servers differ on
        // both (`/ADMIN` is `/admin` to some, `/sql/` is `/sql` to others),
        // and a guard must hold on every one of them. `/admin/**` also
        // matches `/admin` itself: a deny rule written that way must not
        // leave the bare prefix open.
        let paths = self.globs(&r.path, "path", true, true, |p| {
            match p.strip_suffix("/**") {
                Some("") => vec![p.to_string()],
                Some(base) => vec![base.to_string(), p.to_string()],
                None if p.ends_with('/') || p.ends_with('*') => vec![p.to_string()],
                None => vec![p.to_string(), format!("{p}/")],
            }
        });
        let path_regex = r.path_regex.as_ref().and_then(|p| {
            regex::RegexBuilder::new(p.get_ref())
                .case_insensitive(true)
                .build()
                .map_err(|e| self.push(p.span().start, format!("path_regex: {e}")))
                .ok()
        });
        let body_regex = r.body_regex.as_ref().and_then(|b| {
            regex::bytes::RegexSetBuilder::new(b.get_ref().items())
                .size_limit(1 << 20)
                .build()
                .map_err(|e| self.push(b.span().start, format!("body_regex: {e}")))
                .ok()
        });
        let mut headers = Vec::new();
        if let Some(h) = &r.headers {
            for (name, value) in h.get_ref() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.push(
                        h.span().start,
                        format!("headers: {name:?} is not a header name"),
                    );
                    continue;
                }
                match Glob::new(value) {
                    Ok(g) => headers.push((name.to_ascii_lowercase(), g.compile_matcher())),
                    Err(e) => self.push(h.span().start, format!("headers.{name}: {e}")),
                }
            }
        }
        let users = self.globs(&r.user, "user", false, false, |p| vec![p.to_string()]);
        let groups = r
            .groups
            .as_ref()
            .map(|g| g.get_ref().items().into_iter().map(String::from).collect());
        let max_body = r.max_body.as_ref().and_then(|m| {
            m.get_ref()
                .bytes()
                .map_err(|e| self.push(m.span().start, format!("max_body: {e}")))
                .ok()
        });
        let tls = match r
            .tls
            .as_ref()
            .map(|t| (t.span().start, t.get_ref().as_str()))
        {
            None | Some((_, "intercept")) => TlsMode::Intercept,
            Some((_, "passthrough")) => TlsMode::Passthrough,
            Some((at, other)) => {
                self.push(
                    at,
                    format!(
                        "unknown tls mode {other:?}; expected \"intercept\" or \"passthrough\""
                    ),
                );
                TlsMode::Intercept
            }
        };
        if let Some(i) = &r.inject {
            if action == Action::Deny {
                self.push(
                    i.span().start,
                    "inject only applies to allow and approve rules".into(),
                );
            }
            injects.push((
                i.get_ref().clone(),
                self.err_at(i.span().start, String::new()),
            ));
        }
        if let Some(m) = &r.mask {
            if action == Action::Deny {
                self.push(
                    m.span().start,
                    "mask only applies to allow and approve rules".into(),
                );
            }
            masks.push((
                m.get_ref().clone(),
                self.err_at(m.span().start, String::new()),
            ));
        }
        let duration = |f: &Option<Spanned<String>>, name: &str, this: &mut Self| {
            f.as_ref().and_then(|d| {
                parse_duration(d.get_ref())
                    .map_err(|e| this.push(d.span().start, format!("{name}: {e}")))
                    .ok()
            })
        };
        let timeout = duration(&r.approval_timeout, "approval_timeout", self);
        let window = duration(&r.approval_window, "approval_window", self);
        use crate::approval::WindowScope;
        let window_scope = match r
            .approval_window_scope
            .as_ref()
            .map(|s| (s.span().start, s.get_ref().as_str()))
        {
            None | Some((_, "request")) => WindowScope::Request,
            Some((_, "rule")) => WindowScope::Rule,
            Some((at, other)) => {
                self.push(
                    at,
                    format!(
                        "approval_window_scope {other:?}: expected \"request\" (same method and \
                         path) or \"rule\" (any request under the rule)"
                    ),
                );
                WindowScope::Request
            }
        };
        let approval = match action {
            Action::Approve => Some(crate::policy::ApprovalSpec {
                timeout: timeout.unwrap_or(std::time::Duration::from_secs(300)),
                window,
                window_scope,
            }),
            _ => {
                if let Some(f) = r
                    .approval_timeout
                    .as_ref()
                    .or(r.approval_window.as_ref())
                    .or(r.approval_window_scope.as_ref())
                {
                    self.push(
                        f.span().start,
                        "approval_timeout, approval_window and approval_window_scope need \
                         action = \"approve\""
                            .into(),
                    );
                }
                None
            }
        };
        let mut websocket = false;
        if let Some(u) = &r.upgrade {
            for p in u.get_ref().items() {
                if p.eq_ignore_ascii_case("websocket") {
                    websocket = true;
                } else {
                    self.push(
                        u.span().start,
                        format!(
                            "upgrade {p:?}: only \"websocket\" can be allowed (its frames are \
                             parsed and masked; h2c and other protocols would pass uninspected)"
                        ),
                    );
                }
            }
            if action == Action::Deny {
                self.push(
                    u.span().start,
                    "upgrade only applies to allow and approve rules".into(),
                );
            }
        }
        let mut non_canonical = super::PathForms::default();
        if let Some(n) = &r.non_canonical {
            for f in n.get_ref().items() {
                match f {
                    "encoded_slash" => non_canonical.encoded_slash = true,
                    "parameters" => non_canonical.parameters = true,
                    "non_ascii" => non_canonical.non_ascii = true,
                    other => self.push(
                        n.span().start,
                        format!(
                            "non_canonical {other:?}: expected \"encoded_slash\", \"parameters\" \
                             or \"non_ascii\" (backslashes, control characters and bad escapes \
                             are always refused)"
                        ),
                    ),
                }
            }
            if action == Action::Deny {
                self.push(
                    n.span().start,
                    "non_canonical only applies to allow and approve rules (a deny rule \
                     matches every form already)"
                        .into(),
                );
            }
        }
        let inject_at = r.inject.as_ref().map(|i| i.span().start);
        let tls_at = r.tls.as_ref().map(|t| t.span().start);
        let rule = Rule {
            id,
            origin,
            workloads,
            destinations,
            scheme,
            time,
            hosts,
            methods,
            paths,
            path_regex,
            body_regex,
            headers,
            users,
            groups,
            action,
            reason: r.reason,
            effects: Effects {
                inject: r.inject.map(|i| i.into_inner()),
                mask_request: match &r.mask_request {
                    Some(m) if *m.get_ref() && r.mask.is_none() => {
                        self.push(
                            m.span().start,
                            "mask_request needs a mask profile (mask = \"NAME\")".into(),
                        );
                        false
                    }
                    Some(m) => *m.get_ref(),
                    None => false,
                },
                mask: r.mask.map(|m| m.into_inner()),
                max_body,
                require_user: r.require_user,
                tls,
                approval,
                websocket,
                non_canonical,
            },
        };
        if rule.effects.tls == TlsMode::Passthrough && rule.needs_request() {
            let at = r.tls.as_ref().map_or(0, |t| t.span().start);
            self.push(
                at,
                "tls = \"passthrough\" is not decrypted: method, path, headers, user, groups, \
                 inject, max_body and require_user cannot apply"
                    .into(),
            );
        }
        self.check_peers(&rule, inject_at, tls_at);
        (self.errors.len() == before).then_some(rule)
    }

    /// A credential goes only to an upstream the proxy authenticates (TLS
    /// verified for the host) or to addresses the rule pins; a passthrough
    /// tunnel only to pinned addresses. Otherwise a skill names the allowed
    /// host in cleartext, or as its SNI, towards a listener of its choosing.
    fn check_peers(&mut self, rule: &Rule, inject_at: Option<usize>, tls_at: Option<usize>) {
        let pinned = rule.pins_destination();
        if let (Some(at), Some(cred)) = (inject_at, &rule.effects.inject)
            && !pinned
            && rule.scheme != Some(Scheme::Https)
        {
            self.push(
                at,
                format!(
                    "rule {:?} injects credential {:?} but could match cleartext HTTP sent to \
                     any address (a listener of the skill's choosing can claim any Host): add \
                     scheme = \"https\" (the credential then only goes to an upstream whose TLS \
                     certificate is verified for the host), or pin destination = [\"IP:PORT\"]",
                    rule.id, cred
                ),
            );
        }
        if rule.effects.tls == TlsMode::Passthrough
            && !pinned
            && let Some(at) = tls_at
        {
            self.push(
                at,
                format!(
                    "rule {:?}: tls = \"passthrough\" is matched only by the server name the client \
                     chose and opens an uninspected tunnel to whatever address it connected to: \
                     pin destination = [\"IP:PORT\"]",
                    rule.id
                ),
            );
        }
    }

    /// Glob patterns; `literal_separator`: `*` stays within one `/` segment.
    fn inbound(
        &mut self,
        r: InboundDoc,
        origin: String,
        seen: &mut HashMap<String, String>,
    ) -> Option<InboundRule> {
        let before = self.errors.len();
        let id = r.id.get_ref().trim().to_string();
        if let Some(prev) = seen.insert(id.clone(), origin.clone()) {
            self.push(
                r.id.span().start,
                format!("duplicate rule id {id:?} (first defined at {prev})"),
            );
        }
        if let Some(p) = &r.proto
            && p.get_ref() != "tcp"
        {
            self.push(
                p.span().start,
                format!(
                    "inbound proto {:?}: only \"tcp\" can be allowed in",
                    p.get_ref()
                ),
            );
        }
        let workload = Some(r.workload);
        let workloads = self.globs(&workload, "workload", true, false, |p| {
            let p = p.trim_start_matches('/');
            if p.contains('/') {
                vec![p.to_string()]
            } else {
                vec![p.to_string(), format!("**/{p}")]
            }
        });
        let ports = match r.port.get_ref() {
            PortOrPorts::One(p) => vec![*p],
            PortOrPorts::Many(v) => v.clone(),
        };
        if ports.is_empty() || ports.contains(&0) {
            self.push(r.port.span().start, "inbound port must be 1..65535".into());
        }
        let mut peers = Vec::new();
        for item in r.peer.get_ref().items() {
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => peers.push(n.trunc()),
                Err(_) => self.push(
                    r.peer.span().start,
                    format!("inbound peer {item:?} is not an address or CIDR"),
                ),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Some(InboundRule {
            id,
            origin,
            workloads: workloads?,
            ports,
            peers,
        })
    }

    /// `norm` turns one pattern as written into the globs it stands for.
    fn globs(
        &mut self,
        field: &Option<Spanned<OneOrMany>>,
        name: &str,
        literal_separator: bool,
        case_insensitive: bool,
        norm: impl Fn(&str) -> Vec<String>,
    ) -> Option<GlobSet> {
        let f = field.as_ref()?;
        let mut b = GlobSetBuilder::new();
        for pat in f.get_ref().items() {
            for g in norm(pat) {
                match GlobBuilder::new(&g)
                    .literal_separator(literal_separator)
                    .case_insensitive(case_insensitive)
                    .build()
                {
                    Ok(g) => {
                        b.add(g);
                    }
                    Err(e) => {
                        self.push(f.span().start, format!("{name} pattern {pat:?}: {e}"));
                        break;
                    }
                }
            }
        }
        b.build()
            .map_err(|e| self.push(f.span().start, format!("{name} patterns: {e}")))
            .ok()
    }
}

/// "90s", "5m", "2h", "1d" (units.rs).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::units::duration(s)
}

fn mask_profile(name: &str, m: MaskDoc) -> Result<crate::masking::Profile, String> {
    use crate::masking::{JsonPath, Replace, Uninspectable, detectors};
    let mut list = Vec::new();
    for d in &m.detectors {
        if d == "all" {
            list.extend(
                detectors::builtin_names().map(|n| detectors::builtin(n).expect("built-in")),
            );
            continue;
        }
        list.push(detectors::builtin(d).ok_or_else(|| {
            let names: Vec<&str> = detectors::builtin_names().collect();
            format!(
                "unknown detector {d:?}{}; built-in: all, {}",
                did_you_mean(d, &names),
                names.join(", ")
            )
        })?);
    }
    for (n, pattern) in &m.custom {
        list.push(detectors::Detector::custom(n, pattern)?);
    }
    let mut replace = BTreeMap::new();
    for (d, r) in &m.replace {
        if !list.iter().any(|x| &x.name == d) {
            return Err(format!("replace.{d}: no such detector in this profile"));
        }
        replace.insert(d.clone(), Replace::parse(r)?);
    }
    let json_paths = m
        .json_paths
        .iter()
        .map(|p| JsonPath::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let max_inspect = m
        .max_inspect
        .as_ref()
        .map(|s| s.bytes())
        .transpose()?
        .unwrap_or(10 << 20);
    let on_uninspectable = match m.on_uninspectable.as_deref() {
        None | Some("block") => Uninspectable::Block,
        Some("pass") => Uninspectable::Pass,
        Some(o) => {
            return Err(format!(
                "on_uninspectable {o:?}: expected \"block\" or \"pass\""
            ));
        }
    };
    if list.is_empty() && json_paths.is_empty() {
        return Err("names no detectors and no json_paths".into());
    }
    crate::masking::Profile::new(
        name,
        list,
        replace,
        json_paths,
        max_inspect,
        on_uninspectable,
    )?
    .with_sse_text_paths(&m.sse_text_paths)?
    .with_content_types(&m.content_types)
}

fn credential(name: &str, c: CredentialDoc) -> Result<Credential, String> {
    if !name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        return Err("names are letters, digits, '-', '_' or '.'".into());
    }
    let (kind, rest) = c
        .source
        .split_once(':')
        .ok_or("source must be file:NAME, systemd:NAME or env:VAR")?;
    if !matches!(kind, "file" | "systemd" | "env") || rest.is_empty() {
        return Err(format!(
            "source {:?} must be file:NAME, systemd:NAME or env:VAR",
            c.source
        ));
    }
    let placement = match (c.header, c.basic_user, c.query) {
        (Some(h), None, None) => {
            let name = http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("{h:?} is not a header name"))?;
            let format = c.format.unwrap_or_else(|| "{secret}".into());
            if !format.contains("{secret}") {
                return Err("format must contain {secret}".into());
            }
            Placement::Header { name, format }
        }
        (None, Some(user), None) => Placement::Basic { user },
        (None, None, Some(param)) => Placement::Query { param },
        _ => {
            return Err(
                "give exactly one of header (with optional format), basic_user or query".into(),
            );
        }
    };
    Ok(Credential {
        name: name.to_string(),
        source: c.source,
        placement,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::tempdir;
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let dir = tempdir();
        std::fs::write(dir.join("p.toml"), text).unwrap();
        let e = load_dir(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        e.iter()
            .map(|e| e.to_string().split_once("/p.toml:").unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn a_bad_body_regex_is_an_error_at_its_line() {
        let e = errors("[[rule]]\nid = \"a\"\naction = \"deny\"\nbody_regex = ['(unclosed']\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("4:") && e[0].contains("body_regex"),
            "{e:?}"
        );
    }

    /// Errors in the policy's words: the key, what it takes, a near miss
    /// named; no serde type names (issue 14).
    #[test]
    fn errors_name_the_key_and_a_near_miss() {
        let e = errors("[[rule]]\nid = \"a\"\nmethod = 5\naction = \"allow\"\n");
        assert_eq!(
            e,
            ["3:10: `method`: expected a string or a list of strings"]
        );
        let e = errors("[[rule]]\nid = \"a\"\nmethdo = \"GET\"\naction = \"allow\"\n");
        assert!(
            e[0].starts_with("3:1: unknown key `methdo` (did you mean `method`?)"),
            "{e:?}"
        );
        let e = errors("[mask.p]\ndetectors = [\"crad\"]\n");
        assert!(
            e[0].contains("unknown detector \"crad\" (did you mean `card`?)"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .all(|m| !m.contains("untagged") && !m.contains("enum")),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\nx");
        assert!(e[0].starts_with("3:"), "{e:?}");
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let e = errors("[[rule]]\nid = \"a\"\naction = \"alow\"\n");
        assert!(e[0].starts_with("3:10: unknown action"), "{e:?}");
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\ndestination = [\"nope.example:1\"]\n",
        );
        assert!(e[0].starts_with("4:15: destination"), "{e:?}");
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\n[[rule]]\nid = \"a\"\naction = \"deny\"\n",
        );
        assert!(e[0].starts_with("5:6: duplicate rule id"), "{e:?}");
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\"\nmethods = \"GET\"\n");
        assert!(
            e[0].contains("unknown key `methods` (did you mean `method`?)"),
            "{e:?}"
        );
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\nscheme = \"https\"\ninject = \"gh\"\n",
        );
        assert!(
            e[0].starts_with("5:10: inject: no credential named \"gh\""),
            "{e:?}"
        );
        let e = errors(
            "[mask.pii]\ndetectors = [\"all\"]\n[[rule]]\nid = \"a\"\naction = \"allow\"\nmask = \"pi\"\n",
        );
        assert!(
            e[0].starts_with("6:8: mask: no masking profile named \"pi\""),
            "{e:?}"
        );
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\"\nscheme = \"ftp\"\n");
        assert!(e[0].starts_with("4:10: unknown scheme"), "{e:?}");
        let e = errors("[[rule]]\nid = \"a\"\naction = \"allow\"\nmax_body = \"10 parsecs\"\n");
        assert!(e[0].contains("max_body"), "{e:?}");
        let e = errors(
            "[[rule]]\nid = \"a\"\naction = \"allow\"\ntls = \"passthrough\"\nmethod = \"GET\"\n",
        );
        assert!(
            e[0].starts_with("4:7: tls = \"passthrough\" is not decrypted"),
            "{e:?}"
        );
        let e = errors("[credential.gh]\nsource = \"vault:x\"\nheader = \"Authorization\"\n");
        assert!(e[0].contains("credential \"gh\": source"), "{e:?}");
        let e = errors(
            "[credential.gh]\nsource = \"file:gh\"\nheader = \"Authorization\"\nformat = \"Bearer\"\n",
        );
        assert!(e[0].contains("{secret}"), "{e:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::Text("10MiB".into()).bytes().unwrap(), 10 << 20);
        assert_eq!(Size::Text("64KB".into()).bytes().unwrap(), 64_000);
        assert_eq!(Size::Bytes(5).bytes().unwrap(), 5);
        assert!(Size::Text("MB".into()).bytes().is_err());
    }
}
