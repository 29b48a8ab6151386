#!/usr/bin/env bash
# Independence under a full queue: the scenario of tests/independence.rs, run
# longer and in release mode, printing its figures.
#
#   bench/independence.sh [SECONDS] [RATE]     (default 60 s at 200 events/s)
#
# Five consumer queues are full (quorum and classic; bounded by an operator's
# policy, by the relay's own max_length, or refusing by a policy), each bound
# to a routing key of its own, and an `audit` queue is bound to all five. For
# SECONDS, RATE other events a second go to two other queues, and each full
# queue's key gets four events a second. It prints the other consumers' delay
# (send to arrival in their queue) p50/p99/max, the copies of each refused
# event in `audit`, and where every event of a full queue ended up (its queue,
# the dead letters with reason maxlen, or parked). It needs RabbitMQ on
# 127.0.0.1:5672 (guest/guest) and `rabbitmqctl` (for the policies), and
# leaves nothing behind on the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
rate=${2:-200}
echo "== independence: ${secs} s at ${rate} other events/s (release build)"
INDEPENDENCE_SECS=$secs INDEPENDENCE_RATE=$rate \
  cargo test --release -j2 --test independence -- --nocapture 2>&1 |
  grep -E '^(other events|/readyz|qp|qs|cp|cs|cr)\b|^test |panicked'
