//! `cargo xtask demo`: the daemon, a skill in a cgroup, local upstreams, and
//! what the operator sees. Runs as root; cleans up after itself.
use crate::lab::{self, Lab, Upstream};
use anyhow::{Result, bail};
use std::process::Command;
use std::time::Duration;

const POLICY: &str = r#"# Demo policy (first match wins, default deny).

# The API's token: the daemon reads it, the skill never sees it.
[credential.demo-api]
source = "file:demo-api"
header = "Authorization"
format = "Bearer {secret}"

[[rule]]
id = "deny-internal"
workload = "interceptor-demo"
destination = ["127.0.0.1:18081"]
action = "deny"
reason = "internal admin API is off limits to skills"

[[rule]]
id = "deny-api-admin"
workload = "interceptor-demo"
host = "127.0.0.1"
path = "/admin/**"
action = "deny"
reason = "admin endpoints are off limits to skills"

# Responses with customer data are masked as they stream.
[mask.pii]
detectors = ["all"]
replace = { card = "last4" }
json_paths = ["$.customers[*].ssn"]

# Deployments need a human: the request is held until someone approves.
[[rule]]
id = "deploy-needs-approval"
workload = "interceptor-demo"
host = "127.0.0.1"
method = "POST"
path = "/v1/deploy"
action = "approve"
approval_timeout = "60s"
destination = ["127.0.0.1:18080"]
inject = "demo-api"

[[rule]]
id = "allow-api"
workload = "interceptor-demo"
destination = ["127.0.0.1:18080"]
host = "127.0.0.1"
inject = "demo-api"
mask = "pii"
action = "allow"
"#;

/// The token only the daemon and the API know.
const DEMO_TOKEN: &str = "demo-3f9c2a7e51b04d88";

