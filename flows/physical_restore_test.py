"""Weekly physical restore test, the seeds' "Backup Verification" for the whole cluster
(pgBackRest's users ask for it: pgbackrest#773):

    pgbackrest --stanza=main --pg1-path=/scratch restore   # the newest backup, all the WAL
    pg_ctl -D /scratch -o "-p 54400" start                 # replay to the end of the archive
    pg_amcheck --all -p 54400                               # every database, tables and indexes
    psql -p 54400 -c "<smoke queries>"

RTO is measured from the restore's start until the checks pass; RPO is the age of the last
archived WAL on the primary at test time. Both are checked against the cluster's objectives.
The scratch instance is always removed.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from tasks import checkpoints, checks, pghost, pitr, postgres, reports
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, PermanentError
from tasks.naming import artifact_key, namer
from tasks.physical_restores import (
    check_instance,
    check_target,
    discard_instance,
    name_instance,
    read_catalogue,
    restore_instance,
)
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import ClusterRecord


@task(**checkpoints.OBSERVE)
def archiver_status(env: EnvironmentConfig, cluster: str) -> pitr.ArchiverStatus:
    """`pg_stat_archiver` on the primary, and the WAL file it writes now."""
    cfg = env.cluster(cluster)
    with postgres.connect(pghost.primary(cfg), "postgres") as conn:
        return pitr.ArchiverStatus(**postgres.archiver_status(conn))


@flow(name="physical-restore-test", flow_run_name=namer("physical-restore-test"), **HOOKS)
def physical_restore_test(environment: str, cluster: str) -> dict[str, Any]:
    """Prove the cluster can be recovered: restore the newest pgBackRest backup to a scratch
    instance and replay the WAL archive to its end, run pg_amcheck on every database and the
    smoke queries, check RTO and RPO against the objectives, and remove the scratch instance
    whatever happens. Ends Failed when a check fails.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        cluster: The cluster, as named under `clusters` in the environment.
    """
    env = load_environment(environment)
    cfg = env.cluster(cluster)
    cfg.check_secrets()
    record = ClusterRecord("physical-restore-test", env.name, cluster)
    record.resumed(resume_attempt())
    plan = name_instance(env, cluster, "test", str(flow_run.root_flow_run_id or flow_run.id or "local"))
    try:
        catalogue = read_catalogue(env, cluster)
        newest = catalogue.newest()
        if newest is None:
            raise PermanentError(f"cluster {cluster} has no valid pgBackRest backup to test")
        status = archiver_status(env, cluster)
        record.figures.update(reports.restore_test_figures(newest, catalogue, status))
        record.checks.append(checks.rpo_of_archive(pitr.wal_age(status, plan.started_at), cfg.objectives.rpo))
        clock = time.monotonic()
        restored = restore_instance(env, cluster, plan, None, newest.label)
        record.absorb(restored)
        record.checks.append(check_target(env, cluster, restored["instance"], None))
        record.checks += check_instance(env, cluster, restored["instance"])
        record.timings["rto"] = round(time.monotonic() - clock, 3)
        record.checks.append(checks.rto_met(record.timings["rto"], cfg.objectives.rto))
        record.outcome = "passed" if record.passed else "failed"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        raise
    finally:
        record.figures.update(reports.discarded_figures(discard_instance(env, cluster, plan)))
        reports.publish(reports.cluster(record))
    if not record.passed:
        raise CheckFailed(f"physical restore test of {cluster} in {env.name} failed: {record.failed_checks()}")
    return {"runbook": "physical-restore-test", "environment": env.name, "cluster": cluster, "label": newest.label,
            "rto_seconds": record.timings["rto"], "checks": len(record.checks), "timings": record.timings,
            "artifact": artifact_key("physical-restore-test", env.name, cluster)}


if __name__ == "__main__":
    import sys

    physical_restore_test(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "main")
