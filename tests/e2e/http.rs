//! The HTTP/TLS data path with real clients (curl, Python requests and
//! httpx, Node fetch) inside the workload cgroup, against local HTTP(S)
//! upstreams that trust nothing but a test CA.
use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

const GH_SECRET: &str = "ghp_interceptorTestSecret0123456789abcdef";
const API_KEY: &str = "sk-test-interceptor-9f8e7d6c5b4a";

struct Setup {
    cg: TestCgroup,
    cfg: DaemonConfig,
    d: Daemon,
    tls_up: HttpUpstream,
    plain_up: HttpUpstream,
    ca: String,
}

fn policy(cg: &TestCgroup) -> String {
    format!(
        r#"
[credential.gh]
source = "file:gh"
header = "Authorization"
format = "Bearer {{secret}}"

[credential.apikey]
source = "file:apikey"
query = "key"

[mask.pii]
detectors = ["all"]
replace = {{ card = "last4" }}
json_paths = ["$.customers[*].ssn", "$..password"]

# Passthrough first: a later rule that looks into requests (query-key has no
# host) would otherwise need the connection decrypted to decide.
[[rule]]
id = "pinned"
workload = "{cg}"
host = "pinned.test"
destination = ["127.0.0.1"]
tls = "passthrough"
action = "allow"

[[rule]]
id = "deny-admin"
host = ["api.test", "127.0.0.1"]
path = "/admin/**"
action = "deny"
reason = "the admin API is off limits to skills"

[[rule]]
id = "small-uploads"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
method = "POST"
path = "/upload"
max_body = 1024
action = "allow"

[[rule]]
id = "masked"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
path = "/pii*"
mask = "pii"
mask_request = true
action = "allow"

[[rule]]
id = "query-key"
workload = "{cg}"
path = "/q"
destination = ["127.0.0.1"]
inject = "apikey"
action = "allow"

[[rule]]
id = "deploy"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
path = "/deploy/**"
action = "approve"
approval_timeout = "30s"
destination = ["127.0.0.1"]
inject = "gh"

[[rule]]
id = "ship"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
path = "/ship/**"
action = "approve"
approval_timeout = "30s"

[[rule]]
id = "expire"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
path = "/expire/**"
action = "approve"
approval_timeout = "1s"

# A guardrail on bodies: read before deciding, never forwarded when it matches.
[[rule]]
id = "no-destructive-sql"
host = ["api.test", "127.0.0.1"]
path = "/sql"
body_regex = ['(?i)\bdrop\s+table\b', '(?i)\btruncate\b']
action = "deny"
reason = "destructive SQL is off limits to skills"

[[rule]]
id = "api"
workload = "{cg}"
host = ["api.test", "127.0.0.1"]
destination = ["127.0.0.1"]
inject = "gh"
action = "allow"

"#,
        cg = cg.rel
    )
}

fn setup(tag: &str) -> Setup {
    setup_with(tag, |_| {})
}

fn setup_with(tag: &str, tweak: impl FnOnce(&mut DaemonConfig)) -> Setup {
    let cg = TestCgroup::new(tag);
    let mut cfg = DaemonConfig::new(&[&cg], &policy(&cg));
    let pki = TestPki::new(&cfg.dir, "upstream");
    let tls_up = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    let plain_up = HttpUpstream::start("127.0.0.1:0", None);
    let creds = cfg.credentials(&[("gh", &format!("{GH_SECRET}\n")), ("apikey", API_KEY)]);
    cfg.extra = format!("{creds}upstream_ca_files = [{:?}]\n", pki.ca_pem);
    tweak(&mut cfg);
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file().to_string_lossy().into_owned();
    Setup {
        cg,
        cfg,
        d,
        tls_up,
        plain_up,
        ca,
    }
}

impl Setup {
    fn curl(&self, args: &[&str]) -> (bool, String, String) {
        self.curl_within(Duration::from_secs(60), args)
    }

    fn curl_within(&self, limit: Duration, args: &[&str]) -> (bool, String, String) {
        let resolve = format!("api.test:{}:127.0.0.1", self.tls_up.addr.port());
        let resolve2 = format!("pinned.test:{}:127.0.0.1", self.tls_up.addr.port());
        let mut all = vec![
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &self.ca,
            "--resolve",
            &resolve,
            "--resolve",
            &resolve2,
        ];
        all.extend_from_slice(args);
        run(self.cg.command("curl", &all), limit)
    }

    fn url(&self, path: &str) -> String {
        format!("https://api.test:{}{path}", self.tls_up.addr.port())
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn https_requests_get_the_credential_the_skill_never_sees() {
    if !kernel_ready() {
        return;
    }
    let s = setup("inject");
    for proto in ["--http1.1", "--http2"] {
        let (ok, out, err) = s.curl(&[
            proto,
            "-H",
            "Authorization: Bearer forged-by-skill",
            "-w",
            "\n%{http_version}",
            &s.url("/echo/x?a=1"),
        ]);
        assert!(ok, "{proto}: {err}");
        let (body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, if proto == "--http2" { "2" } else { "1.1" });
        let v = json(body);
        // The upstream got the real secret, not what the skill sent...
        assert_eq!(
            v["headers"]["authorization"],
            sha256_str(&format!("Bearer {GH_SECRET}")),
            "{proto} {v}"
        );
        // Upstream, the proxy uses HTTP/2 when the server offers it.
        assert_eq!(v["version"], "HTTP/2.0");
        // ...and the skill never saw it.
        assert!(!out.contains(GH_SECRET));
    }
    // Query-parameter credentials replace what the caller put there.
    let (ok, out, err) = s.curl(&[&s.url("/q?key=forged&x=1")]);
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["query_sha256"],
        sha256_str(&format!("x=1&key={API_KEY}"))
    );

    // Sessions and requests are recorded, without any secret.
    let sess =
        s.d.wait_session(|x| x["protocol"] == "tls" && x["sni"] == "api.test");
    assert_eq!(sess["workload"]["cgroup"], s.cg.rel.as_str());
    let reqs = s.d.requests(sess["id"].as_u64().unwrap());
    assert_eq!(reqs[0]["host"], "api.test");
    assert_eq!(reqs[0]["path"], "/echo/x?a=1");
    assert_eq!(reqs[0]["status"], 200);
    assert_eq!(reqs[0]["injected"], "gh");
    assert_eq!(reqs[0]["rule"], "api");
    let dump = format!("{:?}{:?}", s.d.sessions(), reqs);
    assert!(!dump.contains(GH_SECRET) && !dump.contains(API_KEY));
    assert!(!s.d.log_text().contains(GH_SECRET) && !s.d.log_text().contains(API_KEY));
    // The HTTP data path counts in the metrics too (issue 14): connections
    // admitted, bytes both ways once they end.
    // (A connection's bytes count when it ends, a moment after curl's.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = http_get(
            std::net::SocketAddr::from(([127, 0, 0, 1], s.d.cfg.admin_port)),
            "/metrics",
        )
        .unwrap();
        if !m.contains("interceptor_bytes_down_total 0") || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(
        value("interceptor_connections_allowed_total ") >= 3,
        "{metrics}"
    );
    // (Body bytes: these requests are GETs, nothing went up.)
    assert!(value("interceptor_bytes_down_total ") > 0, "{metrics}");
}

