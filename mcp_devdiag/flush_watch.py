"""The tool calls' writes that PostgreSQL has committed but not yet flushed to its disk.

With ``DEVDIAG_SYNCHRONOUS_COMMIT=off`` a tool call's commit returns before its WAL reaches the disk,
so the call does not wait out a disk that stalls (docs/team-service.md, Figures). A crash of
PostgreSQL in the next moment, or a full disk (PostgreSQL stops when it cannot write its WAL), would
then lose writes the tool had already answered for. So the server holds each such write until
PostgreSQL's WAL flush position has passed it, and the moment the database goes away or turns out to
have restarted, it writes what it still holds to the spool, which replays it idempotently (a run
already present is skipped, an outcome already in place changes nothing).

Lost then only: the writes of the last moments before this process and PostgreSQL die together (the
host's power, say), which a flush per commit would have kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from mcp_devdiag.spool import Outcome, Spool, SpoolFull
from mcp_devdiag.writer import RunRow

log = logging.getLogger(__name__)

Write = RunRow | Outcome
# Read after the writes committed, the insert position is past their commit records; PostgreSQL has
# them on disk once its flush position reaches it. The start time tells a restarted server apart.
POSITIONS = (
    "select pg_postmaster_start_time(), pg_current_wal_insert_lsn() - '0/0'::pg_lsn,"
    " pg_current_wal_flush_lsn() - '0/0'::pg_lsn"
)


@dataclass(frozen=True)
class _Waiting:
    writes: list[Write]
    position: int  # the WAL insert position read after they committed
    server: datetime  # the server's start time at that read


class FlushWatch:
    """Writes committed without waiting for the disk, held until PostgreSQL has flushed them."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._lock = threading.Lock()
        self._new: list[Write] = []  # committed; no position read since
        self._waiting: list[_Waiting] = []  # oldest first
        self._unsure: list[Write] = []  # their flush can no longer be confirmed: for the spool
        self._spool_failing = False  # logged once, not at every check (every 100 ms)

    def hold(self, writes: Sequence[Write]) -> None:
        """Keep ``writes``, whose transaction has just committed, until ``check`` sees them flushed."""
        with self._lock:
            self._new.extend(writes)

    def held(self) -> int:
        with self._lock:
            return len(self._unsure) + len(self._new) + sum(len(w.writes) for w in self._waiting)

    def check(self, conn: psycopg.Connection) -> int:
        """Read PostgreSQL's WAL positions once: release the writes it has flushed, give the writes
        committed since the last check the insert position read now, and spool the ones a restart of
        PostgreSQL may have lost. Returns how many are still held; a failed read raises (``spill`` then)."""
        with self._lock:
            new, self._new = self._new, []
        try:
            row = conn.execute(POSITIONS).fetchone()
        except BaseException:
            with self._lock:
                self._new[:0] = new
            raise
        assert row is not None
        server, inserted, flushed = row[0], int(row[1]), int(row[2])
        with self._lock:
            if new:
                self._waiting.append(_Waiting(new, inserted, server))
            kept = []
            for waiting in self._waiting:
                if waiting.server != server:
                    self._unsure.extend(waiting.writes)
                elif waiting.position > flushed:
                    kept.append(waiting)
            self._waiting = kept
        self._to_spool("PostgreSQL restarted before it had them on disk")
        return self.held()

    def spill(self, reason: str) -> int:
        """The database is away: write everything held to the spool, to be replayed when it is back.
        Returns how many writes went there; what the spool refuses (full, failing) stays held."""
        with self._lock:
            self._unsure.extend(w for waiting in self._waiting for w in waiting.writes)
            self._unsure.extend(self._new)
            self._waiting, self._new = [], []
        return self._to_spool(reason)

    def _to_spool(self, reason: str) -> int:
        with self._lock:
            writes, self._unsure = self._unsure, []
        if not writes:
            return 0
        try:
            self.spool.append(writes)
        except (SpoolFull, OSError) as error:
            with self._lock:
                self._unsure[:0] = writes  # never released by a flush now: spooled at the next try
            if not self._spool_failing:
                log.error(
                    "%d writes not confirmed on disk could not be spooled (%s): held, retried", len(writes), error
                )
            self._spool_failing = True
            return 0
        self._spool_failing = False
        log.warning("%d writes PostgreSQL had not confirmed on disk spooled for replay: %s", len(writes), reason)
        return len(writes)
