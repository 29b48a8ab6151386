"""Proves the consumer protocol and the event contract from Python, against
the real RabbitMQ and the real relay (run by .ci/run):

    python check.py --relay target/debug/hookrelay

It starts the relay with a queue that has two retry tiers, sends webhooks,
and consumes them with consumer.py's `consume` (which learns the tiers from
RabbitMQ, not from the relay's configuration):
- a handler that fails twice (transiently) handles the event on attempt 3,
  after both delays;
- a handler that always fails leaves the event dead-lettered after the last tier;
- an event replayed from the history (`hookrelay replay --from-history
  --to-queue`) keeps its id and its original routing key, and is acked as a
  duplicate of the one already handled, without calling the handler again;
- an undocumented error code is handled, not dead-lettered;
- five accounts of one provider failing give one `provider.incident_opened`
  on the relay's `<exchange>.changes`, and the fifth account's
  `account.contact_provider` names it; both valid against the contract;
- every message (body, headers, properties), from the queue, back from a
  tier, and replayed, is valid against the schemas of docs/asyncapi.yaml
  (the headers against the schema of its kind).
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

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from consumer import ACK, Handled, Transient, consume, dedup_key

# The consumer's spans, recorded to check that each continues the relay's trace.
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)

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
        for name in ("SyncAccount", "SyncError", "SyncAccountHeaders", "SyncErrorHeaders", "Properties",
                     "AccountChange", "AccountHeaders", "AccountProperties",
                     "ProviderIncident", "ProviderHeaders", "ProviderProperties")
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

        def send(code, user, provider="Big Bank", account="a-7"):
            body = json.dumps({
                "hook": "SyncError",
                "user": {"id": user, "loginName": "jane@example.com"},
                "account": {"id": account, "provider": provider},
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
            headers = validators[event["hook"] + "Headers"]
            problems += [f"header: {e.message}" for e in headers.iter_errors(properties.headers)]
            props = {
                "message_id": properties.message_id,
                "timestamp": properties.timestamp,
                "content_type": properties.content_type,
                "app_id": properties.app_id,
                "delivery_mode": properties.delivery_mode,
            }
            problems += [f"property: {e.message}" for e in validators["Properties"].iter_errors(props)]
            key = dedup_key(event["hook"], properties.headers["x-client-id"], event["user"]["id"],
                            event["account"]["id"], event["account"].get("provider"), event.get("error"))
            if properties.headers.get("x-dedup-key") != key:
                problems.append(f"x-dedup-key is not the contract's recipe: {key} expected")
            traceparents[properties.message_id] = properties.headers["traceparent"]
            if problems:
                raise SystemExit(f"{properties.message_id} breaks the contract: {problems}")
            checked += 1

        handled = Handled()
        traceparents = {}

        # 1. Fails twice, transiently, then succeeds on attempt 3.
        recovers = send("LoginFailedError", "u-1")

        def flaky(event, routing_key, properties, attempt):
            check_contract(event, properties)
            seen.append((attempt, time.monotonic(), properties.message_id, routing_key))
            if attempt < 3:
                raise Transient("the reconnect service is down")
            return ACK

        consume(connection, queue, flaky, handled, stop=lambda: len(seen) == 3, give_up_after=60)
        attempts = [a for a, _, _, _ in seen]
        if attempts != [1, 2, 3] or {m for _, _, m, _ in seen} != {recovers}:
            raise SystemExit(f"expected attempts [1, 2, 3] of {recovers}, saw {seen}")
        if {k for _, _, _, k in seen} != {"sync.error.LoginFailedError"}:
            raise SystemExit(f"the original routing key was lost on a retry: {seen}")
        waits = [round((seen[i + 1][1] - seen[i][1]) * 1000) for i in range(2)]
        if any(wait < tier for wait, tier in zip(waits, TIERS_MS)):
            raise SystemExit(f"retried before the tier's delay: waited {waits} ms, tiers {TIERS_MS}")

        # 2. Always fails: dead-lettered after the last tier.
        seen.clear()
        doomed = send("SecurityQuestionError", "u-2")

        def broken(event, routing_key, properties, attempt):
            check_contract(event, properties)
            seen.append((attempt, time.monotonic(), properties.message_id, routing_key))
            raise Transient("still down")

        consume(connection, queue, broken, handled, stop=lambda: len(seen) == 3, give_up_after=60)
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

        # 3. Replayed from the history: same id, original routing key, a duplicate.
        replayed = subprocess.run(
            [args.relay, "replay", "--config", config, "--from-history", "--to-queue", queue,
             "--routing-key", "sync.error.LoginFailedError"],
            capture_output=True, text=True, timeout=60,
        )
        if replayed.returncode != 0:
            raise SystemExit(f"replay --from-history failed: {replayed.stderr}")
        for _ in range(100):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is not None:
                break
            time.sleep(0.05)
        else:
            raise SystemExit("the replayed event did not arrive")
        check_contract(json.loads(body), properties)
        original = (properties.headers or {}).get("x-original-routing-key")
        if properties.message_id != recovers or original != "sync.error.LoginFailedError":
            raise SystemExit(f"replayed: {properties.message_id} with x-original-routing-key {original}")
        channel.basic_nack(method.delivery_tag, requeue=True)
        called = []
        consume(connection, queue, lambda *a: called.append(a) or ACK, handled,
                stop=lambda: channel.queue_declare(queue, passive=True).method.message_count == 0,
                give_up_after=60)
        if called:
            raise SystemExit(f"a duplicate of a handled id reached the handler: {called}")

        # 4. An undocumented code: handled (the sender's support should hear
        #    of it), not dead-lettered. Its provider is not a string (the
        #    contract allows it): the dedup-key recipe must still match.
        seen.clear()
        novel = send("BrandNewError", "u-3", provider={"name": "Big Bank", "id": 7})

        def thorough(event, routing_key, properties, attempt):
            check_contract(event, properties)
            seen.append((attempt, time.monotonic(), properties.message_id, routing_key))
            if properties.headers.get("x-error-known") is not False:
                raise SystemExit(f"{routing_key} without x-error-known: false")
            return ACK

        consume(connection, queue, thorough, handled, stop=lambda: len(seen) == 1, give_up_after=60)
        if seen[0][2] != novel or channel.queue_declare(dead_letters, passive=True).method.message_count:
            raise SystemExit(f"the undocumented code was not handled: {seen}")

        # 5. A provider incident: five accounts of one bank fail with a
        #    connector error. A queue bound on <exchange>.changes hears one
        #    provider.incident_opened, and the fifth account's change names it.
        changes = f"{exchange}.changes-check"
        channel.queue_declare(changes, durable=True)
        for pattern in ("provider.#", "account.contact_provider"):
            channel.queue_bind(changes, f"{exchange}.changes", pattern)
        for n in range(1, 6):
            send("UnhandledConnectorError", f"u-p{n}", provider="Py Bank", account=f"p-{n}")
        announced = []

        def announcement(body, routing_key, properties, attempt):
            kind = "Provider" if routing_key.startswith("provider.") else "Account"
            problems = [e.message for e in validators["ProviderIncident" if kind == "Provider" else "AccountChange"].iter_errors(body)]
            problems += [f"header: {e.message}" for e in validators[f"{kind}Headers"].iter_errors(properties.headers)]
            props = {
                "message_id": properties.message_id,
                "timestamp": properties.timestamp,
                "content_type": properties.content_type,
                "app_id": properties.app_id,
                "delivery_mode": properties.delivery_mode,
            }
            problems += [f"property: {e.message}" for e in validators[f"{kind}Properties"].iter_errors(props)]
            if problems:
                raise SystemExit(f"{routing_key} {properties.message_id} breaks the contract: {problems}")
            announced.append((routing_key, body))
            return ACK

        consume(connection, changes, announcement, Handled(), stop=lambda: len(announced) == 6, give_up_after=60)
        keys = [key for key, _ in announced]
        if keys != ["account.contact_provider"] * 4 + ["provider.incident_opened", "account.contact_provider"]:
            raise SystemExit(f"expected four changes, the incident, then the fifth change: {keys}")
        incident = announced[4][1]
        if incident["provider"] != "Py Bank" or incident["accounts"] != 5 or announced[5][1].get("incident") != incident["incident"]:
            raise SystemExit(f"the incident or the change naming it is wrong: {announced[4:]}")
        checked += len(announced)

        # Every span of the consumer is a child of the publish its message names.
        continued = 0
        for span in SPANS.get_finished_spans():
            message_id = span.attributes.get("messaging.message.id")
            if message_id not in traceparents:
                continue
            _, trace_id, span_id, _ = traceparents[message_id].split("-")
            if span.parent is None or (f"{span.context.trace_id:032x}", f"{span.parent.span_id:016x}") != (trace_id, span_id):
                raise SystemExit(f"the consumer's span of {message_id} does not continue {traceparents[message_id]}")
            continued += 1
        if continued < len(traceparents):
            raise SystemExit(f"{continued} consumer spans for {len(traceparents)} messages")
        print(
            f"python consumer: retried on attempts {attempts} after {waits} ms (tiers {TIERS_MS}, found "
            f"by passive declares); dead-lettered after {len(TIERS_MS)} tiers; a history replay acked as a "
            f"duplicate; an undocumented code handled; a provider incident heard once; {checked} messages valid against docs/asyncapi.yaml; "
            f"{continued} consumer spans continue the relay's traces"
        )
    finally:
        relay.terminate()
        relay.wait(timeout=30)
        cleanup = pika.BlockingConnection(pika.URLParameters(args.url)).channel()
        for name in [queue, f"{queue}.retry.1", f"{queue}.retry.2", f"{exchange}.unrouted",
                     f"{exchange}.dead-letter", f"{exchange}.quarantine", f"{exchange}.history",
                     f"{exchange}.announcer", f"{exchange}.changes-check"]:
            cleanup.queue_delete(name)
        for name in [exchange, f"{exchange}.in", f"{exchange}.unrouted", f"{exchange}.dlx",
                     f"{exchange}.changes"]:
            cleanup.exchange_delete(name)
        cleanup.connection.close()
        if connection is not None and connection.is_open:
            connection.close()


if __name__ == "__main__":
    sys.exit(main())
