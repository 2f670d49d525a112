"""Environment config: what a runbook acts on, one YAML file per environment.

`load_environment("staging")` reads `environments/staging.yaml` (or the folder named by
RUNBOOK_ENVIRONMENTS_DIR), validates it with the models below and fails with the file,
the key, the value and what is allowed. Nothing runs before the config is valid.

Secrets never live in these files: a `SecretRef` names a Prefect Secret block or an
environment variable, and resolves only when a task needs it.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks import compression, redact, windows
from tasks.errors import ConfigError, SecretMissing
from tasks.fields import Duration, Model, check_timezone, is_loopback_url
from tasks.maintenance_plan import MaintenanceTask
from tasks.windows import WindowsConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
DBNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# --- secrets -------------------------------------------------------------------------


class SecretRef(Model):
    """A secret by name: a Prefect Secret block, or an environment variable."""

    secret: str | None = Field(None, description="Name of a Prefect Secret block")
    env: str | None = Field(None, description="Name of an environment variable")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.secret is None) == (self.env is None):
            raise ValueError("give exactly one of 'secret' (Prefect Secret block name) or 'env' (variable name)")
        return self

    def describe(self) -> str:
        return f"Secret block {self.secret!r}" if self.secret else f"environment variable {self.env!r}"

    def resolve(self) -> str:
        """The secret's value. A missing or empty secret is an error, never ''."""
        if self.env is not None:
            value = os.environ.get(self.env)
        else:
            value = _load_secret_block(self.secret or "")
        if not value:
            raise SecretMissing(f"secret {self.describe()} is not set or empty")
        redact.remember(value)
        return value


def _load_secret_block(name: str) -> str | None:
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name, _sync=True).get())  # type: ignore[call-arg]
    except ValueError:
        return None


# --- storage -------------------------------------------------------------------------


class S3Options(Model):
    endpoint_url: str | None = Field(None, description="S3 endpoint, for S3-compatible stores or a sandbox")
    region: str | None = Field(None, description="AWS region of the bucket")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption")
    kms_key_id: str | None = Field(None, description="KMS key id, with sse: aws:kms")
    access_key_id: SecretRef | None = Field(None, description="Access key id; default: the AWS credential chain")
    secret_access_key: SecretRef | None = Field(None, description="Secret access key")
    part_size_mb: int = Field(16, ge=5, le=512, description="Multipart upload part size")
    max_attempts: int = Field(6, ge=1, le=20, description="Tries of each S3 request (and of a download that "
                                                          "breaks off), with backoff and jitter")

    @model_validator(mode="after")
    def _consistent(self) -> S3Options:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse: aws:kms")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        return self


class StorageConfig(Model):
    url: str = Field(description="Where backups go: s3://bucket/prefix or file:///absolute/path")
    s3: S3Options = Field(default_factory=S3Options, description="S3 options, for s3:// URLs")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme == "s3":
            if not parsed.netloc or not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", parsed.netloc):
                raise ValueError("an S3 URL needs a valid bucket name: s3://bucket/prefix")
        elif parsed.scheme == "file":
            if parsed.netloc or not parsed.path.startswith("/"):
                raise ValueError("a file URL needs an absolute path: file:///var/backups/db")
        else:
            raise ValueError("allowed: s3://bucket/prefix or file:///absolute/path")
        return v.rstrip("/")


# --- retention and objectives ---------------------------------------------------------


class Retention(Model):
    """Either `days: N`, or grandfather-father-son `daily/weekly/monthly` counts."""

    days: int | None = Field(None, ge=1, le=3650, description="Keep every backup younger than N days")
    daily: int | None = Field(None, ge=0, le=3650, description="GFS: newest backup of each of the last N days")
    weekly: int | None = Field(None, ge=0, le=520, description="GFS: newest backup of each of the last N weeks")
    monthly: int | None = Field(None, ge=0, le=240, description="GFS: newest backup of each of the last N months")

    @model_validator(mode="after")
    def _one_style(self) -> Retention:
        gfs = [x for x in (self.daily, self.weekly, self.monthly) if x is not None]
        if self.days is not None and gfs:
            raise ValueError("give either 'days' or 'daily/weekly/monthly', not both")
        if self.days is None and not gfs:
            raise ValueError("give 'days: N' or at least one of 'daily', 'weekly', 'monthly'")
        return self


class Objectives(Model):
    rto: Duration = Field(description="Recovery time objective: restore plus verify must fit in it")
    rpo: Duration = Field(description="Recovery point objective: the newest backup must be younger")


class SmokeQuery(Model):
    name: str = Field(description="What the query checks, for the report")
    sql: str = Field(description="A read-only query; its first column of its first row is checked")
    min: float | None = Field(None, description="The value must be at least this")
    max: float | None = Field(None, description="The value must be at most this")
    equals: str | int | float | bool | None = Field(None, description="The value must equal this")


RESTORE_RETRIES_MAX = 3  # the postgres retry policy's retries (tasks/retries.py), which bound these


class RestoreTestConfig(Model):
    dsn: SecretRef | None = Field(None, description="Server for scratch restores; default: the database's own server")
    jobs: int = Field(2, ge=1, le=64, description="pg_restore -j")
    smoke_queries: list[SmokeQuery] = Field(default_factory=list, description="Queries run on the restored copy")
    # One more try covers a restarted or failed-over server; each try restores from the
    # start, so more of them can cost the recovery time objective several restores.
    retries: int = Field(1, ge=0, le=RESTORE_RETRIES_MAX,
                         description="Restores tried again after a lost connection (SQLSTATE 08*, 57P01) or another "
                                     "transient failure, each from a clean, re-created database; 0 fails at once")
    temp_dir: str | None = Field(None, description="Folder that S3 backups are downloaded to for pg_restore (it needs "
                                                   "the backup's size free); default: the system temp folder")

    @field_validator("temp_dir")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("an absolute path, like /var/tmp/restores; leave it out for the system temp folder")
        return v


# --- databases -------------------------------------------------------------------------


