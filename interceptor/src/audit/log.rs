//! The one writer of the audit log, and its group commit.
//!
//! An append encodes the record once, hashes those bytes and writes the
//! frame with one `write(2)` under the writer's lock: when `append`
//! returns, the record is in the kernel, and no crash of the daemon can
//! lose it. Appends come from the proxy's tasks; serialising them on a lock
//! (a few µs of `write(2)`) rather than handing each to a thread saves a
//! wake-up and a reply per record, and there is still one writer at a
//! time, so one order.
//!
//! What survives a kernel crash or a power loss is what `fdatasync` has
//! covered. A sync thread runs it as a group commit: `interval` syncs what
//! was written at most `audit_sync_interval` after it was written (the loss
//! window); `always` syncs as soon as anything is written, and
//! `durable(seq)` waits for a sync that covers `seq` (the proxy calls it
//! before a response goes out, after the upstream round trip it overlapped).
use super::segment::{self, Frames, Reader, Step, Tail};
use super::verify::{Expect, Verification};
use super::{AuditRecord, Body, Frame, GENESIS, digest};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a record may be only in the kernel with `audit_sync =
/// "interval"` (what a power cut can lose).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Every record is on disk (fdatasync) before its effect is answered.
    Always,
    /// Records are in the kernel at once and on disk within the interval.
    Interval(Duration),
}

/// What opening the log for writing found and mended: an unfinished record
/// at the end (a power cut during its write), cut off.
#[derive(Debug)]
pub struct Repair {
    pub tail: Tail,
}

/// How long `durable` waits for a sync before calling the disk failed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Segments are rotated past this size unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// A retention anchor: the last record of segments removed, `SEQ HASH`.
const ANCHOR: &str = "anchor";
/// The last record an operator's export confirmed it has (`audit export
/// --mark-exported`): retention removes nothing after it.
const EXPORTED: &str = "exported";

/// What a retention pass removed: whole segments, through record `through`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub segments: usize,
    pub through: u64,
}

pub struct AuditLog {
    shared: Arc<Shared>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    mode: SyncMode,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    /// The last record written (in the kernel).
    written: AtomicU64,
    /// The last record an fdatasync covered, and why syncing stopped.
    synced: tokio::sync::watch::Sender<Synced>,
    /// After a failed write or fdatasync the log takes no more records:
    /// once fdatasync failed, what the kernel still holds is unknown.
    failed: Mutex<Option<String>>,
    /// The sync thread waits on `wake` when `sleeping`.
    sleeping: AtomicBool,
    wake_lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

#[derive(Clone, Debug, Default)]
struct Synced {
    seq: u64,
    failed: bool,
}

struct Writer {
    file: Arc<File>,
    /// Bytes in the current segment.
    len: u64,
    seq: u64,
    hash: [u8; 32],
    buf: Vec<u8>,
}

impl AuditLog {
    /// Opens the log in `dir` for appending (the daemon), creating it, and
    /// cuts an unfinished record off the end (reported in `Repair`).
    pub fn open(
        dir: &Path,
        mode: SyncMode,
        segment_bytes: u64,
    ) -> Result<(AuditLog, Option<Repair>)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the audit log directory {}", dir.display()))?;
        let segs = segment::list(dir)?;
        let (first, anchor) = anchor(dir)?;
        let mut repair = None;
        let (path, seq, hash) = match segs.last() {
            None => {
                let path = dir.join(segment::name(first));
                create_segment(&path)?;
                (path, first - 1, anchor)
            }
            Some((seg_first, path)) => {
                let (last, tail) = last_frame(path)?;
                if let Some(t) = tail {
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.set_len(t.offset)?;
                    f.sync_all()?;
                    repair = Some(Repair { tail: t });
                }
                let (seq, hash) = match last {
                    Some((n, f)) => (seq_of(&f).unwrap_or(seg_first + n - 1), f.hash),
                    // An empty segment (made by a rotation): the chain
                    // goes on from the one before.
                    None => match segs.len().checked_sub(2).map(|i| &segs[i]) {
                        Some((prev_first, prev)) => match last_frame(prev)?.0 {
                            Some((n, f)) => (seq_of(&f).unwrap_or(prev_first + n - 1), f.hash),
                            None => (prev_first - 1, anchor),
                        },
                        None => (seg_first - 1, anchor),
                    },
                };
                (path.clone(), seq, hash)
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        let (synced, _) = tokio::sync::watch::channel(Synced { seq, failed: false });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            mode,
            segment_bytes: segment_bytes.max(segment::HEADER as u64 + 1),
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                len,
                seq,
                hash,
                buf: Vec::with_capacity(1024),
            }),
            written: AtomicU64::new(seq),
            synced,
            failed: Mutex::new(None),
            sleeping: AtomicBool::new(false),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let syncer = std::thread::Builder::new()
            .name("audit-sync".into())
            .spawn(move || s.run_syncer())
            .context("spawning the audit sync thread")?;
        Ok((
            AuditLog {
                shared,
                syncer: Some(syncer),
            },
            repair,
        ))
    }

