"""The seeds' scaling guidelines:

    kubectl scale deployment fleet-api --replicas=5 -n fleet-management
    kubectl rollout restart deployment/fleet-api -n fleet-management
    kubectl autoscale deployment fleet-api --cpu-percent=70 --min=3 --max=10 -n fleet-management
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from tasks import checkpoints, kubernetes, reports
from tasks.config import EnvironmentConfig, check_autoscaler, check_replicas, load_environment
from tasks.naming import namer
from tasks.prefect_api import HOOKS, resume_attempt


@task(**checkpoints.EFFECT)
def scale_deployment(env: EnvironmentConfig, service: str, replicas: int) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        before = kubernetes.read_deployment(api, svc.namespace, svc.deployment)["spec"].get("replicas", 1)
        kubernetes.scale(api, svc.namespace, svc.deployment, replicas)
        status = kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {"replicas before": before, "replicas after": replicas, "status": status.message}


@task(**checkpoints.EFFECT)
def restart_deployment(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.restart(api, svc.namespace, svc.deployment)
        status = kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {"status": status.message}


@task(**checkpoints.EFFECT)
def set_autoscaler(env: EnvironmentConfig, service: str, min_replicas: int, max_replicas: int,
                   cpu_percent: int) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.set_autoscaler(api, svc.namespace, svc.deployment, min_replicas, max_replicas, cpu_percent)
    return {"min": min_replicas, "max": max_replicas, "cpu_percent": cpu_percent}


@flow(name="scale", flow_run_name=namer("scale"), **HOOKS)
def scale(environment: str, service: str, replicas: int) -> dict[str, Any]:
    """Scale a service to a number of replicas and wait until they are available.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        service: The service to scale, as named under `services` in the environment.
        replicas: How many pods, from 0 to 1000.
    """
    env = load_environment(environment)
    env.service(service)
    resume_attempt()
    figures = scale_deployment(env, service, check_replicas(replicas))
    reports.publish(reports.scaling(env.name, service, "scale", figures))
    return figures


@flow(name="restart", flow_run_name=namer("restart"), **HOOKS)
def restart(environment: str, service: str) -> dict[str, Any]:
    """`kubectl rollout restart`: new pods with the same spec, one rollout at a time.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        service: The service to restart, as named under `services` in the environment.
    """
    env = load_environment(environment)
    env.service(service)
    resume_attempt()
    figures = restart_deployment(env, service)
    reports.publish(reports.scaling(env.name, service, "restart", figures))
    return figures


@flow(name="autoscale", flow_run_name=namer("autoscale"), **HOOKS)
def autoscale(environment: str, service: str, min: int, max: int, cpu_percent: int) -> dict[str, Any]:  # noqa: A002
    """Create or update the service's HorizontalPodAutoscaler (`kubectl autoscale`).

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        service: The service to autoscale, as named under `services` in the environment.
        min: The fewest pods, at least 1.
        max: The most pods, at most 1000.
        cpu_percent: The average CPU use to keep, as a percentage of the pods' CPU requests (1 to 1000).
    """
    env = load_environment(environment)
    env.service(service)
    check_autoscaler(min, max, cpu_percent)
    resume_attempt()
    figures = set_autoscaler(env, service, min, max, cpu_percent)
    reports.publish(reports.scaling(env.name, service, "autoscale", figures))
    return figures
