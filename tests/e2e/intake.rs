//! Issue 11, item 9: intake under abuse. Slow headers are timed out, each
//! workload has a cap on open connections so a flood from one skill does not
//! starve another, and a client that is slow to speak is still decided as
//! the HTTP it is, not as opaque TCP.
use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn one_workload_floods_another_keeps_being_served() {
    if !kernel_ready() {
        return;
    }
    let flood = TestCgroup::new("flood");
    let calm = TestCgroup::new("calm");
    let up = HttpUpstream::start("127.0.0.1:0", None);
    let mut cfg = DaemonConfig::new(&[&flood, &calm], "");
    // A daemon with 512 file descriptors: 600 connections from one skill
    // would take them all (the default cap per workload is a quarter).
    cfg.nofile = Some(512);
    cfg.extra = "client_header_timeout_ms = 3000\n".into();
    // Both may reach the upstream; the rule needs the request (method), so
    // every connection is read as HTTP.
    cfg.set_policy(&format!(
        "[[rule]]\nid = \"up\"\ndestination = \"{}\"\nmethod = [\"GET\", \"POST\"]\naction = \"allow\"\n",
        up.addr
    ));
    let d = Daemon::start(&cfg);

    // 600 slowloris connections: a request line, then nothing. Each one
    // the proxy kept is closed by the header timeout.
    let script = format!(
        r#"
import socket, time
socks, refused = [], 0
for i in range(600):
    try:
        s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    except OSError:
        refused += 1
print("opened", len(socks), "refused", refused, flush=True)
# Hold them while the other workload works, then see who closed them.
time.sleep(float({hold}))
closed = 0
for s in socks:
    s.settimeout(0.2)
    try:
        if s.recv(100) == b"":
            closed += 1
    except ConnectionResetError:
        closed += 1
    except socket.timeout:
        pass
print("closed", closed, "of", len(socks), flush=True)
"#,
        port = up.addr.port(),
        hold = 8
    );
    let flooder = flood
        .command("python3", &["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the flood holds its connections, the calm workload is served.
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("http://127.0.0.1:{}/echo", up.addr.port());
    let started = Instant::now();
    for i in 0..20 {
        let (ok, out, err) = run(
            calm.command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ],
            ),
            Duration::from_secs(10),
        );
        assert!(
            ok && out == "200",
            "request {i} of the calm workload: {out}{err}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = flooder.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // At most the cap was kept open; every kept one timed out.
    let mut lines = text.lines();
    let opened: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let closed: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    assert_eq!(opened.len(), 4, "{text}");
    assert_eq!(closed.len(), 4, "{text}");
    assert_eq!(
        closed[1], closed[3],
        "slow headers were not timed out: {text}"
    );
    // The refusals are on record.
    let log = d.log_text();
    assert!(
        log.contains("max_connections_per_workload"),
        "no refusal for the cap was logged"
    );
}

#[test]
fn a_client_slow_to_speak_is_still_read_as_http() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("slowspeak");
    let up = HttpUpstream::start("127.0.0.1:0", None);
    let mut cfg = DaemonConfig::new(
        &[&cg],
        &format!(
            "[[rule]]\nid = \"up\"\nworkload = {:?}\ndestination = \"{}\"\nmethod = [\"GET\", \"POST\"]\naction = \"allow\"\n",
            cg.rel, up.addr
        ),
    );
    cfg.extra = "client_body_timeout_ms = 1500\n".into();
    let _d = Daemon::start(&cfg);
    // Connect, wait 2 s (well past the old 500 ms detection window), then
    // send a request: it is HTTP, and allowed.
    let script = format!(
        r#"
import socket, time
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
time.sleep(2)
s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while True:
    c = s.recv(4096)
    if not c:
        break
    got += c
print(got.split(b"\r\n")[0].decode())
# A body that stops halfway: the proxy gives up on it (408) instead of
# holding the connection and an upstream connection open.
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
t = time.time()
got = b""
while True:
    c = s.recv(4096)
    if not c:
        break
    got += c
    if b"\r\n\r\n" in got:
        break
print(got.split(b"\r\n")[0].decode(), round(time.time() - t))
"#,
        port = up.addr.port()
    );
    let (ok, out, err) = run(
        cg.command("python3", &["-c", &script]),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK", "{out}");
    assert!(lines[1].starts_with("HTTP/1.1 408"), "{out}");
}

/// HTTP/2 streams whose bodies a guardrail must read, left unfinished: the
/// bodies held for inspection are bounded per workload (the rest get a
/// 503), so the daemon's memory stays flat however many streams are open.
#[test]
fn unfinished_bodies_held_for_inspection_are_bounded_per_workload() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("bodyflood");
    let up = HttpUpstream::start("127.0.0.1:0", None);
    let mut cfg = DaemonConfig::new(
        &[&cg],
        &format!(
            "[[rule]]\nid = \"no-drop\"\npath = \"/sql\"\nbody_regex = ['(?i)drop\\s+table']\naction = \"deny\"\n\n\
             [[rule]]\nid = \"up\"\nworkload = {:?}\ndestination = \"{}\"\nmethod = [\"GET\", \"POST\"]\naction = \"allow\"\n",
            cg.rel, up.addr
        ),
    );
    cfg.extra = "inspect_buffer_mb_per_workload = 8\n".into();
    let d = Daemon::start(&cfg);
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let before = rss();
    // 2 connections x 60 streams, ~1 MiB each, never ended; held 4 s.
    let script = format!(
        r#"
import socket, sys, time, threading
import h2.connection, h2.config, h2.events
BODY = b"a" * (1024 * 1024 - 100)
res = {{"503": 0, "sent": 0}}
lock = threading.Lock()
def one():
    s = socket.create_connection(("127.0.0.1", {port}))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection(); s.sendall(c.data_to_send()); s.settimeout(0.2)
    def pump():
        try:
            for e in c.receive_data(s.recv(1 << 20)):
                if isinstance(e, h2.events.ResponseReceived):
                    if dict(e.headers).get(b":status") == b"503":
                        with lock: res["503"] += 1
            s.sendall(c.data_to_send())
        except (socket.timeout, BlockingIOError):
            pass
    pump()
    sent = {{}}
    for _ in range(60):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/sql")])
        sent[sid] = 0
    s.sendall(c.data_to_send())
    t = time.time()
    while time.time() - t < 15 and any(v < len(BODY) for v in sent.values()):
        for sid in list(sent):
            try:
                n = min(c.local_flow_control_window(sid), len(BODY) - sent[sid], c.max_outbound_frame_size)
                if n > 0:
                    c.send_data(sid, BODY[:n]); sent[sid] += n
            except Exception:
                sent.pop(sid)
        s.sendall(c.data_to_send()); pump()
    with lock: res["sent"] += sum(sent.values())
    t = time.time()
    while time.time() - t < 4:
        pump()
    s.close()
ts = [threading.Thread(target=one) for _ in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]
print(res["503"], res["sent"])
"#,
        port = up.addr.port()
    );
    let mut child = cg
        .command("python3", &["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Sample the daemon's memory while the streams are held.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(rss());
        assert!(Instant::now() < deadline, "the h2 client did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let nums: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{text}{err}");
    assert!(
        nums[0] > 0,
        "no stream was refused for want of budget: {text}{err}"
    );
    let grown_mib = (peak - before) / 1024;
    assert!(
        grown_mib < 48,
        "the daemon grew by {grown_mib} MiB holding {} MiB of unfinished bodies",
        nums[1] >> 20
    );
}
