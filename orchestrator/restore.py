"""`devdiag restore FILE`: a backup into a new or empty database, all or nothing, then verified.

The file is read in full first (gzip CRC, both trailers, row counts against its manifest), so a
corrupt or truncated backup is refused before anything is touched. The restore itself is one
transaction (``psql -1 -v ON_ERROR_STOP=1``): psql only sees the end of its input once the stream is
known good, and is killed otherwise, so a failure leaves nothing half-restored (a database this
command created is dropped again). A database that holds rows is refused unless ``--force``, which
replaces the backup's schemas inside that same transaction: until the commit, readers see the old data.

Verification afterwards: every table's row count equals the backup's, every table, view, index and
function in the backup exists, the public views and raw indexes of the contract are present,
and the health checks run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg
from psycopg import sql

from orchestrator.backup import (
    CHUNK,
    BackupInvalid,
    ClientTool,
    DumpContents,
    child_conninfo,
    child_env,
    client_tool,
    explain_tool_error,
    server_major,
    verify_backup,
)
from orchestrator.config import SCHEMA, ConnectionSettings
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES
from orchestrator.db import DatabaseUnavailable, connect
from orchestrator.progress import Progress

MAINTENANCE_DATABASES = ("postgres", "template1")
# The health checks that judge the restore itself; the others judge the data (a week-old backup is
# stale by design, and its fix confidence is what it was), so they are reported, not held against it.
STRUCTURAL_CHECKS = {"views_present", "indexes_present"}


@dataclass
class RestoreReport:
    file: Path
    database: str
    created: bool
    replaced_schemas: list[str]
    seconds: float = 0.0
    restore_seconds: float = 0.0
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    views_present: int = 0
    indexes_present: int = 0
    health: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_lost(self) -> int:
        return sum(max(0, r["expected"] - r["restored"]) for r in self.rows.values())

    @property
    def problems(self) -> list[str]:
        """Everything that makes this restore untrustworthy; empty when it is good."""
        found = [
            f"{t}: {r['restored']:,} rows, backup has {r['expected']:,}"
            for t, r in self.rows.items()
            if r["restored"] != r["expected"]
        ]
        found += [f"missing {name}" for name in self.missing]
        found += [
            f"health check {h['name']} failed"
            for h in self.health
            if h["status"] == "fail" and h["name"] in STRUCTURAL_CHECKS
        ]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "file": str(self.file),
            "database": self.database,
            "created": self.created,
            "replaced_schemas": self.replaced_schemas,
            "seconds": round(self.seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3),
            "rows": self.rows,
            "rows_lost": self.rows_lost,
            "views_present": self.views_present,
            "indexes_present": self.indexes_present,
            "missing": self.missing,
            "health": self.health,
            "warnings": self.warnings,
            "problems": self.problems,
            "ok": self.ok,
        }


def target_settings(settings: ConnectionSettings, database: str) -> ConnectionSettings:
    return ConnectionSettings({**settings.params, "dbname": database}, embedded=settings.embedded)


def run_restore(
    settings: ConnectionSettings,
    path: Path,
    *,
    database: str | None = None,
    force: bool = False,
    quiet: bool = False,
    health: bool = True,
) -> RestoreReport:
    """Restore ``path`` into ``database`` (default: the configured one) and verify it. Raises ClickException."""
    started = time.monotonic()
    with Progress("reading backup", quiet=quiet, unit="lines") as progress:
        contents = _read(path, progress)
    name = database or settings.dbname
    target = target_settings(settings, name)
    with _maintenance(settings) as admin:
        psql = client_tool("psql", settings, server_major(admin), newest=True)
        created = _create_if_missing(admin, name)
    try:
        replaced = _schemas_to_replace(target, contents, force)
        report = RestoreReport(path, name, created, replaced)
        restore_started = time.monotonic()
        report.warnings = _stream(psql, target, path, contents, replaced, quiet)
    except BaseException:
        if created:
            drop_database(settings, name)
        raise
    with connect(target) as conn:
        conn.execute("analyze")  # a plain dump carries no planner statistics
    report.restore_seconds = time.monotonic() - restore_started
    _verify(target, contents, report, health=health)
    report.seconds = time.monotonic() - started
    return report


def _read(path: Path, progress: Progress) -> DumpContents:
    try:
        return verify_backup(path, progress=progress)
    except BackupInvalid as error:
        raise click.ClickException(f"{error}: nothing was restored; use another backup file") from None


@contextlib.contextmanager
def _maintenance(settings: ConnectionSettings):
    """A connection to the cluster's maintenance database, to look up and create databases."""
    first_error: DatabaseUnavailable | None = None
    for dbname in MAINTENANCE_DATABASES:
        try:
            conn = connect(target_settings(settings, dbname))
        except DatabaseUnavailable as error:
            first_error = first_error or error
            continue
        with conn:
            yield conn
        return
    assert first_error is not None
    raise first_error


