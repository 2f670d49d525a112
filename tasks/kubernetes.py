"""Kubernetes: what `kubectl set image / rollout status / rollout undo / scale / rollout
restart / autoscale` do, through the official Python client, plus blue-green (colour
Deployments, the live Service's selector or an Ingress's backend) and one-off Jobs.

Every function takes an `ApiClient` from `api_client(cfg)` and returns plain dicts (the
API's JSON). The decisions (is the rollout done, which revision does undo go back to)
are the pure functions of `tasks.rollout`; this module only reads, writes and waits.

Errors, by what the caller does about them:

- `TransientError`: HTTP 5xx, 429, a 409 conflict left after a few re-reads, or the API
  could not be reached, once the client's own retries (`RETRY`) are spent. A retry of the
  Prefect task may still cure it.
- `PermanentError`: any other HTTP 4xx (403 refused, 404 missing, 422 invalid), a
  paused Deployment, no rollout history. The message names the kind, namespace and name.
- `ConfigError`: the kubeconfig does not load, or a container named in config is not in
  the Deployment. Raised before anything changes.
- `CheckFailed`: a rollout exceeded its progress deadline or did not finish in time; the
  message says why the new pods fail (`rollout.pod_failures`).

Retries happen at two depths: every request through the client's urllib3 `RETRY` (resets,
429, 5xx, Retry-After honoured; never a POST), and a read-modify-replace read again after
a 409 conflict, which is how the API asks clients to resolve them.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from tasks import rollout
from tasks.config import K8S_NAME_RE, KubernetesConfig, ServiceConfig, check_autoscaler, check_replicas
from tasks.errors import CheckFailed, ConfigError, PermanentError, RunbookError, TransientError
from tasks.rollout import RolloutStatus

# The client sets no timeout by default: a half-open connection would hang a runbook
# forever. (connect, read) seconds for each request.
REQUEST_TIMEOUT = (10.0, 60.0)
# Every request is retried on what a retry can cure, as client-go does: a reset or refused
# connection, 429 and 5xx (Retry-After honoured), with exponential backoff and jitter.
# Not POST: a create the server applied before the error would then fail as AlreadyExists.
RETRY = urllib3.util.Retry(
    total=5, backoff_factor=0.25, backoff_max=8.0, backoff_jitter=0.25,
    status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"}),
    respect_retry_after_header=True, raise_on_status=False,  # the last answer becomes the ApiException
)
# Re-reads after a 409 conflict on a read-modify-replace before giving up as transient.
CONFLICT_ATTEMPTS = 5
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
JOB_CONTAINER = "job"
MANAGED_BY = {"app.kubernetes.io/managed-by": "runbook-flows"}
# A Job's activeDeadlineSeconds is our timeout plus this: the cluster stops it only if this
# process died waiting. Kubernetes times start in whole seconds, so a deadline equal to our
# timeout could fire first and delete the pods whose state we report.
JOB_DEADLINE_GRACE_S = 30
# Shown in a CheckFailed message; the rest are counted.
FAILURES_SHOWN = 5
# Between two reads of an object being waited on (a rollout, a scale to 0, a Job).
POLL_SECONDS = 0.5

T = TypeVar("T")
Obj = dict[str, Any]


# --- client --------------------------------------------------------------------------------


@contextmanager
def api_client(cfg: KubernetesConfig | None) -> Iterator[client.ApiClient]:
    """An API client for `cfg`, closed on exit: its kubeconfig and context; with neither
    set, the pod's service account when running in a cluster, else ~/.kube/config."""
    if cfg is None:
        raise ConfigError("the environment has no 'kubernetes' section (kubeconfig, context)")
    configuration = client.Configuration()
    configuration.retries = RETRY
    try:
        if cfg.kubeconfig is None and cfg.context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)
            api = client.ApiClient(configuration)
        else:
            api = kube_config.new_client_from_config(
                config_file=cfg.kubeconfig,
                context=cfg.context,
                persist_config=False,
                client_configuration=configuration,
            )
    except (ConfigException, OSError, yaml.YAMLError) as exc:
        where = f"kubeconfig {cfg.kubeconfig!r}" if cfg.kubeconfig else "the default kubeconfig"
        context = f", context {cfg.context!r}" if cfg.context else ""
        raise ConfigError(f"cannot load {where}{context}: {exc}") from None
    try:
        yield api
    finally:
        api.close()


# --- errors --------------------------------------------------------------------------------


