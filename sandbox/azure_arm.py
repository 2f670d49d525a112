"""A fake Azure Resource Manager for Azure Database for PostgreSQL flexible server, over real HTTP.

The real `azure-mgmt-postgresqlflexibleservers` client (API 2026-10-01) and azure-identity's
DefaultAzureCredential talk to it unmodified: `tasks.azure.management_client(url, SUBSCRIPTION,
DefaultAzureCredential())` with IDENTITY_ENDPOINT and IDENTITY_HEADER set. Each fake server is a
real PostgreSQL 15 cluster (sandbox/azure_pg.py) on 127.0.1.N:P, its FQDN that address.

What it serves (any api-version; ARM error bodies `{"error": {"code", "message"}}`):

    GET  /msi/token                                          App Service managed identity (2019-08-01):
                                                             X-IDENTITY-HEADER must match; a random token
    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DBforPostgreSQL/flexibleServers
      GET                                                    servers of the resource group
      GET|PUT|PATCH|DELETE /{server}                         createMode Create|Default|PointInTimeRestore|
                                                             Replica; PATCH: promote, maintenanceWindow
      GET /{server}/backups, GET|PUT /{server}/backups/{b}   automatic (Full) and on-demand backups
      GET /{server}/replicas                                 servers whose source is this one
      GET /{server}/virtualendpoints, GET|PUT|PATCH|DELETE /{server}/virtualendpoints/{ve}
    GET  /subscriptions/{sub}/providers/Microsoft.DBforPostgreSQL/locations/{loc}/azureAsyncOperation/{id}
    GET  .../locations/{loc}/operationResults/{id}           202 while running, then 200 (204: deletions)
    /_control/...                                            the test API (below); loopback only, no auth

Every ARM request needs `Authorization: Bearer <the token>`, else 401. PUT, PATCH and DELETE
answer 202 (what the SDK's `_initial` methods accept) with Azure-AsyncOperation, Location and
Retry-After (`retry_after` seconds, an integer as the SDK parses it; 1 by default; with 0 the
SDK's pollers wait their own polling_interval). An operation's status is InProgress until its
work is done and it has been polled `polls` more times (0 by default), then Succeeded or Failed
with Azure's code and message; the resource's `state` follows (Provisioning, Updating, Dropping,
then Ready or gone).

Simplifications (what real Azure does differently):
- A point-in-time restore restores (pg_restore) the newest backup of the source taken at or
  before pointInTimeUTC: the data as of that backup, no WAL replay to the exact time. Roles other
  than the administrator are not copied; objects belong to the administrator.
- The seeded server's history is backdated by `backdate_days` (7): its automatic backup, taken at
  `sandbox up` after the sample data is loaded, carries a completedTime that long ago, so "a few
  minutes ago" is a valid restore point right after `up`. Other servers' history starts when made.
- The administrator is a superuser. Backups are pg_dump -Fc files in the fake's own folder.
- Promotion: `pg_promote` on the replica (Planned first waits until it has replayed the
  primary's current WAL position; Forced does not). Standalone: the replica becomes a Primary with
  no source; the old primary stays Primary. Switchover: roles swap in what ARM reports; the old
  primary is made read-only (ALTER SYSTEM default_transaction_read_only = on) and reported as an
  AsyncReplica of the new one, but it does not stream from it; virtual endpoint members move to
  the new primary. A replica's replicationState is "Active" once it streamed at creation.
- Virtual endpoints' `virtualEndpoints` are Azure-style names that do not resolve (no DNS here);
  connect to the member's FQDN. An endpoint is visible under any server of its replication group.
- An operation made to fail by the control API does no work: a failed create leaves no server, a
  failed promotion or update changes nothing.
- No tags, identities, HA, networking, firewall rules or pagination (lists fit in one page).

Control API (`ArmControl` drives it from a test):

    GET    /_control/healthz        {"status": "ok"|"seeding"|"failed", "detail"}
    GET    /_control/state          servers, backups, virtual endpoints, operations, settings, rules
    PUT    /_control/settings       {"retry_after": s, "polls": n}
    POST   /_control/faults         {"method", "path" (prefix), "count", "status", "code", "message",
                                     "retry_after"}: the next `count` matching requests get that answer
    DELETE /_control/faults         remove them all
    POST   /_control/failures       {"kind", "code", "message", "count"}: the next operations of that
                                     kind (create, restore, replica, update, promote, delete, backup,
                                     virtualendpoint) end Failed
    DELETE /_control/failures
    POST   /_control/holds          {"kind"}: operations of that kind stay InProgress (and do nothing)
    DELETE /_control/holds[/{kind}] release them; they then run and finish
    GET    /_control/log            {"requests": [{"id", "time", "method", "path", "query", "status",
                                     "rule", "operation"}]}; DELETE empties it
    POST   /_control/reset          rules, failures, holds (released) and log cleared

No secret reaches the log file, the request log or the state: not the identity header, the
token, nor an administrator's password (tool errors are scrubbed of them).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import secrets
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import azure_pg, httpserver, postgres, sampledata
from sandbox.process import free_port, scrub, wait_until
from sandbox.state import write_private
from tasks.errors import PermanentError

INFO_FILE = "azure_arm.json"
LOG_FILE = "azure_arm.log"
SECRETS_FILE = "secrets.json"
DETACHED = httpserver.DetachedProcess("sandbox.azure_arm", INFO_FILE, LOG_FILE)

PROVIDER = "Microsoft.DBforPostgreSQL"
SERVER_TYPE = f"{PROVIDER}/flexibleServers"
SUBSCRIPTION = "5c3e9a1f-7b24-4d8e-9f60-2a81c4d7e3b5"
RESOURCE_GROUP = "fleet-management-rg"
LOCATION = "eastus"
SERVER = "fleet-pg"
REPLICA = "fleet-pg-replica"
VIRTUAL_ENDPOINT = "fleet-pg-ve"
ADMIN_USER = "fleetadmin"
DATABASE = "fleetdb"
VERSION = "15"
TOKEN_LIFETIME_S = 24 * 3600
REPLICA_CAPACITY = 5
LOG_LIMIT = 10_000
RESTORE_CLOCK_SKEW = timedelta(minutes=1)  # a point in time a little ahead of our clock is "now"
KINDS = ("create", "restore", "replica", "update", "promote", "delete", "backup", "virtualendpoint")

_BASE = rf"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/{re.escape(PROVIDER)}/flexibleServers"
_ROUTES = [
    (name, re.compile(pattern + "$", re.IGNORECASE)) for name, pattern in (
        ("servers", _BASE),
        ("server", _BASE + r"/(?P<server>[^/]+)"),
        ("backups", _BASE + r"/(?P<server>[^/]+)/backups"),
        ("backup", _BASE + r"/(?P<server>[^/]+)/backups/(?P<backup>[^/]+)"),
        ("replicas", _BASE + r"/(?P<server>[^/]+)/replicas"),
        ("endpoints", _BASE + r"/(?P<server>[^/]+)/virtualendpoints"),
        ("endpoint", _BASE + r"/(?P<server>[^/]+)/virtualendpoints/(?P<ve>[^/]+)"),
        ("operation", rf"/subscriptions/(?P<sub>[^/]+)/providers/{re.escape(PROVIDER)}/locations/(?P<loc>[^/]+)"
                      r"/(?P<how>azureAsyncOperation|operationResults)/(?P<op>[^/]+)"),
    )
]


class ArmError(Exception):
    """An ARM error answer: status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def parse_time(value: Any, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ArmError(400, "InvalidParameterValue", f"{what} {value!r} is not an ISO 8601 date and time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# --- the state -----------------------------------------------------------------------------------


@dataclass
class FakeServer:
    name: str
    resource_group: str
    location: str
    index: int
    admin_login: str
    created: datetime
    state: str = "Provisioning"
    role: str = "Primary"
    source: str | None = None  # name of the source server (replicas, restored servers)
    point_in_time: datetime | None = None
    create_mode: str = "Create"
    replication_state: str | None = None
    sku: dict[str, Any] = field(default_factory=lambda: {"name": "Standard_D2ds_v5", "tier": "GeneralPurpose"})
    storage_gb: int = 32
    retention_days: int = 7
    maintenance: dict[str, Any] = field(default_factory=lambda: {"customWindow": "Disabled", "dayOfWeek": 0,
                                                                  "startHour": 0, "startMinute": 0})
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeBackup:
    name: str
    kind: str  # "Full" or "Customer On-Demand"
    completed: datetime
    folder: Path


@dataclass
class FakeEndpoint:
    name: str
    members: list[str]
    endpoint_type: str = "ReadWrite"


@dataclass
class Operation:
    id: str
    kind: str
    target: str
    location: str
    started: datetime
    method: str
    resource_path: str
    failure: dict[str, str] | None = None  # injected: ends Failed without doing anything
    done: bool = False
    status: str = "InProgress"
    error: dict[str, str] | None = None
    ended: datetime | None = None
    polls: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status if self.done else
                "InProgress", "startTime": iso(self.started), "endTime": iso(self.ended), "error": self.error,
                "polls": self.polls, "method": self.method, "resource": self.resource_path}


@dataclass
class Settings:
    subscription_id: str = SUBSCRIPTION
    resource_groups: list[str] = field(default_factory=lambda: [RESOURCE_GROUP])
    pg_port: int = 0
    pg_bin: str = str(postgres.DEFAULT_PG_BIN)
    retry_after: int = 1
    polls: int = 0
    seed: dict[str, Any] | None = None


class FakeArm:
    """The fake's state and behaviour, shared by the app's requests and the operations' threads."""

    def __init__(self, root: Path, settings: Settings, identity_header: str, seed_password: str | None) -> None:
        self.root = Path(root)
        self.settings = settings
        self.bin_dir = Path(settings.pg_bin)
        self.identity_header = identity_header
        self.token = secrets.token_urlsafe(32)
        self.replication_password = secrets.token_urlsafe(24)
        self.passwords: dict[str, str] = {}  # server -> administrator's password: never shown
        self.seed_password = seed_password
        self.lock = threading.RLock()
        self.servers: dict[str, FakeServer] = {}
        self.backups: dict[str, dict[str, FakeBackup]] = {}
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.operations: dict[str, Operation] = {}
        self.rules: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.holds: dict[str, threading.Event] = {}
        self.log: list[dict[str, Any]] = []
        self.health = {"status": "seeding" if settings.seed else "ok", "detail": ""}
        self.passfile = azure_pg.prepare(self.root, self.replication_password)
        self._next_log = 1
        self._next_rule = 1

    # -- secrets and output

    def secrets(self) -> list[str]:
        return [self.identity_header, self.token, self.replication_password, self.seed_password or "",
                *self.passwords.values()]

    def say(self, text: str) -> None:
        print(f"{iso(datetime.now(UTC))} {scrub(text, self.secrets())}", flush=True)

    # -- servers

    def server(self, name: str) -> FakeServer:
        found = self.servers.get(name.lower())
        if found is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{SERVER_TYPE}/{name}' under resource group "
                                                    "was not found.")
        return found

    def server_id(self, server: FakeServer | str, resource_group: str | None = None) -> str:
        name = server.name if isinstance(server, FakeServer) else server
        rg = server.resource_group if isinstance(server, FakeServer) else resource_group
        return (f"/subscriptions/{self.settings.subscription_id}/resourceGroups/{rg}/providers/{SERVER_TYPE}"
                f"/{name}")

    def instance(self, server: FakeServer) -> azure_pg.Instance:
        return azure_pg.instance(self.root, server.name, server.index, self.settings.pg_port)

    def next_index(self) -> int:
        used = {s.index for s in self.servers.values()}
        used |= {int(p.name) for p in (self.root / "pg").iterdir() if p.name.isdigit()}
        return min(set(range(1, 255)) - used)

    def server_json(self, s: FakeServer) -> dict[str, Any]:
        backups = self.backups.get(s.name.lower(), {})
        earliest = min((b.completed for b in backups.values()), default=s.created)
        properties: dict[str, Any] = {
            "administratorLogin": s.admin_login,
            "version": VERSION,
            "minorVersion": "8",
            "state": s.state,
            "fullyQualifiedDomainName": azure_pg.address(s.index),
            "storage": {"storageSizeGB": s.storage_gb, "autoGrow": "Disabled", "tier": "P4", "type": "Premium_LRS"},
            "backup": {"backupRetentionDays": s.retention_days, "geoRedundantBackup": "Disabled",
                       "earliestRestoreDate": iso(earliest)},
            "network": {"publicNetworkAccess": "Enabled"},
            "highAvailability": {"mode": "Disabled", "state": "NotEnabled"},
            "maintenanceWindow": dict(s.maintenance),
            "replicationRole": s.role,
            "replicaCapacity": REPLICA_CAPACITY if s.role == "Primary" else 0,
            "replica": {"role": s.role, "capacity": REPLICA_CAPACITY if s.role == "Primary" else 0,
                        **({"replicationState": s.replication_state} if s.replication_state else {})},
            "availabilityZone": "1",
        }
        if s.source is not None:
            properties["sourceServerResourceId"] = self.server_id(s.source, s.resource_group)
        if s.point_in_time is not None:
            properties["pointInTimeUTC"] = iso(s.point_in_time)
        return {"id": self.server_id(s), "name": s.name, "type": SERVER_TYPE, "location": s.location,
                "sku": dict(s.sku), "tags": dict(s.tags), "properties": properties,
                "systemData": {"createdAt": iso(s.created)}}

    def backup_json(self, s: FakeServer, b: FakeBackup) -> dict[str, Any]:
        return {"id": f"{self.server_id(s)}/backups/{b.name}", "name": b.name, "type": f"{SERVER_TYPE}/backups",
                "properties": {"backupType": b.kind, "completedTime": iso(b.completed), "source": "Automatic"
                               if b.kind == "Full" else "Customer Initiated"}}

    def endpoint_json(self, s: FakeServer, ve: FakeEndpoint) -> dict[str, Any]:
        return {"id": f"{self.server_id(s)}/virtualendpoints/{ve.name}", "name": ve.name,
                "type": f"{SERVER_TYPE}/virtualEndpoints",
                "properties": {"endpointType": ve.endpoint_type, "members": list(ve.members),
                               "virtualEndpoints": [f"{ve.name}.writer.postgres.database.azure.com",
                                                    f"{ve.name}.reader.postgres.database.azure.com"]}}

    def group(self, name: str) -> set[str]:
        """The replication group of a server: it and every server linked to it by a source."""
        found, todo = set(), [name.lower()]
        while todo:
            current = todo.pop()
            if current in found or current not in self.servers:
                continue
            found.add(current)
            s = self.servers[current]
            if s.source:
                todo.append(s.source.lower())
            todo += [k for k, other in self.servers.items() if (other.source or "").lower() == current]
        return found

    def endpoint(self, server: str, name: str) -> FakeEndpoint:
        ve = self.endpoints.get(name.lower())
        if ve is None or not self.group(server) & {m.lower() for m in ve.members}:
            raise ArmError(404, "ResourceNotFound", f"The virtual endpoint '{name}' of server '{server}' was not "
                                                    "found.")
        return ve

    # -- operations

    def start_operation(self, kind: str, target: str, location: str, request: Request,
                        work: Callable[[], None], on_failure: Callable[[], None]) -> Operation:
        with self.lock:
            op = Operation(uuid.uuid4().hex, kind, target, location, datetime.now(UTC), request.method,
                           request.url.path, failure=self._take_failure(kind))
            self.operations[op.id] = op
        self.say(f"operation {op.id}: {kind} of {target} started")
        threading.Thread(target=self._run, args=(op, work, on_failure), name=f"op-{kind}", daemon=True).start()
        return op

    def _take_failure(self, kind: str) -> dict[str, str] | None:
        for failure in self.failures:
            if failure["kind"] == kind and failure["count_left"] > 0:
                failure["count_left"] -= 1
                failure["fired"] += 1
                return {"code": failure["code"], "message": failure["message"]}
        return None

    def _run(self, op: Operation, work: Callable[[], None], on_failure: Callable[[], None]) -> None:
        while True:  # held: wait until released
            with self.lock:
                hold = self.holds.get(op.kind)
            if hold is None:
                break
            hold.wait()
        status, error = "Succeeded", None
        try:
            if op.failure is not None:
                raise ArmError(400, op.failure["code"], op.failure["message"])
            work()
        except ArmError as exc:
            status, error = "Failed", {"code": exc.code, "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - what Azure reports as an internal error
            status, error = "Failed", {"code": "InternalServerError",
                                       "message": scrub(f"{type(exc).__name__}: {exc}", self.secrets())}
            self.say(traceback.format_exc())
        if status == "Failed":
            try:
                on_failure()
            except Exception:  # noqa: BLE001
                self.say(traceback.format_exc())
        with self.lock:
            op.status, op.error, op.done, op.ended = status, error, True, datetime.now(UTC)
        self.say(f"operation {op.id}: {op.kind} of {op.target} {status}"
                 + (f" ({error['code']}: {error['message']})" if error else ""))

    def poll(self, op_id: str) -> Operation:
        with self.lock:
            op = self.operations.get(op_id)
            if op is None:
                raise ArmError(404, "ResourceNotFound", f"The operation '{op_id}' was not found.")
            held = op.kind in self.holds
            op.polls += 1
            if op.done and not held and op.polls > self.settings.polls:
                return op
            return Operation(**{**op.__dict__, "done": False})

    def accepted(self, op: Operation, base: str, body: dict[str, Any] | None = None) -> JSONResponse:
        """202 Accepted with the headers ARM sends for a long-running operation."""
        path = f"/subscriptions/{self.settings.subscription_id}/providers/{PROVIDER}/locations/{op.location}"
        query = "?api-version=2026-10-01"
        headers = {"Azure-AsyncOperation": f"{base}{path}/azureAsyncOperation/{op.id}{query}",
                   "Location": f"{base}{path}/operationResults/{op.id}{query}",
                   "Retry-After": str(self.settings.retry_after)}
        return JSONResponse(body if body is not None else {}, status_code=202, headers=headers)

    # -- the work of operations (threads)

    def create_work(self, s: FakeServer, password: str, mode: str, backup: FakeBackup | None) -> Callable[[], None]:
        def work() -> None:
            inst = self.instance(s)
            if mode == "Replica":
                assert s.source is not None
                azure_pg.clone(inst, self.instance(self.server(s.source)), self.bin_dir, self.passfile)
                with self.lock:
                    s.replication_state = "Active"
            else:
                azure_pg.create(inst, self.bin_dir, s.admin_login, password, self.replication_password)
                if backup is not None:
                    azure_pg.restore(inst, self.bin_dir, backup.folder, s.admin_login)
                self.take_backup(s, "Full", f"backup_{datetime.now(UTC):%Y%m%dT%H%M%S}")
            with self.lock:
                s.state = "Ready"
        return work

    def take_backup(self, s: FakeServer, kind: str, name: str, completed: datetime | None = None) -> FakeBackup:
        folder = self.root / "backups" / s.name / name
        azure_pg.dump(self.instance(s), self.bin_dir, folder)
        backup = FakeBackup(name, kind, completed or datetime.now(UTC), folder)
        with self.lock:
            self.backups.setdefault(s.name.lower(), {})[name.lower()] = backup
        return backup

    def drop(self, s: FakeServer) -> None:
        azure_pg.drop(self.instance(s), self.bin_dir)
        with self.lock:
            self.servers.pop(s.name.lower(), None)
            self.backups.pop(s.name.lower(), None)
            self.passwords.pop(s.name.lower(), None)

    def promote_work(self, s: FakeServer, mode: str, option: str) -> Callable[[], None]:
        def work() -> None:
            assert s.source is not None
            old = self.server(s.source)
            inst, old_inst = self.instance(s), self.instance(old)
            if option == "Planned":
                azure_pg.wait_replayed(old_inst, inst)
            azure_pg.promote(inst)
            with self.lock:
                s.role, s.source, s.replication_state, s.state = "Primary", None, None, "Ready"
            if mode == "Switchover":
                azure_pg.set_read_only(old_inst)
                with self.lock:
                    old.role, old.source, old.replication_state = "AsyncReplica", s.name, "Active"
                    for other in self.servers.values():  # the other replicas follow the new primary
                        if other is not s and (other.source or "").lower() == old.name.lower():
                            other.source = s.name
                    for ve in self.endpoints.values():
                        ve.members = [s.name if m.lower() == old.name.lower() else m for m in ve.members]

        return work

    def settle(self, s: FakeServer, state: str) -> Callable[[], None]:
        def undo() -> None:
            with self.lock:
                s.state = state
        return undo

    # -- seeding (the sandbox's server, at start)

    def seed(self) -> None:
        spec = self.settings.seed or {}
        try:
            started = time.monotonic()
            self._seed(spec)
            with self.lock:
                self.health = {"status": "ok", "detail": f"seeded {spec.get('server')} in "
                                                         f"{time.monotonic() - started:.1f} s"}
        except Exception as exc:  # noqa: BLE001 - reported by /_control/healthz
            self.say(traceback.format_exc())
            with self.lock:
                self.health = {"status": "failed", "detail": scrub(f"{type(exc).__name__}: {exc}", self.secrets())}
        self.say(f"seed: {self.health['status']} {self.health['detail']}")

    def _seed(self, spec: dict[str, Any]) -> None:
        if not self.seed_password:
            raise PermanentError("a seed needs the administrator's password in the secrets file")
        back = timedelta(days=int(spec.get("backdate_days", 7)))
        created = datetime.now(UTC) - back
        rg, location, login = spec.get("resource_group", RESOURCE_GROUP), spec.get("location", LOCATION), \
            spec.get("admin_login", ADMIN_USER)
        primary = FakeServer(spec.get("server", SERVER), rg, location, self.next_index(), login, created,
                             maintenance=spec.get("maintenance") or {"customWindow": "Enabled", "dayOfWeek": 0,
                                                                     "startHour": 2, "startMinute": 0})
        with self.lock:
            self.servers[primary.name.lower()] = primary
            self.passwords[primary.name.lower()] = self.seed_password
        inst = self.instance(primary)
        azure_pg.create(inst, self.bin_dir, login, self.seed_password, self.replication_password)
        dbname = spec.get("database", DATABASE)
        dsn = (f"postgresql://{login}:{self.seed_password}@{inst.address}:{inst.node.port}")
        sampledata.create_database(f"{dsn}/postgres", dbname)
        sampledata.generate_fleet(f"{dsn}/{dbname}", int(spec.get("size_mb", sampledata.MIN_MB)), jobs=1)
        self.take_backup(primary, "Full", f"backup_{created:%Y%m%dT%H%M%S}", completed=created)
        with self.lock:
            primary.state = "Ready"
        if spec.get("replica"):
            replica = FakeServer(spec["replica"], rg, location, self.next_index(), login, created, role="AsyncReplica",
                                 source=primary.name, create_mode="Replica")
            with self.lock:
                self.servers[replica.name.lower()] = replica
                self.passwords[replica.name.lower()] = self.seed_password
            self.create_work(replica, self.seed_password, "Replica", None)()
        if spec.get("virtual_endpoint"):
            with self.lock:
                self.endpoints[spec["virtual_endpoint"].lower()] = FakeEndpoint(spec["virtual_endpoint"],
                                                                                [primary.name])

    def stop_clusters(self) -> None:
        for action in azure_pg.stop_all(self.root, self.bin_dir):
            self.say(action)


# --- the HTTP app ---------------------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def arm_app(fake: FakeArm) -> Starlette:
    async def handle(request: Request) -> Response:
        path = request.url.path
        if path.startswith("/_control"):
            if not _is_loopback(request.client.host if request.client else None):
                return arm_error(403, "Forbidden", "the control API answers loopback clients only")
            return await control(fake, request)
        entry = {"time": time.time(), "method": request.method, "path": path, "query": request.url.query,
                 "status": None, "rule": None, "operation": None}
        try:
            response = _fault(fake, request, entry) or await _serve(fake, request, entry)
        except ArmError as exc:
            response = arm_error(exc.status, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001
            fake.say(traceback.format_exc())
            response = arm_error(500, "InternalServerError", scrub(f"{type(exc).__name__}: {exc}", fake.secrets()))
        entry["status"] = response.status_code
        with fake.lock:
            entry["id"] = fake._next_log
            fake._next_log += 1
            fake.log.append(entry)
            del fake.log[:-LOG_LIMIT]
        return response

    methods = ["GET", "PUT", "PATCH", "DELETE", "POST", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


def _fault(fake: FakeArm, request: Request, entry: dict[str, Any]) -> Response | None:
    with fake.lock:
        for rule in fake.rules:
            if rule["count_left"] == 0:
                continue
            if rule["method"] not in ("*", request.method) or not request.url.path.lower().startswith(
                    rule["path"].lower()):
                continue
            if rule["count_left"] is not None:
                rule["count_left"] -= 1
            rule["fired"] += 1
            entry["rule"] = rule["id"]
            headers = {"Retry-After": str(rule["retry_after"])} if rule["retry_after"] is not None else None
            return arm_error(rule["status"], rule["code"], rule["message"], headers)
    return None


async def _serve(fake: FakeArm, request: Request, entry: dict[str, Any]) -> Response:
    path = request.url.path
    if path == "/msi/token":
        return _token(fake, request)
    auth = request.headers.get("authorization")
    if not auth:
        return arm_error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                         {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                                             'error="invalid_token"'})
    if not secrets.compare_digest(auth.encode(), f"Bearer {fake.token}".encode()):
        return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.",
                         {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    for name, pattern in _ROUTES:
        match = pattern.match(path)
        if match is not None:
            args = match.groupdict()
            if args["sub"] != fake.settings.subscription_id:
                raise ArmError(404, "SubscriptionNotFound", f"The subscription '{args['sub']}' could not be found.")
            if "rg" in args and args["rg"].lower() not in {g.lower() for g in fake.settings.resource_groups}:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{args['rg']}' could not be found.")
            body = await _body(request) if request.method in ("PUT", "PATCH") else {}
            handler = _HANDLERS.get((name, request.method))
            if handler is None:
                raise ArmError(405, "MethodNotAllowed", f"{request.method} is not supported on {path}")
            return handler(fake, request, args, body, entry)
    raise ArmError(404, "InvalidResourceType", f"No route for {request.method} {path}")


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be "
                                                     "deserialized.") from None
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return body


def _token(fake: FakeArm, request: Request) -> Response:
    header = request.headers.get("x-identity-header", "")
    if not secrets.compare_digest(header.encode(), fake.identity_header.encode()):
        return JSONResponse({"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is missing or wrong"},
                            status_code=401)
    resource = request.query_params.get("resource")
    if request.query_params.get("api-version") != "2019-08-01" or not resource:
        return JSONResponse({"statusCode": 400, "message": "api-version 2019-08-01 and resource are required"},
                            status_code=400)
    return JSONResponse({"access_token": fake.token, "expires_on": str(int(time.time()) + TOKEN_LIFETIME_S),
                         "resource": resource, "token_type": "Bearer",
                         "client_id": "00000000-0000-0000-0000-00000000a2e1"})


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


Handler = Callable[[FakeArm, Request, dict[str, str], dict[str, Any], dict[str, Any]], Response]


def _list_servers(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        value = [fake.server_json(s) for s in fake.servers.values() if s.resource_group.lower() == args["rg"].lower()]
    return JSONResponse({"value": value})


def _get_server(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        return JSONResponse(fake.server_json(fake.server(args["server"])))


def _put_server(fake: FakeArm, request: Request, args: dict[str, str], body: dict[str, Any],
                entry: dict[str, Any]) -> Response:
    name, rg = args["server"], args["rg"]
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name):
        raise ArmError(400, "InvalidServerName", f"The server name '{name}' is invalid: 3 to 63 lower-case letters, "
                                                 "digits and hyphens")
    props = body.get("properties") or {}
    mode = str(props.get("createMode") or "Create")
    kinds = {"create": "create", "default": "create", "pointintimerestore": "restore", "replica": "replica"}
    kind = kinds.get(mode.lower())
    if kind is None:
        raise ArmError(400, "InvalidParameterValue", f"createMode {mode!r} is not supported here; known: Create, "
                                                     "Default, PointInTimeRestore, Replica")
    location = str(body.get("location") or "")
    if not location:
        raise ArmError(400, "LocationRequired", "The location property is required for this definition.")
    with fake.lock:
        if name.lower() in fake.servers:
            raise ArmError(409, "ServerAlreadyExists", f"Specified server name '{name}' is already used.")
        backup = None
        source = None
        if kind == "create":
            login, password = props.get("administratorLogin"), props.get("administratorLoginPassword")
            if not login or not password:
                raise ArmError(400, "InvalidParameterValue", "administratorLogin and administratorLoginPassword are "
                                                             "required to create a server")
        else:
            source = _source(fake, props.get("sourceServerResourceId"))
            login, password = source.admin_login, fake.passwords[source.name.lower()]
            if kind == "restore":
                pit = parse_time(props.get("pointInTimeUTC") or "", "pointInTimeUTC")
                backup = _backup_for(fake, source, pit)
            elif source.role != "Primary" or source.state != "Ready":
                raise ArmError(400, "InvalidParameterValue", f"The source server '{source.name}' must be a Ready "
                                                             f"primary to add a replica (it is {source.state}, "
                                                             f"{source.role})")
        s = FakeServer(name, rg, location, fake.next_index(), str(login), datetime.now(UTC),
                       role="AsyncReplica" if kind == "replica" else "Primary",
                       source=source.name if source else None, create_mode=mode,
                       point_in_time=parse_time(props["pointInTimeUTC"], "pointInTimeUTC") if kind == "restore"
                       else None)
        if isinstance(body.get("sku"), dict):
            s.sku = dict(body["sku"])
        if isinstance(props.get("maintenanceWindow"), dict):
            s.maintenance.update(props["maintenanceWindow"])
        if isinstance(props.get("backup"), dict) and props["backup"].get("backupRetentionDays"):
            s.retention_days = int(props["backup"]["backupRetentionDays"])
        fake.servers[name.lower()] = s
        fake.passwords[name.lower()] = str(password)

        def forget() -> None:
            with contextlib.suppress(Exception):
                azure_pg.drop(fake.instance(s), fake.bin_dir)
            with fake.lock:
                fake.servers.pop(name.lower(), None)
                fake.passwords.pop(name.lower(), None)
                fake.backups.pop(name.lower(), None)

        op = fake.start_operation(kind, name, location, request,
                                  fake.create_work(s, str(password), "Replica" if kind == "replica" else mode, backup),
                                  forget)
        entry["operation"] = op.id
        return fake.accepted(op, _base(request), fake.server_json(s))


def _source(fake: FakeArm, resource_id: Any) -> FakeServer:
    if not resource_id:
        raise ArmError(400, "InvalidParameterValue", "sourceServerResourceId is required for this createMode")
    m = re.fullmatch(rf"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/{re.escape(SERVER_TYPE)}/([^/]+)",
                     str(resource_id), re.IGNORECASE)
    if m is None or m.group(1) != fake.settings.subscription_id or m.group(3).lower() not in fake.servers:
        raise ArmError(404, "ResourceNotFound", f"The source server '{resource_id}' was not found.")
    return fake.servers[m.group(3).lower()]


def _backup_for(fake: FakeArm, source: FakeServer, pit: datetime) -> FakeBackup:
    """The newest backup of `source` at or before `pit`; 400 when `pit` is out of range."""
    backups = sorted(fake.backups.get(source.name.lower(), {}).values(), key=lambda b: b.completed)
    now = datetime.now(UTC)
    if not backups or pit < backups[0].completed or pit > now + RESTORE_CLOCK_SKEW:
        earliest = iso(backups[0].completed) if backups else "none yet"
        raise ArmError(400, "InvalidParameterValue", f"The point in time {iso(pit)} is not valid for server "
                                                     f"'{source.name}': restore points are from {earliest} to now "
                                                     f"({iso(now)})")
    return [b for b in backups if b.completed <= pit][-1]


def _patch_server(fake: FakeArm, request: Request, args: dict[str, str], body: dict[str, Any],
                  entry: dict[str, Any]) -> Response:
    props = body.get("properties") or {}
    with fake.lock:
        s = fake.server(args["server"])
        if s.state != "Ready":
            raise ArmError(409, "ServerBusy", f"The server '{s.name}' is {s.state}; try again when it is Ready.")
        replica = props.get("replica") or {}
        if replica.get("promoteMode") or replica.get("promoteOption"):
            mode, option = str(replica.get("promoteMode") or "Standalone"), str(replica.get("promoteOption")
                                                                                or "Planned")
            if mode not in ("Standalone", "Switchover") or option not in ("Planned", "Forced"):
                raise ArmError(400, "InvalidParameterValue", f"promoteMode {mode!r} / promoteOption {option!r}: "
                                                             "Standalone or Switchover, Planned or Forced")
            if s.role != "AsyncReplica" or s.source is None or s.source.lower() not in fake.servers:
                raise ArmError(400, "ReplicaPromoteNotAllowed", f"The server '{s.name}' is not a replica "
                                                                f"(role {s.role}): only a replica can be promoted.")
            s.state = "Updating"
            op = fake.start_operation("promote", s.name, s.location, request, fake.promote_work(s, mode, option),
                                      fake.settle(s, "Ready"))
        else:
            window = props.get("maintenanceWindow")
            tags = body.get("tags")
            retention = (props.get("backup") or {}).get("backupRetentionDays")
            s.state = "Updating"

            def work() -> None:
                with fake.lock:
                    if isinstance(window, dict):
                        s.maintenance.update({k: v for k, v in window.items() if v is not None})
                    if isinstance(tags, dict):
                        s.tags = dict(tags)
                    if retention:
                        s.retention_days = int(retention)
                    s.state = "Ready"

            op = fake.start_operation("update", s.name, s.location, request, work, fake.settle(s, "Ready"))
        entry["operation"] = op.id
        return fake.accepted(op, _base(request), fake.server_json(s))


def _delete_server(fake: FakeArm, request: Request, args: dict[str, str], body: Any,
                   entry: dict[str, Any]) -> Response:
    with fake.lock:
        s = fake.servers.get(args["server"].lower())
        if s is None:
            return Response(status_code=204)
        if s.state == "Dropping":
            raise ArmError(409, "ServerBusy", f"The server '{s.name}' is being deleted already.")
        previous, s.state = s.state, "Dropping"
        op = fake.start_operation("delete", s.name, s.location, request, lambda: fake.drop(s),
                                  fake.settle(s, previous))
        entry["operation"] = op.id
        return fake.accepted(op, _base(request))


def _list_backups(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        backups = sorted(fake.backups.get(s.name.lower(), {}).values(), key=lambda b: b.completed)
        return JSONResponse({"value": [fake.backup_json(s, b) for b in backups]})


def _get_backup(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        b = fake.backups.get(s.name.lower(), {}).get(args["backup"].lower())
        if b is None:
            raise ArmError(404, "ResourceNotFound", f"The backup '{args['backup']}' of server '{s.name}' was not "
                                                    "found.")
        return JSONResponse(fake.backup_json(s, b))


def _put_backup(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: dict[str, Any]) -> Response:
    name = args["backup"]
    with fake.lock:
        s = fake.server(args["server"])
        if name.lower() in fake.backups.get(s.name.lower(), {}):
            raise ArmError(409, "BackupAlreadyExists", f"A backup named '{name}' of server '{s.name}' exists already.")
        if s.state != "Ready" or s.role != "Primary":
            raise ArmError(400, "InvalidParameterValue", f"On-demand backups need a Ready primary; '{s.name}' is "
                                                         f"{s.state}, {s.role}")
        op = fake.start_operation("backup", f"{s.name}/{name}", s.location, request,
                                  lambda: fake.take_backup(s, "Customer On-Demand", name) and None, lambda: None)
        entry["operation"] = op.id
        return fake.accepted(op, _base(request))


def _list_replicas(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        value = [fake.server_json(r) for r in fake.servers.values() if (r.source or "").lower() == s.name.lower()
                 and r.role == "AsyncReplica"]
    return JSONResponse({"value": value})


def _list_endpoints(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        group = fake.group(s.name)
        value = [fake.endpoint_json(s, ve) for ve in fake.endpoints.values()
                 if group & {m.lower() for m in ve.members}]
    return JSONResponse({"value": value})


def _get_endpoint(fake: FakeArm, request: Request, args: dict[str, str], body: Any, entry: Any) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        return JSONResponse(fake.endpoint_json(s, fake.endpoint(s.name, args["ve"])))


def _put_endpoint(fake: FakeArm, request: Request, args: dict[str, str], body: dict[str, Any],
                  entry: dict[str, Any]) -> Response:
    props = body.get("properties") or {}
    with fake.lock:
        s = fake.server(args["server"])
        existing = fake.endpoints.get(args["ve"].lower())
        if request.method == "PATCH":
            existing = fake.endpoint(s.name, args["ve"])
        members = props.get("members")
        if members is None and existing is not None:
            members = existing.members
        members = [str(m) for m in members or [s.name]]
        unknown = [m for m in members if m.lower() not in fake.servers]
        if unknown:
            raise ArmError(400, "InvalidParameterValue", f"members {unknown} are not servers")
        endpoint_type = str(props.get("endpointType") or (existing.endpoint_type if existing else "ReadWrite"))
        if endpoint_type != "ReadWrite":
            raise ArmError(400, "InvalidParameterValue", f"endpointType {endpoint_type!r}: only ReadWrite")
        name = existing.name if existing else args["ve"]

        def work() -> None:
            with fake.lock:
                fake.endpoints[name.lower()] = FakeEndpoint(name, members, endpoint_type)

        op = fake.start_operation("virtualendpoint", f"{s.name}/{name}", s.location, request, work, lambda: None)
        entry["operation"] = op.id
        return fake.accepted(op, _base(request))


def _delete_endpoint(fake: FakeArm, request: Request, args: dict[str, str], body: Any,
                     entry: dict[str, Any]) -> Response:
    with fake.lock:
        s = fake.server(args["server"])
        try:
            ve = fake.endpoint(s.name, args["ve"])
        except ArmError:
            return Response(status_code=204)

        def work() -> None:
            with fake.lock:
                fake.endpoints.pop(ve.name.lower(), None)

        op = fake.start_operation("virtualendpoint", f"{s.name}/{ve.name}", s.location, request, work, lambda: None)
        entry["operation"] = op.id
        return fake.accepted(op, _base(request))


def _get_operation(fake: FakeArm, request: Request, args: dict[str, str], body: Any,
                   entry: dict[str, Any]) -> Response:
    op = fake.poll(args["op"])
    entry["operation"] = op.id
    headers = {"Retry-After": str(fake.settings.retry_after)}
    if args["how"].lower() == "operationresults":
        if not op.done:
            return Response(status_code=202, headers={"Location": str(request.url), **headers})
        if op.status == "Failed" and op.error:
            return arm_error(400, op.error["code"], op.error["message"])
        return Response(status_code=204 if op.method == "DELETE" else 200)
    status = op.status if op.done else "InProgress"
    answer: dict[str, Any] = {"id": request.url.path, "name": op.id, "status": status, "startTime": iso(op.started)}
    if op.done:
        answer["endTime"] = iso(op.ended)
    if op.done and op.error:
        answer["error"] = op.error
    return JSONResponse(answer, headers=headers)


_HANDLERS: dict[tuple[str, str], Handler] = {
    ("servers", "GET"): _list_servers,
    ("server", "GET"): _get_server,
    ("server", "PUT"): _put_server,
    ("server", "PATCH"): _patch_server,
    ("server", "DELETE"): _delete_server,
    ("backups", "GET"): _list_backups,
    ("backup", "GET"): _get_backup,
    ("backup", "PUT"): _put_backup,
    ("replicas", "GET"): _list_replicas,
    ("endpoints", "GET"): _list_endpoints,
    ("endpoint", "GET"): _get_endpoint,
    ("endpoint", "PUT"): _put_endpoint,
    ("endpoint", "PATCH"): _put_endpoint,
    ("endpoint", "DELETE"): _delete_endpoint,
    ("operation", "GET"): _get_operation,
}


# --- the control API ------------------------------------------------------------------------------


async def control(fake: FakeArm, request: Request) -> Response:
    path, method = request.url.path.rstrip("/"), request.method
    try:
        body = json.loads(await request.body() or b"{}") if method in ("POST", "PUT") else {}
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=422)
    try:
        with fake.lock:
            return _control(fake, path, method, body)
    except (KeyError, TypeError, ValueError) as exc:
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=422)


def _control(fake: FakeArm, path: str, method: str, body: dict[str, Any]) -> Response:
    if (path, method) == ("/_control/healthz", "GET"):
        return JSONResponse(dict(fake.health))
    if (path, method) == ("/_control/state", "GET"):
        return JSONResponse(_state(fake))
    if (path, method) == ("/_control/settings", "PUT"):
        for key in ("retry_after", "polls"):
            if key in body:
                value = int(body[key])
                if value < 0:
                    raise ValueError(f"{key} must be 0 or more")
                setattr(fake.settings, key, value)
        return JSONResponse({"retry_after": fake.settings.retry_after, "polls": fake.settings.polls})
    if (path, method) == ("/_control/faults", "POST"):
        status = int(body.get("status", 503))
        if not 400 <= status <= 599:
            raise ValueError(f"status {status}: 400 to 599")
        count = body.get("count", 1)
        rule = {"id": fake._next_rule, "method": str(body.get("method", "*")).upper(),
                "path": str(body.get("path", "/")), "count": count,
                "count_left": None if count is None else int(count), "status": status,
                "code": str(body.get("code") or {429: "TooManyRequests", 500: "InternalServerError",
                                                 503: "ServiceUnavailable"}.get(status, "Error")),
                "message": str(body.get("message") or f"injected {status} by the sandbox's fake ARM"),
                "retry_after": None if body.get("retry_after") is None else int(body["retry_after"]), "fired": 0}
        fake._next_rule += 1
        fake.rules.append(rule)
        return JSONResponse(rule, status_code=201)
    if path == "/_control/faults" and method in ("GET", "DELETE"):
        rules = list(fake.rules)
        if method == "DELETE":
            fake.rules.clear()
        return JSONResponse({"rules": rules} if method == "GET" else {"removed": len(rules)})
    if (path, method) == ("/_control/failures", "POST"):
        kind = str(body["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}; known: {', '.join(KINDS)}")
        failure = {"kind": kind, "code": str(body.get("code") or "InternalServerError"),
                   "message": str(body.get("message") or f"the {kind} failed (injected)"),
                   "count_left": int(body.get("count", 1)), "fired": 0}
        fake.failures.append(failure)
        return JSONResponse(failure, status_code=201)
    if (path, method) == ("/_control/failures", "DELETE"):
        removed = len(fake.failures)
        fake.failures.clear()
        return JSONResponse({"removed": removed})
    if (path, method) == ("/_control/holds", "POST"):
        kind = str(body["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}; known: {', '.join(KINDS)}")
        fake.holds.setdefault(kind, threading.Event())
        return JSONResponse({"holds": sorted(fake.holds)}, status_code=201)
    if path.startswith("/_control/holds") and method == "DELETE":
        kind = path.removeprefix("/_control/holds").strip("/")
        for k in [kind] if kind else list(fake.holds):
            event = fake.holds.pop(k, None)
            if event is not None:
                event.set()
        return JSONResponse({"holds": sorted(fake.holds)})
    if path == "/_control/log" and method in ("GET", "DELETE"):
        if method == "DELETE":
            fake.log.clear()
            return JSONResponse({"removed": True})
        return JSONResponse({"requests": list(fake.log)})
    if (path, method) == ("/_control/reset", "POST"):
        fake.rules.clear()
        fake.failures.clear()
        for event in fake.holds.values():
            event.set()
        fake.holds.clear()
        fake.log.clear()
        return JSONResponse({"reset": True})
    return JSONResponse({"error": f"no control route {method} {path}"}, status_code=404)


def _state(fake: FakeArm) -> dict[str, Any]:
    servers = {}
    for s in fake.servers.values():
        inst = fake.instance(s)
        servers[s.name] = {**fake.server_json(s), "sandbox": {"index": s.index, "address": inst.address,
                                                              "port": inst.node.port, "dir": str(inst.node.dir)}}
    backups = {fake.servers[k].name if k in fake.servers else k: [
        {**fake.backup_json(fake.servers[k], b), "folder": str(b.folder)} for b in v.values()]
        for k, v in fake.backups.items() if k in fake.servers}
    return {"subscription_id": fake.settings.subscription_id, "pg_port": fake.settings.pg_port,
            "servers": servers, "backups": backups,
            "virtual_endpoints": [{"name": ve.name, "members": ve.members, "endpointType": ve.endpoint_type}
                                  for ve in fake.endpoints.values()],
            "operations": [op.as_json() for op in fake.operations.values()],
            "settings": {"retry_after": fake.settings.retry_after, "polls": fake.settings.polls},
            "rules": list(fake.rules), "failures": list(fake.failures), "holds": sorted(fake.holds),
            "health": dict(fake.health)}


class ArmControl:
    """A test's handle on the control API at `url` (http://HOST:PORT of the fake)."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_control{path}", json=body, timeout=self.timeout)
        if response.status_code >= 400:
            raise PermanentError(f"the fake ARM's control API answered {method} {path} with "
                                 f"{response.status_code}: {response.text[:500]}")
        return response.json()

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/healthz"))

    def state(self) -> dict[str, Any]:
        return dict(self._call("GET", "/state"))

    def settings(self, *, retry_after: int | None = None, polls: int | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("retry_after", retry_after), ("polls", polls)) if v is not None}
        return dict(self._call("PUT", "/settings", body))

    def fail_requests(self, method: str = "*", path: str = "/", *, count: int | None = 1, status: int = 503,
                      code: str | None = None, message: str | None = None,
                      retry_after: int | None = None) -> dict[str, Any]:
        """The next `count` requests of `method` whose path starts with `path` answer `status`."""
        return dict(self._call("POST", "/faults", {"method": method, "path": path, "count": count, "status": status,
                                                   "code": code, "message": message, "retry_after": retry_after}))

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def fail_operation(self, kind: str, code: str, message: str, count: int = 1) -> dict[str, Any]:
        """The next `count` operations of `kind` end Failed with Azure's `code` and `message`."""
        return dict(self._call("POST", "/failures", {"kind": kind, "code": code, "message": message, "count": count}))

    def clear_failures(self) -> None:
        self._call("DELETE", "/failures")

    def hold(self, kind: str) -> None:
        """Operations of `kind` stay InProgress, doing nothing, until `release`."""
        self._call("POST", "/holds", {"kind": kind})

    def release(self, kind: str | None = None) -> None:
        self._call("DELETE", f"/holds/{kind}" if kind else "/holds")

    def log(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/log")["requests"])

    def clear_log(self) -> None:
        self._call("DELETE", "/log")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def server(self, name: str) -> dict[str, Any]:
        """A server as ARM shows it, plus "sandbox": its index, address, port and folder."""
        return dict(self.state()["servers"][name])

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until the seed is done; PermanentError if it failed or took longer than `timeout`."""
        seen: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal seen
            try:
                seen = self.health()
            except (httpx.HTTPError, PermanentError):
                return False
            return seen.get("status") in ("ok", "failed")

        if not wait_until(ready, timeout, interval=0.1) or seen.get("status") != "ok":
            raise PermanentError(f"the fake Azure Resource Manager at {self.url} is not ready: "
                                 f"{seen.get('status', 'no answer')} {seen.get('detail', '')}".rstrip())
        return seen


# --- in this process, and detached ------------------------------------------------------------------


class FakeArmServer(httpserver.LoopbackServer):
    """The fake served by uvicorn in a thread of this process; `start` also starts the seed."""

    def __init__(self, fake: FakeArm, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self._http = httpserver.ThreadedServer(arm_app(fake), host, port, name="sandbox-azure-arm")
        self._seeding: threading.Thread | None = None

    def start(self) -> FakeArmServer:
        self._http.start()
        self.fake.say(f"serving on {self.url}, PostgreSQL port {self.fake.settings.pg_port}")
        if self.fake.settings.seed:
            self._seeding = threading.Thread(target=self.fake.seed, name="seed", daemon=True)
            self._seeding.start()
        return self

    def stop(self) -> None:
        self._http.stop()
        if self._seeding is not None:  # a cluster it is starting must not outlive us
            self._seeding.join(timeout=20)
        self.fake.stop_clusters()


@dataclass(frozen=True)
class DetachedArm(httpserver.DetachedServer):
    """The detached fake: `url` is ARM's base URL (and the control API's, under /_control)."""

    pg_port: int
    identity_endpoint: str
    log: Path

    @property
    def control(self) -> ArmControl:
        return ArmControl(self.url)


def sandbox_seed(**overrides: Any) -> dict[str, Any]:
    """What `sandbox up` makes: fleet-pg with fleetdb, its automatic backup, Sunday 02:00 patching,
    the replica fleet-pg-replica and the virtual endpoint fleet-pg-ve."""
    return {"server": SERVER, "resource_group": RESOURCE_GROUP, "location": LOCATION, "admin_login": ADMIN_USER,
            "database": DATABASE, "replica": REPLICA, "virtual_endpoint": VIRTUAL_ENDPOINT,
            "size_mb": 20, "backdate_days": 7,
            "maintenance": {"customWindow": "Enabled", "dayOfWeek": 0, "startHour": 2, "startMinute": 0},
            **overrides}


def start_detached(state_dir: str | Path, *, identity_header: str, pg_port: int = 0, admin_password: str | None = None,
                   seed: dict[str, Any] | None = None, pg_bin: Path | None = None, retry_after: int = 1,
                   polls: int = 0, port: int = 0, wait: bool = True, timeout: float = 120) -> DetachedArm:
    """Start `python -m sandbox.azure_arm` in its own session; returns once it serves and, with
    `wait`, once its seed (if any) is done (else call `.control.wait_ready()` later). Its servers
    all listen on `pg_port` (0: one free on every address now), each on its own 127.0.1.N.

    The identity header and the seed's administrator password go to it in a 0600 file it
    reads and removes, never on its command line."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o711)  # the PostgreSQL account passes through to pg/
    write_private(state / SECRETS_FILE, json.dumps({"identity_header": identity_header,
                                                    "admin_password": admin_password}))
    pg_port = pg_port or free_port("0.0.0.0")
    config = {"pg_port": pg_port, "pg_bin": str(pg_bin or postgres.pg_bin()), "retry_after": retry_after,
              "polls": polls, "seed": seed}
    try:
        info = DETACHED.start(state, {"--port": port, "--config": config})
    finally:
        (state / SECRETS_FILE).unlink(missing_ok=True)
    arm = DetachedArm(info["pid"], info["url"], state, pg_port, f"{info['url']}/msi/token", state / LOG_FILE)
    if wait:
        try:
            arm.control.wait_ready(timeout)
        except PermanentError as exc:
            tail = (state / LOG_FILE).read_text(errors="replace")[-2000:]
            raise PermanentError(f"{exc}; log {state / LOG_FILE}:\n{tail}") from None
    return arm


def stop_detached(state_dir: str | Path, *, bin_dir: Path | None = None, timeout: float = 40) -> list[str]:
    """Stop the detached fake of `state_dir` (it stops its clusters), then any cluster left."""
    actions = ["stopped the fake Azure Resource Manager"] if DETACHED.stop(state_dir, timeout=timeout) else []
    return actions + azure_pg.stop_all(Path(state_dir), bin_dir or postgres.DEFAULT_PG_BIN)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.azure_arm",
                                     description="Fake Azure Resource Manager for PostgreSQL flexible servers")
    for flag, kind, default, text in (
            ("--state-dir", Path, None, f"where {INFO_FILE}, {LOG_FILE} and the clusters go"),
            ("--config", Path, None, "JSON: pg_port, pg_bin, retry_after, polls, seed, subscription_id, "
                                     "resource_groups (see Settings)"),
            ("--host", str, "127.0.0.1", "loopback address to listen on"),
            ("--port", int, 0, "port; 0 picks a free one")):
        parser.add_argument(flag, type=kind, default=default, required=default is None, help=text)
    args = parser.parse_args(argv)

    state = args.state_dir.resolve()
    raw = json.loads(args.config.read_text())
    settings = Settings(**{k: v for k, v in raw.items() if v is not None or k == "seed"})
    secret_file = state / SECRETS_FILE
    secret = json.loads(secret_file.read_text())
    secret_file.unlink(missing_ok=True)
    fake = FakeArm(state, settings, secret["identity_header"], secret.get("admin_password"))
    server = FakeArmServer(fake, host=args.host, port=args.port).start()
    httpserver.serve_until_signal(server, state / INFO_FILE, control_url=f"{server.url}/_control",
                                  pg_port=settings.pg_port)


if __name__ == "__main__":
    main()
