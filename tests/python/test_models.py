"""The dbt models: a full build, the public views' contract, Grafana's privileges, and the
views' values on a small hand-made history (episodes, fix success, ranking and fallback).

The module works in a database of its own (created beside the session's `devdiag`, dropped at the
end), so its data never mixes with the demo data other modules share.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from orchestrator import dbt

DATABASE = "devdiag_test_models"

PUBLIC_VIEWS: dict[str, list[tuple[str, str]]] = {
    "v_problem_counts": [("day", "date"), ("tenant_id", "text"), ("problem_code", "text"), ("cnt", "bigint")],
    "v_fix_success": [
        ("problem_code", "text"),
        ("fix_suggestion", "text"),
        ("avg_confidence", "double precision"),
        ("successful_fixes", "bigint"),
        ("total_attempts", "bigint"),
        ("last_success", "timestamp with time zone"),
    ],
    "v_ttr_days": [
        ("problem_code", "text"),
        ("tenant_id", "text"),
        ("first_seen_day", "date"),
        ("ttr_days", "interval"),
        ("episode_number", "bigint"),  # not the runbook's: completes the key
    ],
    "v_env_diversity": [
        ("problem_code", "text"),
        ("environment_combos", "bigint"),
        ("first_seen", "timestamp with time zone"),
        ("last_seen", "timestamp with time zone"),
    ],
    "v_recent_activity": [
        ("ts", "timestamp with time zone"),
        ("finding_id", "uuid"),
        ("run_id", "uuid"),
        ("tenant_id", "text"),
        ("environment", "text"),
        ("problem_code", "text"),
        ("fix_suggestion", "text"),
        ("confidence", "double precision"),
        ("resolution", "text"),
        ("resolved_at", "timestamp with time zone"),
        ("error_msg", "text"),
    ],
    "v_fix_ranking": [
        ("tenant_id", "text"),
        ("problem_code", "text"),
        ("rank", "bigint"),
        ("fix_id", "text"),
        ("fix_title", "text"),
        ("in_catalog", "boolean"),
        ("catalog_rank", "integer"),
        ("prior_confidence", "double precision"),
        ("successes_tenant", "bigint"),
        ("attempts_tenant", "bigint"),
        ("successes_all", "bigint"),
        ("attempts_all", "bigint"),
        ("confidence", "double precision"),
        ("built_at", "timestamp with time zone"),
    ],
    # not the runbook's: the hourly aggregate the dashboard and the alerts read
    "v_activity_hourly": [
        ("hour", "timestamp with time zone"),
        ("tenant_id", "text"),
        ("environment", "text"),
        ("problem_code", "text"),
        ("runs", "bigint"),
        ("findings", "bigint"),
        ("suggestions", "bigint"),
        ("confidence_sum", "double precision"),
        ("confidence_count", "bigint"),
        ("last_ts", "timestamp with time zone"),
    ],
}
# Table models and the column each is indexed on for the runbook's filters.
AGGREGATE_INDEXES = {
    "int_problem_counts_daily": "day",
    "int_problem_episodes": "first_seen_day",
    "int_fix_success": "last_success",
    "int_env_diversity": "first_seen",
    "int_fix_ranking": "tenant_id",
    "int_activity_hourly": "hour",
}
TEST_CATALOG = [
    ("ZZ_NODE_OOM", "zz-raise-heap", "Raise the heap", 0.6, 1),
    ("ZZ_NODE_OOM", "zz-split-job", "Split the job", 0.4, 2),
    ("ZZ_UNSEEN", "zz-unseen-fix", "Never needed yet", 0.55, 1),
]
ACME_ENV, BETA_ENV = "linux/python-3.12", "macos/node-20"


@dataclass(frozen=True)
class Row:
    name: str
    tenant_id: str
    environment: str
    ts: datetime
    problem_code: str | None = None
    fix_suggestion: str | None = None
    confidence: float | None = None
    resolution: str | None = None
    resolved_at: datetime | None = None
    id: uuid.UUID | None = None


def history(now: datetime) -> list[Row]:
    """acme's ZZ_NODE_OOM: episode 1 (two sightings, fixed after 1 day; the second sighting's own
    later `fixed` ends nothing), episode 2 (a `failed` outcome that does not end it, then `manual`
    3 days after its start), episode 3 still open. beta: ZZ_NODE_OOM fixed within the hour by a fix
    the catalog does not list; ZZ_GIT_CONFLICT open, seen 8 and 6 days ago; a clean run just now."""
    base = now - timedelta(days=20)
    day, hour = timedelta(days=1), timedelta(hours=1)
    rows = [
        Row("a1", "acme", ACME_ENV, base, "ZZ_NODE_OOM", "zz-split-job", 0.8, "fixed", base + day),
        Row("a2", "acme", ACME_ENV, base + 2 * hour, "ZZ_NODE_OOM", "zz-split-job", 0.8, "fixed", base + day + hour),
        Row(
            "a3", "acme", ACME_ENV, base + 2 * day, "ZZ_NODE_OOM", "zz-raise-heap", 0.8, "failed", base + 2 * day + hour
        ),
        Row("a4", "acme", ACME_ENV, base + 3 * day, "ZZ_NODE_OOM", "zz-raise-heap", 0.8, "manual", base + 5 * day),
        Row("a5", "acme", ACME_ENV, base + 6 * day, "ZZ_NODE_OOM"),
        Row("a6", "acme", ACME_ENV, base + 6 * day),
        Row("b1", "beta", BETA_ENV, now - 2 * hour, "ZZ_NODE_OOM", "zz-legacy", 0.9, "fixed", now - hour),
        Row("b2", "beta", BETA_ENV, now - timedelta(seconds=10)),
        Row("b3", "beta", BETA_ENV, now - 6 * day, "ZZ_GIT_CONFLICT"),
        Row("b4", "beta", BETA_ENV, now - 8 * day, "ZZ_GIT_CONFLICT"),
    ]
    return [Row(**{**r.__dict__, "id": uuid.uuid4()}) for r in rows]


def utc_day(ts: datetime) -> date:
    return ts.astimezone(UTC).date()


@pytest.fixture(scope="module")
def models_db(pg: ConnectionSettings) -> Iterator[ConnectionSettings]:
    """A database of this module's own, with `devdiag setup` applied."""
    from orchestrator.provision import setup

    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    settings = ConnectionSettings({**pg.params, "dbname": DATABASE}, embedded=pg.embedded)
    setup(settings)
    yield settings
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))