def _server_message(exc: ApiException) -> str:
    """The `message` of the Status object the API server sends with an error."""
    if not exc.body:
        return ""
    try:
        body = json.loads(exc.body)
    except ValueError:
        return str(exc.body)[:300]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def api_error(exc: ApiException, action: str, kind: str, namespace: str, name: str) -> RunbookError:
    """The project's error for an API error, by HTTP status: 5xx, 429 and 409 may pass
    with time (TransientError); any other 4xx will not (PermanentError)."""
    status = exc.status or 0
    reason = f" {exc.reason}" if exc.reason else ""
    detail = _server_message(exc)
    text = f"{action} {kind} {name!r} in namespace {namespace!r}: HTTP {status}{reason}"
    if detail:
        text += f": {detail}"
    if status >= 500 or status in (409, 429):
        return TransientError(text)
    return PermanentError(text)


@contextmanager
def _calling(action: str, kind: str, namespace: str, name: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise api_error(exc, action, kind, namespace, name) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise TransientError(
            f"{action} {kind} {name!r} in namespace {namespace!r}: cannot reach the Kubernetes API: {exc}"
        ) from exc


def _retrying_conflicts(step: Callable[[], T]) -> T:
    """Run a read-modify-replace `step` again after a 409 conflict, a few times."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return step()
        except ApiException as exc:
            if exc.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _is_not_found(exc: ApiException) -> bool:
    return exc.status == 404


def _plain(api: client.ApiClient, obj: Any) -> Obj:
    return api.sanitize_for_serialization(obj)


# --- Deployments: read -----------------------------------------------------------------------


def read_deployment(api: client.ApiClient, namespace: str, name: str) -> Obj:
    """The Deployment as the API's JSON."""
    with _calling("read", "Deployment", namespace, name):
        dep = client.AppsV1Api(api).read_namespaced_deployment(
            name, namespace, _request_timeout=REQUEST_TIMEOUT
        )
    return _plain(api, dep)


def _containers(dep_or_template: Mapping[str, Any]) -> list[Obj]:
    template = (dep_or_template.get("spec") or {}).get("template", dep_or_template)
    return list(((template.get("spec") or {}).get("containers")) or [])


def container_images(dep_or_template: Mapping[str, Any]) -> dict[str, str]:
    """Each container's image, by container name."""
    return {str(c.get("name")): str(c.get("image", "")) for c in _containers(dep_or_template)}


def _container(obj: Mapping[str, Any], container: str, what: str) -> Obj:
    containers = _containers(obj)
    found = next((c for c in containers if c.get("name") == container), None)
    if found is None:
        known = ", ".join(str(c.get("name")) for c in containers) or "(none)"
        raise ConfigError(f"container {container!r} is not in {what}; containers: {known}")
    return found


def _describe(dep: Mapping[str, Any]) -> str:
    meta = dep.get("metadata") or {}
    return f"Deployment {meta.get('name')!r} in namespace {meta.get('namespace')!r}"


def container_image(dep: Mapping[str, Any], container: str) -> str:
    """The image of `container` in the Deployment's pod template."""
    return str(_container(dep, container, _describe(dep)).get("image", ""))


def current_revision(dep: Mapping[str, Any]) -> int | None:
    """The Deployment's revision (`deployment.kubernetes.io/revision`); None before the
    controller has numbered it."""
    return rollout.revision(dep)


def _controlled_replica_sets(api: client.ApiClient, namespace: str, dep: Mapping[str, Any]) -> list[Obj]:
    """The Deployment's ReplicaSets: matched by its selector, then by controller uid."""
    name = dep["metadata"]["name"]
    selector = rollout.label_selector(dep["spec"].get("selector"))
    with _calling("list ReplicaSets of", "Deployment", namespace, name):
        listed = client.AppsV1Api(api).list_namespaced_replica_set(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        )
    items = [_plain(api, rs) for rs in listed.items]
    return rollout.controlled_by(items, dep["metadata"]["uid"])


def _controlled_pods(api: client.ApiClient, namespace: str, owner: Mapping[str, Any], kind: str) -> list[Obj]:
    name = owner["metadata"]["name"]
    selector = rollout.label_selector(owner["spec"].get("selector"))
    with _calling("list pods of", kind, namespace, name):
        listed = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        )
    return rollout.controlled_by([_plain(api, p) for p in listed.items], owner["metadata"]["uid"])


def _new_pod_failures(api: client.ApiClient, namespace: str, dep: Mapping[str, Any]) -> list[str]:
    new_rs = rollout.new_replica_set(dep, _controlled_replica_sets(api, namespace, dep))
    if new_rs is None:
        return []
    return rollout.pod_failures(_controlled_pods(api, namespace, new_rs, "ReplicaSet"))


