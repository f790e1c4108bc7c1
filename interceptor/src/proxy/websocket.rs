//! WebSocket after a 101: the proxy stays in the conversation. Frames are
//! parsed both ways (tungstenite, as a server towards the skill and a client
//! towards the upstream), so what is not a valid frame stream ends the
//! connection instead of passing as raw bytes (HTTP smuggled after the 101
//! never reaches the upstream). Messages are counted and recorded; text the
//! upstream sends is masked with the rule's profile and the injected-secret
//! scrubber before the skill sees it.
use crate::masking::cpu_allowance::CpuMeter;
use crate::masking::{Counts, Profile, StreamMasker};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use zeroize::Zeroizing;

/// Largest message (and frame) the skill may send: a frame is held whole
/// until it is complete. A bigger frame ends the connection.
pub const MAX_CLIENT_MESSAGE: usize = 1 << 20;

/// Largest message the upstream (allowed by policy) may send; a bigger one
/// ends the connection. Held whole, then masked into a copy.
const MAX_UPSTREAM_MESSAGE: usize = 1 << 20;

/// What one open WebSocket may hold, drawn from its workload's memory
/// budget (`inspect_buffer_mb_per_workload`) while it is open: a message
/// from the skill, and one from the upstream with its masked copy and the
/// frame being written (24 connections with a 16 MiB message each held
/// 880 MB before; found by an attack pass).
pub const HELD_PER_CONNECTION: usize = MAX_CLIENT_MESSAGE + 3 * MAX_UPSTREAM_MESSAGE;

/// Text is masked this much at a time, the CPU allowance checked between
/// pieces: a costly message is cut off within its allowance, not after it
/// was masked whole (11 s of CPU for one 16 MB message before).
const MASK_PIECE: usize = 64 << 10;

/// Once one side has closed, the other has this long to finish its close.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the relay did, for the request's record.
#[derive(Default)]
pub struct Outcome {
    pub messages_up: u64,
    pub messages_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Text both ways as recorded (masked), `>` up and `<` down.
    pub transcript: String,
    pub masked: Counts,
    pub error: Option<String>,
}

/// How messages are masked and recorded. The maskers are built once per
/// connection; each message gets a fresh sibling (the injected secrets'
/// automaton is shared, not rebuilt).
pub struct Relay {
    /// The rule's profile and the injected secrets: text from the upstream.
    down: StreamMasker,
    /// The profile alone: text from the skill.
    up: StreamMasker,
    /// The injected secrets alone: binary messages from the upstream;
    /// `None` when nothing was injected.
    binary: Option<StreamMasker>,
    /// Mask what the skill sends too (`mask_request = true`).
    mask_up: bool,
    /// Bytes of transcript the session's recording cap leaves.
    record_room: usize,
    /// What the connection may hold (HELD_PER_CONNECTION), drawn from the
    /// workload's budget while it is open.
    _lease: crate::memory_budget::Lease,
    /// The CPU masking this connection's messages has used, against what
    /// it may (the connection is ended past it).
    cpu: Mutex<CpuMeter>,
}

impl Relay {
    /// `profile`: the rule's (or an empty one: the injected secret is
    /// scrubbed whatever the policy says).
    pub fn new(
        profile: Arc<Profile>,
        injected: &[Zeroizing<String>],
        mask_up: bool,
        record_room: usize,
        lease: crate::memory_budget::Lease,
        cpu: CpuMeter,
    ) -> Relay {
        Relay {
            down: StreamMasker::new(profile.clone(), injected),
            up: StreamMasker::new(profile, &[] as &[&str]),
            binary: (!injected.is_empty())
                .then(|| StreamMasker::new(Arc::new(Profile::empty()), injected)),
            mask_up,
            record_room,
            _lease: lease,
            cpu: Mutex::new(cpu),
        }
    }

