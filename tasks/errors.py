"""Errors raised by runbook tasks and flows, split by what the caller does about them.

    RunbookError
    ├── ConfigError          bad input or config: fix it and run again; raised before any side effect
    │   └── SecretMissing    a referenced secret does not resolve
    ├── TransientError       a retry may succeed (connection reset, S3 5xx or throttling)
    ├── PermanentError       retrying will not help (auth refused, database missing, tool too old)
    │   ├── DumpAborted      the dump process was killed by a signal: never retried on its own
    │   └── ObjectMissing    a stored object that should be there is not
    ├── PolicyRefused        a rule said no (freeze window, rejected approval, protected object)
    ├── CheckFailed          a verification ran and found a problem (checksum, row counts, amcheck)
    └── InjectedFault        a fault injected on purpose through RUNBOOK_FAULTS (tests, drills)

Retry conditions look at these classes, never at message text.
"""

from __future__ import annotations


class RunbookError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(RunbookError):
    """Bad input or config. Raised before anything changes."""


class SecretMissing(ConfigError):
    """A secret reference did not resolve. The message names the reference, never a value."""


class TransientError(RunbookError):
    """A failure that a retry with backoff may cure."""


class PermanentError(RunbookError):
    """A failure that retrying will not cure."""


class DumpAborted(PermanentError):
    """The dump process was killed from outside (operator, OOM killer)."""


class ObjectMissing(PermanentError):
    """A key that storage does not hold. The message names the storage URL and the key."""


class PolicyRefused(RunbookError):
    """A policy or a human said no."""


class CheckFailed(RunbookError):
    """A verification step found a problem."""


class InjectedFault(RunbookError):
    """A fault injected on purpose at a named point (see tasks.faults)."""
