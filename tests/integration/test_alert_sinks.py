"""The alert sinks against real local servers: SMTP (aiosmtpd) in clear, with STARTTLS and
with TLS from the start, AUTH only over TLS, the credentials never in an error or a log line;
the webhook's signature. The certificate is a self-signed one ``openssl`` makes for the test
(trusted through ``ca_file``). No database is involved: ``any_backend``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cronqueue.alerts.message import Message
from cronqueue.alerts.sinks import SinkError, send_email, send_webhook, signature
from cronqueue.config.alerts import EmailSink, WebhookSink
from cronqueue.store.alerts import AlertRow
from tests.servers import HttpRecorder, SmtpRecorder, self_signed

pytestmark = pytest.mark.any_backend
USER, PASSWORD = "alerts@example.com", "s3cret-Pa55word"
WHEN = datetime(2031, 5, 6, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = self_signed(tmp_path_factory.mktemp("tls"))
    if made is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is needed to test STARTTLS (install it)")
        pytest.skip("no openssl command: STARTTLS and TLS are untested here")
    return made


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CQ_SMTP_USER", USER)
    monkeypatch.setenv("CQ_SMTP_PASSWORD", PASSWORD)


@pytest.fixture
def servers() -> Iterator[list[SmtpRecorder]]:
    started: list[SmtpRecorder] = []
    yield started
    for s in started:
        s.close()


def message(output: str = "line 1\nline 2\n") -> Message:
    row = AlertRow(7, "entry_failed", "nightly", "firing", WHEN, 1,
                   "entry nightly: its task 12 of 2031-05-06T03:00:00Z failed: exit 3",
                   None, ("email",), None, None, 0, None)
    return Message(row, {"entry": "nightly", "task": {"id": 12, "output_tail": output}},
                   "host-a#1", WHEN)


def sink(port: int, tls: str, *, ca: Path | None = None, login: bool = True) -> EmailSink:
    return EmailSink(host="127.0.0.1", sender="cronqueue@example.com", to=("ops@example.com",),
                     port=port, tls=tls, username_env="CQ_SMTP_USER" if login else None,
                     password_env="CQ_SMTP_PASSWORD" if login else None, ca_file=ca,
                     timeout=10)


@pytest.mark.usefixtures("credentials")
def test_starttls_then_auth_then_the_message(cert: tuple[Path, Path],
                                             servers: list[SmtpRecorder]) -> None:
    server = SmtpRecorder(cert=cert, starttls=True, login=(USER, PASSWORD))
    servers.append(server)
    send_email(sink(server.port, "starttls", ca=cert[0]), message("a\x1b[31mred\nend\n"))
    mail = server.wait_for(1)[0]
    assert server.logins == [(USER, True)]
    assert mail["Subject"] == ("[cronqueue] FIRING entry_failed nightly: entry nightly: its "
                               "task 12 of 2031-05-06T03:00:00Z failed: exit 3")
    assert mail["To"] == "ops@example.com" and mail["X-Cronqueue-Alert"] == (
        "entry_failed; state=firing")
    text = mail.get_content().replace("\r\n", "\n")
    assert "      | a\\x1b[31mred\n      | end\n" in text  # no escape reaches the mail client
    assert "\x1b" not in text


@pytest.mark.usefixtures("credentials")
def test_auto_uses_starttls_when_offered(cert: tuple[Path, Path],
                                         servers: list[SmtpRecorder]) -> None:
    server = SmtpRecorder(cert=cert, starttls=True, login=(USER, PASSWORD))
    servers.append(server)
    send_email(sink(server.port, "auto", ca=cert[0]), message())
    assert len(server.wait_for(1)) == 1 and server.logins == [(USER, True)]


@pytest.mark.usefixtures("credentials")
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # it is TLS
def test_tls_from_the_start(cert: tuple[Path, Path], servers: list[SmtpRecorder]) -> None:
    server = SmtpRecorder(cert=cert, implicit_tls=True, login=(USER, PASSWORD))
    servers.append(server)
    send_email(sink(server.port, "ssl", ca=cert[0]), message())
    assert len(server.wait_for(1)) == 1 and server.logins == [(USER, True)]


@pytest.mark.usefixtures("credentials")
def test_no_starttls_offered_means_no_credentials_sent_in_clear(
        servers: list[SmtpRecorder]) -> None:
    server = SmtpRecorder()  # plain, no STARTTLS
    servers.append(server)
    with pytest.raises(SinkError, match="offers no STARTTLS: the credentials are not sent"):
        send_email(sink(server.port, "auto"), message())
    with pytest.raises(SinkError, match=r"offers no STARTTLS \(tls = \"starttls\" requires"):
        send_email(sink(server.port, "starttls", login=False), message())
    assert server.messages == [] and server.logins == []
    send_email(sink(server.port, "auto", login=False), message())  # no credentials: fine
    assert len(server.wait_for(1)) == 1


def test_an_untrusted_certificate_is_refused(cert: tuple[Path, Path],
                                             servers: list[SmtpRecorder]) -> None:
    server = SmtpRecorder(cert=cert, starttls=True)
    servers.append(server)
    with pytest.raises(SinkError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        send_email(sink(server.port, "starttls", login=False), message())
    assert server.messages == []


def test_a_refused_login_says_so_without_the_password(
        cert: tuple[Path, Path], servers: list[SmtpRecorder], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CQ_SMTP_USER", USER)
    monkeypatch.setenv("CQ_SMTP_PASSWORD", "wrong-" + PASSWORD)
    server = SmtpRecorder(cert=cert, starttls=True, login=(USER, PASSWORD))
    servers.append(server)
    with pytest.raises(SinkError) as failure:
        send_email(sink(server.port, "starttls", ca=cert[0]), message())
    # smtplib tries each mechanism offered (PLAIN, LOGIN): each refused
    assert server.logins == [(USER, False)] * 2 and server.messages == []
    said = str(failure.value)
    assert said.startswith(f"email 127.0.0.1:{server.port}: SMTPAuthenticationError: ")
    assert "\n" not in said and failure.value.__cause__ is None
    assert "wrong-" not in said + caplog.text and PASSWORD not in said + caplog.text


def test_unset_credentials_refuse_to_send(monkeypatch: pytest.MonkeyPatch,
                                          servers: list[SmtpRecorder]) -> None:
    monkeypatch.delenv("CQ_SMTP_PASSWORD", raising=False)
    monkeypatch.setenv("CQ_SMTP_USER", USER)
    with pytest.raises(SinkError, match="CQ_SMTP_USER or CQ_SMTP_PASSWORD is unset or empty"):
        send_email(sink(1, "auto"), message())


def test_the_webhook_signs_the_exact_body(monkeypatch: pytest.MonkeyPatch) -> None:
    server = HttpRecorder(secret="k3y")
    try:
        monkeypatch.setenv("CQ_HOOK_KEY", "k3y")
        send_webhook(WebhookSink(f"{server.url}/x?token=abc", "CQ_HOOK_KEY", 5), message())
        request = server.wait_for(1)[0]
        assert request.signature_ok
        assert request.headers["x-cronqueue-signature"] == signature("k3y", request.body)
        body = json.loads(request.body)
        assert body["text"].startswith("[cronqueue] FIRING entry_failed nightly: ")
        assert (body["id"], body["change"], body["host"]) == (7, 1, "host-a#1")
    finally:
        server.close()


def test_a_webhook_that_does_not_answer_fails_in_one_line_without_its_path() -> None:
    port = HttpRecorder()
    url = port.url
    port.close()  # nothing listens there now
    with pytest.raises(SinkError) as failure:
        send_webhook(WebhookSink(f"{url}/secret-path", None, 2), message())
    said = str(failure.value)
    assert said.startswith(f"webhook {url}: ") and said.endswith("(after 2 attempt(s))")
    assert "secret-path" not in said

