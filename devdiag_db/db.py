"""Connections with errors a person can act on. No message ever carries the password."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params

from devdiag_db.config import ConnectionSettings

CONNECT_TIMEOUT_S = 10
Query = str | bytes | sql.SQL | sql.Composed


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refuses us; the message says what to do."""


def explain(error: psycopg.OperationalError, where: ConnectionSettings) -> str:
    """One line naming the cause and the fix, for a failed connection."""
    text = str(error).lower()
    target = where.describe()
    if "password authentication failed" in text or "no password supplied" in text:
        return f"{target} refused the credentials: check {where.credential_variables}"
    if "does not exist" in text and "database" in text:
        return f"{target}: the database does not exist: create it, or set DEVDIAG_PG_DB"
    if "role" in text and "does not exist" in text:
        return f"{target}: that role does not exist: check DEVDIAG_PG_USER, or run `devdiag setup`"
    if "timeout" in text:
        return f"{target} did not answer within {CONNECT_TIMEOUT_S}s: check the host and the network"
    if any(s in text for s in ("connection refused", "no such file", "could not connect", "is the server running")):
        hint = "run `devdiag db start`" if where.embedded else f"check {where.variables} and that PostgreSQL runs"
        return f"{target} is not reachable: {hint}"
    if "could not translate host name" in text:
        return f"{target}: unknown host: check {where.variables}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{target}: {first}"


def connect(where: ConnectionSettings, *, autocommit: bool = True, **kwargs) -> psycopg.Connection:
    """Open a connection or raise DatabaseUnavailable with a one-line, secret-free reason."""
    try:
        return psycopg.connect(
            where.conninfo(),
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="devdiag",
            **kwargs,
        )
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(explain(error, where)) from None


TENANT_SETTING = "devdiag.tenant"


@contextlib.contextmanager
def tenant_transaction(
    conn: psycopg.Connection,
    tenant: str | None,
    *,
    statement_timeout_ms: int | None = None,
    synchronous_commit: bool = True,
) -> Iterator[psycopg.Connection]:
    """A transaction (a savepoint inside one) in which row-level security sees ``tenant`` only.

    The setting is transaction-local (``set local``), so it never outlives the transaction on a
    pooled connection; None or "" is no tenant: the server's role then sees and writes nothing. A
    ``statement_timeout_ms`` bounds each statement of the transaction. Without ``synchronous_commit``
    its commit returns before the WAL reaches the disk (PostgreSQL's ``synchronous_commit = off``:
    a database crash may lose it, never half of it). ``set local`` rather than
    ``set_config()``: on Citus the policies run on the workers, and only ``set local`` reaches them
    (``citus.propagate_set_commands = local``, set by `devdiag setup`).
    """
    settings = _set_tenant(tenant or "", synchronous_commit)
    if statement_timeout_ms is not None:
        timeout = sql.SQL("; set local statement_timeout = {}").format(max(int(statement_timeout_ms), 1))
        settings = sql.Composed([settings, timeout])
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():  # a savepoint in the caller's transaction, or psycopg's own
            conn.execute(settings)
            yield conn
        return
    # Outside one: ``begin`` and the settings in one round trip (a simple query without parameters),
    # where conn.transaction() would send them in two; every tool call opens one of these.
    try:
        conn.execute(sql.Composed([_BEGIN, settings]))
        yield conn
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):  # a broken connection: the pool discards it
                conn.execute("rollback")
        raise
    conn.execute("commit")


_BEGIN = sql.SQL("begin; ")


@functools.lru_cache(maxsize=1024)
def _set_tenant(tenant: str, synchronous_commit: bool) -> sql.Composed:
    """``set local devdiag.tenant = '...'`` (and ``synchronous_commit = off``), composed once per tenant
    and setting (every tool call sends it)."""
    tenant_setting = sql.SQL("set local {} = {}").format(sql.Identifier(*TENANT_SETTING.split(".")), tenant)
    return tenant_setting if synchronous_commit else tenant_setting + sql.SQL("; set local synchronous_commit = off")


def in_transaction(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` is inside a transaction that its caller opened (and will commit)."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def atomic(conn: psycopg.Connection) -> contextlib.AbstractContextManager:
    """A transaction of its own when ``conn`` is outside one; inside the caller's, nothing more: that
    transaction is already the unit that commits or rolls back, and a savepoint would cost two round
    trips (a tool call's session: docs/team-service.md "Figures")."""
    return contextlib.nullcontext(conn) if in_transaction(conn) else conn.transaction()


@contextlib.contextmanager
def advisory_lock(conn: psycopg.Connection, key: int) -> Iterator[bool]:
    """Try a session advisory lock for the block: yields whether it was taken, and releases it at the
    end. Closing the connection would release it too, but only once the server has ended the session,
    after the client has moved on: a second run started at once could find it still held."""
    taken = bool(scalar(conn, "select pg_try_advisory_lock(%s)", (key,)))
    try:
        yield taken
    finally:
        if taken:
            with contextlib.suppress(psycopg.Error):  # a lost connection has released it anyway
                conn.execute("select pg_advisory_unlock(%s)", (key,))


def array_literal(values: Iterable[object]) -> str:
    """``values`` as one PostgreSQL array literal (``{"a",NULL}``; each value as ``str`` gives it), for a
    parameter the statement casts (``%s::text[]``): psycopg adapts a list element by element in Python,
    about 10 us an array, more than some of the hot path's statements take to run."""
    return "{" + ",".join("NULL" if v is None else _quoted(str(v)) for v in values) + "}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def one_row(conn: psycopg.Connection, query: Query, params: Params | None = None) -> tuple[Any, ...]:
    """The one row of a query that always returns one (an aggregate, ``show``, a function call)."""
    row = conn.execute(query, params).fetchone()
    if row is None:  # a bug, not an input error: such a query always answers
        raise LookupError(f"no row from a query that always returns one: {str(query)[:80]}")
    return row


def scalar(conn: psycopg.Connection, query: Query, params: Params | None = None) -> Any:
    """The first column of ``one_row``: ``count(*)``, ``exists (...)``, ``show ...``."""
    return one_row(conn, query, params)[0]


def is_citus(conn: psycopg.Connection) -> bool:
    """Whether the citus extension is in this database (a Citus coordinator: the layout differs)."""
    return bool(scalar(conn, "select exists (select from pg_extension where extname = 'citus')"))
