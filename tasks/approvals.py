"""People as an outside system: the run pauses until someone answers a form in the Prefect
UI (or `resume_flow_run(id, run_input=...)`), then goes on or stops.

Each `ask_*` pauses with a typed form (a `RunInput`), checks the answer with the pure
verdicts of `tasks.confirmations` and raises `PolicyRefused` when it does not count.
Nobody answering within `APPROVAL_TIMEOUT` fails the run, with nothing changed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks import confirmations
from tasks.errors import PolicyRefused

APPROVAL_TIMEOUT = int(timedelta(hours=4).total_seconds())
POLL_SECONDS = 1  # Prefect's default of 10 s would add up to 10 s to every approved run


class Approval(RunInput):
    """Approve or reject a deploy to a protected environment."""

    approve: bool
    approver: str
    reason: str = ""


class InconclusiveDecision(RunInput):
    """The analysis could not decide: promote the new version, or roll back."""

    action: Literal["promote", "rollback"]
    approver: str
    reason: str = ""


class RollbackConfirmation(RunInput):
    """Type ROLLBACK to roll the service back."""

    confirm: str
    approver: str


class RestoreConfirmation(RunInput):
    """Type the database's name to replace it with the backup."""

    confirm: str
    approver: str


def _refuse(why: str | None) -> None:
    if why is not None:
        raise PolicyRefused(why)


def ask_approval(question: str) -> str:
    """A deploy to a protected environment. Returns the approver."""
    answer = pause_flow_run(wait_for_input=Approval.with_initial_data(
        description=question, approve=False, approver="", reason=""),
        timeout=APPROVAL_TIMEOUT, poll_interval=POLL_SECONDS)
    _refuse(confirmations.approval_refused(answer.approve, answer.approver, answer.reason))
    return answer.approver


def ask_promotion(question: str) -> str:
    """An inconclusive analysis: promote, or roll back. Returns who decided to promote."""
    decision = pause_flow_run(wait_for_input=InconclusiveDecision.with_initial_data(
        description=question, action="rollback", approver="", reason=""),
        timeout=APPROVAL_TIMEOUT, poll_interval=POLL_SECONDS)
    _refuse(confirmations.promotion_refused(decision.action, decision.approver))
    return decision.approver


def ask_rollback(service: str, environment: str) -> str:
    """Type ROLLBACK. Returns the approver."""
    answer = pause_flow_run(wait_for_input=RollbackConfirmation.with_initial_data(
        description=f"Type {confirmations.ROLLBACK_WORD} to roll back {service} in {environment}",
        confirm="", approver=""), timeout=APPROVAL_TIMEOUT, poll_interval=POLL_SECONDS)
    _refuse(confirmations.rollback_refused(answer.confirm, answer.approver))
    return answer.approver


def ask_restore(question: str, dbname: str) -> str:
    """Type the name of the database a restore replaces. Returns the approver."""
    answer = pause_flow_run(wait_for_input=RestoreConfirmation.with_initial_data(
        description=question, confirm="", approver=""), timeout=APPROVAL_TIMEOUT, poll_interval=POLL_SECONDS)
    _refuse(confirmations.restore_refused(answer.confirm, answer.approver, dbname))
    return answer.approver.strip()
