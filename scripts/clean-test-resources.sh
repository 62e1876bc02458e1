#!/usr/bin/env bash
# Drops the databases (t_*), vhosts (t-*) and RabbitMQ users (t-*, tests/tests/deploy.rs) that test runs create,
# for when a run was killed before cleaning up.
set -uo pipefail
url=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
for db in $(psql "$url" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 't\_%'"); do
  psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" && echo "dropped database $db"
done
for vh in $(rabbitmqctl list_vhosts --quiet --no-table-headers 2>/dev/null | grep '^t-'); do
  rabbitmqctl delete_vhost "$vh" >/dev/null && echo "deleted vhost $vh"
done
for user in $(rabbitmqctl list_users --quiet --no-table-headers 2>/dev/null | cut -f1 | grep '^t-'); do
  rabbitmqctl delete_user "$user" >/dev/null && echo "deleted user $user"
done
