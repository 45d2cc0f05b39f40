"""The wheel and sdist carry everything the commands read at run time, found through the package.

The slow test builds the sdist, a wheel from it, installs that into a fresh venv outside the
checkout and runs `devdiag demo` and `devdiag health` from an empty directory. The quick ones run
setup.py's real build step into a folder and import from there, and check that a failed demo
leaves no database of its own running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEVDIAG = Path(sys.executable).with_name("devdiag")
PROJECT = Path("devdiag_db", "project")  # where the wheel carries the project (config.PACKAGED_PROJECT)
MUST_HAVE = (
    "dbt_project.yml",
    "selectors.yml",
    "profiles.yml.example",
    "models/marts/v_ttr_days.sql",
    "models/staging/_devdiag__sources.yml",
    "macros/raw_schema.sql",
    "tests/generic/health_check_passes.sql",
    "grafana/dashboards/devdiag-analytics.json",
    "grafana/provisioning/alerting/devdiag-alerts.yaml",
    "grafana/provisioning/datasources/devdiag.yaml",
)


def expected_project_files() -> set[str]:
    """What a run reads from the dbt project and grafana/, straight from the checkout."""
    files = {"dbt_project.yml", "selectors.yml", "profiles.yml.example"}
    for tree in ("models", "macros", "tests", "grafana"):
        files |= {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / tree).rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and not p.relative_to(ROOT).as_posix().startswith("tests/python/")
        }
    return files


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing of ours, plus `extra`."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "DEVDIAG_PROJECT_DIR", "DEVDIAG_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DEVDIAG_PG_")}
    return {**env, **extra}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Outside the checkout and outside pytest's basetemp (another session may clean that up)."""
    path = Path(tempfile.mkdtemp(prefix="devdiag-wheel-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- quick: setup.py's build step and the lookup, without a wheel -------------------------------------


def build_py(into: Path) -> Path:
    """setup.py's build_py, as a wheel build runs it, into `into`; returns the copied project."""
    result = run(
        [sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", into],
        cwd=ROOT,
        env=clean_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return into / PROJECT


def test_the_build_copies_the_project_and_leaves_the_pytest_files_out(scratch):
    project = build_py(scratch / "lib")
    copied = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert copied == expected_project_files()
    assert set(MUST_HAVE) <= copied
    assert not [name for name in copied if name.startswith("tests/python") or name.endswith(".py")]


def test_an_installed_copy_is_found_from_anywhere_and_the_checkout_is_not_needed(scratch):
    lib = scratch / "lib"
    project = build_py(lib)
    elsewhere = scratch / "cwd"
    elsewhere.mkdir()
    probe = (
        "import devdiag_db, json; from devdiag_db.config import project_dir; "
        "from orchestrator.grafana import grafana_dir; "
        "print(json.dumps([devdiag_db.__file__, str(project_dir()), str(grafana_dir())]))"
    )
    found = run([sys.executable, "-c", probe], cwd=elsewhere, env=clean_env(PYTHONPATH=str(lib)))
    assert found.returncode == 0, found.stderr
    package, project_path, grafana_path = json.loads(found.stdout)
    assert Path(package).is_relative_to(lib)  # the copy, not the editable checkout
    assert Path(project_path) == project.resolve()
    assert Path(grafana_path) == project.resolve() / "grafana"

    shutil.rmtree(project)  # a broken install: one line that says what to do
    missing = run([sys.executable, "-c", probe], cwd=elsewhere, env=clean_env(PYTHONPATH=str(lib)))
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert "no dbt_project.yml" in last and "reinstall" in last and str(project) in last


def test_the_checkout_comes_first_when_running_from_it():
    from devdiag_db.config import project_dir

    assert project_dir() == ROOT


# --- quick: a failed demo and the embedded database -----------------------------------------------


def demo(home: Path, project: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = clean_env(DEVDIAG_HOME=str(home), DEVDIAG_PROJECT_DIR=str(project))
    return run([DEVDIAG, "demo", "--runs", "300"], cwd=cwd, env=env, timeout=180)


def running(home: Path) -> bool:
    result = run([DEVDIAG, "db", "status", "--json"], cwd=home, env=clean_env(DEVDIAG_HOME=str(home)))
    return bool(json.loads(result.stdout)["running"])


def broken_project(where: Path) -> Path:
    """A dbt project that dbt refuses to parse, so that `devdiag setup` fails after the server is up."""
    where.mkdir()
    shutil.copy(ROOT / "profiles.yml.example", where)
    (where / "dbt_project.yml").write_text("name: [unclosed\n")
    return where


def test_a_demo_without_a_dbt_project_starts_no_database(scratch):
    home = scratch / "home"
    result = demo(home, scratch, scratch)
    assert result.returncode == 1
    assert "no dbt_project.yml" in result.stderr
    assert not (home / "pgdata").exists()


def test_a_failed_demo_stops_the_database_it_started(scratch):
    home = scratch / "home"
    try:
        result = demo(home, broken_project(scratch / "project"), scratch)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "stopped the embedded PostgreSQL this demo had started" in result.stderr
        assert (home / "pgdata").is_dir()  # it did start one
        assert not running(home)
    finally:
        run([DEVDIAG, "db", "stop"], cwd=scratch, env=clean_env(DEVDIAG_HOME=str(home)))


def test_a_failed_demo_leaves_a_database_that_was_running_before_up(devdiag_home, scratch):
    result = demo(devdiag_home, broken_project(scratch / "project"), scratch)
    assert result.returncode == 1, result.stderr
    assert "stopped" not in result.stderr
    assert running(devdiag_home)


# --- slow: sdist -> wheel -> fresh venv -> demo and health from an empty directory -----------------


def snapshot(tree: Path) -> dict[str, float]:
    return {p.relative_to(tree).as_posix(): p.stat().st_mtime for p in tree.rglob("*")}


@pytest.mark.slow
def test_the_wheel_runs_the_demo_outside_the_checkout(scratch):
    timings: dict[str, float] = {}
    env = clean_env()

    started = time.monotonic()
    dist = scratch / "dist"
    sdist = run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"],
        cwd=ROOT,
        env=env,
    )
    assert sdist.returncode == 0, sdist.stderr[-2000:]
    archive = dist / sdist.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(top + "/") for name in tar.getnames()}
        tar.extractall(scratch / "src", filter="data")
    assert expected_project_files() <= in_sdist
    assert not [name for name in in_sdist if name.startswith("tests/python")]

    # A wheel from the sdist, as pip and `python -m build` make one (isolated build, current setuptools).
    wheels = scratch / "wheels"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, scratch / "src" / top],
        cwd=scratch,
        env=env,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    timings["sdist + wheel"] = time.monotonic() - started
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = {n.removeprefix(PROJECT.as_posix() + "/") for n in names if n.startswith(PROJECT.as_posix() + "/")}
    assert in_wheel == expected_project_files()
    assert set(MUST_HAVE) <= in_wheel
    assert {"mcp_devdiag/catalog.yaml", "orchestrator/alert_rules.yaml"} <= names
    assert not [n for n in names if "tests/python" in n or n.endswith("conftest.py")]

    # A fresh venv, no system site-packages; dependencies from the package index (pip's cache).
    started = time.monotonic()
    venv = scratch / "venv"
    created = run([sys.executable, "-m", "venv", venv], cwd=scratch, env=env)
    assert created.returncode == 0, created.stderr
    installed = run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], cwd=scratch, env=env, timeout=900
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    timings["venv + install"] = time.monotonic() - started

    site_project = Path(
        run(
            [venv / "bin" / "python", "-c", "from devdiag_db.config import project_dir; print(project_dir())"],
            cwd=scratch,
            env=env,
        ).stdout.strip()
    )
    assert site_project.is_relative_to(venv) and site_project.parts[-2:] == PROJECT.parts
    before = snapshot(site_project)

    empty = scratch / "cwd"
    empty.mkdir()
    home = scratch / "home"
    user_env = clean_env(DEVDIAG_HOME=str(home))
    devdiag = venv / "bin" / "devdiag"
    try:
        started = time.monotonic()
        demo_run = run([devdiag, "demo", "--runs", "3000"], cwd=empty, env=user_env)
        timings["demo"] = time.monotonic() - started
        assert demo_run.returncode == 0, demo_run.stderr[-3000:]
        assert ", 0 failing" in demo_run.stderr

        health = run([devdiag, "health", "--json"], cwd=empty, env=user_env)
        assert health.returncode == 0, health.stderr
        checks = json.loads(health.stdout)
        assert len(checks) == 7 and {c["status"] for c in checks} == {"pass"}, checks

        # dbt's target/ and logs/ went to DEVDIAG_HOME: nothing written beside the installed project
        # (which may be read-only) or into the directory the user stood in.
        assert snapshot(site_project) == before
        assert not list(empty.iterdir())
        assert (home / "dbt-target").is_dir()
    finally:
        run([devdiag, "db", "stop"], cwd=empty, env=user_env)
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_the_distribution_has_a_name_of_its_own_a_license_and_types():
    """`mcp-devdiag` on the package index is another project: ours is `devdiag`, everywhere."""
    import importlib.metadata

    from devdiag_db.config import distribution_name

    meta = importlib.metadata.metadata("devdiag")
    assert distribution_name() == "devdiag" and meta["License-Expression"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    for package in ("devdiag_db", "mcp_devdiag", "orchestrator"):
        assert (ROOT / package / "py.typed").exists(), package
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = [str(path.relative_to(ROOT)) for path in docs if "install mcp-devdiag" in path.read_text()]
    assert not stale, f"docs still install the other project: {stale}"
