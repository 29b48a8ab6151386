# Shared by bench/run.sh and bench/cpu.sh: sourced, not run.

# relay_config FILE EXCHANGE PORT ADMIN_PORT SPOOL [HISTORY] [QUEUE_TYPE]:
# a benchmark relay's config. Only 127.0.0.1 with client id bench-client gets
# in, and a queue EXCHANGE.all bound to `#` takes every event.
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
  for q in all unrouted dead-letter quarantine history accounts; do rabbitmqctl -q delete_queue "$1.$q" >/dev/null 2>&1 || true; done
  # rabbitmqctl has no delete_exchange: ask the broker's own function.
  for x in "" .in .unrouted .dlx; do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$1$x\">>), false, <<\"bench\">>)." >/dev/null 2>&1 || true
  done
}
