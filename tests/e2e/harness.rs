//! Test harness: real cgroups, the real daemon binary, real clients, local
//! upstreams on loopback. Everything cleans up in `Drop`, so a failing test
//! leaves no cgroup, process or pinned hook behind.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_interceptor");

/// True when the kernel tests can run. Otherwise fails loudly, unless
/// INTERCEPTOR_SKIP_KERNEL_TESTS=1 asks to skip (CI never sets it).
pub fn kernel_ready() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let problem = if unsafe { libc::geteuid() } != 0 {
        Some("the kernel tests need root (they load BPF programs and create cgroups)".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("this kernel has no BTF (/sys/kernel/btf/vmlinux)".to_string())
    } else if cgroup2_mount().is_none() {
        Some("no cgroup2 hierarchy is mounted".to_string())
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if std::env::var("INTERCEPTOR_SKIP_KERNEL_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (INTERCEPTOR_SKIP_KERNEL_TESTS=1): {p}");
            false
        }
        Some(p) => panic!(
            "{p}. Run as root on a kernel with BPF, or set INTERCEPTOR_SKIP_KERNEL_TESTS=1 to skip."
        ),
    }
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
    })
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh cgroup under the cgroup2 mount; its processes are killed and the
/// cgroup removed on drop.
pub struct TestCgroup {
    pub rel: String,
    pub abs: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let mount = cgroup2_mount().expect("cgroup2 mount");
        let rel = format!("interceptor-test-{tag}-{}", unique());
        let abs = mount.join(&rel);
        std::fs::create_dir(&abs).unwrap_or_else(|e| panic!("mkdir {}: {e}", abs.display()));
        TestCgroup { rel, abs }
    }

    /// `sh -c` that moves itself into the cgroup, then execs the program, so
    /// nothing runs in the forked child of this (multi-threaded) test process.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.abs.display()
            ))
            .arg("sh")
            .arg(program)
            .args(args);
        c
    }

    pub fn remove(&self) {
        let _ = std::fs::write(self.abs.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let procs = std::fs::read_to_string(self.abs.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.abs);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A port in 20000..32000 (below the ephemeral range) free on both loopbacks.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20000 + (std::process::id() % 500) * 20;
    for _ in 0..2000 {
        let p = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 12000) as u16;
        let p = if p >= 32000 { p - 12000 } else { p };
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

/// Runs a command with a deadline; returns (status ok, stdout, stderr).
pub fn run(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} timed out after {timeout:?}; stderr: {}",
                t_err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.success(),
        t_out.join().unwrap(),
        t_err.join().unwrap(),
    )
}

