"""The embedded database, `devdiag db`, `devdiag setup`, roles, passwords and connection faults."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import psycopg
import pytest
from click.testing import CliRunner

from devdiag_db import embedded
from orchestrator.cli import main
from orchestrator.contract import RAW_INDEXES
from orchestrator.secrets import role_password, scram_verifier, secrets_file

ROLES = ("devdiag_writer", "grafana")


def devdiag(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def psql(url: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [embedded.pg_bin("psql"), url, "-XAtc", sql], capture_output=True, text=True, timeout=30, check=False
    )


def test_url_is_accepted_by_psql(pg):
    url = devdiag("db", "url").output.strip()
    result = psql(url, "select current_database(), current_setting('timezone')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "devdiag|UTC"


@pytest.mark.parametrize("role", ROLES)
def test_role_logs_in_over_tcp_with_its_scram_password(pg, role):
    url = devdiag("db", "url", "--role", role).output.strip()
    assert url.startswith(f"postgresql://{role}:") and "@127.0.0.1:" in url
    result = psql(url, "select current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == role


def test_status_reports_the_running_server(pg):
    result = devdiag("db", "status", "--json")
    assert result.exit_code == 0
    state = json.loads(result.output)
    assert state["running"] is True and state["embedded"] is True and state["port"] > 0
    assert state["major"] == embedded.MAJOR == 18


def test_setup_is_idempotent_and_prints_no_secret(pg):
    first = devdiag("setup")
    second = devdiag("setup")
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    for role in ROLES:
        assert role_password(role) not in first.output + second.output
    with psycopg.connect(pg.conninfo()) as conn:
        indexes = conn.execute(
            "select count(*) from pg_indexes where schemaname = 'devdiag' and indexname like 'ix_diag_run_%'"
        ).fetchone()[0]
        verifiers = conn.execute(
            "select rolname, rolpassword from pg_authid where rolname in ('devdiag_writer', 'grafana')"
        ).fetchall()
    assert indexes == len(RAW_INDEXES)
    assert {r for r, _ in verifiers} == set(ROLES)
    assert all(v.startswith("SCRAM-SHA-256$4096:") for _, v in verifiers)


def test_passwords_are_kept_private_and_never_logged(pg):
    mode = stat.S_IMODE(os.stat(secrets_file()).st_mode)
    assert mode == 0o600
    log = embedded.log_file().read_text(errors="replace")
    for role in ROLES:
        assert role_password(role) not in log


def test_scram_verifier_matches_the_rfc_7677_example():
    # RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    import base64

    verifier = scram_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    assert verifier == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )


def test_writer_role_has_least_privilege(pg):
    url = devdiag("db", "url", "--role", "devdiag_writer").output.strip()
    ok = psql(url, "select count(*) from devdiag.diag_run")
    assert ok.returncode == 0, ok.stderr
    for forbidden in ("delete from devdiag.diag_run", "truncate devdiag.diag_run", "create table devdiag.t (x int)"):
        denied = psql(url, forbidden)
        assert denied.returncode != 0 and "permission denied" in denied.stderr, forbidden


def _external(**values: str) -> dict[str, str]:
    env = {k: "" for k in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB")}
    env.update(values)
    return env


def _assert_one_line_error(result, *needles: str, secret: str | None = None) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    if secret:
        assert secret not in result.output
    return lines[0]


def test_wrong_password_is_one_line_without_the_password(pg):
    port = embedded.status().port
    env = _external(
        DEVDIAG_PG_HOST=f"127.0.0.1:{port}", DEVDIAG_PG_USER="grafana", DEVDIAG_PG_PASS="not-the-password-42"
    )
    _assert_one_line_error(devdiag("health", env=env), "refused the credentials", secret="not-the-password-42")


def test_database_that_is_down_is_one_line(pg):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    env = _external(DEVDIAG_PG_HOST=f"127.0.0.1:{free_port}", DEVDIAG_PG_USER="x", DEVDIAG_PG_PASS="hunter2-secret")
    _assert_one_line_error(devdiag("setup", env=env), "is not reachable", "DEVDIAG_PG_HOST", secret="hunter2-secret")
    # the hint names the variable that was used: a DSN is not fixed by checking DEVDIAG_PG_HOST
    env = _external(DEVDIAG_PG_DSN=f"postgresql://x:hunter2-secret@127.0.0.1:{free_port}/devdiag")
    message = _assert_one_line_error(devdiag("setup", env=env), "is not reachable", "DEVDIAG_PG_DSN", secret="hunter2")
    assert "DEVDIAG_PG_HOST" not in message


def test_malformed_dsn_is_one_line(pg):
    _assert_one_line_error(devdiag("setup", env=_external(DEVDIAG_PG_DSN="host=== nonsense")), "DEVDIAG_PG_DSN")


def test_missing_database_is_one_line(pg):
    sock, port = str(embedded.status().socket_dir), embedded.status().port
    env = _external(DEVDIAG_PG_HOST=f"{sock}:{port}", DEVDIAG_PG_USER="postgres", DEVDIAG_PG_DB="no_such_db")
    _assert_one_line_error(devdiag("setup", env=env), "database does not exist")


def test_db_commands_refuse_to_manage_an_external_database(pg):
    _assert_one_line_error(devdiag("db", "stop", env=_external(DEVDIAG_PG_HOST="db.example")), "embedded")


def test_stop_and_start_keep_the_data_and_the_port(pg):
    port = embedded.status().port
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("create table if not exists public.survives_restart (x int)")
        conn.execute("insert into public.survives_restart values (42)")
    assert devdiag("db", "stop").output.strip() == "stopped"
    assert devdiag("db", "status").exit_code == 1
    assert "running" in devdiag("db", "start").output
    assert embedded.status().port == port
    with psycopg.connect(embedded.settings().conninfo(), autocommit=True) as conn:
        assert conn.execute("select x from public.survives_restart").fetchone() == (42,)
        conn.execute("drop table public.survives_restart")


@pytest.mark.parametrize("command", [["health"], ["health", "--json"], ["alerts"], ["alerts", "--json"]])
def test_a_stopped_embedded_database_is_reported_not_started(tmp_path, command):
    """The runbook's "is the database up?" must be able to see an outage: the checks start nothing."""
    home = tmp_path / "home"  # no server has ever run here: it is as stopped as a database can be
    env = {**_external(), "DEVDIAG_HOME": str(home)}
    _assert_one_line_error(devdiag(*command, env=env), "not running", "devdiag db start")
    assert not (home / "pgdata").exists(), "the check started (initialised) a database"


