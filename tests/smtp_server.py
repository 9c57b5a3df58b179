"""A real SMTP server for the email notifier's tests (aiosmtpd, Debian's
python3-aiosmtpd): listens on a free loopback port, prints the port on its
first line, accepts AUTH PLAIN/LOGIN (without TLS) for the given user and
password, writes every message it accepts to DIR/<n>.eml and every RCPT it
sees to DIR/rcpt.log, and refuses the recipients given with --refuse (550).
Runs until it is killed or its stdin closes.

    python3 tests/smtp_server.py DIR USER PASSWORD [--refuse ADDRESS]...
"""

import argparse
import os
import socket
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# aiosmtpd 1.4 warns about its own use of a deprecated attribute on every AUTH.
warnings.filterwarnings("ignore", message="Session.login_data")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Handler:
    def __init__(self, directory, refuse):
        self.directory = directory
        self.refuse = set(refuse)
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with open(os.path.join(self.directory, "rcpt.log"), "a") as f:
            f.write(address + "\n")
        if address in self.refuse:
            return "550 5.1.1 <%s>: recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.directory, "%d.eml" % self.count)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--refuse", action="append", default=[])
    a = p.parse_args()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == a.user.encode()
            and auth_data.password == a.password.encode()
        )
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(
        Handler(a.directory, a.refuse),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    print(port, flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
