"""The field types every config model shares: a frozen model that refuses unknown keys, a
duration written like '90s', '15m' or '2h', an IANA timezone. Here rather than in
tasks/config.py so that the models of pure decision modules (tasks/windows.py) can use them
and config can still import those models."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError("a duration like '90s', '15m', '1h', '2d' or a number of seconds")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def check_timezone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA timezone like 'UTC', 'Europe/London' or 'Asia/Kolkata'") from None
    return v


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine (localhost or a loopback address)."""
    import ipaddress
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
