#!/usr/bin/env bash
# One e-mail blast and one SMS blast through the whole pipeline, on the local stack:
#
#   tocsin-loadgen ──SegmentEvent──▶ tocsin.segments ──▶ tocsin-planner ──SendJob──▶
#   tocsin-renderer ──▶ tocsin-sender ──▶ SMTP server (.stack/mail/new) and the Twilio
#   stand-in (tocsin-standins on 127.0.0.1:4010), which calls tocsin-tracker
#   (127.0.0.1:8090) back with each SMS's delivery; campaigns scheduled with the `tocsin`
#   CLI through tocsin-api (127.0.0.1:8080); Prometheus (127.0.0.1:19090) scraping all.
#
#   deploy/local/demo.sh                          10,000 contacts
#   TOCSIN_DEMO_CONTACTS=300 deploy/local/demo.sh
#   TOCSIN_DEMO_KEEP=1 deploy/local/demo.sh       keep everything up afterwards
#
# Starts the stack if needed (deploy/local/stack.sh up, which installs what is missing),
# builds the binaries (debug), starts the stand-in, the five services and Prometheus in
# the background (logs in .stack/demo/*.log; they are stopped when the demo ends unless
# TOCSIN_DEMO_KEEP=1, the stack stays up), publishes a fresh segment of French contacts
# (3 % of them unsubscribed before, some without consent), uploads the templates of
# deploy/local/demo/, shows a dry run, schedules the two blasts, follows them, waits
# until every message has reached the SMTP server or the stand-in and its feedback is
# back, and prints a summary and where to look. Exits non-zero if anything did not arrive.
#
# Environment: TOCSIN_DEMO_CONTACTS (10000), TOCSIN_DEMO_SEED (2026: the same people every
# run), TOCSIN_DEMO_STALL_S (120: give up when nothing moves for this long),
# TOCSIN_DEMO_KEEP (0), and the stack's own (TOCSIN_STACK_DIR, TOCSIN_BROKER_PORT,
# TOCSIN_REDIS_PORT, TOCSIN_SMTP_PORT, TOCSIN_SMTP_USER, TOCSIN_SMTP_PASSWORD: see
# stack.sh), passed on to the services.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${TOCSIN_STACK_DIR:-$ROOT/.stack}"
DEMO="$STATE/demo"
SAY_AS=demo
CONTACTS="${TOCSIN_DEMO_CONTACTS:-10000}"
KEEP="${TOCSIN_DEMO_KEEP:-0}"
OPTED_OUT=0.03
# The demo's Twilio number takes 150 SMS parts a second (a short code's rate): the
# stand-in refuses more with 429, the sender's budget for it is the same.
SMS_RATE=150
STANDIN_ARGS=(--rate-limit "twilio=$SMS_RATE")
SENDER_ENV=(TOCSIN__SENDER__PROVIDERS__TWILIO_LOCAL__RATE__PER_SECOND="$SMS_RATE")
SEED="${TOCSIN_DEMO_SEED:-2026}"
STALL_S="${TOCSIN_DEMO_STALL_S:-120}"
# shellcheck source=deploy/local/services.sh
source "$ROOT/deploy/local/services.sh"

T0=$(now)
case "$CONTACTS" in '' | *[!0-9]*) die "TOCSIN_DEMO_CONTACTS must be a number, not '$CONTACTS'" ;; esac
[ "$CONTACTS" -gt 0 ] || die "TOCSIN_DEMO_CONTACTS must be at least 1"
# Planning and dispatching a campaign (not sending it) takes well under this.
WATCH_S=$((300 + CONTACTS / 50))

start_services
start_prometheus

# ---------------------------------------------------------------------------------------
RUN=$(date +%Y%m%d-%H%M%S)
SEGMENT="demo-fr-$RUN"
TAG="demo-$RUN"
EMAIL_CAMPAIGN="demo-email-$RUN"
SMS_CAMPAIGN="demo-sms-$RUN"
RUN_DIR="$DEMO/runs/$RUN"
mkdir -p "$RUN_DIR"
touch "$RUN_DIR/start"

