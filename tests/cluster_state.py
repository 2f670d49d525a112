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
