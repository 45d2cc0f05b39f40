"""Where DevDiag keeps its state and which database it talks to.

Precedence: ``DEVDIAG_PG_DSN``, then the runbook's ``DEVDIAG_PG_HOST/USER/PASS/DB``, else the
embedded PostgreSQL under ``DEVDIAG_HOME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg.conninfo

DATABASE = "devdiag"
SCHEMA = "devdiag"
ENV_VARS = ("DEVDIAG_PG_DSN", "DEVDIAG_PG_HOST", "DEVDIAG_PG_USER", "DEVDIAG_PG_PASS", "DEVDIAG_PG_DB")


def devdiag_home() -> Path:
    """State directory: embedded data, spool, generated passwords. ``DEVDIAG_HOME`` overrides."""
    explicit = os.environ.get("DEVDIAG_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "devdiag"


# The wheel carries the dbt project and grafana/ here (setup.py copies them at build time); a
# checkout has them at its root, beside this package.
PACKAGED_PROJECT = Path(__file__).resolve().parent / "project"


def project_dir() -> Path:
    """The dbt project (dbt_project.yml, models, macros, selectors, profile template, grafana/).

    ``DEVDIAG_PROJECT_DIR`` when set; else the checkout this package runs from (editable install,
    tests), so edits there take effect; else the copy an installed wheel carries. Never the current
    directory. dbt writes its target/ and logs/ under DEVDIAG_HOME (orchestrator.dbt), so the
    installed copy may be read-only.
    """
    explicit = os.environ.get("DEVDIAG_PROJECT_DIR")
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not (root / "dbt_project.yml").is_file():
            raise click.ClickException(
                f"no dbt_project.yml in DEVDIAG_PROJECT_DIR={root}: point it at the DevDiag dbt project or unset it"
            )
        return root
    checkout = PACKAGED_PROJECT.parent.parent
    for root in (checkout, PACKAGED_PROJECT):
        if (root / "dbt_project.yml").is_file():
            return root
    raise click.ClickException(
        f"no dbt_project.yml in {checkout} or {PACKAGED_PROJECT}: reinstall {distribution_name()} from a wheel "
        "or sdist, or `pip install -e .` in a checkout, or set DEVDIAG_PROJECT_DIR"
    )


def distribution_name() -> str:
    """The name this code was installed under (from its metadata, never spelled out here)."""
    import importlib.metadata

    names = importlib.metadata.packages_distributions().get(__name__.partition(".")[0], [])
    return names[0] if names else "DevDiag"


@dataclass(frozen=True)
class ConnectionSettings:
    """libpq keywords for one connection; ``password`` is never part of ``describe()``."""

    params: dict[str, str] = field(default_factory=dict)
    embedded: bool = False
    source: str = "DEVDIAG_PG_HOST"  # the variable it came from, for the hint in an error

    @property
    def variables(self) -> str:
        """Where a person fixes these settings, for error hints."""
        return "DEVDIAG_PG_DSN" if self.source == "DEVDIAG_PG_DSN" else "DEVDIAG_PG_HOST"

    @property
    def credential_variables(self) -> str:
        """Where a person fixes refused credentials, for error hints."""
        if self.source == "DEVDIAG_PG_DSN":
            return "the user and password in DEVDIAG_PG_DSN"
        return "DEVDIAG_PG_USER and DEVDIAG_PG_PASS"

    @property
    def dbname(self) -> str:
        return self.params.get("dbname", DATABASE)

    def conninfo(self, **overrides: str) -> str:
        merged = {**self.params, **overrides}
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in merged.items() if v not in (None, "")})

    def describe(self) -> str:
        """Where we connect, safe for logs and errors."""
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        user = self.params.get("user", "")
        where = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{where} {user + '@' if user else ''}{host}:{port}/{self.dbname}"

    def url(self, *, with_password: bool = False) -> str:
        """A ``postgresql://`` URL that psql accepts; the password only when asked for."""
        from urllib.parse import quote

        p = self.params
        user = quote(p.get("user", ""), safe="")
        password = p.get("password", "")
        auth = user + (":" + quote(password, safe="") if with_password and password else "")
        host = p.get("host", "")
        query = []
        if host.startswith("/"):
            query.append("host=" + quote(host, safe="/"))
            netloc = f"{auth}@" if auth else ""
        else:
            netloc = (f"{auth}@" if auth else "") + host
        port = p.get("port")
        if port:
            if host.startswith("/"):
                query.append(f"port={port}")
            else:
                netloc += f":{port}"
        extra = {k: v for k, v in p.items() if k not in {"user", "password", "host", "port", "dbname"}}
        query += [f"{k}={quote(str(v), safe='')}" for k, v in extra.items()]
        return f"postgresql://{netloc}/{quote(self.dbname, safe='')}" + ("?" + "&".join(query) if query else "")


def external_settings() -> ConnectionSettings | None:
    """Settings from the environment, or None when the embedded database should be used."""
    dsn = os.environ.get("DEVDIAG_PG_DSN")
    if dsn:
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise click.ClickException(
                "DEVDIAG_PG_DSN is not a valid connection string: use postgresql://USER:PASS@HOST:PORT/devdiag"
            ) from None
        params.setdefault("dbname", DATABASE)
        return ConnectionSettings({k: str(v) for k, v in params.items()}, source="DEVDIAG_PG_DSN")
    if not any(os.environ.get(v) for v in ENV_VARS[1:]):
        return None
    host = os.environ.get("DEVDIAG_PG_HOST", "localhost")
    fields: dict[str, str] = {"dbname": os.environ.get("DEVDIAG_PG_DB") or DATABASE}
    if host.count(":") == 1:  # host:port, or a socket directory:port as profiles.yml.example reads it
        host, port = host.split(":")
        if not port.isdigit():
            raise click.ClickException(f"DEVDIAG_PG_HOST has a bad port {port!r}: use HOST or HOST:PORT")
        fields["port"] = port
    fields["host"] = host
    if os.environ.get("DEVDIAG_PG_USER"):
        fields["user"] = os.environ["DEVDIAG_PG_USER"]
    if os.environ.get("DEVDIAG_PG_PASS"):
        fields["password"] = os.environ["DEVDIAG_PG_PASS"]
    return ConnectionSettings(fields)


def settings(*, start: bool = True) -> ConnectionSettings:
    """The owner connection: external when configured, else the embedded server (started on demand)."""
    ext = external_settings()
    if ext is not None:
        return ext
    from devdiag_db import embedded

    return embedded.settings(start=start)
