"""A trivial flow for tests/test_orchestration.py, deployed from this repo to a process work pool."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow


@flow
def hello(gate: str | None = None, timeout: float = 60) -> int:
    """Wait until the file `gate` exists (if given, at most `timeout` seconds), then return
    this process's pid: a test decides how long the run holds its worker."""
    deadline = time.monotonic() + timeout
    while gate is not None and not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} did not open within {timeout} s")
        time.sleep(0.2)
    return os.getpid()
