#!/usr/bin/env bash
# The Quick start, run for real: `docker-compose up --build` of the project's
# unchanged Dockerfile and compose files, the way users run them, then an
# operator's day, then the cluster file with a node killed under load. CI
# runs it (.ci/run); a developer can too (as root, on a Debian machine).
#
#   scripts/compose-check.sh            both compose files
#   scripts/compose-check.sh single     docker-compose.yml only
#   scripts/compose-check.sh cluster    docker-compose.cluster.yml only
#
# No Docker engine and no registry here: containers run under Debian's podman
# (through its Docker API socket, which Debian's docker-compose 1.29 drives),
# and the base images the project's files name are made from Debian's
# packages, each under the exact tag used (scripts/containers/): the
# debian:bookworm-slim base (debootstrap), the rust:1-slim-bookworm build
# image (that base, a C compiler and the machine's own Rust toolchain), and
# rabbitmq:3.13-management (that base and Debian's rabbitmq-server: RabbitMQ
# 3.10, not 3.13). They are kept between runs (rebuilt when their recipe
# changes); everything else the run makes (containers, networks, volumes, the
# hookrelay image) is removed at the end, pass or fail.
#
# Ports on the host are moved only through the variables the compose files
# offer, since the machine's own RabbitMQ holds 5672 and 15672.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}

export CONTAINERS_CONF="$PWD/scripts/containers/containers.conf"
SOCKET=/tmp/hookrelay-compose-check.sock
export DOCKER_HOST="unix://$SOCKET"
SINGLE=hookrelay-check CLUSTER=hookrelay-check-cluster
export HOOKRELAY_CLIENT_IDS=compose-check
export HOOKRELAY_ADMIN_TOKEN=compose-check-console-token
# Webhooks from this host reach the relay through podman's bridge (10.88/16,
# 10.89/16), or Docker's (172.16/12) where that is what runs.
export HOOKRELAY_ALLOWED_IPS=10.0.0.0/8,172.16.0.0/12
export HOOKRELAY_PORT=38080 HOOKRELAY_ADMIN_PORT=39090 HOOKRELAY_PORT2=38081 HOOKRELAY_ADMIN_PORT2=39091
export RABBITMQ_PORT=35672 RABBITMQ_PORT2=35673 RABBITMQ_PORT3=35674 RABBITMQ_UI_PORT=35600
export RABBITMQ_ERLANG_COOKIE=compose-check-cookie
RELAY="http://127.0.0.1:$HOOKRELAY_PORT" ADMIN="http://127.0.0.1:$HOOKRELAY_ADMIN_PORT"
UI="http://127.0.0.1:$RABBITMQ_UI_PORT" UI_USER=hookrelay:hookrelay

