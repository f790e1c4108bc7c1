//! `cargo xtask deb`: the Debian package, built with dpkg-deb from the
//! release binary and `packaging/`. Writes target/debian/interceptor_VERSION_ARCH.deb.
use crate::{run_cmd, workspace_root};
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default configuration, installed as a conffile.
const CONFIG: &str = r#"# interceptor daemon configuration (see /usr/share/doc/interceptor/README.md).
# Every key is optional; these are the defaults.

# Workload cgroups, relative to the cgroup2 mount: skills run in skills.slice.
cgroups = ["skills.slice"]
listen = "15001"
admin_listen = "127.0.0.1:15000"
admin_socket = "/run/interceptor/admin.sock"
policies = "/etc/interceptor/policies"
state_dir = "/var/lib/interceptor"
credentials_dir = "/etc/interceptor/credentials"
# UDP (DNS included) from skills is refused; "allow" lets it out unrecorded.
udp = "deny"
# Sockets skills may create besides TCP; every other kind fails with EPERM
# at socket() (ICMP ping, SCTP, raw, vsock, ...). "udp", "icmp", "sctp" go
# out directly, unrecorded.
allow_sockets = ["mptcp", "unix", "netlink-route", "netlink-diag"]
# approvers_group = "interceptor-approvers"
# approval_webhook = "https://hooks.example.com/..."
"#;

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    install -d -m 0700 /etc/interceptor/credentials
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        systemctl enable interceptor.service >/dev/null || true
        # A restart keeps the pinned hooks: skills stay blocked, never open.
        systemctl restart interceptor.service || true
        # The gate of skills.slice: it checks that the hooks are attached.
        systemctl start interceptor-hooks.service || true
    fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    systemctl stop interceptor.service || true
    # Removing the package removes the hooks: skills connect directly again.
    /usr/bin/interceptor detach || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ "$1" = "purge" ]; then
    rm -rf /var/lib/interceptor
fi
"#;

pub fn run() -> Result<PathBuf> {
    let bin = crate::lab::build_release()?;
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()?
            .stdout,
    )?
    .trim()
    .to_string();
    let stage = root.join("target/debian/stage");
    let _ = fs::remove_dir_all(&stage);
    let put = |rel: &str, data: &[u8], mode: u32| -> Result<()> {
        let p = stage.join(rel);
        fs::create_dir_all(p.parent().unwrap())?;
        fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/interceptor", &fs::read(&bin)?, 0o755)?;
    // The release profile keeps line tables for backtraces; the package
    // ships without debug info.
    run_cmd(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(stage.join("usr/bin/interceptor")),
    )?;
    put(
        "lib/systemd/system/interceptor.service",
        &fs::read(root.join("packaging/interceptor.service"))?,
        0o644,
    )?;
    put(
        "lib/systemd/system/interceptor-hooks.service",
        &fs::read(root.join("packaging/interceptor-hooks.service"))?,
        0o644,
    )?;
    put(
        "lib/systemd/system/skills.slice",
        &fs::read(root.join("packaging/skills.slice"))?,
        0o644,
    )?;
    put("etc/interceptor/interceptor.toml", CONFIG.as_bytes(), 0o644)?;
    // Active by default: the guardrails only, so everything else is denied.
    put(
        "etc/interceptor/policies/00-guardrails.toml",
        &fs::read(root.join("policies/00-guardrails.toml"))?,
        0o644,
    )?;
    for e in fs::read_dir(root.join("policies"))? {
        let p = e?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        put(
            &format!("usr/share/doc/interceptor/examples/{name}"),
            &fs::read(&p)?,
            0o644,
        )?;
    }
    put(
        "usr/share/doc/interceptor/examples/example-skill.service",
        &fs::read(root.join("packaging/example-skill.service"))?,
        0o644,
    )?;
    put(
        "usr/share/doc/interceptor/README.md",
        &fs::read(root.join("README.md"))?,
        0o644,
    )?;
    let size_kb = dir_size(&stage)? / 1024;
    let control = format!(
        "Package: interceptor\nVersion: {version}\nArchitecture: {arch}\nMaintainer: interceptor developers <dev@interceptor.invalid>\n\
         Installed-Size: {size_kb}\nDepends: libc6, systemd\nSection: net\nPriority: optional\n\
         Description: transparent access gateway for AI agent skills\n \
         An eBPF cgroup connect hook sends every outbound connection of the processes\n \
         in skills.slice to a local proxy that attributes it, decides by policy,\n \
         injects credentials, masks responses, holds risky requests for approval and\n \
         records every session in a hash-chained audit log.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        "DEBIAN/conffiles",
        b"/etc/interceptor/interceptor.toml\n/etc/interceptor/policies/00-guardrails.toml\n",
        0o644,
    )?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let out = root.join(format!("target/debian/interceptor_{version}_{arch}.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&out),
    )?;
    if !out.is_file() {
        bail!("dpkg-deb did not write {}", out.display());
    }
    eprintln!("package: {}", out.display());
    Ok(out)
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}
