#!/usr/bin/env bash
# The relay next to RabbitMQ's own ceiling, measured side by side on this machine.
#
#   bench/run.sh            the full run (a few minutes); results in bench/last-run.md,
#                           ending with the latency tail (bench/tail.sh)
#   bench/run.sh --smoke    seconds, to keep the script from rotting; no targets
#   bench/run.sh --spool    one saturation pair, then the spool's part only
#                           (spooled with RabbitMQ unreachable, and the drain)
#   bench/run.sh --cluster  saturation and fixed rate only, on a three-node cluster
#                           (scripts/rabbitmq-cluster.sh, as root) with quorum
#                           queues; results in bench/last-cluster-run.md
#
# Needs RabbitMQ on AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# rabbitmqctl, python3; installs oha (crates.io) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

MESSAGES=${MESSAGES:-20000}       # per saturation run
CONNECTIONS=${CONNECTIONS:-32}    # HTTP connections = baseline messages in flight
BURST=${BURST:-100000}            # the memory burst
OVERLOAD_SECS=${OVERLOAD_SECS:-30}
FIXED_SECS=${FIXED_SECS:-10}
ROUNDS=${ROUNDS:-5}               # saturation pairs, alternating; the median ratio counts
SEARCHED=${SEARCHED:-100000}      # events in the history that `hookrelay events` searches
SPOOL_CONNECTIONS=${SPOOL_CONNECTIONS:-64}  # senders while RabbitMQ is unreachable
STRACED=${STRACED:-5000}          # spooled webhooks whose fsyncs strace counts
DRAIN_SECS=${DRAIN_SECS:-20}      # new webhooks arrive this long while the spool drains
mode=full
case "${1:-}" in
  --smoke) MESSAGES=500 BURST=1000 OVERLOAD_SECS=2 FIXED_SECS=1 ROUNDS=1 SEARCHED=1000 STRACED=500 DRAIN_SECS=2 ;;
  --spool) mode=spool ROUNDS=1 ;;
  --cluster) mode=cluster ;;
esac
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${PORT:-18080} ADMIN_PORT=${ADMIN_PORT:-19090}
ctl() { rabbitmqctl -q "$@"; }
queue_type=classic
report=bench/last-run.md
if [ "$mode" = cluster ]; then
  # A cluster of the benchmark's own, on ports no test uses; the relay lists
  # all three nodes and connects to the first, where the baseline publishes.
  export CLUSTER_DIR=/tmp/hookrelay-cluster-bench CLUSTER_PORT=5701 DIST_PORT=25701
  scripts/rabbitmq-cluster.sh stop
  mapfile -t uris < <(scripts/rabbitmq-cluster.sh start)
  AMQP_URL=${uris[0]}
  ctl() { rabbitmqctl -q -n hookrelay-n1@localhost "$@"; }
  queue_type=quorum
  report=bench/last-cluster-run.md
fi
relay_uri=$(IFS=,; echo "${uris[*]:-$AMQP_URL}")

