#!/usr/bin/env bash
# The triggered lane under load: how long from the CRM's segment event to the provider
# accepting the welcome e-mail, with the pipeline idle and while a large e-mail blast is
# going through it.
#
#   loadtests/lane-latency.sh                    200 probes, a 50,000-recipient blast
#   TOCSIN_LANE_BLAST=200000 loadtests/lane-latency.sh
#
# Starts the local stack and the pipeline (deploy/local/services.sh, as the demo does),
# defines the probe sequence (loadtests/scenarios/lane-probe.toml), then twice runs
# `tocsin-loadgen probe`: contacts entering the trigger segment one every
# TOCSIN_LANE_INTERVAL_MS, each timed until the sender's Feedback(sent) for its first step
# (published once the SMTP server accepted the message). The second run starts once the
# blast's jobs are flowing, and the blast's own progress is printed beside it.
#
# Environment: TOCSIN_LANE_PROBES (200), TOCSIN_LANE_INTERVAL_MS (100), TOCSIN_LANE_BLAST
# (50000), and the stack's (see deploy/local/stack.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
DEMO="$STATE/loadtests"
SAY_AS=lane
PROBES="${TOCSIN_LANE_PROBES:-200}"
INTERVAL_MS="${TOCSIN_LANE_INTERVAL_MS:-100}"
BLAST="${TOCSIN_LANE_BLAST:-50000}"
# shellcheck source=deploy/local/services.sh
source "$ROOT/deploy/local/services.sh"

T0=$(now)
start_services
RUN=$(date +%Y%m%d-%H%M%S)
RUN_DIR="$DEMO/runs/lane-$RUN"
mkdir -p "$RUN_DIR"

say "the probe's template and sequence"
tocsin --json templates upload lane-welcome --file deploy/local/demo/invitation-email.json >/dev/null
if ! tocsin --json sequences show lane-probe >/dev/null 2>&1; then
  tocsin sequences create --file loadtests/scenarios/lane-probe.toml
fi
# The planner's index of trigger segments is refreshed every second.
sleep 2

probe() {
  env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json probe --segment lane-probe --sequence lane-probe \
    --count "$PROBES" --interval-ms "$INTERVAL_MS" --timeout-s 300 >"$RUN_DIR/$1.json"
}
report() {
  printf '  %-28s p50 %6.0f ms   p90 %6.0f ms   p99 %6.0f ms   max %6.0f ms   (%s of %s)\n' "$1" \
    "$(json "$RUN_DIR/$2.json" p50_ms)" "$(json "$RUN_DIR/$2.json" p90_ms)" \
    "$(json "$RUN_DIR/$2.json" p99_ms)" "$(json "$RUN_DIR/$2.json" max_ms)" \
    "$(json "$RUN_DIR/$2.json" received)" "$(json "$RUN_DIR/$2.json" probes)"
}

say "idle pipeline: $PROBES contacts enter lane-probe, one every $INTERVAL_MS ms"
probe idle
report "idle" idle

SEGMENT="lane-blast-$RUN"
CAMPAIGN="lane-blast-$RUN"
say "a $BLAST-recipient e-mail blast ($SEGMENT)"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json contacts --segment "$SEGMENT" --count "$BLAST" \
  --seed 9 --email-tag "lane-$RUN" >"$RUN_DIR/loadgen.json"
size=0
for _ in $(seq 1 600); do
  tocsin --json segments show "$SEGMENT" --sample 0 >"$RUN_DIR/segment.json" 2>/dev/null || true
  size=$(json "$RUN_DIR/segment.json" size 2>/dev/null || echo 0)
  [ "$size" -ge "$BLAST" ] && break
  sleep 1
done
[ "$size" -ge "$BLAST" ] || die "segment $SEGMENT holds $size of $BLAST after 10 minutes"
tocsin --json campaigns create --id "$CAMPAIGN" --name "Charge ($RUN)" --segment "$SEGMENT" \
  --channel email --template lane-welcome --sender-profile default --start now --quiet-hours none \
  >/dev/null
# Until the blast's messages are flowing to the SMTP server.
for _ in $(seq 1 300); do
  tocsin --json campaigns show "$CAMPAIGN" >"$RUN_DIR/campaign.json"
  [ "$(json "$RUN_DIR/campaign.json" counters outcomes sent)" -ge 200 ] && break
  sleep 1
done
say "during the blast: $PROBES contacts enter lane-probe"
probe blast
tocsin --json campaigns show "$CAMPAIGN" >"$RUN_DIR/campaign.json"
blast_sent=$(json "$RUN_DIR/campaign.json" counters outcomes sent)
blast_planned=$(json "$RUN_DIR/campaign.json" counters planned)

say "segment event to provider acceptance (Feedback sent), $PROBES probes each"
report "idle pipeline" idle
report "during a $BLAST blast" blast
echo "  the blast had $blast_sent of $blast_planned messages sent when the probes ended"
echo "  reports: $RUN_DIR/{idle,blast}.json"
