"""The replicated pair as an outside system: a PostgreSQL primary and its streaming standby,
over SQL and on their host.

- Looks: `look` reads what a failover decides on (role, LSNs, the WAL receiver) from one
  server, and never raises for a server that does not answer: a down node is a fact.
- Changes: `fence`, `promote`, `reset_read_only`, and the host steps of a rebuild
  (`rewind`, `restore_standby`, `follow`, `start`, `stop`). Each is idempotent: it looks at
  the server or its data directory first, so a resumed run never promotes twice and never
  fences the node it promoted.

Passwords stay out of command lines: pg_rewind and a standby's primary_conninfo use the
configured passfile on the host; SQL connections use the nodes' DSNs, resolved here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tasks import failover, pghost, postgres
from tasks.config import DrConfig, DrNode
from tasks.errors import CheckFailed, PermanentError, TransientError
from tasks.failover import NodeView, lsn_int
from tasks.redact import scrub

POLL_SECONDS = 0.05
STANDBY_SIGNAL = "standby.signal"
AUTO_CONF = "postgresql.auto.conf"


def server(node: DrNode, timeout: float | None = None) -> postgres.Server:
    base = postgres.Server.from_dsn(node.dsn.resolve())
    if timeout is None:
        return base
    return postgres.Server({**base.params, "connect_timeout": str(max(int(round(timeout)), 1))})


def _first_line(exc: BaseException) -> str:
    return scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


_LOOK = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_last_xact_replay_timestamp(),
       current_setting('default_transaction_read_only')::bool,
       CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END
"""
_RECEIVER = "SELECT status, last_msg_receipt_time, latest_end_lsn::text, received_tli FROM pg_stat_wal_receiver"


def look(name: str, node: DrNode, timeout: float) -> NodeView:
    """One look at a server; a server that does not answer within `timeout` is down."""
    seen = datetime.now(UTC)
    try:
        with postgres.connect(server(node, timeout), "postgres") as conn:
            row = conn.execute(_LOOK).fetchone()
            receiver = conn.execute(_RECEIVER).fetchone() if row[0] else None
            seen = datetime.now(UTC)
    except (TransientError, PermanentError, psycopg.Error) as exc:
        return NodeView(name, seen, reachable=False, error=_first_line(exc))
    in_recovery, current, receive, replay, replay_at, read_only, timeline = row
    status = sender_at = sender_end = None
    if receiver is not None:
        status, sender_at, sender_end_text, received_tli = receiver
        sender_end = lsn_int(sender_end_text)
        timeline = max(timeline or 0, received_tli or 0) or timeline
    return NodeView(
        name, seen, reachable=True, in_recovery=in_recovery, timeline=timeline, current_lsn=lsn_int(current),
        receive_lsn=lsn_int(receive), replay_lsn=lsn_int(replay), last_replay_at=replay_at,
        receiver_status=status, sender_seen_at=sender_at, sender_end_lsn=sender_end, read_only=read_only,
    )


def look_all(cfg: DrConfig, timeout: float) -> dict[str, NodeView]:
    return {name: look(name, node, timeout) for name, node in cfg.nodes.items()}


def probe(node: DrNode, timeout: float) -> failover.Probe:
    """Is the primary there and writable: a session and one query, within `timeout`."""
    at = datetime.now(UTC)
    try:
        with postgres.connect(server(node, timeout), "postgres") as conn:
            recovery, read_only = conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool").fetchone()
    except (TransientError, PermanentError, psycopg.Error) as exc:
        return failover.Probe(at, False, _first_line(exc))
    if recovery or read_only:
        return failover.Probe(at, False, "in recovery" if recovery else "read-only")
    return failover.Probe(at, True, "writable")


# --- fencing and promotion ------------------------------------------------------------------


@dataclass(frozen=True)
class Fenced:
    node: str
    reachable: bool
    read_only: bool  # default_transaction_read_only is on
    sessions_ended: int
    standby_signal: bool  # a restart brings it back as a standby, read-only
    stopped: bool
    final_lsn: int | None  # the primary's last LSN once it took no more writes

    def describe(self) -> str:
        done = [w for w, yes in (("read-only", self.read_only), ("standby.signal written", self.standby_signal),
                                 ("stopped", self.stopped)) if yes]
        if self.sessions_ended:
            done.append(f"{self.sessions_ended} session(s) ended")
        return ", ".join(done) or "nothing to do"


