//! Issue 12, the attack pass: places a response carries data the skill
//! reads that the masker did not look at (a reason phrase, a header name,
//! an upper-case media type, another representation of a JSON document,
//! a compressed file, a byte range), each from a raw upstream.
use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const SECRET: &str = "sk-LEAK-77c1e0b9a4";
const SSN: &str = "078-05-1120";

fn serve(c: TcpStream) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut key, mut range) = (String::new(), String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("x-api-key:") {
            key = h[h.len() - v.len()..].trim().to_string();
        }
        if lower.starts_with("range:") {
            range = h.trim().to_string();
        }
    }
    let (status, ctype, body): (&str, &str, Vec<u8>) = match path.as_str() {
        // An error message in the status line, Tomcat style.
        "/reason" => ("200 key KEY ssn SSN", "text/plain", b"ok".to_vec()),
        // The secret as a header name.
        "/header-name" => ("200 OK", "text/plain", b"ok".to_vec()),
        // A token stream labelled in capitals: a card 2 characters an event.
        "/sse-upper" => {
            let mut s = String::new();
            for p in "card 4111 1111 1111 1111 end".as_bytes().chunks(2) {
                let d = serde_json::json!({"type":"content_block_delta","index":0,
                    "delta":{"type":"text_delta","text":String::from_utf8_lossy(p)}});
                s.push_str(&format!("data: {d}\n\n"));
            }
            ("200 OK", "Text/Event-Stream", s.into_bytes())
        }
        // The document the field paths mask, as JSON in capitals and as JSONP.
        "/json-upper" => (
            "200 OK",
            "Application/JSON",
            format!(r#"{{"password":"PW-{key}"}}"#).into_bytes(),
        ),
        "/json-as-text" => (
            "200 OK",
            "text/plain",
            b"{\"password\":\"hunter2\"}".to_vec(),
        ),
        "/jsonp" => (
            "200 OK",
            "application/javascript",
            b"cb({\"password\":\"hunter2\"})".to_vec(),
        ),
        // A compressed export, labelled as what it is and as identity.
        "/export.gz" | "/identity-gz" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(format!("ssn {SSN} key {key}\n").as_bytes())
                .unwrap();
            let t = if path == "/export.gz" {
                "application/gzip"
            } else {
                "text/plain"
            };
            ("200 OK", t, gz.finish().unwrap())
        }
        "/utf16" => (
            "200 OK",
            "text/plain; charset=UTF-16",
            format!("ssn {SSN}")
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes())
                .collect(),
        ),
        // Labels a client may read as an event stream, and we may not.
        "/two-types" | "/type-list" | "/type-quoted" => {
            let mut s = String::new();
            for p in ["card 4111 ", "1111 1111", " 1111 end"] {
                let d = serde_json::json!({"type":"content_block_delta","index":0,
                    "delta":{"type":"text_delta","text":p}});
                s.push_str(&format!("data: {d}\n\n"));
            }
            let t = match path.as_str() {
                "/two-types" => "text/plain\r\nContent-Type: text/event-stream",
                "/type-list" => "text/event-stream, text/plain",
                _ => "\"text/event-stream\"",
            };
            ("200 OK", t, s.into_bytes())
        }
        // What Range the upstream was asked for.
        "/range" => (
            "200 OK",
            "text/plain",
            format!("range=[{range}]").into_bytes(),
        ),
        _ => ("404 Not Found", "text/plain", b"no".to_vec()),
    };
    let status = status.replace("KEY", &key).replace("SSN", SSN);
    let extra = if path == "/header-name" {
        format!("x-{key}: 1\r\n")
    } else {
        String::new()
    };
    let mut w = c;
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(&body);
}

#[test]
fn what_the_masker_cannot_read_never_reaches_the_skill() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("leaks");
    let up = Upstream::start("127.0.0.1:0", serve);
    let mut cfg = DaemonConfig::new(&[&cg], "");
    cfg.extra = cfg.credentials(&[("api", SECRET)]);
    cfg.set_policy(&format!(
        "[credential.api]\nsource = \"file:api\"\nheader = \"x-api-key\"\n\n\
         [mask.pii]\ndetectors = [\"card\", \"ssn\"]\n\n\
         [mask.fields]\ndetectors = [\"card\", \"ssn\"]\njson_paths = [\"$..password\"]\ncontent_types = [\"application/json\", \"application/javascript\"]\n\n\
         [[rule]]\nid = \"fields\"\nworkload = {0:?}\ndestination = \"{1}\"\npath = [\"/json-upper\", \"/jsonp\", \"/json-as-text\"]\ninject = \"api\"\nmask = \"fields\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"api\"\nworkload = {0:?}\ndestination = \"{1}\"\ninject = \"api\"\nmask = \"pii\"\naction = \"allow\"\n",
        cg.rel, up.addr
    ));
    let _d = Daemon::start(&cfg);
    let get = |path: &str, extra: &[&str]| {
        let url = format!("http://127.0.0.1:{}{path}", up.addr.port());
        let mut args = vec!["-sS", "-i", "--max-time", "10"];
        args.extend_from_slice(extra);
        args.push(&url);
        let (_, out, err) = run(cg.command("curl", &args), Duration::from_secs(20));
        assert!(
            !out.contains(SECRET),
            "{path}: the secret got through: {out}"
        );
        assert!(!out.contains(SSN), "{path}: the SSN got through: {out}");
        format!("{out}{err}")
    };
    let status = |out: &str| out.lines().next().unwrap_or("").trim().to_string();

    let out = get("/reason", &[]);
    assert_eq!(status(&out), "HTTP/1.1 200 OK", "{out}");
    let out = get("/header-name", &[]);
    assert!(!out.to_ascii_lowercase().contains("sk-leak"), "{out}");

    // The stream is read as events whatever the case of its media type.
    let out = get("/sse-upper", &[]);
    let text: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(|t| t.as_str().map(String::from))
        })
        .collect();
    assert_eq!(text, "card [REDACTED:card] end", "{out}");

    let out = get("/json-upper", &[]);
    assert!(out.contains(r#""password":"[REDACTED]""#), "{out}");
    // Another representation of the document: the paths cannot apply.
    // The profile's content_types refuse what it does not list.
    let out = get("/json-as-text", &[]);
    assert!(
        out.contains("502") && out.contains("content_types"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    let out = get("/jsonp", &[]);
    assert!(
        out.contains("502") && out.contains("uninspectable_response"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");

    for path in ["/export.gz", "/identity-gz", "/utf16"] {
        let out = get(path, &[]);
        assert!(
            !out.contains("\u{1f}\u{8b}"),
            "{path}: gzip bytes got through"
        );
        assert!(
            !out.contains("0\u{0}7\u{0}8"),
            "{path}: UTF-16 text got through"
        );
    }
    for path in ["/two-types", "/type-list", "/type-quoted"] {
        let out = get(path, &[]);
        assert!(
            out.contains("502") && out.contains("uninspectable_response"),
            "{path}: {out}"
        );
    }
    let out = get("/export.gz", &[]);
    assert!(
        out.contains("502") && out.contains("uninspectable_response"),
        "{out}"
    );

    // No part of a body is asked for: a range could cut a secret in two.
    let out = get("/range", &["-H", "Range: bytes=0-3,4-9"]);
    assert!(out.contains("range=[]"), "{out}");
}
