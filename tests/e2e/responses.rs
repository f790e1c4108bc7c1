//! Issue 12: nothing secret reaches the skill, in any shape. Responses
//! from a raw upstream that echoes the injected secret inside encodings the
//! masker must either decode or refuse.
use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const SECRET: &str = "sk-RESP-8d3e61aa";

/// Reads a request head; answers with the secret it was sent (from
/// x-api-key), gzip-compressed, under the headers the path names.
fn serve(c: TcpStream) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut key = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("x-api-key:") {
            key = h[h.len() - v.len()..].trim().to_string();
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("you sent {key}\n").as_bytes())
        .unwrap();
    let body = gz.finish().unwrap();
    let mut w = c;
    if path == "/echo-headers" {
        // A careless API: the credential back in every kind of header, and
        // a card number in one.
        let _ = write!(
            w,
            "HTTP/1.1 302 Found\r\nLocation: https://api.test/next?key={key}\r\n\
             Set-Cookie: session={key}; Path=/\r\nWWW-Authenticate: Bearer realm=\"{key}\"\r\n\
             Link: <https://api.test/?k={key}>; rel=next\r\nX-Debug: got {key}\r\n\
             X-Card: 4111 1111 1111 1111\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    if let Some(body) = bombs(&path) {
        let (enc, ctype) = if path.contains("json") {
            ("identity", "application/json")
        } else if path.ends_with("br") {
            ("br", "text/plain")
        } else {
            ("gzip", "text/plain")
        };
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Encoding: {enc}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = w.write_all(body);
        return;
    }
    if let Some(body) = costly(&path, &key) {
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = w.write_all(&body);
        return;
    }
    if path == "/big-echo" {
        // Over the size masked whole: streams, chunked.
        let body = format!("{}you sent {key}\n", "filler line\n".repeat(8192));
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if path == "/echo-encoded" {
        let body = encoded_echoes(&key).join("\n");
        let _ = write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let head = match path.as_str() {
        // Two Content-Encoding headers: the first says identity.
        "/two-encodings" => format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        // A list: identity, then gzip.
        "/encoding-list" => format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: identity, gzip\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        // gzip as a transfer coding under chunked.
        _ => {
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n\
                 {:x}\r\n",
                body.len()
            );
            let _ = w.write_all(&body);
            let _ = w.write_all(b"\r\n0\r\n\r\n");
            return;
        }
    };
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&body);
}

/// A daemon whose one rule injects SECRET (`x-api-key`) into requests to
/// `serve`, masking the responses with the profile `mask` (the lines of a
/// `[mask.pii]` table; none when empty), with `extra` in interceptor.toml.
fn lab(tag: &str, mask: &str, extra: &str) -> (TestCgroup, Upstream, Daemon) {
    let cg = TestCgroup::new(tag);
    let up = Upstream::start("127.0.0.1:0", serve);
    let mut cfg = DaemonConfig::new(&[&cg], "");
    cfg.extra = cfg.credentials(&[("api", SECRET)]) + extra;
    let (profile, masked) = match mask {
        "" => (String::new(), ""),
        m => (format!("[mask.pii]\n{m}\n\n"), "mask = \"pii\"\n"),
    };
    cfg.set_policy(&format!(
        "[credential.api]\nsource = \"file:api\"\nheader = \"x-api-key\"\n\n{profile}\
         [[rule]]\nid = \"api\"\nworkload = {:?}\ndestination = \"{}\"\ninject = \"api\"\n{masked}action = \"allow\"\n",
        cg.rel, up.addr
    ));
    let d = Daemon::start(&cfg);
    (cg, up, d)
}

#[test]
fn stacked_or_duplicate_encodings_are_decoded_or_refused() {
    if !kernel_ready() {
        return;
    }
    let (cg, up, d) = lab("stacked", "", "");
    for path in ["/two-encodings", "/encoding-list", "/transfer-gzip"] {
        let url = format!("http://127.0.0.1:{}{path}", up.addr.port());
        let (_, out, _) = run(
            cg.command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "10",
                    "--compressed",
                    "-w",
                    "\n%{http_code}",
                    &url,
                ],
            ),
            Duration::from_secs(20),
        );
        assert!(
            !out.contains(SECRET),
            "{path}: the secret got through: {out}"
        );
        // The bytes as they arrive: nothing in them decodes to the secret.
        let file = d.cfg.dir.join("raw-body");
        let _ = run(
            cg.command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "10",
                    "--raw",
                    "-o",
                    file.to_str().unwrap(),
                    &url,
                ],
            ),
            Duration::from_secs(20),
        );
        let raw = std::fs::read(&file).unwrap_or_default();
        let mut s = String::new();
        for start in 0..raw.len().min(64) {
            let mut d = flate2::read::GzDecoder::new(&raw[start..]);
            let _ = std::io::Read::read_to_string(&mut d, &mut s);
        }
        assert!(
            !s.contains(SECRET),
            "{path}: gzip bytes with the secret reached the skill"
        );
        assert!(
            out.ends_with("\n502") && out.contains("uninspectable_response"),
            "{path}: {out}"
        );
    }
}

