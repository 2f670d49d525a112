"""People as an outside system: the run pauses until someone answers a form in the Prefect
UI (or `resume_flow_run(id, run_input=...)`), then goes on or stops.

Each `ask_*` pauses with a typed form (a `RunInput`), checks the answer with the pure
verdicts of `tasks.confirmations` and raises `PolicyRefused` when it does not count.
Nobody answering within `APPROVAL_TIMEOUT` fails the run, with nothing changed. An answer
is asked once per flow run: a run resumed after its worker died finds the answer its earlier
attempt got (`_ask`), rather than pausing again for a decision already taken.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, TypeVar

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


F = TypeVar("F", bound=RunInput)
_asked: dict[tuple[Any, str], int] = {}


def _ask(form: type[F], purpose: str) -> F:
    """Pause for `form` under a key of its own (`<purpose>-<n>`, the n-th such question of
    this run); when this run has an answer under that key already, from an attempt before a
    crash, use it."""
    from prefect.context import FlowRunContext
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_base_key

    ctx = FlowRunContext.get()
    run_id = ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None
    count = _asked[(run_id, purpose)] = _asked.get((run_id, purpose), 0) + 1
    key = f"{purpose}-{count}"
    if run_id is not None:
        given = read_flow_run_input(keyset_from_base_key(f"paused-{key}")["response"], flow_run_id=run_id)
        if given:
            return form(**given)
    return pause_flow_run(wait_for_input=form, key=key, timeout=APPROVAL_TIMEOUT, poll_interval=POLL_SECONDS)


def _refuse(why: str | None) -> None:
    if why is not None:
        raise PolicyRefused(why)


def ask_approval(question: str, what: str = "deploy") -> str:
    """A deploy (or another change, `what`) in a protected environment. Returns the approver."""
    answer = _ask(Approval.with_initial_data(description=question, approve=False, approver="", reason=""),
                  "approval")
    _refuse(confirmations.approval_refused(answer.approve, answer.approver, answer.reason, what))
    return answer.approver


def ask_promotion(question: str) -> str:
    """An inconclusive analysis: promote, or roll back. Returns who decided to promote."""
    decision = _ask(InconclusiveDecision.with_initial_data(description=question, action="rollback", approver="",
                                                           reason=""), "promotion")
    _refuse(confirmations.promotion_refused(decision.action, decision.approver))
    return decision.approver


def ask_rollback(service: str, environment: str) -> str:
    """Type ROLLBACK. Returns the approver."""
    answer = _ask(RollbackConfirmation.with_initial_data(
        description=f"Type {confirmations.ROLLBACK_WORD} to roll back {service} in {environment}",
        confirm="", approver=""), "rollback")
    _refuse(confirmations.rollback_refused(answer.confirm, answer.approver))
    return answer.approver


def ask_restore(question: str, dbname: str) -> str:
    """Type the name of the database a restore replaces. Returns the approver."""
    answer = _ask(RestoreConfirmation.with_initial_data(description=question, confirm="", approver=""), "restore")
    _refuse(confirmations.restore_refused(answer.confirm, answer.approver, dbname))
    return answer.approver.strip()