say "publishing $CONTACTS contacts into segment $SEGMENT (tocsin-loadgen, seed $SEED)"
env "${stack_env[@]}" "$BIN/tocsin-loadgen" --json contacts --segment "$SEGMENT" --count "$CONTACTS" --seed "$SEED" \
  --email-tag "$TAG" --opted-out "$OPTED_OUT" >"$RUN_DIR/loadgen.json"
PUBLISHED=$(json "$RUN_DIR/loadgen.json" published)
PUBLISH_RATE=$(calc "$(json "$RUN_DIR/loadgen.json" events_per_second)" .0f)
EMAIL_CONSENT=$(json "$RUN_DIR/loadgen.json" tally email_consent)
SMS_CONSENT=$(json "$RUN_DIR/loadgen.json" tally sms_consent)
EMAIL_OPTED_OUT=$(json "$RUN_DIR/loadgen.json" tally email_opted_out)
SMS_OPTED_OUT=$(json "$RUN_DIR/loadgen.json" tally sms_opted_out)
OVERSEAS=$(json "$RUN_DIR/loadgen.json" tally overseas)
printf '  %s contacts published, %s events/s: %s with e-mail consent, %s with SMS consent,\n' \
  "$PUBLISHED" "$PUBLISH_RATE" "$EMAIL_CONSENT" "$SMS_CONSENT"
printf '  %s overseas; of those who consent, %s e-mail addresses and %s numbers unsubscribed before\n' \
  "$OVERSEAS" "$EMAIL_OPTED_OUT" "$SMS_OPTED_OUT"
EMAIL_EXPECTED=$((EMAIL_CONSENT - EMAIL_OPTED_OUT))
SMS_EXPECTED=$((SMS_CONSENT - SMS_OPTED_OUT))

say "waiting for the planner to hold the $CONTACTS members (tocsin segments show)"
size=0 last=-1 moved=$(date +%s)
while [ "$size" -lt "$CONTACTS" ]; do
  if tocsin --json segments show "$SEGMENT" --sample 0 >"$RUN_DIR/segment.json" 2>/dev/null; then
    size=$(json "$RUN_DIR/segment.json" size)
  fi
  [ "$size" = "$last" ] || { last=$size; moved=$(date +%s); }
  [ $(($(date +%s) - moved)) -lt "$STALL_S" ] \
    || die "segment $SEGMENT stuck at $size of $CONTACTS members; see $DEMO/planner.log"
  [ "$size" -ge "$CONTACTS" ] || sleep 0.5
done
tocsin segments show "$SEGMENT" --sample 3

say "uploading the templates (deploy/local/demo/)"
for template in demo-invitation:invitation-email demo-rappel:rappel-sms; do
  tocsin --json templates upload "${template%%:*}" --file "deploy/local/demo/${template#*:}.json" \
    >"$RUN_DIR/template-${template%%:*}.json"
  warnings=$(json "$RUN_DIR/template-${template%%:*}.json" warnings)
  printf '  %s version %s, warnings: %s\n' "${template%%:*}" \
    "$(json "$RUN_DIR/template-${template%%:*}.json" version)" \
    "$([ "$warnings" = "[]" ] && echo none || echo "$warnings")"
done

# The earlier unsubscribes reach the planner's suppression list through tocsin.feedback,
# as the tracker's do: the dry run shows them once they are all in.
say "dry run of the e-mail blast, once the $EMAIL_OPTED_OUT earlier e-mail unsubscribes are in"
dry_run() {
  tocsin --json campaigns dry-run --name dry-run --segment "$SEGMENT" --channel "$1" --template "$2" \
    --sender-profile default --quiet-hours none >"$RUN_DIR/dry-run-$1.json" 2>/dev/null
}
for channel in email:demo-invitation:$EMAIL_EXPECTED sms:demo-rappel:$SMS_EXPECTED; do
  IFS=: read -r name template expected <<<"$channel"
  eligible=-1
  for _ in $(seq 1 240); do
    dry_run "$name" "$template" && eligible=$(json "$RUN_DIR/dry-run-$name.json" eligible)
    [ "$eligible" -eq "$expected" ] && break
    sleep 0.5
  done
  [ "$eligible" -eq "$expected" ] \
    || die "the $name dry run says $eligible would receive, $expected expected; see $DEMO/planner.log"
