"""How each version of the sample service behaves, keyed by container image.

A behaviour says whether the version's /health passes, what share of its requests fail
and how slow they are (a log-normal latency with the given median and 95th percentile):

    good        healthy, no errors, p50 20 ms, p95 60 ms
    unhealthy   /health answers 503 (requests still succeed: the health check is what fails)
    errors      error_rate of requests fail (default 0.08)
    slow        p50 300 ms, p95 800 ms

Config maps an image pattern to a preset name or a mapping (a preset under `kind`, plus
overrides of the fields below):

    {
      "sandbox/app:v3": "unhealthy",                            # exact image
      ":canary-*": {"kind": "errors", "error_rate": 0.25},      # ':' first: glob on the tag
      "registry.local/*": {"latency_p95_ms": 400},              # glob on the whole image
    }

An exact image wins, then patterns in the order given, then the tag conventions below,
then `good`:

    tag contains `bad-health` or `unhealthy`   -> unhealthy
    tag contains `err<N>` (err8, v2-err25)      -> errors with error_rate N/100
    tag contains `slow<N>`                      -> slow with p95 N ms; plain `slow` -> 800 ms

One image is no version of the app at all: an image whose repository (the part before
the tag) ends with `maintenance-page`, such as `sandbox/maintenance-page:v1`, is a static
maintenance page (`is_maintenance_page`), whatever the rules and tag conventions say. A
Service that routes to one is in maintenance (traffic.py).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox.kube.rules import image_tag

_Z95 = NormalDist().inv_cdf(0.95)


class Behaviour(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    healthy: bool = Field(True, description="False: /health answers 503 while this version gets traffic")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests that fail with 500")
    latency_p50_ms: float = Field(20.0, gt=0, description="Median request latency")
    latency_p95_ms: float = Field(60.0, gt=0, description="95th percentile request latency")

    @model_validator(mode="after")
    def _ordered(self) -> Behaviour:
        if self.latency_p95_ms < self.latency_p50_ms:
            raise ValueError(
                f"latency_p95_ms ({self.latency_p95_ms}) must be at least latency_p50_ms ({self.latency_p50_ms})"
            )
        return self

    def latency_at(self, quantile: float) -> float:
        """Latency in ms at a quantile of the version's log-normal distribution."""
        q = min(max(quantile, 0.0005), 0.9995)
        sigma = math.log(self.latency_p95_ms / self.latency_p50_ms) / _Z95
        return self.latency_p50_ms * math.exp(sigma * NormalDist().inv_cdf(q))


PresetName = Literal["good", "unhealthy", "errors", "slow"]
PRESETS: dict[str, Behaviour] = {
    "good": Behaviour(),
    "unhealthy": Behaviour(healthy=False),
    "errors": Behaviour(error_rate=0.08),
    "slow": Behaviour(latency_p50_ms=300, latency_p95_ms=800),
}


def parse_behaviour(pattern: str, value: Any) -> Behaviour:
    if isinstance(value, Behaviour):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(
                f"behaviour for {pattern!r}: unknown preset {value!r}; known: {', '.join(PRESETS)}"
            )
        return PRESETS[value]
    if isinstance(value, Mapping):
        fields = dict(value)
        kind = fields.pop("kind", "good")
        if kind not in PRESETS:
            raise ValueError(f"behaviour for {pattern!r}: unknown kind {kind!r}; known: {', '.join(PRESETS)}")
        try:
            return Behaviour(**{**PRESETS[kind].model_dump(), **fields})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'behaviour'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"behaviour for {pattern!r}: {problems}") from None
    raise ValueError(
        f"behaviour for {pattern!r}: give a preset name or a mapping, not {type(value).__name__}"
    )


def by_tag_convention(image: str) -> Behaviour | None:
    tag = image_tag(image)
    if "bad-health" in tag or "unhealthy" in tag:
        return PRESETS["unhealthy"]
    if m := re.search(r"err(\d+)", tag):
        return Behaviour(error_rate=min(int(m.group(1)), 100) / 100)
    if m := re.search(r"slow(\d+)?", tag):
        if m.group(1):
            p95 = float(m.group(1))
            return Behaviour(latency_p50_ms=p95 * 0.4, latency_p95_ms=p95)
        return PRESETS["slow"]
    return None


MAINTENANCE_PAGE_REPOSITORY_SUFFIX = "maintenance-page"


def image_repository(image: str) -> str:
    """The repository of `registry:5000/team/app:v2@sha256:...`: all before the tag (and the
    digest), split as `image_tag` splits it."""
    head, slash, last = image.split("@", 1)[0].rpartition("/")
    return head + slash + last.split(":", 1)[0]


def is_maintenance_page(image: str) -> bool:
    """Whether `image` is the static maintenance page rather than a version of the app."""
    return image_repository(image).endswith(MAINTENANCE_PAGE_REPOSITORY_SUFFIX)


class VersionBehaviours:
    """The behaviour rules of one web app; `for_image` picks the one that applies."""

    def __init__(self, rules: Mapping[str, Any] | None = None, *, conventions: bool = True) -> None:
        self.rules = [(p, parse_behaviour(p, v)) for p, v in (rules or {}).items()]
        self.conventions = conventions

    def for_image(self, image: str) -> Behaviour:
        for pattern, behaviour in self.rules:
            if pattern == image:
                return behaviour
        for pattern, behaviour in self.rules:
            target, glob = (image_tag(image), pattern[1:]) if pattern.startswith(":") else (image, pattern)
            if fnmatch.fnmatchcase(target, glob):
                return behaviour
        if self.conventions and (by_tag := by_tag_convention(image)) is not None:
            return by_tag
        return PRESETS["good"]

    def to_json(self) -> dict[str, Any]:
        return {"rules": {p: b.model_dump() for p, b in self.rules}, "tag_conventions": self.conventions}
