"""Azure Database for PostgreSQL flexible server, through Azure Resource Manager.

The client is `azure-mgmt-postgresqlflexibleservers` (the successor of azure-mgmt-rdbms, whose
flexible-server API has no backup, replica or promote operations), built once per call from the
database's `azure` config, inside a context manager:

    with azure.client(cfg) as arm:
        arm.servers.get(cfg.resource_group, cfg.server)

Sign-in is azure-identity's: DefaultAzureCredential, or a service principal whose client secret
is a SecretRef. Bearer tokens go over https only, except to a loopback ARM endpoint (a sandbox).
Throttling (429) and 5xx answers are retried by azure-core's RetryPolicy, which honours
Retry-After; `retries` in the config bounds it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.identity import CredentialUnavailableError
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy
from azure.mgmt.postgresqlflexibleservers import PostgreSQLManagementClient, models

from tasks import azure_plan, prefect_api
from tasks.config import AzureServerConfig
from tasks.errors import PermanentError, TransientError
from tasks.fields import is_loopback_url
from tasks.redact import scrub

ARM_SCOPE = "https://management.azure.com/.default"


class LoopbackBearerPolicy(ARMChallengeAuthenticationPolicy):
    """ARM's bearer-token policy, which refuses plain http, except to a loopback address."""

    def on_request(self, request: Any) -> None:
        if is_loopback_url(request.http_request.url):
            request.context.options["enforce_https"] = False
        super().on_request(request)


def credential(cfg: AzureServerConfig) -> TokenCredential:
    """DefaultAzureCredential, or the service principal of the config."""
    cred = cfg.credential
    if cred.kind == "service-principal":
        from azure.identity import ClientSecretCredential

        assert cred.tenant_id and cred.client_id and cred.client_secret  # the config's validator
        extra = {"authority": cred.authority} if cred.authority else {}
        return ClientSecretCredential(cred.tenant_id, cred.client_id, cred.client_secret.resolve(), **extra)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def management_client(endpoint: str, subscription_id: str, token_credential: TokenCredential,
                      retries: int = 5, **kwargs: Any) -> PostgreSQLManagementClient:
    """The SDK's client on `endpoint`, unmodified but for the auth policy and the retry bound."""
    return PostgreSQLManagementClient(
        token_credential, subscription_id, base_url=endpoint.rstrip("/"),
        credential_scopes=[ARM_SCOPE],
        authentication_policy=LoopbackBearerPolicy(token_credential, ARM_SCOPE),
        retry_total=retries, **kwargs)


@contextmanager
def client(cfg: AzureServerConfig) -> Iterator[PostgreSQLManagementClient]:
    token_credential = credential(cfg)
    arm = management_client(cfg.endpoint, cfg.subscription_id, token_credential, cfg.retries)
    try:
        yield arm
    finally:
        arm.close()
        close = getattr(token_credential, "close", None)
        if close is not None:
            close()


# --- errors -------------------------------------------------------------------------------------


class AzureOperationFailed(PermanentError):
    """A long-running Azure operation ended Failed or Canceled: Azure's code and message."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


def _azure_error(exc: HttpResponseError) -> tuple[str, str]:
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None) or str(getattr(exc, "status_code", "") or "unknown")
    message = getattr(err, "message", None) or exc.reason or str(exc).splitlines()[0]
    return str(code), scrub(str(message))


def classify(exc: BaseException, what: str) -> BaseException:
    """One of ours, by the answer's class and status: throttling and 5xx (after azure-core's own
    retries) and connection failures are transient; everything else is permanent."""
    if isinstance(exc, ClientAuthenticationError | CredentialUnavailableError):
        return PermanentError(f"{what}: Azure refused the sign-in ({type(exc).__name__}); check the "
                              "credential in the config (DefaultAzureCredential or the service principal)")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(f"{what}: Azure Resource Manager did not answer ({type(exc).__name__})")
    if isinstance(exc, HttpResponseError):
        code, message = _azure_error(exc)
        status = exc.status_code or 0
        text = f"{what}: Azure answered {status} {code}: {message}"
        return TransientError(text) if status == 429 or status >= 500 else PermanentError(text)
    return exc


@contextmanager
def calling(what: str) -> Iterator[None]:
    try:
        yield
    except (AzureError, CredentialUnavailableError) as exc:
        raise classify(exc, what) from None


# --- what Azure says about a server ---------------------------------------------------------------


@dataclass(frozen=True)
class ServerView:
    name: str
    state: str
    fqdn: str | None
    role: str
    source: str | None
    version: str | None
    admin_user: str | None
    earliest_restore: datetime | None
    maintenance: azure_plan.PatchWindow | None
    replication_state: str | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.state}, {self.role}{', of ' + self.source if self.source else ''})"


def server_id(cfg: AzureServerConfig, name: str) -> str:
    return (f"/subscriptions/{cfg.subscription_id}/resourceGroups/{cfg.resource_group}"
            f"/providers/Microsoft.DBforPostgreSQL/flexibleServers/{name}")


def _name_of(resource_id: str | None) -> str | None:
    return resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None


def _text(value: Any) -> str | None:
    """An SDK enum's value ("Ready"), not its repr ("ServerState.READY")."""
    return None if value is None else str(getattr(value, "value", value))


