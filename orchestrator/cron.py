"""`devdiag cron`: the runbook's schedule as crontab lines, installed idempotently.

The jobs live between ``# BEGIN devdiag`` and ``# END devdiag`` in the user's crontab: ``--install``
writes that block (replacing an older one in place, changing nothing when it is already current) and
``--uninstall`` removes exactly it. Other lines are left as they are.

Each line carries the absolute path of ``devdiag`` and the ``DEVDIAG_*`` variables of the operator's
environment, set on the command itself (a ``NAME=value`` crontab line would also apply to the user's
other jobs). A password never goes into the crontab: with ``DEVDIAG_PG_PASS`` or a DSN holding a
password the command refuses and points to ``~/.pgpass``.

Time zone: the daily health check must run at 08:00 UTC. ``CRON_TZ`` is not understood by Debian's
cron and would shift the user's other jobs too, so that line runs every quarter hour and goes on
only when the UTC clock reads 08:00-08:14: right in any cron time zone, daylight saving included.
The other jobs run in cron's local time, as the runbook states them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg.conninfo

from devdiag_db.config import devdiag_home

BEGIN = "# BEGIN devdiag"
END = "# END devdiag"
CRONTAB_ENV = "DEVDIAG_CRONTAB"
# Variables that are ours to pass on, never secrets (passwords are refused or left out).
_NOT_CARRIED = {CRONTAB_ENV, "DEVDIAG_PG_PASS", "DEVDIAG_DBT_OBSERVE_ONLY"}
_SECRET_HINTS = ("PASS", "SECRET", "TOKEN", "KEY")
_PGPASS_HINT = "put the password in ~/.pgpass (or a file named by PGPASSFILE)"
UTC_0800_GUARD = '[ "$(date -u +%H)" = 08 ] && [ "$(date -u +%M)" -lt 15 ] &&'


@dataclass(frozen=True)
class Job:
    name: str  # also the log file's name
    schedule: str
    args: tuple[str, ...]
    comment: str
    guard: str = ""  # shell condition run before the command


def jobs(backup_dir: Path) -> tuple[Job, ...]:
    """The runbook's schedule. Spool flush first, then the build that reads it, then the alerts."""
    return (
        Job("health", "*/15 * * * *", ("health",), "health check daily at 08:00 UTC", UTC_0800_GUARD),
        Job("backup", "0 2 * * 0", ("backup", "--dir", str(backup_dir)), "backup Sundays 02:00"),
        Job("retention", "0 3 * * 0", ("retention",), "retention Sundays 03:00"),
        Job("flush", "*/5 * * * *", ("flush",), "replay the MCP server's spool every 5 minutes"),
        Job("build", "1-59/5 * * * *", ("build",), "dbt build every 5 minutes (after the flush), incremental"),
        Job(
            "full-refresh",
            "33 3 * * *",
            ("build", "--full-refresh"),
            "dbt build --full-refresh nightly 03:33 (after Sunday's retention): what incremental builds cannot see",
        ),
        Job("alerts", "2-59/5 * * * *", ("alerts",), "the five alerts every 5 minutes (after the build), for the log"),
    )


# --- the block ------------------------------------------------------------------------------------


def devdiag_executable() -> str:
    """Absolute path of the `devdiag` script of this installation."""
    beside_python = Path(os.path.abspath(sys.executable)).parent / "devdiag"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("devdiag")
    if found:
        return os.path.abspath(found)
    raise click.ClickException("cannot find the devdiag executable: install the package (pip install -e .)")


