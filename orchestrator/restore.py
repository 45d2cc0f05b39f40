"""`devdiag restore FILE`: a signed backup into a new or empty database, all or nothing, as a restricted role.

Before anything is touched, the file's signature is checked (HMAC-SHA256 under the backup key, see
`orchestrator.backup`; ``--trust-unsigned`` skips only this check) and the file is read in full
(gzip CRC, both trailers, row counts against its manifest).

The backup's SQL never runs as the admin connection: it is fed to a connection that logs in as
``devdiag_restore``, a role without superuser, CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS or any
role membership (so none of pg_execute_server_program / pg_read_server_files /
pg_write_server_files): ``COPY ... TO PROGRAM``, server file access, role changes and other
databases are out of its reach. It may only create in the target database (CREATE, TEMPORARY),
and owns what it creates, so the backup's own GRANTs work. What needs privilege is done by this
module as the admin, from the signed manifest: creating the roles the grants name (NOLOGIN),
the database settings, and afterwards handing every object to the admin role (as `devdiag setup`
owns them) and revoking the restricted role's rights again (it is NOLOGIN between restores).

The SQL is sent through psycopg, not psql: psql would also run backslash commands (``\\!``, ``\\o |``,
``\\copy ... program``) on this machine, whoever the database role is. It is one transaction: a
failure, a file that changes while it is read, or SQL that ends the transaction itself leaves nothing
restored (a database this command created is dropped again). A database that holds rows is refused
unless ``--force``, which replaces the backup's schemas inside that transaction.

Verification afterwards: every table's row count equals the backup's, every table, view, index and
function in the backup exists, the public views and raw indexes of the contract are present,
and the health checks run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import click
import psycopg
from psycopg import Copy, pq, sql

from devdiag_db.config import SCHEMA, ConnectionSettings
from devdiag_db.db import DatabaseUnavailable, connect, is_citus, one_row, scalar
from orchestrator.backup import (
    _COPY_RE,
    CHUNK,
    BackupInvalid,
    DumpContents,
    Signature,
    check_signature,
    verify_backup,
)
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES
from orchestrator.progress import Progress
from orchestrator.provision import EXTENSIONS, create_extensions, untracked
from orchestrator.secrets import backup_key, role_password, scram_verifier

MAINTENANCE_DATABASES = ("postgres", "template1")
# The SECURITY DEFINER functions `devdiag setup` defines (macros/raw_schema.sql, create_tenancy).
OWN_DEFINER_FUNCTIONS = ("devdiag.token_lookup(text)", "devdiag.token_used(text)")
# The health checks that judge the restore itself; the others judge the data (a week-old backup is
# stale by design, and its fix confidence is what it was), so they are reported, not held against it.
STRUCTURAL_CHECKS = {"views_present", "indexes_present"}
RESTORE_ROLE = "devdiag_restore"
# pg_dump 18 (and 17.6, 16.10, ...) brackets its SQL with `\restrict KEY` ... `\unrestrict KEY`.
_RESTRICT_RE = re.compile(rb"^\\(un)?restrict [A-Za-z0-9]+$")
# DevDiag's own extensions: the admin creates them where the server has them (the restricted role may
# not: pg_stat_statements is untrusted, and only an extension's owner may comment on it), so the
# dump's one-line statements about them are not fed.
# Nor citus, in a backup of a Citus coordinator: a database made for the restore (the drill's) gets
# the rows as tables of its own, and a cluster's database already has the extension, where setup's
# DDL after the restore distributes diag_run again (macros/citus.sql).
_OWN_EXTENSION_RE = re.compile(
    rb"^(?:CREATE EXTENSION IF NOT EXISTS|COMMENT ON EXTENSION) (?:"
    + b"|".join(re.escape(name.encode()) for name in (*EXTENSIONS, "citus"))
    + rb") .*;$"
)


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
    signed: bool = True

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
            "signed": self.signed,
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
    trust_unsigned: bool = False,
    key_file: Path | None = None,
) -> RestoreReport:
    """Restore ``path`` into ``database`` (default: the configured one) and verify it. Raises ClickException."""
    started = time.monotonic()
    key = None if trust_unsigned else backup_key(key_file)
    fh = _open(path)  # one open file for the checks and the restore: renaming another file in its place does nothing
    with fh:
        try:
            signature = check_signature(fh, path, key)
        except BackupInvalid as error:
            raise click.ClickException(f"{error}; nothing was restored") from None
        with Progress("reading backup", quiet=quiet, unit="lines") as progress:
            contents = _read(path, fh, progress)
        name = database or settings.dbname
        target = target_settings(settings, name)
        with _maintenance(settings) as admin:
            created = _create_if_missing(admin, name)
        try:
            replaced = _schemas_to_replace(target, contents, force)
            report = RestoreReport(path, name, created, replaced, signed=signature.signed)
            restore_started = time.monotonic()
            report.warnings = _restore_restricted(target, fh, contents, replaced, signature, quiet)
        except BaseException:
            if created:
                drop_database(settings, name)
            raise
    report.restore_seconds = time.monotonic() - restore_started
    _apply_setup(target)
    if not signature.signed:
        report.warnings.append(f"{path} was restored unsigned (--trust-unsigned): its origin was not checked")
    _verify(target, contents, report, health=health)
    report.seconds = time.monotonic() - started
    return report


def _open(path: Path):
    try:
        return open(path, "rb")  # closed by the caller's with-block
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no such file: nothing was restored; use another backup file") from None
    except IsADirectoryError:
        raise click.ClickException(f"{path} is a directory, not a backup file: nothing was restored") from None
    except PermissionError as error:
        raise click.ClickException(f"{path} cannot be read ({error.strerror}): nothing was restored") from None


def _read(path: Path, fh, progress: Progress) -> DumpContents:
    try:
        contents = verify_backup(path, progress=progress, fh=fh)
    except BackupInvalid as error:
        raise click.ClickException(f"{error}: nothing was restored; use another backup file") from None
    fh.seek(0)
    return contents


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
        replaced = [s for s in contents.objects["schemas"] if s in existing]
        if replaced and is_citus(conn):
            distributed = [
                r[0]
                for r in conn.execute(
                    "select distinct c.relnamespace::regnamespace::text from pg_dist_partition p "
                    "join pg_class c on c.oid = p.logicalrelid "
                    "where c.relnamespace::regnamespace::text = any(%s) order by 1",
                    (replaced,),
                )
            ]
            if distributed:
                raise click.ClickException(
                    f"database {target.dbname} is a Citus database whose schema {', '.join(distributed)} holds "
                    "distributed tables, which a restore cannot replace in one transaction: restore into a new "
                    "cluster's database, or drop that schema there first (as its owner), then restore"
                )
    return replaced


def _tables_with_rows(conn: psycopg.Connection) -> list[str]:
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p', 'm') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema' "
        "order by 1, 2"
    ).fetchall()
    filled = []
    for schema, table in tables:
        if schema == SCHEMA and table not in ("diag_run", "error_memory"):
            continue  # the fix catalog and dbt's tables: `devdiag setup` and `devdiag build` remake them
        # `select 1`: Citus refuses an empty select list over a distributed table
        query = sql.SQL("select exists (select 1 from {})").format(sql.Identifier(schema, table))
        if scalar(conn, query):
            filled.append(f"{schema}.{table}")
    return filled


# --- the restricted role ------------------------------------------------------------------------------


@dataclass
class _Handover:
    """What the admin changed for one restore, to undo or complete afterwards."""

    restricted: ConnectionSettings
    owner: str
    schema_owners: dict[str, str]
    missing_extensions: tuple[str, ...] = ()


def _restore_restricted(
    target: ConnectionSettings,
    fh,
    contents: DumpContents,
    replaced: list[str],
    signature: Signature,
    quiet: bool,
) -> list[str]:
    """Prepare the role (as the admin), feed the backup as that role, then hand the objects over."""
    # Only a signed manifest is ours: an unsigned file's declared roles and settings are not applied.
    manifest = (contents.manifest or {}) if signature.signed else {}
    with connect(target) as admin:
        handover = _prepare(admin, target, replaced, manifest)
        try:
            warnings = _stream(handover.restricted, fh, contents, replaced, signature, quiet)
        except BaseException:
            _release(admin, handover, committed=False)
            raise
        _release(admin, handover, committed=True)
    return [*warnings, *(f"extension not created, {line}" for line in handover.missing_extensions)]


def _roles_on_citus_workers(admin: psycopg.Connection, roles: list[str]) -> None:
    """On a Citus coordinator, a role made while connected to a database without citus (the drill's
    scratch one) exists on the coordinator only, and the next `alter role` here, which Citus sends to
    every worker, would fail there: create the missing ones (NOLOGIN; the alter sets the rest)."""
    if not is_citus(admin):
        return
    for name in roles:
        command = sql.SQL(
            "do $roles$ begin if not exists (select from pg_roles where rolname = {}) then "
            "create role {} nologin; end if; end $roles$"
        ).format(sql.Literal(name), sql.Identifier(name))
        # one worker at a time: a role made on a worker is passed on to the others, and two at once
        # deadlock on each other
        failed = admin.execute(
            "select nodeport, result from run_command_on_workers(%s, parallel := false) where not success",
            (command.as_string(admin),),
        ).fetchall()
        if failed:
            port, error = failed[0]
            raise click.ClickException(
                f"could not create role {name} on the Citus worker at port {port} ({error.strip()}): "
                "create it there, then restore again; nothing was restored"
            )


def _prepare(admin: psycopg.Connection, target: ConnectionSettings, replaced: list[str], manifest: dict) -> _Handover:
    """Create or reset ``devdiag_restore`` (LOGIN, nothing else), let it create in the target database,
    give it the schemas it replaces; create the roles the signed manifest names, apply its settings."""
    role = sql.Identifier(RESTORE_ROLE)
    password = role_password(RESTORE_ROLE)
    owner, is_super = one_row(admin, "select current_user, rolsuper from pg_roles where rolname = current_user")
    attributes = "LOGIN NOCREATEDB NOCREATEROLE NOINHERIT"
    if is_super:  # only a superuser may even name these (to turn them off)
        attributes += " NOSUPERUSER NOREPLICATION NOBYPASSRLS"
    untracked(admin)  # the role's SCRAM verifier stays out of pg_stat_statements
    try:
        with admin.transaction():
            _roles_on_citus_workers(admin, [RESTORE_ROLE, *manifest.get("roles", [])])
            exists = admin.execute("select 1 from pg_roles where rolname = %s", (RESTORE_ROLE,)).fetchone()
            verb = "alter" if exists else "create"
            admin.execute(
                sql.SQL(verb + " role {} " + attributes + " password {}").format(
                    role, sql.Literal(scram_verifier(password))
                )
            )
            admin.execute(sql.SQL("alter role {} reset all").format(role))
            if not is_super:
                admin.execute(sql.SQL("grant {} to current_user").format(role))  # to give it schemas, take objects back
            _check_role(admin)
            admin.execute(
                sql.SQL("grant connect, create, temporary on database {} to {}").format(
                    sql.Identifier(target.dbname), role
                )
            )
            schema_owners = {}
            for schema in replaced:  # quoted identifiers, as the dump prints them
                schema_owners[schema] = scalar(
                    admin, "select nspowner::regrole::text from pg_namespace where quote_ident(nspname) = %s", (schema,)
                )
                admin.execute(sql.SQL("alter schema " + schema + " owner to {}").format(role))
            _, missing_extensions = create_extensions(admin)
            for name in manifest.get("roles", []):
                if not admin.execute("select 1 from pg_roles where rolname = %s", (name,)).fetchone():
                    admin.execute(sql.SQL("create role {} nologin").format(sql.Identifier(name)))
            for item in manifest.get("database_settings", []):
                name, _, value = item.partition("=")
                admin.execute(
                    sql.SQL("alter database {} set {} to {}").format(
                        sql.Identifier(target.dbname), sql.Identifier(name), sql.Literal(value)
                    )
                )
    except psycopg.errors.InsufficientPrivilege as error:
        raise click.ClickException(
            f"{target.describe()} does not let this user prepare the restricted restore role ({_first(error)}): "
            f"run devdiag restore as a role with CREATEROLE that owns the database, or as a superuser"
        ) from None
    restricted = ConnectionSettings(
        {**target.params, "user": RESTORE_ROLE, "password": password}, embedded=target.embedded
    )
    return _Handover(restricted, owner, schema_owners, missing_extensions)


def _check_role(admin: psycopg.Connection) -> None:
    """Fail closed when the restricted role has any power beyond logging in (someone granted it some)."""
    attrs, memberships = one_row(
        admin,
        "select array_remove(array[case when rolsuper then 'SUPERUSER' end, case when rolcreaterole then "
        "'CREATEROLE' end, case when rolcreatedb then 'CREATEDB' end, case when rolreplication then 'REPLICATION' "
        "end, case when rolbypassrls then 'BYPASSRLS' end], null), "
        "array(select m.roleid::regrole::text from pg_auth_members m where m.member = r.oid order by 1) "
        "from pg_roles r where rolname = %s",
        (RESTORE_ROLE,),
    )
    if attrs or memberships:
        found = ", ".join([*attrs, *(f"member of {m}" for m in memberships)])
        raise click.ClickException(
            f"role {RESTORE_ROLE} has privileges it must not have ({found}): revoke them "
            f"(ALTER ROLE / REVOKE ... FROM {RESTORE_ROLE}) and run again; nothing was restored"
        )


def _release(admin: psycopg.Connection, handover: _Handover, *, committed: bool) -> None:
    """After a commit: the admin's role owns every restored object, as `devdiag setup` would. After a
    failure: the replaced schemas go back to their owners. Either way the restricted role keeps no
    right in this database and cannot log in."""
    role = sql.Identifier(RESTORE_ROLE)
    with admin.transaction():
        if committed:
            admin.execute(sql.SQL("reassign owned by {} to {}").format(role, sql.Identifier(handover.owner)))
        else:
            for schema, owner in handover.schema_owners.items():
                admin.execute(sql.SQL("alter schema " + schema + " owner to {}").format(sql.Identifier(owner)))
        admin.execute(sql.SQL("drop owned by {}").format(role))  # its grants here, and on the database
        admin.execute(sql.SQL("alter role {} nologin").format(role))


def _first(error: psycopg.Error) -> str:
    """The server's primary message, one line, no context."""
    text = error.diag.message_primary or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- feeding the backup -------------------------------------------------------------------------------


