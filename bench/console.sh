#!/usr/bin/env bash
# What the operator console costs and how fast it answers (issue 26):
#
#   bench/console.sh          fills a console relay's history with EVENTS events of
#                             ACCOUNTS accounts, then times the API's answers from its
#                             index (the newest 50, an account, a user, one event),
#                             the overview and the Providers page (charts of the
#                             accounts by state, by provider, from the relay's store),
#                             the index's rebuild from the stream, what it costs in
#                             memory and on disk, and webhook throughput with a
#                             console open and refreshing every second vs closed
#                             (ROUNDS pairs, alternating); results in bench/last-console-run.md
#   bench/console.sh --smoke  seconds, to keep the script from rotting
#
# Needs RabbitMQ on AMQP_URL and rabbitmqctl; installs wrk (Debian) if missing. The
# relay runs with [accounts] on (the default): its store holds every
# account's state beside the index (bench/derived.sh measures what that costs).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

EVENTS=${EVENTS:-1000000} ACCOUNTS=${ACCOUNTS:-100000} QUERIES=${QUERIES:-20}
SECS=${SECS:-10} CONNECTIONS=${CONNECTIONS:-32} ROUNDS=${ROUNDS:-3}
if [ "${1:-}" = --smoke ]; then EVENTS=20000 ACCOUNTS=2000 QUERIES=3 SECS=2 ROUNDS=1; fi
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18280} ADMIN_PORT=${ADMIN_PORT:-19290}
TOKEN=bench-console-token-0123456789

