//! A throwaway setup shared by `demo` and `bench`: a cgroup, a policy dir,
//! the release daemon, and small loopback upstreams. Removed on drop.
use crate::{run_cmd, workspace_root};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn require_root() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("this task loads BPF programs and creates cgroups: run it as root");
    }
    Ok(())
}

/// Builds the eBPF object and the release binary; returns the binary.
pub fn build_release() -> Result<PathBuf> {
    crate::build_ebpf::run()?;
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", "interceptor"]);
    // `cargo run` gave us xtask's CARGO_PKG_*, CARGO_MANIFEST_* and
    // CARGO_CRATE_NAME; ring's build script reruns when those differ from
    // the last build's, so each bench rebuilt ring, rustls and the daemon
    // (and the next plain build rebuilt them again).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            build.env_remove(&*k);
        }
    }
    run_cmd(&mut build)?;
    Ok(workspace_root().join("target/release/interceptor"))
}

pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

pub struct Lab {
    pub bin: PathBuf,
    pub name: String,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
}

impl Lab {
    pub fn new(bin: &Path, name: &str, policy: &str, port: u16, admin_port: u16) -> Result<Lab> {
        let cgroup = cgroup2_mount()?.join(name);
        if !cgroup.exists() {
            std::fs::create_dir(&cgroup).with_context(|| format!("mkdir {}", cgroup.display()))?;
        }
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policies"))?;
        std::fs::write(dir.join("policies/50-demo.toml"), policy)?;
        let lab = Lab {
            bin: bin.to_path_buf(),
            name: name.into(),
            cgroup,
            dir,
            port,
            admin_port,
        };
        // Leftovers of an interrupted earlier run.
        let _ = Command::new(&lab.bin)
            .arg("detach")
            .arg("--bpffs-dir")
            .arg(lab.bpffs())
            .output();
        Ok(lab)
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.join("policies")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    fn bpffs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}", self.name))
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// A credential file the daemon reads (`file:NAME`).
    pub fn credential(&self, name: &str, value: &str) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("credentials"))?;
        std::fs::write(self.dir.join("credentials").join(name), value)?;
        Ok(())
    }

    pub fn start_daemon(&self) -> Result<DaemonProc> {
        self.start_daemon_with("")
    }

    /// Starts the daemon with `extra_config` (TOML lines) appended to its
    /// config file, e.g. `upstream_ca_files` for a test CA.
    pub fn start_daemon_with(&self, extra_config: &str) -> Result<DaemonProc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let config = self.dir.join("interceptor.toml");
        std::fs::write(
            &config,
            format!(
                "credentials_dir = {:?}\n{extra_config}",
                self.dir.join("credentials")
            ),
        )?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--cgroup", &self.name])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .arg("--admin-socket")
            .arg(self.socket())
            .arg("--policies")
            .arg(self.policies())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs-dir")
            .arg(self.bpffs())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut d = DaemonProc { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = d.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "daemon exited ({st}):\n{}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            if http_ok(SocketAddr::from(([127, 0, 0, 1], self.admin_port))) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon not ready:\n{}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command that joins the cgroup, then execs `program`.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.cgroup.display()
            ))
            .arg("sh")
            .arg(program)
            .args(args);
        c
    }

    pub fn in_cgroup(&self, program: &str, args: &[&str]) -> Result<String> {
        output(&mut self.command(program, args))
    }

    /// Runs in the cgroup and reports failure as text instead of an error.
    pub fn in_cgroup_status(&self, program: &str, args: &[&str]) -> Result<String> {
        let o = self.command(program, args).output()?;
        Ok(if o.status.success() {
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            format!(
                "FAILED ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )
        })
    }

    /// `interceptor <args> --admin-socket <this lab's socket>`.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new(&self.bin)
                .args(args)
                .arg("--admin-socket")
                .arg(self.socket()),
        )
    }

    pub fn session_detail(&self, id: u64) -> Result<String> {
        output(
            Command::new(&self.bin)
                .args(["sessions", "show", &id.to_string(), "--admin-socket"])
                .arg(self.socket())
                .arg("--state-dir")
                .arg(self.dir.join("state")),
        )
    }

    pub fn sessions_table(&self) -> Result<String> {
        output(
            Command::new(&self.bin)
                .args(["sessions", "list", "--admin-socket"])
                .arg(self.socket())
                .arg("--state-dir")
                .arg(self.dir.join("state")),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("detach")
            .arg("--bpffs-dir")
            .arg(self.bpffs())
            .output();
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct DaemonProc {
    child: Option<Child>,
}

impl DaemonProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// A loopback server running `serve` per connection in its own thread.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start(
        bind: &str,
        serve: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
    ) -> Result<Upstream> {
        let l = TcpListener::bind(bind).with_context(|| format!("binding upstream {bind}"))?;
        let addr = l.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                std::thread::spawn(move || serve(c));
            }
        });
        Ok(Upstream { addr, hits })
    }

    /// Answers every HTTP/1.1 request with `body` (keep-alive aware).
    pub fn http(bind: &str, body: &'static str) -> Result<Upstream> {
        Upstream::http_fn(bind, move |_| body.to_string())
    }

    /// Answers every HTTP/1.1 request with `respond(request head)`.
    pub fn http_fn(
        bind: &str,
        respond: impl Fn(&str) -> String + Send + Sync + Clone + 'static,
    ) -> Result<Upstream> {
        Upstream::start(bind, move |c| {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut w = c;
            loop {
                let mut head = String::new();
                if r.read_line(&mut head).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    head.push_str(&h);
                }
                let body = respond(&head);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        })
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
