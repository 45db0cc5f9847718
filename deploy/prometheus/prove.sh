#!/usr/bin/env bash
# The dashboards and alerts, proven against a real Prometheus (Debian's package) scraping
# every service during a blast:
#
#   deploy/prometheus/prove.sh
#
# 1. Starts the local stack and the pipeline (deploy/local/services.sh, as the demo does),
#    with the Twilio stand-in answering 8 % of calls 500 and 3 % 429, and ending 15 % of
#    SMS `undelivered` (half unknown handsets: hard bounces; half unreachable: soft).
# 2. Starts Prometheus on 127.0.0.1:19090 with deploy/prometheus/prometheus.yml's jobs and
#    alerts.yml, every service scraped (and every rule evaluated) each second, after
#    `promtool check config` and `check rules`.
# 3. Runs an e-mail blast and an SMS blast to a fresh segment of TOCSIN_PROVE_CONTACTS (400)
#    contacts, publishes one undecodable record to tocsin.segments (it must reach the
#    dead-letter topic), then does what recipients and providers do (prove.py engage):
#    opens, clicks and one-click unsubscribes from the received mail, Brevo hard-bounce
#    and complaint webhooks, inbound STOP SMS, a forged Twilio callback.
# 4. Evaluates, through Prometheus's HTTP API, every panel query of deploy/grafana/
#    dashboards/*.json (Grafana's variables substituted) and every rule: each must parse
#    and return data. Then what the scenario did must show above zero (the list below),
#    the dead-letter, provider-error, hard-bounce and complaint alerts must be pending or
#    firing, and the service-down alerts silent.
#
# Part of the README's test command (deploy/local/stack.sh test runs it after the unit and
# integration tests); exits non-zero on the first thing that is not as it should be.
# Prometheus's data and every log: .stack/prove/. TOCSIN_PROVE_KEEP=1 keeps Prometheus and
# the services running afterwards (whatever the verdict) until Ctrl-C, to look around in
# Prometheus's UI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
DEMO="$STATE/prove"
SAY_AS=prove
CONTACTS="${TOCSIN_PROVE_CONTACTS:-1200}"
STANDIN_ARGS=(--error-rate 0.08 --throttle-rate 0.03 --twilio-undelivered-rate 0.15)
# shellcheck source=deploy/local/services.sh
source "$ROOT/deploy/local/services.sh"

T0=$(now)
command -v prometheus >/dev/null && command -v promtool >/dev/null \
  || die "prometheus and promtool are missing: deploy/local/stack.sh install installs Debian's package"

rm -rf "$DEMO"
mkdir -p "$DEMO"
start_services

# ---------------------------------------------------------------------------------------
start_prometheus

# ---------------------------------------------------------------------------------------
RUN=$(date +%Y%m%d-%H%M%S)
SEGMENT="prove-$RUN"
TAG="prove-$RUN"
touch "$DEMO/start"
say "publishing $CONTACTS contacts into $SEGMENT"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json contacts --segment "$SEGMENT" --count "$CONTACTS" \
  --seed 8 --email-tag "$TAG" >"$DEMO/loadgen.json"
for _ in $(seq 1 300); do
  tocsin --json segments show "$SEGMENT" --sample 0 >"$DEMO/segment.json" 2>/dev/null \
    && [ "$(json "$DEMO/segment.json" size)" -ge "$CONTACTS" ] && break
  sleep 0.5
done
[ "$(json "$DEMO/segment.json" size)" -ge "$CONTACTS" ] || die "the planner holds $(json "$DEMO/segment.json" size) of $CONTACTS"

say "one undecodable record to tocsin.segments (for the dead-letter topic)"
printf '{"segment_id": "%s", "contact_id": ' "$SEGMENT" \
  | env "${stack_env[@]}" "$BIN/tocsin-loadgen" raw --topic tocsin.segments --key prove-undecodable

for template in prove-invitation:invitation-email prove-rappel:rappel-sms; do
  tocsin --json templates upload "${template%%:*}" --file "deploy/local/demo/${template#*:}.json" >/dev/null
