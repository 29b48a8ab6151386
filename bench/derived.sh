#!/usr/bin/env bash
# What the derived layer costs (issue 35), measured side by side in one run:
#
#   bench/derived.sh          the full run (about 20 minutes); results in
#                             bench/last-derived-run.md
#   bench/derived.sh --smoke  a minute, to keep the script from rotting; no targets
#
# 1. Throughput, ROUNDS alternating rounds of: the baseline publisher (one
#    persistent, mandatory, confirmed publish per message, CONNECTIONS in
#    flight, into a history topology nobody follows), then the relay with
#    the defaults (history, its follower, accounts and their announcements),
#    with the history only ([accounts] off: nothing follows the stream), and
#    with everything off ([history] off). wrk sends distinct bodies
#    (bench/webhooks.lua): a population of ACCOUNTS accounts syncing again and
#    again (nine in ten SyncAccount, so most events change no state), then a
#    new account in every webhook (every event a change). Medians, spreads,
#    and CPU per webhook of the relay and of the broker.
# 2. Keeping up: KEEPUP_SECS at the relay's full rate, a new account in every
#    webhook; how far the announcements fall behind, and how long after the
#    last webhook the last change is announced.
# 3. A million accounts: a history of BIG events of BIG accounts (each with
#    its announcement, as a relay leaves it), read by a new relay with the
#    console on: how long, and its resident memory; then that relay restarted
#    (it resumes: how soon it announces and its console answers), and a
#    second relay beside it that takes over when the first is SIGKILLed.
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl; installs wrk (Debian) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-5} SECS=${SECS:-8} CONNECTIONS=${CONNECTIONS:-64} ACCOUNTS=${ACCOUNTS:-10000}
BASELINE_MESSAGES=${BASELINE_MESSAGES:-40000}
KEEPUP_SECS=${KEEPUP_SECS:-180} BIG=${BIG:-1000000}
if [ "${1:-}" = --smoke ]; then
  ROUNDS=1 SECS=2 BASELINE_MESSAGES=2000 KEEPUP_SECS=5 BIG=20000
fi
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18280} ADMIN_PORT=${ADMIN_PORT:-19280}
TOKEN=bench-console-token-0123456789

work=$(mktemp -d)
run_id=$(date +%s)
default="bench-d-$run_id" history="bench-h-$run_id" off="bench-o-$run_id" big="bench-big-$run_id"
pids=""
cleanup() {
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for pid in $pids; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
  for name in "$default" "$history" "$off" "$big"; do delete_topology "$name"; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay --example baseline_publisher --example history_fill
relay=target/release/hookrelay baseline=target/release/examples/baseline_publisher

relay_config "$work/d.toml" "$default" "$PORT" "$ADMIN_PORT" "$work/d.sqlite" true
relay_config "$work/h.toml" "$history" $((PORT + 1)) $((ADMIN_PORT + 1)) "$work/h.sqlite" true
printf '[accounts]\nenabled = false\n' >> "$work/h.toml"
relay_config "$work/o.toml" "$off" $((PORT + 2)) $((ADMIN_PORT + 2)) "$work/o.sqlite" false
printf '[accounts]\nenabled = false\n' >> "$work/o.toml"
d_pid=$(start "$relay" d "$ADMIN_PORT"); pids="$d_pid"
h_pid=$(start "$relay" h $((ADMIN_PORT + 1))); pids="$pids $h_pid"
o_pid=$(start "$relay" o $((ADMIN_PORT + 2))); pids="$pids $o_pid"
broker_pid=$(pgrep -o beam.smp)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
ready() { curl -sf "http://127.0.0.1:$1/readyz" || echo '{}'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
owed() { ready "$1" | field 'd.get("accounts",{}).get("owed",-1)'; }
purge() { rabbitmqctl -q purge_queue "$1.all" >/dev/null; }
# NAME PID CMD...: runs CMD (JSON on its last line) into NAME.json, with the
# relay's (PID) and the broker's CPU ticks around it into NAME.cpu.
measure() {
  local name=$1 pid=$2 r0 b0; shift 2
  r0=$([ "$pid" != 0 ] && ticks "$pid" || echo 0); b0=$(ticks "$broker_pid")
  "$@" | tail -1 > "$work/$name.json"
  echo "$(( $([ "$pid" != 0 ] && ticks "$pid" || echo 0) - r0 )) $(( $(ticks "$broker_pid") - b0 ))" > "$work/$name.cpu"
}
load() { # MODE PORT [TAG]
  case $1 in
    population) wrk -t2 -c"$CONNECTIONS" -d"${SECS}s" -s bench/webhooks.lua "http://127.0.0.1:$2/webhooks" -- population "$ACCOUNTS" "$3" ;;
    new) wrk -t2 -c"$CONNECTIONS" -d"${SECS}s" -s bench/webhooks.lua "http://127.0.0.1:$2/webhooks" -- new "$3" ;;
  esac
}
# Waits until the default relay owes nothing; prints how long that took (ms).
drained() {
  local t0; t0=$(date +%s%N)
  while [ "$(owed "$ADMIN_PORT")" != 0 ]; do sleep 0.05; done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}

