//! Session store: one sled record per connection, keyed by a monotonically
//! increasing id (big-endian, so iteration is chronological).
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Who opened the connection, as the kernel and /proc told us.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// cgroup path relative to the cgroup2 mount ("skills.slice/foo.service").
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Thread id and process id (tgid) that called connect().
    pub tid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// /proc/PID/exe at accept time; empty when the process was already gone.
    pub exe: String,
    pub comm: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Closed,
    /// The daemon stopped (crash, SIGKILL) while the connection was open.
    Interrupted,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    /// Unix time, milliseconds.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub state: State,
    pub workload: Workload,
    /// The original destination the workload dialled.
    pub destination: String,
    /// The client end as the proxy saw it.
    pub client: String,
    /// "tcp", "http", "tls" (intercepted) or "tls-passthrough".
    #[serde(default)]
    pub protocol: String,
    /// TLS server name, when there was one.
    #[serde(default)]
    pub sni: Option<String>,
    /// HTTP requests on this connection.
    #[serde(default)]
    pub requests: u64,
    pub decision: crate::policy::Action,
    /// Deciding rule; `None` for the default deny or an unattributed connection.
    pub rule: Option<String>,
    pub reason: String,
    /// Workload → upstream.
    pub bytes_up: u64,
    /// Upstream → workload.
    pub bytes_down: u64,
    pub error: Option<String>,
}

