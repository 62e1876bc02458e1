#!/usr/bin/env bash
# `make chaos`: a PostgreSQL cluster and a RabbitMQ node of this run's own, on free ports (never the shared 5432 and
# 5672, which other tests use), the chaos harness (tests/src/bin/chaos.rs) against them, and everything this script
# started stopped and removed at the end, on success, failure or Ctrl-C (trap). docs/RELIABILITY.md says what it does.
#
#   scripts/chaos.sh [PARCELS]             start the servers, run the harness, tear everything down
#                                          (CLUSTER=3: a RabbitMQ cluster of 3 nodes instead of one; the harness
#                                          stops random nodes one at a time instead of the one node)
#   scripts/chaos.sh up DIR / down DIR     the servers alone (kept in DIR/state), for debugging the harness
#   scripts/chaos.sh mq-up DIR             a RabbitMQ node alone (tests/src/rabbit_node.rs, TLS with MQ_TLS_DIR); down DIR
#   scripts/chaos.sh cluster-up DIR N      N RabbitMQ nodes in DIR/node1..N joined into one cluster (rabbitmqctl
#                                          join_cluster; tests/src/rabbit_cluster.rs); ctl DIR/nodeK ACTION for one
#   scripts/chaos.sh mq-kill DIR           kill -9 the node(s) of DIR by pid and remove their files (a test's drop)
#   scripts/chaos.sh pg-up DIR             a PostgreSQL cluster alone (tests/tests/tls.rs, its own certificate with PG_TLS_DIR)
#   scripts/chaos.sh ctl DIR ACTION        what the harness calls: pg-stop, pg-start, mq-stop, mq-start, mq-queues
#                                          (and mq-connections: JSON of each connection's TLS, client certificate and properties;
#                                          mq-alarm-on / mq-alarm-off: a memory alarm on that node, raised and cleared;
#                                          mq-cluster-connections: JSON of every connection of the cluster, with its
#                                          node's port; mq-quorum-critical: fails while stopping that node would leave a
#                                          quorum queue without a majority)
#
# Needs root (or passwordless sudo): pg_createcluster and a RabbitMQ node run as the rabbitmq user.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -n --preserve-env=PARCELS,CARGO_TARGET_DIR,CHAOS_SECS,CHAOS_MAX_WAIT_SECS,CLUSTER "$0" "$@"
fi

say() { printf '==> %s\n' "$*" >&2; }

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Htln "sport = :$p" | grep -q . && ! grep -qx "$p" "${PORTS_FILE:-$DIR/ports}" 2>/dev/null; then
      echo "$p" >>"${PORTS_FILE:-$DIR/ports}"
      echo "$p"
      return
    fi
  done
}

# Runs a RabbitMQ tool as the rabbitmq user against this run's node only: its own config, plugins (none: no
# management listener to collide with the shared node's), env file (not /etc/rabbitmq/rabbitmq-env.conf, which names
# the shared node), data and logs. The tools are called directly, not through /usr/sbin's wrapper, which would write
# the shared node's startup log.
mq() {
  local tool=$1
  shift
  runuser -u rabbitmq -- env -i PATH="$PATH" HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 \
    RABBITMQ_NODENAME="$MQNODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$MQPORT" \
    RABBITMQ_DIST_PORT="$MQDIST" RABBITMQ_MNESIA_BASE="$MQDIR/mnesia" RABBITMQ_LOG_BASE="$MQDIR/log" \
    RABBITMQ_CONFIG_FILE="$MQDIR/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$MQDIR/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$MQDIR/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$MQDIR/rabbitmq-env.conf" \
    RABBITMQ_PID_FILE="$MQDIR/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "/usr/lib/rabbitmq/bin/$tool" "$@"
}

load() {
  DIR=$1
  # shellcheck disable=SC1091
  . "$DIR/state"
}

mq_start() {
  mq rabbitmq-server -detached >>"$MQDIR/log/start.out" 2>&1 || true
  for _ in $(seq 1 120); do
    if mq rabbitmq-diagnostics -q -n "$MQNODE" check_running >/dev/null 2>&1 &&
      mq rabbitmq-diagnostics -q -n "$MQNODE" check_port_listener "$MQPORT" >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  say "RabbitMQ node $MQNODE did not start; see $MQDIR/log"
  return 1
}

