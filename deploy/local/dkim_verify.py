"""Verifies the DKIM signature of stored messages with dkimpy, without any DNS.

    .stack/venv/bin/python deploy/local/dkim_verify.py --txt "v=DKIM1; k=rsa; p=MIIB..." FILE...
    .stack/venv/bin/python deploy/local/dkim_verify.py --txt-file selector.txt FILE...

The TXT record given stands for the one DNS would return for `<s>._domainkey.<d>` of the
signature being checked: whatever name dkimpy asks for gets that record, and no lookup
leaves the machine. RSA (k=rsa, at least 1,024 bits) and Ed25519 (k=ed25519, RFC 8463)
keys are supported. The first (topmost) DKIM-Signature of each message is checked.

Prints one JSON line per file:
    {"path": ..., "ok": true|false, "error": null|"...", "domain": ..., "selector": ...,
     "algorithm": ..., "key_name": "<s>._domainkey.<d>." or null}
and exits 0 when every file verifies, 1 when one does not, 2 on a usage error.
"""

import argparse
import json
import sys

import dkim


def verify(path, txt):
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name.decode(errors="replace"))
        return txt

    result = {"path": path, "ok": False, "error": None}
    checker = None
    try:
        with open(path, "rb") as f:
            checker = dkim.DKIM(f.read())
        if not checker.present():
            result["error"] = "no DKIM-Signature header"
        elif checker.verify(dnsfunc=dnsfunc):
            result["ok"] = True
        else:
            result["error"] = "signature does not verify"
    except Exception as e:  # noqa: BLE001 - any failure is this file's verdict, not a crash
        result["error"] = f"{type(e).__name__}: {e}"
    fields = getattr(checker, "signature_fields", None) or {}
    for key, tag in (("domain", b"d"), ("selector", b"s"), ("algorithm", b"a")):
        value = fields.get(tag)
        result[key] = value.decode(errors="replace") if value else None
    result["key_name"] = asked[0] if asked else None
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--txt", help='the key record, e.g. "v=DKIM1; k=rsa; p=MIIB..."')
    source.add_argument("--txt-file", help="a file holding the key record")
    parser.add_argument("paths", nargs="+", help="message files")
    args = parser.parse_args()

    if args.txt_file:
        with open(args.txt_file, "rb") as f:
            txt = f.read().strip()
    else:
        txt = args.txt.encode()

    all_ok = True
    for path in args.paths:
        result = verify(path, txt)
        all_ok &= result["ok"]
        print(json.dumps(result), flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