@dataclass(frozen=True)
class Built:
    settings: ConnectionSettings
    now: datetime
    rows: dict[str, Row]
    results: list[dbt.NodeResult]


@pytest.fixture(scope="module")
def built(models_db: ConnectionSettings) -> Built:
    """The hand-made history loaded and one full `dbt build` (models, unit tests, data tests, health)."""
    now = datetime.now(UTC).replace(microsecond=0)
    rows = history(now)
    with psycopg.connect(models_db.conninfo(), autocommit=True) as conn:
        conn.cursor().executemany(
            "insert into devdiag.fix_catalog (problem_code, fix_id, fix_title, prior, catalog_rank) "
            "values (%s, %s, %s, %s, %s)",
            TEST_CATALOG,
        )
        conn.cursor().executemany(
            "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code, "
            "fix_suggestion, confidence, resolution, resolved_at, error_msg) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    r.id,
                    uuid.uuid4(),
                    r.ts,
                    r.tenant_id,
                    r.environment,
                    r.problem_code,
                    r.fix_suggestion,
                    r.confidence,
                    r.resolution,
                    r.resolved_at,
                    f"error of {r.name}" if r.problem_code else None,
                )
                for r in rows
            ],
        )
    results = dbt.invoke(models_db, ["build"])
    return Built(models_db, now, {r.name: r for r in rows}, results)


@pytest.fixture(scope="module")
def conn(built: Built) -> Iterator[psycopg.Connection]:
    with psycopg.connect(built.settings.conninfo(), autocommit=True) as connection:
        yield connection


def query(conn: psycopg.Connection, text: str, *params: object) -> list[tuple]:
    return conn.execute(text, params).fetchall()


# --- the build --------------------------------------------------------------------------------------


def test_full_build_has_no_error_or_failure(built: Built) -> None:
    broken = [
        f"{r.resource_type} {r.name}: {r.status} {r.message}"
        for r in built.results
        if r.status in {"error", "fail", "skipped"}
    ]
    assert not broken
    kinds = Counter(r.resource_type for r in built.results)
    assert kinds["model"] >= 6 + 6 and kinds["unit_test"] >= 7 and kinds["test"] >= 45, kinds
    # The health checks judge live data and run only when asked (selectors.yml, `devdiag health`).
    assert not [r.name for r in built.results if "health" in r.name]
    names = {r.name for r in built.results}
    assert set(PUBLIC_VIEWS) <= names


def test_unit_tests_cover_every_view(built: Built) -> None:
    unit_tests = {r.name for r in built.results if r.resource_type == "unit_test"}
    for view in PUBLIC_VIEWS:
        assert any(name.startswith(view) for name in unit_tests), f"no unit test for the logic of {view}"


