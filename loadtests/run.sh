#!/usr/bin/env bash
# One load scenario, measured end to end, with the broker's ceiling in the same run:
#
#   loadtests/run.sh loadtests/scenarios/email-100k.toml
#
# 1. Starts the local stack and the pipeline (deploy/local/services.sh, as the demo does;
#    `senders` sender instances), with the provider stand-ins as the only providers: the
#    SMTP sink of tocsin-standins on 127.0.0.1:12600 (plaintext, counts messages and
#    duplicate Message-IDs) and its Twilio API (counts SMS, parts and duplicate keys).
# 2. Publishes `contacts` synthetic contacts into a fresh segment (tocsin-loadgen
#    contacts), waits until the planner holds them, uploads the demo's template.
# 3. Starts the follower (tocsin-loadgen follow) at the end of every topic, schedules the
#    blast through the API, and follows it until every recipient with consent has an
#    ending, sampling every consumer group's lag each second; with `probes`, times the
#    triggered lane meanwhile (tocsin-loadgen probe).
# 4. Reads the stand-in's counts (duplicates, parts) and each service's peak RSS (VmHWM),
#    then measures the broker's ceiling for the same hops and record sizes
#    (tocsin-loadgen ceiling).
# 5. Prints the report (loadtests/scenario.py report) and keeps it as JSON in
#    .stack/loadtests/runs/. Exits non-zero on any loss or duplicate.
#
# Environment: TOCSIN_LOAD_RELEASE=1 builds and runs the release binaries (the figures
# worth comparing; the first release build takes a while); TOCSIN_LOAD_PROFILE=1 records
# the whole machine with `perf` during the blast (every process, 499 samples a second)
# and keeps the hottest functions per process in the run's folder (profile.txt); and the
# stack's variables (see deploy/local/stack.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
DEMO="$STATE/loadtests"
SAY_AS=load
[ $# -eq 1 ] && [ -f "$1" ] || { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SCENARIO_FILE=$1
SCENARIO=$(python3 "$ROOT/loadtests/scenario.py" shell "$SCENARIO_FILE")
eval "$SCENARIO"
SMTP_SINK="127.0.0.1:12600"
STANDIN_ARGS=(--smtp-listen "$SMTP_SINK" --no-record "${SCENARIO_STANDIN_ARGS[@]}")
SENDER_ENV=(
  TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__PORT="${SMTP_SINK#*:}"
  TOCSIN__SENDER__PROVIDERS__SMTP_LOCAL__API__TLS=none
)
[ -z "$HEADROOM" ] || SENDER_ENV+=(TOCSIN__SENDER__THROTTLE__HEADROOM="$HEADROOM")
if [ "$SMS_RATE" != 0 ]; then
  STANDIN_ARGS+=(--rate-limit "twilio=$SMS_RATE")
  SENDER_ENV+=(TOCSIN__SENDER__PROVIDERS__TWILIO_LOCAL__RATE__PER_SECOND="$SMS_RATE")
else
  SENDER_ENV+=(TOCSIN__SENDER__PROVIDERS__TWILIO_LOCAL__RATE__PER_SECOND=1000000)
fi
BUILD=debug
[ "${TOCSIN_LOAD_RELEASE:-0}" != 1 ] || BUILD=release
# shellcheck source=deploy/local/services.sh
source "$ROOT/deploy/local/services.sh"

T0=$(now)
mkdir -p "$DEMO"
# A fresh broker (memory storage) for every run: runs stay comparable, and a run starts
# with no consumer group's history. After a three-sender run, the next run's single
# sender was given no partition of its topic for the whole two minutes it waited (Tansu
# 0.6's group coordination after members left; not investigated further).
say "a fresh broker for the run"
deploy/local/stack.sh down >/dev/null
TOCSIN_BROKER_STORAGE=memory deploy/local/stack.sh up >/dev/null
start_services
RUN=$(date +%Y%m%d-%H%M%S)
RUN_DIR="$DEMO/runs/$SCENARIO_NAME-$RUN"
mkdir -p "$RUN_DIR"
SEGMENT="load-$RUN"
CAMPAIGN="load-$SCENARIO_NAME-$RUN"
say "$SCENARIO_NAME: $SCENARIO_DESCRIPTION"

say "publishing $CONTACTS contacts into $SEGMENT"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json contacts --segment "$SEGMENT" --count "$CONTACTS" \
  --seed 9 >"$RUN_DIR/loadgen.json"
say "  $(calc "$(json "$RUN_DIR/loadgen.json" events_per_second)" ,.0f) events/s; waiting for the planner to hold them"
size=0 last=-1 moved=$(date +%s)
while [ "$size" -lt "$CONTACTS" ]; do
  tocsin --json segments show "$SEGMENT" --sample 0 >"$RUN_DIR/segment.json" 2>/dev/null \
    && size=$(json "$RUN_DIR/segment.json" size)
  [ "$size" = "$last" ] || { last=$size; moved=$(date +%s); }
  [ $(($(date +%s) - moved)) -lt "$STALL_S" ] || die "segment stuck at $size of $CONTACTS; see $DEMO/planner.log"
  [ "$size" -ge "$CONTACTS" ] || sleep 1
done
case "$CHANNEL" in
  email) TEMPLATE=invitation-email EXPECTED=$(json "$RUN_DIR/loadgen.json" tally email_consent) QUIET=none ;;
  sms) TEMPLATE=rappel-sms EXPECTED=$(json "$RUN_DIR/loadgen.json" tally sms_consent) QUIET="$SMS_QUIET_HOURS" ;;
