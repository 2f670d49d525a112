"""prefect.yaml and the serve entry point describe deployments that exist and schedule as promised."""

from __future__ import annotations

import importlib
from typing import Any

import yaml

from tasks.config import REPO_ROOT


def test_prefect_yaml_entrypoints_resolve_to_flows() -> None:
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    for dep in doc["deployments"]:
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        fl = getattr(module, name)
        assert hasattr(fl, "fn"), f"{dep['entrypoint']} is not a flow"
        assert set(dep.get("parameters", {})) <= set(fl.parameters.properties), dep["name"]


def test_prefect_yaml_schedules_nightly_backup_and_sunday_restore_test() -> None:
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    crons = {(d["entrypoint"], s["cron"]) for d in doc["deployments"] for s in d.get("schedules", [])}
    assert ("flows/backup.py:backup_all", "0 2 * * *") in crons
    assert ("flows/restore_test.py:restore_test", "0 3 * * 0") in crons


def test_serve_builds_every_runbook_deployment_for_an_environment(make_environment: Any) -> None:
    from deployments.serve import deployments_for

    def in_india(doc: dict[str, Any]) -> None:
        doc["timezone"] = "Asia/Kolkata"

    env = make_environment("serve", in_india)
    deps = {(d.flow_name, d.name): d for d in deployments_for(env)}
    assert ("backup-all", "serve") in deps and ("deploy", "serve") in deps and ("rollback", "serve") in deps
    nightly = deps[("backup-all", "serve")].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("0 2 * * *", "Asia/Kolkata")
    weekly = deps[("restore-test", "serve-fleet")].schedules[0].schedule
    assert (weekly.cron, weekly.timezone) == ("0 3 * * 0", "Asia/Kolkata")
