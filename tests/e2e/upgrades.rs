//! Issue 11, item 4: an upgrade never turns a decided request into an
//! undecided byte stream. h2c is never forwarded (its h2 streams would never
//! be decided); WebSocket only where a rule says `upgrade = ["websocket"]`,
//! and then the proxy parses its frames both ways, masks and records them,
//! and ends a connection that stops being a frame stream.
use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

const SECRET: &str = "ghp-WS-4f0c9d";

struct Lab {
    cg: TestCgroup,
    _cfg: DaemonConfig,
    d: Daemon,
    tls_up: HttpUpstream,
    plain_up: HttpUpstream,
    ca: String,
}

fn lab(tag: &str) -> Lab {
    lab_with(tag, "")
}

fn lab_with(tag: &str, extra: &str) -> Lab {
    let cg = TestCgroup::new(tag);
    let mut cfg = DaemonConfig::new(&[&cg], "");
    let pki = TestPki::new(&cfg.dir, "upstream");
    let tls_up = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    let plain_up = HttpUpstream::start("127.0.0.1:0", None);
    let creds = cfg.credentials(&[("gh", SECRET)]);
    cfg.extra = format!("{creds}upstream_ca_files = [{:?}]\n{extra}", pki.ca_pem);
    cfg.set_policy(&format!(
        r#"
[credential.gh]
source = "file:gh"
header = "Authorization"
format = "Bearer {{secret}}"

[mask.pii]
detectors = ["all"]

[[rule]]
id = "no-admin"
workload = "{w}"
path = "/admin/**"
action = "deny"

[[rule]]
id = "ws"
workload = "{w}"
host = "api.test"
scheme = "https"
path = "/ws"
upgrade = ["websocket"]
inject = "gh"
mask = "pii"
action = "allow"

[[rule]]
id = "api"
workload = "{w}"
host = "api.test"
scheme = "https"
inject = "gh"
action = "allow"

[[rule]]
id = "plain"
workload = "{w}"
destination = "{plain}"
action = "allow"
"#,
        w = cg.rel,
        plain = plain_up.addr
    ));
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file().to_string_lossy().into_owned();
    Lab {
        cg,
        _cfg: cfg,
        d,
        tls_up,
        plain_up,
        ca,
    }
}

/// Runs a Python script in the workload cgroup; its stdout, trimmed.
fn py_in(l: &Lab, script: &str) -> String {
    let (ok, out, err) = run(
        l.cg.command("python3", &["-c", script]),
        Duration::from_secs(90),
    );
    assert!(ok, "{out}{err}");
    out.trim().to_string()
}

/// A raw HTTP/1.1 exchange (TLS when `tls`): the status line of the answer,
/// then what the connection carries after sending `after`.
fn raw_upgrade(l: &Lab, tls: bool, head: &str, after: &str) -> String {
    let port = if tls {
        l.tls_up.addr.port()
    } else {
        l.plain_up.addr.port()
    };
    py_in(
        l,
        &format!(
            r#"
import socket, ssl
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
if {tls}:
    ctx = ssl.create_default_context(cafile={ca:?})
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname="api.test")
s.sendall({head:?}.encode())
head = b""
while b"\r\n\r\n" not in head:
    c = s.recv(1)
    if not c:
        break
    head += c
print(head.decode().split("\r\n")[0])
s.sendall({after:?}.encode())
got = b""
try:
    while True:
        c = s.recv(4096)
        if not c:
            break
        got += c
except Exception as e:
    got += ("<" + type(e).__name__ + ">").encode()
print(repr(got))
"#,
            tls = if tls { "True" } else { "False" },
            ca = l.ca,
        ),
    )
}

#[test]
fn h2c_upgrades_are_never_forwarded() {
    if !kernel_ready() {
        return;
    }
    let l = lab("h2c");
    // Upgrade: h2c (and then the HTTP/2 preface plus a request for the
    // denied path, as an h2c client would) in the clear and inside TLS.
    let preface =
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: api.test\r\n\r\n";
    for tls in [false, true] {
        let out = raw_upgrade(
            &l,
            tls,
            "GET /upgrade HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            preface,
        );
        let (status, _) = out.split_once('\n').unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "tls={tls}: {out}");
        assert!(
            !out.contains("ADMIN") && !out.contains("secret"),
            "tls={tls}: {out}"
        );
    }
    // The upstream never saw an upgrade, only the plain requests.
    for up in [&l.tls_up, &l.plain_up] {
        assert!(up.requests() >= 1);
    }
}

