"""Incremental builds: after any mix of writes, an incremental `dbt build` leaves every model exactly
as a full refresh would, and it recomputes only what the writes touched.

Each round writes what production writes between two builds: new runs, runs replayed late from a
spool (an old ts, written now), outcomes recorded on old and new findings, and outcomes overwritten
by a later one (which removes an episode's end). Then: incremental build, snapshot, full refresh,
snapshot, compare.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import own_database

from mcp_devdiag.ids import uuid7
from mcp_devdiag.writer import RunRow, record_outcome, write_runs
from orchestrator import dbt
from orchestrator.demo_data import load_demo

# model -> its key columns (the comparison orders by them); built_at is left out: it differs by design
MODELS = {
    "int_problem_counts_daily": "day, tenant_id, problem_code",
    "int_fix_outcomes_daily": "day, tenant_id, problem_code, fix_suggestion",
    "int_fix_outcomes": "tenant_id, problem_code, fix_suggestion",
    "int_fix_success": "problem_code, fix_suggestion",
    "int_problem_environments": "problem_code, environment",
    "int_env_diversity": "problem_code",
    "int_problem_episodes": "tenant_id, problem_code, episode_number",
    "int_fix_ranking": "tenant_id, problem_code, rank",
}
# No lookback: nothing writes while these builds run, and the rows loaded just before the first
# build would otherwise be re-read by every build of the module (the default looks back 10 minutes).
BUILD = ["build", "--vars", '{"devdiag_incremental_lookback": "0 seconds"}']
# hour-relative: compared only when both snapshots fall in the same UTC hour
HOURLY = {
    "int_activity_hourly": "hour, tenant_id, environment, problem_code",
    "v_activity_hourly": "hour, tenant_id, environment, problem_code",
}


@pytest.fixture(scope="module")
def db(pg) -> Iterator:
    with own_database(pg, "devdiag_test_incremental") as settings:
        load_demo(settings, runs=3_000, seed=11, now=datetime.now(UTC), days=40, tenants=3)
        assert_built(dbt.invoke(settings, BUILD))
        yield settings


def assert_built(results) -> None:
    broken = [f"{r.name}: {r.status} {r.message}" for r in results if r.status in {"error", "fail"}]
    assert not broken, broken


def snapshot(conn: psycopg.Connection, models: dict[str, str]) -> dict[str, list[tuple]]:
    tables = {}
    for model, keys in models.items():
        columns = [
            c
            for (c,) in conn.execute(
                "select column_name from information_schema.columns"
                " where table_schema = 'devdiag' and table_name = %s and column_name <> 'built_at'"
                " order by ordinal_position",
                (model,),
            )
        ]
        rows = conn.execute(f"select {', '.join(columns)} from devdiag.{model} order by {keys}").fetchall()
        # float sums depend on the order rows were added in
        tables[model] = [tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows]
    return tables


def utc_hour(conn: psycopg.Connection) -> datetime:
    return conn.execute("select date_trunc('hour', now(), 'utc')").fetchone()[0]


def write_changes(conn: psycopg.Connection, rng: random.Random, now: datetime) -> dict[str, int]:
    """New runs, late runs, new and overwritten outcomes, as the MCP server and a spool replay write them."""
    known = conn.execute(
        "select tenant_id, environment, problem_code, fix_suggestion from devdiag.diag_run"
        " where fix_suggestion is not null order by id limit 200"
    ).fetchall()
    rows: list[RunRow] = []

    def run(ts: datetime, findings: int) -> None:
        run_id = uuid7(ts, rng=rng)
        tenant, environment, _, _ = rng.choice(known)
        if findings == 0:
            rows.append(RunRow(uuid7(ts, rng=rng), run_id, ts, tenant, environment))
        for _, _, code, fix in rng.sample([k for k in known if k[2]], findings):
            if any(r.run_id == run_id and r.problem_code == code for r in rows):
                continue
            rows.append(RunRow(uuid7(ts, rng=rng), run_id, ts, tenant, environment, code, fix, rng.random()))

    for _ in range(20):  # this hour and the last one
        run(now - timedelta(minutes=rng.uniform(1, 90)), rng.choice((0, 1, 1, 2)))
    for _ in range(15):  # replayed late: up to 30 days old
        run(now - timedelta(days=rng.uniform(0, 30)), rng.choice((0, 1, 2)))
    written = write_runs(conn, sorted(rows, key=lambda r: r.id))

    pending = conn.execute(
        "select id, ts from devdiag.diag_run where fix_suggestion is not null and resolution is null"
        " order by random() limit 40"
    ).fetchall()
    outcomes = 0
    for finding_id, ts in pending:
        at = min(now, ts + timedelta(hours=rng.uniform(0, 48)))
        outcomes += record_outcome(
            conn, finding_id=finding_id, resolution=rng.choice(("fixed", "manual", "failed")), at=at
        )
    resolved = conn.execute(
        "select id, resolution from devdiag.diag_run where resolution in ('fixed', 'manual') order by random() limit 10"
    ).fetchall()
    for finding_id, resolution in resolved:  # the latest outcome wins: an episode's end can vanish
        outcomes += record_outcome(
            conn, finding_id=finding_id, resolution="failed" if resolution == "fixed" else "fixed", at=now
        )
    return {"rows": written, "outcomes": outcomes}


@pytest.mark.parametrize("round_no", [1, 2, 3])
def test_incremental_build_equals_full_refresh(db, round_no: int) -> None:
    rng = random.Random(round_no)
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        before = conn.execute("select max(built_at) from devdiag.int_problem_counts_daily").fetchone()[0]
        changes = write_changes(conn, rng, datetime.now(UTC))
        assert changes["rows"] > 20 and changes["outcomes"] > 10, changes

        hour = utc_hour(conn)
        assert_built(dbt.invoke(db, BUILD))
        incremental = snapshot(conn, MODELS | HOURLY)
        # only the days the writes touched were recounted, not the history
        touched = {
            d
            for (d,) in conn.execute(
                "select distinct (ts at time zone 'utc')::date from devdiag.diag_run"
                " where changed_at > %s and problem_code is not null",
                (before,),
            )
        }
        rebuilt = {
            d
            for (d,) in conn.execute("select day from devdiag.int_problem_counts_daily where built_at > %s", (before,))
        }
        all_days = conn.execute("select count(distinct day) from devdiag.int_problem_counts_daily").fetchone()[0]
        assert rebuilt == touched and len(rebuilt) < all_days, (sorted(rebuilt), sorted(touched), all_days)

        assert_built(dbt.invoke(db, [*BUILD, "--full-refresh"]))
        full = snapshot(conn, MODELS | HOURLY)
        same_hour = utc_hour(conn) == hour

    for model in MODELS:
        assert incremental[model] == full[model], f"{model} differs from a full refresh"
    if same_hour:
        for model in HOURLY:
            assert incremental[model] == full[model], f"{model} differs from a full refresh"


def test_incremental_build_counts_a_run_replayed_days_late(db) -> None:
    """A run written now with a ts 20 days old (a spool replayed late) reaches the daily counts."""
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        ts = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=20)
        day = ts.date()
        count = "select coalesce(sum(cnt), 0) from devdiag.v_problem_counts where day = %s and tenant_id = 'late-team'"
        assert conn.execute(count, (day,)).fetchone()[0] == 0
        write_runs(conn, [RunRow(uuid7(ts), uuid7(ts), ts, "late-team", "linux/python-3.12", "DISK_FULL")])
        assert_built(dbt.invoke(db, BUILD))
        assert conn.execute(count, (day,)).fetchone()[0] == 1


WEEK = "ts >= date_trunc('hour', now(), 'utc') - interval '7 days'"


def test_activity_hourly_adds_up_to_the_raw_week(db) -> None:
    """Sums over v_activity_hourly are the week's distinct runs, findings and average confidence."""
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        assert_built(dbt.invoke(db, BUILD))
        by_view = conn.execute(
            "select tenant_id, environment, sum(runs), sum(findings), sum(suggestions),"
            " round((sum(confidence_sum) / nullif(sum(confidence_count), 0))::numeric, 9), max(last_ts)"
            " from devdiag.v_activity_hourly group by 1, 2 order by 1, 2"
        ).fetchall()
        by_raw = conn.execute(
            "select tenant_id, environment, count(distinct run_id), count(problem_code), count(fix_suggestion),"
            " round(avg(confidence) filter (where fix_suggestion is not null)::numeric, 9), max(ts)"
            f" from devdiag.diag_run where {WEEK} group by 1, 2 order by 1, 2"
        ).fetchall()
        assert by_view == by_raw and len(by_raw) > 1
        problems = conn.execute(
            "select problem_code, sum(findings) from devdiag.v_activity_hourly where problem_code is not null"
            " group by 1 order by 1"
        ).fetchall()
        assert (
            problems
            == conn.execute(
                "select problem_code, count(distinct run_id) from devdiag.diag_run"
                f" where {WEEK} and problem_code is not null group by 1 order by 1"
            ).fetchall()
        )


