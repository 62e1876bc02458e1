#!/usr/bin/env bash
# The demo: every worker and tracking-api, the Correios simulator, a real SMTP server with a web page (maildev), a
# marketplace receiver, and a Prometheus (scraping every worker and RabbitMQ, with the project's alert rules) and an
# Alertmanager (sending the alerts to maildev) on free ports, on this machine; then a handful of parcels, whose
# status changes, emails and marketplace calls are shown as they happen. `make demo-break-correios` breaks the
# Correios simulator's answers: the CarrierBroken alert reaches maildev. Ctrl-C stops everything.
# DEMO_SECONDS=N stops it after N seconds; DEMO_ALERT_FOR (default 10s) replaces every alert's `for:` in the demo's
# copy of the rules, so that alerts fire in seconds rather than minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/${TRACKING_BIN_PROFILE:-release}" # TRACKING_BIN_PROFILE=debug runs a debug build
DEMO=.demo
mkdir -p "$DEMO/logs"
rm -f "$DEMO"/logs/*.log
rm -rf "$DEMO/mail" # maildev would show the emails (and alerts) of an earlier run

# Stops every process this script started, and their children (the log watcher is a pipeline), with SIGTERM.
kill_tree() {
  local child
  for child in $(pgrep -P "$1"); do kill_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
}
cleanup() {
  trap - INT TERM EXIT
  echo; echo "Stopping the demo..."
  for p in $(pgrep -P $$); do kill_tree "$p"; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/tracking-demo"
export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/tracking_demo"
export RUST_LOG="info,lapin=warn"
export CORREIOS_BASE_URL="http://127.0.0.1:9080" CORREIOS_USER="sim-user" CORREIOS_ACCESS_CODE="sim-code"
export SMTP_URL="smtp://127.0.0.1:1025" EMAIL_FROM="Loja Demo <rastreio@loja-demo.example>" STORE_NAME="Loja Demo"
export MARKETPLACES_FILE="$PWD/deploy/demo/marketplaces.toml"
# The customers' tracking page, served by tracking-api: emails link to it, and each parcel's address is printed below.
export TRACKING_PAGE_URL="http://127.0.0.1:8080" TRACKING_PAGE_SECRET="demo-tracking-page-secret-0123456789abcdef"
# The emails' one-click unsubscribe link (List-Unsubscribe, shown in maildev), served by tracking-api at /u/{token}.
export UNSUBSCRIBE_SECRET="demo-unsubscribe-secret-0123456789abcdef"
export POLL_INTERVAL_SECS=4 POLL_INTERVAL_NEAR_DELIVERY_SECS=3 FINAL_POLL_AFTER_SECS=5 SCHEDULER_TICK_MS=500
# The simulator's journeys are dated March 2026: without this every parcel would count as stale (no event for
# CARRIER_STALE_AFTER_HOURS) and fire CarrierParcelsStale. A short health window lets Correios turn ok again soon
# after `make demo-fix-correios`.
export CARRIER_STALE_AFTER_HOURS=100000 CARRIER_HEALTH_WINDOW_SECS=30

rmq() { rabbitmqctl "$@" >/dev/null 2>&1 || sudo -n rabbitmqctl "$@" >/dev/null 2>&1; }
echo "==> a fresh vhost (tracking-demo) and database (tracking_demo)"
rmq delete_vhost tracking-demo || true
rmq add_vhost tracking-demo
rmq set_permissions -p tracking-demo guest ".*" ".*" ".*"
psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -qc "DROP DATABASE IF EXISTS tracking_demo WITH (FORCE)"
"$BIN/trackctl" migrate

start() { # name, then the command
  local name=$1; shift
  "$@" >"$DEMO/logs/$name.log" 2>&1 &
}
echo "==> starting maildev, the Correios simulator, the marketplace receiver and every worker"
start maildev .tools/node_modules/.bin/maildev --ip 127.0.0.1 --web-ip 127.0.0.1 -s 1025 -w 1080 --mail-directory "$DEMO/mail"
SIM_ADDR=127.0.0.1:9080 SIM_AUTO_JOURNEY=1 start correios-sim "$BIN/correios-sim"
RECEIVER_ADDR=127.0.0.1:9090 RECEIVER_SECRET="demo-webhook-secret-0123456789" start marketplace-receiver "$BIN/marketplace-receiver"
for w in normalizer fetcher scheduler email-publisher marketplace-publisher; do start "$w" "$BIN/$w"; done
API_TOKEN="demo-api-token-0123456789-abcdefghij" start tracking-api "$BIN/tracking-api"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # the first port from $1 on that nothing listens on
  local port=$1
  while port_open "$port"; do port=$((port + 1)); done
  echo "$port"
}

# Alertmanager: every alert by email to the operators, through maildev.
AM_PORT=$(free_port 9193)
rm -rf "$DEMO/alertmanager" "$DEMO/prometheus" # alerts and series of an earlier run
mkdir -p "$DEMO/alertmanager" "$DEMO/prometheus"
cat >"$DEMO/alertmanager/alertmanager.yml" <<YAML
route:
  receiver: operators
  group_by: [alertname, carrier, queue, job, instance]
  group_wait: 5s
  group_interval: 30s
  repeat_interval: 4h
receivers:
  - name: operators
    email_configs:
      - to: operators@loja-demo.example
        from: alertmanager@loja-demo.example
        smarthost: 127.0.0.1:1025
        require_tls: false
        send_resolved: true
YAML
start alertmanager prometheus-alertmanager --config.file="$DEMO/alertmanager/alertmanager.yml" \
  --storage.path="$DEMO/alertmanager/data" --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address=

# Prometheus: every worker and RabbitMQ (its per-queue series from /metrics/per-object, the demo's vhost only), the
# project's alert rules with every `for:` set to DEMO_ALERT_FOR.
PROM_PORT=$(free_port 9190)
[ "$PROM_PORT" = "$AM_PORT" ] && PROM_PORT=$(free_port $((AM_PORT + 1)))
sed -E "s/^([[:space:]]*)for: .*/\1for: ${DEMO_ALERT_FOR:-10s}/" deploy/prometheus/alerts.yml >"$DEMO/prometheus/alerts.yml"
{
  cat <<YAML
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files: [alerts.yml]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:$AM_PORT"]
scrape_configs:
  - job_name: rabbitmq
    metrics_path: /metrics/per-object
    static_configs:
      - targets: ["127.0.0.1:15692"]
    metric_relabel_configs:
      - source_labels: [vhost]
        regex: "tracking-demo|"
        action: keep
YAML
  port=9101
  for w in fetcher normalizer scheduler email-publisher marketplace-publisher tracking-api; do
    printf '  - job_name: %s\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$w" "$port"
    port=$((port + 1))
  done
} >"$DEMO/prometheus/prometheus.yml"
start prometheus prometheus --config.file="$DEMO/prometheus/prometheus.yml" \
  --storage.tsdb.path="$DEMO/prometheus/data" --web.listen-address="127.0.0.1:$PROM_PORT"

