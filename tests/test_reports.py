"""Every runbook's artifact is rendered from a Report record in one place."""

from __future__ import annotations

from typing import Any

import pytest

from tasks import reports
from tasks.checks import Check
from tasks.config import ServiceConfig
from tasks.records import DeployRecord
from tasks.reports import Report, Section, check_rows, md_table, render
from tasks.reports import deploy as deploy_report


def test_a_report_renders_title_failure_figures_checks_timings_sections_and_links() -> None:
    report = Report("deploy-sandbox-api", "Deploy of `api` to `sandbox`", "FAILED", failure="analysis Failed",
                    notes=["Rolled back."], figures=[("image", "app:v2")],
                    checks=[Check("smoke: orders", True, "200"), Check("smoke: health", False, "503")],
                    timings={"rollout": 1.5}, sections=[Section("Analysis", ["- error rate 8%"], rows=[{"#": 1}])],
                    links=[("service", "https://api.example.com")])
    text = render(report)
    assert text.startswith("# Deploy of `api` to `sandbox`: FAILED\n")
    order = ["**What failed:** analysis Failed", "Rolled back.", "| image | app:v2 |", "## Checks",
             "| smoke: health | FAIL | 503 |", "## Timings", "| rollout | 1.5 |", "## Analysis", "- error rate 8%",
             "## Links", "- [service](https://api.example.com)"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert report.description == "Deploy of api to sandbox: FAILED"


def test_table_cells_cannot_break_the_table() -> None:
    # a pipe or a newline in a value (an error message) would otherwise split the row
    assert md_table([{"check": "a|b", "figures": "line 1\nline 2"}]).splitlines()[2] == "| a\\|b | line 1 line 2 |"
    assert md_table([]) == "_(none)_\n"


def test_there_is_one_checks_table_with_pass_or_fail() -> None:
    assert check_rows([Check("RPO", True, "1h"), Check("RTO", False, "2h")]) == [
        {"check": "RPO", "result": "pass", "figures": "1h"}, {"check": "RTO", "result": "FAIL", "figures": "2h"}]


def test_a_failed_deploy_report_gives_the_time_to_recovery_and_emits_rolled_back() -> None:
    svc = ServiceConfig(namespace="sandbox", deployment="api", container="api", url="http://api.local/")
    rec = DeployRecord("sandbox", "api", "app:v2", "rolling", outcome="failed", rolled_back=True,
                       recovery_seconds=1.234)
    report = deploy_report(rec, svc)
    assert "| time to recovery (s) | 1.23 |" in render(report)
    assert [e.name for e in report.events] == ["runbook.deploy.failed", "runbook.deploy.rolled-back"]
    assert report.links == [("service", "http://api.local/")]


def _manifest(**changes: Any) -> Any:
    from tasks.backups import Manifest, StoredFile

    doc: dict[str, Any] = {
        "backup_id": "20261202T020000Z-a1b2c3", "environment": "rep", "database": "fleet", "dbname": "fleet",
        "format": "custom", "compression": "zstd:3",
        "files": [StoredFile(key="dump.pgc.zst", size=226_000_000, sha256="ab" * 32, raw_size=807_000_000,
                             frames=[(130_000_000, 134_217_728), (96_000_000, 672_782_272)])],
        "size": 226_000_000, "sha256": "ab" * 32, "row_counts": {"public.trips": 5}, "lsn": "0/1",
        "snapshot_time": "2026-12-02T02:00:00+00:00", "server_version": 150018, "pg_dump_version": 15,
        "database_size": 1_069_000_000, "durations": {"dump": 6.8}, "created_at": "2026-12-02T02:00:07+00:00",
    }
    return Manifest(**{**doc, **changes})


@pytest.mark.parametrize(("manifest_changes", "compression", "raw_mb"), [
    ({}, "zstd:3", "807.00"),
    # A backup from before the setting: no compression, no raw size.
    ({"compression": None, "files": [{"key": "dump.pgc", "size": 212_000_000, "sha256": "cd" * 32}]},
     "gzip (pg_dump's, before the setting)", "(compressed by pg_dump)"),
], ids=["zstd", "gzip-before-zstd"])
def test_a_backup_report_says_how_it_was_compressed(manifest_changes: dict[str, Any], compression: str,
                                                    raw_mb: str) -> None:
    from tasks.config import EnvironmentConfig

    env = EnvironmentConfig.model_validate({"name": "rep", "databases": {"fleet": {
        "dsn": {"env": "REP_DSN"}, "storage": {"url": "s3://backups/rep"}, "retention": {"days": 7},
        "objectives": {"rto": "1h", "rpo": "1d"}}}})
    report = reports.backup(env, "fleet", _manifest(**manifest_changes), False, None, None, {})
    figures = dict(report.figures)
    assert figures["compression"] == compression and figures["uncompressed dump (MB)"] == raw_mb
    (event,) = report.events
    assert event.name == "runbook.backup.succeeded" and event.payload["compression"] == compression
