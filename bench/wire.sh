#!/usr/bin/env bash
# What a load generator reports against what is on the wire. Runs a relay
# (history off), captures its port on the loopback with tshark while the load
# command runs, and pairs each request with its response by TCP stream:
# request packet to response packet is the relay's latency as the network
# sees it, without the client's own delays.
#
#   bench/wire.sh wrk            wrk -t2 -c8 for 8 s
#   bench/wire.sh oha            oha -c 8 for 8 s
#
# Needs tshark and wrk (Debian), oha, RabbitMQ on AMQP_URL; runs as root (capture).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
port=18680 admin=19680 work=$(mktemp -d) exchange="bench-wire-$(date +%s)" pid=""
chmod 777 "$work"  # tshark drops to its own user to write the capture
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  delete_topology "$exchange"; rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -j2 --quiet --bin hookrelay
relay_config "$work/relay.toml" "$exchange" "$port" "$admin" "$work/spool.sqlite" false
HOOKRELAY__AMQP__URI="$AMQP_URL" target/release/hookrelay serve --config "$work/relay.toml" >/dev/null 2>&1 & pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin/readyz" | grep -q '"broker":"connected"' && break; sleep 0.1; done
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'
tshark -i lo -f "tcp port $port" -w "$work/capture.pcap" -q 2>/dev/null & capture=$!
sleep 2  # tshark has no "ready" signal; it must be listening before the load
case "${1:-wrk}" in
  wrk)
    printf 'wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["content-type"] = "application/json"\nwrk.headers["x-client-id"] = "bench-client"\n' "$body" > "$work/post.lua"
    wrk -t2 -c8 -d8s --latency -s "$work/post.lua" "http://127.0.0.1:$port/webhooks" | awk '/ 50%| 99%/ {print "wrk says: " $1 " " $2}' ;;
  oha)
    oha --no-tui --output-format json -m POST -H 'content-type: application/json' -H 'x-client-id: bench-client' \
      -d "$body" -z 8s -c 8 "http://127.0.0.1:$port/webhooks" |
      python3 -c 'import json, sys; p = json.load(sys.stdin)["latencyPercentiles"]; print("oha says: 50%% %.2fms, 99%% %.2fms" % (p["p50"] * 1e3, p["p99"] * 1e3))' ;;
esac
kill -INT "$capture"; wait "$capture" 2>/dev/null || true
tshark -r "$work/capture.pcap" -Y 'http.request || http.response' \
  -T fields -e frame.time_epoch -e tcp.stream -e http.request.method 2>/dev/null |
  python3 -c '
import sys
sent, took = {}, []
for line in sys.stdin:
    at, stream, method = (line.rstrip("\n").split("\t") + [""] * 3)[:3]
    if method:
        sent[stream] = float(at)
    elif stream in sent:
        took.append((float(at) - sent.pop(stream)) * 1000)
took.sort()
q = lambda p: took[min(len(took) - 1, int(len(took) * p))]
print(f"on the wire: {len(took)} requests, p50 {q(.5):.2f} ms, p99 {q(.99):.2f} ms, p99.9 {q(.999):.2f} ms, max {took[-1]:.2f} ms")'
