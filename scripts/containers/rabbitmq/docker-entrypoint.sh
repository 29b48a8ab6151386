#!/bin/sh
# Writes rabbitmq.conf from the environment, as the official image does, then
# runs RabbitMQ as its own user.
set -eu
{
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  # Not only from localhost: clients come from other containers.
  echo "loopback_users = none"
  [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && echo "default_user = $RABBITMQ_DEFAULT_USER"
  [ -n "${RABBITMQ_DEFAULT_PASS:-}" ] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  true
} > /etc/rabbitmq/rabbitmq.conf
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
if [ "$1" = rabbitmq-server ]; then
  shift
  exec runuser -u rabbitmq -- /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
