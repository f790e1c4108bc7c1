//! The session index: sessions and requests written to sled in batches by
//! one thread, off the request path. The audit log is what must survive a
//! crash (a record is in the kernel before its effect); the index is for
//! queries, and is rebuilt from the log after a crash (`replay`).
//!
//! Which records the index has taken in is one number in sled, the
//! watermark: every session or request record of the log up to it is in
//! the index. A record's op carries a `Ticket`, registered when the record
//! was appended and dropped once its op is in sled (or never will be); the
//! watermark stays below the oldest ticket still out.
use super::{RequestRecord, Session, State};
use anyhow::Result;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

pub const WATERMARK: &[u8] = b"audit_indexed";

/// An audit record whose index op is still to be written.
#[derive(Debug)]
pub struct Ticket {
    pub seq: u64,
    out: Arc<Mutex<BTreeSet<u64>>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.out.lock().unwrap().remove(&self.seq);
    }
}

/// Tickets still out.
#[derive(Clone, Default)]
pub struct Tickets(Arc<Mutex<BTreeSet<u64>>>);

impl Tickets {
    /// Called under the audit writer's lock, so a ticket is out before any
    /// later record exists.
    pub fn issue(&self, seq: u64) -> Ticket {
        self.0.lock().unwrap().insert(seq);
        Ticket {
            seq,
            out: self.0.clone(),
        }
    }

    /// The highest record up to which every ticket is in: `head` (read
    /// before this) unless one is still out.
    fn watermark(&self, head: u64) -> u64 {
        match self.0.lock().unwrap().first() {
            Some(oldest) => (oldest - 1).min(head),
            None => head,
        }
    }
}