#[test]
fn denied_oversized_and_misdirected_requests_are_answered_by_the_proxy() {
    if !kernel_ready() {
        return;
    }
    let s = setup("deny413");
    let before = s.tls_up.requests();
    let (ok, out, _) = s.curl(&["-w", "\n%{http_code}", &s.url("/admin/users")]);
    assert!(ok);
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "403");
    let v = json(body);
    assert_eq!(v["error"], "denied");
    assert_eq!(v["rule"], "deny-admin");
    assert_eq!(v["message"], "the admin API is off limits to skills");

    // Content-Length over max_body → 413 before anything is sent upstream.
    let big = "x".repeat(2000);
    let (_, out, err) = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        &big,
        &s.url("/upload"),
    ]);
    assert_eq!(out, "413", "{err}");
    // Chunked (no Content-Length) is cut off while streaming.
    let (_, out, _) = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &big,
        &s.url("/upload"),
    ]);
    assert_eq!(out, "413");
    let small = "x".repeat(100);
    let (_, out, _) = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        &small,
        &s.url("/upload"),
    ]);
    assert_eq!(out, "200");
    // Domain fronting: SNI api.test, Host something else.
    let (_, out, _) = s.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: evil.test",
        &s.url("/echo"),
    ]);
    assert_eq!(out, "421");
    // Only the small upload (and possibly the chunked one's head) reached the upstream.
    assert!(
        s.tls_up.requests() - before <= 2,
        "{}",
        s.tls_up.requests() - before
    );
    let sess = s.d.wait_session(|x| x["protocol"] == "tls");
    // A session allowed as a connection, with a request denied in it, is
    // among the denied ones (issue 14); a glob that is not one is a usage
    // error, not an empty list.
    let list = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(["sessions", "list", "--json", "--admin-socket"])
            .arg(s.d.cfg.socket())
            .args(args);
        run(c, Duration::from_secs(20))
    };
    let (ok, out, err) = list(&["--decision", "deny"]);
    assert!(ok, "{err}");
    let denied: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(denied.iter().any(|x| x["id"] == sess["id"]), "{out}");
    let (ok, _, err) = list(&["--workload", "[bad"]);
    assert!(!ok && err.contains("--workload"), "{err}");
}

#[test]
fn body_guardrails_read_the_body_before_deciding() {
    if !kernel_ready() {
        return;
    }
    let s = setup("bodyrx");
    let before = s.tls_up.requests();
    let code_of = |extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        s.curl(&args).1
    };
    // Destructive SQL in the body: refused by the proxy, never sent upstream,
    // whether the body comes with a length or chunked.
    let sql = "select 1; DROP  TABLE users;";
    let (_, out, _) = s.curl(&["-w", "\n%{http_code}", "--data-binary", sql, &s.url("/sql")]);
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{out}");
    assert_eq!(json(body)["rule"], "no-destructive-sql");
    let chunked = [
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "TRUNCATE t",
    ];
    assert_eq!(
        code_of(&[&chunked[..], &[s.url("/sql").as_str()]].concat()),
        "403"
    );
    // A harmless body goes on, intact, with the credential.
    let harmless = "select name from users where id = 7 -- dropped tables: none";
    let (ok, out, err) = s.curl(&["--data-binary", harmless, &s.url("/sql")]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["body_sha256"], sha256_str(harmless), "{out}");
    assert_eq!(
        json(&out)["headers"]["authorization"],
        sha256_str(&format!("Bearer {GH_SECRET}"))
    );
    let (ok, out, err) = s.curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        harmless,
        &s.url("/sql"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["body_sha256"], sha256_str(harmless), "{out}");
    // What cannot be inspected is refused, not passed unread: another
    // encoding, or a body over the 1 MiB inspection limit.
    let gz = ["-H", "Content-Encoding: gzip", "--data-binary", "xx"];
    assert_eq!(
        code_of(&[&gz[..], &[s.url("/sql").as_str()]].concat()),
        "415"
    );
    let big = s.cfg.dir.join("big-body");
    std::fs::write(&big, "a".repeat((1 << 20) + 10)).unwrap();
    let at = format!("@{}", big.display());
    let url = s.url("/sql");
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let args = [extra, &["--data-binary", &at, &url]].concat();
        assert_eq!(code_of(&args), "413");
    }
    // Only the harmless requests reached the upstream.
    assert_eq!(s.tls_up.requests() - before, 2);
    // The decisions are recorded with the rule that made them.
    let rules: Vec<Value> =
        s.d.sessions()
            .iter()
            .flat_map(|x| s.d.requests(x["id"].as_u64().unwrap()))
            .map(|r| r["rule"].clone())
            .collect();
    assert!(
        rules.iter().filter(|r| *r == "no-destructive-sql").count() >= 2,
        "{rules:?}"
    );
}

