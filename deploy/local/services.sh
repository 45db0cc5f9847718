# Shared by deploy/local/demo.sh, deploy/prometheus/prove.sh and the load scenarios
# (loadtests/*.sh): the local stack's addresses, small helpers, and the pipeline's
# processes (the Twilio stand-in, the planner, renderer, sender, tracker and API) started
# in the background, logs in $DEMO/<name>.log, stopped on exit by their own pid (never the
# stack).
#
# Source it after setting DEMO (the log folder) and SAY_AS (the prefix of messages); then
# `start_services` builds the binaries (debug) and starts everything, checking that no
# other process holds the ports. STANDIN_ARGS (an array, empty by default) adds flags to
# the stand-in (faults: `tocsin-standins --help`); SENDER_ENV (an array of NAME=value)
# adds configuration to the sender only. `start_prometheus` then starts Prometheus.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
STANDIN="127.0.0.1:4010"
API="127.0.0.1:8080"
PLANNER_OPS="127.0.0.1:9181"
RENDERER_OPS="127.0.0.1:9182"
SENDER_OPS="127.0.0.1:9183"
# The tracker serves its public routes and its ops routes on one port.
TRACKER="127.0.0.1:8090"
# Secrets, handed to the sender's process only. The stand-in accepts the token it is given.
SMTP_PASSWORD="${TOCSIN_SMTP_PASSWORD:-local-smtp-password}"
TWILIO_AUTH_TOKEN="standin-twilio-auth-token"
BREVO_WEBHOOK_TOKEN="local-brevo-webhook-token"
SMS_QUIET_HOURS="1-7@00:00-24:00"
export PATH="$HOME/.cargo/bin:$PATH"
export TOCSIN_API_URL="http://$API"
export TOCSIN_API_TOKEN="local-operator-token"

say() { printf '\033[1m[%s]\033[0m %s\n' "$SAY_AS" "$*"; }
die() { printf '\033[1;31m[%s]\033[0m %s\n' "$SAY_AS" "$*" >&2; exit 1; }
now() { date +%s.%N; }
# Arithmetic on decimals in Python: bash has none, and printf's reads the locale's comma.
calc() { python3 -c "import sys; print(format(eval(sys.argv[1]), sys.argv[2]))" "$1" "$2"; }
since() { calc "$(now) - $1" .1f; }

# A JSON value: `json FILE PATH...` prints FILE's value at PATH (keys and indices).
json() {
  python3 - "$@" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2:]:
    if isinstance(value, list):
        value = value[int(key)]
    else:
        value = value.get(key, 0) if isinstance(value, dict) else 0
print(json.dumps(value) if isinstance(value, (dict, list)) else value)
PY
}

# GET URL into a file; fails on a non-2xx answer or no answer.
http_get() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        open(sys.argv[2], "wb").write(answer.read())
except Exception:
    sys.exit(1)
PY
}

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# Where the stack is, when stack.sh was told to put it elsewhere than config/ says.
stack_env=()
[ -z "${TOCSIN_BROKER_PORT:-}" ] || stack_env+=(TOCSIN__KAFKA__BROKERS="127.0.0.1:$TOCSIN_BROKER_PORT")
[ -z "${TOCSIN_REDIS_PORT:-}" ] || stack_env+=(TOCSIN__REDIS__URL="redis://127.0.0.1:$TOCSIN_REDIS_PORT/0")
# Tansu answers a fetch only when its wait expires: the bulk hops fetch every 50 ms, not
# every 500 (three times the throughput; `bulk_fetch_wait_ms` in config/default.toml).
stack_env+=(TOCSIN__KAFKA__BULK_FETCH_WAIT_MS="${TOCSIN_BULK_FETCH_WAIT_MS:-50}")

# ---------------------------------------------------------------------------------------
# Processes: started here, stopped on exit (by their own pid), never the stack.

