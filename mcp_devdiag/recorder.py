"""Write-or-spool: the server's one door to the database.

- A small psycopg pool, opened lazily on first use; every connection attempt is bounded by a
  short timeout (``DEVDIAG_CONNECT_TIMEOUT``, 2 s) so a database that is away never stalls a tool
  for long.
- A circuit breaker: after a failure, calls skip the database at once (runs go to the spool)
  until a retry time that backs off from 1 s to 30 s; the next attempt after it probes again.
- Before every successful write the spool is replayed (idempotent), so rows and outcomes land
  in order: a spooled run exists before its spooled outcome is applied.
- With commits that do not wait for the disk (``DEVDIAG_SYNCHRONOUS_COMMIT=off``, the default), a
  thread holds each call's writes until PostgreSQL has flushed them, and spools them if it went
  away first (mcp_devdiag.flush_watch).

What counts as "the database is away" (spool, do not fail the tool): no connection, refused
credentials, a connection lost mid-call, a schema that is not set up, missing privileges.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from devdiag_db.db import DatabaseUnavailable, explain, is_citus, tenant_transaction
from mcp_devdiag.flush_watch import FlushWatch, Write
from mcp_devdiag.settings import DatabaseTarget, ServerSettings
from mcp_devdiag.spool import Outcome, ReplayReport, Spool, SpoolFull
from mcp_devdiag.writer import RunRow, write_runs

log = logging.getLogger(__name__)

Destination = Literal["database", "spool", "dropped"]
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
# Grown on demand from one: a laptop server uses one or two. For `devdiag serve` (40 tool threads a
# worker) more is not faster: on 2 cores, 12 connections a worker ran more transactions at once than
# the cores could, and each held its row locks while its thread waited for the CPU (benchmarks/serve.py,
# 4 against 12 in turn: 241 against 182 calls/s back to back; at 200 calls/s p99 16-31 against 22-146 ms).
POOL_MAX = 4
STATEMENT_TIMEOUT_MS = 10_000
# How often the flush watch reads PostgreSQL's WAL positions while it holds writes: what it holds is
# about this much more than PostgreSQL's own flush delay (wal_writer_delay, 200 ms).
FLUSH_CHECK_S = 0.1
FLUSH_WAIT_AT_CLOSE_S = 3.0
TIMEOUT_SLACK_MS = 500
# Errors that mean "not usable right now" rather than "this row is wrong".
_AWAY = (
    psycopg.OperationalError,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.InvalidSchemaName,
    PoolTimeout,
)


@dataclass(frozen=True)
class Session:
    conn: psycopg.Connection
    replayed: int = 0  # spooled rows written before the call's own work
    writes: list[Write] = field(default_factory=list)  # what the call wrote, to redo if PostgreSQL loses it


@dataclass(frozen=True)
class WriteResult:
    recorded: Destination
    detail: str | None = None  # why it was spooled or dropped; None when written
    replayed: int = 0  # spooled rows written before this one


def _reason(error: BaseException, target: DatabaseTarget) -> str:
    if isinstance(error, DatabaseUnavailable):
        return str(error)
    where = target.describe()
    if isinstance(error, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return f"{where}: the devdiag schema is not set up: run `devdiag setup`"
    if isinstance(error, psycopg.errors.UndefinedFunction):
        return f"{where}: devdiag.fix_confidence is missing: run `devdiag setup`"
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return f"{where}: the role lacks a privilege on devdiag ({_first_line(error)}): run `devdiag setup`"
    if isinstance(error, PoolTimeout):
        return f"{where}: no connection within the connect timeout"
    if isinstance(error, psycopg.OperationalError):
        try:
            return explain(error, target.resolve())
        except DatabaseUnavailable as unavailable:
            return str(unavailable)
    return f"{where}: {_first_line(error)}"


# A connection that answered a moment ago is alive: checking it again before every call cost a
# round trip per call (benchmarks/serve.py). One idle longer may have outlived a server restart.
CHECK_AFTER_IDLE_S = 2.0
_last_used: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection) -> None:
    if time.monotonic() - _last_used.get(conn, 0.0) > CHECK_AFTER_IDLE_S:
        ConnectionPool.check_connection(conn)


def _configure(conn: psycopg.Connection) -> None:
    # A database that answers but hangs (a lock, a runaway query) must not hang the tool either.
    conn.execute(f"set statement_timeout = {STATEMENT_TIMEOUT_MS}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Recorder:
    def __init__(
        self, target: DatabaseTarget, spool: Spool, *, connect_timeout: float = 2.0, synchronous_commit: bool = False
    ) -> None:
        self.target = target
        self.spool = spool
        self.connect_timeout = connect_timeout
        self.synchronous_commit = synchronous_commit  # of tool calls; replays always wait for the disk
        self._watch = None if synchronous_commit else FlushWatch(spool)
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_S
        self._down_reason: str | None = None

    @classmethod
    def for_settings(cls, settings: ServerSettings) -> Recorder:
        """The recorder the tools' settings describe (its database, spool, timeouts, durability)."""
        return cls(
            settings.database,
            Spool(settings.spool_dir, settings.spool_max_bytes),
            connect_timeout=settings.connect_timeout_s,
            synchronous_commit=settings.synchronous_commit,
        )

    # --- connections ------------------------------------------------------------------------------

    @property
    def down_reason(self) -> str | None:
        """Why the database is being skipped right now, or None."""
        return self._down_reason if time.monotonic() < self._retry_at else None

    @property
    def _libpq_timeout(self) -> int:
        return max(2, round(self.connect_timeout))  # libpq takes whole seconds, 2 at least

    def _open_pool(self) -> ConnectionPool:
        where = self.target.resolve()
        conninfo = where.conninfo()
        timeout = self._libpq_timeout
        # Probe once directly: the pool would hide why a connection fails (credentials? refused?).
        try:
            with psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True) as probe:
                if self._watch is not None and is_citus(probe):
                    self._commits_wait("on Citus the flush watch would see the coordinator's WAL only")
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(explain(error, where)) from None
        pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=POOL_MAX,
            open=False,
            timeout=self.connect_timeout,
            reconnect_timeout=self.connect_timeout,
            max_idle=300,
            check=_check_if_idle,  # a server restart leaves dead sockets behind
            configure=_configure,
            kwargs={"autocommit": True, "connect_timeout": timeout, "application_name": "mcp-devdiag"},
            name="mcp-devdiag",
        )
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
        except BaseException:
            pool.close(timeout=0)
            raise
        return pool

    def _trip(self, reason: str) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            changed = reason != self._down_reason
            self._down_reason = reason
        if changed:
            log.warning("database unavailable, using the spool: %s", reason)
        if pool is not None:
            # Closing waits for the pool's workers; do it aside so the tool answers now.
            threading.Thread(target=pool.close, kwargs={"timeout": 1.0}, daemon=True).start()

    def _healthy(self) -> None:
        if self._down_reason is not None:
            log.warning("database reachable again: %s", self.target.describe())
        self._down_reason = None
        self._backoff = BACKOFF_START_S

    @contextlib.contextmanager
    def connection(self, deadline: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; DatabaseUnavailable (fast while the breaker is open) if none.

        It belongs to no tenant: the server's role sees no row through it outside ``session``.
        """
        if self.down_reason is not None:
            raise DatabaseUnavailable(self._down_reason)
        try:
            with self._lock:
                if self._pool is None:
                    self._pool = self._open_pool()
                pool = self._pool
            left = None if deadline is None else deadline - time.monotonic()
            wait = self.connect_timeout if left is None else max(min(self.connect_timeout, left), 0.05)
            with pool.connection(timeout=wait) as conn:
                yield conn
                _last_used[conn] = time.monotonic()
        except _AWAY as error:
            reason = _reason(error, self.target)
            self._trip(reason)
            raise DatabaseUnavailable(reason) from None
        except DatabaseUnavailable as error:
            self._trip(str(error))
            raise
        self._healthy()

    @contextlib.contextmanager
    def session(self, tenant: str, deadline: float | None = None, *, replay: bool = False) -> Iterator[Session]:
        """One tool call's database work: a transaction in which row-level security shows ``tenant``'s
        rows only, its statements cut off at ``deadline``. With ``replay``, the spool is replayed first,
        in transactions of its own (a replayed row is committed whatever the call does next)."""
        with self.connection(deadline) as conn:
            replayed = self.replay(conn) if replay else None
            left_ms = None if deadline is None else int((deadline - time.monotonic()) * 1000)
            # The connection's own statement_timeout is the deadline's but for the slack: a shorter one
            # only when it matters (a second statement to parse in every call otherwise).
            timeout = left_ms if left_ms is not None and left_ms < STATEMENT_TIMEOUT_MS - TIMEOUT_SLACK_MS else None
            with tenant_transaction(
                conn, tenant, statement_timeout_ms=timeout, synchronous_commit=self.synchronous_commit
            ):
                session = Session(conn, replayed.rows_inserted if replayed else 0)
                yield session
            if session.writes and self._watch is not None:
                self._watch.hold(session.writes)
                self._start_watcher()

    def close(self) -> None:
        """Close the pool; wait a moment for PostgreSQL to flush the writes still held, spool the rest."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()
        if self._watch is not None and self._watch.held():
            self._drain(time.monotonic() + FLUSH_WAIT_AT_CLOSE_S)
        self._watcher, self._closing = None, threading.Event()  # used again, it watches again
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=2.0)

    # --- the flush watch --------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Writes committed but not yet confirmed on PostgreSQL's disk (0 when commits wait for it)."""
        return self._watch.held() if self._watch is not None else 0

    def _commits_wait(self, why: str) -> None:
        log.info("tool calls' commits wait for the disk: %s", why)
        self.synchronous_commit, self._watch = True, None

    def _start_watcher(self) -> None:
        if self._watcher is None and not self._closing.is_set():
            with self._lock:
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch_loop, name="flush-watch", daemon=True)
                    self._watcher.start()

    def _watch_loop(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._closing.wait(FLUSH_CHECK_S):
            conn = self._check_flushed(conn)
        if conn is not None:
            conn.close()

    def _check_flushed(self, conn: psycopg.Connection | None) -> psycopg.Connection | None:
        """One look at PostgreSQL's flush position, on a connection of the watch's own (never one a tool
        call waits for). Any failure spools what is held: a replay of what was flushed after all is a no-op."""
        watch = self._watch
        if watch is None or not watch.held():
            return conn
        try:
            if conn is None or conn.closed:
                where = self.target.resolve()
                conn = psycopg.connect(
                    where.conninfo(),
                    autocommit=True,
                    connect_timeout=self._libpq_timeout,
                    application_name="mcp-devdiag flush watch",
                )
                _configure(conn)
            watch.check(conn)
            return conn
        except (psycopg.Error, DatabaseUnavailable) as error:
            watch.spill(_reason(error, self.target))
            if conn is not None:
                conn.close()
            return None

    def _drain(self, deadline: float) -> None:
        conn = None
        while self.held and time.monotonic() < deadline:
            conn = self._check_flushed(conn)
            if conn is None:
                break  # spooled
            time.sleep(0.05)
        if conn is not None:
            conn.close()
        if self._watch is not None and self._watch.held():
            self._watch.spill("the server stopped before PostgreSQL confirmed them on disk")

    # --- writes -----------------------------------------------------------------------------------

    def replay(self, conn: psycopg.Connection) -> ReplayReport | None:
        """Replay the spool if it holds anything. A database away propagates (the caller spools);
        any other failure is logged and left for the next replay or `devdiag flush`."""
        if not self.spool.pending():
            return None
        try:
            return self.spool.replay(conn)
        except _AWAY:
            raise
        except (psycopg.Error, OSError) as error:
            log.error("spool replay failed (%s): kept in %s for the next try", _first_line(error), self.spool.directory)
            return None

    def write(self, rows: list[RunRow]) -> WriteResult:
        """Write the rows of one run (one transaction, the spool replayed first), or spool them.
        Loses nothing and never raises for the database: away, the rows go to the spool."""
        try:
            with self.session(rows[0].tenant_id, replay=True) as session:
                return self.write_on(session, rows)
        except DatabaseUnavailable as error:
            return self.spool_rows(rows, str(error))

    def write_on(self, session: Session, rows: list[RunRow]) -> WriteResult:
        """Write the run in a ``session`` of its tenant.

        A database away propagates (``connection()`` turns it into DatabaseUnavailable; spool
        then). A database that refuses the rows, which the writer's validation should make
        impossible, gets them spooled too, with an error in the log: nothing is lost (the session's
        transaction, aborted, then commits nothing).
        """
        for row in rows:
            row.validate()
        try:
            write_runs(session.conn, rows)
        except _AWAY:
            raise
        except psycopg.Error as error:
            log.error("the database refused a run (%s): spooled", _first_line(error))
            return self.spool_rows(rows, f"the database refused it: {_first_line(error)}")
        session.writes.extend(rows)
        return WriteResult("database", replayed=session.replayed)

    def spool_rows(self, rows: list[RunRow], reason: str) -> WriteResult:
        return self._spool(lambda: self.spool.append_rows(rows), reason)

    def spool_outcome(self, outcome: Outcome, reason: str) -> WriteResult:
        return self._spool(lambda: self.spool.append_outcome(outcome), reason)

    def _spool(self, append, reason: str) -> WriteResult:
        try:
            append()
        except SpoolFull as full:
            log.error("%s", full)
            return WriteResult("dropped", f"{reason}; {full}")
        except OSError as error:
            log.error("spool write failed in %s: %s", self.spool.directory, error)
            return WriteResult("dropped", f"{reason}; the spool {self.spool.directory} failed: {error.strerror}")
        return WriteResult("spool", f"{reason}; kept in the spool {self.spool.directory}, replayed automatically")
