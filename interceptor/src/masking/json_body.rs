//! A JSON response masked by field paths: buffered whole (a path can only
//! be decided on a complete document), then re-written in one streaming
//! pass (json.rs) and masked by the detectors a block at a time.
//!
//! Memory: the decoded body is kept as the decoder's blocks, never one
//! growing buffer (a doubling `Vec` holds up to three times the body while
//! it reallocates); each block is given back to the budget as the parser
//! passes it, and each masked output block is drawn as it is made. So a
//! document holds about its own size, all of it on the budget.
use super::{Counts, JsonPath, StreamMasker};
use crate::memory_budget::Lease;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};

/// How much the detectors take at a time; also the size of output frames.
const BLOCK: usize = 64 << 10;

const SPENT: &str = "the memory for masking JSON is spent \
                     (inspect_buffer_mb_per_workload / inspect_buffer_mb_total)";

pub struct JsonMode {
    pub paths: Vec<JsonPath>,
    pub limit: u64,
    blocks: VecDeque<Vec<u8>>,
    len: u64,
}

impl JsonMode {
    pub fn new(paths: Vec<JsonPath>, limit: u64) -> Self {
        Self {
            paths,
            limit,
            blocks: VecDeque::new(),
            len: 0,
        }
    }

    /// Keeps a decoded block, drawn from the budget.
    pub fn absorb(&mut self, block: Vec<u8>, budget: Option<&mut Lease>) -> Result<(), String> {
        if block.is_empty() {
            return Ok(());
        }
        self.len += block.len() as u64;
        if self.len > self.limit {
            return Err(format!(
                "JSON body over the masking inspection limit of {} bytes",
                self.limit
            ));
        }
        if let Some(lease) = budget
            && !lease.grow(block.len() as u64)
        {
            return Err(SPENT.into());
        }
        self.blocks.push_back(block);
        Ok(())
    }

    /// Masks the document into `out`, a block a frame; returns what was
    /// masked. On error `out` holds part of a document: discard it. A body
    /// that is not JSON is refused, never sent with its fields unmasked.
    pub fn mask(
        self,
        masker: StreamMasker,
        budget: &RefCell<Option<Lease>>,
        out: &mut VecDeque<Vec<u8>>,
    ) -> Result<Counts, String> {
        let reader = BufReader::new(Blocks {
            blocks: self.blocks,
            at: 0,
            budget,
        });
        let mut writer = Masking {
            masker,
            block: Vec::new(),
            out,
            budget,
            refused: false,
        };
        let parsed = super::json::mask_stream_from(&self.paths, reader, &mut writer);
        let n = match parsed {
            Ok(n) => n,
            // The budget refused the output: the parser reports that as
            // its own error.
            Err(_) if writer.refused => return Err(SPENT.into()),
            Err(e) => return Err(format!("the body is not the JSON it says it is: {e}")),
        };
        writer.flush().map_err(|_| SPENT.to_string())?;
        let mut counts = std::mem::take(&mut writer.masker.counts);
        if n > 0 {
            *counts.entry("json_path".into()).or_default() += n;
        }
        Ok(counts)
    }
}

/// The buffered blocks as a reader; each is given back when passed.
struct Blocks<'a> {
    blocks: VecDeque<Vec<u8>>,
    at: usize,
    budget: &'a RefCell<Option<Lease>>,
}

impl Read for Blocks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.blocks.front().is_some_and(|b| self.at == b.len()) {
            let done = self.blocks.pop_front().expect("a front block");
            self.at = 0;
            if let Some(lease) = self.budget.borrow_mut().as_mut() {
                lease.give_back(done.len() as u64);
            }
        }
        let Some(front) = self.blocks.front() else {
            return Ok(0);
        };
        let n = buf.len().min(front.len() - self.at);
        buf[..n].copy_from_slice(&front[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The re-written document, masked by the detectors a block at a time.
struct Masking<'a> {
    masker: StreamMasker,
    block: Vec<u8>,
    out: &'a mut VecDeque<Vec<u8>>,
    budget: &'a RefCell<Option<Lease>>,
    refused: bool,
}

impl Write for Masking<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.block.extend_from_slice(b);
        if self.block.len() >= BLOCK {
            let masked = self.masker.push(&self.block);
            self.block.clear();
            self.keep(masked)?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut masked = self.masker.push(&self.block);
        self.block.clear();
        masked.extend(self.masker.finish());
        self.keep(masked)
    }
}

impl Masking<'_> {
    fn keep(&mut self, masked: Vec<u8>) -> std::io::Result<()> {
        if masked.is_empty() {
            return Ok(());
        }
        if let Some(lease) = self.budget.borrow_mut().as_mut()
            && !lease.grow(masked.len() as u64)
        {
            self.refused = true;
            return Err(std::io::Error::other(SPENT));
        }
        self.out.push_back(masked);
        Ok(())
    }
}