def view(server: models.Server) -> ServerView:
    p = server.properties or models.ServerProperties()
    replica = p.replica
    role = _text((replica.role if replica else None) or p.replication_role) or "None"
    mw = p.maintenance_window
    patch = (azure_plan.PatchWindow((_text(mw.custom_window) or "Disabled") == "Enabled", mw.day_of_week,
                                    mw.start_hour, mw.start_minute) if mw else None)
    return ServerView(
        name=str(server.name), state=_text(p.state) or "Unknown", fqdn=p.fully_qualified_domain_name, role=role,
        source=_name_of(p.source_server_resource_id), version=_text(p.version),
        admin_user=p.administrator_login,
        earliest_restore=p.backup.earliest_restore_date if p.backup else None, maintenance=patch,
        replication_state=_text(replica.replication_state) if replica else None)


def get_server(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, name: str) -> ServerView | None:
    """The server as Azure sees it now; None when it does not exist."""
    try:
        return view(arm.servers.get(cfg.resource_group, name))
    except ResourceNotFoundError:
        return None
    except (AzureError, CredentialUnavailableError) as exc:
        raise classify(exc, f"reading server {name}") from None


def replicas_of(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, name: str) -> list[ServerView]:
    with calling(f"listing the replicas of {name}"):
        return [view(s) for s in arm.replicas.list_by_server(cfg.resource_group, name)]


# --- long-running operations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """An Azure long-running operation, by the URL its status is polled at: small enough to keep
    as a checkpoint, so that a new process polls the same operation instead of starting another."""

    kind: str
    target: str
    url: str | None
    started_at: str
    by_location: bool = False

    def describe(self) -> str:
        return f"{self.kind} of {self.target}"


def begin(kind: str, target: str, call: Callable[..., Any], *args: Any) -> Operation:
    """Send the operation's first request (no polling here) and keep where to poll it."""
    headers: dict[str, str] = {}

    def keep(response: Any) -> None:
        if not headers:
            headers.update({k.lower(): v for k, v in response.http_response.headers.items()})

    with calling(f"starting the {kind} of {target}"):
        call(*args, polling=False, raw_response_hook=keep)
    url = headers.get("azure-asyncoperation")
    location = headers.get("location")
    return Operation(kind, target, url or location, datetime.now(UTC).isoformat(), by_location=url is None
                     and location is not None)


def wait(arm: PostgreSQLManagementClient, op: Operation, timeout: float,
         on_poll: Callable[[str], None] | None = None) -> float:
    """Poll the operation to its end, as long as Retry-After says between polls; return the
    seconds waited. Failed or Canceled raises with Azure's code and message."""
    started = time.monotonic()
    if op.url is None:  # answered synchronously: done
        return 0.0
    while True:
        with calling(f"polling the {op.describe()}"):
            response = arm.send_request(HttpRequest("GET", op.url))
            if response.status_code >= 400:
                response.raise_for_status()
        status, error = _status_of(op, response)
        if on_poll is not None:
            on_poll(status)
        if status == "Succeeded":
            return round(time.monotonic() - started, 3)
        if status in ("Failed", "Canceled"):
            code, message = (error or {}).get("code"), (error or {}).get("message", "")
            raise AzureOperationFailed(f"Azure's {op.describe()} ended {status}: {code or 'no code'}: "
                                       f"{scrub(str(message)) or 'no message'}", code)
        if time.monotonic() - started > timeout:
            raise TransientError(f"Azure's {op.describe()} is still {status} after {timeout:.0f} s; it may "
                                 f"still finish: a re-run polls the same operation ({op.url.split('?')[0]})")
        time.sleep(_poll_delay(response.headers.get("Retry-After")))


def _status_of(op: Operation, response: Any) -> tuple[str, dict[str, Any] | None]:
    if op.by_location:  # Location polling: 202 while running, 200/204 when done
        return ("InProgress", None) if response.status_code == 202 else ("Succeeded", None)
    body = response.json() if response.content else {}
    return str(body.get("status", "InProgress")), body.get("error")


def _poll_delay(retry_after: str | None) -> float:
    try:
        return min(max(float(retry_after), MIN_POLL_S), MAX_POLL_S) if retry_after else DEFAULT_POLL_S
    except ValueError:
        return DEFAULT_POLL_S


MIN_POLL_S, DEFAULT_POLL_S, MAX_POLL_S = 0.2, 5.0, 60.0


# --- the operations the runbooks use --------------------------------------------------------------


def start_backup(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, backup_name: str) -> Operation:
    """az postgres flexible-server backup create --backup-name <name>"""
    return begin("backup", f"{cfg.server}/{backup_name}", arm.backups_automatic_and_on_demand.begin_create,
                 cfg.resource_group, cfg.server, backup_name)


@dataclass(frozen=True)
class BackupView:
    name: str
    kind: str
    completed_at: datetime | None
    source: str | None


