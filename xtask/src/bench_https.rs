//! The HTTPS half of `cargo xtask bench`: the same `wrk` load (keep-alive
//! HTTP/1.1 over TLS, 1 KiB answers from an nginx upstream on loopback) sent
//! directly and through three proxies doing the same job (terminate the
//! client's TLS, verify the upstream against a test CA, forward over pooled
//! upstream connections): the interceptor, nginx as a reverse proxy and
//! mitmproxy. Everything runs in one run on 127.0.0.1 and is stopped on drop.
use crate::lab::{self, Lab};
use crate::workspace_root;
use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The interceptor must look into requests (`host`), so TLS is intercepted;
/// an allow rule for the upstream's address, nothing else.
const POLICY: &str = r#"[mask.all]
detectors = ["all"]

[[rule]]
id = "bench-https-masked"
workload = "interceptor-bench-https"
destination = ["127.0.0.1"]
path = "/masked"
mask = "all"
action = "allow"

[[rule]]
id = "bench-https"
workload = "interceptor-bench-https"
destination = ["127.0.0.1"]
host = "*"
action = "allow"
"#;

/// wrk's shape: one thread, keep-alive connections, closed loop: one
/// connection for latency, a few for throughput.
const LATENCY_CONNECTIONS: &str = "1";
/// Two loads: a few clients, and as many as a busy agent host opens
/// (where an upstream pool smaller than the clients would show).
const LOAD_CONNECTIONS: [&str; 2] = ["4", "32"];
const BODY_BYTES: usize = 1024;

pub struct Plan {
    /// Measured seconds per wrk run.
    pub secs: u64,
    /// Runs per setup, interleaved across setups; the median is reported
    /// so one disturbed run on a shared machine does not decide a number.
    pub rounds: usize,
}

/// The external programs, installed (apt, PyPI into a venv) when missing.
pub struct Tools {
    nginx: PathBuf,
    wrk: PathBuf,
    mitmdump: PathBuf,
}

impl Tools {
    /// Installs what is missing; fails with a clear message when it cannot.
    pub fn ensure() -> Result<Tools> {
        for (tool, pkg) in [("nginx", "nginx"), ("wrk", "wrk"), ("openssl", "openssl")] {
            if crate::which(tool).is_none() {
                apt_install(&[pkg])?;
            }
        }
        let find =
            |t: &str| crate::which(t).with_context(|| format!("{t} not found after installing"));
        Ok(Tools {
            nginx: find("nginx")?,
            wrk: find("wrk")?,
            mitmdump: mitmdump()?,
        })
    }

    /// The versions, for the report: "nginx/1.22.1, wrk 4.1.0, mitmproxy
    /// 11.0.2 (Python 3.11.7)".
    fn versions(&self) -> String {
        let text = |cmd: &mut Command| {
            cmd.output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default()
        };
        // The word after `key` in `text`, e.g. "1.22.1" after "nginx/".
        let after = |text: &str, key: &str| {
            text.split(key)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?")
                .trim_start_matches("debian/")
                .to_string()
        };
        let nginx = text(Command::new(&self.nginx).arg("-v"));
        let wrk = text(Command::new(&self.wrk).arg("-v"));
        let mitm = text(Command::new(&self.mitmdump).arg("--version"));
        format!(
            "nginx {}, wrk {}, mitmproxy {} (Python {})",
            after(&nginx, "nginx/"),
            after(&wrk, "wrk "),
            after(&mitm, "Mitmproxy:"),
            after(&mitm, "Python:"),
        )
    }
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    eprintln!("installing {} (apt)...", pkgs.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    // A fresh machine has no package lists yet: update once, then retry.
    if install() {
        return Ok(());
    }
    let _ = Command::new("apt-get").args(["update", "-q"]).status();
    if !install() {
        bail!(
            "the HTTPS benchmark needs {0}, and `apt-get install -y {0}` failed; \
             install it by hand and run the bench again",
            pkgs.join(" ")
        );
    }
    Ok(())
}

/// mitmproxy from PyPI in a venv under target/, so the system Python stays
/// untouched and the next run finds it.
fn mitmdump() -> Result<PathBuf> {
    let venv = workspace_root().join("target/bench-venv");
    let bin = venv.join("bin/mitmdump");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("installing mitmproxy into {} (PyPI)...", venv.display());
    let make_venv = || {
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian's python3 creates venvs only with python3-venv installed.
    if !make_venv() {
        apt_install(&["python3", "python3-venv"])?;
        if !make_venv() {
            bail!("`python3 -m venv {}` failed", venv.display());
        }
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "mitmproxy"])
        .status();
    if !pip.is_ok_and(|s| s.success()) || !bin.is_file() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!(
            "the HTTPS benchmark needs mitmproxy, and `pip install mitmproxy` into {} failed",
            venv.display()
        );
    }
    Ok(bin)
}

