"""`devdiag backup` and `devdiag restore`: real pg_dump and psql against the session's database.

The backup is taken once from the demo database; every restore goes to a database of its own,
dropped afterwards. Faults: database down, wrong password, no pg_dump, an old pg_dump, a read-only
or full backup directory, a lock held by another backup, corrupt, truncated and incomplete files.
Attacks (section "signatures and the restricted role"): tampered, re-signed and unsigned files, and
malicious SQL restored with --trust-unsigned, which must fail closed as the restricted role.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import pty
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from devdiag_db import embedded
from devdiag_db.config import ConnectionSettings
from orchestrator.backup import (
    LOCK_NAME,
    SIGNATURE_LEN,
    SIGNATURE_PREFIX,
    TRAILER,
    backup,
    backup_name,
    child_conninfo,
    child_env,
    rotate,
    sign,
    verify_backup,
)
from orchestrator.restore import PUBLIC_VIEWS, RAW_INDEXES, RESTORE_ROLE, restore, target_settings
from orchestrator.secrets import backup_key, backup_key_file

TODAY = datetime.now(UTC).date()
QUICK = ["--no-health"]  # the dbt health checks take seconds: run them in one restore test only


# --- helpers ------------------------------------------------------------------------------------------


def run(command, args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(command, [str(a) for a in args], env=env)


def assert_one_line_error(result, *needles: str, secret: str | None = None) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    if secret:
        assert secret not in result.output


def external_env(pg: ConnectionSettings, **extra: str) -> dict[str, str]:
    """The session database as an external server (DSN over the owner's socket)."""
    env = {"DEVDIAG_PG_DSN": pg.conninfo(), "DEVDIAG_PG_HOST": "", "DEVDIAG_PG_USER": "", "DEVDIAG_PG_PASS": ""}
    env["DEVDIAG_PG_DB"] = ""
    env.update(extra)
    return env


def down_env(pg: ConnectionSettings) -> dict[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return external_env(
        pg, DEVDIAG_PG_DSN="", DEVDIAG_PG_HOST=f"127.0.0.1:{port}", DEVDIAG_PG_USER="x", DEVDIAG_PG_PASS="hunter2-pw"
    )


def wrong_password_env(pg: ConnectionSettings) -> dict[str, str]:
    return external_env(
        pg,
        DEVDIAG_PG_DSN="",
        DEVDIAG_PG_HOST=f"127.0.0.1:{embedded.status().port}",
        DEVDIAG_PG_USER="grafana",
        DEVDIAG_PG_PASS="not-the-password-42",
    )


def admin(pg: ConnectionSettings) -> psycopg.Connection:
    return psycopg.connect(pg.conninfo(dbname="postgres"), autocommit=True)


def database_exists(pg: ConnectionSettings, name: str) -> bool:
    with admin(pg) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def drop_database(pg: ConnectionSettings, name: str) -> None:
    with admin(pg) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def databases(pg) -> Iterator[list[str]]:
    """Names of databases a test creates; dropped afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        drop_database(pg, name)


def fingerprint(settings: ConnectionSettings) -> tuple[int, str]:
    with psycopg.connect(settings.conninfo()) as conn:
        return conn.execute(
            "select count(*), md5(string_agg(id::text || coalesce(resolution, '-'), ',' order by id)) "
            "from devdiag.diag_run"
        ).fetchone()


def backup_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK_NAME)


@pytest.fixture(scope="module")
def backup_dir(demo_db, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backups")


@pytest.fixture(scope="module")
def backup_file(demo_db, backup_dir) -> Path:
    """One backup of the demo database, taken with the command."""
    result = run(backup, ["--dir", backup_dir, "--json"])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["file"])


def divide_by_zero(text: bytes) -> bytes:
    return text.replace(b"\n-- devdiag epilogue", b"\nSELECT 1/0;\n-- devdiag epilogue")


def sql_text(source: Path) -> bytes:
    """The backup's SQL without its signature line."""
    return gzip.decompress(source.read_bytes()[:-SIGNATURE_LEN])


def rewrite(source: Path, target: Path, edit, *, resign: bool = True) -> Path:
    """A copy of a backup with its SQL text edited (and compressed again, so the gzip itself is valid);
    signed again with this machine's key unless ``resign`` is False (then it is unsigned)."""
    target.write_bytes(gzip.compress(edit(sql_text(source))))
    if resign:
        sign(target, backup_key())
    return target


# --- backup -------------------------------------------------------------------------------------------


def test_backup_is_a_verified_plain_sql_gzip(demo_db, backup_dir, backup_file):
    assert backup_file.name == backup_name(TODAY) == f"devdiag-{TODAY.isoformat()}.sql.gz"
    assert backup_files(backup_dir) == [backup_file.name]  # no temporary file left behind
    assert oct(backup_file.stat().st_mode & 0o777) == "0o600"
    assert subprocess.run(["gzip", "-t", str(backup_file)], check=False).returncode == 0
    text = gzip.decompress(backup_file.read_bytes())
    assert b"-- PostgreSQL database dump complete" in text
    *_, trailer, signature = text.rstrip().split(b"\n")
    assert trailer == TRAILER and signature.startswith(SIGNATURE_PREFIX + b"hmac-sha256 ")  # a comment for psql
    assert b"CREATE SCHEMA devdiag;" in text and b"COPY devdiag.diag_run " in text
    contents = verify_backup(backup_file)
    raw_rows, _ = fingerprint(demo_db)
    assert contents.rows["devdiag.diag_run"] == raw_rows > 0
    assert {f"devdiag.{v}" for v in PUBLIC_VIEWS} <= set(contents.objects["views"])
    assert {f"devdiag.{i}" for i in RAW_INDEXES} <= set(contents.objects["indexes"])


def test_backup_json_reports_file_size_and_rows(demo_db, tmp_path):
    result = run(backup, ["--dir", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # quiet under --json
    report = json.loads(result.stdout)
    assert Path(report["file"]).stat().st_size == report["bytes"] > 0
    assert report["rows"]["devdiag.diag_run"] == fingerprint(demo_db)[0]
    assert report["pg_dump"].startswith(f"{embedded.MAJOR}.") and report["removed"] == []


def test_backup_text_output(demo_db, tmp_path):
    result = run(backup, ["--dir", tmp_path])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"backup written: {tmp_path / backup_name(TODAY)}")


def test_child_processes_get_the_password_in_their_environment_only():
    settings = ConnectionSettings({"host": "db.example", "user": "owner", "password": "s3cret-pw", "dbname": "x"})
    assert "s3cret-pw" not in child_conninfo(settings)
    assert child_env(settings)["PGPASSWORD"] == "s3cret-pw"


# --- rotation -----------------------------------------------------------------------------------------


def touch_backup(directory: Path, day: date) -> Path:
    path = directory / backup_name(day)
    path.write_bytes(b"old")
    return path


def test_rotation_removes_old_backups_but_keeps_recent_and_foreign_files(demo_db, tmp_path):
    old = [touch_backup(tmp_path, TODAY - timedelta(days=d)) for d in (31, 45, 400)]
    recent = [touch_backup(tmp_path, TODAY - timedelta(days=d)) for d in (7, 30)]
    foreign = [tmp_path / "devdiag-latest.sql.gz", tmp_path / "notes.txt"]
    for path in foreign:
        path.write_text("keep me")
    result = run(backup, ["--dir", tmp_path, "--keep-days", "30", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["removed"]) == sorted(str(p) for p in old)
    assert all(p.exists() for p in [*recent, *foreign, tmp_path / backup_name(TODAY)])


def test_rotation_never_removes_the_newest_backup(tmp_path):
    paths = [touch_backup(tmp_path, TODAY - timedelta(days=d)) for d in (90, 60)]
    removed = rotate(tmp_path, 30, TODAY)
    assert removed == [paths[0]] and paths[1].exists()


def test_a_failed_backup_deletes_nothing(pg, tmp_path):
    old = touch_backup(tmp_path, TODAY - timedelta(days=400))
    assert_one_line_error(run(backup, ["--dir", tmp_path, "--keep-days", "1"], env=down_env(pg)), "not reachable")
    assert backup_files(tmp_path) == [old.name]


def test_two_backups_cannot_run_at_once(pg, tmp_path):
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run(backup, ["--dir", tmp_path])
    finally:
        os.close(fd)
    assert_one_line_error(result, "another `devdiag backup`", "wait for it")
    assert backup_files(tmp_path) == []


def test_leftovers_of_a_crashed_backup_are_cleaned_and_never_look_complete(pg, tmp_path):
    crashed = tmp_path / f".devdiag-backup-{backup_name(TODAY)}.1234.tmp"
    crashed.write_bytes(b"half a dump")
    result = run(backup, ["--dir", tmp_path])
    assert result.exit_code == 0, result.output
    assert backup_files(tmp_path) == [backup_name(TODAY)]


# --- backup faults ------------------------------------------------------------------------------------


def test_backup_database_down_is_one_line(pg, tmp_path):
    assert_one_line_error(run(backup, ["--dir", tmp_path], env=down_env(pg)), "is not reachable", secret="hunter2-pw")
    assert backup_files(tmp_path) == []


def test_backup_wrong_password_is_one_line(pg, tmp_path):
    result = run(backup, ["--dir", tmp_path], env=wrong_password_env(pg))
    assert_one_line_error(result, "refused the credentials", secret="not-the-password-42")


@pytest.fixture
def no_bundled_binaries(tmp_path, monkeypatch) -> Path:
    """An empty PATH and no bundled PostgreSQL programs: as on a server without client tools."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(embedded, "bin_dir", lambda: empty)
    return empty


def test_backup_without_pg_dump_is_one_line(pg, tmp_path, no_bundled_binaries):
    env = external_env(pg, PATH=str(no_bundled_binaries))
    out = tmp_path / "out"
    assert_one_line_error(run(backup, ["--dir", out], env=env), "no pg_dump found on PATH", "client tools")
    assert not out.exists()


def test_backup_with_an_older_pg_dump_is_one_line(pg, tmp_path, no_bundled_binaries):
    old = no_bundled_binaries / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    old.chmod(0o755)
    env = external_env(pg, PATH=str(no_bundled_binaries))
    result = run(backup, ["--dir", tmp_path / "out"], env=env)
    assert_one_line_error(result, "pg_dump 12.22", f"older than the server (PostgreSQL {embedded.MAJOR})")


def test_backup_embedded_without_its_pg_dump_is_one_line(pg, tmp_path, no_bundled_binaries):
    assert_one_line_error(run(backup, ["--dir", tmp_path]), "no pg_dump found in the embedded PostgreSQL")


def test_backup_external_server_uses_a_matching_pg_dump(pg, tmp_path):
    result = run(backup, ["--dir", tmp_path, "--json"], env=external_env(pg))
    assert result.exit_code == 0, result.output
    assert int(json.loads(result.stdout)["pg_dump"].split(".")[0]) >= 16


def test_backup_into_a_path_under_a_file_is_one_line(pg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line_error(run(backup, ["--dir", blocker / "backups"]), "is not a directory", "--dir")


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    """A directory holding an old backup that cannot be written to (a read-only tmpfs as root)."""
    target = tmp_path / "ro"
    mounted = mount_tmpfs(target, "size=1m")
    touch_backup(target, TODAY - timedelta(days=400))
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
    else:
        target.chmod(0o500)  # enough for a non-root user
    try:
        yield target
    finally:
        if mounted:
            unmount(target)
        else:
            target.chmod(0o700)


def test_backup_read_only_directory_is_one_line_and_deletes_nothing(demo_db, read_only_dir):
    result = run(backup, ["--dir", read_only_dir, "--keep-days", "1"])
    assert_one_line_error(result, "is not writable", "--dir")
    assert backup_files(read_only_dir) == [backup_name(TODAY - timedelta(days=400))]


@pytest.fixture
def full_dir(tmp_path) -> Iterator[Path]:
    """A directory with room for 64 kB (a tiny tmpfs as root; a file-size limit otherwise)."""
    target = tmp_path / "full"
    if mount_tmpfs(target, "size=64k"):
        try:
            yield target
        finally:
            unmount(target)
        return
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, previous[1]))
    try:
        yield target
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)


def test_backup_full_directory_is_one_line_and_leaves_no_partial_file(demo_db, full_dir):
    old = touch_backup(full_dir, TODAY - timedelta(days=400))
    result = run(backup, ["--dir", full_dir, "--keep-days", "1"])
    assert_one_line_error(result, "is full", "free space")
    assert backup_files(full_dir) == [old.name]


# --- restore ------------------------------------------------------------------------------------------


def test_runbook_pipeline_restores_into_an_empty_database(demo_db, backup_file, databases):
    """The runbook's own command: `gunzip -c FILE | psql URL/devdiag_test`, into a fresh empty database."""
    name = "devdiag_test"
    databases.append(name)
    drop_database(demo_db, name)
    with admin(demo_db) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = target_settings(demo_db, name).url()
    done = subprocess.run(
        f'gunzip -c {backup_file} | {embedded.pg_bin("psql")} "{url}"',
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
    restored = target_settings(demo_db, name)
    assert fingerprint(restored) == fingerprint(demo_db)
    with psycopg.connect(restored.conninfo()) as conn:
        assert conn.execute("select * from devdiag.v_fix_success limit 5").fetchall()  # the runbook's step 4


def test_restore_into_a_new_database_and_verify(demo_db, backup_file, databases):
    databases.append("devdiag_restored")
    result = run(restore, [backup_file, "--db", "devdiag_restored", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["created"] and report["rows_lost"] == 0
    assert (
        report["views_present"] == len(PUBLIC_VIEWS)
        and report["indexes_present"] == len(RAW_INDEXES)
        and report["missing"] == []
    )
    assert report["rows"]["devdiag.diag_run"]["restored"] == fingerprint(demo_db)[0]
    restored = target_settings(demo_db, "devdiag_restored")
    assert fingerprint(restored) == fingerprint(demo_db)
    with psycopg.connect(restored.conninfo()) as conn:
        # grants and the UTC day setting come back too
        assert conn.execute("select has_table_privilege('grafana', 'devdiag.v_problem_counts', 'select')").fetchone()[0]
        assert conn.execute("select has_schema_privilege('grafana', 'devdiag', 'usage')").fetchone()[0]
        assert conn.execute("select has_table_privilege('devdiag_writer', 'devdiag.diag_run', 'insert')").fetchone()[0]
        assert not conn.execute("select has_table_privilege('grafana', 'devdiag.diag_run', 'select')").fetchone()[0]
        settings = conn.execute(
            "select setconfig from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
            "where d.datname = current_database() and s.setrole = 0"
        ).fetchone()
        assert settings == (["TimeZone=UTC"],)
        assert conn.execute("select count(*) from devdiag.v_recent_activity").fetchone()[0] >= 0
        # pg_dump 18 brackets the SQL with \restrict lines, and the dump creates setup's extensions,
        # which the restricted role may not: the admin created them, the loader skipped those lines.
        owners = dict(conn.execute("select extname, extowner::regrole::text from pg_extension").fetchall())
        assert owners == {"plpgsql": "postgres", "pg_stat_statements": "postgres", "pg_trgm": "postgres"}
    with gzip.open(backup_file) as dump:
        head = dump.read(4096)
    assert b"\n\\restrict " in head and b"CREATE EXTENSION IF NOT EXISTS pg_stat_statements" in head
    assert not [w for w in report["warnings"] if "extension" in w], report["warnings"]
    health = {h["name"]: h["status"] for h in report["health"]}
    assert health["views_present"] == "pass" and health["indexes_present"] == "pass", report["health"]


def test_restore_text_output(demo_db, backup_file, databases):
    databases.append("devdiag_restored_text")
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_restored_text"])
    assert result.exit_code == 0, result.output
    assert "created and restored devdiag_restored_text" in result.stdout
    v, i = len(PUBLIC_VIEWS), len(RAW_INDEXES)
    assert f"views {v}/{v}, indexes {i}/{i}" in result.stdout


def test_restore_refuses_a_database_with_data_unless_forced(demo_db, backup_file, databases):
    name = "devdiag_force_target"
    databases.append(name)
    assert run(restore, [*QUICK, backup_file, "--db", name]).exit_code == 0
    target = target_settings(demo_db, name)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("delete from devdiag.diag_run where id in (select id from devdiag.diag_run limit 10)")
    before = fingerprint(target)
    assert_one_line_error(run(restore, [*QUICK, backup_file, "--db", name]), "holds data", "--force")
    assert fingerprint(target) == before
    result = run(restore, [*QUICK, backup_file, "--db", name, "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["replaced_schemas"] == ["devdiag"]
    assert fingerprint(target) == fingerprint(demo_db)


def test_restore_defaults_to_the_configured_database_and_refuses_it(demo_db, backup_file):
    before = fingerprint(demo_db)
    assert_one_line_error(run(restore, [*QUICK, backup_file]), "database devdiag holds data")
    assert fingerprint(demo_db) == before


def test_a_failing_forced_restore_changes_nothing(demo_db, backup_file, databases, tmp_path):
    """--force replaces inside the restore's single transaction: a failure keeps the old data."""
    name = "devdiag_atomic"
    databases.append(name)
    assert run(restore, [*QUICK, backup_file, "--db", name]).exit_code == 0
    target = target_settings(demo_db, name)
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        conn.execute("delete from devdiag.diag_run where id in (select id from devdiag.diag_run limit 7)")
    before = fingerprint(target)
    broken = rewrite(
        backup_file,
        tmp_path / backup_file.name,
        divide_by_zero,
    )
    result = run(restore, [*QUICK, broken, "--db", name, "--force"])
    assert_one_line_error(result, "division by zero", "nothing was restored")
    assert fingerprint(target) == before


def test_a_failing_restore_into_a_new_database_leaves_no_database(demo_db, backup_file, databases, tmp_path):
    databases.append("devdiag_never")
    broken = rewrite(
        backup_file,
        tmp_path / backup_file.name,
        divide_by_zero,
    )
    assert_one_line_error(run(restore, [*QUICK, broken, "--db", "devdiag_never"]), "division by zero")
    assert not database_exists(demo_db, "devdiag_never")


def test_restore_recreates_missing_roles_without_login(demo_db, backup_file, databases, tmp_path):
    role = "devdiag_ghost_reader"
    source, copy = "devdiag_ghost_src", "devdiag_ghost_dst"
    databases.extend([source, copy])
    assert run(restore, [*QUICK, backup_file, "--db", source]).exit_code == 0
    with admin(demo_db) as conn:
        conn.execute(f"create role {role} login")
    src = target_settings(demo_db, source)
    with psycopg.connect(src.conninfo(), autocommit=True) as conn:
        conn.execute(f"grant select on devdiag.fix_catalog to {role}")
    out = tmp_path / "ghost"
    result = run(backup, ["--dir", out, "--json"], env=external_env(src))
    assert result.exit_code == 0, result.output
    ghost_file = json.loads(result.stdout)["file"]
    drop_database(demo_db, source)
    try:
        with admin(demo_db) as conn:
            conn.execute(f"drop role {role}")
        assert run(restore, [*QUICK, ghost_file, "--db", copy]).exit_code == 0
        with psycopg.connect(target_settings(demo_db, copy).conninfo()) as conn:
            assert conn.execute(f"select has_table_privilege('{role}', 'devdiag.fix_catalog', 'select')").fetchone()[0]
            assert conn.execute("select rolcanlogin from pg_roles where rolname = %s", (role,)).fetchone() == (False,)
    finally:
        drop_database(demo_db, copy)
        with admin(demo_db) as conn:
            conn.execute(f"drop role if exists {role}")


# --- restore faults -----------------------------------------------------------------------------------


def test_restore_of_a_corrupt_file_touches_nothing(demo_db, backup_file, databases, tmp_path):
    databases.append("devdiag_corrupt")
    data = bytearray(backup_file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.sql.gz"
    corrupt.write_bytes(bytes(data))
    result = run(restore, [*QUICK, corrupt, "--db", "devdiag_corrupt"])
    assert_one_line_error(result, "corrupt", "nothing was restored")
    assert not database_exists(demo_db, "devdiag_corrupt")


def test_restore_of_a_truncated_file_touches_nothing(demo_db, backup_file, databases, tmp_path):
    databases.append("devdiag_truncated")
    truncated = tmp_path / "truncated.sql.gz"
    truncated.write_bytes(backup_file.read_bytes()[: backup_file.stat().st_size // 2])
    result = run(restore, [*QUICK, truncated, "--db", "devdiag_truncated"])
    assert_one_line_error(result, "truncated", "nothing was restored")
    assert not database_exists(demo_db, "devdiag_truncated")


def test_restore_of_a_complete_gzip_of_half_a_dump_touches_nothing(demo_db, backup_file, databases, tmp_path):
    """A valid gzip whose SQL stops half-way (a copy cut and re-compressed): the trailers are missing."""
    databases.append("devdiag_half")
    half = rewrite(backup_file, tmp_path / "half.sql.gz", lambda t: t[: len(t) // 2])
    assert_one_line_error(run(restore, [*QUICK, half, "--db", "devdiag_half"]), "incomplete", "nothing was restored")
    assert not database_exists(demo_db, "devdiag_half")


def test_restore_of_a_file_whose_rows_were_removed_is_refused(demo_db, backup_file, tmp_path):
    def drop_a_row(text: bytes) -> bytes:
        head, _, rest = text.partition(b"COPY devdiag.diag_run ")
        header, _, data = rest.partition(b"\n")
        return head + b"COPY devdiag.diag_run " + header + b"\n" + data.split(b"\n", 1)[1]

    edited = rewrite(backup_file, tmp_path / "edited.sql.gz", drop_a_row)
    assert_one_line_error(
        run(restore, [*QUICK, edited, "--db", "devdiag_edited"]), "row counts differ", "devdiag.diag_run"
    )


def test_restore_of_a_missing_file_is_one_line(pg, tmp_path):
    assert_one_line_error(run(restore, [*QUICK, tmp_path / "nope.sql.gz", "--db", "x"]), "no such file")


def test_restore_database_down_is_one_line(pg, backup_file):
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_down"], env=down_env(pg))
    assert_one_line_error(result, "is not reachable", secret="hunter2-pw")


def test_restore_wrong_password_is_one_line(pg, backup_file):
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_pw"], env=wrong_password_env(pg))
    assert_one_line_error(result, "refused the credentials", secret="not-the-password-42")


def test_restore_needs_no_psql(demo_db, backup_file, databases, no_bundled_binaries):
    """The SQL goes through our own connection (psql would also run the file's backslash commands)."""
    databases.append("devdiag_nopsql")
    env = external_env(demo_db, PATH=str(no_bundled_binaries))
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_nopsql", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert fingerprint(target_settings(demo_db, "devdiag_nopsql")) == fingerprint(demo_db)


# --- progress on a terminal ---------------------------------------------------------------------------


def run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run `backup` in a child whose stderr is a terminal; returns its exit code and what the terminal got."""
    leader, follower = pty.openpty()
    code = f"from orchestrator.backup import backup; backup({args!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    received = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            block = os.read(leader, 4096)
        except OSError:
            break
        if not block:
            break
        received += block
    os.close(leader)
    return proc.wait(timeout=60), received.decode(errors="replace")


def test_progress_shows_on_a_terminal_and_not_under_json(demo_db, tmp_path):
    code, shown = run_on_a_terminal(["--dir", str(tmp_path / "a")])
    assert code == 0 and "backup:" in shown and "rows" in shown
    code, shown = run_on_a_terminal(["--dir", str(tmp_path / "b"), "--json"])
    assert code == 0 and shown == ""


# --- signatures and the restricted role ---------------------------------------------------------------


@pytest.fixture
def proof_dir() -> Iterator[Path]:
    """A directory the server's OS user could write to: a proof file there means the attack ran."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="devdiag-proof-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def malicious(source: Path, target: Path, statement: bytes) -> bytes:
    """The backup's SQL with ``statement`` added before the epilogue (unsigned)."""
    text = sql_text(source).replace(b"\n-- devdiag epilogue", b"\n" + statement + b"\n-- devdiag epilogue")
    target.write_bytes(gzip.compress(text))
    return text


def signature_member(source: Path) -> bytes:
    return source.read_bytes()[-SIGNATURE_LEN:]


def test_a_tampered_backup_is_refused_before_anything_is_touched(demo_db, backup_file, tmp_path, proof_dir):
    """The attack: a `COPY ... TO PROGRAM` line added to a signed file (its signature kept, now wrong)."""
    proof = proof_dir / "proof.txt"
    tampered = tmp_path / "tampered.sql.gz"
    malicious(backup_file, tampered, f"COPY (select 1) TO PROGRAM 'id > {proof}';".encode())
    tampered.write_bytes(tampered.read_bytes() + signature_member(backup_file))
    result = run(restore, [*QUICK, tampered, "--db", "devdiag_tampered"])
    assert_one_line_error(result, "altered", "signature", "--trust-unsigned", "nothing was restored")
    assert not database_exists(demo_db, "devdiag_tampered") and not proof.exists()
    assert backup_key() not in result.output.encode()


def test_with_trust_unsigned_a_malicious_backup_fails_closed(demo_db, backup_file, tmp_path, proof_dir):
    """The same file with --trust-unsigned: its SQL runs as devdiag_restore, which may not run programs."""
    proof = proof_dir / "proof.txt"
    evil = tmp_path / "evil.sql.gz"
    malicious(backup_file, evil, f"COPY (select 1) TO PROGRAM 'id > {proof}';".encode())
    result = run(restore, [*QUICK, evil, "--db", "devdiag_evil", "--trust-unsigned"])
    assert_one_line_error(result, "permission denied", "external program", "nothing was restored")
    assert not proof.exists()
    assert not database_exists(demo_db, "devdiag_evil")  # the database it created is gone again
    with admin(demo_db) as conn:
        assert conn.execute("select rolcanlogin from pg_roles where rolname = %s", (RESTORE_ROLE,)).fetchone() == (
            False,
        )


@pytest.mark.parametrize(
    "statement, needle",
    [
        (b"SELECT pg_read_file('/etc/passwd');", "permission denied"),
        (b"COPY devdiag.fix_catalog FROM '/etc/passwd';", "permission denied"),
        (b"CREATE ROLE devdiag_evil SUPERUSER LOGIN;", "permission denied"),
        (b"ALTER ROLE devdiag_restore SUPERUSER;", "permission denied"),
        (b"SET ROLE postgres;", "permission denied"),
        (b"SET SESSION AUTHORIZATION postgres;", "permission denied"),
        (b"CREATE EXTENSION adminpack;", "adminpack"),  # untrusted extension, or not installed: refused either way
        (b"COMMIT; SELECT 1;", "ends the restore's transaction"),
        (b"CREATE FUNCTION devdiag.f() RETURNS int SECURITY DEFINER LANGUAGE sql AS 'select 1';", "SECURITY DEFINER"),
        (b"CREATE VIEW devdiag.v_secrets AS SELECT rolname, rolpassword FROM pg_catalog.pg_authid;", "pg_authid"),
        (b"CREATE RULE r AS ON INSERT TO devdiag.fix_catalog DO ALSO NOTIFY devdiag;", "defines rule r"),
        (
            b"CREATE FUNCTION devdiag.g(text) RETURNS text IMMUTABLE LANGUAGE sql AS 'select $1';\n"
            b"CREATE INDEX ix_g ON devdiag.fix_catalog (devdiag.g(fix_id));",
            "VACUUM/ANALYZE",
        ),
    ],
    ids=["read-file", "copy-from-file", "create-superuser", "alter-self", "set-role", "session-auth", "extension",
         "commit-escape", "security-definer", "view-over-pg_authid", "rule", "index-function"],
)  # fmt: skip
def test_what_the_restricted_role_cannot_do(demo_db, backup_file, tmp_path, statement, needle):
    name = "devdiag_attack"
    evil = tmp_path / "attack.sql.gz"
    malicious(backup_file, evil, statement)
    try:
        result = run(restore, [*QUICK, evil, "--db", name, "--trust-unsigned"])
        assert_one_line_error(result, needle)
        assert not database_exists(demo_db, name)
        with admin(demo_db) as conn:
            assert conn.execute("select rolsuper from pg_roles where rolname = %s", (RESTORE_ROLE,)).fetchone() == (
                False,
            )
            assert conn.execute("select 1 from pg_roles where rolname = 'devdiag_evil'").fetchone() is None
    finally:
        drop_database(demo_db, name)


def test_psql_backslash_commands_in_a_backup_never_run(demo_db, backup_file, tmp_path, proof_dir):
    """psql would run `\\!` on this machine as whoever restores; our loader sends SQL only."""
    proof = proof_dir / "client-proof.txt"
    evil = tmp_path / "shell.sql.gz"
    malicious(backup_file, evil, f"\\! touch {proof}".encode())
    result = run(restore, [*QUICK, evil, "--db", "devdiag_shell", "--trust-unsigned"])
    assert_one_line_error(result, "syntax error", "nothing was restored")
    assert not proof.exists() and not database_exists(demo_db, "devdiag_shell")


def test_a_backup_re_signed_without_the_key_is_refused(demo_db, backup_file, tmp_path):
    """An attacker who edits the file and signs it with a key of their own, or who forges our key id."""
    edited = rewrite(backup_file, tmp_path / "resigned.sql.gz", lambda t: t + b"SELECT 1;\n", resign=False)
    sign(edited, b"the-attackers-own-key-0123456789")
    result = run(restore, [*QUICK, edited, "--db", "devdiag_resigned"])
    assert_one_line_error(result, "another backup key", "--key-file", "--trust-unsigned")
    forged = tmp_path / "forged.sql.gz"
    body = edited.read_bytes()[:-SIGNATURE_LEN]
    ours = gzip.decompress(signature_member(backup_file))  # our key id, a MAC of another file
    forged.write_bytes(body + gzip.compress(ours, compresslevel=0, mtime=0))
    assert_one_line_error(run(restore, [*QUICK, forged, "--db", "devdiag_resigned"]), "altered")
    assert not database_exists(demo_db, "devdiag_resigned")


def test_an_unsigned_legacy_backup_needs_trust_unsigned(demo_db, backup_file, databases, tmp_path):
    legacy = tmp_path / "legacy.sql.gz"
    legacy.write_bytes(backup_file.read_bytes()[:-SIGNATURE_LEN])  # what `devdiag backup` wrote before signing
    result = run(restore, [*QUICK, legacy, "--db", "devdiag_legacy"])
    assert_one_line_error(result, "no devdiag signature", "--trust-unsigned", "nothing was restored")
    assert not database_exists(demo_db, "devdiag_legacy")
    databases.append("devdiag_legacy")
    result = run(restore, [*QUICK, legacy, "--db", "devdiag_legacy", "--trust-unsigned", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["signed"] is False
    assert any("unsigned" in w for w in report["warnings"])
    assert fingerprint(target_settings(demo_db, "devdiag_legacy")) == fingerprint(demo_db)


def test_restored_objects_belong_to_the_owner_and_the_role_keeps_nothing(demo_db, backup_file, databases):
    name = "devdiag_owned"
    databases.append(name)
    result = run(restore, [*QUICK, backup_file, "--db", name, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["signed"] is True and report["warnings"] == []
    with psycopg.connect(target_settings(demo_db, name).conninfo()) as conn:
        owners = conn.execute(
            "select distinct pg_get_userbyid(relowner) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'devdiag' union select pg_get_userbyid(nspowner) from pg_namespace "
            "where nspname = 'devdiag' union select distinct pg_get_userbyid(proowner) from pg_proc p "
            "join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'devdiag'"
        ).fetchall()
        assert owners == [("postgres",)]  # as `devdiag setup` owns them: builds and retention work as before
        role = conn.execute(
            "select rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, "
            "(select count(*) from pg_auth_members m where m.member = r.oid) from pg_roles r where rolname = %s",
            (RESTORE_ROLE,),
        ).fetchone()
        assert role == (False, False, False, False, 0)
        assert not conn.execute(
            "select has_database_privilege(%s, current_database(), 'create')", (RESTORE_ROLE,)
        ).fetchone()[0]
    later = run(restore, [*QUICK, backup_file, "--db", name, "--force"])  # the role can take the schema over again
    assert later.exit_code == 0, later.output


def test_a_restore_role_given_privileges_is_refused(demo_db, backup_file):
    with admin(demo_db) as conn:
        conn.execute(f"create role {RESTORE_ROLE} nologin") if not conn.execute(
            "select 1 from pg_roles where rolname = %s", (RESTORE_ROLE,)
        ).fetchone() else None
        conn.execute(f"grant pg_execute_server_program to {RESTORE_ROLE}")
    try:
        result = run(restore, [*QUICK, backup_file, "--db", "devdiag_privileged"])
        assert_one_line_error(result, "member of pg_execute_server_program", "revoke", "nothing was restored")
        assert not database_exists(demo_db, "devdiag_privileged")
    finally:
        with admin(demo_db) as conn:
            conn.execute(f"revoke pg_execute_server_program from {RESTORE_ROLE}")


def test_restore_without_the_key_names_where_it_is_looked_for(demo_db, backup_file, tmp_path):
    env = external_env(demo_db, DEVDIAG_HOME=str(tmp_path / "elsewhere"), DEVDIAG_BACKUP_KEY="")
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_nokey"], env=env)
    assert_one_line_error(result, "no backup key", "backup.key", "--key-file", "DEVDIAG_BACKUP_KEY")
    assert not database_exists(demo_db, "devdiag_nokey")


def test_the_key_can_come_from_a_file_or_the_environment(demo_db, backup_file, databases, tmp_path):
    key = backup_key_file()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    copied = tmp_path / "backup.key"
    copied.write_bytes(key.read_bytes())
    env = external_env(demo_db, DEVDIAG_HOME=str(tmp_path / "new-machine"))
    databases.extend(["devdiag_keyfile", "devdiag_keyenv"])
    result = run(restore, [*QUICK, backup_file, "--db", "devdiag_keyfile", "--key-file", copied], env=env)
    assert result.exit_code == 0, result.output
    env["DEVDIAG_BACKUP_KEY"] = "an operator-chosen key of 32 chars"
    out = tmp_path / "env-signed"
    made = run(backup, ["--dir", out, "--json"], env=env)
    assert made.exit_code == 0, made.output
    signed_file = json.loads(made.stdout)["file"]
    assert run(restore, [*QUICK, signed_file, "--db", "devdiag_keyenv"], env=env).exit_code == 0
    refused = run(restore, [*QUICK, signed_file, "--db", "devdiag_keyenv2"])  # this machine's own key: another one
    assert_one_line_error(refused, "another backup key")
    assert "operator-chosen" not in made.output + refused.output