def _set_read_only(node: DrNode, terminate: bool) -> tuple[int, int | None]:
    """ALTER SYSTEM default_transaction_read_only, reloaded, seen by a new session; then the
    other client sessions end, so none keeps writing. Returns (sessions ended, final LSN)."""
    srv = server(node)
    with postgres.connect(srv, "postgres") as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while True:  # the reload is a signal: wait until new sessions get the setting
        with postgres.connect(srv, "postgres") as conn:
            if conn.execute("SELECT current_setting('default_transaction_read_only')::bool").fetchone()[0]:
                break
        if time.monotonic() > deadline:
            raise TransientError(f"{srv.describe()}: default_transaction_read_only is still off 10 s after reload")
        time.sleep(POLL_SECONDS)
    with postgres.connect(srv, "postgres") as conn:
        ended = 0
        if terminate:
            ended = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()[0]
        final = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    return ended, lsn_int(final)


def _write_standby_signal(cfg: DrConfig, node: DrNode) -> bool:
    path = str(Path(node.data_dir) / STANDBY_SIGNAL)
    try:
        pghost.run(cfg, ["touch", path], what=f"writing {path}", timeout=15)
    except (pghost.ProgramFailed, TransientError):
        return False
    return True


def checkpoint_lsn(cfg: DrConfig, node: DrNode) -> int | None:
    """The latest checkpoint's LSN of a stopped server, from pg_controldata."""
    out = pghost.run(cfg, [f"{cfg.pg_bin}/pg_controldata", node.data_dir], what="pg_controldata",
                     timeout=30, env={"LC_ALL": "C"})
    for line in out.splitlines():
        if line.startswith("Latest checkpoint location:"):
            return lsn_int(line.split(":", 1)[1].strip())
    return None


def fence(cfg: DrConfig, name: str, *, stop: bool) -> Fenced:
    """Keep the old primary from taking writes. Reachable: read-only, its sessions ended.
    Always: standby.signal in its data directory, so a restart brings it back in recovery.
    With `stop` (or when it does not answer but still runs): shut it down."""
    node = cfg.node(name)
    view = look(name, node, timeout=cfg.watch.probe_timeout.total_seconds())
    if view.reachable and view.in_recovery:
        # Already a standby: a resumed run, or the node we promoted must never be fenced: the
        # caller passes the old primary only; a standby needs nothing.
        return Fenced(name, True, bool(view.read_only), 0, True, False, view.replay_lsn)
    ended, final = 0, None
    read_only = False
    if view.reachable:
        ended, final = _set_read_only(node, cfg.fencing.terminate_sessions)
        read_only = True
    signal_written = _write_standby_signal(cfg, node)
    stopped = False
    if stop or not view.reachable:
        stopped = stop_node(cfg, name, mode="fast" if view.reachable else "immediate")
        if stopped and view.reachable:
            final = checkpoint_lsn(cfg, node) or final
    return Fenced(name, view.reachable, read_only, ended, signal_written, stopped, final)


def wait_replayed(node: DrNode, lsn: int, timeout: float) -> float:
    """Until the standby has replayed past `lsn`; returns the seconds it took."""
    start = time.monotonic()
    srv = server(node)
    last: int | None = None
    while time.monotonic() - start < timeout:
        with postgres.connect(srv, "postgres") as conn:
            last = lsn_int(conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0])
        if last is not None and last >= lsn:
            return round(time.monotonic() - start, 3)
        time.sleep(POLL_SECONDS)
    raise CheckFailed(f"the standby replayed up to {failover.lsn_text(last)}, not the primary's final LSN "
                      f"{failover.lsn_text(lsn)}, within {timeout:g} s: not promoting, so nothing is lost")


@dataclass(frozen=True)
class Promoted:
    node: str
    promoted_now: bool  # False: it was promoted already (by an earlier attempt, or by hand)
    replay_lsn: int | None  # what it had replayed when promoted: the data it kept
    timeline: int
    at: datetime


