//! The request pipeline in process, without root or a kernel: a proxy on a
//! loopback port whose stand-in kernel says every connection it accepts
//! was headed for a test upstream, from one workload cgroup. Accept,
//! attribute, decide, inject, forward, mask and record run as in the
//! daemon; only the eBPF redirect and its record are stood in for (the
//! e2e suite, as root on a real kernel, covers those).
use super::*;
use crate::config::Config;
use interceptor_common::ConnRecord;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "sk-INPROC-5be1c0de";

/// The kernel's answer for every connection: it came from `record`.
struct OneWorkload(ConnRecord);

impl Redirects for OneWorkload {
    fn take_original(&self, _peer: SocketAddr) -> Option<ConnRecord> {
        Some(self.0)
    }

    fn upstream_is_workload(&self, _local: SocketAddr) -> Option<u64> {
        None
    }
}

/// A running proxy, its upstream and what the upstream was sent.
struct Lab {
    dir: PathBuf,
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    upstream: SocketAddr,
    /// Each request head the upstream read, as text.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An upstream that answers each request with the `x-api-key` it was sent
/// and a card number, as text with a length.
async fn upstream(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-api-key: "))
                    .unwrap_or("-")
                    .to_string();
                seen.lock().unwrap().push(head);
                let body = format!("you sent {key}; card 4111 1111 1111 1111\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A proxy whose policy (`{dest}` and `{workload}` filled in) is `policy`,
/// with the credential `api` = SECRET.
async fn lab(tag: &str, policy: &str) -> Lab {
    let dir =
        std::env::temp_dir().join(format!("interceptor-pipeline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A directory tree stands for the cgroup2 mount: a cgroup's id is its
    // directory's inode, as on cgroupfs.
    let mount = dir.join("cgroup");
    let cgroup = mount.join("skills/agent");
    std::fs::create_dir_all(&cgroup).unwrap();
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup).unwrap());
    std::fs::create_dir_all(dir.join("credentials")).unwrap();
    std::fs::write(dir.join("credentials/api"), SECRET).unwrap();
    std::fs::create_dir_all(dir.join("policy")).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = upstream(seen.clone()).await;
    let text = policy
        .replace("{dest}", &up.to_string())
        .replace("{workload}", "skills/agent");
    std::fs::write(dir.join("policy/10-test.toml"), text).unwrap();
    let policy = Policy::load_dir(&dir.join("policy")).unwrap_or_else(|e| panic!("{e:?}"));

    let std::net::IpAddr::V4(ip) = up.ip() else {
        unreachable!()
    };
    let record = ConnRecord {
        addr: [u32::from_ne_bytes(ip.octets()), 0, 0, 0],
        port: up.port(),
        family: interceptor_common::AF_INET,
        pid: std::process::id(),
        tgid: std::process::id(),
        uid: 65534,
        gid: 65534,
        cgroup_id,
        ..Default::default()
    };
    let cfg = Config {
        credentials_dir: dir.join("credentials"),
        // Marking sockets needs CAP_NET_ADMIN; nothing here filters on it.
        proxy_mark: 0,
        ..Config::default()
    };
    let tls = crate::tls::Tls::load_or_create(&dir.join("state"), &[]).unwrap();
    let store = Store::open_with(&dir.join("state"), &store::Options::default()).unwrap();
    let proxy = Proxy::new(
        &cfg,
        Parts {
            kernel: Arc::new(OneWorkload(record)),
            names: CgroupNames::new(mount, vec![cgroup]),
            policy,
            store: Arc::new(store),
            stats: Default::default(),
            tls,
            oidc: None,
            user_header: ::http::header::PROXY_AUTHORIZATION,
            clock: Clock::system(),
            approvals: Default::default(),
            webhook: None,
            connections_per_workload: 64,
        },
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(proxy.clone().serve(l));
    Lab {
        dir,
        proxy,
        addr,
        upstream: up,
        seen,
    }
}

/// An HTTP/1.1 response as the client read it.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Lab {
    /// `GET path` through the proxy, as the workload would send it.
    async fn get(&self, path: &str) -> Answer {
        let mut c = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.upstream
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        Answer {
            status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }

    /// The requests recorded so far, once `n` of them are (they are
    /// recorded when their response ends).
    async fn requests(&self, n: usize) -> Vec<store::RequestRecord> {
        for _ in 0..100 {
            let mut all = Vec::new();
            for s in self
                .proxy
                .store
                .find(&store::SessionFilter::default(), 100)
                .unwrap()
            {
                if let Some(d) = self.proxy.store.session_with_requests(s.id).unwrap() {
                    all.extend(d.requests);
                }
            }
            if all.len() >= n {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} request(s) were not recorded");
    }
}

const INJECT_AND_MASK: &str = r#"
[credential.api]
source = "file:api"
header = "x-api-key"

[mask.pii]
detectors = ["card"]

[[rule]]
id = "api"
workload = "{workload}"
destination = "{dest}"
path = "/v1/**"
inject = "api"
mask = "pii"
action = "allow"
"#;

#[tokio::test]
async fn a_request_is_decided_injected_forwarded_masked_and_recorded() {
    let lab = lab("flow", INJECT_AND_MASK).await;
    let a = lab.get("/v1/echo").await;
    assert_eq!(a.status, 200, "{}\n\n{}", a.head, a.body);
    // inject: the upstream got the secret; the skill never sees it.
    let seen = lab.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].contains(&format!("x-api-key: {SECRET}")),
        "{}",
        seen[0]
    );
    assert!(!a.body.contains(SECRET), "{}", a.body);
    assert!(a.body.contains("[REDACTED:injected_secret]"), "{}", a.body);
    // mask: the card number too; a small body keeps its length.
    assert!(!a.body.contains("4111 1111"), "{}", a.body);
    assert!(
        a.head
            .contains(&format!("content-length: {}", a.body.len())),
        "{}",
        a.head
    );
    // record: the index has the request, decided by the rule, with what
    // was injected and masked, and the audit chain holds.
    let r = &lab.requests(1).await[0];
    assert_eq!(r.decision, Action::Allow);
    assert_eq!(r.rule.as_deref(), Some("api"));
    assert_eq!(r.injected.as_deref(), Some("api"));
    assert_eq!(r.status, 200);
    assert!(r.masked.values().sum::<u64>() >= 2, "{:?}", r.masked);
    let v = lab.proxy.store.audit_verify().unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
    assert!(v.records >= 2, "a connection and a request record: {v:?}");
}

#[tokio::test]
async fn a_request_no_rule_allows_is_refused_before_the_upstream() {
    let lab = lab("deny", INJECT_AND_MASK).await;
    let a = lab.get("/admin/users").await;
    assert_eq!(a.status, 403, "{}\n\n{}", a.head, a.body);
    assert!(lab.seen.lock().unwrap().is_empty(), "reached the upstream");
    let r = &lab.requests(1).await[0];
    assert_eq!(r.decision, Action::Deny);
    assert_eq!(r.path, "/admin/users");
    assert_eq!(r.injected, None);
    // The refusal is in the audit log too.
    let v = lab.proxy.store.audit_verify().unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
    assert!(v.records >= 2, "{v:?}");
}

#[tokio::test]
async fn a_target_that_is_not_canonical_is_refused_not_forwarded() {
    let lab = lab("canon", INJECT_AND_MASK).await;
    // Decided as /v1/..., the upstream would resolve it to /admin.
    let a = lab.get("/v1/%2e%2e/admin").await;
    assert!(a.status >= 400, "{} {}", a.status, a.head);
    assert!(
        lab.seen
            .lock()
            .unwrap()
            .iter()
            .all(|h| !h.contains("admin")),
        "reached the upstream"
    );
}