class MigrationJob(Model):
    """Run the application's own migration command (Flyway, Prisma, Alembic, a script) as a
    Kubernetes Job, from the image being deployed."""

    service: str = Field(description="The service whose namespace and image the Job uses")
    command: list[str] = Field(min_length=1, description="Command and arguments, e.g. [python, scripts/migrate.py]")
    timeout: Duration = Field(timedelta(minutes=30))


class MigrationsConfig(Model):
    path: str | None = Field(None, description="Folder of V<version>__<name>.sql files; default migrations/<database>")
    lock_timeout: Duration = Field(timedelta(seconds=5), description="SET lock_timeout for each migration")
    statement_timeout: Duration = Field(timedelta(minutes=15), description="SET statement_timeout for each migration")
    verify_queries: list[SmokeQuery] = Field(default_factory=list, description="Checked after migrating")
    job: MigrationJob | None = Field(None, description="Use the application's migration command instead of SQL files")
    backup_first: bool = Field(True, description="Take a backup (the checkpoint) before any change")


# --- Azure Database for PostgreSQL flexible server ------------------------------------

AZURE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
AZURE_RG_RE = re.compile(r"^[-\w._()]{1,90}$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _azure_server_name(v: str | None) -> str | None:
    if v is not None and not AZURE_NAME_RE.match(v):
        raise ValueError("an Azure server name: 3 to 63 lower-case letters, digits and '-', not starting or "
                         "ending with '-'")
    return v


AzureServerName = Annotated[str, AfterValidator(_azure_server_name)]


class AzureCredential(Model):
    """How we sign in to Azure Resource Manager. `default` is azure-identity's DefaultAzureCredential
    (environment, workload or managed identity, Azure CLI); `service-principal` reads a client
    secret from a Secret block or an environment variable."""

    kind: Literal["default", "service-principal"] = Field("default", description="default: "
                                                          "DefaultAzureCredential; service-principal: the three below")
    tenant_id: str | None = Field(None, description="Entra tenant id (service-principal)")
    client_id: str | None = Field(None, description="Application (client) id (service-principal)")
    client_secret: SecretRef | None = Field(None, description="Client secret (service-principal)")
    authority: str | None = Field(None, description="Sign-in host; default: login.microsoftonline.com")

    @model_validator(mode="after")
    def _principal(self) -> AzureCredential:
        missing = [k for k in ("tenant_id", "client_id", "client_secret") if getattr(self, k) is None]
        if self.kind == "service-principal" and missing:
            raise ValueError(f"kind 'service-principal' needs {', '.join(missing)}")
        if self.kind == "default" and len(missing) < 3:
            raise ValueError("tenant_id, client_id and client_secret are for kind 'service-principal'; "
                             "kind 'default' uses DefaultAzureCredential")
        return self


class AzureServerConfig(Model):
    """An Azure Database for PostgreSQL flexible server, driven through Azure Resource Manager."""

    subscription_id: str = Field(description="Azure subscription id (a UUID)")
    resource_group: str = Field(description="Resource group of the server")
    server: AzureServerName = Field(description="The flexible server's name")
    location: str = Field(description="Azure region of the server, like eastus")
    endpoint: HttpUrl = Field("https://management.azure.com", description="Azure Resource Manager URL; plain http "
                                                                          "only on loopback (a sandbox)")
    credential: AzureCredential = Field(default_factory=AzureCredential)
    admin_user: str = Field(description="The server's administrator login (restored servers keep it)")
    admin_password: SecretRef = Field(description="Its password, for the smoke queries on a restored server")
    port: int = Field(5432, ge=1, le=65535, description="Port of the servers' PostgreSQL endpoint")
    sslmode: Literal["require", "verify-full", "disable"] = Field("require", description="libpq sslmode to the "
                                                                                         "servers")
    replica: AzureServerName | None = Field(None, description="The read replica dr_failover promotes")
    virtual_endpoint: str | None = Field(None, description="Virtual endpoint repointed to the new primary after "
                                                           "a promotion")
    repoint: RepointConfig | None = Field(None, description="Or: the app's Secret or ConfigMap that gets the new "
                                                           "primary's FQDN, and the services restarted")
    patch_duration: Duration = Field(timedelta(hours=1), description="How long Azure's patching of the server "
                                                                     "may take from the start of its custom "
                                                                     "maintenance window: a freeze of changes")
    restore_lag: Duration = Field(timedelta(minutes=5), description="restore_test restores to this long ago "
                                                                    "(Azure's restore points trail the server)")
    operation_timeout: Duration = Field(timedelta(hours=2), description="Upper bound on one Azure operation "
                                                                        "(a restore, a backup, a promotion)")
    retries: int = Field(5, ge=0, le=20, description="Retries of a throttled (429) or failed (5xx) request; "
                                                     "Retry-After is honoured")

    @field_validator("endpoint")
    @classmethod
    def _https_off_loopback(cls, v: str) -> str:
        if v.startswith("http://") and not is_loopback_url(v):
            raise ValueError("plain http sends the bearer token in the clear: use https (http only on loopback, "
                             "for a sandbox)")
        return v

    @field_validator("subscription_id")
    @classmethod
    def _subscription(cls, v: str) -> str:
        if not UUID_RE.match(v):
            raise ValueError("a subscription id: a UUID like 00000000-0000-0000-0000-000000000000")
        return v

    @field_validator("resource_group")
    @classmethod
    def _rg(cls, v: str) -> str:
        if not AZURE_RG_RE.match(v) or v.endswith("."):
            raise ValueError("a resource group name: up to 90 letters, digits, '-', '_', '.', '(' and ')'")
        return v

    @model_validator(mode="after")
    def _replica_differs(self) -> AzureServerConfig:
        if self.replica is not None and self.replica == self.server:
            raise ValueError(f"replica {self.replica!r} is the server itself")
        if (self.virtual_endpoint or self.repoint) and self.replica is None:
            raise ValueError("virtual_endpoint and repoint are for a failover: set 'replica' too")
        return self

    def check_secrets(self) -> None:
        self.admin_password.resolve()
        if self.credential.client_secret is not None:
            self.credential.client_secret.resolve()


class DatabaseConfig(Model):
    kind: Literal["postgres", "azure-flexible"] = Field("postgres", description="postgres: a server we run; "
                                                        "azure-flexible: an Azure flexible server (see 'azure')")
    azure: AzureServerConfig | None = Field(None, description="The Azure flexible server (kind azure-flexible)")
    dsn: SecretRef = Field(description="Connection string of the server (libpq URI or key=value)")
    dbname: str = Field("", description="Database name on the server; default: the entry's key")
    storage: StorageConfig
    format: Literal["custom", "directory"] = Field("custom", description="pg_dump format")
    jobs: int = Field(2, ge=1, le=64, description="Parallel jobs for pg_dump -Fd and pg_restore")
    compression: str = Field(compression.DEFAULT, description="zstd[:1-19]: pg_dump -Z0, compressed by us on every "
                             "core (default zstd:3); or gzip[:0-9]: pg_dump's own, on one core")
    retention: Retention
    objectives: Objectives
    restore_test: RestoreTestConfig = Field(default_factory=RestoreTestConfig)
    timezone: str | None = Field(None, description="Timezone for retention buckets; default: the environment's")
    migrations: MigrationsConfig = Field(default_factory=MigrationsConfig)
    apps: list[str] = Field(default_factory=list, description="Services that use this database (scaled to 0 for a restore)")

    def check_secrets(self) -> None:
        """Resolve every secret this database needs, so a missing one fails before any step."""
        refs = [self.dsn, self.storage.s3.access_key_id, self.storage.s3.secret_access_key, self.restore_test.dsn]
        for ref in refs:
            if ref is not None:
                ref.resolve()
        if self.azure is not None:
            self.azure.check_secrets()

    @model_validator(mode="after")
    def _kind(self) -> DatabaseConfig:
        if self.kind == "azure-flexible" and self.azure is None:
            raise ValueError("kind 'azure-flexible' needs an 'azure' section: subscription_id, resource_group, "
                             "server, location, admin_user, admin_password")
        if self.kind == "postgres" and self.azure is not None:
            raise ValueError("an 'azure' section is for kind 'azure-flexible'; set kind: azure-flexible")
        return self

    def azure_server(self) -> AzureServerConfig:
        if self.azure is None:
            raise ConfigError(f"database {self.dbname!r} is of kind {self.kind!r}, not 'azure-flexible'")
        return self.azure

    @model_validator(mode="before")
    @classmethod
    def _compress_renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "compress" in data:
            level = data["compress"]
            raise ValueError(f"'compress: {level}' is now 'compression': write 'compression: gzip:{level}' to keep "
                             f"pg_dump's gzip at level {level}, or leave it out for {compression.DEFAULT} (about 3 "
                             "times faster, 7% larger)")
        return data

    @field_validator("compression")
    @classmethod
    def _compression(cls, v: str) -> str:
        return str(compression.parse(v))

    @property
    def codec(self) -> compression.Compression:
        return compression.parse(self.compression)

    @field_validator("dbname")
    @classmethod
    def _dbname(cls, v: str) -> str:
        if v and not DBNAME_RE.match(v):
            raise ValueError("a database name: letters, digits and _, starting with a letter or _")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return check_timezone(v) if v is not None else v


# --- clusters: physical backups and point-in-time recovery (pgBackRest) ----------------------

STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OS_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _absolute_path(v: str | None) -> str | None:
    if v is not None and not v.startswith("/"):
        raise ValueError("an absolute path, like /var/lib/postgresql/restores")
    return v


def _os_user(v: str | None) -> str | None:
    if v is not None and not OS_USER_RE.match(v):
        raise ValueError("an OS account name, like postgres")
    return v


def _absolute_dir(v: str) -> str:
    return str(_absolute_path(v))


# The account that owns a data directory, and a folder of PostgreSQL's programs on its host:
# a cluster's and the DR pair's, checked the same way.
OsUser = Annotated[str | None, AfterValidator(_os_user)]
BinDir = Annotated[str, AfterValidator(_absolute_dir)]


class PgBackRestConfig(Model):
    """How the cluster is backed up: the host's pgBackRest config, its stanza and repository.

    The repository's location and credentials are in that config file, as pgBackRest's own
    archive_command on the host needs them too; nothing secret is in this file."""

    stanza: str = Field(description="The pgBackRest stanza of the cluster")
    config_file: str = Field(description="pgbackrest.conf on the database host (absolute path)")
    repository: int = Field(1, ge=1, le=256, description="Which repository of that config (repo<N>) backups go to")
    process_max: int = Field(2, ge=1, le=64, description="pgBackRest --process-max for backup and restore")
    retention: Retention = Field(description="GFS (or days) over full backups; the incremental and differential "
                                             "backups of a full go with it")
    timeout: Duration = Field(timedelta(hours=6), description="Upper bound on one backup or restore command")

    @field_validator("stanza")
    @classmethod
    def _stanza(cls, v: str) -> str:
        if not STANZA_RE.match(v):
            raise ValueError("letters, digits, '_', '.' and '-', starting with a letter or digit")
        return v

    @field_validator("config_file")
    @classmethod
    def _config_file(cls, v: str) -> str:
        return str(_absolute_path(v))


class PhysicalRestoreConfig(Model):
    """Where restored instances are created: a new data directory on a new port, on the host."""

    directory: str = Field(description="Parent folder of restored data directories (absolute path), writable "
                                       "by the PostgreSQL account; it needs the cluster's size free")
    ports: str = Field("54400-54499", description="TCP ports a restored instance may use, as FIRST-LAST")
    start_timeout: Duration = Field(timedelta(minutes=30), description="Upper bound on recovery until it accepts "
                                                                     "connections")
    smoke_queries: dict[str, list[SmokeQuery]] = Field(
        default_factory=dict, description="Per database of the cluster: queries run on the restored instance")

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: str) -> str:
        return str(_absolute_path(v))

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        m = re.fullmatch(r"(\d{4,5})-(\d{4,5})", v.strip())
        if not m or not 1024 <= int(m.group(1)) <= int(m.group(2)) <= 65535:
            raise ValueError("a range of unprivileged TCP ports, FIRST-LAST, like 54400-54499")
        return v.strip()

    @property
    def port_range(self) -> range:
        first, last = (int(x) for x in self.ports.split("-"))
        return range(first, last + 1)


