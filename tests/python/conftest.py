"""Shared fixtures: one real embedded PostgreSQL per test session, in its own DEVDIAG_HOME."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

for var in ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB"):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def devdiag_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh DEVDIAG_HOME with a running embedded server, stopped at the end of the session."""
    from orchestrator import embedded

    home = tmp_path_factory.mktemp("devdiag-home")
    os.environ["DEVDIAG_HOME"] = str(home)
    embedded.start()
    yield home
    embedded.stop()


@pytest.fixture(scope="session")
def pg(devdiag_home: Path):
    """Owner connection settings for the session's database, with `devdiag setup` applied."""
    from orchestrator import config
    from orchestrator.provision import setup

    settings = config.settings()
    setup(settings)
    return settings
