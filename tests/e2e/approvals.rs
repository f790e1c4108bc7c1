//! Issue 11, item 8: an approval's window covers the request that was
//! approved (same workload, uid, user, rule, method and canonical target),
//! wider only where the rule says `approval_window_scope = "rule"`; held
//! requests are capped per workload (429 `too_many_pending`) and every
//! pending one is listed.
use crate::harness::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Lab {
    cg: TestCgroup,
    other: TestCgroup,
    cfg: DaemonConfig,
    _d: Daemon,
    up: HttpUpstream,
    /// A cleartext server elsewhere, to which a skill may claim the same host.
    plain: HttpUpstream,
    ca: String,
}

fn lab() -> Lab {
    let cg = TestCgroup::new("appr");
    let other = TestCgroup::new("appr-other");
    let mut cfg = DaemonConfig::new(&[&cg, &other], "");
    let pki = TestPki::new(&cfg.dir, "upstream");
    let up = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    let plain = HttpUpstream::start("127.0.0.1:0", None);
    cfg.extra = format!(
        "upstream_ca_files = [{:?}]\nmax_pending_approvals = 3\n",
        pki.ca_pem
    );
    let rule = |id: &str, path: &str, extra: &str| {
        format!(
            "[[rule]]\nid = {id:?}\nhost = \"api.test\"\npath = {path:?}\naction = \"approve\"\n\
             approval_timeout = \"30s\"\n{extra}\n"
        )
    };
    cfg.set_policy(&format!(
        "{}{}{}[[rule]]\nid = \"api\"\nhost = \"api.test\"\naction = \"allow\"\n",
        rule("deploy", "/deploy/**", "approval_window = \"5m\"\n"),
        rule(
            "release",
            "/release/**",
            "approval_window = \"5m\"\napproval_window_scope = \"rule\"\n"
        ),
        rule("hold", "/hold/**", ""),
    ));
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file().to_string_lossy().into_owned();
    Lab {
        cg,
        other,
        cfg,
        _d: d,
        up,
        plain,
        ca,
    }
}