pub enum Op {
    Session(Session, Option<Ticket>),
    Request(RequestRecord, Option<Ticket>),
    /// Answered once everything sent before it is in sled.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

pub struct Trees {
    pub sessions: sled::Tree,
    pub open: sled::Tree,
    pub requests: sled::Tree,
    pub meta: sled::Tree,
}

pub fn request_key(session: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&session.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Ops taken per batch at most (a batch is one sled write per tree).
const BATCH: usize = 1024;

/// How long a batch gathers after its first op. Under load this turns a
/// wake-up and a sled write per request (and sled's I/O threads woken for
/// each) into one per interval: the profile showed the index costing as
/// much CPU as the proxy itself. The index may lag the audit log by this
/// much, which a crash does not lose (the next start rebuilds from the
/// log), and a read waits for it (`settle` asks for a barrier, served at
/// once).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// The index thread: takes ops until every sender is gone. `head` is the
/// audit log's last record.
pub fn run(
    rx: std::sync::mpsc::Receiver<Op>,
    trees: Trees,
    tickets: Tickets,
    head: impl Fn() -> u64,
) {
    while let Ok(first) = rx.recv() {
        // Sleeping, not blocked on the channel: senders wake nobody.
        if !matches!(first, Op::Barrier(_)) {
            std::thread::sleep(LINGER);
        }
        let head = head();
        let mut sessions = sled::Batch::default();
        // An open session's key goes into `open` before the session is
        // written and leaves it after: sled keeps a prefix of its writes
        // through a crash, and a session left open must be found there.
        let mut opened = sled::Batch::default();
        let mut closed = sled::Batch::default();
        let mut requests = sled::Batch::default();
        let mut done = Vec::new();
        let mut barriers = Vec::new();
        for op in std::iter::once(first).chain(rx.try_iter().take(BATCH)) {
            match op {
                Op::Session(s, t) => {
                    let key = s.id.to_be_bytes();
                    match serde_json::to_vec(&s) {
                        Ok(v) => sessions.insert(&key, v),
                        Err(e) => {
                            tracing::error!(session = s.id, error = %e, "could not encode the session")
                        }
                    }
                    if s.state == State::Open {
                        opened.insert(&key, &[]);
                    } else {
                        closed.remove(&key);
                    }
                    done.extend(t);
                }
                Op::Request(r, t) => {
                    match serde_json::to_vec(&r) {
                        Ok(v) => requests.insert(&request_key(r.session, r.seq), v),
                        Err(e) => {
                            tracing::error!(session = r.session, error = %e, "could not encode the request")
                        }
                    }
                    done.extend(t);
                }
                Op::Barrier(b) => barriers.push(b),
            }
        }
        let applied = trees
            .open
            .apply_batch(opened)
            .and_then(|_| trees.sessions.apply_batch(sessions))
            .and_then(|_| trees.open.apply_batch(closed))
            .and_then(|_| trees.requests.apply_batch(requests));
        match applied {
            Ok(()) => {
                drop(done);
                let w = tickets.watermark(head);
                if let Err(e) = trees.meta.insert(WATERMARK, &w.to_be_bytes()) {
                    tracing::error!(error = %e, "could not note the index watermark");
                }
            }
            // The records stay in the audit log; the next start rebuilds
            // what is missing (the tickets are kept out of the watermark).
            Err(e) => {
                tracing::error!(error = %e, "could not write to the session index");
                std::mem::forget(done);
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

pub fn watermark(meta: &sled::Tree) -> Result<u64> {
    Ok(match meta.get(WATERMARK)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into()?),
        None => 0,
    })
}

/// What a crash kept out of the index, rebuilt from the audit log: each
/// session and request record after the watermark that the index lacks.
/// A session comes back interrupted; a request with its decision and no
/// outcome. Returns how many were rebuilt and the highest session id seen.
pub fn replay(
    trees: &Trees,
    records: impl Iterator<Item = Result<crate::audit::AuditRecord>>,
) -> Result<(usize, u64)> {
    let mut rebuilt = 0;
    let mut max_session = 0;
    let mut last = None;
    for r in records {
        let r = r?;
        last = Some(r.seq);
        let d = &r.data;
        let str_of = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let opt_str = |k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let num = |k: &str| d.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let decision =
            || serde_json::from_value(d["decision"].clone()).unwrap_or(crate::policy::Action::Deny);
        match r.kind.as_str() {
            "connection" | "inbound" => {
                let id = num("session");
                max_session = max_session.max(id);
                if id == 0 || trees.sessions.contains_key(id.to_be_bytes())? {
                    continue;
                }
                let inbound = r.kind == "inbound";
                let s = Session {
                    id,
                    started_ms: r.ts_ms,
                    ended_ms: None,
                    state: State::Interrupted,
                    workload: super::Workload {
                        cgroup: str_of("workload"),
                        cgroup_id: num("cgroup_id"),
                        pid: num("pid") as u32,
                        uid: num("uid") as u32,
                        exe: str_of("exe"),
                        ..Default::default()
                    },
                    destination: str_of(if inbound { "local" } else { "destination" }),
                    client: str_of("peer"),
                    protocol: if inbound { "inbound".into() } else { str_of("protocol") },
                    sni: opt_str("sni"),
                    requests: 0,
                    decision: decision(),
                    rule: opt_str("rule"),
                    reason: str_of("reason"),
                    bytes_up: 0,
                    bytes_down: 0,
                    error: Some(
                        "the daemon stopped while the connection was open (rebuilt from the audit log)"
                            .into(),
                    ),
                };
                trees
                    .sessions
                    .insert(id.to_be_bytes(), serde_json::to_vec(&s)?)?;
                rebuilt += 1;
            }
            "request" => {
                let (session, seq) = (num("session"), num("seq"));
                let key = request_key(session, seq);
                if session == 0 || trees.requests.contains_key(key)? {
                    continue;
                }
                let rec = RequestRecord {
                    session,
                    seq,
                    started_ms: r.ts_ms,
                    method: str_of("method"),
                    host: str_of("host"),
                    path: str_of("path"),
                    user: opt_str("user"),
                    decision: decision(),
                    rule: opt_str("rule"),
                    reason: str_of("reason"),
                    injected: opt_str("injected"),
                    error: Some(
                        "the daemon stopped before the request's outcome was recorded (rebuilt from the audit log)"
                            .into(),
                    ),
                    ..Default::default()
                };
                trees.requests.insert(key, serde_json::to_vec(&rec)?)?;
                rebuilt += 1;
            }
            _ => {}
        }
    }
    if let Some(seq) = last {
        trees.meta.insert(WATERMARK, &seq.to_be_bytes())?;
    }
    Ok((rebuilt, max_session))
}
