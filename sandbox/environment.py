"""The `sandbox` environment config: what runbooks act on when pointed at the sandbox.

It has the same shape as a production environment file (see tasks/config.py) and
names its secrets by environment variable only; `source <workdir>/sandbox.env`
provides them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sandbox.state import ENV_PG_DSN, ENV_S3_ACCESS_KEY, ENV_S3_SECRET_KEY, SandboxState
from tasks.config import EnvironmentConfig, format_validation_error
from tasks.errors import ConfigError

S3_PREFIX = "sandbox"


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
    }
    if "services" in doc:  # the sample service `api` uses the fleet database
        doc["databases"]["fleet"]["apps"] = ["api"]
    return doc


def _kubernetes_part(state: SandboxState) -> dict[str, Any]:
    if not state.kubeconfig or not state.webapp_url:
        return {}
    from sandbox.cluster import services_config

    return {"kubernetes": {"kubeconfig": str(state.kubeconfig)}, "services": services_config(state.webapp_url)}


def environment_text(state: SandboxState, name: str = "sandbox") -> str:
    """The YAML file `write_environment` writes, validated first.

    Validation comes first, so a file that `load_environment` would refuse is never written.
    """
    data = environment_dict(state, name)
    try:
        EnvironmentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(f"environment {name!r}", exc)) from None
    header = (
        f"# Environment {name!r} for the sandbox in {state.workdir}, written by `python -m sandbox up`.\n"
        f"# Secrets: `source {state.workdir}/sandbox.env`. `python -m sandbox down` removes this file unless edited.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_environment(state: SandboxState, path: Path, name: str = "sandbox") -> Path:
    """Write the environment config for this sandbox as YAML to `path`; returns the path."""
    text = environment_text(state, name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