/// One HTTP request, under its connection's session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    pub session: u64,
    /// 1-based order on the connection.
    pub seq: u64,
    pub started_ms: u64,
    pub method: String,
    pub host: String,
    pub path: String,
    /// OIDC user name, when a valid token came with the request.
    pub user: Option<String>,
    pub decision: crate::policy::Action,
    pub rule: Option<String>,
    pub reason: String,
    /// Name of the injected credential (never its value).
    pub injected: Option<String>,
    /// Masking detectors that fired on the response, and how often.
    #[serde(default)]
    pub masked: std::collections::BTreeMap<String, u64>,
    /// The response body as the skill received it, after masking (only
    /// masked responses are recorded), up to the session's cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// The request body as it went upstream, after masking (only requests of
    /// rules with `mask_request` are recorded), within the same cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// WebSocket messages after a 101, each way.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub messages_up: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub messages_down: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `sessions list` filters; all given ones must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionFilter {
    /// cgroup path glob ("skills.slice/**").
    pub workload: Option<String>,
    /// OIDC user of any request on the session.
    pub user: Option<String>,
    /// Substring of the destination (address or SNI).
    pub destination: Option<String>,
    pub decision: Option<crate::policy::Action>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl SessionFilter {
    fn matches(&self, s: &Session) -> bool {
        self.workload.as_ref().is_none_or(|w| {
            globset::GlobBuilder::new(w)
                .literal_separator(true)
                .build()
                .is_ok_and(|g| g.compile_matcher().is_match(&s.workload.cgroup))
        }) && self.destination.as_ref().is_none_or(|d| {
            s.destination.contains(d.as_str())
                || s.sni.as_deref().is_some_and(|n| n.contains(d.as_str()))
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionDetail {
    pub session: Session,
    pub requests: Vec<RequestRecord>,
}

pub struct Store {
    db: sled::Db,
    sessions: sled::Tree,
    /// Keyed by session id then seq (both big-endian): a session's requests
    /// are one ordered range.
    requests: sled::Tree,
    /// Ids of sessions in state Open, so a restart finds the ones a dead
    /// daemon left behind without scanning everything.
    open: sled::Tree,
    audit: sled::Tree,
    approvals: sled::Tree,
    /// Last appended (seq, hash): appends are serialised through it so the
    /// chain has one order.
    audit_head: std::sync::Mutex<(u64, String)>,
    meta: sled::Tree,
    flusher: std::sync::Mutex<Option<std::sync::mpsc::Sender<FlushWaiter>>>,
    flusher_thread: Option<std::thread::JoinHandle<()>>,
    /// FLUSH_TIMEOUT (shorter in tests).
    flush_timeout: std::time::Duration,
    /// The next session and approval ids: one counter a kind, dense,
    /// going on after the highest id stored (issue 14: one counter for
    /// both, and sled's generate_id jumped by a million at each restart).
    next_session: std::sync::atomic::AtomicU64,
    next_approval: std::sync::atomic::AtomicU64,
}

impl Drop for Store {
    /// Stops the flusher (its `Db` handle holds the store's file lock), so
    /// the store can be opened again as soon as this one is gone.
    fn drop(&mut self) {
        self.flusher.lock().unwrap().take();
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
    }
}

const AUDIT_HEAD: &[u8] = b"audit_head";

type FlushWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// How long a caller waits for its record to be on disk (a flush takes
/// milliseconds; a disk that takes this long is treated as failed).
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One thread flushes for everyone waiting: each waiter asked after its own
/// write, so the flush that starts after its request covers it.
fn spawn_flusher(
    db: sled::Db,
) -> (
    std::sync::mpsc::Sender<FlushWaiter>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<FlushWaiter>();
    let thread = std::thread::Builder::new()
        .name("store-flush".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiters = vec![first];
                waiters.extend(rx.try_iter());
                let r = db.flush().map(|_| ()).map_err(|e| e.to_string());
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        })
        .expect("spawning the store flusher");
    (tx, thread)
}

impl Store {
    /// The store a daemon wrote, for the commands that read it: one that
    /// is not there is an error naming the path, never created empty.
    pub fn open_existing(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("store");
        if !path.is_dir() {
            anyhow::bail!(
                "no session store at {} (and no daemon answered on the admin socket):                  give the daemon's --state-dir or --admin-socket",
                path.display()
            );
        }
        Store::open(state_dir)
    }

    pub fn open(state_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join("store");
        let db = sled::Config::new().path(&path).open().map_err(|e| {
            // sled wraps the flock failure in an IO error with its own text.
            if e.to_string().contains("could not acquire lock") {
                anyhow::anyhow!(
                    "the session store {} is locked by another process (a running daemon?); \
                     query it through the admin socket (--admin-socket)",
                    path.display()
                )
            } else {
                anyhow::anyhow!("opening the session store {}: {e}", path.display())
            }
        })?;
        let sessions = db.open_tree("sessions")?;
        let open = db.open_tree("sessions_open")?;
        let requests = db.open_tree("requests")?;
        let audit = db.open_tree("audit")?;
        let approvals = db.open_tree("approvals")?;
        let meta = db.open_tree("meta")?;
        let head = match meta.get(AUDIT_HEAD)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => (0, crate::audit::GENESIS.to_string()),
        };
        let (flusher, flusher_thread) = spawn_flusher(db.clone());
        let after_last = |t: &sled::Tree| -> Result<u64> {
            Ok(match t.last()? {
                Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into()?) + 1,
                None => 1,
            })
        };
        let next_session = std::sync::atomic::AtomicU64::new(after_last(&sessions)?);
        let next_approval = std::sync::atomic::AtomicU64::new(after_last(&approvals)?);
        Ok(Store {
            next_session,
            next_approval,
            db,
            sessions,
            requests,
            open,
            audit,
            approvals,
            audit_head: std::sync::Mutex::new(head),
            meta,
            flusher: std::sync::Mutex::new(Some(flusher)),
            flusher_thread: Some(flusher_thread),
            flush_timeout: FLUSH_TIMEOUT,
        })
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn next_approval_id(&self) -> u64 {
        self.next_approval
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn put(&self, s: &Session) -> Result<()> {
        let key = s.id.to_be_bytes();
        self.sessions.insert(key, serde_json::to_vec(s)?)?;
        if s.state == State::Open {
            self.open.insert(key, &[])?;
        } else {
            self.open.remove(key)?;
        }
        Ok(())
    }

    /// Appends to the hash-chained audit log (durable with the next flush).
    pub fn audit(&self, kind: &str, data: serde_json::Value) -> Result<u64> {
        let mut head = self.audit_head.lock().unwrap();
        let rec = crate::audit::AuditRecord::new(head.0 + 1, now_ms(), kind, data, head.1.clone());
        self.audit
            .insert(rec.seq.to_be_bytes(), serde_json::to_vec(&rec)?)?;
        self.meta
            .insert(AUDIT_HEAD, serde_json::to_vec(&(rec.seq, &rec.hash))?)?;
        *head = (rec.seq, rec.hash);
        Ok(head.0)
    }

    /// Audit records with seq > `after` and time >= `since_ms`, at most `limit`.
    pub fn audit_records(
        &self,
        after: u64,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>> {
        let mut out = Vec::new();
        for kv in self.audit.range((after + 1).to_be_bytes()..) {
            let r: crate::audit::AuditRecord = serde_json::from_slice(&kv?.1)?;
            if r.ts_ms >= since_ms {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn audit_verify(&self) -> Result<crate::audit::Verification> {
        let mut bad = Vec::new();
        let records = self.audit.iter().filter_map(|kv| {
            match kv.map_err(anyhow::Error::from).and_then(|(k, v)| {
                serde_json::from_slice::<crate::audit::AuditRecord>(&v)
                    .map_err(|e| anyhow::anyhow!("record key {k:?}: {e}"))
            }) {
                Ok(r) => Some(r),
                Err(e) => {
                    bad.push(format!("unreadable record: {e}"));
                    None
                }
            }
        });
        let head = self
            .meta
            .get(AUDIT_HEAD)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?;
        let in_use = !self.sessions.is_empty();
        let mut v = crate::audit::verify(records, head, in_use);
        v.problems.splice(0..0, bad);
        Ok(v)
    }

    pub fn put_approval(&self, a: &crate::approval::Approval) -> Result<()> {
        self.approvals
            .insert(a.id.to_be_bytes(), serde_json::to_vec(a)?)?;
        Ok(())
    }

    pub fn approval(&self, id: u64) -> Result<Option<crate::approval::Approval>> {
        Ok(self
            .approvals
            .get(id.to_be_bytes())?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?)
    }

    /// The newest `limit` approvals, oldest first.
    pub fn approvals(&self, limit: usize) -> Result<Vec<crate::approval::Approval>> {
        let mut v: Vec<crate::approval::Approval> = self
            .approvals
            .iter()
            .rev()
            .take(limit)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect::<Result<_>>()?;
        v.reverse();
        Ok(v)
    }

    /// Every pending approval, however many decided ones came after it.
    pub fn pending_approvals(&self) -> Result<Vec<crate::approval::Approval>> {
        let mut v = Vec::new();
        for kv in self.approvals.iter() {
            let a: crate::approval::Approval = serde_json::from_slice(&kv?.1)?;
            if a.state == crate::approval::State::Pending {
                v.push(a);
            }
        }
        Ok(v)
    }

    /// Retention: removes closed sessions (with their requests) that started
    /// before `cutoff_ms`, and decided approvals created before it. The
    /// audit log is kept whole (cutting it would break the chain): export it.
    pub fn prune_before(&self, cutoff_ms: u64) -> Result<usize> {
        let mut n = 0;
        for kv in self.sessions.iter() {
            let (key, v) = kv?;
            let s: Session = serde_json::from_slice(&v)?;
            // Ids grow with time: the first young session ends the scan.
            if s.started_ms >= cutoff_ms {
                break;
            }
            if s.state == State::Open {
                continue;
            }
            for r in self.requests.scan_prefix(&key).keys() {
                self.requests.remove(r?)?;
            }
            self.sessions.remove(&key)?;
            n += 1;
        }
        for kv in self.approvals.iter() {
            let (key, v) = kv?;
            let a: crate::approval::Approval = serde_json::from_slice(&v)?;
            if a.created_ms >= cutoff_ms {
                break;
            }
            if a.state != crate::approval::State::Pending {
                self.approvals.remove(&key)?;
            }
        }
        Ok(n)
    }

    /// Retention by size: when the store is over `max_bytes`, removes the
    /// oldest tenth of the sessions (sled reclaims space lazily, so one pass
    /// never removes everything at once).
    pub fn prune_to_size(&self, max_bytes: u64) -> Result<usize> {
        if self.db.size_on_disk()? <= max_bytes {
            return Ok(0);
        }
        let count = self.sessions.len();
        let Some(kv) = self.sessions.iter().nth(count / 10) else {
            return Ok(0);
        };
        let s: Session = serde_json::from_slice(&kv?.1)?;
        self.prune_before(s.started_ms)
    }

    /// Pending approvals of a previous run: their clients are gone.
    pub fn interrupt_pending_approvals(&self) -> Result<usize> {
        let mut n = 0;
        for mut a in self.approvals(usize::MAX)? {
            if a.state == crate::approval::State::Pending {
                a.state = crate::approval::State::Interrupted;
                a.reason = Some("the daemon stopped while the request was held".into());
                self.put_approval(&a)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn put_request(&self, r: &RequestRecord) -> Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&r.session.to_be_bytes());
        key[8..].copy_from_slice(&r.seq.to_be_bytes());
        self.requests.insert(key, serde_json::to_vec(r)?)?;
        Ok(())
    }

    /// The requests of one session, in order.
    pub fn requests_of(&self, session: u64) -> Result<Vec<RequestRecord>> {
        self.requests
            .scan_prefix(session.to_be_bytes())
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// A session and its requests, as one JSON document.
    pub fn session_with_requests(&self, id: u64) -> Result<Option<SessionDetail>> {
        let Some(v) = self.sessions.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        Ok(Some(SessionDetail {
            session: serde_json::from_slice(&v)?,
            requests: self.requests_of(id)?,
        }))
    }

    /// Marks the sessions a previous daemon left open as interrupted.
    /// Returns how many there were.
    pub fn close_interrupted(&self) -> Result<usize> {
        let mut n = 0;
        for kv in self.open.iter() {
            let (key, _) = kv?;
            if let Some(v) = self.sessions.get(&key)? {
                let mut s: Session = serde_json::from_slice(&v)?;
                s.state = State::Interrupted;
                s.error.get_or_insert_with(|| {
                    "the daemon stopped while the connection was open".into()
                });
                self.put(&s)?;
            } else {
                self.open.remove(&key)?;
            }
            n += 1;
        }
        self.db.flush()?;
        Ok(n)
    }

    /// The newest `limit` sessions, oldest first.
    /// The newest `limit` sessions matching `f`, oldest first.
    pub fn find(&self, f: &SessionFilter, limit: usize) -> Result<Vec<Session>> {
        let mut out = Vec::new();
        for kv in self.sessions.iter().rev() {
            let s: Session = serde_json::from_slice(&kv?.1)?;
            if f.until_ms.is_some_and(|u| s.started_ms > u) {
                continue;
            }
            // Ids grow with time: older than `since` ends the scan.
            if f.since_ms.is_some_and(|t| s.started_ms < t) {
                break;
            }
            if f.matches(&s)
                && self.has_decision(&s, f.decision)?
                && (f.user.is_none() || self.has_user(s.id, f.user.as_deref().unwrap())?)
            {
                out.push(s);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// A session was denied if it was refused as a connection, or any of
    /// its requests was (a 403 inside an allowed TLS session).
    fn has_decision(&self, s: &Session, d: Option<crate::policy::Action>) -> Result<bool> {
        use crate::policy::Action;
        Ok(match d {
            None => true,
            Some(d) if d == s.decision => true,
            Some(Action::Deny) => self
                .requests_of(s.id)?
                .iter()
                .any(|r| r.decision == Action::Deny),
            Some(_) => false,
        })
    }

    fn has_user(&self, session: u64, user: &str) -> Result<bool> {
        Ok(self
            .requests_of(session)?
            .iter()
            .any(|r| r.user.as_deref() == Some(user)))
    }

    /// Durable on disk when it returns. Concurrent callers share one flush
    /// (group commit). sled's own `flush_async` waits for its background
    /// flusher and is far slower under load, hence this.
    ///
    /// A flush that does not finish within FLUSH_TIMEOUT (a stalled disk, a
    /// stuck storage engine) is an error: callers refuse what needed the
    /// record to be durable, and say so, instead of hanging with it.
    pub async fn flush_async(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|f| f.send(tx).ok())
            .ok_or_else(|| anyhow::anyhow!("the store flusher thread is gone"))?;
        match tokio::time::timeout(self.flush_timeout, rx).await {
            Err(_) => anyhow::bail!(
                "the session store did not finish a flush in {:?} (disk stalled?)",
                self.flush_timeout
            ),
            Ok(r) => r
                .map_err(|_| anyhow::anyhow!("the store flusher thread is gone"))?
                .map_err(|e| anyhow::anyhow!("flushing the session store: {e}")),
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flush that never finishes (a stuck disk or storage engine) is an
    /// error after the timeout, not a wait forever: the proxy then refuses
    /// what needed the record, and says why.
    #[test]
    fn a_flush_that_never_finishes_is_an_error() {
        let dir = std::env::temp_dir().join(format!("icpt-stuck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir).unwrap();
        store.flush_timeout = std::time::Duration::from_millis(100);
        // A flusher that takes requests and never answers them.
        let (tx, stuck) = std::sync::mpsc::channel::<FlushWaiter>();
        let real = store.flusher.lock().unwrap().replace(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let err = rt.block_on(store.flush_async()).unwrap_err();
        assert!(err.to_string().contains("did not finish a flush"), "{err}");
        // With the real flusher back, flushes work again.
        *store.flusher.lock().unwrap() = real;
        rt.block_on(store.flush_async()).unwrap();
        drop(stuck);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_pending_approval_is_listed_behind_a_thousand_decided_ones() {
        use crate::approval::{Approval, State};
        let dir = std::env::temp_dir().join(format!("icpt-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let mk = |id: u64, state: State| Approval {
            id,
            created_ms: id,
            state,
            rule: "r".into(),
            workload: "w".into(),
            pid: 1,
            uid: 1,
            user: None,
            method: "POST".into(),
            host: "h".into(),
            path: format!("/{id}"),
            destination: String::new(),
            tls: false,
            session: 1,
            expires_ms: 0,
            decided_ms: None,
            approver: None,
            reason: None,
            window_until_ms: None,
            window_s: None,
            window_scope: Default::default(),
        };
        store.put_approval(&mk(1, State::Pending)).unwrap();
        for id in 2..1_102 {
            store.put_approval(&mk(id, State::Expired)).unwrap();
        }
        assert!(store.approvals(1000).unwrap().iter().all(|a| a.id != 1));
        let pending = store.pending_approvals().unwrap();
        assert_eq!(pending.iter().map(|a| a.id).collect::<Vec<_>>(), [1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_audit_chain_survives_reopening_and_detects_tampering() {
        let dir = std::env::temp_dir().join(format!("icpt-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            for i in 0..3 {
                store.audit("request", serde_json::json!({"n": i})).unwrap();
            }
            store.flush().unwrap();
        }
        // sled's background flusher may hold the lock a moment after drop.
        let mut tries = 0;
        let store = loop {
            match Store::open(&dir) {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e:#}"),
            }
        };
        assert_eq!(
            store.audit("request", serde_json::json!({"n": 3})).unwrap(),
            4
        );
        let v = store.audit_verify().unwrap();
        assert_eq!((v.records, v.problems.len()), (4, 0), "{v:?}");
        // Tamper with record 2 in the store itself.
        let mut r: crate::audit::AuditRecord =
            serde_json::from_slice(&store.audit.get(2u64.to_be_bytes()).unwrap().unwrap()).unwrap();
        r.data = serde_json::json!({"n": 99});
        store
            .audit
            .insert(2u64.to_be_bytes(), serde_json::to_vec(&r).unwrap())
            .unwrap();
        let v = store.audit_verify().unwrap();
        assert_eq!(
            v.problems,
            vec!["record 2: content does not match its hash (changed)"]
        );
        // Remove record 3.
        store.audit.remove(3u64.to_be_bytes()).unwrap();
        let v = store.audit_verify().unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("record 4: records 3..3 are missing")),
            "{v:?}"
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sessions_round_trip_in_order() {
        let dir = std::env::temp_dir().join(format!("icpt-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        for i in 0..5 {
            let s = Session {
                id: store.next_session_id(),
                started_ms: i,
                ended_ms: None,
                state: State::Open,
                workload: Workload::default(),
                destination: format!("127.0.0.1:{i}"),
                client: String::new(),
                protocol: "tcp".into(),
                sni: None,
                requests: 0,
                decision: crate::policy::Action::Allow,
                rule: None,
                reason: String::new(),
                bytes_up: 0,
                bytes_down: 0,
                error: None,
            };
            store.put(&s).unwrap();
        }
        let r = store.find(&SessionFilter::default(), 3).unwrap();
        assert_eq!(
            r.iter().map(|s| s.started_ms).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(r.windows(2).all(|w| w[0].id < w[1].id));
        // Ids are dense, a counter per kind, and go on after a restart
        // (issue 14).
        assert_eq!(r.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(store.next_approval_id(), 1);
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.next_session_id(), 6);
        assert_eq!(store.next_approval_id(), 1);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
