"""People: incident announcements to a Slack-compatible incoming webhook (httpx).

The messages are the runbook's Communication Templates:

    INCIDENT: [Brief description]          ✅ RESOLVED: [Brief description]
    Status: Investigating                  Duration: [X hours Y minutes]
    Severity: SEV-[1/2/3]                  Root Cause: [One sentence]
    Impact: [Number of users affected]     Fix Applied: [What was done]
    Next Update: [Time]                    Postmortem: [Link when available]

`render` is pure: an `Announcement` in, the webhook's JSON out (`text`, the template as
plain text, for notifications and for receivers without Block Kit; `blocks`, the same in
section and context blocks). Every text is scrubbed of remembered secrets before it is
escaped for mrkdwn.

`post` sends one payload. The webhook URL is a secret (its path is the token), so no
message or log line names it. httpx's transport retries a refused connection; a 429
(after its Retry-After, capped) or a 5xx is tried again here; what is left over raises
`TransientError`, and any other answer `PermanentError`. `announce` is what a flow calls:
an announcement that cannot be sent is logged as a warning and never fails the procedure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tasks.config import NotifyConfig
from tasks.errors import PermanentError, RunbookError, TransientError
from tasks.redact import remember, scrub

ATTEMPTS = 3  # posts of one payload answered 429 or 5xx, or cut off mid-request
CONNECT_RETRIES = 2  # by httpx's transport, on a refused or timed-out connect, before that
BACKOFF_S = 0.5  # before the second post, doubling
BACKOFF_MAX_S = 4.0
# A longer Retry-After is cut to this: an announcement must not hold up a failover.
RETRY_AFTER_MAX_S = 10.0
SAID_MAX = 200  # characters of the webhook's answer quoted in an error

# Slack's limits (api.slack.com/reference/block-kit/blocks, /messaging/webhooks).
SECTION_MAX = 3000
TEXT_MAX = 40000


def _mask_secrets_in_httpx_logs(record: logging.LogRecord) -> bool:
    # httpx logs every request's URL at INFO ("HTTP Request: POST <url> ..."); a webhook's
    # URL is its token.
    if isinstance(record.args, tuple):
        record.args = tuple(scrub(str(a)) if isinstance(a, str | httpx.URL) else a for a in record.args)
    return True


if _mask_secrets_in_httpx_logs not in logging.getLogger("httpx").filters:
    logging.getLogger("httpx").addFilter(_mask_secrets_in_httpx_logs)


# --- what is said ------------------------------------------------------------------------


@dataclass(frozen=True)
class Announcement:
    """One message of an incident, from its start to its resolution.

    `details` are "key: value" lines (primary, replica, lag). `link` is where to follow the
    incident (the flow run) or, once resolved, the postmortem. `severity`, `impact` and
    `next_update` left as None are filled from the config by `complete`."""

    what: str
    status: str = "Investigating"
    severity: str | None = None
    impact: str | None = None
    next_update: datetime | None = None
    details: list[str] = field(default_factory=list)
    link: str | None = None
    resolved: bool = False
    duration: timedelta | None = None
    root_cause: str | None = None
    fix_applied: str | None = None

    def __post_init__(self) -> None:
        if not self.what.strip():
            raise ValueError("an announcement needs a brief description ('what')")
        if self.next_update is not None and self.next_update.utcoffset() is None:
            raise ValueError(f"next_update {self.next_update.isoformat()} has no time zone; give an aware datetime")


def complete(announcement: Announcement, config: NotifyConfig, now: datetime) -> Announcement:
    """The announcement with what it left open taken from the config: severity, impact, and
    the next update `update_every` from `now` (none once resolved)."""
    next_update = announcement.next_update
    if next_update is None and not announcement.resolved:
        next_update = now + config.update_every
    return replace(
        announcement,
        severity=announcement.severity or config.severity,
        impact=announcement.impact or config.impact,
        next_update=next_update,
    )


def severity_label(severity: str) -> str:
    """'2', 'sev2', 'SEV-2' -> 'SEV-2'; anything else as given."""
    m = re.fullmatch(r"(?i)(?:sev-?)?\s*(\d)", severity.strip())
    return f"SEV-{m.group(1)}" if m else severity.strip()


def format_duration(duration: timedelta) -> str:
    """'1 hour 5 minutes', '12 minutes', '40 seconds', as the template's 'X hours Y minutes'."""
    seconds = max(0, int(duration.total_seconds()))
    hours, minutes = seconds // 3600, seconds % 3600 // 60
    parts = [f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in ((hours, "hour"), (minutes, "minute")) if n]
    return " ".join(parts) or f"{seconds} second{'' if seconds == 1 else 's'}"


