"""Bad config fails with the file, the key, the value and what is allowed, before anything runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.backup import backup_database
from tasks.config import REPO_ROOT, load_environment
from tasks.errors import ConfigError, SecretMissing

VALID: dict[str, Any] = {
    "name": "cfgtest",
    "timezone": "Europe/London",
    "databases": {
        "fleet": {
            "dsn": {"env": "CFGTEST_DSN"},
            "storage": {"url": "s3://backups/fleet"},
            "retention": {"days": 30},
            "objectives": {"rto": "1h", "rpo": "24h"},
        }
    },
}


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / f"{doc.get('name', 'x')}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def variant(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return doc


def test_valid_config_loads(tmp_path: Path) -> None:
    env = load_environment(write(tmp_path, VALID))
    assert env.database("fleet").retention.days == 30
    assert env.database("fleet").objectives.rto.total_seconds() == 3600


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # A typo in a key must not be silently ignored: it names the key and the allowed ones.
        ({"databases__fleet__retension": {"days": 3}},
         ["databases.fleet.retension", "unknown key 'retension'", "allowed:", "retention"]),
        # A bad cron would schedule nothing, or the wrong thing.
        ({"schedules": {"backup": "61 2 * * *"}}, ["schedules.backup", "cron", "'61 2 * * *'"]),
        # Storage URLs: only s3:// and file:/// with an absolute path.
        ({"databases__fleet__storage": {"url": "ftp://host/x"}},
         ["databases.fleet.storage.url", "'ftp://host/x'", "s3://bucket/prefix or file:///absolute/path"]),
        ({"databases__fleet__storage": {"url": "file://relative/path"}}, ["databases.fleet.storage.url", "absolute"]),
        ({"timezone": "Mars/Olympus"}, ["timezone", "'Mars/Olympus'", "IANA"]),
        ({"databases__fleet__retention": {"days": 30, "daily": 7}}, ["databases.fleet.retention", "not both"]),
        ({"databases__fleet__dsn": {"env": "X", "secret": "y"}}, ["databases.fleet.dsn", "exactly one"]),
        ({"databases__fleet__objectives": {"rto": "soon", "rpo": "1h"}}, ["objectives.rto", "'soon'", "duration"]),
        ({"databases__fleet__jobs": 0}, ["databases.fleet.jobs", "greater than or equal to 1", "(got 0)"]),
        ({"databases__fleet__compression": "lz4"},
         ["databases.fleet.compression", "'lz4' is not a compression", "zstd[:1-19]", "gzip[:0-9]"]),
        ({"databases__fleet__compression": "zstd:22"}, ["databases.fleet.compression", "levels run from 1 to 19"]),
        # The setting before zstd: how to write it now, keeping what it meant.
        ({"databases__fleet__compress": 6},
         ["databases.fleet", "'compress: 6' is now 'compression'", "'compression: gzip:6'", "zstd:3"]),
    ],
    ids=["unknown-key", "bad-cron", "bad-url-scheme", "relative-file-url", "bad-timezone",
         "two-retention-styles", "two-secret-sources", "bad-duration", "zero-jobs", "unknown-compression",
         "zstd-level-too-high", "compress-renamed"],
)
def test_bad_config_names_file_key_value_and_what_is_allowed(
    tmp_path: Path, changes: dict[str, Any], expected: list[str]
) -> None:
    path = write(tmp_path, variant(**changes))
    with pytest.raises(ConfigError) as err:
        load_environment(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_unknown_environment_lists_known_ones(environments_dir: Path) -> None:
    (environments_dir / "known-one.yaml").write_text(yaml.safe_dump({**VALID, "name": "known-one"}))
    with pytest.raises(ConfigError, match="known-one"):
        load_environment("no-such-env")


def test_missing_secret_names_the_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CFGTEST_DSN", raising=False)
    env = load_environment(write(tmp_path, VALID))
    with pytest.raises(SecretMissing, match="environment variable 'CFGTEST_DSN'"):
        env.database("fleet").check_secrets()


def test_secret_resolves_from_a_prefect_secret_block(tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    Secret(value="postgresql://u:block-pw@127.0.0.1/x").save("cfgtest-dsn", overwrite=True)
    doc = variant(databases__fleet__dsn={"secret": "cfgtest-dsn"})
    env = load_environment(write(tmp_path, doc))
    assert env.database("fleet").dsn.resolve().endswith("@127.0.0.1/x")
    missing = load_environment(write(tmp_path, variant(databases__fleet__dsn={"secret": "no-such-block"})))
    with pytest.raises(SecretMissing, match="Secret block 'no-such-block'"):
        missing.database("fleet").dsn.resolve()


def _task_runs_of(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return asyncio.run(read())


@pytest.mark.parametrize(
    "changes",
    [
        {"databases__fleet__retension": {"days": 3}},
        {"schedules": {"backup": "0 2 * *"}},
        {"databases__fleet__storage": {"url": "http://bucket/x"}},
        {"databases__fleet__dsn": {"env": "CFGTEST_UNSET_DSN"}},
    ],
    ids=["unknown-key", "bad-cron", "bad-storage-url", "missing-secret"],
)
def test_bad_config_fails_the_flow_before_any_task_runs(
    environments_dir: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any]
) -> None:
    monkeypatch.delenv("CFGTEST_UNSET_DSN", raising=False)
    doc = variant(**changes)
    doc["name"] = "cfgbad"
    (environments_dir / "cfgbad.yaml").write_text(yaml.safe_dump(doc))
    state = backup_database("cfgbad", "fleet", return_state=True)
    assert state.is_failed()
    assert _task_runs_of(state.state_details.flow_run_id) == []


def test_example_environments_are_valid() -> None:
    examples = sorted((REPO_ROOT / "environments" / "examples").glob("*.yaml"))
    assert {p.stem for p in examples} >= {"sevfleet", "fleet-management", "inventory", "united-cars", "todo"}
    for path in examples:
        env = load_environment(path)
        assert env.databases, path


CLUSTER: dict[str, Any] = {
    "dsn": {"env": "CFGTEST_DSN"},
    "pgbackrest": {"stanza": "main", "config_file": "/etc/pgbackrest/pgbackrest.conf",
                   "retention": {"daily": 7}},
    "restore": {"directory": "/var/lib/postgresql/restores"},
    "objectives": {"rto": "30m", "rpo": "1m"},
}


def with_cluster(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(yaml.safe_dump({**VALID, "clusters": {"main": CLUSTER}}))
    for dotted, value in changes.items():
        node = doc["clusters"]["main"]
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return doc


@pytest.mark.parametrize(("changes", "expected"), [
    # pgBackRest would refuse it later, after the flow had started something.
    ({"pgbackrest__stanza": "my stanza"}, ["clusters.main.pgbackrest.stanza", "'my stanza'", "letters, digits"]),
    # A relative path means something else on the database host than here.
    ({"pgbackrest__config_file": "pgbackrest.conf"}, ["clusters.main.pgbackrest.config_file", "absolute path"]),
    ({"restore__directory": "restores"}, ["clusters.main.restore.directory", "absolute path"]),
    # A privileged or reversed range would fail at the first restore, not now.
    ({"restore__ports": "80-90"}, ["clusters.main.restore.ports", "'80-90'", "FIRST-LAST"]),
    ({"restore__ports": "54499-54400"}, ["clusters.main.restore.ports", "FIRST-LAST"]),
    ({"os_user": "Post Gres"}, ["clusters.main.os_user", "'Post Gres'", "an OS account name"]),
    ({"pgbackrest__retention": {"full": 4}}, ["clusters.main.pgbackrest.retention", "unknown key 'full'"]),
], ids=["bad-stanza", "relative-config-file", "relative-restore-dir", "privileged-ports", "reversed-ports",
        "bad-os-user", "unknown-retention-key"])
def test_bad_cluster_config_names_the_key_value_and_what_is_allowed(tmp_path: Path, changes: dict[str, Any],
                                                                    expected: list[str]) -> None:
    path = write(tmp_path, with_cluster(**changes))
    with pytest.raises(ConfigError) as err:
        load_environment(path)
    for fragment in expected:
        assert fragment in str(err.value)


def test_an_unknown_cluster_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from flows.physical_backup import physical_backup

    state = physical_backup(str(write(tmp_path, with_cluster())), "nope", return_state=True)
    assert state.is_failed() and "cluster 'nope' is not in environment 'cfgtest'; known: main" in state.message


AZURE: dict[str, Any] = {
    "subscription_id": "6f1c2a9e-3b7d-4c5e-9a8b-0d1e2f3a4b5c", "resource_group": "fleet-rg",
    "server": "fleet-pg", "location": "eastus", "admin_user": "fleetadmin",
    "admin_password": {"env": "CFGTEST_AZURE_PASSWORD"},
}


def with_azure(**changes: Any) -> dict[str, Any]:
    doc = variant(databases__fleet__kind="azure-flexible", databases__fleet__azure=dict(AZURE))
    for key, value in changes.items():
        if value is None:
            doc["databases"]["fleet"]["azure"].pop(key, None)
        else:
            doc["databases"]["fleet"]["azure"][key] = value
    return doc


def test_an_azure_flexible_server_config_loads_with_its_defaults(tmp_path: Path) -> None:
    azure = load_environment(write(tmp_path, with_azure())).database("fleet").azure_server()
    assert (azure.endpoint, azure.credential.kind, azure.port, azure.sslmode) == (
        "https://management.azure.com", "default", 5432, "require")


@pytest.mark.parametrize(("doc", "expected"), [
    (variant(databases__fleet__kind="azure-flexible"), ["databases.fleet", "needs an 'azure' section"]),
    (variant(databases__fleet__azure=dict(AZURE)), ["databases.fleet", "set kind: azure-flexible"]),
    (with_azure(subscription_id="my-sub"), ["subscription_id", "'my-sub'", "a UUID"]),
    (with_azure(server="Fleet_PG"), ["azure.server", "'Fleet_PG'", "lower-case letters, digits and '-'"]),
    (with_azure(replica="fleet-pg"), ["replica 'fleet-pg' is the server itself"]),
    (with_azure(virtual_endpoint="fleet-ve"), ["set 'replica' too"]),
    (with_azure(credential={"kind": "service-principal", "tenant_id": "t"}),
     ["credential", "needs client_id, client_secret"]),
    (with_azure(endpoint="http://arm.example.com"), ["azure.endpoint", "http://arm.example.com"]),
    (with_azure(admin_password=None), ["azure.admin_password", "Field required"]),
], ids=["kind-without-section", "section-without-kind", "bad-subscription", "bad-server-name",
        "replica-is-the-server", "endpoint-without-replica", "half-a-service-principal", "plain-http-off-loopback",
        "no-admin-password"])
def test_bad_azure_config_names_the_key_value_and_what_is_allowed(tmp_path: Path, doc: dict[str, Any],
                                                                   expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_environment(write(tmp_path, doc))
    for fragment in expected:
        assert fragment in str(err.value)