work=$(mktemp -d)
relay_pid="" nohist_pid="" spooled_pid="" drain_pid=""
exchange="bench-$(date +%s)"
# The same relay without the history stream, for its cost; and a topology to search.
nohist="$exchange-nohist" searched="$exchange-search" drained="$exchange-drain"
cleanup() {
  for pid in "$relay_pid" "$nohist_pid" "$spooled_pid" "$drain_pid"; do
    [ -n "$pid" ] && stop "$pid"
  done
  if [ "$mode" = cluster ]; then
    scripts/rabbitmq-cluster.sh stop  # and everything in it
  else
    for name in "$exchange" "$nohist" "$searched" "$drained"; do delete_topology "$name"; done
  fi
  mkdir -p bench/last-run && cp "$work"/*.json bench/last-run/ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

command -v oha >/dev/null || cargo install --locked oha
echo "== building (release)"
cargo build --release -j2 --quiet --features bench-http-only --bin hookrelay
cp target/release/hookrelay "$work/hookrelay-http-only"
cargo build --release -j2 --quiet --bin hookrelay --example baseline_publisher --example parse_cost
baseline=target/release/examples/baseline_publisher

config() { # NAME EXCHANGE PORT ADMIN_PORT HISTORY [SPOOL]: a relay config in $work/NAME.toml
  relay_config "$work/$1.toml" "$2" "$3" "$4" "$work/${6:-$1}.sqlite" "$5" "$queue_type"
}
config relay "$exchange" "$PORT" "$ADMIN_PORT" true
config nohist "$nohist" $((PORT + 1)) $((ADMIN_PORT + 1)) false
config search "$searched" $((PORT + 2)) $((ADMIN_PORT + 2)) true
# The same spool file: what one spooled with RabbitMQ unreachable, the other drains.
config spooled "$drained" $((PORT + 3)) $((ADMIN_PORT + 3)) true spool
config drain "$drained" $((PORT + 4)) $((ADMIN_PORT + 4)) true spool

start_relay() { relay_pid=$(start "$1" relay "$ADMIN_PORT"); }
stop_relay() { stop "$relay_pid"; relay_pid=""; }
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }  # ADMIN_PORT NAME
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$relay_pid/status"; }
purge() { for name in "$exchange" "$nohist"; do ctl purge_queue "$name.all" >/dev/null; done; }
# CPU accounting, in clock ticks (utime + stime): processes' own from
# /proc/<pid>/stat fields 14-15 (summed over the pids given: the cluster's
# three nodes); this shell's waited-for children (the load generator) from
# fields 16-17 of its own.
ticks() { local pid t=0; for pid in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
child_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
# Time a process's threads spent ready to run but waiting for a core (ns, the
# second field of /proc/<pid>/task/*/schedstat): the cost of hand-offs between
# more runnable threads than there are cores.
runq_ns() { local pid; for pid in $1; do cat /proc/"$pid"/task/*/schedstat 2>/dev/null; done | awk '{s += $2} END {print s + 0}'; }
if [ "$mode" = cluster ]; then
  broker_pid=$(for f in "$CLUSTER_DIR"/n*/pid; do cat "$f"; echo; done | xargs)  # the files end without a newline
else
  broker_pid=$(pgrep -o beam.smp || true)  # empty when RabbitMQ runs elsewhere
fi
with_cpu() { # NAME COMMAND...: runs it; writes relay/broker/client ticks and relay/broker run-queue ns to NAME.cpu
  local name=$1; shift
  local r0 b0 c0 rq0 bq0 relay=${cpu_pid:-$relay_pid}  # cpu_pid: another relay than the main one
  r0=$(ticks "$relay"); b0=$(ticks "$broker_pid"); c0=$(child_ticks)
  rq0=$(runq_ns "$relay"); bq0=$(runq_ns "$broker_pid")
  "$@"
  echo "$(($(ticks "$relay") - r0)) $(($(ticks "$broker_pid") - b0)) $(($(child_ticks) - c0))" \
    "$(($(runq_ns "$relay") - rq0)) $(($(runq_ns "$broker_pid") - bq0))" > "$work/$name.cpu"
}
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'
load_on() { # PORT, then oha's flags: oha with the webhook
  local port=$1; shift
  oha --no-tui --output-format json -m POST -H 'content-type: application/json' \
    -H 'x-client-id: bench-client' -d "$body" "$@" "http://127.0.0.1:$port/webhooks"
}
load() { load_on "$PORT" "$@"; }

echo "== relay + RabbitMQ (and the same relay without history, idle until its turn)"
start_relay target/release/hookrelay
nohist_pid=$(start target/release/hookrelay nohist $((ADMIN_PORT + 1)))
sleep 2
idle_kib=$(kib VmRSS)

# The broker's ceiling drifts by 20-30 % from one run to the next on a shared
# machine, so baseline and relay alternate, and each pair gives one ratio.
echo "== saturation: $ROUNDS rounds of baseline publisher, relay, relay without history ($MESSAGES messages, $CONNECTIONS in flight)"
for round in $(seq 1 "$ROUNDS"); do
  purge; with_cpu "base-sat-$round" "$baseline" --exchange "$exchange.in" --messages "$MESSAGES" --in-flight "$CONNECTIONS" > "$work/base-sat-$round.json"
  purge; with_cpu "relay-sat-$round" load -n "$MESSAGES" -c "$CONNECTIONS" > "$work/relay-sat-$round.json"
  purge; load_on $((PORT + 1)) -n "$MESSAGES" -c "$CONNECTIONS" > "$work/nohist-sat-$round.json"
done
stop "$nohist_pid"; nohist_pid=""

rate=$(python3 -c "import json,statistics as s;print(max(1,int(s.median(json.load(open(f'$work/base-sat-{i}.json'))['rate'] for i in range(1,$ROUNDS+1))/2)))")
echo "== fixed rate: $rate/s (half the baseline ceiling) for ${FIXED_SECS}s each"
purge; with_cpu base-fixed "$baseline" --exchange "$exchange.in" --messages $((rate * FIXED_SECS)) --rate "$rate" > "$work/base-fixed.json"
purge; with_cpu relay-fixed load -n $((rate * FIXED_SECS)) -c "$CONNECTIONS" -q "$rate" > "$work/relay-fixed.json"