def test_a_run_written_after_the_build_is_in_the_hourly_view_at_once(db) -> None:
    """The hours after the built ones are aggregated live: runs_stalled sees the newest run."""
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        assert_built(dbt.invoke(db, BUILD))
        runs = "select coalesce(sum(runs), 0) from devdiag.v_activity_hourly where tenant_id = 'night-shift'"
        assert conn.execute(runs).fetchone()[0] == 0
        now = datetime.now(UTC)
        run_id = uuid7(now)
        write_runs(
            conn,
            [
                RunRow(uuid7(now), run_id, now, "night-shift", "linux/node-20", "PORT_IN_USE"),
                RunRow(uuid7(now), run_id, now, "night-shift", "linux/node-20", "DISK_FULL"),
            ],
        )
        assert conn.execute(runs).fetchone()[0] == 1
        newest = conn.execute("select max(last_ts) from devdiag.v_activity_hourly").fetchone()[0]
        assert newest == now


def test_a_second_build_waits_for_the_first_and_gives_up_in_one_line(pg, monkeypatch) -> None:
    """Two builds never replace the same tables together: the second waits on the advisory lock."""
    import click

    monkeypatch.setattr(dbt, "BUILD_LOCK_WAIT", "1s")
    with psycopg.connect(pg.conninfo(), autocommit=True) as first:
        first.execute("select pg_advisory_lock(hashtext('devdiag dbt build'))")
        with pytest.raises(click.ClickException, match="another devdiag build has held the build lock for 1s"):
            dbt.build(pg, ["run", "--select", "stg_devdiag__fix_catalog"])
    # released with the first session: the next build runs
    assert_built(dbt.build(pg, ["run", "--select", "stg_devdiag__fix_catalog"]))