/// A test CA and a leaf for 127.0.0.1 (and `localhost`, see the nginx proxy).
struct Certs {
    ca: PathBuf,
    leaf: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Result<Certs> {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = interceptor bench CA\n\
         [v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
    )?;
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n\
         authorityKeyIdentifier = keyid\n",
    )?;
    let ssl = |args: &str| {
        lab::output(
            Command::new("openssl")
                .current_dir(dir)
                .args(args.split_whitespace()),
        )
    };
    // P-256 keys: what the interceptor mints too, and cheap to sign with.
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    ssl(&format!(
        "req -x509 {ec} -days 2 -keyout ca.key -out ca.pem -config ca.cnf"
    ))?;
    ssl(&format!(
        "req -new {ec} -subj /CN=127.0.0.1 -keyout leaf.key -out leaf.csr"
    ))?;
    ssl(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 \
         -extfile leaf.ext -out leaf.pem",
    )?;
    Ok(Certs {
        ca: dir.join("ca.pem"),
        leaf: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
    })
}

/// A background process, stopped (with its children) on drop.
struct Bg {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Bg {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Bg> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Bg { name, child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `port` accepts connections, or fails with the log.
    fn wait_port(&mut self, port: u16, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited ({st}):\n{}", self.name, self.log_text());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not listening on {port}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master stop its workers; SIGKILL whatever is
        // left after a few seconds (workers would outlive a killed master).
        let tree = descendants(self.pid());
        signal("TERM", self.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in tree {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal("KILL", pid);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// The numeric fields of /proc/PID/stat from the 4th on: [ppid, pgrp, ...].
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// `pid` and every process below it (nginx's workers).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
        if let Some((p, f)) = pid.and_then(|p| Some((p, stat_fields(p)?))) {
            parent.push((p, f[0] as u32));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let up = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == up).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// CPU seconds (user + system) used so far by `pid` and its children.
fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock
    // ticks (USER_HZ, 100 on Linux).
    let ticks: u64 = descendants(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| f[10] + f[11])
        .sum();
    ticks as f64 / 100.0
}

/// A port free right now; nginx and mitmdump bind it moments later (only a
/// process binding random ports in between could take it).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Paths nginx would otherwise take from its compiled-in defaults (/var/...).
fn nginx_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         # keep-alive for the whole run (the default closes after 1000 requests)\n  \
         keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
    )
}

fn start_nginx(tools: &Tools, dir: &Path, name: &'static str, server: &str) -> Result<Bg> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, format!("{}{server}}}\n", nginx_common(dir)))?;
    Bg::spawn(
        name,
        Command::new(&tools.nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"]),
        dir.join("stdout.log"),
    )
}

/// The upstream: a fixed 1 KiB answer over HTTPS (HTTP/1.1 only, so every
/// proxy talks HTTP/1.1 to it).
fn nginx_upstream(tools: &Tools, dir: &Path, c: &Certs, port: u16) -> Result<Bg> {
    let server = format!(
        "  access_log off;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {};\n    \
         ssl_certificate_key {};\n    location / {{ default_type text/plain; return 200 \"{}\"; }}\n  }}\n",
        c.leaf.display(),
        c.key.display(),
        body()
    );
    start_nginx(tools, dir, "nginx upstream", &server)
}

/// nginx doing the interceptor's job: terminate TLS, verify the upstream
/// against the test CA, forward over pooled keep-alive connections. Its
/// access log stays on (nginx's default): the closest thing it has to the
/// interceptor's per-request record.
fn nginx_proxy(tools: &Tools, dir: &Path, c: &Certs, port: u16, up: u16) -> Result<Bg> {
    let server = format!(
        "  access_log {dir}/access.log;\n  upstream bench {{ server 127.0.0.1:{up}; keepalive {pool}; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {leaf};\n    \
         ssl_certificate_key {key};\n    location / {{\n      proxy_ssl_protocols TLSv1.3;\n      proxy_pass https://bench;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
         proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate {ca};\n      \
         # nginx checks the name with X509_check_host (DNS names only), so the\n      \
         # upstream is verified as `localhost`, also in its certificate\n      \
         proxy_ssl_name localhost;\n      proxy_ssl_session_reuse on;\n    }}\n  }}\n",
        dir = dir.display(),
        pool = LOAD_CONNECTIONS[1],
        leaf = c.leaf.display(),
        key = c.key.display(),
        ca = c.ca.display(),
    );
    start_nginx(tools, dir, "nginx proxy", &server)
}

