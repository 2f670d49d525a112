"""core/v1 Events, recorded by the fake controllers and kubelet as the real ones do:
one Event per (object, reason, message), its count bumped when it repeats."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from sandbox.kube import clock, errors, resources
from sandbox.kube.registry import Registry

EVENTS = resources.storage_resource("Event")


class EventRecorder:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._names: dict[tuple[str, str, str], str] = {}

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, component: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta["uid"], reason, message)
        now = clock.rfc3339()
        name = self._names.get(key)
        if name is not None:
            try:

                def bump(event: dict[str, Any]) -> None:
                    event["count"] = event.get("count", 1) + 1
                    event["lastTimestamp"] = now

                self.registry.mutate(EVENTS, namespace, name, bump)
                return
            except errors.NotFound:
                pass
        name = f"{meta['name']}.{secrets.token_hex(8)}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "kind": obj.get("kind"),
                "namespace": namespace,
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": obj.get("apiVersion"),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": "",
        }
        try:
            self.registry.create(EVENTS, namespace, event)
        except errors.NotFound:  # the namespace went away meanwhile
            return
        self._names[key] = name
