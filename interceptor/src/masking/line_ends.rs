//! The line endings of text streams read as their clients read them: LF,
//! CRLF and a lone CR each end a line (the SSE spec; `splitlines` and
//! httpx's `iter_lines` for JSON lines), and one leading byte-order mark
//! is not part of the stream (the SSE spec drops it, and so do clients
//! that decode with TextDecoder). Everything is appended with each line
//! ending made `\n`, so lines are split here exactly where a client
//! splits them.

const BOM: &[u8] = b"\xef\xbb\xbf";

#[derive(Default)]
pub struct LineEnds {
    /// The last byte was a CR: a LF right after it is its pair.
    after_cr: bool,
    /// Whether the first bytes were looked at for a byte-order mark, and
    /// what of them is kept until there are enough to tell.
    started: bool,
    head: Vec<u8>,
}

impl LineEnds {
    /// Appends `chunk` to `buf`, line endings made `\n`.
    pub fn push(&mut self, chunk: &[u8], buf: &mut Vec<u8>) {
        if self.started {
            return self.append(chunk, buf);
        }
        self.head.extend_from_slice(chunk);
        if self.head.len() < BOM.len() && BOM.starts_with(&self.head) {
            return;
        }
        self.finish(buf);
    }

    /// The end of the stream: a start shorter than a byte-order mark is
    /// text too.
    pub fn finish(&mut self, buf: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let head = std::mem::take(&mut self.head);
            self.append(head.strip_prefix(BOM).unwrap_or(&head), buf);
        }
    }

    fn append(&mut self, chunk: &[u8], buf: &mut Vec<u8>) {
        for &b in chunk {
            match b {
                b'\r' => {
                    buf.push(b'\n');
                    self.after_cr = true;
                }
                b'\n' if self.after_cr => self.after_cr = false,
                _ => {
                    buf.push(b);
                    self.after_cr = false;
                }
            }
        }
    }
}
