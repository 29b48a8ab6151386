"""A consumer of hookrelay's events in Python (pika), written from the event
contract alone (docs/asyncapi.yaml, its description above all), not from the
relay's configuration:

- consume one queue with a prefetch and manual acks;
- dispatch on `x-original-routing-key` when the message carries it (a retried
  or replayed copy arrives with its queue's name as routing key), else on the
  routing key;
- de-duplicate on `message_id`: an id is recorded once the event is handled,
  not on receipt (a replayed dead letter keeps its id), and kept as long as
  the relay's history (7 days by default);
- a transient failure (the handler raises `Transient`: a dependency is down)
  is retried through the queue's retry tiers: a copy to the default exchange
  with routing key `<queue>.retry.<n>`, `x-retry-attempt` = n, the original
  route kept in `x-original-*`, confirmed, then the original is acked. The
  tiers are found by declaring `<queue>.retry.1`, `.2`, ... passively;
- past the last tier, or what it cannot handle (a bug, a body it cannot
  use): reject without requeue, so RabbitMQ dead-letters it for an operator;
- the trace goes on: each message is handled in a `process <queue>` span
  (OpenTelemetry, kind consumer) whose parent is the relay's publish, read
  from the message's `traceparent`. Without a tracer provider installed by
  the app, the span is a no-op.

    python consumer.py --queue reprompt-credentials [--url amqp://...]

It runs until stopped (Ctrl-C). `handle` below is the example's business
logic: the rest is the protocol, reusable as it is.
"""

import argparse
import hashlib
import json
import sys
import time

import pika
import pika.exceptions
from opentelemetry import propagate, trace

# Headers RabbitMQ owns: never copied into a retry.
BROKER_OWNED = ("x-death", "x-delivery-count")
BROKER_OWNED_PREFIXES = ("x-first-death-", "x-last-death-")
# How long a handled id is remembered: the relay's history.max_age default.
KEEP_IDS_FOR = 7 * 24 * 3600

ACK, RETRY, DEAD_LETTER = "ack", "retry", "dead_letter"
TRACER = trace.get_tracer("hookrelay.consumer")


def dedup_key(hook, client_id, user_id, account_id, provider=None, error=None):
    """The event's `x-dedup-key`, as the contract defines it: the same for every
    copy of one webhook the sender delivers (keep it to drop the sender's
    retries: docs/src/consumer.md). A provider that is not a string counts as
    absent."""
    provider = provider if isinstance(provider, str) else ""
    fields = [hook, client_id, user_id, account_id, provider, error or ""]
    data = b"".join(b"%d:%s" % (len(f.encode()), f.encode()) for f in fields)
    return hashlib.sha256(data).hexdigest()


class Transient(Exception):
    """A failure worth retrying later: a dependency is down, a timeout."""


class Handled:
    """The ids of events handled in the last `keep` seconds. In memory here;
    a real consumer records them where it records the work (same transaction),
    so that a crash cannot separate the two."""

    def __init__(self, keep=KEEP_IDS_FOR):
        self.keep, self.ids = keep, {}

    def __contains__(self, message_id):
        return message_id in self.ids

    def add(self, message_id):
        now = time.monotonic()
        self.ids[message_id] = now
        if len(self.ids) % 1000 == 0:
            self.ids = {i: at for i, at in self.ids.items() if now - at < self.keep}