#[test]
fn response_headers_never_carry_the_secret_or_unmasked_data() {
    if !kernel_ready() {
        return;
    }
    let (cg, up, d) = lab("resphdr", "detectors = [\"card\"]", "");
    let url = format!("http://127.0.0.1:{}/echo-headers", up.addr.port());
    let (ok, out, err) = run(
        cg.command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                "-o",
                "/dev/null",
                &url,
            ],
        ),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 302"), "{out}");
    assert!(
        !out.contains(SECRET),
        "the secret came back in a header: {out}"
    );
    assert!(!out.contains("4111 1111 1111 1111"), "{out}");
    for h in [
        "location:",
        "set-cookie:",
        "www-authenticate:",
        "link:",
        "x-debug:",
    ] {
        let line = out
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(h))
            .unwrap_or_else(|| panic!("{h} is gone: {out}"));
        assert!(line.contains("REDACTED"), "{line}");
    }
    // The record counts the masked headers, never their values.
    let sess = d.wait_session(|s| s["requests"].as_u64() == Some(1) && s["state"] == "closed");
    let rec = &d.requests(sess["id"].as_u64().unwrap())[0];
    assert!(
        rec["masked"]["header:injected_secret"].as_u64() >= Some(5),
        "{rec}"
    );
    assert!(!rec.to_string().contains(SECRET));
}

/// The secret as a server might echo it back, encoded.
fn encoded_echoes(key: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    let mut v = vec![
        format!("upper {}", key.to_uppercase()),
        format!("hex {hex}"),
        format!("HEX {}", hex.to_uppercase()),
        format!(
            "json {}",
            key.chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect::<String>()
        ),
        format!(
            "pct {}",
            key.bytes().map(|b| format!("%{b:02X}")).collect::<String>()
        ),
    ];
    for prefix in ["", "u:", "user:"] {
        v.push(format!("b64 {}", STANDARD.encode(format!("{prefix}{key}"))));
        v.push(format!(
            "b64url {}",
            URL_SAFE_NO_PAD.encode(format!("{prefix}{key}"))
        ));
    }
    v
}