/// The API answers whether the request carried the right token, without
/// ever echoing it.
fn api_response(head: &str) -> String {
    let authorized = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {DEMO_TOKEN}")));
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    if path.starts_with("/v1/customers") {
        // Production data a skill should not read in the clear.
        return "{\"customers\":[{\"name\":\"Ann Lee\",\"email\":\"ann.lee@example.com\",\
                \"card\":\"4111 1111 1111 1111\",\"ssn\":\"078-05-1120\"}]}\n"
            .to_string();
    }
    if path.starts_with("/v1/debug") {
        // A careless endpoint that echoes the caller's credentials.
        let auth = head
            .lines()
            .find_map(|l| l.strip_prefix("authorization: "))
            .unwrap_or("");
        return format!("{{\"debug\":{{\"authorization\":\"{auth}\"}}}}\n");
    }
    format!("{{\"service\":\"api\",\"path\":\"{path}\",\"authorized\":{authorized}}}\n")
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m[{n}] {title}\x1b[0m");
}

pub fn run() -> Result<()> {
    lab::require_root()?;
    step(1, "build: eBPF object + one self-contained binary");
    let bin = lab::build_release()?;

    step(2, "local upstreams (outside the skill's cgroup)");
    let _api = Upstream::http_fn("127.0.0.1:18080", api_response)?;
    let internal = Upstream::http("127.0.0.1:18081", "{\"service\":\"internal-admin\"}\n")?;
    println!("  api       http://127.0.0.1:18080   (needs a token the skill does not have)");
    println!("  internal  http://127.0.0.1:18081   (policy: deny)");

    step(3, "the skill's cgroup, the policy and the credential");
    let lab = Lab::new(&bin, "interceptor-demo", POLICY, 15101, 15100)?;
    lab.credential("demo-api", DEMO_TOKEN)?;
    println!("  cgroup    {}", lab.cgroup.display());
    println!("  policy    {}/50-demo.toml:", lab.policies().display());
    for l in POLICY
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        println!("            {l}");
    }

    step(
        4,
        "start the daemon: interceptor run --cgroup interceptor-demo ...",
    );
    let mut daemon = lab.start_daemon()?;
    println!("  ready (log: {})", lab.log().display());

    step(
        5,
        "injection: the skill calls the API with a guessed token; the proxy puts in the real one",
    );
    let curl =
        |args: &[&str]| lab.in_cgroup_status("curl", &[&["-sS", "--max-time", "5"], args].concat());
    let out = curl(&[
        "-H",
        "Authorization: Bearer guessed-by-skill",
        "http://127.0.0.1:18080/v1/items",
    ])?;
    println!(
        "  curl -H 'Authorization: Bearer guessed-by-skill' http://127.0.0.1:18080/v1/items\n    -> {}",
        out.trim()
    );
    if !out.contains("\"authorized\":true") || out.contains(DEMO_TOKEN) {
        bail!("credential injection did not work as shown");
    }
    let py = "import socket; s=socket.create_connection(('127.0.0.1',18080)); \
              print('getpeername:', s.getpeername(), ' getsockname:', s.getsockname()); \
              s.sendall(b'GET /v1/ping HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'); s.recv(4096)";
    let out = lab.in_cgroup("python3", &["-c", py])?;
    println!(
        "  the skill still sees the address it dialled; its socket is really on the proxy:\n    {}",
        out.trim()
    );

    step(
        6,
        "masking: customer data and an echoed credential, redacted before the skill sees them",
    );
    let out = curl(&["http://127.0.0.1:18080/v1/customers"])?;
    println!(
        "  curl http://127.0.0.1:18080/v1/customers\n    -> {}",
        out.trim()
    );
    let out2 = curl(&["http://127.0.0.1:18080/v1/debug"])?;
    println!(
        "  curl http://127.0.0.1:18080/v1/debug   (the API echoes the Authorization it got)\n    -> {}",
        out2.trim()
    );
    if out.contains("078-05-1120")
        || out.contains("ann.lee@example.com")
        || out2.contains(DEMO_TOKEN)
    {
        bail!("masking did not work as shown");
    }

    step(7, "approval: a deploy is held until a human approves it");
    // The skill runs as nobody: nobody may approve their own request.
    let mut skill = lab
        .command(
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "--max-time",
                "60",
                "-X",
                "POST",
                "http://127.0.0.1:18080/v1/deploy",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut pending = String::new();
    for _ in 0..100 {
        pending = lab.cli(&["approvals", "list", "--pending"])?;
        if pending.lines().count() > 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("  skill: curl -X POST http://127.0.0.1:18080/v1/deploy   (waiting...)");
    println!("  interceptor approvals list --pending");
    for l in pending.lines() {
        println!("    {l}");
    }
    let id = pending
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("0")
        .to_string();
    let out = lab.cli(&["approvals", "approve", &id, "--reason", "demo release"])?;
    println!(
        "  interceptor approvals approve {id} --reason 'demo release'\n    {}",
        out.trim()
    );
    let mut answer = String::new();
    std::io::Read::read_to_string(skill.stdout.as_mut().unwrap(), &mut answer)?;
    skill.wait()?;
    println!("  skill's curl returns: {}", answer.trim());
    if !answer.contains("\"authorized\":true") {
        bail!("the approved request did not go through");
    }

    step(8, "denied requests");
    let out = curl(&["http://127.0.0.1:18080/admin/users"])?;
    println!(
        "  curl http://127.0.0.1:18080/admin/users\n    -> {}",
        out.trim()
    );
    let out = curl(&["http://127.0.0.1:18081/"])?;
    println!(
        "  curl http://127.0.0.1:18081/\n    -> {}\n       (refused at connect: rule deny-internal)",
        out.trim()
    );
    println!(
        "  requests the internal upstream received: {}",
        internal.hits()
    );

    step(
        9,
        "a process outside the cgroup is untouched (direct, not recorded)",
    );
    let out = lab::output(Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:18081/",
    ]))?;
    println!("  curl from the host -> {}", out.trim());

    step(
        10,
        "fail closed: SIGKILL the daemon, the skill cannot get out",
    );
    daemon.kill();
    println!(
        "  daemon down:           curl -> {}",
        curl(&["http://127.0.0.1:18080/"])?.trim()
    );
    std::thread::sleep(Duration::from_millis(3500));
    println!(
        "  heartbeat stale (3 s): curl -> {}",
        curl(&["http://127.0.0.1:18080/"])?.trim()
    );
    let mut daemon = lab.start_daemon()?;
    println!(
        "  daemon restarted:      curl -> {}",
        curl(&["http://127.0.0.1:18080/"])?.trim()
    );

    step(
        11,
        "recorded sessions and the audit log: interceptor sessions list / show, audit verify",
    );
    let table = lab.sessions_table()?;
    for l in table.lines() {
        println!("  {l}");
    }
    let detail = lab.session_detail(1)?;
    println!("\n  interceptor sessions show 1");
    for l in detail.lines() {
        println!("  {l}");
    }
    let verify = lab.cli(&["audit", "verify"])?;
    println!("\n  interceptor audit verify");
    for l in verify.lines() {
        println!("    {l}");
    }
    if !table.contains("deny-internal")
        || !detail.contains("allow-api")
        || !detail.contains("inject demo-api")
    {
        bail!("the recorded sessions lack the expected records");
    }

    step(12, "not shown here");
    println!(
        "  the package under a booted systemd (skills.slice, SIGKILL, reload,\n  \
         upgrade, reboot) is proven by `cargo xtask vm-test`. See README.md."
    );
    daemon.kill();
    println!("\ndemo finished; cgroup, hooks and temporary files removed.");
    Ok(())
}