#[test]
fn websocket_only_where_a_rule_allows_it_and_then_frame_by_frame() {
    if !kernel_ready() {
        return;
    }
    let l = lab("ws");
    let handshake = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        )
    };
    // A rule without upgrade = ["websocket"]: refused, nothing upgraded.
    let out = raw_upgrade(&l, true, &handshake("/upgrade"), "");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("upgrade_not_allowed"), "{out}");

    // Where it is allowed, a real client (the websockets package): the
    // credential is injected upstream, and what comes back is masked.
    let script = format!(
        r#"
import socket, ssl
from websockets.sync.client import connect
# A client stuck past its own timeouts prints where each thread is, and
# exits, instead of hanging until the harness's limit.
import faulthandler; faulthandler.dump_traceback_later(40, exit=True)
ctx = ssl.create_default_context(cafile={ca:?})
# api.test is not in DNS: the socket goes to 127.0.0.1, the name is kept.
sock = socket.create_connection(("127.0.0.1", {port}), timeout=10)
with connect("wss://api.test:{port}/ws", sock=sock, ssl=ctx, open_timeout=10,
             additional_headers={{"Authorization": "Bearer forged"}}) as ws:
    ws.send("whoami")
    print(ws.recv(timeout=10))
    ws.send("hello 4111 1111 1111 1111")
    print(ws.recv(timeout=10))
"#,
        ca = l.ca,
        port = l.tls_up.addr.port()
    );
    let out = py_in(&l, &script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("you are "), "{out}");
    assert!(!out.contains(SECRET) && !out.contains("forged"), "{out}");
    assert!(!out.contains("4111 1111 1111 1111"), "{out}");
    assert!(out.contains("REDACTED"), "{out}");
    // The upstream got the real credential, and the skill's own text as sent.
    let seen = l.tls_up.ws.texts.lock().unwrap().clone();
    assert_eq!(seen, vec!["whoami", "hello 4111 1111 1111 1111"]);
    // Recorded: one request, its messages and the masked transcript.
    let rec = wait_ws_record(&l);
    assert_eq!(rec["rule"], "ws", "{rec}");
    assert_eq!(rec["messages_up"], 2, "{rec}");
    assert_eq!(rec["messages_down"], 2, "{rec}");
    assert!(
        rec["error"].is_null(),
        "a clean close is not an error: {rec}"
    );
    let transcript = rec["response_body"].as_str().unwrap_or_default();
    assert!(transcript.contains("> whoami"), "{rec}");
    assert!(!transcript.contains("4111 1111 1111 1111"), "{rec}");
    assert!(!transcript.contains(SECRET), "{rec}");

    // A 101 followed by raw HTTP: not a frame stream, so the connection
    // ends and nothing reaches the upstream (which would see a protocol
    // error if the bytes were passed).
    let out = raw_upgrade(
        &l,
        true,
        &handshake("/ws"),
        "GET /admin/secret HTTP/1.1\r\nHost: api.test\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        l.tls_up
            .ws
            .protocol_errors
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "raw bytes after the 101 reached the upstream"
    );
    assert_eq!(l.tls_up.ws.texts.lock().unwrap().len(), 2);

    // The reason of the upstream's close frame is masked too.
    let script = format!(
        r#"
import socket, ssl
from websockets.sync.client import connect
# A client stuck past its own timeouts prints where each thread is, and
# exits, instead of hanging until the harness's limit.
import faulthandler; faulthandler.dump_traceback_later(40, exit=True)
ctx = ssl.create_default_context(cafile={ca:?})
sock = socket.create_connection(("127.0.0.1", {port}), timeout=10)
with connect("wss://api.test:{port}/ws", sock=sock, ssl=ctx, open_timeout=10) as ws:
    ws.send("close-with-key")
    try:
        ws.recv(timeout=10)
    except Exception as e:
        print("closed", e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None)
"#,
        ca = l.ca,
        port = l.tls_up.addr.port()
    );
    let out = py_in(&l, &script);
    assert!(out.starts_with("closed 4001 bad "), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    assert!(!out.contains("4111 1111 1111 1111"), "{out}");
}

/// The WebSocket request's record, once its relay ended and rewrote it.
fn wait_ws_record(l: &Lab) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reqs: Vec<Value> =
            l.d.sessions()
                .iter()
                .flat_map(|s| l.d.requests(s["id"].as_u64().unwrap()))
                .collect();
        if let Some(r) = reqs
            .iter()
            .find(|r| r["messages_up"].as_u64().unwrap_or(0) > 0)
        {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no WebSocket record: {reqs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A frame is held whole until complete: its size is capped (1 MiB each
/// way) and each open WebSocket draws what it may hold (4 MiB) from the
/// workload's budget, so unfinished or large frames cannot grow the daemon.
#[test]
fn unfinished_websocket_frames_are_bounded() {
    if !kernel_ready() {
        return;
    }
    let l = lab_with("wsmem", "inspect_buffer_mb_per_workload = 12\n");
    let out = py_in(
        &l,
        &format!(
            r#"
import socket, ssl, struct, time
ctx = ssl.create_default_context(cafile={ca:?})
ctx.set_alpn_protocols(["http/1.1"])
def upgrade():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port}), timeout=30), server_hostname="api.test")
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(1)
        if not c:
            break
        head += c
    return s, head.split(b" ")[1].decode() if head else "closed"
# A frame that declares 2 MiB: refused at its header.
s, st = upgrade()
state = "open"
try:
    s.sendall(bytes([0x82, 0xFF]) + struct.pack(">Q", 2 << 20) + b"mask" + b"x" * 65536)
except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
    state = "closed"
s.settimeout(5)
try:
    while state == "open":
        if s.recv(4096) == b"":
            state = "closed"
except socket.timeout:
    pass
except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
    state = "closed"
print("big", st, state)
s.close()
# The relay of the refused frame gives its memory back as it ends.
time.sleep(1)
# Three open WebSockets fit in 12 MiB (4 each); the fourth is refused.
open_ = [upgrade() for _ in range(4)]
print(" ".join(st for _, st in open_))
"#,
            ca = l.ca,
            port = l.tls_up.addr.port()
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "big 101 closed", "{out}");
    assert_eq!(lines[1], "101 101 101 503", "{out}");
}