if [ "$mode" = full ]; then

echo "== burst: $BURST webhooks"
purge; load -n "$BURST" -c "$CONNECTIONS" > "$work/relay-burst.json"
burst_hwm_kib=$(kib VmHWM)

overload=$((rate * 4))
echo "== overload: ${overload}/s offered (2x the ceiling) for ${OVERLOAD_SECS}s over 256 connections"
purge; load -z "${OVERLOAD_SECS}s" -c 256 -q "$overload" > "$work/relay-overload.json"
overload_hwm_kib=$(kib VmHWM)
sleep 5
purge; load -n 500 -c 4 > "$work/relay-after.json"
purge; load -n 500 -c 4 > /dev/null  # (warm) a second probe is the one compared
purge; load -n 500 -c 4 > "$work/relay-after2.json"
"$baseline" --exchange "$exchange.in" --messages 500 --in-flight 4 > "$work/base-probe.json"
stop_relay

echo "== history search: $SEARCHED events in a stream, then hookrelay events"
HOOKRELAY__AMQP__URI="$AMQP_URL" target/release/hookrelay declare --config "$work/search.toml" >/dev/null
"$baseline" --exchange "$searched.in" --messages "$SEARCHED" --in-flight 64 > "$work/search-fill.json"
search() { # NAME ARGS...: times one hookrelay events run
  local name=$1; shift
  /usr/bin/time -f '{"seconds": %e, "max_rss_kib": %M}' -o "$work/$name.json" \
    env HOOKRELAY__AMQP__URI="$AMQP_URL" target/release/hookrelay events --config "$work/search.toml" "$@" > "$work/$name.out"
  echo "{\"lines\": $(wc -l < "$work/$name.out")}" > "$work/$name.lines.json"
}
search search-miss --account-id nobody          # reads every event, prints none
search search-hit --account-id acct-51c2 --limit 10

echo "== parsing one body: serde_json's Value, the strict reader, Event::parse"
target/release/examples/parse_cost $((MESSAGES * 10)) > "$work/parse.json"

echo "== HTTP side alone (bench-http-only build: publishes nothing)"
start_relay "$work/hookrelay-http-only"
with_cpu http-sat load -n "$MESSAGES" -c "$CONNECTIONS" > "$work/http-sat.json"
# CPU per request depends on the rate (at saturation one wakeup serves many
# requests): the HTTP side at the relay's fixed rate too, to compare like with like,
# and at the relay's own saturation rate, for issue 15's target.
with_cpu http-fixed load -n $((rate * FIXED_SECS)) -c "$CONNECTIONS" -q "$rate" > "$work/http-fixed.json"
relay_rate=$(python3 -c "import json,statistics as s;print(max(1,int(s.median(json.load(open(f'$work/relay-sat-{i}.json'))['summary']['requestsPerSec'] for i in range(1,$ROUNDS+1)))))")
echo "== HTTP side alone at the relay's saturation rate: $relay_rate/s"
with_cpu http-relay-rate load -n "$MESSAGES" -c "$CONNECTIONS" -q "$relay_rate" > "$work/http-relay-rate.json"
fi
stop_relay

if [ "$mode" != cluster ]; then
echo "== spooled: RabbitMQ unreachable, $MESSAGES webhooks over $SPOOL_CONNECTIONS connections"
spooled_pid=$(start target/release/hookrelay spooled $((ADMIN_PORT + 3)) "amqp://guest:guest@127.0.0.1:1/%2f")
commits0=$(metric $((ADMIN_PORT + 3)) hookrelay_spool_commits_total)
cpu_pid=$spooled_pid with_cpu spooled-sat load_on $((PORT + 3)) -n "$MESSAGES" -c "$SPOOL_CONNECTIONS" > "$work/spooled-sat.json"
# (no such counter before group commit: then every append was its own commit)
commits=$(metric $((ADMIN_PORT + 3)) hookrelay_spool_commits_total)
echo "{\"commits\": ${commits:-null}, \"before\": ${commits0:-null}}" > "$work/spooled-commits.json"
# The kernel's count, in a run of its own: strace slows what it traces. -f
# with -p attaches to every thread of the relay.
strace -f -c -e trace=fsync,fdatasync -o "$work/spooled.strace" -p "$spooled_pid" 2>/dev/null & strace_pid=$!
sleep 1
load_on $((PORT + 3)) -n "$STRACED" -c "$SPOOL_CONNECTIONS" > "$work/spooled-straced.json"
kill -INT "$strace_pid"; wait "$strace_pid" || true
backlog=$(metric $((ADMIN_PORT + 3)) hookrelay_spool_depth)
stop "$spooled_pid"; spooled_pid=""

