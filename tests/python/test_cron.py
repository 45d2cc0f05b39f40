"""`devdiag cron`: the schedule, idempotent install, exact uninstall, no password in the crontab.

The crontab is a small fake `crontab` program (DEVDIAG_CRONTAB) that keeps the table in a file: a
test double of the system tool, not of our stack. The real `crontab` is exercised too when the
machine has one (the user's table is saved and put back).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import cron as cron_module
from orchestrator.cron import BEGIN, END, render_block

USER_LINES = ["MAILTO=ops@example.com", "# my own jobs", "30 6 * * 1-5 /usr/local/bin/sync-mirrors --quiet"]
FAKE_CRONTAB = """#!/bin/sh
# A crontab-compatible stand-in: `-l` prints the table, `-` replaces it from stdin.
table="$FAKE_CRONTAB_FILE"
case "$1" in
  -l) if [ -f "$table" ]; then cat "$table"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) if [ -n "$FAKE_CRONTAB_READONLY" ]; then echo "crontab: cannot write the table: Permission denied" >&2; exit 1; fi
     cat > "$table.new" && mv "$table.new" "$table" && echo x >> "$table.writes" ;;
  *) echo "usage: crontab [-l | -]" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "crontab"
    fake.write_text(FAKE_CRONTAB)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return {
        "DEVDIAG_HOME": str(tmp_path / "home"),
        "DEVDIAG_CRONTAB": str(fake),
        "FAKE_CRONTAB_FILE": str(tmp_path / "table"),
        "DEVDIAG_PG_PASS": None,
        "DEVDIAG_PG_DSN": None,
        "DEVDIAG_PG_HOST": None,
        "DEVDIAG_PG_USER": None,
        "DEVDIAG_PG_DB": None,
        "PGPASSFILE": None,
    }


def devdiag_cron(env: dict[str, str | None], *args: str):
    return CliRunner().invoke(cron_module.cron, list(args), env=env)


def table(env: dict[str, str]) -> str:
    path = Path(env["FAKE_CRONTAB_FILE"])
    return path.read_text() if path.exists() else ""


def writes(env: dict[str, str]) -> int:
    path = Path(env["FAKE_CRONTAB_FILE"] + ".writes")
    return len(path.read_text().splitlines()) if path.exists() else 0


def job_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def cron_command(line: str) -> str:
    """What cron hands to /bin/sh: the line after its 5 time fields, with `\\%` made `%`."""
    command = line.split(None, 5)[5]
    assert not re.search(r"(?<!\\)%", command), f"unescaped % (cron reads it as a line break): {line}"
    return command.replace(r"\%", "%")


# --- the lines ------------------------------------------------------------------------------------


