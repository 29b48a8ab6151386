"""Checks docs/openapi.yaml against a running relay with schemathesis.

Starts the relay binary given with --relay on its own exchange, with the
console on, gives it something to show (events, a dead letter, a
quarantined body), then runs schemathesis over every operation of
docs/openapi.yaml: no answer may be a 5xx, and every status, content type
and body must be the one the file documents. Then it stops the relay and
deletes what it declared. Exits non-zero, saying why, on any failure.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pika

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "..", "openapi.yaml")
CLIENT_ID = "console-check"
TOKEN = "console-check-" + uuid.uuid4().hex
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay", required=True, help="the hookrelay binary")
    parser.add_argument("--schemathesis", required=True, help="the schemathesis command")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    parser.add_argument("--max-examples", default="25")
    args = parser.parse_args()

    exchange = f"console-check-{uuid.uuid4()}"
    queue = f"{exchange}.work"
    work = tempfile.mkdtemp(prefix="hookrelay-console-check-")
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
[admin]
token = "{TOKEN}"
[[queues]]
name = "{queue}"
bindings = ["sync.#"]
""")
    log = open(os.path.join(work, "relay.log"), "w")
    relay = subprocess.Popen([args.relay, "serve", "--config", config], stderr=log)
    failed = True
    try:
        for _ in range(400):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as answer:
                    if json.load(answer)["broker"] == "connected":
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("the relay did not connect to RabbitMQ")

        def send(body):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks",
                data=body.encode(),
                headers={"content-type": "application/json", "x-client-id": CLIENT_ID},
            )
            try:
                with urllib.request.urlopen(request) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as refused:
                return json.load(refused)

        for code in ["LoginFailedError", "UnhandledConnectorError", "TemporaryFailureError"]:
            send(json.dumps({"hook": "SyncError", "user": {"id": "u-1", "loginName": "jane"},
                             "account": {"id": f"a-{code}", "provider": "Big Bank"}, "error": code}))
        send(json.dumps({"hook": "SyncAccount", "user": {"id": "u-2", "loginName": "joe"},
                         "account": {"id": "a-2", "provider": "Big Bank"}}))
        send('{"hook":"SyncAccount"}')  # quarantined: 422
        # A dead letter: the consumer of the work queue rejects one.
        channel = pika.BlockingConnection(pika.URLParameters(args.url)).channel()
        method, _, _ = channel.basic_get(queue)
        channel.basic_reject(method.delivery_tag, requeue=False)
        channel.connection.close()
        # What the relay derives from the history answers once it has read
        # it (before that, /api/accounts says 503 "catching_up", as documented).
        for _ in range(600):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz") as answer:
                if json.load(answer).get("history_follower", {}).get("caught_up"):
                    break
            time.sleep(0.05)
        else:
            raise SystemExit("the relay did not catch up with its history")

        result = subprocess.run([
            *args.schemathesis.split(), "run", SCHEMA,
            "--url", f"http://127.0.0.1:{admin}",
            "-H", f"Authorization: Bearer {TOKEN}",
            "--checks", CHECKS,
            "--max-examples", args.max_examples,
            "--workers", "1",
            "--seed", "1",
            "--request-timeout", "60",
            "--output-sanitize", "true",
        ])
        if result.returncode != 0:
            raise SystemExit(f"schemathesis found answers that break docs/openapi.yaml (exit {result.returncode})")
        print("every operation of docs/openapi.yaml answered as documented, without a 5xx")
        failed = False
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        log.close()
        if failed:
            sys.stderr.write(open(os.path.join(work, "relay.log")).read()[-4000:])
        cleanup = pika.BlockingConnection(pika.URLParameters(args.url)).channel()
        for name in [queue, f"{exchange}.unrouted", f"{exchange}.dead-letter", f"{exchange}.quarantine",
                     f"{exchange}.history", f"{exchange}.announcer"]:
            cleanup.queue_delete(name)
        for name in [exchange, f"{exchange}.in", f"{exchange}.unrouted", f"{exchange}.dlx",
                     f"{exchange}.changes"]:
            cleanup.exchange_delete(name)
        cleanup.connection.close()


if __name__ == "__main__":
    main()
