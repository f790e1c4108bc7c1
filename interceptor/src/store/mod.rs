//! Session store: one sled record per connection, keyed by a monotonically
//! increasing id (big-endian, so iteration is chronological).
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

mod index;
pub use index::Ticket;

pub use crate::identity::Workload;

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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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

/// How the store is opened: the daemon writes (the audit log's writer,
/// the index thread), the commands that read a stopped daemon's store only
/// read.
#[derive(Clone, Debug)]
pub struct Options {
    pub audit_sync: crate::audit::SyncMode,
    pub audit_segment_bytes: u64,
    /// sled's page cache (its default, 1 GiB, grew the daemon's RSS with
    /// every session read or written).
    pub cache_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            audit_sync: crate::audit::SyncMode::Interval(crate::audit::log::DEFAULT_SYNC_INTERVAL),
            audit_segment_bytes: crate::audit::log::DEFAULT_SEGMENT_BYTES,
            cache_bytes: 8 << 20,
        }
    }
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
    approvals: sled::Tree,
    meta: sled::Tree,
    /// `<state dir>/audit`: the segment files.
    audit_dir: std::path::PathBuf,
    /// The writer, when the daemon opened the store.
    log: Option<crate::audit::AuditLog>,
    /// What opening the log cut off its end (a power cut mid-write).
    repair: Option<crate::audit::Repair>,
    /// Index ops to the index thread (sessions, requests).
    index: std::sync::Mutex<Option<std::sync::mpsc::Sender<index::Op>>>,
    index_thread: Option<std::thread::JoinHandle<()>>,
    tickets: index::Tickets,
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
    /// Stops the index thread (after it wrote what it was sent) and the
    /// flusher (its `Db` handle holds the store's file lock), so the store
    /// can be opened again as soon as this one is gone.
    fn drop(&mut self) {
        self.index.lock().unwrap().take();
        if let Some(t) = self.index_thread.take() {
            let _ = t.join();
        }
        self.flusher.lock().unwrap().take();
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
    }
}

