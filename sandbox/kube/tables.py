"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with the
columns kubectl shows for the common kinds (`-o wide` columns have priority 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox.kube import clock, selectors
from sandbox.kube.resources import Resource

Obj = Mapping[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def human_age(obj: Obj) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    seconds = max(int(clock.now() - clock.parse(created)), 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _containers(obj: Obj) -> list[Mapping[str, Any]]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    return (template.get("spec") or spec).get("containers") or []


def _pod_status(pod: Obj) -> str:
    reason = _status(pod).get("phase", "Pending")
    for c in _status(pod).get("containerStatuses") or []:
        state = c.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason") and reason not in ("Succeeded", "Failed"):
            reason = state["terminated"]["reason"]
    if reason == "Succeeded":
        reason = "Completed"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _ports(svc: Obj) -> str:
    ports = (svc.get("spec") or {}).get("ports") or []
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _job_status(job: Obj) -> str:
    for c in _status(job).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
            return c["type"]
    return "Running"


NAME: Column = ("Name", "string", 0, lambda o: o["metadata"]["name"])
AGE: Column = ("Age", "string", 0, human_age)
WORKLOAD_WIDE: list[Column] = [
    ("Containers", "string", 1, lambda o: ",".join(c["name"] for c in _containers(o))),
    ("Images", "string", 1, lambda o: ",".join(c.get("image", "") for c in _containers(o))),
    ("Selector", "string", 1, lambda o: selectors.label_selector_text((o.get("spec") or {}).get("selector"))),
]

COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: (
                f"{sum(1 for c in _status(o).get('containerStatuses') or [] if c.get('ready'))}/{len(o['spec'].get('containers') or [])}"
            ),
        ),
        ("Status", "string", 0, _pod_status),
        (
            "Restarts",
            "string",
            0,
            lambda o: str(sum(c.get("restartCount", 0) for c in _status(o).get("containerStatuses") or [])),
        ),
        AGE,
        ("IP", "string", 1, lambda o: _status(o).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda o: o["spec"].get("nodeName") or "<none>"),
    ],
    "Deployment": [
        NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: f"{_status(o).get('readyReplicas', 0)}/{o['spec'].get('replicas', 0)}",
        ),
        ("Up-to-date", "integer", 0, lambda o: _status(o).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: _status(o).get("availableReplicas", 0)),
        AGE,
        *WORKLOAD_WIDE,
    ],
    "ReplicaSet": [
        NAME,
        ("Desired", "integer", 0, lambda o: o["spec"].get("replicas", 0)),
        ("Current", "integer", 0, lambda o: _status(o).get("replicas", 0)),
        ("Ready", "integer", 0, lambda o: _status(o).get("readyReplicas", 0)),
        AGE,
        *WORKLOAD_WIDE,
    ],
    "Service": [
        NAME,
        ("Type", "string", 0, lambda o: o["spec"].get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: o["spec"].get("clusterIP") or "<none>"),
        ("External-IP", "string", 0, lambda o: "<none>"),
        ("Port(s)", "string", 0, _ports),
        AGE,
        (
            "Selector",
            "string",
            1,
            lambda o: (
                ",".join(f"{k}={v}" for k, v in sorted((o["spec"].get("selector") or {}).items())) or "<none>"
            ),
        ),
    ],
    "Job": [
        NAME,
        ("Status", "string", 0, _job_status),
        (
            "Completions",
            "string",
            0,
            lambda o: f"{_status(o).get('succeeded', 0)}/{o['spec'].get('completions', 1)}",
        ),
        AGE,
        *WORKLOAD_WIDE,
    ],
    "Namespace": [NAME, ("Status", "string", 0, lambda o: _status(o).get("phase", "Active")), AGE],
    "Node": [
        NAME,
        ("Status", "string", 0, lambda o: "Ready"),
        ("Version", "string", 0, lambda o: "v1.37.0-sandbox"),
        AGE,
    ],
    "ConfigMap": [
        NAME,
        ("Data", "integer", 0, lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        AGE,
    ],
    "Secret": [
        NAME,
        ("Type", "string", 0, lambda o: o.get("type", "Opaque")),
        ("Data", "integer", 0, lambda o: len(o.get("data") or {})),
        AGE,
    ],
    "Event": [
        (
            "Last Seen",
            "string",
            0,
            lambda o: human_age({"metadata": {"creationTimestamp": o.get("lastTimestamp")}}),
        ),
        ("Type", "string", 0, lambda o: o.get("type", "")),
        ("Reason", "string", 0, lambda o: o.get("reason", "")),
        (
            "Object",
            "string",
            0,
            lambda o: (
                f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name', '')}"
            ),
        ),
        ("Message", "string", 0, lambda o: o.get("message", "")),
    ],
    "HorizontalPodAutoscaler": [
        NAME,
        (
            "Reference",
            "string",
            0,
            lambda o: f"{o['spec']['scaleTargetRef'].get('kind')}/{o['spec']['scaleTargetRef'].get('name')}",
        ),
        ("MinPods", "integer", 0, lambda o: o["spec"].get("minReplicas", 1)),
        ("MaxPods", "integer", 0, lambda o: o["spec"].get("maxReplicas")),
        ("Replicas", "integer", 0, lambda o: _status(o).get("currentReplicas", 0)),
        AGE,
    ],
}


def table(res: Resource, body: Mapping[str, Any], include_object: str | None = None) -> dict[str, Any]:
    columns = COLUMNS.get(res.kind, [NAME, AGE])
    items = body["items"] if "items" in body else [body]
    rows = []
    for obj in items:
        row: dict[str, Any] = {"cells": [cell(obj) for _, _, _, cell in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    meta = body.get("metadata") or {}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {k: meta[k] for k in ("resourceVersion", "continue", "remainingItemCount") if k in meta},
        "columnDefinitions": [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priority,
            }
            for name, type_, priority, _ in columns
        ],
        "rows": rows,
    }
