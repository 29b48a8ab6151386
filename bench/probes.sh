#!/usr/bin/env bash
# Whether the probes answer within 100 ms whatever the console does (issue
# 36, item 2), measured in one run:
#
#   bench/probes.sh          results in bench/last-probes-run.md (about 3 minutes)
#   bench/probes.sh --smoke  seconds, to keep the script from rotting
#
# A relay with the console on and ACCOUNTS accounts in its history (their
# announcements with them, as a relay leaves them), caught up. A prober asks
# GET /healthz, /readyz and /metrics in turn, a new connection each time as
# a kubelet or a balancer does, every 20 ms, for SECS seconds, in each of
# four phases:
#   1. the console idle;
#   2. CLIENTS clients paging through every account (/api/accounts, 500 a
#      page) and the newest events (/api/events?limit=500), as fast as they
#      are answered;
#   3. the same, with two CPU burners beside it (a build on a 2-core
#      machine: every core busy);
#   4. the CPU burners alone.
# Per phase and endpoint: median, 99th percentile, slowest, and how many
# answers took over 100 ms.
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ACCOUNTS=${ACCOUNTS:-12000} SECS=${SECS:-30} CLIENTS=${CLIENTS:-3}
if [ "${1:-}" = --smoke ]; then ACCOUNTS=600 SECS=2; fi
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18380} ADMIN_PORT=${ADMIN_PORT:-19380}
TOKEN=bench-console-token-0123456789

work=$(mktemp -d)
exchange="bench-probes-$(date +%s)"
relay_pid="" pids=""
cleanup() {
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  [ -n "$relay_pid" ] && stop "$relay_pid"
  delete_topology "$exchange"
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay --example history_fill
relay_config "$work/relay.toml" "$exchange" "$PORT" "$ADMIN_PORT" "$work/spool.sqlite" true
printf '[admin]\ntoken = "%s"\n' "$TOKEN" >> "$work/relay.toml"
relay_pid=$(start target/release/hookrelay relay "$ADMIN_PORT")

echo "== $ACCOUNTS accounts into the history, each with its announcement"
target/release/examples/history_fill --stream "$exchange.history" --events $((ACCOUNTS * 2)) \
  --accounts "$ACCOUNTS" --announced > /dev/null
api() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/api$1"; }
until api "/accounts?limit=1" > /dev/null 2>&1 \
  && [ "$(api /status | python3 -c 'import json,sys; print(json.load(sys.stdin)["accounts"]["accounts"])')" -ge "$ACCOUNTS" ]; do
  sleep 0.5
done

console_clients() { # pages through every account and the newest events, again and again
  exec python3 - "$ADMIN_PORT" "$TOKEN" <<'PY'
import http.client, json, sys, urllib.parse
port, token = int(sys.argv[1]), sys.argv[2]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def get(path):
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    answer = connection.getresponse()
    body = answer.read()
    assert answer.status == 200, (path, answer.status, body[:200])
    return json.loads(body)
while True:
    cursor = None
    while True:
        page = get("/api/accounts?limit=500" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))
        cursor = page.get("next_cursor")
        if not cursor:
            break
    get("/api/events?limit=500")
PY
}
burner() { exec sha256sum /dev/zero > /dev/null; }

probe() { # PHASE: SECS seconds of probes, a new connection each
  python3 - "$ADMIN_PORT" "$SECS" > "$work/$1.json" <<'PY'
import http.client, json, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
times = {"/healthz": [], "/readyz": [], "/metrics": []}
end = time.monotonic() + secs
while time.monotonic() < end:
    for path in times:
        start = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", path)
        answer = connection.getresponse()
        answer.read()
        connection.close()
        times[path].append((time.monotonic() - start) * 1000)
        assert answer.status == 200, (path, answer.status)
        time.sleep(0.02)
print(json.dumps(times))
PY
}

echo "== 1. the console idle ($SECS s)"
probe idle
echo "== 2. $CLIENTS console clients paging through every account and the newest events"
for _ in $(seq "$CLIENTS"); do console_clients & pids="$pids $!"; done
probe console
echo "== 3. the same, two CPU burners beside it"
burner & b1=$!; burner & b2=$!; pids="$pids $b1 $b2"
probe console_and_cpu
echo "== 4. the CPU burners alone"
for pid in $pids; do [ "$pid" = "$b1" ] || [ "$pid" = "$b2" ] || kill "$pid" 2>/dev/null || true; done
probe cpu_only
kill "$b1" "$b2" 2>/dev/null || true; pids=""

python3 - "$work" "$ACCOUNTS" "$CLIENTS" "$SECS" <<'PY' | tee bench/last-probes-run.md
import json, sys
work, accounts, clients, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
phases = [
    ("idle", "the console idle"),
    ("console", f"{clients} console clients paging through every account and the newest events"),
    ("console_and_cpu", "the same, with two CPU burners (both cores busy)"),
    ("cpu_only", "the two CPU burners alone"),
]
print(f"## Probes beside a loaded console: {accounts:,} accounts, {secs} s per phase\n")
print("Command: `bench/probes.sh`. A new connection per probe, every 20 ms, in turn.\n")
print("| phase | endpoint | probes | median (ms) | p99 (ms) | slowest (ms) | over 100 ms |")
print("|---|---|---|---|---|---|---|")
for name, label in phases:
    times = json.load(open(f"{work}/{name}.json"))
    for path, t in times.items():
        t = sorted(t)
        p99 = t[min(len(t) - 1, int(len(t) * 0.99))]
        over = sum(1 for x in t if x > 100)
        print(f"| {label} | {path} | {len(t)} | {t[len(t) // 2]:.1f} | {p99:.1f} | {t[-1]:.1f} | {over} |")
PY
