#!/usr/bin/env bash
# What traces cost: the relay with telemetry.otlp_endpoint unset (the default:
# a traceparent on every message, no span) against the same relay exporting
# every webhook's spans over OTLP/HTTP to a sink that answers 200 (a local
# Python server), saturation rounds alternating. With BASE_REV=<commit>, a
# third relay built from that commit (before traces) joins each round.
#
#   bench/traces.sh                  results in bench/last-traces-run.md
#   BASE_REV=94061e4 bench/traces.sh
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl; installs oha if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MESSAGES=${MESSAGES:-20000}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-5}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18280} ADMIN_PORT=${ADMIN_PORT:-19280} SINK_PORT=${SINK_PORT:-14318}
work=$(mktemp -d)
stamp=$(date +%s)
names=(off otlp)
[ -n "${BASE_REV:-}" ] && names+=(before)
pids="" sink_pid=""
cleanup() {
  for pid in $pids; do stop "$pid"; done
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null
  for name in "${names[@]}"; do delete_topology "bench-traces-$stamp-$name"; done
  [ -n "${BASE_REV:-}" ] && git worktree remove --force "$work/base" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

command -v oha >/dev/null || cargo install --locked oha
echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay
cp target/release/hookrelay "$work/hookrelay-now"
binary_now="$work/hookrelay-now"
if [ -n "${BASE_REV:-}" ]; then
  # Built in the same target folder, so only hookrelay itself compiles again;
  # both binaries are copied out first.
  git worktree add -q --detach "$work/base" "$BASE_REV"
  (cd "$work/base" && cargo build --release -j2 --quiet --bin hookrelay --target-dir "$OLDPWD/target")
  cp target/release/hookrelay "$work/hookrelay-before"
  binary_before="$work/hookrelay-before"
fi

# The OTLP sink: takes every export, answers 200, counts the bytes.
python3 - "$SINK_PORT" "$work/sink.bytes" <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
total = 0
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global total
        total += len(self.rfile.read(int(self.headers.get("content-length", 0))))
        open(out, "w").write(str(total))
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
sink_pid=$!

n=0
declare -A port_of pid_of
for name in "${names[@]}"; do
  relay_config "$work/$name.toml" "bench-traces-$stamp-$name" $((PORT + n)) $((ADMIN_PORT + n)) "$work/$name.sqlite" true
  [ "$name" = otlp ] && printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\n' "$SINK_PORT" >> "$work/$name.toml"
  binary=$binary_now
  [ "$name" = before ] && binary=$binary_before
  pid_of[$name]=$(start "$binary" "$name" $((ADMIN_PORT + n)))
  pids="$pids ${pid_of[$name]}"
  port_of[$name]=$((PORT + n))
  n=$((n + 1))
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'
echo "== saturation: $ROUNDS rounds of ${names[*]} ($MESSAGES webhooks, $CONNECTIONS in flight)"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${names[@]}"; do
    t0=$(ticks "${pid_of[$name]}")
    oha --no-tui --output-format json -m POST -H 'content-type: application/json' \
      -H 'x-client-id: bench-client' -d "$body" -n "$MESSAGES" -c "$CONNECTIONS" \
      "http://127.0.0.1:${port_of[$name]}/webhooks" > "$work/$name-$round.json"
    echo $(($(ticks "${pid_of[$name]}") - t0)) > "$work/$name-$round.cpu"
    rabbitmqctl -q purge_queue "bench-traces-$stamp-$name.all" >/dev/null
  done
done
otlp_rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/${pid_of[otlp]}/status")
off_rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/${pid_of[off]}/status")
stop "${pid_of[otlp]}"  # exports what is buffered
sink_bytes=$(cat "$work/sink.bytes" 2>/dev/null || echo 0)

python3 - "$work" "$ROUNDS" "$sink_bytes" "$otlp_rss" "$off_rss" "${names[@]}" <<'PY' | tee bench/last-traces-run.md
import json, statistics, sys
work, rounds, sink_bytes, otlp_rss, off_rss, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
def load(name): return json.load(open(f"{work}/{name}.json"))
def rate(name): return load(name)["summary"]["requestsPerSec"]
def p(name, q): return load(name)["latencyPercentiles"][q] * 1000
def cpu(name): return int(open(f"{work}/{name}.cpu").read()) * 1000 / sum(load(name)["statusCodeDistribution"].values())
for r in range(1, rounds + 1):
    for name in names:
        codes = load(f"{name}-{r}")["statusCodeDistribution"]
        assert codes.get("200", 0) == sum(codes.values()), f"{name}-{r}: {codes}"
print("| relay | webhooks/s (median) | p50 ms | p99 ms | relay CPU ticks per 1000 webhooks |")
print("|---|---|---|---|---|")
for name in names:
    runs = [f"{name}-{r}" for r in range(1, rounds + 1)]
    med = lambda f: statistics.median(f(x) for x in runs)
    print(f"| {name} | {med(rate):.0f} | {med(lambda x: p(x, 'p50')):.2f} | {med(lambda x: p(x, 'p99')):.2f} | {med(cpu):.1f} |")
ratios = [rate(f"otlp-{r}") / rate(f"off-{r}") for r in range(1, rounds + 1)]
print(f"\notlp/off throughput, median over {rounds} rounds: {statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
if "before" in names:
    ratios = [rate(f"off-{r}") / rate(f"before-{r}") for r in range(1, rounds + 1)]
    print(f"off/before throughput, median: {statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
webhooks = rounds * sum(load("otlp-1")["statusCodeDistribution"].values())
print(f"OTLP JSON exported: {sink_bytes / 1e6:.1f} MB, {sink_bytes / webhooks:.0f} bytes per webhook; relay RSS after, otlp / off: {otlp_rss / 1024:.1f} / {off_rss / 1024:.1f} MiB (one clock tick = 10 ms)")
PY
