"""Realistic sample data: a vehicle fleet database of a chosen size, and pgbench's tables.

`generate_fleet(conninfo, size_mb)` fills an empty database with depots, vehicles,
drivers, trips and work orders: keys, foreign keys, indexes (a partial and an
expression one among them), timestamps spread over two years, money and distances as
numerics, and text composed from word lists (`sandbox.vocabulary`) so it compresses
like production text, a few times, not dozens. All rows are made by the server
(INSERT ... SELECT generate_series), in chunks spread over `jobs` connections, then
indexed and analyzed. The same seed gives the same data.

Every SQL text here is built from our own constants and integers, never from input.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from sandbox import vocabulary as vocab
from sandbox.process import run
from tasks.errors import ConfigError

MB = 2**20
MIN_MB, MAX_MB = 8, 16384
TABLES = ("depots", "vehicles", "drivers", "trips", "work_orders")

# The shape of the fleet; only the number of vehicles grows with size_mb.
TRIPS_PER_VEHICLE = 150
WORK_ORDERS_PER_VEHICLE = 12
DRIVERS_PER_VEHICLE = 1.25
VEHICLES_PER_DEPOT = 120
MIN_VEHICLES = 10
HISTORY_DAYS = 730
CHUNK_ROWS = 100_000  # rows per INSERT: big enough to be fast, small enough to share between jobs

# Bytes one row adds to pg_database_size, heap plus indexes, measured on PostgreSQL 15
# with this generator (see `fleet_sizes`); they turn size_mb into row counts.
ROW_BYTES = {"trips": 296.0, "work_orders": 280.0, "vehicles": 280.0, "drivers": 290.0}


@dataclass(frozen=True)
class FleetPlan:
    """How many rows of each table make a database of about `size_mb`."""

    size_mb: int
    depots: int
    vehicles: int
    drivers: int
    trips: int
    work_orders: int


@dataclass(frozen=True)
class FleetStats:
    """What `generate_fleet` made: rows per table, database size and time taken."""

    plan: FleetPlan
    rows: dict[str, int] = field(default_factory=dict)
    database_bytes: int = 0
    seconds: float = 0.0


def check_size_mb(size_mb: int) -> int:
    if isinstance(size_mb, bool) or not isinstance(size_mb, int) or not MIN_MB <= size_mb <= MAX_MB:
        raise ConfigError(f"size_mb {size_mb!r} is not allowed: a whole number of MB from {MIN_MB} to {MAX_MB}")
    return size_mb


def plan_fleet(size_mb: int, base_bytes: int) -> FleetPlan:
    """Row counts so the database, starting at `base_bytes` when empty, ends near size_mb."""
    check_size_mb(size_mb)
    per_vehicle = (
        ROW_BYTES["vehicles"]
        + TRIPS_PER_VEHICLE * ROW_BYTES["trips"]
        + WORK_ORDERS_PER_VEHICLE * ROW_BYTES["work_orders"]
        + DRIVERS_PER_VEHICLE * ROW_BYTES["drivers"]
    )
    vehicles = max(MIN_VEHICLES, round((size_mb * MB - base_bytes) / per_vehicle))
    return FleetPlan(
        size_mb=size_mb,
        depots=max(3, min(len(vocab.CITIES) * 4, round(vehicles / VEHICLES_PER_DEPOT))),
        vehicles=vehicles,
        drivers=round(vehicles * DRIVERS_PER_VEHICLE),
        trips=vehicles * TRIPS_PER_VEHICLE,
        work_orders=vehicles * WORK_ORDERS_PER_VEHICLE,
    )


def generate_fleet(conninfo: str, size_mb: int, *, jobs: int = 2, seed: int = 1) -> FleetStats:
    """Create and fill the fleet tables in the (empty) database `conninfo` points at.

    `size_mb` is the target pg_database_size, reached within about 30 % from 8 MB to
    1 GB. `jobs` connections insert and index in parallel; `seed` fixes the data.
    Raises ConfigError if the database already has any of the fleet tables.
    """
    check_size_mb(size_mb)
    if not 1 <= jobs <= 16:
        raise ConfigError(f"jobs {jobs!r} is not allowed: 1 to 16 connections")
    started = time.monotonic()
    anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        existing = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace "
            "AND relname = ANY(%s)", [list(TABLES)]).fetchall()]
        if existing:
            dbname = conn.info.dbname
            raise ConfigError(
                f"database {dbname!r} already has table(s) {', '.join(sorted(existing))}; "
                "generate the fleet into an empty database"
            )
        conn.execute(SCHEMA)
        base = _database_size(conn)
        plan = plan_fleet(size_mb, base)
        # The small tables first, in one go: the big ones refer to them.
        conn.execute(f"SELECT setseed({_seed(seed, 0)})")
        conn.execute(_depots_sql(plan, anchor))
        conn.execute(_vehicles_sql(plan, anchor))
        conn.execute(_drivers_sql(plan, anchor))
        chunks = []
        for total, make in ((plan.trips, _trips_sql), (plan.work_orders, _work_orders_sql)):
            for lo in range(1, total + 1, CHUNK_ROWS):
                hi = min(total, lo + CHUNK_ROWS - 1)
                chunks.append(f"SELECT setseed({_seed(seed, len(chunks) + 1)}); " + make(plan, anchor, lo, hi))
        _run_parallel(conninfo, chunks, jobs)
        _run_parallel(conninfo, INDEXES, jobs)
        conn.execute(CONSTRAINTS)
        conn.execute(
            "".join(
                f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM {t}), false); "
                for t in TABLES
            )
        )
        conn.execute("ANALYZE " + ", ".join(TABLES))
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
        size = _database_size(conn)
    return FleetStats(plan=plan, rows=rows, database_bytes=size, seconds=time.monotonic() - started)


def fleet_sizes(conninfo: str) -> dict[str, dict[str, float]]:
    """Per table: rows, bytes of heap (table data) and of indexes, and bytes per row.

    Used to calibrate ROW_BYTES and by tests to measure compression.
    """
    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for t in TABLES:
            rows, heap, index = conn.execute(
                f"SELECT (SELECT count(*) FROM {t}), pg_table_size('{t}'), pg_indexes_size('{t}')"
            ).fetchone()  # type: ignore[misc]
            out[t] = {"rows": rows, "heap": heap, "index": index, "per_row": (heap + index) / max(rows, 1)}
    return out


def create_database(admin_conninfo: str, name: str) -> None:
    """CREATE DATABASE `name` (a plain identifier) on the server."""
    from psycopg import sql

    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def init_pgbench(pgbench: str, host: str, port: int, user: str, password: str, dbname: str = "pgbench") -> None:
    """`pgbench -i -s 1 --foreign-keys` into `dbname`: 100 000 accounts, the standard benchmark tables.

    The password reaches pgbench in PGPASSWORD only, never on its command line.
    """
    run(
        [pgbench, "-i", "-s", "1", "--foreign-keys", "-q", "-h", host, "-p", str(port), "-U", user, dbname],
        what=f"initialising pgbench tables in database {dbname!r}",
        env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
        secrets=[password],
        timeout=300,
    )


# --- parallel execution -------------------------------------------------------------------


def _run_parallel(conninfo: str, statements: Sequence[str], jobs: int) -> None:
    """Run statements on `jobs` connections, each taking the next one off a queue.

    Stops handing out work at the first error and raises it.
    """
    work: queue.Queue[str] = queue.Queue()
    for stmt in statements:
        work.put(stmt)
    errors: list[BaseException] = []
    failed = threading.Event()

    def worker() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                while not failed.is_set():
                    try:
                        stmt = work.get_nowait()
                    except queue.Empty:
                        return
                    conn.execute(stmt)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            failed.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(jobs, len(statements))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins keep Ctrl-C working in the main thread
    if errors:
        raise errors[0]


def _database_size(conn: psycopg.Connection) -> int:  # type: ignore[type-arg]
    return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]


def _seed(seed: int, n: int) -> float:
    """setseed() takes a number in [-1, 1]: one per chunk, so output does not depend on job order."""
    return ((seed * 7919 + n * 104729) % 20000) / 10000 - 1


# --- SQL building blocks ---------------------------------------------------------------------


def _lit(word: str) -> str:
    return "'" + word.replace("'", "''") + "'"


def _arr(words: Sequence[str]) -> str:
    return "ARRAY[" + ",".join(_lit(w) for w in words) + "]::text[]"


def pick(words: Sequence[str]) -> str:
    """SQL: one word of the list, at random (the array is a constant, folded once per query)."""
    return f"({_arr(words)})[1 + floor(random() * {len(words)})::int]"


def rint(lo: int, hi: int) -> str:
    """SQL: a random integer from lo to hi inclusive."""
    return f"({lo} + floor(random() * {hi - lo + 1})::int)"


def rchars(alphabet: str, n: int) -> str:
    """SQL: n random characters of the alphabet."""
    one = f"substr({_lit(alphabet)}, 1 + floor(random() * {len(alphabet)})::int, 1)"
    return " || ".join([one] * n)


def _ts(anchor: datetime) -> str:
    return f"timestamptz '{anchor.isoformat()}'"


def _spread(anchor: datetime, total: int) -> str:
    """SQL: a timestamp for row g, rising with g across the history window, to the second."""
    return (
        f"date_trunc('second', {_ts(anchor)} - interval '{HISTORY_DAYS} days' * "
        f"(1 - (g + random()) / {total + 1}))"
    )


UPPER = "ABCDEFGHJKLMNPRSTUVWXYZ"
VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
SITE = (
    f"{pick(vocab.COMPANIES)} || ' ' || {pick(vocab.COMPANY_KINDS)} || ', ' || {rint(1, 320)} || ' ' || "
    f"{pick(vocab.STREETS)} || ' ' || {pick(vocab.STREET_TYPES)} || ', ' || {pick(vocab.CITIES)}"
)
POSTCODE = f"{rchars(UPPER, 2)} || {rint(1, 99)} || ' ' || {rint(1, 9)} || {rchars(UPPER, 2)}"
TRIP_NOTE = (
    f"{pick(vocab.NOTE_SUBJECTS)} || ' ' || {pick(vocab.NOTE_CONDITIONS)} || '; ' || {pick(vocab.NOTE_ACTIONS)} || "
    f"CASE WHEN random() < 0.5 THEN ' at ' || lpad({rint(5, 21)}::text, 2, '0') || ':' || lpad({rint(0, 59)}::text, 2, '0') "
    f"ELSE ', ' || {rint(5, 95)} || ' min delay' END"
)


def _depots_sql(plan: FleetPlan, anchor: datetime) -> str:
    cities = _arr(vocab.CITIES)
    return f"""