class _HashingReader:
    """The raw file, with a SHA-256 of every byte read: the stream must be the file that was checked."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data

    def rest(self) -> str:
        while self.read(CHUNK):
            pass
        return self.digest.hexdigest()


class _Loader:
    """Plain pg_dump SQL through one connection: statements between COPYs as one simple query, COPY
    data through the COPY protocol. No client-side commands exist here (unlike psql)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.pending = bytearray()
        self.copy: Copy | None = None
        self.copy_cm: contextlib.AbstractContextManager[Copy] | None = None
        self.carry = b""

    def execute(self, text: bytes) -> None:
        if not _comment_only(text):
            self.cursor.execute(text.decode())
        self._still_ours()

    def feed(self, block: bytes) -> None:
        data = self.carry + block
        end = data.rfind(b"\n") + 1
        self.carry = data[end:]
        pos = 0
        while pos < end:
            if self.copy is None:
                nl = data.index(b"\n", pos, end)
                line = data[pos : nl + 1]
                pos = nl + 1
                if _RESTRICT_RE.match(line[:-1]) or _OWN_EXTENSION_RE.match(line[:-1]):
                    pass  # \restrict: psql's guard against meta-commands; this loader runs none at all
                elif _COPY_RE.match(line[:-1]):
                    self.execute(bytes(self.pending))
                    self.pending.clear()
                    self.copy_cm = self.cursor.copy(line.decode())
                    self.copy = self.copy_cm.__enter__()
                else:
                    self.pending += line
            elif data.startswith(b"\\.\n", pos):
                self._end_copy()
                pos += 3
            else:
                stop = data.find(b"\n\\.\n", pos, end)
                upto = end if stop < 0 else stop + 1
                self.copy.write(data[pos:upto])
                pos = upto

    def finish(self) -> None:
        if self.copy is not None:
            raise click.ClickException("the backup ends inside COPY data: nothing was restored; use another file")
        self.execute(bytes(self.pending) + self.carry)
        self.pending.clear()
        self.carry = b""

    def abort(self) -> None:
        if self.copy_cm is not None and self.copy is not None:
            with contextlib.suppress(Exception):
                self.copy_cm.__exit__(RuntimeError, RuntimeError("restore aborted"), None)
        self.copy = self.copy_cm = None

    def _end_copy(self) -> None:
        cm, self.copy, self.copy_cm = self.copy_cm, None, None
        assert cm is not None  # called only at the end of a COPY's data
        cm.__exit__(None, None, None)
        self._still_ours()

    def _still_ours(self) -> None:
        # Our BEGIN must still be open: SQL that COMMITs or ROLLBACKs itself would escape all-or-nothing.
        if self.conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            raise _Escaped()