work=$(mktemp -d)
exchange="bench-console-$(date +%s)"
relay_pid="" refresher=""
cleanup() {
  [ -n "$refresher" ] && kill "$refresher" 2>/dev/null || true
  [ -n "$relay_pid" ] && stop "$relay_pid"
  delete_topology "$exchange"
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
echo "== building (release)"
cargo build --release -j2 --quiet --bin hookrelay --example history_fill

relay_config "$work/relay.toml" "$exchange" "$PORT" "$ADMIN_PORT" "$work/spool.sqlite" true
# [accounts] stays on: the relay's store keeps every account beside the index.
printf '[admin]\ntoken = "%s"\n' "$TOKEN" >> "$work/relay.toml"
sed -i "s|^enabled = true$|enabled = true\nindex_path = \"$work/index.sqlite\"|" "$work/relay.toml"
api() { curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/api$1"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
rss() { awk '$1 == "VmRSS:" {print $2}' "/proc/$relay_pid/status"; }
indexed() { [ "$(api /status | field '["index"]["rows"]')" -ge "$1" ] && [ "$(api /status | field '["index"]["caught_up"]')" = True ]; }
live_book() { [ "$(api /status | field '["accounts"]["caught_up"]')" = True ]; }
wait_indexed() { # ROWS: waits until the index holds ROWS and has caught up (the
  # accounts with it: one follower); prints the seconds it took
  local t0; t0=$(date +%s%N)
  until indexed "$1" && live_book; do sleep 0.2; done
  echo "scale=1; ($(date +%s%N) - $t0) / 1000000000" | bc
}

relay_pid=$(start target/release/hookrelay relay "$ADMIN_PORT")
rss_empty=$(rss)
echo "== filling the history with $EVENTS events of $ACCOUNTS accounts (the relay indexes as they arrive)"
target/release/examples/history_fill --stream "$exchange.history" --events "$EVENTS" --accounts "$ACCOUNTS" > "$work/fill.json"
live_seconds=$(wait_indexed "$EVENTS")
rss_full=$(rss)
index_bytes=$(du -cb "$work"/index.sqlite* | awk 'END {print $1}')

echo "== the index rebuilt from the stream: a relay started without its index file"
stop "$relay_pid"; relay_pid=""
rm -f "$work"/index.sqlite*
relay_pid=$(start target/release/hookrelay relay "$ADMIN_PORT")
rebuild_seconds=$(wait_indexed "$EVENTS")
rss_rebuilt=$(rss)

echo "== $QUERIES queries of each kind"
timed() { curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT$1"; }
for n in $(seq 1 "$QUERIES"); do
  account=$(printf 'acct-%08d' $(( (n * 7919) % ACCOUNTS )))
  user=$(printf 'user-%08d' $(( (n * 104729) % ACCOUNTS )))
  timed "/api/events?limit=50" >> "$work/newest.txt"
  timed "/api/events?account_id=$account" >> "$work/account.txt"
  timed "/api/events?user_id=$user&routing_key=sync.error.%23" >> "$work/user.txt"
  timed "/events?account_id=$account" >> "$work/page.txt"
  timed "/api/accounts?state=needs_reconnect" >> "$work/accounts.txt"
  timed "/" >> "$work/overview.txt"
  timed "/providers" >> "$work/providers-page.txt"
  timed "/api/providers" >> "$work/providers.txt"
done
id=$(api "/events?limit=1" | field '["events"][0]["message_id"]')
for n in $(seq 1 "$QUERIES"); do timed "/api/events/$id" >> "$work/one.txt"; done
account_hits=$(api "/events?account_id=acct-00000007&limit=500" | field '["events"].__len__()')
echo "== for comparison: one account's events read from the stream itself (hookrelay events, no index)"
scan_start=$(date +%s%N)
HOOKRELAY__AMQP__URI="$AMQP_URL" target/release/hookrelay events --config "$work/relay.toml" --account-id acct-00000007 --json > /dev/null 2>&1
scan_seconds=$(echo "scale=1; ($(date +%s%N) - $scan_start) / 1000000000" | bc)

echo "== throughput: $ROUNDS pairs of ${SECS}s ($CONNECTIONS in flight), console closed, then open and refreshing every second"
# Distinct bodies (bench/webhooks.lua), 10,000 accounts syncing again and
# again: identical copies in flight together would be stored once.
load() { # NAME
  wrk -t2 -c"$CONNECTIONS" -d"${SECS}s" -s bench/webhooks.lua "http://127.0.0.1:$PORT/webhooks" \
    -- population 10000 "$1" | tail -1 > "$work/$1.json"
  rabbitmqctl -q purge_queue "$exchange.all" >/dev/null
}
refresh() { # what an open overview and events page ask for, every second
  while true; do
    timed "/" >> "$work/refresh.txt"; timed "/api/events?limit=50" >> "$work/refresh.txt"
    sleep 1
  done
}
for round in $(seq 1 "$ROUNDS"); do
  load "closed-$round"
  refresh & refresher=$!
  load "open-$round"
  kill "$refresher"; wait "$refresher" 2>/dev/null || true; refresher=""
done

python3 - "$work" "$ROUNDS" "$EVENTS" "$ACCOUNTS" "$live_seconds" "$rebuild_seconds" "$rss_empty" "$rss_full" "$rss_rebuilt" "$index_bytes" "$account_hits" "$scan_seconds" <<'PY' | tee bench/last-console-run.md
import json, statistics, sys
work, rounds, events, accounts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
live, rebuild, rss_empty, rss_full, rss_rebuilt, index_bytes, hits, scan = sys.argv[5:13]
def times(name): return sorted(float(x) * 1000 for x in open(f"{work}/{name}.txt"))
def row(label, name):
    t = times(name)
    return f"| {label} | {statistics.median(t):.1f} | {t[-1]:.1f} | {len(t)} |"
print(f"## Console: {events:,} events of {accounts:,} accounts in the history\n")
print("| answer | median (ms) | slowest (ms) | queries |")
print("|---|---|---|---|")
print(row("GET /api/events?limit=50 (the newest 50)", "newest"))
print(row(f"GET /api/events?account_id=... (one account: {hits} events)", "account"))
print(row("GET /api/events?user_id=...&routing_key=sync.error.%23", "user"))
print(row("GET /events?account_id=... (the page, HTML)", "page"))
print(row("GET /api/events/{id} (the event from the stream, and the dead letters and quarantine searched)", "one"))
print(row("GET /api/accounts?state=needs_reconnect (from the live book)", "accounts"))
print(row("GET / (the overview: charts of the last hour and of the accounts by state, the incidents, the queues)", "overview"))
print(row("GET /providers (the page: incidents, a chart of each provider's accounts by state)", "providers-page"))
print(row("GET /api/providers", "providers"))
print(f"\nFor comparison, one account's events read from the stream itself (`hookrelay events --account-id`, what the console does until its index has caught up): {scan} s.\n")
print(f"Index: followed live while the history filled, caught up {live} s after the last event was confirmed; rebuilt from the stream by a relay started without it (and the live book of accounts folded again beside it) in {rebuild} s; {int(index_bytes) / 1e6:.0f} MB on disk ({int(index_bytes) / events:.0f} bytes per event); relay resident memory {int(rss_empty) / 1024:.1f} MiB before, {int(rss_full) / 1024:.1f} MiB after indexing live, {int(rss_rebuilt) / 1024:.1f} MiB after the rebuild (SQLite's page cache is capped at 16 MiB).\n")
def rate(name): return json.load(open(f"{work}/{name}.json"))["rate"]
def ok(name):
    run = json.load(open(f"{work}/{name}.json"))
    return run["requests"] - run["non_2xx"] - run["socket_errors"], run["requests"]
print("| round | console closed (webhooks/s) | console open, refreshing every second (webhooks/s) | open/closed |")
print("|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    closed, opened = rate(f"closed-{r}"), rate(f"open-{r}")
    for name in (f"closed-{r}", f"open-{r}"):
        good, total = ok(name)
        assert good == total, f"{name}: {good} of {total} answered 200"
    ratios.append(opened / closed)
    print(f"| {r} | {closed:.0f} | {opened:.0f} | {opened / closed:.2f} |")
refresh = times("refresh")
print(f"\nmedian open/closed: {statistics.median(ratios):.2f}; every webhook answered 200; the refreshing console's own requests under that load: median {statistics.median(refresh):.0f} ms, slowest {refresh[-1]:.0f} ms ({len(refresh)} requests)")
PY