def _summary(failures: list[str]) -> str:
    if not failures:
        return "no failing pods seen"
    shown = "; ".join(failures[:FAILURES_SHOWN])
    more = len(failures) - FAILURES_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _new_pods_summary(api: client.ApiClient, namespace: str, dep: Mapping[str, Any]) -> str:
    """For a CheckFailed message: an error listing the pods must not hide the failed check."""
    try:
        return _summary(_new_pod_failures(api, namespace, dep))
    except (TransientError, PermanentError) as exc:
        return f"cannot list them: {exc}"


# --- Deployments: change -----------------------------------------------------------------------


def patch_container_image(
    api: client.ApiClient, namespace: str, name: str, container: str, image: str
) -> Obj:
    """`kubectl set image`: a strategic merge patch of one container's image; the other
    containers are untouched. Returns the patched Deployment."""
    # A strategic merge patch for a container name that is not there would add one.
    current = read_deployment(api, namespace, name)
    if container_image(current, container) == image:  # already set: a replay changes nothing
        return current
    patch = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
    with _calling("set the image of", "Deployment", namespace, name):
        dep = client.AppsV1Api(api).patch_namespaced_deployment(
            name,
            namespace,
            patch,
            _content_type="application/strategic-merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
    return _plain(api, dep)


def _wait(
    api: client.ApiClient,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float,
    on_poll: Callable[[RolloutStatus], None] | None,
) -> tuple[RolloutStatus, Obj]:
    deadline = time.monotonic() + timeout_s
    while True:
        dep = read_deployment(api, namespace, name)
        status = rollout.rollout_status(dep)
        if on_poll is not None:
            on_poll(status)
        if status.done:
            return status, dep
        if status.failed:
            cond = rollout.progress_condition(dep) or {}
            raise CheckFailed(
                f"{status.message}, in namespace {namespace!r} ({cond.get('reason')}: {cond.get('message', '')}); "
                f"new pods: {_new_pods_summary(api, namespace, dep)}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            paused = " The Deployment is paused." if (dep.get("spec") or {}).get("paused") else ""
            raise CheckFailed(
                f'deployment "{name}" in namespace {namespace!r} did not finish rolling out within '
                f"{timeout_s:g}s: {status.message}{paused} New pods: {_new_pods_summary(api, namespace, dep)}"
            )
        time.sleep(min(poll_s, left))


def wait_for_rollout(
    api: client.ApiClient,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float = POLL_SECONDS,
    on_poll: Callable[[RolloutStatus], None] | None = None,
) -> RolloutStatus:
    """`kubectl rollout status`: poll until the rollout is done. Raises CheckFailed when the
    Deployment's progress deadline passes (ProgressDeadlineExceeded) or after `timeout_s`,
    naming why the new pods fail. `on_poll` sees each status, for progress reports."""
    return _wait(api, namespace, name, timeout_s, poll_s, on_poll)[0]


def undo_rollout(
    api: client.ApiClient,
    namespace: str,
    name: str,
    to_revision: int | None = None,
    *,
    container: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """`kubectl rollout undo [--to-revision N]`: put the pod template of an earlier
    revision back (the previous one by default). Returns what it did: `from_revision`,
    `to_revision`, `image` (of `container`, default the first) and `images`; `skipped` when
    the Deployment already runs that template, as kubectl skips it. `dry_run` only says
    what it would do (`kubectl rollout undo --dry-run`)."""
    dep = read_deployment(api, namespace, name)
    if (dep.get("spec") or {}).get("paused"):
        raise PermanentError(
            f"cannot undo {_describe(dep)}: it is paused; resume it first (kubectl rollout resume)"
        )
    current = current_revision(dep)
    target = rollout.pick_undo_target(
        _controlled_replica_sets(api, namespace, dep), to_revision, current, name=name
    )
    template = target["spec"]["template"]
    images = container_images(template)
    what = f"revision {rollout.revision(target)} of {_describe(dep)}"
    if container:
        image = str(_container(template, container, what).get("image", ""))
    else:
        image = next(iter(images.values()), "")
    info: dict[str, Any] = {
        "deployment": name,
        "from_revision": current,
        "to_revision": rollout.revision(target),
        "image": image,
        "images": images,
        "skipped": rollout.same_template(template, dep["spec"]["template"]),
    }
    if info["skipped"] or dry_run:
        return info
    with _calling("undo the rollout of", "Deployment", namespace, name):
        client.AppsV1Api(api).patch_namespaced_deployment(
            name,
            namespace,
            rollout.undo_patch(target, dep),
            _content_type="application/json-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
    return info


def scale(api: client.ApiClient, namespace: str, name: str, replicas: int) -> int:
    """`kubectl scale --replicas`: through the scale subresource. Returns the replicas
    before, read in the same step as the change."""
    check_replicas(replicas)
    apps = client.AppsV1Api(api)

    def step() -> int:
        current = apps.read_namespaced_deployment_scale(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        body = _plain(api, current)
        before = int((body.get("spec") or {}).get("replicas") or 0)
        body.setdefault("spec", {})["replicas"] = replicas
        apps.replace_namespaced_deployment_scale(name, namespace, body, _request_timeout=REQUEST_TIMEOUT)
        return before

    with _calling("scale", "Deployment", namespace, name):
        return _retrying_conflicts(step)


def wait_scaled_down(
    api: client.ApiClient, namespace: str, name: str, timeout_s: float, poll_s: float = POLL_SECONDS
) -> None:
    """Until the Deployment, scaled to 0, has no pod left (`rollout.scaled_down`)."""
    deadline = time.monotonic() + timeout_s
    while not rollout.scaled_down(read_deployment(api, namespace, name)):
        if time.monotonic() > deadline:
            raise CheckFailed(f"Deployment {name!r} in namespace {namespace!r} still has pods "
                              f"{timeout_s:g}s after scaling to 0")
        time.sleep(poll_s)


def restart(api: client.ApiClient, namespace: str, name: str, annotations: Mapping[str, str] | None = None) -> str:
    """`kubectl rollout restart`: stamp the pod template with the time, so every pod is
    replaced by a rolling update. `annotations` go on the template too (a failover names the
    database the new pods connect to, so two restarts in one second still differ). Returns
    the stamp (RFC 3339)."""
    dep = read_deployment(api, namespace, name)
    if (dep.get("spec") or {}).get("paused"):
        raise PermanentError(f"cannot restart {_describe(dep)}: it is paused; resume it first")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now, **(annotations or {})}}}}}
    with _calling("restart", "Deployment", namespace, name):
        client.AppsV1Api(api).patch_namespaced_deployment(
            name,
            namespace,
            patch,
            _content_type="application/strategic-merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
    return now


def set_autoscaler(
    api: client.ApiClient, namespace: str, name: str, min_replicas: int, max_replicas: int, cpu_percent: int
) -> Obj:
    """`kubectl autoscale`: an autoscaling/v2 HorizontalPodAutoscaler named like the
    Deployment, targeting its average CPU utilisation; created, or replaced if it exists."""
    check_autoscaler(min_replicas, max_replicas, cpu_percent)
    read_deployment(api, namespace, name)  # an autoscaler for a missing Deployment is a typo
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu_percent},
                },
            }
        ],
    }
    hpas = client.AutoscalingV2Api(api)

    def step() -> Obj:
        try:
            current = _plain(
                api,
                hpas.read_namespaced_horizontal_pod_autoscaler(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except ApiException as exc:
            if not _is_not_found(exc):
                raise
            body = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
                "spec": spec,
            }
            created = hpas.create_namespaced_horizontal_pod_autoscaler(
                namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
            return _plain(api, created)
        current["spec"] = spec
        current.pop("status", None)
        replaced = hpas.replace_namespaced_horizontal_pod_autoscaler(
            name, namespace, current, _request_timeout=REQUEST_TIMEOUT
        )
        return _plain(api, replaced)

    with _calling("set the autoscaler of", "HorizontalPodAutoscaler", namespace, name):
        return _retrying_conflicts(step)


# --- blue-green ----------------------------------------------------------------------------------


def _colour_copy(
    base: Mapping[str, Any], colour: str, image: str, container: str, replicas: int, name: str | None = None
) -> Obj:
    name = name or f"{base['metadata']['name']}-{colour}"
    spec = copy.deepcopy(dict(base["spec"]))
    spec["replicas"] = replicas
    spec.pop("paused", None)
    spec["selector"] = copy.deepcopy(spec.get("selector") or {})
    spec["selector"]["matchLabels"] = {**(spec["selector"].get("matchLabels") or {}), rollout.COLOUR_LABEL: colour}
    meta = spec["template"].setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), rollout.COLOUR_LABEL: colour}
    _container(spec["template"], container, _describe(base))["image"] = image
    base_meta = base["metadata"]
    annotations = {
        k: v
        for k, v in (base_meta.get("annotations") or {}).items()
        if k not in rollout.UNDO_SKIPPED_ANNOTATIONS
    }
    metadata: Obj = {
        "name": name,
        "namespace": base_meta["namespace"],
        "labels": {**(base_meta.get("labels") or {}), rollout.COLOUR_LABEL: colour},
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def ensure_colour_deployment(
    api: client.ApiClient,
    namespace: str,
    base_name: str,
    colour: str,
    image: str,
    container: str,
    replicas: int,
    template_from: str | None = None,
) -> Obj:
    """The `<base>-<colour>` Deployment: a copy of the base Deployment (or of `template_from`,
    e.g. the live colour's Deployment) with the label `colour: <colour>` in its selector and
    pod template, `container` running `image` and `replicas` replicas. Created, or its
    template and replicas updated if it exists. Returns it as written (wait with `wait_available`)."""
    if not K8S_NAME_RE.match(colour):
        raise ConfigError(f"colour {colour!r} is not a label value: lower-case letters, digits and '-'")
    desired = _colour_copy(
        read_deployment(api, namespace, template_from or base_name),
        colour,
        image,
        container,
        replicas,
        name=f"{base_name}-{colour}",
    )
    name = desired["metadata"]["name"]
    apps = client.AppsV1Api(api)

    def step() -> Obj:
        try:
            current = _plain(
                api, apps.read_namespaced_deployment(name, namespace, _request_timeout=REQUEST_TIMEOUT)
            )
        except ApiException as exc:
            if not _is_not_found(exc):
                raise
            return _plain(
                api, apps.create_namespaced_deployment(namespace, desired, _request_timeout=REQUEST_TIMEOUT)
            )
        if current["spec"].get("selector") != desired["spec"]["selector"]:
            raise PermanentError(
                f"Deployment {name!r} in namespace {namespace!r} exists with selector "
                f"{current['spec'].get('selector')}, not {desired['spec']['selector']}; a selector cannot "
                "change: delete it or pick another colour"
            )
        current["spec"]["template"] = desired["spec"]["template"]
        current["spec"]["replicas"] = replicas
        current["metadata"]["labels"] = {**(current["metadata"].get("labels") or {}), rollout.COLOUR_LABEL: colour}
        current.pop("status", None)
        return _plain(
            api,
            apps.replace_namespaced_deployment(name, namespace, current, _request_timeout=REQUEST_TIMEOUT),
        )

    with _calling("create or update", "Deployment", namespace, name):
        return _retrying_conflicts(step)


def wait_available(
    api: client.ApiClient, namespace: str, name: str, timeout_s: float, poll_s: float = POLL_SECONDS
) -> Obj:
    """Wait until every replica of the Deployment's current template is available (the
    rule of `wait_for_rollout`); returns the Deployment. Raises CheckFailed like it."""
    return _wait(api, namespace, name, timeout_s, poll_s, None)[1]


def service_selector(api: client.ApiClient, namespace: str, service: str) -> dict[str, str]:
    """The Service's pod selector."""
    with _calling("read", "Service", namespace, service):
        svc = client.CoreV1Api(api).read_namespaced_service(
            service, namespace, _request_timeout=REQUEST_TIMEOUT
        )
    return dict((_plain(api, svc).get("spec") or {}).get("selector") or {})


def set_service_selector(
    api: client.ApiClient, namespace: str, service: str, selector: dict[str, str]
) -> dict[str, Any]:
    """Point the Service at other pods: its selector becomes exactly `selector` (keys not
    in it are dropped). Returns `{"previous": <the selector before>}`, read in the same step."""
    if not selector:
        raise ConfigError(f"an empty selector would detach Service {service!r} from every pod")
    core = client.CoreV1Api(api)

    def step() -> dict[str, str]:
        svc = _plain(api, core.read_namespaced_service(service, namespace, _request_timeout=REQUEST_TIMEOUT))
        previous = dict(svc["spec"].get("selector") or {})
        svc["spec"]["selector"] = dict(selector)
        svc.pop("status", None)
        core.replace_namespaced_service(service, namespace, svc, _request_timeout=REQUEST_TIMEOUT)
        return previous

    with _calling("switch the selector of", "Service", namespace, service):
        return {"previous": _retrying_conflicts(step)}


def live_deployment(api: client.ApiClient, svc: ServiceConfig) -> str:
    """The Deployment serving the service's traffic: its own, or for blue-green the colour
    that the live Service selects, or that the Ingress routes to (`<deployment>-<colour>`)."""
    bg = svc.blue_green
    if bg is None:
        return svc.deployment
    if bg.ingress:
        backend = ingress_backend(api, svc.namespace, bg.ingress)
        colour = rollout.colour_of(bg.service, backend)
        if not colour:
            raise ConfigError(f"Ingress {bg.ingress!r} in {svc.namespace!r} routes to Service {backend!r}, "
                              f"not to a colour Service '{bg.service}-<colour>': blue-green needs one")
    else:
        colour = rollout.selected_colour(service_selector(api, svc.namespace, bg.service))
        if not colour:
            raise ConfigError(f"Service {bg.service!r} in {svc.namespace!r} selects no "
                              f"'{rollout.COLOUR_LABEL}' label: blue-green needs one")
    return rollout.colour_name(svc.deployment, colour)


def live_image(api: client.ApiClient, svc: ServiceConfig) -> str:
    """The image the service's container runs now, in its live Deployment (either colour)."""
    dep = read_deployment(api, svc.namespace, live_deployment(api, svc))
    return container_image(dep, svc.container)


def read_ingress(api: client.ApiClient, namespace: str, name: str) -> Obj:
    with _calling("read", "Ingress", namespace, name):
        ing = client.NetworkingV1Api(api).read_namespaced_ingress(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    return _plain(api, ing)


def ingress_backend(api: client.ApiClient, namespace: str, name: str) -> str:
    """The Service the Ingress routes to (`rollout.ingress_backend`)."""
    return _backend_of(read_ingress(api, namespace, name), namespace, name)


def _rewrite_ingress(api: client.ApiClient, namespace: str, name: str, action: str,
                     edit: Callable[[Obj], tuple[Obj | None, T]]) -> T:
    """Read the Ingress, let `edit` return the Ingress to write (None: nothing to write) and
    what to answer, and replace it; again from the read on a conflict."""
    net = client.NetworkingV1Api(api)

    def step() -> T:
        ing = _plain(api, net.read_namespaced_ingress(name, namespace, _request_timeout=REQUEST_TIMEOUT))
        changed, answer = edit(ing)
        if changed is not None:
            changed.pop("status", None)
            net.replace_namespaced_ingress(name, namespace, changed, _request_timeout=REQUEST_TIMEOUT)
        return answer

    with _calling(action, "Ingress", namespace, name):
        return _retrying_conflicts(step)


def _backend_of(ing: Obj, namespace: str, name: str) -> str:
    backend = rollout.ingress_backend(ing)
    if backend is None:
        raise ConfigError(f"Ingress {name!r} in namespace {namespace!r} has no service backend")
    return backend


def set_ingress_backend(api: client.ApiClient, namespace: str, name: str, service: str) -> dict[str, Any]:
    """`kubectl apply -f ingress-green.yaml`: every backend of the Ingress that names the
    Service it routes to now names `service` instead. Returns `{"previous": <that Service>}`,
    read in the same step."""

    def edit(ing: Obj) -> tuple[Obj, dict[str, Any]]:
        previous = _backend_of(ing, namespace, name)
        return rollout.with_backend(ing, previous, service), {"previous": previous}

    return _rewrite_ingress(api, namespace, name, "switch the backend of", edit)


# Where an Ingress in maintenance mode keeps the backend it had, and who switched it: what
# lets any later run, also after the one that switched it died, put it back.
MAINTENANCE_ANNOTATION = "runbook.dev/maintenance"


def _maintenance_mark(ing: Obj) -> dict[str, Any] | None:
    raw = (ing.get("metadata", {}).get("annotations") or {}).get(MAINTENANCE_ANNOTATION)
    return json.loads(raw) if raw else None


def maintenance_mode(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """What the Ingress's maintenance annotation says (`backend`, `run`, `since`), or None: off."""
    return _maintenance_mark(read_ingress(api, namespace, name))


def maintenance_on(api: client.ApiClient, namespace: str, name: str, page_service: str, run: str,
                   since: str) -> dict[str, Any]:
    """Route the Ingress to the maintenance page's Service, remembering its backend in the
    annotation, in one write. Already on: changes nothing and returns what the annotation says."""

    def edit(ing: Obj) -> tuple[Obj | None, dict[str, Any]]:
        found = _maintenance_mark(ing)
        if found is not None:
            return None, {**found, "already": True}
        backend = _backend_of(ing, namespace, name)
        mark = {"backend": backend, "run": run, "since": since}
        switched = rollout.with_backend(ing, backend, page_service)
        meta = switched.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), MAINTENANCE_ANNOTATION: json.dumps(mark)}
        return switched, {**mark, "already": False}

    return _rewrite_ingress(api, namespace, name, "turn maintenance mode on for", edit)


def maintenance_off(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """Route the Ingress back to the backend its annotation remembers and drop the annotation,
    in one write. Already off: None, nothing changed."""

    def edit(ing: Obj) -> tuple[Obj | None, dict[str, Any] | None]:
        mark = _maintenance_mark(ing)
        if mark is None:
            return None, None
        current = rollout.ingress_backend(ing)
        restored = rollout.with_backend(ing, current, mark["backend"]) if current else ing
        meta = restored.setdefault("metadata", {})
        meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                               if k != MAINTENANCE_ANNOTATION}
        return restored, mark

    return _rewrite_ingress(api, namespace, name, "turn maintenance mode off for", edit)


def ensure_colour_service(api: client.ApiClient, namespace: str, base: str, colour: str, like: str) -> Obj:
    """The Service `<base>-<colour>` that an Ingress switches to: created, when missing, as a
    copy of Service `like` (the live colour's) selecting `colour` (`kubectl apply -f
    kubernetes/green/`). An existing one is left as it is, unless it selects another colour."""
    name = rollout.colour_name(base, colour)
    core = client.CoreV1Api(api)
    with _calling("read", "Service", namespace, name):
        try:
            existing = _plain(api, core.read_namespaced_service(name, namespace, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as exc:
            if not _is_not_found(exc):
                raise
            existing = None
    if existing is not None:
        selected = rollout.selected_colour((existing.get("spec") or {}).get("selector") or {})
        if selected != colour:
            raise PermanentError(f"Service {name!r} in namespace {namespace!r} selects colour {selected!r}, "
                                 f"not {colour!r}: fix its selector or delete it")
        return existing
    with _calling("read", "Service", namespace, like):
        template = _plain(api, core.read_namespaced_service(like, namespace, _request_timeout=REQUEST_TIMEOUT))
    spec = template.get("spec") or {}
    body = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**((template.get("metadata") or {}).get("labels") or {}), **MANAGED_BY}},
        "spec": {"selector": {**(spec.get("selector") or {}), rollout.COLOUR_LABEL: colour},
                 "ports": spec.get("ports") or [], "type": spec.get("type") or "ClusterIP"},
    }
    with _calling("create", "Service", namespace, name):
        return _plain(api, core.create_namespaced_service(namespace, body, _request_timeout=REQUEST_TIMEOUT))