/// Issue 11, item 7: the guard sees the canonical path, and the body after
/// the decodings a server applies (form, percent, JSON string escapes) as
/// well as its raw bytes; stacked or duplicate encodings are refused.
#[test]
fn body_guardrails_see_every_form_of_path_and_body() {
    if !kernel_ready() {
        return;
    }
    let s = setup("bodyforms");
    let before = s.tls_up.requests();
    let code = |path: &str, body: &str, headers: &[&str]| {
        let mut args = vec!["--path-as-is", "-o", "/dev/null", "-w", "%{http_code}"];
        for h in headers {
            args.extend_from_slice(&["-H", h]);
        }
        let url = s.url(path);
        args.extend_from_slice(&["--data-binary", body, &url]);
        s.curl(&args).1
    };
    let drop = "DROP TABLE users";
    for path in ["/sql/", "//sql", "/%73ql", "/SQL", "/./sql"] {
        assert_eq!(code(path, drop, &[]), "403", "{path}");
    }
    for body in [
        "q=DROP+TABLE+users",
        "q=DROP%20TABLE%20users",
        "q=%44ROP%09TABLE users",
        r#"{"q":"\u0044ROP TABLE users"}"#,
        r#"{"q":"DROP\tTABLE users"}"#,
        r#"{"q":"\u0074runcate t"}"#,
    ] {
        assert_eq!(code("/sql", body, &[]), "403", "{body}");
    }
    // Two Content-Encoding headers, or a list: the guard cannot know which
    // one the upstream applies.
    for enc in [
        &["Content-Encoding: identity", "Content-Encoding: gzip"][..],
        &["Content-Encoding: identity, identity"][..],
    ] {
        assert_eq!(code("/sql", "select 1", enc), "415", "{enc:?}");
    }
    // Harmless text in every form still goes through.
    for body in ["q=select+1", r#"{"q":"select \u0031"}"#] {
        assert_eq!(code("/sql", body, &[]), "200", "{body}");
    }
    assert_eq!(s.tls_up.requests() - before, 2);
}

#[test]
fn plaintext_http_and_passthrough_tls() {
    if !kernel_ready() {
        return;
    }
    let s = setup("plain");
    // Plain HTTP to 127.0.0.1 (the Host is the address).
    let url = format!("http://127.0.0.1:{}/echo", s.plain_up.addr.port());
    let (ok, out, err) = run(
        s.cg.command("curl", &["-sS", "--max-time", "10", &url]),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["headers"]["authorization"],
        sha256_str(&format!("Bearer {GH_SECRET}"))
    );
    s.d.wait_session(|x| x["protocol"] == "http");

    // Passthrough: the client sees the upstream's own certificate (it
    // trusts only the upstream test CA here), nothing is decrypted.
    let upstream_ca = s.cfg.dir.join("upstream-ca.pem");
    let resolve = format!("pinned.test:{}:127.0.0.1", s.tls_up.addr.port());
    let url = format!("https://pinned.test:{}/echo", s.tls_up.addr.port());
    let (ok, out, err) = run(
        s.cg.command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                upstream_ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ],
        ),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    // No credential injected into a connection we do not decrypt.
    assert!(json(&out)["headers"].get("authorization").is_none());
    let sess = s.d.wait_session(|x| x["protocol"] == "tls-passthrough");
    assert_eq!(sess["sni"], "pinned.test");
    assert_eq!(sess["rule"], "pinned");
}

#[test]
fn sse_events_arrive_as_they_are_sent() {
    if !kernel_ready() {
        return;
    }
    let s = setup("sse");
    // The upstream sends one event and holds the rest until /release: a
    // proxy that buffered the stream would never deliver the first event.
    let script = format!(
        r#"
import requests, sys
base = "https://127.0.0.1:{port}"
r = requests.get(base + "/sse", stream=True, timeout=20)
lines = r.iter_lines()
first = next(l for l in lines if l)
assert first == b"data: first", first
requests.get(base + "/release", timeout=20)
rest = [l for l in lines if l]
print(first.decode(), "|", " ".join(x.decode() for x in rest))
"#,
        port = s.tls_up.addr.port()
    );
    let mut cmd = s.cg.command("python3", &["-c", &script]);
    cmd.env("REQUESTS_CA_BUNDLE", &s.ca);
    let (ok, out, err) = run(cmd, Duration::from_secs(60));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "data: first | data: event 2 data: event 3");
}

