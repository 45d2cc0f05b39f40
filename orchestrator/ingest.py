"""`devdiag flush` (replay the MCP server's spool) and `devdiag load FILE.jsonl` (bulk import).

Both read the JSONL that the spool writes: one run row per line (``RunRow.to_json()``), or an
outcome ``{"outcome": {...}}``. Both are idempotent by row id: loading a file twice adds nothing.

Bulk load. Every row becomes bytes of a binary ``COPY`` (uuids as 16 bytes, timestamps as
microseconds): the server parses no text, and the client builds no psycopg row objects. One
worker thread reads and encodes batch k+1 while two connections (``WRITERS``) stream earlier
batches side by side (the GIL is free while a thread waits on its socket). On 2 CPUs a single
server backend maintaining the 9 indexes bounds a load; two backends index in parallel.
Measured at 1M demo rows (``benchmarks/mcp_server.py``): the client spends ~10 CPU-seconds
(~18 with ``json.loads`` and psycopg's row encoding), the backends ~16 together. Each line
takes the first lane that takes it:

- canonical lane: one regular expression over the raw bytes of a line as ``RunRow.to_json()``
  is written by ``json.dumps`` (that key order, spaced or compact separators, labels in plain
  ASCII) checks the writer's contract and captures the values, which are written to the ``COPY``
  as they are, with no JSON decoding (error texts with escapes go through the JSON string
  decoder alone). This is the lane of spools and exports;
- dict lane: any other JSON object is decoded and checked by ``fast_values``;
- writer lane: whatever neither takes is judged by ``mcp_devdiag.writer`` itself
  (``RunRow.from_json``), the single source of the contract: a row it accepts is written, else
  the line is reported as bad, by line number. Outcome lines go here too and are applied last.

The first two lanes only ever take a subset of what the writer accepts, and produce the same
values (tests/python/test_ingest.py checks both against ``RunRow.from_json``); they never reject.

Per batch (one transaction each; with --strict, savepoints of one transaction for the whole file,
on one connection), rows in id order (two writers then cannot deadlock): when the batch's ids
all sort after the table's largest id (UUIDv7 in time order: a fresh export or
spool), ``COPY`` goes straight into ``diag_run``; otherwise through a staging table and
``insert ... on conflict do nothing``. If the database refuses a batch (a value only it
judges, such as a NUL character), the batch is split in halves and each half written again,
down to the single refused line, which is reported; every other line still loads.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import itertools
import json
import math
import os
import queue
import re
import struct
import sys
import threading
import time
import uuid
from binascii import unhexlify
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from json.decoder import scanstring  # type: ignore[attr-defined]  # json's own C scanner, not in typeshed
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql

from devdiag_db import config
from devdiag_db.db import DatabaseUnavailable, connect, scalar
from mcp_devdiag import memory, safejson
from mcp_devdiag.spool import MAX_DEPTH, MAX_LINE_BYTES, Outcome, ReplayReport, Spool, parse_line, read_lines, too_long
from mcp_devdiag.writer import COLUMNS, ERROR_MSG_CAP, RESOLUTIONS, RunRow
from orchestrator.progress import Progress

BATCH = 50_000
WRITERS = 2  # connections that COPY batches side by side (measured: 2 backends 1.3-2x one, 2 CPUs)
SHOW_BAD = 20
STAGE = "diag_run_load_stage"
_UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TS_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:[+-][0-9]{2}:[0-9]{2}|Z)"
_UUID = re.compile(_UUID_PATTERN)
_TS = re.compile(_TS_PATTERN)
_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_COLUMN_SET = frozenset(COLUMNS)
_LABEL_MAX = 200


class StrictAbort(Exception):
    """--strict found bad lines: everything is rolled back."""


@dataclass
class LoadResult:
    file: str
    lines: int = 0
    rows: int = 0
    inserted: int = 0
    outcomes: int = 0
    outcomes_applied: int = 0
    signatures: int = 0  # team-memory signatures the loaded runs counted under
    bad_lines: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    strict: bool = False
    loaded: bool = True

    @property
    def already_present(self) -> int:
        return self.rows - self.inserted

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "already_present": self.already_present, "rows_per_s": round(self.rows_per_s)}


# --- the canonical lane: a run row as RunRow.to_json() + json.dumps writes it ---------------------


def _canonical_line() -> re.Pattern[bytes]:
    """The raw bytes of a line in ``COLUMNS`` order, each value checked as the writer would.

    Labels: printable ASCII without quote or backslash, no space at either end, 1 to 200
    characters (a subset of the writer's labels). Confidence: plain decimals in 0..1. Error text:
    any JSON string; one with escapes or non-ASCII characters is decoded by ``_text``.
    """
    uuid_, ts = f'"({_UUID_PATTERN})"', f'"({_TS_PATTERN})"'
    edge, inner = r"[!#-\[\]-~]", r"[ !#-\[\]-~]"  # printable ASCII but " and \; inside, spaces too
    label = f'"({edge}(?:{inner}{{0,{_LABEL_MAX - 2}}}{edge})?)"'
    resolutions = "|".join(sorted(RESOLUTIONS))
    values = {
        "id": uuid_,
        "run_id": uuid_,
        "ts": ts,
        "tenant_id": label,
        "environment": label,
        "problem_code": f'(?:null|"({_CODE.pattern})")',
        "fix_suggestion": f"(?:null|{label})",
        "confidence": r"(?:null|(0(?:\.[0-9]+)?|1(?:\.0+)?))",
        "resolution": f'(?:null|"({resolutions})")',
        "resolved_at": f"(?:null|{ts})",
        "error_msg": r'(?:null|"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)")',
    }
    assert tuple(values) == COLUMNS
    body = ", ?".join(f'"{name}": ?{value}' for name, value in values.items())
    return re.compile(("\\{" + body + r"\}[ \t\r\n]*").encode())


_LINE = _canonical_line()


def _text(escaped: bytes, ascii_only: bool) -> bytes | None:
    """A JSON string's body (between the quotes) as UTF-8, capped like ``RunRow``; None if the
    writer lane must judge it (bad escape, lone surrogate, NUL: the database refuses NUL)."""
    if ascii_only and b"\\" not in escaped:
        return escaped[:ERROR_MSG_CAP]  # the body is the text itself, one byte a character
    try:
        text = scanstring(escaped.decode() + '"', 0)[0][:ERROR_MSG_CAP]
        return None if "\x00" in text else text.encode()
    except ValueError:  # JSONDecodeError, UnicodeError
        return None


def canonical_row(raw: bytes, ascii_only: bool) -> tuple[bytes, bytes] | None:
    """(id, binary COPY row) of a canonical line that certainly fits the writer's contract, else None.

    ``ascii_only``: the line is plain ASCII (else it has been checked to be UTF-8). Never
    rejects: None only sends the line to the next lane.
    """
    match = _LINE.fullmatch(raw)
    if match is None:
        return None
    row_id, run_id, ts, tenant, environment, code, fix, confidence, resolution, resolved_at, error_msg = match.groups()
    if (ts_us := _micros(ts.decode())) is None:
        return None
    # _wire, unrolled: this runs once a line
    id16 = unhexlify(row_id.replace(b"-", b""))
    out = [_HEAD(11, 16, id16, 16, unhexlify(run_id.replace(b"-", b"")), 8, ts_us), _LENGTH(len(tenant)), tenant]
    out += (_LENGTH(len(environment)), environment)
    if code is None:  # a clean run: no fix, no confidence, no outcome
        if fix is not None or confidence is not None or resolution is not None or resolved_at is not None:
            return None
        out.append(_NULL_5)
    else:
        out += (_LENGTH(len(code)), code)
        if fix is None:
            if confidence is not None:
                return None
            out.append(_NULL_2)
        else:
            out += (_LENGTH(len(fix)), fix, _NULL if confidence is None else _FLOAT8(8, float(confidence)))
        if resolution is None:
            if resolved_at is not None:
                return None
            out.append(_NULL_2)
        else:
            if resolved_at is None or (resolution == b"fixed" and fix is None):
                return None
            if (resolved_us := _micros(resolved_at.decode())) is None:
                return None
            out += (_LENGTH(len(resolution)), resolution, _INSTANT(8, resolved_us))
    if error_msg is None:
        out.append(_NULL)
    else:
        if (error_msg := _text(error_msg, ascii_only)) is None:
            return None
        out += (_LENGTH(len(error_msg)), error_msg)
    return id16, b"".join(out)


# --- the dict lane --------------------------------------------------------------------------------


def _label(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= _LABEL_MAX and value.strip() == value


def _timestamp(value: Any) -> datetime | None:
    """ISO-8601 with a zone and a real date (what the writer accepts), parsed; else None."""
    if type(value) is not str or not _TS.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def fast_values(data: Any) -> tuple | None:
    """The typed COPY values of a row that certainly fits the writer's contract, else None.

    Never rejects: None only sends the line to the writer, which accepts or explains. Written
    to accept a subset of what ``RunRow.validate`` accepts, and to produce the same values
    (tests/python/test_ingest.py checks both).
    """
    if type(data) is not dict or not data.keys() <= _COLUMN_SET:
        return None
    get = data.get
    row_id, run_id, ts = get("id"), get("run_id"), get("ts")
    if not (type(row_id) is str and _UUID.fullmatch(row_id) and type(run_id) is str and _UUID.fullmatch(run_id)):
        return None
    ts = _timestamp(ts)
    if ts is None or not _label(get("tenant_id")) or not _label(get("environment")):
        return None
    code, fix, confidence = get("problem_code"), get("fix_suggestion"), get("confidence")
    resolution, resolved_at, error_msg = get("resolution"), get("resolved_at"), get("error_msg")
    if code is not None and not (type(code) is str and _CODE.fullmatch(code)):
        return None
    if fix is not None and (code is None or not _label(fix)):
        return None
    if confidence is not None and (
        fix is None or type(confidence) not in (int, float) or math.isnan(confidence) or not 0 <= confidence <= 1
    ):
        return None
    if resolution is None:
        if resolved_at is not None:
            return None
    else:
        resolved_at = _timestamp(resolved_at)
        if (
            type(resolution) is not str
            or resolution not in RESOLUTIONS
            or code is None
            or resolved_at is None
            or (resolution == "fixed" and fix is None)
        ):
            return None
    if error_msg is not None:
        if type(error_msg) is not str or "\x00" in error_msg:
            return None
        error_msg = error_msg[:ERROR_MSG_CAP]  # RunRow caps the same way
    return (
        row_id,  # canonical text
        run_id,
        ts,
        get("tenant_id"),
        get("environment"),
        code,
        fix,
        confidence,
        resolution,
        resolved_at,
        error_msg,
    )


# --- binary COPY rows -----------------------------------------------------------------------------

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
_TRAILER = b"\xff\xff"
_HEAD = struct.Struct(">hi16si16siq").pack  # field count, id, run_id, ts
_LENGTH = struct.Struct(">i").pack
_FLOAT8 = struct.Struct(">id").pack
_INSTANT = struct.Struct(">iq").pack
_NULL = _LENGTH(-1)
_NULL_2, _NULL_5 = _NULL * 2, _NULL * 5
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(iso: str) -> int | None:
    """An ISO-8601 timestamp with a zone as PostgreSQL's binary timestamptz (µs since 2000 UTC)."""
    try:
        return (datetime.fromisoformat(iso) - _PG_EPOCH) // _MICROSECOND
    except (ValueError, TypeError):  # no such date; no zone
        return None


def _wire(
    row_id: bytes,
    run_id: bytes,
    ts: int,
    tenant: bytes,
    environment: bytes,
    code: bytes | None,
    fix: bytes | None,
    confidence: float | None,
    resolution: bytes | None,
    resolved_at: int | None,
    error_msg: bytes | None,
) -> bytes:
    """One row of ``COPY diag_run (COLUMNS) from stdin (format binary)``."""
    out = [
        _HEAD(11, 16, row_id, 16, run_id, 8, ts),
        _LENGTH(len(tenant)),
        tenant,
        _LENGTH(len(environment)),
        environment,
    ]
    for text in (code, fix):
        out += (_NULL,) if text is None else (_LENGTH(len(text)), text)
    out.append(_NULL if confidence is None else _FLOAT8(8, confidence))
    out += (_NULL,) if resolution is None else (_LENGTH(len(resolution)), resolution)
    out.append(_NULL if resolved_at is None else _INSTANT(8, resolved_at))
    out += (_NULL,) if error_msg is None else (_LENGTH(len(error_msg)), error_msg)
    return b"".join(out)


def _wire_values(values: tuple | RunRow) -> tuple[bytes, bytes]:
    """(id, binary COPY row) of ``fast_values`` output or a validated ``RunRow``.

    Raises UnicodeEncodeError for text the database cannot store (a lone surrogate).
    """
    if isinstance(values, RunRow):
        values = tuple(getattr(values, name) for name in COLUMNS)
    row_id, run_id, ts, tenant, environment, code, fix, confidence, resolution, resolved_at, error_msg = values
    id16 = row_id.bytes if isinstance(row_id, uuid.UUID) else unhexlify(row_id.replace("-", ""))
    run16 = run_id.bytes if isinstance(run_id, uuid.UUID) else unhexlify(run_id.replace("-", ""))

    def utf8(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    return id16, _wire(
        id16,
        run16,
        (ts - _PG_EPOCH) // _MICROSECOND,
        tenant.encode(),
        environment.encode(),
        utf8(code),
        utf8(fix),
        None if confidence is None else float(confidence),
        utf8(resolution),
        None if resolved_at is None else (resolved_at - _PG_EPOCH) // _MICROSECOND,
        utf8(error_msg),
    )


# --- parsing a batch (no database) ----------------------------------------------------------------


@dataclass
class _Parsed:
    """One batch, parsed: COPY rows with their ids and line numbers, outcomes, bad lines."""

    lines: int = 0
    numbers: list[int] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)  # (line number, outcome)
    bad: list[dict[str, Any]] = field(default_factory=list)


def parse_line_to_row(raw: bytes) -> tuple[bytes, bytes] | Outcome | str | None:
    """One raw line: (id, COPY row), an Outcome, an error message (a bad line), or None (blank).

    Lanes in order: canonical, dict, writer (module docstring).
    """
    ascii_only = raw.isascii()
    if ascii_only:
        row = canonical_row(raw, True)
        if row is not None:
            return row
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8 (byte {error.start + 1})"
    if not ascii_only and (row := canonical_row(raw, False)) is not None:
        return row
    if not text.strip():
        return None
    try:
        data = safejson.loads(text, max_depth=MAX_DEPTH)  # bounded: a hostile line is a bad line, not a crash
    except ValueError:
        data = None
    values = fast_values(data) if data is not None else None
    try:
        if values is not None:
            return _wire_values(values)
        item = parse_line(text)  # the writer's verdict, with its message
        return item if isinstance(item, Outcome) else _wire_values(item)
    except UnicodeEncodeError as error:  # a lone surrogate (\ud800): valid JSON, not storable text
        return (
            f"text that is not valid Unicode ({error.object[error.start : error.end]!a}): the database cannot store it"
        )
    except ValueError as error:
        return str(error)
    except (TypeError, OverflowError) as error:  # never fatal: a value of a type no check foresaw
        return f"a value of the wrong type ({error})"


def parse_batch(batch: list[tuple[int, bytes | int]]) -> _Parsed:
    """Parse (line number, raw line) pairs; a raw line that is an int is the length of a line
    too long to read (``_open_lines``)."""
    parsed = _Parsed(lines=len(batch))
    numbers, ids, rows = parsed.numbers, parsed.ids, parsed.rows
    for number, raw in batch:
        item = too_long(raw) if isinstance(raw, int) else parse_line_to_row(raw)
        if item is None:
            continue
        if type(item) is tuple:
            numbers.append(number)
            ids.append(item[0])
            rows.append(item[1])
        elif isinstance(item, Outcome):
            parsed.outcomes.append((number, item))
        else:
            parsed.bad.append({"line": number, "error": item})
    if any(a >= b for a, b in zip(ids, itertools.islice(ids, 1, None), strict=False)):
        # Rows in id order: two writers then take the rows' locks in one order and cannot
        # deadlock on ids that both hold (a file whose batches repeat ids). Time-ordered UUIDv7
        # files are in this order already.
        order = sorted(range(len(ids)), key=ids.__getitem__)
        parsed.numbers, parsed.ids, parsed.rows = (
            [numbers[i] for i in order],
            [ids[i] for i in order],
            [rows[i] for i in order],
        )
    return parsed


def _batches(lines: Iterable[tuple[int, bytes | int]], size: int) -> Iterator[list[tuple[int, bytes | int]]]:
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


# --- writing a batch ------------------------------------------------------------------------------


def _copy(conn: psycopg.Connection, table: sql.Composable, rows: list[bytes]) -> None:
    stmt = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    with conn.cursor().copy(stmt) as copy:
        copy.write(b"".join((_SIGNATURE, *rows, _TRAILER)))  # one write: psycopg sends it in 128 kB pieces


def _write_rows(conn: psycopg.Connection, ids: list[bytes], rows: list[bytes]) -> int:
    """COPY binary rows; returns rows inserted (straight in when every id sorts after the largest)."""
    top = conn.execute("select id from devdiag.diag_run order by id desc limit 1").fetchone()
    # PostgreSQL orders uuids bytewise, as Python orders their 16 bytes.
    if len(set(ids)) == len(ids) and (top is None or min(ids) > top[0].bytes):
        try:
            with conn.transaction():
                _copy(conn, sql.Identifier("devdiag", "diag_run"), rows)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass  # another writer took one of these ids meanwhile: the conflict-safe path below
    if scalar(conn, f"select to_regclass('pg_temp.{STAGE}')") is None:
        conn.execute(
            f"create temporary table {STAGE} "
            "(like devdiag.diag_run including defaults excluding constraints excluding indexes)"
        )
    conn.execute(f"truncate {STAGE}")
    _copy(conn, sql.Identifier(STAGE), rows)
    columns = ", ".join(COLUMNS)
    # returning: on Citus the row count of an insert ... select is the rows sent, not those inserted
    cur = conn.execute(
        f"insert into devdiag.diag_run ({columns}) select {columns} from {STAGE} on conflict do nothing returning 1"
    )
    return cur.rowcount


class Loader:
    """Writes parsed batches through ``1 + len(extra)`` connections, one batch a connection at a time.

    One worker thread reads and encodes batch k+1 while the writers stream earlier batches (the
    GIL is free while a thread waits on its socket). A single server backend maintaining the
    indexes is the slow side of a load; with two connections, two backends index in parallel.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        result: LoadResult,
        *,
        batch_size: int = BATCH,
        extra: Sequence[psycopg.Connection] = (),
    ) -> None:
        self.conn = conn
        self.result = result
        self.batch_size = batch_size
        self.outcomes: list[tuple[int, Outcome]] = []
        self.idle: queue.SimpleQueue[psycopg.Connection] = queue.SimpleQueue()
        for each in (conn, *extra):
            self.idle.put(each)
        self.writers = 1 + len(extra)
        self.lock = threading.Lock()  # writers update self.result

    def run(self, lines: Iterable[tuple[int, bytes | int]], progress: Progress | None = None) -> None:
        batches = _batches(lines, self.batch_size)

        def parse_next() -> _Parsed:
            return parse_batch(next(batches, []))

        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="devdiag-parse") as parser,
            ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="devdiag-copy") as writers,
        ):
            in_flight: collections.deque[tuple[Future[None], int]] = collections.deque()
            ahead = parser.submit(parse_next)
            while (parsed := ahead.result()).lines:
                ahead = parser.submit(parse_next)
                self.result.lines += parsed.lines
                self.result.bad_lines.extend(parsed.bad)
                self.outcomes.extend(parsed.outcomes)
                with self.lock:
                    self.result.rows += len(parsed.rows)
                if self.writers == 1:
                    self._write(parsed)  # here: --strict's transaction belongs to this thread
                    _advance(progress, parsed.lines)
                    continue
                in_flight.append((writers.submit(self._write, parsed), parsed.lines))
                while len(in_flight) >= self.writers:
                    done, count = in_flight.popleft()
                    done.result()
                    _advance(progress, count)
            for done, count in in_flight:
                done.result()
                _advance(progress, count)
        for number, outcome in self.outcomes:  # after every row: an outcome may update a row of this file
            self.result.outcomes += 1
            try:
                with self.conn.transaction():  # a savepoint under --strict: a refusal costs only this line
                    self.result.outcomes_applied += outcome.apply(self.conn)
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                refused = f"refused by the database: {_first_line(error)}"
                self.result.bad_lines.append({"line": number, "error": refused})
        self.result.bad_lines.sort(key=lambda bad: bad["line"])

    def _write(self, parsed: _Parsed) -> None:
        if not parsed.rows:
            return
        conn = self.idle.get()
        try:
            self._store(conn, parsed.numbers, parsed.ids, parsed.rows)
        finally:
            self.idle.put(conn)

    def _store(self, conn: psycopg.Connection, numbers: list[int], ids: list[bytes], rows: list[bytes]) -> None:
        """Write rows in one transaction; if the database refuses them, each half again, down to
        the refused line (reported): no other line is lost, at O(log n) retries a refused line."""
        for attempt in itertools.count(1):
            try:
                with conn.transaction():
                    inserted = _write_rows(conn, ids, rows)
                with self.lock:
                    self.result.inserted += inserted  # counted once committed
                return
            except psycopg.errors.TransactionRollback:
                # A deadlock between our own writers: two batches holding each other's ids.
                if attempt == 3 or self.writers == 1:
                    raise
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                if len(rows) == 1:
                    refused = {"line": numbers[0], "error": f"refused by the database: {_first_line(error)}"}
                    with self.lock:
                        self.result.rows -= 1
                        self.result.bad_lines.append(refused)
                    return
                half = len(rows) // 2
                self._store(conn, numbers[:half], ids[:half], rows[:half])
                self._store(conn, numbers[half:], ids[half:], rows[half:])
                return


def _advance(progress: Progress | None, lines: int) -> None:
    if progress is not None:
        progress.advance(lines)


def _bounded(fh: Any) -> Iterator[tuple[int, bytes | int]]:
    """(number, line); a line over ``MAX_LINE_BYTES`` comes as its length, never read whole."""
    for number, raw, length in read_lines(fh, MAX_LINE_BYTES):
        yield number, raw if length is None else length


@contextlib.contextmanager
def _open_lines(file: str) -> Iterator[Iterator[tuple[int, bytes | int]]]:
    if file == "-":
        yield _bounded(sys.stdin.buffer)
        return
    path = Path(file)
    if not path.is_file():
        raise click.ClickException(f"{file}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        yield _bounded(fh)


def load_file(
    conn: psycopg.Connection,
    file: str,
    *,
    strict: bool = False,
    batch_size: int = BATCH,
    quiet: bool = True,
    connect_more: Callable[[], psycopg.Connection] | None = None,
) -> LoadResult:
    """Load a JSONL file of runs; with ``strict`` any bad line loads nothing (``loaded`` False).

    ``connect_more`` opens the second writer connection (``WRITERS``); without it, or with
    ``strict`` (one transaction for the whole file), one connection writes every batch.
    """
    result = LoadResult(file=file, strict=strict)
    started = time.perf_counter()
    since = scalar(conn, "select clock_timestamp()")
    outer = conn.transaction() if strict else contextlib.nullcontext()
    try:
        with (
            _open_lines(file) as lines,
            Progress("loading", quiet=quiet, unit="lines") as progress,
            contextlib.ExitStack() as extra,
            outer,
        ):
            more: list[psycopg.Connection] = []
            for _ in range(0 if strict else WRITERS - 1):
                if connect_more is None:
                    break
                try:
                    more.append(connect_more())
                except (DatabaseUnavailable, psycopg.OperationalError):
                    break  # e.g. no connection slot left: one connection does it all, slower
                extra.callback(more[-1].close)
            Loader(conn, result, batch_size=batch_size, extra=more).run(lines, progress)
            if strict and result.bad_lines:
                raise StrictAbort
            if result.inserted:
                # Grouped once after the load: the rows' distinct texts, not every row, are normalised.
                # (A live run written while the load ran is counted again: runs is a count for display.)
                with conn.transaction():
                    result.signatures = memory.remember_since(conn, since)
    except StrictAbort:
        result.loaded, result.inserted, result.outcomes_applied = False, 0, 0
    result.seconds = time.perf_counter() - started
    return result


# --- commands -------------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _emit(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _bad_summary(bad: list[dict[str, Any]]) -> None:
    for item in bad[:SHOW_BAD]:
        click.echo(f"  line {item['line']}: {item['error']}", err=True)
    if len(bad) > SHOW_BAD:
        click.echo(f"  ... and {len(bad) - SHOW_BAD} more", err=True)


@click.command("load")
@click.argument("file", metavar="FILE.jsonl")
@click.option("--strict", is_flag=True, help="All or nothing: any bad line loads nothing (exit 1).")
@click.option("--batch-size", default=BATCH, show_default=True, type=click.IntRange(min=1), help="Rows a transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def load(file: str, strict: bool, batch_size: int, as_json: bool) -> None:
    """Import runs from a JSONL file (a spool from another machine, an export); '-' reads stdin.

    Idempotent by row id: loading a file again inserts 0. Bad lines are reported by line number
    and skipped; with --strict nothing is loaded if any line is bad. Files ending in .gz are read
    compressed.
    """
    where = config.settings()
    try:
        with connect(where) as conn:
            result = load_file(
                conn, file, strict=strict, batch_size=batch_size, quiet=as_json, connect_more=lambda: connect(where)
            )
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    except psycopg.OperationalError as error:
        raise click.ClickException(
            f"{file}: the database failed during the load ({_first_line(error)}); batches committed so far "
            "stay, and loading the file again is safe (idempotent by id)"
        ) from None
    except (OSError, EOFError) as error:  # a truncated or corrupt .gz, a read error
        raise click.ClickException(
            f"{file}: cannot be read to the end ({_first_line(error)}); batches committed so far stay, "
            "and loading the file again is safe (idempotent by id)"
        ) from None
    if as_json:
        _emit(result.as_json())
    elif result.loaded:
        click.echo(
            f"{file}: {result.inserted:,} rows inserted, {result.already_present:,} already present, "
            f"{result.outcomes_applied:,} of {result.outcomes:,} outcomes applied, "
            f"{len(result.bad_lines):,} bad lines skipped ({result.seconds:.1f}s, {result.rows_per_s:,.0f} rows/s)"
        )
    if result.bad_lines and not as_json:
        _bad_summary(result.bad_lines)
    if not result.loaded:
        first = result.bad_lines[0]
        message = (
            f"{file}: {len(result.bad_lines)} bad line(s), nothing loaded (--strict); "
            f"first: line {first['line']}: {first['error']}"
        )
        if as_json:
            sys.exit(1)
        raise click.ClickException(message)


@click.command("flush")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def flush(as_json: bool) -> None:
    """Replay the MCP server's spool (runs kept while the database was away) into the database.

    Safe to run at any time, also while servers run: replay is idempotent by row id. The spool is
    DEVDIAG_SPOOL_DIR, default $DEVDIAG_HOME/spool; lines that can never load are kept in its
    rejected.jsonl.
    """
    from mcp_devdiag.settings import ConfigError, spool_dir_from

    try:
        directory = spool_dir_from(os.environ)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    spool = Spool(directory)
    waiting = spool.size_bytes()
    if not waiting:
        report = ReplayReport()
    else:
        where = config.settings()
        try:
            with connect(where) as conn:
                report = spool.replay(conn)
        except DatabaseUnavailable as error:
            raise click.ClickException(f"{error}; the spool {directory} is kept ({waiting:,} bytes)") from None
        except psycopg.OperationalError as error:
            raise click.ClickException(
                f"the database went away during the replay ({str(error).strip().splitlines()[0]}); "
                f"nothing is lost: run `devdiag flush` again"
            ) from None
    payload = {
        "spool": str(directory),
        "files": report.files,
        "rows": report.rows,
        "rows_inserted": report.rows_inserted,
        "rows_already_present": report.rows_already_present,
        "outcomes": report.outcomes,
        "outcomes_applied": report.outcomes_applied,
        "rejected": report.rejected,
        "left_bytes": spool.size_bytes(),
    }
    if as_json:
        _emit(payload)
        return
    if not waiting:
        click.echo(f"spool {directory} is empty: nothing to replay")
        return
    click.echo(
        f"replayed {report.files} spool file(s): {report.rows_inserted:,} rows inserted, "
        f"{report.rows_already_present:,} already present, {report.outcomes_applied:,} of {report.outcomes:,} "
        f"outcomes applied"
    )
    for line in report.rejected[:SHOW_BAD]:
        click.echo(f"  rejected {line} (kept in {directory / 'rejected.jsonl'})", err=True)
