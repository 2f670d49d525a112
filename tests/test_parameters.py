"""Flow parameters are checked before any side effect, with one rule each: one row per case."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.config import (
    EnvironmentConfig,
    ServiceConfig,
    check_autoscaler,
    check_choice,
    check_replicas,
    check_revision,
    validate_image,
)
from tasks.errors import ConfigError

SVC = ServiceConfig(namespace="shop", deployment="api", container="api", image_repository="registry.example.com/api")


@pytest.mark.parametrize(("image", "says"), [
    ("registry.example.com/api:v1.2.3", None),
    ("registry.example.com/api@sha256:" + "a" * 64, None),
    (20240101, "must be a string"),  # `prefect deployment run --param image=20240101` sends a number
    ("registry.example.com/api", "with a tag or digest"),  # :latest by omission is not a release
    ("registry.example.com/other:v1", "not from repository 'registry.example.com/api'"),
    ("Registry/API:v1", "not an image reference"),
], ids=["tag", "digest", "number", "no-tag", "other-repository", "upper-case"])
def test_an_image_must_be_a_tagged_reference_from_the_services_repository(image: Any, says: str | None) -> None:
    if says is None:
        assert validate_image(image, SVC) == image
    else:
        with pytest.raises(ConfigError, match=says):
            validate_image(image, SVC)


@pytest.mark.parametrize(("value", "ok"), [
    (0, True), (1000, True),
    (-1, False), (1001, False),
    (True, False),  # a bool is an int in Python, never a replica count
    (2.5, False), ("3", False),
], ids=["zero", "max", "negative", "over-max", "bool", "float", "text"])
def test_replicas_are_a_whole_number_from_0_to_1000(value: Any, ok: bool) -> None:
    if ok:
        assert check_replicas(value) == value
    else:
        with pytest.raises(ConfigError, match=f"replicas {value!r} must be a whole number from 0 to 1000"):
            check_replicas(value)


@pytest.mark.parametrize(("low", "high", "cpu", "says"), [
    (3, 10, 70, None),
    (1, 1, 1, None),
    (2, 5, 150, None),  # a target over 100% of the CPU requests is a real HPA setting
    (0, 5, 70, "1 <= min <= max <= 1000"),
    (6, 5, 70, "1 <= min <= max <= 1000"),
    (1, 1001, 70, "1 <= min <= max <= 1000"),
    (3, 10, 0, "cpu_percent 0 must be from 1 to 1000"),
    (3, 10, 1001, "cpu_percent 1001 must be from 1 to 1000"),
], ids=["seed", "smallest", "over-100-percent", "min-zero", "min-over-max", "max-too-big", "cpu-zero", "cpu-too-big"])
def test_the_autoscaler_rule(low: int, high: int, cpu: int, says: str | None) -> None:
    if says is None:
        check_autoscaler(low, high, cpu)
    else:
        with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
            check_autoscaler(low, high, cpu)


@pytest.mark.parametrize(("value", "ok"), [(None, True), (1, True), (0, False), ("2", False)],
                         ids=["previous", "first", "zero", "text"])
def test_to_revision_is_a_revision_number_or_empty(value: Any, ok: bool) -> None:
    if ok:
        assert check_revision(value) == value
    else:
        with pytest.raises(ConfigError, match="must be a revision number >= 1"):
            check_revision(value)


def test_a_choice_names_the_field_the_value_and_what_is_allowed() -> None:
    assert check_choice("mode", "new", ("swap", "new")) == "new"
    with pytest.raises(ConfigError, match="mode 'replace' is not a restore mode; allowed: swap, new"):
        check_choice("mode", "replace", ("swap", "new"), "a restore mode")


def _env(**services: dict[str, Any]) -> EnvironmentConfig:
    return EnvironmentConfig.model_validate({
        "name": "t", "kubernetes": {},
        "services": {name: {"namespace": "t", "deployment": name, "container": name, **cfg}
                     for name, cfg in services.items()}})


@pytest.mark.parametrize(("service", "requested", "strategy"), [
    ("api", "from config", "rolling"),
    ("web", "from config", "blue-green"),
    ("web", "rolling", "rolling"),  # a blue-green service may still be deployed in place
    ("api", "blue-green", "needs services.api.blue_green in t"),  # no colours configured
    ("api", "canary", "strategy 'canary' is not a deploy strategy; allowed: rolling, blue-green"),
], ids=["rolling-from-config", "blue-green-from-config", "override", "blue-green-unconfigured", "unknown"])
def test_the_deploy_strategy_is_the_requested_one_or_the_services_own(service: str, requested: str,
                                                                      strategy: str) -> None:
    env = _env(api={}, web={"strategy": "blue-green", "blue_green": {"service": "web"}})
    if " " not in strategy:
        assert env.deploy_strategy(service, requested) == strategy
    else:
        with pytest.raises(ConfigError, match=strategy):
            env.deploy_strategy(service, requested)


def test_a_databases_name_on_its_server_defaults_to_its_key() -> None:
    db = {"dsn": {"env": "X"}, "storage": {"url": "file:///tmp/b"}, "retention": {"days": 1},
          "objectives": {"rto": "1h", "rpo": "1d"}}
    env = EnvironmentConfig.model_validate({"name": "t", "databases": {"fleet": db, "other": {**db, "dbname": "ops"}}})
    assert (env.database("fleet").dbname, env.database("other").dbname) == ("fleet", "ops")
