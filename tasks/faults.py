"""Named fault points, for tests and game-day drills.

A flow calls `fault_point("backup.after-commit")` between two steps. Nothing happens
unless RUNBOOK_FAULTS names that point: `RUNBOOK_FAULTS="backup.after-commit"` fails it
every time, `"backup.after-commit:1"` only the first time in this process (so a retry
succeeds). It lets a test or a drill prove what a crash at that exact point leaves behind,
without mocking any of our code.
"""

from __future__ import annotations

import os
import threading

from tasks.errors import InjectedFault

_lock = threading.Lock()
_fired: dict[str, int] = {}


def _spec() -> dict[str, int | None]:
    spec: dict[str, int | None] = {}
    for item in filter(None, (s.strip() for s in os.environ.get("RUNBOOK_FAULTS", "").split(","))):
        name, _, count = item.partition(":")
        spec[name] = int(count) if count else None
    return spec


def fault_point(name: str) -> None:
    spec = _spec()
    if name not in spec:
        return
    with _lock:
        fired = _fired.get(name, 0)
        limit = spec[name]
        if limit is not None and fired >= limit:
            return
        _fired[name] = fired + 1
    raise InjectedFault(f"fault injected at {name!r} (RUNBOOK_FAULTS)")


def reset() -> None:
    with _lock:
        _fired.clear()
