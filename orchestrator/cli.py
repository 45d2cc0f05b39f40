"""`devdiag`: run DevDiag's analytics and operations from a terminal or cron."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devdiag_db import config, embedded
from devdiag_db.db import DatabaseUnavailable, connect, scalar
from orchestrator.health import START_DB, run_health

if TYPE_CHECKING:
    from orchestrator.dbt import NodeResult
    from orchestrator.health import HealthCheck


def database_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an unreachable or refusing database into the one-line error `db.explain` wrote."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabaseUnavailable as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def status_line(message: str, *, quiet: bool = False) -> None:
    """Progress for people, on stderr so that stdout stays clean for --json and pipes."""
    if not quiet:
        click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=config.distribution_name(), prog_name="devdiag")
def main() -> None:
    """DevDiag operations: database, dbt build, health checks and demo data.

    The database comes from DEVDIAG_PG_DSN, or DEVDIAG_PG_HOST/USER/PASS/DB, or else the embedded
    PostgreSQL kept in DEVDIAG_HOME (default ~/.local/share/devdiag).
    """


# --- db -------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Start, stop and locate the embedded PostgreSQL."""


def _require_embedded(action: str) -> None:
    if config.external_settings() is not None:
        raise click.ClickException(
            f"`devdiag db {action}` manages the embedded PostgreSQL, but DEVDIAG_PG_* points elsewhere: "
            "unset DEVDIAG_PG_DSN/HOST/USER/PASS/DB to use it"
        )


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (initialising it on first use)."""
    _require_embedded("start")
    state = embedded.start()
    click.echo(f"embedded PostgreSQL running (pid {state.pid}, port {state.port}, data {embedded.data_dir()})")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    _require_embedded("stop")
    click.echo("stopped" if embedded.stop() else "not running")


@db.command("upgrade")
@click.option(
    "--old-bindir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="bin directory of the old PostgreSQL (default: the pgserver wheel in this environment, or a system one).",
)
def db_upgrade(old_bindir: Path | None) -> None:
    """Upgrade an embedded database of an older PostgreSQL (16, before DevDiag 0.6) to PostgreSQL 18.

    pg_upgrade copies it into a new data directory; the old one stays as pgdata.16 until you remove it.
    Then the server starts and the extensions `devdiag setup` creates are created.
    """
    from orchestrator.provision import create_extensions

    _require_embedded("upgrade")
    done = embedded.upgrade(old_bindir, progress=status_line)
    embedded.start()
    with connect(config.settings()) as conn:
        present, missing = create_extensions(conn)
    missing_stats = embedded.analyze_missing()
    click.echo(
        f"upgraded PostgreSQL {done.from_major} -> {embedded.MAJOR} in {done.seconds:.0f}s; running on port "
        f"{embedded.status().port}; extensions: {', '.join(present) or 'none'}; the {done.from_major} copy is "
        f"{done.old_copy}: remove it once you are satisfied"
    )
    for line in (*missing, *missing_stats):
        click.echo(line, err=True)


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def db_status(as_json: bool) -> None:
    """Say whether the database is up; exit 1 when it is not."""
    external = config.external_settings()
    if external is not None:
        try:
            with connect(external) as conn:
                version = scalar(conn, "show server_version")
            state = {"running": True, "embedded": False, "where": external.describe(), "version": version}
        except DatabaseUnavailable as error:
            state = {"running": False, "embedded": False, "where": external.describe(), "error": str(error)}
    else:
        current = embedded.status()
        state = {
            "running": current.running,
            "embedded": True,
            "pid": current.pid,
            "port": current.port,
            "data_dir": str(embedded.data_dir()),
            "major": embedded.data_major(),  # of the data directory; another than embedded.MAJOR needs an upgrade
        }
    if as_json:
        emit_json(state)
    elif state["running"]:
        click.echo("running: " + ", ".join(f"{k} {v}" for k, v in state.items() if k not in {"running"}))
    else:
        click.echo("not running" + (f": {state['error']}" if "error" in state else ": run `devdiag db start`"))
    sys.exit(0 if state["running"] else 1)


@db.command("url")
@click.option(
    "--role",
    type=click.Choice(["owner", "devdiag_writer", "grafana"]),
    default="owner",
    show_default=True,
    help="Whose login: the owner's socket login, or a password login over TCP.",
)
@click.option("--db", "dbname", default=None, help="Another database on the same server, e.g. postgres.")
def db_url(role: str, dbname: str | None) -> None:
    """Print a connection URL that psql accepts: psql "$(devdiag db url)".

    The URL of a password role carries its password: it is meant for a pipe, not for a log.
    """
    if role == "owner":
        where = config.settings()
    else:
        from orchestrator.secrets import role_password

        external = config.external_settings()
        if external is not None:
            where = config.ConnectionSettings({**external.params, "user": role, "password": role_password(role)})
        else:
            embedded.start()
            where = embedded.tcp_settings(role, role_password(role))
    if dbname:
        where = config.ConnectionSettings({**where.params, "dbname": dbname}, embedded=where.embedded)
    click.echo(where.url(with_password=True))


@db.command("psql", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_psql(psql_args: tuple[str, ...]) -> None:
    """Open psql (the one bundled with the embedded server) on the database, as the owner.

    Extra arguments go to psql: devdiag db psql -c "select count(*) from devdiag.diag_run".
    """
    import os
    import shutil

    where = config.settings()
    program = embedded.pg_bin("psql")
    if where.embedded is False and not os.path.exists(program):
        program = shutil.which("psql") or program
    env = {**os.environ}
    if where.params.get("password"):
        env["PGPASSWORD"] = where.params["password"]  # never on the command line
    url = config.ConnectionSettings({k: v for k, v in where.params.items() if k != "password"}).url()
    os.execve(program, [program, url, *psql_args], env)


# --- setup and build ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--citus",
    is_flag=True,
    help="Create the citus extension first (a Citus coordinator is detected without it): diag_run is "
    "distributed by tenant_id, the catalog becomes a reference table.",
)
@database_errors
def setup(citus: bool) -> None:
    """Create or update the schema, raw table, indexes, roles and fix catalog. Safe to run again.

    On a Citus coordinator also the distributed layout (docs/scaling.md)."""
    from orchestrator.provision import setup as run_setup
    from orchestrator.secrets import secrets_file

    where = config.settings()
    report = run_setup(where, citus=citus)
    click.echo(f"schema devdiag ready on {where.describe()}")
    click.echo(f"roles {', '.join(report.roles)}: passwords set (kept in {secrets_file()}, mode 0600)")
    click.echo(f"fix catalog: {report.catalog_fixes} fixes")
    if report.extensions:
        click.echo(f"extensions: {', '.join(report.extensions)}")
    for line in report.missing:
        click.echo(f"extension not created, {line}", err=True)
    if report.citus:
        click.echo(report.citus.describe())


@main.command()
@click.option("--select", "-s", "selector", default=None, help="dbt selector, e.g. 'v_ttr_days+'.")
@click.option(
    "--full-refresh",
    is_flag=True,
    help="Rebuild every incremental model from the whole raw table and run the tests that read every raw row "
    "(nightly from cron; after deleting raw rows by hand).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one object per dbt node.")
@database_errors
def build(selector: str | None, full_refresh: bool, as_json: bool) -> None:
    """Run `dbt build`: the models and their tests (`devdiag health` runs the health checks).

    By default incremental: each model recomputes only what the raw rows written since its last
    build touch. Exit 1 when any model or test errors or fails.
    """
    from orchestrator import dbt

    args = ["build"]
    if full_refresh:
        args += ["--full-refresh"] + ([] if selector else ["--selector", "full_build"])
    args += ["--select", selector] if selector else []
    results = dbt.build(config.settings(), args)
    failed = [r for r in results if r.status in {"error", "fail"}]
    if as_json:
        emit_json([r.__dict__ for r in results])
    else:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        for r in failed:
            click.echo(f"{r.status.upper():6} {r.name}: {r.message or ''}", err=True)
        total = sum(r.seconds for r in results)
        click.echo(f"dbt build: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))} ({total:.1f}s in nodes)")
    sys.exit(1 if failed else 0)


# --- health ---------------------------------------------------------------------------------------


def _print_health(checks: list) -> None:
    width = max(len(c.name) for c in checks)
    limit = max(len("threshold"), *(len(c.threshold) for c in checks))
    click.echo(f"{'check':{width}}  {'value':>10}  {'threshold':<{limit}}  status")
    for c in checks:
        value = "-" if c.value is None else f"{c.value:,.2f}".rstrip("0").rstrip(".")
        line = f"{c.name:{width}}  {value:>10}  {c.threshold:<{limit}}  {c.status}"  # the word --json says
        if c.status != "pass" and c.message:
            line += f"  ({c.message})"
        click.echo(line)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON objects.")
@START_DB
@database_errors
def health(as_json: bool, start_db: bool) -> None:
    """The runbook's morning health check, run as dbt tests.

    One row per check: name, measured value, threshold, status (pass, warn or fail). Exit 1 when a
    critical check fails, 0 otherwise (warnings are printed but do not fail the run). A stopped
    embedded database is reported (exit 1), not started, unless --start-db.
    """
    checks = run_health(config.settings(start=start_db))
    if as_json:
        emit_json([{"name": c.name, "value": c.value, "threshold": c.threshold, "status": c.status} for c in checks])
    else:
        _print_health(checks)
    critical = [c for c in checks if c.status == "fail" and c.severity == "error"]
    sys.exit(1 if critical else 0)


# --- demo -----------------------------------------------------------------------------------------


@main.command()
@click.option("--runs", default=20_000, show_default=True, type=click.IntRange(min=100), help="Runs to generate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the generator (same seed, same data).")
@database_errors
def demo(runs: int, seed: int) -> None:
    """Everything on one machine: embedded database, setup, demo history, dbt build, health checks.

    Safe to run again: while the demo history is fresh nothing is added; once it is over an hour
    old it is replaced by one that ends now. Other tenants' runs on the embedded database (an MCP
    server's, e.g. tenant `default`) are kept; a DEVDIAG_PG_* database that holds any is refused.
    """
    config.project_dir()  # no dbt project: fail before a database is started
    started_here = config.external_settings() is None and not embedded.status().running
    try:
        where = config.settings()
        checks, broken = _demo(where, runs, seed)
    except (Exception, KeyboardInterrupt):
        # A failed demo leaves no server of its own running behind it; one that ran before stays up.
        if started_here:
            with contextlib.suppress(click.ClickException):
                if embedded.stop():
                    status_line("stopped the embedded PostgreSQL this demo had started")
        raise
    stop = (
        "  devdiag db stop              # stop the embedded PostgreSQL"
        if where.embedded
        else "  (DEVDIAG_PG_* names the database: devdiag leaves it running)"
    )
    click.echo(
        "\nNext:\n"
        '  devdiag db psql -c "select * from devdiag.v_problem_counts order by day desc limit 10"\n'
        "  devdiag health --json        # the checks, for scripts\n"
        "  devdiag build                # rebuild the views after new runs\n" + stop
    )
    # Failing checks leave the database up: the Next lines are how to look into them.
    if broken or any(c.status == "fail" and c.severity == "error" for c in checks):
        sys.exit(1)


def _demo(where: config.ConnectionSettings, runs: int, seed: int) -> tuple[list[HealthCheck], list[NodeResult]]:
    """Setup, demo history, dbt build and health checks; returns the checks and the failing dbt nodes."""
    from orchestrator import dbt
    from orchestrator.demo_data import describe_tenants, refresh_demo
    from orchestrator.health import run_health
    from orchestrator.provision import setup as run_setup

    status_line(f"database: {where.describe()}")
    run_setup(where)
    status_line("setup: schema, indexes, roles and fix catalog ready")
    refreshed = refresh_demo(where, runs=runs, seed=seed)
    if refreshed.report is None:
        status_line("demo data: already loaded and fresh, nothing added")
    else:
        replaced = f", replacing {refreshed.removed:,} stale rows" if refreshed.removed else ""
        status_line(
            f"demo data: {refreshed.report.inserted:,} rows of 185 days ending now{replaced} "
            f"({refreshed.report.seconds:.1f}s)"
        )
    if refreshed.others:
        status_line(
            f"kept the runs of other tenants beside the demo's: {describe_tenants(refreshed.others)} "
            "(yours, e.g. from an MCP server on this database; the demo never touches them)"
        )
    # Incremental models see writes, not deletes: replaced rows call for a full refresh.
    full_refresh = ["--full-refresh", "--selector", "full_build"] if refreshed.removed else []
    results = dbt.build(where, ["build", *full_refresh])
    broken = [r for r in results if r.status in {"error", "fail"}]
    status_line(f"dbt build: {len(results)} nodes, {len(broken)} failing")
    for r in broken:
        status_line(f"  {r.status.upper()} {r.name}: {r.message or ''}")
    checks = run_health(where)
    _print_health(checks)
    return checks, broken


# --- operations (each command lives beside its logic) ---------------------------------------------

from orchestrator.alerts import alerts  # noqa: E402
from orchestrator.backup import backup  # noqa: E402
from orchestrator.catalog import catalog  # noqa: E402
from orchestrator.cluster import cluster  # noqa: E402
from orchestrator.cron import cron  # noqa: E402
from orchestrator.drill import drill  # noqa: E402
from orchestrator.grafana.cli import grafana  # noqa: E402
from orchestrator.ingest import flush, load  # noqa: E402
from orchestrator.restore import restore  # noqa: E402
from orchestrator.retention import retention  # noqa: E402
from orchestrator.reviews import capacity, perf, review  # noqa: E402
from orchestrator.serve import serve  # noqa: E402
from orchestrator.tokens import role, token  # noqa: E402

for command in (
    *(retention, backup, restore, drill, alerts, cron, review, capacity, perf, grafana, flush, load),
    *(serve, token, role, cluster, catalog),
):
    main.add_command(command)
