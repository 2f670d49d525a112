"""The database password and the S3 secret key never show in logs, artifacts, events, states
or output. The Prefect API is shared by the whole session, so in a full run (`make test`) the
scan also covers every flow the test files before this one ran: deploys, migrations, restores."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from flows.backup import backup_database
from flows.physical_backup import physical_backup
from flows.restore_test import restore_test


async def _everything_the_api_holds() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    async with get_client() as client:
        logs: list[Any] = []
        while page := await client.read_logs(log_filter=LogFilter(), limit=200, offset=len(logs)):
            logs.extend(page)
        # Every page: by the time this test runs, the session's server holds more than one page.
        artifacts: list[Any] = []
        while page := await client.read_artifacts(limit=200, offset=len(artifacts)):
            artifacts.extend(page)
        flow_runs: list[Any] = []
        while page := await client.read_flow_runs(limit=200, offset=len(flow_runs)):
            flow_runs.extend(page)
        task_runs: list[Any] = []
        while page := await client.read_task_runs(limit=200, offset=len(task_runs)):
            task_runs.extend(page)
        events: list[Any] = []
        resp = await client._client.post("/events/filter", json={"limit": 50})
        while True:  # every event, page by page (the API serves 50 at a time)
            resp.raise_for_status()
            body = resp.json()
            events.extend(body.get("events", []))
            if not body.get("next_page"):
                break
            resp = await client._client.get(body["next_page"])
    return {
        "logs": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(f"{a.key} {a.description} {json.dumps(a.data, default=str)}" for a in artifacts),
        "states": "\n".join(
            [f"{r.name} {r.state.message if r.state else ''} {json.dumps(r.parameters, default=str)}" for r in flow_runs]
            + [f"{r.name} {r.state.message if r.state else ''}" for r in task_runs]
        ),
        "events": json.dumps(events, default=str),
    }


def test_password_appears_nowhere(make_environment: Any, sandbox: Any, capfd: pytest.CaptureFixture[str]) -> None:
    env = make_environment("secrets")
    ok = backup_database(env, "fleet")
    restore_test(env, "fleet")

    def wrong_db(doc: dict[str, Any]) -> None:
        doc["databases"]["fleet"]["dbname"] = "no_such_database"

    failing = make_environment("secrets-fail", wrong_db)
    state = backup_database(failing, "fleet", return_state=True)
    assert state.is_failed() and "does not exist" in state.message

    # pgBackRest: a backup, and one that fails (a stanza its config does not know), whose
    # error carries pgBackRest's own output
    physical = physical_backup(env, "main", "incr")

    def wrong_stanza(doc: dict[str, Any]) -> None:
        doc["clusters"]["main"]["pgbackrest"]["stanza"] = "nosuchstanza"

    state = physical_backup(make_environment("secrets-pgbr-fail", wrong_stanza), "main", "incr", return_state=True)
    assert state.is_failed() and "pgbackrest" in state.message

    secrets = {"database password": sandbox.pg_password, "S3 secret key": sandbox.s3_secret_key}
    deadline = time.monotonic() + 20
    while True:  # events reach the API asynchronously
        seen = asyncio.run(_everything_the_api_holds())
        if all(e in seen["events"] for e in ("runbook.backup.failed", "runbook.restore-test.passed",
                                             "runbook.physical-backup.succeeded", "runbook.physical-backup.failed")):
            break
        assert time.monotonic() < deadline, "runbook events never reached the API"
        time.sleep(0.5)
    out = capfd.readouterr()
    seen["output"] = out.out + out.err

    # The scan looks at real content: the backup's id is in the artifacts and events.
    assert ok["backup_id"] in seen["artifacts"] and ok["backup_id"] in seen["events"]
    assert physical["label"] in seen["artifacts"] and physical["label"] in seen["events"]
    assert seen["logs"]
    for where, text in seen.items():
        for what, value in secrets.items():
            assert value not in text, f"the {what} leaked into {where}"