#[test]
fn a_stopping_daemon_lets_responses_in_flight_finish() {
    if !kernel_ready() {
        return;
    }
    let mut s = setup("drain");
    // The skill has the first event of a stream when the daemon is told to
    // stop; the rest comes after. It must arrive whole, not cut.
    let marker = s.cfg.dir.join("got-first");
    let script = format!(
        r#"
import requests
r = requests.get("https://127.0.0.1:{port}/sse", stream=True, timeout=30)
lines = r.iter_lines()
first = next(l for l in lines if l)
open("{marker}", "w").close()
rest = [l for l in lines if l]
print(first.decode(), "|", " ".join(x.decode() for x in rest))
"#,
        port = s.tls_up.addr.port(),
        marker = marker.display()
    );
    let mut cmd = s.cg.command("python3", &["-c", &script]);
    cmd.env("REQUESTS_CA_BUNDLE", &s.ca)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let skill = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "no first event");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill takes no pointers; the pid is the test's daemon child.
    unsafe { libc::kill(s.d.pid() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    // Released from outside the cgroup (new connects from it are refused now).
    let release = format!("https://127.0.0.1:{}/release", s.tls_up.addr.port());
    let (ok, _, err) = run(
        {
            let mut c = std::process::Command::new("curl");
            c.args(["-sSk", "--max-time", "10", &release]);
            c
        },
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    let out = skill.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "data: first | data: event 2 data: event 3",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.d.signal(0);
    assert!(!s.d.log_text().contains("are cut"), "{}", s.d.log_text());
}

#[test]
fn python_and_node_clients_trust_the_interceptor_ca() {
    if !kernel_ready() {
        return;
    }
    let s = setup("clients");
    let url = format!("https://127.0.0.1:{}/echo/py", s.tls_up.addr.port());
    let expected = sha256_str(&format!("Bearer {GH_SECRET}"));
    // requests
    let mut cmd = s.cg.command(
        "python3",
        &["-c", &format!("import requests; print(requests.get({url:?}, headers={{'Authorization': 'x'}}, timeout=20).text)")],
    );
    cmd.env("REQUESTS_CA_BUNDLE", &s.ca);
    let (ok, out, err) = run(cmd, Duration::from_secs(60));
    assert!(ok, "requests: {err}");
    assert_eq!(json(&out)["headers"]["authorization"], expected);
    // httpx, HTTP/2 when it can
    let mut cmd = s.cg.command(
        "python3",
        &[
            "-c",
            &format!("import httpx; print(httpx.get({url:?}, timeout=20).text)"),
        ],
    );
    cmd.env("SSL_CERT_FILE", &s.ca);
    let (ok, out, err) = run(cmd, Duration::from_secs(60));
    assert!(ok, "httpx: {err}");
    assert_eq!(json(&out)["headers"]["authorization"], expected);
    // Node's fetch
    let mut cmd = s.cg.command(
        "node",
        &["-e", &format!("fetch({url:?}).then(r => r.text()).then(t => console.log(t)).catch(e => {{ console.error(e); process.exit(1) }})")],
    );
    cmd.env("NODE_EXTRA_CA_CERTS", &s.ca);
    let (ok, out, err) = run(cmd, Duration::from_secs(60));
    assert!(ok, "node: {err}");
    assert_eq!(json(&out)["headers"]["authorization"], expected);
}

#[test]
fn a_bad_upstream_certificate_is_a_502_not_a_downgrade() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("badcert");
    let mut cfg = DaemonConfig::new(
        &[&cg],
        &format!(
            "[[rule]]\nid = \"any\"\nworkload = {:?}\nhost = \"*\"\naction = \"allow\"\n",
            cg.rel
        ),
    );
    // The upstream's CA is not configured: the daemon must not trust it.
    let pki = TestPki::new(&cfg.dir, "untrusted");
    let up = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    cfg.extra = String::new();
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file();
    let resolve = format!("api.test:{}:127.0.0.1", up.addr.port());
    let url = format!("https://api.test:{}/echo", up.addr.port());
    let (_, out, _) = run(
        cg.command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        ),
        Duration::from_secs(30),
    );
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "502", "{out}");
    assert_eq!(json(body)["error"], "upstream_tls");
    assert_eq!(up.requests(), 0);
    let sess = d.wait_session(|x| x["protocol"] == "tls");
    let reqs = d.requests(sess["id"].as_u64().unwrap());
    assert_eq!(reqs[0]["status"], 502);
    assert!(
        reqs[0]["error"].as_str().unwrap().contains("TLS"),
        "{reqs:?}"
    );
}

#[test]
fn oidc_users_are_validated_and_the_token_never_leaves() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("oidc");
    let mut cfg = DaemonConfig::new(
        &[&cg],
        &format!(
            r#"
[[rule]]
id = "sre-only"
workload = "{cg}"
host = "api.test"
path = "/sre/**"
groups = ["sre"]
action = "allow"

[[rule]]
id = "me"
workload = "{cg}"
host = "api.test"
path = "/me"
require_user = true
action = "allow"
"#,
            cg = cg.rel
        ),
    );
    let idp = TestIdp::start(&cfg.dir);
    let pki = TestPki::new(&cfg.dir, "upstream");
    let up = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    cfg.extra = format!(
        "upstream_ca_files = [{:?}]\n[oidc]\nissuer = {:?}\naudiences = [\"interceptor\"]\nuser_claim = \"email\"\nca_files = [{:?}]\n",
        pki.ca_pem, idp.issuer, idp.ca_pem
    );
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file();
    let resolve = format!("api.test:{}:127.0.0.1", up.addr.port());
    let call = |path: &str, token: Option<&str>| -> (String, Value) {
        let url = format!("https://api.test:{}{path}", up.addr.port());
        let auth = token.map(|t| format!("Proxy-Authorization: Bearer {t}"));
        let mut args = vec![
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
        ];
        if let Some(a) = &auth {
            args.extend_from_slice(&["-H", a]);
        }
        args.push(&url);
        let (ok, out, err) = run(cg.command("curl", &args), Duration::from_secs(30));
        assert!(ok, "{err}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        (
            code.to_string(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };

    let good = idp.token(serde_json::json!({}));
    let (code, v) = call("/sre/deploy", Some(&good));
    assert_eq!(code, "200", "{v}");
    // The token is removed before forwarding.
    assert!(v["headers"].get("proxy-authorization").is_none(), "{v}");
    // Same user without the group: no rule allows it.
    let (code, v) = call(
        "/sre/deploy",
        Some(&idp.token(serde_json::json!({"groups": ["dev"]}))),
    );
    assert_eq!(
        (code.as_str(), v["error"].as_str()),
        ("403", Some("denied"))
    );
    // No token where the rule requires a user.
    let (code, v) = call("/me", None);
    assert_eq!(
        (code.as_str(), v["error"].as_str()),
        ("401", Some("user_token_required"))
    );
    assert_eq!(call("/me", Some(&good)).0, "200");

    // The attack matrix, end to end: each is a 401 that says why and never
    // echoes the token.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut tampered = good.clone();
    let sig_start = tampered.rfind('.').unwrap() + 1;
    let flipped = if &tampered[sig_start..sig_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_start..sig_start + 1, flipped);
    let cases: Vec<(&str, String)> = vec![
        (
            "token_expired",
            idp.token(serde_json::json!({"exp": now - 3600, "iat": now - 7200})),
        ),
        (
            "token_not_yet_valid",
            idp.token(serde_json::json!({"nbf": now + 3600})),
        ),
        (
            "wrong_audience",
            idp.token(serde_json::json!({"aud": "someone-else"})),
        ),
        (
            "wrong_issuer",
            idp.token(serde_json::json!({"iss": "https://evil.example"})),
        ),
        ("algorithm_not_allowed", idp.unsigned_token()),
        ("bad_signature", tampered),
        ("malformed_token", "not-a-jwt".to_string()),
    ];
    for (expected, token) in cases {
        let (code, v) = call("/me", Some(&token));
        assert_eq!(code, "401", "{expected}: {v}");
        assert_eq!(v["error"], expected, "{v}");
        assert!(
            !v.to_string().contains(&token),
            "the error echoes the token"
        );
    }
    // Requests are recorded under the user's name.
    let sess = d.wait_session(|x| x["protocol"] == "tls");
    let reqs = d.requests(sess["id"].as_u64().unwrap());
    assert!(
        reqs.iter()
            .any(|r| r["user"] == "alice@example.com" && r["status"] == 200),
        "{reqs:?}"
    );
    assert!(!d.log_text().contains(&good));
}

#[test]
fn time_windows_use_the_pinned_clock() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("clock");
    let mut cfg = DaemonConfig::new(
        &[&cg],
        &format!(
            "[[rule]]\nid = \"office-hours\"\nworkload = {:?}\nhost = \"127.0.0.1\"\n\
             time = {{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"], from = \"09:00\", to = \"17:00\", tz = \"Europe/Berlin\" }}\n\
             action = \"allow\"\n",
            cg.rel
        ),
    );
    let up = HttpUpstream::start("127.0.0.1:0", None);
    let url = format!("http://127.0.0.1:{}/echo", up.addr.port());
    let code = |cfg: &DaemonConfig, now: &str| {
        let mut cfg = cfg.clone();
        cfg.env = vec![("INTERCEPTOR_TEST_NOW".into(), now.into())];
        let _d = Daemon::start(&cfg);
        let (_, out, _) = run(
            cg.command(
                "curl",
                &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
            ),
            Duration::from_secs(20),
        );
        out
    };
    // Monday 2026-01-05 10:00 UTC = 11:00 in Berlin: inside.
    assert_eq!(code(&cfg, "2026-01-05T10:00:00Z"), "200");
    // 16:30 UTC = 17:30 in Berlin: outside. No rule can match this
    // connection at all, so it is refused before any request (reset, "000").
    assert_eq!(code(&cfg, "2026-01-05T16:30:00Z"), "000");
    // Saturday.
    assert_eq!(code(&cfg, "2026-01-10T10:00:00Z"), "000");
    assert_eq!(up.requests(), 1);
    cfg.env.clear();
}

