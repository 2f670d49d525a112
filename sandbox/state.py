"""What a running sandbox is: ports, pids, paths and its generated secrets.

`up` writes it to `<workdir>/state.json` (mode 0600: it holds the password), and
`down`, `status` and tests read it back. Secrets never show in a repr.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError, PermanentError

STATE_FILE = "state.json"
ENV_FILE = "sandbox.env"
MARKER_FILE = ".runbook-sandbox"  # written first by `up`: proves to `down` that the dir is ours

ENV_PG_DSN = "RUNBOOK_SANDBOX_PG_DSN"
ENV_S3_ACCESS_KEY = "RUNBOOK_SANDBOX_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "RUNBOOK_SANDBOX_S3_SECRET_KEY"
# The replicated pair `ha` (sandbox/replication.py): dr_admin's libpq URI to each node, and
# the app role's password. The webhook's URL is set by tests (sandbox/webhook.py), not by `up`.
ENV_HA_PG_A_DSN = "RUNBOOK_SANDBOX_HA_PG_A_DSN"
ENV_HA_PG_B_DSN = "RUNBOOK_SANDBOX_HA_PG_B_DSN"
ENV_HA_APP_PASSWORD = "RUNBOOK_SANDBOX_HA_APP_PASSWORD"
ENV_WEBHOOK_URL = "RUNBOOK_SANDBOX_WEBHOOK_URL"
HA_DSN_ENV = {"pg-a": ENV_HA_PG_A_DSN, "pg-b": ENV_HA_PG_B_DSN}
# The fake Azure Resource Manager (sandbox/azure_arm.py): azure-identity's App Service managed
# identity variables (DefaultAzureCredential signs in at the fake with them), the administrator's
# password of its servers, and a libpq URI as that administrator to fleetdb on fleet-pg.
ENV_IDENTITY_ENDPOINT = "IDENTITY_ENDPOINT"
ENV_IDENTITY_HEADER = "IDENTITY_HEADER"
ENV_AZURE_ADMIN_PASSWORD = "RUNBOOK_SANDBOX_AZURE_ADMIN_PASSWORD"
ENV_AZURE_DSN = "RUNBOOK_SANDBOX_AZURE_DSN"


@dataclass(frozen=True)
class SandboxState:
    """A running sandbox: where each piece listens and how to log in to it."""

    workdir: Path
    size_mb: int
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str = field(repr=False)
    pg_data_dir: Path
    pg_bin: Path
    pg_pid: int
    s3_endpoint: str
    s3_bucket: str
    s3_region: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    moto_pid: int
    backup_dir: Path
    environment_file: Path | None = None
    created_at: str = ""
    kube_url: str | None = None
    kube_pid: int | None = None
    kubeconfig: Path | None = None
    webapp_url: str | None = None
    webapp_pid: int | None = None
    # The fault proxies (sandbox/faultproxy.py) in front of moto and the API server; None in
    # a sandbox started before they existed. proxy_kubeconfig's server is kube_proxy_url.
    s3_proxy_url: str | None = None
    s3_proxy_control_url: str | None = None
    s3_proxy_pid: int | None = None
    kube_proxy_url: str | None = None
    kube_proxy_control_url: str | None = None
    kube_proxy_pid: int | None = None
    proxy_kubeconfig: Path | None = None
    # The Prefect server and process workers of `python -m sandbox prefect up`
    # (sandbox/orchestration.py); None while they do not run. prefect_database is
    # "postgresql" or "sqlite"; the role `prefect`'s password stays once generated.
    prefect_api_url: str | None = None
    prefect_server_pid: int | None = None
    prefect_database: str | None = None
    prefect_pool: str | None = None
    prefect_worker_pids: list[int] | None = None
    prefect_db_password: str | None = field(default=None, repr=False)
    # Continuous WAL archiving with pgBackRest (sandbox/pgbackrest.py): the DB host's config
    # (0600, owned by the PostgreSQL account, holds the S3 keys), its stanza, the posix
    # repository (repo2; repo1 is the bucket), and where flows restore scratch instances.
    # pgBackRest reaches moto through the TLS terminator (sandbox/tls.py) at tls_s3_url,
    # whose self-signed certificate is its own CA file. None in an older sandbox.
    pgbackrest_config: Path | None = None
    pgbackrest_stanza: str | None = None
    pgbackrest_restore_dir: Path | None = None
    pgbackrest_posix_repo: Path | None = None
    tls_s3_url: str | None = None
    tls_pid: int | None = None
    tls_ca_file: Path | None = None
    # The replicated pair `ha` (sandbox/replication.py), beside the main server, which DR
    # flows fail over: ha_nodes maps "pg-a"/"pg-b" to {"dir", "data_dir", "log", "port",
    # "host", "dns_name"} (strings and an int). Which node is primary is not recorded: flows
    # change it; ask replication.role(). The Route53 zone on moto holds dns_record, a CNAME
    # to the primary's dns_name. None in an older sandbox.
    ha_dir: Path | None = None
    ha_nodes: dict[str, dict[str, Any]] | None = None
    ha_passfile: Path | None = None
    ha_admin_password: str | None = field(default=None, repr=False)
    ha_replicator_password: str | None = field(default=None, repr=False)
    ha_app_password: str | None = field(default=None, repr=False)
    route53_zone_id: str | None = None
    dns_zone: str | None = None
    dns_record: str | None = None
    # The fake Azure Resource Manager (sandbox/azure_arm.py) and its flexible servers, each a
    # PostgreSQL cluster on azure_pg_port of its own 127.0.1.N (azure_fqdn: fleet-pg's); its
    # files in azure_dir, its environment in azure_environment_file. None in an older sandbox.
    azure_arm_url: str | None = None
    azure_arm_pid: int | None = None
    azure_dir: Path | None = None
    azure_pg_port: int | None = None
    azure_subscription_id: str | None = None
    azure_fqdn: str | None = None
    azure_admin_user: str | None = None
    azure_identity_header: str | None = field(default=None, repr=False)
    azure_admin_password: str | None = field(default=None, repr=False)
    azure_environment_file: Path | None = None

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_data_dir.parent

    def pg_admin_dsn(self, dbname: str = "postgres") -> str:
        """libpq URI for the superuser `runbook` to `dbname`, password included: keep it out of logs."""
        return f"postgresql://{self.pg_user}:{self.pg_password}@{self.pg_host}:{self.pg_port}/{dbname}"

    def pg_env(self) -> dict[str, str]:
        """PG* variables for a libpq tool (psql, pg_dump) as `runbook`, password in PGPASSWORD."""
        return {
            "PGHOST": self.pg_host,
            "PGPORT": str(self.pg_port),
            "PGUSER": self.pg_user,
            "PGPASSWORD": self.pg_password,
        }

    def ha_admin_dsn(self, node: str, dbname: str = "postgres") -> str:
        """libpq URI for the superuser `dr_admin` to `dbname` on node `node` of the pair, password
        included: keep it out of logs."""
        if not self.ha_nodes or node not in self.ha_nodes:
            known = ", ".join(sorted(self.ha_nodes or {})) or "none: the sandbox has no replicated pair"
            raise ConfigError(f"node {node!r} is not in the replicated pair; known: {known}")
        where = self.ha_nodes[node]
        return f"postgresql://dr_admin:{self.ha_admin_password}@{where['host']}:{where['port']}/{dbname}"

    def azure_dsn(self, dbname: str = "fleetdb") -> str:
        """libpq URI for the fake Azure servers' administrator to `dbname` on fleet-pg, password
        included: keep it out of logs."""
        return (f"postgresql://{self.azure_admin_user}:{self.azure_admin_password}@{self.azure_fqdn}:{self.azure_pg_port}"
                f"/{dbname}?sslmode=disable")

    def secret_env(self) -> dict[str, str]:
        """The environment variables sandbox.yaml refers to, with their values."""
        env = {
            ENV_PG_DSN: self.pg_admin_dsn("postgres"),
            ENV_S3_ACCESS_KEY: self.s3_access_key,
            ENV_S3_SECRET_KEY: self.s3_secret_key,
        }
        if self.ha_nodes:
            env.update({var: self.ha_admin_dsn(node) for node, var in HA_DSN_ENV.items() if node in self.ha_nodes})
            if self.ha_app_password:
                env[ENV_HA_APP_PASSWORD] = self.ha_app_password
        if self.azure_arm_url and self.azure_identity_header and self.azure_admin_password:
            env.update({ENV_IDENTITY_ENDPOINT: f"{self.azure_arm_url}/msi/token",
                        ENV_IDENTITY_HEADER: self.azure_identity_header,
                        ENV_AZURE_ADMIN_PASSWORD: self.azure_admin_password, ENV_AZURE_DSN: self.azure_dsn()})
        return env

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing messages."""
        return [s for s in (self.pg_password, self.s3_secret_key, self.prefect_db_password, self.ha_admin_password,
                            self.ha_replicator_password, self.ha_app_password, self.azure_identity_header,
                            self.azure_admin_password) if s]

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SandboxState:
        raw: dict[str, Any] = json.loads(text)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name in _PATH_FIELDS and value is not None:
                value = Path(value)
            kwargs[f.name] = value
        return cls(**kwargs)


_PATH_FIELDS = frozenset({
    "workdir", "pg_data_dir", "pg_bin", "backup_dir", "environment_file", "kubeconfig", "proxy_kubeconfig",
    "pgbackrest_config", "pgbackrest_restore_dir", "pgbackrest_posix_repo", "tls_ca_file", "ha_dir", "ha_passfile",
    "azure_dir", "azure_environment_file",
})


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), atomically: it holds secrets."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    os.replace(tmp, path)


def save_state(state: SandboxState) -> None:
    write_private(state.workdir / STATE_FILE, state.to_json())


def load_state(workdir: Path) -> SandboxState | None:
    """The state of the sandbox in `workdir`, None if there is none."""
    path = Path(workdir) / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PermanentError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return SandboxState.from_json(text)
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"{path} is damaged ({exc.__class__.__name__}); run `python -m sandbox down` to clean up") from None