# --- the contract -----------------------------------------------------------------------------------


def test_public_views_have_exactly_the_contract_columns(conn: psycopg.Connection) -> None:
    for view, columns in PUBLIC_VIEWS.items():
        kind = query(
            conn,
            "select c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'devdiag' and c.relname = %s",
            view,
        )
        assert kind == [("v",)], f"{view} is not a view"
        actual = query(
            conn,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'devdiag' and table_name = %s order by ordinal_position",
            view,
        )
        assert actual == columns, view


def test_aggregates_are_tables_indexed_for_the_runbook_filters(conn: psycopg.Connection) -> None:
    for table, column in AGGREGATE_INDEXES.items():
        assert query(
            conn,
            "select 1 from pg_tables where schemaname = 'devdiag' and tablename = %s",
            table,
        ), f"{table} is not a table"
        definitions = [d for (d,) in query(conn, "select indexdef from pg_indexes where tablename = %s", table)]
        assert any(f"({column}" in d for d in definitions), (table, definitions)


# --- privileges -------------------------------------------------------------------------------------


def grafana_settings(built: Built) -> ConnectionSettings:
    from devdiag_db.embedded import tcp_settings
    from orchestrator.secrets import role_password

    base = tcp_settings("grafana", role_password("grafana"))
    return ConnectionSettings({**base.params, "dbname": DATABASE}, embedded=True)


