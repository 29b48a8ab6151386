#!/usr/bin/env bash
# CPU per webhook of one relay binary, for comparing two builds of it:
#
#   bench/cpu.sh BINARY [N] [RATE]       relay utime + stime per webhook over N
#                                        webhooks (default 20000) on 32
#                                        connections, at saturation or RATE/s
#   bench/cpu.sh --callgrind BINARY [N]  user-space instructions per webhook
#                                        (valgrind's callgrind, N default 2000,
#                                        8 connections, after 500 uncounted);
#                                        leaves the profile for callgrind_annotate
#
# Needs RabbitMQ on AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
# and rabbitmqctl; valgrind for --callgrind. Installs oha (crates.io) if
# missing. Uses an exchange of its own and deletes what the relay declared.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
callgrind=""
[ "${1:-}" = "--callgrind" ] && { callgrind=1; shift; }
binary=${1:?usage: bench/cpu.sh [--callgrind] BINARY [N] [RATE]}
n=${2:-$([ -n "$callgrind" ] && echo 2000 || echo 20000)}
rate=${3:-}
command -v oha >/dev/null || cargo install --locked oha
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
work=$(mktemp -d) exchange="bench-cpu-$(date +%s)" port=18380 admin=19390
relay_config "$work/relay.toml" "$exchange" "$port" "$admin" "$work/spool.sqlite"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  delete_topology "$exchange"
  rm -rf "$work"
}
trap cleanup EXIT
body='{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}'
load() { # N CONNECTIONS [oha flags]
  local count=$1 connections=$2; shift 2
  oha --no-tui -n "$count" -c "$connections" "$@" -m POST -H 'content-type: application/json' \
    -H 'x-client-id: bench-client' -d "$body" "http://127.0.0.1:$port/webhooks" | awk '/Requests\/sec/ {print $2}'
}
if [ -n "$callgrind" ]; then
  out=$(pwd)/callgrind.out.$exchange
  HOOKRELAY__AMQP__URI="$AMQP_URL" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$out" "$binary" serve --config "$work/relay.toml" >"$work/log" 2>&1 &
else
  HOOKRELAY__AMQP__URI="$AMQP_URL" "$binary" serve --config "$work/relay.toml" >"$work/log" 2>&1 &
fi
pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$admin/readyz" 2>/dev/null | grep -q '"broker":"connected"' && break
  sleep 0.1
done
if [ -n "$callgrind" ]; then
  load 500 8 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  per_second=$(load "$n" 8)
  callgrind_control -d "$pid" >/dev/null 2>&1
  total=$(callgrind_annotate "$out.1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$n webhooks at $per_second/s under callgrind: $((total / n)) instructions per webhook (profile: $out.1)"
else
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  per_second=$(load "$n" 32 ${rate:+-q "$rate"})
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  echo "$n webhooks at $per_second/s: relay CPU $(( (after - before) * 1000000 / $(getconf CLK_TCK) / n )) µs per webhook"
fi
