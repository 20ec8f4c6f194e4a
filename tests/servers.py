"""Real local servers the alert tests send to: an HTTP server that records every request (and
checks a webhook's HMAC signature), an SMTP server (aiosmtpd) that records every message, with
STARTTLS, implicit TLS and AUTH when asked, and a self-signed certificate made by ``openssl``.

Each runs in a thread of the test process on 127.0.0.1 and an ephemeral port; waits are on a
condition the servers signal, never a fixed sleep."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    signature_ok: bool | None  # None: the server was given no secret to check with


class _Recorder:
    def __init__(self) -> None:
        self.cond = threading.Condition()

    def _wait(self, items: Callable[[], list[Any]], count: int, timeout: float,
              what: str) -> list[Any]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(items()) >= count, timeout):
                raise AssertionError(f"not within {timeout:g} s: {count} {what} "
                                     f"(got {len(items())})")
            return list(items())


class HttpRecorder(_Recorder):
    """Records each request; answers ``status`` (``fail_next``: that many requests get 500)."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self.secret = secret
        self.requests: list[Request] = []
        self.fail_next = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = None
                if recorder.secret is not None:
                    want = "sha256=" + hmac.new(recorder.secret.encode(), body,
                                                hashlib.sha256).hexdigest()
                    ok = hmac.compare_digest(headers.get("x-cronqueue-signature", ""), want)
                with recorder.cond:
                    failing = recorder.fail_next > 0
                    recorder.fail_next -= failing
                    recorder.requests.append(Request(self.command, self.path, headers, body,
                                                     ok))
                    recorder.cond.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Request]:
        return self._wait(lambda: self.requests, count, timeout, "HTTP request(s)")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpRecorder(_Recorder):
    """aiosmtpd in a thread. ``starttls``: offer STARTTLS with ``cert`` (and refuse mail
    before it); ``implicit_tls``: TLS from the first byte; ``login``: (user, password) that
    AUTH must give (AUTH only over TLS)."""

    def __init__(self, *, cert: tuple[Path, Path] | None = None, starttls: bool = False,
                 implicit_tls: bool = False, login: tuple[str, str] | None = None) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        super().__init__()
        self.messages: list[EmailMessage] = []
        self.logins: list[tuple[str, bool]] = []  # (user, accepted)
        recorder = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                parsed = message_from_bytes(envelope.content, policy=policy.default)
                assert isinstance(parsed, EmailMessage)
                with recorder.cond:
                    recorder.messages.append(parsed)
                    recorder.cond.notify_all()
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and login is not None and (
                data.login.decode(), data.password.decode()) == login
            with recorder.cond:
                recorder.logins.append((data.login.decode() if isinstance(
                    data, LoginPassword) else "?", ok))
                recorder.cond.notify_all()
            return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535

        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        kw: dict[str, Any] = {}
        if starttls:
            kw.update(tls_context=context, require_starttls=True)
        if implicit_tls:
            kw.update(ssl_context=context)
        if login is not None:
            # (aiosmtpd counts only STARTTLS as TLS; an implicit-TLS connection is TLS too)
            kw.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=not implicit_tls)
        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kw)
        self.controller.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        return self._wait(lambda: self.messages, count, timeout, "message(s)")

    def close(self) -> None:
        self.controller.stop()


def self_signed(where: Path) -> tuple[Path, Path] | None:
    """(cert, key) for 127.0.0.1 and localhost, made by the openssl command; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key