for port in 1025 1080 9080 9090 "$PROM_PORT" "$AM_PORT"; do # maildev (SMTP, web), correios-sim, marketplace-receiver, Prometheus, Alertmanager
  for _ in $(seq 1 100); do port_open "$port" && break; sleep 0.2; done
done
for port in 9101 9102 9103 9104 9105 9106; do # the workers' /health
  for _ in $(seq 1 100); do curl -fs --max-time 2 "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
done
echo "==> every worker reports healthy:"
for port in 9101 9102 9103 9104 9105 9106; do printf '    :%s %s\n' "$port" "$(curl -s --max-time 2 "http://127.0.0.1:$port/health")"; done

echo "==> publishing five parcels (the simulator moves each one event further per poll)"
"$BIN/trackctl" publish --file - <<'JSON'
{"order_id": "DEMO-1001", "tracking_code": "DL746686536BR", "customer": {"email": "ana@example.com", "name": "Ana Souza", "locale": "pt-BR"}, "marketplace": {"name": "demo-shop", "order_id": "SHOP-1"}}
{"order_id": "DEMO-1002", "tracking_code": "PG747937788BR", "customer": {"email": "bruno@example.com", "name": "Bruno Díaz", "locale": "es"}, "marketplace": {"name": "demo-shop", "order_id": "SHOP-2"}}
{"order_id": "DEMO-1003", "tracking_code": "SW091892778BR", "customer": {"email": "carol@example.com", "name": "Carol Smith", "locale": "en"}}
{"order_id": "DEMO-1004", "tracking_code": "JT124720455BR", "customer": {"email": "davi@example.com", "locale": "pt-BR"}, "marketplace": {"name": "demo-shop", "order_id": "SHOP-4"}}
{"order_id": "DEMO-1005", "tracking_code": "DU713842539BR", "customer": {"email": "eva@example.com", "name": "Eva", "locale": "es"}}
JSON

echo "==> each order's tracking page (what the emails' button opens; ?lang=pt-BR|es|en switches the language):"
for order in DEMO-1001 DEMO-1002 DEMO-1003 DEMO-1004 DEMO-1005; do
  printf '    %s  %s\n' "$order" "$("$BIN/tracking-api" page-link "$order")"
done

cat <<TXT

==> addresses
    maildev (the customers' emails and the alerts)  http://127.0.0.1:1080
    RabbitMQ management UI                         http://127.0.0.1:15672   user guest, password guest (from this machine only)
    Prometheus (targets, rules, alerts)            http://127.0.0.1:$PROM_PORT
    Alertmanager                                   http://127.0.0.1:$AM_PORT
    tracking-api                                   http://127.0.0.1:8080    token demo-api-token-0123456789-abcdefghij
      curl -H 'Authorization: Bearer demo-api-token-0123456789-abcdefghij' http://127.0.0.1:8080/v1/orders/DEMO-1001/tracking
==> break Correios (its answers stop being readable) and watch the CarrierBroken alert reach maildev:
      make demo-break-correios        (and make demo-fix-correios to mend it)
TXT
cat <<'TXT'

==> watching. Logs: .demo/logs/   Ctrl-C stops.
    [change]   a status change recorded and published by the normalizer
    [email]    an email accepted by the SMTP server
    [market]   a signed webhook call received by the marketplace
TXT
tail -n +1 -F "$DEMO/logs/normalizer.log" "$DEMO/logs/email-publisher.log" "$DEMO/logs/marketplace-receiver.log" 2>/dev/null \
  | grep --line-buffered -E "Status changed|Email accepted|signature" \
  | sed -u -E \
      -e 's/.*Status changed\. (.*)/[change] \1/' \
      -e 's/.*Email accepted by the SMTP server\. (.*)/[email]  \1/' \
      -e 's/^.*INFO POST [^ ]+ (.*)/[market] \1/' &

if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else wait; fi
