#!/usr/bin/env bash
# Installs (Debian packages) and starts what the tests and the demo need, when it is missing:
# PostgreSQL, RabbitMQ (with its management and prometheus plugins), the OpenSSL headers the HTTP and SMTP clients
# link against, Node.js with maildev (a real SMTP server with a web page), Chromium (the tracking page's browser
# test drives it headless), Prometheus with promtool and Alertmanager (the alert rules' tests and the demo start
# their own, on free ports), PgBouncer (its test runs its own, on a free port), and the database role's password. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf '==> %s\n' "$*"; }

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -q
  # Debian's prometheus, prometheus-alertmanager and pgbouncer start system services (on 9090, 9093 and 6432) when
  # installed; the tests and the demo start their own on free ports. A policy-rc.d that refuses every start (exit 101) keeps the
  # packages' postinst from starting theirs, for the length of this install only.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  if [ -n "$policy" ]; then $SUDO rm -f "$policy"; trap - EXIT; fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432; then
  say "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || $SUDO pg_ctlcluster "$version" main start
  for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
fi

# A fresh Debian PostgreSQL asks for a password over TCP: give the postgres role the one DATABASE_URL carries.
if ! PGPASSWORD=postgres psql "postgres://postgres@127.0.0.1:5432/postgres" -tAc 'SELECT 1' >/dev/null 2>&1; then
  say "setting the postgres role's password for TCP connections"
  sql="ALTER ROLE postgres PASSWORD 'postgres'"
  if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "psql -q -c \"$sql\""; else sudo -u postgres psql -q -c "$sql"; fi
fi

if ! port_open 5672; then
  say "starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
  $SUDO rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || $SUDO rabbitmqctl wait --timeout 120 /var/run/rabbitmq/pid || true
  for _ in $(seq 1 60); do port_open 5672 && break; sleep 1; done
fi
port_open 5672 || { echo "RabbitMQ does not answer on 127.0.0.1:5672" >&2; exit 1; }

# The management UI (15672: queues, rates, consumers) and the Prometheus endpoint (15692) the demo's Prometheus
# scrapes. Enabling them on a running node starts them at once; queues and connections are not touched.
enabled=$($SUDO rabbitmq-plugins list -e -m 2>/dev/null || true)
if ! grep -qx rabbitmq_management <<<"$enabled" || ! grep -qx rabbitmq_prometheus <<<"$enabled"; then
  say "enabling RabbitMQ's management and prometheus plugins"
  $SUDO rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null
fi

if [ ! -x .tools/node_modules/.bin/maildev ]; then
  # maildev 3 needs Node.js 20; Debian 12's own Node.js is 18, where maildev 2.2 runs (its REST API is /email, not /api/email).
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -ge 20 ]; then maildev=maildev@3; else maildev=maildev@2.2.1; fi
  say "installing $maildev (SMTP server with a web page) into .tools/"
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "$maildev" >/dev/null
fi
say "services ready"