def _live_selector(api: client.ApiClient, svc: ServiceConfig, live: str) -> dict[str, str]:
    """The selector of the Service that serves the live colour."""
    bg = svc.blue_green
    assert bg is not None
    name = rollout.colour_name(bg.service, live) if bg.ingress else bg.service
    return service_selector(api, svc.namespace, name)


def point_preview(api: client.ApiClient, svc: ServiceConfig, colour: str, live: str) -> dict[str, Any]:
    """The preview Service selects the new colour, for the pre-promotion analysis."""
    bg = svc.blue_green
    assert bg is not None and bg.preview_service is not None
    selector = {**_live_selector(api, svc, live), rollout.COLOUR_LABEL: colour}
    return set_service_selector(api, svc.namespace, bg.preview_service, selector)


def route_to_colour(api: client.ApiClient, svc: ServiceConfig, colour: str, live: str) -> dict[str, Any]:
    """Send the service's traffic to `colour`: the live Service selects it, or the Ingress
    routes to its Service (made from the live colour's when missing). Returns
    `{"previous": <the selector, or the Ingress's Service, before>}` for `route_back`."""
    bg = svc.blue_green
    assert bg is not None
    if bg.ingress:
        ensure_colour_service(api, svc.namespace, bg.service, colour, like=rollout.colour_name(bg.service, live))
        target = rollout.colour_name(bg.service, colour)
        result = set_ingress_backend(api, svc.namespace, bg.ingress, target)
        if result["previous"] == target:  # a replay after a crash: before it, traffic went to the live colour
            result["previous"] = rollout.colour_name(bg.service, live)
        return result
    selector = {**_live_selector(api, svc, live), rollout.COLOUR_LABEL: colour}
    result = set_service_selector(api, svc.namespace, bg.service, selector)
    if result["previous"] == selector:  # a replay: the live colour's selector is the one to go back to
        previous = {k: v for k, v in selector.items() if k != rollout.COLOUR_LABEL}
        result["previous"] = {**previous, rollout.COLOUR_LABEL: live} if live else previous
    return result


