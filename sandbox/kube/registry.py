"""The API semantics over the store: what happens on create, update, patch and delete.

Like the real API server's registry, it defaults and validates objects, keeps server-owned
fields (uid, creationTimestamp, status or spec depending on the subresource), bumps
metadata.generation when the spec changes, answers a stale resourceVersion with 409,
skips no-op writes and garbage-collects dependents by ownerReferences on delete.
The HTTP layer and the controllers both write through it.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.kube import clock, errors, patch, resources, selectors
from sandbox.kube.resources import Resource
from sandbox.kube.store import Change, Store

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
PATCH_TYPES = (
    "application/strategic-merge-patch+json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
)
_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "selfLink")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(n))


def _spec_of(obj: Mapping[str, Any]) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- versions -----------------------------------------------------------------

    @staticmethod
    def to_version(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        if res.kind == "HorizontalPodAutoscaler" and res.version == "v1":
            return resources.hpa_to_v1(obj)
        return obj

    @staticmethod
    def from_version(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        if res.kind == "HorizontalPodAutoscaler" and res.version == "v1":
            obj = resources.hpa_from_v1(obj)
        storage = resources.storage_resource(res.kind)
        return {**obj, "kind": storage.kind, "apiVersion": storage.api_version}

    # --- reads --------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(res.storage_key, namespace if res.namespaced else "", name)
        if obj is None:
            raise errors.not_found(res.plural, res.group, name)
        return self.to_version(res, obj)

    def try_get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.store.get(res.storage_key, namespace if res.namespaced else "", name)
        return self.to_version(res, obj) if obj is not None else None

    def list(
        self,
        res: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        *,
        readonly: bool = False,
    ) -> dict[str, Any]:
        """A List object. `readonly` skips copying the items: for callers that only read them
        (the controllers' passes, responses serialized at once)."""
        labels = selectors.parse_label_selector(label_selector)
        fields = selectors.parse_field_selector(field_selector, res.kind)
        items, rv = self.store.list(res.storage_key, namespace if res.namespaced else None, copy_items=False)
        items = [
            o
            for o in items
            if selectors.matches(labels, o["metadata"].get("labels")) and selectors.matches_fields(fields, o)
        ]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if continue_token:
            try:
                start = json.loads(base64.urlsafe_b64decode(continue_token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise errors.BadRequest(f"invalid continue token {continue_token!r}") from None
            items = [o for o in items if [o["metadata"].get("namespace", ""), o["metadata"]["name"]] > start]
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            start = [last.get("namespace", ""), last["name"]]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": start, "rv": rv}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": meta,
            "items": [self.to_version(res, o if readonly else copy.deepcopy(o)) for o in items],
        }

    # --- create -------------------------------------------------------------------

    def _check_namespace(self, res: Resource, namespace: str) -> None:
        if res.namespaced and self.store.get("namespaces", "", namespace) is None:
            raise errors.not_found("namespaces", "", namespace)

    def create(
        self, res: Resource, namespace: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise errors.BadRequest("the request body must be a JSON object")
        obj = copy.deepcopy(dict(body))
        if obj.get("kind") not in (None, res.kind):
            raise errors.BadRequest(
                f"the kind of the object ({obj.get('kind')}) does not match the resource {res.plural} ({res.kind})"
            )
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise errors.BadRequest("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        obj = self.from_version(res, obj)
        meta = obj["metadata"]
        for key in _SERVER_META:
            meta.pop(key, None)
        meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = clock.rfc3339()
        kind = obj["kind"]
        if res.has_status and kind not in ("Namespace", "Node"):
            obj["status"] = _initial_status(kind)
        resources.defaults(kind, obj)
        if "spec" in obj:
            meta["generation"] = 1
        with self.store.lock:
            resources.validate(kind, obj)
            self._check_namespace(res, namespace)
            if self.store.get(res.storage_key, meta.get("namespace", ""), meta["name"]) is not None:
                raise errors.already_exists(res.plural, res.group, meta["name"])
            if dry_run:
                meta["resourceVersion"] = ""
                return self.to_version(res, obj)
            return self.to_version(res, self.store.create(res.storage_key, obj))

    # --- update -------------------------------------------------------------------

    def update(
        self,
        res: Resource,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        check_rv: bool = True,
    ) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise errors.BadRequest("the request body must be a JSON object")
        if subresource == "scale":
            return self._update_scale(res, namespace, name, body, dry_run=dry_run)
        with self.store.lock:
            current = self.store.get(res.storage_key, namespace if res.namespaced else "", name)
            if current is None:
                raise errors.not_found(res.plural, res.group, name)
            new = self.from_version(res, copy.deepcopy(dict(body)))
            meta = new.setdefault("metadata", {})
            if meta.get("name") not in (None, name):
                raise errors.BadRequest(
                    f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
                )
            rv = meta.get("resourceVersion")
            if check_rv and rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(res.plural, res.group, name)
            if subresource == "status":
                # The status strategy keeps spec and labels; annotations may change, as the
                # deployment controller writes its revision annotation this way.
                merged = copy.deepcopy(current)
                merged["status"] = new.get("status") or {}
                if "annotations" in meta:
                    merged["metadata"]["annotations"] = meta["annotations"]
                    if not merged["metadata"]["annotations"]:
                        del merged["metadata"]["annotations"]
                new = merged
            else:
                meta["name"] = name
                if res.namespaced:
                    meta["namespace"] = namespace
                for key in _SERVER_META:
                    if key in current["metadata"]:
                        meta[key] = current["metadata"][key]
                    else:
                        meta.pop(key, None)
                if res.has_status:
                    new["status"] = copy.deepcopy(current.get("status") or {})
                resources.defaults(new["kind"], new)
                resources.validate(new["kind"], new, current)
                if "spec" in new and _spec_of(new) != _spec_of(current):
                    meta["generation"] = current["metadata"].get("generation", 0) + 1
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if new == current or dry_run:
                return self.to_version(res, new)
            return self.to_version(res, self.store.replace(res.storage_key, new))

    def mutate(
        self,
        res: Resource,
        namespace: str,
        name: str,
        fn: Callable[[dict[str, Any]], None],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Read, change and write an object atomically (for the controllers)."""
        with self.store.lock:
            obj = self.get(res, namespace, name)
            fn(obj)
            return self.update(res, namespace, name, obj, subresource=subresource)

    # --- patch --------------------------------------------------------------------

    def patch(
        self,
        res: Resource,
        namespace: str,
        name: str,
        patch_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Apply a patch; returns the object and whether it was created (server-side apply only)."""
        with self.store.lock:
            if subresource == "scale":
                current = self.get_scale(res, namespace, name)
                kind = "Scale"
            else:
                current = self.try_get(res, namespace, name)
                if current is None:
                    if patch_type == "application/apply-patch+yaml":
                        return self.create(res, namespace, body, dry_run=dry_run), True
                    raise errors.not_found(res.plural, res.group, name)
                kind = res.kind
            if patch_type == "application/json-patch+json":
                patched = patch.json_patch(current, body)
            elif patch_type == "application/merge-patch+json":
                patched = patch.json_merge(current, body)
            elif patch_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
                patched = patch.strategic_merge(current, body, kind)
            else:
                raise errors.UnsupportedMediaType(
                    f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}"
                )
            if not isinstance(patched, dict):
                raise errors.BadRequest("the patched object is not a JSON object")
            patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
            if patched_rv and patched_rv != current["metadata"].get("resourceVersion"):
                raise errors.conflict(res.plural, res.group, name)
            if subresource == "scale":
                return self._update_scale(res, namespace, name, patched, dry_run=dry_run), False
            return self.update(
                res, namespace, name, patched, subresource=subresource, dry_run=dry_run, check_rv=False
            ), False

    # --- scale ------------------------------------------------------------------------

    def get_scale(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.get(res, namespace, name)
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": obj["spec"].get("replicas", 0)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": selectors.label_selector_text(obj["spec"].get("selector")),
            },
        }

    def _update_scale(
        self, res: Resource, namespace: str, name: str, scale: Mapping[str, Any], *, dry_run: bool
    ) -> dict[str, Any]:
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                name,
                [("spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0")],
            )
        with self.store.lock:
            obj = self.get(res, namespace, name)
            rv = (scale.get("metadata") or {}).get("resourceVersion")
            if rv and rv != obj["metadata"]["resourceVersion"]:
                raise errors.conflict(res.plural, res.group, name)
            obj["spec"]["replicas"] = replicas
            updated = self.update(res, namespace, name, obj, dry_run=dry_run, check_rv=False)
            scale_out = self.get_scale(res, namespace, name)
            scale_out["spec"]["replicas"] = updated["spec"]["replicas"]
            scale_out["metadata"]["resourceVersion"] = updated["metadata"]["resourceVersion"]
            return scale_out

    # --- delete -----------------------------------------------------------------------

    def delete(
        self,
        res: Resource,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        with self.store.lock:
            current = self.store.get(res.storage_key, namespace if res.namespaced else "", name)
            if current is None:
                raise errors.not_found(res.plural, res.group, name)
            for key in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(key)
                if wanted and wanted != current["metadata"].get(key):
                    raise errors.Conflict(
                        f'Operation cannot be fulfilled on {errors.qualified(res.plural, res.group)} "{name}": '
                        f"Precondition failed: {key} in precondition: {wanted}, {key} in object meta: {current['metadata'].get(key)}"
                    )
            if dry_run:
                return self.to_version(res, current)
            gone = self.store.delete(res.storage_key, current["metadata"].get("namespace", ""), name)
            assert gone is not None
            if res.kind == "Namespace":
                self._delete_namespace_contents(name)
            self._collect_dependents(current["metadata"]["uid"], propagation or "Background")
            return self.to_version(res, gone)

    def _collect_dependents(self, owner_uid: str, propagation: str) -> None:
        """The garbage collector, run at once: dependents go too, or lose the reference (Orphan)."""
        for key, obj in self.store.iter_all():
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == owner_uid for r in refs):
                continue
            meta = obj["metadata"]
            if propagation == "Orphan":
                meta["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid] or None
                if meta["ownerReferences"] is None:
                    del meta["ownerReferences"]
                self.store.replace(key, obj)
                continue
            gone = self.store.delete(key, meta.get("namespace", ""), meta["name"])
            if gone is not None:
                self._collect_dependents(meta["uid"], propagation)

    def _delete_namespace_contents(self, namespace: str) -> None:
        for key, obj in self.store.iter_all():
            if obj["metadata"].get("namespace") == namespace:
                self.store.delete(key, namespace, obj["metadata"]["name"])

    # --- watch ------------------------------------------------------------------------

    def watch_filter(
        self, res: Resource, namespace: str | None, label_selector: str | None, field_selector: str | None
    ) -> Callable[[Change], dict[str, Any] | None]:
        """A function turning a store change into the watch event this watcher sees, or None.
        An object that starts or stops matching the selectors is ADDED or DELETED, as the
        real watch cache reports it."""
        labels = selectors.parse_label_selector(label_selector)
        fields = selectors.parse_field_selector(field_selector, res.kind)
        key = res.storage_key
        scope = namespace if res.namespaced else None

        def passes(obj: Mapping[str, Any] | None) -> bool:
            return (
                obj is not None
                and selectors.matches(labels, obj["metadata"].get("labels"))
                and selectors.matches_fields(fields, obj)
            )

        def convert(change: Change) -> dict[str, Any] | None:
            if change.key != key or (scope is not None and change.namespace != scope):
                return None
            now, before = passes(change.obj), passes(change.old)
            if change.type == "DELETED":
                return {"type": "DELETED", "object": self.to_version(res, change.obj)} if before else None
            if change.type == "ADDED" or (now and not before):
                return {"type": "ADDED", "object": self.to_version(res, change.obj)} if now else None
            if now:
                return {"type": "MODIFIED", "object": self.to_version(res, change.obj)}
            if before and change.old is not None:
                old = copy.deepcopy(change.old)
                old["metadata"]["resourceVersion"] = str(change.rv)
                return {"type": "DELETED", "object": self.to_version(res, old)}
            return None

        return convert


def _initial_status(kind: str) -> dict[str, Any]:
    if kind == "Pod":
        return {"phase": "Pending", "qosClass": "BestEffort"}
    if kind == "ReplicaSet":
        return {"replicas": 0}
    if kind == "HorizontalPodAutoscaler":
        return {"currentReplicas": 0, "desiredReplicas": 0}
    return {}
