"""Where alerts go: a JSON webhook (POST, signed) and e-mail over SMTP.

* **Webhook**: ``POST`` of the JSON body, ``Content-Type: application/json``, and with
  ``secret_env`` set ``X-Cronqueue-Signature: sha256=<hex HMAC-SHA256 of the body>`` keyed by
  that variable's value (unset or empty: not sent, rather than sent unsigned). A timeout per
  attempt and one retry (not after a 4xx other than 408 and 429: the request itself is
  wrong). Redirects are not followed (they would carry the signed body elsewhere).
* **E-mail**: ``tls = "auto"`` uses STARTTLS when the server offers it, ``"starttls"``
  requires it, ``"ssl"`` speaks TLS from the start (port 465), ``"none"`` never; the server's
  certificate is verified (``ca_file`` for a private CA). Credentials come from the variables
  the config names and are never sent in clear unless ``tls = "none"`` says so.

A failure raises ``SinkError`` with one line that names the sink by its host only (a URL's
path may be a token) and never holds a secret; the caller logs it and tries again next tick.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from cronqueue.alerts.message import Message
from cronqueue.config.alerts import EmailSink, WebhookSink, url_host
from cronqueue.errors import CronqueueError, one_line

RETRY_PAUSE = 0.5  # seconds between the webhook's two attempts
SIGNATURE_HEADER = "X-Cronqueue-Signature"


class SinkError(CronqueueError):
    """A sink did not take the alert (one line, no secret in it)."""


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None  # the 3xx is then an HTTPError: a failure


_opener = urllib.request.build_opener(_NoRedirect)


def send_webhook(sink: WebhookSink, message: Message) -> None:
    where = url_host(sink.url)
    body = message.json_body()
    headers = {"Content-Type": "application/json; charset=utf-8",
               "User-Agent": "cronqueue-alerts"}
    if sink.secret_env is not None:
        secret = os.environ.get(sink.secret_env)
        if not secret:
            raise SinkError(f"webhook {where}: {sink.secret_env} is unset or empty: not sent "
                            "unsigned")
        headers[SIGNATURE_HEADER] = signature(secret, body)
    reason = ""
    for attempt in (1, 2):
        if attempt == 2:
            time.sleep(RETRY_PAUSE)
        request = urllib.request.Request(  # noqa: S310 (http or https: config/alerts.py)
            sink.url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=sink.timeout) as response:
                response.read(64 * 1024)
                return
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break
        except (urllib.error.URLError, OSError) as exc:
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            reason = one_line(cause) if isinstance(cause, BaseException) else str(cause)
    raise SinkError(f"webhook {where}: {reason} (after {attempt} attempt(s))")


def send_email(sink: EmailSink, message: Message) -> None:
    user = os.environ.get(sink.username_env) if sink.username_env else None
    password = os.environ.get(sink.password_env) if sink.password_env else None
    where = f"email {sink.host}:{sink.port}"
    if sink.username_env is not None and (not user or not password):
        raise SinkError(f"{where}: {sink.username_env} or {sink.password_env} is unset or "
                        "empty")
    mail = EmailMessage()
    mail["Subject"] = message.headline
    mail["From"] = sink.sender
    mail["To"] = ", ".join(sink.to)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(domain=sink.sender.rpartition("@")[2])
    mail["X-Cronqueue-Alert"] = f"{message.alert.kind}; state={message.alert.state}"
    mail.set_content(message.email_text())
    try:
        context = ssl.create_default_context(
            cafile=str(sink.ca_file) if sink.ca_file is not None else None)
        smtp: smtplib.SMTP
        if sink.tls == "ssl":
            smtp = smtplib.SMTP_SSL(sink.host, sink.port, timeout=sink.timeout,
                                    context=context)
        else:
            smtp = smtplib.SMTP(sink.host, sink.port, timeout=sink.timeout)
        with smtp:
            smtp.ehlo()
            if sink.tls in ("auto", "starttls"):
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                elif sink.tls == "starttls":
                    raise SinkError(f"{where}: the server offers no STARTTLS (tls = "
                                    "\"starttls\" requires it)")
                elif user:
                    raise SinkError(f"{where}: the server offers no STARTTLS: the credentials "
                                    "are not sent in clear (tls = \"none\" allows it)")
            if user and password:
                smtp.login(user, password)
            smtp.send_message(mail)
    except SinkError:
        raise
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        raise SinkError(f"{where}: {_scrub(one_line(exc), user, password)}") from None


def _scrub(text: str, *secrets: str | None) -> str:
    """``text`` without the credentials, as given or base64-encoded (as SMTP AUTH sends
    them): a server that echoes what it was sent must not put them in a log line."""
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, base64.b64encode(secret.encode()).decode()}
        for other in secrets:
            if other and other is not secret:  # AUTH PLAIN: \0user\0password
                forms.add(base64.b64encode(f"\0{other}\0{secret}".encode()).decode())
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return text
