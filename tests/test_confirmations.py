"""What a person types in an approval form, and whether it counts: one row per case."""

from __future__ import annotations

import pytest

from tasks.confirmations import approval_refused, promotion_refused, restore_refused, rollback_refused


@pytest.mark.parametrize(("typed", "approver", "refused"), [
    ("orders", "dana", None),
    (" orders ", "dana", None),  # a pasted name with spaces around it still counts
    ("ORDERS", "dana", "expected the database name"),  # PostgreSQL names are case-sensitive
    ("orders_pre_restore", "dana", "expected the database name"),
    ("yes", "dana", "expected the database name"),
    ("orders", " ", "approver's name"),
], ids=["exact", "spaces-around", "other-case", "longer-name", "yes-is-not-the-name", "no-approver"])
def test_confirmation_must_repeat_the_database_name(typed: str, approver: str, refused: str | None) -> None:
    why = restore_refused(typed, approver, "orders")
    assert (why is None) if refused is None else (why is not None and refused in why)


@pytest.mark.parametrize(("approve", "approver", "reason", "refused"), [
    (True, "dana", "", None),
    (False, "dana", "not during the sale", "deploy rejected by dana: not during the sale"),
    (False, "dana", "", "deploy rejected by dana: no reason given"),
    # an approval nobody signed is no approval: the audit trail needs a name
    (True, "  ", "", "approval needs the approver's name"),
], ids=["approved", "rejected-with-reason", "rejected", "unsigned"])
def test_a_deploy_approval_counts_only_when_approved_and_signed(approve: bool, approver: str, reason: str,
                                                                refused: str | None) -> None:
    assert approval_refused(approve, approver, reason) == refused


@pytest.mark.parametrize(("action", "approver", "refused"), [
    ("promote", "dana", None),
    ("rollback", "dana", "inconclusive analysis: dana chose to roll back"),
    ("rollback", "", "inconclusive analysis: operator chose to roll back"),
], ids=["promote", "roll-back", "roll-back-unsigned"])
def test_an_inconclusive_analysis_goes_on_only_when_promoted(action: str, approver: str, refused: str | None) -> None:
    assert promotion_refused(action, approver) == refused


@pytest.mark.parametrize(("typed", "approver", "refused"), [
    ("ROLLBACK", "dana", None),
    (" ROLLBACK\n", "dana", None),  # pasted with a newline
    ("rollback", "dana", "expected the word ROLLBACK, got 'rollback'"),  # the runbook asks for capitals
    ("yes", "dana", "expected the word ROLLBACK"),
    ("ROLLBACK", "", "rollback confirmation needs the approver's name"),
], ids=["exact", "pasted", "lower-case", "yes", "unsigned"])
def test_a_rollback_needs_the_word_rollback_and_a_name(typed: str, approver: str, refused: str | None) -> None:
    why = rollback_refused(typed, approver)
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_a_rejected_recovery_says_what_was_rejected() -> None:
    assert approval_refused(False, "dana", "wrong time", "point-in-time recovery") == \
        "point-in-time recovery rejected by dana: wrong time"
