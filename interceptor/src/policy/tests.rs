use super::*;
use crate::identity::oidc::User;

fn policy(text: &str) -> Policy {
    let dir = tempdir();
    std::fs::write(dir.join("a.toml"), text).unwrap();
    let p = Policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    std::fs::remove_dir_all(&dir).unwrap();
    p
}

pub(crate) fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "icpt-policy-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn now() -> jiff::Timestamp {
    "2026-01-05T10:00:00Z".parse().unwrap()
}

fn conn<'a>(w: &'a str, a: &str) -> Subject<'a> {
    Subject {
        workload: w,
        destination: a.parse().unwrap(),
        now: now(),
        sni: None,
        request: None,
        last_stage: false,
    }
}

/// A request inside TLS to `r.host` (port 443), else in cleartext.
fn decide_request(p: &Policy, workload: &str, dst: &str, r: &RequestInfo) -> Decision {
    let mut s = conn(workload, dst);
    if dst.ends_with(":443") {
        s.sni = Some(r.host);
    }
    s.request = Some(r);
    s.last_stage = true;
    p.decide_final(&s)
}

fn decided(v: Verdict) -> Decision {
    match v {
        Verdict::Decided(d) => d,
        Verdict::NeedsInspection => panic!("needs inspection"),
    }
}

#[test]
fn shipped_examples_load_and_mean_what_they_say() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let p = Policy::load_dir(&dir).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(p.files.len() >= 2);
    let d = |w: &str, a: &str| {
        let mut s = conn(w, a);
        s.last_stage = true;
        p.decide_final(&s)
    };
    assert_eq!(
        d("skills.slice/x.service", "169.254.169.254:80")
            .rule
            .as_deref(),
        Some("deny-cloud-metadata")
    );
    assert_eq!(
        d("skills.slice/x.service", "127.0.0.1:5433").action,
        Action::Allow
    );
    assert_eq!(
        d("skills.slice/billing.service", "10.20.0.7:8443")
            .rule
            .as_deref(),
        Some("billing-api")
    );
    assert_eq!(
        d("skills.slice/other.service", "10.20.0.7:8443").action,
        Action::Deny
    );
    assert_eq!(
        d("skills.slice/billing.service", "10.20.0.7:25")
            .rule
            .as_deref(),
        Some("deny-smtp")
    );
}

#[test]
fn workloads_by_cgroup_path_or_unit_name() {
    let p = policy(
        "[[rule]]\nid = \"unit\"\nworkload = \"billing.service\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"slice\"\nworkload = \"skills.slice/*\"\naction = \"allow\"\n",
    );
    let d = |w: &str| decided(p.decide(&conn(w, "10.0.0.1:443"))).rule;
    assert_eq!(d("skills.slice/billing.service").as_deref(), Some("unit"));
    assert_eq!(d("billing.service").as_deref(), Some("unit"));
    assert_eq!(d("skills.slice/other.service").as_deref(), Some("slice"));
    // `*` does not cross '/': a nested cgroup needs `**`.
    assert_eq!(d("skills.slice/a.service/sub"), None);
    // A unit name is a whole segment, not a prefix.
    assert_eq!(d("skills.slice/billing.service2").as_deref(), Some("slice"));
}

#[test]
fn first_match_wins_and_default_denies() {
    let p = policy(
        r#"
[[rule]]
id = "no-metadata"
destination = ["169.254.169.254"]
action = "deny"
reason = "cloud metadata is off limits"

[[rule]]
id = "skills-local"
workload = "skills.slice/**"
destination = ["127.0.0.0/8:8000-8999", "[::1]:8080"]
action = "allow"
"#,
    );
    let d = |w: &str, a: &str| decided(p.decide(&conn(w, a)));
    assert_eq!(
        d("skills.slice/x.service", "127.0.0.1:8080").action,
        Action::Allow
    );
    assert_eq!(
        d("skills.slice/x.service", "[::1]:8080").rule.as_deref(),
        Some("skills-local")
    );
    assert_eq!(d("skills.slice/x.service", "127.0.0.1:9000").rule, None);
    assert_eq!(d("other.slice", "127.0.0.1:8080").action, Action::Deny);
    let m = d("skills.slice/x.service", "169.254.169.254:80");
    assert_eq!(m.rule.as_deref(), Some("no-metadata"));
    assert_eq!(m.reason, "cloud metadata is off limits");
}

