"""pgBackRest on the sandbox's primary: its config, the stanza, continuous WAL archiving.

`up` writes `<workdir>/pgbackrest/pgbackrest.conf` before PostgreSQL's first start (its
archive_command names that file), then creates the stanza `sandbox` and runs `check` right
after the start, before the sample data is loaded. Two repositories:

    repo1  S3: the sandbox bucket on moto, through the TLS terminator (sandbox/tls.py),
           since pgBackRest speaks S3 only over TLS; the certificate is verified
    repo2  posix: <workdir>/pgbackrest/repo, for benchmarks (moto's speed would hide ours)

archive-push sends each WAL segment to both. The config file is the DB host's own, like
postgresql.conf: owned by the PostgreSQL account, mode 0600, and the only place the S3 keys
are (never on a command line: pgBackRest may echo its options in an error).

Work dir layout, all owned by the PostgreSQL account:
    pgbackrest/pgbackrest.conf   the config
    pgbackrest/repo/             repo2
    pgbackrest/restores/         (0700) where flows restore scratch instances; `down` stops
                                 every instance still running from there (`stop_orphans`)
    pgbackrest/log, lock, spool  pgBackRest's log-path, lock-path and spool-path
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from sandbox import postgres
from sandbox.process import as_postgres, pid_alive, postgres_account, scrub, tail, wait_until
from tasks.errors import PermanentError

STANZA = "sandbox"
DIR = "pgbackrest"
CONFIG_FILE = "pgbackrest.conf"
REPO_PATH = "/pgbackrest"  # repo1's prefix in the bucket
PROGRAM = "pgbackrest"
STANZA_TIMEOUT = 180  # stanza-create and check each (check waits for a WAL segment in both repos)
INFO_TIMEOUT = 30
# pgBackRest's `info` status codes that mean the stanza is fine: 2, no backup taken yet; 4, the
# repositories differ, which is what a backup to one of the two (flows back up to repo1) leaves.
HEALTHY_CODES = {0: "ok", 2: "no valid backups yet", 4: "backups in one repository only"}


@dataclass(frozen=True)
class Layout:
    """Where the sandbox's pgBackRest files are (see the module docstring)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def restores(self) -> Path:
        return self.root / "restores"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def spool(self) -> Path:
        return self.root / "spool"


def layout(workdir: Path) -> Layout:
    return Layout(Path(workdir) / DIR)


def prepare(workdir: Path) -> Layout:
    """Create the pgbackrest/ dirs, owned by the PostgreSQL account (restores/ 0700)."""
    account = postgres_account()
    where = layout(workdir)
    for path, mode in ((where.root, 0o700), (where.repo, 0o750), (where.restores, 0o700), (where.log, 0o700),
                       (where.lock, 0o700), (where.spool, 0o700)):
        path.mkdir(mode=mode)
        path.chmod(mode)  # mkdir's mode goes through the umask
        os.chown(path, account.pw_uid, account.pw_gid)
    return where


def config_text(
    where: Layout,
    *,
    data_dir: Path,
    pg_port: int,
    socket_dir: Path,
    bucket: str,
    region: str,
    access_key: str,
    secret_key: str,
    tls_port: int,
    ca_file: Path,
) -> str:
    """pgbackrest.conf, whole (it holds the S3 keys)."""
    lines = [
        "# Runbook Flows sandbox (written by sandbox/pgbackrest.py); holds the S3 keys: keep it 0600",
        "[global]",
        # repo1: S3 on moto, through our TLS terminator. pgBackRest verifies its certificate
        # against the certificate itself (self-signed; SAN DNS:127.0.0.1 for pgBackRest).
        "repo1-type=s3",
        f"repo1-s3-bucket={bucket}",
        f"repo1-path={REPO_PATH}",
        "repo1-s3-endpoint=127.0.0.1",
        f"repo1-storage-port={tls_port}",
        "repo1-s3-uri-style=path",
        f"repo1-s3-region={region}",
        f"repo1-s3-key={access_key}",
        f"repo1-s3-key-secret={secret_key}",
        "repo1-storage-verify-tls=y",
        f"repo1-storage-ca-file={ca_file}",
        # Our flows apply GFS retention themselves (`expire --set`); these only silence
        # pgBackRest's warning and mean it never expires a backup on its own.
        "repo1-retention-full=1000",
        # Small files bundled into few objects: a cluster is mostly small files, and each S3
        # object is a request (moto answers each on a new connection).
        "repo1-bundle=y",
        # repo2: posix, for benchmarks.
        "repo2-type=posix",
        f"repo2-path={where.repo}",
        "repo2-retention-full=1000",
        "repo2-bundle=y",
        "compress-type=lz4",
        "process-max=2",
        "start-fast=y",
        "archive-async=n",
        f"log-path={where.log}",
        f"lock-path={where.lock}",
        f"spool-path={where.spool}",
        "log-level-console=warn",
        "log-level-file=info",
        "",
        f"[{STANZA}]",
        f"pg1-path={data_dir}",
        f"pg1-port={pg_port}",
        f"pg1-socket-path={socket_dir}",
        f"pg1-user={postgres.BOOTSTRAP_USER}",
    ]
    return "\n".join(lines) + "\n"


def write_config(where: Layout, **settings: Any) -> Path:
    """Write pgbackrest.conf (see `config_text` for the settings), owned by the PostgreSQL
    account, 0600, atomically; returns its path."""
    account = postgres_account()
    path = where.config
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(config_text(where, **settings))
    os.chmod(tmp, 0o600)
    os.chown(tmp, account.pw_uid, account.pw_gid)
    os.replace(tmp, path)
    return path


