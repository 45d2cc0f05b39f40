"""The runbook's health checks (orchestrator.health): all pass on a healthy history; breaking one
condition fails that check alone, with its severity's status; repairing it makes all pass again.

The module works in a database of its own, so the other modules' data never interferes. Days are
UTC days, so a few expectations depend on the time of day (a history shifted 3 hours back has no
rows today before 03:00 UTC): those are computed from the data, never assumed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from devdiag_db.config import ConnectionSettings, project_dir
from mcp_devdiag.writer import COLUMNS as WRITER_COLUMNS
from orchestrator import dbt
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES
from orchestrator.health import CHECKS, HealthCheck, run_health

DATABASE = "devdiag_test_health"
CHECK_NAMES = [name for name, _, _ in CHECKS]
COLUMNS = ", ".join(WRITER_COLUMNS)
INSERT = f"insert into devdiag.diag_run ({COLUMNS}) values ({', '.join(['%s'] * len(WRITER_COLUMNS))})"
Run = tuple  # one diag_run row, in INSERT's column order


def healthy_history(now: datetime, problems: dict[str, list[str]], seed: int = 7) -> list[Run]:
    """A small healthy history: ~300 runs over 184.5 days, a run 10 s ago, exactly 10 problems
    today, confidences 0.72..0.95, and a retired tenant's problem whose only rows, 300 and 250 days
    old, are its first and last occurrence (retention keeps those: they do not count)."""
    rng = random.Random(seed)
    codes = sorted(problems)[:10]
    tenants, envs = ("acme", "beta", "gamma", "delta"), ("linux/python-3.12", "macos/node-20", "windows/node-18")
    runs: list[Run] = []

    def add(ts: datetime, tenant: str, code: str | None) -> None:
        fix = confidence = resolution = resolved_at = None
        if code is not None and problems[code]:
            fix, confidence = rng.choice(problems[code]), round(rng.uniform(0.72, 0.95), 3)
            outcome_at = ts + timedelta(minutes=rng.uniform(10, 2 * 24 * 60))
            if rng.random() < 0.6 and outcome_at < now:
                resolution = rng.choices(("fixed", "failed", "manual"), weights=(60, 25, 15))[0]
                resolved_at = outcome_at
        error = f"error text of {code}" if code else None
        runs.append(
            (
                uuid.uuid4(),
                uuid.uuid4(),
                ts,
                tenant,
                rng.choice(envs),
                code,
                fix,
                confidence,
                resolution,
                resolved_at,
                error,
            )
        )

    for _ in range(300):
        add(
            now - timedelta(days=rng.uniform(0.1, 184.5)),
            rng.choice(tenants),
            None if rng.random() < 0.2 else rng.choice(codes[:8]),
        )
    for i, code in enumerate(codes):  # the last minutes: fresh data and 10 problems today
        add(now - timedelta(seconds=10 + 30 * i), tenants[i % len(tenants)], code)
    add(now - timedelta(days=300), "retired", codes[0])
    add(now - timedelta(days=250), "retired", codes[0])
    return runs


@pytest.fixture(scope="module")
def health_db(pg: ConnectionSettings) -> Iterator[ConnectionSettings]:
    """A database of this module's own: setup, the healthy history, one full `dbt build`."""
    from orchestrator.provision import setup

    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    settings = ConnectionSettings({**pg.params, "dbname": DATABASE}, embedded=pg.embedded)
    setup(settings)
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        problems: dict[str, list[str]] = {}
        for code, fix in conn.execute("select problem_code, fix_id from devdiag.fix_catalog order by 1, 2"):
            problems.setdefault(code, []).append(fix)
        assert len(problems) >= 12, "the catalog should list at least 12 problems"
        conn.cursor().executemany(INSERT, healthy_history(datetime.now(UTC), problems))
    broken = [f"{r.name}: {r.message}" for r in dbt.invoke(settings, ["build"]) if r.status in {"error", "fail"}]
    assert not broken, broken
    yield settings
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))


