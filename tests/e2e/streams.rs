//! Issue 12, item 1: LLM token streams. A local upstream streams the
//! injected key and a card number 1-3 characters per event, in the shapes of
//! the Anthropic Messages API and OpenAI Chat Completions; the official
//! Python SDKs and Node's `openai` package, inside the workload, hand the
//! skill text without either, and still parse every event. And in a shape
//! nothing names and in Ollama's JSON lines, read with `requests`: the
//! same, per field.
use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ANTHROPIC_KEY: &str = "sk-ant-STREAM-7c1e9a";
const OPENAI_KEY: &str = "sk-oai-STREAM-4d2b8f";

const APP: &str = r#"
import json, random, sys, threading
from flask import Flask, Response, request
app = Flask(__name__)
rng = random.Random(7)

def pieces(text):
    i = 0
    while i < len(text):
        n = rng.randint(1, 3)
        yield text[i:i + n]
        i += n

def say(key):
    return "Your key is " + key + " and the card 4111 1111 1111 1111. Bye."

@app.post("/v1/messages")
def messages():
    text = say(request.headers.get("x-api-key", ""))
    def gen():
        yield "event: message_start\ndata: " + json.dumps({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test", "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}) + "\n\n"
        yield "event: content_block_start\ndata: " + json.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}) + "\n\n"
        for p in pieces(text):
            yield "event: content_block_delta\ndata: " + json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}) + "\n\n"
        yield "event: content_block_stop\ndata: " + json.dumps({"type": "content_block_stop", "index": 0}) + "\n\n"
        yield "event: message_delta\ndata: " + json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}}) + "\n\n"
        yield "event: message_stop\ndata: " + json.dumps({"type": "message_stop"}) + "\n\n"
    return Response(gen(), mimetype="text/event-stream")

@app.post("/v1/chat/completions")
def chat():
    auth = request.headers.get("authorization", "")
    text = say(auth.removeprefix("Bearer "))
    def chunk(delta, finish=None):
        return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"
    def gen():
        yield chunk({"role": "assistant", "content": ""})
        for p in pieces(text):
            yield chunk({"content": p})
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"
    return Response(gen(), mimetype="text/event-stream")

# A shape no SDK knows: a delta field among whole ones. The last event
# waits for the client to say it read the ones before it, so a proxy
# that held them for a next event would never deliver them.
released = threading.Event()

@app.get("/v1/jobs/stream")
def jobs():
    text = say(request.headers.get("x-api-key", ""))
    def gen():
        for i, p in enumerate(pieces(text)):
            yield "event: progress\ndata: " + json.dumps({"seq": i, "status": "running", "out": {"chunk": p}}) + "\n\n"
        released.wait(30)
        yield "event: done\ndata: " + json.dumps({"status": "done"}) + "\n\n"
    return Response(gen(), mimetype="text/event-stream")

# Ollama's /api/generate: JSON lines, the text a few characters a line.
@app.post("/api/generate")
def generate():
    text = say(request.headers.get("x-api-key", ""))
    def gen():
        for p in pieces(text):
            yield json.dumps({"model": "llama3", "response": p, "done": False}) + "\n"
        yield json.dumps({"model": "llama3", "response": "", "done": True}) + "\n"
    return Response(gen(), mimetype="application/x-ndjson")

