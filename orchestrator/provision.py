"""`devdiag setup`: the raw schema, the roles and their passwords, the fix catalog. Idempotent."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import click
import psycopg
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect
from orchestrator import dbt
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


# --- a team's own Grafana: one read role per tenant ----------------------------------------------------

TENANT_ROLE_PREFIX = "grafana_t_"
TENANT_SCHEMA_PREFIX = "devdiag_tenant_"
TENANT_ROLE_SETTINGS = {
    # a dashboard only reads, and one slow panel must not hold a connection for long
    "default_transaction_read_only": "on",
    "statement_timeout": "30s",
}


@dataclass(frozen=True)
class TenantReader:
    tenant: str
    role: str
    schema: str
    views: int
    created: bool


def tenant_slug(tenant: str) -> str:
    """The tenant's part of a role or schema name: lower-case letters, digits and _, with a short hash
    of the tenant id whenever that is not the id itself, so that two tenants never share one."""
    base = re.sub(r"[^a-z0-9]+", "_", tenant.lower()).strip("_")[:32] or "t"
    if base == tenant:
        return base
    return f"{base}_{hashlib.sha256(tenant.encode()).hexdigest()[:8]}"


def tenant_names(tenant: str) -> tuple[str, str]:
    """(role, schema) of a tenant's Grafana read role."""
    slug = tenant_slug(tenant)
    return TENANT_ROLE_PREFIX + slug, TENANT_SCHEMA_PREFIX + slug


def grafana_tenant(conn_settings: ConnectionSettings, tenant: str) -> TenantReader:
    """Create (or bring up to date) ``tenant``'s read role and its views; idempotent.

    The role may log in and read its schema's views and nothing else: no USAGE on ``devdiag``, no
    BYPASSRLS, read-only transactions. Its password is generated once and kept in secrets.json.
    """
    role, schema = tenant_names(tenant)
    verifier = scram_verifier(role_password(role))
    ident = sql.Identifier(role)
    with connect(conn_settings) as conn, conn.transaction():
        registered = conn.execute(
            "select role_name from devdiag.tenant_reader where tenant_id = %s", (tenant,)
        ).fetchone()
        role_exists = conn.execute("select from pg_roles where rolname = %s", (role,)).fetchone() is not None
        if role_exists and registered is None:
            raise click.ClickException(
                f"a role named {role} exists but is not DevDiag's read role of tenant {tenant}: "
                "rename or drop that role, then run this again"
            )
        try:
            if not role_exists:
                conn.execute(
                    sql.SQL(
                        "create role {} login nosuperuser nocreatedb nocreaterole noinherit nobypassrls "
                        "noreplication connection limit 20 password {}"
                    ).format(ident, verifier)
                )
            else:
                conn.execute(sql.SQL("alter role {} with login password {}").format(ident, verifier))
            for name, value in {**TENANT_ROLE_SETTINGS, "search_path": schema}.items():
                conn.execute(
                    sql.SQL("alter role {} set {} = {}").format(ident, sql.Identifier(name), sql.Literal(value))
                )
        except psycopg.errors.InsufficientPrivilege:
            raise click.ClickException(
                f"{conn_settings.describe()} refused to create role {role}: run this as the database owner "
                "with CREATEROLE (the account `devdiag setup` uses)"
            ) from None
        conn.execute(
            "insert into devdiag.tenant_reader (tenant_id, role_name, schema_name) values (%s, %s, %s) "
            "on conflict (tenant_id) do nothing",
            (tenant, role, schema),
        )
        row = conn.execute("select devdiag.refresh_tenant_views()").fetchone()
        views = conn.execute("select count(*) from pg_views where schemaname = %s", (schema,)).fetchone()
    assert row is not None and views is not None
    return TenantReader(tenant=tenant, role=role, schema=schema, views=int(views[0]), created=not role_exists)
