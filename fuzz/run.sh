#!/usr/bin/env bash
# Runs the fuzz targets: `fuzz/run.sh [SECONDS] [TARGET...]` (default: 30 s
# each, every target). Needs the nightly toolchain; installs cargo-fuzz if
# missing. A finding stops the run with its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(event_parse client_ip)

cargo --list | grep -qE "^\s+fuzz\b" || cargo install --locked cargo-fuzz@0.13.2

for target in "${targets[@]}"; do
  corpus=(fuzz/corpus/"$target")
  mkdir -p "${corpus[0]}"
  # Committed seeds are read, never written: new finds go to fuzz/corpus.
  [ -d fuzz/seeds/"$target" ] && corpus+=(fuzz/seeds/"$target")
  options=(-max_total_time="$seconds" -rss_limit_mb=1024)
  [ -f fuzz/"$target".dict ] && options+=(-dict=fuzz/"$target".dict)
  echo "fuzzing $target for ${seconds}s"
  # No sanitizer: the targets are safe Rust, and panics (overflow checks on,
  # -a) are what we look for. This keeps executions fast.
  cargo +nightly fuzz run --sanitizer none --debug-assertions "$target" \
    "${corpus[@]}" -- "${options[@]}"
done
