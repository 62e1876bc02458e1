#!/bin/sh
# Creates the pipeline's RabbitMQ users and sets their permissions from users.json (docs/operations.md, "Broker
# users"). Run it once after the broker first started, and again whenever users.json changes: it never changes the
# password of a user that exists, so a password rotated since is kept.
#
#   SECRETS_DIR=/run/secrets sh deploy/rabbitmq/provision-users.sh
#
# SECRETS_DIR holds one file per user, named `rabbitmq-password-<user>` (fetcher, normalizer, ..., admin), each a
# password of at least 24 characters. There is no default: a missing or short password stops the script before
# anything is created. The definitions RabbitMQ loads at every boot (definitions.json) hold the topology only, so
# a restart resets no password.
set -eu

DIR=$(dirname "$0")
USERS_JSON=${USERS_JSON:-$DIR/users.json}
SECRETS_DIR=${SECRETS_DIR:?SECRETS_DIR must name the directory of the rabbitmq-password-<user> files}
CTL=${RABBITMQCTL:-rabbitmqctl}

users=$(sed -n 's/.*"user": *"\([^"]*\)".*/\1/p' "$USERS_JSON" | sort -u)

for user in $users; do
    file="$SECRETS_DIR/rabbitmq-password-$user"
    if [ ! -r "$file" ]; then
        echo "provision-users: no password for $user: $file is missing" >&2
        exit 1
    fi
    if [ "$(tr -d '\n' < "$file" | wc -c)" -lt 24 ]; then
        echo "provision-users: the password of $user ($file) is shorter than 24 characters" >&2
        exit 1
    fi
done

existing=$($CTL -q list_users | cut -f1)
for user in $users; do
    if printf '%s\n' "$existing" | grep -qx -- "$user"; then
        continue
    fi
    $CTL add_user "$user" "$(tr -d '\n' < "$SECRETS_DIR/rabbitmq-password-$user")" > /dev/null
    echo "provision-users: created $user"
done
if printf '%s\n' "$users" | grep -qx admin; then
    $CTL set_user_tags admin administrator > /dev/null
fi

# Permissions and topic permissions only (users.json has no users: importing users resets their passwords).
$CTL import_definitions "$USERS_JSON"