PIDS=()
NAMES=()
declare -p STANDIN_ARGS >/dev/null 2>&1 || STANDIN_ARGS=()
declare -p SENDER_ENV >/dev/null 2>&1 || SENDER_ENV=()
stop_all() {
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "${NAMES[i]} did not stop within 10 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  [ ${#PIDS[@]} -eq 0 ] || say "stopped ${NAMES[*]} (the stack stays up: deploy/local/stack.sh down)"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND...: in the background, output in $DEMO/NAME.log.
start() {
  local name=$1; shift
  "$@" </dev/null >"$DEMO/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

# wait_ready NAME URL: until URL answers 2xx, while the process lives, for 120 s.
wait_ready() {
  local name=$1 url=$2 pid=${PIDS[${#PIDS[@]} - 1]}
  for _ in $(seq 1 600); do
    http_get "$url" /dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DEMO/$name.log" >&2 || true
      die "$name exited while starting; see $DEMO/$name.log"
    fi
    sleep 0.2
  done
  die "$name is not ready after 120 s ($url); see $DEMO/$name.log"
}

# ---------------------------------------------------------------------------------------

# start_services: the stack up, the binaries built, every process started and ready.
start_services() {
  say "local stack"
  deploy/local/stack.sh up

  for addr in "$STANDIN" "$PLANNER_OPS" "$RENDERER_OPS" "$SENDER_OPS" "$TRACKER" "$API"; do
    if port_open "$addr"; then
      die "$addr is already in use, and $SAY_AS starts its own process there (the API on 8080, the tracker on 8090, the Twilio stand-in on 4010, ops ports 9181-9183). Stop what listens (ss -ltnp 'sport = :${addr#*:}') and run it again."
    fi
  done

  # BUILD=release (set by the caller) builds and runs the optimised binaries.
  BUILD="${BUILD:-debug}"
  local profile=()
  [ "$BUILD" = debug ] || profile=(--release)
  # TOCSIN_BUILT=1: the caller built the binaries already (the test command builds every
  # target at once; `--bins` alone unifies dependency features differently and would
  # rebuild much of the tree).
  if [ "${TOCSIN_BUILT:-0}" != 1 ]; then
    say "cargo build --locked --bins ${profile[*]}"
    cargo build --locked --bins "${profile[@]}"
  fi
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN="$TARGET_DIR/$BUILD"
  tocsin() { "$BIN/tocsin" "$@"; }

  mkdir -p "$DEMO"
  # DKIM_ALGORITHM=ed25519 (set by the caller): the sender signs with Ed25519 (RFC 8463)
  # instead of the local configuration's RSA, about twenty times cheaper per message.
  if [ "${DKIM_ALGORITHM:-rsa}" = ed25519 ]; then
    DKIM_KEY="$DEMO/dkim-ed25519.pem"
    if [ ! -s "$DKIM_KEY" ]; then
      say "making the DKIM key ($DKIM_KEY)"
      (umask 077 && openssl genpkey -algorithm ed25519 -out "$DKIM_KEY" 2>/dev/null)
    fi
    # The sender takes the base64 of the 32-byte secret: the last 32 bytes of the DER.
    DKIM_SECRET=$(openssl pkey -in "$DKIM_KEY" -outform DER 2>/dev/null | tail -c 32 | base64 -w0)
    DKIM_TXT="v=DKIM1; k=ed25519; p=$(openssl pkey -in "$DKIM_KEY" -pubout -outform DER 2>/dev/null | tail -c 32 | base64 -w0)"
    SENDER_ENV+=(TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__DKIM__ALGORITHM=ed25519)
  else
    DKIM_KEY="$DEMO/dkim-rsa.pem"
    if [ ! -s "$DKIM_KEY" ]; then
      say "making the demo's DKIM key ($DKIM_KEY)"
      (umask 077 && openssl genrsa -traditional -out "$DKIM_KEY" 2048 2>/dev/null)
    fi
    DKIM_SECRET=$(cat "$DKIM_KEY")
    DKIM_TXT="v=DKIM1; k=rsa; p=$(openssl rsa -in "$DKIM_KEY" -pubout -outform DER 2>/dev/null | base64 -w0)"
  fi

  say "starting tocsin-standins, tocsin-planner, tocsin-renderer, tocsin-sender, tocsin-tracker, tocsin-api (logs in $DEMO)"
  # The stand-in calls the tracker back with each SMS's signed status, as Twilio does.
  start standins "$BIN/tocsin-standins" --listen "$STANDIN" --twilio-auth-token "$TWILIO_AUTH_TOKEN" \
    --twilio-status-callbacks "${STANDIN_ARGS[@]}"
  wait_ready standins "http://$STANDIN/_standin/health"
  start planner env "${stack_env[@]}" TOCSIN_CONFIG=config/local/planner.toml TOCSIN__HTTP__LISTEN="$PLANNER_OPS" \
    "$BIN/tocsin-planner"
  wait_ready planner "http://$PLANNER_OPS/readyz"
  start renderer env "${stack_env[@]}" TOCSIN_CONFIG=config/local/renderer.toml TOCSIN__HTTP__LISTEN="$RENDERER_OPS" \
    "$BIN/tocsin-renderer"
  wait_ready renderer "http://$RENDERER_OPS/readyz"
  sender_env=(TOCSIN_CONFIG=config/local/sender.toml)
  if [ "$STATE" != "$ROOT/.stack" ]; then
    sender_env+=(TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__CA_FILE="$STATE/smtp/ca.pem")
  fi
  [ -z "${TOCSIN_SMTP_PORT:-}" ] || sender_env+=(TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__PORT="$TOCSIN_SMTP_PORT")
  [ -z "${TOCSIN_SMTP_USER:-}" ] || sender_env+=(TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__USERNAME="$TOCSIN_SMTP_USER")
  sender_env+=("${SENDER_ENV[@]}")
  # The secrets are exported in the sender's own process only, never on a command line.
  run_sender() {
    export TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__PASSWORD="$SMTP_PASSWORD"
    export TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__DKIM__PRIVATE_KEY="$DKIM_SECRET"
    export TOCSIN__SENDER__PROVIDERS__TWILIO_LOCAL__API__AUTH_TOKEN="$TWILIO_AUTH_TOKEN"
    exec env "${stack_env[@]}" "${sender_env[@]}" TOCSIN__HTTP__LISTEN="$1" "$BIN/tocsin-sender"
  }
  # SENDERS instances (1 by default) share the budgets through Redis; the first on
  # $SENDER_OPS, the others on the next ports.
  SENDER_OPS_ALL=()
  local i ops
  for ((i = 0; i < ${SENDERS:-1}; i++)); do
    ops="${SENDER_OPS%:*}:$((${SENDER_OPS#*:} + i * 10))"
    SENDER_OPS_ALL+=("$ops")
    start "sender$([ "$i" -eq 0 ] || echo "-$((i + 1))")" run_sender "$ops"
    wait_ready sender "http://$ops/readyz"
  done
  run_tracker() {
    export TOCSIN__TRACKER__TWILIO__AUTH_TOKEN="$TWILIO_AUTH_TOKEN"
    export TOCSIN__TRACKER__BREVO__BEARER_TOKEN="$BREVO_WEBHOOK_TOKEN"
    exec env "${stack_env[@]}" TOCSIN_CONFIG=config/local/tracker.toml TOCSIN__HTTP__LISTEN="$TRACKER" \
      "$BIN/tocsin-tracker"
  }
  start tracker run_tracker
  wait_ready tracker "http://$TRACKER/readyz"
  start api env "${stack_env[@]}" TOCSIN_CONFIG=config/local/api.toml TOCSIN__HTTP__LISTEN="$API" "$BIN/tocsin-api"
  wait_ready api "http://$API/readyz"
  say "all ready after $(since "$T0") s"
}

# start_prometheus: Debian's Prometheus on $PROMETHEUS, with the jobs of
# deploy/prometheus/prometheus.yml (local addresses instead of the compose network's) and
# the repository's rules unchanged, scraping every service and evaluating every rule each
# second; data in $DEMO/prometheus. Returns once every target has been scraped.
PROMETHEUS="127.0.0.1:19090"
start_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null \
    || die "prometheus and promtool are missing: deploy/local/stack.sh install installs Debian's package"
  port_open "$PROMETHEUS" && die "$PROMETHEUS is in use; stop what listens there (ss -ltnp 'sport = :${PROMETHEUS#*:}')"
  say "Prometheus on $PROMETHEUS, scraping every service each second"
  PROM_DIR="$DEMO/prometheus"
  rm -rf "$PROM_DIR"
  mkdir -p "$PROM_DIR"
  local -A targets=(
    [tocsin-planner]="$PLANNER_OPS" [tocsin-renderer]="$RENDERER_OPS" [tocsin-sender]="$SENDER_OPS"
    [tocsin-tracker]="$TRACKER" [tocsin-api]="$API" [prometheus]="$PROMETHEUS"
  )
  local jobs job scraped=0
  jobs=$(grep -oE 'job_name: *[a-z-]+' deploy/prometheus/prometheus.yml | sed 's/job_name: *//' | sort)
  [ "$jobs" = "$(printf '%s\n' "${!targets[@]}" | sort)" ] \
    || die "deploy/prometheus/prometheus.yml's jobs ($(echo $jobs)) are not the ones started here"
  cp deploy/prometheus/alerts.yml "$PROM_DIR/alerts.yml"
  {
    printf 'global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n'
    printf 'rule_files:\n  - alerts.yml\nscrape_configs:\n'
    for job in $jobs; do
      printf '  - job_name: %s\n    static_configs:\n      - targets: ["%s"]\n' "$job" "${targets[$job]}"
    done
  } >"$PROM_DIR/prometheus.yml"
  promtool check config "$PROM_DIR/prometheus.yml" >"$PROM_DIR/check.log" 2>&1 \
    || { cat "$PROM_DIR/check.log"; die "promtool check config"; }
  promtool check rules deploy/prometheus/alerts.yml >>"$PROM_DIR/check.log" 2>&1 \
    || { cat "$PROM_DIR/check.log"; die "promtool check rules"; }
  start prometheus prometheus --config.file="$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROM_DIR/data" --web.listen-address="$PROMETHEUS" \
    --web.console.templates=/dev/null --web.console.libraries=/dev/null
  wait_ready prometheus "http://$PROMETHEUS/-/ready"
  # Its first scrapes come a few seconds after it is ready (target discovery is batched
  # every 5 s): return once every target has been scraped, so that every counter's first
  # sample predates what the caller does next.
  for _ in $(seq 1 100); do
    http_get "http://$PROMETHEUS/api/v1/query?query=count(up%3D%3D1)" "$PROM_DIR/up.json" \
      && scraped=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["data"]["result"]; print(r[0]["value"][1] if r else 0)' "$PROM_DIR/up.json")
    [ "$scraped" -ge "${#targets[@]}" ] && return 0
    sleep 0.2
  done
  die "Prometheus scraped $scraped of ${#targets[@]} targets in 20 s; see $DEMO/prometheus.log"
}