def _comment_only(text: bytes) -> bool:
    """Blank or ``--`` lines only: nothing for the server (an empty query is not an error, but not ours)."""
    return all(not line.strip() or line.lstrip().startswith(b"--") for line in text.split(b"\n"))


class _Escaped(Exception):
    """The backup's SQL ended the restore's transaction itself."""


def _stream(
    restricted: ConnectionSettings,
    fh,
    contents: DumpContents,
    replaced: list[str],
    signature: Signature,
    quiet: bool,
) -> list[str]:
    """Feed the backup as the restricted role in one transaction; returns its warnings. Raises ClickException."""
    try:
        conn = connect(restricted, autocommit=False)
    except DatabaseUnavailable as error:
        raise click.ClickException(
            f"the restricted restore role {RESTORE_ROLE} cannot log in ({error}): allow it a password login to "
            f"{restricted.dbname} in pg_hba.conf; nothing was restored"
        ) from None
    warnings: list[str] = []
    conn.add_notice_handler(
        lambda d: warnings.append(d.message_primary or "") if d.severity_nonlocalized == "WARNING" else None
    )
    if is_citus(conn):
        # Citus would send the backup's DDL to the workers, first making sure of its owner role there,
        # which this role may not: the tables are the coordinator's until setup distributes diag_run
        conn.execute("set citus.enable_ddl_propagation = off")
        conn.commit()
    loader = _Loader(conn)
    where = f"{restricted.describe()}"
    try:
        with conn:
            try:
                _feed(conn, loader, fh, contents, replaced, signature, quiet)
            except BaseException:
                loader.abort()  # before the rollback: a COPY in progress is failed first
                raise
    except _Escaped:
        raise click.ClickException(
            f"the backup's SQL ends the restore's transaction itself (COMMIT/ROLLBACK): refused on {where}; "
            "nothing more was restored: use a backup `devdiag backup` wrote"
        ) from None
    except psycopg.Error as error:
        raise click.ClickException(
            f"restore failed on {where}: {_first(error)}; nothing was restored into {restricted.dbname}"
        ) from None
    finally:
        conn.close()
    return warnings


