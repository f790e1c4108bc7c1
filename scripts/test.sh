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
echo "==> cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\nsummary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