def promote(node: DrNode, name: str, timeout: float, timeline_before: int | None) -> Promoted:
    """pg_promote(wait => true) when still in recovery; then it must be out of recovery on a
    new timeline. A server out of recovery already is not promoted again."""
    srv = server(node)
    with postgres.connect(srv, "postgres") as conn:
        in_recovery, replayed = conn.execute(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
        promoted_now = False
        if in_recovery:
            ok = conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)",
                              (max(int(timeout), 1),)).fetchone()[0]
            if not ok:
                raise TransientError(f"{name}: pg_promote did not finish within {timeout:g} s")
            promoted_now = True
            # A promotion only requests its checkpoint, and until it is done pg_control still names
            # the old timeline: a pg_rewind from this server then rewinds to the wrong history
            # ("requested timeline N does not contain minimum recovery point"). Patroni does the same.
            conn.execute("CHECKPOINT")
        recovery_after, tli = conn.execute(
            "SELECT pg_is_in_recovery(), ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
            "::bit(32)::int").fetchone()
    if recovery_after:
        raise CheckFailed(f"{name} is still in recovery after pg_promote")
    if timeline_before is not None and tli <= timeline_before:
        raise CheckFailed(f"{name} is out of recovery but still on timeline {tli} (it was {timeline_before})")
    return Promoted(name, promoted_now, lsn_int(replayed), tli, datetime.now(UTC))


def reset_read_only(node: DrNode) -> bool:
    """A promoted server must take writes: undo a fence it carried from its past as primary."""
    with postgres.connect(server(node), "postgres") as conn:
        if not conn.execute("SELECT current_setting('default_transaction_read_only')::bool").fetchone()[0]:
            configured = conn.execute(
                "SELECT count(*) FROM pg_file_settings WHERE name = 'default_transaction_read_only'").fetchone()[0]
            if not configured:
                return False
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")
    return True


def write_and_read(node: DrNode, database: str) -> dict[str, Any]:
    """One write and its read back, through the server: a heartbeat row."""
    return postgres.write_and_read(server(node), database)


def replication_of(primary: DrNode, standby: str) -> dict[str, Any] | None:
    """pg_stat_replication on the primary for the standby (its application_name)."""
    with postgres.connect(server(primary), "postgres") as conn:
        row = conn.execute(
            "SELECT state, (pg_current_wal_lsn() - replay_lsn)::bigint, "
            "extract(epoch FROM replay_lag)::float FROM pg_stat_replication WHERE application_name = %s",
            (standby,)).fetchone()
    if row is None:
        return None
    return {"state": row[0], "lag_bytes": row[1], "replay_lag_seconds": row[2]}


def wait_streaming(primary: DrNode, standby: str, timeout: float, max_lag_bytes: int) -> dict[str, Any]:
    """Until the standby streams from the primary with its lag under the limit."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        state = replication_of(primary, standby)
        if state and state["state"] == "streaming" and state["lag_bytes"] is not None \
                and state["lag_bytes"] <= max_lag_bytes:
            return state
        time.sleep(0.1)
    raise CheckFailed(f"{standby} does not stream from the primary with lag under {max_lag_bytes} bytes after "
                      f"{timeout:g} s: {state or 'not connected'}")


# --- the host: stop, start, rewind, restore ------------------------------------------------------


def stop_node(cfg: DrConfig, name: str, mode: str = "fast") -> bool:
    """pg_ctl stop; False when nothing ran. A fast stop that hangs becomes immediate."""
    node = cfg.node(name)
    if pghost.postmaster_pid(cfg, node.data_dir) is None:
        return False
    for m in dict.fromkeys((mode, "immediate")):
        try:
            pghost.run(cfg, [f"{cfg.pg_bin}/pg_ctl", "-D", node.data_dir, "-m", m, "-w", "-t", "60", "-s", "stop"],
                       what=f"stopping {name}", timeout=90)
            return True
        except (pghost.ProgramFailed, TransientError):
            if pghost.postmaster_pid(cfg, node.data_dir) is None:
                return True
    raise PermanentError(f"{name} does not stop (pg_ctl stop -m {mode}, then immediate)")


def start_node(cfg: DrConfig, name: str, timeout: float) -> bool:
    """pg_ctl start, waiting until it accepts connections; False when it ran already."""
    node = cfg.node(name)
    if pghost.postmaster_pid(cfg, node.data_dir) is not None:
        return False
    try:
        pghost.run(cfg, [f"{cfg.pg_bin}/pg_ctl", "-D", node.data_dir, "-l", node.log_path, "-w", "-t",
                         str(int(timeout)), "-s", "start"], what=f"starting {name}", timeout=timeout + 30)
    except pghost.ProgramFailed as exc:
        raise pghost.ProgramFailed(f"starting {name}", exc.code,
                                   f"{exc.output}; {node.log_path} ends: {pghost.log_tail(cfg, node.log_path)}") \
            from None
    return True


def _source_conninfo(cfg: DrConfig, source: DrNode) -> str:
    """The source server for pg_rewind, as the DSN's user, its password from the passfile."""
    params = server(source).params
    keep = {k: params[k] for k in ("host", "port", "user") if k in params}
    keep.update(dbname="postgres", passfile=cfg.replication.passfile, connect_timeout="10")
    return " ".join(f"{k}={v}" for k, v in keep.items())


