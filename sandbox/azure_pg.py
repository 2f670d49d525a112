"""The real PostgreSQL 15 servers behind the fake Azure flexible servers (sandbox/azure_arm.py).

Each fake server is one cluster, run as the PostgreSQL account like the sandbox's others, on
the SAME port P for all but on its own loopback address 127.0.1.N (Linux routes all of 127/8 to
lo), so a server's FQDN is that address and flows connect with `host=<fqdn> port=<P>` and
nothing sandbox-specific. Layout under the fake's state dir:

    pg/pgpass           passfile (0600, the PostgreSQL account's): the replication role's password
    pg/<N>/node.conf    settings, listen address, port, socket dir, cluster_name
    pg/<N>/data/        data directory; postgresql.conf ends in include = '../node.conf'
    pg/<N>/postgres.log pg_ctl's log
    backups/<server>/<backup>/<db>.dump   pg_dump -Fc of each database: the fake's Azure backups

Short `<N>` dirs keep the unix socket path within its 107 bytes. The administrator login is a
superuser (Azure's is a member of azure_pg_admin; simpler here). Replicas stream from their
source with `azure_replication`, whose password is in the passfile only. The fake's own
connections go over each cluster's unix socket as the bootstrap superuser.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from sandbox import postgres, replication
from sandbox.process import as_postgres, postgres_account, run, wait_until
from tasks.errors import PermanentError

NETWORK = "127.0.1."
REPLICATION_USER = "azure_replication"
PASSFILE = "pgpass"
STREAMING_TIMEOUT = 30.0
SYSTEM_DATABASES = ("postgres", "template0", "template1")

PG_HBA = """\
# Runbook Flows sandbox, fake Azure flexible server (written by sandbox/azure_pg.py)
# TYPE  DATABASE     USER               ADDRESS        METHOD
local   all          postgres                          trust
local   replication  postgres                          trust
host    all          all                127.0.0.0/8    scram-sha-256
host    replication  azure_replication  127.0.0.0/8    scram-sha-256
"""

# The pair's settings (sandbox/replication.py), smaller: a restore test makes one more server.
SETTINGS = {**replication.SETTINGS, "max_connections": "30", "shared_buffers": "'16MB'", "wal_keep_size": "'128MB'"}


@dataclass(frozen=True)
class Instance:
    """One fake server's cluster: `node` (name = the server's, dir, port) and its address."""

    node: replication.Node
    address: str

    @property
    def name(self) -> str:
        return self.node.name


def address(index: int) -> str:
    if not 1 <= index <= 254:
        raise PermanentError(f"no loopback address left for a fake Azure server (index {index}, 1 to 254)")
    return f"{NETWORK}{index}"


def instance(root: Path, name: str, index: int, port: int) -> Instance:
    return Instance(replication.Node(name, Path(root) / "pg" / str(index), port), address(index))


def prepare(root: Path, replication_password: str) -> Path:
    """<root>/pg, owned by the PostgreSQL account, with the replication role's passfile."""
    account = postgres_account()
    pg = Path(root) / "pg"
    pg.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(pg, account.pw_uid, account.pw_gid)
    passfile = pg / PASSFILE
    postgres.write_as_owner(passfile, f"*:*:*:{REPLICATION_USER}:{replication_password}\n")
    return passfile


def _configure(inst: Instance) -> None:
    settings = {**SETTINGS, "listen_addresses": postgres.conf_quote(inst.address),
                "cluster_name": postgres.conf_quote(inst.name)}
    postgres.set_port(inst.node.data, inst.node.dir, inst.node.port, settings=settings, conf_file=inst.node.conf)


