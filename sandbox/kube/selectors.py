"""Label and field selectors, parsed and matched as the API server does.

Label selectors come as text (`app=web,tier in (front,back),!canary`) in list and watch
queries, or as `LabelSelector` objects (`matchLabels` / `matchExpressions`) inside
Deployments, ReplicaSets, Jobs and Services. Both become a tuple of `Requirement`s.
Field selectors support `=`, `==` and `!=` on the fields each kind allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.kube.errors import BadRequest

_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(>|<)\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector. `op` is one of =, !=, in, notin, exists, !exists, gt, lt."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!exists":
                return not present
            case "gt" | "lt":
                try:
                    number = int(value or "")
                except ValueError:
                    return False
                return number > int(self.values[0]) if self.op == "gt" else number < int(self.values[0])
        raise AssertionError(self.op)


Selector = tuple[Requirement, ...]


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` is two terms."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def parse_label_selector(text: str | None) -> Selector:
    """Parse the text form; an empty selector matches everything."""
    if text is None or not text.strip():
        return ()
    requirements = []
    for term in _split_terms(text):
        if m := _SET_RE.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise BadRequest(
                    f"unable to parse requirement: {term.strip()!r}: for 'in', 'notin' operators, values set can't be empty"
                )
            requirements.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(term):
            requirements.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := _CMP_RE.match(term):
            requirements.append(Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", (m.group(3),)))
        elif m := _EXISTS_RE.match(term):
            requirements.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise BadRequest(f"unable to parse requirement: {term.strip()!r} in label selector {text!r}")
    return tuple(requirements)


_EXPRESSION_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}


def from_label_selector(selector: Mapping[str, Any] | None) -> Selector:
    """A `LabelSelector` object as requirements. None matches nothing, `{}` matches everything."""
    if selector is None:
        return (Requirement("", "in", ()),)  # matches nothing, as a nil selector does
    requirements = [Requirement(k, "=", (v,)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op = _EXPRESSION_OPS.get(expr.get("operator", ""))
        if op is None:
            raise BadRequest(
                f"{expr.get('operator')!r} is not a valid label selector operator; allowed: {', '.join(_EXPRESSION_OPS)}"
            )
        requirements.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return tuple(requirements)


def matches(selector: Selector, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in selector)


def label_selector_text(selector: Mapping[str, Any] | None) -> str:
    """The text form of a `LabelSelector`, as the scale subresource reports it in status.selector."""
    parts = []
    for r in from_label_selector(selector or {}):
        if r.op == "=":
            parts.append(f"{r.key}={r.values[0]}")
        elif r.op in ("in", "notin"):
            parts.append(f"{r.key} {r.op} ({','.join(sorted(r.values))})")
        elif r.op == "exists":
            parts.append(r.key)
        elif r.op == "!exists":
            parts.append(f"!{r.key}")
    return ",".join(parts)


# --- field selectors -----------------------------------------------------------------

_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
FIELDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "Pod": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Event": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "Namespace": ("status.phase",),
    "Secret": ("type",),
    "ReplicaSet": ("status.replicas",),
    "Job": ("status.successful",),
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


def parse_field_selector(text: str | None, kind: str) -> tuple[FieldRequirement, ...]:
    if text is None or not text.strip():
        return ()
    allowed = _COMMON_FIELDS + FIELDS_BY_KIND.get(kind, ())
    requirements = []
    for term in text.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise BadRequest(f"invalid selector: {text!r}; can't understand {term!r}")
        if m.group(1) not in allowed:
            raise BadRequest(f"field label not supported: {m.group(1)}; {kind} allows: {', '.join(allowed)}")
        requirements.append(FieldRequirement(m.group(1), m.group(3), m.group(2) == "!="))
    return tuple(requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    if path == "status.successful":  # the Job field selector's name for status.succeeded
        path = "status.succeeded"
    if path == "source":  # events: source.component
        path = "source.component"
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def matches_fields(requirements: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    return all((field_value(obj, r.field) == r.value) != r.negate for r in requirements)
