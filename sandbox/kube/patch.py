"""The three patch types of the Kubernetes API, as pure functions over JSON documents.

- `strategic_merge`: `application/strategic-merge-patch+json`. Maps merge key by key;
  lists with a patch merge key (containers by `name`, container ports by `containerPort`,
  service ports by `port`, ...) merge item by item; other lists are replaced. Supports the
  `$patch: replace|delete|merge`, `$retainKeys`, `$setElementOrder/<list>` and
  `$deleteFromPrimitiveList/<list>` directives kubectl sends.
- `json_merge`: `application/merge-patch+json` (RFC 7386): lists are always replaced.
- `json_patch`: `application/json-patch+json` (RFC 6902): a list of operations, applied by
  the `jsonpatch` library.

The merge keys come from the Go struct tags of the built-in types (`patchMergeKey`,
`patchStrategy`); `list_merge_key` holds the ones the sandbox's kinds use.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from sandbox.kube.errors import Invalid

# patchMergeKey of list fields inside a PodSpec, a Container and ObjectMeta.
_POD_SPEC_LISTS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_CONTAINER_LISTS = {
    "ports": "containerPort",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
PRIMITIVE_MERGE = "<primitive>"


def list_merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    """The merge key for the list at `path` in an object of `kind`; PRIMITIVE_MERGE for merged
    lists of scalars (finalizers); None when the list is replaced whole."""
    if path == ("metadata", "ownerReferences"):
        return "uid"
    if path == ("metadata", "finalizers"):
        return PRIMITIVE_MERGE
    if path == ("status", "conditions"):
        return "type"
    if kind == "Service" and path == ("spec", "ports"):
        return "port"
    pod_spec = _POD_SPEC_PATHS.get(kind)
    if pod_spec is None or path[: len(pod_spec)] != pod_spec:
        return None
    rest = path[len(pod_spec) :]
    if len(rest) == 1:
        return _POD_SPEC_LISTS.get(rest[0])
    if len(rest) == 2 and rest[0] in ("containers", "initContainers", "ephemeralContainers"):
        return _CONTAINER_LISTS.get(rest[1])
    return None


# --- strategic merge patch ------------------------------------------------------------


def strategic_merge(original: dict[str, Any], patch: dict[str, Any], kind: str) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise Invalid("a strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(original), patch, kind, ())
    return merged if merged is not None else {}


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not (
                k in ("$patch", "$retainKeys")
                or k.startswith("$setElementOrder/")
                or k.startswith("$deleteFromPrimitiveList/")
            )
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and set(v) == {"$patch"})]
    return value


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], kind: str, path: tuple[str, ...]
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise Invalid(
            f"unknown patch directive {directive!r} at {'.'.join(path) or 'the root'}; allowed: replace, delete, merge"
        )
    retain = patch.get("$retainKeys")
    if retain is not None:
        original = {k: v for k, v in original.items() if k in retain}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list):
                original[field] = [v for v in original[field] if v not in value]
            continue
        sub = path + (key,)
        current = original.get(key)
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value, kind, sub)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            merge_key = list_merge_key(kind, sub)
            if merge_key is not None and isinstance(current, list):
                original[key] = _merge_list(current, value, merge_key, kind, sub)
            else:
                original[key] = _strip_directives(
                    [v for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
                )
        else:
            original[key] = value
    for key, order in patch.items():
        if key.startswith("$setElementOrder/"):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list):
                original[field] = _apply_order(original[field], order, list_merge_key(kind, path + (field,)))
    return original


def _merge_list(
    current: list[Any], patch: list[Any], merge_key: str, kind: str, path: tuple[str, ...]
) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return _strip_directives(
            [item for item in patch if not (isinstance(item, dict) and item.get("$patch") == "replace")]
        )
    if merge_key == PRIMITIVE_MERGE:
        return current + [v for v in patch if v not in current]
    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise Invalid(f"{'.'.join(path)}: each item of a merged list needs the merge key {merge_key!r}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip_directives(item))
        else:
            merged = _merge_map(result[index], item, kind, path)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    return result


def _apply_order(items: list[Any], order: list[Any], merge_key: str | None) -> list[Any]:
    """Put items in the `$setElementOrder` order; items it does not name keep their place after them."""

    def identity(item: Any) -> Any:
        if merge_key not in (None, PRIMITIVE_MERGE) and isinstance(item, dict):
            return item.get(merge_key)
        return item

    wanted = [identity(o) for o in order]
    ranked = sorted(
        enumerate(items),
        key=lambda pair: (
            wanted.index(identity(pair[1])) if identity(pair[1]) in wanted else len(wanted),
            pair[0],
        ),
    )
    return [item for _, item in ranked]


# --- JSON merge patch (RFC 7386) -------------------------------------------------------


def json_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge(result.get(key), value)
    return result


# --- JSON patch (RFC 6902) -------------------------------------------------------------


def json_patch(document: Any, operations: Any) -> Any:
    """`document` with the operations applied (the original is not changed); a malformed
    patch, a path that does not resolve and a failed `test` are all Invalid (422)."""
    try:
        return jsonpatch.JsonPatch(operations).apply(document)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise Invalid(f"the JSON patch does not apply: {exc}") from None