INSERT INTO depots (id, code, name, city, region, address, capacity, latitude, longitude, opened_on)
SELECT g, 'DEP-' || lpad(g::text, 3, '0'), city || ' ' || suffix || ' Depot', city, region,
       {rint(1, 400)} || ' ' || {pick(vocab.STREETS)} || ' ' || {pick(vocab.STREET_TYPES)} || ', ' || city || ' ' || {POSTCODE},
       {rint(20, 400)}, round((50 + random() * 8)::numeric, 5), round((-5.5 + random() * 7)::numeric, 5),
       date '{anchor.date()}' - {rint(200, 12000)}
FROM (SELECT g, ({cities})[1 + mod(g - 1, {len(vocab.CITIES)})] AS city,
             {pick(vocab.DEPOT_SUFFIXES)} AS suffix, {pick(vocab.REGIONS)} AS region
      FROM generate_series(1, {plan.depots}) AS g OFFSET 0) AS s
"""


def _vehicles_sql(plan: FleetPlan, anchor: datetime) -> str:
    makes, models, fuels, wmis = (_arr([m[i] for m in vocab.VEHICLE_MODELS]) for i in range(4))
    year = anchor.year
    return f"""
INSERT INTO vehicles (id, depot_id, vin, plate, make, model, model_year, fuel_type, status, odometer_km, acquired_on, notes)
SELECT g, depot,
       ({wmis})[m] || {rchars(VIN_CHARS, 5)} || {rchars("0123456789X", 1)}
         || substr('CDEFGHJKLMNPRSTVWXY', yr - 2011, 1) || {rchars(UPPER, 1)} || lpad(mod(g, 1000000)::text, 6, '0'),
       {rchars(UPPER, 2)} || lpad(mod(yr, 100)::text, 2, '0') || ' ' || {rchars(UPPER, 3)},
       ({makes})[m], ({models})[m], yr, ({fuels})[m],
       CASE WHEN r < 0.9 THEN 'active' WHEN r < 0.97 THEN 'maintenance' ELSE 'retired' END,
       round((({year} - yr + random()) * (15000 + random() * 70000))::numeric, 1),
       make_date(yr, 1, 1) + {rint(0, 364)},
       CASE WHEN random() < 0.3 THEN {pick(vocab.VEHICLE_NOTES)} || ', ' || {pick(vocab.VEHICLE_NOTES)} END