pub fn client_py() -> String {
    format!("{}/../tests/e2e/client.py", env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/e2e/client.py in the cgroup and parses its JSON line.
pub fn py(cg: &TestCgroup, args: &[&str]) -> Value {
    let script = client_py();
    let mut all = vec!["-u", script.as_str()];
    all.extend_from_slice(args);
    let (ok, out, err) = run(cg.command("python3", &all), Duration::from_secs(180));
    assert!(ok, "client {args:?} failed: {err}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client output {out:?}: {e}; stderr {err}"))
}

/// Runs the client outside any test cgroup.
pub fn py_outside(args: &[&str]) -> Value {
    let script = client_py();
    let mut c = Command::new("python3");
    c.arg("-u").arg(&script).args(args);
    let (ok, out, err) = run(c, Duration::from_secs(60));
    assert!(ok, "client {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

/// A running `interceptor run`, SIGKILLed and its hooks detached on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub cfg: DaemonConfig,
    pub log: PathBuf,
}

#[derive(Clone)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    pub cgroups: Vec<String>,
    pub port: u16,
    pub admin_port: u16,
    pub extra: String,
    pub env: Vec<(String, String)>,
    /// Run the daemon in this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Pin directory instead of the harness's own under /sys/fs/bpf.
    pub bpffs_dir: Option<PathBuf>,
    /// RLIMIT_NOFILE (soft and hard) for the daemon, via prlimit(1).
    pub nofile: Option<u64>,
}

impl DaemonConfig {
    /// A private directory (policies, state, socket) and bpffs pin dir.
    pub fn new(cgroups: &[&TestCgroup], policy: &str) -> DaemonConfig {
        let dir = std::env::temp_dir().join(format!("interceptor-test-{}", unique()));
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/50-test.toml"), policy).unwrap();
        DaemonConfig {
            dir,
            cgroups: cgroups.iter().map(|c| c.rel.clone()).collect(),
            port: free_port(),
            admin_port: free_port(),
            extra: String::new(),
            env: Vec::new(),
            netns: None,
            bpffs_dir: None,
            nofile: None,
        }
    }

    pub fn bpffs(&self) -> PathBuf {
        if let Some(d) = &self.bpffs_dir {
            return d.clone();
        }
        PathBuf::from(format!(
            "/sys/fs/bpf/interceptor-test-{}",
            self.dir.file_name().unwrap().to_string_lossy()
        ))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        let f = self.dir.join("interceptor.toml");
        let cgroups: Vec<String> = self.cgroups.iter().map(|c| format!("{c:?}")).collect();
        std::fs::write(
            &f,
            format!(
                "cgroups = [{}]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
                 admin_socket = {:?}\npolicies = {:?}\nstate_dir = {:?}\nbpffs_dir = {:?}\n{}",
                cgroups.join(", "),
                self.port,
                self.admin_port,
                self.socket(),
                self.dir.join("policies"),
                self.dir.join("state"),
                self.bpffs(),
                self.extra
            ),
        )
        .unwrap();
        f
    }

    /// The interceptor CA (PEM file) for clients to trust.
    pub fn ca_file(&self) -> PathBuf {
        let out = Command::new(BIN)
            .args(["ca", "export", "--state-dir"])
            .arg(self.dir.join("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = self.dir.join("interceptor-ca.pem");
        std::fs::write(&f, out.stdout).unwrap();
        f
    }

    pub fn credentials_dir(&self) -> PathBuf {
        let d = self.dir.join("credentials");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes credential files (name, value) into `credentials_dir` and
    /// returns the config line that points the daemon at it.
    pub fn credentials(&self, files: &[(&str, &str)]) -> String {
        let creds = self.credentials_dir();
        for (name, value) in files {
            std::fs::write(creds.join(name), value).unwrap();
        }
        format!("credentials_dir = {creds:?}\n")
    }

    pub fn set_policy(&self, policy: &str) {
        let tmp = self.dir.join("policies/.50-test.toml.tmp");
        std::fs::write(&tmp, policy).unwrap();
        std::fs::rename(tmp, self.dir.join("policies/50-test.toml")).unwrap();
    }
}

impl Daemon {
    pub fn start(cfg: &DaemonConfig) -> Daemon {
        let mut d = Daemon {
            child: None,
            cfg: cfg.clone(),
            log: PathBuf::new(),
        };
        d.restart();
        d
    }

    /// Starts (again) with the same configuration and waits for readiness.
    pub fn restart(&mut self) {
        let log = self.cfg.dir.join(format!("daemon-{}.log", unique()));
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = match &self.cfg.netns {
            // nsenter, not `ip netns exec`: that one remounts /sys, hiding
            // the cgroup2 mount.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(BIN);
                c
            }
            None => match self.cfg.nofile {
                Some(n) => {
                    let mut c = Command::new("prlimit");
                    c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                    c
                }
                None => Command::new(BIN),
            },
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(self.cfg.config_file())
            .envs(self.cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn interceptor");
        self.child = Some(child);
        self.log = log;
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", self.log_text());
            }
            if self.log_text().contains("ready") && (self.cfg.netns.is_some() || self.healthz()) {
                // A log written to a file holds no terminal colour codes
                // (issue 14).
                assert!(
                    !self.log_text().contains('\x1b'),
                    "colour codes in the log file:\n{}",
                    self.log_text()
                );
                return;
            }
            if Instant::now() > deadline {
                panic!("daemon not ready after 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn healthz(&self) -> bool {
        http_get(
            SocketAddr::from(([127, 0, 0, 1], self.cfg.admin_port)),
            "/healthz",
        )
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&mut self, sig: i32) {
        // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
        let _ = self.child.as_mut().unwrap().wait();
        self.child = None;
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
    }

    /// `interceptor sessions list --json`, through the admin socket when the
    /// daemon runs, from the store otherwise.
    pub fn sessions(&self) -> Vec<Value> {
        let mut c = Command::new(BIN);
        c.args([
            "sessions",
            "list",
            "--json",
            "--limit",
            "100000",
            "--admin-socket",
        ])
        .arg(self.cfg.socket())
        .arg("--state-dir")
        .arg(self.cfg.dir.join("state"));
        let (ok, out, err) = run(c, Duration::from_secs(30));
        assert!(ok, "sessions list failed: {err}");
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    }

    /// The request records of one session (`interceptor sessions show ID --json`).
    pub fn requests(&self, session: u64) -> Vec<Value> {
        let mut c = Command::new(BIN);
        c.args([
            "sessions",
            "show",
            &session.to_string(),
            "--json",
            "--admin-socket",
        ])
        .arg(self.cfg.socket())
        .arg("--state-dir")
        .arg(self.cfg.dir.join("state"));
        let (ok, out, err) = run(c, Duration::from_secs(30));
        assert!(ok, "sessions show failed: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["requests"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until a closed session matching `pred` is recorded.
    pub fn wait_session(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self
                .sessions()
                .into_iter()
                .find(|s| s["state"] == "closed" && pred(s))
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!("no matching session; have: {:#?}", self.sessions());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(BIN)
            .arg("detach")
            .arg("--config")
            .arg(self.cfg.config_file())
            .output();
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// What an upstream saw of one connection.
#[derive(Clone, Debug)]
pub struct Seen {
    pub peer: SocketAddr,
}

/// A TCP upstream on loopback (outside every test cgroup) that records each
/// accepted connection and runs `serve` on it in its own thread.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start(bind: &str, serve: fn(TcpStream)) -> Upstream {
        let l = TcpListener::bind(bind).unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s2, a2) = (seen.clone(), accepted.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                s2.lock().unwrap().push(Seen {
                    peer: c.peer_addr().unwrap(),
                });
                a2.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(c));
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
        }
    }

    pub fn echo(bind: &str) -> Upstream {
        Upstream::start(bind, |mut c| {
            let mut r = c.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut c);
            let _ = c.shutdown(std::net::Shutdown::Write);
        })
    }

    /// A minimal HTTP/1.1 responder: `GET /bytes/N` returns N deterministic
    /// bytes, anything else "hello". Test fixture only.
    pub fn http(bind: &str) -> Upstream {
        Upstream::start(bind, |c| {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                return;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut w = c;
            if let Some(n) = path
                .strip_prefix("/bytes/")
                .and_then(|n| n.parse::<usize>().ok())
            {
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                );
                let mut left = n;
                let block = pattern_block();
                while left > 0 {
                    let k = left.min(block.len());
                    if w.write_all(&block[..k]).is_err() {
                        return;
                    }
                    left -= k;
                }
            } else {
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n"
                );
            }
        })
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// 64 KiB of bytes that are not all alike.
pub fn pattern_block() -> Vec<u8> {
    (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// The pid owning the TCP socket whose local address is `local`, from
/// /proc/net/tcp{,6} and /proc/*/fd.
pub fn socket_owner(local: SocketAddr) -> Option<u32> {
    let inode = socket_inode(local)?;
    let target = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return Some(pid);
            }
        }
    }
    None
}

fn socket_inode(local: SocketAddr) -> Option<u64> {
    let (file, hex) = match local {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = (0..4)
                .map(|i| {
                    format!(
                        "{:08X}",
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                    )
                })
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // TIME_WAIT leftovers of an earlier connection on the same port
        // have inode 0: skip them.
        (f.get(1) == Some(&hex.as_str()))
            .then(|| f[9].parse().ok())
            .flatten()
            .filter(|&i: &u64| i != 0)
    })
}

pub fn sha256_hex(data: impl Iterator<Item = Vec<u8>>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for d in data {
        h.update(&d);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub const EPERM: i64 = 1;
pub const ECONNREFUSED: i64 = 111;
pub const ECONNRESET: i64 = 104;
pub const ENOTCONN: i64 = 107;
pub const EPIPE: i64 = 32;

/// A test PKI: a CA and a server certificate for api.test, pinned.test,
/// 127.0.0.1 and ::1, written as PEM files into `dir`.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl TestPki {
    pub fn new(dir: &Path, tag: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, format!("interceptor test CA {tag}"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["api.test".to_string(), "pinned.test".to_string()])
            .unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.subject_alt_names
            .push(SanType::IpAddress("::1".parse().unwrap()));
        let cert = p.signed_by(&key, &issuer).unwrap();
        let ca_pem = dir.join(format!("{tag}-ca.pem"));
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        TestPki {
            ca_pem,
            cert_chain: vec![cert.der().clone(), ca_cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(self.cert_chain.clone(), key)
        .unwrap();
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

/// An HTTP(S) upstream (hyper, HTTP/1.1 and HTTP/2) for the data-path tests:
/// - `/echo...`: JSON with method, path, the request headers (each value
///   replaced by its SHA-256, so secrets are never echoed), body length;
/// - `/sse`: one event, then the rest once `/release` was called;
/// - `/bytes/N`: N bytes, streamed.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    /// What the `/ws` WebSocket endpoint saw.
    pub ws: Arc<WsSeen>,
    _rt: tokio::runtime::Runtime,
}

impl HttpUpstream {
    pub fn start(bind: &str, pki: Option<&TestPki>) -> HttpUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let tls = pki.map(|p| tokio_rustls::TlsAcceptor::from(p.server_config()));
        let count = requests.clone();
        let ws = Arc::new(WsSeen::default());
        let ws2 = ws.clone();
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (count, release, tls, ws) =
                    (count.clone(), release.clone(), tls.clone(), ws2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        upstream_respond(req, release.clone(), ws.clone())
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(conn).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(
                                        hyper_util::rt::TokioIo::new(s),
                                        svc,
                                    )
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(
                                    hyper_util::rt::TokioIo::new(conn),
                                    svc,
                                )
                                .await;
                        }
                    }
                });
            }
        });
        HttpUpstream {
            addr,
            requests,
            ws,
            _rt: rt,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type UpBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// What a WebSocket endpoint of the test upstream received.
#[derive(Default)]
pub struct WsSeen {
    /// Text messages, in order.
    pub texts: Mutex<Vec<String>>,
    /// Frame streams that were not valid WebSocket (a proxy passing raw
    /// bytes after the 101); a connection dropped without a close is not one.
    pub protocol_errors: AtomicUsize,
}

/// The `/ws` endpoint: a real WebSocket server (tungstenite). `whoami`
/// answers with the Authorization it was sent and a card number (what a
/// careless API echoes); anything else is echoed.
async fn websocket_endpoint(
    mut req: hyper::Request<hyper::body::Incoming>,
    ws: Arc<WsSeen>,
) -> hyper::Response<UpBody> {
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use tokio_tungstenite::tungstenite::{Error, Message, error::ProtocolError, protocol::Role};
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut s = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        while let Some(m) = s.next().await {
            let m = match m {
                Ok(m) => m,
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => break,
                Err(Error::Protocol(_)) | Err(Error::Utf8(_)) | Err(Error::Capacity(_)) => {
                    ws.protocol_errors.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(_) => break,
            };
            if let Message::Text(t) = m {
                ws.texts.lock().unwrap().push(t.to_string());
                if t.as_str() == "close-with-key" {
                    // A server that closes with the credential in its reason.
                    use tokio_tungstenite::tungstenite::protocol::{
                        CloseFrame, frame::coding::CloseCode,
                    };
                    let reason = format!("bad {auth} card 4111 1111 1111 1111");
                    let _ = s
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Library(4001),
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
                let reply = if t.as_str() == "whoami" {
                    format!("you are {auth}; card on file 4111 1111 1111 1111")
                } else {
                    t.to_string()
                };
                if s.send(Message::text(reply)).await.is_err() {
                    break;
                }
            }
        }
    });
    hyper::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
        )
        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
        .unwrap()
}

async fn upstream_respond(
    mut req: hyper::Request<hyper::body::Incoming>,
    release: Arc<tokio::sync::Notify>,
    ws: Arc<WsSeen>,
) -> Result<hyper::Response<UpBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_string();
    let full = |status: u16, ctype: &str, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)).boxed())
            .unwrap()
    };
    // `Connection: upgrade` + `Upgrade: echo`: 101, then an echo of the
    // raw bytes (the mechanism WebSocket uses).
    if path == "/ws" {
        return Ok(websocket_endpoint(req, ws).await);
    }
    if path == "/upgrade" && !req.headers().contains_key("upgrade") {
        return Ok(full(200, "text/plain", b"no upgrade\n".to_vec()));
    }
    if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(hyper::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(http_body_util::Empty::new().boxed())
            .unwrap());
    }
    // Sensitive data in several shapes, for the masking tests.
    let pii =
        "card 4111 1111 1111 1111 ssn 123-45-6789 mail bob@example.com key AKIAIOSFODNN7EXAMPLE\n";
    match path.as_str() {
        "/pii" => return Ok(full(200, "text/plain", pii.repeat(3).into_bytes())),
        "/pii-gzip" => {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(pii.repeat(3).as_bytes()).unwrap();
            let mut r = full(200, "text/plain", e.finish().unwrap());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            return Ok(r);
        }
        "/pii-zstd" => {
            let mut r = full(200, "text/plain", b"\x28\xb5\x2f\xfd opaque".to_vec());
            r.headers_mut()
                .insert("content-encoding", "zstd".parse().unwrap());
            return Ok(r);
        }
        "/pii-json" => {
            let doc = r#"{"customers":[{"name":"Ann","ssn":"078-05-1120","email":"ann@example.com"}],"auth":{"password":"hunter2"}}"#;
            return Ok(full(200, "application/json", doc.as_bytes().to_vec()));
        }
        // Reflects the Authorization header it received, verbatim.
        "/reflect" => {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            return Ok(full(
                200,
                "application/json",
                serde_json::json!({ "you_sent": auth })
                    .to_string()
                    .into_bytes(),
            ));
        }
        _ => {}
    }
    if path == "/release" {
        release.notify_one();
        return Ok(full(200, "text/plain", b"released\n".to_vec()));
    }
    if path == "/sse" || path == "/pii-sse" {
        let pii = path == "/pii-sse";
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        tokio::spawn(async move {
            let first: &'static [u8] = if pii {
                b"data: first card 4111 1111 1111 1111\n\n"
            } else {
                b"data: first\n\n"
            };
            let _ = tx.send(bytes::Bytes::from_static(first)).await;
            release.notified().await;
            for i in 2..=3 {
                if pii {
                    // A secret split across two chunks.
                    let _ = tx
                        .send(bytes::Bytes::from(format!(
                            "data: event {i} key AKIAIOSFOD"
                        )))
                        .await;
                    let _ = tx.send(bytes::Bytes::from_static(b"NN7EXAMPLE\n\n")).await;
                } else {
                    let _ = tx
                        .send(bytes::Bytes::from(format!("data: event {i}\n\n")))
                        .await;
                }
            }
        });
        let stream = futures_stream(rx);
        return Ok(hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        tokio::spawn(async move {
            let block = bytes::Bytes::from(pattern_block());
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len());
                if tx.send(block.slice(..k)).await.is_err() {
                    return;
                }
                left -= k;
            }
        });
        return Ok(hyper::Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n.to_string())
            .body(http_body_util::StreamBody::new(futures_stream(rx)).boxed())
            .unwrap());
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let query = req.uri().query().unwrap_or("").to_string();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.to_string(),
            Value::String(sha256_hex(std::iter::once(v.as_bytes().to_vec()))),
        );
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let body_len = body.len();
    let body_sha256 = sha256_hex(std::iter::once(body));
    let v = serde_json::json!({"method": method, "path": path, "query_sha256": sha256_hex(std::iter::once(query.into_bytes())),
        "version": version, "headers": headers, "body_len": body_len, "body_sha256": body_sha256});
    Ok(full(200, "application/json", v.to_string().into_bytes()))
}

