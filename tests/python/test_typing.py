"""Types are checked in CI: mypy runs over the three packages with the project's configuration."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MYPY = Path(sys.executable).with_name("mypy")


def test_the_lint_step_runs_mypy_over_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"]) - {"orchestrator.grafana"}
    assert set(config["tool"]["mypy"]["files"]) == packages
    assert config["tool"]["mypy"]["check_untyped_defs"] is True
    lint = (ROOT / "scripts" / "dev.py").read_text().split("def lint()")[1].split("\ndef ")[0]
    assert 'run(BIN / "mypy")' in lint
    assert "scripts/dev.py test" in (ROOT / ".ci" / "run").read_text()


def mypy(package: Path, cache: Path) -> subprocess.CompletedProcess:
    # The project's own [tool.mypy]; a path on the command line replaces its `files`.
    return subprocess.run(
        [str(MYPY), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache), str(package)],
        capture_output=True,
        text=True,
        cwd=ROOT,  # devdiag_db importable, as in the project's own run
        check=False,
    )


def test_mypy_with_the_project_configuration_reports_a_type_error(tmp_path):
    """The check can fail: the project's settings find a `fetchone()[0]` on an Optional row."""
    package = tmp_path / "broken"
    package.mkdir()
    head = "import psycopg\n\nfrom devdiag_db.db import scalar\n\n\ndef count(conn: psycopg.Connection) -> int:\n"
    (package / "__init__.py").write_text(head + "    return conn.execute('select 1').fetchone()[0]\n")
    run = mypy(package, tmp_path / "cache")
    assert run.returncode == 1 and "is not indexable" in run.stdout, run.stdout
    (package / "__init__.py").write_text(head + "    return int(scalar(conn, 'select 1'))\n")
    run = mypy(package, tmp_path / "cache")
    assert run.returncode == 0, run.stdout  # the same through devdiag_db.db.scalar passes


def test_every_type_ignore_in_the_packages_says_why():
    """An ignore hides a real error: each carries a reason on its line or the line above."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    bare = []
    for package in config["tool"]["mypy"]["files"]:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines):
                if "# type: ignore" not in line:
                    continue
                after = line.split("# type: ignore", 1)[1]
                if "#" not in after and not lines[number - 1].strip().startswith("#"):
                    bare.append(f"{path.relative_to(ROOT)}:{number + 1}")
    assert not bare, f"type: ignore without a reason comment: {bare}"
