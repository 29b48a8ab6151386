#!/usr/bin/env bash
# What the audit costs (issue 38), in one run; results in bench/last-audit-run.md:
#
# 1. The relay's side: ROUNDS alternating rounds of wrk (CONNECTIONS in
#    flight, SECS each; bench/webhooks.lua, a population of ACCOUNTS accounts
#    syncing again and again) against the relay with the defaults (every
#    stored webhook numbered) and the same relay with [audit] enabled = false.
# 2. `hookrelay audit`: a history of EVENTS events of one relay, numbered 1 to
#    EVENTS (examples/history_fill, published as the relay publishes them),
#    audited; its time and peak memory.
#
#   bench/audit.sh           the full run (about 5 minutes)
#   bench/audit.sh --smoke   seconds, to keep the script from rotting
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl; installs wrk (Debian) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

EVENTS=${EVENTS:-1000000} ROUNDS=${ROUNDS:-5} SECS=${SECS:-8} CONNECTIONS=${CONNECTIONS:-64}
ACCOUNTS=${ACCOUNTS:-10000}
if [ "${1:-}" = --smoke ]; then EVENTS=20000 ROUNDS=1 SECS=2; fi
PORT=${PORT:-18380} ADMIN_PORT=${ADMIN_PORT:-19380}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

work=$(mktemp -d)
run_id=$(date +%s)
exchange="bench-audit-$run_id" numbered="bench-an-$run_id" unnumbered="bench-au-$run_id"
pids=""
cleanup() {
  for pid in $pids; do stop "$pid"; done
  for name in "$exchange" "$numbered" "$unnumbered"; do delete_topology "$name"; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay --example history_fill
relay=target/release/hookrelay

echo "== the relay's side: $ROUNDS rounds, numbered and not, $CONNECTIONS in flight, ${SECS}s each"
relay_config "$work/n.toml" "$numbered" "$PORT" "$ADMIN_PORT" "$work/n.sqlite" true
relay_config "$work/u.toml" "$unnumbered" $((PORT + 1)) $((ADMIN_PORT + 1)) "$work/u.sqlite" true
printf '[audit]\nenabled = false\n' >> "$work/u.toml"
n_pid=$(start "$relay" n "$ADMIN_PORT"); pids="$n_pid"
u_pid=$(start "$relay" u $((ADMIN_PORT + 1))); pids="$pids $u_pid"
load() { # PORT TAG: wrk's JSON summary (its last line)
  wrk -t2 -c"$CONNECTIONS" -d"${SECS}s" -s bench/webhooks.lua "http://127.0.0.1:$1/webhooks" -- population "$ACCOUNTS" "$2" | tail -1
}
for round in $(seq 1 "$ROUNDS"); do
  load "$PORT" "n$round" > "$work/n-$round.json"; rabbitmqctl -q purge_queue "$numbered.all" >/dev/null
  load $((PORT + 1)) "u$round" > "$work/u-$round.json"; rabbitmqctl -q purge_queue "$unnumbered.all" >/dev/null
done
stop "$n_pid"; stop "$u_pid"; pids=""
throughput=$(python3 - "$work" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rate = lambda name: json.load(open(f"{work}/{name}.json"))["rate"]
n = [rate(f"n-{r}") for r in range(1, rounds + 1)]
u = [rate(f"u-{r}") for r in range(1, rounds + 1)]
ratios = [a / b for a, b in zip(n, u)]
print(f"| numbered (the default) | {statistics.median(n):.0f} | {statistics.median(ratios):.3f} ({min(ratios):.3f} to {max(ratios):.3f}) |")
print(f"| `[audit] enabled = false` | {statistics.median(u):.0f} | 1 |")
PY
)

relay_config "$work/relay.toml" "$exchange" 0 0 "$work/spool.sqlite" true
target/release/hookrelay --config "$work/relay.toml" declare >/dev/null 2>&1

echo "== filling the history with $EVENTS numbered events"
fill_started=$(date +%s)
target/release/examples/history_fill --stream "$exchange.history" --events "$EVENTS" --accounts 100000 > "$work/fill.json"
echo "filled in $(( $(date +%s) - fill_started )) s"

echo "== hookrelay audit"
/usr/bin/time -f '%e %M' -o "$work/time.txt" \
  target/release/hookrelay --config "$work/relay.toml" audit --json --grace 0s > "$work/audit.json"
read -r seconds peak_kib < "$work/time.txt"
python3 - "$work/audit.json" "$EVENTS" <<'PY'
import json, sys
relays = [json.loads(line) for line in open(sys.argv[1])]
assert len(relays) == 1, relays
relay = relays[0]
assert relay["seen"] == int(sys.argv[2]) and relay["lost"] == 0 and relay["gaps"] == [], relay
PY
{
  echo "# bench/audit.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$ROUNDS rounds of ${SECS}s, $CONNECTIONS in flight, $ACCOUNTS accounts:"
  echo
  echo "| relay | webhooks/s (median) | numbered / not (median, range) |"
  echo "|---|---|---|"
  echo "$throughput"
  echo
  echo "| history events | hookrelay audit (s) | peak memory (MiB) |"
  echo "|---|---|---|"
  echo "| $EVENTS | $seconds | $((peak_kib / 1024)) |"
} > bench/last-audit-run.md
cat bench/last-audit-run.md