def rewind(cfg: DrConfig, target: str, source: str) -> str:
    """pg_rewind of the stopped target from the running source (PG 13+ finishes an
    interrupted shutdown itself). standby.signal goes first: pg_rewind's single-user
    recovery refuses standby mode."""
    node = cfg.node(target)
    pghost.run(cfg, ["rm", "-f", str(Path(node.data_dir) / STANDBY_SIGNAL)], what="removing standby.signal",
               timeout=15)
    with postgres.connect(server(cfg.node(source)), "postgres") as conn:
        conn.execute("CHECKPOINT")  # the source's pg_control must name its current timeline (see promote)
    out = pghost.run(cfg, [f"{cfg.pg_bin}/pg_rewind", f"--target-pgdata={node.data_dir}",
                           f"--source-server={_source_conninfo(cfg, cfg.node(source))}"],
                     what=f"pg_rewind of {target} from {source}", timeout=cfg.rebuild_timeout.total_seconds())
    return scrub(out.strip().splitlines()[-1] if out.strip() else "done")


def restore_standby(cfg: DrConfig, target: str, source: str) -> str:
    """pgbackrest restore --type=standby --delta into the target's data directory, for when
    pg_rewind cannot (no common history, WAL gone)."""
    if cfg.pgbackrest is None:
        raise PermanentError(f"pg_rewind of {target} failed and dr.pgbackrest is not configured, so there is no "
                             "backup to restore a standby from; rebuild it by hand (pg_basebackup)")
    node = cfg.node(target)
    src = cfg.node(source)
    conninfo = failover.standby_conninfo(src.host, src.port, cfg.replication.user, cfg.replication.passfile, target)
    pb = cfg.pgbackrest
    pghost.run(cfg, ["pgbackrest", f"--config={pb.config_file}", f"--stanza={pb.stanza}", f"--repo={pb.repository}",
                     f"--process-max={pb.process_max}", f"--pg1-path={node.data_dir}", "--type=standby", "--delta",
                     f"--recovery-option=primary_conninfo={conninfo}", "restore"],
               what=f"pgbackrest restore of standby {target}", timeout=pb.timeout.total_seconds())
    return f"restored from stanza {pb.stanza}"


def follow(cfg: DrConfig, target: str, source: str) -> str:
    """Make the stopped target a standby of the source: standby.signal and a primary_conninfo
    (appended to postgresql.auto.conf, where the last setting wins) that uses the passfile."""
    node, src = cfg.node(target), cfg.node(source)
    conninfo = failover.standby_conninfo(src.host, src.port, cfg.replication.user, cfg.replication.passfile, target)
    line = "primary_conninfo = '" + conninfo.replace("'", "''") + "'"
    auto = str(Path(node.data_dir) / AUTO_CONF)
    script = 'printf "%s\\n" "$1" >> "$2" && touch "$3"'
    pghost.run(cfg, ["sh", "-c", script, "sh", line, auto, str(Path(node.data_dir) / STANDBY_SIGNAL)],
               what=f"making {target} a standby of {source}", timeout=15)
    return conninfo


def unfence(cfg: DrConfig, name: str, *, restart: bool) -> str:
    """Undo `fence` on a node nothing replaced: standby.signal removed, started again when the
    fence stopped it (`restart`; a node that was down stays down), read-only reset."""
    node = cfg.node(name)
    pghost.run(cfg, ["rm", "-f", str(Path(node.data_dir) / STANDBY_SIGNAL)], what="removing standby.signal",
               timeout=15)
    if restart:
        start_node(cfg, name, cfg.promote_timeout.total_seconds())
    if look(name, node, cfg.watch.probe_timeout.total_seconds()).reachable:
        reset_read_only(node)
        return "writable again"
    return "standby.signal removed; it stays down"
