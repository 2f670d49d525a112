"""prefect.yaml and the serve entry point describe deployments that exist and schedule as promised."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
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
    crons = {(d["entrypoint"], s.get("cron")) for d in doc["deployments"] for s in d.get("schedules", [])}
    assert ("flows/backup.py:backup_all", "0 2 * * *") in crons
    assert ("flows/restore_test.py:restore_test", "0 3 * * 0") in crons


def test_prefect_yaml_schedules_physical_backups_and_the_physical_restore_test_beside_the_logical_one() -> None:
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    crons = {(d["entrypoint"], d["parameters"].get("type"), s.get("cron")) for d in doc["deployments"]
             for s in d.get("schedules", [])}
    assert ("flows/physical_backup.py:physical_backup", "incr", "0 * * * *") in crons  # hourly
    assert ("flows/physical_backup.py:physical_backup", "full", "30 1 * * *") in crons  # daily
    assert ("flows/physical_restore_test.py:physical_restore_test", None, "0 3 * * 0") in crons  # weekly, Sundays
    assert ("flows/archive_health.py:archive_health", None, "*/5 * * * *") in crons


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
    # the physical restore test on the same weekly cron as the logical ones; backups hourly and daily
    physical = deps[("physical-restore-test", "serve-main")].schedules[0].schedule
    assert (physical.cron, physical.timezone) == ("0 3 * * 0", "Asia/Kolkata")
    incr, full = deps[("physical-backup", "serve-main-incr")], deps[("physical-backup", "serve-main-full")]
    assert (incr.schedules[0].schedule.cron, incr.parameters["type"]) == ("0 * * * *", "incr")
    assert (full.schedules[0].schedule.cron, full.parameters["type"]) == ("30 1 * * *", "full")
    assert deps[("archive-health", "serve-main")].schedules[0].schedule.cron == "*/5 * * * *"
    assert ("pitr-restore", "serve") in deps


# --- what on-call sees in the UI ----------------------------------------------------------------------

CHOICES = {"strategy", "migrate", "mode", "type", "target"}  # Literal parameters of the flows: dropdowns everywhere


def test_every_served_deployment_has_a_form_with_descriptions_and_dropdowns(make_environment: Any) -> None:
    """Read back from the API, as the UI does: every parameter has a description, every
    choice an enum, the environment is fixed and service and database list this environment's."""
    from prefect.client.orchestration import get_client

    from deployments.serve import deployments_for
    from tasks.config import load_environment

    env_name = make_environment("forms")
    env = load_environment(env_name)
    deps = deployments_for(env_name)
    with get_client(sync_client=True) as c:
        ids = {(d.flow_name, d.name): d.apply() for d in deps}
        schemas = {key: c.read_deployment(i).parameter_openapi_schema for key, i in ids.items()}
        # the API enforces the form: a service the environment does not have never becomes a run
        with pytest.raises(Exception, match="nope"):
            c.create_flow_run_from_deployment(ids[("deploy", env_name)], parameters={
                "service": "nope", "image": "sandbox/app:v2"})
    assert len(schemas) == len(deps) >= 10
    for (flow_name, name), schema in schemas.items():
        where = f"{flow_name}/{name}"
        for parameter, prop in schema["properties"].items():
            assert prop.get("description"), f"{where}: {parameter} has no description"
            if parameter in CHOICES:
                # a choice of one (pitr-restore's target, for now) is a `const`: shown, not typed
                assert prop.get("enum") or "const" in prop, f"{where}: {parameter} is a choice without an enum"
        props = schema["properties"]
        assert props["environment"]["enum"] == [env.name] and props["environment"]["readOnly"], where
        if "service" in props:
            assert props["service"]["enum"] == sorted(env.services), where
        if "database" in props and flow_name != "restore-test":
            assert props["database"]["enum"] == sorted(env.databases), where
        if "cluster" in props and "readOnly" not in props["cluster"]:
            assert props["cluster"]["enum"] == sorted(env.clusters), where
    assert schemas[("deploy", env_name)]["properties"]["strategy"]["enum"] == ["from config", "rolling", "blue-green"]
    assert schemas[("restore-test", f"{env_name}-fleet")]["properties"]["database"]["enum"] == ["fleet"]


def test_the_runs_list_names_each_run_from_its_parameters_and_tags_it(make_environment: Any) -> None:
    """Runs called directly (not through a deployment) are named and tagged too; a run that
    fails on bad input is named like any other, so on-call can see which one failed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.deploy import deploy
    from flows.restore_database import restore_database
    from flows.scaling import scale

    env = make_environment("run-names")
    states = [
        deploy(env, "api", "not an image", return_state=True),
        scale(env, "api", 5000, return_state=True),
        restore_database(env, "nope", mode="new", return_state=True),
    ]
    assert all(s.is_failed() for s in states)
    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[s.state_details.flow_run_id
                                                                                       for s in states])))
    by_name = {r.name: sorted(r.tags) for r in runs}
    assert by_name == {
        f"deploy api not an image to {env}": sorted(["runbook", "deploy", env]),
        f"scale api to 5000 in {env}": sorted(["runbook", "scale", env]),
        f"restore nope in {env} from the newest backup (new)": sorted(["runbook", "restore-database", env]),
    }


def _maintenance_schedules_in_prefect_yaml() -> dict[tuple[str, str], list[dict[str, str]]]:
    doc = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    return {(d["parameters"]["environment"], d["parameters"]["window"]): d.get("schedules", [])
            for d in doc["deployments"]
            if d["entrypoint"] == "flows/maintenance_window.py:maintenance_window" and "window" in d["parameters"]}


def test_prefect_yaml_schedules_each_maintenance_window_as_the_environment_defines_it(sandbox: Any) -> None:
    from deployments.serve import maintenance_schedules
    from tasks.config import load_environment

    in_yaml = _maintenance_schedules_in_prefect_yaml()
    envs = [load_environment("sandbox"), *map(load_environment, sorted((REPO_ROOT / "environments" / "examples")
                                                                       .glob("*.yaml")))]
    expected = {(env.name, window): [rule] for env in envs for window, rule in maintenance_schedules(env).items()}
    covered = {e for e, _ in in_yaml}
    assert {"sandbox", "sevfleet"} <= covered, "prefect.yaml schedules the example windows"
    # Every window of an environment prefect.yaml covers is scheduled, at its start, and nothing else is.
    assert {k: v for k, v in expected.items() if k[0] in covered} == in_yaml
