"""Tenants are isolated in PostgreSQL, not only in Python: raw SQL as the server's role, with tenant A
set, never sees or touches a row of tenant B; Grafana still reads all tenants through the views; a
tenant's own Grafana role reads that tenant's views and nothing else, across `dbt build`s.

Everything runs against a real PostgreSQL over the roles' own TCP password logins.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import click
import psycopg
import pytest
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import connect, tenant_transaction
from tests.python.conftest import login, own_database

A, B = "acme", "globex"  # two of the demo's tenants
TENANT_VIEWS = (
    "v_activity_hourly",
    "v_env_diversity",
    "v_fix_ranking",
    "v_fix_success",
    "v_problem_counts",
    "v_recent_activity",
    "v_ttr_days",
)


@pytest.fixture(scope="module")
def db(pg: ConnectionSettings) -> Iterator[ConnectionSettings]:
    """A database of its own with the demo's three tenants, built, and tenant A's Grafana role."""
    from orchestrator import dbt
    from orchestrator.demo_data import load_demo
    from orchestrator.provision import grafana_tenant, tenant_names

    with own_database(pg, "devdiag_rls") as settings:
        load_demo(settings, runs=3000, seed=11, now=datetime.now(UTC))
        broken = [r.name for r in dbt.build(settings, ["build"]) if r.status in {"error", "fail"}]
        assert not broken, broken
        grafana_tenant(settings, A)
        yield settings
    with connect(pg) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(tenant_names(A)[0])))


@pytest.fixture
def writer(db: ConnectionSettings) -> Iterator[psycopg.Connection]:
    with connect(login(db, "devdiag_writer")) as conn:
        yield conn


def owner_count(db: ConnectionSettings, where: str = "true", args: tuple = ()) -> int:
    with connect(db) as conn:
        return conn.execute(f"select count(*) from devdiag.diag_run where {where}", args).fetchone()[0]


# --- the writer, with a tenant set -----------------------------------------------------------------


def test_writer_sees_only_its_tenant(db: ConnectionSettings, writer: psycopg.Connection) -> None:
    assert owner_count(db, "tenant_id = %s", (B,)) > 0
    with tenant_transaction(writer, A):
        assert writer.execute("select count(*) from devdiag.diag_run where tenant_id = %s", (B,)).fetchone()[0] == 0
        seen = writer.execute("select tenant_id, count(*) from devdiag.diag_run group by 1").fetchall()
    assert seen == [(A, owner_count(db, "tenant_id = %s", (A,)))]


def test_writer_cannot_insert_for_another_tenant(writer: psycopg.Connection) -> None:
    refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security")
    with refused, tenant_transaction(writer, A):
        writer.execute(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
            "values (gen_random_uuid(), gen_random_uuid(), now(), %s, 'linux')",
            (B,),
        )


def test_a_tenant_transaction_is_one_unit_and_its_tenant_ends_with_it(
    db: ConnectionSettings, writer: psycopg.Connection
) -> None:
    """Every tool call's session: ``begin`` and ``set local`` sent together; what it wrote commits as
    one, or not at all when it raises (an error of Python's or of the database's); the connection is
    idle and without a tenant after; inside a caller's transaction it is a savepoint."""
    ids = [uuid.uuid4() for _ in range(5)]

    def insert(i: int) -> None:
        writer.execute(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
            "values (%s, gen_random_uuid(), now(), %s, 'linux')",
            (ids[i], A),
        )

    def stored() -> list[bool]:
        return [owner_count(db, "id = %s", (i,)) == 1 for i in ids]

    try:
        with tenant_transaction(writer, A):
            insert(0)
        with pytest.raises(ZeroDivisionError), tenant_transaction(writer, A):
            insert(1)
            _ = 1 / 0
        with pytest.raises(psycopg.errors.DivisionByZero), tenant_transaction(writer, A):
            insert(2)
            writer.execute("select 1 / 0")
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert writer.execute("select current_setting('devdiag.tenant', true)").fetchone()[0] in (None, "")
        with tenant_transaction(writer, A):
            insert(3)
            with pytest.raises(psycopg.errors.DivisionByZero), tenant_transaction(writer, A):
                insert(4)
                writer.execute("select 1 / 0")
        assert stored() == [True, False, False, True, False]
    finally:
        with connect(db) as conn:
            conn.execute("delete from devdiag.diag_run where id = any(%s)", (ids,))


def test_writer_cannot_move_its_own_row_to_another_tenant_or_touch_theirs(
    db: ConnectionSettings, writer: psycopg.Connection
) -> None:
    pending_b = owner_count(db, "tenant_id = %s and resolution is null", (B,))
    with tenant_transaction(writer, A):
        touched = writer.execute(
            "update devdiag.diag_run set resolution = 'failed', resolved_at = now() where tenant_id = %s", (B,)
        ).rowcount
    assert touched == 0
    assert owner_count(db, "tenant_id = %s and resolution is null", (B,)) == pending_b


