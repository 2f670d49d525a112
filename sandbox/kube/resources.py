"""The kinds the fake API server serves, with their defaulting and validation.

Each `Resource` says where it lives (group, version, plural), how discovery describes it
and which subresources it has. `defaults(kind, obj)` fills what the real API server fills
(replicas, strategy, container pull policy, ...) so that every object read back is complete
for strict clients; `validate(...)` rejects what the real one rejects, with its wording.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.kube import errors, selectors
from sandbox.kube.rules import image_tag


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    all_category: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        """Where objects live; one per group and plural, whatever the version (HPA v1 and v2 share it)."""
        return errors.qualified(self.plural, self.group)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), ("status",)),
    Resource("", "v1", "Node", "nodes", "node", False, ("no",), ("status",)),
    Resource("", "v1", "Pod", "pods", "pod", True, ("po",), ("status", "log"), True),
    Resource("", "v1", "Service", "services", "service", True, ("svc",), ("status",), True),
    Resource("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",)),
    Resource("", "v1", "Secret", "secrets", "secret", True),
    Resource("", "v1", "Event", "events", "event", True, ("ev",)),
    Resource(
        "apps", "v1", "Deployment", "deployments", "deployment", True, ("deploy",), ("status", "scale"), True
    ),
    Resource(
        "apps", "v1", "ReplicaSet", "replicasets", "replicaset", True, ("rs",), ("status", "scale"), True
    ),
    Resource("batch", "v1", "Job", "jobs", "job", True, (), ("status",), True),
    Resource("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", True, ("ing",), ("status",)),
    Resource(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        True,
        ("hpa",),
        ("status",),
        True,
    ),
    Resource(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        True,
        ("hpa",),
        ("status",),
        True,
    ),
)

# group -> versions, preferred first
GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _r in RESOURCES:
    versions = GROUP_VERSIONS.setdefault(_r.group, ())
    if _r.version not in versions:
        GROUP_VERSIONS[_r.group] = versions + (_r.version,)


def find(group: str, version: str, plural: str) -> Resource | None:
    return next((r for r in RESOURCES if (r.group, r.version, r.plural) == (group, version, plural)), None)


def storage_resource(kind: str) -> Resource:
    """The stored (preferred) version of a kind."""
    return next(r for r in RESOURCES if r.kind == kind)


def by_storage_key(key: str) -> Resource:
    return next(r for r in RESOURCES if r.storage_key == key)


# --- names --------------------------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAMES = {"Namespace", "Service"}


def name_problem(kind: str, name: str) -> str | None:
    if kind in _LABEL_NAMES:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return (
                f"Invalid value: {name!r}: a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character"
            )
        return None
    if kind == "Event":
        return None
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return (
            f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


# --- defaulting -------------------------------------------------------------------------


def _default_container(c: dict[str, Any]) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    if "imagePullPolicy" not in c and "image" in c:
        tagged = "@" in c["image"] or ":" in c["image"].rsplit("/", 1)[-1]
        c["imagePullPolicy"] = "Always" if not tagged or image_tag(c["image"]) == "latest" else "IfNotPresent"
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(c.get(probe), dict):
            p = c[probe]
            for key, value in (
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ):
                p.setdefault(key, value)


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)


def default_pod_template(template: dict[str, Any]) -> None:
    template.setdefault("metadata", {})
    spec = template.setdefault("spec", {})
    default_pod_spec(spec)


def _default_deployment(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    default_pod_template(spec.setdefault("template", {}))


def _default_replicaset(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    if "template" in spec:
        default_pod_template(spec["template"])


def _default_pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    default_pod_spec(spec)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault(
        "tolerations",
        [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
    )


def _cluster_ip(namespace: str, name: str) -> str:
    """A stable made-up ClusterIP in 10.96.0.0/16 (the sandbox routes no traffic to it)."""
    n = int(hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest(), 16) % 65000 + 10
    return f"10.96.{n // 256}.{n % 256}"


def _default_service(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    meta = obj.get("metadata") or {}
    if spec.get("clusterIP") != "None" and spec["type"] != "ExternalName":
        spec.setdefault("clusterIP", _cluster_ip(meta.get("namespace", ""), meta.get("name", "")))
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _default_job(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    default_pod_template(template)
    uid = (obj.get("metadata") or {}).get("uid")
    name = (obj.get("metadata") or {}).get("name")
    if uid and not spec.get("selector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        labels = template["metadata"].setdefault("labels", {})
        labels.setdefault("batch.kubernetes.io/controller-uid", uid)
        labels.setdefault("controller-uid", uid)
        labels.setdefault("batch.kubernetes.io/job-name", name)
        labels.setdefault("job-name", name)


def _default_hpa(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }
        ]


def _default_namespace(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")


def _default_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _default_ingress(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {})
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


_DEFAULTERS = {
    "Deployment": _default_deployment,
    "ReplicaSet": _default_replicaset,
    "Pod": _default_pod,
    "Service": _default_service,
    "Job": _default_job,
    "HorizontalPodAutoscaler": _default_hpa,
    "Namespace": _default_namespace,
    "Secret": _default_secret,
    "Ingress": _default_ingress,
}


def defaults(kind: str, obj: dict[str, Any]) -> None:
    fn = _DEFAULTERS.get(kind)
    if fn:
        fn(obj)


# --- validation -----------------------------------------------------------------------


def _containers_problems(spec: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    problems = []
    containers = spec.get("containers")
    if not containers:
        problems.append((f"{prefix}.containers", "Required value"))
    names = set()
    for i, c in enumerate(containers or []):
        if not isinstance(c, dict) or not c.get("name"):
            problems.append((f"{prefix}.containers[{i}].name", "Required value"))
            continue
        if c["name"] in names:
            problems.append((f"{prefix}.containers[{i}].name", f"Duplicate value: {c['name']!r}"))
        names.add(c["name"])
        if not c.get("image"):
            problems.append((f"{prefix}.containers[{i}].image", "Required value"))
    return problems


def _workload_problems(
    kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    spec = obj.get("spec") or {}
    problems: list[tuple[str, str]] = []
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        problems.append(("spec.selector", "Required value"))
    elif not selectors.matches(selectors.from_label_selector(selector), labels):
        problems.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {labels!r}: `selector` does not match template `labels`",
            )
        )
    if old is not None and kind == "Deployment" and selector != (old.get("spec") or {}).get("selector"):
        problems.append(("spec.selector", f"Invalid value: {selector!r}: field is immutable"))
    if spec.get("replicas", 0) < 0:
        problems.append(("spec.replicas", "Invalid value: must be greater than or equal to 0"))
    problems += _containers_problems(template.get("spec") or {}, "spec.template.spec")
    if kind == "Deployment":
        strategy = spec.get("strategy") or {}
        if strategy.get("type") not in ("RollingUpdate", "Recreate"):
            problems.append(
                (
                    "spec.strategy.type",
                    f'Unsupported value: {strategy.get("type")!r}: supported values: "Recreate", "RollingUpdate"',
                )
            )
        if strategy.get("type") == "Recreate" and strategy.get("rollingUpdate"):
            problems.append(
                (
                    "spec.strategy.rollingUpdate",
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                )
            )
        rolling = strategy.get("rollingUpdate") or {}
        for key in ("maxSurge", "maxUnavailable"):
            value = rolling.get(key)
            if value is not None and not (isinstance(value, int) or re.match(r"^\d+%$", str(value))):
                problems.append(
                    (
                        f"spec.strategy.rollingUpdate.{key}",
                        f"Invalid value: {value!r}: must be an integer or percentage (e.g '5%')",
                    )
                )
        if rolling and rolling.get("maxSurge") in (0, "0%") and rolling.get("maxUnavailable") in (0, "0%"):
            problems.append(
                (
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    "Invalid value: 0: may not be 0 when `maxSurge` is 0",
                )
            )
        if spec.get("progressDeadlineSeconds") is not None and spec["progressDeadlineSeconds"] <= spec.get(
            "minReadySeconds", 0
        ):
            problems.append(
                ("spec.progressDeadlineSeconds", "Invalid value: must be greater than minReadySeconds")
            )
    return problems


_PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _ingress_backend_problems(backend: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(backend, dict) or (backend.get("service") is None) == (backend.get("resource") is None):
        return [(where, 'Invalid value: "": exactly one of resource or service backend is required')]
    service = backend.get("service")
    if service is None:
        return []
    problems = []
    if not service.get("name"):
        problems.append((f"{where}.service.name", "Required value"))
    port = service.get("port") or {}
    if not port.get("name") and not port.get("number"):
        problems.append((f"{where}.service.port", "Required value: port name or number is required"))
    return problems


def _ingress_problems(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the real API server refuses and what the official client cannot read back: a
    path without a pathType or a backend, a backend naming neither a Service nor a resource."""
    rules = spec.get("rules") or []
    problems: list[tuple[str, str]] = []
    if not rules and spec.get("defaultBackend") is None:
        problems.append(("spec", "Invalid value: []: either `defaultBackend` or `rules` must be specified"))
    if spec.get("defaultBackend") is not None:
        problems += _ingress_backend_problems(spec["defaultBackend"], "spec.defaultBackend")
    for i, rule in enumerate(rules):
        http = rule.get("http")
        if http is None:
            continue
        if not http.get("paths"):
            problems.append((f"spec.rules[{i}].http.paths", "Required value"))
        for j, path in enumerate(http.get("paths") or []):
            where = f"spec.rules[{i}].http.paths[{j}]"
            if path.get("pathType") is None:
                problems.append((f"{where}.pathType", "Required value: pathType must be specified"))
            elif path["pathType"] not in _PATH_TYPES:
                supported = ", ".join(f'"{p}"' for p in _PATH_TYPES)
                problems.append(
                    (
                        f"{where}.pathType",
                        f"Unsupported value: {path['pathType']!r}: supported values: {supported}",
                    )
                )
            problems += _ingress_backend_problems(path.get("backend"), f"{where}.backend")
    return problems


