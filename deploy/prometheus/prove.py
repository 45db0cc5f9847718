#!/usr/bin/env python3
"""The parts of deploy/prometheus/prove.sh that speak HTTP (standard library only).

  prove.py engage     -- what recipients and providers do after a blast: opens, clicks,
                         one-click unsubscribes (from the received mail), Brevo bounce and
                         complaint webhooks, a Twilio inbound STOP, a forged callback
  prove.py evaluate   -- every dashboard panel's query and every rule through Prometheus's
                         HTTP API: each must parse and return data; then the expectations
                         of the scenario (values above zero, alerts pending or firing)

Each prints what it did and exits non-zero on the first thing that is not as it should be.
"""

import argparse
import base64
import email
import glob
import hashlib
import hmac
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email import policy

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(method, url, body=None, headers=None):
    """(status, body) of one request; redirects are not followed."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------
# engage


def token_claims(token):
    """campaign, contact, channel of a tracker token (read, not verified: the tracker
    verifies it). Format: services/renderer/src/tokens.rs."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body, fields, at = raw[:-16], [], 2
    while at < len(body):
        size = int.from_bytes(body[at : at + 2], "big")
        fields.append(body[at + 2 : at + 2 + size].decode())
        at += 2 + size
    return fields[0], fields[1], fields[2]


