#!/usr/bin/env python3
"""The alert rules against a real Prometheus (Debian's `prometheus`) and a real
relay whose RabbitMQ is unreachable:

webhooks keep arriving, are spooled, and Prometheus, scraping the relay every
second, fires HookrelaySpoolGrowing and HookrelayBrokerDisconnected: read from
its own /api/v1/alerts. (That every metric the rules and the dashboard name is
one the relay exposes is a unit test: src/metrics.rs.)

The rules are loaded as shipped, except that every `for:` is cut to 0s so the
check takes seconds, not minutes (the unit tests, check.py, test the `for:`).

    deploy/prometheus/e2e.py --relay target/debug/hookrelay
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "hookrelay.rules.yml")
CLIENT_ID = "e2e-client"
EXPECTED = {"HookrelaySpoolGrowing", "HookrelayBrokerDisconnected"}
DEADLINE = 180


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def wait_for(what, probe, deadline=60):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True)
    parser.add_argument("--prometheus", default="prometheus")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hookrelay-prometheus-")
    port, admin, prom_port = free_port(), free_port(), free_port()
    # Nothing listens on the unreachable port: connections are refused at once.
    unreachable = free_port()
    config = os.path.join(work, "relay.toml")
    with open(config, "w") as file:
        file.write(f"""
[ingress]
allowed_ips = ["127.0.0.1"]
client_ids = ["{CLIENT_ID}"]
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[amqp]
uri = "amqp://guest:guest@127.0.0.1:{unreachable}/%2f"
exchange = "prometheus-e2e"
[spool]
path = "{work}/spool.sqlite"
""")
    with open(RULES) as file:
        rules = re.sub(r"(?m)^(\s+for:)\s*\S+", r"\1 0s", file.read())
    with open(os.path.join(work, "rules.yml"), "w") as file:
        file.write(rules)
    with open(os.path.join(work, "prometheus.yml"), "w") as file:
        file.write(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{work}/rules.yml]
scrape_configs:
  - job_name: hookrelay
    static_configs: [{{targets: ["127.0.0.1:{admin}"]}}]
""")
    relay_log = open(os.path.join(work, "relay.log"), "w")
    prom_log = open(os.path.join(work, "prometheus.log"), "w")
    relay = subprocess.Popen([args.relay, "serve", "--config", config], stderr=relay_log, stdout=relay_log)
    prometheus = subprocess.Popen([
        args.prometheus,
        f"--config.file={work}/prometheus.yml",
        f"--storage.tsdb.path={work}/data",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ], stderr=prom_log, stdout=prom_log)
    passed = False
    try:
        wait_for("the relay's /metrics", lambda: get(f"http://127.0.0.1:{admin}/metrics"))
        wait_for("Prometheus", lambda: get(f"http://127.0.0.1:{prom_port}/-/ready"))

        def send(n):
            body = json.dumps({
                "hook": "SyncAccount",
                "user": {"id": f"u-{n}", "loginName": "someone@example.com"},
                "account": {"id": f"a-{n}", "provider": "Big Bank"},
            }).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks", body,
                {"content-type": "application/json", "x-client-id": CLIENT_ID},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status != 200:
                    raise SystemExit(f"a webhook was answered {answer.status}")

        firing = set()
        sent = 0
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            send(sent)
            sent += 1
            alerts = json.loads(get(f"http://127.0.0.1:{prom_port}/api/v1/alerts"))["data"]["alerts"]
            firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
            if EXPECTED <= firing:
                break
            time.sleep(0.5)
        if not EXPECTED <= firing:
            raise SystemExit(f"after {DEADLINE} s and {sent} spooled webhooks, firing: {sorted(firing)}; expected {sorted(EXPECTED)}")
        ready = json.loads(get(f"http://127.0.0.1:{admin}/readyz"))
        print(f"{sent} webhooks spooled (readyz: {ready['status']}, spool depth {ready['spool']['depth']}); "
              f"Prometheus fires: {', '.join(sorted(firing))}")
        passed = True
    finally:
        for process in (relay, prometheus):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if passed:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept for a look: {work} (relay.log, prometheus.log)", file=sys.stderr)


if __name__ == "__main__":
    main()
