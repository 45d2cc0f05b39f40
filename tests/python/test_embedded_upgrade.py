"""A PostgreSQL 16 data directory (DevDiag before 0.6, the pgserver wheel) meets PostgreSQL 18.

Real servers throughout: the pgserver 0.1.4 wheel's PostgreSQL 16 programs are installed into a
temporary directory (skipped when pip cannot fetch them), a data directory is made as DevDiag 0.5
made it (same initdb flags and settings, as user pgserver under root), `devdiag setup` and demo rows
go in, and the 16 server is left running as an upgraded installation would find it. Then
`devdiag db start` must refuse it in one line without touching it, and `devdiag db upgrade` must
carry every row, role and password over to PostgreSQL 18 and keep the 16 copy.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from devdiag_db import embedded
from devdiag_db.config import ConnectionSettings

OLD_WHEEL = "pgserver==0.1.4"
OLD_USER = "pgserver"  # DevDiag 0.5's server user under root
ENV_VARS = ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB")


@pytest.fixture(scope="module")
def pg16_bin() -> Iterator[Path]:
    """The pgserver wheel's PostgreSQL 16 bin directory, installed without its Python dependencies."""
    target = Path(tempfile.mkdtemp(prefix="devdiag-pg16-"))
    target.chmod(0o755)  # its server runs as another user under root
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), OLD_WHEEL],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot install {OLD_WHEEL} for its PostgreSQL 16: {done.stderr.strip()[-200:]}")
        bin_dir = target / "pgserver" / "pginstall" / "bin"
        yield bin_dir
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _old_user() -> dict[str, object]:
    """subprocess.run's user for the 16 server: pgserver under root (created as DevDiag 0.5 did)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(OLD_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OLD_USER], check=True, capture_output=True)
    return {"user": OLD_USER}


def devdiag(home: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"DEVDIAG_HOME": str(home)}
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env | (extra_env or {}), timeout=600)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under root with (size, mtime_ns, owner): what "nothing changed" compares."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_uid)
    return found


@pytest.fixture(scope="module")
def pg16_home(pg16_bin: Path) -> Iterator[dict[str, object]]:
    """A DEVDIAG_HOME as DevDiag 0.5 left it: PostgreSQL 16 running, schema set up, demo rows loaded."""
    from orchestrator.demo_data import load_demo
    from orchestrator.provision import setup

    home = Path(tempfile.mkdtemp(prefix="devdiag-pg16-home-"))
    home.chmod(0o711)
    pgdata, sock, log = home / "pgdata", home / "run", home / "postgres.log"
    as_old = _old_user()
    for d in (pgdata, sock):
        d.mkdir(mode=0o700)
    log.touch()
    if as_old:
        for p in (pgdata, sock, log):
            shutil.chown(p, OLD_USER, OLD_USER)

    def old(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, check=False, timeout=300, **as_old)

    init = old(str(pg16_bin / "initdb"), "-D", str(pgdata), "-U", "postgres", "--encoding=UTF8", "--locale=C",
               "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
    assert init.returncode == 0, init.stderr
    with open(pgdata / "postgresql.conf", "a") as conf:  # DevDiag 0.5's settings
        conf.write(embedded.DEFAULTS)
    port = embedded._free_port(None)
    (home / "port").write_text(str(port))
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"

    def pg_ctl(action: str) -> None:
        done = old(str(pg16_bin / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-o", options, action)
        assert done.returncode == 0, done.stderr

    pg_ctl("start")
    try:
        owner = f"host={sock} port={port} user=postgres"
        with psycopg.connect(f"{owner} dbname=postgres", autocommit=True) as conn:
            conn.execute("create database devdiag")
        settings = ConnectionSettings({"host": str(sock), "port": str(port), "user": "postgres",
                                       "dbname": "devdiag"})  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DEVDIAG_HOME", str(home))  # secrets.json (the role passwords) in this home
            report = setup(settings)
            load_demo(settings, runs=2000, seed=3, now=datetime.now(UTC))
        with psycopg.connect(f"{owner} dbname=devdiag") as conn:
            rows = conn.execute("select count(*) from devdiag.diag_run").fetchone()[0]
        yield {"home": home, "bin": pg16_bin, "rows": rows, "setup": report, "owner_uid": pgdata.stat().st_uid,
               "pg_ctl": pg_ctl}  # fmt: skip
    finally:
        for data in (pgdata, home / "pgdata.16"):
            if (data / "postmaster.pid").exists():
                old(str(pg16_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        if (home / "pgdata" / "postmaster.pid").exists():
            devdiag(home, "db", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_setup_on_a_postgres_without_contrib_says_which_extensions_are_missing(pg16_home):
    report = pg16_home["setup"]
    assert report.extensions == ()
    assert [line.split(":")[0] for line in report.missing] == ["pg_stat_statements", "pg_trgm"]
    assert all("does not ship it" in line for line in report.missing)


def test_a_postgres_16_data_directory_is_refused_in_one_line_and_left_as_it_was(pg16_home):
    home = pg16_home["home"]

    def refused(*args: str) -> None:
        result = devdiag(home, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, lines)
        assert "holds a PostgreSQL 16 database and DevDiag now runs PostgreSQL 18" in lines[0]
        assert "run `devdiag db upgrade`" in lines[0] and "nothing was changed" in lines[0]

    # Running, as an installation upgraded to this DevDiag finds it: refused, and still the 16 server.
    pid = (home / "pgdata" / "postmaster.pid").read_text()
    for args in (("db", "start"), ("setup",), ("db", "url", "--role", "grafana")):
        refused(*args)
    assert (home / "pgdata" / "postmaster.pid").read_text() == pid
    assert json.loads(devdiag(home, "db", "status", "--json").stdout)["major"] == 16
    # Stopped: not one file of the data directory changes (a running server writes its own WAL).
    pg16_home["pg_ctl"]("stop")
    before = snapshot(home / "pgdata")
    refused("db", "start")
    assert snapshot(home / "pgdata") == before
    assert not (home / "pgdata.16").exists() and not (home / "pgdata.new").exists()
    if not Path("/usr/lib/postgresql/16/bin/postgres").exists():
        # Without --old-bindir and without pgserver in this environment: what to install, in one line.
        result = devdiag(home, "db", "upgrade")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "pip install pgserver==0.1.4" in result.stderr and "--old-bindir" in result.stderr
        assert snapshot(home / "pgdata") == before


def test_devdiag_db_upgrade_carries_rows_roles_and_passwords_to_postgres_18(pg16_home):
    home, rows = pg16_home["home"], pg16_home["rows"]
    pg16_home["pg_ctl"]("start")  # upgrade stops it (as user pgserver under root)
    result = devdiag(home, "db", "upgrade", "--old-bindir", str(pg16_home["bin"]))
    assert result.returncode == 0, result.stderr
    assert "upgraded PostgreSQL 16 -> 18" in result.stdout and str(home / "pgdata.16") in result.stdout
    assert "extensions: pg_stat_statements, pg_trgm" in result.stdout
    assert (home / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    kept = home / "pgdata.16"
    assert (kept / "PG_VERSION").read_text().strip() == "16"
    assert kept.stat().st_uid == pg16_home["owner_uid"]  # the old programs can still run the old copy
    assert not (home / "pgdata.new").exists() and not (home / "upgrade").exists()

    status = json.loads(devdiag(home, "db", "status", "--json").stdout)
    assert status["running"] is True and status["major"] == 18
    owner = f"host={home / 'run'} port={status['port']} user=postgres dbname=devdiag"
    with psycopg.connect(owner) as conn:
        assert conn.execute("show server_version_num").fetchone()[0].startswith("18")
        assert conn.execute("select count(*) from devdiag.diag_run").fetchone()[0] == rows
        assert conn.execute("show data_checksums").fetchone()[0] == "on"
        assert conn.execute("show shared_preload_libraries").fetchone()[0] == "pg_stat_statements"
        assert conn.execute("select count(*) from pg_stat_statements").fetchone()[0] >= 0
    # The writer's scram password (secrets.json) still logs in over TCP: pg_upgrade kept the verifier.
    password = json.loads((home / "secrets.json").read_text())["devdiag_writer"]
    writer = f"host=127.0.0.1 port={status['port']} user=devdiag_writer dbname=devdiag password={password}"
    with psycopg.connect(writer) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "devdiag_writer"

    again = devdiag(home, "db", "upgrade", "--old-bindir", str(pg16_home["bin"]))
    assert again.returncode == 1 and "already PostgreSQL 18: nothing to upgrade" in again.stderr
