"""The change policy every changing runbook goes through before it changes anything:

    1. one change per environment at a time   deploy, migrate, restore, planned failover,
                                              a DR drill and a maintenance window all hold
                                              the environment's one change slot; a second
                                              run waits (`change_wait`) or is refused,
                                              naming the run that holds it, with a link
    2. windows and freezes                    `windows.decide`: outside a maintenance window
                                              (where the environment requires one) or inside
                                              a freeze, refused, naming the next window
    3. the hotfix path                        `emergency=True` with a reason goes ahead
                                              after an approval, and the run's report and a
                                              `runbook.change.emergency` event record it

An unplanned DR failover takes none of this: it is never blocked, not by a window and not
by a maintenance run holding the slot.

A runbook that runs another as a subflow (a deploy that migrates, a maintenance window that
deploys, a drill's switchovers) holds the slot once, for both: the subflow sees that its
parent holds it and does not wait for itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from tasks import approvals, azure, azure_plan, locks, prefect_api, windows
from tasks.config import EnvironmentConfig, check_reason
from tasks.errors import PolicyRefused, RunbookError
from tasks.records import RunRecord

# The least time given to taking a free slot: the acquisition is an API round trip (or a few,
# on a busy server), so even `change_wait: 0s` (refuse at once when someone visibly holds it)
# must not turn a slow answer into a refusal naming nobody.
ACQUIRE_FLOOR = 10.0

_held: ContextVar[frozenset[str]] = ContextVar("runbook_change_slots", default=frozenset())


@contextmanager
def one_change(env: EnvironmentConfig, runbook: str) -> Iterator[None]:
    """Hold the environment's change slot for the block. Waits up to `env.change_wait` for the
    run that holds it, then refuses, naming that run; a wait of 0 refuses at once."""
    if env.name in _held.get():
        yield  # a parent run holds it for us
        return
    wait = env.change_wait.total_seconds()
    holders = prefect_api.change_holders(env.name)
    if holders and wait <= 0:
        raise PolicyRefused(_busy(env, runbook, holders, "is refused"))
    if holders:
        prefect_api.say(f"{runbook} waits for the environment's change slot, held by "
                        f"{prefect_api.describe_runs(holders)} (up to {int(wait)} s)")
    with ExitStack() as stack:
        try:
            stack.enter_context(prefect_api.holding(locks.change(env), timeout_seconds=max(wait, ACQUIRE_FLOOR)))
        except TimeoutError:
            raise PolicyRefused(_busy(env, runbook, prefect_api.change_holders(env.name) or holders,
                                      f"waited {int(wait)} s and is refused")) from None
        stack.enter_context(prefect_api.marked_change_holder(env.name))
        token = _held.set(_held.get() | {env.name})
        try:
            yield
        finally:
            _held.reset(token)


def _busy(env: EnvironmentConfig, runbook: str, holders: list[prefect_api.RunRef], what: str) -> str:
    who = prefect_api.describe_runs(holders) if holders else "another run (gone by now)"
    return (f"one change at a time in {env.name}: {runbook} {what}, because {who} holds the change slot; "
            "let it finish (or cancel it), then run again")


def with_azure_patching(env: EnvironmentConfig) -> tuple[windows.WindowsConfig | None, list[str]]:
    """The environment's calendar, plus the custom maintenance window of each Azure flexible server
    it has, read from Azure now, as a freeze: no change is planned on top of Azure's patching. A
    window that cannot be read is a note in the run's report, not a refusal."""
    freezes: list[windows.Window] = []
    notes: list[str] = []
    for db in env.databases.values():
        if db.azure is None:
            continue
        try:
            with azure.client(db.azure) as arm:
                server = azure.get_server(arm, db.azure, db.azure.server)
        except RunbookError as exc:
            notes.append(f"Azure's maintenance window of {db.azure.server} could not be read, so it was not "
                         f"checked: {exc}")
            continue
        freeze = azure_plan.patch_freeze(db.azure.server, server.maintenance if server else None,
                                         db.azure.patch_duration)
        if freeze is not None:
            freezes.append(freeze)
    if not freezes:
        return env.windows, notes
    current = env.windows or windows.WindowsConfig()
    return windows.WindowsConfig(require_for=current.require_for, maintenance=current.maintenance,
                                 freezes=[*current.freezes, *freezes]), notes


def admit(env: EnvironmentConfig, runbook: str, record: RunRecord, *, emergency: bool = False,
          emergency_reason: str | None = None, unplanned: bool = False, now: datetime | None = None) -> str | None:
    """Windows and freezes for `runbook` now. Refused: PolicyRefused naming the freeze or the
    next window. An emergency outside them asks for an approval first (in every environment,
    protected or not), then goes ahead; the record's notes and an event say so. Returns the
    emergency's approver (whose approval also stands for a protected environment's), or None."""
    if env.name in _held.get():
        return None  # a subflow of a run that was admitted and holds the slot: its admission covers this
    if emergency:
        emergency_reason = check_reason(emergency_reason, "emergency_reason")
    calendar, unread = with_azure_patching(env)
    record.notes += unread
    verdict = windows.decide(calendar, runbook, now or datetime.now(UTC), env.timezone, emergency=emergency,
                             unplanned=unplanned)
    if not verdict.allowed:
        raise PolicyRefused(f"{verdict.reason.rstrip('.')}. An emergency change may go ahead with emergency=True, "
                            "an emergency_reason and an approval")
    if verdict.needs_emergency:
        approver = approvals.ask_approval(
            f"EMERGENCY {runbook} in {env.name}: {verdict.reason}. Reason given: {emergency_reason}. Approve?",
            what=f"emergency {runbook}")
        record.notes.append(f"**Emergency change** outside the change policy ({verdict.reason}). Reason: "
                            f"{emergency_reason}. Approved by {approver}.")
        prefect_api.emit("runbook.change.emergency", f"runbook.environment.{env.name}",
                         {"environment": env.name, "runbook": runbook, "reason": emergency_reason or "",
                          "policy": verdict.reason, "approver": approver})
        return approver
    if verdict.window is not None:
        record.notes.append(f"Inside maintenance window {verdict.window.describe()}.")
    return None
