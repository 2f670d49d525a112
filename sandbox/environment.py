"""The `sandbox` environment config: what runbooks act on when pointed at the sandbox.

It has the same shape as a production environment file (see tasks/config.py) and
names its secrets by environment variable only; `source <workdir>/sandbox.env`
provides them. `through_proxies` makes a variant whose S3 and Kubernetes traffic goes
through the sandbox's fault proxies (sandbox/faultproxy.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sandbox.state import (
    ENV_AZURE_ADMIN_PASSWORD,
    ENV_AZURE_DSN,
    ENV_PG_DSN,
    ENV_S3_ACCESS_KEY,
    ENV_S3_SECRET_KEY,
    ENV_WEBHOOK_URL,
    HA_DSN_ENV,
    SandboxState,
    write_private,
)
from tasks.config import EnvironmentConfig, format_validation_error
from tasks.errors import ConfigError

S3_PREFIX = "sandbox"
AZURE_ENVIRONMENT = "sandbox-azure"


def environment_dict(state: SandboxState, name: str = "sandbox") -> dict[str, Any]:
    """The environment config for this sandbox as plain data (tests tweak it to make variants)."""
    doc: dict[str, Any] = {
        "name": name,
        "timezone": "UTC",
        "protected": False,
        "backup_concurrency": 2,
        "databases": {
            "fleet": {
                "dsn": {"env": ENV_PG_DSN},
                "storage": {
                    "url": f"s3://{state.s3_bucket}/{S3_PREFIX}",
                    "s3": {
                        "endpoint_url": state.s3_endpoint,
                        "region": state.s3_region,
                        "access_key_id": {"env": ENV_S3_ACCESS_KEY},
                        "secret_access_key": {"env": ENV_S3_SECRET_KEY},
                        "part_size_mb": 5,
                    },
                },
                "format": "custom",
                "jobs": 2,
                "retention": {"daily": 7, "weekly": 4, "monthly": 12},
                "objectives": {"rto": "1h", "rpo": "25h"},
                "restore_test": {
                    "jobs": 2,
                    "smoke_queries": [
                        {"name": "vehicles exist", "sql": "SELECT count(*) FROM vehicles", "min": 1},
                        {
                            "name": "no trips of missing vehicles",
                            "sql": "SELECT count(*) FROM trips t LEFT JOIN vehicles v ON v.id = t.vehicle_id "
                            "WHERE v.id IS NULL",
                            "equals": 0,
                        },
                        {
                            "name": "trips have a newest start",
                            "sql": "SELECT (max(started_at) IS NOT NULL)::int FROM trips",
                            "equals": 1,
                        },
                    ],
                },
            },
            "pgbench": {
                "dsn": {"env": ENV_PG_DSN},
                "storage": {"url": f"file://{state.backup_dir}"},
                "format": "custom",
                "jobs": 2,
                "retention": {"days": 30},
                "objectives": {"rto": "30m", "rpo": "25h"},
                "restore_test": {
                    "jobs": 2,
                    "smoke_queries": [
                        {"name": "accounts exist", "sql": "SELECT count(*) FROM pgbench_accounts", "min": 1},
                    ],
                },
            },
        },
        **_kubernetes_part(state),
        **_clusters_part(state),
    }
    doc.update(_dr_part(state, services=doc.get("services") or {}))
    doc.update(_maintenance_part(state))
    if "services" in doc:  # the sample service `api` uses the fleet database
        doc["databases"]["fleet"]["apps"] = ["api"]
    return doc


def _clusters_part(state: SandboxState) -> dict[str, Any]:
    """The whole PostgreSQL server as a cluster with pgBackRest (physical backups, PITR)."""
    if not state.pgbackrest_config or not state.pgbackrest_stanza or not state.pgbackrest_restore_dir:
        return {}
    from sandbox.process import postgres_account, running_as_root

    return {"clusters": {"main": {
        "dsn": {"env": ENV_PG_DSN},
        "os_user": postgres_account().pw_name if running_as_root() else None,
        "pg_bin": str(state.pg_bin),
        "pgbackrest": {
            "stanza": state.pgbackrest_stanza,
            "config_file": str(state.pgbackrest_config),
            "repository": 1,  # S3 on moto, over TLS; 2 is a posix repository, for benchmarks
            "process_max": 2,
            "retention": {"daily": 7, "weekly": 4, "monthly": 6},
        },
        "restore": {
            "directory": str(state.pgbackrest_restore_dir),
            "ports": "54400-54499",
            "smoke_queries": {
                "fleet": [{"name": "vehicles exist", "sql": "SELECT count(*) FROM vehicles", "min": 1}],
                "pgbench": [{"name": "accounts exist", "sql": "SELECT count(*) FROM pgbench_accounts", "min": 1}],
            },
        },
        "objectives": {"rto": "30m", "rpo": "5m"},
    }}}


def _dr_part(state: SandboxState, services: dict[str, Any]) -> dict[str, Any]:
    """The replicated pair (sandbox/replication.py) as the `dr` section: pg-a preferred, DNS on
    moto's Route53, the orders service repointed through its ConfigMap (once `services` has
    it: sandbox/cluster.py seeds it); drills allowed."""
    if not state.ha_nodes or state.ha_passfile is None:
        return {}
    from sandbox import replication
    from sandbox.process import postgres_account, running_as_root

    dr: dict[str, Any] = {
        "os_user": postgres_account().pw_name if running_as_root() else None,
        "pg_bin": str(state.pg_bin),
        "preferred_primary": replication.PREFERRED,
        "database": replication.DATABASE,
        "replication": {"user": replication.REPLICATION_USER, "passfile": str(state.ha_passfile)},
        "nodes": {
            name: {"dsn": {"env": HA_DSN_ENV[name]}, "data_dir": node["data_dir"], "host": node["host"],
                   "port": node["port"], "dns_name": node["dns_name"]}
            for name, node in state.ha_nodes.items()
        },
        "lag": {"max_bytes": 16 * 2**20, "max_seconds": "30s"},
        "fencing": {"method": "stop"},
    }
    if state.route53_zone_id is not None and state.dns_record is not None:
        dr["dns"] = {
            "zone_id": state.route53_zone_id, "record": state.dns_record, "ttl": replication.TTL,
            "endpoint_url": state.s3_endpoint, "region": state.s3_region,
            "access_key_id": {"env": ENV_S3_ACCESS_KEY}, "secret_access_key": {"env": ENV_S3_SECRET_KEY},
        }
    if "orders" in services:
        dr["repoint"] = {"namespace": "sandbox", "kind": "configmap", "name": "orders-database",
                         "host_key": "PGHOST", "port_key": "PGPORT", "services": ["orders"]}
        dr["dr_site"] = {"namespace": "sandbox-dr", "deployments": {"orders": 2}}
    dr.update({
        "watch": {"failed_probes": 3, "probe_interval": "2s", "probe_timeout": "2s"},
        "objectives": {"rto": "30m", "rpo": "1m"},
    })
    return {
        "drills_allowed": True,
        "notify": {"webhook": {"env": ENV_WEBHOOK_URL}, "severity": "SEV-1"},
        "dr": dr,
    }


def _maintenance_part(state: SandboxState) -> dict[str, Any]:
    """A maintenance window open at any time (the sandbox is for trying things: each day's
    runs 26 hours, so a run always finds at least two left), maintenance mode through the
    Ingress `api` and the page's Service (sandbox/cluster.py), and the TLS terminator's
    certificate to check."""
    if not state.webapp_url:
        return {}
    from urllib.parse import urlparse

    from sandbox import cluster

    web = state.webapp_url.rstrip("/")
    maintenance: dict[str, Any] = {
        "mode": {"namespace": cluster.NAMESPACE, "ingress": cluster.API_INGRESS,
                 "page_service": cluster.MAINTENANCE_PAGE,
                 "page_url": f"{web}/ing/{cluster.NAMESPACE}/{cluster.API_INGRESS}/",
                 "page_marker": "down for maintenance", "settle": "10s"},
        "health_urls": [f"{web}/svc/{cluster.NAMESPACE}/api/health"],
        "tasks": [{"kind": "vacuum_analyze", "database": "fleet"},
                  {"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "5m"}],
    }
    if state.tls_s3_url and state.tls_ca_file:
        tls = urlparse(state.tls_s3_url)
        maintenance["certificates"] = [{"host": tls.hostname, "port": tls.port, "ca_file": str(state.tls_ca_file),
                                        "warn_days": 30, "fail_days": 7}]
        maintenance["tasks"].append({"kind": "check_certificates"})
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    return {
        "windows": {"maintenance": [{"name": "sandbox-any-time", "every": "week", "days": days, "at": "00:00",
                                     "duration": "26h"}]},
        "maintenance": maintenance,
    }


def _kubernetes_part(state: SandboxState) -> dict[str, Any]:
    if not state.kubeconfig or not state.webapp_url:
        return {}
    from sandbox.cluster import services_config

    return {"kubernetes": {"kubeconfig": str(state.kubeconfig)},
            "services": services_config(state.webapp_url, orders=bool(state.ha_nodes))}


def azure_environment_dict(state: SandboxState, name: str = AZURE_ENVIRONMENT) -> dict[str, Any]:
    """The `sandbox-azure` environment: fleetdb on the fake Azure flexible server fleet-pg
    (sandbox/azure_arm.py), its replica and virtual endpoint for failovers, signed in with
    DefaultAzureCredential through the fake's managed identity (IDENTITY_ENDPOINT/HEADER)."""
    if not state.azure_arm_url or not state.azure_pg_port or not state.azure_subscription_id:
        raise ConfigError(f"the sandbox in {state.workdir} has no fake Azure Resource Manager (it was started "
                          f"before it existed); run `python -m sandbox down --dir {state.workdir}` and then `up` again")
    from sandbox import azure_arm

    return {
        "name": name,
        "timezone": "UTC",
        "protected": False,
        "databases": {
            azure_arm.DATABASE: {
                "kind": "azure-flexible",
                "dsn": {"env": ENV_AZURE_DSN},
                "storage": {"url": f"file://{state.workdir}/azure-backups"},
                "retention": {"days": 7},
                "objectives": {"rto": "4h", "rpo": "24h"},
                "restore_test": {
                    "smoke_queries": [{"name": "vehicles present", "sql": "SELECT count(*) FROM vehicles", "min": 1}],
                },
                "azure": {
                    "subscription_id": state.azure_subscription_id,
                    "resource_group": azure_arm.RESOURCE_GROUP,
                    "server": azure_arm.SERVER,
                    "location": azure_arm.LOCATION,
                    "endpoint": state.azure_arm_url,
                    "credential": {"kind": "default"},
                    "admin_user": state.azure_admin_user or azure_arm.ADMIN_USER,
                    "admin_password": {"env": ENV_AZURE_ADMIN_PASSWORD},
                    "port": state.azure_pg_port,
                    "sslmode": "disable",
                    "replica": azure_arm.REPLICA,
                    "virtual_endpoint": azure_arm.VIRTUAL_ENDPOINT,
                },
            },
        },
    }


