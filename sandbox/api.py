"""The sandbox from Python: `up`, `down`, `status`, `load_state`, and its environment config.

`up` starts a disposable stand-in for production on loopback: a PostgreSQL 15
primary with a realistic `fleet` database and a `pgbench` database, a separate
streaming-replicated pair (pg-a, pg-b) with an `orders` database for DR flows, and
moto's S3 server with the backup bucket and a Route53 zone for the pair. The primary
archives its WAL with pgBackRest (stanza `sandbox`) to the bucket, through a TLS
terminator in front of moto, and to a posix repository. It writes `<workdir>/state.json` and
`<workdir>/sandbox.env` (both 0600, they hold the secrets) and the `sandbox`
environment config. If anything fails on the way, it stops what it started and
removes the work dir, so a failed `up` leaves nothing behind.

Work dir layout:
    .runbook-sandbox   marker: this dir belongs to a sandbox (`down` removes only such dirs)
    state.json         SandboxState
    sandbox.env        `export` lines for the secrets sandbox.yaml names
    pg/                the cluster, owned by the PostgreSQL account: data/, postgres.log, socket
    ha/                the replicated pair DR flows fail over (sandbox/replication.py): pgpass,
                       pg-a/ and pg-b/ (each node.conf, data/, postgres.log, socket)
    moto.log, moto.pid the S3 server
    kube/, webapp/     the fake Kubernetes API server and the sample web service
    faultproxy-s3/     the fault proxy in front of moto (sandbox/faultproxy.py)
    faultproxy-kube/   the fault proxy in front of the API server, and kubeconfig through it
    tls/               the TLS terminator in front of moto (sandbox/tls.py): cert.pem (also the CA
                       file), key.pem, tls.json, tls.log
    pgbackrest/        pgbackrest.conf (0600), repo/ (repo2), restores/ (scratch instances of flows),
                       log/, lock/, spool/; owned by the PostgreSQL account (sandbox/pgbackrest.py)
    prefect/           `prefect up`'s Prefect server and workers: logs, PREFECT_HOMEs, results
    backups/           target of the file:// storage in sandbox.yaml
    azure/             the fake Azure Resource Manager (sandbox/azure_arm.py): azure_arm.json, .log,
                       pg/ (its servers' clusters, sandbox/azure_pg.py), backups/ (its Azure backups)
    azure-backups/     target of the file:// storage in sandbox-azure.yaml (the logical dumps)
"""

from __future__ import annotations

import http.client
import os
import secrets
import shlex
import shutil
import string
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from sandbox import (
    azure_arm,
    cluster,
    faultproxy,
    orchestration,
    pgbackrest,
    postgres,
    replication,
    s3,
    sampledata,
    tls,
)
from sandbox.environment import (
    AZURE_ENVIRONMENT,
    azure_environment_dict,
    environment_dict,
    environment_text,
    write_environment,
    write_kubeconfig_via,
)
from sandbox.process import cmdline, free_port, pid_alive, scrub
from sandbox.state import (
    ENV_FILE,
    MARKER_FILE,
    STATE_FILE,
    SandboxState,
    load_state,
    save_state,
    write_private,
)
from tasks.config import REPO_ROOT
from tasks.errors import ConfigError, PermanentError, RunbookError

__all__ = [
    "SandboxState",
    "default_workdir",
    "down",
    "environment_dict",
    "is_running",
    "load_state",
    "status",
    "up",
    "write_environment",
]

DEFAULT_DIR = Path("/tmp/runbook-flows-sandbox")
PG_USER = "runbook"
BUCKET = "runbook-backups"
DATABASES = ("fleet", "pgbench")
PORT_ATTEMPTS = 3
S3_PROXY_DIR = "faultproxy-s3"
KUBE_PROXY_DIR = "faultproxy-kube"
TLS_DIR = "tls"
AZURE_DIR = "azure"
_SOCKET_NAME_MAX = 107 - len("/.s.PGSQL.65535")  # sun_path is 108 bytes including the NUL


def default_workdir() -> Path:
    """$RUNBOOK_SANDBOX_DIR, or /tmp/runbook-flows-sandbox."""
    return Path(os.environ.get("RUNBOOK_SANDBOX_DIR") or DEFAULT_DIR)