def _create_if_missing(admin: psycopg.Connection, name: str) -> bool:
    if admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
        return False
    try:
        # template0: a clean database, whatever was added to template1 on this cluster
        admin.execute(sql.SQL("create database {} template template0").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        raise click.ClickException(
            f"not allowed to create database {name}: create it as a privileged user (createdb {name}), then run again"
        ) from None
    return True


def drop_database(settings: ConnectionSettings, name: str) -> None:
    """Drop a database, ending its sessions (best effort): a failed restore's, or the drill's scratch."""
    with contextlib.suppress(DatabaseUnavailable, psycopg.Error), _maintenance(settings) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _schemas_to_replace(target: ConnectionSettings, contents: DumpContents, force: bool) -> list[str]:
    """Schemas of the backup that already exist in the target; refuse when the target holds rows."""
    with connect(target) as conn:
        filled = _tables_with_rows(conn)
        if filled and not force:
            shown = ", ".join(filled[:3]) + (f" and {len(filled) - 3} more" if len(filled) > 3 else "")
            schemas = ", ".join(contents.objects["schemas"]) or "its contents"
            raise click.ClickException(
                f"database {target.dbname} holds data ({shown}): restore into another database with --db NAME, "
                f"or add --force to replace schema {schemas} in one transaction"
            )
        existing = {
            r[0] for r in conn.execute("select quote_ident(nspname) from pg_namespace where nspname <> 'public'")
        }
    return [s for s in contents.objects["schemas"] if s in existing]


def _tables_with_rows(conn: psycopg.Connection) -> list[str]:
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p', 'm') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema' "
        "order by 1, 2"
    ).fetchall()
    filled = []
    for schema, table in tables:
        if schema == SCHEMA and table != "diag_run":
            continue  # the fix catalog and dbt's tables: `devdiag setup` and `devdiag build` remake them
        query = sql.SQL("select exists (select from {})").format(sql.Identifier(schema, table))
        if conn.execute(query).fetchone()[0]:
            filled.append(f"{schema}.{table}")
    return filled


def _stream(
    psql: ClientTool,
    target: ConnectionSettings,
    path: Path,
    contents: DumpContents,
    replaced: list[str],
    quiet: bool,
) -> list[str]:
    """Feed the backup to psql in one transaction; returns the warnings it printed. Raises ClickException."""
    # -1 wraps only -f/-c input in BEGIN/COMMIT, hence `-f -` for stdin.
    args = [
        psql.path,
        "-X",
        "-q",
        "-1",
        "-v",
        "ON_ERROR_STOP=1",
        "--no-password",
        "-f",
        "-",
        "-d",
        child_conninfo(target),
    ]
    prologue = "".join(f"DROP SCHEMA IF EXISTS {schema} CASCADE;\n" for schema in replaced)
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=child_env(target)
        ) as proc,
    ):
        assert proc.stdin is not None
        try:
            with Progress("restore", total=contents.lines, quiet=quiet, unit="lines") as progress:
                proc.stdin.write(b"SET client_min_messages = warning;\n" + prologue.encode())
                _copy_into(path, proc.stdin, progress)
            proc.stdin.close()  # only now does psql see the end of its input, and commit
        except BrokenPipeError:
            pass  # psql stopped on an error: its message follows
        except BaseException:
            proc.kill()  # psql never saw the end of its input: the transaction rolls back
            raise
        returncode = proc.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    if returncode != 0:
        raise click.ClickException(
            explain_tool_error("psql", stderr, target) + f"; nothing was restored into {target.dbname}"
        )
    return [line.split("WARNING:", 1)[1].strip() for line in stderr.splitlines() if "WARNING:" in line]


def _copy_into(path: Path, sink, progress: Progress) -> None:
    """Decompress ``path`` into ``sink``; the gzip CRC is checked again at the end."""
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(CHUNK):
                sink.write(block)
                progress.advance(block.count(b"\n"))
    except BrokenPipeError:
        raise
    except (EOFError, OSError, zlib.error) as error:
        raise click.ClickException(f"{path} changed or broke while restoring ({error}); nothing was restored") from None


