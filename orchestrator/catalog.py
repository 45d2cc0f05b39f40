"""`devdiag catalog gaps`: the errors the catalog does not know yet, as the team meets them.

Reads the team memory (``devdiag.error_memory``) across tenants as the owner: the unrecognised
error signatures grouped by trigram similarity, largest first, with the notes teammates left when
they solved them. Each group is a candidate for a new catalog entry (mcp_devdiag/catalog.yaml).
"""

from __future__ import annotations

import json

import click
import psycopg

from devdiag_db import config
from devdiag_db.db import DatabaseUnavailable, connect, scalar
from mcp_devdiag import memory
from orchestrator.reviews import print_table


@click.group()
def catalog() -> None:
    """The fix catalog: what it does not know yet."""


@catalog.command("gaps")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Groups to list.")
@click.option(
    "--min-similarity",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.1, 1.0),
    help="How alike (trigram similarity of the normalised errors) two errors must be to count as one group.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the groups as one JSON object.")
def gaps(limit: int, min_similarity: float, as_json: bool) -> None:
    """List the largest groups of similar unrecognised errors across tenants, with counts and notes.

    An unrecognised error is one that matched no catalog entry: these are the candidates for new
    entries, largest first. Notes are what teammates recorded when they solved one (secrets masked).
    """
    settings = config.settings()
    try:
        with connect(settings) as conn:
            if scalar(conn, "select to_regclass('devdiag.error_memory')") is None:
                raise click.ClickException(f"{settings.describe()} has no team memory yet: run `devdiag setup`")
            groups = memory.gaps(conn, limit=limit, min_similarity=min_similarity)
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    except psycopg.errors.UndefinedFunction:
        raise click.ClickException(
            "pg_trgm is not installed in this database: run `devdiag setup` (or `create extension pg_trgm`)"
        ) from None
    if as_json:
        click.echo(json.dumps({"min_similarity": min_similarity, "groups": groups}, indent=2))
        return
    rows = [
        {
            "runs": g["runs"],
            "tenants": g["tenants"],
            "variants": g["signatures"],
            "last seen": g["last_seen"][:10],
            "error (normalised)": g["signature"][:90],
            "notes": " / ".join(n[:60] for n in g["notes"]),
        }
        for g in groups
    ]
    print_table("Unrecognised errors, largest groups first", rows, empty="no unrecognised errors remembered")
