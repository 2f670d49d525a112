"""The Azure runbooks against the sandbox's fake ARM server, through the real SDK and real
PostgreSQL behind each fake server: backup, restore test (restore, smoke queries, deletion) and a
planned promotion, run as the flows run in production."""

from __future__ import annotations

from typing import Any

import pytest

from flows.backup import backup_database
from flows.dr_failover import dr_failover
from flows.restore_test import restore_test

pytestmark = pytest.mark.scenario


def test_backup_restore_test_and_planned_promotion_against_the_fake_arm_server(sandbox: Any,
                                                                             azure_control: Any) -> None:
    backup = backup_database("sandbox-azure", "fleetdb")
    assert backup["azure_backup"]["kind"] == "Customer On-Demand" and backup["rows"] > 0

    tested = restore_test("sandbox-azure", "fleetdb")
    assert tested["runbook"] == "azure-restore-test" and tested["deleted"].endswith("deleted")
    from tasks import azure
    from tasks.config import load_environment

    cfg = load_environment("sandbox-azure").database("fleetdb").azure_server()
    with azure.client(cfg) as arm:
        assert azure.get_server(arm, cfg, tested["server"]) is None
        assert backup["azure_backup"]["name"] in [b.name for b in azure.list_backups(arm, cfg)]

    promoted = dr_failover("sandbox-azure", "game day", planned=True)
    assert (promoted["old_primary"], promoted["new_primary"], promoted["outcome"]) == (
        "fleet-pg", "fleet-pg-replica", "succeeded")
    with azure.client(cfg) as arm:
        assert azure.get_server(arm, cfg, "fleet-pg-replica").role == "Primary"