echo "== throughput: $ROUNDS rounds, $CONNECTIONS in flight, ${SECS}s each"
for mode in population new; do
  for round in $(seq 1 "$ROUNDS"); do
    # The baseline publishes into the history-only relay's topology (a fanout
    # to the stream and to the topic exchange, .all bound to #), which no
    # follower reads: RabbitMQ's own cost for what the relay asks of it.
    measure "$mode-base-$round" 0 "$baseline" --exchange "$history.in" --messages "$BASELINE_MESSAGES" --in-flight "$CONNECTIONS"
    purge "$history"
    measure "$mode-d-$round" "$d_pid" load "$mode" "$PORT" "$mode$round"
    drained > "$work/$mode-d-$round.lag"; purge "$default"
    if [ "$mode" = population ]; then
      measure "$mode-h-$round" "$h_pid" load "$mode" $((PORT + 1)) "$mode$round"; purge "$history"
      measure "$mode-o-$round" "$o_pid" load "$mode" $((PORT + 2)) "$mode$round"; purge "$off"
    fi
  done
done
echo "$(rss "$d_pid") $(rss "$h_pid") $(rss "$o_pid")" > "$work/rss"

echo "== keeping up: ${KEEPUP_SECS}s at full rate, a new account in every webhook"
(
  peak=0
  while kill -0 "$d_pid" 2>/dev/null && [ ! -e "$work/keepup.done" ]; do
    o=$(owed "$ADMIN_PORT"); [ "$o" -gt "$peak" ] && peak=$o
    echo "$peak" > "$work/keepup.peak"; sleep 1
  done
) &
sampler=$!
wrk -t2 -c"$CONNECTIONS" -d"${KEEPUP_SECS}s" -s bench/webhooks.lua "http://127.0.0.1:$PORT/webhooks" -- new keepup | tail -1 > "$work/keepup.json"
drained > "$work/keepup.lag"
touch "$work/keepup.done"; wait "$sampler" || true
purge "$default"
stop "$h_pid"; stop "$o_pid"; stop "$d_pid"; pids=""

