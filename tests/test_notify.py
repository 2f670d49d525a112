"""Incident announcements (tasks/notify.py): the templates as Slack JSON, and posting them to
a real webhook receiver on loopback (sandbox/webhook.py)."""

from __future__ import annotations

import json
import logging
import time
import traceback
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import httpserver, webhook
from sandbox.webhook import WebhookReceiver, receiving_webhook
from tasks import notify
from tasks.config import NotifyConfig, SecretRef
from tasks.errors import PermanentError, TransientError
from tasks.notify import Announcement, render
from tasks.redact import MASK, remember

AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
SECRET = "hunter2-Secr&t<x>"  # holds what mrkdwn escapes: it must be scrubbed before escaping


@pytest.fixture
def hook() -> Any:
    with receiving_webhook() as receiver:
        yield receiver


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without the production waits, so a test of three attempts takes milliseconds."""
    monkeypatch.setattr(notify, "BACKOFF_S", 0.01)
    monkeypatch.setattr(notify, "CONNECT_RETRIES", 0)


def _config(monkeypatch: pytest.MonkeyPatch, url: str, **fields: Any) -> NotifyConfig:
    monkeypatch.setenv("TEST_NOTIFY_WEBHOOK", url)
    return NotifyConfig(webhook=SecretRef(env="TEST_NOTIFY_WEBHOOK"), **{"timeout": timedelta(seconds=2), **fields})


def _everything(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# --- render: the templates ---------------------------------------------------------------

RENDER_CASES = [
    pytest.param(
        Announcement(what="orders database failover: primary unreachable", severity="2",
                     impact="every order write fails", next_update=AT,
                     details=["primary: db-a", "replica: db-b"], link="http://prefect.local/runs/1"),
        "INCIDENT: orders database failover: primary unreachable\nStatus: Investigating\nSeverity: SEV-2\n"
        "Impact: every order write fails\nNext Update: 2024-05-01 12:30 UTC\nprimary: db-a\nreplica: db-b\n"
        "Link: http://prefect.local/runs/1",
        id="start: the runbook's initial template line by line, details and the run's link after it",
    ),
    pytest.param(
        Announcement(what="orders database failover", status="Identified: promoting replica db-b",
                     severity="SEV-1", next_update=AT.astimezone(timezone(timedelta(hours=2)))),
        "INCIDENT: orders database failover\nStatus: Identified: promoting replica db-b\nSeverity: SEV-1\n"
        "Next Update: 2024-05-01 12:30 UTC",
        id="decision: an impact not assessed is left out, not made up; a local time is shown in UTC",
    ),
    pytest.param(
        Announcement(what="orders database failover", resolved=True, duration=timedelta(hours=1, minutes=5, seconds=9),
                     root_cause="the primary's disk filled up", fix_applied="promoted db-b, pointed db.internal at it"),
        "✅ RESOLVED: orders database failover\nDuration: 1 hour 5 minutes\n"
        "Root Cause: the primary's disk filled up\nFix Applied: promoted db-b, pointed db.internal at it\n"
        "Postmortem: to follow",
        id="resolved: the resolution template; no next update, the postmortem still to come",
    ),
    pytest.param(
        Announcement(what="lag > 5 s & <!channel> pinged", severity="3"),
        "INCIDENT: lag &gt; 5 s &amp; &lt;!channel&gt; pinged\nStatus: Investigating\nSeverity: SEV-3",
        id="escaping: &, < and > are escaped, so no text can ping @channel or forge a link",
    ),
    pytest.param(
        Announcement(what=f"failover with {SECRET} in a message", details=[f"dsn: postgresql://app:{SECRET}@db-a/app"]),
        f"INCIDENT: failover with {MASK} in a message\nStatus: Investigating\ndsn: postgresql://app:{MASK}@db-a/app",
        id="secret: a remembered secret is masked, even one holding characters that are escaped",
    ),
]


@pytest.mark.parametrize(("announcement", "text"), RENDER_CASES)
def test_render_writes_the_runbook_template_as_the_fallback_text(announcement: Announcement, text: str) -> None:
    remember(SECRET)
    payload = render(announcement)
    assert payload["text"] == text
    dumped = json.dumps(payload, ensure_ascii=False)
    assert SECRET not in dumped and notify.escape(SECRET) not in dumped
    assert {b["type"] for b in payload["blocks"]} <= {"section", "context"}
    assert webhook.invalid_blocks(payload["blocks"]) is None


def test_render_blocks_bold_the_labels_show_next_update_in_the_readers_zone_and_link_the_run() -> None:
    blocks = render(RENDER_CASES[0].values[0])["blocks"]  # type: ignore[index]
    assert blocks[0]["text"]["text"] == (
        "*INCIDENT: orders database failover: primary unreachable*\n*Status:* Investigating\n*Severity:* SEV-2\n"
        "*Impact:* every order write fails\n"
        f"*Next Update:* <!date^{int(AT.timestamp())}^{{date_short_pretty}} {{time}}|2024-05-01 12:30 UTC>"
    )
    assert blocks[1]["text"]["text"] == "*primary:* db-a\n*replica:* db-b"
    assert blocks[2] == {"type": "context", "elements": [{"type": "mrkdwn", "text": "<http://prefect.local/runs/1>"}]}


def test_render_links_the_postmortem_once_resolved() -> None:
    payload = render(Announcement(what="failover", resolved=True, link="https://wiki.local/pm?id=1&v=2"))
    assert payload["text"].endswith("Postmortem: https://wiki.local/pm?id=1&amp;v=2")
    assert payload["blocks"][0]["text"]["text"].endswith("*Postmortem:* <https://wiki.local/pm?id=1&amp;v=2>")
    assert len(payload["blocks"]) == 1


def test_render_cuts_a_section_to_slacks_limit_without_splitting_an_entity() -> None:
    payload = render(Announcement(what="failover", details=["&" * 5000]))
    section = payload["blocks"][1]["text"]["text"]
    assert len(section) <= notify.SECTION_MAX and section.endswith("&amp;…")
    assert webhook.invalid_blocks(payload["blocks"]) is None


@pytest.mark.parametrize(("given", "label"), [
    ("2", "SEV-2"), ("sev1", "SEV-1"), ("SEV-3", "SEV-3"), (" Sev-2 ", "SEV-2"),
    ("critical", "critical"),  # an environment's own scale is shown as it is, not guessed at
])
def test_severity_label(given: str, label: str) -> None:
    assert notify.severity_label(given) == label


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(hours=2), "2 hours"),  # no "0 minutes"
    (timedelta(hours=1, minutes=1), "1 hour 1 minute"),  # singular units
    (timedelta(minutes=12, seconds=59), "12 minutes"),  # seconds dropped once there are minutes
    (timedelta(seconds=40), "40 seconds"),  # a fast failover is not "0 minutes"
    (timedelta(hours=26, minutes=3), "26 hours 3 minutes"),  # the template counts hours, not days
])
def test_format_duration(duration: timedelta, text: str) -> None:
    assert notify.format_duration(duration) == text


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("2", 2.0), ("0.5", 0.5), ("-3", 0.0),
    ("Wed, 01 May 2024 12:30:10 GMT", 10.0),  # an HTTP date, counted from now
    ("soon", None),  # unreadable: the ordinary backoff applies
])
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert notify.retry_after(header, now=AT.timestamp()) == seconds


def test_a_naive_next_update_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        Announcement(what="failover", next_update=datetime(2024, 5, 1, 12, 30))  # noqa: DTZ001


def test_complete_fills_severity_impact_and_the_next_update_from_config() -> None:
    config = NotifyConfig(webhook=SecretRef(env="UNUSED"), severity="1", impact="all users", update_every=timedelta(minutes=15))
    done = notify.complete(Announcement(what="failover"), config, now=AT)
    assert (done.severity, done.impact, done.next_update) == ("1", "all users", AT + timedelta(minutes=15))
    resolved = notify.complete(Announcement(what="failover", resolved=True), config, now=AT)
    assert resolved.next_update is None


# --- the receiver ---------------------------------------------------------------------------


def test_receiver_keeps_what_it_accepts_and_serves_it_at_received(hook: WebhookReceiver) -> None:
    assert httpx.post(hook.url, json={"text": "one"}).text == "ok"
    assert httpx.post(f"{hook.base_url}/another/path", json={"text": "two"}).status_code == 200
    assert httpx.get(f"{hook.base_url}/received").json() == [{"text": "one"}, {"text": "two"}] == hook.received()


@pytest.mark.parametrize(("body", "said"), [
    ("not json", "invalid_payload"),
    (json.dumps({"channel": "#ops"}), "no_text"),
    (json.dumps({"text": "x", "blocks": [{"type": "header"}]}), "invalid_blocks"),
    (json.dumps({"text": "x", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}),
     "invalid_blocks"),
])
def test_receiver_refuses_what_slack_refuses(hook: WebhookReceiver, body: str, said: str) -> None:
    resp = httpx.post(hook.url, content=body)
    assert resp.status_code == 400 and resp.text.startswith(said)
    assert hook.received() == []


def test_receiver_fails_the_next_n_posts_as_told_over_http(hook: WebhookReceiver) -> None:
    assert httpx.post(f"{hook.base_url}/fail", params={"count": 2, "status": 429, "retry_after": 3}).status_code == 200
    answers = [httpx.post(hook.url, json={"text": str(i)}) for i in range(3)]
    assert [r.status_code for r in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"
    assert hook.received() == [{"text": "2"}]
    assert httpx.get(f"{hook.base_url}/fail").json() == {"left": 0, "status": 429, "retry_after": 3.0, "failed": 2}


def test_receiver_runs_detached_for_the_demo(tmp_path: Path) -> None:
    server = webhook.start_detached(tmp_path / "webhook")
    try:
        assert (tmp_path / "webhook" / webhook.INFO_FILE).exists()
        notify.post(server.url, {"text": "from the demo"}, timeout=5)
        assert httpx.get(f"{server.base_url}/received").json() == [{"text": "from the demo"}]
    finally:
        assert webhook.stop_detached(tmp_path / "webhook")
    assert not httpserver._alive(server.pid)


# --- post: retries and errors ------------------------------------------------------------------


def test_post_delivers_the_payload(hook: WebhookReceiver) -> None:
    payload = render(Announcement(what="failover"))
    notify.post(hook.url, payload, timeout=5)
    assert hook.received() == [payload]


def test_post_tries_again_after_5xx(hook: WebhookReceiver, fast: None) -> None:
    hook.fail(2, 503)
    notify.post(hook.url, {"text": "x"}, timeout=5)
    assert (hook.failed(), hook.received()) == (2, [{"text": "x"}])


def test_post_waits_the_retry_after_of_a_429(hook: WebhookReceiver, fast: None) -> None:
    hook.fail(1, 429, retry_after=0.3)
    started = time.monotonic()
    notify.post(hook.url, {"text": "x"}, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert hook.received() == [{"text": "x"}]


def test_post_caps_a_long_retry_after(hook: WebhookReceiver, fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "RETRY_AFTER_MAX_S", 0.05)
    hook.fail(1, 429, retry_after=3600)
    started = time.monotonic()
    notify.post(hook.url, {"text": "x"}, timeout=5)
    assert time.monotonic() - started < 2


def test_post_gives_up_on_a_lasting_5xx_with_a_transient_error_that_hides_the_url(
        hook: WebhookReceiver, fast: None) -> None:
    hook.fail(5, 500)
    with pytest.raises(TransientError, match=r"webhook answered 500: injected_failure \(after 3 attempts\)") as info:
        notify.post(hook.url, {"text": "x"}, timeout=5)
    assert hook.failed() == notify.ATTEMPTS
    assert hook.path not in _everything(info.value) and hook.url not in _everything(info.value)


def test_post_fails_at_once_on_a_4xx_naming_the_status_not_the_url(hook: WebhookReceiver, fast: None) -> None:
    hook.fail(3, 404)
    with pytest.raises(PermanentError, match="^webhook answered 404: injected_failure$") as info:
        notify.post(hook.url, {"text": "x"}, timeout=5)
    assert hook.failed() == 1  # not retried
    assert hook.path not in _everything(info.value)


def test_post_to_a_closed_port_is_transient_and_hides_the_url(fast: None) -> None:
    sock = httpserver.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/services/T0/B0/closed-port-token"
    with pytest.raises(TransientError, match="webhook unreachable: ConnectError") as info:
        notify.post(url, {"text": "x"}, timeout=2)
    assert "closed-port-token" not in _everything(info.value)


def test_post_keeps_the_url_out_of_httpx_request_logs(hook: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="httpx"):
        notify.post(hook.url, {"text": "x"}, timeout=5)
    assert any(r.name == "httpx" for r in caplog.records)
    assert hook.path not in caplog.text and MASK in caplog.text


# --- announce -------------------------------------------------------------------------------------


def test_announce_without_config_sends_nothing() -> None:
    assert notify.announce(None, Announcement(what="failover")) is False


def test_announce_posts_the_completed_announcement_to_the_channel(
        hook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch, hook.url, severity="1", impact="order writes", channel="#incidents")
    assert notify.announce(config, Announcement(what="orders failover")) is True
    [payload] = hook.received()
    assert payload["channel"] == "#incidents"
    lines = payload["text"].splitlines()
    assert lines[:4] == ["INCIDENT: orders failover", "Status: Investigating", "Severity: SEV-1", "Impact: order writes"]
    next_update = datetime.strptime(lines[4], "Next Update: %Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    assert timedelta(minutes=28) < next_update - datetime.now(UTC) <= timedelta(minutes=30)


def test_announce_returns_false_and_warns_when_the_webhook_keeps_failing(
        hook: WebhookReceiver, fast: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    hook.fail(10, 503)
    config = _config(monkeypatch, hook.url)
    with caplog.at_level(logging.INFO):
        assert notify.announce(config, Announcement(what="orders failover")) is False
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "tasks.notify"]
    assert warning.getMessage() == ("announcement 'orders failover' not sent to the webhook in environment variable "
                                    "'TEST_NOTIFY_WEBHOOK': webhook answered 503: injected_failure (after 3 attempts)")
    assert hook.path not in caplog.text


def test_announce_returns_false_when_the_webhook_secret_is_missing(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("TEST_NOTIFY_WEBHOOK_UNSET", raising=False)
    config = NotifyConfig(webhook=SecretRef(env="TEST_NOTIFY_WEBHOOK_UNSET"))
    assert notify.announce(config, Announcement(what="failover")) is False
    assert "environment variable 'TEST_NOTIFY_WEBHOOK_UNSET' is not set or empty" in caplog.text