@pytest.mark.parametrize(
    "statement",
    [
        "update devdiag.diag_run set ts = '1970-01-01' where tenant_id = 'acme'",
        "update devdiag.diag_run set tenant_id = 'globex' where tenant_id = 'acme'",
        "update devdiag.diag_run set error_msg = 'x' where tenant_id = 'acme'",
        "delete from devdiag.diag_run where tenant_id = 'acme'",
        "truncate devdiag.diag_run",
        "lock table devdiag.diag_run in access exclusive mode",
        "lock table devdiag.diag_run in share mode",  # would stall every writer
        "select * from devdiag.api_token",
        "select * from devdiag.tenant_reader",
        "select * from devdiag.int_fix_outcomes",
        "alter table devdiag.diag_run disable row level security",
        "drop policy tenant_isolation on devdiag.diag_run",
        "set role grafana",
        "select devdiag.refresh_tenant_views()",
    ],
    ids=lambda s: s[:48],
)
def test_writer_is_refused(db: ConnectionSettings, writer: psycopg.Connection, statement: str) -> None:
    before = owner_count(db, "tenant_id = %s and ts > '1971-01-01'", (A,))
    refused = pytest.raises(psycopg.errors.InsufficientPrivilege)
    with refused, tenant_transaction(writer, A):
        writer.execute(statement)
    assert owner_count(db, "tenant_id = %s and ts > '1971-01-01'", (A,)) == before


def test_without_a_tenant_the_writer_sees_and_writes_nothing(writer: psycopg.Connection) -> None:
    assert writer.execute("select count(*) from devdiag.diag_run").fetchone()[0] == 0
    with tenant_transaction(writer, None):
        assert writer.execute("select count(*) from devdiag.diag_run").fetchone()[0] == 0
        assert writer.execute("update devdiag.diag_run set resolution = null, resolved_at = null").rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        writer.execute(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
            "values (gen_random_uuid(), gen_random_uuid(), now(), %s, 'linux')",
            (A,),
        )


def test_the_tenant_setting_ends_with_its_transaction(writer: psycopg.Connection) -> None:
    """A pooled connection never carries one request's tenant into the next."""
    with tenant_transaction(writer, A):
        assert writer.execute("select count(*) from devdiag.diag_run").fetchone()[0] > 0
    assert writer.execute("select count(*) from devdiag.diag_run").fetchone()[0] == 0


# --- which roles bypass it ---------------------------------------------------------------------------


def test_only_the_owner_bypasses_row_level_security(db: ConnectionSettings) -> None:
    from orchestrator.provision import tenant_names

    with connect(db) as conn:
        roles = dict(
            conn.execute(
                "select rolname, rolsuper or rolbypassrls from pg_roles where rolname = any(%s)",
                (["devdiag_writer", "grafana", tenant_names(A)[0]],),
            ).fetchall()
        )
        owners = {
            r
            for (r,) in conn.execute(
                "select distinct pg_get_userbyid(relowner) from pg_class c "
                "join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'devdiag' and c.relname in ('diag_run', 'api_token', 'tenant_reader')"
            )
        }
        me = conn.execute("select current_user").fetchone()[0]
    assert roles == {"devdiag_writer": False, "grafana": False, tenant_names(A)[0]: False}
    assert owners == {me}


def test_every_table_with_tenant_rows_is_policed_or_closed_to_the_server(db: ConnectionSettings) -> None:
    """Anything new with a tenant_id: either under a tenant policy, or the writer and Grafana cannot read it."""
    with connect(db) as conn:
        rows = conn.execute(
            """
            select c.relname, c.relrowsecurity,
                   exists (select from pg_policy p where p.polrelid = c.oid and p.polname = 'tenant_isolation'),
                   has_table_privilege('devdiag_writer', c.oid, 'select, insert, update, delete'),
                   has_table_privilege('grafana', c.oid, 'select')
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            join pg_attribute a on a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped
            where n.nspname = 'devdiag' and c.relkind in ('r', 'p')
            """
        ).fetchall()
    assert {r[0] for r in rows} >= {"diag_run", "api_token", "tenant_reader", "int_fix_outcomes"}
    for name, rls, policy, writer_can, grafana_can in rows:
        assert (rls and policy and not grafana_can) or not (writer_can or grafana_can), name


# --- Grafana: all tenants; a tenant's own Grafana: one ------------------------------------------------


def tenants_in(conn: psycopg.Connection, relation: str) -> set[str]:
    return {t for (t,) in conn.execute(f"select distinct tenant_id from {relation}")}


def test_grafana_still_reads_every_tenant(db: ConnectionSettings) -> None:
    with connect(login(db, "grafana")) as conn:
        for view in ("v_problem_counts", "v_activity_hourly", "v_recent_activity", "v_ttr_days"):
            assert {A, B} <= tenants_in(conn, f"devdiag.{view}"), view


