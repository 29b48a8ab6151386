# Shared by the benchmark scripts: sourced, not run.

# relay_config FILE EXCHANGE PORT ADMIN_PORT SPOOL [HISTORY] [QUEUE_TYPE]:
# a benchmark relay's config. Only 127.0.0.1 with client id bench-client gets
# in, and a queue EXCHANGE.all bound to `#` takes every event. Everything
# else is the default: [accounts] on, and (with HISTORY true, the default)
# the history. A load tool that sends one body again and again sends copies
# that are stored once while one is in flight: bench/webhooks.lua (wrk) sends
# distinct bodies, as distinct events are.
relay_config() {
  cat > "$1" <<TOML
[ingress]
allowed_ips = ["127.0.0.1"]
client_ids = ["bench-client"]
[server]
listen = "127.0.0.1:$3"
admin_listen = "127.0.0.1:$4"
[amqp]
exchange = "$2"
queue_type = "${7:-classic}"
[spool]
path = "$5"
[history]
enabled = ${6:-true}
[[queues]]
name = "$2.all"
bindings = ["#"]
TOML
}

# delete_topology EXCHANGE: every queue and exchange a relay declared for
# EXCHANGE, on the broker rabbitmqctl reaches.
delete_topology() {
  local q x
  for q in all all-changes unrouted dead-letter quarantine history accounts announcer; do rabbitmqctl -q delete_queue "$1.$q" >/dev/null 2>&1 || true; done
  # rabbitmqctl has no delete_exchange: ask the broker's own function.
  for x in "" .in .unrouted .dlx .changes; do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$1$x\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
  done
}

start() { # BINARY CONFIG ADMIN_PORT [URI]: starts a relay on $work/CONFIG.toml, waits until it is connected
  # (or, given a URI that does not answer, until it takes webhooks), prints its pid
  local uri=${4:-${relay_uri:-$AMQP_URL}} ready='"broker":"connected"'
  [ -n "${4:-}" ] && ready='"accepting":true'
  # stdout elsewhere: this runs inside $(...), which would wait for it to close.
  HOOKRELAY__AMQP__URI="$uri" "$1" serve --config "$work/$2.toml" >/dev/null 2>"$work/$2.log" &
  local pid=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$3/readyz" 2>/dev/null | grep -q "$ready"; then echo "$pid"; return; fi
    sleep 0.1
  done
  echo "relay not ready; log:" >&2; cat "$work/$2.log" >&2; exit 1
}
# start runs inside $(...), so its relay is not this shell's child: poll, not wait.
stop() { kill "$1" 2>/dev/null || true; while kill -0 "$1" 2>/dev/null; do sleep 0.1; done; }
