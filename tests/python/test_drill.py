"""`devdiag drill`: backup → drop → restore → verify on a scratch database, with a writer still writing."""

from __future__ import annotations

import json
import socket
import threading
import time

import psycopg
import pytest
from click.testing import CliRunner

from orchestrator import drill as drill_module
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES
from orchestrator.drill import drill, scratch_name


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(drill, args, env=env)


def database_exists(pg, name: str) -> bool:
    with psycopg.connect(pg.conninfo(dbname="postgres")) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def raw_count(pg) -> int:
    with psycopg.connect(pg.conninfo()) as conn:
        return conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]


@pytest.fixture
def writer(demo_db):
    """Inserts a fresh run every few milliseconds into the live database while the test runs."""
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "insert into devdiag.diag_run (id, run_id, ts, tenant_id, environment) "
                    "values (gen_random_uuid(), gen_random_uuid(), now(), 'drill-writer', 'linux')"
                )
                written.append(1)
                time.sleep(0.005)

    thread = threading.Thread(target=write)
    thread.start()
    yield written
    stop.set()
    thread.join()
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as conn:
        conn.execute("delete from devdiag.diag_run where tenant_id = 'drill-writer'")


def test_drill_json_meets_the_targets_while_a_writer_writes(demo_db, writer):
    before = raw_count(demo_db)
    result = run(["--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # quiet under --json
    report = json.loads(result.stdout)
    assert report["rows_lost"] == 0 and report["passed"] is True, report["problems"]
    assert 0 < report["time_to_restore_s"] < 30 * 60
    assert report["scratch_database"] == "devdiag_drill" != report["source_database"]
    assert report["views_present"] == len(PUBLIC_VIEWS) and report["indexes_present"] == len(RAW_INDEXES)
    # the snapshot count is what the live table held at that instant: between before and now
    source_rows = report["rows_source"]["devdiag.diag_run"]
    assert before <= source_rows <= raw_count(demo_db)
    assert report["rows_restored"]["devdiag.diag_run"] == source_rows
    assert {h["name"] for h in report["health"]} >= {"views_present", "indexes_present"}
    assert len(writer) > 0  # the writer really wrote during the drill
    assert not database_exists(demo_db, "devdiag_drill")  # the scratch database is gone


def test_drill_text_reports_time_to_restore_and_rows_lost(demo_db):
    result = run([])
    assert result.exit_code == 0, result.output
    assert "time to restore:" in result.stdout and "rows lost:        0" in result.stdout
    # the counts of the contract, not the runbook's six views and nine indexes written into the text
    assert (
        f"views {len(PUBLIC_VIEWS)}/{len(PUBLIC_VIEWS)}, indexes {len(RAW_INDEXES)}/{len(RAW_INDEXES)}" in result.stdout
    )
    assert result.stdout.rstrip().endswith("PASSED")
    assert result.stderr == ""  # steps and progress only on a terminal: quiet under cron and pipes


def test_scratch_database_is_never_the_live_one(pg):
    assert scratch_name(pg) != pg.dbname


def test_two_drills_cannot_run_at_once(demo_db):
    with psycopg.connect(demo_db.conninfo(), autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (drill_module.ADVISORY_LOCK_KEY,))
        result = run(["--json"])
    assert result.exit_code == 1 and "another `devdiag drill` is running" in result.output


def test_drill_database_down_is_one_line(pg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"DEVDIAG_PG_HOST": f"127.0.0.1:{port}", "DEVDIAG_PG_USER": "x", "DEVDIAG_PG_PASS": "hunter2-pw"}
    result = run(["--json"], env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "is not reachable" in lines[0], result.output
    assert "hunter2-pw" not in result.output


def test_drill_wrong_password_is_one_line(pg):
    from devdiag_db import embedded

    env = {
        "DEVDIAG_PG_HOST": f"127.0.0.1:{embedded.status().port}",
        "DEVDIAG_PG_USER": "grafana",
        "DEVDIAG_PG_PASS": "not-the-password-42",
    }
    result = run([], env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "refused the credentials" in lines[0], result.output
    assert "not-the-password-42" not in result.output


def test_drill_without_pg_dump_is_one_line_and_creates_nothing(demo_db, tmp_path, monkeypatch):
    from devdiag_db import embedded

    monkeypatch.setattr(embedded, "bin_dir", lambda: tmp_path)  # no bundled programs
    result = run(["--json"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "no pg_dump found" in lines[0], result.output
    assert not database_exists(demo_db, "devdiag_drill")


def test_drill_restores_its_signed_backup_as_the_restricted_role(demo_db, tmp_path):
    key = tmp_path / "drill.key"
    key.write_text("a drill key of at least 16 bytes\n")
    result = run(["--json", "--key-file", str(key)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    with psycopg.connect(demo_db.conninfo(dbname="postgres")) as conn:
        role = conn.execute("select rolsuper, rolcanlogin from pg_roles where rolname = 'devdiag_restore'").fetchone()
    assert role == (False, False)  # it restored the drill's backup, and can no longer log in


def test_drill_with_a_bad_key_file_is_one_line_and_creates_nothing(demo_db, tmp_path):
    key = tmp_path / "short.key"
    key.write_text("short")
    result = run(["--json", "--key-file", str(key)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "shorter than 16 bytes" in lines[0], result.output
    assert "short" not in lines[0].split("bytes", 1)[1]  # the key itself is never printed
    assert not database_exists(demo_db, "devdiag_drill")
