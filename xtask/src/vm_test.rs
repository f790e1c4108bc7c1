//! `cargo xtask vm-test`: the package and the end-to-end suite in a booted
//! Debian 12 VM with systemd as PID 1 (the development machines have none).
//!
//! 1. Builds the Debian package (`cargo xtask deb`).
//! 2. Builds a Debian 12 guest image from Debian's packages with mmdebstrap
//!    (cached in target/vm/, keyed by the recipe below): an ext4 root file
//!    system plus the image's own kernel and initramfs.
//! 3. Boots it with qemu-system-x86_64, kernel booted directly, the package
//!    and `vagrant/guest/` shared read-write over 9p. TCG unless KVM is known
//!    to work (INTERCEPTOR_VM_ACCEL=kvm|tcg overrides).
//! 4. The guest runs `vagrant/guest/vm-runner.sh` at each boot: the suite's
//!    main phase, a reboot, the after-reboot phase, a power cut under load
//!    (a reset with no sync), the after-power-cut phase, then it powers off.
//! 5. Reads the results back from the share; any failed check, a missing
//!    phase or a timeout fails the task, with the guest's logs.
use crate::{lab, run_cmd, workspace_root};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Packages in the guest besides the minimal base.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-amd64",
    "kmod",
    "iproute2",
    "curl",
    "ca-certificates",
    "python3",
    "openssl",
    "procps",
];

const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

/// Runs the suite from the share at every boot; see vagrant/guest/vm-runner.sh.
const SUITE_UNIT: &str = "[Unit]
Description=interceptor VM suite (cargo xtask vm-test)
After=multi-user.target mnt-share.mount
Requires=mnt-share.mount

[Service]
Type=oneshot
ExecStart=/bin/bash /mnt/share/guest/vm-runner.sh
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const FSTAB: &str = "/dev/vda / ext4 rw,errors=remount-ro 0 1
share /mnt/share 9p trans=virtio,version=9p2000.L,msize=262144 0 0
";

/// Bump when the image recipe changes in a way the key does not see.
const RECIPE_VERSION: u32 = 1;

/// The whole run, boots included, must end within this (TCG is slow).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);

pub fn run() -> Result<()> {
    lab::require_root()?;
    for tool in ["mmdebstrap", "mkfs.ext4", "qemu-system-x86_64"] {
        if crate::which(tool).is_none() {
            bail!("{tool} is not installed; run scripts/setup.sh (it installs the VM tools)");
        }
    }
    let pkg = crate::deb::run()?;
    let image = image()?;
    let run_dir = workspace_root().join("target/vm/run");
    let _ = std::fs::remove_dir_all(&run_dir);
    let share = run_dir.join("share");
    std::fs::create_dir_all(share.join("guest"))?;
    std::fs::create_dir_all(share.join("results"))?;
    std::fs::copy(&pkg, share.join("interceptor.deb"))?;
    for e in std::fs::read_dir(workspace_root().join("vagrant/guest"))? {
        let p = e?.path();
        // Files only (a local __pycache__ is not part of the suite).
        if p.is_file() {
            std::fs::copy(&p, share.join("guest").join(p.file_name().unwrap()))?;
        }
    }
    let console = run_dir.join("console.log");
    let started = Instant::now();
    let outcome = boot(&image, &share, &console);
    eprintln!("vm-test: guest ran for {:.0?}", started.elapsed());
    report(&share.join("results"), &console, outcome)
}

/// The cached image: rootfs.raw, vmlinuz, initrd.img.
struct Image {
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn image() -> Result<Image> {
    let cache = std::env::var_os("INTERCEPTOR_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/vm"));
    let key = recipe_key();
    let dir = cache.join(format!("image-{key:016x}"));
    let img = Image {
        rootfs: dir.join("rootfs.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if img.rootfs.is_file() && img.kernel.is_file() && img.initrd.is_file() {
        eprintln!("vm-test: cached image {}", dir.display());
        return Ok(img);
    }
    eprintln!(
        "vm-test: building the Debian 12 guest image in {} (mmdebstrap)",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&cache)?;
    let tree = cache.join(format!("tree-{key:016x}"));
    let _ = std::fs::remove_dir_all(&tree);
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("bookworm")
        .arg(&tree)
        .args(SOURCES);
    run_cmd(&mut cmd)?;
    customize(&tree)?;
    let boot = tree.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .with_context(|| format!("no {prefix}* in the image's /boot"))
    };
    let building = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)?;
    std::fs::copy(find("vmlinuz-")?, building.join("vmlinuz"))?;
    std::fs::copy(find("initrd.img-")?, building.join("initrd.img"))?;
    // mkfs.ext4 -d fills the file system from the tree: no loop device, no mount.
    run_cmd(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&tree)
            .arg(building.join("rootfs.raw"))
            .arg("3G"),
    )?;
    std::fs::rename(&building, &dir)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(img)
}