FROM (SELECT g, 1 + floor(random() * {len(vocab.VEHICLE_MODELS)})::int AS m, random() AS r,
             1 + floor(random() * {plan.depots})::int AS depot, {rint(2012, year)} AS yr
      FROM generate_series(1, {plan.vehicles}) AS g OFFSET 0) AS s
"""


def _drivers_sql(plan: FleetPlan, anchor: datetime) -> str:
    return f"""
INSERT INTO drivers (id, depot_id, employee_no, first_name, last_name, email, phone, license_class, hired_on, active)
SELECT g, depot, 'E' || lpad(g::text, 6, '0'), f, l,
       lower(replace(f || '.' || l, ' ', '')) || g || '@fleet.example.com',
       '+44 7' || lpad(floor(random() * 1e9)::bigint::text, 9, '0'), {pick(vocab.LICENSE_CLASSES)},
       date '{anchor.date()}' - {rint(30, 7000)}, random() < 0.92
FROM (SELECT g, {pick(vocab.FIRST_NAMES)} AS f, {pick(vocab.LAST_NAMES)} AS l, 1 + floor(random() * {plan.depots})::int AS depot
      FROM generate_series(1, {plan.drivers}) AS g OFFSET 0) AS s
"""


def _trips_sql(plan: FleetPlan, anchor: datetime, lo: int, hi: int) -> str:
    # random()^1.3 picks low vehicle ids more often: some vehicles work harder than others.
    return f"""
