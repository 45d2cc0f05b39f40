"""`devdiag retention`: delete raw runs older than N days, keeping each problem's first and last sighting.

The runbook promises that retention "preserves first/last occurrence of each problem"; here that is
per tenant × problem, ordered by ``(ts, id)``. Clean runs (``problem_code`` null) are not problems
and are not kept.

Deletion walks the expired rows in ``(ts, id)`` order through ``ix_diag_run_ts``, a batch at a time,
each batch its own short transaction: a concurrent writer only inserts new rows, which a delete never
locks, and a batch is short enough that an update of an expiring row waits a fraction of a second.
Whether a row is a first or last sighting is decided inside each DELETE (two probes of
``ix_diag_run_tenant_problem_ts``), not from a list made earlier, so a late-replayed older row is
honoured too. Every batch commits: an interrupted run leaves a consistent table and a second run
finishes the job (and deletes nothing once done).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime

import click
import psycopg

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, advisory_lock, connect, one_row, scalar
from orchestrator.progress import Progress

DEFAULT_DAYS = 180
BATCH_ROWS = 10_000
ADVISORY_LOCK_KEY = 0x6465_7644_5265_7400  # "devDRet\0": one retention per database at a time

# A problem row may go when an older and a newer sighting of the same tenant × problem exist.
_DELETABLE = """
    (r.problem_code is null
     or (exists (select from devdiag.diag_run o
                 where o.tenant_id = r.tenant_id and o.problem_code = r.problem_code
                   and o.ts <= r.ts and (o.ts < r.ts or o.id < r.id))
         and exists (select from devdiag.diag_run n
                     where n.tenant_id = r.tenant_id and n.problem_code = r.problem_code
                       and n.ts >= r.ts and (n.ts > r.ts or n.id > r.id))))
"""

# One batch: the next expired rows after the last key, then delete those that may go.
_BATCH_SQL = f"""
with batch as (
    select id, ts from devdiag.diag_run
    where ts < %(cutoff)s and ts >= %(after_ts)s::timestamptz and (ts > %(after_ts)s::timestamptz or id > %(after_id)s)
    order by ts, id
    limit %(limit)s
), gone as (
    delete from devdiag.diag_run r using batch b
    where r.id = b.id and {_DELETABLE}
    returning 1
)
select (select count(*) from batch),
       (select count(*) from gone),
       (select ts from batch order by ts desc, id desc limit 1),
       (select id from batch order by ts desc, id desc limit 1)
"""

_COUNT_SQL = f"""
select count(*) filter (where deletable), count(*) filter (where not deletable)
from (select {_DELETABLE} as deletable from devdiag.diag_run r where r.ts < %(cutoff)s) expired
"""


@dataclass(frozen=True)
class RetentionReport:
    days: int
    cutoff: datetime
    dry_run: bool
    rows_deleted: int  # in a dry run: the rows that would go
    rows_kept_first_last: int  # expired rows kept as a tenant × problem's first or last sighting
    batches: int
    vacuumed: bool
    seconds: float
    memory_deleted: int = 0  # team-memory signatures last seen before the cutoff (their notes with them)

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "cutoff": self.cutoff.isoformat(), "seconds": round(self.seconds, 3)}


def run_retention(
    settings: ConnectionSettings,
    *,
    days: int = DEFAULT_DAYS,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    quiet: bool = False,
) -> RetentionReport:
    """Apply (or, with ``dry_run``, count) the retention policy. Raises DatabaseUnavailable or ClickException."""
    started = time.monotonic()
    with connect(settings) as conn:
        _require_raw_table(conn)
        with advisory_lock(conn, ADVISORY_LOCK_KEY) as taken:
            if not taken:
                raise click.ClickException(
                    "another `devdiag retention` is running on this database: wait for it to finish"
                )
            cutoff = scalar(conn, "select now() - make_interval(days => %s)", (days,))
            if dry_run:
                deleted, kept = one_row(conn, _COUNT_SQL, {"cutoff": cutoff})
                return RetentionReport(days, cutoff, True, deleted, kept, 0, False, time.monotonic() - started)
            expired = scalar(conn, "select count(*) from devdiag.diag_run where ts < %s", (cutoff,))
            with Progress("retention", total=expired, quiet=quiet) as progress:
                deleted, kept, batches = _delete_in_batches(conn, cutoff, batch_rows, progress)
                # The team memory keeps no error longer than its runs: a signature not seen since the cutoff goes.
                forgotten = conn.execute("delete from devdiag.error_memory where last_seen < %s", (cutoff,)).rowcount
                progress.step("vacuum analyze")
                # Outside any transaction (autocommit); takes no lock that blocks inserts or updates.
                conn.execute("vacuum analyze devdiag.diag_run")
    return RetentionReport(days, cutoff, False, deleted, kept, batches, True, time.monotonic() - started, forgotten)


def _delete_in_batches(
    conn: psycopg.Connection, cutoff: datetime, batch_rows: int, progress: Progress
) -> tuple[int, int, int]:
    after_ts: datetime | str = "-infinity"
    after_id = uuid.UUID(int=0)
    deleted = kept = batches = 0
    while True:
        with conn.transaction():  # one short transaction per batch: an interruption keeps what committed
            seen, gone, last_ts, last_id = one_row(
                conn, _BATCH_SQL, {"cutoff": cutoff, "after_ts": after_ts, "after_id": after_id, "limit": batch_rows}
            )
        if not seen:
            return deleted, kept, batches
        batches += 1
        deleted += gone
        kept += seen - gone
        after_ts, after_id = last_ts, last_id
        progress.advance(seen, note=f"{deleted:,} deleted, {kept:,} kept")


def _require_raw_table(conn: psycopg.Connection) -> None:
    if scalar(conn, "select to_regclass('devdiag.diag_run')") is None:
        raise click.ClickException("devdiag.diag_run does not exist in this database: run `devdiag setup` first")


def _print_report(report: RetentionReport) -> None:
    cutoff = report.cutoff.strftime("%Y-%m-%d %H:%M UTC")
    if report.dry_run:
        click.echo(
            f"dry run: would delete {report.rows_deleted:,} rows older than {report.days} days (before {cutoff}); "
            f"would keep {report.rows_kept_first_last:,} as first/last occurrences"
        )
        return
    click.echo(f"DELETE {report.rows_deleted:,} rows older than {report.days} days (before {cutoff})")
    click.echo(f"kept {report.rows_kept_first_last:,} older rows as first/last occurrence of a tenant's problem")
    batches = f"{report.batches} batch" + ("es" if report.batches != 1 else "")
    click.echo(f"VACUUM ANALYZE done ({batches}, {report.seconds:.1f}s)")


@click.command("retention")
@click.option(
    "--days", default=DEFAULT_DAYS, show_default=True, type=click.IntRange(min=1), help="Keep this many days."
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted and kept; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def retention(days: int, dry_run: bool, as_json: bool) -> None:
    """Delete raw runs older than N days, keeping each tenant's first and last occurrence of each problem.

    Deletes in small batches (writers never wait), then runs VACUUM ANALYZE. Safe to run twice and
    safe to interrupt: every batch commits on its own.
    """
    import json

    from devdiag_db.config import settings

    try:
        report = run_retention(settings(), days=days, dry_run=dry_run, quiet=as_json)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    except psycopg.Error as error:
        raise click.ClickException(f"retention stopped: {_first_line(error)}; batches done so far are kept") from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        _print_report(report)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