def escape(text: str) -> str:
    """mrkdwn's escaping: only &, < and > (api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(text: str) -> str:
    # Scrubbed before it is escaped: a secret holding & or < would no longer match after.
    return escape(scrub(text))


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:  # never half an entity
        cut = cut[:amp]
    return cut + "…"


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _lines(a: Announcement) -> list[tuple[str, str, str]]:
    """(label, plain value, mrkdwn value) of the template's lines, each value cleaned."""
    rows: list[tuple[str, str, str]] = []

    def add(label: str, value: str | None, mrkdwn: str | None = None) -> None:
        if value is not None:
            rows.append((label, _clean(value), mrkdwn if mrkdwn is not None else _clean(value)))

    if a.resolved:
        add("Duration", format_duration(a.duration) if a.duration is not None else None)
        add("Root Cause", a.root_cause)
        add("Fix Applied", a.fix_applied)
        postmortem = _clean(a.link) if a.link else None
        add("Postmortem", a.link or "to follow", f"<{postmortem}>" if postmortem else None)
    else:
        add("Status", a.status)
        add("Severity", severity_label(a.severity) if a.severity else None)
        add("Impact", a.impact)
        if a.next_update is not None:
            ts = int(a.next_update.timestamp())
            fallback = _utc(a.next_update)
            # Slack shows a date token in each reader's own time zone.
            add("Next Update", fallback, f"<!date^{ts}^{{date_short_pretty}} {{time}}|{fallback}>")
    return rows


def render(announcement: Announcement) -> dict[str, Any]:
    """The webhook's JSON: {"text": the template as plain text, "blocks": [...]}."""
    a = announcement
    head = f"✅ RESOLVED: {_clean(a.what)}" if a.resolved else f"INCIDENT: {_clean(a.what)}"
    lines = _lines(a)
    details = [_clean(d) for d in a.details]
    link = _clean(a.link) if a.link and not a.resolved else None

    text = "\n".join([head, *(f"{label}: {plain}" for label, plain, _ in lines), *details,
                      *([f"Link: {link}"] if link else [])])
    main = "\n".join([f"*{head}*", *(f"*{label}:* {mrkdwn}" for label, _, mrkdwn in lines)])
    blocks: list[dict[str, Any]] = [_section(main)]
    if details:
        blocks.append(_section("\n".join(_bold_key(d) for d in details)))
    if link:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": scrub(f"<{link}>")}]})
    return {"text": _fit(scrub(text), TEXT_MAX), "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _fit(scrub(text), SECTION_MAX)}}


def _bold_key(line: str) -> str:
    key, sep, value = line.partition(": ")
    return f"*{key}:* {value}" if sep and key else line


# --- sending it ---------------------------------------------------------------------------


def post(url: str, payload: dict[str, Any], timeout: float) -> None:
    """POST `payload` to the webhook at `url`, each request within `timeout` seconds.

    Raises TransientError when it still fails after ATTEMPTS posts (connection, 429, 5xx),
    PermanentError at once on any other answer. Neither names the URL."""
    remember(url)  # whoever passed it, it is the webhook's token
    with contextlib.suppress(httpx.InvalidURL):  # post() says so when it sends
        remember(httpx.URL(url).raw_path.decode("ascii"))  # the token, however httpx spells the host
    client = httpx.Client(timeout=timeout, transport=httpx.HTTPTransport(retries=CONNECT_RETRIES),
                          follow_redirects=False)
    last: TransientError | None = None
    with client:
        for attempt in range(1, ATTEMPTS + 1):
            delay = min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
            try:
                resp = client.post(url, json=payload)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL):
                raise PermanentError("the webhook URL is not an http(s) URL") from None
            except httpx.TransportError as exc:  # refused after the transport's retries, timed out, cut off
                last = TransientError(f"webhook unreachable: {type(exc).__name__}: {scrub(str(exc)) or 'no detail'}")
            else:
                if resp.is_success:
                    return
                answer = f"webhook answered {resp.status_code}{_said(resp)}"
                if resp.status_code != 429 and resp.status_code < 500:
                    raise PermanentError(answer)
                last = TransientError(answer)
                asked = retry_after(resp.headers.get("Retry-After"), now=time.time())
                if asked is not None:  # Slack's 429s carry one; a 503 may (RFC 9110)
                    delay = min(asked, RETRY_AFTER_MAX_S)
            if attempt < ATTEMPTS:
                time.sleep(delay)
    assert last is not None
    raise TransientError(f"{last} (after {ATTEMPTS} attempts)")


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _said(resp: httpx.Response) -> str:
    said = scrub(resp.text.strip())[:SAID_MAX]
    return f": {said}" if said else ""


def announce(config: NotifyConfig | None, announcement: Announcement) -> bool:
    """Post the announcement to the environment's webhook. True once it was accepted;
    False when there is no webhook, or when it could not be sent (logged as a warning):
    an announcement never fails the procedure it announces."""
    if config is None:
        return False
    try:
        url = config.webhook.resolve()
        payload = render(complete(announcement, config, datetime.now(UTC)))
        if config.channel:
            payload["channel"] = config.channel
        post(url, payload, config.timeout.total_seconds())
    except RunbookError as exc:  # the secret is missing, or the webhook failed: bugs still raise
        _logger().warning("announcement %r not sent to the webhook in %s: %s",
                          scrub(announcement.what), config.webhook.describe(), scrub(str(exc)))
        return False
    _logger().info("announced %r to the webhook in %s", scrub(announcement.what), config.webhook.describe())
    return True


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()  # type: ignore[return-value]
    except MissingContextError:
        return logging.getLogger(__name__)