/// The head of the log kept in sled before segment files.
const LEGACY_AUDIT_HEAD: &[u8] = b"audit_head";

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
    /// is not there is an error naming the path, never created empty. The
    /// audit log is only read.
    pub fn open_existing(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("store");
        if !path.is_dir() {
            anyhow::bail!(
                "no session store at {} (and no daemon answered on the admin socket):                  give the daemon's --state-dir or --admin-socket",
                path.display()
            );
        }
        Store::open_as(state_dir, &Options::default(), false)
    }

    /// The daemon's store, with default options.
    #[cfg(test)]
    pub fn open(state_dir: &Path) -> Result<Store> {
        Store::open_with(state_dir, &Options::default())
    }

    /// The daemon's store: the audit log opened for appending (an
    /// unfinished last record cut off), the index rebuilt from the log
    /// where a crash kept records out of it.
    pub fn open_with(state_dir: &Path, opts: &Options) -> Result<Store> {
        Store::open_as(state_dir, opts, true)
    }

    fn open_as(state_dir: &Path, opts: &Options, write: bool) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(opts.cache_bytes)
            .open()
            .map_err(|e| {
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
        let approvals = db.open_tree("approvals")?;
        let meta = db.open_tree("meta")?;
        let audit_dir = state_dir.join("audit");
        import_legacy_audit(&db, &meta, &audit_dir)?;
        let (log, repair) = if write {
            let (log, repair) = crate::audit::AuditLog::open(
                &audit_dir,
                opts.audit_sync,
                opts.audit_segment_bytes,
            )?;
            (Some(log), repair)
        } else {
            (None, None)
        };
        let trees = index::Trees {
            sessions: sessions.clone(),
            open: open.clone(),
            requests: requests.clone(),
            meta: meta.clone(),
        };
        // What a crash kept out of the index comes back from the log (read
        // only up to the writer's head: nothing is being written yet).
        let from = index::watermark(&meta)? + 1;
        let upto = log.as_ref().map(|l| l.head().0);
        let records = crate::audit::log::records_from(&audit_dir, from, upto)?;
        let (rebuilt, max_replayed) = index::replay(&trees, records)?;
        if rebuilt > 0 {
            tracing::warn!(
                records = rebuilt,
                "rebuilt sessions and requests the index lacked from the audit log"
            );
        }
        let (flusher, flusher_thread) = spawn_flusher(db.clone());
        let after_last = |t: &sled::Tree| -> Result<u64> {
            Ok(match t.last()? {
                Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into()?) + 1,
                None => 1,
            })
        };
        let next_session =
            std::sync::atomic::AtomicU64::new(after_last(&sessions)?.max(max_replayed + 1));
        let next_approval = std::sync::atomic::AtomicU64::new(after_last(&approvals)?);
        let tickets = index::Tickets::default();
        let (index_tx, index_thread) = if write {
            let (tx, rx) = std::sync::mpsc::channel();
            let head = log.as_ref().map(|l| l.head_fn()).expect("a writer");
            let t = tickets.clone();
            let thread = std::thread::Builder::new()
                .name("store-index".into())
                .spawn(move || index::run(rx, trees, t, head))
                .context("spawning the index thread")?;
            (Some(tx), Some(thread))
        } else {
            (None, None)
        };
        Ok(Store {
            next_session,
            next_approval,
            db,
            sessions,
            requests,
            open,
            approvals,
            meta,
            audit_dir,
            log,
            repair,
            index: std::sync::Mutex::new(index_tx),
            index_thread,
            tickets,
            flusher: std::sync::Mutex::new(Some(flusher)),
            flusher_thread: Some(flusher_thread),
            flush_timeout: FLUSH_TIMEOUT,
        })
    }

    /// What opening the audit log mended, once (the daemon audits it).
    pub fn take_repair(&mut self) -> Option<crate::audit::Repair> {
        self.repair.take()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn next_approval_id(&self) -> u64 {
        self.next_approval
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, op: index::Op) -> Result<()> {
        self.index
            .lock()
            .unwrap()
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the store is open read-only"))?
            .send(op)
            .map_err(|_| anyhow::anyhow!("the index thread is gone"))
    }

    /// Records the session in the index (written off the caller's path).
    pub fn put(&self, s: &Session) -> Result<()> {
        self.send(index::Op::Session(s.clone(), None))
    }

    /// Records the session whose audit record `ticket` is.
    pub fn put_audited(&self, s: &Session, ticket: Ticket) -> Result<()> {
        self.send(index::Op::Session(s.clone(), Some(ticket)))
    }

    fn writer(&self) -> Result<&crate::audit::AuditLog> {
        self.log
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the audit log is open read-only"))
    }

    /// Appends to the hash-chained audit log: in the kernel when this
    /// returns; `durable` for what `audit_sync` promises beyond.
    pub fn audit<D: serde::Serialize + ?Sized>(&self, kind: &str, data: &D) -> Result<u64> {
        self.writer()?.append(kind, data)
    }

    /// Appends a session or request record: its ticket is out until its
    /// index record is written (`put_audited`, `put_request`), and a
    /// crash before that rebuilds it from the log.
    pub fn audit_indexed<D: serde::Serialize + ?Sized>(
        &self,
        kind: &str,
        data: &D,
    ) -> Result<Ticket> {
        let (_, t) = self
            .writer()?
            .append_then(kind, data, |seq| self.tickets.issue(seq))?;
        Ok(t)
    }

    /// Notes that the audit log's records up to `seq` were exported, so
    /// `audit_retention_days` may remove them; returns the mark now.
    pub fn mark_audit_exported(&self, seq: u64) -> Result<u64> {
        self.writer()?.mark_exported(seq)
    }

    /// Removes exported audit segments written before `before_ms`.
    pub fn prune_audit(&self, before_ms: u64) -> Result<crate::audit::log::Pruned> {
        self.writer()?.prune(before_ms)
    }

    /// Returns once record `seq` is as durable as `audit_sync` promises.
    pub fn durable(&self, seq: u64) -> impl Future<Output = Result<()>> + Send + 'static {
        let wait = self.writer().map(|w| w.durable(seq));
        async move { wait?.await }
    }

    /// Waits until the index thread has written what was sent before.
    fn settle(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.send(index::Op::Barrier(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }

    /// Audit records with seq > `after` and time >= `since_ms`, at most `limit`.
    pub fn audit_records(
        &self,
        after: u64,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>> {
        match &self.log {
            Some(log) => log.records(after, since_ms, limit),
            None => crate::audit::log::read_records(&self.audit_dir, after, since_ms, limit, None),
        }
    }

    pub fn audit_verify(&self) -> Result<crate::audit::Verification> {
        self.settle();
        let indexed = index::watermark(&self.meta)?;
        let in_use = !self.sessions.is_empty();
        match &self.log {
            Some(log) => log.verify(indexed, in_use),
            None => crate::audit::log::verify_dir(&self.audit_dir, None, indexed, in_use),
        }
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

    /// Records the request in the index (written off the caller's path);
    /// `ticket`: its decision's audit record.
    pub fn put_request(&self, r: &RequestRecord, ticket: Option<Ticket>) -> Result<()> {
        self.send(index::Op::Request(r.clone(), ticket))
    }

    /// The requests of one session, in order.
    pub fn requests_of(&self, session: u64) -> Result<Vec<RequestRecord>> {
        self.settle();
        self.requests
            .scan_prefix(session.to_be_bytes())
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// A session and its requests, as one JSON document.
    pub fn session_with_requests(&self, id: u64) -> Result<Option<SessionDetail>> {
        self.settle();
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
                // Closed, but the crash came before its key left `open`.
                if s.state == State::Open {
                    s.state = State::Interrupted;
                    s.error.get_or_insert_with(|| {
                        "the daemon stopped while the connection was open".into()
                    });
                    self.sessions.insert(&key, serde_json::to_vec(&s)?)?;
                    n += 1;
                }
            }
            self.open.remove(&key)?;
        }
        self.db.flush()?;
        Ok(n)
    }

    /// The newest `limit` sessions matching `f`, oldest first.
    pub fn find(&self, f: &SessionFilter, limit: usize) -> Result<Vec<Session>> {
        self.settle();
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

    /// Everything sent is in the index, the audit log synced, sled
    /// flushed: at shutdown, and after an approval is decided.
    pub fn flush(&self) -> Result<()> {
        self.settle();
        if let Some(log) = &self.log {
            log.sync()?;
        }
        self.db.flush()?;
        Ok(())
    }
}

/// A log kept in sled before segment files moves into the first segment,
/// with its hashes (anchors taken from it still hold), once.
fn import_legacy_audit(db: &sled::Db, meta: &sled::Tree, dir: &Path) -> Result<()> {
    let legacy = db.open_tree("audit")?;
    if legacy.is_empty() {
        return Ok(());
    }
    if !crate::audit::log::has_segments(dir)? {
        let mut frames = Vec::new();
        for kv in legacy.iter() {
            let r: crate::audit::AuditRecord = serde_json::from_slice(&kv?.1)?;
            frames.push(crate::audit::Frame::from_legacy(&r).with_context(|| {
                format!(
                    "audit record {} of the sled log has a malformed hash",
                    r.seq
                )
            })?);
        }
        let n = crate::audit::log::import(dir, frames.into_iter())?;
        tracing::info!(
            records = n,
            "moved the audit log from the session store into segment files"
        );
        if let Some((seq, _)) = legacy.last()? {
            let seq = u64::from_be_bytes(seq.as_ref().try_into()?);
            meta.insert(index::WATERMARK, &seq.to_be_bytes())?;
        }
    }
    db.drop_tree("audit")?;
    meta.remove(LEGACY_AUDIT_HEAD)?;
    db.flush()?;
    Ok(())
}

pub use crate::units::now_ms;

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

    fn session(id: u64, started_ms: u64) -> Session {
        Session {
            id,
            started_ms,
            ended_ms: None,
            state: State::Open,
            workload: Workload::default(),
            destination: format!("127.0.0.1:{started_ms}"),
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
        }
    }

    /// A crash after a record reached the audit log and before the index
    /// had it (a ticket never returned): the next open rebuilds the
    /// session (interrupted) and the request (its decision, no outcome)
    /// from the log, and ids go on after them. Records the index had are
    /// left as they are.
    #[test]
    fn what_a_crash_kept_out_of_the_index_comes_back_from_the_log() {
        let dir = std::env::temp_dir().join(format!("icpt-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            let kept = session(store.next_session_id(), 1);
            let t = store
                .audit_indexed("connection", &serde_json::json!({"session": kept.id, "destination": "10.0.0.1:1", "decision": "allow"}))
                .unwrap();
            store.put_audited(&kept, t).unwrap();
            let lost = store.next_session_id();
            let t1 = store
                .audit_indexed("connection", &serde_json::json!({"session": lost, "workload": "skills.slice/a", "destination": "10.0.0.2:443", "decision": "allow", "rule": "r"}))
                .unwrap();
            let t2 = store
                .audit_indexed("request", &serde_json::json!({"session": lost, "seq": 1, "method": "GET", "host": "h", "path": "/p", "decision": "deny", "rule": "r"}))
                .unwrap();
            // As if the daemon died before the index thread got to them.
            std::mem::forget((t1, t2));
            store.flush().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let all = store.find(&SessionFilter::default(), 10).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(
            all[0].destination, "127.0.0.1:1",
            "the indexed one as it was"
        );
        let s = &all[1];
        assert_eq!((s.id, s.state), (2, State::Interrupted));
        assert_eq!(
            (s.workload.cgroup.as_str(), s.rule.as_deref()),
            ("skills.slice/a", Some("r"))
        );
        let r = store.requests_of(2).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].path.as_str(), r[0].decision),
            ("/p", crate::policy::Action::Deny)
        );
        assert!(
            r[0].error
                .as_deref()
                .unwrap()
                .contains("rebuilt from the audit log")
        );
        assert_eq!(store.next_session_id(), 3);
        let v = store.audit_verify().unwrap();
        assert_eq!((v.records, v.problems.len()), (3, 0), "{v:?}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store written before segment files: its sled log moves into the
    /// first segment with its hashes, and the chain goes on from it.
    #[test]
    fn a_log_kept_in_sled_moves_into_segments_with_its_hashes() {
        let dir = std::env::temp_dir().join(format!("icpt-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut prev = crate::audit::GENESIS;
        let mut head = String::new();
        {
            let db = sled::open(dir.join("store")).unwrap();
            let tree = db.open_tree("audit").unwrap();
            for seq in 1..=3u64 {
                let data = serde_json::json!({"n": seq});
                let body =
                    serde_json::json!({"seq": seq, "ts_ms": 7, "kind": "request", "data": data})
                        .to_string();
                let hash = crate::audit::digest(&prev, body.as_bytes());
                let r = crate::audit::AuditRecord {
                    seq,
                    ts_ms: 7,
                    kind: "request".into(),
                    data,
                    prev_hash: crate::audit::hex(&prev),
                    hash: crate::audit::hex(&hash),
                };
                tree.insert(seq.to_be_bytes(), serde_json::to_vec(&r).unwrap())
                    .unwrap();
                prev = hash;
                head = r.hash;
            }
            db.flush().unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(
            store
                .audit("request", &serde_json::json!({"n": 4}))
                .unwrap(),
            4
        );
        let v = store.audit_verify().unwrap();
        assert_eq!((v.records, v.problems.len()), (4, 0), "{v:?}");
        let third = store.audit_records(2, 0, 1).unwrap();
        assert_eq!(third[0].hash, head, "the anchor of record 3 still holds");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sessions_round_trip_in_order() {
        let dir = std::env::temp_dir().join(format!("icpt-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        for i in 0..5 {
            let s = session(store.next_session_id(), i);
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
