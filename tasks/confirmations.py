"""Whether what a person typed in an approval form counts: pure verdicts, no I/O.

Each returns why the answer does not count (a sentence for the run's failure message),
or None when it does. `tasks.approvals` pauses the run for the answer and raises
`PolicyRefused` with the reason.
"""

from __future__ import annotations

ROLLBACK_WORD = "ROLLBACK"


def _no_name(approver: str) -> bool:
    return not approver.strip()


def approval_refused(approve: bool, approver: str, reason: str, what: str = "deploy") -> str | None:
    """A change to a protected environment (a deploy, a recovery): approved, by someone who
    gave their name."""
    if _no_name(approver):
        return "approval needs the approver's name"
    if not approve:
        return f"{what} rejected by {approver}: {reason or 'no reason given'}"
    return None


def promotion_refused(action: str, approver: str) -> str | None:
    """An inconclusive analysis: the person chose to promote the new version."""
    if action != "promote":
        return f"inconclusive analysis: {approver or 'operator'} chose to roll back"
    return None


def rollback_refused(typed: str, approver: str) -> str | None:
    """A rollback in a protected environment: the word ROLLBACK, as the seeds' runbook asks."""
    if typed.strip() != ROLLBACK_WORD:
        return f"rollback not confirmed: expected the word {ROLLBACK_WORD}, got {typed!r}"
    if _no_name(approver):
        return "rollback confirmation needs the approver's name"
    return None


def restore_refused(typed: str, approver: str, dbname: str) -> str | None:
    """A restore that replaces production: the approver typed the database's exact name
    (PostgreSQL names are case-sensitive), and gave theirs."""
    if typed.strip() != dbname:
        return f"restore not confirmed: expected the database name {dbname!r}, got {typed!r}"
    if _no_name(approver):
        return "restore confirmation needs the approver's name"
    return None