# Each step prints its outcome and how long it took; a summary at the end.
started=$SECONDS step_name="" step_start=$SECONDS timings=()
end_step() {
  [ -n "$step_name" ] || return 0
  local took=$((SECONDS - step_start))
  printf -- '-- ok: %s (%d s)\n' "$step_name" "$took"
  timings+=("$(printf '%5d s  %s' "$took" "$step_name")")
  step_name=""
}
step() { end_step; step_name="$*"; step_start=$SECONDS; printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: ${step_name}: $*" >&2; exit 1; }

service_pid="" pump_pid=""
cleanup() {
  local rc=$?
  [ $rc -eq 0 ] && end_step
  if [ $rc -ne 0 ] && [ -n "$step_name" ]; then
    echo "-- failed: $step_name; the containers said:" >&2
    docker-compose -p "$SINGLE" -f docker-compose.yml logs --tail 40 >&2 2>/dev/null || true
    docker-compose -p "$CLUSTER" -f docker-compose.cluster.yml logs --tail 40 >&2 2>/dev/null || true
  fi
  [ -n "$pump_pid" ] && kill "$pump_pid" 2>/dev/null
  docker-compose -p "$SINGLE" -f docker-compose.yml down -v --remove-orphans >/dev/null 2>&1 || true
  docker-compose -p "$CLUSTER" -f docker-compose.cluster.yml down -v --remove-orphans >/dev/null 2>&1 || true
  podman rmi -f hookrelay:latest >/dev/null 2>&1 || true
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null
  rm -f "$SOCKET"
  printf '\n== compose check timings\n'
  printf '%s\n' "${timings[@]}"
  printf 'total: %d s, exit %d\n' "$((SECONDS - started))" "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- machinery

step "podman, runc, docker-compose, debootstrap (Debian's)"
missing=()
for tool in podman runc docker-compose debootstrap curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
podman --version; docker-compose --version

step "podman's Docker API on $SOCKET"
rm -f "$SOCKET"
podman system service --time=0 "unix://$SOCKET" >/dev/null 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
[ -S "$SOCKET" ] || fail "the socket did not appear"
# Podman runs no health checks by itself here (it would use systemd timers),
# so `depends_on: condition: service_healthy` would wait forever: run the
# compose files' own checks, every 2 s, for every container that has one.
(
  while true; do
    for c in $(podman ps --format '{{.Names}}' 2>/dev/null); do
      podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
    sleep 2
  done
) &
pump_pid=$!

# An image under `tag`, made by `make` unless one exists from the same recipe.
image() {
  local tag=$1 recipe=$2 make=$3
  if [ "$(podman image inspect --format '{{ index .Labels "hookrelay.recipe" }}' "$tag" 2>/dev/null)" = "$recipe" ]; then
    echo "$tag: kept from an earlier run"
  else
    "$make" "$tag" "$recipe"
    echo "$tag: made"
  fi
}
make_debian() {
  local root; root=$(mktemp -d)
  local mirror; mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$root/fs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$root/fs" -c . | podman import --change "LABEL hookrelay.recipe=$2" - "$1" >/dev/null
  rm -rf "$root"
}
make_from() { # a Containerfile of scripts/containers/<name> as the build context
  local name=$1 tag=$2 recipe=$3 context; context=$(mktemp -d)
  cp -r "scripts/containers/$name/." "$context/"
  if [ "$name" = rust ]; then
    cp -al "$(rustc --print sysroot)" "$context/rust" 2>/dev/null || cp -a "$(rustc --print sysroot)" "$context/rust"
    cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$context/ca-certificates.crt"
  fi
  podman build -q --label "hookrelay.recipe=$recipe" -t "$tag" -f "$context/Containerfile" "$context" >/dev/null
  rm -rf "$context"
}
make_rust() { make_from rust "$1" "$2"; }
make_rabbitmq() { make_from rabbitmq "$1" "$2"; }
recipe() { cat "$@" | sha256sum | cut -c1-16; }

step "base images from Debian's packages: debian:bookworm-slim, rust:1-slim-bookworm, rabbitmq:3.13-management"
image docker.io/library/debian:bookworm-slim "debootstrap-minbase-bookworm-1" make_debian
image docker.io/library/rust:1-slim-bookworm \
  "$(rustc --version | cat - scripts/containers/rust/Containerfile | sha256sum | cut -c1-16)" make_rust
image docker.io/library/rabbitmq:3.13-management \
  "$(recipe scripts/containers/rabbitmq/Containerfile scripts/containers/rabbitmq/docker-entrypoint.sh)" make_rabbitmq

# ---------------------------------------------------------------- helpers

# JSON field of a URL's answer, or empty.
field() { curl -sf "$1" 2>/dev/null | python3 -c "import json, sys; print(json.load(sys.stdin)$2)" 2>/dev/null || true; }
# Waits up to $1 s for the command that follows to succeed, running it again
# every second (so a condition is a function, evaluated at each try: never
# `test "$(...)"`, which the shell would evaluate once, at the call).
within() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
ready() { [ "$(field "$1/readyz" '["status"]')" = ready ]; }
broker_is() { [ "$(field "$1/readyz" '["broker"]')" = "$2" ]; }
depth_is() { [ "$(depth "$1")" = "$2" ]; }
queue_holds() { [ "$(queue_messages "$1")" = "$2" ]; }
accepted_at_least() { [ "$(accepted "$1")" -ge "$2" ]; }
# Webhooks a relay has accepted (published or spooled) so far.
accepted() {
  curl -sf "$1/metrics" | awk '/^hookrelay_webhook_requests_total\{outcome="(accepted|spooled)"\}/ {n += $2} END {print n + 0}'
}
depth() { field "$1/readyz" '["spool"]["depth"]'; }
# RabbitMQ's management API of the single-node setup.
ui() { local method=$1 path=$2; shift 2; curl -sf -u "$UI_USER" -X "$method" -H 'content-type: application/json' "$UI/api$path" "$@"; }

# How many messages a queue of the single-node setup holds, once RabbitMQ has counted.
queue_messages() { ui GET "/queues/%2F/$1" 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin).get("messages", ""))' 2>/dev/null || true; }

# Sends webhooks; prints the status code, and the id, of each (one per line).
# The n-th names user u-PREFIXn and account a-PREFIXn: a batch about accounts
# of its own takes a prefix of its own (every copy is published: a repeat is
# an event).
# send URL BODY_KIND COUNT [PARALLEL] [PREFIX]
send() {
  python3 - "$@" <<'PY'
import json, sys, concurrent.futures, urllib.request, urllib.error
url, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 1
prefix = sys.argv[5] if len(sys.argv) > 5 else ""
def body(n):
    user = {"id": f"u-{prefix}{n}", "loginName": "someone@example.com"}
    account = {"id": f"a-{prefix}{n}", "provider": "Compose Bank"}
    if kind == "SyncAccount":
        return {"hook": "SyncAccount", "user": user, "account": account}
    if kind == "invalid":
        return {"hook": "SyncAccount", "user": user}
    return {"hook": "SyncError", "user": user, "account": account, "error": kind}
def post(n):
    request = urllib.request.Request(f"{url}/webhooks", data=json.dumps(body(n)).encode(), method="POST",
                                     headers={"content-type": "application/json", "x-client-id": "compose-check"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer).get("id", "")
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused).get("id", "")
    except Exception as error:
        return 0, type(error).__name__
with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    for status, id in pool.map(post, range(count)):
        print(status, id)
PY
}
# The distinct message ids among `hookrelay inspect QUEUE --json` lines on stdin.
inspected_ids() { python3 -c '
import json, sys
ids = {json.loads(l).get("message_id") for l in sys.stdin if l.startswith("{") and "message_id" in l}
print("\n".join(sorted(i for i in ids if i)))'; }

# ---------------------------------------------------------------- single node

single() {
  local compose=(docker-compose -p "$SINGLE" -f docker-compose.yml)

  step "docker-compose up -d --build (docker-compose.yml, unchanged)"
  "${compose[@]}" up -d --build
  within 240 ready "$ADMIN" || fail "/readyz did not say ready: $(curl -s "$ADMIN/readyz")"
  curl -s "$ADMIN/readyz"; echo

  step "every kind of webhook from the host, read back from RabbitMQ through a consumer queue; what they mean for the account, through another"
  ui PUT /queues/%2F/compose-check -d '{"durable":true}' >/dev/null
  ui POST /bindings/%2F/e/webhooks/q/compose-check -d '{"routing_key":"sync.#"}' >/dev/null
  ui PUT /queues/%2F/compose-check-accounts -d '{"durable":true}' >/dev/null
  # What the webhooks mean comes through the relay's own exchange.
  ui POST /bindings/%2F/e/webhooks.changes/q/compose-check-accounts -d '{"routing_key":"account.#"}' >/dev/null
  local kinds=(SyncAccount LoginFailedError SecurityQuestionError TemporaryFailureError
    UnhandledConnectorError UnknownConnectorError BrandNewError)
  local answer first=""
  for kind in "${kinds[@]}"; do
    answer=$(send "$RELAY" "$kind" 1)
    [ "${answer%% *}" = 200 ] || fail "$kind was not accepted: $answer"
    [ -n "$first" ] || first=$answer
  done
  [ "$(send "$RELAY" invalid 1 | cut -d' ' -f1)" = 422 ] || fail "an invalid body was not answered 422"
  # The first (SyncAccount) once more, as the sender's next sync: a repeat is
  # an event, published again with an id of its own.
  again=$(send "$RELAY" SyncAccount 1)
  [ "${again%% *}" = 200 ] && [ "$again" != "$first" ] || fail "a repeat was not published as an event: $first, then $again"
  echo "a repeat of $first published as its own event: $again"
  got=$(ui POST /queues/%2F/compose-check/get -d '{"count":100,"ackmode":"ack_requeue_false","encoding":"auto"}' |
    python3 -c 'import json, sys; print(" ".join(sorted(m["routing_key"] for m in json.load(sys.stdin))))')
  want="sync.account sync.account sync.error.BrandNewError sync.error.LoginFailedError sync.error.SecurityQuestionError sync.error.TemporaryFailureError sync.error.UnhandledConnectorError sync.error.UnknownConnectorError"
  [ "$got" = "$want" ] || fail "routing keys read back: $got"
  echo "read back: $got"
  # All eight were about one account (a-0): seven changes of its state, one
  # message each (the temporary failure changed nothing: it still needed a
  # reconnect). The announcer publishes them after the events, so wait.
  within 60 queue_holds compose-check-accounts 7 ||
    fail "compose-check-accounts holds $(queue_messages compose-check-accounts) account changes, not 7"
  got=$(ui POST /queues/%2F/compose-check-accounts/get -d '{"count":100,"ackmode":"ack_requeue_false","encoding":"auto"}' |
    python3 -c 'import json, sys; print(" ".join(m["routing_key"] for m in json.load(sys.stdin)))')
  want="account.ok account.needs_reconnect account.needs_reconnect account.contact_provider account.contact_provider account.unknown account.ok"
  [ "$got" = "$want" ] || fail "account changes read back: $got"
  echo "account changes, in order: $got"
  ui DELETE /queues/%2F/compose-check-accounts >/dev/null
  reason=$(ui POST /queues/%2F/webhooks.quarantine/get -d '{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["properties"]["headers"]["x-quarantine-reason"])')
  [ -n "$reason" ] || fail "the invalid body is not in webhooks.quarantine"
  echo "the invalid body is in webhooks.quarantine: $reason"

  step "the console on the admin port: 401 without the token; with it, account a-0's events and who needs the user"
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/api/status")" = 401 ] || fail "the console answered without its token"
  console() { curl -sf -H "Authorization: Bearer $HOOKRELAY_ADMIN_TOKEN" "$ADMIN/api$1"; }
  sync_events_of_a0() { console '/events?account_id=a-0&routing_key=sync.%23' | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["events"]))'; }
  lists_all_eight() { [ "$(sync_events_of_a0)" = 8 ]; }
  # The console's index follows the history a moment behind.
  within 30 lists_all_eight || fail "the console lists $(sync_events_of_a0) sync events of a-0, not 8"
  events=8
  reconnect=$(console '/accounts?state=needs_reconnect' | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["accounts"]))')
  echo "the console lists $events sync events of account a-0; $reconnect account(s) need the user"

  step "docker-compose restart hookrelay: ready again"
  "${compose[@]}" restart hookrelay
  within 120 ready "$ADMIN" || fail "not ready after the restart"

  step "docker-compose stop rabbitmq while 200 webhooks arrive: all 200, spooled; the relay restarted meanwhile keeps its spool"
  "${compose[@]}" stop rabbitmq
  within 60 broker_is "$ADMIN" disconnected || fail "the relay did not notice"
  send "$RELAY" LoginFailedError 200 8 spooled- > /tmp/compose-check-spooled.txt
  [ "$(grep -c '^200 ' /tmp/compose-check-spooled.txt)" = 200 ] || fail "not every webhook was accepted: $(cut -d' ' -f1 /tmp/compose-check-spooled.txt | sort | uniq -c)"
  [ "$(depth "$ADMIN")" = 200 ] || fail "spool depth $(depth "$ADMIN"), not 200"
  "${compose[@]}" restart hookrelay
  within 60 depth_is "$ADMIN" 200 || fail "the spool did not survive the restart: $(curl -s "$ADMIN/readyz")"
  curl -s "$ADMIN/readyz"; echo

  step "docker-compose start rabbitmq: all 200 delivered, none lost"
  "${compose[@]}" start rabbitmq
  within 240 ready "$ADMIN" || fail "not ready again: $(curl -s "$ADMIN/readyz")"
  within 60 depth_is "$ADMIN" 0 || fail "the spool did not drain"
  delivered=$(ui POST /queues/%2F/compose-check/get -d '{"count":1000,"ackmode":"ack_requeue_false","encoding":"auto"}' |
    python3 -c 'import json, sys; print("\n".join(sorted({m["properties"]["message_id"] for m in json.load(sys.stdin)})))')
  missing=$(comm -23 <(cut -d' ' -f2 /tmp/compose-check-spooled.txt | sort) <(echo "$delivered"))
  [ -z "$missing" ] || fail "accepted but not delivered: $missing"
  echo "all 200 spooled webhooks are in compose-check"

  step "docker-compose exec hookrelay hookrelay audit: every number the relay gave, accounted for from the history"
  "${compose[@]}" exec -T hookrelay hookrelay audit --grace 0s || fail "the audit found a loss"

  step "docker-compose exec hookrelay hookrelay events / replay / spool list"
  "${compose[@]}" exec -T hookrelay hookrelay events --routing-key 'sync.error.*' --limit 3
  "${compose[@]}" exec -T hookrelay hookrelay replay --dry-run
  "${compose[@]}" exec -T hookrelay hookrelay spool list

  step "docker-compose down, then up: the queues and their messages are kept"
  send "$RELAY" SyncAccount 1 1 kept- >/dev/null
  "${compose[@]}" down
  "${compose[@]}" up -d
  within 240 ready "$ADMIN" || fail "not ready after down and up"
  # (The management API counts a queue's messages a few seconds after a start.)
  within 60 queue_holds compose-check 1 ||
    fail "compose-check holds $(queue_messages compose-check) messages after down and up, not 1"
  echo "compose-check and its message survived"
  "${compose[@]}" down -v
}