def twilio_signature(secret, url, params):
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL and the sorted parameters."""
    data = url + "".join(k + v for k, v in sorted(params.items()))
    digest = hmac.new(secret.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def post_form(url, params, signature):
    body = urllib.parse.urlencode(params).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    return request("POST", url, body, headers)


def engage(args):
    files = sorted(glob.glob(f"{args.mail_dir}/*"))
    mails = []
    for path in files:
        with open(path, "rb") as f:
            message = email.message_from_binary_file(f, policy=policy.default)
        if f"+{args.tag}@" in str(message["To"]):
            mails.append(message)
    if len(mails) < 10:
        fail(f"only {len(mails)} messages to +{args.tag} in {args.mail_dir}")
    tracker = args.tracker.rstrip("/")

    def links(message):
        html = message.get_body(("html",)).get_content()
        opens = re.findall(rf'{re.escape(tracker)}/o/([A-Za-z0-9_-]+)', html)
        clicks = re.findall(rf'{re.escape(tracker)}/c/([A-Za-z0-9_-]+)', html)
        unsubscribe = re.search(r"<(http[^>]+/u/([A-Za-z0-9_-]+))>", str(message["List-Unsubscribe"]))
        return opens, clicks, unsubscribe

    counts = {"opens": 0, "clicks": 0, "unsubscribes": 0, "brevo": 0}
    browser = {"User-Agent": BROWSER}
    for message in mails[: args.open]:
        opens, clicks, _ = links(message)
        for token in opens[:1]:
            status, _ = request("GET", f"{tracker}/o/{token}", headers=browser)
            if status != 200:
                fail(f"open pixel answered {status}")
            counts["opens"] += 1
        for token in clicks[:1]:
            status, _ = request("GET", f"{tracker}/c/{token}", headers=browser)
            if status not in (302, 303, 307):
                fail(f"click answered {status}, not a redirect")
            counts["clicks"] += 1
    rest = mails[args.open :]
    for message in rest[: args.unsubscribe]:
        _, _, unsubscribe = links(message)
        if not unsubscribe:
            fail("a message without a List-Unsubscribe URL")
        # RFC 8058: what a mail client POSTs.
        status, _ = request(
            "POST",
            unsubscribe.group(1),
            b"List-Unsubscribe=One-Click",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            fail(f"one-click unsubscribe answered {status}")
        counts["unsubscribes"] += 1

    # Brevo's webhook for messages it would have carried: bounces and complaints, keyed by
    # X-Mailin-custom (the idempotency key) as the sender sets it with Brevo.
    rest = rest[args.unsubscribe :]
    events = ["hard_bounce"] * args.bounce + ["spam"] * args.complain
    now = int(time.time())
    for event, message in zip(events, rest):
        _, _, unsubscribe = links(message)
        campaign, contact, channel = token_claims(unsubscribe.group(2))
        payload = {
            "event": event,
            "email": str(message["To"]),
            "message-id": str(message["Message-ID"]),
            "ts_event": now,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "X-Mailin-custom": f"{campaign}:{contact}:{channel}",
            "reason": "user unknown" if event == "hard_bounce" else "",
        }
        status, body = request(
            "POST",
            f"{tracker}/webhooks/brevo",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {args.brevo_token}"},
        )
        if status != 200:
            fail(f"Brevo {event} webhook answered {status}: {body[:200]!r}")
        counts["brevo"] += 1

    # Twilio: a recipient answers STOP to an SMS it received, and a forged callback.
    status, body = request("GET", f"{args.standin}/_standin/messages?provider=twilio")
    sms = json.loads(body) if status == 200 else []
    if len(sms) < args.stop + 1:
        fail(f"the Twilio stand-in recorded {len(sms)} SMS")
    inbound = f"{tracker}/webhooks/twilio/inbound"
    for i, message in enumerate(sms[: args.stop]):
        params = {
            "AccountSid": args.twilio_sid,
            "MessageSid": f"SMprove{i:026d}",
            "From": message["to"],
            "To": message["from"],
            "Body": "STOP",
            "NumSegments": "1",
        }
        status, body = post_form(inbound, params, twilio_signature(args.twilio_token, inbound, params))
        if status != 200:
            fail(f"inbound STOP answered {status}: {body[:200]!r}")
    status_url = f"{tracker}/webhooks/twilio/status"
    forged = {"MessageSid": "SMforged", "MessageStatus": "delivered", "To": sms[-1]["to"]}
    status, _ = post_form(status_url, forged, twilio_signature("not-the-token", status_url, forged))
    if status != 403:
        fail(f"a forged Twilio callback answered {status}, not 403")
    print(
        f"  {counts['opens']} opens, {counts['clicks']} clicks, {counts['unsubscribes']} one-click "
        f"unsubscribes, {args.bounce} Brevo hard bounces, {args.complain} Brevo complaints, "
        f"{args.stop} inbound STOP, 1 forged Twilio callback (refused)"
    )


# ---------------------------------------------------------------------------------------
# evaluate


def query(prometheus, expr, window=None):
    """(status, result or error) of an instant query, or of a range query over
    window = (start, end, step) as Grafana asks for a time-series panel."""
    if window is None:
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    else:
        start, end, step = window
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        url = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(params)
    status, body = request("GET", url)
    try:
        answer = json.loads(body)
    except ValueError:
        return "error", f"HTTP {status}: {body[:200]!r}"
    if answer.get("status") != "success":
        return "error", answer.get("error", f"HTTP {status}")
    return "success", answer["data"]["result"]


def grafana_expr(expr, rate_interval, scrape_interval, range_s):
    """A panel's expression with Grafana's variables as Grafana would substitute them."""
    for name, value in (
        ("$__rate_interval", rate_interval),
        ("$__interval", scrape_interval),
        ("$__range", f"{range_s}s"),
        ("${provider:regex}", ".*"),
        ("$provider", ".*"),
    ):
        expr = expr.replace(name, value)
    if "$" in expr.replace("$labels", "").replace("$value", ""):
        fail(f"an unknown variable in {expr}")
    return expr


def panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def describe(result):
    values = [float(v[1]) for r in result for v in r.get("values", [])]
    values += [float(r["value"][1]) for r in result if "value" in r]
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    top = max(finite) if finite else float("nan")
    return f"{len(result)} series, max {top:g}"


def evaluate(args):
    prometheus = args.prometheus.rstrip("/")
    problems = []

    # Every panel of every dashboard, over the run as Grafana would show it (a range query
    # from the run's start to now, unless the target asks for an instant value): parses,
    # and returns data.
    end = time.time()
    window = (end - args.range_s, end, args.step)
    total = 0
    for path in sorted(glob.glob(f"{args.dashboards}/*.json")):
        dashboard = json.load(open(path))
        print(f"  {path.rsplit('/', 1)[-1]}: {dashboard['title']}")
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" not in target:
                    continue
                total += 1
                expr = grafana_expr(target["expr"], args.rate_interval, args.scrape_interval, args.range_s)
                instant = target.get("instant") and not target.get("range")
                status, result = query(prometheus, expr, None if instant else window)
                label = f"{panel['title']} [{target.get('refId', '?')}]"
                if status != "success":
                    problems.append(f"{label}: does not evaluate: {result}")
                    print(f"    ✗ {label}: {result}")
                elif not result:
                    problems.append(f"{label}: no data ({expr})")
                    print(f"    ✗ {label}: no data")
                else:
                    print(f"    ✓ {label}: {describe(result)}")

    # Every rule, as Prometheus loaded it: evaluated without error, and its expression
    # parses as an instant query too.
    status, body = request("GET", f"{prometheus}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"] if status == 200 else []
    states = {}
    rules = 0
    for group in groups:
        for rule in group["rules"]:
            rules += 1
            name = rule.get("name")
            if rule.get("health") != "ok":
                problems.append(f"rule {name}: health {rule.get('health')}: {rule.get('lastError')}")
            status, result = query(prometheus, rule["query"])
            if status != "success":
                problems.append(f"rule {name}: does not evaluate: {result}")
            if rule["type"] == "alerting":
                states[name] = rule.get("state", "inactive")
    print(f"  {rules} rules in {len(groups)} groups, alerts: " + ", ".join(f"{n} {s}" for n, s in sorted(states.items())))
    if rules == 0:
        problems.append("Prometheus loaded no rule")

    # What this scenario did must show: values above zero.
    for line in open(args.expect):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        what, expr = (part.strip() for part in line.split("|", 1))
        status, result = query(prometheus, expr)
        values = [float(r["value"][1]) for r in result] if status == "success" else []
        if not values or min(values) <= 0:
            problems.append(f"expected above zero: {what} ({expr}): {result if status != 'success' else values}")
            print(f"    ✗ {what}: {values}")
        else:
            print(f"    ✓ {what}: {', '.join(f'{v:g}' for v in values)}")
    for name in args.active or []:
        if states.get(name) not in ("pending", "firing"):
            problems.append(f"alert {name} should be pending or firing, is {states.get(name)}")
    for name in args.silent or []:
        if states.get(name) != "inactive":
            problems.append(f"alert {name} should be inactive, is {states.get(name)}")

    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"  {total} panel queries and {rules} rules: every one evaluates and has data")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engage")
    e.add_argument("--mail-dir", required=True)
    e.add_argument("--tag", required=True)
    e.add_argument("--tracker", required=True)
    e.add_argument("--standin", required=True)
    e.add_argument("--brevo-token", required=True)
    e.add_argument("--twilio-token", required=True)
    e.add_argument("--twilio-sid", required=True)
    e.add_argument("--open", type=int, default=20)
    e.add_argument("--unsubscribe", type=int, default=3)
    e.add_argument("--bounce", type=int, default=3)
    e.add_argument("--complain", type=int, default=2)
    e.add_argument("--stop", type=int, default=2)
    v = sub.add_parser("evaluate")
    v.add_argument("--prometheus", required=True)
    v.add_argument("--dashboards", required=True)
    v.add_argument("--expect", required=True, help="lines 'what | expr', each must be above zero")
    v.add_argument("--active", action="append", help="an alert that must be pending or firing")
    v.add_argument("--silent", action="append", help="an alert that must be inactive")
    v.add_argument("--rate-interval", default="1m")
    v.add_argument("--scrape-interval", default="1s")
    v.add_argument("--range-s", type=int, default=900, help="the dashboards' time range: the run")
    v.add_argument("--step", default="2s", help="the range queries' step")
    args = parser.parse_args()
    {"engage": engage, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
