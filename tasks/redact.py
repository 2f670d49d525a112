"""Keep resolved secret values out of messages.

Every value a `SecretRef` resolves is remembered here, and `scrub()` replaces it in any
text that leaves the process: subprocess stderr, exception messages, reports.
"""

from __future__ import annotations

import threading
from urllib.parse import quote

_lock = threading.Lock()
_secrets: set[str] = set()
MASK = "********"


def remember(value: str) -> None:
    if len(value) < 4:  # too short to scrub without mangling ordinary text
        return
    with _lock:
        _secrets.add(value)
        _secrets.add(quote(value, safe=""))


def scrub(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    return text