def environment_text(state: SandboxState, name: str = "sandbox",
                     build: Callable[[SandboxState, str], dict[str, Any]] = environment_dict) -> str:
    """The YAML file `write_environment` writes (`build` makes its data), validated first.

    Validation comes first, so a file that `load_environment` would refuse is never written.
    """
    data = build(state, name)
    try:
        EnvironmentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(f"environment {name!r}", exc)) from None
    header = (
        f"# Environment {name!r} for the sandbox in {state.workdir}, written by `python -m sandbox up`.\n"
        f"# Secrets: `source {state.workdir}/sandbox.env`. `python -m sandbox down` removes this file unless edited.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_environment(state: SandboxState, path: Path, name: str = "sandbox",
                      build: Callable[[SandboxState, str], dict[str, Any]] = environment_dict) -> Path:
    """Write the environment config for this sandbox (`build`'s) as YAML to `path`; returns the path."""
    text = environment_text(state, name, build)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# --- through the fault proxies ------------------------------------------------------------------


def write_kubeconfig_via(kubeconfig: Path, server: str, path: Path) -> Path:
    """Write a copy of `kubeconfig` whose clusters' server is `server` (a fault proxy in front
    of the API server), readable by its owner only as it may hold a token; returns `path`."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for entry in config.get("clusters") or []:
        entry["cluster"]["server"] = server
    write_private(Path(path), yaml.safe_dump(config, sort_keys=False))
    return Path(path)


def through_proxies(state: SandboxState) -> Callable[[dict[str, Any]], None]:
    """An edit for an environment dict that sends its S3 and Kubernetes traffic through the
    sandbox's fault proxies: every S3 endpoint that is moto's becomes the S3 proxy, and the
    kubeconfig becomes the one whose server is the Kubernetes proxy. Everything else (the
    databases, the sample service's URLs) stays as it is.

    In a test: `make_environment("x", through_proxies(sandbox))`, then add rules with
    `FaultProxyClient(sandbox.s3_proxy_control_url)`."""
    if state.s3_proxy_url is None or state.kube_proxy_url is None or state.proxy_kubeconfig is None:
        raise ConfigError(
            f"the sandbox in {state.workdir} has no fault proxies (it was started before they existed); "
            f"run `python -m sandbox down --dir {state.workdir}` and then `up` again"
        )
    s3_proxy, kubeconfig = state.s3_proxy_url, str(state.proxy_kubeconfig)

    def edit(doc: dict[str, Any]) -> None:
        for database in (doc.get("databases") or {}).values():
            s3 = (database.get("storage") or {}).get("s3")
            if s3 is not None and s3.get("endpoint_url") == state.s3_endpoint:
                s3["endpoint_url"] = s3_proxy
        if "kubernetes" in doc:
            doc["kubernetes"]["kubeconfig"] = kubeconfig

    return edit


def environment_dict_through_proxies(state: SandboxState, name: str = "sandbox") -> dict[str, Any]:
    """`environment_dict`, with S3 and Kubernetes traffic through the fault proxies."""
    doc = environment_dict(state, name)
    through_proxies(state)(doc)
    return doc
