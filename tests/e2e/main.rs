//! End-to-end tests on the real kernel: a fresh cgroup, the real daemon,
//! real clients (curl, Python sockets) inside the cgroup, upstreams on
//! loopback outside it. Run as root (see README); they fail with a clear
//! message otherwise, unless INTERCEPTOR_SKIP_KERNEL_TESTS=1.
mod approvals;
mod canonical;
mod containment;
mod doctor;
mod harness;
mod http;
mod intake;
mod leaks;
mod peers;
mod responses;
mod streams;
mod upgrades;

use harness::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn allow_policy(cg: &TestCgroup, dests: &[String]) -> String {
    let d: Vec<String> = dests.iter().map(|d| format!("{d:?}")).collect();
    format!(
        "[[rule]]\nid = \"deny-9\"\nworkload = {:?}\ndestination = [\"*:9\"]\naction = \"deny\"\nreason = \"discard port is off limits\"\n\n\
         [[rule]]\nid = \"allow-test\"\nworkload = {:?}\ndestination = [{}]\naction = \"allow\"\n",
        cg.rel,
        cg.rel,
        d.join(", ")
    )
}

macro_rules! require_kernel {
    () => {
        if !kernel_ready() {
            return;
        }
    };
}

/// A connect from the cgroup reaches the echo upstream and gets its data back.
fn assert_ping(cg: &TestCgroup, port: &str) {
    let r = py(cg, &["connect", "127.0.0.1", port]);
    assert_eq!(r["data"], "ping\n", "{r}");
}

fn errno(v: &Value) -> i64 {
    v["errno"].as_i64().unwrap()
}

/// Read commands with no daemon and no store say which path they tried,
/// exit 1, and create nothing (issue 14).
#[test]
fn read_commands_create_no_state() {
    let dir = std::env::temp_dir().join(format!("interceptor-nostate-{}", std::process::id()));
    let state = dir.join("state");
    for args in [
        &["sessions", "list"][..],
        &["sessions", "show", "1"],
        &["audit", "verify"],
        &["audit", "export"],
    ] {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--state-dir")
            .arg(&state)
            .arg("--admin-socket")
            .arg(dir.join("no.sock"));
        let (ok, out, err) = run(c, Duration::from_secs(20));
        assert!(!ok, "{args:?}: {out}");
        assert!(
            err.contains(&state.join("store").display().to_string()),
            "{args:?}: {err}"
        );
        assert!(!state.exists(), "{args:?} created {}", state.display());
    }
}

