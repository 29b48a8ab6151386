"""Proves the consumer protocol and the event contract from Python, against
the real RabbitMQ and the real relay (run by .ci/run):

    python check.py --relay target/debug/hookrelay

It starts the relay with a queue that has two retry tiers, sends webhooks,
and consumes them with consumer.py's `consume`:
- a handler that fails twice handles the event on attempt 3, after both delays;
- a handler that always fails leaves the event dead-lettered after the last tier;
- every message consumed (body, headers, properties) is valid against the
  schemas of docs/asyncapi.yaml.
It deletes what it declared, and exits 1 saying why on any failure.
"""

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import jsonschema
import pika
import yaml

from consumer import ACK, DEAD_LETTER, RETRY, consume

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRACT = os.path.join(HERE, "..", "..", "docs", "asyncapi.yaml")
CLIENT_ID = "python-check"
TIERS_MS = [300, 600]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def schema(contract, name):
    """The schema `name` of the contract, its $refs inlined."""

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                resolved = copy.deepcopy(contract["components"]["schemas"][ref.rsplit("/", 1)[1]])
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**resolved, **rest})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(contract["components"]["schemas"][name])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True, help="the hookrelay binary")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    args = parser.parse_args()

    with open(CONTRACT) as file:
        contract = yaml.safe_load(file)
    validators = {
        name: jsonschema.Draft7Validator(schema(contract, name), format_checker=jsonschema.FormatChecker())
        for name in ("SyncAccount", "SyncError", "Headers", "Properties")
    }

    exchange = f"py-{uuid.uuid4()}"
    queue = f"{exchange}.reprompt"
    work = tempfile.mkdtemp(prefix="hookrelay-python-")
    port, admin = free_port(), free_port()
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
uri = "{args.url}"
exchange = "{exchange}"
[spool]
path = "{work}/spool.sqlite"
[[queues]]
name = "{queue}"
bindings = ["sync.error.#"]
retry = [{", ".join(f'"{ms}ms"' for ms in TIERS_MS)}]
""")
    relay = subprocess.Popen([args.relay, "serve", "--config", config], stderr=open(os.path.join(work, "relay.log"), "w"))
    connection = None
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as answer:
                    if json.load(answer)["broker"] == "connected":
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("the relay did not connect to RabbitMQ")

        def send(code, user):
            body = json.dumps({
                "hook": "SyncError",
                "user": {"id": user, "loginName": "jane@example.com"},
                "account": {"id": "a-7", "provider": "Big Bank"},
                "error": code,
            }).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks", body,
                {"content-type": "application/json", "x-client-id": CLIENT_ID},
            )
            with urllib.request.urlopen(request) as answer:
                return json.load(answer)["id"]

        connection = pika.BlockingConnection(pika.URLParameters(args.url))
        channel = connection.channel()
        seen = []
        checked = 0

        def check_contract(event, properties):
            nonlocal checked
            problems = [str(e.message) for e in validators[event["hook"]].iter_errors(event)]
            problems += [f"header: {e.message}" for e in validators["Headers"].iter_errors(properties.headers)]
            props = {
                "message_id": properties.message_id,
                "timestamp": properties.timestamp,
                "content_type": properties.content_type,
                "app_id": properties.app_id,
                "delivery_mode": properties.delivery_mode,
            }
            problems += [f"property: {e.message}" for e in validators["Properties"].iter_errors(props)]
            if problems:
                raise SystemExit(f"{properties.message_id} breaks the contract: {problems}")
            checked += 1

        # 1. Fails twice, then succeeds on attempt 3.
        recovers = send("LoginFailedError", "u-1")

        def flaky(event, properties, attempt):
            check_contract(event, properties)
            seen.append((attempt, time.monotonic(), properties.message_id))
            return ACK if attempt == 3 else RETRY

        consume(channel, queue, len(TIERS_MS), f"{exchange}.in", flaky, stop=lambda: len(seen) == 3,
                give_up_after=60)
        attempts = [a for a, _, _ in seen]
        if attempts != [1, 2, 3] or {m for _, _, m in seen} != {recovers}:
            raise SystemExit(f"expected attempts [1, 2, 3] of {recovers}, saw {seen}")
        waits = [round((seen[i + 1][1] - seen[i][1]) * 1000) for i in range(2)]
        if any(wait < tier for wait, tier in zip(waits, TIERS_MS)):
            raise SystemExit(f"retried before the tier's delay: waited {waits} ms, tiers {TIERS_MS}")

        # 2. Always fails: dead-lettered after the last tier.
        seen.clear()
        doomed = send("SecurityQuestionError", "u-2")

        def broken(event, properties, attempt):
            check_contract(event, properties)
            seen.append((attempt, time.monotonic(), properties.message_id))
            return RETRY

        consume(channel, queue, len(TIERS_MS), f"{exchange}.in", broken, stop=lambda: len(seen) == 3,
                give_up_after=60)
        dead_letters = f"{exchange}.dead-letter"
        for _ in range(100):
            if channel.queue_declare(dead_letters, passive=True).method.message_count == 1:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{doomed} did not reach {dead_letters}")
        method, properties, _ = channel.basic_get(dead_letters, auto_ack=True)
        death = properties.headers["x-death"][0]
        if properties.message_id != doomed or death["queue"] != queue or death["reason"] != "rejected":
            raise SystemExit(f"unexpected dead letter: {properties.message_id} {death}")

        print(
            f"python consumer: retried on attempts {attempts} after {waits} ms (tiers {TIERS_MS}); "
            f"dead-lettered after {len(TIERS_MS)} tiers; {checked} messages valid against docs/asyncapi.yaml"
        )
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        cleanup = pika.BlockingConnection(pika.URLParameters(args.url)).channel()
        for name in [queue, f"{queue}.retry.1", f"{queue}.retry.2", f"{exchange}.unrouted",
                     f"{exchange}.dead-letter", f"{exchange}.quarantine", f"{exchange}.history"]:
            cleanup.queue_delete(name)
        for name in [exchange, f"{exchange}.in", f"{exchange}.unrouted", f"{exchange}.dlx"]:
            cleanup.exchange_delete(name)
        cleanup.connection.close()
        if connection is not None and connection.is_open:
            connection.close()


if __name__ == "__main__":
    sys.exit(main())