def archive_command(config: Path) -> str:
    """The primary's archive_command (%p: the segment's path, relative to the data dir)."""
    return f"{PROGRAM} --config={config} --stanza={STANZA} archive-push %p"


def command(config: Path, *args: str, stanza: str = STANZA) -> list[str]:
    """argv of a pgBackRest command as the PostgreSQL account; no secret on it, ever."""
    return as_postgres([PROGRAM, f"--config={config}", f"--stanza={stanza}", *args])


def run(argv: list[str], *, what: str, cwd: Path, secrets: Iterable[str] = (), timeout: float) -> str:
    """Run a pgBackRest command to completion and return its stdout; PermanentError (scrubbed)
    if it fails or takes longer than `timeout`.

    Like sandbox.process.run, but in a process group of its own that a timeout kills whole:
    killing only runuser would leave pgBackRest retrying an unreachable repository."""
    hidden = list(secrets)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except FileNotFoundError:
        raise PermanentError(f"{what}: program {argv[0]!r} not found") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise PermanentError(f"{what}: pgbackrest did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = tail(err or out or "(no output)")
        raise PermanentError(f"{what}: pgbackrest exited with status {proc.returncode}:\n{scrub(detail, hidden)}")
    return out


def stanza_create(config: Path, secrets: Iterable[str] = ()) -> None:
    """`stanza-create` (both repositories), then `check`: the config works and a WAL segment
    reaches both repositories. Raises PermanentError with pgBackRest's words, scrubbed."""
    hidden = list(secrets)
    for step in ("stanza-create", "check"):
        run(command(config, step), what=f"pgbackrest {step} (stanza {STANZA})", cwd=config.parent,
            secrets=hidden, timeout=STANZA_TIMEOUT)


def info(config: Path, secrets: Iterable[str] = (), *, timeout: float = INFO_TIMEOUT) -> dict[str, Any]:
    """The stanza's entry of `pgbackrest info --output=json` (both repositories)."""
    hidden = list(secrets)
    out = run(command(config, "info", "--output=json"), what=f"pgbackrest info (stanza {STANZA})",
              cwd=config.parent, secrets=hidden, timeout=timeout)
    try:
        stanzas = json.loads(out)
    except ValueError:
        raise PermanentError(f"pgbackrest info printed no JSON: {scrub(out[:200], hidden)!r}") from None
    entry = next((s for s in stanzas if s.get("name") == STANZA), None)
    if entry is None:
        raise PermanentError(f"pgbackrest info knows no stanza {STANZA!r}")
    return entry


def archive_max(entry: dict[str, Any], repo: int | None = None) -> str | None:
    """The newest archived WAL segment in an `info` entry (of one repository, or of all)."""
    found = [a["max"] for a in entry.get("archive") or []
             if a.get("max") and (repo is None or (a.get("database") or {}).get("repo-key") == repo)]
    return max(found) if found else None


def describe(config: Path, secrets: Iterable[str] = ()) -> tuple[bool, str]:
    """(ok, one line) for `status`: the stanza answers in both repositories and WAL arrives."""
    try:
        entry = info(config, secrets, timeout=15)
    except PermanentError as exc:
        return False, str(exc).splitlines()[-1].strip()
    status = entry.get("status") or {}
    code, message = status.get("code"), status.get("message", "?")
    repos = {r.get("key"): r.get("status", {}).get("code") for r in entry.get("repo") or []}
    backups = len(entry.get("backup") or [])
    wal = archive_max(entry)
    ok = code in HEALTHY_CODES and all(c in HEALTHY_CODES for c in repos.values())
    detail = (f"stanza {STANZA}: {message} (code {code}), repos {len(repos)}, backups {backups}, "
              f"newest WAL {wal or 'none'}")
    return ok, detail


# --- restored scratch instances ------------------------------------------------------------------


def running_instances(restores: Path, max_depth: int = 4) -> list[tuple[Path, int]]:
    """(data dir, postmaster pid) of each PostgreSQL instance running from under `restores`.

    A data dir is a folder with PG_VERSION in it; we look no deeper than `max_depth`
    folders and not inside a data dir. An instance counts only if its postmaster.pid
    names a live postgres process whose working directory is that data dir (the
    postmaster chdirs there), so a stale file or a reused pid is never taken for one."""
    found: list[tuple[Path, int]] = []
    if not restores.is_dir():
        return found
    for top, dirs, files in os.walk(restores):
        depth = len(Path(top).relative_to(restores).parts)
        if "PG_VERSION" in files:
            dirs.clear()
            pid = postgres.postmaster_pid(Path(top))
            if pid is not None and _cwd(pid) == Path(top).resolve():
                found.append((Path(top), pid))
        elif depth >= max_depth:
            dirs.clear()
    return found


def _cwd(pid: int) -> Path | None:
    try:
        return Path(psutil.Process(pid).cwd()).resolve()
    except (psutil.Error, OSError):
        return None


def stop_orphans(restores: Path, bin_dir: Path | None) -> list[str]:
    """Stop every instance running from under `restores` (orphans of flows): an immediate
    shutdown with pg_ctl, as the PostgreSQL account, then SIGKILL of whatever is left."""
    actions = []
    for data, pid in running_instances(restores):
        with contextlib.suppress(PermanentError):
            postgres.stop(data, restores, bin_dir, None, modes=("immediate",))
        if pid_alive(pid) and _cwd(pid) == data.resolve():
            wait_until(lambda p=pid: not pid_alive(p), 10)
        if pid_alive(pid):
            raise PermanentError(f"the restored instance in {data} (pid {pid}) did not stop")
        actions.append(f"stopped the restored PostgreSQL instance in {data} (pid {pid})")
    return actions