def test_prints_the_runbook_schedule(env, tmp_path):
    result = devdiag_cron({**env, "DEVDIAG_PG_HOST": "db.internal:5433", "DEVDIAG_PG_USER": "devdiag_owner"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == BEGIN and lines[-1] == END
    jobs = job_lines(result.output)
    schedules = {re.search(r"logs/([\w-]+)\.log", j).group(1): " ".join(j.split()[:5]) for j in jobs}
    assert schedules == {
        "health": "*/15 * * * *",  # proceeds at 08:00 UTC only (the guard, tested below)
        "backup": "0 2 * * 0",
        "retention": "0 3 * * 0",
        "flush": "*/5 * * * *",
        "build": "1-59/5 * * * *",
        "full-refresh": "33 3 * * *",
        "alerts": "2-59/5 * * * *",
    }
    executable = cron_module.devdiag_executable()
    assert os.path.isabs(executable)
    home = tmp_path / "home"
    for job in jobs:
        assert f" {executable} " in job
        assert f"DEVDIAG_HOME={home} " in job and "DEVDIAG_PG_HOST=db.internal:5433 " in job
        name = re.search(r"devdiag (\w+)", job).group(1)
        log = re.search(r"logs/([\w-]+)\.log", job).group(1)
        assert job.endswith(f">> {home}/logs/{log}.log 2>&1")
        assert log == name or ((log, name) == ("full-refresh", "build") and "build --full-refresh;" in job)
    assert f"backup --dir {home}/backups;" in next(j for j in jobs if "backup" in j)


def test_log_and_backup_directories_can_be_chosen(env, tmp_path):
    result = devdiag_cron(env, "--log-dir", str(tmp_path / "var log"), "--backup-dir", "rel/backups")
    assert result.exit_code == 0, result.output
    assert f">> '{tmp_path}/var log/health.log' 2>&1" in result.output  # quoted for the shell
    assert f"--dir {Path.cwd()}/rel/backups;" in result.output  # absolute: cron runs in $HOME


@pytest.mark.parametrize(
    ("hour", "minute", "runs"),
    [("08", "00", True), ("08", "14", True), ("08", "15", False), ("07", "45", False), ("20", "00", False)],
)
def test_the_health_check_runs_at_0800_utc_only_and_each_line_runs_in_sh(env, tmp_path, hour, minute, runs):
    """Run the health line as cron would, with a `date` that reads the given UTC time and a stand-in
    devdiag that records its arguments and environment: checks quoting, escaping and the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "date").write_text(
        '#!/bin/sh\ncase "$2" in\n  +%H) echo "$FAKE_HOUR" ;;\n  +%M) echo "$FAKE_MINUTE" ;;\n'
        '  *) echo "${2#+}" ;;\nesac\n'
    )
    record = tmp_path / "record"
    (bin_dir / "devdiag").write_text(f'#!/bin/sh\necho "args=$*" >> {record}\nenv | grep ^DEVDIAG_ >> {record}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log_dir = tmp_path / "log dir"
    log_dir.mkdir()
    lines = render_block(str(bin_dir / "devdiag"), {"DEVDIAG_HOME": "/srv/dev diag"}, log_dir, tmp_path / "b")
    health = next(line for line in lines if "devdiag health" in line.replace(str(bin_dir) + "/", ""))
    shell_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_HOUR": hour, "FAKE_MINUTE": minute}
    subprocess.run(["/bin/sh", "-c", cron_command(health)], env=shell_env, check=False, timeout=10)
    if not runs:
        assert not record.exists()
        return
    assert record.read_text().splitlines() == ["args=health", "DEVDIAG_HOME=/srv/dev diag"]
    assert (log_dir / "health.log").read_text().startswith("--- %Y-%m-%dT%H:%M:%SZ health")


def test_every_job_line_is_valid_for_cron_and_sh(env):
    result = devdiag_cron(env)
    for line in job_lines(result.output):
        assert len(line.split(None, 5)) == 6
        command = cron_command(line)
        check = subprocess.run(["/bin/sh", "-n", "-c", command], capture_output=True, text=True, check=False)
        assert check.returncode == 0, (line, check.stderr)


# --- secrets --------------------------------------------------------------------------------------


def test_refuses_to_put_a_password_in_the_crontab(env):
    for extra in (
        {"DEVDIAG_PG_PASS": "hunter2-secret", "DEVDIAG_PG_HOST": "db", "DEVDIAG_PG_USER": "owner"},
        {"DEVDIAG_PG_DSN": "postgresql://owner:hunter2-secret@db:5432/devdiag"},
        {"DEVDIAG_PG_DSN": "host=db user=owner sslpassword=hunter2-secret dbname=devdiag"},
    ):
        for args in ([], ["--install"]):
            result = devdiag_cron({**env, **extra}, *args)
            assert result.exit_code == 1, result.output
            assert result.output.startswith("Error: ") and result.output.count("\n") == 1
            assert "~/.pgpass" in result.output and "hunter2-secret" not in result.output
    assert table(env) == ""  # nothing written


def test_carries_a_dsn_without_password_and_pgpassfile_but_no_role_password(env, tmp_path):
    result = devdiag_cron(
        {
            **env,
            "DEVDIAG_PG_DSN": "postgresql://owner@db:5432/devdiag",
            "PGPASSFILE": str(tmp_path / "pgpass"),
            "DEVDIAG_GRAFANA_PASSWORD": "role-secret-1",
            "DEVDIAG_WRITER_PASSWORD": "role-secret-2",
        }
    )
    assert result.exit_code == 0, result.output
    assert "DEVDIAG_PG_DSN=postgresql://owner@db:5432/devdiag " in result.output
    assert f"PGPASSFILE={tmp_path}/pgpass " in result.output
    assert "role-secret" not in result.output and "PASSWORD" not in result.output


# --- install and uninstall ------------------------------------------------------------------------


def test_install_is_idempotent_and_uninstall_restores_the_table(env):
    Path(env["FAKE_CRONTAB_FILE"]).write_text("\n".join(USER_LINES) + "\n")
    first = devdiag_cron(env, "--install")
    jobs = len(cron_module.jobs(Path("backups")))
    assert first.exit_code == 0 and f"installed {jobs} devdiag jobs" in first.output, first.output
    installed = table(env)
    assert installed.startswith("\n".join(USER_LINES) + "\n\n" + BEGIN)
    assert installed.endswith(END + "\n") and installed.count(BEGIN) == 1
    assert Path(env["DEVDIAG_HOME"], "logs").is_dir()

    second = devdiag_cron(env, "--install")
    assert second.exit_code == 0 and "already installed" in second.output
    assert table(env) == installed and writes(env) == 1  # not even rewritten

    removed = devdiag_cron(env, "--uninstall")
    assert removed.exit_code == 0 and "removed the devdiag block" in removed.output
    assert table(env) == "\n".join(USER_LINES) + "\n"
    again = devdiag_cron(env, "--uninstall")
    assert again.exit_code == 0 and "no devdiag block" in again.output
    assert writes(env) == 2


def test_install_into_an_empty_crontab_and_uninstall_leaves_it_empty(env):
    assert devdiag_cron(env, "--install").exit_code == 0
    assert table(env).startswith(BEGIN)
    assert devdiag_cron(env, "--uninstall").exit_code == 0
    assert table(env) == ""


def test_a_changed_setting_replaces_the_block_in_place(env, tmp_path):
    Path(env["FAKE_CRONTAB_FILE"]).write_text(USER_LINES[0] + "\n")
    assert devdiag_cron(env, "--install").exit_code == 0
    with open(env["FAKE_CRONTAB_FILE"], "a") as fh:  # the user adds a job after ours
        fh.write(USER_LINES[2] + "\n")
    result = devdiag_cron(env, "--install", "--log-dir", str(tmp_path / "other-logs"))
    assert result.exit_code == 0 and "installed" in result.output
    text = table(env)
    assert text.count(BEGIN) == 1 and str(tmp_path / "other-logs") in text
    assert text.startswith(USER_LINES[0] + "\n") and text.endswith(END + "\n" + USER_LINES[2] + "\n")
    assert devdiag_cron(env, "--uninstall").exit_code == 0
    assert job_lines(table(env)) == [USER_LINES[0], USER_LINES[2]]


def test_unmatched_markers_are_refused_and_nothing_is_written(env):
    Path(env["FAKE_CRONTAB_FILE"]).write_text(f"{BEGIN}\n* * * * * true\n")
    for args in (["--install"], ["--uninstall"]):
        result = devdiag_cron(env, *args)
        assert result.exit_code == 1 and "crontab -e" in result.output and result.output.count("\n") == 1
    assert writes(env) == 0


def test_install_and_uninstall_together_is_a_usage_error(env):
    result = devdiag_cron(env, "--install", "--uninstall")
    assert result.exit_code == 2 and "exclude each other" in result.output


# --- faults ---------------------------------------------------------------------------------------


def test_a_missing_crontab_command_says_to_install_cron(env, tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    for missing in (
        {**env, "DEVDIAG_CRONTAB": str(tmp_path / "nowhere" / "crontab")},
        {**env, "DEVDIAG_CRONTAB": None, "PATH": str(empty)},
    ):
        result = devdiag_cron(missing, "--install")
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and "apt-get install cron" in result.output


def test_printing_needs_no_crontab_command(env, tmp_path):
    result = devdiag_cron({**env, "DEVDIAG_CRONTAB": None, "PATH": str(tmp_path / "nothing-here")})
    assert result.exit_code == 0 and BEGIN in result.output


def test_a_crontab_that_refuses_the_write_is_reported_and_left_unchanged(env):
    Path(env["FAKE_CRONTAB_FILE"]).write_text("\n".join(USER_LINES) + "\n")
    result = devdiag_cron({**env, "FAKE_CRONTAB_READONLY": "1"}, "--install")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "Permission denied" in result.output and "unchanged" in result.output
    assert table(env) == "\n".join(USER_LINES) + "\n"


def test_an_unreadable_log_directory_is_one_line(env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = devdiag_cron(env, "--install", "--log-dir", str(blocker / "logs"))
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "log directory" in result.output
    assert writes(env) == 0


# --- the real crontab -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("crontab") is None, reason="no crontab command on this machine")
def test_with_the_real_crontab(env):
    """Install and uninstall in this user's real crontab; the table is put back as it was."""
    real = {**env, "DEVDIAG_CRONTAB": None}
    saved = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    had_table = saved.returncode == 0
    if had_table and BEGIN in saved.stdout:
        pytest.skip("this user's crontab already holds a devdiag block: not touching it")
    try:
        assert devdiag_cron(real, "--install").exit_code == 0
        listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout
        assert listed.count(BEGIN) == 1 and len(job_lines(listed)) >= 6
        assert "already installed" in devdiag_cron(real, "--install").output
        assert devdiag_cron(real, "--uninstall").exit_code == 0
        after = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
        assert BEGIN not in after.stdout
        if had_table:
            assert after.stdout == saved.stdout
    finally:
        if had_table:
            subprocess.run(["crontab", "-"], input=saved.stdout, text=True, check=False)
        else:
            subprocess.run(["crontab", "-r"], capture_output=True, check=False)