#[test]
fn encoded_echoes_of_the_secret_are_scrubbed_and_never_recorded() {
    if !kernel_ready() {
        return;
    }
    let (cg, up, d) = lab("respenc", "detectors = [\"card\"]", "");
    let url = format!("http://127.0.0.1:{}/echo-encoded", up.addr.port());
    let (ok, out, err) = run(
        cg.command("curl", &["-sS", "--max-time", "10", &url]),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    let echoes = encoded_echoes(SECRET);
    assert_eq!(out.lines().count(), echoes.len(), "{out}");
    for (line, echo) in out.lines().zip(&echoes) {
        let (label, sent) = echo.split_once(' ').unwrap();
        assert!(line.starts_with(label), "{line}");
        assert!(
            line.contains("REDACTED"),
            "not scrubbed: {line} (was {sent})"
        );
        // What is left is the encoded prefix and a padding character or
        // two, too little to rebuild the secret.
        let left = line.replace("[REDACTED:injected_secret]", "");
        assert!(left.len() <= label.len() + 10, "{line}");
    }
    // The recorded body is what the skill received.
    let sess = d.wait_session(|s| s["requests"].as_u64() == Some(1) && s["state"] == "closed");
    let rec = d.requests(sess["id"].as_u64().unwrap())[0].to_string();
    for echo in &echoes {
        let (_, sent) = echo.split_once(' ').unwrap();
        assert!(!rec.contains(sent), "recorded: {sent}");
    }
}

/// A masked answer the upstream sent with a length is still one with a
/// length when small (masked whole: `Content-Length` is the masked
/// length, not chunked), and streams chunked when large; the secret is
/// scrubbed either way.
#[test]
fn small_masked_answers_keep_a_content_length() {
    if !kernel_ready() {
        return;
    }
    let (cg, up, _d) = lab("resplen", "detectors = [\"card\"]", "");
    let fetch = |path: &str| {
        let url = format!("http://127.0.0.1:{}{path}", up.addr.port());
        let (ok, out, err) = run(
            cg.command("curl", &["-sS", "-i", "--max-time", "10", &url]),
            Duration::from_secs(20),
        );
        assert!(ok, "{err}");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
        assert!(!body.contains(SECRET), "{path}: secret in {body}");
        assert!(body.contains("REDACTED"), "{path}: not scrubbed: {body}");
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        (
            header("content-length"),
            header("transfer-encoding"),
            body.len(),
        )
    };
    let (len, te, n) = fetch("/echo-encoded");
    assert_eq!(
        len,
        Some(n.to_string()),
        "small: Content-Length of the masked body"
    );
    assert_eq!(te, None, "small: not chunked");
    let (len, te, _) = fetch("/big-echo");
    assert_eq!(len, None, "large: streamed");
    assert_eq!(te.as_deref(), Some("chunked"), "large: chunked");
}

/// 128 MiB of zeros, compressed (a few hundred bytes of brotli, 250 KiB of
/// gzip), and a 9 MiB JSON document; made once.
fn bombs(path: &str) -> Option<&'static [u8]> {
    use std::sync::OnceLock;
    static BR: OnceLock<Vec<u8>> = OnceLock::new();
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    let zeros = || vec![0u8; 1 << 20];
    match path {
        "/bomb-br" => Some(BR.get_or_init(|| {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 1 << 16, 5, 22);
                let z = zeros();
                for _ in 0..128 {
                    w.write_all(&z).unwrap();
                }
            }
            out
        })),
        "/bomb-gz" => Some(GZ.get_or_init(|| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let z = zeros();
            for _ in 0..128 {
                gz.write_all(&z).unwrap();
            }
            gz.finish().unwrap()
        })),
        "/big-json" => Some(JSON.get_or_init(|| {
            let row = r#"{"name":"Ann Lee","ssn":"078-05-1120","note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"#;
            let mut doc = String::from("{\"customers\":[");
            while doc.len() < 9 << 20 {
                doc.push_str(row);
            }
            doc.push_str(r#"{"name":"end"}]}"#);
            doc.into_bytes()
        })),
        _ => None,
    }
}

/// VmRSS or VmHWM (peak) of a process, in KiB.
fn mem_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap()
}

#[test]
fn compression_bombs_keep_the_daemon_within_its_memory_bound() {
    if !kernel_ready() {
        return;
    }
    for p in ["/bomb-br", "/bomb-gz"] {
        bombs(p);
    }
    let (cg, up, d) = lab(
        "bombs",
        "detectors = [\"ssn\"]\njson_paths = [\"$.customers[*].ssn\"]\nmax_inspect = \"10MiB\"",
        "inspect_buffer_mb_per_workload = 24\n",
    );
    let before = mem_kib(d.pid(), "VmRSS");
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", up.addr.port());
    // The bombs decode as they stream: all 128 MiB arrive, masked.
    for p in ["/bomb-br", "/bomb-gz"] {
        let (ok, out, err) = run(
            cg.command(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "120",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    &url(p),
                ],
            ),
            Duration::from_secs(150),
        );
        let records = || {
            d.sessions()
                .iter()
                .flat_map(|s| d.requests(s["id"].as_u64().unwrap()))
                .map(|r| format!("{} {} {}", r["path"], r["status"], r["error"]))
                .collect::<Vec<_>>()
        };
        assert!(ok, "{p}: {err} {:?}", records());
        assert_eq!(out, (128u64 << 20).to_string(), "{p}");
    }
    let peak = mem_kib(d.pid(), "VmHWM");
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 64,
        "the daemon's peak RSS grew by {grown_mib} MiB (bound: 64 MiB over idle)"
    );
}

