"""A user's own CI: the plain `dbt build` CLI, profiles.yml made from profiles.yml.example, fresh database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from conftest import own_database

from devdiag_db import embedded
from orchestrator.contract import PUBLIC_VIEWS

ROOT = Path(__file__).resolve().parents[2]
FRESH_DB = "devdiag_cli_fresh"


@pytest.fixture
def fresh_database(pg):
    with own_database(pg, FRESH_DB, setup=False):
        yield FRESH_DB


@pytest.mark.slow
def test_plain_dbt_build_on_a_fresh_database(fresh_database, tmp_path):
    shutil.copyfile(ROOT / "profiles.yml.example", tmp_path / "profiles.yml")
    state = embedded.status()
    env = {
        **os.environ,
        "DEVDIAG_PG_HOST": f"{state.socket_dir}:{state.port}",
        "DEVDIAG_PG_USER": "postgres",
        "DEVDIAG_PG_PASS": "",
        "DEVDIAG_PG_DB": fresh_database,
    }
    dbt = Path(sys.executable).parent / "dbt"
    result = subprocess.run(
        [str(dbt), "build", "--profiles-dir", str(tmp_path), "--target-path", str(tmp_path / "target")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Completed successfully" in result.stdout
    with psycopg.connect(host=str(state.socket_dir), port=state.port, user="postgres", dbname=fresh_database) as conn:
        views = conn.execute(
            "select count(*) from pg_views where schemaname = 'devdiag' and viewname like 'v\\_%'"
        ).fetchone()[0]
    assert views == len(PUBLIC_VIEWS)
    # README runs it with `--profiles-dir .`, the checkout: whatever dbt wrote beside profiles.yml is ignored.
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir() if p.name != "target")
    assert_ignored_by_git(*written)


def assert_ignored_by_git(*names: str) -> None:
    """Each name, at the checkout's root, matches .gitignore (whether or not such a file exists)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    missed = [line.split("\t")[-1] for line in result.stdout.splitlines() if line.startswith("::")]
    assert result.returncode in (0, 1) and not missed, f"not in .gitignore: {missed} {result.stderr}"


def test_what_plain_dbt_writes_in_the_checkout_is_ignored():
    """`dbt build --profiles-dir .` (README) writes these beside the project; `git status` must stay clean."""
    assert_ignored_by_git("profiles.yml", ".user.yml", "target/", "logs/", "dbt_packages/")
