"""Decoding the protobuf request bodies of kubectl's typed commands.

`kubectl create namespace|configmap|secret|deployment|job|service|ingress` and `kubectl
autoscale` send `application/vnd.kubernetes.protobuf`: the magic `k8s\\0`, then a
runtime.Unknown {typeMeta, raw} whose raw bytes are the object in the field numbers of
Kubernetes' generated.proto files. This module knows those numbers for the fields these
commands set (and the common ones around them) and turns a body into the JSON the rest
of the server handles. Go's value fields are always on the wire, so a zero value means
"unset" unless the Go field is a pointer (`ptr` below). A non-zero field this table does
not know is refused (415) rather than dropped. Answers are always JSON, which kubectl
accepts.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sandbox.kube import errors

MAGIC = b"k8s\x00"

# message -> field number -> (json name, type, flags). Types: string, bytes, int, bool,
# map (string->string), bytesmap (string->bytes), quantitymap, IntOrString, Quantity,
# Time, drop (read and ignored: status), or another message. Flags: "rep" repeated,
# "ptr" zero values are meaningful, "inline" the message's fields merge into the parent.
Schema = dict[int, tuple[str, str, str]]
SCHEMAS: dict[str, Schema] = {
    "Unknown": {
        1: ("typeMeta", "TypeMeta", ""),
        2: ("raw", "bytes", ""),
        3: ("contentEncoding", "string", ""),
        4: ("contentType", "string", ""),
    },
    "TypeMeta": {1: ("apiVersion", "string", ""), 2: ("kind", "string", "")},
    "ObjectMeta": {
        1: ("name", "string", ""),
        2: ("generateName", "string", ""),
        3: ("namespace", "string", ""),
        4: ("selfLink", "string", ""),
        5: ("uid", "string", ""),
        6: ("resourceVersion", "string", ""),
        7: ("generation", "int", ""),
        8: ("creationTimestamp", "Time", ""),
        9: ("deletionTimestamp", "Time", ""),
        10: ("deletionGracePeriodSeconds", "int", "ptr"),
        11: ("labels", "map", ""),
        12: ("annotations", "map", ""),
        13: ("ownerReferences", "OwnerReference", "rep"),
        14: ("finalizers", "string", "rep"),
    },
    "OwnerReference": {
        1: ("kind", "string", ""),
        3: ("name", "string", ""),
        4: ("uid", "string", ""),
        5: ("apiVersion", "string", ""),
        6: ("controller", "bool", "ptr"),
        7: ("blockOwnerDeletion", "bool", "ptr"),
    },
    "LabelSelector": {
        1: ("matchLabels", "map", ""),
        2: ("matchExpressions", "LabelSelectorRequirement", "rep"),
    },
    "LabelSelectorRequirement": {
        1: ("key", "string", ""),
        2: ("operator", "string", ""),
        3: ("values", "string", "rep"),
    },
    "Namespace": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("spec", "NamespaceSpec", ""),
        3: ("status", "drop", ""),
    },
    "NamespaceSpec": {1: ("finalizers", "string", "rep")},
    "ConfigMap": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("data", "map", ""),
        3: ("binaryData", "bytesmap", ""),
        4: ("immutable", "bool", "ptr"),
    },
    "Secret": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("data", "bytesmap", ""),
        3: ("type", "string", ""),
        4: ("stringData", "map", ""),
        5: ("immutable", "bool", "ptr"),
    },
    "Service": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "ServiceSpec", ""), 3: ("status", "drop", "")},
    "ServiceSpec": {
        1: ("ports", "ServicePort", "rep"),
        2: ("selector", "map", ""),
        3: ("clusterIP", "string", ""),
        4: ("type", "string", ""),
        5: ("externalIPs", "string", "rep"),
        7: ("sessionAffinity", "string", ""),
        8: ("loadBalancerIP", "string", ""),
        10: ("externalName", "string", ""),
        11: ("externalTrafficPolicy", "string", ""),
        12: ("healthCheckNodePort", "int", ""),
        13: ("publishNotReadyAddresses", "bool", ""),
    },
    "ServicePort": {
        1: ("name", "string", ""),
        2: ("protocol", "string", ""),
        3: ("port", "int", ""),
        4: ("targetPort", "IntOrString", ""),
        5: ("nodePort", "int", ""),
        6: ("appProtocol", "string", "ptr"),
    },
    "Deployment": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("spec", "DeploymentSpec", ""),
        3: ("status", "drop", ""),
    },
    "DeploymentSpec": {
        1: ("replicas", "int", "ptr"),
        2: ("selector", "LabelSelector", ""),
        3: ("template", "PodTemplateSpec", ""),
        4: ("strategy", "DeploymentStrategy", ""),
        5: ("minReadySeconds", "int", ""),
        6: ("revisionHistoryLimit", "int", "ptr"),
        7: ("paused", "bool", ""),
        9: ("progressDeadlineSeconds", "int", "ptr"),
    },
    "DeploymentStrategy": {1: ("type", "string", ""), 2: ("rollingUpdate", "RollingUpdateDeployment", "")},
    "RollingUpdateDeployment": {
        1: ("maxUnavailable", "IntOrString", "ptr"),
        2: ("maxSurge", "IntOrString", "ptr"),
    },
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "PodSpec", "")},
    "PodSpec": {
        2: ("containers", "Container", "rep"),
        3: ("restartPolicy", "string", ""),
        4: ("terminationGracePeriodSeconds", "int", "ptr"),
        5: ("activeDeadlineSeconds", "int", "ptr"),
        6: ("dnsPolicy", "string", ""),
        7: ("nodeSelector", "map", ""),
        8: ("serviceAccountName", "string", ""),
        9: ("serviceAccount", "string", ""),
        10: ("nodeName", "string", ""),
        11: ("hostNetwork", "bool", ""),
        12: ("hostPID", "bool", ""),
        13: ("hostIPC", "bool", ""),
        15: ("imagePullSecrets", "LocalObjectReference", "rep"),
        16: ("hostname", "string", ""),
        17: ("subdomain", "string", ""),
        19: ("schedulerName", "string", ""),
        20: ("initContainers", "Container", "rep"),
        24: ("priorityClassName", "string", ""),
    },
    "LocalObjectReference": {1: ("name", "string", "")},
    "Container": {
        1: ("name", "string", ""),
        2: ("image", "string", ""),
        3: ("command", "string", "rep"),
        4: ("args", "string", "rep"),
        5: ("workingDir", "string", ""),
        6: ("ports", "ContainerPort", "rep"),
        7: ("env", "EnvVar", "rep"),
        8: ("resources", "ResourceRequirements", ""),
        13: ("terminationMessagePath", "string", ""),
        14: ("imagePullPolicy", "string", ""),
        16: ("stdin", "bool", ""),
        17: ("stdinOnce", "bool", ""),
        18: ("tty", "bool", ""),
        20: ("terminationMessagePolicy", "string", ""),
    },
    "ContainerPort": {
        1: ("name", "string", ""),
        2: ("hostPort", "int", ""),
        3: ("containerPort", "int", ""),
        4: ("protocol", "string", ""),
        5: ("hostIP", "string", ""),
    },
    "EnvVar": {1: ("name", "string", ""), 2: ("value", "string", "")},
    "ResourceRequirements": {1: ("limits", "quantitymap", ""), 2: ("requests", "quantitymap", "")},
    "Job": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "JobSpec", ""), 3: ("status", "drop", "")},
    "JobSpec": {
        1: ("parallelism", "int", "ptr"),
        2: ("completions", "int", "ptr"),
        3: ("activeDeadlineSeconds", "int", "ptr"),
        4: ("selector", "LabelSelector", ""),
        5: ("manualSelector", "bool", "ptr"),
        6: ("template", "PodTemplateSpec", ""),
        7: ("backoffLimit", "int", "ptr"),
        8: ("ttlSecondsAfterFinished", "int", "ptr"),
        9: ("completionMode", "string", "ptr"),
        10: ("suspend", "bool", "ptr"),
    },
    "Ingress": {1: ("metadata", "ObjectMeta", ""), 2: ("spec", "IngressSpec", ""), 3: ("status", "drop", "")},
    "IngressSpec": {
        1: ("defaultBackend", "IngressBackend", ""),
        3: ("rules", "IngressRule", "rep"),
        4: ("ingressClassName", "string", "ptr"),
    },
    "IngressRule": {1: ("host", "string", ""), 2: ("ingressRuleValue", "IngressRuleValue", "inline")},
    "IngressRuleValue": {1: ("http", "HTTPIngressRuleValue", "")},
    "HTTPIngressRuleValue": {1: ("paths", "HTTPIngressPath", "rep")},
    "HTTPIngressPath": {
        1: ("path", "string", ""),
        2: ("backend", "IngressBackend", ""),
        3: ("pathType", "string", "ptr"),
    },
    "IngressBackend": {4: ("service", "IngressServiceBackend", "")},
    "IngressServiceBackend": {1: ("name", "string", ""), 2: ("port", "ServiceBackendPort", "")},
    "ServiceBackendPort": {1: ("name", "string", ""), 2: ("number", "int", "")},
    "HorizontalPodAutoscaler": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("spec", "HPASpecV2", ""),
        3: ("status", "drop", ""),
    },
    "HPASpecV2": {
        1: ("scaleTargetRef", "CrossVersionObjectReference", ""),
        2: ("minReplicas", "int", "ptr"),
        3: ("maxReplicas", "int", ""),
        4: ("metrics", "MetricSpec", "rep"),
    },
    "HorizontalPodAutoscalerV1": {
        1: ("metadata", "ObjectMeta", ""),
        2: ("spec", "HPASpecV1", ""),
        3: ("status", "drop", ""),
    },
    "HPASpecV1": {
        1: ("scaleTargetRef", "CrossVersionObjectReference", ""),
        2: ("minReplicas", "int", "ptr"),
        3: ("maxReplicas", "int", ""),
        4: ("targetCPUUtilizationPercentage", "int", "ptr"),
    },
    "CrossVersionObjectReference": {
        1: ("kind", "string", ""),
        2: ("name", "string", ""),
        3: ("apiVersion", "string", ""),
    },
    "MetricSpec": {1: ("type", "string", ""), 4: ("resource", "ResourceMetricSource", "")},
    "ResourceMetricSource": {1: ("name", "string", ""), 2: ("target", "MetricTarget", "")},
    "MetricTarget": {
        1: ("type", "string", ""),
        2: ("value", "Quantity", "ptr"),
        3: ("averageValue", "Quantity", "ptr"),
        4: ("averageUtilization", "int", "ptr"),
    },
}
ROOTS = {
    ("v1", "Namespace"): "Namespace",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Secret"): "Secret",
    ("v1", "Service"): "Service",
    ("apps/v1", "Deployment"): "Deployment",
    ("batch/v1", "Job"): "Job",
    ("networking.k8s.io/v1", "Ingress"): "Ingress",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "HorizontalPodAutoscaler",
    ("autoscaling/v1", "HorizontalPodAutoscaler"): "HorizontalPodAutoscalerV1",
}


class _Unsupported(Exception):
    pass


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise _Unsupported("truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise _Unsupported("truncated length-delimited field")
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > len(data):
                raise _Unsupported("truncated fixed-size field")
            value, i = data[i : i + size], i + size
        else:
            raise _Unsupported(f"wire type {wire}")
        if number == 0:
            raise _Unsupported("field number 0")
        out.append((number, wire, value))
    return out


def _is_zero(wire: int, value: Any) -> bool:
    if wire == 0:
        return value == 0
    if wire == 2:
        if not value:
            return True
        try:
            return all(_is_zero(w, v) for _, w, v in _fields(value))
        except _Unsupported:
            return False
    return not any(value)


def _int(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(type_: str, wire: int, value: Any, path: str) -> Any:
    if type_ in ("string", "bytes") and wire == 2:
        return value.decode() if type_ == "string" else base64.b64encode(value).decode()
    if type_ == "int" and wire == 0:
        return _int(value)
    if type_ == "bool" and wire == 0:
        return bool(value)
    raise _Unsupported(f"{path}: wire type {wire} is not a {type_}")


def _map_entry(value: bytes, kind: str, path: str) -> tuple[str, Any]:
    key, item = "", ""
    for number, wire, v in _fields(value):
        if number == 1:
            key = _scalar("string", wire, v, path)
        elif number == 2:
            if kind == "bytesmap":
                item = _scalar("bytes", wire, v, path)
            elif kind == "quantitymap":
                item = _message("Quantity", v, path)
            else:
                item = _scalar("string", wire, v, path)
    return key, item


def _special(type_: str, value: bytes, path: str) -> Any:
    fields = {number: v for number, _, v in _fields(value)}
    if type_ == "IntOrString":
        return fields.get(3, b"").decode() if fields.get(1, 0) == 1 else _int(fields.get(2, 0))
    if type_ == "Quantity":
        return fields.get(1, b"").decode()
    if type_ == "Time":
        seconds = _int(fields.get(1, 0))
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if seconds else None
    raise AssertionError(type_)


def _message(name: str, data: bytes, path: str) -> Any:
    if name in ("IntOrString", "Quantity", "Time"):
        return _special(name, data, path)
    schema = SCHEMAS[name]
    out: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        field = schema.get(number)
        if field is None:
            if _is_zero(wire, value):
                continue
            raise _Unsupported(f"{path or name}: field number {number} of {name} is not known to the sandbox")
        json_name, type_, flags = field
        where = f"{path}.{json_name}" if path else json_name
        if type_ == "drop":
            continue
        if type_ in ("map", "bytesmap", "quantitymap"):
            k, v = _map_entry(value, type_, where)
            out.setdefault(json_name, {})[k] = v
            continue
        if type_ in SCHEMAS or type_ in ("IntOrString", "Quantity", "Time"):
            if wire != 2:
                raise _Unsupported(f"{where}: wire type {wire} is not a message")
            item = _message(type_, value, where)
        else:
            item = _scalar(type_, wire, value, where)
        if "rep" in flags:
            out.setdefault(json_name, []).append(item)
        elif "inline" in flags and isinstance(item, dict):
            out.update(item)
        elif type_ in SCHEMAS:
            if item or "ptr" in flags:  # a message is unset when nothing in it is set
                out[json_name] = item
        elif "ptr" in flags:
            out[json_name] = item
        elif not (not value if type_ in ("string", "bytes") else _is_zero(wire, value)) and item is not None:
            out[json_name] = item
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a `k8s\\0`-framed protobuf object."""
    if not body.startswith(MAGIC):
        raise errors.BadRequest("a protobuf body must start with the k8s\\0 magic")
    try:
        envelope = _message("Unknown", body[len(MAGIC) :], "")
        type_meta = envelope.get("typeMeta") or {}
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        root = ROOTS.get((api_version, kind))
        if root is None:
            raise _Unsupported(f"{api_version} {kind} is not a kind the sandbox decodes from protobuf")
        raw = base64.b64decode(envelope.get("raw", ""))
        obj = _message(root, raw, "")
    except _Unsupported as exc:
        raise errors.UnsupportedMediaType(
            f"the sandbox API server cannot read this protobuf body ({exc}); send JSON, e.g. `kubectl apply -f`"
        ) from None
    return {"apiVersion": api_version, "kind": kind, **obj}
