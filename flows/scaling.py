"""The seeds' scaling guidelines:

    kubectl scale deployment fleet-api --replicas=5 -n fleet-management
    kubectl rollout restart deployment/fleet-api -n fleet-management
    kubectl autoscale deployment fleet-api --cpu-percent=70 --min=3 --max=10 -n fleet-management
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from tasks import kubernetes
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import ConfigError
from tasks.prefect_api import artifact_key, emit, md_table, publish_report


def _report(env: EnvironmentConfig, service: str, action: str, figures: dict[str, Any]) -> None:
    publish_report(artifact_key(action, env.name, service),
                   f"# {action.capitalize()} of `{service}` in `{env.name}`: DONE\n\n"
                   + md_table([{"figure": k, "value": v} for k, v in figures.items()]),
                   f"{action} of {service} in {env.name}")
    emit(f"runbook.{action}.succeeded", f"runbook.service.{env.name}.{service}",
         {"environment": env.name, "service": service, **figures})


@task
def scale_deployment(env: EnvironmentConfig, service: str, replicas: int) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        before = kubernetes.read_deployment(api, svc.namespace, svc.deployment)["spec"].get("replicas", 1)
        kubernetes.scale(api, svc.namespace, svc.deployment, replicas)
        status = kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {"replicas before": before, "replicas after": replicas, "status": status.message}


@task
def restart_deployment(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.restart(api, svc.namespace, svc.deployment)
        status = kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {"status": status.message}


@task
def set_autoscaler(env: EnvironmentConfig, service: str, min_replicas: int, max_replicas: int,
                   cpu_percent: int) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.set_autoscaler(api, svc.namespace, svc.deployment, min_replicas, max_replicas, cpu_percent)
    return {"min": min_replicas, "max": max_replicas, "cpu_percent": cpu_percent}


@flow(name="scale")
def scale(environment: str, service: str, replicas: int) -> dict[str, Any]:
    """Scale a service to `replicas` and wait until they are available."""
    env = load_environment(environment)
    env.service(service)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
        raise ConfigError(f"replicas {replicas!r} must be a whole number from 0 to 1000")
    figures = scale_deployment(env, service, replicas)
    _report(env, service, "scale", figures)
    return figures


@flow(name="restart")
def restart(environment: str, service: str) -> dict[str, Any]:
    """`kubectl rollout restart`: new pods with the same spec, one rollout at a time."""
    env = load_environment(environment)
    env.service(service)
    figures = restart_deployment(env, service)
    _report(env, service, "restart", figures)
    return figures


@flow(name="autoscale")
def autoscale(environment: str, service: str, min: int, max: int, cpu_percent: int) -> dict[str, Any]:  # noqa: A002
    """Create or update the service's HorizontalPodAutoscaler."""
    env = load_environment(environment)
    env.service(service)
    if not (1 <= min <= max <= 1000):
        raise ConfigError(f"min {min!r} and max {max!r} must satisfy 1 <= min <= max <= 1000")
    if not (1 <= cpu_percent <= 100):
        raise ConfigError(f"cpu_percent {cpu_percent!r} must be from 1 to 100")
    figures = set_autoscaler(env, service, min, max, cpu_percent)
    _report(env, service, "autoscale", figures)
    return figures