def carried_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables every job gets: DEVDIAG_* (no secrets), DEVDIAG_HOME made explicit, PGPASSFILE.

    Raises ClickException when the environment holds a database password.
    """
    if environ.get("DEVDIAG_PG_PASS"):
        raise click.ClickException(
            f"DEVDIAG_PG_PASS is set: cron lines never carry a password; {_PGPASS_HINT} and unset DEVDIAG_PG_PASS"
        )
    dsn = environ.get("DEVDIAG_PG_DSN")
    if dsn and _dsn_has_password(dsn):
        raise click.ClickException(
            f"DEVDIAG_PG_DSN holds a password: cron lines never carry one; {_PGPASS_HINT} and remove it from the DSN"
        )
    carried = {
        k: v
        for k, v in sorted(environ.items())
        if k.startswith("DEVDIAG_") and k not in _NOT_CARRIED and not any(h in k for h in _SECRET_HINTS) and v
    }
    carried["DEVDIAG_HOME"] = str(devdiag_home())
    if environ.get("PGPASSFILE"):
        carried["PGPASSFILE"] = os.path.abspath(environ["PGPASSFILE"])
    for k, v in carried.items():
        if "\n" in v or "\r" in v:
            raise click.ClickException(f"{k} contains a line break: it cannot go into a crontab line")
    return carried


def _dsn_has_password(dsn: str) -> bool:
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise click.ClickException(
            "DEVDIAG_PG_DSN is not a valid connection string: use postgresql://USER@HOST:PORT/devdiag"
        ) from None
    return any(key.endswith("password") and value for key, value in params.items())  # password, sslpassword


def _cron_escape(command: str) -> str:
    """In a crontab command an unescaped % is a line break."""
    return command.replace("%", r"\%")


def job_line(job: Job, executable: str, env: dict[str, str], log_dir: Path) -> str:
    log = shlex.quote(str(log_dir / f"{job.name}.log"))
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = " ".join([assignments, shlex.quote(executable), *map(shlex.quote, job.args)]).strip()
    # A UTC time stamp before each run's output, so that the log reads as a history.
    stamped = f"{{ date -u +'--- %Y-%m-%dT%H:%M:%SZ {job.name}'; {command}; }} >> {log} 2>&1"
    return f"{job.schedule} {_cron_escape(' '.join(filter(None, [job.guard, stamped])))}"


def render_block(executable: str, env: dict[str, str], log_dir: Path, backup_dir: Path) -> list[str]:
    lines = [
        BEGIN,
        "# Managed by `devdiag cron --install`; `devdiag cron --uninstall` removes this block.",
        f"# Logs: {log_dir}. Times are cron's local time, except the health check (08:00 UTC).",
    ]
    for job in jobs(backup_dir):
        lines += [f"# {job.comment}", job_line(job, executable, env, log_dir)]
    return [*lines, END]


# --- the crontab ----------------------------------------------------------------------------------


def _crontab_command() -> str:
    explicit = os.environ.get(CRONTAB_ENV)
    if explicit:
        return explicit
    found = shutil.which("crontab")
    if not found:
        raise click.ClickException("the crontab command is missing: install cron (Debian: apt-get install cron)")
    return found


def _run_crontab(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = _crontab_command()
    try:
        return subprocess.run([command, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise click.ClickException(f"{command} is missing: install cron (Debian: apt-get install cron)") from None
    except OSError as error:
        raise click.ClickException(f"cannot run {command}: {error.strerror or error}") from None


def read_crontab() -> list[str]:
    """The user's crontab lines; empty when there is none."""
    result = _run_crontab(["-l"])
    if result.returncode != 0:
        if "no crontab" in result.stderr.lower():
            return []
        raise click.ClickException(f"crontab -l failed: {_first_line(result.stderr)}")
    return result.stdout.splitlines()


def write_crontab(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    result = _run_crontab(["-"], stdin=text)
    if result.returncode != 0:
        raise click.ClickException(f"crontab - failed: {_first_line(result.stderr)}; the crontab is unchanged")


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else "no message"


def split_block(lines: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(before, block, after) around our marker block; block is empty when there is none."""
    starts = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not starts and not ends:
        return lines, [], []
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise click.ClickException(
            f"the crontab has unmatched `{BEGIN}` / `{END}` lines: fix them with `crontab -e`, then run again"
        )
    start, end = starts[0], ends[0]
    return lines[:start], lines[start : end + 1], lines[end + 1 :]


def install(block: list[str]) -> bool:
    """Put the block into the crontab; False when it was already there, unchanged."""
    before, current, after = split_block(read_crontab())
    if current == block:
        return False
    write_crontab(before + block + after if current else _append(before, block))
    return True


def _append(lines: list[str], block: list[str]) -> list[str]:
    return [*lines, *([""] if lines and lines[-1].strip() else []), *block]


def uninstall() -> int:
    """Remove the block; the number of lines removed (0: there was none)."""
    before, current, after = split_block(read_crontab())
    if not current:
        return 0
    # Drop the blank line that _append put before the block, when the block was last.
    if not after and before and not before[-1].strip():
        before = before[:-1]
    write_crontab(before + after)
    return len(current)


# --- command --------------------------------------------------------------------------------------


@click.command("cron")
@click.option("--install", "do_install", is_flag=True, help="Add the jobs to your crontab (idempotent).")
@click.option("--uninstall", "do_uninstall", is_flag=True, help="Remove exactly the jobs that --install added.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the jobs' log files.  [default: $DEVDIAG_HOME/logs]",
)
@click.option(
    "--backup-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the weekly backups.  [default: $DEVDIAG_HOME/backups]",
)
def cron(do_install: bool, do_uninstall: bool, log_dir: Path | None, backup_dir: Path | None) -> None:
    """Print the runbook's schedule as crontab lines, or install or remove them.

    Health check daily at 08:00 UTC, backup Sundays 02:00, retention Sundays 03:00, spool flush,
    dbt build and alerts every 5 minutes; each job appends to its own log file. The lines carry the
    DEVDIAG_* settings of this shell but never a password: keep it in ~/.pgpass. The crontab command
    is `crontab`, or the program named by DEVDIAG_CRONTAB.
    """
    if do_install and do_uninstall:
        raise click.UsageError("--install and --uninstall exclude each other")
    if do_uninstall:
        removed = uninstall()
        click.echo(f"removed the devdiag block ({removed} lines)" if removed else "no devdiag block in the crontab")
        return
    logs = Path(os.path.abspath(log_dir or devdiag_home() / "logs"))
    backups = Path(os.path.abspath(backup_dir or devdiag_home() / "backups"))
    block = render_block(devdiag_executable(), carried_environment(os.environ), logs, backups)
    if not do_install:
        click.echo("\n".join(block))
        return
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create the log directory {logs}: {error.strerror}") from None
    if install(block):
        click.echo(f"installed {len(jobs(backups))} devdiag jobs in the crontab (logs in {logs})")
    else:
        click.echo("the devdiag jobs are already installed: crontab unchanged")
