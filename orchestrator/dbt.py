"""dbt, run in-process (``dbtRunner``): 0.3–1 s a call instead of 3 s for the CLI.

The profile is ``profiles.yml.example`` itself, fed through ``DEVDIAG_PG_*`` variables, so the
orchestrator and a user's plain ``dbt build`` read the same file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg

from devdiag_db.config import ConnectionSettings, devdiag_home, project_dir
from devdiag_db.db import connect


@dataclass(frozen=True)
class NodeResult:
    name: str
    unique_id: str
    resource_type: str
    status: str  # pass, warn, fail, error, skipped, success
    failures: int | None
    message: str | None
    seconds: float


def _profiles_dir() -> Path:
    target = devdiag_home() / "dbt"
    target.mkdir(parents=True, exist_ok=True)
    template = project_dir() / "profiles.yml.example"
    if not template.is_file():
        raise click.ClickException(f"no profiles.yml.example in {template.parent}: restore it or reinstall DevDiag")
    shutil.copyfile(template, target / "profiles.yml")
    return target


def profile_env(conn: ConnectionSettings) -> dict[str, str]:
    """The DEVDIAG_PG_* variables that profiles.yml.example reads."""
    p = conn.params
    host = p.get("host", "localhost")
    return {
        "DEVDIAG_PG_HOST": f"{host}:{p.get('port', '5432')}",
        "DEVDIAG_PG_USER": p.get("user", ""),
        "DEVDIAG_PG_PASS": p.get("password", ""),
        "DEVDIAG_PG_DB": conn.dbname,
    }


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _common_args() -> list[str]:
    home = devdiag_home()
    return [
        "--project-dir",
        str(project_dir()),
        "--profiles-dir",
        str(_profiles_dir()),
        "--target-path",
        str(home / "dbt-target"),
        "--log-path",
        str(home / "logs"),
    ]


def _run(conn: ConnectionSettings, args: list[str], quiet: bool, env: dict[str, str] | None = None):
    from dbt.cli.main import dbtRunner

    # dbt's own connection errors are long and generic; ours say what to do (db.explain).
    connect(conn).close()

    full = [*args, *_common_args()]
    if quiet:
        full += ["--quiet", "--log-level", "none"]
    with _environment({**profile_env(conn), **(env or {})}):
        return dbtRunner().invoke(full)


def invoke(
    conn: ConnectionSettings, args: list[str], *, quiet: bool = True, env: dict[str, str] | None = None
) -> list[NodeResult]:
    """Run one dbt command, with ``env`` set for its duration; returns its node results. Raises
    ClickException when dbt itself fails (bad project, no connection) or a selector matched nothing."""
    outcome = _run(conn, args, quiet, env)
    if outcome.exception is not None:
        raise click.ClickException(f"dbt {args[0]} failed: {_one_line(outcome.exception)}")
    results = list(getattr(outcome.result, "results", None) or [])
    if not results and args[0] in {"build", "run", "test", "source"}:
        raise click.ClickException(f"dbt {' '.join(args)} selected nothing: check the selector")
    return [_node_result(r) for r in results]


BUILD_LOCK_WAIT = "15min"


def build(conn: ConnectionSettings, args: list[str], **kwargs) -> list[NodeResult]:
    """`invoke` for `dbt build`, one at a time per database: a PostgreSQL advisory lock, so that a
    5-minute build and the nightly full refresh, from cron on any machine, never run together (two
    builds would replace the same tables under each other)."""
    with connect(conn) as holder:
        holder.execute(f"set lock_timeout = '{BUILD_LOCK_WAIT}'")
        try:
            holder.execute("select pg_advisory_lock(hashtext('devdiag dbt build'))")
        except psycopg.errors.LockNotAvailable:
            raise click.ClickException(
                f"another devdiag build has held the build lock for {BUILD_LOCK_WAIT}: "
                "check `ps aux | grep devdiag` and the build log, then run again"
            ) from None
        return invoke(conn, args, **kwargs)  # the lock ends with the holder's session


def run_operation(conn: ConnectionSettings, macro: str) -> None:
    outcome = _run(conn, ["run-operation", macro], quiet=True)
    if not outcome.success:
        raise click.ClickException(f"dbt run-operation {macro} failed: {_one_line(outcome.exception or '')}")


def _node_result(r) -> NodeResult:
    node = r.node
    return NodeResult(
        name=getattr(node, "name", None) or node.unique_id.split(".")[-1],
        unique_id=node.unique_id,
        resource_type=str(getattr(node, "resource_type", "")).split(".")[-1].lower(),
        status=str(r.status).split(".")[-1].lower(),
        failures=getattr(r, "failures", None),
        message=_one_line(r.message) if r.message else None,
        seconds=float(getattr(r, "execution_time", 0.0) or 0.0),
    )


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text[:400]