    /// Appends a record; it is in the kernel when this returns.
    pub fn append<D: Serialize + ?Sized>(&self, kind: &str, data: &D) -> Result<u64> {
        self.append_then(kind, data, |_| ()).map(|(seq, ())| seq)
    }

    /// Appends a record and runs `then` with its number before the next
    /// record can be written: what `then` does happens in log order.
    pub fn append_then<D: Serialize + ?Sized, R>(
        &self,
        kind: &str,
        data: &D,
        then: impl FnOnce(u64) -> R,
    ) -> Result<(u64, R)> {
        let s = &*self.shared;
        if let Some(why) = s.failed.lock().unwrap().as_ref() {
            bail!("the audit log stopped taking records: {why}");
        }
        let mut guard = s.writer.lock().unwrap();
        let w = &mut *guard;
        let seq = w.seq + 1;
        // The frame is encoded in place: header room, body, then the
        // header filled in from the body's hash.
        w.buf.clear();
        w.buf.resize(segment::HEADER, 0);
        let body = Body {
            seq,
            ts_ms: crate::units::now_ms(),
            kind,
            data,
        };
        serde_json::to_writer(&mut w.buf, &body).context("encoding an audit record")?;
        let len = w.buf.len() - segment::HEADER;
        if len > segment::MAX_BODY {
            bail!("an audit record of {len} bytes is over the limit");
        }
        let hash = digest(&w.hash, &w.buf[segment::HEADER..]);
        w.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        w.buf[4..36].copy_from_slice(&w.hash);
        w.buf[36..68].copy_from_slice(&hash);
        if let Err(e) = (&*w.file).write_all(&w.buf) {
            // Cut what got in, so the segment ends on a whole frame; if
            // even that fails, nothing more may be appended after it.
            if let Err(e2) = w.file.set_len(w.len) {
                s.fail(format!(
                    "writing failed ({e}) and cutting the partial record failed ({e2})"
                ));
            }
            return Err(anyhow::anyhow!("writing the audit log: {e}"));
        }
        w.len += w.buf.len() as u64;
        w.seq = seq;
        w.hash = hash;
        // Before `written` moves: whoever reads `written` finds what
        // `then` did (the index's watermark relies on it).
        let r = then(seq);
        s.written.store(seq, Ordering::SeqCst);
        if w.len >= s.segment_bytes
            && let Err(e) = s.rotate(w)
        {
            s.fail(format!("rotating segments failed: {e:#}"));
        }
        drop(guard);
        if s.sleeping.swap(false, Ordering::SeqCst) {
            let _g = s.wake_lock.lock().unwrap();
            s.wake.notify_one();
        }
        Ok((seq, r))
    }

