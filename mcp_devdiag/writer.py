"""The one way rows get into ``devdiag.diag_run``: validated, batched, idempotent by id.

Used by the MCP server (a few rows at a time, and spool replays) and by bulk loads (the demo
generator, up to millions of rows). No MCP imports here.

Write path per batch (one transaction each):

- every row of the batch is validated first, so a malformed row rejects the whole batch before
  anything reaches the database;
- fast path: when every id of the batch sorts after the table's largest id (ids are UUIDv7, so
  this is the normal case for live writes and for a first load in time order), no row can
  conflict: ``COPY`` straight into ``diag_run``. If another writer slipped in a clashing id, the
  unique violation rolls the batch back and the safe path below runs instead;
- safe path: ``COPY`` into a temporary staging table, then
  ``insert ... select ... on conflict do nothing``: a replayed or reloaded row adds nothing. No
  conflict target: the key is (id) on one node and (id, tenant_id) on Citus (distributed tables'
  keys hold the distribution column), and diag_run has no other unique constraint.

Both paths return the number of rows actually inserted, so loading the same rows twice adds 0.
In the same transaction, the rows actually inserted are counted in the team memory
(``memory.remember``): a replayed or reloaded run is neither stored nor remembered twice.
On a connection that is already inside a transaction, batches become savepoints of it.

Measured on the embedded PostgreSQL 16 (2 CPUs, all 9 indexes, UUIDv7 ids in time order,
`benchmarks/load.py`): the fast path loads 1M rows at ~58k rows/s (100k rows: ~70k rows/s), the
staging path at ~52k; a reload that inserts nothing checks ~180k rows/s. The server backend spends
~13 CPU-seconds per million rows (the staging path ~14), the client ~3: on a busy machine the
wall-clock figures drop (35-48k rows/s seen with other work running).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, TypeGuard, get_args

import psycopg
from psycopg import sql

from devdiag_db.db import atomic, one_row, scalar
from mcp_devdiag import memory
from mcp_devdiag.catalog import UNRECOGNISED
from mcp_devdiag.results import Resolution

TABLE = "devdiag.diag_run"
STAGE = "diag_run_stage"
ERROR_MSG_CAP = 4000
RESOLUTIONS: frozenset[Resolution] = frozenset(get_args(Resolution))
COLUMNS = (
    "id",
    "run_id",
    "ts",
    "tenant_id",
    "environment",
    "problem_code",
    "fix_suggestion",
    "confidence",
    "resolution",
    "resolved_at",
    "error_msg",
)
# A batch this small (a tool call's run) is one INSERT ... unnest: fewer round trips than COPY.
SMALL_BATCH = 64
_PG_TYPES = ("uuid", "uuid", "timestamptz", "text", "text", "text", "text", "float8", "text", "timestamptz", "text")
_INSERT_SMALL = (
    f"insert into {TABLE} ({', '.join(COLUMNS)}) select * from unnest("
    + ", ".join(f"%s::{t}[]" for t in _PG_TYPES)
    + ") on conflict do nothing returning id"  # returning: Citus counts the rows it was sent, not those inserted
)
_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_TEXT_LIMIT = 200  # tenant, environment, fix id: labels, not prose


@dataclass(frozen=True, slots=True)
class RunRow:
    """One finding of a diagnostic run, exactly as ``devdiag.diag_run`` stores it (docs/architecture.md)."""

    id: uuid.UUID
    run_id: uuid.UUID
    ts: datetime
    tenant_id: str
    environment: str
    problem_code: str | None = None
    fix_suggestion: str | None = None
    confidence: float | None = None
    resolution: str | None = None
    resolved_at: datetime | None = None
    error_msg: str | None = None

    def __post_init__(self) -> None:
        # The contract caps error text rather than losing the finding.
        if isinstance(self.error_msg, str) and len(self.error_msg) > ERROR_MSG_CAP:
            object.__setattr__(self, "error_msg", self.error_msg[:ERROR_MSG_CAP])

    def validate(self) -> RunRow:
        """Raise ``ValueError`` (one line: which field, what to do) unless the row fits the contract."""
        problem = _problem(self)
        if problem:
            raise ValueError(f"diag_run row {self.id}: {problem}")
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (uuids and ISO-8601 timestamps as strings) for spools and JSONL."""
        return {
            name: (str(v) if isinstance(v, uuid.UUID) else v.isoformat() if isinstance(v, datetime) else v)
            for name in COLUMNS
            for v in (getattr(self, name),)
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRow:
        """Parse ``to_json()`` output; raises ``ValueError`` naming the bad field. Validates the row."""
        if not isinstance(data, Mapping):
            raise ValueError(f"diag_run row: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(COLUMNS)
        if unknown:
            raise ValueError(f"diag_run row: unknown field(s) {sorted(unknown)}: use only {', '.join(COLUMNS)}")
        missing = [c for c in ("id", "run_id", "ts", "tenant_id", "environment") if data.get(c) is None]
        if missing:
            raise ValueError(f"diag_run row: missing required field(s) {missing}")
        values = dict(data)
        for name in ("id", "run_id"):
            values[name] = _parse_uuid(name, values[name])
        for name in ("ts", "resolved_at"):
            if values.get(name) is not None:
                values[name] = _parse_ts(name, values[name])
        return cls(**values).validate()


def _parse_uuid(name: str, value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"diag_run row: {name} {value!r} is not a UUID: use mcp_devdiag.ids.uuid7()") from None


def _parse_ts(name: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f"diag_run row: {name} {value!r} is not an ISO-8601 timestamp: write e.g. 2025-01-31T12:00:00+00:00"
        ) from None


def _aware(value: Any) -> bool:
    return isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None


def _label(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _TEXT_LIMIT and value.strip() == value


def _problem(row: RunRow) -> str | None:
    """What is wrong with ``row`` (one line), or None. Ordered cheapest and commonest first."""
    if not isinstance(row.id, uuid.UUID):
        return f"id {row.id!r} is not a UUID: use mcp_devdiag.ids.uuid7()"
    if not isinstance(row.run_id, uuid.UUID):
        return f"run_id {row.run_id!r} is not a UUID: use mcp_devdiag.ids.uuid7()"
    if not _aware(row.ts):
        return f"ts {row.ts!r} must be a timezone-aware datetime (e.g. datetime.now(UTC))"
    if not _label(row.tenant_id):
        return f"tenant_id {row.tenant_id!r} must be a non-empty label of at most {_TEXT_LIMIT} characters"
    if not _label(row.environment):
        return (
            f"environment {row.environment!r} must be a non-empty label of at most {_TEXT_LIMIT} characters, "
            "e.g. linux/python-3.12/node-20"
        )
    code = row.problem_code
    if code is not None and not (isinstance(code, str) and _CODE_RE.match(code)):
        return f"problem_code {code!r} must be UPPER_SNAKE (e.g. PORT_IN_USE) or None for a clean run"
    return _fix_problem(row) or _outcome_problem(row) or _error_msg_problem(row)


def _fix_problem(row: RunRow) -> str | None:
    if row.fix_suggestion is not None:
        if not _label(row.fix_suggestion):
            return f"fix_suggestion {row.fix_suggestion!r} must be a catalog fix id or None"
        if row.problem_code is None:
            return "fix_suggestion is set on a clean run: set problem_code, or drop the fix"
        if row.problem_code == UNRECOGNISED:
            return f"fix_suggestion is set on an {UNRECOGNISED} run: nothing was recognised, so nothing was suggested"
    c = row.confidence
    if c is not None:
        if isinstance(c, bool) or not isinstance(c, int | float) or math.isnan(c) or not 0 <= c <= 1:
            return f"confidence {c!r} must be a number in 0..1 or None"
        if row.fix_suggestion is None:
            return "confidence is set without fix_suggestion: it is the confidence of the suggested fix"
    return None


def _outcome_problem(row: RunRow) -> str | None:
    if row.resolution is None:
        return "resolved_at is set without resolution: set both or neither" if row.resolved_at is not None else None
    if row.resolution not in RESOLUTIONS:
        return f"resolution {row.resolution!r} must be one of fixed, manual, failed or None while pending"
    if row.resolved_at is None:
        return f"resolution {row.resolution!r} needs resolved_at (when the outcome was recorded)"
    if not _aware(row.resolved_at):
        return f"resolved_at {row.resolved_at!r} must be a timezone-aware datetime"
    if row.problem_code is None or row.problem_code == UNRECOGNISED:
        return "resolution is set on a run without a finding: outcomes belong to findings of catalog problems"
    if row.resolution == "fixed" and row.fix_suggestion is None:
        return "resolution 'fixed' needs fix_suggestion (the fix that worked); use 'manual' otherwise"
    return None


def _error_msg_problem(row: RunRow) -> str | None:
    if row.error_msg is not None and not isinstance(row.error_msg, str):
        return f"error_msg must be text or None, got {type(row.error_msg).__name__}"
    return None


# --- writing --------------------------------------------------------------------------------------


def write_runs(conn: psycopg.Connection, rows: Iterable[RunRow], *, batch_size: int = 50_000) -> int:
    """Insert ``rows`` in batches, one transaction each; returns rows actually inserted (0 on reload).

    A malformed row raises ``ValueError`` before its batch touches the database; earlier batches
    stay committed, and writing the same rows again after the fix is safe (idempotent by id).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    inserted = 0
    offset = 0
    for batch in _batches(rows, batch_size):
        for i, row in enumerate(batch):
            problem = _problem(row) if isinstance(row, RunRow) else f"expected a RunRow, got {type(row).__name__}"
            if problem:
                raise ValueError(
                    f"row {offset + i} ({getattr(row, 'id', '?')}): {problem}; nothing of its batch was written"
                )
        inserted += _write_batch(conn, batch)
        offset += len(batch)
    return inserted


def _batches(rows: Iterable[RunRow], size: int) -> Iterator[list[RunRow]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def _write_batch(conn: psycopg.Connection, batch: list[RunRow]) -> int:
    """One transaction (the caller's, when one is open): the rows, and the team memory of those actually
    inserted (a replayed row is neither stored nor counted twice)."""
    if len(batch) <= SMALL_BATCH:
        with atomic(conn):  # a tool call's run: inside its session's transaction already
            return _remembered(conn, batch, _insert_small(conn, batch))
    with conn.transaction():
        if _after_max_id(conn, batch):
            try:
                with conn.transaction():  # a savepoint: a clash undoes only the COPY
                    _copy(conn, TABLE, batch)
                return _remembered(conn, batch, None)
            except psycopg.errors.UniqueViolation:
                pass  # a concurrent writer stored one of these ids first: take the conflict-safe path
        _ensure_stage(conn)
        conn.execute(f"truncate {STAGE}")
        _copy(conn, STAGE, batch)
        cur = conn.execute(
            f"insert into {TABLE} ({', '.join(COLUMNS)}) select {', '.join(COLUMNS)} from {STAGE} "
            "on conflict do nothing returning id"  # the rows inserted, on Citus too (see _INSERT_SMALL)
        )
        return _remembered(conn, batch, {row[0] for row in cur.fetchall()})


def _remembered(conn: psycopg.Connection, batch: list[RunRow], inserted: set[uuid.UUID] | None) -> int:
    """Remember the inserted rows of ``batch`` (all of them when ``inserted`` is None); their count."""
    if inserted is None:
        rows = batch
    else:  # a duplicate within the batch was inserted once
        first: dict[uuid.UUID, RunRow] = {}
        for r in batch:
            if r.id in inserted:
                first.setdefault(r.id, r)
        rows = list(first.values())
    if rows:
        memory.remember(conn, rows)
    return len(rows)


def _insert_small(conn: psycopg.Connection, batch: list[RunRow]) -> set[uuid.UUID]:
    """A run's few rows in one statement (one round trip; row-level security applies as to any insert)."""
    columns = list(zip(*(_values(r) for r in batch), strict=True))
    return {row[0] for row in conn.execute(_INSERT_SMALL, [list(c) for c in columns]).fetchall()}


def _after_max_id(conn: psycopg.Connection, batch: list[RunRow]) -> bool:
    """True when the batch may be COPYed straight in: no id of it can already exist (all distinct and
    above max(id)), and row-level security does not apply to this role (it refuses COPY FROM)."""
    ids = {row.id for row in batch}
    if len(ids) != len(batch):
        return False  # duplicates within the batch: let on-conflict keep the first
    # uuid ordering in PostgreSQL is bytewise, the same as comparing UUID.int.
    secured, top = one_row(
        conn, f"select row_security_active(%s), (select id from {TABLE} order by id desc limit 1)", (TABLE,)
    )
    return not secured and (top is None or min(ids).int > top.int)


def _ensure_stage(conn: psycopg.Connection) -> None:
    # A session-lifetime temp table, emptied per batch: no create/drop for every batch. Checked
    # first rather than `create ... if not exists`, which sends a notice every time.
    if scalar(conn, f"select to_regclass('pg_temp.{STAGE}')") is None:
        conn.execute(
            f"create temporary table {STAGE} (like {TABLE} including defaults excluding constraints excluding indexes)"
        )


def _copy(conn: psycopg.Connection, table: str, batch: list[RunRow]) -> None:
    stmt = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        sql.Identifier(*table.split(".")), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with conn.cursor().copy(stmt) as copy:
        copy.set_types(_PG_TYPES)
        write = copy.write_row
        for r in batch:
            write(_values(r))


def _values(r: RunRow) -> tuple:
    """The row's values in ``COLUMNS`` order."""
    return (
        r.id,
        r.run_id,
        r.ts,
        r.tenant_id,
        r.environment,
        r.problem_code,
        r.fix_suggestion,
        r.confidence,
        r.resolution,
        r.resolved_at,
        r.error_msg,
    )


# --- outcomes -------------------------------------------------------------------------------------


def is_resolution(value: object) -> TypeGuard[Resolution]:
    return value in RESOLUTIONS


# By run or by finding; composed once (every record_outcome sends one).
_UPDATE_OUTCOME = {
    key: sql.SQL(
        """
        update {table} set resolution = %(resolution)s, resolved_at = %(at)s
        where {key} = %(target)s
          and (%(tenant)s::text is null or tenant_id = %(tenant)s)
          and problem_code is not null
          and problem_code <> %(unrecognised)s
          and (%(fix_id)s::text is null or fix_suggestion = %(fix_id)s)
          and (%(resolution)s <> 'fixed' or fix_suggestion is not null)
          and (resolution is null or (resolution <> %(resolution)s and resolved_at < %(at)s))
        """
    ).format(table=sql.Identifier(*TABLE.split(".")), key=sql.Identifier(key))
    for key in ("run_id", "id")
}


def record_outcome(
    conn: psycopg.Connection,
    *,
    run_id: uuid.UUID | str | None = None,
    finding_id: uuid.UUID | str | None = None,
    resolution: str,
    fix_id: str | None = None,
    at: datetime,
    tenant: str | None = None,
    note: str | None = None,
) -> int:
    """Record the outcome of a run's findings (or of one finding); returns the rows changed.

    - Targets the findings with a ``problem_code`` of ``run_id``, or the one row ``finding_id``,
      of ``tenant`` when given (a caller never changes another tenant's runs);
      ``fix_id`` narrows to the findings that suggested that fix (outcomes are credited to the
      fix that was suggested, never re-assigned). ``fixed`` needs a suggested fix.
    - Idempotent: recording the same resolution again changes nothing (``resolved_at`` keeps the
      first time it was recorded).
    - The latest outcome wins: a different resolution overwrites one recorded earlier than ``at``;
      one recorded later than ``at`` is kept, so replaying a spool out of order converges.
    - The outcome that stands, and ``note`` (already redacted and capped), go to the team memory
      with the run's error signature (``memory.note_outcome``): live, replayed and loaded alike.
    """
    return apply_outcome(
        conn,
        run_id=run_id,
        finding_id=finding_id,
        resolution=resolution,
        fix_id=fix_id,
        at=at,
        tenant=tenant,
        note=note,
    )[0]


def apply_outcome(
    conn: psycopg.Connection,
    *,
    run_id: uuid.UUID | str | None = None,
    finding_id: uuid.UUID | str | None = None,
    resolution: str,
    fix_id: str | None = None,
    at: datetime,
    tenant: str | None = None,
    note: str | None = None,
) -> tuple[int, list[memory.RunState]]:
    """``record_outcome``, and the run's rows as they are after it (the tool's answer shows them):
    read once, for the team memory and the caller."""
    if (run_id is None) == (finding_id is None):
        raise ValueError("record_outcome: give exactly one of run_id or finding_id")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"record_outcome: resolution {resolution!r} must be one of fixed, manual, failed")
    if not _aware(at):
        raise ValueError(f"record_outcome: at {at!r} must be a timezone-aware datetime")
    target = ("run_id", _parse_uuid("run_id", run_id)) if run_id is not None else ("id", _parse_uuid("id", finding_id))
    cur = conn.execute(
        _UPDATE_OUTCOME[target[0]],
        {
            "resolution": resolution,
            "at": at,
            "target": target[1],
            "fix_id": fix_id,
            "tenant": tenant,
            "unrecognised": UNRECOGNISED,
        },
    )
    key = "run_id" if run_id is not None else "finding_id"
    rows = memory.run_rows(conn, tenant=tenant, **{key: target[1]})
    memory.note_outcome(conn, tenant=tenant, resolution=resolution, note=note, at=at, rows=rows)
    return cur.rowcount, rows
