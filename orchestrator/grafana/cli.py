"""``devdiag grafana``: generate, import, check and preview the Grafana dashboard, data source and alerts."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestrator.grafana import files


@click.group("grafana")
def grafana() -> None:
    """Grafana as code: data source, the DevDiag Analytics dashboard and the five alert rules.

    Import uses Grafana's HTTP API with GRAFANA_URL (Grafana's root URL) and GRAFANA_API_KEY (a
    service account token, sent as a bearer token and never printed).
    """


@grafana.command("generate")
@click.option("--check", "check_only", is_flag=True, help="Change nothing; exit 1 when a generated file is stale.")
def generate(check_only: bool) -> None:
    """Rewrite the dashboard JSON and the alert provisioning file from their sources."""
    root = files.grafana_dir().parent
    if check_only:
        stale = files.stale_files()
        for path in stale:
            click.echo(f"stale: {path.relative_to(root)}")
        if stale:
            raise click.ClickException("generated Grafana files are stale: run `devdiag grafana generate`")
        click.echo("generated Grafana files are current")
        return
    changed = files.generate()
    for path in changed:
        click.echo(f"wrote {path.relative_to(root)}")
    if not changed:
        click.echo("generated Grafana files were already current")


@grafana.command("import")
@click.argument("what", type=click.Choice(["datasource", "dashboard", "alerts", "all"]), default="all")
@click.option("--dry-run", is_flag=True, help="Read Grafana and say what would change; write nothing.")
def import_(what: str, dry_run: bool) -> None:
    """Create or update the data source, dashboard and alert rules in Grafana, by uid.

    A second import changes nothing. The data source password comes from DEVDIAG_GRAFANA_PASSWORD
    (else the grafana role's kept password) and the host from DEVDIAG_PG_HOST (else devdiag's own).
    """
    from orchestrator.grafana.api import Grafana
    from orchestrator.grafana.importer import Importer

    files.require_current()
    client = Grafana.from_env()
    importer = Importer(client, dry_run=dry_run, report=lambda action: click.echo(action.line()))
    click.echo(
        f"token works: organisation {importer.verify_token()}" + (" (dry run: nothing written)" if dry_run else "")
    )
    if what in ("datasource", "all"):
        importer.datasource()
    if what in ("dashboard", "all"):
        importer.dashboard()
    if what in ("alerts", "all"):
        importer.alerts()
    failed = [a for a in importer.actions if not a.ok]
    if failed:
        raise click.ClickException(f"{len(failed)} resource(s) failed: {', '.join(a.uid for a in failed)}")


@grafana.command("check")
def check() -> None:
    """The runbook's token test: the token works, the data source connects, dashboard and rules are there.

    Exit 1 when something is missing or the data source cannot connect; differences from the
    repository are warnings.
    """
    from orchestrator.grafana.api import Grafana
    from orchestrator.grafana.importer import check as run_check

    findings = run_check(Grafana.from_env())
    for finding in findings:
        click.echo(finding.line())
    sys.exit(1 if any(f.status == "fail" for f in findings) else 0)


@grafana.command("preview")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("devdiag-analytics.html"),
    show_default=True,
    help="HTML file to write.",
)
@click.option("--last", "last", default="30d", show_default=True, help="Time range: the last 6h, 7d, 30d, 26w ...")
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeat for several); default all.")
@click.option("--environment", "environments", multiple=True, help="Only this environment (repeat); default all.")
def preview(out: Path, last: str, tenants: tuple[str, ...], environments: tuple[str, ...]) -> None:
    """Render the dashboard's panels into one static HTML page that opens offline.

    The same JSON and SQL as in Grafana, with Grafana's macros expanded, run as role grafana.
    """
    from devdiag_db.db import DatabaseUnavailable, connect
    from orchestrator.grafana.database import grafana_settings
    from orchestrator.grafana.macros import MacroError
    from orchestrator.grafana.preview import build_preview, parse_span

    try:
        span = parse_span(last)
    except MacroError:
        raise click.BadParameter(f"{last!r} is not a duration like 7d or 12h", param_hint="--last") from None
    try:
        with connect(grafana_settings()) as conn:
            page, results = build_preview(
                conn, files.read_dashboard(), span, {"tenant": tenants, "environment": environments}
            )
    except DatabaseUnavailable as error:
        raise click.ClickException(str(error)) from None
    out.write_text(page)
    failed = [r for r in results if r.error]
    empty = [r for r in results if r.frame is not None and not r.frame.rows]
    click.echo(f"wrote {out}: {len(results)} panels, {len(empty)} without data, {len(failed)} failed")
    for result in failed:
        click.echo(f"  {result.panel['title']}: {result.error}", err=True)
    if failed:
        sys.exit(1)
