"""Static renderings of Grafana's four panel types used by the dashboard: inline SVG and HTML, no script.

Input is a query result (column names and rows) plus the panel's JSON, for units, decimals,
thresholds, orientation and stacking. Output is an HTML fragment; every mark that carries data has
a class (``series``, ``bar``, ``stat``, ``data-row``) so a browser test can count them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any

PALETTE = (
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42",
    "#1F78C1", "#BA43A9", "#705DA0", "#508642", "#CCA300",
)  # fmt: skip
COLORS = {"green": "#56A64B", "yellow": "#F2CC0C", "orange": "#FF9830", "red": "#E02F44", "blue": "#3274D9"}
WIDTH, HEIGHT = 640, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 28


NUMERIC_TYPES = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric"})
TIME_TYPES = frozenset({"timestamptz", "timestamp", "date"})


@dataclass(frozen=True)
class Frame:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    types: tuple[str, ...] = ()  # PostgreSQL type names of the columns, when known

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def numeric_columns(frame: Frame, skip: Sequence[str] = ()) -> list[str]:
    """Columns whose non-null values are all numbers (and at least one is)."""
    found = []
    for name in frame.columns:
        if name in skip:
            continue
        values = [v for v in frame.column(name) if v is not None]
        if values and all(is_number(v) for v in values):
            found.append(name)
    return found


# --- field config --------------------------------------------------------------------------------


def field_config(panel: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The panel's defaults with the byName overrides of ``name`` applied."""
    config = dict(panel.get("fieldConfig", {}).get("defaults", {}))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byName" and matcher.get("options") == name:
            for prop in override.get("properties", []):
                config[prop["id"]] = prop["value"]
    return config


def format_value(value: Any, config: Mapping[str, Any]) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds() / 86400:.2f} d"
    if not is_number(value):
        return str(value)
    number = float(value)
    unit = config.get("unit")
    decimals = config.get("decimals")
    if unit == "percentunit":
        number, unit = number * 100, "percent"
    if decimals is None:
        decimals = 0 if number.is_integer() else (1 if abs(number) >= 10 else 2)
    text = f"{number:,.{decimals}f}"
    suffix = {"percent": "%", "h": " h", "d": " d", "s": " s"}.get(unit or "", "")
    return text + suffix


def threshold_color(value: Any, config: Mapping[str, Any]) -> str:
    steps = (config.get("thresholds") or {}).get("steps") or [{"color": "green", "value": None}]
    color = steps[0]["color"]
    if is_number(value):
        for step in steps[1:]:
            if step.get("value") is not None and float(value) >= float(step["value"]):
                color = step["color"]
    return COLORS.get(color, color)


# --- axes ----------------------------------------------------------------------------------------


def nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _axis_number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:g}K"
    return f"{value:g}" if value.is_integer() else f"{value:.2g}"


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)  # Grafana's $__timeGroup: epoch seconds


def _time_label(moment: datetime, span: timedelta) -> str:
    return moment.strftime(
        "%H:%M" if span <= timedelta(days=1) else "%m-%d" if span <= timedelta(days=200) else "%Y-%m"
    )


def _svg(body: str, label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        f'<span class="legend-item"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(n)}</span>'
        for i, n in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def _y_grid(top: float, fmt: Mapping[str, Any]) -> str:
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = []
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - MARGIN_BOTTOM - plot_h * i / 4
        parts.append(
            f'<line class="gridline" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        label = format_value(value, {**fmt, "decimals": None}) if fmt.get("unit") else _axis_number(value)
        parts.append(
            f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
        )
    return "".join(parts)


# --- time series ---------------------------------------------------------------------------------


def time_series(frame: Frame) -> dict[str, list[tuple[datetime, float | None]]]:
    """Series by name, Grafana's way: a string column (long format) splits rows into series."""
    if "time" not in frame.columns:
        raise ValueError("a time series query needs a column named time")
    labels = [c for c in frame.columns if c != "time" and c not in numeric_columns(frame, ["time"])]
    values = numeric_columns(frame, ["time", *labels])
    series: dict[str, list[tuple[datetime, float | None]]] = {}
    t_index = frame.columns.index("time")
    for row in frame.rows:
        moment = _to_datetime(row[t_index])
        prefix = " ".join(str(row[frame.columns.index(c)]) for c in labels)
        for name in values:
            value = row[frame.columns.index(name)]
            key = (prefix if len(values) == 1 else f"{prefix} {name}").strip() if prefix else name
            series.setdefault(key, []).append((moment, None if value is None else float(value)))
    return series


def timeseries_html(frame: Frame, panel: Mapping[str, Any], start: datetime, end: datetime) -> str:
    series = time_series(frame)
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    stacked = (custom.get("stacking") or {}).get("mode") == "normal"
    bars = custom.get("drawStyle") == "bars"
    times = sorted({t for points in series.values() for t, _ in points})
    lo = min([start, *times]) if times else start
    hi = max([end, *times]) if times else end
    span = max(hi - lo, timedelta(seconds=1))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(moment: datetime) -> float:
        return MARGIN_LEFT + plot_w * ((moment - lo) / span)

    if stacked:
        totals: dict[datetime, float] = {}
        for points in series.values():
            for t, v in points:
                totals[t] = totals.get(t, 0.0) + (v or 0.0)
        peak = max(totals.values(), default=0.0)
    else:
        peak = max((v for points in series.values() for _, v in points if v is not None), default=0.0)
    steps = [s["value"] for s in (defaults.get("thresholds") or {}).get("steps", []) if s.get("value") is not None]
    threshold_lines = steps if (custom.get("thresholdsStyle") or {}).get("mode") == "line" else []
    top = nice_max(max([peak, *threshold_lines]) * 1.05)

    def y(value: float) -> float:
        return HEIGHT - MARGIN_BOTTOM - plot_h * (value / top)

    parts = [_y_grid(top, defaults)]
    for i in range(5):
        moment = lo + span * (i / 4)
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text class="tick" x="{x(moment):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
            f"{_time_label(moment, span)}</text>"
        )
    bar_w = max(plot_w / max(len(times), 1) * 0.8, 1.0)
    base: dict[datetime, float] = {}
    for index, (name, points) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        if bars:
            rects = []
            for t, v in points:
                if not v:
                    continue
                floor = base.get(t, 0.0) if stacked else 0.0
                rects.append(
                    f'<rect x="{x(t) - bar_w / 2:.1f}" y="{y(floor + v):.1f}" width="{bar_w:.1f}" '
                    f'height="{max(y(floor) - y(floor + v), 0.5):.1f}" fill="{color}"><title>{escape(name)}: '
                    f"{format_value(v, defaults)}</title></rect>"
                )
                if stacked:
                    base[t] = floor + v
            parts.append(
                f'<g class="series" data-series="{escape(name)}" data-points="{len(points)}">{"".join(rects)}</g>'
            )
        else:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points if v is not None)
            parts.append(
                f'<polyline class="series" data-series="{escape(name)}" data-points="{len(points)}" fill="none" '
                f'stroke="{color}" stroke-width="2" points="{coords}"><title>{escape(name)}</title></polyline>'
            )
    for value in threshold_lines:
        parts.append(
            f'<line class="threshold" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/>'
        )
    return _svg("".join(parts), panel.get("title", "")) + _legend(list(series))


