"""The fake scheduler and kubelet of the sandbox's one node.

A new pod is bound to the node at once, then follows the image rule of each container
(`rules.py`), looked up when the kubelet first sees the pod:

- Ready: Pending (ContainerCreating) for `ready_after` seconds, then Running and Ready.
- NeverReady: Running, the container started but its readiness never passes.
- CrashLoopBackOff: Running, the container waiting in CrashLoopBackOff, its restartCount
  climbing every `crash_interval` seconds, lastState terminated with exit code 1.
- ImagePullBackOff / ErrImagePull: Pending, waiting on the image.
- Pods owned by a Job run for `duration` seconds, then terminate with the rule's exit code
  (phase Succeeded or Failed).

A container's environment (`env`, `envFrom`: `podenv.py`) is resolved once, when it starts,
from the ConfigMaps and Secrets of that moment: a later change to them reaches only pods
started afterwards, so a rollout restart is what applies it, as in a real cluster. A missing
ConfigMap, Secret or key (not optional) keeps the container waiting in
CreateContainerConfigError; the kubelet retries every pass and starts it once they exist.
The pod then carries what was resolved in two annotations (JSON, per container name):
`sandbox.runbook.dev/env` the literal and ConfigMap-sourced values, and
`sandbox.runbook.dev/env-secrets` where each Secret-sourced variable comes from
(`{"VAR": {"secret": NAME, "key": KEY}}`), never a Secret's value.

Logs are made up from the image and the rule and served by the API at .../pods/NAME/log.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.kube import clock, errors, podenv, resources
from sandbox.kube.events import EventRecorder
from sandbox.kube.registry import Registry
from sandbox.kube.rules import ImageRule, ImageRules

PODS = resources.storage_resource("Pod")
CONFIGMAPS = resources.storage_resource("ConfigMap")
SECRETS = resources.storage_resource("Secret")
NODE_NAME = "sandbox-node"
HOST_IP = "10.0.0.10"

Obj = dict[str, Any]


@dataclass
class PodRuntime:
    scheduled_at: float
    ip: str
    is_job: bool
    rules: dict[str, ImageRule]
    images: dict[str, str]
    events_sent: set[str] = field(default_factory=set)
    # When each container started (its environment resolved); absent while it waits in
    # CreateContainerConfigError, whose message is in config_errors.
    started: dict[str, float] = field(default_factory=dict)
    env: dict[str, podenv.ContainerEnv] = field(default_factory=dict)
    config_errors: dict[str, str] = field(default_factory=dict)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Kubelet:
    component = "kubelet"

    def __init__(
        self,
        registry: Registry,
        events: EventRecorder,
        rules: Callable[[], ImageRules],
        *,
        ready_delay: float = 0.2,
        crash_interval: float = 0.5,
        job_duration: float = 0.2,
    ) -> None:
        self.registry = registry
        self.events = events
        self.rules = rules
        self.ready_delay = ready_delay
        self.crash_interval = crash_interval
        self.job_duration = job_duration
        self._pods: dict[str, PodRuntime] = {}
        self._ips = itertools.count(2)

    def sync_all(self, now: float) -> None:
        pods = self.registry.list(PODS, None, readonly=True)["items"]
        alive = {p["metadata"]["uid"] for p in pods}
        for uid in list(self._pods):
            if uid not in alive:
                del self._pods[uid]
        for pod in pods:
            try:
                self.sync(pod, now)
            except (errors.Conflict, errors.NotFound):
                continue

    def sync(self, pod: Obj, now: float) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if not pod["spec"].get("nodeName"):
            pod = self.registry.mutate(
                PODS, namespace, name, lambda p: p["spec"].__setitem__("nodeName", NODE_NAME)
            )
            self.events.record(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {namespace}/{name} to {NODE_NAME}",
                "default-scheduler",
            )
        runtime = self._pods.get(pod["metadata"]["uid"])
        if runtime is None:
            runtime = self._admit(pod, now)
        if len(runtime.started) < len(runtime.images):
            pod = self._start_containers(pod, runtime, now)
        status = self._status(pod, runtime, now)
        self._record_events(pod, runtime, status)
        if status != pod.get("status"):
            self.registry.mutate(
                PODS, namespace, name, lambda p: p.__setitem__("status", status), subresource="status"
            )

    def _admit(self, pod: Obj, now: float) -> PodRuntime:
        rules = self.rules()
        containers = pod["spec"].get("containers") or []
        owner_kinds = {
            r.get("kind") for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")
        }
        runtime = PodRuntime(
            scheduled_at=now,
            ip=f"10.244.{(n := next(self._ips)) // 250}.{n % 250 + 2}",
            is_job="Job" in owner_kinds,
            rules={c["name"]: rules.for_image(c.get("image", "")) for c in containers},
            images={c["name"]: c.get("image", "") for c in containers},
        )
        self._pods[pod["metadata"]["uid"]] = runtime
        return runtime

    def _start_containers(self, pod: Obj, runtime: PodRuntime, now: float) -> Obj:
        """Resolve the environment of each container not started yet; a container whose
        ConfigMap, Secret or key is missing stays waiting. Writes the env annotations when a
        container with an environment started."""
        namespace = pod["metadata"]["namespace"]

        def lookup(source: podenv.Source, name: str) -> dict[str, str] | None:
            obj = self.registry.try_get(CONFIGMAPS if source == "ConfigMap" else SECRETS, namespace, name)
            return None if obj is None else dict(obj.get("data") or {})

        resolved = False
        for c in pod["spec"].get("containers") or []:
            name = c["name"]
            if name in runtime.started:
                continue
            try:
                env = podenv.resolve(c, namespace, lookup)
            except podenv.ConfigError as exc:
                runtime.config_errors[name] = str(exc)
                continue
            runtime.config_errors.pop(name, None)
            runtime.started[name] = now  # the pod's scheduled_at, unless it waited on its config
            if podenv.uses_env(c):
                runtime.env[name] = env
                resolved = True
        if not resolved:
            return pod
        values = {n: e.values for n, e in runtime.env.items()}
        secrets = {
            n: {k: r.to_json() for k, r in e.secrets.items()} for n, e in runtime.env.items() if e.secrets
        }

        def annotate(p: Obj) -> None:
            annotations = p["metadata"].setdefault("annotations", {})
            annotations[podenv.ENV_ANNOTATION] = json.dumps(values, sort_keys=True)
            if secrets:
                annotations[podenv.ENV_SECRETS_ANNOTATION] = json.dumps(secrets, sort_keys=True)

        return self.registry.mutate(PODS, namespace, pod["metadata"]["name"], annotate)

    # --- status -------------------------------------------------------------------

    def _delay(self, rule: ImageRule) -> float:
        return self.ready_delay if rule.ready_after is None else rule.ready_after

    def _container(self, name: str, runtime: PodRuntime, pod_name: str, namespace: str, now: float) -> Obj:
        rule, image = runtime.rules[name], runtime.images[name]
        elapsed = now - runtime.scheduled_at
        delay = self._delay(rule)
        status: Obj = {
            "name": name,
            "image": image,
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "lastState": {},
        }
        pulled = {
            "imageID": f"docker.io/{image}@sha256:{_digest(image)}",
            "containerID": f"containerd://{_digest(pod_name + name)}",
        }
        if rule.pod in ("ImagePullBackOff", "ErrImagePull"):
            if elapsed < delay:
                status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            elif rule.pod == "ErrImagePull" or elapsed < delay + self.crash_interval:
                status["state"] = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull and unpack image "{image}": not found',
                    }
                }
            else:
                status["state"] = {
                    "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
                }
            return status
        start = runtime.started.get(name)
        if start is None:
            if elapsed < delay:
                status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            else:
                status["state"] = {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": runtime.config_errors[name],
                    }
                }
            return status
        elapsed = now - start
        started_at = clock.rfc3339(start + delay)
        if elapsed < delay:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            return status
        status.update(pulled)
        if runtime.is_job:
            duration = self.job_duration if rule.duration is None else rule.duration
            if elapsed < delay + duration:
                status.update(ready=True, started=True, state={"running": {"startedAt": started_at}})
            else:
                code = rule.job_exit_code
                status["state"] = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": started_at,
                        "finishedAt": clock.rfc3339(start + delay + duration),
                        "containerID": pulled["containerID"],
                    }
                }
            return status
        if rule.pod == "CrashLoopBackOff":
            restarts = 1 + int((elapsed - delay) / self.crash_interval)
            last_start = start + delay + (restarts - 1) * self.crash_interval
            status["restartCount"] = restarts
            status["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 10s restarting failed container={name} pod={pod_name}_{namespace}",
                }
            }
            status["lastState"] = {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "startedAt": clock.rfc3339(last_start),
                    "finishedAt": clock.rfc3339(last_start),
                    "containerID": pulled["containerID"],
                }
            }
            return status
        status.update(started=True, ready=rule.pod == "Ready", state={"running": {"startedAt": started_at}})
        return status

    def _status(self, pod: Obj, runtime: PodRuntime, now: float) -> Obj:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        containers = [
            self._container(c["name"], runtime, name, namespace, now)
            for c in pod["spec"].get("containers") or []
        ]
        states = [next(iter(c["state"])) for c in containers]
        if runtime.is_job and all(s == "terminated" for s in states):
            codes = [c["state"]["terminated"]["exitCode"] for c in containers]
            phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        elif any(s == "running" for s in states) or any(c["restartCount"] > 0 for c in containers):
            phase = "Running"
        else:
            phase = "Pending"
        ready = all(c["ready"] for c in containers) and phase == "Running"
        unready = [c["name"] for c in containers if not c["ready"]]
        old = pod.get("status") or {}
        # A container waiting on its config has its sandbox already (the image was pulled).
        sandbox_ready = (
            any(c.get("containerID") for c in containers)
            or phase != "Pending"
            or any(
                (c["state"].get("waiting") or {}).get("reason") == "CreateContainerConfigError"
                for c in containers
            )
        )

        def cond(type_: str, ok: bool, reason: str | None = None, message: str | None = None) -> Obj:
            status = "True" if ok else "False"
            previous = next((c for c in old.get("conditions") or [] if c.get("type") == type_), None)
            since = (
                previous["lastTransitionTime"]
                if previous and previous.get("status") == status
                else clock.rfc3339(now)
            )
            out: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
            if not ok and reason:
                out.update(reason=reason, message=message or "")
            return out

        if phase in ("Succeeded", "Failed"):
            not_ready = ("PodCompleted", "")
        else:
            not_ready = ("ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
        conditions = [
            cond("PodReadyToStartContainers", sandbox_ready),
            cond("Initialized", True),
            cond("Ready", ready, *not_ready),
            cond("ContainersReady", ready, *not_ready),
            cond("PodScheduled", True),
        ]
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": runtime.ip,
            "podIPs": [{"ip": runtime.ip}],
            "startTime": clock.rfc3339(runtime.scheduled_at),
            "containerStatuses": containers,
            "qosClass": "BestEffort",
        }
        return status

    def _record_events(self, pod: Obj, runtime: PodRuntime, status: Mapping[str, Any]) -> None:
        for c in status.get("containerStatuses") or []:
            image = runtime.images[c["name"]]
            state = c["state"]
            waiting = (state.get("waiting") or {}).get("reason")
            if waiting in ("ErrImagePull", "ImagePullBackOff"):
                self._once(
                    pod,
                    runtime,
                    f"pull-fail/{c['name']}",
                    "Warning",
                    "Failed",
                    f'Failed to pull image "{image}": {state["waiting"]["message"]}',
                )
                if waiting == "ImagePullBackOff":
                    self._once(
                        pod,
                        runtime,
                        f"pull-backoff/{c['name']}",
                        "Warning",
                        "BackOff",
                        f'Back-off pulling image "{image}"',
                    )
                continue
            if waiting == "CreateContainerConfigError":
                self._once(
                    pod,
                    runtime,
                    f"config/{c['name']}",
                    "Warning",
                    "Failed",
                    f"Error: {state['waiting']['message']}",
                )
            if c.get("containerID"):
                self._once(
                    pod,
                    runtime,
                    f"pulled/{c['name']}",
                    "Normal",
                    "Pulled",
                    f'Container image "{image}" already present on machine',
                )
                self._once(
                    pod,
                    runtime,
                    f"created/{c['name']}",
                    "Normal",
                    "Created",
                    f"Created container: {c['name']}",
                )
                self._once(
                    pod,
                    runtime,
                    f"started/{c['name']}",
                    "Normal",
                    "Started",
                    f"Started container {c['name']}",
                )
            if waiting == "CrashLoopBackOff":
                self._once(
                    pod,
                    runtime,
                    f"backoff/{c['name']}/{c['restartCount']}",
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {c['name']} in pod {pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})",
                )
            if "running" in state and not c["ready"] and not runtime.is_job:
                self._once(
                    pod,
                    runtime,
                    f"unhealthy/{c['name']}",
                    "Warning",
                    "Unhealthy",
                    "Readiness probe failed: HTTP probe failed with statuscode: 503",
                )

    def _once(self, pod: Obj, runtime: PodRuntime, key: str, type_: str, reason: str, message: str) -> None:
        if key in runtime.events_sent:
            return
        runtime.events_sent.add(key)
        self.events.record(pod, type_, reason, message, self.component)

    # --- logs ---------------------------------------------------------------------

    def logs(self, pod: Obj, container: str, *, previous: bool = False) -> str:
        """The container's log, made up from its image and rule; raises BadRequest as the
        kubelet does for a container that has not started."""
        runtime = self._pods.get(pod["metadata"]["uid"])
        status = next(
            (c for c in (pod.get("status") or {}).get("containerStatuses") or [] if c["name"] == container),
            None,
        )
        name = pod["metadata"]["name"]
        if runtime is None or status is None or container not in runtime.rules:
            raise errors.BadRequest(
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        rule, image = runtime.rules[container], runtime.images[container]
        start = runtime.started.get(container, runtime.scheduled_at) + self._delay(rule)
        if previous:
            if "terminated" not in (status.get("lastState") or {}):
                raise errors.BadRequest(
                    f'previous terminated container "{container}" in pod "{name}" not found'
                )
            return self._run_log(rule, image, start, crashed=True)
        waiting = (status["state"].get("waiting") or {}).get("reason")
        if waiting and waiting != "CrashLoopBackOff":
            raise errors.BadRequest(f'container "{container}" in pod "{name}" is waiting to start: {waiting}')
        if runtime.is_job:
            return self._job_log(rule, image, start, "terminated" in status["state"])
        return self._run_log(rule, image, start, crashed=rule.pod == "CrashLoopBackOff")

    @staticmethod
    def _run_log(rule: ImageRule, image: str, start: float, *, crashed: bool) -> str:
        ts = clock.rfc3339(start)
        lines = [f"{ts} starting {image}"]
        if crashed:
            lines.append(
                rule.logs.rstrip("\n")
                if rule.logs
                else f"{ts} fatal: {image} crashed at start (sandbox rule CrashLoopBackOff)"
            )
            lines.append(f"{ts} exit status 1")
        else:
            lines.append(f"{ts} listening on :8080")
            if rule.pod == "NeverReady":
                lines.append(f"{ts} readiness: dependencies not reachable, answering 503")
            if rule.logs:
                lines.append(rule.logs.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def _job_log(self, rule: ImageRule, image: str, start: float, finished: bool) -> str:
        ts = clock.rfc3339(start)
        lines = [f"{ts} starting {image}"]
        if rule.logs:
            lines.append(rule.logs.rstrip("\n"))
        if finished:
            code = rule.job_exit_code
            lines.append(f"{ts} done" if code == 0 else f"{ts} error: exiting with code {code}")
        return "\n".join(lines) + "\n"
