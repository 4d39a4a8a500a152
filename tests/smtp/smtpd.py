#!/usr/bin/python3
"""A real SMTP server for tests/integrations.rs: Debian's aiosmtpd (python3-aiosmtpd).

    /usr/bin/python3 smtpd.py --port 2525 --maildir DIR [--cert C --key K] [--user U --password P]

Messages land in DIR (a Maildir: DIR/new/*). With --cert/--key the server offers STARTTLS and
requires it before AUTH and MAIL; with --user/--password it requires AUTH (PLAIN/LOGIN).
Each accepted message is also logged to stdout as `accepted from=... to=... auth=...`.
Runs until killed.
"""
import argparse
import mailbox
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


# The user of the last successful AUTH (one client at a time in the tests).
LOGGED_IN = {"user": "-"}


class Handler:
    def __init__(self, maildir):
        self.box = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server, session, envelope):
        msg = envelope.original_content or envelope.content
        self.box.add(msg)
        user = LOGGED_IN["user"] if session.authenticated else "-"
        tls = "yes" if session.ssl else "no"
        print(f"accepted from={envelope.mail_from} to={','.join(envelope.rcpt_tos)} auth={user} tls={tls}", flush=True)
        return "250 OK queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == a.user and auth_data.password.decode() == a.password
        if ok:
            LOGGED_IN["user"] = a.user
        return AuthResult(success=ok, handled=False)

    kwargs = {}
    if a.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)
        kwargs.update(tls_context=ctx, require_starttls=True)
    if a.user:
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=bool(a.cert))
    c = Controller(Handler(a.maildir), hostname="127.0.0.1", port=a.port, **kwargs)
    c.start()
    print(f"listening port={a.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()


if __name__ == "__main__":
    sys.exit(main())
