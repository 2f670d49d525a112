"""The three patch types, one row per behaviour the API server has."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kube import errors
from sandbox.kube.patch import json_merge, json_patch, strategic_merge


def _deployment(*containers: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": list(containers)}}},
    }


APP = {
    "name": "app",
    "image": "app:v1",
    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
    "ports": [{"containerPort": 8080}],
}
SIDECAR = {"name": "sidecar", "image": "proxy:1"}


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize(
    ("patch", "check", "why"),
    [
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}}}},
            lambda c: [x["image"] for x in c] == ["app:v2", "proxy:1"] and c[0]["env"] == APP["env"],
            "containers merge by name: one image changes, the other container and the env stay",
        ),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "n:1"}]}}}},
            lambda c: [x["name"] for x in c] == ["app", "sidecar", "new"],
            "an unknown merge key appends",
        ),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}},
            lambda c: [x["name"] for x in c] == ["app"],
            "$patch: delete removes the item with that key",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "env": [{"name": "B", "value": "9"}, {"name": "C", "value": "3"}],
                                }
                            ]
                        }
                    }
                }
            },
            lambda c: (
                c[0]["env"]
                == [{"name": "A", "value": "1"}, {"name": "B", "value": "9"}, {"name": "C", "value": "3"}]
            ),
            "env merges by name inside a merged container",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9090}]}]}
                    }
                }
            },
            lambda c: [p["containerPort"] for p in c[0]["ports"]] == [8080, 9090],
            "container ports merge by containerPort",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {
                            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
                            "containers": [{"name": "app", "image": "app:v3"}],
                        }
                    }
                }
            },
            lambda c: [(x["name"], x["image"]) for x in c] == [("sidecar", "proxy:1"), ("app", "app:v3")],
            "$setElementOrder (what kubectl set image sends) orders the merged list",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o:1"}]}
                    }
                }
            },
            lambda c: c == [{"name": "only", "image": "o:1"}],
            "$patch: replace in a list replaces it whole",
        ),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": None}]}}}},
            lambda c: "image" not in c[0],
            "null deletes a field",
        ),
    ],
)
def test_strategic_merge_patch_of_containers(patch: dict[str, Any], check: Any, why: str) -> None:
    original = _deployment(APP, SIDECAR)
    assert check(_containers(strategic_merge(original, patch, "Deployment"))), why
    assert _containers(original)[0]["image"] == "app:v1", "the original is not changed"


def test_strategic_merge_replaces_lists_without_a_merge_key() -> None:
    original = _deployment({"name": "app", "image": "a", "args": ["--x", "--y"]})
    patched = strategic_merge(
        original,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "args": ["--z"]}]}}}},
        "Deployment",
    )
    assert _containers(patched)[0]["args"] == ["--z"]


def test_strategic_merge_retain_keys_drops_the_other_strategy_fields() -> None:
    original = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert strategic_merge(original, patch, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_strategic_merge_merges_service_ports_by_port() -> None:
    original = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}}
    patched = strategic_merge(original, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, "Service")
    assert patched["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}]


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}}, {"a": 1, "b": {"c": 2, "d": 3}}),
        ({"a": 1, "b": 2}, {"b": None}, {"a": 1}),
        ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
    ],
)
def test_json_merge_patch_follows_rfc_7386(target: Any, patch: Any, expected: Any) -> None:
    assert json_merge(target, patch) == expected


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ([{"op": "replace", "path": "/a", "value": 9}], {"a": 9, "l": [1, 2], "m": {"k/x": 1}}),
        ([{"op": "add", "path": "/l/-", "value": 3}], {"a": 1, "l": [1, 2, 3], "m": {"k/x": 1}}),
        ([{"op": "add", "path": "/l/0", "value": 0}], {"a": 1, "l": [0, 1, 2], "m": {"k/x": 1}}),
        ([{"op": "remove", "path": "/m/k~1x"}], {"a": 1, "l": [1, 2], "m": {}}),
        ([{"op": "move", "from": "/a", "path": "/b"}], {"b": 1, "l": [1, 2], "m": {"k/x": 1}}),
        ([{"op": "copy", "from": "/a", "path": "/c"}], {"a": 1, "c": 1, "l": [1, 2], "m": {"k/x": 1}}),
        (
            [{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 2}],
            {"a": 2, "l": [1, 2], "m": {"k/x": 1}},
        ),
    ],
)
def test_json_patch_follows_rfc_6902(ops: list[dict[str, Any]], expected: Any) -> None:
    assert json_patch({"a": 1, "l": [1, 2], "m": {"k/x": 1}}, ops) == expected


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "remove", "path": "/l/5"}],
        [{"op": "frobnicate", "path": "/a"}],
    ],
)
def test_json_patch_that_does_not_apply_is_invalid(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(errors.Invalid):
        json_patch({"a": 1, "l": [1, 2]}, ops)
