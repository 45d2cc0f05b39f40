"""`devdiag drill`: the runbook's quarterly disaster-recovery drill, on a scratch database.

Back up the live database (read-only for it), drop the scratch database (the disaster), restore the
backup into it, verify, and report the time to restore (target < 30 minutes) and the rows lost
(target 0). The live database is never written: the restore goes to ``<db>_drill``, dropped again
at the end.

The backup is signed with the backup key and its signature checked by the restore, which runs the
backup's SQL as the restricted role ``devdiag_restore`` (see `orchestrator.restore`), as a real
restore would.

Rows lost are measured independently of the backup file: the source rows are counted in the very
snapshot pg_dump reads (``pg_export_snapshot`` + ``pg_dump --snapshot``), so writers that keep
writing during the drill do not blur the figure.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, advisory_lock, connect, scalar
from orchestrator.backup import run_backup
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES
from orchestrator.restore import RestoreReport, drop_database, run_restore

TARGET_TIME_TO_RESTORE_S = 30 * 60
TARGET_ROWS_LOST = 0
ADVISORY_LOCK_KEY = 0x6465_7644_4472_696C  # "devDDril": one drill per cluster at a time


@dataclass(frozen=True)
class DrillReport:
    source_database: str
    scratch_database: str
    backup_bytes: int
    backup_s: float
    time_to_restore_s: float
    rows_source: dict[str, int]
    rows_restored: dict[str, int]
    restore: RestoreReport

    @property
    def rows_lost(self) -> int:
        return sum(max(0, n - self.rows_restored.get(t, 0)) for t, n in self.rows_source.items())

    @property
    def problems(self) -> list[str]:
        found = list(self.restore.problems)
        if self.rows_lost > TARGET_ROWS_LOST:
            found.append(f"{self.rows_lost:,} rows lost")
        if self.time_to_restore_s >= TARGET_TIME_TO_RESTORE_S:
            found.append(f"time to restore {self.time_to_restore_s:.0f}s is over the 30-minute target")
        return found

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "time_to_restore_s": round(self.time_to_restore_s, 3),
            "rows_lost": self.rows_lost,
            "passed": self.passed,
            "problems": self.problems,
            "targets": {"time_to_restore_s": TARGET_TIME_TO_RESTORE_S, "rows_lost": TARGET_ROWS_LOST},
            "source_database": self.source_database,
            "scratch_database": self.scratch_database,
            "backup_bytes": self.backup_bytes,
            "backup_s": round(self.backup_s, 3),
            "rows_source": self.rows_source,
            "rows_restored": self.rows_restored,
            "views_present": self.restore.views_present,
            "indexes_present": self.restore.indexes_present,
            "health": self.restore.health,
        }


def scratch_name(settings: ConnectionSettings) -> str:
    return f"{settings.dbname}_drill"


def run_drill(
    settings: ConnectionSettings, *, quiet: bool = False, keep: bool = False, key_file: Path | None = None
) -> DrillReport:
    """Backup → drop → restore → verify on a scratch database. Raises ClickException on failure."""
    # The steps, for a person at a terminal; nothing under --json, cron or a pipe (as Progress does).
    say = (lambda m: click.echo(m, err=True)) if not quiet and sys.stderr.isatty() else (lambda _m: None)
    scratch = scratch_name(settings)
    workdir = Path(tempfile.mkdtemp(prefix="devdiag-drill-"))
    try:
        with connect(settings) as lock_conn, advisory_lock(lock_conn, ADVISORY_LOCK_KEY) as taken:
            if not taken:
                raise click.ClickException("another `devdiag drill` is running on this database: wait for it to finish")
            say(f"drill: 1/4 backup of {settings.dbname}")
            started = time.monotonic()
            rows_source, backup = _snapshot_backup(settings, workdir, quiet, key_file)
            backup_s = time.monotonic() - started
            say(f"drill: 2/4 drop database {scratch} (the simulated disaster)")
            drop_database(settings, scratch)
            say(f"drill: 3/4 restore into {scratch}, then 4/4 verify")
            started = time.monotonic()
            restored = run_restore(settings, backup.path, database=scratch, quiet=quiet, key_file=key_file)
            time_to_restore = time.monotonic() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not keep:
            drop_database(settings, scratch)
    rows_restored = {t: r["restored"] for t, r in restored.rows.items()}
    return DrillReport(
        settings.dbname, scratch, backup.bytes, backup_s, time_to_restore, rows_source, rows_restored, restored
    )


def _snapshot_backup(settings: ConnectionSettings, workdir: Path, quiet: bool, key_file: Path | None):
    """Count every table and run pg_dump in one exported snapshot: the counts are exactly what the dump holds."""
    with connect(settings, autocommit=False) as conn:
        conn.execute("set transaction isolation level repeatable read, read only")
        snapshot = scalar(conn, "select pg_export_snapshot()")
        rows = _count_tables(conn)
        backup = run_backup(settings, workdir, keep_days=None, quiet=quiet, snapshot=snapshot, key_file=key_file)
        conn.rollback()
    return rows, backup


def _count_tables(conn: psycopg.Connection) -> dict[str, int]:
    tables = conn.execute(
        "select n.nspname, c.relname, format('%I.%I', n.nspname, c.relname) from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema' "
        "and not c.relispartition order by 3"
    ).fetchall()
    return {
        name: scalar(conn, sql.SQL("select count(*) from {}").format(sql.Identifier(schema, table)))
        for schema, table, name in tables
    }


def _print_report(report: DrillReport) -> None:
    raw = "devdiag.diag_run"
    click.echo(f"DR drill on {report.scratch_database} (source {report.source_database}, never written)")
    click.echo(f"  backup:           {report.backup_bytes / 1e6:.1f} MB in {report.backup_s:.1f}s")
    click.echo(f"  time to restore:  {report.time_to_restore_s:.1f}s (target < {TARGET_TIME_TO_RESTORE_S // 60} min)")
    click.echo(
        f"  rows lost:        {report.rows_lost:,} (target 0; {raw}: {report.rows_source.get(raw, 0):,} in the "
        f"snapshot, {report.rows_restored.get(raw, 0):,} restored)"
    )
    views, indexes = report.restore.views_present, report.restore.indexes_present
    click.echo(f"  views {views}/{len(PUBLIC_VIEWS)}, indexes {indexes}/{len(RAW_INDEXES)}")
    for check in report.restore.health:
        click.echo(f"  health {check['name']}: {check['status']}")
    click.echo("PASSED" if report.passed else "FAILED: " + "; ".join(report.problems))


@click.command("drill")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (time_to_restore_s, rows_lost, ...).")
@click.option("--keep", is_flag=True, help="Keep the scratch database afterwards for inspection.")
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Sign and check the drill's backup with this key (default: $DEVDIAG_BACKUP_KEY, else DEVDIAG_HOME's).",
)
def drill(as_json: bool, keep: bool, key_file: Path | None) -> None:
    """The quarterly disaster-recovery drill: backup, drop, restore, verify, on a scratch database.

    Reports the time to restore (target < 30 minutes) and the rows lost (target 0); exit 1 when a
    target is missed or the verification finds a difference. The live database is only read.
    """
    from devdiag_db.config import settings

    try:
        report = run_drill(settings(), quiet=as_json, keep=keep, key_file=key_file)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        _print_report(report)
    sys.exit(0 if report.passed else 1)