done
tocsin campaigns dry-run --name dry-run --segment "$SEGMENT" --channel email --template demo-invitation \
  --sender-profile default --quiet-hours none

T_BLAST=$(now)
say "scheduling the e-mail blast $EMAIL_CAMPAIGN (e-mail quiet hours: none; opens and clicks tracked)"
tocsin --json campaigns create --id "$EMAIL_CAMPAIGN" --name "Démo meeting en ligne, e-mail ($RUN)" \
  --segment "$SEGMENT" --channel email --template demo-invitation --sender-profile default \
  --start now --quiet-hours none --track-opens --track-clicks >"$RUN_DIR/$EMAIL_CAMPAIGN.json"
echo "  $(json "$RUN_DIR/$EMAIL_CAMPAIGN.json" state), start $(json "$RUN_DIR/$EMAIL_CAMPAIGN.json" startAt)"
say "scheduling the SMS blast $SMS_CAMPAIGN"
say "  SMS quiet hours: every day, all day ($SMS_QUIET_HOURS), so that the demo sends whatever"
say "  the time; a real SMS blast keeps the default (Monday-Saturday 08:00-20:00, no public holidays)"
tocsin --json campaigns create --id "$SMS_CAMPAIGN" --name "Démo meeting en ligne, SMS ($RUN)" \
  --segment "$SEGMENT" --channel sms --template demo-rappel --sender-profile default \
  --start now --quiet-hours "$SMS_QUIET_HOURS" >"$RUN_DIR/$SMS_CAMPAIGN.json"
echo "  $(json "$RUN_DIR/$SMS_CAMPAIGN.json" state), start $(json "$RUN_DIR/$SMS_CAMPAIGN.json" startAt)"

for campaign in "$EMAIL_CAMPAIGN" "$SMS_CAMPAIGN"; do
  say "following $campaign (tocsin campaigns watch)"
  timeout "$WATCH_S" "$BIN/tocsin" campaigns watch "$campaign" \
    || die "$campaign did not complete within $WATCH_S s; see $DEMO/planner.log"
  tocsin --json campaigns show "$campaign" >"$RUN_DIR/$campaign.json"
done
EMAIL_FILE="$RUN_DIR/$EMAIL_CAMPAIGN.json"
SMS_FILE="$RUN_DIR/$SMS_CAMPAIGN.json"
for file in "$EMAIL_FILE" "$SMS_FILE"; do
  [ "$(json "$file" state)" = completed ] || die "$(json "$file" id) ended $(json "$file" state)"
done
EMAIL_DISPATCHED=$(json "$EMAIL_FILE" counters dispatched)
SMS_DISPATCHED=$(json "$SMS_FILE" counters dispatched)

