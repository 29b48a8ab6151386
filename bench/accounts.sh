#!/usr/bin/env bash
# What announcing account changes costs (issue 25), measured side by side:
#
#   bench/accounts.sh          ROUNDS saturation pairs, the same relay with [accounts] on
#                              and off (alternating, so the broker's drift hits both), then
#                              the fold of FOLD_EVENTS history events a relay makes when it
#                              takes over announcing; results in bench/last-accounts-run.md
#   bench/accounts.sh --smoke  seconds, to keep the script from rotting
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl; installs oha if missing. Every
# webhook of the load is one account's LoginFailedError (oha sends one body),
# so the announcer folds every event and announces one change: the cost
# measured is the per-event one (a queue write on RabbitMQ, a fold and an ack
# in the relay); changes themselves are rare (a few per account and month).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MESSAGES=${MESSAGES:-20000} CONNECTIONS=${CONNECTIONS:-32} ROUNDS=${ROUNDS:-5}
FOLD_EVENTS=${FOLD_EVENTS:-1000000} FOLD_ACCOUNTS=${FOLD_ACCOUNTS:-100000}
if [ "${1:-}" = --smoke ]; then MESSAGES=500 ROUNDS=1 FOLD_EVENTS=10000 FOLD_ACCOUNTS=1000; fi
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18180} ADMIN_PORT=${ADMIN_PORT:-19190}

work=$(mktemp -d)
on="bench-accounts-$(date +%s)" off="bench-accounts-$(date +%s)-off"
pids=""
cleanup() {
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for pid in $pids; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
  for name in "$on" "$off"; do delete_topology "$name"; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v oha >/dev/null || cargo install --locked oha
echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay --example accounts_fold

relay_config "$work/on.toml" "$on" "$PORT" "$ADMIN_PORT" "$work/on.sqlite" true
relay_config "$work/off.toml" "$off" $((PORT + 1)) $((ADMIN_PORT + 1)) "$work/off.sqlite" true
printf '[accounts]\nenabled = false\n' >> "$work/off.toml"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
depth() { rabbitmqctl -q list_queues name messages | awk -v q="$1" '$1 == q {print $2}'; }
on_pid=$(start target/release/hookrelay on "$ADMIN_PORT"); pids="$on_pid"
off_pid=$(start target/release/hookrelay off $((ADMIN_PORT + 1))); pids="$pids $off_pid"
broker_pid=$(pgrep -o beam.smp || true)
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'
run() { # NAME PORT PID: one saturation run; NAME.json (oha) and NAME.cpu (relay and broker ticks)
  local r0 b0
  r0=$(ticks "$3"); b0=$([ -n "$broker_pid" ] && ticks "$broker_pid" || echo 0)
  oha --no-tui --output-format json -m POST -H 'content-type: application/json' \
    -H 'x-client-id: bench-client' -d "$body" -n "$MESSAGES" -c "$CONNECTIONS" \
    "http://127.0.0.1:$2/webhooks" > "$work/$1.json"
  echo "$(($(ticks "$3") - r0)) $(($([ -n "$broker_pid" ] && ticks "$broker_pid" || echo 0) - b0))" > "$work/$1.cpu"
  rabbitmqctl -q purge_queue "$4.all" >/dev/null
}

echo "== saturation: $ROUNDS rounds of [accounts] on, then off ($MESSAGES webhooks, $CONNECTIONS in flight)"
for round in $(seq 1 "$ROUNDS"); do
  run "on-$round" "$PORT" "$on_pid" "$on"
  # How long the announcer takes to fold what the round left in its queue.
  start_lag=$(date +%s%N)
  while [ "$(depth "$on.accounts")" != 0 ]; do sleep 0.05; done
  echo $(( ($(date +%s%N) - start_lag) / 1000000 )) > "$work/lag-$round.ms"
  run "off-$round" $((PORT + 1)) "$off_pid" "$off"
done
announced=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '$1 ~ /^hookrelay_account_changes_announced_total/ {s += $2} END {print s + 0}')
on_rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$on_pid/status")
off_rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$off_pid/status")

echo "== the fold a relay makes when it takes over: $FOLD_EVENTS events of $FOLD_ACCOUNTS accounts"
target/release/examples/accounts_fold --events "$FOLD_EVENTS" --accounts "$FOLD_ACCOUNTS" > "$work/fold.json"

python3 - "$work" "$ROUNDS" "$announced" "$on_rss" "$off_rss" <<'PY' | tee bench/last-accounts-run.md
import json, statistics, sys
work, rounds, announced, on_rss, off_rss = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rate(name): return json.load(open(f"{work}/{name}.json"))["summary"]["requestsPerSec"]
def p99(name): return json.load(open(f"{work}/{name}.json"))["latencyPercentiles"]["p99"] * 1000
def cpu(name, n): return [int(x) for x in open(f"{work}/{name}.cpu").read().split()][n]
def ok(name):
    codes = json.load(open(f"{work}/{name}.json"))["statusCodeDistribution"]
    return codes.get("200", 0), sum(codes.values())
messages = ok("on-1")[1]
print("| round | on (webhooks/s) | off (webhooks/s) | on/off | p99 on / off (ms) | relay CPU ticks per 1000, on / off | broker CPU ticks per 1000, on / off | announcer caught up after (ms) |")
print("|---|---|---|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    on, off = rate(f"on-{r}"), rate(f"off-{r}")
    ratios.append(on / off)
    for name in (f"on-{r}", f"off-{r}"):
        good, total = ok(name)
        assert good == total, f"{name}: {good} of {total} answered 200"
    lag = open(f"{work}/lag-{r}.ms").read().strip()
    per = lambda name, n: cpu(name, n) * 1000 / messages
    print(f"| {r} | {on:.0f} | {off:.0f} | {on/off:.2f} | {p99(f'on-{r}'):.1f} / {p99(f'off-{r}'):.1f} | {per(f'on-{r}', 0):.1f} / {per(f'off-{r}', 0):.1f} | {per(f'on-{r}', 1):.1f} / {per(f'off-{r}', 1):.1f} | {lag} |")
print(f"\nmedian on/off: {statistics.median(ratios):.2f} over {rounds} rounds of {messages} webhooks; every webhook answered 200; changes announced: {announced}; relay RSS after, on / off: {on_rss / 1024:.1f} / {off_rss / 1024:.1f} MiB (one clock tick = 10 ms)\n")
fold = json.load(open(f"{work}/fold.json"))
print(f"fold on take-over: {fold['events']} events of {fold['accounts']} accounts read from a stream and folded in {fold['fold_seconds']:.1f} s ({fold['events_per_second']:.0f} events/s); resident memory {fold['rss_before_kib']/1024:.1f} -> {fold['rss_after_kib']/1024:.1f} MiB, {fold['bytes_per_account']:.0f} bytes per account; changes owed after the fold: {fold['owed']} (none announced in that stream: at most 10,000 kept)")
PY