#[test]
fn hot_reload_applies_to_new_requests_and_keeps_open_ones() {
    if !kernel_ready() {
        return;
    }
    let s = setup("hotreload");
    // A stream is in flight (SSE held by the upstream) while the policy
    // changes twice: once invalid (kept out), once valid (takes effect).
    let script = format!(
        r#"
import requests, sys
base = "https://127.0.0.1:{port}"
r = requests.get(base + "/sse", stream=True, timeout=30)
lines = r.iter_lines()
first = next(l for l in lines if l)
print("streaming", flush=True)
sys.stdin.readline()
requests.get(base + "/release", timeout=20)
rest = [l for l in lines if l]
print(first.decode(), "|", " ".join(x.decode() for x in rest), flush=True)
"#,
        port = s.tls_up.addr.port()
    );
    let mut cmd = s.cg.command("python3", &["-u", "-c", &script]);
    cmd.env("REQUESTS_CA_BUNDLE", &s.ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "streaming");

    let log_has = |needle: &str, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.d.log_text().matches(needle).count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                s.d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Invalid: rejected with file:line:col, the old policy stays.
    s.cfg
        .set_policy(&policy(&s.cg).replace("action = \"deny\"", "action = \"dney\""));
    log_has("policy reload rejected", 1);
    assert!(
        s.d.log_text().contains("50-test.toml:"),
        "{}",
        s.d.log_text()
    );
    let (_, code, _) = s.curl(&["-o", "/dev/null", "-w", "%{http_code}", &s.url("/admin/x")]);
    assert_eq!(code, "403");
    // Valid: the admin path becomes allowed for new requests.
    s.cfg
        .set_policy(&policy(&s.cg).replace("path = \"/admin/**\"", "path = \"/nothing/**\""));
    log_has("policy reloaded", 1);
    let (_, code, _) = s.curl(&["-o", "/dev/null", "-w", "%{http_code}", &s.url("/admin/x")]);
    assert_eq!(code, "200");
    // The open stream was not dropped.
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut rest = String::new();
    std::io::BufRead::read_line(&mut out, &mut rest).unwrap();
    assert_eq!(rest.trim(), "data: first | data: event 2 data: event 3");
    assert!(child.wait().unwrap().success());
}

/// 1 GB through the intercepted HTTPS path: the daemon streams, its memory
/// stays flat. Reports the peak RSS.
#[test]
fn a_1gb_download_keeps_daemon_memory_flat() {
    if !kernel_ready() {
        return;
    }
    let s = setup("onegig");
    let rss = |field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.d.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    // Warm up (TLS, pools) before the baseline.
    let (ok, _, err) = s.curl(&["-o", "/dev/null", &s.url("/bytes/1000000")]);
    assert!(ok, "{err}");
    let before = rss("VmRSS:");
    let n: u64 = 1 << 30;
    let (ok, out, err) = s.curl_within(
        Duration::from_secs(300),
        &[
            "--max-time",
            "300",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &s.url(&format!("/bytes/{n}")),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), n.to_string());
    let peak = rss("VmHWM:");
    eprintln!("daemon RSS before {before} KiB, peak {peak} KiB over a 1 GiB download");
    // Streaming means the peak does not grow with the body: far below 1 GiB.
    assert!(
        peak < before + 64 * 1024,
        "daemon peak RSS {peak} KiB (before {before} KiB)"
    );
}