# ---------------------------------------------------------------------------------------
# Arrival: this run's mail (its recipients carry +$TAG), the stand-in's counters (it was
# started by this run, so it counts this run's SMS only), and the sender's feedback as the
# planner counted it from tocsin.feedback (`sent` in `tocsin campaigns show`).
run_mail() {
  find "$STATE/mail/new" -type f -newer "$RUN_DIR/start" -print0 \
    | { xargs -0 -r grep -lF -- "+$TAG@" || true; } >"$RUN_DIR/mail.txt"
  wc -l <"$RUN_DIR/mail.txt"
}
# feedback CAMPAIGN KIND: how many of the campaign's messages the planner counted as KIND.
feedback() {
  if tocsin --json campaigns show "$1" >"$RUN_DIR/$1.json" 2>/dev/null; then
    json "$RUN_DIR/$1.json" counters outcomes "$2"
  else
    echo 0
  fi
}
say "waiting for $EMAIL_DISPATCHED e-mails at the SMTP server, $SMS_DISPATCHED SMS at the Twilio stand-in and their feedback (sent; delivered for SMS)"
mails=0 sms=0 email_sent=0 sms_sent=0 sms_delivered=0 last="" moved=$(date +%s) shown=0
T_MAIL=$T_BLAST T_SMS=$T_BLAST
while :; do
  new_mails=$(run_mail)
  [ "$new_mails" = "$mails" ] || { mails=$new_mails; T_MAIL=$(now); }
  if http_get "http://$STANDIN/_standin/stats" "$RUN_DIR/standin-stats.json"; then
    new_sms=$(json "$RUN_DIR/standin-stats.json" twilio accepted)
    [ "$new_sms" = "$sms" ] || { sms=$new_sms; T_SMS=$(now); }
  fi
  email_sent=$(feedback "$EMAIL_CAMPAIGN" sent)
  sms_sent=$(feedback "$SMS_CAMPAIGN" sent)
  sms_delivered=$(feedback "$SMS_CAMPAIGN" delivered)
  progress="e-mails $mails / $EMAIL_DISPATCHED (sent $email_sent), SMS $sms / $SMS_DISPATCHED (sent $sms_sent, delivered $sms_delivered)"
  [ "$progress" = "$last" ] || { last=$progress; moved=$(date +%s); }
  if [ -t 1 ]; then
    printf '\r  %s ' "$progress"
  elif [ $(($(date +%s) - shown)) -ge 5 ]; then
    echo "  $progress"
    shown=$(date +%s)
  fi
  [ "$mails" -ge "$EMAIL_DISPATCHED" ] && [ "$sms" -ge "$SMS_DISPATCHED" ] \
    && [ "$email_sent" -ge "$EMAIL_DISPATCHED" ] && [ "$sms_sent" -ge "$SMS_DISPATCHED" ] \
    && [ "$sms_delivered" -ge "$SMS_DISPATCHED" ] && break
  if [ $(($(date +%s) - moved)) -ge "$STALL_S" ]; then
    echo
    say "nothing moved for $STALL_S s"
    break
  fi
  sleep 1
done
[ -t 1 ] && echo
echo "  $progress"
# A moment more, so that a message sent twice would be counted.
sleep 2
mails=$(run_mail)
http_get "http://$STANDIN/_standin/stats" "$RUN_DIR/standin-stats.json"
sms=$(json "$RUN_DIR/standin-stats.json" twilio accepted)
sms_parts=$(json "$RUN_DIR/standin-stats.json" twilio parts)
sms_duplicates=$(json "$RUN_DIR/standin-stats.json" twilio duplicates)
email_sent=$(feedback "$EMAIL_CAMPAIGN" sent)
sms_sent=$(feedback "$SMS_CAMPAIGN" sent)
sms_delivered=$(feedback "$SMS_CAMPAIGN" delivered)
# What each service exposed at the end, kept with the run.
mkdir -p "$RUN_DIR/metrics"
for service in planner:$PLANNER_OPS renderer:$RENDERER_OPS sender:$SENDER_OPS tracker:$TRACKER api:$API; do
  http_get "http://${service#*:}/metrics" "$RUN_DIR/metrics/${service%%:*}.txt" || : >"$RUN_DIR/metrics/${service%%:*}.txt"
done
cp "$RUN_DIR/metrics/sender.txt" "$RUN_DIR/sender-metrics.txt"

