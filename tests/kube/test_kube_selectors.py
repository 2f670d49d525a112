"""Label and field selectors, one row per case."""

from __future__ import annotations

import pytest

from sandbox.kube import errors
from sandbox.kube.selectors import (
    from_label_selector,
    label_selector_text,
    matches,
    matches_fields,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "front", "canary": "true", "replicas": "3"}


@pytest.mark.parametrize(
    ("selector", "expected", "why"),
    [
        ("", True, "an empty selector selects everything"),
        ("app=web", True, "equality"),
        ("app==web", True, "double equals is equality too"),
        ("app=api", False, "equality on another value"),
        ("app!=api", True, "inequality"),
        ("missing!=x", True, "inequality holds when the label is absent"),
        ("tier in (front,back)", True, "set membership"),
        ("tier in (back)", False, "set membership, not a member"),
        ("tier notin (back, middle)", True, "set exclusion, with spaces"),
        ("missing notin (x)", True, "exclusion holds when the label is absent"),
        ("canary", True, "existence"),
        ("!canary", False, "non-existence of a present label"),
        ("!missing", True, "non-existence"),
        (
            "app=web,tier in (front),!missing",
            True,
            "terms are ANDed, commas inside parentheses are not separators",
        ),
        ("app=web,tier=back", False, "one failing term fails the selector"),
        ("replicas>2", True, "numeric greater-than"),
        ("replicas<3", False, "numeric less-than"),
        ("app=", False, "empty value matches only an empty label"),
    ],
)
def test_label_selector_text_matches_like_the_api_server(selector: str, expected: bool, why: str) -> None:
    assert matches(parse_label_selector(selector), LABELS) is expected, why


@pytest.mark.parametrize("bad", ["app in ()", "app=(x", "==web", "a b c"])
def test_malformed_label_selector_is_a_bad_request(bad: str) -> None:
    with pytest.raises(errors.BadRequest):
        parse_label_selector(bad)


@pytest.mark.parametrize(
    ("selector", "expected", "why"),
    [
        ({"matchLabels": {"app": "web"}}, True, "matchLabels"),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}, True, "In"),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, False, "NotIn"),
        ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, True, "Exists"),
        ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, False, "DoesNotExist"),
        ({}, True, "an empty LabelSelector selects everything"),
        (None, False, "a nil LabelSelector selects nothing"),
    ],
)
def test_label_selector_objects_match(selector: dict | None, expected: bool, why: str) -> None:
    assert matches(from_label_selector(selector), LABELS) is expected, why


def test_label_selector_object_prints_as_the_scale_subresource_does() -> None:
    selector = {
        "matchLabels": {"tier": "front", "app": "web"},
        "matchExpressions": [{"key": "x", "operator": "Exists"}],
    }
    assert label_selector_text(selector) == "app=web,tier=front,x"


POD = {
    "metadata": {"name": "web-1", "namespace": "prod"},
    "spec": {"nodeName": "n1"},
    "status": {"phase": "Running"},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=web-1", True),
        ("metadata.name!=web-1", False),
        ("metadata.namespace==prod,status.phase=Running", True),
        ("status.phase=Pending", False),
        ("spec.nodeName=n1", True),
    ],
)
def test_field_selectors_match_pods(selector: str, expected: bool) -> None:
    assert matches_fields(parse_field_selector(selector, "Pod"), POD) is expected


def test_unsupported_field_selector_is_refused_with_the_allowed_fields() -> None:
    with pytest.raises(errors.BadRequest, match="field label not supported: status.phase"):
        parse_field_selector("status.phase=Running", "Deployment")
