"""A consumer of hookrelay's events in Python (pika), following the protocol
the README documents for consumers in any language ("Writing a consumer"):

- consume with a prefetch and manual acks;
- handled: ack;
- failed for now: publish a copy to the default exchange with routing key
  `<queue>.retry.<n>` (same body and properties, header `x-retry-attempt` = n,
  one more than the message's own, from 1; `x-original-exchange` and
  `x-original-routing-key` kept or set), persistent, wait for the publisher
  confirm, then ack the original. Past the last tier: reject without requeue,
  so RabbitMQ dead-letters it;
- cannot be handled: reject without requeue.

    python consumer.py --config relay.toml --queue reprompt-credentials

The handler below is the example's business logic; `consume` is the protocol.
"""

import argparse
import json
import sys
import time
import tomllib

import pika

# Headers RabbitMQ owns: never copied into a retry.
BROKER_OWNED = ("x-death", "x-delivery-count")
BROKER_OWNED_PREFIXES = ("x-first-death-", "x-last-death-")

ACK, RETRY, DEAD_LETTER = "ack", "retry", "dead_letter"


def retry_copy_headers(headers, attempt, exchange, routing_key):
    """The headers of the copy published into retry tier `attempt`."""
    copied = {
        key: value
        for key, value in (headers or {}).items()
        if key not in BROKER_OWNED and not key.startswith(BROKER_OWNED_PREFIXES)
    }
    copied["x-retry-attempt"] = attempt
    if "x-original-exchange" not in copied:
        copied["x-original-exchange"] = exchange
        copied["x-original-routing-key"] = routing_key
    return copied


def consume(channel, queue, tiers, entry_exchange, handle, stop=lambda: False, prefetch=10,
            give_up_after=None):
    """Consumes `queue`, waiting as long as it stays quiet, until `stop()` is
    true; `handle(event, properties, attempt)` returns ACK, RETRY or
    (DEAD_LETTER, reason). `tiers` is how many retry tiers the queue has.
    `give_up_after` (seconds without a message) is for tests only: a consumer
    runs until it is stopped."""
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
        attempt = int(headers.get("x-retry-attempt", 0)) + 1
        try:
            event = json.loads(body)
            outcome = handle(event, properties, attempt)
        except Exception as error:  # the handler's bug: dead-letter, do not loop
            outcome = (DEAD_LETTER, f"handler raised {error!r}")
        if outcome == RETRY and attempt <= tiers:
            exchange = method.exchange or entry_exchange
            copy = pika.BasicProperties(
                content_type=properties.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=properties.message_id,
                timestamp=properties.timestamp,
                app_id=properties.app_id,
                headers=retry_copy_headers(headers, attempt, exchange, method.routing_key),
            )
            # Confirmed: raises if RabbitMQ nacks or returns it.
            channel.basic_publish("", f"{queue}.retry.{attempt}", body, copy, mandatory=True)
            channel.basic_ack(method.delivery_tag)
        elif outcome == ACK:
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_reject(method.delivery_tag, requeue=False)
        if stop():
            break
    channel.cancel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the relay's TOML file")
    parser.add_argument("--queue", required=True, help="a [[queues]] entry of it")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    args = parser.parse_args()
    with open(args.config, "rb") as file:
        config = tomllib.load(file)
    exchange = config.get("amqp", {}).get("exchange", "webhooks")
    queue = next(q for q in config["queues"] if q["name"] == args.queue)

    def handle(event, properties, attempt):
        if event.get("error") == "LoginFailedError":
            print(f"{properties.message_id}: asking user {event['user']['id']} to reconnect")
            return ACK
        return (DEAD_LETTER, f"no handler for {event.get('hook')} {event.get('error')}")

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    try:
        consume(connection.channel(), args.queue, len(queue.get("retry", [])), f"{exchange}.in", handle)
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