def retry_tiers(connection, queue):
    """How many retry tiers `queue` has: declares `<queue>.retry.1`, `.2`, ...
    passively until one does not exist (each miss closes its channel)."""
    tiers = 0
    while True:
        channel = connection.channel()
        try:
            channel.queue_declare(f"{queue}.retry.{tiers + 1}", passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return tiers
        channel.close()
        tiers += 1


def retry_copy_headers(headers, attempt, exchange, routing_key):
    """The headers of the copy published into retry tier `attempt`."""
    copied = {
        key: value
        for key, value in (headers or {}).items()
        if key not in BROKER_OWNED and not key.startswith(BROKER_OWNED_PREFIXES)
    }
    copied["x-retry-attempt"] = attempt
    if "x-original-routing-key" not in copied:
        copied["x-original-exchange"] = exchange
        copied["x-original-routing-key"] = routing_key
    return copied


def consume(connection, queue, handle, handled=None, stop=lambda: False, prefetch=10, give_up_after=None):
    """Consumes `queue` until `stop()` is true, waiting as long as it stays
    quiet. `handle(event, routing_key, properties, attempt)` returns ACK,
    RETRY or DEAD_LETTER, or raises (`Transient`: retried; anything else:
    dead-lettered). Duplicates of handled ids are acked without calling it.
    `give_up_after` (seconds without a message) is for tests only."""
    tiers = retry_tiers(connection, queue)
    handled = Handled() if handled is None else handled
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=prefetch)
    last_message = time.monotonic()
    for method, properties, body in channel.consume(queue, inactivity_timeout=1):
        if method is None:  # a quiet second: normal, keep waiting
            if stop():
                break
            if give_up_after is not None and time.monotonic() - last_message > give_up_after:
                raise TimeoutError(f"no message from {queue} for {give_up_after} s")
            continue
        last_message = time.monotonic()
        headers = properties.headers or {}
        if properties.message_id in handled:
            channel.basic_ack(method.delivery_tag)  # a duplicate: already handled
        else:
            routing_key = headers.get("x-original-routing-key", method.routing_key)
            attempt = int(headers.get("x-retry-attempt", 0)) + 1
            # Continues the relay's trace: `traceparent` names its publish.
            parent = propagate.extract(headers)
            attributes = {
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": properties.message_id or "",
            }
            with TRACER.start_as_current_span(f"process {queue}", context=parent,
                                              kind=trace.SpanKind.CONSUMER, attributes=attributes):
                try:
                    outcome = handle(json.loads(body), routing_key, properties, attempt)
                except Transient:
                    outcome = RETRY
                except Exception:  # a bug, or a body it cannot use: for an operator
                    outcome = DEAD_LETTER
            if outcome == ACK:
                handled.add(properties.message_id)
                channel.basic_ack(method.delivery_tag)
            elif outcome == RETRY and attempt <= tiers:
                copy = pika.BasicProperties(
                    content_type=properties.content_type,
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=properties.message_id,
                    timestamp=properties.timestamp,
                    app_id=properties.app_id,
                    headers=retry_copy_headers(headers, attempt, method.exchange, method.routing_key),
                )
                # Confirmed: raises if RabbitMQ nacks or returns it.
                channel.basic_publish("", f"{queue}.retry.{attempt}", body, copy, mandatory=True)
                channel.basic_ack(method.delivery_tag)
            else:
                channel.basic_reject(method.delivery_tag, requeue=False)
        if stop():
            break
    channel.cancel()
    channel.close()


def handle(event, routing_key, properties, attempt):
    """The example's business logic, by what the sender's spec asks of the app."""
    # What the relay announces on <exchange>.changes, for a queue bound there.
    if routing_key.startswith("provider."):
        # The bank's connector, not the user: one message per incident.
        print(f"{properties.message_id}: provider {event['provider']} {event['kind']} "
              f"({event['accounts']} accounts, {event['code']})")
        return ACK
    if routing_key == "client.silent":
        # The sender stopped sending to us: check its dashboard, not each user.
        print(f"{properties.message_id}: no webhooks for {event['accounts']} accounts "
              f"of {event['client_id']} since {event['before']}")
        return ACK
    if routing_key.startswith("account."):
        held = f" (provider incident {event['incident']})" if event.get("incident") else ""
        print(f"{properties.message_id}: account {event['account_id']} is now {event['state']}{held}")
        return ACK
    account, user = event["account"]["id"], event["user"]["id"]
    if routing_key == "sync.account":
        print(f"{properties.message_id}: account {account} synced")
    elif routing_key in ("sync.error.LoginFailedError", "sync.error.SecurityQuestionError"):
        print(f"{properties.message_id}: asking user {user} to reconnect account {account}")
    elif routing_key == "sync.error.TemporaryFailureError":
        print(f"{properties.message_id}: account {account} will be retried by the sender")
    else:  # Unhandled/UnknownConnectorError, and codes the sender added since
        known = (properties.headers or {}).get("x-error-known", False)
        print(f"{properties.message_id}: account {account} needs the sender's support "
              f"({event.get('error')}{'' if known else ', an undocumented code'})")
    return ACK


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", required=True, help="the queue to consume, e.g. reprompt-credentials")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    args = parser.parse_args()
    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    try:
        consume(connection, args.queue, handle)
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