def test_grafana_reads_the_views_and_nothing_else(built: Built, conn: psycopg.Connection) -> None:
    relations = [
        name
        for (name,) in query(
            conn,
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'devdiag' and c.relkind in ('r', 'v', 'm')",
        )
    ]
    assert "int_problem_episodes" in relations and "diag_run" in relations
    with psycopg.connect(grafana_settings(built).conninfo(), autocommit=True) as grafana:
        assert grafana.execute("select has_schema_privilege('devdiag', 'usage')").fetchone() == (True,)
        for view in PUBLIC_VIEWS:
            grafana.execute(sql.SQL("select * from devdiag.{} limit 1").format(sql.Identifier(view))).fetchall()
        for relation in set(relations) - set(PUBLIC_VIEWS):
            allowed = grafana.execute("select has_table_privilege(%s, 'select')", (f"devdiag.{relation}",)).fetchone()
            assert allowed == (False,), f"grafana may read {relation}"
        for relation in ("diag_run", "int_problem_episodes", "int_fix_ranking", "stg_devdiag__diag_run"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                grafana.execute(sql.SQL("select 1 from devdiag.{} limit 1").format(sql.Identifier(relation)))


# --- values -----------------------------------------------------------------------------------------


def test_ttr_days_one_row_per_resolved_episode(built: Built, conn: psycopg.Connection) -> None:
    r = built.rows
    expected = {
        # episode 1: a1 first seen, fixed a day later (a2's later `fixed` ends nothing)
        ("ZZ_NODE_OOM", "acme", utc_day(r["a1"].ts), timedelta(days=1)),
        # episode 2: starts at a3 after that; a3's `failed` does not end it, a4's `manual` does
        ("ZZ_NODE_OOM", "acme", utc_day(r["a3"].ts), timedelta(days=3)),
        ("ZZ_NODE_OOM", "beta", utc_day(r["b1"].ts), timedelta(hours=1)),
    }
    rows = query(conn, "select problem_code, tenant_id, first_seen_day, ttr_days from devdiag.v_ttr_days")
    assert Counter(rows) == Counter(expected)
    open_episodes = query(
        conn,
        "select tenant_id, problem_code, started_at from devdiag.int_problem_episodes where resolved_at is null",
    )
    assert sorted(open_episodes) == [("acme", "ZZ_NODE_OOM", r["a5"].ts), ("beta", "ZZ_GIT_CONFLICT", r["b4"].ts)]


def test_problem_counts_per_utc_day_without_clean_runs(built: Built, conn: psycopg.Connection) -> None:
    expected = Counter(
        (utc_day(row.ts), row.tenant_id, row.problem_code) for row in built.rows.values() if row.problem_code
    )
    rows = query(conn, "select day, tenant_id, problem_code, cnt from devdiag.v_problem_counts")
    assert {(d, t, p): c for d, t, p, c in rows} == dict(expected)


def test_fix_success_counts_every_outcome_as_an_attempt(built: Built, conn: psycopg.Connection) -> None:
    r = built.rows
    rows = query(
        conn,
        "select problem_code, fix_suggestion, round(avg_confidence::numeric, 6)::float, successful_fixes, "
        "total_attempts, last_success from devdiag.v_fix_success",
    )
    assert sorted(rows) == sorted(
        [
            ("ZZ_NODE_OOM", "zz-split-job", 0.8, 2, 2, r["a2"].resolved_at),
            ("ZZ_NODE_OOM", "zz-raise-heap", 0.8, 0, 2, None),
            ("ZZ_NODE_OOM", "zz-legacy", 0.9, 1, 1, r["b1"].resolved_at),
        ]
    )


def test_env_diversity_per_problem(built: Built, conn: psycopg.Connection) -> None:
    r = built.rows
    rows = query(conn, "select problem_code, environment_combos, first_seen, last_seen from devdiag.v_env_diversity")
    assert sorted(rows) == [
        ("ZZ_GIT_CONFLICT", 1, r["b4"].ts, r["b3"].ts),
        ("ZZ_NODE_OOM", 2, r["a1"].ts, r["b1"].ts),
    ]


def test_recent_activity_is_the_last_7_days_newest_first(built: Built, conn: psycopg.Connection) -> None:
    r = built.rows
    rows = query(conn, "select finding_id, ts, problem_code from devdiag.v_recent_activity")
    assert rows == [(r[n].id, r[n].ts, r[n].problem_code) for n in ("b2", "b1", "b3")]


def test_fix_ranking_learns_from_outcomes_and_falls_back(built: Built, conn: psycopg.Connection) -> None:
    ranking = query(
        conn,
        "select tenant_id, problem_code, fix_id, rank, in_catalog, prior_confidence, successes_tenant, "
        "attempts_tenant, successes_all, attempts_all, confidence "
        "from devdiag.v_fix_ranking where problem_code like 'ZZ\\_%%' order by 1, 2, 4",
    )
    by_key = {(t, p): [] for t, p, *_ in ranking}
    for row in ranking:
        by_key[(row[0], row[1])].append(row)
    # Who has rows: each tenant for the problems it saw (with fixes), '*' for every problem with fixes.
    assert set(by_key) == {("acme", "ZZ_NODE_OOM"), ("beta", "ZZ_NODE_OOM"), ("*", "ZZ_NODE_OOM"), ("*", "ZZ_UNSEEN")}
    # The outcome counts per tenant and over all tenants, with the fix known only from outcomes.
    counts = {(t, f): (inc, prior, st, at, sa, aa) for t, _, f, _, inc, prior, st, at, sa, aa, _ in ranking}
    assert counts[("acme", "zz-split-job")] == (True, 0.4, 2, 2, 2, 2)
    assert counts[("acme", "zz-raise-heap")] == (True, 0.6, 0, 2, 0, 2)
    assert counts[("acme", "zz-legacy")] == (False, 0.5, 0, 0, 1, 1)
    assert counts[("beta", "zz-legacy")] == (False, 0.5, 1, 1, 1, 1)
    assert counts[("*", "zz-split-job")] == (True, 0.4, 0, 0, 2, 2)
    # Confidence is devdiag.fix_confidence of exactly those counts.
    for t, _, f, _, _, prior, st, at, sa, aa, confidence in ranking:
        (expected,) = conn.execute(
            "select devdiag.fix_confidence(%s, %s, %s, %s, %s)", (prior, sa, aa, st, at)
        ).fetchone()
        assert confidence == pytest.approx(expected), (t, f)
    # Rank 1 is the best: highest confidence first.
    for rows in by_key.values():
        assert [row[3] for row in rows] == list(range(1, len(rows) + 1))
        assert [row[-1] for row in rows] == sorted((row[-1] for row in rows), reverse=True)
    assert by_key[("acme", "ZZ_NODE_OOM")][0][2] == "zz-split-job"  # worked 2 of 2 for acme
    assert by_key[("acme", "ZZ_NODE_OOM")][-1][2] == "zz-raise-heap"  # failed twice for acme
    # A problem nobody has seen yet: its catalog prior, for all tenants.
    assert by_key[("*", "ZZ_UNSEEN")] == [
        ("*", "ZZ_UNSEEN", "zz-unseen-fix", 1, True, 0.55, 0, 0, 0, 0, pytest.approx(0.55))
    ]


def test_fix_ranking_has_all_tenant_rows_for_the_whole_catalog(conn: psycopg.Connection) -> None:
    missing = query(
        conn,
        "select c.problem_code, c.fix_id from devdiag.fix_catalog c where not exists ("
        " select from devdiag.v_fix_ranking r"
        " where r.tenant_id = '*' and r.problem_code = c.problem_code and r.fix_id = c.fix_id)",
    )
    assert missing == []
    assert query(conn, "select count(*) > 50 from devdiag.fix_catalog") == [(True,)]
