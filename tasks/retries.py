"""When a task is retried: one policy for every outside system, with per-system overrides.

    @task(**retries.policy("storage"))
    def commit_manifest(...): ...

A task is retried only when it failed with a `TransientError` (connection reset, S3 5xx
or throttling, Kubernetes 5xx or 429): the decision looks at the exception's class, never
at its text. Everything else (bad input, a refused policy, a failed check, a bug) fails
at once, because retrying it would only repeat the damage or the wait.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.tasks import exponential_backoff

from tasks.errors import TransientError

System = Literal["postgres", "storage", "kubernetes", "pgbackrest", "azure"]

# 5 s, 10 s, 20 s with up to 50% jitter: long enough for a restarting server or a throttled
# bucket, short enough that a nightly backup does not lose its window.
BASE: dict[str, Any] = {"retries": 3, "backoff_factor": 5, "jitter": 0.5}

# Reading the Kubernetes API is cheap and its blips (a 503 from a busy API server, a 409
# under concurrent controllers) clear within seconds.
OVERRIDES: dict[System, dict[str, Any]] = {
    "kubernetes": {"backoff_factor": 2},
}


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can cure: decided by exception class, never by text."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - anything else is permanent
        return False
    return False


def policy(system: System) -> dict[str, Any]:
    """The keyword arguments of `@task` for a task that talks to `system`."""
    p = {**BASE, **OVERRIDES.get(system, {})}
    return {
        "retries": p["retries"],
        "retry_delay_seconds": exponential_backoff(backoff_factor=p["backoff_factor"]),
        "retry_jitter_factor": p["jitter"],
        "retry_condition_fn": is_transient,
    }
