#!/usr/bin/env bash
# Makes the secrets deploy/compose.yaml mounts: random passwords, the API token and the URLs that carry them, one
# file each in deploy/secrets/ (which git ignores), readable by their owner only. A file that exists is kept, so
# running it again changes nothing (delete a file to rotate that secret; a RabbitMQ user's password then also needs
# `rabbitmqctl change_password`, since provisioning never changes an existing user's).
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/deploy/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

make() { # name value
    if [[ ! -s "$dir/$1" ]]; then
        printf '%s\n' "$2" > "$dir/$1"
        echo "made deploy/secrets/$1"
    fi
}

make api-token "$(random)$(random)"
make grafana-admin-password "$(random)"
make postgres-password "$(random)"
make database-url "postgres://tracking:$(tr -d '\n' < "$dir/postgres-password")@postgres:5432/tracking"
for user in admin keda fetcher normalizer scheduler email-publisher marketplace-publisher tracking-api trackctl; do
    make "rabbitmq-password-$user" "$(random)"
done
for user in fetcher normalizer scheduler email-publisher marketplace-publisher tracking-api trackctl; do
    make "amqp-url-$user" "amqp://$user:$(tr -d '\n' < "$dir/rabbitmq-password-$user")@rabbitmq:5672/tracking"
done
