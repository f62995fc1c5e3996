"""Optional notifications (``batchsite.operators.notify``): e-mails sent through the smtp
provider's SmtpNotifier to a real SMTP server (a minimal one on a loopback port, run by the
test), driven by the ``batchsite_notify`` connection; off without it."""

from __future__ import annotations

import email
import json
import socketserver
import threading
from types import SimpleNamespace

import pytest

from batchsite.campaign.rg import parse_params
from batchsite.operators.notify import notify_converged, notify_failure, notify_settings
from batchsite.report.rg import build_rg_report

from .test_report import NOW, RUN, steps_of


class SmtpSink(socketserver.ThreadingTCPServer):
    """Speaks just enough SMTP (RFC 5321) to accept messages; keeps (recipients, message)."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _SmtpSession)
        self.messages: list[tuple[list[str], email.message.Message]] = []


class _SmtpSession(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        rcpt: list[str] = []
        while line := self.rfile.readline().decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "RCPT":
                rcpt.append(line.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 end with .")
                data = []
                while (chunk := self.rfile.readline().decode()) not in (".\r\n", ""):
                    data.append(chunk[1:] if chunk.startswith("..") else chunk)
                self.server.messages.append((rcpt, email.message_from_string("".join(data))))
                rcpt = []
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # MAIL, RSET, NOOP
                self.reply("250 ok")


@pytest.fixture
def sink():
    server = SmtpSink()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def use_connection(monkeypatch, sink: SmtpSink, **extra) -> None:
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": sink.server_address[1],
            "extra": {"from_email": "batchsite@example.org", "disable_ssl": True, "disable_tls": True, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_BATCHSITE_NOTIFY", json.dumps(conn))


def converged_report():
    params = parse_params({"version": "v1", "steps": 2, "tolerance": 0.9})
    report, _ = build_rg_report(params, RUN, "/site/o", {"/site/o": steps_of({1: 2.0, 2: 2.05})}, now=NOW)
    assert report.converged
    return report


def body_of(msg: email.message.Message) -> str:
    return "".join(part.get_payload(decode=True).decode() for part in msg.walk() if not part.is_multipart())


def test_convergence_is_mailed_to_the_connections_addresses(sink, monkeypatch):
    use_connection(monkeypatch, sink, notify_to="alice@example.org, bob@example.org")
    report = converged_report()
    assert notify_converged(report, {}) is True
    ((rcpt, msg),) = sink.messages
    assert rcpt == ["alice@example.org", "bob@example.org"]
    assert msg["Subject"] == f"[batchsite] RG FP v1: {report.stop}" and msg["From"] == "batchsite@example.org"
    body = body_of(msg)
    assert "RG step 2: z mean" in body and "/site/o/report/report.json" in body and "batchsite report manual__t1" in body


def test_failure_is_mailed_with_the_run_and_the_reason(sink, monkeypatch):
    use_connection(monkeypatch, sink, notify_to=["ops@example.org"], notify_on=["failure"])
    notify_failure({"dag": SimpleNamespace(dag_id="rg_campaign"), "run_id": "manual__f", "reason": "task_failure"})
    ((rcpt, msg),) = sink.messages
    assert rcpt == ["ops@example.org"] and msg["Subject"] == "[batchsite] rg_campaign run manual__f failed"
    assert "failed: task_failure" in body_of(msg)
    # ... and this connection does not ask for convergence
    assert notify_converged(converged_report(), {}) is False and len(sink.messages) == 1


def test_without_the_connection_nothing_is_sent(sink, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_BATCHSITE_NOTIFY", raising=False)
    assert notify_settings() is None
    assert notify_converged(converged_report(), {}) is False and sink.messages == []


def test_a_bad_connection_names_the_extra_and_never_fails_the_run(sink, monkeypatch, caplog):
    use_connection(monkeypatch, sink, notify_on=["sometimes"])
    with pytest.raises(ValueError, match=r"connection 'batchsite_notify': to: .*at least 1 item.*notify_to"):
        notify_settings()
    assert notify_converged(converged_report(), {}) is False and sink.messages == []
    assert "batchsite notification (converged) not sent: ValueError" in caplog.text