/// An empty policy directory denies everything: `policy check` says so
/// (issue 14).
#[test]
fn an_empty_policy_directory_is_warned_of() {
    let dir = std::env::temp_dir().join(format!("interceptor-nopolicy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Command::new(BIN);
    c.args(["policy", "check"]).arg(&dir);
    let (ok, out, err) = run(c, Duration::from_secs(20));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("no rules: every connection and request of the workload is denied"),
        "{err}"
    );
}

#[test]
fn bytes_arrive_intact_and_sessions_are_attributed() {
    require_kernel!();
    let cg = TestCgroup::new("bytes");
    let echo = Upstream::echo("127.0.0.1:0");
    let web = Upstream::http("127.0.0.1:0");
    let cfg = DaemonConfig::new(
        &[&cg],
        &allow_policy(&cg, &[echo.addr.to_string(), web.addr.to_string()]),
    );
    let d = Daemon::start(&cfg);

    // 100 MB up and the same back, hashed on both ends.
    let size = 100 * 1024 * 1024;
    let r = py(
        &cg,
        &[
            "echo",
            "127.0.0.1",
            &echo.addr.port().to_string(),
            &size.to_string(),
        ],
    );
    assert_eq!(r["received"].as_u64().unwrap(), size as u64);
    assert_eq!(r["sent_sha256"], r["received_sha256"]);
    // The skill sees the address it dialled.
    assert_eq!(
        r["peer"],
        serde_json::json!(["127.0.0.1", echo.addr.port()])
    );
    let pid = r["pid"].as_u64().unwrap();
    let s = d.wait_session(|s| s["workload"]["pid"].as_u64() == Some(pid));
    assert_eq!(s["workload"]["cgroup"], cg.rel.as_str());
    assert_eq!(s["workload"]["exe"], r["exe"]);
    assert_eq!(s["destination"], echo.addr.to_string());
    assert_eq!(s["decision"], "allow");
    assert_eq!(s["rule"], "allow-test");
    assert_eq!(s["bytes_up"].as_u64().unwrap(), size as u64);
    assert_eq!(s["bytes_down"].as_u64().unwrap(), size as u64);
    assert!(s["error"].is_null(), "{s}");

    // curl downloads 20 MB over HTTP through the proxy, byte for byte.
    let n = 20 * 1024 * 1024;
    let url = format!("http://{}/bytes/{n}", web.addr);
    let out_file = cfg.dir.join("download");
    let (ok, _, err) = run(
        cg.command(
            "curl",
            &["-sS", "--fail", "-o", out_file.to_str().unwrap(), &url],
        ),
        Duration::from_secs(60),
    );
    assert!(ok, "curl: {err}");
    let got = std::fs::read(&out_file).unwrap();
    let block = pattern_block();
    let expected: Vec<u8> = block.iter().cycle().take(n).copied().collect();
    assert!(got == expected, "download differs ({} bytes)", got.len());
    let s = d.wait_session(|s| {
        s["workload"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/curl"))
    });
    assert_eq!(s["destination"], web.addr.to_string());
    assert!(s["bytes_down"].as_u64().unwrap() > n as u64);
}

#[test]
fn two_hundred_concurrent_connections() {
    require_kernel!();
    let cg = TestCgroup::new("conc");
    let echo = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    let d = Daemon::start(&cfg);
    let r = py(
        &cg,
        &[
            "concurrent",
            "127.0.0.1",
            &echo.addr.port().to_string(),
            "200",
        ],
    );
    assert_eq!(r["ok"], 200, "{r}");
    assert_eq!(echo.accepted(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = d
            .sessions()
            .iter()
            .filter(|s| s["state"] == "closed" && s["decision"] == "allow")
            .count();
        if n == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 200 sessions recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn upstream_sees_the_proxy_and_the_skill_sees_the_original_address() {
    require_kernel!();
    let cg = TestCgroup::new("peer");
    let echo = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    let d = Daemon::start(&cfg);

    let mut child = cg
        .command(
            "python3",
            &[
                "-u",
                &client_py(),
                "hold",
                "127.0.0.1",
                &echo.addr.port().to_string(),
            ],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        r["peer"],
        serde_json::json!(["127.0.0.1", echo.addr.port()])
    );
    // The skill's socket is really connected to the proxy listener...
    assert_eq!(r["local"][0], "127.0.0.1");
    // ...and the upstream's peer is a socket of the daemon, not the skill.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while echo.accepted() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream saw no connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let peer = echo.seen.lock().unwrap()[0].peer;
    assert_ne!(peer.port() as u64, r["local"][1].as_u64().unwrap());
    assert_eq!(
        socket_owner(peer),
        Some(d.pid()),
        "upstream peer {peer} is not the daemon's"
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn outside_processes_are_untouched_and_unrecorded() {
    require_kernel!();
    let cg = TestCgroup::new("outside");
    let echo = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[]));
    let d = Daemon::start(&cfg);
    // The policy allows nothing, yet a process outside the cgroup connects.
    let r = py_outside(&["echo", "127.0.0.1", &echo.addr.port().to_string(), "100000"]);
    assert_eq!(r["received"], 100000);
    assert_eq!(echo.accepted(), 1);
    let peer = echo.seen.lock().unwrap()[0].peer;
    assert_ne!(socket_owner(peer), Some(d.pid()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.sessions().is_empty(), "{:?}", d.sessions());
}

#[test]
fn denied_destinations_are_refused_and_recorded() {
    require_kernel!();
    let cg = TestCgroup::new("deny");
    let allowed = Upstream::echo("127.0.0.1:0");
    let other = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[allowed.addr.to_string()]));
    let d = Daemon::start(&cfg);

    // Default deny.
    let r = py(
        &cg,
        &["connect", "127.0.0.1", &other.addr.port().to_string()],
    );
    assert_eq!(r["connected"], false, "{r}");
    // The proxy resets it; which call sees the reset first is a race.
    assert!([ECONNRESET, ENOTCONN, EPIPE].contains(&errno(&r)), "{r}");
    let s = d.wait_session(|s| s["destination"] == other.addr.to_string());
    assert_eq!(s["decision"], "deny");
    assert!(s["rule"].is_null());
    assert_eq!(s["reason"], "no rule matched (default deny)");
    // An explicit deny rule names itself.
    let r = py(&cg, &["connect", "127.0.0.1", "9"]);
    assert_eq!(r["connected"], false);
    let s = d.wait_session(|s| s["destination"] == "127.0.0.1:9");
    assert_eq!(s["rule"], "deny-9");
    assert_eq!(s["reason"], "discard port is off limits");
    // The denied upstream never saw a connection; curl fails too.
    let (ok, _, _) = run(
        cg.command(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{}/", other.addr)],
        ),
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert_eq!(other.accepted(), 0);
    // Filters: by decision, destination and workload glob.
    let list = |args: &[&str]| -> Vec<Value> {
        let mut c = Command::new(BIN);
        c.args(["sessions", "list", "--json", "--admin-socket"])
            .arg(cfg.socket())
            .args(args);
        let (ok, out, err) = run(c, Duration::from_secs(20));
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let denied = list(&["--decision", "deny"]);
    assert!(
        denied.len() >= 2 && denied.iter().all(|s| s["decision"] == "deny"),
        "{denied:?}"
    );
    let nine = list(&["--destination", "127.0.0.1:9"]);
    assert_eq!(nine.len(), 1, "{nine:?}");
    assert_eq!(nine[0]["rule"], "deny-9");
    assert_eq!(
        list(&["--workload", "interceptor-test-deny-*"]).len(),
        d.sessions().len()
    );
    assert!(list(&["--workload", "some.slice/**"]).is_empty());
    assert!(list(&["--since", "2099-01-01T00:00:00Z"]).is_empty());
    // Output into a pipe that is already closed (`| head`): the command
    // ends quietly, no panic (issue 14).
    let mut c = Command::new(BIN);
    c.args(["sessions", "list", "--json", "--admin-socket"])
        .arg(cfg.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success()
            || std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
    // The allowed one still works.
    let r = py(
        &cg,
        &["connect", "127.0.0.1", &allowed.addr.port().to_string()],
    );
    assert_eq!(r["data"], "ping\n", "{r}");
}

#[test]
fn fail_closed_while_the_daemon_is_down_then_back() {
    require_kernel!();
    let cg = TestCgroup::new("failclosed");
    let echo = Upstream::echo("127.0.0.1:0");
    let mut cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    cfg.extra = "heartbeat_timeout_ms = 1000\n".into();
    let mut d = Daemon::start(&cfg);
    let port = echo.addr.port().to_string();
    assert_ping(&cg, &port);
    d.wait_session(|s| s["destination"] == echo.addr.to_string());
    let before = d.sessions().len();

    d.signal(libc::SIGKILL);
    // Right after the kill the pinned hook still redirects to the dead port.
    let r = py(&cg, &["connect", "127.0.0.1", &port]);
    assert_eq!(r["connected"], false, "{r}");
    assert!([ECONNREFUSED, EPERM].contains(&errno(&r)), "{r}");
    // Once the heartbeat is stale the kernel refuses outright.
    std::thread::sleep(Duration::from_millis(1500));
    let r = py(&cg, &["connect", "127.0.0.1", &port]);
    assert_eq!(errno(&r), EPERM, "{r}");
    let (ok, _, _) = run(
        cg.command(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{}/", echo.addr)],
        ),
        Duration::from_secs(20),
    );
    assert!(!ok, "curl went through with the daemon down");
    assert_eq!(
        echo.accepted(),
        1,
        "a connect reached the upstream while the daemon was down"
    );

    // After a restart it works again and earlier sessions are intact.
    d.restart();
    assert_ping(&cg, &port);
    assert_eq!(echo.accepted(), 2);
    let after = d.sessions();
    assert!(
        after.len() > before,
        "{} sessions after restart, {before} before",
        after.len()
    );
}

#[test]
fn sigterm_keeps_blocking_and_detach_releases() {
    require_kernel!();
    let cg = TestCgroup::new("sigterm");
    let echo = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    let mut d = Daemon::start(&cfg);
    let port = echo.addr.port().to_string();
    // check-hooks (the gate of skills.slice) passes while the hooks are
    // attached, after the daemon is gone too, and fails once detached.
    let check_hooks = || {
        let mut c = Command::new(BIN);
        c.arg("check-hooks").arg("--config").arg(cfg.config_file());
        run(c, Duration::from_secs(10))
    };
    let (ok, out, err) = check_hooks();
    assert!(ok && out.contains("all hooks attached"), "{out}{err}");
    d.signal(libc::SIGTERM);
    let (ok, out, err) = check_hooks();
    assert!(ok, "{out}{err}");
    assert!(
        d.log_text().contains("hooks stay attached"),
        "{}",
        d.log_text()
    );
    let r = py(&cg, &["connect", "127.0.0.1", &port]);
    assert_eq!(errno(&r), EPERM, "{r}");
    assert_eq!(echo.accepted(), 0);
    // An explicit detach lets the workload go direct.
    let (ok, out, err) = run(
        {
            let mut c = Command::new(BIN);
            c.arg("detach").arg("--config").arg(cfg.config_file());
            c
        },
        Duration::from_secs(10),
    );
    assert!(ok, "{err}");
    // Every program of the kernel side (11, 12 with the BPF LSM one).
    assert!(
        out.contains("detached 11 pinned link") || out.contains("detached 12 pinned link"),
        "{out}"
    );
    let (ok, _, err) = check_hooks();
    assert!(!ok && err.contains("the hooks are not attached"), "{err}");
    let o = Command::new(BIN)
        .args(["check-hooks", "--json", "--config"])
        .arg(cfg.config_file())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert!(
        v["ok"] == false && !v["cgroups"][0]["missing"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_ping(&cg, &port);
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn ipv6_and_v4_mapped_destinations() {
    require_kernel!();
    let cg = TestCgroup::new("v6");
    let v6 = Upstream::echo("[::1]:0");
    let v4 = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(
        &[&cg],
        &allow_policy(&cg, &[v6.addr.to_string(), v4.addr.to_string()]),
    );
    let d = Daemon::start(&cfg);

    let r = py(
        &cg,
        &["echo", "::1", &v6.addr.port().to_string(), "1000000"],
    );
    assert_eq!(r["sent_sha256"], r["received_sha256"]);
    assert_eq!(r["peer"], serde_json::json!(["::1", v6.addr.port()]));
    assert_eq!(r["local"][0], "::1");
    d.wait_session(|s| s["destination"] == v6.addr.to_string());

    // An IPv6 socket dialling a v4-mapped address.
    let r = py(
        &cg,
        &[
            "echo",
            "::ffff:127.0.0.1",
            &v4.addr.port().to_string(),
            "1000000",
        ],
    );
    assert_eq!(r["sent_sha256"], r["received_sha256"]);
    assert_eq!(
        r["peer"],
        serde_json::json!(["::ffff:127.0.0.1", v4.addr.port()])
    );
    let s = d.wait_session(|s| s["destination"] == v4.addr.to_string());
    assert_eq!(s["bytes_up"], 1000000);

    // curl over IPv6.
    let web = Upstream::http("[::1]:0");
    cfg.set_policy(&allow_policy(&cg, &[web.addr.to_string()]));
    // SAFETY: kill takes no pointers; the pid is the test's daemon child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log_text().contains("policy reloaded") {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, out, err) = run(
        cg.command("curl", &["-sS", "-g", &format!("http://{}/", web.addr)]),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    assert_eq!(out, "hello\n");
}

#[test]
fn the_workload_cannot_reach_or_take_the_proxy_ports() {
    require_kernel!();
    let cg = TestCgroup::new("ports");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &["*".to_string()]));
    let mut d = Daemon::start(&cfg);
    let (port, admin) = (cfg.port.to_string(), cfg.admin_port.to_string());
    // Even with a policy allowing everything, the admin and proxy ports are
    // refused in the kernel, on every local address.
    for host in [
        "127.0.0.1",
        "127.0.0.7",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ] {
        for p in [&admin, &port] {
            let r = py(&cg, &["connect", host, p]);
            assert_eq!(errno(&r), EPERM, "connect {host}:{p} {r}");
        }
    }
    // Binding them is refused too, on any address, while the daemon runs and
    // after it died (so nobody in the cgroup can impersonate it).
    for round in 0..2 {
        for (host, p) in [("127.0.0.9", &port), ("::", &admin), ("0.0.0.0", &admin)] {
            let r = py(&cg, &["bind", host, p]);
            if round == 0 && host != "127.0.0.9" {
                // The daemon holds 127.0.0.1:admin; for wildcard binds the
                // kernel's own conflict check (EADDRINUSE) answers first.
                assert_eq!(r["bound"], false, "{r}");
            } else {
                assert_eq!(errno(&r), EPERM, "bind {host}:{p} round {round}: {r}");
            }
        }
        d.kill();
    }
    // UDP is refused by default (it is not proxied).
    let r = py(&cg, &["udp", "127.0.0.1", "53"]);
    assert_eq!(errno(&r), EPERM, "{r}");
}

#[test]
fn start_up_errors_are_clear() {
    require_kernel!();
    let cg = TestCgroup::new("errors");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[]));
    let run_daemon = |c: Command| run(c, Duration::from_secs(30));
    let base = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["run", "--config"])
            .arg(cfg.config_file())
            .args(extra);
        c
    };

    // Missing cgroup.
    let (ok, _, err) = run_daemon(base(&["--cgroup", "interceptor-test-does-not-exist"]));
    assert!(!ok);
    assert!(
        err.contains("cgroup interceptor-test-does-not-exist does not exist"),
        "{err}"
    );

    // Proxy port taken.
    let taken = std::net::TcpListener::bind(("127.0.0.1", cfg.port)).unwrap();
    let (ok, _, err) = run_daemon(base(&[]));
    assert!(!ok);
    assert!(err.contains("already in use"), "{err}");
    drop(taken);

    // Started inside the cgroup it would intercept.
    let mut c = cg.command(
        BIN,
        &["run", "--config", cfg.config_file().to_str().unwrap()],
    );
    c.env_remove("RUST_LOG");
    let (ok, _, err) = run_daemon(c);
    assert!(!ok);
    assert!(err.contains("runs inside the workload cgroup"), "{err}");

    // A broken policy: every error with file:line:col, nothing attached.
    std::fs::write(
        cfg.dir.join("policies/60-bad.toml"),
        "[[rule]]\nid = \"x\"\naction = \"alow\"\n",
    )
    .unwrap();
    let (ok, _, err) = run_daemon(base(&[]));
    assert!(!ok);
    assert!(
        err.contains("60-bad.toml:3:10: unknown action \"alow\""),
        "{err}"
    );
    assert!(!cfg.bpffs().exists());
}

#[test]
fn invalid_policy_reload_keeps_the_previous_policy() {
    require_kernel!();
    let cg = TestCgroup::new("reload");
    let echo = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    let d = Daemon::start(&cfg);
    let port = echo.addr.port().to_string();
    cfg.set_policy(
        "[[rule]]\nid = \"broken\"\naction = \"allow\"\ndestination = [\"300.0.0.1\"]\n",
    );
    // SAFETY: kill takes no pointers; the pid is the test's daemon child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    // A wait, not a timing check: the suite runs many daemons at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d.log_text().contains("policy reload rejected") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.log_text().contains("50-test.toml:4:15"),
        "{}",
        d.log_text()
    );
    assert_ping(&cg, &port);

    // interceptor.toml on SIGHUP: what changed is named, and that it
    // waits for a restart; a file that would not start the daemon says so.
    let file = cfg.config_file();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}record_body_kb = 8\n")).unwrap();
    let wait_for = |needle: &str| {
        // SAFETY: kill takes no pointers; the pid is the test's daemon child.
        unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !d.log_text().contains(needle) {
            assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("take effect when the daemon restarts");
    assert!(d.log_text().contains("record_body_kb"), "{}", d.log_text());
    std::fs::write(&file, format!("{text}record_body_kb = \"eight\"\n")).unwrap();
    wait_for("would not start with this file");
    assert_ping(&cg, &port);
}

#[test]
fn a_recreated_workload_cgroup_is_covered_again() {
    require_kernel!();
    let cg = TestCgroup::new("recreate");
    let echo = Upstream::echo("127.0.0.1:0");
    let denied = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    let d = Daemon::start(&cfg);
    let port = echo.addr.port().to_string();
    assert_ping(&cg, &port);
    let old_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.abs).unwrap());

    // What systemd does to a unit's cgroup on restart.
    cg.remove();
    std::fs::create_dir(&cg.abs).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log_text().contains("workload cgroup was re-created") {
        assert!(
            std::time::Instant::now() < deadline,
            "no re-attach:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The new cgroup is intercepted: denied stays denied, allowed is recorded.
    let r = py(
        &cg,
        &["connect", "127.0.0.1", &denied.addr.port().to_string()],
    );
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(
        denied.accepted(),
        0,
        "a process in the re-created cgroup went direct"
    );
    assert_ping(&cg, &port);
    let new_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.abs).unwrap());
    let s = d.wait_session(|s| s["workload"]["cgroup_id"] == new_id && s["decision"] == "allow");
    assert_eq!(s["workload"]["cgroup"], cg.rel.as_str());
    // The dead cgroup's links were released.
    assert!(!cfg.bpffs().join(format!("v1/links/{old_id}")).exists());
}

/// Attack: a skill connects in a tight loop while the daemon is killed,
/// restarted, stopped and restarted again. Nothing may ever reach a denied
/// upstream, and whatever reached the allowed one went through the proxy.
#[test]
fn racing_daemon_restarts_never_opens_a_direct_path() {
    require_kernel!();
    let cg = TestCgroup::new("race");
    let allowed = Upstream::echo("127.0.0.1:0");
    let denied = Upstream::echo("127.0.0.1:0");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[allowed.addr.to_string()]));
    let mut d = Daemon::start(&cfg);
    let ports = format!("{},{}", allowed.addr.port(), denied.addr.port());
    let script = client_py();
    let mut hammer = cg.command(
        "python3",
        &["-u", &script, "hammer", "127.0.0.1", &ports, "6"],
    );
    hammer.stdout(std::process::Stdio::piped());
    let child = hammer.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    d.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    std::thread::sleep(Duration::from_millis(700));
    d.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    let out = child.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["through"].as_u64().unwrap() > 0, "{r}");
    assert!(
        !r["failed"].as_object().unwrap().is_empty(),
        "the restarts were not noticed: {r}"
    );
    assert_eq!(
        denied.accepted(),
        0,
        "a connect reached the denied upstream: {r}"
    );
    // Every connection the allowed upstream saw has a recorded, allowed
    // session (closed, or interrupted by the kill).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = d.sessions();
        let allowed_sessions = sessions.iter().filter(|s| s["decision"] == "allow").count();
        // Nothing stays "open": the restart marked the killed daemon's
        // sessions interrupted, the rest closed.
        let open = sessions.iter().filter(|s| s["state"] == "open").count();
        // A kill between the durable record and the upstream connect leaves
        // a session without an upstream connection, never the reverse.
        if allowed_sessions >= allowed.accepted() && open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections reached the upstream, {allowed_sessions} allowed sessions recorded",
            allowed.accepted()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--version` names the commit the binary was built from.
#[test]
fn the_version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert!(out.status.success() && !head.is_empty(), "{version}");
    assert!(
        version.contains(&format!("(commit {head})")),
        "{version} vs {head}"
    );
}

#[test]
fn policy_check_and_explain_from_the_command_line() {
    let examples = format!("{}/../policies", env!("CARGO_MANIFEST_DIR"));
    let cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args);
        run(c, Duration::from_secs(20))
    };
    let cli_code = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, out, err) = cli(&["policy", "check", &examples]);
    assert!(ok, "{err}");
    assert!(out.contains("OK"), "{out}");
    let (ok, out, _) = cli(&[
        "policy",
        "explain",
        "--policies",
        &examples,
        "--workload",
        "skills.slice/a.service",
        "--method",
        "POST",
        "--url",
        "https://api.github.com/repos/acme/x/issues",
        "--dst",
        "140.82.112.5:443",
        "--user",
        "rel",
        "--groups",
        "release",
    ]);
    assert!(ok);
    assert!(
        out.contains("decision: Allow")
            && out.contains("github-write-release (")
            && out.contains("60-github.toml:"),
        "{out}"
    );
    assert!(out.contains("inject:   credential github"), "{out}");
    // A deny is a finding: exit 1, as `doctor` and `audit verify`.
    let deny = [
        "policy",
        "explain",
        "--policies",
        &examples,
        "--workload",
        "skills.slice/a.service",
        "--url",
        "http://169.254.169.254/latest",
    ];
    let (code, out, _) = cli_code(&deny);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("decision: Deny") && out.contains("deny-cloud-metadata"),
        "{out}"
    );
    let (code, out, _) = cli_code(&[&deny[..], &["--json"]].concat());
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        (v["decision"].as_str(), v["rule"].as_str()),
        (Some("deny"), Some("deny-cloud-metadata")),
        "{v}"
    );
    // Not canonical: refused, a finding too.
    let (code, out, _) = cli_code(&[
        "policy",
        "explain",
        "--policies",
        &examples,
        "--workload",
        "w",
        "--url",
        "http://10.0.0.1/..%2Fadmin",
        "--json",
    ]);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("non_canonical_request"),
        "{v}"
    );
    // Could not check: exit 2.
    let (code, _, err) = cli_code(&["policy", "check", "/nonexistent-policies"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent-policies"), "{err}");
    // The configuration named by the environment, as by --config.
    let conf =
        std::env::temp_dir().join(format!("interceptor-envconf-{}.toml", std::process::id()));
    std::fs::write(&conf, format!("policies = {examples:?}\n")).unwrap();
    let o = Command::new(BIN)
        .args(["policy", "check"])
        .env("INTERCEPTOR_CONFIG", &conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("policies: ") && text.contains("OK"),
        "{text}"
    );
    let o = Command::new(BIN)
        .args(["policy", "check"])
        .env("INTERCEPTOR_CONFIG", "/nonexistent/interceptor.toml")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_file(&conf).unwrap();
    let (code, out, _) = cli_code(&["policy", "check", &examples, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert!(v["ok"] == true && v["rules"].as_u64() > Some(0), "{v}");

    // A broken directory: exit 1, every error as file:line:col.
    let dir = std::env::temp_dir().join(format!("interceptor-badpolicy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.toml"),
        "[[rule]]\nid = \"a\"\naction = \"allow\"\nhost = [\"a\", \"[\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        "[[rule]]\nid = \"b\"\naction = \"allow\"\ninject = \"nope\"\n",
    )
    .unwrap();
    let (code, _, err) = cli_code(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a.toml:4:8: host pattern \"[\""), "{err}");
    assert!(
        err.contains("b.toml:4:10: inject: no credential named \"nope\""),
        "{err}"
    );
    let (code, out, _) = cli_code(&["policy", "check", dir.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let at: Vec<(u64, u64)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["col"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        (v["ok"].as_bool(), at),
        (Some(false), vec![(4, 8), (4, 10), (4, 10)]),
        "{v}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retention_removes_old_sessions_while_the_daemon_runs() {
    require_kernel!();
    let cg = TestCgroup::new("retention");
    let echo = Upstream::echo("127.0.0.1:0");
    let mut cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[echo.addr.to_string()]));
    // 3 seconds, as a fraction of a day.
    cfg.extra = format!("retention_days = {}\n", 3.0 / 86400.0);
    let d = Daemon::start(&cfg);
    let port = echo.addr.port().to_string();
    assert_ping(&cg, &port);
    d.wait_session(|s| s["decision"] == "allow");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !d.sessions().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "old sessions were not removed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log_text().contains("retention removed old sessions"));
    // New ones are recorded as before; the audit chain is untouched.
    assert_ping(&cg, &port);
    d.wait_session(|s| s["decision"] == "allow");
    let mut c = Command::new(BIN);
    c.args(["audit", "verify", "--admin-socket"])
        .arg(cfg.socket());
    let (ok, out, err) = run(c, Duration::from_secs(20));
    assert!(ok, "{out}{err}");
}

#[test]
fn the_systemd_units_verify_and_the_daemon_speaks_sd_notify() {
    // The unit files, as shipped, with ExecStart pointing at this build.
    let dir = std::env::temp_dir().join(format!("interceptor-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let packaging = format!("{}/../packaging", env!("CARGO_MANIFEST_DIR"));
    let units = [
        "interceptor.service",
        "interceptor-hooks.service",
        "skills.slice",
    ];
    for name in units {
        let unit = std::fs::read_to_string(format!("{packaging}/{name}")).unwrap();
        std::fs::write(dir.join(name), unit.replace("/usr/bin/interceptor", BIN)).unwrap();
    }
    let mut c = Command::new("systemd-analyze");
    c.arg("verify").args(units.map(|u| dir.join(u)));
    let (ok, out, err) = run(c, Duration::from_secs(60));
    assert!(
        ok && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    let mut c = Command::new("systemd-analyze");
    c.args(["security", "--offline=true"])
        .arg(dir.join("interceptor.service"));
    let (_, out, _) = run(c, Duration::from_secs(60));
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("exposure level for interceptor.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {out}"));
    eprintln!("systemd-analyze security exposure: {score}");
    assert!(score < 5.0, "exposure {score}");
    std::fs::remove_dir_all(&dir).unwrap();

    // READY=1 once hooks and listeners are up, WATCHDOG=1 from the
    // heartbeat, STOPPING=1 on SIGTERM.
    require_kernel!();
    let cg = TestCgroup::new("notify");
    let cfg = DaemonConfig::new(&[&cg], &allow_policy(&cg, &[]));
    let sock_path = cfg.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.env = vec![
        (
            "NOTIFY_SOCKET".into(),
            sock_path.to_string_lossy().into_owned(),
        ),
        ("WATCHDOG_USEC".into(), "2000000".into()),
    ];
    let mut d = Daemon::start(&cfg2);
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("no sd_notify message");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    d.signal(libc::SIGTERM);
    while !seen.contains("STOPPING=1") {
        let n = sock.recv(&mut buf).expect("no STOPPING=1");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Every flag of every command is in the README, and every flag the
/// README's command lines show exists (issue 14): the two cannot drift.
#[test]
fn every_flag_is_documented_and_every_documented_flag_exists() {
    let readme =
        std::fs::read_to_string(format!("{}/../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let help = |path: &[String]| {
        let out = Command::new(BIN).args(path).arg("--help").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        text.match_indices("--")
            .filter(|(i, _)| *i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
            .map(|(i, _)| {
                let name: String = text[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                    .collect();
                format!("--{name}")
            })
            .filter(|f| f.len() > 3 && f != "--help" && f != "--version")
            .collect()
    };
    // Walk the command tree through each help's "Commands:" list.
    let mut leaves: Vec<(String, String)> = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let h = help(&path);
        let commands: Vec<String> = h
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect();
        if commands.is_empty() {
            leaves.push((path.join(" "), h));
        }
        for c in commands {
            let mut p = path.clone();
            p.push(c);
            todo.push(p);
        }
    }
    assert!(leaves.len() > 15, "{leaves:?}");
    let mut undocumented = Vec::new();
    for (path, h) in &leaves {
        for f in flags(h) {
            if !readme.contains(&f) {
                undocumented.push(format!("{path} {f}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "flags missing from README: {undocumented:?}"
    );
    // The README's command lines: each flag exists on the command named.
    let mut unknown = Vec::new();
    for line in readme.lines() {
        let Some(rest) = line.trim_start().strip_prefix("interceptor ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let named = leaves
            .iter()
            .filter(|(p, _)| !p.is_empty() && words.join(" ").starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len());
        if let Some((path, h)) = named {
            for f in flags(rest) {
                if !h.contains(&f) {
                    unknown.push(format!("{path} {f}: {line}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "README flags no command has: {unknown:?}"
    );
}
