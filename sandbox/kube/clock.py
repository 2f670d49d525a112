"""Timestamps as Kubernetes writes them: RFC 3339, UTC, whole seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    return time.time()


def rfc3339(t: float | None = None) -> str:
    return datetime.fromtimestamp(now() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(t: float | None = None) -> str:
    """MicroTime, as Events' eventTime uses."""
    return datetime.fromtimestamp(now() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
