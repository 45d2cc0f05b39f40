"""`devdiag retention`: what goes, what stays (first and last sightings), batches, writers, faults.

Runs on its own database in the session's cluster: retention deletes rows, and the shared demo
database must keep its history for the other tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from conftest import own_database

from devdiag_db import embedded
from devdiag_db.config import ConnectionSettings
from orchestrator import retention
from orchestrator.retention import RetentionReport, run_retention

DB = "devdiag_retention_test"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def rdb(pg) -> Iterator[ConnectionSettings]:
    """A database of its own with the raw schema."""
    with own_database(pg, DB) as target:
        yield target


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def load(target: ConnectionSettings, rows: list[tuple[str, str | None, datetime]]) -> list[uuid.UUID]:
    """Replace the raw table's content with (tenant, problem, ts) rows; returns their ids in order."""
    ids = [uuid.uuid4() for _ in rows]
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("truncate devdiag.diag_run")
        with conn.cursor().copy(
            "copy devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code) from stdin"
        ) as copy:
            for row_id, (tenant, problem, ts) in zip(ids, rows, strict=True):
                copy.write_row((row_id, uuid.uuid4(), ts, tenant, "linux/python-3.12", problem))
    return ids


def remaining(target: ConnectionSettings) -> set[uuid.UUID]:
    with psycopg.connect(target.conninfo()) as conn:
        return {r[0] for r in conn.execute("select id from devdiag.diag_run")}


def scenario(target: ConnectionSettings) -> tuple[list[uuid.UUID], set[int]]:
    """Rows and the positions that must survive retention at 180 days."""
    rows = [
        ("acme", "NPM_ERESOLVE", days_ago(400)),  # 0 first sighting: kept
        ("acme", "NPM_ERESOLVE", days_ago(300)),  # 1 goes
        ("acme", "NPM_ERESOLVE", days_ago(200)),  # 2 goes
        ("acme", "NPM_ERESOLVE", days_ago(10)),  # 3 recent, and the last sighting
        ("acme", "PY_IMPORT_ERROR", days_ago(400)),  # 4 first: kept
        ("acme", "PY_IMPORT_ERROR", days_ago(300)),  # 5 goes
        ("acme", "PY_IMPORT_ERROR", days_ago(250)),  # 6 goes
        ("acme", "PY_IMPORT_ERROR", days_ago(200)),  # 7 last sighting, although expired: kept
        ("globex", "NPM_ERESOLVE", days_ago(300)),  # 8 another tenant's only sighting: first and last
        ("acme", None, days_ago(300)),  # 9 clean run, expired: goes
        ("acme", None, days_ago(5)),  # 10 clean run, recent
        ("acme", "DOCKER_DAEMON_DOWN", days_ago(190)),  # 11 tie on ts: kept as first ...
        ("acme", "DOCKER_DAEMON_DOWN", days_ago(190)),  # 12 ... or this one (the lower id wins)
        ("acme", "DOCKER_DAEMON_DOWN", days_ago(1)),  # 13 recent
        ("acme", "NPM_ERESOLVE", days_ago(170)),  # 14 inside the window
    ]
    ids = load(target, rows)
    keep = {0, 3, 4, 7, 8, 10, 13, 14}
    keep.add(11 if ids[11] < ids[12] else 12)
    return ids, keep


def test_keeps_first_and_last_occurrence_of_each_tenant_problem(rdb):
    ids, keep = scenario(rdb)
    report = run_retention(rdb, days=180, quiet=True)
    assert remaining(rdb) == {ids[i] for i in keep}
    assert report.rows_deleted == len(ids) - len(keep) == 6
    assert report.rows_kept_first_last == 5  # positions 0, 4, 7, 8 and one of 11/12
    assert report.vacuumed and not report.dry_run


def test_dry_run_counts_the_same_and_deletes_nothing(rdb):
    ids, _ = scenario(rdb)
    dry = run_retention(rdb, days=180, dry_run=True, quiet=True)
    assert remaining(rdb) == set(ids)
    real = run_retention(rdb, days=180, quiet=True)
    assert (dry.rows_deleted, dry.rows_kept_first_last) == (real.rows_deleted, real.rows_kept_first_last) == (6, 5)
    assert dry.dry_run and not dry.vacuumed


def test_second_run_deletes_nothing(rdb):
    ids, keep = scenario(rdb)
    run_retention(rdb, days=180, quiet=True)
    again = run_retention(rdb, days=180, quiet=True)
    assert again.rows_deleted == 0 and again.rows_kept_first_last == 5
    assert remaining(rdb) == {ids[i] for i in keep}


def test_batches_give_the_same_result(rdb):
    ids, keep = scenario(rdb)
    report = run_retention(rdb, days=180, batch_rows=2, quiet=True)
    assert report.batches == 6  # 11 expired rows, two at a time
    assert remaining(rdb) == {ids[i] for i in keep}