    /// Runs until either side closes or breaks the protocol.
    pub async fn run(self, client: Upgraded, upstream: Upgraded) -> Outcome {
        let limit = |n| {
            WebSocketConfig::default()
                .max_message_size(Some(n))
                .max_frame_size(Some(n))
        };
        let client = WebSocketStream::from_raw_socket(
            TokioIo::new(client),
            Role::Server,
            Some(limit(MAX_CLIENT_MESSAGE)),
        )
        .await;
        let upstream = WebSocketStream::from_raw_socket(
            TokioIo::new(upstream),
            Role::Client,
            Some(limit(MAX_UPSTREAM_MESSAGE)),
        )
        .await;
        let (mut to_client, mut from_client) = client.split();
        let (mut to_upstream, mut from_upstream) = upstream.split();
        let shared = Arc::new(Mutex::new(Outcome::default()));
        let me = Arc::new(self);
        // Set when either direction ends: the other gets CLOSE_GRACE.
        let (ended, _) = tokio::sync::watch::channel(false);
        let grace = |ended: &tokio::sync::watch::Sender<bool>| {
            let mut rx = ended.subscribe();
            async move {
                let _ = rx.wait_for(|e| *e).await;
                tokio::time::sleep(CLOSE_GRACE).await;
            }
        };

        let (up_state, relay, up_ended, up_grace) =
            (shared.clone(), me.clone(), ended.clone(), grace(&ended));
        let up = async move {
            tokio::pin!(up_grace);
            let result = loop {
                let next = tokio::select! {
                    m = from_client.next() => m,
                    _ = &mut up_grace => None,
                };
                let Some(m) = next else { break Ok(()) };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => break Err(format!("from the client: {e}")),
                };
                let m = match relay.pass(m, true, &up_state) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => break Err(e),
                };
                // A close is passed on as far as the other side still
                // listens; one that cannot be is not an error.
                let close = m.is_close();
                let sent = to_upstream.send(m).await;
                if close {
                    break Ok(());
                }
                if let Err(e) = sent {
                    break Err(format!("to the upstream: {e}"));
                }
            };
            let _ = to_upstream.close().await;
            up_ended.send_replace(true);
            result
        };
        let (down_state, relay, down_ended, down_grace) =
            (shared.clone(), me.clone(), ended.clone(), grace(&ended));
        let down = async move {
            tokio::pin!(down_grace);
            let result = loop {
                let next = tokio::select! {
                    m = from_upstream.next() => m,
                    _ = &mut down_grace => None,
                };
                let Some(m) = next else { break Ok(()) };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => break Err(format!("from the upstream: {e}")),
                };
                let m = match relay.pass(m, false, &down_state) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => break Err(e),
                };
                let close = m.is_close();
                let sent = to_client.send(m).await;
                if close {
                    break Ok(());
                }
                if let Err(e) = sent {
                    break Err(format!("to the client: {e}"));
                }
            };
            let _ = to_client.close().await;
            down_ended.send_replace(true);
            result
        };
        // Either direction failing (a protocol error, a reset) ends both:
        // nothing unparsed is ever passed on.
        let result: Result<((), ()), String> = tokio::try_join!(up, down);
        let mut out = std::mem::take(&mut *shared.lock().unwrap());
        if let Err(e) = result {
            out.error = Some(e);
        }
        out
    }

    /// One message on its way, within the connection's CPU allowance for
    /// masking; `None` for control frames each hop answers itself
    /// (ping/pong).
    fn pass(
        &self,
        m: Message,
        up: bool,
        state: &Mutex<Outcome>,
    ) -> Result<Option<Message>, String> {
        let mut st = state.lock().unwrap();
        let st = &mut *st;
        let count = |st: &mut Outcome, n: usize| {
            if up {
                st.messages_up += 1;
                st.bytes_up += n as u64;
            } else {
                st.messages_down += 1;
                st.bytes_down += n as u64;
            }
        };
        match m {
            Message::Text(t) => {
                count(st, t.len());
                let masked = self.mask(t.as_bytes(), up, &mut st.masked)?;
                let text = String::from_utf8_lossy(&masked).into_owned();
                self.record(st, up, &text);
                let send_masked = !up || self.mask_up;
                Ok(Some(Message::text(if send_masked {
                    text
                } else {
                    t.to_string()
                })))
            }
            Message::Binary(b) => {
                count(st, b.len());
                self.record(st, up, &format!("[binary, {} bytes]", b.len()));
                let Some(scrub) = self.binary.as_ref().filter(|_| !up) else {
                    return Ok(Some(Message::Binary(b)));
                };
                // The injected secret is scrubbed from binary messages too.
                let mut m = scrub.sibling();
                let out = self.metered(&mut m, &b)?;
                merge(&mut st.masked, &m.counts);
                Ok(Some(Message::binary(out)))
            }
            // The reason of a close from the upstream is text the skill
            // reads: masked like a message (within its 123 bytes).
            Message::Close(Some(mut f)) if !up && !f.reason.is_empty() => {
                let masked = self.mask(f.reason.as_bytes(), up, &mut st.masked)?;
                let mut reason = String::from_utf8_lossy(&masked).into_owned();
                while reason.len() > 123 {
                    reason.pop();
                }
                f.reason = reason.into();
                Ok(Some(Message::Close(Some(f))))
            }
            Message::Close(f) => Ok(Some(Message::Close(f))),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
        }
    }

    /// `text` through the masker a piece at a time, the connection's CPU
    /// charged after each; past its allowance, an error (the connection
    /// ends, nothing of the message goes out).
    fn metered(&self, m: &mut StreamMasker, text: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(text.len());
        for piece in text.chunks(MASK_PIECE) {
            let start = CpuMeter::start();
            out.extend(m.push(piece));
            self.cpu.lock().unwrap().charge(start, piece.len())?;
        }
        let start = CpuMeter::start();
        out.extend(m.finish());
        self.cpu.lock().unwrap().charge(start, 0)?;
        Ok(out)
    }

    /// Text as the other side (and the record) gets it.
    fn mask(&self, text: &[u8], up: bool, counts: &mut Counts) -> Result<Vec<u8>, String> {
        let mut m = if up {
            self.up.sibling()
        } else {
            self.down.sibling()
        };
        let out = self.metered(&mut m, text)?;
        // Text from the skill forwarded as sent is only recorded masked: its
        // detections are not counted as masked.
        if !up || self.mask_up {
            merge(counts, &m.counts);
        }
        Ok(out)
    }

    fn record(&self, st: &mut Outcome, up: bool, text: &str) {
        let line = format!("{} {text}\n", if up { '>' } else { '<' });
        if st.transcript.len() + line.len() <= self.record_room {
            st.transcript.push_str(&line);
        }
    }
}

