#!/usr/bin/env bash
# Checks deploy/systemd/hookrelay.service without a running systemd:
# 1. `systemd-analyze verify` on the unit (ExecStart pointed at the built
#    binary: verify refuses a command that does not exist), failing on any
#    line it prints, warnings included (an unknown key is only a warning);
# 2. the binary started as the unit starts it: its ExecStart arguments, its
#    Environment= lines, the $STATE_DIRECTORY that StateDirectory= sets and
#    the configuration where LoadCredential= puts it (%d, the credentials
#    directory). This runs the binary outside systemd (no systemd is PID 1
#    here): it checks the unit's command line and folders, not systemd's
#    sandbox, which `systemd-analyze verify` checks only as text.
#    It must become ready, keep its spool (and lock, and index) in that
#    folder, log JSON, and exit 0 on SIGTERM within TimeoutStopSec.
# Usage: scripts/systemd-check.sh path/to/hookrelay
set -euo pipefail
relay=$(realpath "$1")
unit=deploy/systemd/hookrelay.service
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sed "s|/usr/local/bin/hookrelay|$relay|g" "$unit" > "$work/hookrelay.service"
said=$(systemd-analyze verify "$work/hookrelay.service" 2>&1) || { echo "$said"; exit 1; }
if [ -n "$said" ]; then
  echo "systemd-analyze verify $unit printed:"; echo "$said"; exit 1
fi
echo "systemd-analyze verify: $unit is clean"

# The unit's command line and environment, read from the unit itself.
exec_start=$(sed -n 's/^ExecStart=//p' "$work/hookrelay.service")
environment=$(sed -n 's/^Environment=//p' "$work/hookrelay.service")
stop_timeout=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
# The configuration is a credential: the file the book installs, handed to
# the relay in %d under the name ExecStart reads.
credential=$(sed -n 's/^LoadCredential=//p' "$unit")
[ "${credential#*:}" = /etc/hookrelay/hookrelay.toml ] ||
  { echo "LoadCredential= must read /etc/hookrelay/hookrelay.toml, as docs/src/systemd.md installs it: $credential"; exit 1; }
echo "$exec_start" | grep -q -- "--config %d/${credential%%:*}\b" ||
  { echo "ExecStart= must read the credential ${credential%%:*} from %d: $exec_start"; exit 1; }
exec_start=${exec_start//%d/$work/credentials}
environment=${environment//%d/$work/credentials}
config="$work/credentials/${credential%%:*}"
exchange="systemd-check-$$"
mkdir -p "$work/state" "$work/credentials"
cat > "$config" <<TOML
[amqp]
exchange = "$exchange"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:19391"
[ingress]
allowed_ips = ["127.0.0.1"]
client_ids = ["systemd-check"]
TOML
# shellcheck disable=SC2086 # the unit's words, split as systemd splits them
env -i PATH="$PATH" STATE_DIRECTORY="$work/state" CREDENTIALS_DIRECTORY="$work/credentials" \
  $environment $exec_start > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  curl -sf http://127.0.0.1:19391/readyz > /dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "the relay exited"; exit 1; }
  sleep 0.1
done
curl -sf http://127.0.0.1:19391/readyz > /dev/null || { cat "$work/log"; echo "never ready"; exit 1; }
[ -f "$work/state/spool.sqlite" ] || { ls -la "$work/state"; echo "no spool in \$STATE_DIRECTORY"; exit 1; }
head -1 "$work/log" | python3 -c 'import json, sys; json.loads(sys.stdin.readline())' \
  || { head -3 "$work/log"; echo "the log is not JSON"; exit 1; }
echo "started as the unit starts it: ready, spool in \$STATE_DIRECTORY ($(ls "$work/state" | tr '\n' ' ')), JSON log"

kill -TERM "$pid"
for _ in $(seq $((stop_timeout * 10))); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then echo "still running ${stop_timeout} s after SIGTERM"; exit 1; fi
wait "$pid" && status=0 || status=$?
pid=""
[ "$status" = 0 ] || { tail -5 "$work/log"; echo "exit status $status after SIGTERM"; exit 1; }
echo "SIGTERM: exited 0 within TimeoutStopSec (${stop_timeout} s)"

# What it declared on the shared broker goes with it (the management API:
# CI enables the plugin before the tests).
python3 - "$exchange" <<'PY'
import base64, json, sys, urllib.parse, urllib.request
prefix, api = sys.argv[1], "http://127.0.0.1:15672/api"
auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
def call(method, path):
    request = urllib.request.Request(api + path, method=method, headers=auth)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer) if method == "GET" else None
for kind in ("queues", "exchanges"):
    for item in call("GET", f"/{kind}/%2f?columns=name"):
        if item["name"].startswith(prefix):
            call("DELETE", f"/{kind}/%2f/" + urllib.parse.quote(item["name"], safe=""))
PY