# DKIM: a sample of this run's messages, checked offline against the demo's public key.
dkim_line="no message to check"
mapfile -t sample < <(head -n 20 "$RUN_DIR/mail.txt")
if [ ${#sample[@]} -gt 0 ]; then
  if "$STATE/venv/bin/python" deploy/local/dkim_verify.py --txt "$DKIM_TXT" "${sample[@]}" \
    >"$RUN_DIR/dkim.jsonl"; then
    dkim_line="${#sample[@]} of ${#sample[@]} sampled signatures verify (d=tocsin.localhost, s=local, rsa-sha256)"
  else
    dkim_line="FAILED on a sampled message: see $RUN_DIR/dkim.jsonl"
  fi
fi

# One message of each channel, as it arrived.
sample_email=$(python3 - "$(head -n 1 "$RUN_DIR/mail.txt")" <<'PY'
import email, sys
from email import policy
if sys.argv[1]:
    with open(sys.argv[1], "rb") as f:
        message = email.message_from_binary_file(f, policy=policy.default)
    print(message["Subject"])
PY
)
http_get "http://$STANDIN/_standin/messages?provider=twilio" "$RUN_DIR/standin-messages.json" \
  || echo '[]' >"$RUN_DIR/standin-messages.json"
sample_sms=$(python3 - "$RUN_DIR/standin-messages.json" <<'PY'
import json, sys
messages = json.load(open(sys.argv[1]))
if messages:
    m = messages[0]
    print(f"{m['body']} ({m['parts']} part{'s' if m['parts'] > 1 else ''})")
PY
)

# ---------------------------------------------------------------------------------------
suppressed() {
  python3 - "$1" <<'PY'
import json, sys
counters = json.load(open(sys.argv[1]))["counters"]
reasons = counters.get("suppressed") or {}
parts = [f"{reason} {n}" for reason, n in sorted(reasons.items())]
for key in ("expired", "dropped"):
    if counters.get(key):
        parts.append(f"{key} {counters[key]}")
print(", ".join(parts) or "none")
PY
}
# The SMS provider's budget, as the sender saw it: its current rate and the mean wait.
throttling() {
  python3 - "$1" <<'PY'
import re, sys
values = {}
for line in open(sys.argv[1]):
    m = re.match(r'(tocsin_sender_\w+)\{[^}]*provider="twilio_local"[^}]*\} (\S+)', line)
    if m:
        values[m.group(1)] = float(m.group(2))
count = values.get("tocsin_sender_throttle_wait_seconds_count", 0)
wait = values.get("tocsin_sender_throttle_wait_seconds_sum", 0) / count if count else 0
rate = values.get("tocsin_sender_rate_limit", 0)
print(f"sender budget {rate:g} parts/s, mean wait for it {wait:.1f} s")
PY
}
BLAST_S=$(calc "max($T_MAIL, $T_SMS) - $T_BLAST" .1f)
MAIL_S=$(calc "$T_MAIL - $T_BLAST" .1f)
SMS_S=$(calc "$T_SMS - $T_BLAST" .1f)
TOTAL_S=$(since "$T0")

echo
say "summary of run $RUN"
row() { printf '  %-37s %s\n' "$1" "$2"; }
row "contacts published" "$PUBLISHED (segment $SEGMENT, $PUBLISH_RATE events/s)"
EMAIL_PLANNED=$(json "$EMAIL_FILE" counters planned)
SMS_PLANNED=$(json "$SMS_FILE" counters planned)
row "planned" "e-mail $EMAIL_PLANNED, SMS $SMS_PLANNED (consent on record: $EMAIL_CONSENT, $SMS_CONSENT; of whom unsubscribed before: $EMAIL_OPTED_OUT, $SMS_OPTED_OUT)"
row "suppressed, e-mail" "$(suppressed "$EMAIL_FILE")"
row "suppressed, SMS" "$(suppressed "$SMS_FILE")"
row "e-mails received by the SMTP server" "$mails of $EMAIL_DISPATCHED dispatched, in $MAIL_S s ($(calc "$mails / max($MAIL_S, 0.1)" .1f)/s; files in $STATE/mail/new to +$TAG)"
row "DKIM" "$dkim_line"
row "SMS accepted by the Twilio stand-in" "$sms of $SMS_DISPATCHED dispatched, $sms_parts parts, $sms_duplicates duplicates, $(json "$RUN_DIR/standin-stats.json" twilio throttled) refused for its $SMS_RATE parts/s limit, in $SMS_S s ($(calc "$sms_parts / max($SMS_S, 0.1)" .1f) parts/s; $(throttling "$RUN_DIR/sender-metrics.txt"))"
row "sample e-mail, subject" "${sample_email:-none}"
row "sample SMS" "${sample_sms:-none}"
outcomes() {
  python3 - "$1" <<'PY'
import json, sys
outcomes = json.load(open(sys.argv[1]))["counters"].get("outcomes") or {}
shown = ("sent", "delivered", "failed")
others = [f"{k} {v}" for k, v in sorted(outcomes.items()) if v and k not in shown]
print(", ".join(f"{k} {outcomes.get(k, 0)}" for k in shown) + "".join(f", {o}" for o in others))
PY
}
row "feedback, as the planner counted it" "e-mail: $(outcomes "$EMAIL_FILE"); SMS: $(outcomes "$SMS_FILE")"
row "blast" "$BLAST_S s from scheduling to the last message, $(calc "($mails + $sms) / max($BLAST_S, 0.1)" .1f) messages/s"
row "whole demo" "$TOTAL_S s (stack, build and start-up included)"
http_get "http://$PROMETHEUS/api/v1/alerts" "$RUN_DIR/alerts.json" || echo '{"data":{"alerts":[]}}' >"$RUN_DIR/alerts.json"
alerts() {
  python3 - "$1" <<'PY'
import json, sys
alerts = json.load(open(sys.argv[1]))["data"]["alerts"]
states = sorted(a["labels"]["alertname"] + " " + a["state"] for a in alerts)
print(", ".join(states) or "none pending or firing")
PY
}
row "alerts (Prometheus)" "$(alerts "$RUN_DIR/alerts.json")"

echo
say "where to look"
row "the e-mails" "$STATE/mail/new (this run's: addressed to +$TAG), e.g. $(head -n 1 "$RUN_DIR/mail.txt")"
row "the SMS" "http://$STANDIN/_standin/messages?provider=twilio (the stand-in's record)"
row "metrics at the end" "$RUN_DIR/metrics/{planner,renderer,sender,tracker,api}.txt"
row "metrics, live" "http://$PLANNER_OPS/metrics, $RENDERER_OPS, $SENDER_OPS, $TRACKER, $API (while up)"
row "Prometheus" "http://$PROMETHEUS/graph and /alerts (while up; rules from deploy/prometheus/alerts.yml)"
row "dashboards" "deploy/grafana/dashboards/{pipeline,providers,deliverability}.json: import into Grafana with this Prometheus as the data source (deploy/docker-compose.yml provisions them)"
row "logs" "$DEMO/{standins,planner,renderer,sender,tracker,api,prometheus}.log"

status=0
# Every generated address is valid and unique: exactly the consenting contacts who did not
# unsubscribe before are planned.
[ "$EMAIL_PLANNED" -eq "$EMAIL_EXPECTED" ] || { say "e-mail: $EMAIL_PLANNED planned, $EMAIL_EXPECTED expected"; status=1; }
[ "$SMS_PLANNED" -eq "$SMS_EXPECTED" ] || { say "SMS: $SMS_PLANNED planned, $SMS_EXPECTED expected"; status=1; }
[ "$mails" -eq "$EMAIL_DISPATCHED" ] || { say "e-mails: $mails received, $EMAIL_DISPATCHED expected"; status=1; }
[ "$sms" -eq "$SMS_DISPATCHED" ] || { say "SMS: $sms accepted, $SMS_DISPATCHED expected"; status=1; }
[ "$sms_duplicates" -eq 0 ] || { say "SMS: $sms_duplicates sent twice"; status=1; }
[ "$email_sent" -eq "$EMAIL_DISPATCHED" ] || { say "feedback: $email_sent e-mails sent, $EMAIL_DISPATCHED expected"; status=1; }
[ "$sms_sent" -eq "$SMS_DISPATCHED" ] || { say "feedback: $sms_sent SMS sent, $SMS_DISPATCHED expected"; status=1; }
[ "$sms_delivered" -eq "$SMS_DISPATCHED" ] || { say "feedback: $sms_delivered SMS delivered, $SMS_DISPATCHED expected"; status=1; }
case "$dkim_line" in FAILED*) status=1 ;; esac
if [ "$status" -ne 0 ]; then
  say "something did not arrive: see $DEMO/{planner,renderer,sender,tracker,api,standins}.log"
fi
if [ "$status" -eq 0 ]; then
  say "every message arrived, and its feedback"
fi
if [ "$KEEP" = 1 ]; then
  say "TOCSIN_DEMO_KEEP=1: the services, the stand-in and Prometheus stay up; Ctrl-C stops them"
  while :; do sleep 3600 & wait $!; done
fi
exit "$status"