# ---------------------------------------------------------------- cluster

cluster() {
  local compose=(docker-compose -p "$CLUSTER" -f docker-compose.cluster.yml)
  local admin2="http://127.0.0.1:$HOOKRELAY_ADMIN_PORT2" relay2="http://127.0.0.1:$HOOKRELAY_PORT2"

  step "docker-compose -f docker-compose.cluster.yml up -d --build: three nodes cluster at first boot"
  "${compose[@]}" up -d --build
  within 300 ready "$ADMIN" || fail "relay 1 not ready: $(curl -s "$ADMIN/readyz")"
  within 120 ready "$admin2" || fail "relay 2 not ready: $(curl -s "$admin2/readyz")"
  nodes=$("${compose[@]}" exec -T rabbit2 rabbitmqctl -q cluster_status --formatter json |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["running_nodes"]))')
  [ "$nodes" = 3 ] || fail "$nodes nodes running in the cluster, not 3"
  echo "3 nodes running; relay 1 on $(field "$ADMIN/readyz" '["node"]'), relay 2 on $(field "$admin2/readyz" '["node"]')"

  step "load on both relays; docker-compose kill rabbit1 (relay 1's node) in the middle: nothing acknowledged is lost"
  ( send "$RELAY" LoginFailedError 300 4 c1- > /tmp/compose-check-cluster-1.txt ) &
  local load1=$!
  ( send "$relay2" LoginFailedError 300 4 c2- > /tmp/compose-check-cluster-2.txt ) &
  local load2=$!
  # The fault comes while the load runs: once relay 1 has taken 60 of its 300.
  within 60 accepted_at_least "$ADMIN" 60 || fail "the load did not start"
  "${compose[@]}" kill rabbit1
  wait "$load1" "$load2"
  local accepted; accepted=$(cat /tmp/compose-check-cluster-1.txt /tmp/compose-check-cluster-2.txt | grep -c '^200 ' || true)
  echo "answered 200: $accepted of 600; others: $(cat /tmp/compose-check-cluster-[12].txt | cut -d' ' -f1 | grep -v '^200$' | sort | uniq -c | tr '\n' ' ')"
  within 120 depth_is "$ADMIN" 0 || fail "relay 1's spool did not drain: $(curl -s "$ADMIN/readyz")"
  within 120 depth_is "$admin2" 0 || fail "relay 2's spool did not drain: $(curl -s "$admin2/readyz")"
  "${compose[@]}" exec -T hookrelay2 hookrelay inspect reprompt-credentials --json 2>/dev/null | inspected_ids > /tmp/compose-check-cluster-queue.txt
  missing=$(comm -23 <(cat /tmp/compose-check-cluster-[12].txt | awk '$1 == 200 {print $2}' | sort) /tmp/compose-check-cluster-queue.txt)
  [ -z "$missing" ] || fail "accepted but not in reprompt-credentials: $(echo "$missing" | wc -l)"
  echo "every one of the $accepted accepted is in reprompt-credentials ($(wc -l < /tmp/compose-check-cluster-queue.txt) distinct there)"
  echo "relay 1 is now on $(field "$ADMIN/readyz" '["node"]'), relay 2 on $(field "$admin2/readyz" '["node"]')"
  "${compose[@]}" down -v
}

case "$what" in
  single) single ;;
  cluster) cluster ;;
  all) single; cluster ;;
  *) echo "usage: $0 [single|cluster]" >&2; exit 2 ;;
esac