    /// Returns once record `seq` is as durable as `audit_sync` promises:
    /// at once for `interval`, after an fdatasync that covers it for
    /// `always`. An error means it cannot be promised: refuse its effect.
    ///
    /// The future owns what it waits on (it borrows nothing from the log),
    /// so request futures that hold it stay plainly `Send`.
    pub fn durable(&self, seq: u64) -> impl Future<Output = Result<()>> + Send + 'static {
        let s = self.shared.clone();
        async move {
            if let SyncMode::Interval(_) = s.mode {
                return s.check();
            }
            let mut rx = s.synced.subscribe();
            let waited =
                tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|v| v.seq >= seq || v.failed)).await;
            match waited {
                Err(_) => bail!(
                    "the audit log was not synced to disk within {SYNC_TIMEOUT:?} (disk stalled?)"
                ),
                Ok(Err(_)) => bail!("the audit sync thread is gone"),
                Ok(Ok(v)) if v.seq >= seq => Ok(()),
                Ok(Ok(_)) => s.check(),
            }
        }
    }

    /// Syncs everything written, now (at shutdown).
    pub fn sync(&self) -> Result<()> {
        self.shared.sync_once();
        self.shared.check()
    }

    /// Notes that records up to `seq` were exported (kept elsewhere), so
    /// retention may remove them. Never moves back, never past the head.
    pub fn mark_exported(&self, seq: u64) -> Result<u64> {
        let _w = self.shared.writer.lock().unwrap();
        let head = self.shared.written.load(Ordering::SeqCst);
        if seq > head {
            bail!("record {seq} is not written yet (the log's last record is {head})");
        }
        let dir = &self.shared.dir;
        let now = exported(dir)?.max(seq);
        write_atomically(dir, EXPORTED, &format!("{now}\n"))?;
        Ok(now)
    }

    /// Removes the oldest segments whose records were all exported and
    /// written before `before_ms` (unix ms), keeping a chain anchor.
    pub fn prune(&self, before_ms: u64) -> Result<Pruned> {
        self.shared.prune(before_ms)
    }

    /// The last record an export confirmed (0: none).
    pub fn exported(&self) -> Result<u64> {
        exported(&self.shared.dir)
    }

    /// The last record written: its number and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        let w = self.shared.writer.lock().unwrap();
        (w.seq, w.hash)
    }

    /// The last record written, for a thread that outlives a borrow.
    pub fn head_fn(&self) -> impl Fn() -> u64 + Send + 'static {
        let s = self.shared.clone();
        move || s.written.load(Ordering::SeqCst)
    }

    /// Records after `after`, from `since_ms` on, at most `limit`: only
    /// whole ones (the writer may be in the middle of the next).
    pub fn records(&self, after: u64, since_ms: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let upto = self.shared.written.load(Ordering::SeqCst);
        read_records(&self.shared.dir, after, since_ms, limit, Some(upto))
    }

    /// The chain up to the last record written.
    pub fn verify(&self, indexed: u64, in_use: bool) -> Result<Verification> {
        let upto = self.shared.written.load(Ordering::SeqCst);
        verify_dir(&self.shared.dir, Some(upto), indexed, in_use)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let s = &self.shared;
        s.stop.store(true, Ordering::SeqCst);
        {
            let _g = s.wake_lock.lock().unwrap();
            s.wake.notify_one();
        }
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn check(&self) -> Result<()> {
        match self.failed.lock().unwrap().as_ref() {
            Some(why) => bail!("the audit log stopped taking records: {why}"),
            None => Ok(()),
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "the audit log stopped taking records");
        self.failed.lock().unwrap().get_or_insert(why);
        self.synced.send_modify(|v| v.failed = true);
    }

    /// Removes what retention may: see [`prune_dir`]. Holds the writer so
    /// no rotation happens meanwhile.
    fn prune(&self, before_ms: u64) -> Result<Pruned> {
        let _w = self.writer.lock().unwrap();
        prune_dir(&self.dir, exported(&self.dir)?, before_ms)
    }

    /// Closes the full segment (synced first: the sync thread only ever
    /// syncs the current one) and starts the next.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        w.file.sync_data()?;
        let path = self.dir.join(segment::name(w.seq + 1));
        let file = create_segment(&path)?;
        w.file = Arc::new(file);
        w.len = 0;
        Ok(())
    }

    fn run_syncer(&self) {
        loop {
            {
                let mut g = self.wake_lock.lock().unwrap();
                loop {
                    if self.stop.load(Ordering::SeqCst) {
                        drop(g);
                        self.sync_once();
                        return;
                    }
                    self.sleeping.store(true, Ordering::SeqCst);
                    if self.written.load(Ordering::SeqCst) > self.synced.borrow().seq {
                        self.sleeping.store(false, Ordering::SeqCst);
                        break;
                    }
                    g = self.wake.wait(g).unwrap();
                }
            }
            if let SyncMode::Interval(d) = self.mode {
                // Gather what comes within the interval into one sync.
                let g = self.wake_lock.lock().unwrap();
                let _ = self
                    .wake
                    .wait_timeout_while(g, d, |_| !self.stop.load(Ordering::SeqCst));
            }
            self.sync_once();
        }
    }

    fn sync_once(&self) {
        if self.failed.lock().unwrap().is_some() {
            return;
        }
        // The target before the file: records up to it are in this file
        // or in earlier segments, which rotation synced.
        let target = self.written.load(Ordering::SeqCst);
        if target <= self.synced.borrow().seq {
            return;
        }
        let file = self.writer.lock().unwrap().file.clone();
        match file.sync_data() {
            Ok(()) => {
                self.synced.send_modify(|v| v.seq = v.seq.max(target));
            }
            Err(e) => self.fail(format!("fdatasync failed: {e}")),
        }
    }
}

