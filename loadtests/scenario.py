#!/usr/bin/env python3
"""Reads a load scenario (loadtests/scenarios/*.toml) for loadtests/run.sh, and prints its
report.

  scenario.py shell FILE          the scenario as shell assignments (eval'd by run.sh)
  scenario.py report RUN.json     the run's report, as text

A scenario's fields (every one but `description` and `contacts` optional):

  description   one line
  contacts      recipients published into a fresh segment
  channel       "email" (default) or "sms"
  senders       sender instances sharing the budgets through Redis (1)
  sms_rate      the SMS provider's limit in parts/s, at the stand-in (429 above) and in the
                sender's budget; 0: unthrottled (0)
  standin_args  extra tocsin-standins flags, e.g. ["--error-rate", "0.2"] ([])
  probes        triggered-lane probes timed during the blast (0)
  stall_s       give up when no message ended for this long (120)
  headroom      the senders' `[sender.throttle] headroom`: the fraction of each limit they
                use (config/sender.toml's 0.98)
  dkim          the sender's DKIM signature on e-mail: "rsa" (2048 bits, the local
                configuration's) or "ed25519" (RFC 8463) ("rsa")
"""

import json
import shlex
import sys
import tomllib

FIELDS = {
    "description": str,
    "contacts": int,
    "channel": str,
    "senders": int,
    "sms_rate": (int, float),
    "standin_args": list,
    "probes": int,
    "stall_s": int,
    "dkim": str,
    "headroom": (int, float),
}


def load(path):
    with open(path, "rb") as f:
        scenario = tomllib.load(f)
    unknown = set(scenario) - set(FIELDS)
    if unknown:
        sys.exit(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    for field, kind in FIELDS.items():
        if field in scenario and not isinstance(scenario[field], kind):
            sys.exit(f"{path}: {field} has the wrong type")
    for required in ("description", "contacts"):
        if required not in scenario:
            sys.exit(f"{path}: {required} is required")
    if scenario.get("channel", "email") not in ("email", "sms"):
        sys.exit(f"{path}: channel must be email or sms")
    if not 0 < scenario.get("headroom", 0.98) <= 1:
        sys.exit(f"{path}: headroom must be above 0 and at most 1")
    if scenario.get("dkim", "rsa") not in ("rsa", "ed25519"):
        sys.exit(f"{path}: dkim must be rsa or ed25519")
    return scenario


def shell(path):
    s = load(path)
    name = path.rsplit("/", 1)[-1].removesuffix(".toml")
    values = {
        "SCENARIO_NAME": name,
        "SCENARIO_DESCRIPTION": s["description"],
        "CONTACTS": s["contacts"],
        "CHANNEL": s.get("channel", "email"),
        "SENDERS": s.get("senders", 1),
        "SMS_RATE": s.get("sms_rate", 0),
        "PROBES": s.get("probes", 0),
        "STALL_S": s.get("stall_s", 120),
        "DKIM_ALGORITHM": s.get("dkim", "rsa"),
        "HEADROOM": s.get("headroom", ""),
    }
    for key, value in values.items():
        print(f"{key}={shlex.quote(str(value))}")
    print("SCENARIO_STANDIN_ARGS=(" + " ".join(shlex.quote(str(a)) for a in s.get("standin_args", [])) + ")")


def report(path):
    r = json.load(open(path))
    blast, ceiling = r["blast"], r["ceiling"]
    def row(what, value):
        print(f"  {what:<44} {value}")
    print(f"{r['scenario']}: {r['description']}")
    dkim = f", DKIM {r['dkim']}" if r.get("dkim") else ""
    print(f"  ({r['date']}, commit {r['commit']}, {r['build']} build, {r['machine']}{dkim})")
    row("recipients", f"{r['contacts']:,} contacts, {blast['expected']:,} with consent")
    row("published into tocsin.segments", f"{r['published_per_second']:,.0f} events/s")
    span = max(blast["last_sent_ms"] - blast["first_job_ms"], 0) / 1000 if blast["last_sent_ms"] else 0
    row("end to end (first job to last hand-off)", f"{blast['sent_per_second']:,.0f} messages/s, {span:.1f} s")
    for stage in blast["stages"] + [blast["feedback"]]:
        row(f"  {stage['topic']}", f"{stage['records']:,} records, {stage['per_second']:,.0f}/s, {stage['mean_bytes']:,.0f} bytes each")
    ms = lambda v: "-" if v is None else f"{v:,.0f} ms"
    row("planning to hand-off", f"p50 {ms(blast['latency_p50_ms'])}, p90 {ms(blast['latency_p90_ms'])}, p99 {ms(blast['latency_p99_ms'])}, max {ms(blast['latency_max_ms'])}")
    row("largest lag per group", ", ".join(f"{g} {n:,}" for g, n in sorted(blast["max_lag"].items())) or "none seen")
    row("peak RSS", ", ".join(f"{n} {mb:.0f} MB" for n, mb in r["peak_rss_mb"].items()))
    row("sent / not sent / missing", f"{blast['sent']:,} / {blast['not_sent']:,} / {blast['missing']:,}")
    row("duplicates", f"provider {r['provider_duplicates']}, feedback {blast['sent_twice']}")
    if r.get("sms_rate"):
        achieved, limit = r["achieved_parts_per_second"], r["sms_rate"]
        headroom = r.get("headroom") or 0.98
        row("throttled rate", f"{achieved:.1f} parts/s against a limit of {limit:g} ({100 * achieved / limit:.1f} %; "
            f"{100 * achieved / (limit * headroom):.1f} % of the {100 * headroom:g} % the senders aim at)")
        row("refused for rate by the provider", f"{r['provider'].get('rejected', {}).get('rate_limited', 0):,} calls")
    if r.get("probes"):
        p = r["probes"]
        row("triggered lane during the blast", f"p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms, max {p['max_ms']:.0f} ms ({p['received']} of {p['probes']})")
    row("broker ceiling (same hops and sizes)", f"{ceiling['per_second']:,.0f} records/s ({ceiling['count']:,} in {ceiling['seconds']:.1f} s)")
    row("pipeline / ceiling", f"{100 * blast['sent_per_second'] / ceiling['per_second']:.1f} %")
    ok = blast["missing"] == 0 and r["provider_duplicates"] == 0 and blast["sent_twice"] == 0
    print("  verdict: " + ("no loss, no duplicate" if ok else "LOSS OR DUPLICATES"))
    return ok


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("shell", "report"):
        sys.exit(__doc__)
    if sys.argv[1] == "shell":
        shell(sys.argv[2])
    else:
        sys.exit(0 if report(sys.argv[2]) else 1)