/// mitmproxy doing the same job: reverse mode to the upstream, verified
/// against the test CA; its own CA lives in `dir`, not in ~/.mitmproxy.
/// `-q`: it prints no line per request (its output is a display, not a
/// record, and the console would cost it more than the proxying).
fn mitmproxy(tools: &Tools, dir: &Path, c: &Certs, port: u16, up: u16) -> Result<Bg> {
    std::fs::create_dir_all(dir)?;
    Bg::spawn(
        "mitmdump",
        Command::new(&tools.mitmdump)
            .args(["--mode", &format!("reverse:https://127.0.0.1:{up}/")])
            .args(["--listen-host", "127.0.0.1", "-p", &port.to_string()])
            .args(["--set", &format!("confdir={}", dir.display())])
            .args([
                "--set",
                &format!("ssl_verify_upstream_trusted_ca={}", c.ca.display()),
            ])
            .arg("-q"),
        dir.join("mitmdump.log"),
    )
}

fn body() -> String {
    "x".repeat(BODY_BYTES)
}

/// One of the four ways the client reaches the upstream.
struct Setup {
    name: &'static str,
    port: u16,
    /// "/" or "/masked" (the interceptor masks the latter's responses).
    path: &'static str,
    /// The proxy whose CPU time is measured (none for direct).
    proxy_pid: Option<u32>,
    /// The client runs inside the intercepted cgroup.
    in_cgroup: bool,
    /// The CA the client would need to verify what it is served.
    ca: PathBuf,
}

