"""``devdiag grafana preview``: the dashboard as one static HTML page, from the same JSON and the same SQL.

Variables are resolved by running their own queries; each panel's SQL is expanded as Grafana would
(``macros.expand``) and run as role ``grafana``; the results become inline SVG charts, stat tiles and
tables (``charts``). The page has no script and no external reference, so it opens offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import Any

import psycopg

from orchestrator.grafana import charts, macros
from orchestrator.grafana.charts import Frame

STATEMENT_TIMEOUT_MS = 30_000
GRID_ROW_PX = 30


@dataclass(frozen=True)
class PanelResult:
    panel: Mapping[str, Any]
    sql: str
    frame: Frame | None
    error: str | None = None


def run_sql(conn: psycopg.Connection, sql: str) -> Frame:
    """One read-only query, as Grafana's data source runs it."""
    with conn.transaction():
        conn.execute("set transaction read only")
        conn.execute(f"set local statement_timeout = {STATEMENT_TIMEOUT_MS}")
        cur = conn.execute(sql)
        rows = cur.fetchall()
        description = cur.description or []
        types = tuple(_type_name(conn, c.type_code) for c in description)
        return Frame(tuple(c.name for c in description), tuple(tuple(r) for r in rows), types)


def _type_name(conn: psycopg.Connection, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    return info.name if info else str(oid)


def parse_span(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``: the length of a "last ..." time range."""
    return timedelta(milliseconds=macros.parse_interval_ms(text))


def resolve_variables(
    conn: psycopg.Connection,
    dashboard: Mapping[str, Any],
    time_range: macros.TimeRange,
    chosen: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, macros.Selection]:
    """Each query variable's options (its query run in order, so later ones may use earlier ones)."""
    selections: dict[str, macros.Selection] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        ctx = macros.QueryContext(time_range, selections)
        frame = run_sql(conn, macros.expand(variable["query"], ctx))
        options = tuple(str(row[0]) for row in frame.rows if row and row[0] is not None)
        picked = tuple((chosen or {}).get(variable["name"]) or ()) or (macros.ALL,)
        selections[variable["name"]] = macros.Selection(
            name=variable["name"],
            options=options,
            selected=picked,
            multi=bool(variable.get("multi")),
            include_all=bool(variable.get("includeAll")),
            all_value=variable.get("allValue") or None,
        )
    return selections


def run_panels(
    conn: psycopg.Connection,
    dashboard: Mapping[str, Any],
    time_range: macros.TimeRange,
    selections: Mapping[str, macros.Selection],
) -> list[PanelResult]:
    results = []
    for panel in dashboard.get("panels", []):
        target = panel["targets"][0]
        ctx = macros.QueryContext(time_range, selections, min_interval=panel.get("interval"))
        try:
            sql = macros.expand(target["rawSql"], ctx)
        except macros.MacroError as error:
            results.append(PanelResult(panel, target["rawSql"], None, str(error)))
            continue
        try:
            results.append(PanelResult(panel, sql, run_sql(conn, sql)))
        except psycopg.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            results.append(PanelResult(panel, sql, None, first))
    return results


def _panel_body(result: PanelResult, time_range: macros.TimeRange) -> str:
    if result.error:
        return f'<div class="error">Query failed: {escape(result.error)}</div>'
    frame = result.frame
    assert frame is not None
    if not frame.rows:
        return '<div class="nodata">No data</div>'
    kind = result.panel["type"]
    if kind == "timeseries":
        return charts.timeseries_html(frame, result.panel, time_range.start, time_range.end)
    if kind == "barchart":
        return charts.barchart_html(frame, result.panel)
    if kind == "stat":
        return charts.stat_html(frame, result.panel)
    if kind == "table":
        return charts.table_html(frame, result.panel)
    return f'<div class="error">Panel type {escape(kind)} has no preview</div>'


def _panel_html(result: PanelResult, time_range: macros.TimeRange) -> str:
    grid = result.panel["gridPos"]
    style = f"grid-column:{grid['x'] + 1} / span {grid['w']};grid-row:{grid['y'] + 1} / span {grid['h']}"
    description = escape(result.panel.get("description", ""))
    return (
        f'<section class="panel panel-{escape(result.panel["type"])}" data-panel-id="{result.panel["id"]}" '
        f'style="{style}"><h2 title="{description}">{escape(result.panel["title"])}</h2>'
        f'<div class="body">{_panel_body(result, time_range)}</div>'
        f"<details><summary>SQL</summary><pre>{escape(result.sql)}</pre></details></section>"
    )


_CSS = """
:root { color-scheme: dark; }
body { margin: 0; background: #111217; color: #ccccdc; font: 13px/1.4 system-ui, sans-serif; }
header { padding: 12px 16px; border-bottom: 1px solid #2c3235; }
header h1 { margin: 0; font-size: 18px; color: #fff; }
header p { margin: 4px 0 0; color: #8e8e9e; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: ROW_PXpx; gap: 8px; padding: 8px; }
.panel { background: #181b1f; border: 1px solid #2c3235; border-radius: 3px; padding: 6px 8px;
  display: flex; flex-direction: column; overflow: hidden; min-width: 0; }
.panel h2 { margin: 0 0 4px; font-size: 13px; font-weight: 500; color: #d8d9da; }
.body { flex: 1; min-height: 0; display: flex; flex-direction: column; }
.chart { width: 100%; flex: 1; min-height: 100px; display: block; }
.table-wrap { flex: 1; min-height: 0; overflow: auto; }
line.gridline { stroke: #2c3235; stroke-width: 1; }
line.threshold { stroke: #E02F44; stroke-dasharray: 4 3; stroke-width: 1; }
text.tick, text.value { fill: #8e8e9e; font-size: 10px; }
.legend { font-size: 11px; color: #ccccdc; }
.legend-item { margin-right: 10px; white-space: nowrap; }
.legend-item i { display: inline-block; width: 10px; height: 3px; margin-right: 4px; vertical-align: middle; }
.stats { display: flex; gap: 8px; height: 100%; }
.stat { flex: 1; border-radius: 3px; color: #fff; padding: 6px 10px; display: flex; flex-direction: column;
  justify-content: center; }
.stat-name { font-size: 12px; opacity: .9; }
.stat-value { font-size: 26px; font-weight: 600; }
table.data { border-collapse: collapse; width: 100%; font-size: 12px; }
table.data th { position: sticky; top: 0; background: #22252b; text-align: left; padding: 3px 6px; }
table.data td { border-top: 1px solid #2c3235; padding: 2px 6px; white-space: nowrap; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
.error { color: #ff7383; } .nodata { color: #8e8e9e; padding: 20px; text-align: center; }
details { font-size: 11px; color: #8e8e9e; } pre { white-space: pre-wrap; }
""".replace("ROW_PX", str(GRID_ROW_PX))


def render_page(
    dashboard: Mapping[str, Any],
    results: Sequence[PanelResult],
    time_range: macros.TimeRange,
    selections: Mapping[str, macros.Selection],
) -> str:
    chosen = "; ".join(f"{name}: {'All' if s.is_all else ', '.join(s.selected)}" for name, s in selections.items())
    span = f"{macros.rfc3339(time_range.start)} to {macros.rfc3339(time_range.end)}"
    panels = "".join(_panel_html(r, time_range) for r in results)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(dashboard.get('title', 'Dashboard'))} (preview)</title>"
        f"<style>{_CSS}</style></head><body><header><h1>{escape(dashboard.get('title', ''))}</h1>"
        f"<p>Static preview of Grafana dashboard {escape(dashboard.get('uid', ''))}: {escape(span)} (UTC); "
        f"{escape(chosen)}. Same panels and SQL as the Grafana JSON, run as role grafana.</p></header>"
        f'<main class="grid">{panels}</main></body></html>\n'
    )


def build_preview(
    conn: psycopg.Connection,
    dashboard: Mapping[str, Any],
    span: timedelta,
    chosen: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, list[PanelResult]]:
    time_range = macros.TimeRange.last(span)
    selections = resolve_variables(conn, dashboard, time_range, chosen)
    results = run_panels(conn, dashboard, time_range, selections)
    return render_page(dashboard, results, time_range, selections), results