class ClusterConfig(Model):
    """A PostgreSQL cluster (a whole server) as physical backups and PITR see it."""

    dsn: SecretRef = Field(description="Superuser connection string of the primary (libpq URI or key=value)")
    os_user: OsUser = Field(None, description="OS account that owns the data directory; pgBackRest and pg_ctl "
                                                  "run as it (through runuser). Leave out to run as ourselves")
    pg_bin: BinDir = Field("/usr/lib/postgresql/15/bin", description="Folder of pg_ctl and pg_amcheck on the host")
    heartbeat_database: str = Field("postgres", description="Database of the heartbeat table (runbook_heartbeat) that "
                                                          "archive_health writes to and a PITR is checked against")
    pgbackrest: PgBackRestConfig
    restore: PhysicalRestoreConfig
    objectives: Objectives = Field(description="RTO: physical restore plus checks; RPO: age of the newest archived "
                                               "WAL (continuous archiving)")

    def check_secrets(self) -> None:
        self.dsn.resolve()


# --- Kubernetes services and deploys ----------------------------------------------------

IMAGE_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::\d+)?)/)?(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
Strategy = Literal["rolling", "blue-green"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def validate_image(image: Any, svc: ServiceConfig) -> str:
    """An image reference with a tag or digest, from the service's repository if it has one."""
    if not isinstance(image, str):  # `--param image=20240101` arrives as an int
        raise ConfigError(f"image {image!r} must be a string like 'registry/app:v1.2.3' (got {type(image).__name__}); "
                          "quote it, or use deployments/ci/trigger.py")
    m = IMAGE_RE.match(image)
    if not m or not (m.group("tag") or m.group("digest")):
        raise ConfigError(f"image {image!r} is not an image reference with a tag or digest, "
                          "like 'registry.example.com/team/app:v1.2.3' or 'app@sha256:<64 hex>'")
    repo = "/".join(p for p in (m.group("registry"), m.group("repo")) if p)
    if svc.image_repository and repo != svc.image_repository:
        raise ConfigError(f"image {image!r} is not from repository {svc.image_repository!r}, "
                          f"the only one allowed for deployment {svc.deployment!r}")
    return image


class KubernetesConfig(Model):
    kubeconfig: str | None = Field(None, description="Path of a kubeconfig file; default: in-cluster, then ~/.kube/config")
    context: str | None = Field(None, description="kubeconfig context; default: its current context")


class Thresholds(Model):
    max_error_rate: float | None = Field(None, ge=0, le=1, description="Error rate as a fraction: 0.05 = 5%")
    max_latency_ms: float | None = Field(None, ge=0, description="Latency p95 in milliseconds")
    require_healthy: bool = Field(True, description="Every health URL answers 2xx")


class AnalysisConfig(Model):
    """An Argo Rollouts-style analysis: measure every `interval`, `count` times."""

    interval: Duration = Field(timedelta(seconds=10), description="Time between measurements")
    count: int = Field(5, ge=1, le=1000, description="Measurements when all goes well")
    success: Thresholds = Field(default_factory=lambda: Thresholds(max_error_rate=0.01, max_latency_ms=500))
    failure: Thresholds = Field(default_factory=lambda: Thresholds(max_error_rate=0.05, max_latency_ms=1000))
    failure_limit: int = Field(0, ge=0, description="Failed measurements tolerated")
    inconclusive_limit: int = Field(0, ge=0, description="Inconclusive measurements tolerated")
    consecutive_error_limit: int = Field(4, ge=0, description="Measurement errors in a row tolerated")


def _check_http_url(v: str) -> str:
    parsed = urlparse(v)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("an http:// or https:// URL")
    return v


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class HttpCheck(Model):
    name: str
    url: HttpUrl = Field(description="http(s) URL")
    expect_status: int = Field(200, ge=100, le=599)
    contains: str | None = Field(None, description="Text the body must contain")
    timeout: Duration = Field(timedelta(seconds=5))


class BlueGreenConfig(Model):
    """Two Deployments, `<deployment>-blue` and `<deployment>-green`, told apart by the label
    `colour`. Traffic moves by the live Service's selector, or with `ingress` by the Ingress's
    backend, from Service `<service>-<live colour>` to `<service>-<new colour>`."""

    service: str = Field(description="The live Service whose selector is switched; with `ingress`, the "
                                     "prefix of the colour Services `<service>-blue` and `<service>-green`")
    preview_service: str | None = Field(None, description="A Service that always selects the new colour")
    ingress: str | None = Field(None, description="Switch this Ingress's backend between the colour Services "
                                                  "instead of the live Service's selector")
    preview_health_urls: list[str] = Field(default_factory=list, description="Health URLs answered by the preview")
    preview_metrics_url: str | None = None
    preview_analysis: AnalysisConfig | None = Field(None, description="Pre-promotion analysis; default: `analysis`")
    grace: Duration = Field(timedelta(seconds=60), description="How long blue stays scaled after the switch")


class ServiceConfig(Model):
    namespace: str = Field(description="Kubernetes namespace")
    deployment: str = Field(description="Deployment name")
    container: str = Field(description="The container whose image a deploy changes")
    strategy: Strategy = Field("rolling", description="Default deploy strategy")
    image_repository: str | None = Field(None, description="If set, deploys must use an image from this repository")
    rollout_timeout: Duration = Field(timedelta(minutes=10), description="Upper bound on waiting for a rollout")
    health_urls: list[str] = Field(default_factory=list, description="URLs that must answer 2xx")
    metrics_url: str | None = Field(None, description="JSON metrics: requests, errors, latency_ms p95")
    http_timeout: Duration = Field(timedelta(seconds=5), description="Timeout of each health and metrics request")
    url: str | None = Field(None, description="Link to the service, for reports")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    smoke_checks: list[HttpCheck] = Field(default_factory=list)
    blue_green: BlueGreenConfig | None = None
    backup_database: str | None = Field(None, description="Database to back up before a deploy")

    @field_validator("namespace", "deployment", "container")
    @classmethod
    def _k8s_name(cls, v: str) -> str:
        if not K8S_NAME_RE.match(v):
            raise ValueError("a Kubernetes name: lower-case letters, digits and '-', at most 63")
        return v

    @field_validator("health_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [_check_http_url(u) for u in v]

    @model_validator(mode="after")
    def _bg(self) -> ServiceConfig:
        if self.strategy == "blue-green" and self.blue_green is None:
            raise ValueError("strategy blue-green needs a 'blue_green' section")
        return self


class FreezeWindow(Model):
    """A time when deploys are refused: a fixed span, or weekly days and hours."""

    name: str
    start: datetime | None = Field(None, description="Fixed span start (ISO 8601 with offset)")
    end: datetime | None = None
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    from_time: str | None = Field(None, description="Weekly: HH:MM in the environment's timezone")
    to_time: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> FreezeWindow:
        fixed = self.start is not None or self.end is not None
        weekly = bool(self.days) or self.from_time is not None or self.to_time is not None
        if fixed == weekly:
            raise ValueError("give either 'start' and 'end', or 'days' with 'from_time' and 'to_time'")
        if fixed and (self.start is None or self.end is None or self.start >= self.end):
            raise ValueError("'start' and 'end' must both be set, start before end")
        for t in (self.from_time, self.to_time):
            if weekly and (t is None or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", t)):
                raise ValueError("'from_time' and 'to_time' are HH:MM")
        return self


class Schedules(Model):
    backup: str = Field("0 2 * * *", description="Cron for backup_all, in the environment's timezone")
    restore_test: str = Field("0 3 * * 0", description="Cron for the restore tests, logical and physical")
    physical_full: str = Field("30 1 * * *", description="Cron for full physical backups of each cluster")
    physical_incr: str = Field("0 * * * *", description="Cron for incremental physical backups (skipped by Prefect "
                                                       "while the full one runs: one backup per cluster at a time)")
    archive_health: str = Field("*/5 * * * *", description="Cron for the WAL archive's health check")
    primary_watch: str = Field("* * * * *", description="Cron for primary_watch, which probes the primary of the "
                                                       "dr pair")

    @field_validator("backup", "restore_test", "physical_full", "physical_incr", "archive_health", "primary_watch")
    @classmethod
    def _cron(cls, v: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=v, timezone="UTC")
        except ValidationError:
            raise ValueError("a 5-field cron expression like '0 2 * * *'") from None
        return v


# --- DR: a replicated pair, failover, drills ----------------------------------------------

HOSTNAME_RE = re.compile(r"^(?=.{1,253}\.?$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")
PG_SETTING_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _hostname(v: str) -> str:
    if not HOSTNAME_RE.match(v.lower()):
        raise ValueError("a DNS name like db.example.internal")
    return v.lower().rstrip(".")


class DrNode(Model):
    """One server of the replicated pair: how we reach it, and where it lives on its host."""

    dsn: SecretRef = Field(description="Superuser connection string of this server (libpq URI or key=value)")
    data_dir: str = Field(description="Its data directory on the database host (absolute path): fencing writes "
                                      "standby.signal there, and a rebuild rewinds it")
    host: str = Field(description="Address applications connect to (written to the app's ConfigMap or Secret)")
    port: int = Field(ge=1, le=65535, description="Port applications connect to")
    dns_name: str = Field(description="Its own DNS name: the database record points there while it is primary")
    log_file: str | None = Field(None, description="pg_ctl's log when a rebuild starts it (absolute path); "
                                                   "default: postgres.log beside the data directory")

    @property
    def log_path(self) -> str:
        return self.log_file or str(Path(self.data_dir).parent / "postgres.log")

    @field_validator("data_dir", "log_file")
    @classmethod
    def _data_dir(cls, v: str | None) -> str | None:
        return _absolute_path(v)

    @field_validator("dns_name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        return _hostname(v)


class ReplicationUser(Model):
    """How a standby connects to its primary (primary_conninfo); the password is in a passfile on the host."""

    user: str = Field(description="Role with REPLICATION")
    passfile: str = Field(description="libpq passfile on the database host (absolute path), readable by the "
                                      "PostgreSQL account")

    @field_validator("passfile")
    @classmethod
    def _passfile(cls, v: str) -> str:
        return str(_absolute_path(v))


class LagLimits(Model):
    """How far behind the standby may be for a failover to go ahead without force=True."""

    max_bytes: int = Field(16 * 1024 * 1024, ge=0, description="WAL not yet replayed on the standby, in bytes")
    max_seconds: Duration = Field(timedelta(seconds=60), description="Age of the newest replayed transaction "
                                                                     "compared with the primary's last known one")


class FencingConfig(Model):
    """How the old primary is kept from accepting writes."""

    method: Literal["read_only", "stop"] = Field(
        "stop", description="read_only: default_transaction_read_only and its sessions ended; stop: also shut down "
                            "after the standby has caught up. Either way standby.signal is written to its data "
                            "directory, so it comes back read-only")
    terminate_sessions: bool = Field(True, description="End the old primary's client sessions once it is read-only")


class DnsConfig(Model):
    """The database's DNS record in Route53: a CNAME to the current primary's dns_name."""

    zone_id: str = Field(description="Route53 hosted zone id")
    record: str = Field(description="Record name, like db.example.internal")
    ttl: int = Field(30, ge=1, le=86400, description="TTL of the record, in seconds")
    endpoint_url: str | None = Field(None, description="Route53 endpoint, for a sandbox")
    region: str | None = Field(None, description="AWS region for the client")
    access_key_id: SecretRef | None = Field(None, description="Access key id; default: the AWS credential chain")
    secret_access_key: SecretRef | None = Field(None, description="Secret access key")
    timeout: Duration = Field(timedelta(minutes=2), description="Upper bound on waiting for the change to be INSYNC")

    @field_validator("record")
    @classmethod
    def _record(cls, v: str) -> str:
        return _hostname(v)


class RepointConfig(Model):
    """Where the applications read the database's address, and which of them to restart."""

    namespace: str = Field(description="Kubernetes namespace of the ConfigMap or Secret")
    kind: Literal["configmap", "secret"] = Field(description="What holds the address")
    name: str = Field(description="Its name")
    host_key: str = Field("PGHOST", description="Key of the host")
    port_key: str = Field("PGPORT", description="Key of the port")
    services: list[str] = Field(min_length=1, description="Services restarted to pick up the new address")


class DrSiteConfig(Model):
    """The seeds' "deploy the app to the backup region": Deployments scaled up in a DR context."""

    kubernetes: KubernetesConfig | None = Field(None, description="The DR cluster; default: the environment's")
    namespace: str = Field(description="Namespace in the DR cluster")
    deployments: dict[str, int] = Field(min_length=1, description="Deployment name -> replicas to scale up to")

    @field_validator("deployments")
    @classmethod
    def _replicas(cls, v: dict[str, int]) -> dict[str, int]:
        for name, replicas in v.items():
            if not 1 <= replicas <= REPLICAS_MAX:
                raise ValueError(f"{name}: replicas {replicas} must be from 1 to {REPLICAS_MAX}")
        return v


class WatchConfig(Model):
    """primary_watch: when a down primary starts a failover."""

    failed_probes: int = Field(3, ge=2, le=60, description="Consecutive failed probes of the primary before a failover")
    probe_interval: Duration = Field(timedelta(seconds=10), description="Time between probes")
    probe_timeout: Duration = Field(timedelta(seconds=3), description="Connect timeout of each probe")

    @model_validator(mode="after")
    def _fits(self) -> WatchConfig:
        # Each run is one minute's watch: its probes must fit before the next run starts.
        span = self.failed_probes * (self.probe_interval + self.probe_timeout)
        if span > timedelta(seconds=55):
            raise ValueError(f"failed_probes x (probe_interval + probe_timeout) is {span.total_seconds():g}s; "
                             "it must fit in one minute's run (55s)")
        return self


class NotifyConfig(Model):
    """Where incident announcements go: a Slack-compatible incoming webhook."""

    webhook: SecretRef = Field(description="The webhook URL (it carries its token, so it is a secret)")
    channel: str | None = Field(None, description="Channel, for webhooks that accept one")
    severity: str = Field("SEV-1", description="Severity in the incident template")
    impact: str | None = Field(None, description="Impact line of the incident template")
    update_every: Duration = Field(timedelta(minutes=30), description="Next Update: the seeds post every 30 minutes")
    timeout: Duration = Field(timedelta(seconds=10), description="Timeout of each webhook request")


# --- maintenance windows and maintenance mode ------------------------------------------------------


class MaintenanceModeConfig(Model):
    """How maintenance mode goes on and off: the Ingress that users reach switches its backend
    to the Service that serves the maintenance page, and back. The Ingress remembers the
    backend it had in an annotation, so a later run can put it back after a crash."""

    method: Literal["ingress-backend"] = Field("ingress-backend", description="Switch the Ingress's backend")
    namespace: str = Field(min_length=1, description="Namespace of the Ingress and the page's Service")
    ingress: str = Field(description="The Ingress users reach")
    page_service: str = Field(description="The Service that serves the maintenance page")
    page_url: HttpUrl = Field(description="A URL users reach through the Ingress: it serves the page while on")
    page_marker: str = Field("maintenance", description="Text the maintenance page contains (case-insensitive)")
    settle: Duration = Field(timedelta(seconds=30), description="How long the page may take to show or go away")


class CertificateTarget(Model):
    """A TLS endpoint whose certificate `check_certificates` reads."""

    host: str
    port: int = Field(443, ge=1, le=65535)
    server_name: str | None = Field(None, description="SNI name, when it differs from host")
    ca_file: str | None = Field(None, description="CA bundle to verify against; the system store when left out")
    warn_days: float = Field(30, ge=0, description="Fewer days left than this: a warning")
    fail_days: float = Field(7, ge=0, description="Fewer days left than this: the check fails")


class MaintenanceConfig(Model):
    """What a maintenance window acts on around its tasks."""

    mode: MaintenanceModeConfig | None = Field(None, description="Maintenance mode; none: the tasks run live")
    health_urls: list[str] = Field(default_factory=list, description="Checked after the tasks, before maintenance "
                                                                     "mode goes off, and again after")
    certificates: list[CertificateTarget] = Field(default_factory=list, description="Hosts check_certificates reads")
    estimates: dict[str, Duration] = Field(default_factory=dict, description="Expected duration of each task kind "
                                                                            "(vacuum_analyze: 10m); past runs' "
                                                                            "durations are used where none is set")
    http_timeout: Duration = Field(timedelta(seconds=10), description="Timeout of each page and health request")
    margin: Duration = Field(timedelta(minutes=5), description="Left free at the window's end for the health check "
                                                              "and maintenance mode off")
    tasks: list[MaintenanceTask] = Field(default_factory=list, description="The tasks a scheduled run does, in "
                                                                           "order (the same shape as the flow's "
                                                                           "`tasks` parameter)")

    @field_validator("health_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return [_check_http_url(u) for u in v]


class DrConfig(Model):
    """A primary and its streaming standby, and what a failover repoints."""

    nodes: dict[str, DrNode] = Field(description="The two servers, by name")
    preferred_primary: str = Field(description="The node that is primary in the normal topology (a drill ends there)")
    os_user: OsUser = Field(None, description="OS account that owns the data directories; pg_ctl and pg_rewind "
                                                  "run as it. Leave out to run as ourselves")
    pg_bin: BinDir = Field("/usr/lib/postgresql/15/bin", description="Folder of pg_ctl and pg_rewind on the host")
    database: str = Field("postgres", description="Database of the write-and-read check (table runbook_heartbeat)")
    replication: ReplicationUser
    lag: LagLimits = Field(default_factory=LagLimits)
    fencing: FencingConfig = Field(default_factory=FencingConfig)
    dns: DnsConfig | None = None
    repoint: RepointConfig | None = None
    dr_site: DrSiteConfig | None = None
    watch: WatchConfig = Field(default_factory=WatchConfig)
    promote_timeout: Duration = Field(timedelta(seconds=60), description="Upper bound on promotion and on the "
                                                                        "standby catching up in a switchover")
    rebuild_timeout: Duration = Field(timedelta(minutes=30), description="Upper bound on a rewind or standby "
                                                                       "restore, and on streaming starting")
    pgbackrest: PgBackRestConfig | None = Field(None, description="The pair's stanza: a rebuild restores a standby "
                                                                  "from it when pg_rewind cannot")
    objectives: Objectives = Field(description="RTO: decision to application healthy; RPO: data lost")

    @field_validator("nodes")
    @classmethod
    def _two(cls, v: dict[str, DrNode]) -> dict[str, DrNode]:
        if len(v) != 2:
            raise ValueError(f"exactly two nodes, a primary and its standby; got {len(v)}")
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"node name {name!r}: lower-case letters, digits and '-'")
        return v

    @model_validator(mode="after")
    def _preferred(self) -> DrConfig:
        if self.preferred_primary not in self.nodes:
            raise ValueError(f"preferred_primary {self.preferred_primary!r} is not a node; known: "
                             f"{', '.join(sorted(self.nodes))}")
        return self

    def node(self, name: str) -> DrNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(f"node {name!r} is not in the dr section; known: {', '.join(sorted(self.nodes))}") from None

    def other(self, name: str) -> str:
        """The other node of the pair."""
        return next(n for n in self.nodes if n != name)

    def check_secrets(self) -> None:
        for node in self.nodes.values():
            node.dsn.resolve()
        for ref in (self.dns.access_key_id, self.dns.secret_access_key) if self.dns else ():
            if ref is not None:
                ref.resolve()


class EnvironmentConfig(Model):
    name: str = Field(description="Environment name, as in the file name")
    timezone: str = Field("UTC", description="IANA timezone for schedules and retention")
    protected: bool = Field(False, description="Destructive steps need an approval")
    backup_concurrency: int = Field(2, ge=1, le=32, description="Backups that may run at once")
    schedules: Schedules = Field(default_factory=Schedules)
    databases: dict[str, DatabaseConfig] = Field(default_factory=dict)
    kubernetes: KubernetesConfig | None = None
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    deploy_freeze: list[FreezeWindow] = Field(default_factory=list, description="Before windows.freezes: still "
                                                                                "read, as freezes of deploys")
    clusters: dict[str, ClusterConfig] = Field(default_factory=dict, description="Clusters with physical backups "
                                                                               "and point-in-time recovery")
    dr: DrConfig | None = Field(None, description="The replicated pair that dr_failover, rebuild_replica, "
                                                  "primary_watch and dr_drill act on")
    drills_allowed: bool = Field(False, description="dr_drill may run here: a game day switches the primary over "
                                                    "and back")
    notify: NotifyConfig | None = Field(None, description="Incident announcements (a Slack-compatible webhook)")
    windows: WindowsConfig | None = Field(None, description="Maintenance windows, freezes, and which runbooks may "
                                                            "change things only inside a window")
    change_wait: Duration = Field(timedelta(minutes=30), description="How long a changing run waits for the run "
                                                                     "holding the environment's change slot before "
                                                                     "it is refused; 0s refuses at once")
    maintenance: MaintenanceConfig | None = Field(None, description="What maintenance_window acts on")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("lower-case letters, digits and '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _legacy_freezes(self) -> EnvironmentConfig:
        """`deploy_freeze` (before maintenance windows) still works: each entry becomes a freeze
        of `windows.freezes` that applies to deploys, in the environment's timezone."""
        if not self.deploy_freeze:
            return self
        converted = [windows.from_fixed_span(w.name, w.start, w.end) if w.start is not None and w.end is not None
                     else windows.from_weekly_span(w.name, list(w.days), w.from_time or "", w.to_time or "",
                                                   self.timezone)
                     for w in self.deploy_freeze]
        current = self.windows or windows.WindowsConfig()
        clash = {w.name for w in converted} & {w.name for w in current.freezes}
        if clash:
            raise ValueError(f"freeze {sorted(clash)[0]!r} is in both deploy_freeze and windows.freezes; keep it in "
                             "windows.freezes only (with applies_to: [deploy] for a deploy-only freeze)")
        merged = windows.WindowsConfig(require_for=current.require_for, maintenance=current.maintenance,
                                       freezes=[*current.freezes, *converted])  # checked again, names and all
        object.__setattr__(self, "windows", merged)
        object.__setattr__(self, "deploy_freeze", [])
        return self

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("databases")
    @classmethod
    def _db_keys(cls, v: dict[str, DatabaseConfig]) -> dict[str, DatabaseConfig]:
        """The one place the database's name on its server defaults to its key."""
        for key, db in v.items():
            if not db.dbname and not DBNAME_RE.match(key):
                raise ValueError(f"database key {key!r} is not a valid database name; set 'dbname'")
        return {key: db if db.dbname else db.model_copy(update={"dbname": key}) for key, db in v.items()}

    def database(self, name: str) -> DatabaseConfig:
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "(none)"
            raise ConfigError(f"database {name!r} is not in environment {self.name!r}; known: {known}") from None

    def cluster(self, name: str) -> ClusterConfig:
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "(none)"
            raise ConfigError(f"cluster {name!r} is not in environment {self.name!r}; known: {known}") from None

    def check_dr_secrets(self) -> None:
        """Every secret a DR runbook needs, before it changes anything. Not the webhook's: a
        failover never waits on the incident channel (an announcement that cannot be sent is
        a warning in the run's log)."""
        self.dr_pair().check_secrets()

    def azure_replicated(self) -> str | None:
        """The one Azure flexible server database with a replica, which dr_failover promotes when
        there is no `dr` section."""
        found = [n for n, db in self.databases.items() if db.azure is not None and db.azure.replica]
        if len(found) > 1:
            raise ConfigError(f"environment {self.name!r} has several Azure databases with a replica "
                              f"({', '.join(sorted(found))}); run azure-failover with the database")
        return found[0] if found else None

    def dr_pair(self) -> DrConfig:
        if self.dr is None:
            raise ConfigError(f"environment {self.name!r} has no 'dr' section (the replicated pair a failover "
                              "acts on); see docs/config.md")
        return self.dr

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "(none)"
            raise ConfigError(f"service {name!r} is not in environment {self.name!r}; known: {known}") from None

    def deploy_strategy(self, service: str, requested: str) -> str:
        """The strategy a deploy uses: the one asked for, or the service's own."""
        svc = self.service(service)
        if requested == FROM_CONFIG:
            return svc.strategy
        strategy = check_choice("strategy", requested, STRATEGIES, "a deploy strategy")
        if strategy == "blue-green" and svc.blue_green is None:
            raise ConfigError(f"strategy 'blue-green' needs services.{service}.blue_green in {self.name}")
        return strategy

    def database_of(self, service: str) -> str:
        """The one database whose `apps` lists the service."""
        found = [name for name, db in self.databases.items() if service in db.apps]
        if len(found) != 1:
            raise ConfigError(f"exactly one database of {self.name!r} must list {service!r} in its 'apps'; "
                              f"found: {', '.join(found) or 'none'}")
        return found[0]

    @model_validator(mode="after")
    def _references(self) -> EnvironmentConfig:
        for name, svc in self.services.items():
            if svc.backup_database and svc.backup_database not in self.databases:
                raise ValueError(f"services.{name}.backup_database {svc.backup_database!r} is not a database "
                                 f"of this environment; known: {', '.join(sorted(self.databases)) or '(none)'}")
        for name, db in self.databases.items():
            for app in db.apps:
                if app not in self.services:
                    raise ValueError(f"databases.{name}.apps: {app!r} is not a service of this environment; "
                                     f"known: {', '.join(sorted(self.services)) or '(none)'}")
            if db.migrations.job and db.migrations.job.service not in self.services:
                raise ValueError(f"databases.{name}.migrations.job.service {db.migrations.job.service!r} is not a "
                                 f"service of this environment")
        if self.dr is not None and self.dr.repoint is not None:
            for svc in self.dr.repoint.services:
                if svc not in self.services:
                    raise ValueError(f"dr.repoint.services: {svc!r} is not a service of this environment; "
                                     f"known: {', '.join(sorted(self.services)) or '(none)'}")
        if self.dr is not None and (self.dr.repoint or self.dr.dr_site) and self.kubernetes is None \
                and (self.dr.dr_site is None or self.dr.dr_site.kubernetes is None):
            raise ValueError("dr.repoint and dr.dr_site need a 'kubernetes' section (kubeconfig, context)")
        if self.services and self.kubernetes is None:
            raise ValueError("services need a 'kubernetes' section (kubeconfig, context)")
        return self

    def tz_for(self, name: str) -> ZoneInfo:
        return ZoneInfo(self.database(name).timezone or self.timezone)


# --- flow parameters: checked before any side effect ------------------------------------

FROM_CONFIG = "from config"  # a form's choice meaning "what the environment's config says"
REPLICAS_MAX = 1000
# An HPA's CPU target is a share of the pods' CPU requests, so 150% is a legitimate target.
CPU_PERCENT_MAX = 1000


def check_choice(field: str, value: Any, allowed: tuple[str, ...], what: str = "allowed") -> str:
    """A parameter that must be one of a few words (a form's dropdown, or a direct call)."""
    if value not in allowed:
        raise ConfigError(f"{field} {value!r} is not {what}; allowed: {', '.join(allowed)}")
    return str(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_replicas(replicas: Any) -> int:
    if not _whole(replicas) or not 0 <= replicas <= REPLICAS_MAX:
        raise ConfigError(f"replicas {replicas!r} must be a whole number from 0 to {REPLICAS_MAX}")
    return int(replicas)


def check_autoscaler(min_replicas: Any, max_replicas: Any, cpu_percent: Any) -> None:
    """`kubectl autoscale --min --max --cpu-percent`, the one rule for the flow and the task."""
    if not (_whole(min_replicas) and _whole(max_replicas) and 1 <= min_replicas <= max_replicas <= REPLICAS_MAX):
        raise ConfigError(f"min {min_replicas!r} and max {max_replicas!r} must satisfy "
                          f"1 <= min <= max <= {REPLICAS_MAX}")
    if not _whole(cpu_percent) or not 1 <= cpu_percent <= CPU_PERCENT_MAX:
        raise ConfigError(f"cpu_percent {cpu_percent!r} must be from 1 to {CPU_PERCENT_MAX} "
                          "(a percentage of the pods' CPU requests)")


REASON_MAX = 500


def check_reason(reason: Any, field: str = "reason") -> str:
    """Why a failover or an emergency change runs: it goes to the artifact, the approval page
    and the announcements."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
        raise ConfigError(f"{field} {reason!r} must be a sentence saying why (1 to {REASON_MAX} characters), "
                          "like 'primary unreachable since 02:10, SEV-1 INC-123'")
    return reason.strip()


def check_revision(to_revision: Any) -> int | None:
    if to_revision is not None and (not _whole(to_revision) or to_revision < 1):
        raise ConfigError(f"to_revision {to_revision!r} must be a revision number >= 1, or empty for the previous one")
    return to_revision


# --- loading ---------------------------------------------------------------------------


def environments_dir() -> Path:
    return Path(os.environ.get("RUNBOOK_ENVIRONMENTS_DIR") or REPO_ROOT / "environments")


def environment_path(name: str) -> Path:
    if not NAME_RE.match(name):
        raise ConfigError(f"environment {name!r} is not a valid name: lower-case letters, digits and '-'")
    path = environments_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in environments_dir().glob("*.yaml"))
        raise ConfigError(f"environment {name!r} has no file {path}; known: {', '.join(known) or '(none)'}")
    return path


def load_environment(name_or_path: str | Path) -> EnvironmentConfig:
    """Load and validate one environment, by name or by file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = environment_path(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        return EnvironmentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def format_validation_error(path: Path | str, exc: ValidationError, model: type[BaseModel] = EnvironmentConfig) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            lines.append(f"  {loc}: unknown key {err['loc'][-1]!r}; allowed: {', '.join(allowed)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the model along an error location to list the keys allowed there."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            continue  # a dict key (database name)
        current = _model_of(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