impl Setup {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}{}", self.port, self.path)
    }

    fn run(&self, lab: &Lab, program: &str, args: &[&str]) -> Result<String> {
        if self.in_cgroup {
            lab.in_cgroup(program, args)
        } else {
            lab::output(Command::new(program).args(args))
        }
    }

    /// One verified request first: the body arrives intact and the client
    /// was served a certificate from this setup's own CA, i.e. TLS really
    /// is terminated there (for the interceptor: intercepted, not passed).
    fn check(&self, lab: &Lab) -> Result<()> {
        let ca = self.ca.to_str().unwrap();
        let got = self
            .run(lab, "curl", &["-sS", "--fail", "--cacert", ca, &self.url()])
            .with_context(|| format!("checking {} with curl", self.name))?;
        if got != body() {
            bail!("{}: unexpected answer {got:?}", self.name);
        }
        Ok(())
    }

    /// Latency from one connection (one request in flight: what the proxy
    /// adds to a request, not queueing behind others on 2 shared cores),
    /// throughput and proxy CPU from several.
    fn measure(&self, lab: &Lab, wrk: &Path, secs: u64) -> Result<Sample> {
        let latency = self.wrk(lab, wrk, LATENCY_CONNECTIONS, secs)?;
        // `Connection: close`: wrk opens a new connection (a full TLS
        // handshake: wrk does not resume sessions) for every request.
        let fresh = self.wrk_with(
            lab,
            wrk,
            LATENCY_CONNECTIONS,
            secs,
            &["-H", "Connection: close"],
        )?;
        let mut loads = [Load::default(); 2];
        for (load, conns) in loads.iter_mut().zip(LOAD_CONNECTIONS) {
            let cpu0 = self.proxy_pid.map(cpu_seconds);
            let t = Instant::now();
            let run = self.wrk(lab, wrk, conns, secs)?;
            let wall = t.elapsed().as_secs_f64();
            *load = Load {
                rps: run.loads[0].rps,
                proxy_cores: self
                    .proxy_pid
                    .zip(cpu0)
                    .map(|(pid, c0)| (cpu_seconds(pid) - c0) / wall),
            };
        }
        Ok(Sample {
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
            fresh_p50_us: fresh.p50_us,
            loads,
        })
    }

    fn wrk(&self, lab: &Lab, wrk: &Path, conns: &str, secs: u64) -> Result<Sample> {
        self.wrk_with(lab, wrk, conns, secs, &[])
    }

    fn wrk_with(
        &self,
        lab: &Lab,
        wrk: &Path,
        conns: &str,
        secs: u64,
        extra: &[&str],
    ) -> Result<Sample> {
        let duration = format!("{secs}s");
        let url = self.url();
        let mut args = vec!["-t1", "-c", conns, "-d", &duration, "--latency"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = self.run(lab, wrk.to_str().unwrap(), &args)?;
        parse_wrk(&out).with_context(|| format!("{}: wrk printed:\n{out}", self.name))
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    /// p50 of a request on a fresh connection (TLS handshake included).
    fresh_p50_us: f64,
    /// At each of LOAD_CONNECTIONS.
    loads: [Load; 2],
}

#[derive(Clone, Copy, Default)]
struct Load {
    rps: f64,
    /// Average cores the proxy kept busy (CPU seconds / wall seconds).
    proxy_cores: Option<f64>,
}

impl Load {
    /// Proxy CPU per request, µs.
    fn cpu_us(&self) -> Option<f64> {
        self.proxy_cores
            .filter(|_| self.rps > 0.0)
            .map(|c| c / self.rps * 1e6)
    }
}

impl Sample {
    fn summary(&self) -> String {
        let loads: Vec<String> = self
            .loads
            .iter()
            .zip(LOAD_CONNECTIONS)
            .map(|(l, c)| {
                format!(
                    "{c} conns: {:.0} requests/s, proxy CPU {}",
                    l.rps,
                    l.cpu_us()
                        .map_or("–".into(), |u| format!("{u:.0} µs/request"))
                )
            })
            .collect();
        format!(
            "p50 {:.0} µs, p99 {:.0} µs; {}",
            self.p50_us,
            self.p99_us,
            loads.join("; ")
        )
    }
}

/// Reads wrk's `--latency` report; errors and non-2xx answers fail the run.
fn parse_wrk(out: &str) -> Result<Sample> {
    let mut s = Sample::default();
    for line in out.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("50%"), Some(v)) => s.p50_us = wrk_duration_us(v)?,
            (Some("99%"), Some(v)) => s.p99_us = wrk_duration_us(v)?,
            (Some("Requests/sec:"), Some(v)) => s.loads[0].rps = v.parse()?,
            (Some("Socket"), _) | (Some("Non-2xx"), _) => bail!("wrk saw failures: {line}"),
            _ => {}
        }
    }
    if s.loads[0].rps <= 0.0 || s.p50_us <= 0.0 || s.p99_us <= 0.0 {
        bail!("no latency distribution or request rate in wrk's output");
    }
    Ok(s)
}

