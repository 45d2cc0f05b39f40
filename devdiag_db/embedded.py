"""The embedded PostgreSQL 16 that ships in the ``pgserver`` wheel, run with its own binaries.

pgserver's Python wrapper only trusts local sockets and stops the server when the last process
exits; DevDiag needs a server that outlives one command and TCP logins with scram passwords for
the ``devdiag_writer`` and ``grafana`` roles, so it drives ``initdb`` and ``pg_ctl`` itself:

- data in ``$DEVDIAG_HOME/pgdata``, server log in ``$DEVDIAG_HOME/postgres.log``;
- the owner (``postgres``) connects over a Unix socket only (trust, socket mode 0700);
- every TCP login (127.0.0.1) needs a scram-sha-256 password.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import click

from devdiag_db.config import DATABASE, ConnectionSettings, devdiag_home

SYSTEM_USER_WHEN_ROOT = "pgserver"  # postgres refuses to run as root; pgserver uses this user too
SUPERUSER = "postgres"


def bin_dir() -> Path:
    with warnings.catch_warnings():
        # pgserver's import asks platformdirs for a runtime dir it does not need here, and warns.
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def pg_bin(name: str) -> str:
    """Path of a bundled PostgreSQL program (psql, pg_dump, ...)."""
    return str(bin_dir() / name)


def data_dir() -> Path:
    return devdiag_home() / "pgdata"


def log_file() -> Path:
    return devdiag_home() / "postgres.log"


def _socket_dir() -> Path:
    # Unix socket paths are limited to ~107 bytes; fall back to a short, per-home path in /tmp.
    preferred = devdiag_home() / "run"
    if len(str(preferred / ".s.PGSQL.65535")) < 100:
        return preferred
    digest = hashlib.sha256(str(devdiag_home()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"devdiag-{digest}"


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    port: int | None
    socket_dir: Path | None


def status() -> Status:
    pidfile = data_dir() / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid, port, sock = int(lines[0]), int(lines[3]), Path(lines[4])
    except (OSError, ValueError, IndexError):
        return Status(False, None, None, None)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return Status(False, None, None, None)
    except PermissionError:
        pass  # alive, owned by the pgserver user
    return Status(True, pid, port, sock)


def _run_as_owner(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    if os.geteuid() == 0:
        kwargs["user"] = SYSTEM_USER_WHEN_ROOT
    return subprocess.run(args, check=False, **kwargs)


def _prepare_for_root(*paths: Path) -> None:
    """As root, the server runs as an unprivileged user that must own its directories."""
    if os.geteuid() != 0:
        return
    import stat

    bin_dir()  # imports pgserver quietly first
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER_WHEN_ROOT)
    assert entry is not None
    readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir())
    ensure_folder_permissions(bin_dir(), readable)
    ensure_folder_permissions(bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    for path in paths:
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _free_port(preferred: int | None) -> int:
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As PostgreSQL binds: a port left in TIME_WAIT by our own last server is free to reuse,
            # so a restart keeps the URL people copied.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise click.ClickException("no free TCP port on 127.0.0.1 for the embedded PostgreSQL")


def _init_cluster() -> None:
    home = devdiag_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    pgdata = data_dir()
    if (pgdata / "PG_VERSION").exists():
        return
    pgdata.mkdir(mode=0o700, exist_ok=True)
    _prepare_for_root(pgdata)
    result = _run_as_owner(
        [
            pg_bin("initdb"),
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]
    )
    if result.returncode != 0:
        raise click.ClickException(
            f"initdb failed in {pgdata}: {result.stderr.strip().splitlines()[-1:]}; "
            "remove that directory or set DEVDIAG_HOME to another one"
        )
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# DevDiag embedded defaults\n"
            "timezone = 'UTC'\n"
            "unix_socket_permissions = 0700\n"
            "shared_buffers = 1GB\n"  # bulk loads keep the nine indexes in memory: +20% rows/s at 1M rows
            "wal_buffers = 64MB\n"
            "work_mem = 32MB\n"
            "maintenance_work_mem = 256MB\n"
            "max_wal_size = 2GB\n"
            "logging_collector = off\n"
        )


def start() -> Status:
    """Start the embedded server (initialising it on first use); a no-op when it runs."""
    current = status()
    if current.running:
        return current
    _init_cluster()
    sock = _socket_dir()
    sock.mkdir(parents=True, exist_ok=True, mode=0o700)
    _prepare_for_root(sock)
    port_file = devdiag_home() / "port"
    previous = int(port_file.read_text()) if port_file.exists() else None
    port = _free_port(previous)
    logfile = log_file()
    if os.geteuid() == 0 and not logfile.exists():
        logfile.touch()
        _prepare_for_root(logfile)
    result = _run_as_owner(
        [
            pg_bin("pg_ctl"),
            "-D",
            str(data_dir()),
            "-l",
            str(logfile),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
            "start",
        ]
    )
    if result.returncode != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] if logfile.exists() else []
        raise click.ClickException(
            f"the embedded PostgreSQL did not start ({' '.join(tail) or result.stderr.strip()}); see {logfile}"
        )
    port_file.write_text(str(port))
    _ensure_database(sock, port)
    return status()


def stop() -> bool:
    """Stop the server; False when it was not running."""
    if not status().running:
        return False
    result = _run_as_owner([pg_bin("pg_ctl"), "-D", str(data_dir()), "-m", "fast", "-w", "stop"])
    if result.returncode != 0:
        raise click.ClickException(f"pg_ctl stop failed: {result.stderr.strip()}")
    return True


def _ensure_database(sock: Path, port: int) -> None:
    import psycopg

    with psycopg.connect(host=str(sock), port=port, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'create database "{DATABASE}"')


def settings(*, start: bool = True) -> ConnectionSettings:
    """Owner connection to the embedded database, starting the server when asked."""
    current = globals()["start"]() if start else status()
    if not current.running:
        raise click.ClickException("the embedded PostgreSQL is not running: run `devdiag db start`")
    return ConnectionSettings(
        {"host": str(current.socket_dir), "port": str(current.port), "user": SUPERUSER, "dbname": DATABASE},
        embedded=True,
    )


def tcp_settings(user: str, password: str) -> ConnectionSettings:
    """A password login over TCP, as the writer and Grafana make it."""
    current = status()
    if not current.running:
        raise click.ClickException("the embedded PostgreSQL is not running: run `devdiag db start`")
    return ConnectionSettings(
        {"host": "127.0.0.1", "port": str(current.port), "user": user, "password": password, "dbname": DATABASE},
        embedded=True,
    )