def _workdir(workdir: Path | str | None) -> Path:
    return Path(workdir or default_workdir()).expanduser().absolute()


# --- up ----------------------------------------------------------------------------------


def up(workdir: Path | None = None, size_mb: int = 64, environments_dir: Path | None = None) -> SandboxState:
    """Start the sandbox in `workdir` and return its state; if it already runs, return that
    as it is (size_mb and environments_dir then change nothing).

    `size_mb` is the approximate size of the `fleet` database (8 to 16384).
    `environments_dir` receives sandbox.yaml (default: the repo's environments/,
    where git ignores it). Raises ConfigError for bad arguments or a work dir that
    is not ours, PermanentError when something does not start.
    """
    workdir = _workdir(workdir)
    sampledata.check_size_mb(size_mb)
    existing = load_state(workdir)
    if existing is not None:
        report = status(workdir)
        if report["healthy"]:
            return existing
        pieces = {**report["components"], **report["archiving"], **report["proxies"], **report["azure"],
                  **report["replication"], **report["prefect"]}
        broken = ", ".join(f"{name}: {c['detail']}" for name, c in pieces.items() if not c["ok"])
        if all(c["ok"] for c in (*report["components"].values(), *report["archiving"].values(),
                                 *report["proxies"].values(), *report["azure"].values(),
                                 *report["replication"].values())):
            fix = f"run `python -m sandbox prefect down --dir {workdir}` and then `prefect up` again"
        elif all(c["ok"] for c in (*report["components"].values(), *report["archiving"].values(),
                                   *report["proxies"].values(), *report["azure"].values())):
            fix = "put the pair back with `sandbox.replication.reset(state)`, or `down` and `up` again"
        else:
            fix = f"run `python -m sandbox down --dir {workdir}` and then `up` again"
        raise PermanentError(f"the sandbox in {workdir} is partly down ({broken}); {fix}")
    env_dir = Path(environments_dir) if environments_dir is not None else REPO_ROOT / "environments"
    bin_dir = postgres.pg_bin()
    postgres.postgres_account()  # fails early, with advice, if root has no 'postgres' account
    if len(str(workdir / replication.DIR / replication.NODES[0])) > _SOCKET_NAME_MAX:  # the longest socket dir
        raise ConfigError(
            f"work dir {workdir} is too long for PostgreSQL's unix socket path "
            f"(at most {_SOCKET_NAME_MAX - 3} characters); choose a shorter one"
        )
    _claim(workdir)
    try:
        return _start(workdir, size_mb, env_dir, bin_dir)
    except BaseException:
        # Anything half-started goes, even on Ctrl-C; the original error is what matters.
        try:
            _stop_everything(workdir, None, bin_dir)
            shutil.rmtree(workdir, ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass
        raise


def _claim(workdir: Path) -> None:
    """Make `workdir` ours: create it (or take an empty one) and write the marker file."""
    if workdir.is_symlink():
        raise ConfigError(f"work dir {workdir} is a symbolic link; give a real directory")
    if workdir.exists():
        if not workdir.is_dir():
            raise ConfigError(f"work dir {workdir} exists and is not a directory")
        if workdir.stat().st_uid != os.geteuid():
            # /tmp is shared: a dir someone else made could be tampered with under us.
            raise ConfigError(f"work dir {workdir} belongs to another user; give a new directory")
        if (workdir / MARKER_FILE).exists():
            raise PermanentError(
                f"{workdir} holds a sandbox that did not finish starting or stopping; "
                f"run `python -m sandbox down --dir {workdir}` first"
            )
        if any(workdir.iterdir()):
            raise ConfigError(f"work dir {workdir} exists and is not empty; give a new or empty directory")
    else:
        workdir.mkdir(parents=True)
    # 0711: the PostgreSQL account must pass through to pg/, but nobody else may list the dir.
    workdir.chmod(0o711)
    try:
        fd = os.open(workdir / MARKER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise PermanentError(f"another `up` is starting a sandbox in {workdir}") from None
    with os.fdopen(fd, "w") as out:
        out.write("Runbook Flows sandbox work dir; remove with `python -m sandbox down`\n")


def _start(workdir: Path, size_mb: int, env_dir: Path, bin_dir: Path) -> SandboxState:
    # The replicated pair builds in a thread of its own while the rest starts. Leaving waits for
    # it even on a failure, so `up`'s clean-up finds all it started.
    pair_pool = ThreadPoolExecutor(max_workers=2)  # the pair, and the fake Azure servers
    try:
        return _start_pieces(workdir, size_mb, env_dir, bin_dir, pair_pool)
    finally:
        pair_pool.shutdown(wait=True)


def _start_pieces(
    workdir: Path, size_mb: int, env_dir: Path, bin_dir: Path, pair_pool: ThreadPoolExecutor
) -> SandboxState:
    password = _token(32)
    access_key = "AKIA" + _token(16, string.ascii_uppercase + string.digits)
    secret_key = _token(40)
    pair_passwords = {"admin_password": _token(32), "replicator_password": _token(32), "app_password": _token(32)}
    azure_header, azure_password = _token(32), _token(32)
    hidden = [password, secret_key, *pair_passwords.values(), azure_header, azure_password]

    # moto takes a few seconds to import: start it first and build the clusters meanwhile.
    moto_port = free_port()
    moto = s3.start(workdir, moto_port)
    pair_building = pair_pool.submit(_create_pair, workdir, bin_dir, pair_passwords, hidden)
    # The fake Azure Resource Manager seeds its servers in its own process meanwhile.
    azure_starting = pair_pool.submit(_start_azure, workdir, bin_dir, azure_header, azure_password, hidden)

    pg_dir = workdir / "pg"
    # The TLS terminator in front of moto (and its certificate) starts meanwhile too: its port
    # goes into pgbackrest.conf, which must exist before PostgreSQL starts. Leaving the pool
    # waits for it even on a failure, so `up`'s clean-up finds it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        tls_starting = pool.submit(_start_tls, workdir, f"http://{s3.HOST}:{moto_port}", hidden)
        with _step("creating the PostgreSQL cluster", hidden):
            postgres.make_cluster_dir(pg_dir)
            data = postgres.init_cluster(pg_dir, bin_dir)
            archive = pgbackrest.prepare(workdir)
    terminator = tls_starting.result()

    def write_pgbackrest_config(pg_port: int, tls_port: int) -> Path:
        with _step("writing pgbackrest.conf", hidden):
            return pgbackrest.write_config(
                archive, data_dir=data, pg_port=pg_port, socket_dir=pg_dir, bucket=BUCKET, region=s3.REGION,
                access_key=access_key, secret_key=secret_key, tls_port=tls_port, ca_file=terminator.ca_file,
            )

    pg_port, pg_pid = 0, 0
    for attempt in range(PORT_ATTEMPTS):
        pg_port = free_port()
        pgbackrest_config = write_pgbackrest_config(pg_port, terminator.port)
        postgres.set_port(data, pg_dir, pg_port, archive_command=pgbackrest.archive_command(pgbackrest_config))
        try:
            pg_pid = postgres.start(data, pg_dir, bin_dir, pg_port)
            break
        except postgres.PortInUse:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    with _step(f"creating role {PG_USER!r}", hidden):
        postgres.create_login_role(pg_dir, pg_port, PG_USER, password)

    for attempt in range(PORT_ATTEMPTS):
        try:
            s3.wait_ready(moto, workdir, moto_port)
            break
        except s3.PortInUse:
            if attempt == PORT_ATTEMPTS - 1:
                raise
            moto_port = free_port()
            moto = s3.start(workdir, moto_port)
            # The terminator forwards to the old port: a new one, and its port in the config.
            tls.stop_detached(workdir / TLS_DIR)
            terminator = _start_tls(workdir, f"http://{s3.HOST}:{moto_port}", hidden)
            write_pgbackrest_config(pg_port, terminator.port)
    endpoint = f"http://{s3.HOST}:{moto_port}"
    s3.create_bucket(endpoint, access_key, secret_key, BUCKET)

    backups = workdir / "backups"
    backups.mkdir(mode=0o700)

    # The pair before the Kubernetes objects, which hold its address.
    pair = pair_building.result()

    # The stanza (stanza-create, then check: a WAL segment reaches both repositories) and the
    # pair's DNS zone while the Kubernetes pieces and the proxies start; all before the sample
    # data is loaded.
    with ThreadPoolExecutor(max_workers=2) as pool:
        stanza = pool.submit(_create_stanza, pgbackrest_config, hidden)
        dns = pool.submit(_create_dns, endpoint, access_key, secret_key, pair, hidden)
        with _step("starting the Kubernetes API server and the sample web service", hidden):
            kube = cluster.start(workdir)
        with _step("creating the orders app, pointed at the pair's primary", hidden):
            preferred = pair.nodes[replication.PREFERRED]
            cluster.seed_orders(kube.kubeconfig, host=replication.HOST, port=preferred.port, user=replication.APP_USER,
                                password=pair_passwords["app_password"], dbname=replication.DATABASE)
        with _step("starting the fault proxies in front of S3 and the Kubernetes API server", hidden):
            proxies = _start_proxies(workdir, endpoint, kube)
        stanza.result()
        dns_fields = dns.result()
    azure = _azure_ready(azure_starting.result(), hidden)

    state = SandboxState(
        workdir=workdir,
        size_mb=size_mb,
        pg_host=postgres.HOST,
        pg_port=pg_port,
        pg_user=PG_USER,
        pg_password=password,
        pg_data_dir=data,
        pg_bin=bin_dir,
        pg_pid=pg_pid,
        s3_endpoint=endpoint,
        s3_bucket=BUCKET,
        s3_region=s3.REGION,
        s3_access_key=access_key,
        s3_secret_key=secret_key,
        moto_pid=moto.pid,
        backup_dir=backups,
        environment_file=env_dir / "sandbox.yaml",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        kube_url=kube.kube_url,
        kube_pid=kube.kube_pid,
        kubeconfig=kube.kubeconfig,
        webapp_url=kube.webapp_url,
        webapp_pid=kube.webapp_pid,
        **proxies,
        pgbackrest_config=pgbackrest_config,
        pgbackrest_stanza=pgbackrest.STANZA,
        pgbackrest_restore_dir=archive.restores,
        pgbackrest_posix_repo=archive.repo,
        tls_s3_url=terminator.url,
        tls_pid=terminator.pid,
        tls_ca_file=terminator.ca_file,
        **pair.state_fields(),
        ha_admin_password=pair_passwords["admin_password"],
        ha_replicator_password=pair_passwords["replicator_password"],
        ha_app_password=pair_passwords["app_password"],
        **dns_fields,
        **azure,
        azure_identity_header=azure_header,
        azure_admin_password=azure_password,
        azure_environment_file=env_dir / f"{AZURE_ENVIRONMENT}.yaml",
    )
    with _step("loading the sample data", hidden):
        for db in DATABASES:
            sampledata.create_database(state.pg_admin_dsn(), db)
        sampledata.generate_fleet(state.pg_admin_dsn("fleet"), size_mb)
        sampledata.init_pgbench(str(bin_dir / "pgbench"), state.pg_host, pg_port, PG_USER, password, "pgbench")

    write_private(workdir / ENV_FILE, _env_file_text(state))
    config = write_environment(state, env_dir / "sandbox.yaml", "sandbox")
    try:
        write_environment(state, env_dir / f"{AZURE_ENVIRONMENT}.yaml", AZURE_ENVIRONMENT, azure_environment_dict)
        save_state(state)  # last: a state file means `up` finished
    except BaseException:
        # The work dir goes on failure; these files live elsewhere.
        config.unlink(missing_ok=True)
        (env_dir / f"{AZURE_ENVIRONMENT}.yaml").unlink(missing_ok=True)
        raise
    return state


def _start_tls(workdir: Path, upstream: str, hidden: list[str]) -> tls.DetachedTerminator:
    """The TLS terminator in front of moto at `upstream`, with a self-signed certificate made
    on the first start (in <workdir>/tls, readable by the PostgreSQL account's pgBackRest)."""
    with _step("starting the TLS terminator in front of S3", hidden):
        return tls.start_detached(workdir / TLS_DIR, upstream=upstream)


def _start_azure(workdir: Path, bin_dir: Path, header: str, password: str, hidden: list[str]) -> azure_arm.DetachedArm:
    """The fake Azure Resource Manager, serving; its seed (fleet-pg and the rest) still runs."""
    with _step("starting the fake Azure Resource Manager", hidden):
        (workdir / "azure-backups").mkdir(mode=0o700)
        return azure_arm.start_detached(workdir / AZURE_DIR, identity_header=header, admin_password=password,
                                        seed=azure_arm.sandbox_seed(), pg_bin=bin_dir, wait=False)


def _azure_ready(arm: azure_arm.DetachedArm, hidden: list[str]) -> dict[str, Any]:
    """Wait for the fake's seed; its SandboxState fields."""
    with _step("seeding the fake Azure flexible servers", hidden):
        arm.control.wait_ready()
        fqdn = arm.control.server(azure_arm.SERVER)["properties"]["fullyQualifiedDomainName"]
    return {"azure_arm_url": arm.url, "azure_arm_pid": arm.pid, "azure_dir": arm.state_dir,
            "azure_pg_port": arm.pg_port, "azure_subscription_id": azure_arm.SUBSCRIPTION, "azure_fqdn": fqdn,
            "azure_admin_user": azure_arm.ADMIN_USER}


def _create_pair(workdir: Path, bin_dir: Path, passwords: dict[str, str], hidden: list[str]) -> replication.Pair:
    with _step("creating the replicated pair pg-a/pg-b", hidden):
        return replication.create(workdir, bin_dir, **passwords)


def _create_dns(endpoint: str, access_key: str, secret_key: str, pair: replication.Pair,
                hidden: list[str]) -> dict[str, Any]:
    with _step(f"creating the Route53 zone {replication.ZONE}", hidden):
        return replication.create_dns(endpoint, access_key, secret_key, pair)


def _create_stanza(config: Path, hidden: list[str]) -> None:
    with _step(f"creating the pgBackRest stanza {pgbackrest.STANZA!r}", hidden):
        pgbackrest.stanza_create(config, hidden)


def _start_proxies(workdir: Path, s3_endpoint: str, kube: cluster.ClusterInfo) -> dict[str, Any]:
    """The fault proxies, as SandboxState fields. sandbox.yaml does not use them: a test
    opts in with `environment.through_proxies`."""
    # Each takes most of a second to start: side by side. On a failure the pool still waits
    # for the other, so `up`'s clean-up finds both.
    with ThreadPoolExecutor(max_workers=1) as pool:
        s3_starting = pool.submit(faultproxy.start_detached, workdir / S3_PROXY_DIR, upstream=s3_endpoint)
        kube_proxy = faultproxy.start_detached(workdir / KUBE_PROXY_DIR, upstream=kube.kube_url)
        s3_proxy = s3_starting.result()
    kubeconfig = write_kubeconfig_via(kube.kubeconfig, kube_proxy.url, workdir / KUBE_PROXY_DIR / "kubeconfig")
    return {
        "s3_proxy_url": s3_proxy.url, "s3_proxy_control_url": s3_proxy.control_url, "s3_proxy_pid": s3_proxy.pid,
        "kube_proxy_url": kube_proxy.url, "kube_proxy_control_url": kube_proxy.control_url,
        "kube_proxy_pid": kube_proxy.pid, "proxy_kubeconfig": kubeconfig,
    }


def _stop_proxies(workdir: Path) -> list[str]:
    actions = []
    for name, upstream in ((S3_PROXY_DIR, "S3"), (KUBE_PROXY_DIR, "the Kubernetes API server")):
        if (workdir / name).exists() and faultproxy.stop_detached(workdir / name):
            actions.append(f"stopped the fault proxy in front of {upstream}")
    return actions


def _token(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _env_file_text(state: SandboxState) -> str:
    lines = [f"# Runbook Flows sandbox in {state.workdir}: secrets for environments/sandbox.yaml", "# source this file"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in state.secret_env().items()]
    return "\n".join(lines) + "\n"


@contextmanager
def _step(what: str, hidden: list[str]) -> Iterator[None]:
    """Turn a library error into PermanentError naming the step, scrubbed of secrets.

    The original exception stays chained for debugging only if its text holds no
    secret; otherwise `from None` drops it, since a traceback would print it.
    """
    try:
        yield
    except RunbookError:
        raise
    except Exception as exc:
        text = str(exc)
        clean = scrub(text, hidden)
        kind = "" if isinstance(exc, psycopg.Error | OSError | BotoCoreError | ClientError) else f"{type(exc).__name__}: "
        error = PermanentError(f"{what}: {kind}{clean}")
        if clean != text:
            raise error from None
        raise error from exc


# --- down ----------------------------------------------------------------------------------


def down(workdir: Path | None = None) -> list[str]:
    """Stop everything the sandbox in `workdir` runs and remove the dir; returns what it did.

    Safe to call twice, and after a half-finished `up`. It refuses a non-empty dir
    that carries no sandbox marker, so a wrong --dir cannot delete your files.
    """
    workdir = _workdir(workdir)
    if not workdir.exists():
        return [f"no sandbox in {workdir}: nothing to do"]
    if not (workdir / MARKER_FILE).exists() and not (workdir / STATE_FILE).exists():
        if workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()
            return [f"removed empty {workdir}"]
        raise ConfigError(f"{workdir} is not a sandbox work dir (no {MARKER_FILE} in it); not touching it")
    try:
        state = load_state(workdir)
    except PermanentError:
        state = None  # damaged state: find the processes through their pid files instead
    actions = _stop_everything(workdir, state, None)
    if state is not None:
        for path, name, build in ((state.environment_file, "sandbox", environment_dict),
                                  (state.azure_environment_file, AZURE_ENVIRONMENT, azure_environment_dict)):
            if path is not None and _remove_if_ours(state, path, name, build):
                actions.append(f"removed {path}")
    shutil.rmtree(workdir)
    actions.append(f"removed {workdir}")
    return actions


def _stop_everything(workdir: Path, state: SandboxState | None, bin_dir: Path | None) -> list[str]:
    # The Prefect server first: it keeps connections to PostgreSQL open.
    actions = orchestration.stop_recorded(state) if state is not None else []
    if bin_dir is None:
        bin_dir = state.pg_bin if state else postgres.DEFAULT_PG_BIN
    # Scratch instances that flows restored and left running: their files are about to go.
    restores = (state.pgbackrest_restore_dir if state else None) or pgbackrest.layout(workdir).restores
    actions += pgbackrest.stop_orphans(restores, bin_dir)
    actions += _stop_proxies(workdir) + cluster.stop(workdir)
    if (workdir / AZURE_DIR).exists():
        actions += azure_arm.stop_detached(workdir / AZURE_DIR, bin_dir=bin_dir)
    actions += replication.stop_all(workdir, state, bin_dir)  # whatever flows made of it
    data = state.pg_data_dir if state else workdir / "pg" / "data"
    # A fast shutdown lets the archiver try the WAL still waiting; with S3 unreachable each
    # archive-push retries for many seconds (three of them: ~40 s). The dir goes anyway.
    modes = ("fast", "immediate") if _archive_reachable(state) else ("immediate",)
    pid = postgres.stop(data, data.parent, bin_dir, state.pg_port if state else None, modes=modes)
    if pid is not None:
        if pid_alive(pid):
            raise PermanentError(f"PostgreSQL (pid {pid}) did not stop; {workdir} is left in place")
        actions.append(f"stopped PostgreSQL (pid {pid})")
    # After PostgreSQL: its last archive-push may still need S3.
    if (workdir / TLS_DIR).exists() and tls.stop_detached(workdir / TLS_DIR):
        actions.append("stopped the TLS terminator in front of S3")
    moto_pid = s3.stop(workdir, state.moto_pid if state else None)
    if moto_pid is not None:
        actions.append(f"stopped moto S3 (pid {moto_pid})")
    return actions


def _archive_reachable(state: SandboxState | None) -> bool:
    """Whether archive-push can reach the S3 repository: moto answers through the terminator."""
    if state is None or state.tls_s3_url is None or state.tls_ca_file is None:
        return True  # unknown (a damaged state file, an older sandbox): the usual fast shutdown
    try:
        tls.check(state.tls_s3_url, state.tls_ca_file, timeout=2)
    except (OSError, http.client.HTTPException):
        return False
    return True


def _remove_if_ours(state: SandboxState, path: Path, name: str, build: Any) -> bool:
    """Remove an environment file if it is still the one this sandbox wrote (not edited, not newer)."""
    try:
        if path.read_text() == environment_text(state, name, build):
            path.unlink()
            return True
    except (OSError, RunbookError):
        pass
    return False


# --- status ----------------------------------------------------------------------------------


def is_running(workdir: Path | None = None) -> bool:
    """Whether a sandbox in `workdir` finished `up` and every piece answers."""
    return bool(status(workdir)["healthy"])


def status(workdir: Path | None = None) -> dict[str, Any]:
    """Each piece of the sandbox and whether it answers, with no secret in it.

    {"workdir", "healthy", "components": {"postgres"|"s3"|"kubernetes"|"webapp": {"ok", "address",
     "pid", "detail"}}, "archiving": {"s3-tls"|"pgbackrest": {...the same}}, "proxies":
     {"s3-proxy"|"kube-proxy": {...the same}}, "azure": {"azure-arm": {...the same}}, "replication":
     {"ha"|"dns": {...the same; ha also
     "nodes": {"pg-a"|"pg-b": {"role", "port", "pid", "replication" on the primary}}}},
     "prefect": {"prefect"|"worker-N": {...the same}}, "environment_file"}; components is empty
    when there is no sandbox, archiving in a sandbox from before pgBackRest, azure before the fake
    Azure Resource Manager, replication before the pair, prefect while `prefect up` has not run. `healthy` counts them all.
    """
    workdir = _workdir(workdir)
    state = load_state(workdir)
    if state is None:
        return {"workdir": str(workdir), "healthy": False, "components": {}, "archiving": {}, "proxies": {},
                "azure": {}, "replication": {}, "prefect": {}, "environment_file": None}
    hidden = state.secrets()
    components: dict[str, dict[str, Any]] = {}

    pg_pid = postgres.postmaster_pid(state.pg_data_dir)
    try:
        detail, ok = postgres.check(state.pg_admin_dsn()), True
        if pg_pid is None:
            detail, ok = f"something answers on port {state.pg_port}, but not our server (no postmaster.pid)", False
    except psycopg.Error as exc:
        detail, ok = _first_line(exc, hidden), False
    components["postgres"] = {"ok": ok, "address": f"{state.pg_host}:{state.pg_port}", "pid": pg_pid, "detail": detail}

    moto_pid = state.moto_pid if pid_alive(state.moto_pid) else None
    try:
        detail, ok = s3.check(state.s3_endpoint, state.s3_access_key, state.s3_secret_key, state.s3_bucket), True
        if moto_pid is None:
            detail, ok = f"something answers at {state.s3_endpoint}, but our moto (pid {state.moto_pid}) is gone", False
    except (BotoCoreError, ClientError) as exc:
        detail, ok = _first_line(exc, hidden), False
    components["s3"] = {"ok": ok, "address": state.s3_endpoint, "pid": moto_pid, "detail": detail}

    for name, url, pid, probe in (("kubernetes", state.kube_url, state.kube_pid, "/version"),
                                  ("webapp", state.webapp_url, state.webapp_pid, "/healthz")):
        if url is not None:
            components[name] = _http_component(url, url, probe, pid)
    proxies = {
        name: _http_component(url, control, "/healthz", pid)
        for name, url, control, pid in (
            ("s3-proxy", state.s3_proxy_url, state.s3_proxy_control_url, state.s3_proxy_pid),
            ("kube-proxy", state.kube_proxy_url, state.kube_proxy_control_url, state.kube_proxy_pid),
        )
        if url is not None and control is not None
    }

    archiving = _archiving_components(state, hidden, s3_ok=components["s3"]["ok"])
    azure = _azure_components(state)
    pair = replication.describe(state, dns_reachable=components["s3"]["ok"]) if state.ha_nodes else {}
    prefect = _prefect_components(state)
    return {
        "workdir": str(workdir),
        "healthy": all(c["ok"] for c in (*components.values(), *archiving.values(), *proxies.values(),
                                         *azure.values(), *pair.values(), *prefect.values())),
        "components": components,
        "archiving": archiving,
        "proxies": proxies,
        "azure": azure,
        "replication": pair,
        "prefect": prefect,
        "environment_file": str(state.environment_file) if state.environment_file else None,
    }


def _archiving_components(state: SandboxState, hidden: list[str], *, s3_ok: bool) -> dict[str, dict[str, Any]]:
    """The TLS terminator in front of moto and pgBackRest's stanza, as status pieces.

    pgBackRest is asked only when its S3 repository can answer: otherwise `info` retries
    the connection for many seconds, and a timeout would leave it running behind runuser."""
    pieces: dict[str, dict[str, Any]] = {}
    if state.tls_s3_url is not None and state.tls_ca_file is not None:
        pid = state.tls_pid if pid_alive(state.tls_pid) and "sandbox.tls" in cmdline(state.tls_pid or 0) else None
        try:
            detail = tls.check(state.tls_s3_url, state.tls_ca_file)
            ok = pid is not None
            if not ok:
                detail = f"something answers at {state.tls_s3_url}, but our terminator (pid {state.tls_pid}) is gone"
        except (OSError, http.client.HTTPException) as exc:
            detail, ok = _first_line(exc, hidden) or type(exc).__name__, False
        pieces["s3-tls"] = {"ok": ok, "address": state.tls_s3_url, "pid": pid, "detail": detail}
    if state.pgbackrest_config is not None:
        reachable = s3_ok and pieces.get("s3-tls", {"ok": True})["ok"]
        ok, detail = (pgbackrest.describe(state.pgbackrest_config, hidden) if reachable else
                      (False, "not asked: its S3 repository (s3, through s3-tls) does not answer"))
        pieces["pgbackrest"] = {"ok": ok, "address": str(state.pgbackrest_config), "pid": None,
                                "detail": scrub(detail, hidden)}
    return pieces


def _azure_components(state: SandboxState) -> dict[str, dict[str, Any]]:
    """The fake Azure Resource Manager as a status piece (none in an older sandbox): ok when its
    control API says it is ready and its process lives; the detail names each server's state."""
    if state.azure_arm_url is None:
        return {}
    piece = _http_component(state.azure_arm_url, state.azure_arm_url, "/_control/healthz", state.azure_arm_pid)
    if piece["ok"]:
        try:
            seen = azure_arm.ArmControl(state.azure_arm_url, timeout=3).state()
            servers = ", ".join(f"{name} {s['properties']['state']} {s['properties']['replica']['role']} at "
                                f"{s['properties']['fullyQualifiedDomainName']}" for name, s in seen["servers"].items())
            piece["ok"] = seen["health"]["status"] == "ok"
            piece["detail"] = f"{seen['health']['status']}; PostgreSQL port {state.azure_pg_port}: {servers or 'no servers'}"
        except (httpx.HTTPError, RunbookError, KeyError) as exc:
            piece["ok"], piece["detail"] = False, f"/_control/state unreadable: {type(exc).__name__}"
    return {"azure-arm": piece}


def _prefect_components(state: SandboxState) -> dict[str, dict[str, Any]]:
    """The Prefect server and workers of `prefect up`, as status pieces (none if it has not run)."""
    if state.prefect_api_url is None:
        return {}
    server_pid = state.prefect_server_pid if orchestration.is_server(state.prefect_server_pid) else None
    pieces = {"prefect": _http_component(state.prefect_api_url, state.prefect_api_url, "/health", server_pid)}
    pieces["prefect"]["detail"] += f", database {state.prefect_database}"
    for i, pid in enumerate(state.prefect_worker_pids or [], start=1):
        ok = orchestration.is_worker(pid)
        pieces[f"worker-{i}"] = {"ok": ok, "address": f"pool {state.prefect_pool}", "pid": pid if ok else None,
                                 "detail": "process worker" if ok else f"worker (pid {pid}) is gone"}
    return pieces


def _http_component(address: str, base: str, probe: str, pid: int | None) -> dict[str, Any]:
    """A piece that answers HTTP at `address`: ok if `base + probe` answers 200 and its process lives."""
    try:
        answered = httpx.get(base + probe, timeout=3).status_code
        detail, ok = f"{probe} answered {answered}", answered == 200 and pid is not None and pid_alive(pid)
    except httpx.HTTPError as exc:
        detail, ok = f"{probe} unreachable: {type(exc).__name__}", False
    return {"ok": ok, "address": address, "pid": pid, "detail": detail}


def _first_line(exc: BaseException, hidden: list[str]) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return scrub(lines[0] if lines else exc.__class__.__name__, hidden)
