"""Command line: `python -m sandbox up [--dir D] [--size-mb N] | down [--dir D] | status [--dir D]
| prefect up [--dir D] [--workers N] [--sqlite] | prefect down [--dir D]`.

up            start PostgreSQL 15 (archiving WAL with pgBackRest) and moto's S3 on loopback,
              the fake Azure Resource Manager and its flexible servers, load sample data, write
              environments/sandbox.yaml, sandbox-azure.yaml and <dir>/sandbox.env; on a
              running sandbox, say so.
down          stop everything (Prefect's server and workers too) and remove <dir>; fine to run twice.
status        show each piece and whether it answers; exit 1 if something is down.
prefect up    on a running sandbox: a Prefect server on its PostgreSQL (or SQLite), the work
              pool runbook-process and N process workers (default 2); prints PREFECT_API_URL.
prefect down  stop only that server and its workers.

The directory defaults to $RUNBOOK_SANDBOX_DIR or /tmp/runbook-flows-sandbox.
Exit status: 0 done, 1 something failed or is down, 2 bad arguments or directory.
No command prints a password or key; they are in <dir>/sandbox.env (mode 0600).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from sandbox import api, orchestration
from sandbox.sampledata import MAX_MB, MIN_MB, check_size_mb
from sandbox.state import ENV_FILE, SandboxState
from tasks.errors import ConfigError, RunbookError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="A disposable local stand-in for production.\n\n" + (__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status,prefect}")
    dir_help = f"work dir (default: $RUNBOOK_SANDBOX_DIR or {api.DEFAULT_DIR})"
    p_up = sub.add_parser("up", help="start the sandbox")
    p_up.add_argument("--dir", type=Path, help=dir_help)
    p_up.add_argument("--size-mb", type=int, default=64, help=f"size of the fleet database, {MIN_MB} to {MAX_MB} (default 64)")
    p_up.add_argument("--environments-dir", type=Path, help="where to write sandbox.yaml (default: the repo's environments/)")
    for name, text in (("down", "stop the sandbox and remove its dir"), ("status", "show what runs and whether it answers")):
        sub.add_parser(name, help=text).add_argument("--dir", type=Path, help=dir_help)
    p_prefect = sub.add_parser("prefect", help="a Prefect server on the sandbox's PostgreSQL, with process workers")
    prefect_sub = p_prefect.add_subparsers(dest="prefect_command", required=True, metavar="{up,down}")
    p_pup = prefect_sub.add_parser("up", help="start the server, the pool and the workers")
    p_pup.add_argument("--dir", type=Path, help=dir_help)
    p_pup.add_argument("--workers", type=int, default=2, help="how many process workers (default 2)")
    p_pup.add_argument("--sqlite", action="store_true", help="keep the server's state in SQLite, not PostgreSQL")
    prefect_sub.add_parser("down", help="stop the server and the workers").add_argument("--dir", type=Path, help=dir_help)
    args = parser.parse_args(argv)
    # `kill` or a CI timeout during `up` must clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = (args.dir or api.default_workdir()).expanduser().absolute()
    try:
        if args.command == "up":
            return _up(workdir, args.size_mb, args.environments_dir)
        if args.command == "down":
            for line in api.down(workdir):
                print(line)
            return 0
        if args.command == "prefect" and args.prefect_command == "up":
            return _prefect_up(workdir, args.workers, args.sqlite)
        if args.command == "prefect":
            for line in orchestration.stop_in_sandbox(workdir):
                print(line)
            return 0
        return _status(workdir)
    except ConfigError as exc:
        print(f"sandbox {args.command}: {exc}", file=sys.stderr)
        return 2
    except RunbookError as exc:
        print(f"sandbox {args.command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sandbox {args.command}: interrupted", file=sys.stderr)
        return 130


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _up(workdir: Path, size_mb: int, environments_dir: Path | None) -> int:
    check_size_mb(size_mb)
    if api.load_state(workdir) is not None:
        # Running: api.up hands back the state; partly down: it raises with advice.
        state = api.up(workdir, size_mb=size_mb, environments_dir=environments_dir)
        print(f"sandbox already running in {workdir} (started {state.created_at}, fleet ~{state.size_mb} MB)")
        _describe(state)
        return 0
    print(f"starting the sandbox in {workdir} (fleet database ~{size_mb} MB) ...", flush=True)
    started = time.monotonic()
    state = api.up(workdir, size_mb=size_mb, environments_dir=environments_dir)
    print(f"sandbox up in {time.monotonic() - started:.1f} s")
    _describe(state)
    return 0


def _describe(state: SandboxState) -> None:
    rows = [
        ("postgres", f"{state.pg_host}:{state.pg_port}", f"user {state.pg_user}, databases fleet and pgbench, pid {state.pg_pid}"),
        ("", "", f"data {state.pg_data_dir}, log {state.pg_data_dir.parent / 'postgres.log'}"),
        ("s3 (moto)", state.s3_endpoint, f"bucket {state.s3_bucket}, region {state.s3_region}, pid {state.moto_pid}"),
    ]
    if state.tls_s3_url is not None:
        rows.append(("s3 (tls)", state.tls_s3_url, f"TLS in front of moto, CA file {state.tls_ca_file}, pid {state.tls_pid}"))
    if state.pgbackrest_config is not None:
        rows += [
            ("pgbackrest", str(state.pgbackrest_config), f"stanza {state.pgbackrest_stanza}: WAL to repo1 (S3) and repo2"),
            ("", "", f"repo2 {state.pgbackrest_posix_repo}, restores {state.pgbackrest_restore_dir}"),
        ]
    if state.azure_arm_url is not None:
        rows += [
            ("azure", state.azure_arm_url, f"fake Azure Resource Manager (fleet-pg, fleet-pg-replica, fleet-pg-ve), "
                                           f"pid {state.azure_arm_pid}"),
            ("", "", f"servers at 127.0.1.N:{state.azure_pg_port}, fleet-pg at {state.azure_fqdn}; "
                     f"log {state.azure_dir}/azure_arm.log"),
        ]
    rows += [
        ("backups", str(state.backup_dir), "file:// storage of the pgbench database"),
        ("config", str(state.environment_file), "environment 'sandbox'"),
    ]
    if state.azure_environment_file is not None:
        rows.append(("config", str(state.azure_environment_file), "environment 'sandbox-azure'"))
    for name, where, what in rows:
        print(f"  {name:<10} {where:<40} {what}")
    print("secrets for the config (never printed):")
    print(f"  source {state.workdir / ENV_FILE}")


def _prefect_up(workdir: Path, workers: int, sqlite: bool) -> int:
    before = api.load_state(workdir)
    if before is not None and before.prefect_server_pid is None:
        print(f"starting a Prefect server on {'SQLite' if sqlite else 'PostgreSQL'} and {workers} worker(s) ...", flush=True)
    started = time.monotonic()
    state = orchestration.start_in_sandbox(workdir, workers=workers, sqlite=sqlite)
    if before is not None and before.prefect_server_pid is not None:
        print(f"the Prefect server already runs in {workdir}")
    else:
        print(f"Prefect up in {time.monotonic() - started:.1f} s")
    prefect_dir = workdir / orchestration.SANDBOX_DIR
    database = (f"database {orchestration.PREFECT_DATABASE} on {state.pg_host}:{state.pg_port}"
                if state.prefect_database == "postgresql" else f"SQLite in {prefect_dir}")
    print(f"  server     {state.prefect_api_url:<40} {database}, pid {state.prefect_server_pid}")
    for i, pid in enumerate(state.prefect_worker_pids or [], start=1):
        print(f"  worker-{i:<3} {'pool ' + str(state.prefect_pool):<40} pid {pid}, log {prefect_dir / f'worker-{i}.log'}")
    print(f"  logs       {prefect_dir}")
    print("point Prefect at it:")
    print(f"  export PREFECT_API_URL={state.prefect_api_url}")
    return 0


def _status(workdir: Path) -> int:
    report = api.status(workdir)
    if not report["components"]:
        print(f"no sandbox in {workdir} (start one with `python -m sandbox up --dir {workdir}`)")
        return 1
    print(f"sandbox in {workdir}: {'healthy' if report['healthy'] else 'NOT healthy'}")
    pieces = {**report["components"], **report["archiving"], **report["proxies"], **report["azure"],
              **report["replication"], **report["prefect"]}
    for name, c in pieces.items():
        pid = f"pid {c['pid']}" if c["pid"] else "no process"
        print(f"  {name:<10} {'up  ' if c['ok'] else 'DOWN'}  {c['address']:<28} {pid:<12} {c['detail']}")
    if report["environment_file"]:
        print(f"  config     {report['environment_file']}")
    return 0 if report["healthy"] else 1
