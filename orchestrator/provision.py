"""`devdiag setup`: the raw schema, the roles and their passwords, the fix catalog. Idempotent."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from orchestrator import dbt
from orchestrator.config import ConnectionSettings
from orchestrator.db import connect
from orchestrator.secrets import ROLE_ENV, role_password, scram_verifier


@dataclass(frozen=True)
class SetupReport:
    roles: tuple[str, ...]
    catalog_fixes: int


def setup(conn_settings: ConnectionSettings) -> SetupReport:
    dbt.run_operation(conn_settings, "devdiag_setup")
    with connect(conn_settings) as conn:
        _utc_days(conn, conn_settings.dbname)
        for role in ROLE_ENV:
            verifier = scram_verifier(role_password(role))
            conn.execute(sql.SQL("alter role {} with login password {}").format(sql.Identifier(role), verifier))
        fixes = sync_catalog(conn)
    return SetupReport(tuple(ROLE_ENV), fixes)


def _utc_days(conn: psycopg.Connection, dbname: str) -> None:
    """Days are UTC days: runbook SQL such as ``ts::date = current_date`` must agree with the views."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("alter database {} set timezone to 'UTC'").format(sql.Identifier(dbname)))
    except psycopg.errors.InsufficientPrivilege:
        pass  # not the database owner: the server's own timezone setting applies


def sync_catalog(conn: psycopg.Connection) -> int:
    """Mirror the packaged catalog's fixes and priors into devdiag.fix_catalog."""
    from mcp_devdiag.catalog import load_catalog

    rows = [
        (problem.code, fix.id, fix.title, fix.prior, rank)
        for problem in load_catalog()
        for rank, fix in enumerate(problem.fixes, start=1)
    ]
    with conn.transaction():
        conn.execute("create temporary table catalog_in (like devdiag.fix_catalog) on commit drop")
        with conn.cursor().copy(
            "copy catalog_in (problem_code, fix_id, fix_title, prior, catalog_rank) from stdin"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(
            """
            insert into devdiag.fix_catalog as c select * from catalog_in
            on conflict (problem_code, fix_id) do update
                set fix_title = excluded.fix_title, prior = excluded.prior, catalog_rank = excluded.catalog_rank
            """
        )
        conn.execute(
            "delete from devdiag.fix_catalog c where not exists "
            "(select from catalog_in i where i.problem_code = c.problem_code and i.fix_id = c.fix_id)"
        )
    return len(rows)