INSERT INTO trips (id, vehicle_id, driver_id, started_at, ended_at, origin, destination, purpose,
                   distance_km, fuel_used_l, cargo_kg, notes)
SELECT g, v, d, t, t + make_interval(mins => dur, secs => {rint(0, 59)}), {SITE}, {SITE}, {pick(vocab.PURPOSES)},
       dist, round(dist * (0.08 + random() * 0.3)::numeric, 2),
       CASE WHEN random() < 0.8 THEN {rint(0, 26000)} END,
       CASE WHEN random() < 0.45 THEN {TRIP_NOTE} END
FROM (SELECT g, 1 + floor(random() ^ 1.3 * {plan.vehicles})::bigint AS v,
             1 + floor(random() * {plan.drivers})::bigint AS d,
             {_spread(anchor, plan.trips)} AS t, {rint(6, 540)} AS dur,
             round((1.5 + random() ^ 2 * 420)::numeric, 2) AS dist
      FROM generate_series({lo}, {hi}) AS g OFFSET 0) AS s
"""


def _work_orders_sql(plan: FleetPlan, anchor: datetime, lo: int, hi: int) -> str:
    # Recent orders are often still open; older ones are closed or (rarely) cancelled.
    repair_note = (
        f"{pick(vocab.REPAIR_ACTIONS)} || ' ' || comp || ' (' || {pick(vocab.PART_VENDORS)} || ' ' || "
        f"{rchars(UPPER, 2)} || '-' || {rint(1000, 99999)} || '); ' || {pick(vocab.REPAIR_OUTCOMES)} || "
        f"CASE WHEN random() < 0.5 THEN ', torque ' || {rint(40, 650)} || ' Nm' "
        f"ELSE ', ' || {rint(1, 9)} || ' h on ramp ' || {rint(1, 6)} END"
    )
    return f"""
