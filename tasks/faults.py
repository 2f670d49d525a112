"""Named fault points, for tests and game-day drills.

A flow calls `fault_point("backup.after-commit")` between two steps. Nothing happens
unless RUNBOOK_FAULTS names that point: `RUNBOOK_FAULTS="backup.after-commit"` fails it
every time, `"backup.after-commit:1"` only the first time in this process (so a retry
succeeds). `"deploy.after-set-image:hang"` stops the run there for good: it writes its pid
to `$RUNBOOK_FAULTS_SIGNAL_DIR/<point>` and waits, so that a test or a drill can kill the
worker at that exact moment (kill -9) and watch what the next attempt does. It lets a test
or a drill prove what a crash at that exact point leaves behind, without mocking any of
our code.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tasks.errors import InjectedFault

_lock = threading.Lock()
_fired: dict[str, int] = {}


HANG = "hang"


def _spec() -> dict[str, int | str | None]:
    spec: dict[str, int | str | None] = {}
    for item in filter(None, (s.strip() for s in os.environ.get("RUNBOOK_FAULTS", "").split(","))):
        name, _, count = item.partition(":")
        spec[name] = HANG if count == HANG else int(count) if count else None
    return spec


def _hang(name: str) -> None:
    """Say where we stopped, then wait for the kill."""
    folder = os.environ.get("RUNBOOK_FAULTS_SIGNAL_DIR")
    if folder:
        marker, partial = Path(folder) / name, Path(folder) / f".{name}.tmp"
        partial.write_text(str(os.getpid()))
        partial.replace(marker)
    while True:
        time.sleep(1)


def fault_point(name: str) -> None:
    spec = _spec()
    if name not in spec:
        return
    if spec[name] == HANG:
        _hang(name)
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