/// `name` in `dir` replaced by `text` as one step: written beside it,
/// synced, renamed over it, the directory synced.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The last record an export confirmed (0: none).
fn exported(dir: &Path) -> Result<u64> {
    let path = dir.join(EXPORTED);
    match std::fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse()
            .with_context(|| format!("{}: not a record number", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Retention: removes the oldest segments, never the one being written,
/// while every record of each was exported (seq ≤ `exported`) and written
/// before `before_ms`. First the anchor names the last record removed and
/// its hash, so the chain verifies from there on and an anchor kept before
/// still checks against the export that has its record; a crash between
/// the anchor and the removals leaves segments before the anchor, which
/// readers skip and the next pass removes.
pub fn prune_dir(dir: &Path, exported: u64, before_ms: u64) -> Result<Pruned> {
    let segs = segment::list(dir)?;
    let (first, _) = anchor(dir)?;
    let mut cut = None;
    let mut remove = Vec::new();
    for pair in segs.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        let last_seq = next_first - 1;
        if last_seq < first {
            remove.push(path.clone());
            continue;
        }
        if last_seq > exported {
            break;
        }
        let Some((_, frame)) = last_frame(path)?.0 else {
            break;
        };
        let rec = frame.record()?;
        if rec.seq != last_seq {
            bail!(
                "{}: ends at record {} but the next segment starts at {next_first}",
                path.display(),
                rec.seq
            );
        }
        if rec.ts_ms >= before_ms {
            break;
        }
        cut = Some((last_seq, frame.hash));
        remove.push(path.clone());
    }
    if let Some((seq, hash)) = cut {
        write_atomically(dir, ANCHOR, &format!("{seq} {}\n", super::hex(&hash)))?;
    }
    for p in &remove {
        std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
    }
    if !remove.is_empty() {
        File::open(dir)?.sync_all()?;
    }
    Ok(Pruned {
        segments: remove.len(),
        through: cut.map_or(first - 1, |c| c.0),
    })
}

/// A new, empty segment, its directory entry on disk.
fn create_segment(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

/// The first record's number and the hash before it: 1 and GENESIS, or
/// what retention left in `anchor` when it removed segments.
fn anchor(dir: &Path) -> Result<(u64, [u8; 32])> {
    let path = dir.join(ANCHOR);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((1, GENESIS)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let parsed = text
        .trim()
        .split_once(' ')
        .and_then(|(seq, hash)| Some((seq.parse::<u64>().ok()?, super::parse_hex(hash)?)));
    match parsed {
        Some((seq, hash)) => Ok((seq + 1, hash)),
        None => bail!("{}: not `SEQ HASH`", path.display()),
    }
}

/// A segment's last whole frame, with how many it holds.
type Last = Option<(u64, Frame)>;

/// A segment's last whole frame and an unfinished one after it.
fn last_frame(path: &Path) -> Result<(Last, Option<Tail>)> {
    let mut r = Reader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut last = None;
    let mut n = 0;
    loop {
        match r.next()? {
            Step::Frame(f) => {
                n += 1;
                last = Some((n, f));
            }
            Step::End => return Ok((last, None)),
            Step::Torn(t) => return Ok((last, Some(t))),
        }
    }
}

fn seq_of(f: &Frame) -> Option<u64> {
    f.record().ok().map(|r| r.seq)
}

/// Records of the log in `dir` (see `AuditLog::records`); `upto` None reads
/// to the end (no daemon writes).
pub fn read_records(
    dir: &Path,
    after: u64,
    since_ms: u64,
    limit: usize,
    upto: Option<u64>,
) -> Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    for f in Frames::open(dir, after + 1, upto)? {
        let r = f?.record()?;
        if r.seq > after && r.ts_ms >= since_ms {
            out.push(r);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Every record from `from` on (up to `upto`), read as they come.
pub fn records_from(
    dir: &Path,
    from: u64,
    upto: Option<u64>,
) -> Result<impl Iterator<Item = Result<AuditRecord>>> {
    Ok(Frames::open(dir, from, upto)?.map(|f| Ok(f?.record()?)))
}

/// Checks the chain in `dir`; `indexed` and `in_use` as in `Expect`.
pub fn verify_dir(
    dir: &Path,
    upto: Option<u64>,
    indexed: u64,
    in_use: bool,
) -> Result<Verification> {
    let first = anchor(dir)?;
    let mut problems = Vec::new();
    let mut frames = Frames::open(dir, first.0, upto)?;
    let iter = std::iter::from_fn(|| {
        loop {
            match frames.next()? {
                Ok(f) => return Some(f),
                Err(e) => problems.push(format!("unreadable: {e}")),
            }
        }
    });
    let mut v = super::verify(
        iter,
        &Expect {
            first,
            indexed,
            in_use,
        },
    );
    if let Some(t) = &frames.tail {
        v.notes.push(format!(
            "{}: {} byte(s) at the end are an unfinished record (a write cut by a crash of the \
             host or a full disk; never acknowledged); the daemon drops them at its next start",
            t.segment.display(),
            t.bytes
        ));
    }
    v.problems.splice(0..0, problems);
    Ok(v)
}

pub fn has_segments(dir: &Path) -> Result<bool> {
    Ok(!segment::list(dir)?.is_empty())
}

/// Writes the records of a log kept in sled before segment files, hashes
/// as they were, into the first segment of `dir` (which must have none).
pub fn import(dir: &Path, frames: impl Iterator<Item = Frame>) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(segment::name(1));
    let tmp = dir.join("import.tmp");
    let mut f = File::create(&tmp)?;
    let mut buf = Vec::new();
    let mut n = 0;
    for frame in frames {
        segment::encode(&frame, &mut buf);
        n += 1;
        if buf.len() > 1 << 20 {
            f.write_all(&buf)?;
            buf.clear();
        }
    }
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icpt-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn records_survive_reopening_across_segments() {
        let d = dir("segments");
        {
            // Segments of ~3 records: rotation every few appends.
            let (log, repair) = AuditLog::open(&d, SyncMode::Always, 300).unwrap();
            assert!(repair.is_none());
            for i in 0..10 {
                let seq = log
                    .append("request", &json!({"n": i, "pad": "x".repeat(50)}))
                    .unwrap();
                rt().block_on(log.durable(seq)).unwrap();
            }
        }
        assert!(segment::list(&d).unwrap().len() >= 3);
        let (log, _) =
            AuditLog::open(&d, SyncMode::Interval(Duration::from_millis(1)), 300).unwrap();
        assert_eq!(log.append("request", &json!({"n": 10})).unwrap(), 11);
        let v = log.verify(11, true).unwrap();
        assert_eq!((v.records, v.problems.len()), (11, 0), "{v:?}");
        let got = log.records(4, 0, 3).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(got[0].data["n"], 4);
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Retention removes whole segments only once exported and old
    /// enough, never the current one; the chain then verifies from the
    /// anchor, the writer goes on after it, and an anchor an operator kept
    /// of a removed record no longer checks (its record is gone), while
    /// one of a kept record does.
    #[test]
    fn retention_removes_exported_segments_and_keeps_an_anchor() {
        let d = dir("prune");
        let (log, _) = AuditLog::open(&d, SyncMode::Always, 300).unwrap();
        for i in 0..12 {
            log.append("request", &json!({"n": i})).unwrap();
        }
        let segs = segment::list(&d).unwrap();
        assert!(segs.len() >= 4, "{segs:?}");
        let future = crate::units::now_ms() + 60_000;
        // Nothing exported: nothing removed, whatever the age.
        assert_eq!(log.prune(future).unwrap(), Pruned::default());
        // Exported into the middle of a segment: only whole segments before it go.
        let third_first = segs[2].0;
        assert_eq!(log.mark_exported(third_first).unwrap(), third_first);
        assert!(log.mark_exported(99).is_err(), "past the head");
        assert_eq!(
            log.mark_exported(1).unwrap(),
            third_first,
            "never moves back"
        );
        // Too recent: kept.
        assert_eq!(log.prune(0).unwrap(), Pruned::default());
        let p = log.prune(future).unwrap();
        assert_eq!(
            p,
            Pruned {
                segments: 2,
                through: third_first - 1
            }
        );
        assert_eq!(segment::list(&d).unwrap().len(), segs.len() - 2);
        let v = log.verify(12, true).unwrap();
        assert!(v.problems.is_empty(), "{v:?}");
        assert_eq!(v.records, 12 - (third_first - 1));
        assert_eq!(log.records(0, 0, 100).unwrap()[0].seq, third_first);
        // Everything exported: all but the segment being written go.
        log.mark_exported(12).unwrap();
        log.prune(future).unwrap();
        assert_eq!(segment::list(&d).unwrap().len(), 1);
        drop(log);
        // The writer reopens after the anchor and the chain goes on.
        let (log, _) = AuditLog::open(&d, SyncMode::Always, 300).unwrap();
        assert_eq!(log.append("request", &json!({"n": 12})).unwrap(), 13);
        let v = log.verify(13, true).unwrap();
        assert!(v.problems.is_empty(), "{v:?}");
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// What a power cut leaves: part of the last frame. Reading offline
    /// says so without failing the chain; the writer cuts it off at open
    /// and goes on from the last whole record.
    #[test]
    fn an_unfinished_last_record_is_noted_then_cut_off() {
        let d = dir("torn");
        {
            let (log, _) = AuditLog::open(&d, SyncMode::Always, DEFAULT_SEGMENT_BYTES).unwrap();
            for i in 0..3 {
                log.append("request", &json!({"n": i})).unwrap();
            }
            log.sync().unwrap();
        }
        let (_, seg) = segment::list(&d).unwrap().pop().unwrap();
        let whole = std::fs::metadata(&seg).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let v = verify_dir(&d, None, 3, true).unwrap();
        assert!(v.problems.is_empty(), "{v:?}");
        assert!(v.notes[0].contains("7 byte(s) at the end"), "{v:?}");
        let (log, repair) = AuditLog::open(&d, SyncMode::Always, DEFAULT_SEGMENT_BYTES).unwrap();
        let r = repair.expect("the tail was cut");
        assert_eq!((r.tail.offset, r.tail.bytes), (whole, 7));
        assert_eq!(log.append("request", &json!({"n": 3})).unwrap(), 4);
        let v = log.verify(4, true).unwrap();
        assert!(v.problems.is_empty() && v.notes.is_empty(), "{v:?}");
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A frame changed on disk fails the check where it is.
    #[test]
    fn a_changed_byte_on_disk_is_found() {
        let d = dir("changed");
        let (log, _) = AuditLog::open(&d, SyncMode::Always, DEFAULT_SEGMENT_BYTES).unwrap();
        for i in 0..3 {
            log.append("request", &json!({"decision": "deny", "n": i}))
                .unwrap();
        }
        let (_, seg) = segment::list(&d).unwrap().pop().unwrap();
        // Same length: only the second record's content changes.
        let mut b = std::fs::read(&seg).unwrap();
        let at = b
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == b"deny")
            .nth(1)
            .unwrap()
            .0;
        b[at..at + 4].copy_from_slice(b"allo");
        std::fs::write(&seg, &b).unwrap();
        let v = log.verify(3, true).unwrap();
        assert_eq!(
            v.problems,
            ["record 2: content does not match its hash (changed)"]
        );
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// `always`: concurrent waiters share syncs (group commit), and each
    /// is answered only once a sync covered its record.
    #[test]
    fn always_answers_after_a_sync_that_covers_the_record() {
        let d = dir("always");
        let (log, _) = AuditLog::open(&d, SyncMode::Always, DEFAULT_SEGMENT_BYTES).unwrap();
        let log = Arc::new(log);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..8 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..50 {
                        let seq = log.append("request", &json!({"t": t, "i": i})).unwrap();
                        log.durable(seq).await.unwrap();
                        assert!(log.shared.synced.borrow().seq >= seq);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(log.head().0, 400);
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// After a failed sync the log takes nothing more and says why.
    #[test]
    fn a_failed_log_refuses_appends() {
        let d = dir("failed");
        let (log, _) = AuditLog::open(&d, SyncMode::Always, DEFAULT_SEGMENT_BYTES).unwrap();
        log.shared.fail("fdatasync failed: EIO (test)".into());
        let e = log.append("request", &json!({})).unwrap_err();
        assert!(e.to_string().contains("EIO (test)"), "{e}");
        assert!(rt().block_on(log.durable(1)).is_err());
        drop(log);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