def _feed(
    conn: psycopg.Connection,
    loader: _Loader,
    fh,
    contents: DumpContents,
    replaced: list[str],
    signature: Signature,
    quiet: bool,
) -> None:
    """The whole file through ``loader`` inside the open transaction, then the checks before the commit."""
    prologue = "".join(f"DROP SCHEMA IF EXISTS {schema} CASCADE;\n" for schema in replaced)
    conn.execute("select 1")  # opens our transaction
    loader.execute(b"SET client_min_messages = warning;\n" + prologue.encode())
    reader = _HashingReader(fh)
    fh.seek(0)
    try:
        with (
            Progress("restore", total=contents.lines, quiet=quiet, unit="lines") as progress,
            gzip.open(cast(BinaryIO, reader), "rb") as stream,  # a read-only byte stream
        ):
            while block := stream.read(CHUNK):
                loader.feed(block)
                progress.advance(block.count(b"\n"))
            loader.finish()
    except (EOFError, OSError, zlib.error) as error:
        raise click.ClickException(
            f"the backup changed or broke while restoring ({error}); nothing was restored"
        ) from None
    if reader.rest() != signature.sha256:
        raise click.ClickException(
            "the backup file changed while it was restored (not the file whose signature was checked); "
            "nothing was restored"
        )
    _audit(conn)
    loader._still_ours()


