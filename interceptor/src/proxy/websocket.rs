//! WebSocket after a 101: the proxy stays in the conversation. Frames are
//! parsed both ways (tungstenite, as a server towards the skill and a client
//! towards the upstream), so what is not a valid frame stream ends the
//! connection instead of passing as raw bytes (HTTP smuggled after the 101
//! never reaches the upstream). Messages are counted and recorded; text the
//! upstream sends is masked with the rule's profile and the injected-secret
//! scrubber before the skill sees it.
use crate::masking::{Counts, Profile, StreamMasker};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};
use zeroize::Zeroizing;

/// Largest message (and frame) either side may send; a bigger one ends the
/// connection (tungstenite's default is 64 MiB, too much to hold per stream).
const MAX_MESSAGE: usize = 16 << 20;

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

/// How messages are masked and recorded.
pub struct Relay {
    /// The rule's profile (or an empty one: the injected secret is
    /// scrubbed whatever the policy says).
    pub profile: Arc<Profile>,
    pub injected: Vec<Zeroizing<String>>,
    /// Mask what the skill sends too (`mask_request = true`).
    pub mask_up: bool,
    /// Bytes of transcript the session's recording cap leaves.
    pub record_room: usize,
}

impl Relay {
    /// Runs until either side closes or breaks the protocol.
    pub async fn run(self, client: Upgraded, upstream: Upgraded) -> Outcome {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config))
                .await;
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config))
                .await;
        let (mut to_client, mut from_client) = client.split();
        let (mut to_upstream, mut from_upstream) = upstream.split();
        let shared = Arc::new(Mutex::new(Outcome::default()));
        let me = Arc::new(self);

        let (up_state, relay) = (shared.clone(), me.clone());
        let up = async move {
            while let Some(m) = from_client.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => return Err(format!("from the client: {e}")),
                };
                let Some(m) = relay.pass(m, true, &up_state) else {
                    continue;
                };
                let close = m.is_close();
                to_upstream
                    .send(m)
                    .await
                    .map_err(|e| format!("to the upstream: {e}"))?;
                if close {
                    break;
                }
            }
            let _ = to_upstream.close().await;
            Ok(())
        };
        let (down_state, relay) = (shared.clone(), me.clone());
        let down = async move {
            while let Some(m) = from_upstream.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => return Err(format!("from the upstream: {e}")),
                };
                let Some(m) = relay.pass(m, false, &down_state) else {
                    continue;
                };
                let close = m.is_close();
                to_client
                    .send(m)
                    .await
                    .map_err(|e| format!("to the client: {e}"))?;
                if close {
                    break;
                }
            }
            let _ = to_client.close().await;
            Ok(())
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

    /// One message on its way; `None` for control frames each hop answers
    /// itself (ping/pong).
    fn pass(&self, m: Message, up: bool, state: &Mutex<Outcome>) -> Option<Message> {
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
                let masked = self.mask(t.as_bytes(), up, &mut st.masked);
                let text = String::from_utf8_lossy(&masked).into_owned();
                self.record(st, up, &text);
                let send_masked = !up || self.mask_up;
                Some(Message::text(if send_masked {
                    text
                } else {
                    t.to_string()
                }))
            }
            Message::Binary(b) => {
                count(st, b.len());
                self.record(st, up, &format!("[binary, {} bytes]", b.len()));
                if up || self.injected.is_empty() {
                    return Some(Message::Binary(b));
                }
                // The injected secret is scrubbed from binary messages too.
                let mut m = StreamMasker::new(Arc::new(Profile::empty()), &self.injected);
                let mut out = m.push(&b);
                out.extend(m.finish());
                merge(&mut st.masked, &m.counts);
                Some(Message::binary(out))
            }
            Message::Close(f) => Some(Message::Close(f)),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    /// Text as the other side (and the record) gets it.
    fn mask(&self, text: &[u8], up: bool, counts: &mut Counts) -> Vec<u8> {
        if up && !self.mask_up {
            // Recorded masked, forwarded as sent.
            let mut m = StreamMasker::new(self.profile.clone(), &[] as &[&str]);
            let mut out = m.push(text);
            out.extend(m.finish());
            return out;
        }
        let injected: &[Zeroizing<String>] = if up { &[] } else { &self.injected };
        let mut m = StreamMasker::new(self.profile.clone(), injected);
        let mut out = m.push(text);
        out.extend(m.finish());
        merge(counts, &m.counts);
        out
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