def test_tenant_role_reads_its_tenant_and_nothing_else(db: ConnectionSettings) -> None:
    from orchestrator.provision import tenant_names

    role, schema = tenant_names(A)
    with connect(login(db, role)) as conn:
        for view in ("v_problem_counts", "v_activity_hourly", "v_recent_activity", "v_ttr_days", "v_fix_ranking"):
            assert tenants_in(conn, f"{schema}.{view}") == {A}, view
            assert tenants_in(conn, view) == {A}, f"{view} through the role's search_path"
        for statement in (
            "select count(*) from devdiag.v_problem_counts",
            "select count(*) from devdiag.diag_run",
            "select count(*) from devdiag.int_fix_outcomes",
            "select devdiag.fix_confidence(0.5, 1, 1, 1, 1)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
            conn.execute(f"create table {schema}.mine (x int)")


def test_tenant_views_match_the_public_ones_for_that_tenant(db: ConnectionSettings) -> None:
    """The filtered views are the public rows of A; the two rebuilt ones add up to the public view."""
    from orchestrator.provision import tenant_names

    _, schema = tenant_names(A)
    with connect(db) as conn:
        for view in ("v_problem_counts", "v_ttr_days", "v_fix_ranking"):
            mine = conn.execute(f"select count(*) from {schema}.{view}").fetchone()[0]
            public = conn.execute(f"select count(*) from devdiag.{view} where tenant_id = %s", (A,)).fetchone()[0]
            assert mine == public > 0, view
        fix_a = conn.execute(
            f"select sum(total_attempts), sum(successful_fixes) from {schema}.v_fix_success"
        ).fetchone()
        fix_raw = conn.execute(
            "select count(resolution), count(*) filter (where resolution = 'fixed') from devdiag.diag_run "
            "where tenant_id = %s and fix_suggestion is not null and problem_code is not null",
            (A,),
        ).fetchone()
        assert fix_a == fix_raw and fix_a[0] > 0
        env_a = conn.execute(f"select max(environment_combos) from {schema}.v_env_diversity").fetchone()[0]
        env_all = conn.execute("select max(environment_combos) from devdiag.v_env_diversity").fetchone()[0]
        assert 1 <= env_a <= env_all


def test_tenant_views_survive_a_build(db: ConnectionSettings) -> None:
    """dbt replaces each public view and drops the old one with cascade, dependants included: the
    on-run-end hook makes the tenant's views again (without it this test fails with 'does not exist')."""
    from orchestrator import dbt
    from orchestrator.provision import tenant_names

    role, schema = tenant_names(A)
    with connect(db) as conn:
        before = conn.execute(f"select to_regclass('{schema}.v_problem_counts')::oid").fetchone()[0]
    dbt.build(db, ["build", "--select", "v_problem_counts v_fix_success"])
    with connect(db) as conn:
        after = conn.execute(f"select to_regclass('{schema}.v_problem_counts')::oid").fetchone()[0]
    assert after is not None and after != before  # made again, not merely left alone
    with connect(login(db, role)) as conn:
        for view in TENANT_VIEWS:
            conn.execute(f"select * from {schema}.{view} limit 1")


def test_the_dashboard_runs_as_the_tenant_role(db: ConnectionSettings) -> None:
    """Every panel of the dashboard, its SQL pointed at the tenant's schema, runs as the tenant role."""
    from orchestrator.grafana import files, macros, preview
    from orchestrator.provision import tenant_names

    role, schema = tenant_names(A)
    board = json.loads(json.dumps(files.read_dashboard()).replace("devdiag.v_", f"{schema}.v_"))
    span = macros.TimeRange.last(timedelta(days=30))
    with connect(login(db, role)) as conn:
        picked = preview.resolve_variables(conn, board, span, {})
        assert list(picked["tenant"].options) == [A]
        results = preview.run_panels(conn, board, span, picked)
    failed = [f"{r.panel['title']}: {r.error}" for r in results if r.error is not None]
    assert not failed and results


def test_grafana_tenant_is_idempotent_and_refuses_a_foreign_role(db: ConnectionSettings) -> None:
    from orchestrator.provision import grafana_tenant, tenant_names

    again = grafana_tenant(db, A)
    assert (again.created, again.views) == (False, len(TENANT_VIEWS))
    with connect(login(db, again.role)) as conn:  # the password kept in secrets.json still logs in
        conn.execute(f"select count(*) from {again.schema}.v_problem_counts")
    stranger = "team-c"
    role, _ = tenant_names(stranger)
    with connect(db) as conn:
        conn.execute(sql.SQL("create role {}").format(sql.Identifier(role)))
    try:
        with pytest.raises(click.ClickException, match="not DevDiag's read role"):
            grafana_tenant(db, stranger)
    finally:
        with connect(db) as conn:
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_tenant_slugs_never_collide() -> None:
    from orchestrator.provision import tenant_names

    names = {tenant_names(t) for t in ("a_b", "a-b", "A_B", "a.b", "a/b", "x" * 200, "x" * 199 + "y")}
    assert len(names) == 7
    assert all(len(role) <= 63 and len(schema) <= 63 for role, schema in names)
    assert tenant_names("team-web")[0].startswith("grafana_t_team_web_")
