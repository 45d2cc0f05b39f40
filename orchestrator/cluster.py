"""`devdiag cluster up|down|status`: a Citus coordinator and workers on this machine (devdiag_db.cluster)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from devdiag_db import cluster as citus_cluster


def _echo_status(state: citus_cluster.ClusterStatus, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(state.to_json(), indent=2))
        return
    for node in state.nodes:
        where = f"127.0.0.1:{node.port}"
        click.echo(
            f"  {node.name:<12} {where:<16} {'running (pid ' + str(node.pid) + ')' if node.running else 'stopped'}"
        )
    if state.dsn:
        click.echo(f"DEVDIAG_PG_DSN='{state.dsn}'")


@click.group()
def cluster() -> None:
    """A Citus cluster on this machine: a coordinator and workers on 127.0.0.1 under DEVDIAG_HOME/cluster.

    For trying DevDiag distributed (docs/scaling.md): point DEVDIAG_PG_DSN at the coordinator, then
    `devdiag setup` distributes the raw table by tenant."""


@cluster.command("up")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 8), help="Worker nodes.")
@click.option(
    "--citus-src",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Citus source tarball ({citus_cluster.TARBALL}) to build from when Citus is not installed yet "
    f"(default: ${citus_cluster.SOURCE_ENV}).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the cluster's state (with its dsn) as JSON.")
def cluster_up(workers: int, citus_src: Path | None, as_json: bool) -> None:
    """Build Citus once, start the coordinator and workers (initialising them on first use), join them.

    Safe to run again: running nodes are left alone, stopped ones started with their data."""
    if citus_src is not None and not citus_src.is_file():
        raise click.ClickException(f"--citus-src {citus_src}: no such file; pass the path of {citus_cluster.TARBALL}")
    state = citus_cluster.up(workers, citus_src, progress=lambda line: click.echo(line, err=True))
    _echo_status(state, as_json)


@cluster.command("down")
@click.option("--json", "as_json", is_flag=True, help="Print the names of the nodes stopped as JSON.")
def cluster_down(as_json: bool) -> None:
    """Stop the nodes `devdiag cluster up` started (their data stays; `up` brings them back)."""
    stopped = citus_cluster.down()
    if as_json:
        click.echo(json.dumps({"stopped": stopped}))
    else:
        click.echo(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes and the dsn as JSON.")
def cluster_status(as_json: bool) -> None:
    """Show each node and the coordinator's DSN; exit 1 unless every node runs."""
    state = citus_cluster.status()
    if not state.nodes and not as_json:
        click.echo("no cluster here: run `devdiag cluster up`")
    _echo_status(state, as_json)
    sys.exit(0 if state.running else 1)