def _verify(target: ConnectionSettings, contents: DumpContents, report: RestoreReport, *, health: bool) -> None:
    with connect(target) as conn:
        for table, expected in contents.rows.items():
            report.rows[table] = {"expected": expected, "restored": _count(conn, table)}
        for kind in ("tables", "views", "indexes"):
            for name in contents.objects[kind]:
                if conn.execute("select to_regclass(%s)", (name,)).fetchone()[0] is None:
                    report.missing.append(name)
        for name in contents.objects["functions"]:
            found = conn.execute(
                "select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where format('%%I.%%I', n.nspname, p.proname) = %s)",
                (name,),
            ).fetchone()[0]
            if not found:
                report.missing.append(name)
        report.views_present, report.indexes_present = _contract(conn)
    if report.views_present < len(PUBLIC_VIEWS):
        report.missing.append(f"{len(PUBLIC_VIEWS) - report.views_present} of the {len(PUBLIC_VIEWS)} public views")
    if report.indexes_present < len(RAW_INDEXES):
        report.missing.append(f"{len(RAW_INDEXES) - report.indexes_present} of the {len(RAW_INDEXES)} raw indexes")
    if health:
        report.health, warning = _health(target)
        report.warnings += [warning] if warning else []


def _count(conn: psycopg.Connection, table: str) -> int:
    found = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if found is None:
        return 0
    return conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(*found))).fetchone()[0]


def _contract(conn: psycopg.Connection) -> tuple[int, int]:
    views = conn.execute(
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'devdiag' and c.relkind in ('v', 'm') and c.relname = any(%s)",
        (list(PUBLIC_VIEWS),),
    ).fetchone()[0]
    indexes = conn.execute(
        "select count(*) from pg_indexes where schemaname = 'devdiag' and tablename = 'diag_run' "
        "and indexname = any(%s)",
        (list(RAW_INDEXES),),
    ).fetchone()[0]
    return views, indexes


def _health(target: ConnectionSettings) -> tuple[list[dict[str, object]], str | None]:
    """The health checks on the restored database, as plain dicts; a warning when they cannot run."""
    from orchestrator.health import run_health

    try:
        checks = run_health(target)
    except click.ClickException as error:
        return [], f"health checks did not run ({error.message}); row counts, views and indexes were verified"
    return [
        {"name": c.name, "value": c.value, "threshold": c.threshold, "status": c.status, "message": c.message}
        for c in checks
    ], None


# --- command ----------------------------------------------------------------------------------------


def _print_report(report: RestoreReport) -> None:
    raw = report.rows.get("devdiag.diag_run")
    what = f"{raw['restored']:,} raw rows" if raw else f"{len(report.rows)} tables"
    verb = "created and restored" if report.created else "restored"
    click.echo(f"{verb} {report.database} from {report.file}: {what} in {report.restore_seconds:.1f}s")
    if report.replaced_schemas:
        click.echo(f"replaced schema {', '.join(report.replaced_schemas)}")
    click.echo(
        f"verified: row counts {'match' if not report.rows_lost else 'DIFFER'}, "
        f"views {report.views_present}/{len(PUBLIC_VIEWS)}, indexes {report.indexes_present}/{len(RAW_INDEXES)}"
    )
    if report.health:
        counts = {s: sum(1 for h in report.health if h["status"] == s) for s in ("pass", "warn", "fail")}
        click.echo("health checks: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for check in report.health:
        if check["status"] != "pass":
            note = "" if check["name"] in STRUCTURAL_CHECKS else " (about the data's age or content, not the restore)"
            click.echo(f"health {check['name']}: {check['status']}{note}")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


@click.command("restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--db", "database", default=None, help="Database to restore into (default: the configured one).")
@click.option("--force", is_flag=True, help="Replace the contents of a database that already holds data.")
@click.option(
    "--health/--no-health",
    default=True,
    show_default=True,
    help="Run the dbt health checks on the restored database (row counts, views and indexes are always verified).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def restore(file: Path, database: str | None, force: bool, health: bool, as_json: bool) -> None:
    """Restore a `devdiag backup` file into a new or empty database, in one transaction, and verify it.

    Creates the database when it does not exist. Refuses a database that holds data unless --force.
    Exit 1 when the restore fails or its verification finds a difference.
    """
    from orchestrator.config import settings

    try:
        report = run_restore(settings(), file, database=database, force=force, quiet=as_json, health=health)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        _print_report(report)
    if not report.ok:
        raise click.ClickException(f"restored {report.database}, but verification failed: {'; '.join(report.problems)}")