INSERT INTO work_orders (id, vehicle_id, opened_at, closed_at, status, priority, fault, technician,
                         labor_hours, parts_cost, notes)
SELECT g, v, o,
       CASE WHEN status IN ('closed', 'cancelled') THEN o + make_interval(mins => {rint(20, 20000)}) END,
       status, priority,
       comp || ' ' || {pick(vocab.SYMPTOMS)} || ' (' || {pick(vocab.DTC_LETTERS)} || lpad({rint(0, 3999)}::text, 4, '0') || ')',
       CASE WHEN status <> 'open' THEN {pick(vocab.FIRST_NAMES)} || ' ' || {pick(vocab.LAST_NAMES)} END,
       CASE WHEN status = 'closed' THEN round((0.25 + random() ^ 2 * 14)::numeric, 2) END,
       CASE WHEN status = 'closed' THEN round((random() ^ 2 * 3500)::numeric, 2) END,
       CASE WHEN status <> 'open' THEN {repair_note} END
FROM (SELECT a.*,
             CASE WHEN o > {_ts(anchor)} - interval '21 days' THEN
                    CASE WHEN r < 0.3 THEN 'open' WHEN r < 0.5 THEN 'in_progress'
                         WHEN r < 0.65 THEN 'waiting_parts' ELSE 'closed' END
                  WHEN r < 0.06 THEN 'cancelled' ELSE 'closed' END AS status
      FROM (SELECT g, 1 + floor(random() * {plan.vehicles})::bigint AS v, {_spread(anchor, plan.work_orders)} AS o,
                   random() AS r, 1 + floor(random() ^ 2 * 4)::int AS priority, {pick(vocab.COMPONENTS)} AS comp
            FROM generate_series({lo}, {hi}) AS g OFFSET 0) AS a OFFSET 0) AS s
