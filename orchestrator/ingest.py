"""`devdiag flush` (replay the MCP server's spool) and `devdiag load FILE.jsonl` (bulk import).

Both read the JSONL that the spool writes: one run row per line (``RunRow.to_json()``), or an
outcome ``{"outcome": {...}}``. Both are idempotent by row id: loading a file twice adds nothing.

Bulk load, per batch of lines (one transaction each, or one for the whole file with --strict):

- fast lane: a line that plainly satisfies the writer's contract (canonical UUIDs, ISO timestamps
  with a zone, labels, the field dependencies) goes to a text ``COPY`` as is, with no Python
  objects built: parsing in Python is what bounds throughput, not the database. When the batch's
  ids all sort after the table's largest id (UUIDv7 in time order: a fresh export or spool),
  ``COPY`` goes straight into ``diag_run``; otherwise through a staging table and
  ``insert ... on conflict (id) do nothing``;
- any other line is judged by ``mcp_devdiag.writer`` itself (``RunRow.from_json``), the single
  source of the contract: it is written through ``write_runs`` or reported as bad, by line number;
- if the database refuses a batch (a value only it could judge), the batch is written again line
  by line through the writer, so the one bad line is reported and the others still load.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper

from mcp_devdiag import writer
from mcp_devdiag.spool import Outcome, ReplayReport, Spool, parse_line
from mcp_devdiag.writer import COLUMNS, ERROR_MSG_CAP, RESOLUTIONS, RunRow
from orchestrator import config
from orchestrator.db import DatabaseUnavailable, connect
from orchestrator.progress import Progress

BATCH = 50_000
SHOW_BAD = 20
STAGE = "diag_run_load_stage"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[+-]\d{2}:\d{2}|Z)")
_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_REQUIRED = ("id", "run_id", "ts", "tenant_id", "environment")
_COLUMN_SET = frozenset(COLUMNS)
_PG_TYPES = ("uuid", "uuid", "timestamptz", "text", "text", "text", "text", "float8", "text", "timestamptz", "text")
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


# --- the fast lane --------------------------------------------------------------------------------


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
            resolution not in RESOLUTIONS
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
        row_id,  # canonical text: dumped straight to binary (_UuidTextDumper)
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


# --- writing a batch ------------------------------------------------------------------------------


class _CanonicalUuid:
    """Marker type: registering a dumper for it puts ``_UuidTextDumper`` in the uuid slot of a cursor."""


class _UuidTextDumper(Dumper):
    """Canonical UUID text to the binary uuid format, without building a uuid.UUID per value (the
    fast lane checked the text): ~5 µs less per row on the client, which shares the CPU with the server."""

    format = pq.Format.BINARY
    oid = psycopg.adapters.types["uuid"].oid

    def dump(self, obj: str) -> bytes:
        return bytes.fromhex(obj.replace("-", ""))


def _copy(conn: psycopg.Connection, table: sql.Composable, rows: list[tuple]) -> None:
    # Binary: the server parses no text (uuid, timestamptz); it is the side that bounds a load.
    stmt = sql.SQL("copy {} ({}) from stdin (format binary)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    cursor = conn.cursor()
    cursor.adapters.register_dumper(_CanonicalUuid, _UuidTextDumper)  # this cursor only
    with cursor.copy(stmt) as copy:
        copy.set_types(_PG_TYPES)
        write = copy.write_row
        for values in rows:
            write(values)


def _write_fast(conn: psycopg.Connection, rows: list[tuple]) -> int:
    """COPY fast-lane rows; returns rows inserted (straight in when every id sorts after the largest)."""
    if not rows:
        return 0
    target = sql.Identifier("devdiag", "diag_run")
    ids = [r[0] for r in rows]
    # Canonical lower-case UUID text sorts like the uuid itself (bytewise).
    top = conn.execute("select id::text from devdiag.diag_run order by id desc limit 1").fetchone()
    if len(set(ids)) == len(ids) and (top is None or min(ids) > top[0]):
        try:
            with conn.transaction():
                _copy(conn, target, rows)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass  # another writer took one of these ids meanwhile: the conflict-safe path below
    with conn.transaction():
        conn.execute(
            f"create temporary table if not exists {STAGE} "
            "(like devdiag.diag_run including defaults excluding constraints excluding indexes)"
        )
        conn.execute(f"truncate {STAGE}")
        _copy(conn, sql.Identifier(STAGE), rows)
        columns = ", ".join(COLUMNS)
        cur = conn.execute(
            f"insert into devdiag.diag_run ({columns}) select {columns} from {STAGE} on conflict (id) do nothing"
        )
        return cur.rowcount


@dataclass
class _Parsed:
    """One batch, parsed (no database): fast-lane values, writer rows, outcomes, bad lines."""

    lines: int = 0
    fast: list[tuple] = field(default_factory=list)
    fast_lines: list[tuple[int, str]] = field(default_factory=list)
    slow: list[tuple[int, RunRow]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)


def parse_batch(batch: list[tuple[int, bytes]]) -> _Parsed:
    parsed = _Parsed(lines=len(batch))
    loads = json.loads
    for number, raw in batch:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            parsed.bad.append({"line": number, "error": f"not UTF-8 (byte {error.start + 1})"})
            continue
        if not text.strip():
            continue
        try:
            data = loads(text)
        except ValueError:
            data = None
        values = fast_values(data) if data is not None else None
        if values is not None:
            parsed.fast.append(values)
            parsed.fast_lines.append((number, text))
            continue
        try:
            item = parse_line(text)  # the writer's verdict, with its message
        except ValueError as error:
            parsed.bad.append({"line": number, "error": str(error)})
            continue
        if isinstance(item, Outcome):
            parsed.outcomes.append(item)
        else:
            parsed.slow.append((number, item))
    return parsed


def _batches(lines: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


class Loader:
    def __init__(self, conn: psycopg.Connection, result: LoadResult, *, batch_size: int = BATCH) -> None:
        self.conn = conn
        self.result = result
        self.batch_size = batch_size
        self.outcomes: list[Outcome] = []

    def bad(self, line: int, error: str) -> None:
        self.result.bad_lines.append({"line": line, "error": error})

    def run(self, lines: Iterable[tuple[int, bytes]], progress: Progress | None = None) -> None:
        # Pipelined: a worker thread parses batch k+1 while this thread streams batch k to the
        # server (the GIL is free while we wait on the socket), so parsing and indexing overlap.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devdiag-parse") as parser:
            batches = _batches(lines, self.batch_size)
            ahead = parser.submit(parse_batch, next(batches, []))
            for batch in batches:
                current, ahead = ahead.result(), parser.submit(parse_batch, batch)
                self._write(current, progress)
            self._write(ahead.result(), progress)
        for outcome in self.outcomes:  # after every row: an outcome may update a row of this file
            self.result.outcomes += 1
            self.result.outcomes_applied += outcome.apply(self.conn)

    def _write(self, parsed: _Parsed, progress: Progress | None) -> None:
        self.result.lines += parsed.lines
        self.result.bad_lines.extend(parsed.bad)
        self.outcomes.extend(parsed.outcomes)
        self.result.rows += len(parsed.fast) + len(parsed.slow)
        if parsed.fast or parsed.slow:
            try:
                with self.conn.transaction():
                    inserted = _write_fast(self.conn, parsed.fast)
                    if parsed.slow:
                        inserted += writer.write_runs(self.conn, [row for _, row in parsed.slow])
                self.result.inserted += inserted  # counted once committed
            except (psycopg.DataError, psycopg.IntegrityError):
                self._one_by_one(parsed.fast_lines, parsed.slow)
        if progress is not None:
            progress.advance(parsed.lines)

    def _one_by_one(self, fast_lines: list[tuple[int, str]], slow: list[tuple[int, RunRow]]) -> None:
        """The database refused the batch: find the lines it refuses, keep the others."""
        rows: list[tuple[int, RunRow | Outcome]] = list(slow)
        for number, text in fast_lines:
            try:
                rows.append((number, parse_line(text)))
            except ValueError as error:
                self.result.rows -= 1
                self.bad(number, str(error))
        for number, row in sorted(rows, key=lambda r: r[0]):
            assert isinstance(row, RunRow)
            try:
                with self.conn.transaction():
                    self.result.inserted += writer.write_runs(self.conn, [row])
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                self.result.rows -= 1
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                self.bad(number, f"refused by the database: {first}")


@contextlib.contextmanager
def _open_lines(file: str) -> Iterator[Iterator[tuple[int, bytes]]]:
    if file == "-":
        yield enumerate(sys.stdin.buffer, start=1)
        return
    path = Path(file)
    if not path.is_file():
        raise click.ClickException(f"{file}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        yield enumerate(fh, start=1)


def load_file(
    conn: psycopg.Connection, file: str, *, strict: bool = False, batch_size: int = BATCH, quiet: bool = True
) -> LoadResult:
    """Load a JSONL file of runs; with ``strict`` any bad line loads nothing (``loaded`` False)."""
    result = LoadResult(file=file, strict=strict)
    started = time.perf_counter()
    outer = conn.transaction() if strict else contextlib.nullcontext()
    try:
        with _open_lines(file) as lines, Progress("loading", quiet=quiet, unit="lines") as progress, outer:
            Loader(conn, result, batch_size=batch_size).run(lines, progress)
            if strict and result.bad_lines:
                raise StrictAbort
    except StrictAbort:
        result.loaded, result.inserted, result.outcomes_applied = False, 0, 0
    result.seconds = time.perf_counter() - started
    return result


# --- commands -------------------------------------------------------------------------------------


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
            result = load_file(conn, file, strict=strict, batch_size=batch_size, quiet=as_json)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
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
