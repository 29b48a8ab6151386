#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, from the installed Debian
# rabbitmq-server, beside (and never touching) the broker on 5672:
#
#   scripts/rabbitmq-cluster.sh start       # prints the three AMQP URIs, one per line
#   scripts/rabbitmq-cluster.sh status
#   scripts/rabbitmq-cluster.sh kill N      # SIGKILL node N's Erlang VM (N = 1, 2 or 3)
#   scripts/rabbitmq-cluster.sh restart N   # start node N again, wait until it is back in the cluster
#   scripts/rabbitmq-cluster.sh stop        # stop everything it started; its folders move to CLUSTER_DIR.last
#
# Each node has its own node name (hookrelay-nN@localhost), AMQP port
# (CLUSTER_PORT + N - 1, default 5681-5683), distribution port, data, log,
# pid, plugins and config files under CLUSTER_DIR (default
# /tmp/hookrelay-cluster); they share the Erlang cookie of the `rabbitmq` user,
# as whose they run. Every wait is bounded.
set -euo pipefail

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/hookrelay-cluster}
CLUSTER_PORT=${CLUSTER_PORT:-5681}
DIST_PORT=${DIST_PORT:-25681}
WAIT=${WAIT:-120}   # seconds any single wait may take
NODES=(1 2 3)

node_name() { echo "hookrelay-n$1@localhost"; }
amqp_port() { echo $((CLUSTER_PORT + $1 - 1)); }
dir() { echo "$CLUSTER_DIR/n$1"; }

# As the rabbitmq user, from a folder it owns: the Erlang VM reads its working
# directory at boot, and a checkout in a private folder (mode 700, as
# `mktemp -d` makes) is not readable by that user ("eacces ... Target: .").
as_rabbitmq() { (cd "$CLUSTER_DIR" 2>/dev/null || cd /; runuser -u rabbitmq -- "$@"); }
ctl() { # N ARGS...: rabbitmqctl against node N, bounded
  local n=$1; shift
  as_rabbitmq timeout "$WAIT" /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

start_node() {
  local n=$1 d
  d=$(dir "$n")
  mkdir -p "$d/mnesia" "$d/log"
  printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "$(amqp_port "$n")" > "$d/rabbitmq.conf"
  echo '[].' > "$d/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$d"
  as_rabbitmq env \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT=$((DIST_PORT + n - 1)) \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  # -detached returns before the VM registers its name: wait for that, then
  # for the boot to finish.
  local deadline=$((SECONDS + WAIT))
  until ctl "$n" ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "node $n did not come up within ${WAIT}s; see $d/log" >&2; return 1; }
    sleep 0.3
  done
  ctl "$n" await_startup
}

running_nodes() { # the nodes node 1 (or the first that answers) sees running
  local n
  for n in "${NODES[@]}"; do
    if out=$(ctl "$n" cluster_status --formatter json 2>/dev/null); then
      python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["running_nodes"]))' <<< "$out"
      return
    fi
  done
}

wait_until_clustered() { # N: node N is running, and the others see it
  local n=$1 deadline=$((SECONDS + WAIT))
  while ((SECONDS < deadline)); do
    if [[ " $(running_nodes) " == *" $(node_name "$n") "* ]]; then return; fi
    sleep 0.5
  done
  echo "node $n did not join the cluster within ${WAIT}s" >&2
  exit 1
}

vm_pid() { cat "$(dir "$1")/pid" 2>/dev/null || true; }

case "${1:-}" in
  start)
    [ -d "$CLUSTER_DIR" ] && { echo "$CLUSTER_DIR exists: stop the cluster first" >&2; exit 1; }
    command -v rabbitmq-server >/dev/null || { echo "needs Debian's rabbitmq-server" >&2; exit 1; }
    mkdir -p "$CLUSTER_DIR" && chown rabbitmq:rabbitmq "$CLUSTER_DIR" && chmod 755 "$CLUSTER_DIR"
    # A start that fails half-way leaves nothing running behind it.
    trap '"$0" stop' ERR
    for n in "${NODES[@]}"; do start_node "$n" >&2; done
    for n in 2 3; do
      # join_cluster's CLI prints feature-flag warnings that mean nothing
      # here; they go to the node's log folder.
      { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(node_name 1)" && ctl "$n" start_app; } \
        >>"$(dir "$n")/log/join.log" 2>&1 || { cat "$(dir "$n")/log/join.log" >&2; false; }
    done
    for n in "${NODES[@]}"; do wait_until_clustered "$n"; done
    trap - ERR
    for n in "${NODES[@]}"; do echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"; done
    ;;
  status)
    echo "running: $(running_nodes)"
    for n in "${NODES[@]}"; do
      pid=$(vm_pid "$n")
      state=down
      [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && state="up, vm pid $pid"
      echo "node $n: $(node_name "$n") amqp 127.0.0.1:$(amqp_port "$n") $state"
    done
    ;;
  kill)
    n=${2:?kill N}
    pid=$(vm_pid "$n")
    [ -n "$pid" ] || { echo "node $n has no pid" >&2; exit 1; }
    kill -KILL "$pid"
    deadline=$((SECONDS + WAIT))
    while kill -0 "$pid" 2>/dev/null; do
      ((SECONDS < deadline)) || { echo "node $n survived SIGKILL" >&2; exit 1; }
      sleep 0.1
    done
    ;;
  restart)
    # A running node is stopped cleanly first, as an operator would: once no
    # quorum queue depends on it for its majority (a member still catching up
    # after the previous restart). So `restart` on each node in turn is a
    # rolling restart.
    n=${2:?restart N}
    if ctl "$n" ping >/dev/null 2>&1; then
      deadline=$((SECONDS + WAIT))
      until as_rabbitmq timeout "$WAIT" /usr/lib/rabbitmq/bin/rabbitmq-diagnostics -q \
          -n "$(node_name "$n")" check_if_node_is_quorum_critical >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "node $n stayed quorum-critical for ${WAIT}s" >&2; exit 1; }
        sleep 0.5
      done
      ctl "$n" stop >/dev/null
    fi
    start_node "$n" >&2
    wait_until_clustered "$n"
    ;;
  stop)
    for n in "${NODES[@]}"; do
      ctl "$n" stop >/dev/null 2>&1 || true
      pid=$(vm_pid "$n")
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done
    # The VMs' helpers (epmd is shared with the main broker and stays).
    pkill -KILL -f "$CLUSTER_DIR/" 2>/dev/null || true
    # The last cluster's folders (logs included) stay for a post-mortem,
    # replaced by the next one's.
    if [ -d "$CLUSTER_DIR" ]; then
      rm -rf "$CLUSTER_DIR.last"
      mv "$CLUSTER_DIR" "$CLUSTER_DIR.last"
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status|kill N|restart N" >&2
    exit 2
    ;;
esac