# --- bar chart -----------------------------------------------------------------------------------


def barchart_html(frame: Frame, panel: Mapping[str, Any]) -> str:
    options = panel.get("options", {})
    label_field = options.get("xField") or next(c for c in frame.columns if c not in numeric_columns(frame))
    fields = numeric_columns(frame, [label_field])
    labels = [str(v) for v in frame.column(label_field)]
    horizontal = options.get("orientation") == "horizontal"
    configs = {name: field_config(panel, name) for name in fields}
    peak = max((float(v) for name in fields for v in frame.column(name) if v is not None), default=0.0)
    config_max = panel.get("fieldConfig", {}).get("defaults", {}).get("max")
    top = float(config_max) if config_max is not None else nice_max(peak)
    groups = max(len(labels), 1)
    left = 190 if horizontal else MARGIN_LEFT
    plot_w = WIDTH - left - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    band = (plot_h if horizontal else plot_w) / groups
    bar = band * 0.8 / max(len(fields), 1)
    parts = [] if horizontal else [_y_grid(top, configs[fields[0]] if fields else {})]
    for g, label in enumerate(labels):
        start = (MARGIN_TOP if horizontal else left) + g * band + band * 0.1
        if horizontal:
            parts.append(
                f'<text class="tick" x="{left - 6}" y="{start + band * 0.4 + 4:.1f}" text-anchor="end">'
                f"{escape(label[:30])}</text>"
            )
        else:
            parts.append(
                f'<text class="tick" x="{start + band * 0.4:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{escape(label[:14])}</text>"
            )
        for f, name in enumerate(fields):
            raw = frame.rows[g][frame.columns.index(name)]
            value = 0.0 if raw is None else float(raw)
            length = (plot_w if horizontal else plot_h) * min(value / top, 1.0) if top else 0.0
            color = PALETTE[f % len(PALETTE)]
            text = format_value(raw, configs[name])
            offset = start + f * bar
            if horizontal:
                rect = f'x="{left}" y="{offset:.1f}" width="{max(length, 0.5):.1f}" height="{bar:.1f}"'
                value_at = f'x="{left + length + 4:.1f}" y="{offset + bar / 2 + 4:.1f}"'
            else:
                top_y = HEIGHT - MARGIN_BOTTOM - length
                rect = f'x="{offset:.1f}" y="{top_y:.1f}" width="{bar:.1f}" height="{max(length, 0.5):.1f}"'
                value_at = (
                    f'x="{offset + bar / 2:.1f}" y="{HEIGHT - MARGIN_BOTTOM - length - 4:.1f}" text-anchor="middle"'
                )
            parts.append(
                f'<rect class="bar" {rect} fill="{color}"><title>{escape(label)} {escape(name)}: {text}</title></rect>'
                f'<text class="value" {value_at}>{escape(text)}</text>'
            )
    return _svg("".join(parts), panel.get("title", "")) + _legend(fields)


# --- stat and table ------------------------------------------------------------------------------


def stat_html(frame: Frame, panel: Mapping[str, Any]) -> str:
    last = frame.rows[-1] if frame.rows else ()
    tiles = []
    for name in numeric_columns(frame) or list(frame.columns):
        value = last[frame.columns.index(name)] if last else None
        config = field_config(panel, name)
        tiles.append(
            f'<div class="stat" style="background:{threshold_color(value, config)}">'
            f'<div class="stat-name">{escape(name)}</div>'
            f'<div class="stat-value">{escape(format_value(value, config) or "No data")}</div></div>'
        )
    return f'<div class="stats">{"".join(tiles)}</div>'


def table_html(frame: Frame, panel: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in frame.columns)
    configs = [field_config(panel, c) for c in frame.columns]
    body = []
    for row in frame.rows:
        cells = []
        for value, config in zip(row, configs, strict=True):
            text = format_value(value, config)
            css = ' class="num"' if is_number(value) else ""
            shown = text if len(text) <= 90 else text[:87] + "..."
            cells.append(f'<td{css} title="{escape(text)}">{escape(shown)}</td>')
        body.append(f'<tr class="data-row">{"".join(cells)}</tr>')
    table = f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="table-wrap">{table}</div>'