esac
tocsin --json templates upload "load-$CHANNEL" --file "deploy/local/demo/$TEMPLATE.json" >/dev/null

METRICS=(--metrics "http://$PLANNER_OPS/metrics" --metrics "http://$RENDERER_OPS/metrics")
for ops in "${SENDER_OPS_ALL[@]}"; do METRICS+=(--metrics "http://$ops/metrics"); done
rm -f "$RUN_DIR/ready"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json follow --campaign "$CAMPAIGN" --expected "$EXPECTED" \
  --stages "tocsin.jobs,tocsin.outbound.$CHANNEL" --stall-s "$STALL_S" --ready-file "$RUN_DIR/ready" \
  "${METRICS[@]}" >"$RUN_DIR/follow.json" 2>"$RUN_DIR/follow.log" &
FOLLOWER=$!
for _ in $(seq 1 300); do [ -e "$RUN_DIR/ready" ] && break; sleep 0.1; done
[ -e "$RUN_DIR/ready" ] || die "the follower did not start; see $RUN_DIR/follow.log"
python3 -c 'import urllib.request, sys; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="POST"), timeout=5)' \
  "http://$STANDIN/_standin/reset"

say "scheduling $CAMPAIGN: $EXPECTED recipients with $CHANNEL consent"
tocsin --json campaigns create --id "$CAMPAIGN" --name "Charge $SCENARIO_NAME" --segment "$SEGMENT" \
  --channel "$CHANNEL" --template "load-$CHANNEL" --sender-profile default --start now \
  --quiet-hours "$QUIET" >"$RUN_DIR/campaign.json"