def _apply_setup(target: ConnectionSettings) -> None:
    """The current raw schema's DDL over the restored one, as the admin: DevDiag's own functions,
    policies and grants as `devdiag setup` makes them (a backup of an older version is brought up too)."""
    from orchestrator import dbt

    dbt.run_operation(target, "devdiag_setup")


def _audit(conn: psycopg.Connection) -> None:
    """Before the commit: nothing the backup made may gain power when the admin's role takes it over.

    Views, materialized views, rules and index expressions run with their owner's rights (the last
    during VACUUM/ANALYZE); SECURITY DEFINER functions too. Each is checked while its owner is still
    the restricted role, or refused when it cannot be checked.
    """
    conn.execute("set local search_path = pg_catalog")  # no function or operator of the backup answers for us
    me = "(select oid from pg_roles where rolname = current_user)"

    def refuse(what: str) -> None:
        raise click.ClickException(f"the backup {what}: refused; nothing was restored")

    # DevDiag's own SECURITY DEFINER functions: whatever body the backup gave them is dropped here,
    # and `devdiag setup`'s trusted definition is applied once the restore is in (_apply_setup).
    for function in OWN_DEFINER_FUNCTIONS:
        conn.execute(sql.SQL("drop function if exists {}").format(sql.SQL(function)))
    definer = conn.execute(
        f"select p.oid::regprocedure::text from pg_proc p where p.prosecdef and p.proowner = {me} order by 1 limit 1"
    ).fetchone()
    if definer:
        refuse(f"defines SECURITY DEFINER function {definer[0]}, which would run as the database owner")
    rule = conn.execute(
        f"select r.rulename, r.ev_class::regclass::text from pg_rewrite r join pg_class c on c.oid = r.ev_class "
        f"where c.relowner = {me} and not (r.ev_type = '1' and r.rulename = '_RETURN') order by 1 limit 1"
    ).fetchone()
    if rule:
        refuse(f"defines rule {rule[0]} on {rule[1]}, whose actions would run as the database owner")
    index = conn.execute(
        "select d.objid::regclass::text, d.refobjid::regprocedure::text from pg_depend d "
        "join pg_index i on i.indexrelid = d.objid join pg_proc p on p.oid = d.refobjid "
        f"where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_proc'::regclass and p.proowner = {me} "
        "order by 1 limit 1"
    ).fetchone()
    if index:
        refuse(f"indexes with its own function {index[1]} ({index[0]}), which VACUUM/ANALYZE would run as the owner")
    relations = conn.execute(
        f"select c.oid::regclass::text, c.relkind from pg_class c where c.relowner = {me} and c.relkind in ('v', 'm') "
        "order by 1"
    ).fetchall()
    for name, kind in relations:
        # Reading a view checks its owner's rights on everything it reads (none of its rows are fetched).
        check = "select from {} limit 0" if kind == "v" else "refresh materialized view {}"
        try:
            with conn.transaction():
                conn.execute(sql.SQL(check).format(sql.SQL(name)))
                if kind == "m":
                    raise _Rollback
        except _Rollback:
            pass
        except psycopg.errors.InsufficientPrivilege as error:
            refuse(f"view {name} reads what the restore role may not ({_first(error)}); it would once owned")
    tables = conn.execute(
        f"select c.oid::regclass::text from pg_class c where c.relowner = {me} and c.relkind in ('r', 'm') order by 1"
    ).fetchall()
    if tables:  # a plain dump carries no planner statistics; as their restricted owner
        conn.execute(sql.SQL("analyze {}").format(sql.SQL(", ").join(sql.SQL(t) for (t,) in tables)))


