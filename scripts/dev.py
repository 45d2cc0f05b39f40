#!/usr/bin/env python3
"""Bootstrap for a machine that has only Python: `python3 scripts/dev.py demo|test|lint [pytest args]`.

Creates .venv beside this repo, installs the package (with test extras for test/lint) when
pyproject.toml changed since the last install, then runs the job. Exit code is the job's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def run(*args: str | Path) -> None:
    print("+ " + " ".join(str(a) for a in args), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
    if code:
        sys.exit(code)


def install(extras: str) -> None:
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    run(BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".{extras}")
    stamp.write_text(digest)


def lint() -> None:
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")  # the packages, as [tool.mypy] in pyproject.toml names them
    run(BIN / "sqlfluff", "lint", "models", "macros", "tests", "--processes", "2")


def main(argv: list[str]) -> None:
    job = argv[0] if argv else "test"
    if job == "demo":
        install("")
        run(BIN / "devdiag", "demo", *argv[1:])
    elif job == "lint":
        install("[test]")
        lint()
    elif job == "test":
        install("[test]")
        lint()
        run(BIN / "python", "-m", "pytest", *argv[1:])
    else:
        sys.exit(f"unknown job {job!r}: use demo, test or lint")


if __name__ == "__main__":
    main(sys.argv[1:])
