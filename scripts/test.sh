#!/usr/bin/env bash
# The whole test suite, on a fresh machine, as root: installs the toolchain,
# builds the eBPF object, then runs every test (unit tests and the
# end-to-end tests on the real kernel, which are never skipped here).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo xtask build-ebpf"
cargo xtask build-ebpf
echo "==> policy examples"
cargo run --quiet -p interceptor -- policy check policies
echo "==> cargo xtask deb (the package holds what the units and docs promise)"
cargo xtask deb
deb=$(ls target/debian/interceptor_*.deb)
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/interceptor ./lib/systemd/system/interceptor.service ./lib/systemd/system/skills.slice \
         ./lib/systemd/system/interceptor-hooks.service \
         ./etc/interceptor/interceptor.toml ./etc/interceptor/policies/00-guardrails.toml; do
    grep -q " $f\$" <<<"$contents" || { echo "package lacks $f" >&2; exit 1; }
done
# grep without -q in pipelines: an early exit would SIGPIPE the writer (pipefail).
dpkg-deb --info "$deb" | grep "Package: interceptor" >/dev/null
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep /etc/interceptor/interceptor.toml >/dev/null
# The shipped configuration and policy load.
stage=target/debian/stage
./target/release/interceptor policy check "$stage/etc/interceptor/policies"
./target/release/interceptor ca export --config "$stage/etc/interceptor/interceptor.toml" \
    --state-dir "$(mktemp -d)" | grep "BEGIN CERTIFICATE" >/dev/null

# Gates: formatting and lints, both workspaces (the eBPF crate builds with
# Debian's rustc, which ships no clippy: rustfmt only there). Workspace lints
# (Cargo.toml) include undocumented_unsafe_blocks: every unsafe block says
# why it is sound.
echo "==> cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
rustfmt --edition 2024 --check interceptor-ebpf/src/main.rs
cargo clippy --workspace --all-targets -- -D warnings
# Dependencies: permissive licenses, one TLS stack, crates.io only
# (deny.toml; both workspaces).
echo "==> cargo deny check licenses bans sources"
cargo deny check licenses bans sources
cargo deny --manifest-path interceptor-ebpf/Cargo.toml check licenses bans sources

echo "==> cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets 2>&1 | tee "$log"

# The package under a booted systemd, in a Debian 12 VM (Debian's 6.1 kernel):
# install, injection, masking, denial, approval, SIGKILL, broken reload,
# restart and upgrade without a gap, reboot ordering. Fails with the guest's logs.
echo "==> cargo xtask vm-test"
cargo xtask vm-test 2>&1 | tee -a "$log"

# One closing line for the whole run (cargo prints one per test binary; the
# VM suite's checks count one each).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     /^vm-test: [0-9]+ checks passed, [0-9]+ failed/ { p += $2; f += $5 }
     END { printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
