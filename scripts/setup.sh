#!/usr/bin/env bash
# Installs (Debian packages) and starts what the tests and the demo need, when it is missing:
# PostgreSQL, RabbitMQ, the OpenSSL headers the HTTP and SMTP clients link against, Node.js with maildev (a real
# SMTP server with a web page), Chromium (the tracking page's browser test drives it headless), and the database
# role's password. Safe to run again: it only does what is missing.
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
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
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

if [ ! -x .tools/node_modules/.bin/maildev ]; then
  # maildev 3 needs Node.js 20; Debian 12's own Node.js is 18, where maildev 2.2 runs (its REST API is /email, not /api/email).
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$node_major" -ge 20 ]; then maildev=maildev@3; else maildev=maildev@2.2.1; fi
  say "installing $maildev (SMTP server with a web page) into .tools/"
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "$maildev" >/dev/null
fi
say "services ready"
