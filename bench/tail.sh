#!/usr/bin/env bash
# The latency tail: the relay against the baseline publisher at the same
# number of messages in flight (8 and 64), with every request's time kept, on
# three consumer queues: classic with no consumer (the benchmark's usual
# `<exchange>.all`, which fills up), quorum with no consumer, and classic with
# a consumer keeping it short (as a served queue is). Prints p50/p99/p99.9/max of
# each, how the slowest 1 % cluster in time (a stall that holds up everything
# in flight at once shows as groups as large as the in-flight count), and
# draws latency over time for both into bench/latency-over-time.png.
#
#   bench/tail.sh [MESSAGES]     (default 20000 per run; bench/run.sh calls it)
#
# The relay runs with the history off, so that only the publish path is
# measured. Load: oha, recording every request (--db-url); the baseline
# publisher records its own (--timings). Needs RabbitMQ on AMQP_URL, oha
# (installed from crates.io if missing) and python3 (matplotlib is installed
# into a virtualenv under the target folder).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${1:-20000}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${TAIL_PORT:-18580} ADMIN_PORT=${TAIL_ADMIN_PORT:-19580}
command -v oha >/dev/null || cargo install --locked oha
cargo build --release -j2 --quiet --bin hookrelay --example baseline_publisher
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
venv="$target_dir/bench-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib==3.11.2 pika==1.4.4

work=$(mktemp -d) pid="" exchange="" consumer=""
cleanup() {
  [ -n "$consumer" ] && kill "$consumer" 2>/dev/null
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  [ -n "$exchange" ] && delete_topology "$exchange"
  rm -rf "$work"
}
trap cleanup EXIT
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'

for queue in classic quorum classic-consumed; do
  exchange="bench-tail-$queue-$(date +%s)"
  relay_config "$work/$queue.toml" "$exchange" "$PORT" "$ADMIN_PORT" "$work/$queue.sqlite" false "${queue%-consumed}"
  HOOKRELAY__AMQP__URI="$AMQP_URL" target/release/hookrelay serve --config "$work/$queue.toml" >/dev/null 2>"$work/$queue.log" &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" | grep -q '"broker":"connected"' && break
    sleep 0.1
  done
  if [ "$queue" = classic-consumed ]; then
    # A consumer that keeps up: prefetch 2,000, an ack (multiple) every 100.
    "$venv/bin/python" - "$AMQP_URL" "$exchange.all" <<'PY' &
import sys, pika
channel = pika.BlockingConnection(pika.URLParameters(sys.argv[1])).channel()
channel.basic_qos(prefetch_count=2000)
seen = 0
def take(ch, method, properties, body):
    global seen
    seen += 1
    if seen % 100 == 0:
        ch.basic_ack(method.delivery_tag, multiple=True)
channel.basic_consume(sys.argv[2], take)
channel.start_consuming()
PY
    consumer=$!
  fi
  echo "== $queue queue: baseline publisher, then relay, at 8 and 64 in flight ($N messages each)"
  for inflight in 8 64; do
    rabbitmqctl -q purge_queue "$exchange.all" >/dev/null
    target/release/examples/baseline_publisher --exchange "$exchange.in" --messages "$N" \
      --in-flight "$inflight" --timings "$work/$queue-base-$inflight.csv" > /dev/null
    rabbitmqctl -q purge_queue "$exchange.all" >/dev/null
    oha --no-tui --output-format quiet -m POST -H 'content-type: application/json' \
      -H 'x-client-id: bench-client' -d "$body" -n "$N" -c "$inflight" \
      --db-url "$work/$queue-relay-$inflight.db" "http://127.0.0.1:$PORT/webhooks"
  done
  [ -n "$consumer" ] && { kill "$consumer"; wait "$consumer" 2>/dev/null || true; consumer=""; }
  kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; pid=""
  delete_topology "$exchange"; exchange=""
done

# The committed picture comes from a full-size run only.
png=bench/latency-over-time.png
[ "$N" -ge 20000 ] || png="$work/latency-over-time.png"
"$venv/bin/python" - "$work" "$png" <<'PY'
import csv, sqlite3, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

work, png = sys.argv[1], sys.argv[2]

def baseline(queue, inflight):
    path = f"{work}/{queue}-base-{inflight}.csv"
    return sorted((float(r["start_s"]), float(r["latency_ms"])) for r in csv.DictReader(open(path)))

def relay(queue, inflight):
    rows = sqlite3.connect(f"{work}/{queue}-relay-{inflight}.db").execute(
        "SELECT start, duration FROM oha ORDER BY start").fetchall()
    return [(start - rows[0][0], seconds * 1000) for start, seconds in rows]

def stats(rows):
    latencies = sorted(ms for _, ms in rows)
    at = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))]
    # The slowest 1 %: a stall is a run of them that began within 20 ms of each other.
    slow = [start for start, ms in rows if ms >= at(0.99)]
    stalls = []
    for start in slow:
        if not stalls or start - stalls[-1][0] > 0.02:
            stalls.append([start, 0])
        stalls[-1][0] = start
        stalls[-1][1] += 1
    seconds = rows[-1][0] - rows[0][0]
    sizes = sorted(n for _, n in stalls)
    return {"rate": len(rows) / seconds, "p50": at(0.5), "p99": at(0.99), "p999": at(0.999),
            "max": latencies[-1], "stalls": len(stalls) / seconds, "size": sizes[len(sizes) // 2]}

print("| queue | in flight | who | throughput /s | p50 ms | p99 ms | p99.9 ms | max ms | stalls /s (slowest 1 %) | requests per stall (median) |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
queues = ("classic", "quorum", "classic-consumed")
fig, axes = plt.subplots(len(queues), 2, figsize=(12, 10), sharex=False)
for row, queue in enumerate(queues):
    for col, inflight in enumerate((8, 64)):
        runs = {"baseline publisher": baseline(queue, inflight), "relay": relay(queue, inflight)}
        s = {who: stats(rows) for who, rows in runs.items()}
        for who, st in s.items():
            print(f"| {queue} | {inflight} | {who} | {st['rate']:.0f} | {st['p50']:.2f} | {st['p99']:.2f} | "
                  f"{st['p999']:.2f} | {st['max']:.2f} | {st['stalls']:.1f} | {st['size']} |")
        ratio = s["relay"]["p99"] / s["baseline publisher"]["p99"]
        print(f"| {queue} | {inflight} | relay p99 / baseline p99 | | | **{ratio:.2f}** | | | | |")
        ax = axes[row][col]
        for (who, rows), color in zip(runs.items(), ("tab:blue", "tab:orange")):
            ax.scatter([t for t, _ in rows], [ms for _, ms in rows], s=1, alpha=0.4, color=color,
                       label=f"{who}: p99 {s[who]['p99']:.1f} ms")
        ax.set_yscale("log")
        title = {"classic": "classic queue, no consumer (fills up)", "quorum": "quorum queue, no consumer",
                 "classic-consumed": "classic queue with a consumer (stays short)"}[queue]
        ax.set_title(f"{title}, {inflight} in flight")
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("latency, ms (log)")
        ax.legend(loc="upper right", markerscale=8, fontsize=8)
fig.suptitle("Latency of every publish: baseline publisher (RabbitMQ's own) and relay, same in-flight count")
fig.tight_layout()
fig.savefig(png, dpi=90)
print(f"\nlatency over time: {png}")
PY
