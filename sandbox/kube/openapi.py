"""A minimal OpenAPI v3 discovery, just enough for kubectl.

kubectl (apply, create, replace, edit) reads /openapi/v3 to decide how to validate: when
a kind's PATCH operation lists the `fieldValidation` query parameter, it leaves validation
to the server (QueryParamVerifierV3) instead of downloading the whole schema. The
documents therefore hold, per group-version, one PATCH operation per kind with that
parameter, tagged with `x-kubernetes-group-version-kind`. They do not offer
strategic-merge-patch request bodies, so `kubectl apply` computes its patches from its
built-in types, as it does for any kind the schema does not describe. /openapi/v2 is not
served; kubectl treats that as "no schema".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sandbox.kube import errors
from sandbox.kube.resources import GROUP_VERSIONS, RESOURCES, Resource

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")
_BODY_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(res: Resource) -> str:
    scope = "/namespaces/{namespace}" if res.namespaced else ""
    return f"/{_gv_path(res.group, res.version)}{scope}/{res.plural}/{{name}}"


def _gv_document(group: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for res in RESOURCES:
        if (res.group, res.version) != (group, version):
            continue
        gvk = {"group": res.group, "version": res.version, "kind": res.kind}
        schema_name = f"io.k8s.sandbox.{res.group or 'core'}.{res.version}.{res.kind}"
        schemas[schema_name] = {"type": "object", "x-kubernetes-group-version-kind": [gvk]}
        ref = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        paths[_item_path(res)] = {
            "patch": {
                "operationId": f"patch{res.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                    for p in _QUERY_PARAMS
                ],
                "requestBody": {
                    "content": {t: {"schema": {"type": "object"}} for t in _BODY_TYPES},
                    "required": True,
                },
                "responses": {"200": {"description": "OK", "content": {"application/json": ref}}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (Runbook Flows sandbox)", "version": "v1.37.0-sandbox"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()


def document(path: str, query: Mapping[str, str]) -> dict[str, Any]:
    if path == "/openapi/v3":
        listing = {}
        for group, versions in GROUP_VERSIONS.items():
            for version in versions:
                gv = _gv_path(group, version)
                listing[gv] = {
                    "serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(_gv_document(group, version))}"
                }
        return {"paths": listing}
    if path.startswith("/openapi/v3/"):
        parts = path[len("/openapi/v3/") :].split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise errors.NotFound("the server could not find the requested resource")
        if version in GROUP_VERSIONS.get(group, ()):
            return _gv_document(group, version)
    raise errors.NotFound("the server could not find the requested resource")
