#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the build and the
# tests need (hwloc; curl, psql and systemd for the daemon's tests; a
# PostgreSQL server for lookup tables), then format
# check, clippy with warnings as errors, and every test (unit, integration,
# end-to-end CLI and daemon, crash and full-disk tests, doc tests). Runs as
# root: the full-disk test mounts a small tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
pkg-config --exists hwloc 2>/dev/null || need_packages+=(libhwloc-dev libudev-dev pkg-config)
# The daemon's tests drive it with curl and verify its systemd unit.
command -v curl >/dev/null || need_packages+=(curl)
command -v systemd-analyze >/dev/null || need_packages+=(systemd)
command -v psql >/dev/null || need_packages+=(postgresql-client)
# Lookup tables load from a real PostgreSQL server the tests start.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_packages+=(postgresql)
if [ "${#need_packages[@]}" -gt 0 ]; then
  echo "== installing ${need_packages[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

# One target directory outside the clone, shared by every build and run,
# so CI and developers never compile DataFusion twice.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Test and bench executables of earlier dependency sets are never reused
# and take ~1 GB each: drop those untouched for a day so the shared target
# directory does not fill the disk.
for deps in "$CARGO_TARGET_DIR"/debug/deps "$CARGO_TARGET_DIR"/release/deps; do
  if [ -d "$deps" ]; then
    find "$deps" -maxdepth 1 -type f ! -name '*.*' -mtime +1 -delete
  fi
done

# The shard threads' counting allocator is on for every build here, so
# tests/allocations.rs runs and nothing is compiled twice.
features=(--features laminar-db/allocation-tracking)
echo "== cargo fmt"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings
echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace "${features[@]}" 2>&1 | tee "$log"
# The differential suites again, with every expression interpreted and
# with every kernel compiled before the first batch (the run above is
# adaptive: kernels arrive while streams run).
for mode in off eager; do
  echo "== differential suites with LAMINARDB_JIT=$mode"
  LAMINARDB_JIT=$mode cargo test "${features[@]}" --test oracle --test joins 2>&1 | tee -a "$log"
done
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "suite: %d passed, %d failed\n", p, f }' "$log"