if [ "${TOCSIN_LOAD_PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null || die "TOCSIN_LOAD_PROFILE=1 needs perf (Debian: linux-perf)"
  perf record -F 499 -a -o "$RUN_DIR/perf.data" >"$RUN_DIR/perf.log" 2>&1 &
  PERF=$!
fi
if [ "$PROBES" -gt 0 ]; then
  tocsin --json templates upload lane-welcome --file deploy/local/demo/invitation-email.json >/dev/null
  tocsin --json sequences show lane-probe >/dev/null 2>&1 || tocsin sequences create --file loadtests/scenarios/lane-probe.toml >/dev/null
  sleep 2
  env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json probe --segment lane-probe --sequence lane-probe \
    --count "$PROBES" --interval-ms 250 --timeout-s 300 >"$RUN_DIR/probes.json" &
  PROBER=$!
fi
shown=0
while kill -0 "$FOLLOWER" 2>/dev/null; do
  if [ $(($(date +%s) - shown)) -ge 5 ]; then
    echo "  $(tail -n 1 "$RUN_DIR/follow.log" 2>/dev/null | sed 's/^ *//')"
    shown=$(date +%s)
  fi
  sleep 1
done
wait "$FOLLOWER" || die "the follower failed; see $RUN_DIR/follow.log"
if [ -n "${PERF:-}" ]; then
  kill -INT "$PERF" 2>/dev/null || true
  wait "$PERF" || true
  # Where the machine's time went during the blast: share of all samples per process and
  # function (the services, the broker, Redis, the stand-ins and the follower alike).
  report() {
    perf report -i "$RUN_DIR/perf.data" --stdio --no-children --sort "$1" --percent-limit "$2" 2>/dev/null \
      | grep -v "^#" | grep -v "^$" | sed -E "s/ {2,}/  /g" | cut -c1-150 | head -n "$3"
  }
  { echo "by binary:"; report comm,dso 1 20; echo "by function:"; report dso,symbol 0.4 60; } \
    >"$RUN_DIR/profile.txt" || true
  say "profile: $RUN_DIR/profile.txt"
  head -n 25 "$RUN_DIR/profile.txt"
fi
[ -z "${PROBER:-}" ] || wait "$PROBER" || say "some probes did not arrive: see $RUN_DIR/probes.json"

# Peak resident memory of each service (VmHWM: the high-water mark since it started).
rss_json() {
  local i first=1
  printf '{'
  for ((i = 0; i < ${#PIDS[@]}; i++)); do
    case "${NAMES[i]}" in standins | prometheus) continue ;; esac
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/${PIDS[i]}/status" 2>/dev/null || echo 0)
    [ "$first" = 1 ] || printf ','
    printf '"%s": %s' "${NAMES[i]}" "$(calc "${kb:-0} / 1024" .1f)"
    first=0
  done
  printf '}'
}
echo "$(rss_json)" >"$RUN_DIR/rss.json"
http_get "http://$STANDIN/_standin/stats" "$RUN_DIR/standin-stats.json"

sizes=$(python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))
print(",".join(str(max(1, round(s["mean_bytes"]))) for s in b["stages"] + [b["feedback"]]))
' "$RUN_DIR/follow.json")
say "the broker's ceiling: $EXPECTED records through the same hops ($sizes bytes)"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json ceiling --count "$EXPECTED" --sizes "$sizes" \
  >"$RUN_DIR/ceiling.json" 2>"$RUN_DIR/ceiling.log" || die "the ceiling run failed; see $RUN_DIR/ceiling.log"

python3 - "$RUN_DIR" "$SCENARIO_NAME" "$SCENARIO_DESCRIPTION" "$CONTACTS" "$SMS_RATE" "$CHANNEL" \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- services || echo +)" "$BUILD" \
  "$DKIM_ALGORITHM" "$HEADROOM" >"$RUN_DIR/report.json" <<'PY'
import json, os, platform, sys, time
run_dir, name, description, contacts, sms_rate, channel, commit, build, dkim, headroom = sys.argv[1:]
load = lambda f: json.load(open(os.path.join(run_dir, f)))
blast, stats = load("follow.json"), load("standin-stats.json")
provider = stats.get("smtp", {}) if channel == "email" else stats.get("twilio", {})
seconds = max((blast["last_sent_ms"] - blast["first_job_ms"]) / 1000, 0.001)
report = {
    "scenario": name, "description": description, "contacts": int(contacts),
    "date": time.strftime("%Y-%m-%d"), "commit": commit, "build": build,
    "dkim": dkim if channel == "email" else None,
    "headroom": float(headroom) if headroom else None,
    "machine": f"{os.cpu_count()} cores, {platform.machine()}",
    "published_per_second": load("loadgen.json")["events_per_second"],
    "blast": blast, "ceiling": load("ceiling.json"), "peak_rss_mb": load("rss.json"),
    "provider": provider, "provider_duplicates": provider.get("duplicates", 0),
    "sms_rate": float(sms_rate),
    # The provider's rate while it was being sent to: its parts over the time from the
    # first hand-off to the last (the feedback's own span), not counting the planning and
    # rendering before the first.
    "achieved_parts_per_second": provider.get("parts", 0) / max(blast["feedback"]["seconds"], 0.001) if channel == "sms" else 0,
}
if os.path.exists(os.path.join(run_dir, "probes.json")):
    report["probes"] = load("probes.json")
print(json.dumps(report, indent=1))
PY
echo
python3 loadtests/scenario.py report "$RUN_DIR/report.json"
