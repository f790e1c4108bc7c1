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
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
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
    let method = crate::proxy::canonical::method(&e.method)
        .map_err(|why| {
            anyhow::anyhow!("the proxy refuses this request (400 non_canonical_request): {why}")
        })?
        .to_string();
    use crate::proxy::canonical;
    let refused = |why: &canonical::NotCanonical| {
        anyhow::anyhow!("the proxy refuses this request (400 non_canonical_request): {why}")
    };
    // A form a rule may opt into is decided as forwarded and as the most
    // decoding server reads it; both must come to that rule (as the proxy).
    let (path, tolerated) = match canonical::path(uri.path()) {
        Ok(p) => (p, None),
        Err(why) if why.tolerable() => {
            let t = canonical::tolerated(uri.path()).map_err(|_| refused(&why))?;
            (t.forwarded.clone(), Some((why, t)))
        }
        Err(why) => return Err(refused(&why)),
    };
    println!("request:  {method} {path} (canonical form, as decided and forwarded)");
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
        println!(
            "read as:  {} (by a server that decodes %2F or strips ;parameters)",
            t.read_as
        );
        let other = decide(&t.read_as);
        if other.action == crate::policy::Action::Deny {
            d = other;
        } else if d.action == crate::policy::Action::Deny
            || other.rule != d.rule
            || !d.effects.non_canonical.covers(t.forms)
        {
            return Err(anyhow::anyhow!(
                "the proxy refuses this request (400 non_canonical_request): {why} \
                 (no rule accepts it with non_canonical = [...] under both readings)"
            ));
        }
    }
    println!("decision: {:?}", d.action);
    match &d.rule {
        Some(id) => {
            let origin = policy.rule(id).map(|r| r.origin.as_str()).unwrap_or("?");
            println!("rule:     {id} ({origin})");
        }
        None => println!("rule:     none matched (default deny)"),
    }
    println!("reason:   {}", d.reason);
    if let Some(c) = &d.effects.inject {
        println!("inject:   credential {c}");
    }
    if let Some(m) = d.effects.max_body {
        println!("max_body: {m} bytes");
    }
    if d.effects.require_user {
        println!("requires: a user token");
    }
    if guessed {
        println!(
            "note:     destination address unknown (host name); pass --dst IP:PORT to evaluate destination rules"
        );
    }
    Ok(())
}
