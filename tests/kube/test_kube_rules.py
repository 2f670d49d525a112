"""Image rules: which outcome the fake kubelet gives an image."""

from __future__ import annotations

import pytest

from sandbox.kube.rules import ImageRules, image_tag

RULES = ImageRules(
    {
        "sandbox/app:exact": "CrashLoopBackOff",
        ":*-pull": "ImagePullBackOff",
        "registry.local/*:never": "NeverReady",
        "sandbox/migrate:v3": {"job": "fail", "exit_code": 3, "logs": "relation exists"},
    }
)


@pytest.mark.parametrize(
    ("image", "pod", "job", "why"),
    [
        ("sandbox/app:exact", "CrashLoopBackOff", "succeed", "an exact image"),
        ("any/thing:late-pull", "ImagePullBackOff", "succeed", "':' first globs the tag"),
        ("registry.local/team/app:never", "NeverReady", "succeed", "a glob on the whole image"),
        ("sandbox/migrate:v3", "Ready", "fail", "a job rule"),
        ("sandbox/app:v2-bad-crash", "CrashLoopBackOff", "succeed", "built-in default: *bad-crash*"),
        ("sandbox/app:bad-pull", "ImagePullBackOff", "succeed", "built-in default: *bad-pull*"),
        ("sandbox/app:never-ready", "NeverReady", "succeed", "built-in default: *never-ready*"),
        ("sandbox/migrate:job-fail", "Ready", "fail", "built-in default: *job-fail*"),
        ("sandbox/app:v1", "Ready", "succeed", "no rule: Ready and succeed"),
    ],
)
def test_image_rules_pick_the_outcome(image: str, pod: str, job: str, why: str) -> None:
    rule = RULES.for_image(image)
    assert (rule.pod, rule.job) == (pod, job), why


def test_job_rule_exit_code_defaults_to_one_on_failure() -> None:
    assert RULES.for_image("sandbox/migrate:v3").job_exit_code == 3
    assert RULES.for_image("x:job-fail").job_exit_code == 1
    assert RULES.for_image("x:v1").job_exit_code == 0


def test_defaults_can_be_switched_off() -> None:
    assert ImageRules({}, defaults=False).for_image("sandbox/app:bad-crash").pod == "Ready"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"x": "Exploding"}, "unknown outcome 'Exploding'; known: Ready, NeverReady"),
        ({"x": {"job": "fail", "exit_code": 0}}, "contradicts job 'fail'"),
        ({"x": {"pods": "Ready"}}, "image rule 'x': pods"),
    ],
)
def test_bad_rules_say_what_is_wrong(rules: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageRules(rules)


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("app", "latest"),
        ("app:v1", "v1"),
        ("registry:5000/team/app:v2", "v2"),
        ("registry:5000/team/app", "latest"),
        ("app:v1@sha256:ab", "v1"),
    ],
)
def test_image_tag(image: str, tag: str) -> None:
    assert image_tag(image) == tag
