//! Issue 11, item 5: a credential goes only to an upstream the proxy
//! authenticated (TLS verified for the host) or to a destination the rule
//! pins; a passthrough tunnel only to a pinned destination. A skill that
//! names an allowed host in cleartext, or an allowed SNI, towards an address
//! of its choosing gets nothing.
use crate::harness::*;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "ghp-PEERS-7e1d";

fn policy_check(files: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "interceptor-peers-{}-{}",
        std::process::id(),
        files.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mut c = Command::new(BIN);
    c.args(["policy", "check"]).arg(&dir);
    let (ok, out, err) = run(c, Duration::from_secs(20));
    std::fs::remove_dir_all(&dir).unwrap();
    (ok, format!("{out}{err}"))
}

#[test]
fn policy_check_refuses_rules_that_could_hand_a_credential_to_any_peer() {
    // The shape of the old policies/60-github.toml: host only.
    let (ok, out) = policy_check(&[(
        "a.toml",
        "[credential.gh]\nsource = \"file:gh\"\nheader = \"Authorization\"\n\n\
         [[rule]]\nid = \"gh\"\nhost = \"api.github.com\"\ninject = \"gh\"\naction = \"allow\"\n",
    )]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("a.toml:8:10: rule \"gh\" injects credential \"gh\"")
            && out.contains("scheme = \"https\"")
            && out.contains("destination"),
        "{out}"
    );
    // A wildcard destination pins nothing.
    let (ok, out) = policy_check(&[(
        "a.toml",
        "[credential.gh]\nsource = \"file:gh\"\nheader = \"Authorization\"\n\n\
         [[rule]]\nid = \"gh\"\ndestination = \"*:80\"\ninject = \"gh\"\naction = \"allow\"\n",
    )]);
    assert!(!ok && out.contains("a.toml:8:10:"), "{out}");
    // Passthrough matched by the SNI the client chose.
    let (ok, out) = policy_check(&[(
        "p.toml",
        "[[rule]]\nid = \"pinned\"\nhost = \"pinned.test\"\ntls = \"passthrough\"\naction = \"allow\"\n",
    )]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("p.toml:4:7: rule \"pinned\"") && out.contains("destination"),
        "{out}"
    );
    // The fixed shapes pass.
    let (ok, out) = policy_check(&[(
        "a.toml",
        "[credential.gh]\nsource = \"file:gh\"\nheader = \"Authorization\"\n\n\
         [[rule]]\nid = \"gh\"\nhost = \"api.github.com\"\nscheme = \"https\"\ninject = \"gh\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"local\"\ndestination = \"127.0.0.1:8080\"\ninject = \"gh\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"pinned\"\nhost = \"pinned.test\"\ndestination = \"10.0.0.5:443\"\ntls = \"passthrough\"\naction = \"allow\"\n",
    )]);
    assert!(ok, "{out}");
    // The shipped examples pass.
    let examples = format!("{}/../policies", env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new(BIN);
    c.args(["policy", "check", &examples]);
    let (ok, out, err) = run(c, Duration::from_secs(20));
    assert!(ok, "{out}{err}");
}

#[test]
fn cleartext_or_a_chosen_sni_towards_another_address_gets_no_credential() {
    if !kernel_ready() {
        return;
    }
    let cg = TestCgroup::new("peers");
    let pki_dir =
        std::env::temp_dir().join(format!("interceptor-peers-pki-{}", std::process::id()));
    std::fs::create_dir_all(&pki_dir).unwrap();
    let pki = TestPki::new(&pki_dir, "upstream");
    let real = HttpUpstream::start("127.0.0.1:0", Some(&pki));
    // What the skill points at instead: a listener of its choosing.
    let rogue = HttpUpstream::start("127.0.0.1:0", None);
    let rogue_tls = Upstream::echo("127.0.0.1:0");
    let mut cfg = DaemonConfig::new(&[&cg], "");
    let creds = cfg.credentials(&[("gh", SECRET)]);
    cfg.extra = format!("{creds}upstream_ca_files = [{:?}]\n", pki.ca_pem);
    cfg.set_policy(&format!(
        "[credential.gh]\nsource = \"file:gh\"\nheader = \"Authorization\"\nformat = \"Bearer {{secret}}\"\n\n\
         [[rule]]\nid = \"pinned\"\nworkload = {w:?}\nhost = \"pinned.test\"\ndestination = \"{real}\"\ntls = \"passthrough\"\naction = \"allow\"\n\n\
         [[rule]]\nid = \"api\"\nworkload = {w:?}\nhost = \"api.test\"\nscheme = \"https\"\ninject = \"gh\"\naction = \"allow\"\n",
        w = cg.rel,
        real = real.addr,
    ));
    let d = Daemon::start(&cfg);
    let ca = cfg.ca_file().to_string_lossy().into_owned();

    // Over TLS to the real upstream the credential is injected.
    let resolve = format!("api.test:{}:127.0.0.1", real.addr.port());
    let url = format!("https://api.test:{}/echo", real.addr.port());
    let (ok, out, err) = run(
        cg.command(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                &url,
            ],
        ),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&sha256_str(&format!("Bearer {SECRET}"))),
        "the allowed TLS request got no credential: {out}"
    );

    // Cleartext `Host: api.test` to the rogue listener: refused, nothing sent.
    let url = format!("http://127.0.0.1:{}/echo", rogue.addr.port());
    let (_, out, _) = run(
        cg.command(
            "curl",
            &["-sS", "--max-time", "10", "-H", "Host: api.test", &url],
        ),
        Duration::from_secs(30),
    );
    assert!(out.contains("\"error\":\"denied\""), "{out}");
    assert_eq!(rogue.requests(), 0, "the rogue listener was reached");

    // SNI pinned.test towards another address: no tunnel is opened.
    let resolve = format!("pinned.test:{}:127.0.0.1", rogue_tls.addr.port());
    let url = format!("https://pinned.test:{}/", rogue_tls.addr.port());
    let (ok, _, _) = run(
        cg.command(
            "curl",
            &["-sS", "--max-time", "10", "-k", "--resolve", &resolve, &url],
        ),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert_eq!(
        rogue_tls.accepted(),
        0,
        "a tunnel went to the rogue address"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&pki_dir);
}