impl Lab {
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut c = Command::new(BIN);
        c.args(args).arg("--admin-socket").arg(self.cfg.socket());
        run(c, Duration::from_secs(30))
    }

    fn pending(&self) -> Vec<Value> {
        let (ok, out, err) = self.cli(&["approvals", "list", "--pending", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The pending approval for `path` from `uid`, once it appears.
    fn wait_pending(&self, path: &str, uid: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self
                .pending()
                .into_iter()
                .find(|a| a["path"] == path && a["uid"] == uid)
            {
                return a;
            }
            assert!(Instant::now() < deadline, "no pending approval for {path}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A request from the workload (`cg`), as `uid` (0 or 65534).
    fn skill(&self, cg: &TestCgroup, path: &str, uid: u32) -> Child {
        let url = format!("https://api.test:{}{path}", self.up.addr.port());
        let resolve = format!("api.test:{}:127.0.0.1", self.up.addr.port());
        let curl = [
            "curl",
            "-sS",
            "--max-time",
            "40",
            "--cacert",
            self.ca.as_str(),
            "--resolve",
            resolve.as_str(),
            "-w",
            "\n%{http_code}",
            url.as_str(),
        ];
        let mut c = if uid == 0 {
            cg.command(curl[0], &curl[1..])
        } else {
            let mut a = vec!["--reuid=65534", "--regid=65534", "--clear-groups"];
            a.extend_from_slice(&curl);
            cg.command("setpriv", &a)
        };
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn decide(&self, a: &Value, verb: &str) {
        let id = a["id"].to_string();
        let (ok, out, err) = self.cli(&["approvals", verb, &id, "--reason", "test"]);
        assert!(ok, "{out}{err}");
    }

    /// The same path in cleartext to another address, claiming the host.
    fn skill_elsewhere(&self, path: &str) -> Child {
        let url = format!("http://127.0.0.1:{}{path}", self.plain.addr.port());
        let curl = [
            "curl",
            "-sS",
            "--max-time",
            "40",
            "-H",
            "Host: api.test",
            "-w",
            "\n%{http_code}",
            url.as_str(),
        ];
        let mut a = vec!["--reuid=65534", "--regid=65534", "--clear-groups"];
        a.extend_from_slice(&curl);
        self.cg
            .command("setpriv", &a)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Held: the request waits for an approver; deny it and see the 403.
    fn assert_held(&self, cg: &TestCgroup, path: &str, uid: u32) {
        let child = self.skill(cg, path, uid);
        let a = self.wait_pending(path, uid);
        self.decide(&a, "deny");
        assert_eq!(status(child), "403", "{path} as {uid}");
    }
}

fn status(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let _ = body;
    code.to_string()
}

#[test]
fn a_window_covers_the_approved_request_and_pending_ones_are_capped() {
    if !kernel_ready() {
        return;
    }
    let l = lab();
    let nobody = 65534;

    // Approved once (the rule's approval_window applies): the same request
    // from the same uid passes without asking again.
    let child = l.skill(&l.cg, "/deploy/app", nobody);
    let a = l.wait_pending("/deploy/app", nobody);
    l.decide(&a, "approve");
    assert_eq!(status(child), "200");
    assert_eq!(status(l.skill(&l.cg, "/deploy/app", nobody)), "200");
    // Not another path under the same rule, not another uid in the cgroup.
    l.assert_held(&l.cg, "/deploy/drop-production-db", nobody);
    l.assert_held(&l.cg, "/deploy/app", 0);
    // Not the same path to another address in cleartext, claiming the host
    // the approver saw.
    let child = l.skill_elsewhere("/deploy/app");
    let a = l.wait_pending("/deploy/app", nobody);
    assert_eq!(a["destination"], l.plain.addr.to_string(), "{a}");
    assert_eq!(a["tls"], false, "{a}");
    l.decide(&a, "deny");
    assert_eq!(status(child), "403");
    assert_eq!(l.plain.requests(), 0);

    // A held request whose client goes away is withdrawn at once: it
    // neither stays pending (taking the workload's room) nor can be
    // approved later.
    for i in 1..=4 {
        let mut c = l.skill(&l.cg, &format!("/hold/gone{i}"), nobody);
        l.wait_pending(&format!("/hold/gone{i}"), nobody);
        let _ = c.kill();
        let _ = c.wait();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !l.pending().is_empty() {
        assert!(
            Instant::now() < deadline,
            "abandoned approvals stay pending: {:?}",
            l.pending()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // approval_window_scope = "rule": any request under the rule, still
    // only for that workload and uid.
    let child = l.skill(&l.cg, "/release/a", nobody);
    let a = l.wait_pending("/release/a", nobody);
    l.decide(&a, "approve");
    assert_eq!(status(child), "200");
    assert_eq!(status(l.skill(&l.cg, "/release/b", nobody)), "200");
    l.assert_held(&l.cg, "/release/a", 0);
    l.assert_held(&l.other, "/release/a", nobody);

    // At most 3 held per workload: the 4th is refused at once; another
    // workload still gets its request held.
    let held: Vec<Child> = (1..=3)
        .map(|i| l.skill(&l.cg, &format!("/hold/{i}"), nobody))
        .collect();
    for i in 1..=3 {
        l.wait_pending(&format!("/hold/{i}"), nobody);
    }
    let out = l
        .skill(&l.cg, "/hold/4", nobody)
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n429") && text.contains("too_many_pending"),
        "{text}"
    );
    l.assert_held(&l.other, "/hold/x", nobody);
    // Every pending one is listed.
    let mut paths: Vec<String> = l
        .pending()
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/hold/1", "/hold/2", "/hold/3"], "{paths:?}");
    for a in l.pending() {
        l.decide(&a, "deny");
    }
    for c in held {
        assert_eq!(status(c), "403");
    }
}