/// mpsc receiver → a body stream of data frames.
fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>
+ Send
+ Sync
+ 'static {
    struct S(tokio::sync::mpsc::Receiver<bytes::Bytes>);
    impl futures_core::Stream for S {
        type Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0
                .poll_recv(cx)
                .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    let _ = &mut rx;
    S(rx)
}

pub fn sha256_str(s: &str) -> String {
    sha256_hex(std::iter::once(s.as_bytes().to_vec()))
}

/// A local OIDC issuer over HTTPS: discovery document and JWKS (one ES256
/// key, generated here), and tokens signed with that key.
pub struct TestIdp {
    pub issuer: String,
    pub ca_pem: PathBuf,
    key_pem: String,
    _server: HttpUpstream,
}

impl TestIdp {
    pub fn start(dir: &Path) -> TestIdp {
        use base64::Engine;
        let pki = TestPki::new(dir, "idp");
        let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256
        let point = key.public_key_raw(); // 0x04 || X || Y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "test-key-1", "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let issuer = format!("https://127.0.0.1:{port}");
        let discovery = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
        let routes: Vec<(String, String)> = vec![
            (
                "/.well-known/openid-configuration".into(),
                discovery.to_string(),
            ),
            ("/jwks".into(), jwks.to_string()),
        ];
        let server = HttpUpstream::start_static(&format!("127.0.0.1:{port}"), &pki, routes);
        TestIdp {
            issuer,
            ca_pem: pki.ca_pem.clone(),
            key_pem: key.serialize_pem(),
            _server: server,
        }
    }