# Gemini's streamGenerateContent without alt=sse: one JSON array, a chunk
# an element, labelled application/json.
@app.post("/v1beta/models/gemini:streamGenerateContent")
def gemini_array():
    text = say(request.headers.get("x-api-key", ""))
    def gen():
        yield "["
        for i, p in enumerate(pieces(text)):
            chunk = {"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}]}
            yield ("," if i else "") + "\r\n" + json.dumps(chunk)
        yield "]"
    return Response(gen(), mimetype="application/json")

# The Vercel AI SDK's data stream: text/plain, a type code before each line.
@app.post("/api/chat")
def vercel():
    text = say(request.headers.get("x-api-key", ""))
    def gen():
        yield 'f:{"messageId":"m1"}\n'
        for p in pieces(text):
            yield "0:" + json.dumps(p) + "\n"
        yield 'd:{"finishReason":"stop"}\n'
    r = Response(gen(), mimetype="text/plain")
    r.headers["x-vercel-ai-data-stream"] = "v1"
    return r

@app.post("/v1/jobs/release")
def release():
    released.set()
    return "ok"

app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The upstream, started; its port.
fn upstream(cfg: &DaemonConfig) -> (Server, u16) {
    let port = free_port();
    let app = cfg.dir.join("llm.py");
    std::fs::write(&app, APP).unwrap();
    let server = Server(
        Command::new("python3")
            .arg(&app)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with flask"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the LLM upstream did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn llm_token_streams_reach_the_sdk_masked() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("llmstream");
    let mut cfg = DaemonConfig::new(&[&cg], "");
    let (_server, port) = upstream(&cfg);
    cfg.extra = cfg.credentials(&[("anthropic", ANTHROPIC_KEY), ("openai", OPENAI_KEY)]);
    cfg.set_policy(&format!(
        "[credential.anthropic]\nsource = \"file:anthropic\"\nheader = \"x-api-key\"\n\n\
         [credential.openai]\nsource = \"file:openai\"\nheader = \"Authorization\"\nformat = \"Bearer {{secret}}\"\n\n\
         [mask.pii]\ndetectors = [\"card\"]\n\n\
         [[rule]]\nid = \"anthropic\"\nworkload = {w:?}\ndestination = \"127.0.0.1:{port}\"\npath = \"/v1/messages\"\ninject = \"anthropic\"\nmask = \"pii\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"openai\"\nworkload = {w:?}\ndestination = \"127.0.0.1:{port}\"\npath = \"/v1/chat/completions\"\ninject = \"openai\"\nmask = \"pii\"\naction = \"allow\"\n",
        w = cg.rel
    ));
    let _d = Daemon::start(&cfg);
    let script = format!(
        r#"
import anthropic, openai
a = anthropic.Anthropic(base_url="http://127.0.0.1:{port}", api_key="placeholder", max_retries=0)
with a.messages.stream(model="claude-test", max_tokens=64, messages=[{{"role": "user", "content": "hi"}}]) as s:
    text = "".join(s.text_stream)
print("anthropic:", text)
o = openai.OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="placeholder", max_retries=0)
parts = []
for chunk in o.chat.completions.create(model="gpt-test", messages=[{{"role": "user", "content": "hi"}}], stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
print("openai:", "".join(parts))
"#
    );
    let (ok, out, err) = run(
        cg.command("python3", &["-c", &script]),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}{err}");
    // Node's openai package (installed globally by scripts/setup.sh).
    let root = run(
        {
            let mut c = Command::new("npm");
            c.args(["root", "-g"]);
            c
        },
        Duration::from_secs(30),
    )
    .1;
    let node = format!(
        r#"
const OpenAI = require("openai");
(async () => {{
  const o = new OpenAI({{ baseURL: "http://127.0.0.1:{port}/v1", apiKey: "placeholder", maxRetries: 0 }});
  const stream = await o.chat.completions.create({{ model: "gpt-test", messages: [{{ role: "user", content: "hi" }}], stream: true }});
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || "";
  console.log("node-openai: " + text);
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let mut c = cg.command("node", &["-e", &node]);
    c.env("NODE_PATH", root.trim());
    let (ok, node_out, err) = run(c, Duration::from_secs(60));
    assert!(ok, "{node_out}{err}");
    let out = format!("{out}{node_out}");
    for sdk in ["anthropic", "openai", "node-openai"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(sdk))
            .unwrap_or_else(|| panic!("no {sdk} output: {out}"));
        assert!(
            !line.contains(ANTHROPIC_KEY) && !line.contains(OPENAI_KEY),
            "{sdk}: the key reached the skill: {line}"
        );
        assert!(!line.contains("4111 1111 1111 1111"), "{sdk}: {line}");
        assert!(
            line.contains(
                "Your key is [REDACTED:injected_secret] and the card [REDACTED:card]. Bye."
            ),
            "{sdk}: {line}"
        );
    }
}

#[test]
fn event_streams_of_unknown_shapes_are_masked_per_field() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("jobstream");
    let mut cfg = DaemonConfig::new(&[&cg], "");
    let (_server, port) = upstream(&cfg);
    cfg.extra = cfg.credentials(&[("jobs", ANTHROPIC_KEY)]);
    cfg.set_policy(&format!(
        "[credential.jobs]\nsource = \"file:jobs\"\nheader = \"x-api-key\"\n\n\
         [mask.pii]\ndetectors = [\"card\"]\n\n\
         [[rule]]\nid = \"jobs\"\nworkload = {w:?}\ndestination = \"127.0.0.1:{port}\"\npath = [\"/v1/jobs/*\", \"/api/generate\", \"/api/chat\", \"/v1beta/models/*\"]\ninject = \"jobs\"\nmask = \"pii\"\naction = \"allow\"\n",
        w = cg.rel
    ));
    let _d = Daemon::start(&cfg);
    // Reads every event up to the one ending the text, then lets the
    // upstream send its last: held events must come without it.
    let script = format!(
        r#"
import json, requests
base = "http://127.0.0.1:{port}/v1/jobs"
r = requests.get(base + "/stream", stream=True, timeout=20)
text, statuses, seqs, event = "", set(), [], []
for line in r.iter_lines(decode_unicode=True):
    if line:
        event.append(line)
        continue
    data = json.loads("".join(l[6:] for l in event if l.startswith("data: ")))
    event = []
    statuses.add(data["status"])
    if data["status"] == "done":
        break
    seqs.append(data["seq"])
    text += data["out"]["chunk"]
    if text.endswith("Bye."):
        requests.post(base + "/release", timeout=20)
print("statuses:", sorted(statuses), "in order:", seqs == list(range(len(seqs))))
print("text:", text)
# Ollama's JSON lines, read as its client library does: line by line.
r = requests.post("http://127.0.0.1:{port}/api/generate", json={{"model": "llama3", "prompt": "hi"}}, stream=True, timeout=20)
lines = [json.loads(l) for l in r.iter_lines() if l]
print("ndjson done:", lines[-1]["done"], "models:", {{l["model"] for l in lines}})
print("ndjson:", "".join(l["response"] for l in lines))
r = requests.post("http://127.0.0.1:{port}/v1beta/models/gemini:streamGenerateContent", json={{}}, timeout=20)
print("gemini array:", "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in r.json()))
r = requests.post("http://127.0.0.1:{port}/api/chat", json={{}}, stream=True, timeout=20)
print("vercel:", "".join(json.loads(l[2:]) for l in r.iter_lines(decode_unicode=True) if l.startswith("0:")))
"#
    );
    let (ok, out, err) = run(
        cg.command("python3", &["-c", &script]),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("statuses: ['done', 'running'] in order: True"),
        "{out}"
    );
    assert!(
        !out.contains(ANTHROPIC_KEY),
        "the key reached the skill: {out}"
    );
    assert!(!out.contains("4111 1111 1111 1111"), "{out}");
    assert!(
        out.contains(
            "text: Your key is [REDACTED:injected_secret] and the card [REDACTED:card]. Bye."
        ),
        "{out}"
    );
    assert!(
        out.contains("ndjson done: True models: {'llama3'}"),
        "{out}"
    );
    for what in ["ndjson", "gemini array", "vercel"] {
        assert!(
            out.contains(&format!(
                "{what}: Your key is [REDACTED:injected_secret] and the card [REDACTED:card]. Bye."
            )),
            "{what}: {out}"
        );
    }
}
