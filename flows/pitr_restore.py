"""Point-in-time recovery, as the seeds ask for it ("PITR to 2024-01-15 10:00:00") but with
commands that exist (the seed's `pg_restore --target-time` does not):

    pgbackrest --stanza=main --type=time --target="2024-01-15 10:00:00+00" \\
        --target-action=promote --pg1-path=/new/dir restore
    pg_ctl -D /new/dir -o "-p 54400" start            # a new server beside production
    psql -p 54400 -c "SELECT max(created_at) FROM ..."  # did it stop where it should?

and then, for one database, the seed's `evfleet_recovery` procedure: dump it from the
recovered server and swap it in with `restore_database` (apps scaled to 0, renames in one
transaction, the live data kept as `<db>_pre_restore_<time>`).

Production is never touched by the recovery itself: the new instance has its own data
directory and port, and archiving off.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.runtime import flow_run

from flows.restore_database import restore_database
from tasks import approvals, pitr, reports
from tasks.config import check_choice, load_environment
from tasks.errors import CheckFailed
from tasks.naming import artifact_key, namer
from tasks.physical_restores import (
    allocate_extract_id,
    check_target,
    discard_instance,
    dump_extract,
    name_instance,
    read_catalogue,
    restore_instance,
)
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import ClusterRecord

TARGETS = ("new-instance",)


@flow(name="pitr-restore", flow_run_name=namer("pitr-restore"), **HOOKS)
def pitr_restore(environment: str, cluster: str, target_time: str, target: Literal["new-instance"] = "new-instance",
                 extract_database: str | None = None, emergency: bool = False,
                 emergency_reason: str | None = None) -> dict[str, Any]:
    """Recover the cluster to `target_time` on a new instance (a new data directory on a new
    port), and check it stopped there: heartbeat markers up to the target are there, none
    after. Then report its address, or with `extract_database`, dump that database from
    it and swap it into production with restore-database (which asks to type its name), and
    remove the instance. In a protected environment the recovery itself needs an approval.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        cluster: The cluster, as named under `clusters` in the environment.
        target_time: Recover to this time, like '2024-01-15 10:00:00' (the environment's timezone) or
            '2024-01-15T10:00:00+00:00'; between the end of the oldest backup and now.
        target: "new-instance": a new server beside production, which keeps running.
        extract_database: A database of the environment to bring back into production from the
            recovered instance; empty to keep the instance and report its address.
        emergency: Swap the extract in outside the windows or in a freeze, after an approval.
        emergency_reason: Why it cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    cfg = env.cluster(cluster)
    check_choice("target", target, TARGETS, "a recovery target")
    if extract_database:
        env.database(extract_database).check_secrets()
    cfg.check_secrets()
    record = ClusterRecord("pitr-restore", env.name, cluster)
    record.resumed(resume_attempt())
    run_id = str(flow_run.root_flow_run_id or flow_run.id or "local")
    catalogue = read_catalogue(env, cluster)
    oldest = catalogue.oldest()
    at = pitr.parse_target_time(target_time, now=datetime.now(UTC), oldest_backup_end=oldest.stop if oldest else None,
                                tz=ZoneInfo(env.timezone))
    plan = name_instance(env, cluster, "pitr", run_id)
    record.figures.update(reports.pitr_plan_figures(at, plan.data_dir, catalogue))
    try:
        if env.protected:
            record.figures["approver"] = approvals.ask_approval(reports.pitr_question(env.name, cluster, at),
                                                                  "point-in-time recovery")
        restored = restore_instance(env, cluster, plan, at, None)
        record.absorb(restored)
        record.checks.append(check_target(env, cluster, restored["instance"], at))
        if not record.passed:
            raise CheckFailed(f"the recovered instance did not stop at {at.isoformat()}: {record.failed_checks()}")
        if extract_database:
            extract = dump_extract(env, cluster, restored["instance"], extract_database,
                                       allocate_extract_id(env, extract_database), reports.pitr_source(cluster, at))
            record.figures.update(reports.extract_figures(extract, discard_instance(env, cluster, plan)))
            swapped = restore_database(environment, extract_database, extract.backup_id, "swap", emergency, emergency_reason)
            record.figures.update(reports.swap_figures(swapped))
        record.outcome = "succeeded"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM: no instance is left behind
        record.fail(exc)
        record.figures["instance removed"] = discard_instance(env, cluster, plan)
        raise
    finally:
        reports.publish(reports.cluster(record))
    return {"runbook": "pitr-restore", "environment": env.name, "cluster": cluster, "target_time": at.isoformat(),
            "instance": record.figures.get("instance"), "extract": record.figures.get("extract backup id"),
            "artifact": artifact_key("pitr-restore", env.name, cluster)}


if __name__ == "__main__":
    import sys

    args = sys.argv[1:] + [None] * 4
    pitr_restore(args[0] or "sandbox", args[1] or "main", args[2] or "", "new-instance", args[3])