def get_backup(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, backup_name: str) -> BackupView | None:
    """One backup of the server; None when Azure has none of that name."""
    try:
        return _backup_view(arm.backups_automatic_and_on_demand.get(cfg.resource_group, cfg.server, backup_name))
    except ResourceNotFoundError:
        return None
    except (AzureError, CredentialUnavailableError) as exc:
        raise classify(exc, f"reading backup {backup_name} of {cfg.server}") from None


def list_backups(arm: PostgreSQLManagementClient, cfg: AzureServerConfig) -> list[BackupView]:
    """az postgres flexible-server backup list"""
    with calling(f"listing the backups of {cfg.server}"):
        return [_backup_view(b) for b in arm.backups_automatic_and_on_demand.list_by_server(cfg.resource_group,
                                                                                            cfg.server)]


def _backup_view(b: models.BackupAutomaticAndOnDemand) -> BackupView:
    p = b.properties or models.BackupAutomaticAndOnDemandProperties()
    return BackupView(str(b.name), _text(p.backup_type) or "unknown", p.completed_time, p.source)


def start_restore(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, target: str,
                  point_in_time: datetime) -> Operation:
    """az postgres flexible-server restore --name <target> --source-server <server>
    --restore-point-in-time <time>: a new server."""
    server = models.Server(location=cfg.location, properties=models.ServerProperties(
        create_mode="PointInTimeRestore", source_server_resource_id=server_id(cfg, cfg.server),
        point_in_time_utc=point_in_time))
    return begin("restore", target, arm.servers.begin_create_or_update, cfg.resource_group, target, server)


def start_delete(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, name: str) -> Operation:
    return begin("deletion", name, arm.servers.begin_delete, cfg.resource_group, name)


def start_promote(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, replica: str, mode: str,
                  option: str) -> Operation:
    """az postgres flexible-server replica promote --promote-mode <mode> --promote-option <option>"""
    patch = models.ServerForPatch(properties=models.ServerPropertiesForPatch(
        replica=models.Replica(promote_mode=mode, promote_option=option)))
    return begin("promotion", replica, arm.servers.begin_update, cfg.resource_group, replica, patch)


@dataclass(frozen=True)
class EndpointView:
    name: str
    members: list[str]
    addresses: list[str]


def get_virtual_endpoint(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, server: str,
                         name: str) -> EndpointView:
    with calling(f"reading virtual endpoint {name} of {server}"):
        ve = arm.virtual_endpoints.get(cfg.resource_group, server, name)
    p = ve.properties or models.VirtualEndpointResourceProperties()
    return EndpointView(str(ve.name), list(p.members or []), list(p.virtual_endpoints or []))


def start_repoint(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, server: str, name: str,
                  primary: str) -> Operation:
    """The read-write virtual endpoint's member becomes `primary`."""
    patch = models.VirtualEndpointResourceForPatch(properties=models.VirtualEndpointResourceProperties(
        endpoint_type="ReadWrite", members=[primary]))
    return begin("repoint", name, arm.virtual_endpoints.begin_update, cfg.resource_group, server, name, patch)


def dsn(cfg: AzureServerConfig, fqdn: str, dbname: str) -> str:
    """A libpq URI to a server as its administrator; the password comes from the config's secret."""
    user, password = quote(cfg.admin_user, safe=""), quote(cfg.admin_password.resolve(), safe="")
    return f"postgresql://{user}:{password}@{fqdn}:{cfg.port}/{dbname}?sslmode={cfg.sslmode}"


# --- one operation per request, across processes -------------------------------------------------


def journal_name(environment: str, kind: str, target: str) -> str:
    """The Prefect Variable that holds an operation while it runs (lower-case, digits, '-' and '_')."""
    raw = f"azure-op-{environment}-{kind}-{target}".lower()
    return re.sub(r"[^a-z0-9_-]", "-", raw)[:255]


def run_operation(arm: PostgreSQLManagementClient, cfg: AzureServerConfig, environment: str, kind: str,
                  target: str, start: Callable[[], Operation], on_poll: Callable[[str], None] | None = None
                  ) -> tuple[Operation, bool, float]:
    """Start the operation once and poll it to its end. While it runs it is kept in a Prefect
    Variable, so a re-run after a crash (a new attempt or a new run of the same request) polls
    the same operation instead of starting another. Returns it, whether it was resumed, and the
    seconds waited."""
    name = journal_name(environment, kind, target)
    saved = prefect_api.read_variable(name, None)
    resumed = isinstance(saved, dict) and saved.get("kind") == kind and saved.get("target") == target
    if resumed:
        op = Operation(**saved)
        _log(f"resuming Azure's {op.describe()} started at {op.started_at}: polling the same "
                               "operation, not starting another")
    else:
        op = start()
        prefect_api.write_variable(name, asdict(op))
    try:
        seconds = wait(arm, op, cfg.operation_timeout.total_seconds(), on_poll)
    except AzureOperationFailed:
        prefect_api.unset_variable(name)  # it ended: a re-run starts afresh
        raise
    prefect_api.unset_variable(name)
    return op, resumed, seconds


def _log(message: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run (a script, a test): nothing to log to
        pass