"""


# --- schema ----------------------------------------------------------------------------------

# Tables first, keys and indexes after the load: building an index once is much
# faster than maintaining it row by row.
SCHEMA = """
CREATE TABLE depots (
    id          integer GENERATED BY DEFAULT AS IDENTITY,
    code        text NOT NULL,
    name        text NOT NULL,
    city        text NOT NULL,
    region      text NOT NULL,
    address     text NOT NULL,
    capacity    integer NOT NULL CHECK (capacity > 0),
    latitude    numeric(8,5) NOT NULL,
    longitude   numeric(8,5) NOT NULL,
    opened_on   date NOT NULL
);
CREATE TABLE vehicles (
    id           bigint GENERATED BY DEFAULT AS IDENTITY,
    depot_id     integer NOT NULL,
    vin          text NOT NULL CHECK (length(vin) = 17),
    plate        text NOT NULL,
    make         text NOT NULL,
    model        text NOT NULL,
    model_year   smallint NOT NULL,
    fuel_type    text NOT NULL,
    status       text NOT NULL CHECK (status IN ('active', 'maintenance', 'retired')),
    odometer_km  numeric(9,1) NOT NULL,
    acquired_on  date NOT NULL,
    notes        text
);
CREATE TABLE drivers (
    id             bigint GENERATED BY DEFAULT AS IDENTITY,
    depot_id       integer NOT NULL,
    employee_no    text NOT NULL,
    first_name     text NOT NULL,
    last_name      text NOT NULL,
    email          text NOT NULL,
    phone          text,
    license_class  text NOT NULL,
    hired_on       date NOT NULL,
    active         boolean NOT NULL DEFAULT true
);
CREATE TABLE trips (
    id           bigint GENERATED BY DEFAULT AS IDENTITY,
    vehicle_id   bigint NOT NULL,
    driver_id    bigint NOT NULL,
    started_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    origin       text NOT NULL,
    destination  text NOT NULL,
    purpose      text NOT NULL,
    distance_km  numeric(8,2) NOT NULL,
    fuel_used_l  numeric(7,2),
    cargo_kg     integer,
    notes        text,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE TABLE work_orders (
    id           bigint GENERATED BY DEFAULT AS IDENTITY,
    vehicle_id   bigint NOT NULL,
    opened_at    timestamptz NOT NULL,
    closed_at    timestamptz,
    status       text NOT NULL CHECK (status IN ('open', 'in_progress', 'waiting_parts', 'closed', 'cancelled')),
    priority     smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    fault        text NOT NULL,
    technician   text,
    labor_hours  numeric(5,2),
    parts_cost   numeric(10,2),
    notes        text
);
COMMENT ON TABLE trips IS 'One journey of one vehicle with one driver (sandbox sample data)';
COMMENT ON TABLE work_orders IS 'Workshop jobs on vehicles; open ones are found through a partial index';
"""

# Biggest first, so the parallel jobs finish together.
INDEXES = [
    "CREATE UNIQUE INDEX trips_pkey ON trips (id)",
    "CREATE INDEX trips_vehicle_started_idx ON trips (vehicle_id, started_at)",
    "CREATE INDEX trips_driver_idx ON trips (driver_id)",
    "CREATE UNIQUE INDEX work_orders_pkey ON work_orders (id)",
    "CREATE INDEX work_orders_status_opened_idx ON work_orders (status, opened_at)",
    "CREATE INDEX work_orders_open_vehicle_idx ON work_orders (vehicle_id) "
    "WHERE status IN ('open', 'in_progress', 'waiting_parts')",
    "CREATE UNIQUE INDEX vehicles_pkey ON vehicles (id)",
    "CREATE UNIQUE INDEX vehicles_vin_key ON vehicles (vin)",
    "CREATE INDEX vehicles_depot_idx ON vehicles (depot_id)",
    "CREATE UNIQUE INDEX drivers_pkey ON drivers (id)",
    "CREATE UNIQUE INDEX drivers_employee_no_key ON drivers (employee_no)",
    "CREATE UNIQUE INDEX drivers_email_lower_key ON drivers (lower(email))",
    "CREATE UNIQUE INDEX depots_pkey ON depots (id)",
    "CREATE UNIQUE INDEX depots_code_key ON depots (code)",
]

CONSTRAINTS = """
ALTER TABLE depots ADD CONSTRAINT depots_pkey PRIMARY KEY USING INDEX depots_pkey,
                   ADD CONSTRAINT depots_code_key UNIQUE USING INDEX depots_code_key;
ALTER TABLE vehicles ADD CONSTRAINT vehicles_pkey PRIMARY KEY USING INDEX vehicles_pkey,
                     ADD CONSTRAINT vehicles_vin_key UNIQUE USING INDEX vehicles_vin_key,
                     ADD CONSTRAINT vehicles_depot_id_fkey FOREIGN KEY (depot_id) REFERENCES depots (id);
ALTER TABLE drivers ADD CONSTRAINT drivers_pkey PRIMARY KEY USING INDEX drivers_pkey,
                    ADD CONSTRAINT drivers_employee_no_key UNIQUE USING INDEX drivers_employee_no_key,
                    ADD CONSTRAINT drivers_depot_id_fkey FOREIGN KEY (depot_id) REFERENCES depots (id);
ALTER TABLE trips ADD CONSTRAINT trips_pkey PRIMARY KEY USING INDEX trips_pkey,
                  ADD CONSTRAINT trips_vehicle_id_fkey FOREIGN KEY (vehicle_id) REFERENCES vehicles (id),
                  ADD CONSTRAINT trips_driver_id_fkey FOREIGN KEY (driver_id) REFERENCES drivers (id);
ALTER TABLE work_orders ADD CONSTRAINT work_orders_pkey PRIMARY KEY USING INDEX work_orders_pkey,
                        ADD CONSTRAINT work_orders_vehicle_id_fkey FOREIGN KEY (vehicle_id) REFERENCES vehicles (id);
"""
