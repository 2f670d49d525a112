"""The databases a Service's pods point at, and whether each one takes writes.

A pod's containers carry the environment they started with in the kubelet's annotations
(sandbox/kube/kubelet.py): `sandbox.runbook.dev/env` holds literal and ConfigMap-sourced
values, `sandbox.runbook.dev/env-secrets` names the Secret key of each Secret-sourced one.
A container with PGHOST points at a database (PGPORT, else libpq's 5432).

- `database_targets(pods)`: each distinct host:port the pods point at, with where its
  PGUSER, PGPASSWORD and PGDATABASE come from (the first pod by name that points there).
- `DatabaseChecker.check(target, read_secret)`: logs in with the credentials (Secrets read
  live through `read_secret`) and asks whether the server is in recovery or refuses writes
  (`default_transaction_read_only`, which is how a DR failover fences the old primary),
  within `timeout`; each result is kept for `ttl` seconds, so health polling does not
  hammer PostgreSQL.
- `database_verdict(code, body, results)`: the /health answer with the databases in it,
  as pure logic.

A password never leaves this module: messages have it replaced, and the results hold no
credential.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from sandbox.kube.podenv import ENV_ANNOTATION, ENV_SECRETS_ANNOTATION
from sandbox.process import scrub

CREDENTIALS = ("PGUSER", "PGPASSWORD", "PGDATABASE")
DEFAULT_PORT = "5432"

State = Literal["ok", "read-only", "unreachable"]
# (namespace, name) -> the Secret's data, decoded, or None if there is no such Secret
ReadSecret = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


@dataclass(frozen=True)
class DatabaseTarget:
    """A database pods point at. `values` are the credentials given in plain (a literal or a
    ConfigMap key), `secrets` the (variable, Secret, key) of those from a Secret."""

    namespace: str
    host: str
    port: str
    values: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str, str], ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DatabaseCheck:
    state: State
    detail: str | None = None  # why it is unreachable or read-only: no password in it


def _annotation(pod: Mapping[str, Any], key: str) -> dict[str, Any]:
    text = (pod["metadata"].get("annotations") or {}).get(key)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def database_targets(pods: Iterable[Mapping[str, Any]]) -> tuple[DatabaseTarget, ...]:
    """The distinct databases the pods' containers point at, by address."""
    found: dict[str, DatabaseTarget] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        namespace = pod["metadata"].get("namespace", "")
        env, secrets = _annotation(pod, ENV_ANNOTATION), _annotation(pod, ENV_SECRETS_ANNOTATION)
        for container in sorted(env):
            values = env[container] if isinstance(env[container], dict) else {}
            refs = secrets.get(container) if isinstance(secrets.get(container), dict) else {}
            if not values.get("PGHOST"):
                continue
            target = DatabaseTarget(
                namespace=namespace,
                host=str(values["PGHOST"]),
                port=str(values.get("PGPORT") or DEFAULT_PORT),
                values=tuple((k, str(values[k])) for k in CREDENTIALS if k in values),
                secrets=tuple(
                    (k, str(refs[k].get("secret")), str(refs[k].get("key")))
                    for k in CREDENTIALS
                    if isinstance(refs.get(k), dict)
                ),
            )
            found.setdefault(target.address, target)
    return tuple(found[a] for a in sorted(found))


def decode_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data, base64-decoded; keys that do not decode are left out."""
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            continue
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


class CredentialsProblem(Exception):
    """A credential the pods name is not there: a Secret, a key or a variable is missing."""


async def credentials(target: DatabaseTarget, read_secret: ReadSecret) -> dict[str, str]:
    """PGUSER, PGPASSWORD and PGDATABASE for `target`, reading its Secrets now."""
    found = dict(target.values)
    secrets: dict[str, Mapping[str, str] | None] = {}
    for var, name, key in target.secrets:
        if name not in secrets:
            secrets[name] = await read_secret(target.namespace, name)
        data = secrets[name]
        if data is None:
            raise CredentialsProblem(f"{var}: secret {target.namespace}/{name} not found")
        if key not in data:
            raise CredentialsProblem(f"{var}: no key {key!r} in secret {target.namespace}/{name}")
        found[var] = data[key]
    missing = [k for k in CREDENTIALS if not found.get(k)]
    if missing:
        raise CredentialsProblem(f"the pods' environment has no {', '.join(missing)}")
    return found


class DatabaseChecker:
    """Whether a database answers and takes writes, each answer cached `ttl` seconds."""

    def __init__(self, *, timeout: float = 1.0, ttl: float = 0.5) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self._cache: dict[DatabaseTarget, tuple[float, DatabaseCheck]] = {}
        self._locks: dict[DatabaseTarget, asyncio.Lock] = {}

    async def check(self, target: DatabaseTarget, read_secret: ReadSecret) -> DatabaseCheck:
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:  # concurrent health calls share one probe
            cached = self._cache.get(target)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            result = await self._probe(target, read_secret)
            self._cache[target] = (time.monotonic() + self.ttl, result)
            return result

    async def _probe(self, target: DatabaseTarget, read_secret: ReadSecret) -> DatabaseCheck:
        try:
            creds = await credentials(target, read_secret)
        except CredentialsProblem as exc:
            return DatabaseCheck("unreachable", str(exc))
        password = creds["PGPASSWORD"]
        try:
            async with asyncio.timeout(self.timeout):
                conn = await psycopg.AsyncConnection.connect(
                    host=target.host,
                    port=target.port,
                    user=creds["PGUSER"],
                    password=password,
                    dbname=creds["PGDATABASE"],
                    connect_timeout=max(2, int(self.timeout)),  # libpq's floor; the timeout above is ours
                    application_name="sandbox-webapp-health",
                    autocommit=True,
                )
                async with conn:
                    cur = await conn.execute(
                        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool"
                    )
                    row = await cur.fetchone()
        except TimeoutError:
            return DatabaseCheck("unreachable", f"no answer within {self.timeout:g} s")
        except psycopg.Error as exc:
            return DatabaseCheck("unreachable", scrub(_first_line(exc), [password]))
        in_recovery, read_only = row or (False, False)
        if in_recovery:
            return DatabaseCheck("read-only", "in recovery")
        if read_only:
            return DatabaseCheck("read-only", "default_transaction_read_only is on")
        return DatabaseCheck("ok")


def database_verdict(
    code: int, body: Mapping[str, Any], results: Mapping[str, DatabaseCheck]
) -> tuple[int, dict[str, Any]]:
    """The /health answer once the databases are checked: healthy only if every database the
    pods point at answers and takes writes (not in recovery, not fenced read-only). A version problem (`code` 503) keeps its
    reason; the databases are reported either way."""
    out = {**body, "databases": {address: results[address].state for address in sorted(results)}}
    problems = []
    for address in sorted(results):
        check = results[address]
        if check.state == "read-only":
            problems.append(f"database {address} is read-only ({check.detail or 'in recovery'})")
        elif check.state == "unreachable":
            problems.append(f"database {address} unreachable: {check.detail or 'no answer'}")
    if code != 200 or not problems:
        return code, out
    return 503, {**out, "status": "unhealthy", "reason": "; ".join(problems)}