def create(inst: Instance, bin_dir: Path, admin_user: str, admin_password: str, replication_password: str) -> None:
    """A new, empty server: initdb, start, the administrator and the replication role."""
    postgres.make_cluster_dir(inst.node.dir)
    postgres.init_cluster(inst.node.dir, bin_dir, hba=PG_HBA, include=f"../{replication.NODE_CONF}")
    _configure(inst)
    postgres.start(inst.node.data, inst.node.dir, bin_dir, inst.node.port)
    with replication._connect(inst.node) as conn:
        for user, password, attributes in ((admin_user, admin_password, "LOGIN SUPERUSER CREATEDB CREATEROLE"),
                                           (REPLICATION_USER, replication_password, "LOGIN REPLICATION")):
            verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()
            conn.execute(sql.SQL("CREATE ROLE {} " + attributes + " PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier)))


def clone(inst: Instance, source: Instance, bin_dir: Path, passfile: Path) -> None:
    """A streaming standby of the running `source`: pg_basebackup -R from its address, then
    started; returns once the source's pg_stat_replication shows it streaming."""
    postgres.make_cluster_dir(inst.node.dir)
    run(as_postgres([str(bin_dir / "pg_basebackup"), "-h", source.address, "-p", str(source.node.port),
                     "-U", REPLICATION_USER, "-D", str(inst.node.data), "-X", "stream", "-c", "fast", "-R", "-w",
                     "--no-sync"]),
        what=f"pg_basebackup of {inst.name} from {source.name}", env={"PGPASSFILE": str(passfile), "PGPASSWORD": ""},
        cwd=inst.node.dir, timeout=120)
    auto = inst.node.data / replication.AUTO_CONF
    kept = [line for line in auto.read_text().splitlines(keepends=True)
            if not re.match(r"\s*(primary_conninfo|default_transaction_read_only)\s*=", line)]
    conninfo = (f"host={source.address} port={source.node.port} user={REPLICATION_USER} "
                f"passfile='{passfile}' application_name={inst.name}")
    postgres.write_as_owner(auto, "".join(kept) + f"primary_conninfo = {postgres.conf_quote(conninfo)}\n")
    _configure(inst)
    postgres.start(inst.node.data, inst.node.dir, bin_dir, inst.node.port)
    replication._wait_streaming(source.node, inst.node, STREAMING_TIMEOUT)


def databases(inst: Instance) -> list[str]:
    with replication._connect(inst.node) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname").fetchall()
    return [r[0] for r in rows if r[0] not in SYSTEM_DATABASES]


def dump(inst: Instance, bin_dir: Path, folder: Path) -> list[str]:
    """pg_dump -Fc of each of the server's databases into `folder`; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = databases(inst)
    for db in names:
        run([str(bin_dir / "pg_dump"), "-h", str(inst.node.dir), "-p", str(inst.node.port), "-U",
             postgres.BOOTSTRAP_USER, "-Fc", "-f", str(folder / f"{db}.dump"), db],
            what=f"pg_dump of {db} on {inst.name}", timeout=300)
    return names


def restore(inst: Instance, bin_dir: Path, folder: Path, admin_user: str) -> None:
    """pg_restore --create of every dump in `folder`, everything owned by the administrator."""
    for path in sorted(folder.glob("*.dump")):
        run([str(bin_dir / "pg_restore"), "-h", str(inst.node.dir), "-p", str(inst.node.port), "-U",
             postgres.BOOTSTRAP_USER, "-d", "postgres", "--create", "--no-owner", "--no-privileges",
             f"--role={admin_user}", "--exit-on-error", str(path)],
            what=f"pg_restore of {path.stem} into {inst.name}", timeout=600)


def promote(inst: Instance) -> None:
    with replication._connect(inst.node, timeout=10) as conn:
        conn.execute("SELECT pg_promote(wait => true, wait_seconds => 60)")
        conn.execute("ALTER SYSTEM RESET primary_conninfo")
        conn.execute("SELECT pg_reload_conf()")


def wait_replayed(primary: Instance, replica: Instance, timeout: float = 60) -> None:
    """Wait until `replica` has replayed the primary's current WAL position (a Planned promotion)."""
    with replication._connect(primary.node) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]

    def replayed() -> bool:
        with replication._connect(replica.node) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()
        return bool(row and row[0])

    if not wait_until(replayed, timeout, interval=0.05):
        raise PermanentError(f"{replica.name} did not replay {primary.name}'s WAL up to {target} within {timeout:g} s")


def set_read_only(inst: Instance) -> None:
    """New transactions read-only (what a Switchover leaves the old primary as, here)."""
    with replication._connect(inst.node) as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")


def is_in_recovery(inst: Instance) -> bool:
    with replication._connect(inst.node) as conn:
        return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def drop(inst: Instance, bin_dir: Path | None) -> None:
    """Stop the server and remove its files."""
    replication._stop(inst.node, bin_dir, "immediate")
    shutil.rmtree(inst.node.dir, ignore_errors=True)


def stop_all(root: Path, bin_dir: Path | None) -> list[str]:
    """Stop every cluster under <root>/pg, whatever the fake's state says (for `down`)."""
    actions = []
    for data in sorted((Path(root) / "pg").glob("*/data")):
        node = replication.Node(data.parent.name, data.parent)
        pid = replication._stop(node, bin_dir, "immediate")
        if pid is not None:
            actions.append(f"stopped the PostgreSQL of a fake Azure server (pid {pid}, {data.parent})")
    return actions