def test_start_db_starts_a_stopped_embedded_database_for_the_check(tmp_path):
    """Asked with --start-db, the check starts the server it would otherwise report as down."""
    home = tmp_path / "home"
    env = {**_external(), "DEVDIAG_HOME": str(home)}
    try:
        result = devdiag("alerts", "--json", "--start-db", env=env)
        assert "not running" not in result.output, result.output
        assert devdiag("db", "status", env=env).exit_code == 0  # it runs now, and stays up
    finally:
        devdiag("db", "stop", env=env)


def test_an_advisory_lock_is_free_the_moment_its_block_ends(pg):
    """What `devdiag retention` and `devdiag drill` run under: a second one started the moment the first
    returns is not refused (the lock goes with the block, not later with the server's end of the session)."""
    from devdiag_db.db import advisory_lock, connect

    key = 0x7465_7374_4C6F_636B

    def held_by(conn: psycopg.Connection) -> int:
        return conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()[0]

    with connect(pg) as first, connect(pg) as second:
        with advisory_lock(first, key) as taken:
            assert taken and held_by(first) == 1
            with advisory_lock(second, key) as also:
                assert not also  # one at a time
            assert held_by(second) == 0
        assert held_by(first) == 0  # released while its connection is still open
        with advisory_lock(second, key) as taken:
            assert taken