@pytest.fixture(scope="module")
def conn(health_db: ConnectionSettings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(health_db.conninfo(), autocommit=True) as connection:
        yield connection


def health(settings: ConnectionSettings) -> dict[str, HealthCheck]:
    checks = run_health(settings)
    assert [c.name for c in checks] == CHECK_NAMES
    return {c.name: c for c in checks}


def assert_only(checks: dict[str, HealthCheck], expected: dict[str, str]) -> None:
    """The checks in `expected` have that status, every other check passes."""
    actual = {name: c.status for name, c in checks.items()}
    wanted = {name: expected.get(name, "pass") for name in CHECK_NAMES}
    assert actual == wanted, "\n".join(c.message for c in checks.values())


def freshness_status(conn: psycopg.Connection) -> str:
    (age,) = conn.execute("select now() - max(ts) from devdiag.diag_run").fetchone()
    return "pass" if age < timedelta(hours=2) else "warn" if age < timedelta(hours=6) else "fail"


def rows_today(conn: psycopg.Connection) -> int:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return conn.execute("select count(*) from devdiag.diag_run where ts >= %s", (midnight,)).fetchone()[0]


# --- the healthy baseline ---------------------------------------------------------------------------


def test_all_checks_pass_on_a_healthy_history(health_db: ConnectionSettings) -> None:
    checks = health(health_db)
    assert_only(checks, {})
    assert checks["new_rows_today"].value >= 1
    assert checks["data_freshness"].value < 0.1  # hours
    assert 0.72 <= checks["fix_confidence_30d"].value <= 0.95
    assert (checks["views_present"].value, checks["indexes_present"].value) == (len(PUBLIC_VIEWS), len(RAW_INDEXES))
    # the retired tenant's 300-day-old first occurrence is kept forever, so it does not count
    assert 180 < checks["retention_days"].value < 185
    assert checks["problem_diversity_today"].value <= 10
    for check in checks.values():
        assert check.threshold and check.message.startswith(check.name)


def test_severities_agree_between_report_model_and_tests(conn: psycopg.Connection) -> None:
    model = dict(conn.execute("select check_name, severity from devdiag.health_checks").fetchall())
    assert model == {name: severity for name, _, severity in CHECKS}
    monitoring = yaml.safe_load((Path(project_dir()) / "models" / "monitoring" / "_monitoring.yml").read_text())
    (health_model,) = [m for m in monitoring["models"] if m["name"] == "health_checks"]
    tests = {t["health_check_passes"]["name"]: t["health_check_passes"] for t in health_model["data_tests"]}
    for name, test_name, severity in CHECKS:
        if test_name is None:
            continue
        assert tests[test_name]["arguments"]["check_name"] == name
        assert tests[test_name]["config"]["severity"] == severity
        assert "health" in tests[test_name]["config"]["tags"]


# --- break one condition, see exactly that check fail, repair ---------------------------------------


@dataclass
class Scenario:
    """Break one condition; `expect` (run after breaking) says which checks fail and how."""

    breaks: Callable[[psycopg.Connection, ConnectionSettings, dict], None]
    expect: Callable[[psycopg.Connection, dict[str, HealthCheck], dict], dict[str, str]]
    repair: Callable[[psycopg.Connection, ConnectionSettings, dict], None]
    marks: list = field(default_factory=list)


def _delete_today(conn, settings, saved):
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    deleted = conn.execute(f"delete from devdiag.diag_run where ts >= %s returning {COLUMNS}", (midnight,))
    saved["rows"] = deleted.fetchall()
    assert conn.execute("select count(*) from devdiag.diag_run").fetchone()[0] > 0


def _restore_today(conn, settings, saved):
    conn.cursor().executemany(INSERT, saved["rows"])


def _expect_no_rows_today(conn, checks, saved):
    assert checks["new_rows_today"].value == 0 and checks["new_rows_today"].severity == "error"
    # the newest row left is yesterday's: stale too, unless the UTC day is young
    return {"new_rows_today": "fail", "data_freshness": freshness_status(conn)}


def _shift(hours: int):
    def shift(conn, settings, saved):
        conn.execute(
            "update devdiag.diag_run set ts = ts + %(d)s, resolved_at = resolved_at + %(d)s",
            {"d": timedelta(hours=hours)},
        )

    return shift


def _expect_stale(status: str, hours: int):
    def expect(conn, checks, saved):
        assert checks["data_freshness"].value == pytest.approx(hours, abs=0.2)
        assert checks["data_freshness"].severity == "error"
        # before `hours` o'clock UTC, a history moved `hours` back has no rows today at all
        return {"data_freshness": status} | ({} if rows_today(conn) else {"new_rows_today": "fail"})

    return expect


def _drop_view(conn, settings, saved):
    conn.execute("drop view devdiag.v_env_diversity")


def _rebuild_view(conn, settings, saved):
    results = dbt.invoke(settings, ["build", "--select", "v_env_diversity"])
    assert all(r.status in {"success", "pass"} for r in results), results


def _expect_view_missing(conn, checks, saved):
    assert checks["views_present"].value == len(PUBLIC_VIEWS) - 1 and checks["views_present"].severity == "error"
    assert "v_env_diversity" in checks["views_present"].message
    return {"views_present": "fail"}


def _drop_index(conn, settings, saved):
    conn.execute("drop index devdiag.ix_diag_run_env_ts")


def _recreate_indexes(conn, settings, saved):
    dbt.run_operation(settings, "devdiag_setup")


def _expect_index_missing(conn, checks, saved):
    assert checks["indexes_present"].value == len(RAW_INDEXES) - 1 and checks["indexes_present"].severity == "error"
    assert "ix_diag_run_env_ts" in checks["indexes_present"].message
    return {"indexes_present": "fail"}


def _lower_confidence(conn, settings, saved):
    saved["rows"] = conn.execute(
        "update devdiag.diag_run new set confidence = old.confidence - 0.3 from devdiag.diag_run old "
        "where new.id = old.id and old.fix_suggestion is not null returning old.id, old.confidence"
    ).fetchall()


def _restore_confidence(conn, settings, saved):
    conn.cursor().executemany(
        "update devdiag.diag_run set confidence = %s where id = %s", [(c, i) for i, c in saved["rows"]]
    )


def _expect_low_confidence(conn, checks, saved):
    assert checks["fix_confidence_30d"].value < 0.7 and checks["fix_confidence_30d"].severity == "warn"
    return {"fix_confidence_30d": "warn"}


def _old_middle_occurrence(conn, settings, saved):
    """A 280-day-old row of the retired tenant's problem, between its kept first and last ones."""
    (code,) = conn.execute("select problem_code from devdiag.diag_run where tenant_id = 'retired' limit 1").fetchone()
    saved["id"] = uuid.uuid4()
    conn.execute(
        INSERT,
        (
            saved["id"],
            uuid.uuid4(),
            datetime.now(UTC) - timedelta(days=280),
            "retired",
            "linux",
            code,
            None,
            None,
            None,
            None,
            None,
        ),
    )


def _delete_old_row(conn, settings, saved):
    conn.execute("delete from devdiag.diag_run where id = %s", (saved["id"],))


def _expect_old_data(conn, checks, saved):
    assert checks["retention_days"].value == pytest.approx(280, abs=0.1)
    assert checks["retention_days"].severity == "warn"
    return {"retention_days": "warn"}


def _eleven_problems_today(conn, settings, saved):
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    seen = conn.execute(
        "select count(distinct problem_code) from devdiag.diag_run where ts >= %s", (midnight,)
    ).fetchone()[0]
    saved["ids"] = [uuid.uuid4() for _ in range(11 - seen)]
    conn.cursor().executemany(
        INSERT,
        [
            (
                i,
                uuid.uuid4(),
                datetime.now(UTC) - timedelta(seconds=5),
                "acme",
                "linux",
                f"ZZ_DIVERSITY_{n}",
                None,
                None,
                None,
                None,
                None,
            )
            for n, i in enumerate(saved["ids"])
        ],
    )


def _delete_diversity(conn, settings, saved):
    conn.execute("delete from devdiag.diag_run where id = any(%s)", (saved["ids"],))


def _expect_high_diversity(conn, checks, saved):
    assert checks["problem_diversity_today"].value == 11 and checks["problem_diversity_today"].severity == "warn"
    return {"problem_diversity_today": "warn"}


SCENARIOS = {
    "no_rows_today": Scenario(_delete_today, _expect_no_rows_today, _restore_today),
    "stale_3h": Scenario(_shift(-3), _expect_stale("warn", 3), _shift(3)),
    "stale_7h": Scenario(_shift(-7), _expect_stale("fail", 7), _shift(7)),
    "view_dropped": Scenario(_drop_view, _expect_view_missing, _rebuild_view),
    "index_dropped": Scenario(_drop_index, _expect_index_missing, _recreate_indexes),
    "low_confidence": Scenario(_lower_confidence, _expect_low_confidence, _restore_confidence),
    "data_older_than_190_days": Scenario(_old_middle_occurrence, _expect_old_data, _delete_old_row),
    "eleven_problems_today": Scenario(_eleven_problems_today, _expect_high_diversity, _delete_diversity),
}


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s, id=name, marks=s.marks) for name, s in SCENARIOS.items()],
)
def test_one_broken_condition_fails_only_its_check(
    scenario: Scenario, health_db: ConnectionSettings, conn: psycopg.Connection
) -> None:
    saved: dict = {}
    scenario.breaks(conn, health_db, saved)
    try:
        checks = health(health_db)
        assert_only(checks, scenario.expect(conn, checks, saved))
    finally:
        scenario.repair(conn, health_db, saved)
    assert_only(health(health_db), {})