fn merge(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::cpu_allowance::CpuAllowance;
    use std::time::Duration;

    fn relay(cpu: CpuAllowance) -> Relay {
        let cpu = CpuMeter::new(cpu);
        let budget = crate::memory_budget::BodyBudget::new(1 << 20, 1 << 20);
        Relay::new(
            Arc::new(Profile::empty()),
            &[Zeroizing::new("sk-WS-5e0f2a91".to_string())],
            false,
            1 << 16,
            budget.lease("w"),
            cpu,
        )
    }

    #[test]
    fn messages_that_cost_too_much_cpu_to_mask_end_the_connection() {
        // Runs of backslashes: the costliest text for the escaped-secret
        // reader (found by an attack pass).
        let costly: String = "\\\\\\\\\\\\\\\\w".repeat(8 << 10);
        let state = Mutex::new(Outcome::default());
        let tight = relay(CpuAllowance {
            base: Duration::from_millis(1),
            per_byte: Duration::from_nanos(1),
        });
        let mut ended = None;
        for _ in 0..50 {
            if let Err(why) = tight.pass(Message::text(costly.clone()), false, &state) {
                ended = Some(why);
                break;
            }
        }
        let why = ended.expect("the connection was never ended");
        assert!(why.contains("CPU"), "{why}");

        // A message of a megabyte is cut off within a piece or two of
        // the allowance, not after it was masked whole.
        let big = "\\\\\\\\w".repeat(MAX_UPSTREAM_MESSAGE / 9);
        let start = CpuMeter::start();
        let cut = relay(CpuAllowance {
            base: Duration::from_millis(1),
            per_byte: Duration::from_nanos(1),
        })
        .pass(Message::text(big.clone()), false, &state);
        let used = CpuMeter::start() - start;
        assert!(cut.is_err());
        let start = CpuMeter::start();
        let mut m = StreamMasker::new(Arc::new(Profile::empty()), &["sk-WS-5e0f2a91"]);
        m.push(&big.as_bytes()[..MASK_PIECE]);
        let piece = CpuMeter::start() - start;
        assert!(used < piece * 4, "{used:?} for a piece of {piece:?}");

        // The same messages within the default allowance pass, masked.
        let roomy = relay(CpuAllowance::default());
        let m = roomy
            .pass(
                Message::text(format!("{costly} sk-WS-5e0f2a91")),
                false,
                &state,
            )
            .unwrap()
            .unwrap();
        assert!(m.to_text().unwrap().ends_with("[REDACTED:injected_secret]"));
    }
}
