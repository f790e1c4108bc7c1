//! `interceptor policy explain`: what the policy decides for one request,
//! and which rule (file:line) decides it.
use crate::identity::oidc::User;
use crate::policy::{Policy, RequestInfo, Subject};
use anyhow::{Context, Result, bail};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Explain {
    /// Workload cgroup path (relative to the cgroup2 mount), e.g. skills.slice/billing.service
    #[arg(long)]
    workload: String,
    /// Request URL, e.g. https://api.github.com/repos/x/y
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The OIDC user name
    #[arg(long)]
    user: Option<String>,
    /// The user's groups, comma-separated
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Destination address the workload dialled [default: the URL's host when it is an IP]
    #[arg(long, value_name = "IP:PORT")]
    dst: Option<SocketAddr>,
    /// The request body, for rules with body_regex [default: empty]
    #[arg(long)]
    body: Option<String>,
    /// Evaluate at this time (RFC 3339) instead of now
    #[arg(long)]
    at: Option<String>,
    /// Policy directory [default: the configured one]
    #[arg(long, value_name = "DIR", env = "INTERCEPTOR_POLICIES")]
    policies: Option<PathBuf>,
    /// One JSON object instead of lines
    #[arg(long)]
    json: bool,
}

/// What `explain` found, printed as lines or as one JSON object.
struct Report {
    json: bool,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// A line `key: text` (padded as the others), and `key` in JSON.
    fn add(&mut self, key: &str, text: impl std::fmt::Display, value: serde_json::Value) {
        if !self.json {
            println!("{:<10}{text}", format!("{key}:"));
        }
        self.fields.insert(key.replace(' ', "_"), value);
    }

    /// The request is refused (a deny, or not canonical): exit 1.
    fn refused(mut self, why: String) -> Result<()> {
        self.fields.insert("decision".into(), "deny".into());
        self.fields.insert("reason".into(), why.clone().into());
        self.finish();
        Err(super::exit::found(why))
    }

    fn finish(self) {
        if self.json {
            println!("{}", serde_json::Value::Object(self.fields));
        }
    }
}

pub fn explain(e: Explain) -> Result<()> {
    let dir = match e.policies {
        Some(d) => d,
        None => super::config_or_default(None)?.policies,
    };
    let policy = Policy::load_dir(&dir).map_err(|errs| {
        anyhow::anyhow!(
            "invalid policy:\n  {}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    })?;
    let uri: http::Uri = e
        .url
        .parse()
        .with_context(|| format!("{:?} is not a URL", e.url))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("the URL must start with http:// or https://"),
    };
    let host = uri
        .host()
        .context("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let (destination, guessed) = match (e.dst, host.parse::<IpAddr>()) {
        (Some(d), _) => (d, false),
        (None, Ok(ip)) => (SocketAddr::new(ip, port), false),
        (None, Err(_)) => (SocketAddr::from(([0, 0, 0, 0], port)), true),
    };
    let now = match &e.at {
        Some(t) => t
            .parse()
            .with_context(|| format!("--at {t:?} is not RFC 3339"))?,
        None => jiff::Timestamp::now(),
    };
    let user = e.user.map(|name| User {
        subject: name.clone(),
        name,
        groups: e.groups.clone(),
    });
    let headers = http::HeaderMap::new();
    // The proxy decides on the canonical form: so does explain.
    let method = match crate::proxy::canonical::method(&e.method) {
        Ok(m) => m.to_string(),
        Err(why) => {
            let report = Report {
                json: e.json,
                fields: Default::default(),
            };
            return report.refused(format!(
                "the proxy refuses this request (400 non_canonical_request): {why}"
            ));
        }
    };
    use crate::proxy::canonical;
    let mut report = Report {
        json: e.json,
        fields: Default::default(),
    };
    let refused = |why: &dyn std::fmt::Display| {
        format!("the proxy refuses this request (400 non_canonical_request): {why}")
    };
    // A form a rule may opt into is decided as forwarded and as the most
    // decoding server reads it; both must come to that rule (as the proxy).
    let (path, tolerated) = match canonical::path(uri.path()) {
        Ok(p) => (p, None),
        Err(why) if why.tolerable() => match canonical::tolerated(uri.path()) {
            Ok(t) => (t.forwarded.clone(), Some((why, t))),
            Err(_) => return report.refused(refused(&why)),
        },
        Err(why) => return report.refused(refused(&why)),
    };
    report.add(
        "request",
        format!("{method} {path} (canonical form, as decided and forwarded)"),
        format!("{method} {path}").into(),
    );
    let body = crate::policy::InspectedBody::new(e.body.clone().unwrap_or_default().into_bytes());
    let decide = |path: &str| {
        let request = RequestInfo {
            host: &host,
            method: &method,
            path,
            headers: &headers,
            user: user.as_ref(),
            body: Some(&body),
        };
        policy.decide_final(&Subject {
            workload: e.workload.trim_start_matches('/'),
            destination,
            now,
            sni: tls.then_some(host.as_str()),
            request: Some(&request),
            last_stage: true,
        })
    };
    let mut d = decide(&path);
    if let Some((why, t)) = &tolerated {
        report.add(
            "read as",
            format!(
                "{} (by a server that decodes %2F or strips ;parameters)",
                t.read_as
            ),
            t.read_as.clone().into(),
        );
        let other = decide(&t.read_as);
        if other.action == crate::policy::Action::Deny {
            d = other;
        } else if d.action == crate::policy::Action::Deny
            || other.rule != d.rule
            || !d.effects.non_canonical.covers(t.forms)
        {
            return report.refused(refused(&format!(
                "{why} (no rule accepts it with non_canonical = [...] under both readings)"
            )));
        }
    }
    let decision = format!("{:?}", d.action);
    report.add("decision", &decision, decision.to_lowercase().into());
    match &d.rule {
        Some(id) => {
            let origin = policy.rule(id).map(|r| r.origin.as_str()).unwrap_or("?");
            report.add("rule", format!("{id} ({origin})"), id.clone().into());
            report.fields.insert("origin".into(), origin.into());
        }
        None => report.add(
            "rule",
            "none matched (default deny)",
            serde_json::Value::Null,
        ),
    }
    report.add("reason", &d.reason, d.reason.clone().into());
    if let Some(c) = &d.effects.inject {
        report.add("inject", format!("credential {c}"), c.clone().into());
    }
    if let Some(m) = d.effects.max_body {
        report.add("max_body", format!("{m} bytes"), m.into());
    }
    if d.effects.require_user {
        report.add("requires", "a user token", "user".into());
    }
    if guessed {
        report.add(
            "note",
            "destination address unknown (host name); pass --dst IP:PORT to evaluate destination rules",
            "destination address unknown (host name)".into(),
        );
    }
    let denied = d.action == crate::policy::Action::Deny;
    report.finish();
    if denied {
        return Err(super::exit::found(format!("denied: {}", d.reason)));
    }
    Ok(())
}

/// `policy check`: every error in the directory (exit 1), warnings for an
/// empty policy and for credentials that cannot be read here.
pub fn check(dir: Option<PathBuf>, config: Option<PathBuf>, json: bool) -> Result<()> {
    use crate::config::{Config, Overrides};
    let cfg = Config::load(&Overrides {
        config: config.clone(),
        ..Default::default()
    });
    if config.is_some() {
        // Asked for by name: it must load.
        cfg.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    }
    let dir = match dir {
        Some(d) => d,
        None => cfg
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
            .policies
            .clone(),
    };
    // A directory that cannot be read is not checked at all (exit 2).
    std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read the policy directory {}", dir.display()))?;
    let (policy, errors) = match Policy::load_dir(&dir) {
        Ok(p) => (Some(p), Vec::new()),
        Err(errors) => (None, errors),
    };
    let mut warnings = Vec::new();
    if let Some(p) = &policy {
        if p.rules.is_empty() {
            warnings.push(
                "no rules: every connection and request of the workload is denied".to_string(),
            );
        }
        // Sources are read as this user, from this environment: a systemd
        // credential exists only inside its unit.
        if let Ok(cfg) = &cfg {
            let creds = crate::credentials::Credentials::new(cfg.credentials_dir.clone());
            for (name, source, error) in crate::credentials::unreadable(p, &creds) {
                warnings.push(format!(
                    "credential {name} ({source}) cannot be read here: {error}"
                ));
            }
        }
    }
    if json {
        let errors: Vec<_> = errors
            .iter()
            .map(|e| {
                serde_json::json!({"file": e.file, "line": e.line, "col": e.col,
                    "message": e.message, "text": e.to_string()})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "dir": dir,
                "ok": policy.is_some(),
                "rules": policy.as_ref().map(|p| p.rules.len()),
                "files": policy.as_ref().map(|p| p.files.len()),
                "errors": errors,
                "warnings": warnings,
            })
        );
    } else {
        if let Some(p) = &policy {
            println!(
                "{}: {} rule(s) in {} file(s), OK",
                dir.display(),
                p.rules.len(),
                p.files.len()
            );
        }
        for e in &errors {
            eprintln!("{e}");
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    match errors.len() {
        0 => Ok(()),
        n => Err(super::exit::found(format!(
            "{n} error(s) in {}",
            dir.display()
        ))),
    }
}