drain_rate=$rate
echo "== drain: $backlog spooled webhooks, while new ones arrive at $drain_rate/s (half the ceiling) for ${DRAIN_SECS}s"
started=$(date +%s.%N)
drain_pid=$(start target/release/hookrelay drain $((ADMIN_PORT + 4)))
load_on $((PORT + 4)) -z "${DRAIN_SECS}s" -c "$CONNECTIONS" -q "$drain_rate" > "$work/drain-load.json" & load_pid=$!
drained_at=null
for _ in $(seq 1 3000); do
  if [ "$(metric $((ADMIN_PORT + 4)) hookrelay_spool_depth)" = 0 ]; then drained_at=$(date +%s.%N); break; fi
  sleep 0.1
done
wait "$load_pid"
echo "{\"backlog\": $backlog, \"started\": $started, \"drained_at\": $drained_at, \"rate\": $drain_rate, \"left\": $(metric $((ADMIN_PORT + 4)) hookrelay_spool_depth)}" > "$work/drain.json"
stop "$drain_pid"; drain_pid=""
fi

STRACED=$STRACED SPOOL_CONNECTIONS=$SPOOL_CONNECTIONS DRAIN_SECS=$DRAIN_SECS python3 - "$work" "$idle_kib" "${burst_hwm_kib:-0}" "${overload_hwm_kib:-0}" "$MESSAGES" "$(getconf CLK_TCK)" "$ROUNDS" "$SEARCHED" "$broker_pid" "$mode" <<'PY' | tee "$report"
import json, os, statistics, subprocess, sys
work, idle, burst_hwm, overload_hwm, messages, hz, rounds, searched = sys.argv[1], *map(int, sys.argv[2:9])
broker_seen, mode = bool(sys.argv[9]), sys.argv[10]
cluster, full = mode == "cluster", mode == "full"
def j(name): return json.load(open(os.path.join(work, name)))
def oha(name):
    d = j(name); p = d["latencyPercentiles"]; s = d["summary"]
    codes = d.get("statusCodeDistribution", {})
    # oha cuts the requests still in flight when a -z run ends: not the relay's doing.
    errors = sum(n for e, n in d.get("errorDistribution", {}).items() if e != "aborted due to deadline")
    return {"rate": s["requestsPerSec"], "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3,
            "p999": p["p99.9"] * 1e3, "codes": codes, "errors": errors}
def base(name):
    d = j(name)
    return {"rate": d["rate"], "p50": d["p50_ms"], "p99": d["p99_ms"], "p999": d["p999_ms"], "errors": d["errors"]}
