//! Issue 11, items 1-3: the request the policy decides is exactly the
//! request the upstream acts on. Real servers that normalise the way
//! servers do (Debian's nginx, a Flask/werkzeug app) behind a deny rule on
//! `/admin/**` and `DELETE`: every raw form that reaches `/admin` on them
//! directly is refused through the proxy, and the upstream receives the
//! host that was decided on.
use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

macro_rules! require_kernel {
    () => {
        if !kernel_ready() {
            return;
        }
    };
}

/// A background server, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nginx(dir: &Path, port: u16) -> Server {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/b;\n  proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port} default_server; server_name public.test;\n\
               location /admin {{ return 200 \"ADMIN $uri\\n\"; }}\n\
               location / {{ return 200 \"PUBLIC host=$host uri=$uri\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{port}; server_name internal.test;\n\
               location / {{ return 200 \"INTERNAL\\n\"; }} }}\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx; scripts/setup.sh does)");
    wait_port(port);
    Server(child)
}

const FLASK_APP: &str = r#"
import sys
from flask import Flask, request
app = Flask(__name__)
LOG = sys.argv[2]
ALL = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]

def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\n")

@app.route("/admin", defaults={"rest": ""}, methods=ALL)
@app.route("/admin/<path:rest>", methods=ALL)
def admin(rest):
    log("ADMIN " + request.method + " " + request.path)
    return "ADMIN\n"

@app.route("/items/<i>", methods=ALL)
def items(i):
    log(request.method + " /items/" + i)
    return request.method + "\n"

@app.route("/", defaults={"p": ""}, methods=ALL)
@app.route("/<path:p>", methods=ALL)
def public(p):
    return "PUBLIC host=" + request.host + "\n"

app.run(host="127.0.0.1", port=int(sys.argv[1]))
"#;

fn flask(dir: &Path, port: u16) -> (Server, PathBuf) {
    let app = dir.join("app.py");
    std::fs::write(&app, FLASK_APP).unwrap();
    let log = dir.join("flask.log");
    std::fs::write(&log, "").unwrap();
    let child = Command::new("python3")
        .arg(&app)
        .arg(port.to_string())
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with flask (scripts/setup.sh installs it)");
    wait_port(port);
    (Server(child), log)
}

/// curl's status code and body for a raw request target.
fn curl(cmd: Command) -> (String, String) {
    let (_, out, err) = run(cmd, Duration::from_secs(30));
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    (code.trim().to_string(), format!("{body}{err}"))
}

fn curl_args(c: &mut Command, method: &str, port: u16, target: &str) {
    c.args(["-sS", "--path-as-is", "-X", method, "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{target}"));
}

const ATTACK_PATHS: [&str; 12] = [
    "/admin",
    "/admin/x",
    "/%61dmin/x",
    "/adm%69n",
    "//admin/x",
    "/./admin/x",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/..%2fadmin/x",
    "/admin%2fx",
    "/admin;x",
    "/public/%2E%2E/%61dmin",
];