done
say "an e-mail blast and an SMS blast"
tocsin --json campaigns create --id "prove-email-$RUN" --name "Preuve, e-mail" --segment "$SEGMENT" \
  --channel email --template prove-invitation --sender-profile default --start now --quiet-hours none \
  --track-opens --track-clicks >/dev/null
tocsin --json campaigns create --id "prove-sms-$RUN" --name "Preuve, SMS" --segment "$SEGMENT" \
  --channel sms --template prove-rappel --sender-profile default --start now \
  --quiet-hours "$SMS_QUIET_HOURS" >/dev/null
# A third, held back by its window (a weekday three days away in every time zone of the
# segment): it stays running with its jobs in the durable schedule, for the fan-out and
# schedule panels, and is cancelled at the end.
HELD_DAY=$(( ($(date -u +%u) + 2) % 7 + 1 ))
tocsin --json campaigns create --id "prove-held-$RUN" --name "Preuve, fenêtre fermée" --segment "$SEGMENT" \
  --channel email --template prove-invitation --sender-profile default --start now \
  --quiet-hours "$HELD_DAY@10:00-11:00" >/dev/null
for campaign in "prove-email-$RUN" "prove-sms-$RUN"; do
  timeout 300 "$BIN/tocsin" campaigns watch "$campaign" >/dev/null \
    || die "$campaign did not complete in 300 s; see $DEMO/planner.log"
  tocsin --json campaigns show "$campaign" >"$DEMO/$campaign.json"
done
EMAILS=$(json "$DEMO/prove-email-$RUN.json" counters dispatched)
SMS=$(json "$DEMO/prove-sms-$RUN.json" counters dispatched)
say "waiting for $EMAILS e-mails and $SMS SMS at the providers"
for _ in $(seq 1 600); do
  mails=$(find "$STATE/mail/new" -type f -newer "$DEMO/start" -print0 | { xargs -0 -r grep -lF -- "+$TAG@" || true; } | wc -l)
  http_get "http://$STANDIN/_standin/stats" "$DEMO/standin-stats.json" || true
  sms=$(json "$DEMO/standin-stats.json" twilio accepted)
  [ "$mails" -ge "$EMAILS" ] && [ "$sms" -ge "$SMS" ] && break
  sleep 0.5
done
echo "  e-mails $mails / $EMAILS, SMS $sms / $SMS"
[ "$mails" -ge "$EMAILS" ] && [ "$sms" -ge "$SMS" ] || die "not everything arrived; see $DEMO/sender.log"

say "recipients and providers answer (prove.py engage)"
python3 deploy/prometheus/prove.py engage --mail-dir "$STATE/mail/new" --tag "$TAG" \
  --tracker "http://$TRACKER" --standin "http://$STANDIN" --brevo-token "$BREVO_WEBHOOK_TOKEN" \
  --twilio-token "$TWILIO_AUTH_TOKEN" --twilio-sid AC0123456789abcdef0123456789abcdef

# A few scrapes and rule evaluations after the last event.
sleep 8
tocsin --json campaigns show "prove-held-$RUN" >"$DEMO/prove-held-$RUN.json"
echo "  held-back campaign: $(json "$DEMO/prove-held-$RUN.json" state), $(json "$DEMO/prove-held-$RUN.json" counters planned) planned, $(json "$DEMO/prove-held-$RUN.json" counters dispatched) dispatched"