#[test]
fn concurrent_large_json_bodies_keep_the_daemon_within_its_memory_bound() {
    if !kernel_ready() {
        return;
    }
    bombs("/big-json");
    let (cg, up, d) = lab(
        "bigjson",
        "detectors = [\"email\"]\njson_paths = [\"$.customers[*].ssn\"]\nmax_inspect = \"10MiB\"",
        "inspect_buffer_mb_per_workload = 40\n",
    );
    let before = mem_kib(d.pid(), "VmRSS");
    let url = format!("http://127.0.0.1:{}/big-json", up.addr.port());
    // Eight 9 MiB documents at once: each is masked in full, or refused
    // when the budget is spent; none is sent unmasked.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let cmd = cg.command(
                "curl",
                &["-sS", "--max-time", "120", "-w", "\n%{http_code}", &url],
            );
            std::thread::spawn(move || run(cmd, Duration::from_secs(150)))
        })
        .collect();
    let mut masked = 0;
    for t in clients {
        let (ok, out, err) = t.join().unwrap();
        assert!(ok, "{err}");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        let records = || {
            d.sessions()
                .iter()
                .flat_map(|s| d.requests(s["id"].as_u64().unwrap()))
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r["path"], r["status"], r["error"], r["masked"]
                    )
                })
                .collect::<Vec<_>>()
        };
        assert!(
            !body.contains("078-05-1120"),
            "an SSN went out unmasked ({code}): {:?}",
            records()
        );
        match code {
            "200" => {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["customers"][0]["ssn"], "[REDACTED]");
                masked += 1;
            }
            "502" => assert!(body.contains("uninspectable_response"), "{body}"),
            other => panic!(
                "unexpected status {other}: {}",
                &body[..body.len().min(300)]
            ),
        }
    }
    assert!(masked >= 1, "no document was masked at all");
    let peak = mem_kib(d.pid(), "VmHWM");
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("{masked} of 8 documents masked; peak RSS +{grown_mib} MiB");
    assert!(
        grown_mib <= 64,
        "the daemon's peak RSS grew by {grown_mib} MiB (bound: 64 MiB over idle; {masked} of 8 masked)"
    );
}

/// 2 MiB bodies ending in the secret, percent-escaped: `/backslashes` is
/// runs of backslashes before it, the costliest text for the escaped-secret
/// reader (found by an attack pass); `/prose` is plain sentences.
fn costly(path: &str, key: &str) -> Option<Vec<u8>> {
    let unit: &[u8] = match path {
        "/backslashes" => b"\\\\\\\\\\\\\\\\w",
        "/prose" => b"The quarterly report shows revenue up 7 percent. ",
        _ => return None,
    };
    let mut body: Vec<u8> = unit.iter().copied().cycle().take(2 << 20).collect();
    body.extend(b" tail ");
    for b in key.bytes() {
        body.extend(format!("%{b:02X}").bytes());
    }
    body.push(b'\n');
    Some(body)
}

#[test]
fn a_response_that_costs_too_much_cpu_to_mask_is_cut_off() {
    if !kernel_ready() {
        return;
    }
    let (cg, up, d) = lab(
        "maskcpu",
        "detectors = [\"card\"]",
        "mask_cpu_base_ms = 200\nmask_cpu_ns_per_byte = 200\n",
    );
    let escaped: String = SECRET.bytes().map(|b| format!("%{b:02X}")).collect();
    let fetch = |path: &str| {
        let url = format!("http://127.0.0.1:{}{path}", up.addr.port());
        run(
            cg.command("curl", &["-sS", "--max-time", "60", &url]),
            Duration::from_secs(90),
        )
    };
    // Ordinary text of the same size masks well within the allowance.
    let (ok, out, err) = fetch("/prose");
    assert!(ok, "{err}");
    assert!(out.len() > 2 << 20, "{}", out.len());
    assert!(
        out.ends_with("tail [REDACTED:injected_secret]\n"),
        "{}",
        &out[out.len() - 80..]
    );
    // The costly one is cut off, and nothing past the cut reaches the skill.
    let (ok, out, err) = fetch("/backslashes");
    assert!(!ok, "the whole costly body arrived ({} bytes)", out.len());
    assert!(out.len() < 2 << 20, "{} bytes arrived: {err}", out.len());
    assert!(!out.contains(&escaped) && !out.contains(SECRET));
    let sess = d.wait_session(|s| {
        s["requests"].as_u64() == Some(1)
            && s["state"] == "closed"
            && s["bytes_down"].as_u64() < Some(2 << 20)
    });
    let cut = &d.requests(sess["id"].as_u64().unwrap())[0];
    assert_eq!(cut["path"], "/backslashes", "{cut}");
    assert!(cut["error"].as_str().unwrap_or("").contains("CPU"), "{cut}");
}
