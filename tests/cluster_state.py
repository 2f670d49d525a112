"""Reading the sandbox cluster from tests, one way everywhere."""

from __future__ import annotations

from typing import Any

from sandbox.cluster import NAMESPACE


def rolled_out(apps: Any, name: str) -> bool:
    """The Deployment's newest generation is observed and all its replicas are updated and available."""
    d = apps.read_namespaced_deployment(name, NAMESPACE)
    s = d.status
    return bool(d.metadata.generation <= (s.observed_generation or 0) and s.updated_replicas == d.spec.replicas
                and (s.available_replicas or 0) == d.spec.replicas and (s.replicas or 0) == d.spec.replicas)


def put_back_pair(sandbox: Any) -> None:
    """The DR pair's original topology (pg-a primary, pg-b streaming), the orders app pointed
    at pg-a and the DR site at 0, however a DR test left them."""
    from sandbox import replication
    from tasks import kubernetes
    from tasks.config import load_environment

    replication.reset(sandbox)
    env = load_environment("sandbox")
    rp = env.dr_pair().repoint
    node = env.dr_pair().node("pg-a")
    with kubernetes.api_client(env.kubernetes) as api:
        if kubernetes.set_config_values(api, rp.namespace, rp.kind, rp.name,
                                        {rp.host_key: node.host, rp.port_key: str(node.port)}):
            for service in rp.services:
                svc = env.service(service)
                kubernetes.restart(api, svc.namespace, svc.deployment, {"runbook-flows/database": "reset"})
                kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, 60)
        for name in env.dr_pair().dr_site.deployments:
            kubernetes.scale(api, env.dr_pair().dr_site.namespace, name, 0)


def latest_report(key: str) -> str:
    """The newest version of a run's report artifact, by its key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                 sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return str(found[0].data)
