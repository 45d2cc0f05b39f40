"""`devdiag setup`: the raw schema, the roles and their passwords, the fix catalog. Idempotent."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import click
import psycopg
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect, is_citus
from orchestrator import dbt
from orchestrator.secrets import ROLE_ENV, role_password, scram_verifier

# pg_stat_statements: the runbook's slow-query review (`devdiag perf`); pg_trgm: the team memory's
# similarity of error signatures. In schema public, where the runbook's unqualified
# `from pg_stat_statements` finds it.
EXTENSIONS = ("pg_stat_statements", "pg_trgm")


@dataclass(frozen=True)
class SetupReport:
    roles: tuple[str, ...]
    catalog_fixes: int
    extensions: tuple[str, ...] = ()  # created or already there
    missing: tuple[str, ...] = ()  # one line each: which extension and what to do
    citus: CitusLayout | None = None  # on a Citus coordinator: how the raw table is spread


@dataclass(frozen=True)
class CitusLayout:
    workers: int
    shards: int  # of diag_run
    distributed: tuple[str, ...]  # tables distributed by tenant_id (diag_run and co-located dbt tables)
    reference: tuple[str, ...]  # tables copied to every node

    def describe(self) -> str:
        return (
            f"citus: diag_run distributed by tenant_id ({self.shards} shards on {self.workers} workers); "
            f"reference tables: {', '.join(self.reference) or 'none'}"
        )


def setup(conn_settings: ConnectionSettings, *, citus: bool = False) -> SetupReport:
    """The raw schema, roles, catalog and extensions; on a Citus coordinator (the extension is in
    the database, or ``citus`` asks for it) the distributed layout too (macros/citus.sql)."""
    if citus:
        require_citus(conn_settings)
    with connect(conn_settings) as conn:  # first: the raw schema's indexes use them
        extensions, missing = create_extensions(conn)
    dbt.run_operation(conn_settings, "devdiag_setup")
    with connect(conn_settings) as conn:
        _utc_days(conn, conn_settings.dbname)
        untracked(conn)
        for role in ROLE_ENV:
            verifier = scram_verifier(role_password(role))
            conn.execute(sql.SQL("alter role {} with login password {}").format(sql.Identifier(role), verifier))
        fixes = sync_catalog(conn)
        layout = citus_layout(conn)
    return SetupReport(tuple(ROLE_ENV), fixes, extensions, missing, layout)


def require_citus(conn_settings: ConnectionSettings) -> None:
    """Create the citus extension in the database, or say in one line why it cannot be."""
    with connect(conn_settings) as conn:
        row = conn.execute(
            "select exists (select from pg_available_extensions where name = 'citus'), "
            "'citus' = any(string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
        ).fetchone()
        if row is None or not all(row):
            raise click.ClickException(
                f"{conn_settings.describe()} is not a Citus coordinator (citus is not installed or not in "
                "shared_preload_libraries): point DEVDIAG_PG_DSN at one (`devdiag cluster up` starts one here), "
                "or run setup without --citus"
            )
        try:
            conn.execute("create extension if not exists citus")
        except psycopg.errors.InsufficientPrivilege:
            raise click.ClickException(
                f"{conn_settings.describe()}: this login may not create extension citus; a superuser can, "
                "then run setup again"
            ) from None


def citus_layout(conn: psycopg.Connection) -> CitusLayout | None:
    """The distributed layout of schema devdiag, None where Citus is not installed in the database."""
    if not is_citus(conn):
        return None
    tables = conn.execute(
        "select logicalrelid::regclass::text, partmethod from pg_dist_partition "
        "where logicalrelid::regclass::text like 'devdiag.%' order by 1"
    ).fetchall()
    row = conn.execute(
        "select (select count(*) from pg_dist_node where noderole = 'primary' and groupid <> 0), "
        "(select count(*) from pg_dist_shard where logicalrelid = 'devdiag.diag_run'::regclass)"
    ).fetchone()
    assert row is not None
    return CitusLayout(
        workers=int(row[0]),
        shards=int(row[1]),
        distributed=tuple(name.removeprefix("devdiag.") for name, method in tables if method == "h"),
        reference=tuple(name.removeprefix("devdiag.") for name, method in tables if method == "n"),
    )


def untracked(conn: psycopg.Connection) -> None:
    """Keep this session's utility statements (role passwords' SCRAM verifiers) out of
    pg_stat_statements, whose query texts pg_read_all_stats members read. Only a superuser may set
    it; otherwise the server's own setting decides (the embedded server's is off)."""
    try:
        with conn.transaction():
            conn.execute("set pg_stat_statements.track_utility = off")
    except psycopg.errors.InsufficientPrivilege:
        pass


def create_extensions(conn: psycopg.Connection) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Create EXTENSIONS where the server has them: (present, why-not lines). An external server
    without them, or a login that may not create them, is no reason to fail setup."""
    present, missing = [], []
    for name in EXTENSIONS:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("create extension if not exists {} schema public").format(sql.Identifier(name)))
            present.append(name)
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile):  # 0A000 since 15, 58P01 before
            missing.append(f"{name}: this PostgreSQL does not ship it (install its contrib package)")
        except psycopg.errors.InsufficientPrivilege:
            missing.append(f"{name}: this login may not create it; a superuser can: `create extension {name}`")
        except psycopg.errors.InvalidSchemaName:
            missing.append(f"{name}: schema public does not exist; `create extension {name}` in another schema")
    return tuple(present), tuple(missing)


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
    # arrays, not a temporary table: on Citus fix_catalog is a reference table, and a statement may
    # not join it with a table the cluster does not know
    columns = [list(column) for column in zip(*rows, strict=True)]
    with conn.transaction():
        conn.execute(
            """
            insert into devdiag.fix_catalog as c (problem_code, fix_id, fix_title, prior, catalog_rank)
            select * from unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::int[])
            on conflict (problem_code, fix_id) do update
                set fix_title = excluded.fix_title, prior = excluded.prior, catalog_rank = excluded.catalog_rank
            """,
            columns,
        )
        conn.execute(
            "delete from devdiag.fix_catalog where problem_code || ' ' || fix_id <> all(%s::text[])",
            ([f"{code} {fix_id}" for code, fix_id, *_ in rows],),
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
        if citus_layout(conn) is not None:
            # Citus reads a view's shards with the querying role's rights, so the role would need the
            # distributed tables themselves, every tenant's rows in them
            raise click.ClickException(
                "a tenant's own Grafana role is not available on Citus: the workers check the reader's rights "
                "on the tables under the views, which hold every tenant's rows; give that team's Grafana the "
                "grafana role with the dashboard's tenant variable, or run it a DevDiag of its own"
            )
        untracked(conn)
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