const HTTP_POLICY: &str = r#"
[credential.github]
source = "file:github"
header = "Authorization"
format = "Bearer {secret}"

[[rule]]
id = "gh-read"
workload = "skills.slice/**"
host = "api.github.com"
method = ["GET", "HEAD"]
path = "/repos/**"
scheme = "https"
inject = "github"
max_body = "1KiB"

[[rule]]
id = "sre-write"
host = "api.github.com"
groups = ["sre"]
action = "allow"

[[rule]]
id = "office"
host = "*.example.com"
time = { days = ["mon", "tue", "wed", "thu", "fri"], from = "09:00", to = "17:00", tz = "Europe/Berlin" }
action = "allow"

[[rule]]
id = "pinned"
host = "pinned.example.org"
destination = "1.2.3.0/24:443"
tls = "passthrough"
action = "allow"
"#;

#[test]
fn stages_ask_for_inspection_only_when_a_rule_needs_it() {
    let text = HTTP_POLICY.replace(
        "max_body = \"1KiB\"",
        "max_body = \"1KiB\"\naction = \"allow\"",
    );
    let p = policy(&text);
    assert_eq!(p.credentials["github"].source, "file:github");
    // At accept time the host is unknown: inspect.
    assert_eq!(
        p.decide(&conn("skills.slice/a", "140.82.112.5:443")),
        Verdict::NeedsInspection
    );
    // With SNI: a passthrough rule decides.
    let mut s = conn("skills.slice/a", "1.2.3.4:443");
    s.sni = Some("pinned.example.org");
    let d = decided(p.decide(&s));
    assert_eq!(
        (d.rule.as_deref(), d.effects.tls),
        (Some("pinned"), TlsMode::Passthrough)
    );
    // The same name towards another address is not that tunnel.
    let mut s = conn("skills.slice/a", "5.6.7.8:443");
    s.sni = Some("pinned.example.org");
    assert_ne!(decided(p.decide(&s)).rule.as_deref(), Some("pinned"));
    // The request decides the rest.
    let headers = http::HeaderMap::new();
    let sre = User {
        subject: "u1".into(),
        name: "alice".into(),
        groups: vec!["sre".into()],
    };
    let at = |method: &str, path: &str, user: Option<&User>| {
        let r = RequestInfo {
            host: "api.github.com",
            method,
            path,
            headers: &headers,
            user,
            body: None,
        };
        decide_request(&p, "skills.slice/a", "140.82.112.5:443", &r)
    };
    // The same request in cleartext gets no credential rule.
    let r = RequestInfo {
        host: "api.github.com",
        method: "GET",
        path: "/repos/x/y",
        headers: &headers,
        user: None,
        body: None,
    };
    assert_eq!(
        decide_request(&p, "skills.slice/a", "140.82.112.5:80", &r).rule,
        None
    );
    let d = at("GET", "/repos/x/y", None);
    assert_eq!(
        (
            d.rule.as_deref(),
            d.effects.inject.as_deref(),
            d.effects.max_body
        ),
        (Some("gh-read"), Some("github"), Some(1024))
    );
    assert_eq!(at("POST", "/repos/x/y", None).rule, None);
    assert_eq!(
        at("POST", "/repos/x/y", Some(&sre)).rule.as_deref(),
        Some("sre-write")
    );
    // Office hours: Monday 10:00 UTC is 11:00 in Berlin.
    let mut s = conn("x", "1.2.3.4:443");
    s.sni = Some("app.example.com");
    assert_eq!(decided(p.decide(&s)).rule.as_deref(), Some("office"));
    s.now = "2026-01-05T17:30:00Z".parse().unwrap();
    s.last_stage = true;
    assert_eq!(p.decide_final(&s).rule, None);
}