#[test]
fn responses_are_masked_streaming_and_the_injected_secret_never_echoes() {
    if !kernel_ready() {
        return;
    }
    let s = setup("masking");
    let get = |path: &str| {
        let (ok, out, err) = s.curl(&["--compressed", "-w", "\n%{http_code}", &s.url(path)]);
        assert!(ok, "{err}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = get("/pii");
    assert_eq!(code, "200");
    for secret in [
        "4111 1111 1111 1111",
        "123-45-6789",
        "bob@example.com",
        "AKIAIOSFODNN7EXAMPLE",
    ] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    assert!(
        body.contains("**** **** **** 1111") && body.contains("[REDACTED:ssn]"),
        "{body}"
    );
    // gzip is decoded, masked, delivered as identity.
    let (code, body) = get("/pii-gzip");
    assert_eq!(code, "200");
    assert!(
        !body.contains("123-45-6789") && body.contains("[REDACTED:email]"),
        "{body}"
    );
    // JSON field paths plus detectors.
    let (_, body) = get("/pii-json");
    let v = json(&body);
    assert_eq!(v["customers"][0]["ssn"], "[REDACTED]");
    assert_eq!(v["auth"]["password"], "[REDACTED]");
    assert_eq!(v["customers"][0]["email"], "[REDACTED:email]");
    assert_eq!(v["customers"][0]["name"], "Ann");
    // An encoding the masker cannot read is blocked (fail closed).
    let (code, body) = get("/pii-zstd");
    assert_eq!(code, "502");
    assert_eq!(json(&body)["error"], "uninspectable_response");
    // The upstream reflects the Authorization header it got: the injected
    // secret is masked although the rule has no masking profile.
    let (code, body) = get("/reflect");
    assert_eq!(code, "200");
    assert!(!body.contains(GH_SECRET), "{body}");
    assert_eq!(json(&body)["you_sent"], "Bearer [REDACTED:injected_secret]");

    // The records say which detectors fired and how often, never the values.
    let sessions = s.d.sessions();
    let mut masked = serde_json::Map::new();
    for sess in sessions.iter().filter(|x| x["protocol"] == "tls") {
        for r in s.d.requests(sess["id"].as_u64().unwrap()) {
            if r["path"] == "/pii" {
                masked = r["masked"].as_object().unwrap().clone();
            }
            if r["path"] == "/reflect" {
                assert_eq!(r["masked"]["injected_secret"], 1, "{r}");
            }
        }
    }
    assert_eq!(masked["card"], 3, "{masked:?}");
    // With mask_request, what the skill sends is masked on its way out too.
    let (ok, out, err) = s.curl(&[
        "--data-binary",
        "note: ssn 123-45-6789, mail eve@example.com",
        &s.url("/pii-upload"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        json(&out)["body_sha256"],
        sha256_str("note: ssn [REDACTED:ssn], mail [REDACTED:email]"),
        "{out}"
    );
    // ...and recorded as it went upstream, masked.
    let upload =
        s.d.sessions()
            .iter()
            .flat_map(|x| s.d.requests(x["id"].as_u64().unwrap()))
            .find(|r| r["path"] == "/pii-upload")
            .expect("the upload's request record");
    assert_eq!(
        upload["request_body"], "note: ssn [REDACTED:ssn], mail [REDACTED:email]",
        "{upload}"
    );
    // The masked body is recorded (what the skill got), and replays.
    let pii_session = sessions
        .iter()
        .filter(|x| x["protocol"] == "tls")
        .find(|x| {
            s.d.requests(x["id"].as_u64().unwrap())
                .iter()
                .any(|r| r["path"] == "/pii")
        })
        .unwrap();
    let id = pii_session["id"].to_string();
    let reqs = s.d.requests(pii_session["id"].as_u64().unwrap());
    let body = reqs[0]["response_body"].as_str().unwrap();
    assert!(
        body.contains("[REDACTED:ssn]") && !body.contains("123-45-6789"),
        "{body}"
    );
    let mut c = std::process::Command::new(BIN);
    c.args(["sessions", "replay", &id, "--speed", "0", "--admin-socket"])
        .arg(s.cfg.socket());
    let (ok, out, err) = run(c, Duration::from_secs(20));
    assert!(ok, "{err}");
    assert!(
        out.contains("-> #1 GET api.test/pii") && out.contains("<- #1 200"),
        "{out}"
    );
    assert!(out.contains("| card **** **** **** 1111"), "{out}");
    // `sessions show` prints the recorded bodies too (issue 14).
    let mut c = std::process::Command::new(BIN);
    c.args(["sessions", "show", &id, "--admin-socket"])
        .arg(s.cfg.socket());
    let (ok, out, err) = run(c, Duration::from_secs(20));
    assert!(ok, "{err}");
    assert!(
        out.contains("< ") && out.contains("card **** **** **** 1111"),
        "{out}"
    );
    assert_eq!(masked["email"], 3);
    // Nothing unmasked or secret anywhere in the state directory or the log.
    let mut stack = vec![s.cfg.dir.join("state")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            for needle in [GH_SECRET, API_KEY, "123-45-6789", "AKIAIOSFODNN7EXAMPLE"] {
                assert!(
                    memchr_find(&bytes, needle.as_bytes()).is_none(),
                    "{needle} found in {}",
                    p.display()
                );
            }
        }
    }
    let log = s.d.log_text();
    for needle in [GH_SECRET, API_KEY, "123-45-6789"] {
        assert!(!log.contains(needle), "{needle} in the log");
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// SIGKILL in the middle of 1,000 requests: every request whose response
/// reached the client has its audit record, and the chain verifies.
#[test]
fn a_kill_under_load_loses_no_audit_record_of_a_delivered_response() {
    if !kernel_ready() {
        return;
    }
    let mut s = setup("auditkill");
    let script = format!(
        r#"
import requests, sys
s = requests.Session()
for n in range(1000):
    try:
        r = s.get("http://127.0.0.1:{port}/echo/%d" % n, timeout=10)
    except Exception as e:
        print("stopped", flush=True)
        break
    if r.status_code == 200:
        print(n, flush=True)
"#,
        port = s.plain_up.addr.port()
    );
    let mut child =
        s.cg.command("python3", &["-u", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut delivered = Vec::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
        match line.trim().parse::<u64>() {
            Ok(n) => delivered.push(n),
            Err(_) => break,
        }
        line.clear();
        if delivered.len() == 300 {
            s.d.signal(libc::SIGKILL);
        }
    }
    let _ = child.wait();
    assert!(
        delivered.len() >= 300 && delivered.len() < 1000,
        "{} delivered",
        delivered.len()
    );

    // The daemon is down: the CLI reads the store itself.
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args)
            .arg("--state-dir")
            .arg(s.cfg.dir.join("state"))
            .arg("--admin-socket")
            .arg(s.cfg.socket());
        run(c, Duration::from_secs(60))
    };
    let (ok, out, err) = cli(&["audit", "verify"]);
    assert!(ok, "verify failed: {out}{err}");
    assert!(out.contains("hash chain verified"), "{out}");
    let anchor = out
        .lines()
        .find_map(|l| l.strip_prefix("head (keep it, then check with --anchor): "))
        .unwrap_or_else(|| panic!("no head printed: {out}"))
        .to_string();
    let (ok, out, err) = cli(&["audit", "export", "--format", "jsonl"]);
    assert!(ok, "{err}");
    let paths: std::collections::HashSet<String> = out
        .lines()
        .map(json)
        .filter(|r| r["kind"] == "request")
        .map(|r| r["data"]["path"].as_str().unwrap().to_string())
        .collect();
    for n in &delivered {
        assert!(
            paths.contains(&format!("/echo/{n}")),
            "request {n} was answered but has no audit record"
        );
    }
    // SIEM formats.
    let (ok, out, _) = cli(&["audit", "export", "--format", "cef", "--since", "1"]);
    assert!(
        ok && out
            .lines()
            .next()
            .unwrap()
            .starts_with("CEF:0|interceptor|"),
        "{out}"
    );
    let (ok, out, _) = cli(&["audit", "export", "--format", "ocsf"]);
    assert!(ok && json(out.lines().last().unwrap())["class_uid"] == 4002);
    // A restarted daemon continues the same chain.
    s.d.restart();
    let (ok, _, _) = s.curl(&["-o", "/dev/null", &s.url("/echo/after")]);
    assert!(ok);
    let (ok, out, err) = cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    // An export that marks what it wrote: the daemon keeps the last record
    // the reader has, which audit retention may then remove.
    let (ok, out, err) = cli(&["audit", "export", "--mark-exported"]);
    assert!(ok, "{err}");
    let last = json(out.lines().last().unwrap())["seq"].as_u64().unwrap();
    let mark = std::fs::read_to_string(s.cfg.dir.join("state/audit/exported")).unwrap();
    assert_eq!(mark.trim().parse::<u64>().unwrap(), last, "{mark}");
    // The anchor kept before: nothing up to it was rewritten since.
    let (ok, out, err) = cli(&["audit", "verify", "--anchor", &anchor]);
    assert!(ok && out.contains("unchanged since"), "{out}{err}");
    let (seq, _) = anchor.split_once(':').unwrap();
    let forged = format!("{seq}:{}", "0".repeat(64));
    let (ok, _, err) = cli(&["audit", "verify", "--anchor", &forged]);
    assert!(!ok && err.contains("not the anchor's"), "{err}");
    // Machine-readable, and a finding exits 1 (could not check: 2).
    let (ok, out, err) = cli(&["audit", "verify", "--json", "--anchor", &anchor]);
    let v = json(&out);
    assert!(
        ok && v["ok"] == true && v["anchor"] == anchor.as_str(),
        "{out}{err}"
    );
    assert!(
        v["records"].as_u64() > Some(1) && v["problems"] == serde_json::json!([]),
        "{v}"
    );
    let verify = |extra: &[&str]| {
        let o = std::process::Command::new(BIN)
            .args(["audit", "verify", "--json", "--admin-socket"])
            .arg(s.cfg.socket())
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let state = s.cfg.dir.join("state");
    let (code, out) = verify(&["--anchor", &forged, "--state-dir", state.to_str().unwrap()]);
    let v = json(&out);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        v["ok"] == false
            && v["problems"][0]
                .as_str()
                .unwrap()
                .contains("not the anchor's"),
        "{v}"
    );
    let o = std::process::Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--json",
            "--admin-socket",
            "/nonexistent.sock",
        ])
        .args(["--state-dir", "/nonexistent-state"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent-state"), "{err}");
}

/// Just-in-time approvals, end to end: the skill (curl as nobody) waits on
/// its request while an approver (root, over the admin socket) decides.
#[test]
fn held_requests_wait_for_an_approver() {
    if !kernel_ready() {
        return;
    }
    let mut s = setup_with("approvals", |cfg| {
        let hook = Upstream::start("127.0.0.1:0", |mut c| {
            let mut buf = vec![0u8; 65536];
            let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
            HOOK_BODIES
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ =
                std::io::Write::write_all(&mut c, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        });
        cfg.extra.push_str(&format!(
            "approval_webhook = \"http://{}/hook\"\n",
            hook.addr
        ));
        std::mem::forget(hook);
    });
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(BIN);
        c.args(args).arg("--admin-socket").arg(s.cfg.socket());
        run(c, Duration::from_secs(30))
    };
    let pending = || -> Vec<Value> {
        let (ok, out, err) = cli(&["approvals", "list", "--pending", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let wait_pending = |path: &str| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = pending().into_iter().find(|a| a["path"] == path) {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pending approval for {path}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The skill runs as nobody, so root can approve it.
    let skill = |path: &str, as_root: bool| {
        // Field by field (not `s.url()`), so the closure does not hold `s.d`.
        let url = format!("https://api.test:{}{path}", s.tls_up.addr.port());
        let resolve = format!("api.test:{}:127.0.0.1", s.tls_up.addr.port());
        let curl_args = [
            "-sS",
            "--max-time",
            "40",
            "--cacert",
            s.ca.as_str(),
            "--resolve",
            resolve.as_str(),
            "-w",
            "\n%{http_code}",
            url.as_str(),
        ];
        let mut c = if as_root {
            s.cg.command("curl", &curl_args)
        } else {
            let mut a = vec!["--reuid=65534", "--regid=65534", "--clear-groups", "curl"];
            a.extend_from_slice(&curl_args);
            s.cg.command("setpriv", &a)
        };
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let outcome = |child: std::process::Child| -> (String, String) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };

    // Approve, with a window.
    let before = s.tls_up.requests();
    let child = skill("/deploy/1", false);
    let a = wait_pending("/deploy/1");
    assert_eq!(a["uid"], 65534);
    assert_eq!(a["rule"], "deploy");
    assert_eq!(
        s.tls_up.requests(),
        before,
        "the upstream saw a held request"
    );
    let id = a["id"].to_string();
    let (ok, out, err) = cli(&[
        "approvals",
        "approve",
        &id,
        "--window",
        "1m",
        "--reason",
        "release 42",
    ]);
    assert!(ok, "{out}{err}");
    let (code, body) = outcome(child);
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        json(&body)["headers"]["authorization"],
        sha256_str(&format!("Bearer {GH_SECRET}"))
    );
    // The window: the same request from the same workload, uid and user
    // passes without asking (tests/e2e/approvals.rs shows what it does not
    // cover).
    let (code, _) = outcome(skill("/deploy/1", false));
    assert_eq!(code, "200");
    // Deny: a 403 with the reason; the upstream never sees it.
    let before = s.tls_up.requests();
    let child = skill("/ship/1", false);
    let id = wait_pending("/ship/1")["id"].to_string();
    assert!(cli(&["approvals", "deny", &id, "--reason", "change freeze"]).0);
    let (code, body) = outcome(child);
    assert_eq!(code, "403");
    let v = json(&body);
    assert_eq!(v["error"], "approval_denied");
    assert!(
        v["message"].as_str().unwrap().contains("change freeze"),
        "{v}"
    );
    assert_eq!(s.tls_up.requests(), before);
    // Timeout: denied by default.
    let (code, body) = outcome(skill("/expire/1", false));
    assert_eq!(
        (code.as_str(), json(&body)["error"].as_str()),
        ("403", Some("approval_expired"))
    );
    // A requester cannot approve its own request (root's skill, root approver).
    let child = skill("/ship/2", true);
    let id = wait_pending("/ship/2")["id"].to_string();
    let (ok, _, err) = cli(&["approvals", "approve", &id]);
    assert!(!ok && err.contains("cannot approve it"), "{err}");
    assert!(cli(&["approvals", "deny", &id, "--reason", "no self-service"]).0);
    assert_eq!(outcome(child).0, "403");
    // The webhook heard about the pending approvals.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !HOOK_BODIES
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.contains("/deploy/1") && b.contains("\"text\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "webhook not called: {:?}",
            HOOK_BODIES.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A stop while pending: the client gets a clear error, the record says so.
    let child = skill("/ship/3", false);
    let id = wait_pending("/ship/3")["id"].as_u64().unwrap();
    s.d.signal(libc::SIGTERM);
    let (code, body) = outcome(child);
    assert_eq!(
        (code.as_str(), json(&body)["error"].as_str()),
        ("503", Some("approval_interrupted")),
        "{body}"
    );
    s.d.restart();
    // A kill while pending: the connection just drops; the next start marks it.
    let child = skill("/ship/4", false);
    let killed = wait_pending("/ship/4")["id"].as_u64().unwrap();
    s.d.signal(libc::SIGKILL);
    assert_ne!(outcome(child).0, "200");
    s.d.restart();
    let (ok, out, _) = cli(&["approvals", "show", &killed.to_string(), "--json"]);
    assert!(ok && json(&out)["state"] == "interrupted", "{out}");
    let (ok, out, _) = cli(&["approvals", "show", &id.to_string()]);
    assert!(ok && out.contains("state:      interrupted"), "{out}");
}

static HOOK_BODIES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[test]
fn sse_streams_are_masked_as_they_flow() {
    if !kernel_ready() {
        return;
    }
    let s = setup("ssemask");
    // The first event must arrive (masked) while the upstream holds the
    // rest; later events carry a key split across two chunks.
    let script = format!(
        r#"
import requests
base = "https://127.0.0.1:{port}"
r = requests.get(base + "/pii-sse", stream=True, timeout=20)
lines = r.iter_lines()
first = next(l for l in lines if l)
print(first.decode(), flush=True)
requests.get(base + "/release", timeout=20)
for l in lines:
    if l:
        print(l.decode(), flush=True)
"#,
        port = s.tls_up.addr.port()
    );
    let mut cmd = s.cg.command("python3", &["-c", &script]);
    cmd.env("REQUESTS_CA_BUNDLE", &s.ca);
    let (ok, out, err) = run(cmd, Duration::from_secs(60));
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "data: first card **** **** **** 1111\n\
         data: event 2 key [REDACTED:aws_access_key]\n\
         data: event 3 key [REDACTED:aws_access_key]\n"
    );
}

/// A credential whose file is missing is reported when the daemon starts,
/// and a request that would inject it is refused with a 502 that names
/// the rule (issue 14).
#[test]
fn a_missing_credential_is_reported_at_start_and_named_on_refusal() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("nocred");
    let up = HttpUpstream::start("127.0.0.1:0", None);
    let mut cfg = DaemonConfig::new(&[&cg], "");
    cfg.extra = cfg.credentials(&[]);
    cfg.set_policy(&format!(
        "[credential.gone]\nsource = \"file:gone\"\nheader = \"x-api-key\"\n\n\
         [[rule]]\nid = \"needs-gone\"\nworkload = {w:?}\ndestination = \"{a}\"\ninject = \"gone\"\naction = \"allow\"\n",
        w = cg.rel,
        a = up.addr
    ));
    let d = Daemon::start(&cfg);
    assert!(
        d.log_text().contains("credential cannot be read") && d.log_text().contains("gone"),
        "{}",
        d.log_text()
    );
    let (_, out, err) = run(
        cg.command(
            "curl",
            &[
                "-sS",
                "-w",
                "\n%{http_code}",
                &format!("http://{}/x", up.addr),
            ],
        ),
        Duration::from_secs(20),
    );
    let (body, code) = out
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("{out}{err}"));
    assert_eq!(code, "502", "{out}");
    let v = json(body);
    assert_eq!(v["error"], "credential_unavailable");
    assert_eq!(v["rule"], "needs-gone");
    assert_eq!(up.requests(), 0);
}
