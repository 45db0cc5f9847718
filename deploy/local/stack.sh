#!/usr/bin/env bash
# The local stack Tocsin talks to, on loopback ports, state under .stack/:
#   Tansu  (Kafka-protocol broker)                  127.0.0.1:19092
#          storage: TOCSIN_BROKER_STORAGE=sqlite (durable, the default) or memory (fast;
#          what the test suite uses, see ARCHITECTURE.md "Tansu storage")
#   Redis  (Debian's redis-server, AOF on)           127.0.0.1:16379
#   SMTP   (aiosmtpd, deploy/local/smtp_server.py)   127.0.0.1:12525 STARTTLS, :12465 TLS
#          AUTH PLAIN/LOGIN tocsin / local-smtp-password (TOCSIN_SMTP_USER, _PASSWORD);
#          every message stored as received in the Maildir .stack/mail/new/
#
#   deploy/local/stack.sh install   install what is missing (once per machine)
#   deploy/local/stack.sh up        install if needed, start, wait until all answer
#   deploy/local/stack.sh down      stop what `up` started
#   deploy/local/stack.sh status    what runs, where the mail and the SMTP CA are
#   deploy/local/stack.sh mail-path the Maildir the SMTP server writes
#   deploy/local/stack.sh ca-path   the CA certificate an SMTP client trusts
#   deploy/local/stack.sh test      the whole test suite: fmt, clippy, up, nextest, the
#                                   Prometheus proof (deploy/prometheus/prove.sh), down
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
BROKER_PORT="${TOCSIN_BROKER_PORT:-19092}"
REDIS_PORT="${TOCSIN_REDIS_PORT:-16379}"
TANSU_VERSION="0.6.0"
BROKER_STORAGE="${TOCSIN_BROKER_STORAGE:-sqlite}"
SMTP_PORT="${TOCSIN_SMTP_PORT:-12525}"
SMTPS_PORT="${TOCSIN_SMTPS_PORT:-12465}"
SMTP_USER="${TOCSIN_SMTP_USER:-tocsin}"
SMTP_PASSWORD="${TOCSIN_SMTP_PASSWORD:-local-smtp-password}"
VENV="$STATE/venv"
REQUIREMENTS="$ROOT/deploy/local/requirements.txt"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[stack]\033[0m %s\n' "$*" >&2; exit 1; }

# shellcheck source=deploy/local/apt.sh
source "$ROOT/deploy/local/apt.sh"

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  # For deploy/validate.sh (part of the test suite), without their recommendations (the
  # prometheus package recommends exporters nobody here wants); the same apt-get update.
  missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v promtool >/dev/null || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] || APT_LEAN=1 apt_install "${missing[@]}"
  python_components
  smtp_certificates
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    say "Tansu $TANSU_VERSION is not installed: building it from crates.io (about 17 minutes on two cores, once per machine)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
  fi
}

# The Python components (aiosmtpd, dkimpy) in a virtualenv of the stack's own, installed
# again whenever requirements.txt changes (its hash is the stamp).
python_components() {
  local want; want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  say "installing deploy/local/requirements.txt (aiosmtpd, dkimpy) into $VENV"
  mkdir -p "$STATE"
  if [ ! -x "$VENV/bin/pip" ] && ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
}

# A CA of the stack's own and the SMTP server's certificate signed by it, made once.
# (rustls refuses a self-signed CA certificate as a server's own, hence the two.)
smtp_certificates() {
  local dir="$STATE/smtp"
  [ -s "$dir/ca.pem" ] && [ -s "$dir/server.pem" ] && [ -s "$dir/server.key" ] && return 0
  say "making the SMTP server's CA and certificate in $dir"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Tocsin local stack CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
  rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
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
    # 32 databases: each test binary that owns its Redis state gets one of its own.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" --databases 32 \
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
  if running "$STATE/smtp.pid"; then
    say "smtp already running on 127.0.0.1:$SMTP_PORT"
  else
    port_open "$SMTP_PORT" && die "port $SMTP_PORT is taken by another process"
    [ "$SMTPS_PORT" != 0 ] && port_open "$SMTPS_PORT" && die "port $SMTPS_PORT is taken by another process"
    (exec env TOCSIN_STACK_DIR="$STATE" TOCSIN_SMTP_PORT="$SMTP_PORT" TOCSIN_SMTPS_PORT="$SMTPS_PORT" \
        TOCSIN_SMTP_USER="$SMTP_USER" TOCSIN_SMTP_PASSWORD="$SMTP_PASSWORD" \
        "$VENV/bin/python" "$ROOT/deploy/local/smtp_server.py" \
        </dev/null >"$STATE/smtp.log" 2>&1) &
    echo $! >"$STATE/smtp.pid"
    wait_port smtp "$SMTP_PORT" "$STATE/smtp.pid"
    [ "$SMTPS_PORT" = 0 ] || wait_port smtp "$SMTPS_PORT" "$STATE/smtp.pid"
    say "smtp up on 127.0.0.1:$SMTP_PORT (STARTTLS) and :$SMTPS_PORT (TLS), mail in $STATE/mail/new"
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
  stop_pid smtp "$STATE/smtp.pid"
  stop_pid tansu "$STATE/tansu.pid"
  stop_pid redis "$STATE/redis.pid"
}

status() {
  running "$STATE/tansu.pid" && say "tansu running (pid $(cat "$STATE/tansu.pid"), 127.0.0.1:$BROKER_PORT)" || say "tansu stopped"
  running "$STATE/redis.pid" && say "redis running (pid $(cat "$STATE/redis.pid"), 127.0.0.1:$REDIS_PORT)" || say "redis stopped"
  if running "$STATE/smtp.pid"; then
    say "smtp running (pid $(cat "$STATE/smtp.pid"), 127.0.0.1:$SMTP_PORT STARTTLS, 127.0.0.1:$SMTPS_PORT TLS, user $SMTP_USER)"
  else
    say "smtp stopped"
  fi
  say "  mail: $STATE/mail/new ($(find "$STATE/mail/new" -type f 2>/dev/null | wc -l) messages), log: $STATE/smtp.log"
  say "  SMTP CA (trust it in clients): $STATE/smtp/ca.pem"
}

test_suite() {
  cd "$ROOT"
  say "formatting"
  cargo fmt --all --check
  install
  say "deployment files (validated, not run: no container engine here)"
  deploy/validate.sh
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
    TOCSIN_STACK_DIR="$STATE" TOCSIN_TEST_MAILDIR="$STATE/mail" TOCSIN_TEST_SMTP_CA="$STATE/smtp/ca.pem" \
    TOCSIN_SMTP_PORT="$SMTP_PORT" TOCSIN_SMTPS_PORT="$SMTPS_PORT" \
    TOCSIN_SMTP_USER="$SMTP_USER" TOCSIN_SMTP_PASSWORD="$SMTP_PASSWORD" \
    cargo nextest run --workspace --locked --no-fail-fast
  say "dashboards and alerts against a real Prometheus, during a blast"
  TOCSIN_STACK_DIR="$STATE" TOCSIN_BUILT=1 deploy/prometheus/prove.sh
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  mail-path) echo "$STATE/mail" ;;
  ca-path) echo "$STATE/smtp/ca.pem" ;;
  test) test_suite ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