#[test]
fn body_rules_wait_for_the_body_then_match_it() {
    let p = policy(
        "[[rule]]\nid = \"no-drop\"\nbody_regex = ['(?i)drop\\s+table']\naction = \"deny\"\n\n\
         [[rule]]\nid = \"rest\"\naction = \"allow\"\n",
    );
    let headers = http::HeaderMap::new();
    let verdict = |body: Option<&'static [u8]>, last_stage| {
        let body = body.map(|b| InspectedBody::new(b.to_vec()));
        let info = RequestInfo {
            host: "db.test",
            method: "POST",
            path: "/query",
            headers: &headers,
            user: None,
            body: body.as_ref(),
        };
        let mut s = conn("skills.slice/a", "10.0.0.1:443");
        s.request = Some(&info);
        s.last_stage = last_stage;
        p.decide(&s)
    };
    // Without the body the rule cannot be decided: the proxy reads it first.
    assert_eq!(verdict(None, false), Verdict::NeedsInspection);
    let d = decided(verdict(Some(b"select 1; DROP   TABLE users"), true));
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Deny, Some("no-drop"))
    );
    let d = decided(verdict(Some(b"select 1"), true));
    assert_eq!(d.rule.as_deref(), Some("rest"));
    // What a server decodes the body into is matched too.
    for b in [
        &b"q=DROP+TABLE+x"[..],
        b"DROP%20TABLE",
        br#"{"q":"DROP TABLE"}"#,
    ] {
        let d = decided(verdict(Some(b), true));
        assert_eq!(d.rule.as_deref(), Some("no-drop"), "{b:?}");
    }
    // Non-UTF-8 bodies are matched as bytes.
    let d = decided(verdict(Some(b"\xff\xfe drop table x"), true));
    assert_eq!(d.rule.as_deref(), Some("no-drop"));
    // Connections are not decided by a rule that needs a body.
    let s = conn("skills.slice/a", "10.0.0.1:443");
    assert_eq!(p.decide(&s), Verdict::NeedsInspection);
}

#[test]
fn a_double_star_tail_also_matches_the_bare_prefix() {
    let p = policy(
        "[[rule]]\nid = \"no-admin\"\npath = \"/admin/**\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"no-sql\"\npath = \"/sql\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"rest\"\naction = \"allow\"\n",
    );
    let headers = http::HeaderMap::new();
    let rule_for = |path: &str| {
        let r = RequestInfo {
            host: "api.test",
            method: "GET",
            path,
            headers: &headers,
            user: None,
            body: None,
        };
        decide_request(&p, "w", "10.0.0.1:443", &r).rule
    };
    for denied in ["/admin", "/admin/", "/admin/x/y", "/ADMIN", "/Admin/x"] {
        assert_eq!(rule_for(denied).as_deref(), Some("no-admin"), "{denied}");
    }
    // Servers differ on case and on a trailing slash: neither escapes.
    for denied in ["/sql", "/sql/", "/SQL", "/Sql/"] {
        assert_eq!(rule_for(denied).as_deref(), Some("no-sql"), "{denied}");
    }
    for allowed in ["/administrator", "/public/admin", "/", "/sql/x", "/sqlx"] {
        assert_eq!(rule_for(allowed).as_deref(), Some("rest"), "{allowed}");
    }
}

#[test]
fn a_header_sent_twice_matches_an_allow_rule_only_if_every_value_does() {
    let p = policy(
        "[[rule]]\nid = \"no-evil\"\nheaders = { \"x-role\" = \"admin\" }\naction = \"deny\"\n\n\
         [[rule]]\nid = \"acme\"\nheaders = { \"x-tenant\" = \"acme-*\" }\naction = \"allow\"\n",
    );
    let decide = |pairs: &[(&'static str, &'static str)]| {
        let mut headers = http::HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, http::HeaderValue::from_static(v));
        }
        let r = RequestInfo {
            host: "api.test",
            method: "GET",
            path: "/",
            headers: &headers,
            user: None,
            body: None,
        };
        decide_request(&p, "w", "10.0.0.1:443", &r).rule
    };
    assert_eq!(decide(&[("x-tenant", "acme-1")]).as_deref(), Some("acme"));
    // The attack: a second value beside the one that matches.
    assert_eq!(
        decide(&[("x-tenant", "evil"), ("x-tenant", "acme-1")]),
        None
    );
    assert_eq!(
        decide(&[("x-tenant", "acme-1"), ("x-tenant", "acme-2")]).as_deref(),
        Some("acme")
    );
    // A deny rule still catches the value it names among others.
    assert_eq!(
        decide(&[
            ("x-role", "user"),
            ("x-role", "admin"),
            ("x-tenant", "acme-1")
        ])
        .as_deref(),
        Some("no-evil")
    );
}
