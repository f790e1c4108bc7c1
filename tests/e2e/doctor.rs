//! `interceptor doctor` on the real host: a uid that runs a skill inside
//! the workload cgroup and also a process outside it is a finding, naming
//! that process, until the process is gone.
use crate::harness::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Proc {
    fn spawn(mut c: Command) -> Proc {
        c.stdin(Stdio::null()).stdout(Stdio::null());
        Proc(c.spawn().unwrap_or_else(|e| panic!("spawn {c:?}: {e}")))
    }

    fn pid(&self) -> u64 {
        u64::from(self.0.id())
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

const SETPRIV_NOBODY: [&str; 7] = [
    "--reuid",
    NOBODY,
    "--regid",
    NOBODY,
    "--clear-groups",
    "sleep",
    "60",
];

/// Waits until the process runs as nobody (and, when given, in `cgroup`):
/// both the move into the cgroup and setpriv's switch take a moment.
fn wait_settled(pid: u64, cgroup: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let uid_ok = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(NOBODY));
        let cg_ok = cgroup.is_none_or(|c| cg.lines().any(|l| l == format!("0::/{c}")));
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if uid_ok && cg_ok && exe.ends_with("sleep") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not become nobody running sleep (in {cgroup:?}): {status} {cg}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `interceptor doctor --json`: exit code and the document.
fn doctor(config: &std::path::Path) -> (Option<i32>, Value) {
    let out = Command::new(BIN)
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

fn findings<'a>(v: &'a Value, check: &str) -> Vec<&'a Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

fn naming(v: &Value, pid: u64) -> Vec<&Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["process"]["pid"].as_u64() == Some(pid))
        .collect()
}

#[test]
fn doctor_names_a_process_outside_that_shares_a_skills_uid() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("doctor");
    let cfg = DaemonConfig::new(&[&cg], "");
    let config = cfg.config_file();

    let inside = Proc::spawn(cg.command("setpriv", &SETPRIV_NOBODY));
    let mut outside = Proc::spawn({
        let mut c = Command::new("setpriv");
        c.args(SETPRIV_NOBODY);
        c
    });
    wait_settled(inside.pid(), Some(&cg.rel));
    wait_settled(outside.pid(), None);

    let (code, v) = doctor(&config);
    assert_eq!(code, Some(1), "a shared uid is a failed check: {v:#}");
    assert_eq!(v["ok"], false);
    let about_outside = naming(&v, outside.pid());
    assert_eq!(about_outside.len(), 1, "{v:#}");
    let f = about_outside[0];
    assert_eq!(f["check"], "shared-uid", "{f:#}");
    assert_eq!(f["status"], "fail", "{f:#}");
    assert_eq!(f["process"]["uid"], 65534, "{f:#}");
    assert!(
        f["process"]["exe"].as_str().unwrap().ends_with("sleep"),
        "{f:#}"
    );
    assert!(f["fix"].as_str().unwrap().contains("DynamicUser"), "{f:#}");
    // The skill itself is not a finding: it is inside, and not root.
    assert!(naming(&v, inside.pid()).is_empty(), "{v:#}");

    outside.kill();
    let (_, v) = doctor(&config);
    assert!(
        !findings(&v, "shared-uid").is_empty(),
        "the shared-uid check ran: {v:#}"
    );
    assert!(
        naming(&v, outside.pid()).is_empty(),
        "the finding is gone with the process: {v:#}"
    );

    // doctor reads only: no pin tree, no state directory.
    assert!(!cfg.bpffs().exists());
    assert!(!cfg.dir.join("state").exists());
    drop(inside);
    let _ = std::fs::remove_dir_all(&cfg.dir);
}

#[test]
fn doctor_names_a_socket_created_outside_the_workload() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("doctor-sock");
    let cfg = DaemonConfig::new(&[&cg], "");
    let config = cfg.config_file();
    // Listens outside, then moves itself into the workload cgroup: the
    // hooks act on the cgroup a socket was created in, so this one is not
    // covered.
    let script = format!(
        "import socket, os, sys, time\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         open('{}/cgroup.procs', 'w').write(str(os.getpid()))\n\
         print('moved', flush=True); time.sleep(60)\n",
        cg.abs.display()
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]).stdout(Stdio::piped());
    let mut holder = Proc(c.spawn().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "moved");

    let (code, v) = doctor(&config);
    assert_eq!(code, Some(1), "{v:#}");
    let f: Vec<_> = naming(&v, holder.pid())
        .into_iter()
        .filter(|f| f["check"] == "foreign-sockets")
        .collect();
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["status"], "fail");
    assert_eq!(f[0]["process"]["cgroup"], cg.rel.as_str());
    holder.kill();
    let _ = std::fs::remove_dir_all(&cfg.dir);
}