class _Rollback(Exception):
    """Leave a savepoint without keeping what it did."""


def _verify(target: ConnectionSettings, contents: DumpContents, report: RestoreReport, *, health: bool) -> None:
    with connect(target) as conn:
        for table, expected in contents.rows.items():
            report.rows[table] = {"expected": expected, "restored": _count(conn, table)}
        for kind in ("tables", "views", "indexes"):
            for name in contents.objects[kind]:
                if scalar(conn, "select to_regclass(%s)", (name,)) is None:
                    report.missing.append(name)
        for name in contents.objects["functions"]:
            found = scalar(
                conn,
                "select exists (select from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where format('%%I.%%I', n.nspname, p.proname) = %s)",
                (name,),
            )
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
    return scalar(conn, sql.SQL("select count(*) from {}").format(sql.Identifier(*found)))


def _contract(conn: psycopg.Connection) -> tuple[int, int]:
    views = scalar(
        conn,
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'devdiag' and c.relkind in ('v', 'm') and c.relname = any(%s)",
        (list(PUBLIC_VIEWS),),
    )
    indexes = scalar(
        conn,
        "select count(*) from pg_indexes where schemaname = 'devdiag' and tablename = 'diag_run' "
        "and indexname = any(%s)",
        (list(RAW_INDEXES),),
    )
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
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Check the signature with the key in this file (default: $DEVDIAG_BACKUP_KEY, else $DEVDIAG_HOME/backup.key).",
)
@click.option(
    "--trust-unsigned",
    is_flag=True,
    help="Restore a file without a valid signature (an old backup, one signed elsewhere) whose origin you know.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as a JSON object.")
def restore(
    file: Path,
    database: str | None,
    force: bool,
    health: bool,
    key_file: Path | None,
    trust_unsigned: bool,
    as_json: bool,
) -> None:
    """Restore a signed `devdiag backup` file into a new or empty database, in one transaction, and verify it.

    Checks the file's signature first, then runs its SQL as the restricted role devdiag_restore.
    Creates the database when it does not exist. Refuses a database that holds data unless --force.
    Exit 1 when the restore fails or its verification finds a difference.
    """
    from devdiag_db.config import settings

    try:
        report = run_restore(
            settings(),
            file,
            database=database,
            force=force,
            quiet=as_json,
            health=health,
            trust_unsigned=trust_unsigned,
            key_file=key_file,
        )
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        _print_report(report)
    if not report.ok:
        raise click.ClickException(f"restored {report.database}, but verification failed: {'; '.join(report.problems)}")