echo "== a million accounts: $BIG events of $BIG accounts, each with its announcement"
relay_config "$work/big.toml" "$big" "$PORT" "$ADMIN_PORT" "$work/big.sqlite" true
printf '[admin]\ntoken = "%s"\n' "$TOKEN" >> "$work/big.toml"
relay_config "$work/big2.toml" "$big" $((PORT + 1)) $((ADMIN_PORT + 1)) "$work/big2.sqlite" true
printf '[admin]\ntoken = "%s"\n' "$TOKEN" >> "$work/big2.toml"
# The relay declares its stream, then stops while the history is filled.
big_pid=$(start "$relay" big "$ADMIN_PORT"); stop "$big_pid"
rm -f "$work"/big.history-index.sqlite*
target/release/examples/history_fill --stream "$big.history" --events "$BIG" --accounts "$BIG" --announced > "$work/fill.json"
t0=$(date +%s%N)
big_pid=$(start "$relay" big "$ADMIN_PORT"); pids="$big_pid"
until [ "$(ready "$ADMIN_PORT" | field 'd.get("history_follower",{}).get("caught_up")')" = True ]; do sleep 0.2; done
echo "$(( ($(date +%s%N) - t0) / 1000000 )) $(rss "$big_pid")" > "$work/fold"
api() { curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$1/api/accounts?limit=50"; }
[ "$(api "$ADMIN_PORT")" = 200 ]
echo "$(rss "$big_pid") $(owed "$ADMIN_PORT") $(du -k "$work/big.history-index.sqlite" | cut -f1)" > "$work/big.after"
# Restarted: it resumes from its store instead of reading the history again.
stop "$big_pid"; pids=""
t0=$(date +%s%N)
HOOKRELAY__AMQP__URI="$AMQP_URL" "$relay" serve --config "$work/big.toml" >/dev/null 2>"$work/big-restart.log" &
big_pid=$!; pids="$big_pid"
until [ "$(ready "$ADMIN_PORT" | field 'd.get("accounts",{}).get("announcing")')" = True ]; do sleep 0.05; done
announcing_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
until [ "$(api "$ADMIN_PORT")" = 200 ]; do sleep 0.05; done
console_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$announcing_ms $console_ms $(rss "$big_pid")" > "$work/restart"
# A second relay reads the same history into a store of its own, stands by,
# and takes over when the first is SIGKILLed.
big2_pid=$(start "$relay" big2 $((ADMIN_PORT + 1))); pids="$pids $big2_pid"
t0=$(date +%s%N)
until [ "$(ready $((ADMIN_PORT + 1)) | field 'd.get("history_follower",{}).get("caught_up")')" = True ]; do sleep 0.2; done
second_fold_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill -KILL "$big_pid"; t0=$(date +%s%N)
until [ "$(ready $((ADMIN_PORT + 1)) | field 'd.get("accounts",{}).get("announcing")')" = True ]; do sleep 0.05; done
echo "$second_fold_ms $(( ($(date +%s%N) - t0) / 1000000 )) $(rss "$big2_pid")" > "$work/takeover"

python3 - "$work" "$ROUNDS" "$SECS" "$CONNECTIONS" "$ACCOUNTS" "$KEEPUP_SECS" "$BIG" <<'PY' | tee bench/last-derived-run.md
import json, statistics, sys
work, rounds, secs, conns, accounts, keepup_secs, big = sys.argv[1], *map(int, sys.argv[2:])
def j(name): return json.load(open(f"{work}/{name}.json"))
def rate(name): return j(name)["rate"]
def p99(name): return j(name)["p99_ms"]
def cpu(name):
    relay, broker = map(int, open(f"{work}/{name}.cpu").read().split())
    n = j(name).get("requests") or j(name)["messages"]
    return relay * 10_000 / n, broker * 10_000 / n  # µs per webhook (1 tick = 10 ms)
def spread(xs): return f"{min(xs):.2f}–{max(xs):.2f}"
for name in [f"{m}-{k}-{r}" for m, ks in (("population", "dho"), ("new", "d")) for k in ks for r in range(1, rounds + 1)]:
    assert j(name)["non_2xx"] == 0 and j(name)["socket_errors"] == 0, f"{name}: {j(name)}"
print(f"### Throughput against the baseline publisher ({conns} in flight, {secs} s per relay round, {rounds} alternating rounds)\n")
print("| workload | relay | webhooks/s (median) | / baseline, median (spread) | p99 ms (median) | relay CPU µs/webhook | broker CPU µs/webhook |")
print("|---|---|---|---|---|---|---|")
for mode, kinds in (("population", "dho"), ("new", "d")):
    base = [rate(f"{mode}-base-{r}") for r in range(1, rounds + 1)]
    label = {"population": f"{accounts:,} accounts syncing again and again", "new": "a new account in every webhook"}[mode]
    print(f"| {label} | baseline publisher | {statistics.median(base):.0f} | 1 | {statistics.median(p99(f'{mode}-base-{r}') for r in range(1, rounds + 1)):.1f} | - | {statistics.median(cpu(f'{mode}-base-{r}')[1] for r in range(1, rounds + 1)):.0f} |")
    for k in kinds:
        names = [f"{mode}-{k}-{r}" for r in range(1, rounds + 1)]
        ratios = [rate(n) / b for n, b in zip(names, base)]
        what = {"d": "defaults (history, follower, accounts)", "h": "history only (`[accounts]` off)", "o": "everything off (`[history]` off)"}[k]
        print(f"| {label} | {what} | {statistics.median(rate(n) for n in names):.0f} | {statistics.median(ratios):.2f} ({spread(ratios)}) | {statistics.median(p99(n) for n in names):.1f} | {statistics.median(cpu(n)[0] for n in names):.0f} | {statistics.median(cpu(n)[1] for n in names):.0f} |")
lags = {m: [int(open(f"{work}/{m}-d-{r}.lag").read()) for r in range(1, rounds + 1)] for m in ("population", "new")}
d_rss, h_rss, o_rss = (int(x) / 1024 for x in open(f"{work}/rss").read().split())
print(f"\nThe default relay's announcements were done {max(lags['population'])} ms (population) and {max(lags['new'])} ms (new accounts) at most after each round's last webhook. Resident memory after the rounds: defaults {d_rss:.1f} MiB, history only {h_rss:.1f} MiB, everything off {o_rss:.1f} MiB.\n")
keep = j("keepup"); peak = int(open(f"{work}/keepup.peak").read() or 0); lag = int(open(f"{work}/keepup.lag").read())
print(f"### Keeping up\n\n{keepup_secs} s at full rate ({conns} in flight), a new account in every webhook: {keep['requests']:,} webhooks, {keep['rate']:.0f}/s, every one answered 2xx ({keep['non_2xx']} not); changes owed at most {peak:,} during the run; the last change announced {lag} ms after the last webhook was answered.\n")
fill = j("fill")
fold_ms, fold_rss = map(int, open(f"{work}/fold").read().split())
after_rss, after_owed, disk_kib = map(int, open(f"{work}/big.after").read().split())
ann_ms, console_ms, restart_rss = map(int, open(f"{work}/restart").read().split())
second_ms, takeover_ms, big2_rss = map(int, open(f"{work}/takeover").read().split())
print(f"### A million accounts\n\nA history of {big:,} events of {big:,} accounts, each with its announcement ({2 * big:,} messages; filled in {fill['fill_seconds']:.0f} s):\n")
print(f"- a new relay (console on) read it into its store in {fold_ms / 1000:.1f} s; resident memory then {fold_rss / 1024:.1f} MiB, and {after_rss / 1024:.1f} MiB once its console had answered; changes owed {after_owed}; the store {disk_kib / 1024:.0f} MiB on disk;")
print(f"- restarted, it resumed: announcing {ann_ms} ms after its start, its console answering accounts after {console_ms} ms (resident {restart_rss / 1024:.1f} MiB);")
print(f"- a second relay read the same history into a store of its own in {second_ms / 1000:.1f} s, stood by, and announced {takeover_ms} ms after the first was SIGKILLed (resident {big2_rss / 1024:.1f} MiB).")
PY
