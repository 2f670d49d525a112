"""Image rules: what the fake kubelet does with a container image.

A rule set is a mapping from an image pattern to an outcome, settable when the server
starts and at run time (`POST /sandbox/image-rules`):

    {
      "sandbox/app:bad-crash": "CrashLoopBackOff",        # exact image
      ":*-pull": "ImagePullBackOff",                      # ':' first: glob on the tag only
      "registry.local/*:never-ready": "NeverReady",       # glob on the whole image
      "sandbox/migrate:v3": {"job": "fail", "exit_code": 3, "logs": "relation exists"},
      "sandbox/app:slowstart": {"pod": "Ready", "ready_after": 2.0},
    }

Pod outcomes (`pod`): Ready (default), NeverReady (running, readiness never passes),
CrashLoopBackOff (restartCount climbs), ImagePullBackOff and ErrImagePull (stays Pending).
Job outcomes (`job`, for pods a Job owns): succeed (default) or fail, with `exit_code`,
`duration` (seconds the container runs) and `logs`. A string value is a pod outcome.

An exact image wins; then patterns in the order given; then the built-in defaults below,
which make tags speak for themselves in the sandbox.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PodOutcome = Literal["Ready", "NeverReady", "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"]
POD_OUTCOMES: tuple[str, ...] = (
    "Ready",
    "NeverReady",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
)


class ImageRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pod: PodOutcome = Field("Ready", description="What a long-running pod with this image does")
    ready_after: float | None = Field(
        None, ge=0, description="Seconds from start to Running/Ready; default: the kubelet's"
    )
    job: Literal["succeed", "fail"] = Field("succeed", description="How a Job's pod with this image ends")
    exit_code: int | None = Field(
        None, ge=0, le=255, description="Exit code of a Job's container; default 0 or 1"
    )
    duration: float | None = Field(
        None, ge=0, description="Seconds a Job's container runs; default: the kubelet's"
    )
    logs: str | None = Field(None, description="Text the container writes to its log")

    @model_validator(mode="after")
    def _exit_code_fits(self) -> ImageRule:
        if self.exit_code is not None and (self.exit_code == 0) != (self.job == "succeed"):
            raise ValueError(
                f"exit_code {self.exit_code} contradicts job {self.job!r}: succeed exits 0, fail exits 1-255"
            )
        return self

    @property
    def job_exit_code(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        return 0 if self.job == "succeed" else 1


DEFAULT_RULES: dict[str, Any] = {
    ":*bad-crash*": "CrashLoopBackOff",
    ":*bad-pull*": "ImagePullBackOff",
    ":*never-ready*": "NeverReady",
    ":*job-fail*": {"job": "fail"},
}


def image_tag(image: str) -> str:
    """The tag of `registry:5000/team/app:v2@sha256:...`, or `latest` when there is none."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _parse_rule(pattern: str, value: Any) -> ImageRule:
    if isinstance(value, ImageRule):
        return value
    if isinstance(value, str):
        if value not in POD_OUTCOMES:
            raise ValueError(
                f"image rule {pattern!r}: unknown outcome {value!r}; known: {', '.join(POD_OUTCOMES)}"
            )
        return ImageRule(pod=value)  # type: ignore[arg-type]
    if isinstance(value, Mapping):
        try:
            return ImageRule(**value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"image rule {pattern!r}: {problems}") from None
    raise ValueError(f"image rule {pattern!r}: give an outcome name or a mapping, not {type(value).__name__}")


class ImageRules:
    """An ordered rule set; `for_image` picks the rule that applies."""

    def __init__(self, rules: Mapping[str, Any] | None = None, *, defaults: bool = True) -> None:
        self.rules: list[tuple[str, ImageRule]] = [(p, _parse_rule(p, v)) for p, v in (rules or {}).items()]
        self.defaults: list[tuple[str, ImageRule]] = (
            [(p, _parse_rule(p, v)) for p, v in DEFAULT_RULES.items()] if defaults else []
        )

    def for_image(self, image: str) -> ImageRule:
        for pattern, rule in self.rules:
            if pattern == image:
                return rule
        for pattern, rule in [*self.rules, *self.defaults]:
            if pattern.startswith(":"):
                if fnmatch.fnmatchcase(image_tag(image), pattern[1:]):
                    return rule
            elif fnmatch.fnmatchcase(image, pattern):
                return rule
        return ImageRule()

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": {p: r.model_dump(exclude_none=True) for p, r in self.rules},
            "defaults": {p: r.model_dump(exclude_none=True) for p, r in self.defaults},
        }
