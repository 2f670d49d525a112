"""WAL archive health, every few minutes: the check that keeps a point-in-time recovery
possible between backups ("RPO 1 min" means nothing if archiving stopped an hour ago):

    psql -c "INSERT INTO runbook_heartbeat DEFAULT VALUES"  # a marker, and activity
    psql -c "SELECT pg_switch_wal()"                          # close the segment now
    psql -c "SELECT * FROM pg_stat_archiver"                  # did it reach the archive?
    pgbackrest --stanza=main info                             # what the repository holds

Ends Failed (AT RISK) when the newest archive attempt failed or closed WAL waits longer than
the RPO objective, so that an alert fires long before a restore would find the gap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, task

from tasks import checkpoints, pghost, pitr, postgres, reports
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed
from tasks.naming import artifact_key, namer
from tasks.physical_restores import read_catalogue
from tasks.prefect_api import HOOKS
from tasks.records import ClusterRecord

PROBE_SECONDS = 20.0  # how long a switched segment may take to be archived before the probe reports


@task(**checkpoints.OBSERVE)
def probe_archive(env: EnvironmentConfig, cluster: str) -> dict[str, Any]:
    """Write a heartbeat marker, close the WAL segment, and wait until the archiver either
    archived it or failed on it; then `pg_stat_archiver` as it is."""
    cfg = env.cluster(cluster)
    server = pghost.primary(cfg)
    with postgres.connect(server, cfg.heartbeat_database) as conn:
        marker = postgres.write_heartbeat(conn)
    with postgres.connect(server, "postgres") as conn:
        switched = postgres.switch_wal(conn)
        seconds = postgres.wait_archived(conn, switched, PROBE_SECONDS)
        status = pitr.ArchiverStatus(**postgres.archiver_status(conn))
    return {"marker": marker, "switched": switched, "seconds": seconds, "status": status}


@flow(name="archive-health", flow_run_name=namer("archive-health"), **HOOKS)
def archive_health(environment: str, cluster: str) -> dict[str, Any]:
    """Check that WAL reaches the archive: failed archive attempts, the time since the last
    archived WAL against the RPO objective, and what the repository holds. Ends Failed when
    the RPO objective is at risk.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        cluster: The cluster, as named under `clusters` in the environment.
    """
    env = load_environment(environment)
    cfg = env.cluster(cluster)
    cfg.check_secrets()
    record = ClusterRecord("archive-health", env.name, cluster)
    try:
        probe = probe_archive(env, cluster)
        record.checks += pitr.archive_verdict(probe["status"], now=datetime.now(UTC), rpo=cfg.objectives.rpo)
        record.figures.update(reports.archive_figures(probe, read_catalogue(env, cluster), datetime.now(UTC)))
        record.outcome = "healthy" if record.passed else "at risk"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        raise
    finally:
        reports.publish(reports.cluster(record))
    if not record.passed:
        raise CheckFailed(f"WAL archiving of {cluster} in {env.name} puts the RPO at risk: {record.failed_checks()}")
    return {"runbook": "archive-health", "environment": env.name, "cluster": cluster,
            "figures": {k: str(v) for k, v in record.figures.items()},
            "artifact": artifact_key("archive-health", env.name, cluster)}


if __name__ == "__main__":
    import sys

    archive_health(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "main")