#[test]
fn the_upstream_acts_on_the_request_that_was_decided() {
    require_kernel!();
    let cg = TestCgroup::new("canon");
    let (np, fp) = (free_port(), free_port());
    let mut cfg = DaemonConfig::new(&[&cg], "");
    let secret = "sk-CANON-5151";
    cfg.extra = cfg.credentials(&[("api", secret)]);
    cfg.set_policy(&format!(
        "[credential.api]\nsource = \"file:api\"\nheader = \"x-api-key\"\n\n\
         [[rule]]\nid = \"no-admin\"\nworkload = {w:?}\npath = \"/admin/**\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"no-delete\"\nworkload = {w:?}\nmethod = \"DELETE\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"api\"\nworkload = {w:?}\ndestination = [\"127.0.0.1:{np}\", \"127.0.0.1:{fp}\"]\n\
         inject = \"api\"\naction = \"allow\"\n",
        w = cg.rel
    ));
    let _nginx = nginx(&cfg.dir, np);
    let (_flask, flask_log) = flask(&cfg.dir, fp);
    let _d = Daemon::start(&cfg);

    // Directly (outside the cgroup) these forms do reach /admin: the test
    // can fail.
    for (port, target) in [
        (np, "/%61dmin/x"),
        (np, "/public/%2e%2e/admin/x"),
        (fp, "/adm%69n"),
    ] {
        let mut c = Command::new("curl");
        curl_args(&mut c, "GET", port, target);
        let (code, body) = curl(c);
        assert!(
            body.contains("ADMIN"),
            "direct {target} on {port}: {code} {body}"
        );
    }
    std::fs::write(&flask_log, "").unwrap();

    // 1. Paths: through the proxy, refused by the rule (403) or as
    // non-canonical (400), never the upstream's /admin.
    for port in [np, fp] {
        for target in ATTACK_PATHS {
            let mut c = cg.command("curl", &[]);
            curl_args(&mut c, "GET", port, target);
            let (code, body) = curl(c);
            assert!(
                (code == "403" && body.contains("no-admin"))
                    || (code == "400" && body.contains("non_canonical_request")),
                "{target} on {port}: {code} {body}"
            );
            assert!(!body.contains("ADMIN"), "{target} on {port}: {body}");
        }
    }
    // What is allowed goes upstream in its canonical form.
    let mut c = cg.command("curl", &[]);
    curl_args(&mut c, "GET", np, "/p%75blic//a/./b/../c");
    let (code, body) = curl(c);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("uri=/public/a/c"), "{body}");

    // 2. Methods: a lower-case spelling of a denied method is refused.
    let mut c = cg.command("curl", &[]);
    curl_args(&mut c, "delete", fp, "/items/1");
    let (code, body) = curl(c);
    assert_eq!(code, "400", "{body}");
    let mut c = cg.command("curl", &[]);
    curl_args(&mut c, "DELETE", fp, "/items/1");
    let (code, body) = curl(c);
    assert_eq!(code, "403", "{body}");
    let seen = std::fs::read_to_string(&flask_log).unwrap();
    assert!(
        !seen.contains("DELETE") && !seen.contains("ADMIN"),
        "{seen}"
    );

    // 3. Host: the upstream receives the host decided on, not another
    // Host header beside an absolute-form target.
    let mut c = cg.command("curl", &[]);
    c.args(["-sS", "-w", "\n%{http_code}", "--request-target"])
        .arg("http://public.test/x")
        .args(["-H", "Host: internal.test"])
        .arg(format!("http://127.0.0.1:{np}/"));
    let (code, body) = curl(c);
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("PUBLIC host=public.test") && !body.contains("INTERNAL"),
        "{body}"
    );
    assert!(!body.contains(secret));
}

/// The per-rule opt-out: an API that needs `%2F` or `;` in paths may
/// accept them on its rule, and only when the decoded reading of the path
/// (what nginx acts on) comes to the same rule.
#[test]
fn a_rule_may_accept_encoded_slashes_when_every_reading_agrees() {
    require_kernel!();
    let cg = TestCgroup::new("canon-opt");
    let np = free_port();
    let cfg = DaemonConfig::new(&[&cg], "");
    cfg.set_policy(&format!(
        "[[rule]]\nid = \"no-admin\"\nworkload = {w:?}\npath = \"/admin/**\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"no-secret\"\nworkload = {w:?}\npath = \"/files/secret/**\"\naction = \"deny\"\n\n\
         [[rule]]\nid = \"files\"\nworkload = {w:?}\npath = \"/files/**\"\n\
         non_canonical = [\"encoded_slash\", \"parameters\"]\naction = \"allow\"\n\n\
         [[rule]]\nid = \"rest\"\nworkload = {w:?}\ndestination = \"127.0.0.1:{np}\"\naction = \"allow\"\n",
        w = cg.rel
    ));
    let _nginx = nginx(&cfg.dir, np);
    let _d = Daemon::start(&cfg);
    let get = |target: &str| {
        let mut c = cg.command("curl", &[]);
        curl_args(&mut c, "GET", np, target);
        curl(c)
    };
    let (code, body) = get("/files/a%2fb");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("uri=/files/a/b"), "{body}");
    let (code, body) = get("/files/v;x=1");
    assert_eq!(code, "200", "{body}");
    for target in [
        "/files/..%2Fadmin/x",
        "/files/..;/admin/x",
        "/files/a%2F%2Fb",
    ] {
        let (code, body) = get(target);
        assert_eq!(code, "400", "{target}: {body}");
        assert!(body.contains("non_canonical_request"), "{body}");
    }
    // Read as /files/secret/x by nginx: the deny rule decides.
    let (code, body) = get("/files/secret%2Fx");
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("no-secret"), "{body}");
    // A rule that does not opt in: refused as before.
    let (code, body) = get("/public/a%2Fb");
    assert_eq!(code, "400", "{body}");
}