def test_interrupted_run_keeps_its_batches_and_a_rerun_finishes(rdb, monkeypatch):
    ids, keep = scenario(rdb)
    calls = []

    def interrupt_after_first_batch(self, amount=1, *, note=""):
        calls.append(amount)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(retention.Progress, "advance", interrupt_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        run_retention(rdb, days=180, batch_rows=4, quiet=True)
    monkeypatch.undo()
    after_interrupt = remaining(rdb)
    assert {ids[i] for i in keep} < after_interrupt < set(ids)  # the first batch committed, nothing else
    run_retention(rdb, days=180, batch_rows=4, quiet=True)
    assert remaining(rdb) == {ids[i] for i in keep}


def test_a_late_older_sighting_becomes_the_first(rdb):
    ids, keep = scenario(rdb)
    run_retention(rdb, days=180, quiet=True)
    older = load_more(rdb, [("acme", "NPM_ERESOLVE", days_ago(500))])
    report = run_retention(rdb, days=180, quiet=True)
    assert report.rows_deleted == 1  # the former first sighting (position 0)
    assert remaining(rdb) == ({ids[i] for i in keep} - {ids[0]}) | set(older)


def load_more(target: ConnectionSettings, rows: list[tuple[str, str | None, datetime]]) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in rows]
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        for row_id, (tenant, problem, ts) in zip(ids, rows, strict=True):
            conn.execute(
                "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code) "
                "values (%s, %s, %s, %s, 'linux', %s)",
                (row_id, uuid.uuid4(), ts, tenant, problem),
            )
    return ids


def test_a_writer_is_not_blocked_while_retention_runs(rdb):
    with psycopg.connect(rdb.conninfo(), autocommit=True) as conn:
        conn.execute("truncate devdiag.diag_run")
        conn.execute(
            """
            insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment, problem_code)
            select gen_random_uuid(), gen_random_uuid(), now() - interval '240 days' * random(),
                   'tenant-' || (i % 5), 'linux', case when i % 3 = 0 then null else 'PROBLEM_' || (i % 17) end
            from generate_series(1, 30000) i
            """
        )
    waits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(rdb.conninfo(), autocommit=True) as conn:
            while not stop.is_set():
                started = time.perf_counter()
                conn.execute(
                    "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
                    "values (gen_random_uuid(), gen_random_uuid(), now(), 'tenant-1', 'linux')"
                )
                waits.append(time.perf_counter() - started)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = run_retention(rdb, days=180, batch_rows=2000, quiet=True)
    finally:
        stop.set()
        thread.join()
    assert report.rows_deleted > 5000
    assert waits and max(waits) < 1.0


def test_two_retentions_cannot_run_at_once(rdb):
    with psycopg.connect(rdb.conninfo(), autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (retention.ADVISORY_LOCK_KEY,))
        result = invoke(["--json"], rdb)
    assert_one_line_error(result, "another `devdiag retention` is running")


# --- the command --------------------------------------------------------------------------------------


def env_for(target: ConnectionSettings, **extra: str) -> dict[str, str]:
    """The command's environment: the target database as an external DSN (the owner, over the socket)."""
    env = {
        "DEVDIAG_PG_DSN": target.conninfo(),
        "DEVDIAG_PG_HOST": "",
        "DEVDIAG_PG_USER": "",
        "DEVDIAG_PG_PASS": "",
        "DEVDIAG_PG_DB": "",
    }
    if "DEVDIAG_PG_HOST" in extra:
        env["DEVDIAG_PG_DSN"] = ""
    env.update(extra)
    return env


def invoke(args: list[str], target: ConnectionSettings | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(retention.retention, args, env=env or env_for(target))


def assert_one_line_error(result, *needles: str, secret: str | None = None) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    if secret:
        assert secret not in result.output


def test_command_json(rdb):
    scenario(rdb)
    result = invoke(["--days", "180", "--json"], rdb)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # quiet under --json
    report = json.loads(result.stdout)
    assert report["rows_deleted"] == 6 and report["rows_kept_first_last"] == 5
    assert report["dry_run"] is False and report["vacuumed"] is True and report["days"] == 180


def test_command_dry_run_text(rdb):
    ids, _ = scenario(rdb)
    result = invoke(["--dry-run"], rdb)
    assert result.exit_code == 0, result.output
    assert "would delete 6 rows older than 180 days" in result.stdout
    assert "would keep 5 as first/last occurrences" in result.stdout
    assert remaining(rdb) == set(ids)


def test_command_text_reports_delete_and_vacuum(rdb):
    scenario(rdb)
    result = invoke([], rdb)
    assert result.exit_code == 0, result.output
    assert "DELETE 6 rows older than 180 days" in result.stdout
    assert "kept 5 older rows" in result.stdout and "VACUUM ANALYZE done" in result.stdout


def test_days_must_be_positive(rdb):
    result = invoke(["--days", "0"], rdb)
    assert result.exit_code == 2 and "--days" in result.output


def test_database_down_is_one_line(rdb):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env_for(rdb, DEVDIAG_PG_HOST=f"127.0.0.1:{port}", DEVDIAG_PG_USER="x", DEVDIAG_PG_PASS="hunter2-secret")
    assert_one_line_error(invoke([], env=env), "is not reachable", secret="hunter2-secret")


def test_wrong_password_is_one_line(rdb):
    env = env_for(
        rdb,
        DEVDIAG_PG_HOST=f"127.0.0.1:{embedded.status().port}",
        DEVDIAG_PG_USER="grafana",
        DEVDIAG_PG_PASS="not-the-password-42",
    )
    assert_one_line_error(invoke([], env=env), "refused the credentials", secret="not-the-password-42")


def test_missing_raw_table_is_one_line(pg):
    target = ConnectionSettings({**pg.params, "dbname": "postgres"}, embedded=True)
    assert_one_line_error(invoke([], target), "run `devdiag setup`")


def test_report_json_is_serialisable():
    report = RetentionReport(180, NOW, False, 1, 2, 3, True, 0.5)
    assert json.loads(json.dumps(report.as_json()))["cutoff"] == NOW.isoformat()
