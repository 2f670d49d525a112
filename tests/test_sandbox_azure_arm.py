"""Contract tests of the fake Azure Resource Manager (sandbox/azure_arm.py): the real
azure-mgmt-postgresqlflexibleservers client, built by tasks.azure.management_client, signed in
by azure-identity's DefaultAzureCredential through the fake's managed-identity endpoint, gets
answers its own models deserialize, and its own pollers follow the fake's long-running
operations to the end. Behind each fake server is a real PostgreSQL that answers SQL.

One seeded fake serves the module (fleet-pg, its automatic backup, fleet-pg-replica, fleet-pg-ve).
The tests run in file order: the switchover, which changes the topology, comes last.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.mgmt.postgresqlflexibleservers import PostgreSQLManagementClient, models

from sandbox import azure_arm
from tasks.azure import ARM_SCOPE, management_client

RG = azure_arm.RESOURCE_GROUP
PRIMARY, REPLICA, VE = azure_arm.SERVER, azure_arm.REPLICA, azure_arm.VIRTUAL_ENDPOINT


@dataclass(frozen=True)
class Fake:
    arm: azure_arm.DetachedArm
    header: str
    password: str

    @property
    def control(self) -> azure_arm.ArmControl:
        return self.arm.control

    def client(self) -> PostgreSQLManagementClient:
        return management_client(self.arm.url, azure_arm.SUBSCRIPTION, DefaultAzureCredential(), retries=3)

    def sql(self, fqdn: str, query: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(host=fqdn, port=self.arm.pg_port, user=azure_arm.ADMIN_USER, password=self.password,
                             dbname=azure_arm.DATABASE, sslmode="disable", connect_timeout=5, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    base = Path(tempfile.mkdtemp(prefix="runbook-azure-arm-test-"))
    base.chmod(0o711)  # as root, the postgres account must pass through
    header, password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    try:
        arm = azure_arm.start_detached(base / "arm", identity_header=header, admin_password=password,
                                       seed=azure_arm.sandbox_seed(), retry_after=1)
        with pytest.MonkeyPatch.context() as env:  # what DefaultAzureCredential reads, for this module only
            env.setenv("IDENTITY_ENDPOINT", arm.identity_endpoint)
            env.setenv("IDENTITY_HEADER", header)
            yield Fake(arm, header, password)
    finally:
        azure_arm.stop_detached(base / "arm")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def arm(fake: Fake) -> Iterator[PostgreSQLManagementClient]:
    client = fake.client()
    yield client
    client.close()
    fake.control.reset()


def assert_server(s: models.Server, *, role: str) -> None:
    p = s.properties
    assert s.id and s.name and s.type == "Microsoft.DBforPostgreSQL/flexibleServers" and s.location == "eastus"
    assert s.sku and s.sku.name and s.sku.tier
    assert p.state == "Ready" and p.fully_qualified_domain_name and p.version == "15"
    assert p.administrator_login == azure_arm.ADMIN_USER and p.storage and p.storage.storage_size_gb
    assert p.backup and p.backup.earliest_restore_date and p.backup.backup_retention_days == 7
    mw = p.maintenance_window
    assert mw and mw.custom_window and mw.day_of_week is not None and mw.start_hour is not None
    assert mw.start_minute is not None
    assert p.replica and p.replica.role == role and p.replica.capacity is not None and p.replication_role == role


def test_default_credential_signs_in_at_the_managed_identity_endpoint(fake: Fake) -> None:
    token = DefaultAzureCredential().get_token(ARM_SCOPE)
    assert token.token and token.expires_on > time.time() + 3600
    wrong = httpx.get(fake.arm.identity_endpoint, params={"api-version": "2019-08-01", "resource": "x"},
                      headers={"X-IDENTITY-HEADER": "not-it"})
    assert wrong.status_code == 401 and "access_token" not in wrong.text


def test_a_request_without_the_bearer_token_gets_401_with_an_arm_error(fake: Fake) -> None:
    url = f"{fake.arm.url}/subscriptions/{azure_arm.SUBSCRIPTION}/resourceGroups/{RG}/providers/" \
          f"Microsoft.DBforPostgreSQL/flexibleServers/{PRIMARY}?api-version=2026-10-01"
    missing = httpx.get(url)
    wrong = httpx.get(url, headers={"Authorization": "Bearer forged"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "AuthenticationFailed")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")

    class Forged:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            return AccessToken("forged", int(time.time()) + 3600)

    forged = management_client(fake.arm.url, azure_arm.SUBSCRIPTION, Forged(), retries=0)  # type: ignore[arg-type]
    with pytest.raises(ClientAuthenticationError) as caught:
        forged.servers.get(RG, PRIMARY)
    assert caught.value.error.code == "InvalidAuthenticationToken"


def test_get_and_list_servers_deserialize_with_every_field(arm: PostgreSQLManagementClient) -> None:
    primary = arm.servers.get(RG, PRIMARY)
    assert_server(primary, role="Primary")
    assert primary.properties.maintenance_window.custom_window == "Enabled"
    assert (primary.properties.maintenance_window.day_of_week, primary.properties.maintenance_window.start_hour) \
        == (0, 2)
    replica = arm.servers.get(RG, REPLICA)
    assert_server(replica, role="AsyncReplica")
    assert replica.properties.source_server_resource_id == primary.id
    assert replica.properties.replica.replication_state == "Active"
    assert {s.name for s in arm.servers.list_by_resource_group(RG)} == {PRIMARY, REPLICA}


def test_a_missing_server_is_resource_not_found(arm: PostgreSQLManagementClient) -> None:
    with pytest.raises(ResourceNotFoundError) as caught:
        arm.servers.get(RG, "no-such-server")
    assert caught.value.error.code == "ResourceNotFound"


def test_automatic_backup_is_listed_and_an_on_demand_one_is_made_through_the_poller(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    automatic = list(arm.backups_automatic_and_on_demand.list_by_server(RG, PRIMARY))
    assert [b.properties.backup_type for b in automatic] == ["Full"]
    assert automatic[0].properties.completed_time < datetime.now(UTC) - timedelta(days=6)  # the backdated seed
    poller = arm.backups_automatic_and_on_demand.begin_create(RG, PRIMARY, "before-change-1")
    made = poller.result()
    assert made.name == "before-change-1" and made.properties.backup_type == "Customer On-Demand"
    assert made.properties.completed_time and made.properties.source
    got = arm.backups_automatic_and_on_demand.get(RG, PRIMARY, "before-change-1")
    assert got.properties.completed_time == made.properties.completed_time
    assert [b.name for b in arm.backups_automatic_and_on_demand.list_by_server(RG, PRIMARY)][-1] == "before-change-1"
    puts = [e for e in fake.control.log() if e["method"] == "PUT" and e["path"].endswith("/backups/before-change-1")]
    assert [e["status"] for e in puts] == [202]


def test_replicas_and_virtual_endpoint_deserialize(arm: PostgreSQLManagementClient) -> None:
    assert [r.name for r in arm.replicas.list_by_server(RG, PRIMARY)] == [REPLICA]
    ve = arm.virtual_endpoints.get(RG, PRIMARY, VE)
    assert ve.name == VE and ve.properties.endpoint_type == "ReadWrite" and ve.properties.members == [PRIMARY]
    assert ve.properties.virtual_endpoints
    assert [v.name for v in arm.virtual_endpoints.list_by_server(RG, REPLICA)] == [VE]


def test_point_in_time_restore_is_a_new_server_answering_sql_with_the_source_rows(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    source = arm.servers.get(RG, PRIMARY)
    point = datetime.now(UTC) - timedelta(minutes=5)
    poller = arm.servers.begin_create_or_update(RG, "fleet-pg-restore-1", models.Server(
        location="eastus", properties=models.ServerProperties(
            create_mode="PointInTimeRestore", source_server_resource_id=source.id, point_in_time_utc=point)))
    token = poller.continuation_token()
    fresh = fake.client()  # another process would resume the same operation from the token
    restored = fresh.servers.begin_create_or_update(RG, "fleet-pg-restore-1", None, continuation_token=token).result()
    fresh.close()
    assert_server(restored, role="Primary")
    assert restored.properties.source_server_resource_id == source.id
    assert abs(restored.properties.point_in_time_utc - point) < timedelta(seconds=1)
    fqdn = restored.properties.fully_qualified_domain_name
    assert fqdn != source.properties.fully_qualified_domain_name
    count = "SELECT count(*) FROM vehicles"
    assert fake.sql(fqdn, count) == fake.sql(source.properties.fully_qualified_domain_name, count)
    assert fake.sql(fqdn, count)[0][0] >= 100

    arm.servers.begin_delete(RG, "fleet-pg-restore-1").result()
    with pytest.raises(ResourceNotFoundError):
        arm.servers.get(RG, "fleet-pg-restore-1")
    folder = Path(fake.control.state()["backups"][PRIMARY][0]["folder"]).parents[2] / "pg"
    assert not (folder / str(int(fqdn.rsplit(".", 1)[1]))).exists()


def test_a_point_in_time_before_the_earliest_backup_is_refused(arm: PostgreSQLManagementClient) -> None:
    source = arm.servers.get(RG, PRIMARY)
    with pytest.raises(HttpResponseError) as caught:
        arm.servers.begin_create_or_update(RG, "fleet-pg-too-early", models.Server(
            location="eastus", properties=models.ServerProperties(
                create_mode="PointInTimeRestore", source_server_resource_id=source.id,
                point_in_time_utc=datetime.now(UTC) - timedelta(days=30))))
    assert (caught.value.status_code, caught.value.error.code) == (400, "InvalidParameterValue")


def test_an_operation_that_ends_failed_raises_with_azures_code_and_message(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    fake.control.fail_operation("restore", "ServerRestoreFailed", "Restore failed: storage throttled")
    source = arm.servers.get(RG, PRIMARY)
    poller = arm.servers.begin_create_or_update(RG, "fleet-pg-restore-2", models.Server(
        location="eastus", properties=models.ServerProperties(
            create_mode="PointInTimeRestore", source_server_resource_id=source.id,
            point_in_time_utc=datetime.now(UTC) - timedelta(minutes=5))))
    with pytest.raises(HttpResponseError) as caught:
        poller.result()
    assert caught.value.error.code == "ServerRestoreFailed"
    assert caught.value.error.message == "Restore failed: storage throttled"
    with pytest.raises(ResourceNotFoundError):
        arm.servers.get(RG, "fleet-pg-restore-2")


def test_a_429_with_retry_after_is_retried_no_sooner_than_it_says(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    path = f"/subscriptions/{azure_arm.SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.DBforPostgreSQL/" \
           f"flexibleServers/{PRIMARY}"
    arm.servers.get(RG, PRIMARY)  # signed in already: the clock measures only the retry
    fake.control.clear_log()
    fake.control.fail_requests("GET", path, status=429, retry_after=1)
    started = time.monotonic()
    assert arm.servers.get(RG, PRIMARY).name == PRIMARY
    assert time.monotonic() - started >= 1.0
    assert [(e["status"], e["rule"] is not None) for e in fake.control.log() if e["path"] == path] \
        == [(429, True), (200, False)]


def test_a_500_is_retried(fake: Fake, arm: PostgreSQLManagementClient) -> None:
    path = f"/subscriptions/{azure_arm.SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.DBforPostgreSQL/" \
           f"flexibleServers/{PRIMARY}/replicas"
    fake.control.fail_requests("GET", path, status=500)
    assert [r.name for r in arm.replicas.list_by_server(RG, PRIMARY)] == [REPLICA]
    assert [e["status"] for e in fake.control.log() if e["path"] == path] == [500, 200]


def test_a_held_operation_stays_in_progress_and_a_fresh_client_finishes_it_after_release(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    fake.control.hold("backup")
    poller = arm.backups_automatic_and_on_demand.begin_create(RG, PRIMARY, "held-1")
    token = poller.continuation_token()
    time.sleep(1.5)
    assert poller.status() == "InProgress" and not poller.done()
    with pytest.raises(ResourceNotFoundError):
        arm.backups_automatic_and_on_demand.get(RG, PRIMARY, "held-1")
    fake.control.release("backup")
    fresh = fake.client()  # the first client is gone (a crashed worker); the operation is not
    done = fresh.backups_automatic_and_on_demand.begin_create(RG, PRIMARY, "held-1",
                                                               continuation_token=token).result()
    fresh.close()
    assert done.name == "held-1" and done.properties.completed_time
    poller.result()  # the first poller ends too
    backup_puts = [e for e in fake.control.log() if e["method"] == "PUT" and "/backups/held-1" in e["path"]]
    assert len(backup_puts) == 1


def test_maintenance_window_update(arm: PostgreSQLManagementClient) -> None:
    patch = models.ServerForPatch(properties=models.ServerPropertiesForPatch(
        maintenance_window=models.MaintenanceWindowForPatch(custom_window="Enabled", day_of_week=6, start_hour=3,
                                                            start_minute=30)))
    updated = arm.servers.begin_update(RG, PRIMARY, patch).result()
    mw = updated.properties.maintenance_window
    assert (mw.custom_window, mw.day_of_week, mw.start_hour, mw.start_minute) == ("Enabled", 6, 3, 30)
    arm.servers.begin_update(RG, PRIMARY, models.ServerForPatch(properties=models.ServerPropertiesForPatch(
        maintenance_window=models.MaintenanceWindowForPatch(day_of_week=0, start_hour=2, start_minute=0)))).result()


def test_a_new_replica_promoted_planned_standalone_has_every_committed_row_and_takes_writes(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    source = arm.servers.get(RG, PRIMARY)
    replica = arm.servers.begin_create_or_update(RG, "fleet-pg-replica-2", models.Server(
        location="eastus", properties=models.ServerProperties(create_mode="Replica",
                                                              source_server_resource_id=source.id))).result()
    assert_server(replica, role="AsyncReplica")
    assert replica.properties.source_server_resource_id == source.id
    primary_fqdn, replica_fqdn = source.properties.fully_qualified_domain_name, \
        replica.properties.fully_qualified_domain_name
    fake.sql(primary_fqdn, "CREATE TABLE IF NOT EXISTS promote_marks (note text)")
    fake.sql(primary_fqdn, "INSERT INTO promote_marks VALUES ('before standalone promotion')")

    promoted = arm.servers.begin_update(RG, "fleet-pg-replica-2", models.ServerForPatch(
        properties=models.ServerPropertiesForPatch(replica=models.Replica(
            promote_mode="Standalone", promote_option="Planned")))).result()
    assert_server(promoted, role="Primary")
    assert promoted.properties.source_server_resource_id is None
    assert ("before standalone promotion",) in fake.sql(replica_fqdn, "SELECT note FROM promote_marks")
    fake.sql(replica_fqdn, "INSERT INTO promote_marks VALUES ('written on the promoted server')")
    assert arm.servers.get(RG, PRIMARY).properties.replica.role == "Primary"
    assert [r.name for r in arm.replicas.list_by_server(RG, PRIMARY)] == [REPLICA]
    arm.servers.begin_delete(RG, "fleet-pg-replica-2").result()


def test_forced_switchover_swaps_roles_and_moves_the_virtual_endpoint(
        fake: Fake, arm: PostgreSQLManagementClient) -> None:
    primary_fqdn = arm.servers.get(RG, PRIMARY).properties.fully_qualified_domain_name
    poller = arm.servers.begin_update(RG, REPLICA, models.ServerForPatch(properties=models.ServerPropertiesForPatch(
        replica=models.Replica(promote_mode="Switchover", promote_option="Forced"))))
    promoted = poller.result()
    assert_server(promoted, role="Primary")
    old = arm.servers.get(RG, PRIMARY)
    assert old.properties.replica.role == "AsyncReplica" and old.properties.source_server_resource_id == promoted.id
    new_fqdn = promoted.properties.fully_qualified_domain_name
    fake.sql(new_fqdn, "CREATE TABLE switchover_check (n int)")
    fake.sql(new_fqdn, "INSERT INTO switchover_check VALUES (1)")
    assert fake.sql(new_fqdn, "SELECT n FROM switchover_check") == [(1,)]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        fake.sql(primary_fqdn, "CREATE TABLE written_on_the_old_primary (n int)")

    ve = arm.virtual_endpoints.get(RG, REPLICA, VE)
    assert ve.properties.members == [REPLICA]
    moved = arm.virtual_endpoints.begin_update(RG, REPLICA, VE, models.VirtualEndpointResourceForPatch(
        properties=models.VirtualEndpointResourceProperties(endpoint_type="ReadWrite", members=[REPLICA]))).result()
    assert moved.properties.members == [REPLICA] and moved.properties.virtual_endpoints


def test_no_secret_reaches_the_log_the_request_log_or_the_state(fake: Fake) -> None:
    token = DefaultAzureCredential().get_token(ARM_SCOPE).token
    texts = [fake.arm.log.read_text(), json.dumps(fake.control.state()), json.dumps(fake.control.log())]
    texts += [p.read_text(errors="replace") for p in fake.arm.state_dir.glob("*.json")]
    for text in texts:
        for secret in (fake.header, fake.password, token):
            assert secret not in text


def test_the_sandbox_azure_environment_validates_as_an_azure_flexible_database(tmp_path: Path) -> None:
    from sandbox.environment import azure_environment_dict
    from sandbox.state import SandboxState
    from tasks.config import EnvironmentConfig

    state = SandboxState(
        workdir=tmp_path, size_mb=8, pg_host="127.0.0.1", pg_port=5432, pg_user="runbook", pg_password="x",
        pg_data_dir=tmp_path / "pg" / "data", pg_bin=tmp_path, pg_pid=1, s3_endpoint="http://127.0.0.1:9000",
        s3_bucket="b", s3_region="us-east-1", s3_access_key="a", s3_secret_key="s", moto_pid=1,
        backup_dir=tmp_path / "backups", azure_arm_url="http://127.0.0.1:8443", azure_pg_port=6543,
        azure_subscription_id=azure_arm.SUBSCRIPTION, azure_fqdn="127.0.1.1", azure_admin_user="fleetadmin",
        azure_admin_password="pw", azure_identity_header="hdr")
    config = EnvironmentConfig.model_validate(azure_environment_dict(state))
    db = config.databases["fleetdb"]
    assert db.kind == "azure-flexible" and db.azure is not None
    assert (db.azure.server, db.azure.replica, db.azure.virtual_endpoint, db.azure.port) == \
        (PRIMARY, REPLICA, VE, 6543)
    assert str(db.azure.endpoint).rstrip("/") == "http://127.0.0.1:8443"
    assert state.secret_env()["RUNBOOK_SANDBOX_AZURE_DSN"] == \
        "postgresql://fleetadmin:pw@127.0.1.1:6543/fleetdb?sslmode=disable"
    assert state.secret_env()["IDENTITY_ENDPOINT"] == "http://127.0.0.1:8443/msi/token"