    /// A token with these claims merged over valid defaults.
    pub fn token(&self, overrides: Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": self.issuer, "aud": "interceptor", "sub": "user-1", "email": "alice@example.com",
            "groups": ["sre"], "iat": now, "exp": now + 600,
        });
        for (k, v) in overrides.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("test-key-1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.key_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }

    /// `{"alg":"none"}` with the default claims and an empty signature.
    pub fn unsigned_token(&self) -> String {
        use base64::Engine;
        let signed = self.token(serde_json::json!({}));
        let payload = signed.split('.').nth(1).unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT","kid":"test-key-1"}"#);
        format!("{header}.{payload}.")
    }
}

impl HttpUpstream {
    /// An HTTPS server answering fixed JSON bodies by path (404 otherwise).
    pub fn start_static(bind: &str, pki: &TestPki, routes: Vec<(String, String)>) -> HttpUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(bind)).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let routes = Arc::new(routes);
        let count = requests.clone();
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, routes, count) = (acceptor.clone(), routes.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(s) = acceptor.accept(conn).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            count.fetch_add(1, Ordering::SeqCst);
                            let found = routes
                                .iter()
                                .find(|(p, _)| p == req.uri().path())
                                .map(|(_, b)| b.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let (status, body) = match found {
                                    Some(b) => (200, b),
                                    None => (404, "{}".to_string()),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(
                                            http_body_util::Full::new(bytes::Bytes::from(body))
                                                .boxed(),
                                        )
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        HttpUpstream {
            addr,
            requests,
            ws: Default::default(),
            _rt: rt,
        }
    }
}
