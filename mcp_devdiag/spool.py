"""The local spool: runs and outcomes wait here, as JSONL, while the database is away.

Layout of the spool directory (``DEVDIAG_SPOOL_DIR``, default ``$DEVDIAG_HOME/spool``):

- ``pending.jsonl``: appended to, one ``write`` + ``fsync`` per tool call under an exclusive
  lock (``.lock``), so the rows of one run land together and survive a crash or power loss;
- ``claimed-<id>.jsonl``: a replay renames ``pending.jsonl`` (atomic, under the lock) and works
  on the renamed file, so appends never race a replay. The file is deleted only after every row
  is committed; a replay cut short leaves it for the next one. Replays are idempotent (rows by
  id, outcomes converge), so replaying a file twice, even from two processes, adds nothing twice;
- ``rejected.jsonl``: lines that can never load (torn by a crash, or invalid), kept with their
  file, line number and reason. A line is never fatal: whatever it holds (nesting of any depth,
  huge numbers, invalid UTF-8, lone surrogates, NUL, wrong types, megabytes without a newline) it
  is rejected alone, and the lines around it load.

Every file is created 0600 and the directory 0700: runs hold error text that may hold secrets
that redaction missed.

Line format, the same that ``devdiag load`` reads: a run row is ``RunRow.to_json()`` as is; an
outcome is ``{"outcome": {"run_id" | "finding_id", "resolution", "fix_id", "at"}}``.

Bounded: when pending and claimed files reach ``max_bytes``, appends are refused (SpoolFull)
and the caller says so, rather than filling the disk.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import psycopg

from devdiag_db.db import tenant_transaction
from mcp_devdiag import memory, safejson, writer
from mcp_devdiag.writer import RunRow

log = logging.getLogger(__name__)

PENDING = "pending.jsonl"
REJECTED = "rejected.jsonl"
LOCK = ".lock"
REPLAY_BATCH = 5_000
# A run row is at most ~30 kB (error text capped at 4,000 characters, \u-escaped); a longer line is
# rejected after reading only this much of it.
MAX_LINE_BYTES = 1024 * 1024
MAX_DEPTH = 8  # a row is one level deep, an outcome two
_KEEP_BYTES = 64 * 1024  # how much of an over-long line rejected.jsonl keeps
_LABEL_MAX = 200


class SpoolFull(Exception):
    """The spool reached its bound; the message says where and what to do."""


_OUTCOME_FIELDS = frozenset({"resolution", "at", "fix_id", "run_id", "finding_id", "tenant", "note"})


@dataclass(frozen=True)
class Outcome:
    """A recorded outcome waiting for the database (the arguments of ``writer.record_outcome``)."""

    resolution: str
    at: datetime
    run_id: str | None = None
    finding_id: str | None = None
    fix_id: str | None = None
    tenant: str | None = None  # the caller's tenant: a replay changes only that tenant's runs
    note: str | None = None  # what fixed it (already redacted and capped): kept in the team memory

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"resolution": self.resolution, "at": self.at.isoformat(), "fix_id": self.fix_id}
        if self.run_id:
            body["run_id"] = self.run_id
        else:
            body["finding_id"] = self.finding_id
        if self.tenant is not None:
            body["tenant"] = self.tenant
        if self.note is not None:
            body["note"] = self.note
        return {"outcome": body}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        body = data.get("outcome")
        if not isinstance(body, dict) or set(body) - _OUTCOME_FIELDS:
            raise ValueError(
                "outcome line: expected {'outcome': {run_id|finding_id, resolution, fix_id, at, tenant, note}}"
            )
        at = body.get("at")
        try:
            at = datetime.fromisoformat(at) if isinstance(at, str) else None
        except ValueError:
            at = None
        if at is None:
            raise ValueError(f"outcome line: at {_short(body.get('at'))} is not an ISO-8601 timestamp")
        for name in ("run_id", "finding_id"):
            value = body.get(name)
            if value is not None and not _is_uuid(value):
                raise ValueError(f"outcome line: {name} {_short(value)} is not a UUID")
        fix_id = body.get("fix_id")
        if not _is_label(fix_id):
            raise ValueError(f"outcome line: fix_id {_short(fix_id)} must be a fix id (text of 1 to 200 characters)")
        tenant = body.get("tenant")
        if not _is_label(tenant):
            raise ValueError(f"outcome line: tenant {_short(tenant)} must be a tenant (text of 1 to 200 characters)")
        note = body.get("note")
        if note is not None and not (isinstance(note, str) and len(note) <= memory.NOTE_REFUSED):
            raise ValueError(f"outcome line: note {_short(note)} must be text of at most {memory.NOTE_CAP} characters")
        resolution = body.get("resolution")
        outcome = cls(
            resolution=resolution if isinstance(resolution, str) else repr(resolution),
            at=at,
            run_id=body.get("run_id"),
            finding_id=body.get("finding_id"),
            fix_id=fix_id,
            tenant=tenant,
            note=memory.clean_note(note),
        )
        outcome.apply_check()
        return outcome

    def apply_check(self) -> None:
        if (self.run_id is None) == (self.finding_id is None):
            raise ValueError("outcome line: give exactly one of run_id or finding_id")
        if self.resolution not in writer.RESOLUTIONS:
            raise ValueError(f"outcome line: resolution {self.resolution!r} must be one of fixed, manual, failed")
        if self.at.tzinfo is None:
            raise ValueError("outcome line: at must carry a timezone")

    def apply(self, conn: psycopg.Connection) -> int:
        return writer.record_outcome(
            conn,
            run_id=self.run_id,
            finding_id=self.finding_id,
            resolution=self.resolution,
            fix_id=self.fix_id,
            at=self.at,
            tenant=self.tenant,
            note=self.note,
        )


def _is_label(value: Any) -> bool:
    """None, or a short text without NUL (an id or a name)."""
    return value is None or (isinstance(value, str) and 0 < len(value) <= _LABEL_MAX and "\x00" not in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({type(value).__name__} of {len(text):,} characters)"


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def parse_line(text: str) -> RunRow | Outcome:
    """One JSONL line: a run row or an outcome. Raises ValueError naming what is wrong, whatever
    the line holds (its nesting and numbers are bounded before it is parsed)."""
    data = safejson.loads(text, max_depth=MAX_DEPTH)
    if safejson.may_hold_lone_surrogates(text) and (lone := safejson.first_lone_surrogate(data)) is not None:
        raise ValueError(f"text that is not valid Unicode ({lone!a}): the database cannot store it")
    try:
        if isinstance(data, dict) and "outcome" in data:
            return Outcome.from_json(data)
        return RunRow.from_json(data)
    except (TypeError, OverflowError) as error:  # a value of a type the row's checks did not expect
        raise ValueError(f"a value of the wrong type ({error})") from None


def read_lines(fh: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, int | None]]:
    """(line number, line, None) for each line of ``fh``; a line longer than ``max_bytes`` comes as
    (number, its first ``max_bytes``, its full length): the rest is skipped, never held in memory."""
    number = 0
    while raw := fh.readline(max_bytes + 1):
        number += 1
        if len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield number, raw, None
            continue
        length, rest = len(raw), raw[-1:]
        while rest and not rest.endswith(b"\n"):
            rest = fh.readline(1024 * 1024)
            length += len(rest)
        yield number, raw[:max_bytes], length - rest.endswith(b"\n")


def too_long(length: int, max_bytes: int = MAX_LINE_BYTES) -> str:
    return f"line of {length:,} bytes, longer than {max_bytes:,}: not a record this program wrote"


@dataclass
class ReplayReport:
    files: int = 0
    rows: int = 0
    rows_inserted: int = 0
    outcomes: int = 0
    outcomes_applied: int = 0
    rejected: list[str] = field(default_factory=list)  # "file:line: reason"

    @property
    def rows_already_present(self) -> int:
        return self.rows - self.rows_inserted


@contextlib.contextmanager
def _locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive advisory lock on ``path`` (created if missing); yields False if busy and not blocking."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":  # pragma: no cover - Windows (mypy checks this branch on Windows only)
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform (Windows)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    # --- appending --------------------------------------------------------------------------------

    def append_rows(self, rows: list[RunRow]) -> None:
        self.append(rows)

    def append_outcome(self, outcome: Outcome) -> None:
        self.append([outcome])

    def append(self, writes: Sequence[RunRow | Outcome]) -> None:
        """Keep runs' rows and outcomes, in this order, with one flush to the disk."""
        self._append([write.to_json() for write in writes])

    def _append(self, records: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(r, ensure_ascii=True, separators=(",", ":")) + "\n" for r in records).encode()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(self.directory / LOCK):
            size = self.size_bytes()
            if size + len(payload) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory} is full ({size / 1048576:.1f} of {self.max_bytes / 1048576:.1f} MB): "
                    "this run was not kept; bring the database back and run `devdiag flush`, "
                    "or raise DEVDIAG_SPOOL_MAX_MB"
                )
            path = self.directory / PENDING
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                # A crash may have left a torn last line: start ours on a fresh line.
                if not created and os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
                    payload = b"\n" + payload
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.directory)

    # --- state ------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """Files waiting for replay: claimed ones (oldest first), then pending."""
        if not self.directory.is_dir():
            return []
        claimed = sorted(self.directory.glob("claimed-*.jsonl"))
        pending = self.directory / PENDING
        return claimed + ([pending] if pending.exists() else [])

    def size_bytes(self) -> int:
        total = 0
        for path in self.files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def pending(self) -> bool:
        """Anything to replay? Cheap enough to ask before every write."""
        for path in self.files():
            # Another worker may finish replaying a claimed file (and remove it) after it was listed.
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size > 0:
                    return True
        return False

    # --- replay -----------------------------------------------------------------------------------

    def _claim(self) -> None:
        pending = self.directory / PENDING
        with _locked(self.directory / LOCK):
            if pending.exists() and pending.stat().st_size > 0:
                pending.rename(self.directory / f"claimed-{uuid.uuid1().hex}.jsonl")
                _fsync_dir(self.directory)

    def replay(self, conn: psycopg.Connection) -> ReplayReport:
        """Write everything spooled; idempotent. A database error leaves the rest for the next replay."""
        report = ReplayReport()
        if not self.directory.is_dir():
            return report
        self._claim()
        for path in sorted(self.directory.glob("claimed-*.jsonl")):
            with _locked(path.with_suffix(".lock"), blocking=False) as mine:
                if not mine or not path.exists():
                    continue  # another process is replaying this file
                self._replay_file(conn, path, report)
                path.unlink()
                _fsync_dir(self.directory)
            with contextlib.suppress(FileNotFoundError):
                path.with_suffix(".lock").unlink()
            report.files += 1
        if report.rows or report.outcomes:
            log.info(
                "spool replayed: %d rows (%d new), %d outcomes, %d lines rejected",
                report.rows,
                report.rows_inserted,
                report.outcomes,
                len(report.rejected),
            )
        return report

    def _replay_file(self, conn: psycopg.Connection, path: Path, report: ReplayReport) -> None:
        rows: list[tuple[int, RunRow]] = []  # (line number, row)
        outcomes: list[tuple[int, Outcome]] = []
        with open(path, "rb") as fh, self._rejects() as rejects:
            for number, raw, length in read_lines(fh):
                where = f"{path.name}:{number}"
                if length is not None:
                    kept = raw[:_KEEP_BYTES].decode("utf-8", "backslashreplace") + " [... cut]"
                    self._reject(rejects, report, where, too_long(length), kept)
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:  # the spool writes ASCII: this is damage
                    line = raw.decode("utf-8", "backslashreplace")
                    self._reject(rejects, report, where, f"not UTF-8 (byte {error.start + 1})", line)
                    continue
                if not line.strip():
                    continue
                try:
                    item = parse_line(line)
                except ValueError as error:
                    self._reject(rejects, report, where, str(error), line)
                    continue
                if isinstance(item, Outcome):
                    outcomes.append((number, item))
                else:
                    rows.append((number, item))
                    if len(rows) >= REPLAY_BATCH:
                        self._write_rows(conn, rows, report, rejects, path.name)
                        rows = []
            self._write_rows(conn, rows, report, rejects, path.name)
            # Outcomes after rows: they update rows that may have been spooled with them.
            for number, outcome in outcomes:
                report.outcomes += 1
                try:
                    with tenant_transaction(conn, outcome.tenant):
                        report.outcomes_applied += outcome.apply(conn)
                except (psycopg.DataError, psycopg.IntegrityError) as error:
                    line = json.dumps(outcome.to_json()) + "\n"
                    self._reject(rejects, report, f"{path.name}:{number}", _first_line(error), line)

    def _write_rows(
        self,
        conn: psycopg.Connection,
        rows: list[tuple[int, RunRow]],
        report: ReplayReport,
        rejects: IO[str],
        name: str,
    ) -> None:
        if not rows:
            return
        report.rows += len(rows)
        # A server's spool may hold several tenants' runs: each is written under its own tenant.
        for tenant, group in itertools.groupby(sorted(rows, key=lambda r: r[1].tenant_id), lambda r: r[1].tenant_id):
            self._write_tenant_rows(conn, tenant, list(group), report, rejects, name)

    def _write_tenant_rows(
        self,
        conn: psycopg.Connection,
        tenant: str,
        rows: list[tuple[int, RunRow]],
        report: ReplayReport,
        rejects: IO[str],
        name: str,
    ) -> None:
        try:
            with tenant_transaction(conn, tenant):
                report.rows_inserted += writer.write_runs(conn, [row for _, row in rows], batch_size=REPLAY_BATCH)
        except (psycopg.DataError, psycopg.IntegrityError):
            # One row the database refuses must not hold back the others: write them one by one.
            for number, row in rows:
                try:
                    with tenant_transaction(conn, tenant):
                        report.rows_inserted += writer.write_runs(conn, [row])
                except (psycopg.DataError, psycopg.IntegrityError) as error:
                    line = json.dumps(row.to_json()) + "\n"
                    reason = f"refused by the database (id {row.id}): {_first_line(error)}"
                    self._reject(rejects, report, f"{name}:{number}", reason, line)

    @contextlib.contextmanager
    def _rejects(self) -> Iterator[IO[str]]:
        fd = os.open(self.directory / REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if hasattr(os, "fchmod"):  # one made 0644 by an older version: 0600 like the rest
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)
        with open(fd, "a", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def _reject(rejects: IO[str], report: ReplayReport, where: str, reason: str, line: str) -> None:
        report.rejected.append(f"{where}: {reason}")
        rejects.write(json.dumps({"where": where, "reason": reason, "line": line.rstrip("\n")}) + "\n")
        log.warning("spool line rejected (%s): %s", where, reason)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