/// wrk prints durations as `812.00us`, `1.23ms` or `2.00s`.
fn wrk_duration_us(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown wrk duration {v:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The median of each metric over the rounds.
fn combine(samples: &[Sample]) -> Sample {
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let load = |i: usize| Load {
        rps: m(&|s| s.loads[i].rps),
        proxy_cores: samples[0].loads[i]
            .proxy_cores
            .map(|_| m(&|s| s.loads[i].proxy_cores.unwrap_or(0.0))),
    };
    Sample {
        p50_us: m(&|s| s.p50_us),
        p99_us: m(&|s| s.p99_us),
        fresh_p50_us: m(&|s| s.fresh_p50_us),
        loads: [load(0), load(1)],
    }
}

/// What the goals of issue 13 are checked against (interceptor vs nginx).
pub struct Figures {
    /// Requests/s, interceptor ÷ nginx, at each of LOAD_CONNECTIONS.
    pub rps_ratio: [f64; 2],
    /// Proxy CPU per request, interceptor ÷ nginx.
    pub cpu_ratio: [f64; 2],
    /// Added p50 latency, interceptor ÷ nginx.
    pub added_p50_ratio: f64,
    /// Added p50 of a request on a fresh TLS connection (µs): interceptor, nginx.
    pub fresh_added_us: (f64, f64),
    /// Daemon RSS (MiB) when started and after `requests` requests.
    pub rss_mib: (f64, f64),
    pub requests: u64,
    /// Where the daemon's CPU went under load, from the profile's
    /// per-thread split (empty without a profile).
    pub cpu_split: String,
}

/// The profile's per-thread lines grouped by what the threads do: the
/// proxy's runtime, the session index (its thread and sled's I/O
/// threads), the audit log's sync thread, the rest.
fn cpu_split(profile: &str) -> String {
    let mut groups = [
        ("the proxy's runtime threads", 0.0),
        ("the session index (store-index and sled's threads)", 0.0),
        ("the audit log's sync thread", 0.0),
        ("other threads", 0.0),
    ];
    let by_comm = profile.split("by dso,symbol:").next().unwrap_or_default();
    for line in by_comm.lines() {
        let mut it = line.split_whitespace();
        let (Some(pct), Some(comm)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let g = if comm.starts_with("tokio") {
            0
        } else if comm.starts_with("store-index") || comm.starts_with("sled") {
            1
        } else if comm.starts_with("audit") {
            2
        } else {
            3
        };
        groups[g].1 += pct;
    }
    if groups.iter().all(|g| g.1 == 0.0) {
        return String::new();
    }
    groups
        .iter()
        .filter(|g| g.1 > 0.0)
        .map(|(name, pct)| format!("{name} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `interceptor_requests_total` from the daemon's metrics.
fn requests_served(admin_port: u16) -> u64 {
    let out = lab::output(
        Command::new("curl").args(["-s", &format!("http://127.0.0.1:{admin_port}/metrics")]),
    )
    .unwrap_or_default();
    out.lines()
        .find_map(|l| l.strip_prefix("interceptor_requests_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Where the daemon's CPU goes under load: `perf` samples while wrk runs
/// 32 connections through it; the top symbols, self time.
fn profile(lab: &Lab, setup: &Setup, wrk: &Path, pid: u32) -> Result<String> {
    let data = lab.dir.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf")?;
    setup.wrk(lab, wrk, LOAD_CONNECTIONS[1], 5)?;
    perf.wait()?;
    // By thread first (which of the daemon's threads spends it), then by
    // symbol.
    let mut out = Vec::new();
    for (sort, take) in [("comm", 10), ("dso,symbol", 30)] {
        let report = lab::output(
            Command::new("perf")
                .arg("report")
                .arg("-i")
                .arg(&data)
                .args(["--stdio", "--no-children", "-g", "none", "--sort", sort])
                .args(["--percent-limit", "1"]),
        )?;
        out.push(format!("by {sort}:"));
        out.extend(
            report
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .take(take)
                // perf pads its columns to the terminal width and ends
                // each line with empty columns shown as `-`.
                .map(|l| l.trim_end_matches([' ', '-']).to_string()),
        );
        out.push(String::new());
    }
    Ok(out.join("\n").trim_end().to_string())
}

/// Runs the HTTPS comparison; returns its Markdown section for BENCHMARKS.md.
pub fn run(bin: &Path, tools: &Tools, plan: &Plan) -> Result<(String, Figures)> {
    let lab = Lab::new(bin, "interceptor-bench-https", POLICY, 15211, 15210)?;
    let certs = make_certs(&lab.dir)?;
    let (up, ngx, mitm) = (free_port()?, free_port()?, free_port()?);

    let mut upstream = nginx_upstream(tools, &lab.dir.join("nginx-upstream"), &certs, up)?;
    upstream.wait_port(up, Duration::from_secs(15))?;
    let mut proxy = nginx_proxy(tools, &lab.dir.join("nginx-proxy"), &certs, ngx, up)?;
    proxy.wait_port(ngx, Duration::from_secs(15))?;
    let mitm_dir = lab.dir.join("mitmproxy");
    let mut mitmdump = mitmproxy(tools, &mitm_dir, &certs, mitm, up)?;
    mitmdump.wait_port(mitm, Duration::from_secs(60))?;
    let daemon = lab.start_daemon_with(&format!("upstream_ca_files = [{:?}]\n", certs.ca))?;
    let daemon_pid = daemon.pid().context("the daemon's pid")?;
    let rss_idle = rss_mib(daemon_pid);

    let setups = [
        Setup {
            name: "direct",
            path: "/",
            port: up,
            proxy_pid: None,
            in_cgroup: false,
            ca: certs.ca.clone(),
        },
        Setup {
            name: "interceptor",
            port: up,
            path: "/",
            proxy_pid: daemon.pid(),
            in_cgroup: true,
            ca: lab.dir.join("state/ca.pem"),
        },
        Setup {
            name: "interceptor, masked",
            port: up,
            path: "/masked",
            proxy_pid: daemon.pid(),
            in_cgroup: true,
            ca: lab.dir.join("state/ca.pem"),
        },
        Setup {
            name: "nginx (reverse proxy)",
            path: "/",
            port: ngx,
            proxy_pid: Some(proxy.pid()),
            in_cgroup: false,
            ca: certs.ca.clone(),
        },
        Setup {
            name: "mitmproxy (mitmdump)",
            path: "/",
            port: mitm,
            proxy_pid: Some(mitmdump.pid()),
            in_cgroup: false,
            ca: mitm_dir.join("mitmproxy-ca-cert.pem"),
        },
    ];
    for s in &setups {
        s.check(&lab)?;
        // Warm-up: leaf certificates minted, upstream pools filled.
        s.wrk(&lab, &tools.wrk, LOAD_CONNECTIONS[1], 1)?;
    }
    let mut samples = vec![Vec::new(); setups.len()];
    for round in 1..=plan.rounds {
        for (s, out) in setups.iter().zip(&mut samples) {
            eprintln!(
                "HTTPS round {round}/{}: {} (3 x {} s of wrk)...",
                plan.rounds, s.name, plan.secs
            );
            let sample = s.measure(&lab, &tools.wrk, plan.secs)?;
            eprintln!("  {}", sample.summary());
            out.push(sample);
        }
    }
    let figures_rss = (rss_idle, rss_mib(daemon_pid));
    let requests = requests_served(lab.admin_port);
    let results: Vec<(&str, Sample)> = setups
        .iter()
        .zip(&samples)
        .map(|(s, v)| (s.name, combine(v)))
        .collect();
    let rounds = render_rounds(&setups, &samples);
    eprintln!("profiling the daemon under load (perf)...");
    let mut split = String::new();
    let profile = match profile(&lab, &setups[1], &tools.wrk, daemon_pid) {
        Ok(p) => {
            split = cpu_split(&p);
            format!(
                "\n### Where the daemon's CPU goes\n\n\
             `perf record -e cpu-clock -g` on the daemon for 4 s while wrk runs {} keep-alive\n\
             connections through it (the `interceptor` setup); self time by thread and by symbol, above 1%:\n\n\
             ```\n{p}\n```\n",
                LOAD_CONNECTIONS[1]
            )
        }
        Err(e) => format!("\n(no profile: {e:#})\n"),
    };
    let (direct, me, nginx) = (results[0].1, results[1].1, results[3].1);
    let ratio = |i: usize, f: &dyn Fn(&Load) -> f64| f(&me.loads[i]) / f(&nginx.loads[i]);
    let figures = Figures {
        rps_ratio: [ratio(0, &|l| l.rps), ratio(1, &|l| l.rps)],
        cpu_ratio: [
            ratio(0, &|l| l.cpu_us().unwrap_or(f64::NAN)),
            ratio(1, &|l| l.cpu_us().unwrap_or(f64::NAN)),
        ],
        added_p50_ratio: (me.p50_us - direct.p50_us) / (nginx.p50_us - direct.p50_us),
        fresh_added_us: (
            me.fresh_p50_us - direct.fresh_p50_us,
            nginx.fresh_p50_us - direct.fresh_p50_us,
        ),
        rss_mib: figures_rss,
        requests,
        cpu_split: split,
    };
    Ok((report(&results, tools, plan) + &rounds + &profile, figures))
}

/// Every round's numbers, so a reader can see how noisy the medians are.
fn render_rounds(setups: &[Setup], samples: &[Vec<Sample>]) -> String {
    let [few, many] = LOAD_CONNECTIONS;
    let mut out = format!(
        "\n<details><summary>Every round</summary>\n\n\
         | setup | round | p50 | p99 | requests/s, {few} conns | requests/s, {many} conns | proxy CPU per request, {few} / {many} conns |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (s, rounds) in setups.iter().zip(samples) {
        for (i, r) in rounds.iter().enumerate() {
            out += &format!(
                "| {} | {} | {:.0} µs | {:.0} µs | {:.0} | {:.0} | {} |\n",
                s.name,
                i + 1,
                r.p50_us,
                r.p99_us,
                r.loads[0].rps,
                r.loads[1].rps,
                cpu_pair(r),
            );
        }
    }
    out + "\n</details>\n"
}

/// "48 / 52 µs", or "–" for the direct setup.
fn cpu_pair(s: &Sample) -> String {
    match (s.loads[0].cpu_us(), s.loads[1].cpu_us()) {
        (Some(a), Some(b)) => format!("{a:.0} / {b:.0} µs"),
        _ => "–".into(),
    }
}

fn report(results: &[(&str, Sample)], tools: &Tools, plan: &Plan) -> String {
    let table = render(results);
    let ratios = render_ratios(results);
    println!("\n{table}\n{ratios}");
    format!(
        "## HTTPS: interceptor vs nginx vs mitmproxy\n\n\
         The same `wrk` client (1 thread, keep-alive, HTTP/1.1 over TLS) fetches a\n\
         fixed {BODY_BYTES} B answer from an nginx HTTPS upstream on 127.0.0.1, four ways,\n\
         in the same run:\n\n\
         - **direct**;\n\
         - **interceptor**: wrk runs inside an intercepted cgroup (eBPF redirect);\n  \
         TLS intercepted with a leaf from the interceptor's CA, policy decided\n  \
         and the decision appended to the hash-chained audit log (in the kernel\n  \
         before the request goes upstream; `audit_sync = \"interval\"`, the\n  \
         default: on disk within 5 ms), each request recorded in the session\n  \
         index, upstream TLS verified against the test CA, upstream connections\n  \
         pooled;\n\
         - **nginx** as a TLS-terminating reverse proxy: `worker_processes 1`,\n  \
         upstream `keepalive {}` (a pool as large as the most clients), TLS 1.3\n  \
         on both hops, `proxy_ssl_verify on` with the test CA, its\n  \
         default access log on (its per-request record);\n\
         - **mitmproxy**: `mitmdump --mode reverse:https://... -q` with\n  \
         `ssl_verify_upstream_trusted_ca` = the test CA.\n\n\
         Before measuring, one `curl` per setup checks the body and that the\n\
         certificate it is served comes from that setup's own CA (TLS really is\n\
         terminated there). Latency (p50/p99) is from {LATENCY_CONNECTIONS} connection, one request in\n\
         flight, so it is what the proxy adds to a request and not queueing on the\n\
         2 shared cores; added = proxied - direct, ratio = proxied / direct.\n\
         The fresh-connection column is wrk at one connection with `Connection:\n\
         close`: every request opens a new TCP connection with a full TLS\n\
         handshake (wrk resumes no session).\n\
         Requests/s is from {} and from {} connections; proxy CPU per request is\n\
         utime + stime of the proxy's processes (/proc) during that run divided by\n\
         the requests served. wrk and the upstream (`worker_processes\n\
         1`) share the 2 cores with the proxy, so requests/s is bounded by the\n\
         machine, not only by the proxy. Each setup ran {} round(s) of 3 x {} s,\n\
         interleaved; each number is the median over the rounds. Tools: {}.\n\n\
         {table}\n\
         The interceptor's numbers divided by each other proxy's: above 1.00 it\n\
         serves more requests/s, or adds more latency, than that proxy.\n\n{ratios}",
        LOAD_CONNECTIONS[1],
        LOAD_CONNECTIONS[0],
        LOAD_CONNECTIONS[1],
        plan.rounds,
        plan.secs,
        tools.versions(),
    )
}

fn render(results: &[(&str, Sample)]) -> String {
    let direct = results[0].1;
    let [few, many] = LOAD_CONNECTIONS;
    let mut out = format!(
        "| setup | p50 | p99 | added p50 | added p99 | fresh TLS connection, p50 (added) | requests/s, {few} conns | requests/s, {many} conns | proxy CPU per request, {few} / {many} conns |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, s) in results {
        let added = |v: f64, d: f64| {
            if s.loads[0].proxy_cores.is_none() {
                "–".to_string()
            } else {
                format!("{:+.0} µs ({:.2}x)", v - d, v / d)
            }
        };
        out += &format!(
            "| {name} | {:.0} µs | {:.0} µs | {} | {} | {:.0} µs{} | {:.0} | {:.0} | {} |\n",
            s.p50_us,
            s.p99_us,
            added(s.p50_us, direct.p50_us),
            added(s.p99_us, direct.p99_us),
            s.fresh_p50_us,
            if s.loads[0].proxy_cores.is_none() {
                String::new()
            } else {
                format!(" ({:+.0} µs)", s.fresh_p50_us - direct.fresh_p50_us)
            },
            s.loads[0].rps,
            s.loads[1].rps,
            cpu_pair(s),
        );
    }
    out
}

/// The interceptor against each other proxy, as ratios.
fn render_ratios(results: &[(&str, Sample)]) -> String {
    let direct = results[0].1;
    let me = results[1].1;
    // The other proxies only (not the interceptor's own masked variant).
    let others: Vec<(&str, Sample)> = results[2..]
        .iter()
        .filter(|(n, _)| !n.starts_with("interceptor"))
        .copied()
        .collect();
    let others = &others[..];
    let mut out = String::from("| interceptor ÷ | ");
    out += &others
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(" | ");
    out += " |\n|---|";
    out += &"---:|".repeat(others.len());
    out += "\n";
    let ratio = |a: f64, b: f64| {
        if a > 0.0 && b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "n/a (added ≤ 0)".into()
        }
    };
    type Metric<'a> = &'a dyn Fn(&Sample) -> f64;
    let rows: [(String, Metric); 6] = [
        (
            format!(
                "requests/s, {} conns (higher is better)",
                LOAD_CONNECTIONS[0]
            ),
            &|s| s.loads[0].rps,
        ),
        (
            format!(
                "requests/s, {} conns (higher is better)",
                LOAD_CONNECTIONS[1]
            ),
            &|s| s.loads[1].rps,
        ),
        (
            format!(
                "proxy CPU per request, {} conns (lower is better)",
                LOAD_CONNECTIONS[0]
            ),
            &|s| s.loads[0].cpu_us().unwrap_or(0.0),
        ),
        (
            format!(
                "proxy CPU per request, {} conns (lower is better)",
                LOAD_CONNECTIONS[1]
            ),
            &|s| s.loads[1].cpu_us().unwrap_or(0.0),
        ),
        ("added p50 latency (lower is better)".into(), &|s| {
            s.p50_us - direct.p50_us
        }),
        ("added p99 latency (lower is better)".into(), &|s| {
            s.p99_us - direct.p99_us
        }),
    ];
    for (label, f) in rows {
        out += &format!("| {label} |");
        for (_, o) in others {
            out += &format!(" {} |", ratio(f(&me), f(o)));
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_split_groups_threads_by_what_they_do() {
        let p = "by comm:\n    58.90%  tokio-rt-worker\n    17.46%  store-index\n     3.39%  audit-sync\n     \
                 2.94%  sled-io-6\n     2.93%  sled-io-0\n     1.00%  interceptor\n\nby dso,symbol:\n    \
                 17.46%  [kernel.kallsyms]  [k] finish_task_switch.isra.0\n";
        assert_eq!(
            super::cpu_split(p),
            "the proxy's runtime threads 59%, the session index (store-index and sled's threads) 23%, \
             the audit log's sync thread 3%, other threads 1%"
        );
        assert_eq!(super::cpu_split("by comm:\n\nby dso,symbol:\n"), "");
    }
}