def validate(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    group = storage_resource(kind).group if any(r.kind == kind for r in RESOURCES) else ""
    problems: list[tuple[str, str]] = []
    if not name:
        problems.append(("metadata.name", "Required value: name or generateName is required"))
    elif (problem := name_problem(kind, name)) is not None:
        problems.append(("metadata.name", problem))
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str):
            problems.append((f"metadata.labels[{key}]", f"Invalid value: {value!r}: must be a string"))
    if kind in ("Deployment", "ReplicaSet"):
        problems += _workload_problems(kind, obj, old)
    elif kind == "Pod":
        problems += _containers_problems(obj.get("spec") or {}, "spec")
    elif kind == "Job":
        template_spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        problems += _containers_problems(template_spec, "spec.template.spec")
        if template_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(
                ("spec.template.spec.restartPolicy", 'Required value: valid values: "OnFailure", "Never"')
            )
        if old is not None and (old.get("spec") or {}).get("template") != (obj.get("spec") or {}).get(
            "template"
        ):
            problems.append(("spec.template", "Invalid value: field is immutable"))
    elif kind == "Service":
        for i, port in enumerate((obj.get("spec") or {}).get("ports") or []):
            if not isinstance(port.get("port"), int):
                problems.append((f"spec.ports[{i}].port", "Required value"))
    elif kind == "Ingress":
        problems += _ingress_problems(obj.get("spec") or {})
    elif kind == "HorizontalPodAutoscaler":
        spec = obj.get("spec") or {}
        if not isinstance(spec.get("maxReplicas"), int) or spec["maxReplicas"] < spec.get("minReplicas", 1):
            problems.append(
                ("spec.maxReplicas", "Invalid value: must be greater than or equal to `minReplicas`")
            )
        if not (spec.get("scaleTargetRef") or {}).get("name"):
            problems.append(("spec.scaleTargetRef.name", "Required value"))
    if problems:
        raise errors.invalid(kind, group, name, problems)


# --- autoscaling/v1 <-> v2 --------------------------------------------------------------


def hpa_to_v1(obj: dict[str, Any]) -> dict[str, Any]:
    spec = dict(obj.get("spec") or {})
    metrics = spec.pop("metrics", None) or []
    spec.pop("behavior", None)
    for metric in metrics:
        resource = metric.get("resource") or {}
        if metric.get("type") == "Resource" and resource.get("name") == "cpu":
            spec["targetCPUUtilizationPercentage"] = (resource.get("target") or {}).get("averageUtilization")
    status = dict(obj.get("status") or {})
    status.pop("conditions", None)
    status.pop("currentMetrics", None)
    status.setdefault("currentReplicas", 0)
    status.setdefault("desiredReplicas", 0)
    return {**obj, "apiVersion": "autoscaling/v1", "spec": spec, "status": status}


def hpa_from_v1(obj: dict[str, Any]) -> dict[str, Any]:
    spec = dict(obj.get("spec") or {})
    target = spec.pop("targetCPUUtilizationPercentage", None)
    if target is not None:
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
            }
        ]
    return {**obj, "apiVersion": "autoscaling/v2", "spec": spec}
