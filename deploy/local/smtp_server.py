"""The local stack's SMTP server: aiosmtpd, configured to receive what Tocsin's sender sends.

aiosmtpd does the SMTP; this file only wires it. `deploy/local/stack.sh up` starts it with
the stack's virtualenv and environment; nothing else is meant to start it.

What it offers
  127.0.0.1:$TOCSIN_SMTP_PORT (12525)    SMTP with STARTTLS, which must come first: before it
                                          only EHLO, HELO, NOOP, QUIT and STARTTLS are served
                                          (530 otherwise), and AUTH is not even advertised.
  127.0.0.1:$TOCSIN_SMTPS_PORT (12465)   implicit TLS (SMTPS); 0 turns it off.
  Both require AUTH PLAIN or LOGIN before MAIL, with $TOCSIN_SMTP_USER / $TOCSIN_SMTP_PASSWORD
  (default tocsin / local-smtp-password); a wrong password gets 535. Any recipient domain is
  accepted; SMTPUTF8 and 8BITMIME are offered; a message may be 32 MiB, a line 1,000 octets
  (RFC 5321: a longer line gets 500 after DATA).

Where things are ($STATE is .stack/ at the repository's root, or $TOCSIN_STACK_DIR)
  $STATE/smtp/ca.pem                     the CA a client trusts (`stack.sh status` prints it)
  $STATE/smtp/server.pem, server.key     the server's certificate (CN and SAN localhost,
                                          SAN IP 127.0.0.1), signed by that CA
  $STATE/mail/new/<ns>.<id>.tocsin       one file per message, the exact bytes received after
                                          DATA (CRLF line ends, dot-stuffing removed, nothing
                                          added): written to tmp/, then renamed into new/
  $STATE/mail/envelope/<same name>.json  its envelope: queue_id, mail_from, rcpt_tos, options,
                                          user, peer, tls, received_at; renamed into place
                                          before the message, so it exists once the message does
  $STATE/smtp.log                        one line per message (queue id, sizes, addresses)

Each message is answered `250 2.0.0 OK queued as <id>`: <id> is the 16 hex digits in its
file name, so a sender can record it as the provider's message id. Files are not fsynced:
this is a test sink, not a mail store, and nothing is ever deleted (CI starts empty).
`deploy/local/dkim_verify.py` checks DKIM signatures of the stored files offline;
`services/integration-tests/src/mail.rs` reads them in tests.

Measured (2 cores): 1,000 messages from lettre over 20 connections stored in about 3.5 s
(1.6 s of this server's CPU), over 50 connections in 1.8 s. One lettre connection manages
only ~21 messages/s (Python's smtplib ~500/s on one connection): lettre writes the message
and its final CRLF.CRLF in two writes without TCP_NODELAY, and waits for a delayed ACK.
lettre also always ends DATA with CRLF.CRLF, so what it sends arrives with one empty line
more than `Message::formatted()`.
"""

import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import ssl
import sys
import time
import warnings
from datetime import datetime, timezone

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

log = logging.getLogger("tocsin.smtp")

# Implicit TLS: aiosmtpd 1.4 does not notice that a connection is already encrypted, so with
# auth_require_tls it would refuse AUTH on the SMTPS port (aio-libs/aiosmtpd#274, #281). Every
# connection on that port is TLS from the first byte, so the port turns the check off, and
# aiosmtpd's warning about it is silenced.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


class _DropKnownNoise(logging.Filter):
    """aiosmtpd warnings that say nothing here, once per connection: the SMTPS port's
    AUTH without auth_require_tls (above), and its own use of Session.login_data."""

    NOISE = ("auth_require_tls == False", "Session.login_data is deprecated")

    def filter(self, record):
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


class MaildirHandler:
    """Stores each message as received, with its envelope beside it."""

    def __init__(self, root, channel):
        self.root = root
        self.channel = channel
        for sub in ("tmp", "new", "cur", "envelope"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    def _place(self, data, tmp_name, final):
        tmp = os.path.join(self.root, "tmp", tmp_name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, final)

    async def handle_DATA(self, server, session, envelope):
        queue_id = secrets.token_hex(8)
        name = f"{time.time_ns()}.{queue_id}.tocsin"
        raw = envelope.original_content
        meta = {
            "queue_id": queue_id,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "rcpt_options": envelope.rcpt_options,
            "smtputf8": envelope.smtp_utf8,
            "user": session.auth_data,
            "peer": list(session.peer) if session.peer else None,
            "tls": self.channel,
            "received_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        }
        self._place(
            json.dumps(meta).encode(),
            name + ".json",
            os.path.join(self.root, "envelope", name + ".json"),
        )
        self._place(raw, name, os.path.join(self.root, "new", name))
        log.info(
            "queued %s from=<%s> to=%s bytes=%d via=%s file=new/%s",
            queue_id,
            envelope.mail_from,
            ",".join(f"<{r}>" for r in envelope.rcpt_tos),
            len(raw),
            self.channel,
            name,
        )
        return f"250 2.0.0 OK queued as {queue_id}"


class Credentials:
    """aiosmtpd's authenticator: one user, compared in constant time."""

    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = hmac.compare_digest(auth_data.login, self.user) & hmac.compare_digest(
            auth_data.password, self.password
        )
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data.login.decode())


def env(name, default):
    return os.environ.get(name) or default


async def serve():
    state = env("TOCSIN_STACK_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".stack"))
    maildir = env("TOCSIN_SMTP_MAILDIR", os.path.join(state, "mail"))
    cert = env("TOCSIN_SMTP_CERT", os.path.join(state, "smtp", "server.pem"))
    key = env("TOCSIN_SMTP_KEY", os.path.join(state, "smtp", "server.key"))
    port = int(env("TOCSIN_SMTP_PORT", "12525"))
    smtps_port = int(env("TOCSIN_SMTPS_PORT", "12465"))
    credentials = Credentials(
        env("TOCSIN_SMTP_USER", "tocsin"), env("TOCSIN_SMTP_PASSWORD", "local-smtp-password")
    )

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    common = dict(
        # A fixed name: aiosmtpd would otherwise resolve the host's FQDN on every connection.
        hostname="localhost",
        ident="Tocsin local SMTP (aiosmtpd)",
        decode_data=False,
        enable_SMTPUTF8=True,
        auth_required=True,
        authenticator=credentials,
    )
    starttls_handler = MaildirHandler(maildir, "starttls")
    smtps_handler = MaildirHandler(maildir, "smtps")

    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(
            lambda: SMTP(
                starttls_handler,
                tls_context=tls,
                require_starttls=True,
                auth_require_tls=True,
                **common,
            ),
            host="127.0.0.1",
            port=port,
            reuse_address=True,
        )
    ]
    log.info("SMTP (STARTTLS) on 127.0.0.1:%d, Maildir %s", port, os.path.abspath(maildir))
    if smtps_port:
        servers.append(
            await loop.create_server(
                lambda: SMTP(smtps_handler, auth_require_tls=False, **common),
                host="127.0.0.1",
                port=smtps_port,
                ssl=tls,
                reuse_address=True,
            )
        )
        log.info("SMTPS (implicit TLS) on 127.0.0.1:%d", smtps_port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    log.info("stopped")


def main():
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiosmtpd logs every connection, and its AUTH mechanisms, at INFO: keep one line per
    # message by leaving only its warnings.
    mail_log = logging.getLogger("mail.log")
    mail_log.setLevel(logging.WARNING)
    mail_log.addFilter(_DropKnownNoise())
    asyncio.run(serve())


if __name__ == "__main__":
    main()
