"""The fake cluster: store, registry, controllers, kubelet and job runner, driven by one
loop thread.

Each pass runs every controller once, over the whole store. Passes repeat while they keep
changing things (a rollout step's writes feed the next step), then the loop sleeps until
someone else writes or `tick` seconds pass, so a `kubectl set image` is acted on at once
and time-based changes (a pod becoming ready) show within one tick.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from sandbox.kube import clock, resources
from sandbox.kube.controllers import AutoscalerController, DeploymentController, ReplicaSetController
from sandbox.kube.events import EventRecorder
from sandbox.kube.jobs import JobController
from sandbox.kube.kubelet import HOST_IP, NODE_NAME, Kubelet
from sandbox.kube.registry import Registry
from sandbox.kube.rules import ImageRules
from sandbox.kube.store import Store

log = logging.getLogger(__name__)

BUILTIN_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
MAX_PASSES = 20


class Cluster:
    def __init__(
        self,
        rules: Mapping[str, Any] | None = None,
        *,
        default_rules: bool = True,
        tick: float = 0.05,
        ready_delay: float = 0.2,
        crash_interval: float = 0.5,
        job_duration: float = 0.2,
    ) -> None:
        self.store = Store()
        self.registry = Registry(self.store)
        self.events = EventRecorder(self.registry)
        self.tick = tick
        self._rules = ImageRules(rules, defaults=default_rules)
        self.kubelet = Kubelet(
            self.registry,
            self.events,
            lambda: self._rules,
            ready_delay=ready_delay,
            crash_interval=crash_interval,
            job_duration=job_duration,
        )
        self.controllers = [
            DeploymentController(self.registry, self.events),
            ReplicaSetController(self.registry, self.events),
            JobController(self.registry, self.events),
            AutoscalerController(self.registry, self.events),
            self.kubelet,
        ]
        self.loop_errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bootstrap()

    # --- image rules --------------------------------------------------------------

    @property
    def rules(self) -> ImageRules:
        return self._rules

    def set_rules(
        self, rules: Mapping[str, Any] | None, *, default_rules: bool = True, merge: bool = False
    ) -> ImageRules:
        """Replace (or, with merge, extend) the image rules; pods started afterwards follow them."""
        merged: dict[str, Any] = {}
        if merge:
            merged.update({p: r for p, r in self._rules.rules})
        merged.update(rules or {})
        self._rules = ImageRules(merged, defaults=default_rules)
        return self._rules

    # --- the loop ---------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> None:
        """One pass of every controller."""
        t = clock.now() if now is None else now
        for controller in self.controllers:
            controller.sync_all(t)

    def settle(self) -> None:
        """Passes until nothing changes (or MAX_PASSES)."""
        for _ in range(MAX_PASSES):
            before = self.store.rv
            self.run_once()
            if self.store.rv == before:
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.settle()
            except Exception:  # noqa: BLE001 - a controller bug must not stop the cluster; tests check loop_errors
                self.loop_errors.append(traceback.format_exc())
                log.exception("sandbox cluster loop failed; continuing")
            self.store.wait_for_change(self.store.rv, self.tick)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sandbox-kube-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.store.changed:
            self.store.changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # --- bootstrap --------------------------------------------------------------------

    def _bootstrap(self) -> None:
        ns = resources.storage_resource("Namespace")
        for name in BUILTIN_NAMESPACES:
            self.registry.create(ns, "", {"metadata": {"name": name}})
        node = {
            "metadata": {
                "name": NODE_NAME,
                "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
            "spec": {},
        }
        created = self.registry.create(resources.storage_resource("Node"), "", node)
        now = clock.rfc3339()
        status = {
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "sandbox",
                "containerRuntimeVersion": "containerd://sandbox",
                "kernelVersion": "sandbox",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.37.0-sandbox",
                "machineID": "sandbox",
                "operatingSystem": "linux",
                "osImage": "Runbook Flows sandbox",
                "systemUUID": "sandbox",
            },
        }
        created["status"] = status
        self.registry.update(resources.storage_resource("Node"), "", NODE_NAME, created, subresource="status")