def route_back(api: client.ApiClient, svc: ServiceConfig, previous: Any) -> None:
    """Undo of `route_to_colour`: traffic goes where it went before."""
    bg = svc.blue_green
    assert bg is not None
    if bg.ingress:
        set_ingress_backend(api, svc.namespace, bg.ingress, previous)
    else:
        set_service_selector(api, svc.namespace, bg.service, previous)


# --- Jobs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    succeeded: bool
    exit_code: int | None
    logs: str
    reason: str | None = None  # the Complete/Failed condition's: BackoffLimitExceeded, DeadlineExceeded...


def _finished(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next(
        (c for c in conditions if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"), None
    )


def _exit_code(pod: Mapping[str, Any]) -> int | None:
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        if c.get("name") == JOB_CONTAINER:
            terminated = (c.get("state") or {}).get("terminated") or {}
            return terminated.get("exitCode")
    return None


def _pod_logs(api: client.ApiClient, namespace: str, pod: Mapping[str, Any]) -> str:
    name = pod["metadata"]["name"]
    with _calling("read the log of", "Pod", namespace, name):
        try:
            return str(
                client.CoreV1Api(api).read_namespaced_pod_log(
                    name, namespace, container=JOB_CONTAINER, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 400:  # the container never started (image pull failure): no log
                return ""
            raise


def run_job(
    api: client.ApiClient,
    namespace: str,
    name: str,
    image: str,
    command: list[str],
    timeout_s: float,
    poll_s: float = POLL_SECONDS,
) -> JobResult:
    """Run `command` in `image` once as a Job (no retries: backoffLimit 0), wait until it is
    Complete or Failed, and return its pod's exit code and log. The Job is deleted
    afterwards, its pods with it, whatever happened. Raises CheckFailed, with why its pod
    is stuck and its log, if it has not finished after `timeout_s` (should this process die
    waiting, the Job's activeDeadlineSeconds stops it a little later)."""
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(timeout_s) + JOB_DEADLINE_GRACE_S,
            "template": {
                "metadata": {"labels": dict(MANAGED_BY)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": JOB_CONTAINER, "image": image, "command": list(command)}],
                },
            },
        },
    }
    batch = client.BatchV1Api(api)
    with _calling("create", "Job", namespace, name):
        try:
            job = _plain(api, batch.create_namespaced_job(namespace, body, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as exc:
            if exc.status != 409:
                raise
            # The name is the flow run's: an earlier attempt of this run started it. Wait for
            # that Job rather than running the command twice.
            job = _plain(api, batch.read_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT))
    try:
        result = _wait_for_job(api, namespace, job, timeout_s, poll_s)
    except BaseException as exc:
        try:
            _delete_job(api, namespace, name)
        except RunbookError as cleanup:
            exc.add_note(f"and then: {cleanup}")
        raise
    _delete_job(api, namespace, name)
    return result


def _wait_for_job(
    api: client.ApiClient, namespace: str, job: Obj, timeout_s: float, poll_s: float
) -> JobResult:
    name = job["metadata"]["name"]
    batch = client.BatchV1Api(api)
    deadline = time.monotonic() + timeout_s
    while (done := _finished(job)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            pods = _controlled_pods(api, namespace, job, "Job")
            logs = "".join(_pod_logs(api, namespace, p) for p in pods)
            raise CheckFailed(
                f"Job {name!r} in namespace {namespace!r} did not finish within {timeout_s:g}s: "
                f"{_summary(rollout.pod_failures(pods))}" + (f"\nlog:\n{logs}" if logs else "")
            )
        time.sleep(min(poll_s, left))
        with _calling("read", "Job", namespace, name):
            job = _plain(api, batch.read_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT))
    pods = sorted(
        _controlled_pods(api, namespace, job, "Job"),
        key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
    )
    last = pods[-1] if pods else None
    return JobResult(
        succeeded=done.get("type") == "Complete",
        exit_code=_exit_code(last) if last else None,
        logs=_pod_logs(api, namespace, last) if last else "",
        reason=done.get("reason"),
    )


def _delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete the Job and, in the background, its pods; gone already is fine."""
    with _calling("delete", "Job", namespace, name):
        try:
            client.BatchV1Api(api).delete_namespaced_job(
                name, namespace, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if not _is_not_found(exc):
                raise


def set_config_values(api: client.ApiClient, namespace: str, kind: str, name: str,
                      values: Mapping[str, str]) -> bool:
    """Set keys of a ConfigMap (`kind` "configmap") or a Secret ("secret"); other keys stay.
    False when they hold those values already. A Secret's values are never logged or raised."""
    core = client.CoreV1Api(api)
    what = "ConfigMap" if kind == "configmap" else "Secret"
    with _calling("read", what, namespace, name):
        obj = (core.read_namespaced_config_map if kind == "configmap" else core.read_namespaced_secret)(
            name, namespace, _request_timeout=REQUEST_TIMEOUT)
    data = dict(obj.data or {})
    if kind == "secret":
        wanted = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    else:
        wanted = dict(values)
    if all(data.get(k) == v for k, v in wanted.items()):
        return False
    with _calling("patch", what, namespace, name):
        patch = {"data": wanted}
        if kind == "configmap":
            core.patch_namespaced_config_map(name, namespace, patch, _request_timeout=REQUEST_TIMEOUT)
        else:
            core.patch_namespaced_secret(name, namespace, patch, _request_timeout=REQUEST_TIMEOUT)
    return True
