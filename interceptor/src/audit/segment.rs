//! Segment files: `<dir>/<first seq, 20 digits>.seg`, each a run of frames
//!
//! ```text
//! u32 LE body length | 32 B previous hash | 32 B hash | body (JSON)
//! ```
//!
//! Hand-written framing: three fixed fields and a blob, and a reader must
//! tell a complete record from the unfinished one a power cut can leave at
//! the end; a length prefix does exactly that.
use super::Frame;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

pub const HEADER: usize = 4 + 32 + 32;
/// A record's body may not be larger (an append over it is refused).
pub const MAX_BODY: usize = 1 << 20;
const SUFFIX: &str = ".seg";

pub fn name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The segments in `dir`, by first record: none when `dir` is missing.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends `f`'s frame to `buf`.
pub fn encode(f: &Frame, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(f.body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&f.prev);
    buf.extend_from_slice(&f.hash);
    buf.extend_from_slice(&f.body);
}

/// An unfinished record at the end of a segment: `bytes` from `offset` on
/// that are no whole frame (a write cut by a power loss or a full disk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// Reads one segment's frames, up to its size when opened.
pub struct Reader {
    path: PathBuf,
    r: BufReader<File>,
    offset: u64,
    len: u64,
}

pub enum Step {
    Frame(Frame),
    End,
    Torn(Tail),
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        Ok(Reader {
            path: path.to_path_buf(),
            r: BufReader::with_capacity(64 << 10, f),
            offset: 0,
            len,
        })
    }

    /// The next frame's header, or why there is none.
    fn header(&mut self) -> io::Result<Result<(usize, [u8; HEADER]), Step>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Ok(Err(Step::End));
        }
        let torn = || {
            Step::Torn(Tail {
                segment: self.path.clone(),
                offset: self.offset,
                bytes: left,
            })
        };
        if left < HEADER as u64 {
            return Ok(Err(torn()));
        }
        let mut h = [0u8; HEADER];
        self.r.read_exact(&mut h)?;
        let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_BODY || left < (HEADER + len) as u64 {
            // Zeros or a short body: what a write cut midway leaves.
            return Ok(Err(torn()));
        }
        Ok(Ok((len, h)))
    }

    pub fn next(&mut self) -> io::Result<Step> {
        let (len, h) = match self.header()? {
            Ok(x) => x,
            Err(step) => return Ok(step),
        };
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body)?;
        self.offset += (HEADER + len) as u64;
        Ok(Step::Frame(Frame {
            prev: h[4..36].try_into().unwrap(),
            hash: h[36..68].try_into().unwrap(),
            body,
        }))
    }

    /// Passes over `n` frames without reading their bodies; false when the
    /// segment ended first.
    pub fn skip(&mut self, n: u64) -> io::Result<bool> {
        for _ in 0..n {
            let Ok((len, _)) = self.header()? else {
                return Ok(false);
            };
            self.r.seek_relative(len as i64)?;
            self.offset += (HEADER + len) as u64;
        }
        Ok(true)
    }
}

/// The frames of a log from record `from` on (by position: the n-th frame
/// of a segment is its first record + n), across segments, stopping after
/// record `upto` when given (the daemon's head: a record being written
/// after it may be partly there). An unfinished frame at the very end is
/// kept in `tail`; one anywhere else is an error.
pub struct Frames {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(u64, Reader)>,
    upto: Option<u64>,
    pub tail: Option<Tail>,
}

impl Frames {
    pub fn open(dir: &Path, from: u64, upto: Option<u64>) -> io::Result<Frames> {
        let mut segs = list(dir)?;
        // Start in the last segment that begins at or before `from`.
        let start = segs
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        segs.drain(..start);
        let mut frames = Frames {
            segments: segs.into_iter(),
            current: None,
            upto,
            tail: None,
        };
        if let Some((first, path)) = frames.segments.next() {
            let mut r = Reader::open(&path)?;
            let skip = from.saturating_sub(first);
            if r.skip(skip)? {
                frames.current = Some((first + skip, r));
            } else {
                frames.current = Some((u64::MAX, r));
            }
        }
        Ok(frames)
    }
}

impl Iterator for Frames {
    type Item = io::Result<Frame>;

    fn next(&mut self) -> Option<io::Result<Frame>> {
        loop {
            let (seq, r) = self.current.as_mut()?;
            if *seq == u64::MAX {
                // `from` lies past this segment's end: on to the next.
            } else if self.upto.is_some_and(|u| *seq > u) {
                return None;
            } else {
                match r.next() {
                    Err(e) => {
                        self.current = None;
                        return Some(Err(e));
                    }
                    Ok(Step::Frame(f)) => {
                        *seq += 1;
                        return Some(Ok(f));
                    }
                    Ok(Step::End) => {}
                    Ok(Step::Torn(t)) => {
                        if self.segments.len() > 0 {
                            *seq = u64::MAX;
                            return Some(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "{}: {} byte(s) at offset {} are no whole record, and later segments follow",
                                    t.segment.display(),
                                    t.bytes,
                                    t.offset
                                ),
                            )));
                        }
                        self.tail = Some(t);
                        return None;
                    }
                }
            }
            let (first, path) = self.segments.next()?;
            match Reader::open(&path) {
                Ok(r) => self.current = Some((first, r)),
                Err(e) => {
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