mq_stop() {
  mq rabbitmqctl -q -n "$MQNODE" stop >/dev/null 2>&1 || true
  # Wait until the node's process is gone (its pid file is this run's own).
  if [ -s "$MQDIR/pid" ]; then
    local pid
    pid=$(cat "$MQDIR/pid")
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

pg_start() { pg_ctlcluster --skip-systemctl-redirect "$PGVER" "$PGNAME" start; }
pg_stop() { pg_ctlcluster --skip-systemctl-redirect "$PGVER" "$PGNAME" stop -m fast; }

up() {
  pg_up "$1"
  mq_up "$1"
}

# A PostgreSQL cluster of its own (trust authentication), its settings in DIR/state (DATABASE_URL last). With
# PG_TLS_DIR (a directory holding server.pem and server.key, as tests/tests/tls.rs makes) it serves that certificate
# instead of Debian's snakeoil one.
pg_up() {
  DIR=$1
  mkdir -p "$DIR"
  local id
  id=$(basename "$DIR" | tr -cd 'a-z0-9' | tail -c 10)
  PGVER=$(ls /etc/postgresql | sort -V | tail -n 1)
  PGNAME="chaos-$id"
  PGPORT=$(free_port)
  cat >"$DIR/state" <<EOF
PGVER=$PGVER
PGNAME=$PGNAME
PGPORT=$PGPORT
EOF
  say "PostgreSQL $PGVER cluster $PGNAME on 127.0.0.1:$PGPORT"
  local tls=()
  if [ -n "${PG_TLS_DIR:-}" ]; then
    local certs="/var/lib/postgresql/$PGVER/$PGNAME-tls"
    echo "PGTLS=$certs" >>"$DIR/state"
    mkdir -p "$certs"
    install -o postgres -g postgres -m 0644 "$PG_TLS_DIR/server.pem" "$certs/server.pem"
    install -o postgres -g postgres -m 0600 "$PG_TLS_DIR/server.key" "$certs/server.key"
    tls=(-o "ssl_cert_file=$certs/server.pem" -o "ssl_key_file=$certs/server.key")
  fi
  pg_createcluster "$PGVER" "$PGNAME" -p "$PGPORT" "${tls[@]}" \
    -- --auth-local=trust --auth-host=trust >"$DIR/pg_createcluster.out"
  pg_start
  echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PGPORT/tracking" >>"$DIR/state"
}

# A RabbitMQ node of its own, its settings appended to DIR/state (AMQP_URL last). With MQ_TLS_DIR (a directory
# holding ca.pem, server.pem and server.key, as tests/src/rabbit_node.rs makes) the node listens with TLS only (no
# plain AMQP listener) and AMQP_URL is amqps://; MQ_VERIFY_PEER=1 makes it require a client certificate.
mq_up() {
  mq_prepare "$1"
  mq_start
  echo "AMQP_URL=$MQSCHEME://guest:guest@127.0.0.1:$MQPORT/%2f" >>"$DIR/state"
}

# A node's ports, directories and configuration, its settings appended to DIR/state; not started.
mq_prepare() {
  DIR=$1
  mkdir -p "$DIR"
  local id
  id=${MQ_ID:-$(basename "$DIR" | tr -cd 'a-z0-9' | tail -c 10)}
  MQNODE="chaos$id@localhost"
  MQPORT=$(free_port)
  MQDIST=$(free_port)
  MQDIR="/tmp/tracking-chaos-$id"
  cat >>"$DIR/state" <<EOF
MQNODE=$MQNODE
MQPORT=$MQPORT
MQDIST=$MQDIST
MQDIR=$MQDIR
EOF
  say "RabbitMQ node $MQNODE on 127.0.0.1:$MQPORT (distribution $MQDIST), data in $MQDIR"
  mkdir -p "$MQDIR/mnesia" "$MQDIR/log"
  MQSCHEME=amqp
  if [ -n "${MQ_TLS_DIR:-}" ]; then
    MQSCHEME=amqps
    mkdir -p "$MQDIR/tls"
    cp "$MQ_TLS_DIR/ca.pem" "$MQ_TLS_DIR/server.pem" "$MQ_TLS_DIR/server.key" "$MQDIR/tls/"
    local verify=verify_none fail=false
    if [ "${MQ_VERIFY_PEER:-0}" = 1 ]; then
      verify=verify_peer
      fail=true
    fi
    cat >"$MQDIR/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:$MQPORT
ssl_options.cacertfile = $MQDIR/tls/ca.pem
ssl_options.certfile = $MQDIR/tls/server.pem
ssl_options.keyfile = $MQDIR/tls/server.key
ssl_options.verify = $verify
ssl_options.fail_if_no_peer_cert = $fail
EOF
  else
    printf 'listeners.tcp.1 = 127.0.0.1:%s\n' "$MQPORT" >"$MQDIR/rabbitmq.conf"
  fi
  echo '[].' >"$MQDIR/enabled_plugins"
  echo '[].' >"$MQDIR/advanced.config"
  : >"$MQDIR/rabbitmq-env.conf"
  chown -R rabbitmq:rabbitmq "$MQDIR"
}

# N nodes in DIR/node1..N, started at once, then nodes 2..N joined to node 1 (stop_app, reset, join_cluster,
# start_app: they share the rabbitmq user's Erlang cookie). DIR/state gets MQCLUSTER=N and AMQP_URL, the
# comma-separated list of the nodes' URLs in order.
cluster_up() {
  local root=$1 n=$2 k first pids=() urls=() id
  mkdir -p "$root"
  export PORTS_FILE="$root/ports"
  echo "MQCLUSTER=$n" >>"$root/state"
  # Node names and data directories unique to this cluster: c<its directory's id>n<k>.
  id=c$(basename "$root" | tr -cd 'a-z0-9' | tail -c 8)
  for k in $(seq 1 "$n"); do
    mkdir -p "$root/node$k"
    (MQ_ID="${id}n$k" mq_prepare "$root/node$k")
  done
  for k in $(seq 1 "$n"); do
    (load "$root/node$k" && mq_start) &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k"; done
  first=$(load "$root/node1" && echo "$MQNODE")
  for k in $(seq 2 "$n"); do
    (
      load "$root/node$k"
      say "joining $MQNODE to $first"
      {
        mq rabbitmqctl -q -n "$MQNODE" stop_app &&
          mq rabbitmqctl -q -n "$MQNODE" reset &&
          mq rabbitmqctl -q -n "$MQNODE" join_cluster "$first" &&
          mq rabbitmqctl -q -n "$MQNODE" start_app
      } >>"$root/node$k/join.out" 2>&1 || { cat "$root/node$k/join.out" >&2; exit 1; }
    )
  done
  for k in $(seq 1 "$n"); do
    urls+=("$(load "$root/node$k" && echo "amqp://guest:guest@127.0.0.1:$MQPORT/%2f")")
    echo "AMQP_URL=${urls[-1]}" >>"$root/node$k/state"
  done
  (
    load "$root/node1"
    for _ in $(seq 1 60); do
      local running
      running=$(mq rabbitmqctl -q -n "$MQNODE" cluster_status --formatter json |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))')
      [ "$running" = "$n" ] && exit 0
      sleep 1
    done
    say "the cluster did not show $n running nodes"
    exit 1
  )
  say "RabbitMQ cluster of $n nodes, $first first"
  local IFS=,
  echo "AMQP_URL=${urls[*]}" >>"$root/state"
}

# kill -9 every node of DIR (one node, or a cluster's) by its pid file, keep its logs in DIR/logs, remove its files.
mq_kill() {
  local dir=$1 k
  [ -f "$dir/state" ] || return 0
  if grep -q '^MQCLUSTER=' "$dir/state"; then
    for k in "$dir"/node*/; do mq_kill "${k%/}"; done
    rm -f "$dir/state"
    return 0
  fi
  (
    load "$dir"
    [ -n "${MQDIR:-}" ] && [ -d "$MQDIR" ] || exit 0
    if [ -s "$MQDIR/pid" ]; then kill -KILL "$(cat "$MQDIR/pid")" 2>/dev/null || true; fi
    mkdir -p "$dir/logs"
    cp -r "$MQDIR/log" "$dir/logs/rabbitmq" 2>/dev/null || true
    rm -rf "$MQDIR"
  )
}

# Stops and removes what `up` made (each step tolerates a half-made set-up), keeping the servers' logs in DIR/logs.
down() {
  DIR=$1
  [ -f "$DIR/state" ] || return 0
  load "$DIR"
  mkdir -p "$DIR/logs"
  if [ -n "${MQCLUSTER:-}" ]; then
    local node
    for node in "$DIR"/node*/; do (down "${node%/}") || true; done
  fi
  if [ -n "${MQNODE:-}" ] && [ -d "${MQDIR:-/nonexistent}" ]; then
    say "stopping RabbitMQ node $MQNODE and removing $MQDIR"
    mq_stop
    cp -r "$MQDIR/log" "$DIR/logs/rabbitmq" 2>/dev/null || true
    rm -rf "$MQDIR"
  fi
  if [ -n "${PGNAME:-}" ] && pg_lsclusters -h "$PGVER" "$PGNAME" >/dev/null 2>&1; then
    say "dropping PostgreSQL cluster $PGVER/$PGNAME"
    cp "/var/log/postgresql/postgresql-$PGVER-$PGNAME.log" "$DIR/logs/postgresql.log" 2>/dev/null || true
    pg_dropcluster --stop "$PGVER" "$PGNAME" || true
  fi
  if [ -n "${PGTLS:-}" ]; then rm -rf "$PGTLS"; fi
  rm -f "$DIR/state"
}

# The harness's workers run from copies in DIR/bin: any process still running one of them is this run's own.
stop_workers() {
  local exe pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case "$exe" in "$1"/bin/*) kill -KILL "$pid" 2>/dev/null || true ;; esac
  done
}

case "${1:-run}" in
  up) up "$2" ;;
  mq-up) mq_up "$2" ;;
  cluster-up) cluster_up "$2" "$3" ;;
  mq-kill) mq_kill "$2" ;;
  pg-up) pg_up "$2" ;;
  down) down "$2" ;;
  ctl)
    load "$2"
    if [ -n "${MQCLUSTER:-}" ] && [ "$3" = mq-queues ]; then
      # A cluster's DIR: asked of the first node that answers.
      for node in "$2"/node*/; do
        (load "${node%/}" && mq rabbitmqctl -q -n "$MQNODE" list_queues name messages --no-table-headers) && exit 0
      done
      exit 1
    fi
    case "$3" in
      pg-stop) pg_stop ;;
      pg-start) pg_start ;;
      mq-stop) mq_stop ;;
      mq-start) mq_start ;;
      mq-queues) mq rabbitmqctl -q -n "$MQNODE" list_queues name messages --no-table-headers ;;
      mq-connections) mq rabbitmqctl -q -n "$MQNODE" list_connections ssl peer_cert_subject client_properties --formatter json ;;
      # A memory alarm on this run's node only (tests/tests/runtime.rs): every publishing connection is blocked.
      mq-alarm-on) mq rabbitmqctl -q -n "$MQNODE" set_vm_memory_high_watermark 0 ;;
      mq-alarm-off) mq rabbitmqctl -q -n "$MQNODE" set_vm_memory_high_watermark 0.4 ;;
      # port: the node's AMQP port, which tells the nodes apart (3.10 has no node column).
      mq-cluster-connections) mq rabbitmqctl -q -n "$MQNODE" list_connections port client_properties --formatter json ;;
      mq-quorum-critical) mq rabbitmq-queues -q -n "$MQNODE" check_if_node_is_quorum_critical ;;
      *) echo "unknown action $3" >&2; exit 2 ;;
    esac
    ;;
  *)
    PARCELS=${1:-${PARCELS:-10000}}
    CLUSTER=${CLUSTER:-1}
    case "$CLUSTER" in '' | *[!0-9]*) echo "CLUSTER must be a number of nodes" >&2; exit 2 ;; esac
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    RUN="$TARGET/chaos/$(date -u +%Y%m%dT%H%M%SZ)-$$"
    DIR=$RUN
    mkdir -p "$RUN/bin" "$RUN/logs"
    # Copies of the release binaries: another build replacing target/release during the run changes nothing here.
    for b in fetcher normalizer scheduler email-publisher marketplace-publisher chaos; do
      [ -x "$TARGET/release/$b" ] || { echo "$TARGET/release/$b is missing: make release" >&2; exit 1; }
      cp "$TARGET/release/$b" "$RUN/bin/"
    done
    (cd "$RUN/bin" && sha256sum ./* >"$RUN/bin.sha256")
    trap 'stop_workers "$RUN"; down "$RUN"; rm -rf "$RUN/bin"' EXIT
    trap 'exit 130' INT TERM
    if [ "$CLUSTER" -gt 1 ]; then
      pg_up "$RUN"
      cluster_up "$RUN" "$CLUSTER"
    else
      up "$RUN"
    fi
    load "$RUN"
    status=0
    AMQP_URL=$AMQP_URL DATABASE_URL=$DATABASE_URL CHAOS_DIR=$RUN CHAOS_SCRIPT="$ROOT/scripts/chaos.sh" \
      CHAOS_MQ_NODES=$CLUSTER "$RUN/bin/chaos" "$PARCELS" || status=$?
    say "logs and report in $RUN"
    exit $status
    ;;
esac
