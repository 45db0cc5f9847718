#!/usr/bin/env bash
# The local stack Tocsin talks to, on loopback ports, state under .stack/:
#   Tansu  (Kafka-protocol broker)                  127.0.0.1:19092
#          storage: TOCSIN_BROKER_STORAGE=sqlite (durable, the default) or memory (fast;
#          what the test suite uses, see ARCHITECTURE.md "Tansu storage")
#   Redis  (Debian's redis-server, AOF on)           127.0.0.1:16379
#
#   deploy/local/stack.sh install   install what is missing (once per machine)
#   deploy/local/stack.sh up        install if needed, start, wait until both answer
#   deploy/local/stack.sh down      stop what `up` started
#   deploy/local/stack.sh status    what runs
#   deploy/local/stack.sh test      the whole test suite: up, fmt, clippy, nextest, down
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
BROKER_PORT="${TOCSIN_BROKER_PORT:-19092}"
REDIS_PORT="${TOCSIN_REDIS_PORT:-16379}"
TANSU_VERSION="0.6.0"
BROKER_STORAGE="${TOCSIN_BROKER_STORAGE:-sqlite}"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[stack]\033[0m %s\n' "$*" >&2; exit 1; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    say "Tansu $TANSU_VERSION is not installed: building it from crates.io (about 17 minutes on two cores, once per machine)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2 pid_file=$3
  for _ in $(seq 1 150); do
    port_open "$port" && return 0
    if [ -f "$pid_file" ] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      die "$name exited while starting; see $STATE/$name.log"
    fi
    sleep 0.2
  done
  die "$name did not open port $port within 30 s; see $STATE/$name.log"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  install
  mkdir -p "$STATE/redis" "$STATE/tansu"
  if running "$STATE/redis.pid"; then
    say "redis already running on 127.0.0.1:$REDIS_PORT"
  else
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" \
      --appendonly yes --appendfsync everysec --save "" \
      --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
    wait_port redis "$REDIS_PORT" "$STATE/redis.pid"
    say "redis up on 127.0.0.1:$REDIS_PORT (AOF in $STATE/redis)"
  fi
  if running "$STATE/tansu.pid"; then
    say "tansu already running on 127.0.0.1:$BROKER_PORT"
  else
    port_open "$BROKER_PORT" && die "port $BROKER_PORT is taken by another process"
    local storage_url
    case "$BROKER_STORAGE" in
      sqlite) storage_url="sqlite://tansu.db" ;;
      memory) storage_url="memory://tansu/" ;;
      *) die "TOCSIN_BROKER_STORAGE must be sqlite or memory, not '$BROKER_STORAGE'" ;;
    esac
    # exec: the recorded pid is the broker's own, not a subshell's.
    (cd "$STATE/tansu" && exec tansu broker \
        --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --storage-engine "$storage_url" \
        </dev/null >"$STATE/tansu.log" 2>&1) &
    echo $! >"$STATE/tansu.pid"
    wait_port tansu "$BROKER_PORT" "$STATE/tansu.pid"
    say "tansu up on 127.0.0.1:$BROKER_PORT ($BROKER_STORAGE storage, state in $STATE/tansu)"
  fi
}

stop_pid() {
  local name=$1 pid_file=$2
  if running "$pid_file"; then
    local pid; pid=$(cat "$pid_file")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "$name stopped"
  fi
  rm -f "$pid_file"
}

down() {
  stop_pid tansu "$STATE/tansu.pid"
  stop_pid redis "$STATE/redis.pid"
}

status() {
  running "$STATE/tansu.pid" && say "tansu running (pid $(cat "$STATE/tansu.pid"), 127.0.0.1:$BROKER_PORT)" || say "tansu stopped"
  running "$STATE/redis.pid" && say "redis running (pid $(cat "$STATE/redis.pid"), 127.0.0.1:$REDIS_PORT)" || say "redis stopped"
}

test_suite() {
  cd "$ROOT"
  say "formatting"
  cargo fmt --all --check
  say "building"
  cargo build --workspace --all-targets --locked
  say "clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  # A broker of its own for the run, on memory storage: Tansu 0.6's SQLite engine stalls
  # consumers for tens of seconds once the file grows (ARCHITECTURE.md, "Tansu storage").
  # The durability tests start their own SQLite broker.
  down
  BROKER_STORAGE=memory up
  trap down EXIT
  say "tests"
  TOCSIN_TEST_BROKERS="127.0.0.1:$BROKER_PORT" TOCSIN_TEST_REDIS="redis://127.0.0.1:$REDIS_PORT/0" \
    cargo nextest run --workspace --locked --no-fail-fast
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  test) test_suite ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