# ---------------------------------------------------------------------------------------
# What this scenario did, each above zero once scraped: "what | PromQL".
cat >"$DEMO/expect.txt" <<'EOF'
every service up                      | count(up{job=~"tocsin-.*"} == 1) == 5
contacts held by the planner          | max(tocsin_planner_contacts)
recipients planned                    | sum(tocsin_planner_jobs_planned_total)
recipients suppressed (no consent)    | sum(tocsin_planner_recipients_suppressed_total)
e-mails rendered                      | sum(tocsin_renderer_jobs_total{channel="email", outcome="rendered"})
SMS rendered                          | sum(tocsin_renderer_jobs_total{channel="sms", outcome="rendered"})
SMS parts                             | sum(tocsin_renderer_sms_parts_total)
renders timed                         | sum(tocsin_renderer_render_duration_seconds_count)
e-mails sent                          | sum(tocsin_sender_messages_total{channel="email", outcome="sent"})
SMS sent                              | sum(tocsin_sender_messages_total{channel="sms", outcome="sent"})
provider calls answered 5xx / 429     | sum(tocsin_sender_attempts_total{result="transient"})
retries                               | sum(tocsin_sender_retries_total)
waits for the SMS budget              | sum(tocsin_sender_throttle_wait_seconds_count{provider="twilio_local"})
SMS budget                            | max(tocsin_sender_rate_limit{provider="twilio_local"})
provider latency observations         | sum(tocsin_sender_provider_latency_seconds_count)
SMS delivered (Twilio callbacks)      | sum(tocsin_planner_feedback_events_total{channel="sms", kind="delivered"})
SMS hard bounces (30005)              | sum(tocsin_planner_feedback_events_total{channel="sms", kind="bounced", bounce_class="hard"})
SMS soft bounces (30003)              | sum(tocsin_planner_feedback_events_total{channel="sms", kind="bounced", bounce_class="soft"})
e-mail hard bounces (Brevo)           | sum(tocsin_planner_feedback_events_total{channel="email", kind="bounced", bounce_class="hard"})
complaints (Brevo)                    | sum(tocsin_tracker_webhook_events_total{kind="complained"})
suppressed after hard bounces         | sum(tocsin_planner_feedback_suppressions_total{reason="hard_bounced"})
one-click unsubscribes                | sum(tocsin_tracker_unsubscribes_total{outcome="recorded"})
inbound STOP                          | sum(tocsin_tracker_inbound_sms_total)
opens                                 | sum(tocsin_tracker_opens_total)
clicks                                | sum(tocsin_tracker_clicks_total)
Twilio callbacks accepted             | sum(tocsin_tracker_webhooks_total{provider="twilio_status", verdict="accepted"})
Brevo webhooks accepted               | sum(tocsin_tracker_webhooks_total{provider="brevo", verdict="accepted"})
forged callbacks refused              | sum(tocsin_tracker_webhooks_total{verdict="bad_signature"})
dead letters                          | sum(tocsin_bus_dead_letters_total{topic="tocsin.segments"})
consumer lag reported                 | count(tocsin_consumer_lag_messages) > 0
jobs waiting in the durable schedule  | max(tocsin_planner_schedule_jobs)
running campaigns' fan-out gauges    | count(tocsin_planner_campaign_recipients)
handler timings                       | sum(tocsin_bus_handler_duration_seconds_count)
EOF
say "every panel query and every rule through Prometheus's HTTP API"
keep() {
  [ "${TOCSIN_PROVE_KEEP:-0}" = 1 ] || return 0
  say "Prometheus: http://$PROMETHEUS/alerts, /graph; the services' /metrics: $PLANNER_OPS, $RENDERER_OPS, $SENDER_OPS, $TRACKER, $API. Ctrl-C stops them."
  while :; do sleep 3600 & wait $!; done
}
status=0
python3 deploy/prometheus/prove.py evaluate --prometheus "http://$PROMETHEUS" \
  --dashboards deploy/grafana/dashboards --expect "$DEMO/expect.txt" --range-s "$(calc "$(now) - $T0 + 60" .0f)" \
  --active TocsinDeadLetters --active TocsinProviderErrorRate --active TocsinHardBounceRateHigh \
  --active TocsinComplaintRateHigh --silent TocsinServiceDown --silent TocsinServiceMissing \
  || status=$?
tocsin campaigns cancel "prove-held-$RUN" >/dev/null || status=1
if [ "$status" -eq 0 ]; then
  say "proven in $(since "$T0") s (Prometheus's data: $PROM_DIR/data)"
else
  say "NOT proven: see the problems above, and the logs in $DEMO"
fi
keep
exit "$status"