/// What the image is made of, hashed (FNV-1a: stable across Rust versions,
/// unlike std's hasher, so a cache survives a toolchain update).
fn recipe_key() -> u64 {
    let recipe = format!("{RECIPE_VERSION}\n{PACKAGES:?}\n{SOURCES:?}\n{SUITE_UNIT}\n{FSTAB}");
    recipe.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Makes the tree bootable as a VM that runs the suite and nothing else.
fn customize(tree: &Path) -> Result<()> {
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = tree.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("etc/fstab", FSTAB)?;
    write("etc/hostname", "interceptor-vm\n")?;
    write(
        "etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 interceptor-vm\n::1 localhost\n",
    )?;
    write("etc/systemd/system/vm-suite.service", SUITE_UNIT)?;
    std::fs::create_dir_all(tree.join("mnt/share"))?;
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("vm-suite.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/vm-suite.service", link)?;
    Ok(())
}

/// KVM only where it is known to boot a stock kernel: hardware virtualization
/// is advertised and this is not a kvm_pvm (nested, paravirtual) host.
fn accel() -> String {
    if let Ok(a) = std::env::var("INTERCEPTOR_VM_ACCEL") {
        return a;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm".into()
    } else {
        "tcg,thread=multi".into()
    }
}

enum Outcome {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Boots the guest and waits for it to power off, echoing its console.
fn boot(img: &Image, share: &Path, console: &Path) -> Result<Outcome> {
    let accel = accel();
    let timeout = std::env::var("INTERCEPTOR_VM_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    eprintln!("vm-test: booting (accel {accel}, timeout {timeout:?})");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", &accel, "-smp", "2", "-m", "2048",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args([
            "-append",
            "root=/dev/vda rw console=ttyS0 quiet panic=10 systemd.show_status=false",
        ])
        // snapshot=on: the guest's writes go to a temporary file, so the
        // cached image stays pristine; they survive the guest's reboot.
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            img.rootfs.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            share.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let out = child.stdout.take().unwrap();
    let console = console.to_path_buf();
    let echo = std::thread::spawn(move || -> Result<()> {
        let mut log = std::fs::File::create(&console)?;
        for line in BufReader::new(out).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            writeln!(log, "{line}")?;
            // The suite's lines (vm-suite.service echoes them to the console)
            // and the kernel's complaints; the rest is in the log.
            let t = line.trim_start_matches(|c: char| c.is_control());
            if t.contains(" bash[") || t.contains("Kernel panic") || t.contains("Oops") {
                eprintln!("guest| {t}");
            }
        }
        Ok(())
    });
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break Outcome::Exited(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = echo.join();
    Ok(outcome)
}

/// Fails loudly, with the guest's logs, unless both phases ran clean.
fn report(results: &Path, console: &Path, outcome: Result<Outcome>) -> Result<()> {
    let read = |name: &str| std::fs::read_to_string(results.join(name)).unwrap_or_default();
    let lines = read("results.txt");
    let phases = read("phases");
    let passed = lines.lines().filter(|l| l.starts_with("ok - ")).count();
    let failed: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with("not ok - "))
        .collect();
    let mut problems = Vec::new();
    match outcome? {
        Outcome::TimedOut => problems.push("the guest did not power off in time".to_string()),
        Outcome::Exited(s) if !s.success() => problems.push(format!("qemu exited with {s}")),
        Outcome::Exited(_) => {}
    }
    for phase in ["main", "after-reboot", "after-power-cut"] {
        if !phases.lines().any(|l| l == format!("{phase} rc=0")) {
            problems.push(format!(
                "phase {phase} did not finish clean (phases: {:?})",
                phases.trim()
            ));
        }
    }
    if !failed.is_empty() {
        problems.push(format!("{} checks failed", failed.len()));
    }
    println!("vm-test: {passed} checks passed, {} failed", failed.len());
    if problems.is_empty() {
        for l in lines.lines().filter(|l| l.starts_with("# ")) {
            println!("  {l}");
        }
        return Ok(());
    }
    eprintln!("\n===== vm-test results =====\n{lines}");
    for log in [
        "interceptor-main.log",
        "interceptor-after-reboot.log",
        "interceptor-after-power-cut.log",
    ] {
        let text = read(log);
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("\n===== {log} (last 60 lines) =====");
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
    }
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(80).collect();
    eprintln!(
        "\n===== guest console (last 80 lines; all in {}) =====",
        console.display()
    );
    for l in tail.into_iter().rev() {
        eprintln!("{l}");
    }
    eprintln!("(full journals: {})", results.display());
    bail!("vm-test failed: {}", problems.join("; "))
}
