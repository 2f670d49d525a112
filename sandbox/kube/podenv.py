"""A container's environment as the kubelet builds it when the container starts.

`envFrom` sources first, in order (ConfigMap or Secret keys, with `prefix`), then `env`
entries in order (a literal `value`, or `valueFrom.configMapKeyRef` / `secretKeyRef`); a
later definition of a name replaces an earlier one. A missing ConfigMap, Secret or key that
is not `optional` is a `ConfigError`, with the message the real kubelet puts in the
container's CreateContainerConfigError.

The result keeps values only where they are no secret (literals and ConfigMap keys); a
Secret-sourced variable is kept as a reference, the Secret's name and key, never its value.
`fieldRef` and `resourceFieldRef` variables are left out: nothing in the sandbox reads them.
`$(VAR)` references in literal values are not expanded (expanding one that names a
Secret-sourced variable would put the secret into the result).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# What the kubelet annotates a pod with when its containers start (JSON, by container name).
ENV_ANNOTATION = "sandbox.runbook.dev/env"
ENV_SECRETS_ANNOTATION = "sandbox.runbook.dev/env-secrets"

Source = Literal["ConfigMap", "Secret"]
# (kind, name) -> the data of that object in the pod's namespace (Secret values still base64), or None
Lookup = Callable[[Source, str], Mapping[str, str] | None]


class ConfigError(Exception):
    """The container cannot start: a ConfigMap, Secret or key it needs is missing."""


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str

    def to_json(self) -> dict[str, str]:
        return {"secret": self.secret, "key": self.key}


@dataclass(frozen=True)
class ContainerEnv:
    """What a started container's environment is: `values` of literal and ConfigMap-sourced
    variables, `secrets` naming the Secret key each Secret-sourced variable comes from."""

    values: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, SecretRef] = field(default_factory=dict)


def uses_env(container: Mapping[str, Any]) -> bool:
    return bool(container.get("env") or container.get("envFrom"))


def _read(lookup: Lookup, source: Source, name: str, optional: bool) -> Mapping[str, str] | None:
    data = lookup(source, name)
    if data is None and not optional:
        raise ConfigError(f'{source.lower()} "{name}" not found')
    return data


def resolve(container: Mapping[str, Any], namespace: str, lookup: Lookup) -> ContainerEnv:
    """The environment of `container` in `namespace`, reading ConfigMaps and Secrets with
    `lookup(kind, name)`; raises ConfigError as the kubelet refuses to start it."""
    defined: dict[str, str | SecretRef] = {}
    for source_ref in container.get("envFrom") or []:
        prefix = source_ref.get("prefix") or ""
        for key, source in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = source_ref.get(key)
            if ref is None:
                continue
            data = _read(lookup, source, ref.get("name", ""), bool(ref.get("optional")))
            for k, v in (data or {}).items():
                defined[prefix + k] = SecretRef(ref["name"], k) if source == "Secret" else v
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "value" in var or not var.get("valueFrom"):
            defined[name] = str(var.get("value") or "")
            continue
        value_from = var["valueFrom"]
        if not any(k in value_from for k in ("configMapKeyRef", "secretKeyRef")):
            defined.pop(name, None)  # a fieldRef or resourceFieldRef: neither kept nor secret
            continue
        for key, source in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            ref = value_from.get(key)
            if ref is None:
                continue
            optional = bool(ref.get("optional"))
            data = _read(lookup, source, ref.get("name", ""), optional)
            if data is None:
                break
            if ref.get("key") not in data:
                if optional:
                    break
                raise ConfigError(f"couldn't find key {ref.get('key')} in {source} {namespace}/{ref['name']}")
            defined[name] = SecretRef(ref["name"], ref["key"]) if source == "Secret" else data[ref["key"]]
            break
    return ContainerEnv(
        values={k: v for k, v in defined.items() if isinstance(v, str)},
        secrets={k: v for k, v in defined.items() if isinstance(v, SecretRef)},
    )
