"""The DR steps more than one runbook takes: announce to the incident channel, emit a step's
event as it happens, and the time of a step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task

from tasks import checkpoints, kubernetes, notify, prefect_api
from tasks.config import EnvironmentConfig, RepointConfig


@task(**checkpoints.EFFECT)
def announce(env: EnvironmentConfig, announcement: notify.Announcement) -> bool:
    """Post one announcement to the incident channel, once per run (a resumed attempt does not
    post it again). A webhook that fails does not fail the runbook."""
    return notify.announce(env.notify, announcement)


def emit_step(env: EnvironmentConfig, step: str, payload: dict[str, Any]) -> None:
    """A `runbook.dr.<step>` event as the step happens, not only at the end."""
    prefect_api.emit(f"runbook.dr.{step}", f"runbook.dr.{env.name}",
                     {"environment": env.name, **{k: v if isinstance(v, str | int | float | bool) or v is None
                                                  else str(v) for k, v in payload.items()}})


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def repoint_services(env: EnvironmentConfig, rp: RepointConfig, host: str, port: int) -> str:
    """The app's ConfigMap (or Secret) gets the new primary's address, and its Deployments
    restart to pick it up (`kubectl rollout restart`), then roll out."""
    address = {rp.host_key: host, rp.port_key: str(port)}
    with kubernetes.api_client(env.kubernetes) as api:
        changed = kubernetes.set_config_values(api, rp.namespace, rp.kind, rp.name, address)
        for service in rp.services:
            svc = env.service(service)
            kubernetes.restart(api, svc.namespace, svc.deployment, {"runbook-flows/database": f"{host}:{port}"})
        for service in rp.services:
            svc = env.service(service)
            kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return (f"{rp.kind} {rp.name} {'set to' if changed else 'already at'} {host}:{port}; restarted "
            f"{', '.join(rp.services)}")