# The saturation pair shown is the round with the median ratio.
pairs = sorted(((oha(f"relay-sat-{i}.json")["rate"] / base(f"base-sat-{i}.json")["rate"], i) for i in range(1, rounds + 1)))
median_round = pairs[len(pairs) // 2][1]
bs, rs = base(f"base-sat-{median_round}.json"), oha(f"relay-sat-{median_round}.json")
bf, rf = base("base-fixed.json"), oha("relay-fixed.json")
if full:
    burst, over, http = oha("relay-burst.json"), oha("relay-overload.json"), oha("http-sat.json")
    after, probe = oha("relay-after2.json"), base("base-probe.json")
mib = lambda kib: kib / 1024
cores = os.cpu_count()
rabbit = subprocess.run(["rabbitmqctl", "-q", "version"], capture_output=True, text=True).stdout.strip()
brokers = " in a three-node cluster on this machine, quorum queues (RabbitMQ CPU: its three nodes together)" if cluster else ""
print(f"machine: {cores} cores, RabbitMQ {rabbit}{brokers}; relay, broker and load generator share them\n")
print("| run | throughput /s | p50 ms | p99 ms | p99.9 ms | non-200 | errors |")
print("|---|---:|---:|---:|---:|---|---:|")
def row(name, r, codes=True):
    non200 = {k: v for k, v in r.get("codes", {}).items() if k != "200"} if codes else "-"
    print(f"| {name} | {r['rate']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {non200 or 'none'} | {r['errors']} |")
row("baseline publisher, saturation", bs, codes=False)
row("relay, saturation", rs)
row("relay without history, same round", oha(f"nohist-sat-{median_round}.json"))
row("baseline publisher, fixed rate", bf, codes=False)
row("relay, fixed rate", rf)
if full:
    row(f"relay, burst", burst)
    row("relay, overload (2x ceiling offered)", over)
    row("relay, probe 5 s after overload", after)
    row("baseline publisher, same probe", probe, codes=False)
    row("HTTP side alone (no publish)", http)
    row("HTTP side alone, fixed rate", oha("http-fixed.json"))
    row("HTTP side alone, at the relay's saturation rate", oha("http-relay-rate.json"))
spooling = not cluster
if spooling:
    spooled, drain_load = oha("spooled-sat.json"), oha("drain-load.json")
    row(f"relay, RabbitMQ unreachable: spooled ({os.environ['SPOOL_CONNECTIONS']} connections)", spooled)
    row("relay, new webhooks while the spool drains", drain_load)
print()
ratio = rs["rate"] / bs["rate"]
per_round = ", ".join(f"{base(f'base-sat-{i}.json')['rate']:.0f} / {oha(f'relay-sat-{i}.json')['rate']:.0f} = {r:.2f}" for r, i in sorted(pairs, key=lambda p: p[1]))
print(f"- saturation rounds, baseline / relay per second = ratio, in run order: {per_round}")
print(f"- relay / baseline throughput, median of {rounds} rounds: **{ratio:.2f}** (target >= 0.85)")
print(f"- fixed rate p99: relay {rf['p99']:.2f} ms vs baseline {bf['p99']:.2f} ms + 2 ms (target: relay <= baseline + 2)")
history = [oha(f"relay-sat-{i}.json")["rate"] / oha(f"nohist-sat-{i}.json")["rate"] for i in range(1, rounds + 1)]
print(f"- the history stream's cost: relay with history / without, per round: {', '.join(f'{h:.2f}' for h in history)}; median **{statistics.median(history):.2f}**")
if full:
  print(f"- RSS: idle {mib(idle):.1f} MiB (target <= 24), peak in burst {mib(burst_hwm):.1f} MiB (target <= 64), peak after overload {mib(overload_hwm):.1f} MiB")
  print(f"- after overload: probe p50 {after['p50']:.2f} ms vs baseline probe p50 {probe['p50']:.2f} ms")
  miss, hit = j("search-miss.json"), j("search-hit.json")
  print(f"- history search over {searched} events (`events --account-id`): no match, so every event read: "
        f"{miss['seconds']:.2f} s ({searched / max(miss['seconds'], 0.01):.0f} events/s, max RSS {mib(miss['max_rss_kib']):.1f} MiB); "
        f"first 10 matches: {hit['seconds']:.2f} s ({j('search-hit.lines.json')['lines']} lines)")
  parse = j("parse.json")
  print(f"- parsing one body (ns, best of 5 x {parse['calls']}): serde_json Value {parse['serde_json_value_ns']:.0f}, "
        f"strict check alone (no duplicate keys, nothing kept) {parse['strict_json_ns']:.0f}, Event::parse {parse['event_parse_ns']:.0f}")
if spooling:
    # fsync + fdatasync calls from strace -c's table (the "calls" column).
    syncs = 0
    for line in open(os.path.join(work, "spooled.strace")):
        fields = line.split()
        if fields and fields[-1] in ("fsync", "fdatasync"):
            syncs += int(fields[3])
    straced = int(os.environ["STRACED"])
    c = j("spooled-commits.json")
    commits = "n/a (no commit counter in this build)" if c["commits"] is None else f"{(c['commits'] - c['before']) / messages:.3f}"
    print(f"- spooled, RabbitMQ unreachable: {spooled['rate']:.0f}/s against {rs['rate']:.0f}/s with RabbitMQ up in this run "
          f"(target: at least as fast); p99 {spooled['p99']:.2f} ms")
    print(f"- fsyncs per spooled webhook: {syncs / straced:.3f} ({syncs} fsync/fdatasync calls for {straced} webhooks, strace -f -c; target <= 0.2); "
          f"spool commits per spooled webhook: {commits}")
    d = j("drain.json")
    new = drain_load["codes"].get("200", 0)
    drained = "not within 300 s" if d["drained_at"] is None else (
        f"{d['drained_at'] - d['started']:.1f} s after the relay started "
        f"({(d['backlog'] + new) / (d['drained_at'] - d['started']):.0f} webhooks/s published: the backlog and {new} new ones)")
    print(f"- drain: {d['backlog']} spooled webhooks, new ones at {d['rate']}/s for the first {os.environ['DRAIN_SECS']} s: "
          f"spool empty {drained}; new webhooks meanwhile p99 {drain_load['p99']:.2f} ms, non-200 {({k: v for k, v in drain_load['codes'].items() if k != '200'}) or 'none'}")
def sent(name):  # messages in a run: the baseline says; oha counts answers and errors
    d = j(name + ".json")
    if "messages" in d:
        return d["messages"]
    return sum(d.get("statusCodeDistribution", {}).values()) + sum(d.get("errorDistribution", {}).values())
def cpu(name, column):  # µs per message of one process in a run: 0 relay, 1 RabbitMQ, 2 load generator
    return int(open(os.path.join(work, name + ".cpu")).read().split()[column]) * 1e6 / hz / sent(name)
if full:
    # Issue 15's target, from the medians over every saturation round: the relay
    # costs no more than its two parts, the HTTP side (measured at the relay's
    # own rate, since its cost per request rises as the rate falls) and the
    # baseline publisher's own process (the "load generator" of its runs).
    relay_cpu = statistics.median(cpu(f"relay-sat-{i}", 0) for i in range(1, rounds + 1))
    base_cpu = statistics.median(cpu(f"base-sat-{i}", 2) for i in range(1, rounds + 1))
    http_at, http_own = cpu("http-relay-rate", 0), cpu("http-sat", 0)
    at = oha("http-relay-rate.json")["rate"]
    print(f"- relay CPU per webhook at saturation, median of {rounds} rounds: **{relay_cpu:.0f} µs**, against the HTTP side alone at the relay's rate "
          f"({at:.0f}/s) {http_at:.0f} µs + the baseline publisher's own {base_cpu:.0f} µs = {http_at + base_cpu:.0f} µs "
          f"(target: relay <= that); the HTTP side at its own saturation costs {http_own:.0f} µs ({http['rate']:.0f}/s)")
print()
print(f"CPU and run-queue wait per message in the saturation runs of round {median_round} and at the fixed rate (µs; utime + stime from `/proc/<pid>/stat`,")
print("and time ready to run but waiting for a core from `/proc/<pid>/task/*/schedstat`, summed over threads, / messages):\n")
print("| run | RabbitMQ | relay | load generator | all | cores busy | run-queue wait: RabbitMQ | run-queue wait: relay |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
runs = [(f"base-sat-{median_round}", "baseline publisher, saturation", bs["rate"]), (f"relay-sat-{median_round}", "relay (oha), saturation", rs["rate"])]
if full:
    runs.append(("http-sat", "HTTP side alone (oha), saturation", http["rate"]))
runs += [("base-fixed", "baseline publisher, fixed rate", bf["rate"]), ("relay-fixed", "relay (oha), fixed rate", rf["rate"])]
if full:
    runs.append(("http-fixed", "HTTP side alone (oha), fixed rate", oha("http-fixed.json")["rate"]))
    runs.append(("http-relay-rate", "HTTP side alone (oha), at the relay's saturation rate", oha("http-relay-rate.json")["rate"]))
if spooling:
    runs.append(("spooled-sat", "relay, RabbitMQ unreachable (oha), saturation", spooled["rate"]))
for name, label, rate in runs:
    fields = [int(t) for t in open(os.path.join(work, name + ".cpu")).read().split()]
    count = sent(name)
    relay, broker, client = (t * 1e6 / hz / count for t in fields[:3])
    relay_wait, broker_wait = (t / 1e3 / count for t in fields[3:])
    total = relay + broker + client
    b, bw = (f"{broker:.0f}", f"{broker_wait:.0f}") if broker_seen else ("n/a", "n/a")
    print(f"| {label} | {b} | {relay:.0f} | {client:.0f} | {total:.0f} | {total * rate / 1e6:.2f} | {bw} | {relay_wait:.0f} |")
PY

if [ "$mode" != cluster ]; then
  # Issue 28: relay and baseline at 8 and 64 in flight, classic and quorum
  # queues, every request timed; draws bench/latency-over-time.png.
  echo
  bash bench/tail.sh "$([ "$MESSAGES" -ge 20000 ] && echo 20000 || echo "$MESSAGES")" | tee -a "$report"
fi
