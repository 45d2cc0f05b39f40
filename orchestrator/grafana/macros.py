"""Expand a panel's SQL as Grafana would before PostgreSQL sees it.

Two passes, in Grafana's order:

1. the browser replaces template variables (``$tenant``, ``${tenant:sqlstring}``, ``[[tenant]]``,
   ``$__interval``, ``$__interval_ms``, ``$__range_s`` ...); a multi-value or include-All variable
   becomes a list of quoted literals, and a custom All value is inserted as written;
2. the PostgreSQL data source expands its macros (``$__timeFilter(col)``, ``$__timeFrom()``,
   ``$__timeTo()``, ``$__timeGroup(col, interval)``, ``$__timeGroupAlias(...)`` ...), with times
   in UTC RFC 3339 and epoch buckets as Go's ``%v`` prints them.

The tests run the result as role ``grafana``; ``devdiag grafana preview`` renders it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

ALL = "$__all"

_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "M": 2_592_000_000,
    "y": 31_536_000_000,
}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|M|y)\s*$")
# Grafana's variable syntaxes: $name, [[name]] / [[name:fmt]], ${name} / ${name:fmt}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")
# The data source's macro syntax: $__name(args), arguments without parentheses.
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


class MacroError(ValueError):
    """A query that Grafana would refuse to expand (unknown macro, missing argument, bad interval)."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def last(cls, span: timedelta, *, now: datetime | None = None) -> TimeRange:
        end = now or datetime.now(UTC)
        return cls(end - span, end)

    @property
    def span_ms(self) -> int:
        return int((self.end - self.start) / timedelta(milliseconds=1))


@dataclass(frozen=True)
class Selection:
    """What a template variable holds: the options it offers and the values picked from them."""

    name: str
    options: tuple[str, ...] = ()
    selected: tuple[str, ...] = (ALL,)
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None  # a custom All value is inserted raw, as Grafana does

    @property
    def is_all(self) -> bool:
        return ALL in self.selected


@dataclass(frozen=True)
class QueryContext:
    time_range: TimeRange
    variables: Mapping[str, Selection] = field(default_factory=dict)
    max_data_points: int = 500
    min_interval: str | None = None  # a panel's "interval" (Min interval) option

    @property
    def interval_ms(self) -> int:
        auto = round_interval(self.time_range.span_ms / max(self.max_data_points, 1))
        floor = parse_interval_ms(self.min_interval) if self.min_interval else 0
        return max(auto, floor)

    @property
    def interval(self) -> str:
        return seconds_to_hms(self.interval_ms / 1000)


def parse_interval_ms(text: str) -> int:
    """Milliseconds of a Grafana interval such as ``30m``, ``1d`` or ``'1h'``."""
    match = _INTERVAL.match(text.strip().strip("'"))
    if not match:
        raise MacroError(f"error parsing interval {text}")
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)])


# Grafana rounds the raw interval (range / max data points) to one of these steps, in ms.
_ROUND_STEPS = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
    (7500, 5000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000),
    (90_000, 60_000), (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000),
    (1_500_000, 1_200_000), (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000),
    (604_800_000, 86_400_000), (1_814_400_000, 604_800_000), (3_628_800_000, 2_592_000_000),
)  # fmt: skip


def round_interval(raw_ms: float) -> int:
    for below, step in _ROUND_STEPS:
        if raw_ms < below:
            return step
    return 31_536_000_000


def seconds_to_hms(seconds: float) -> str:
    """Grafana's interval text: the largest whole unit (``7d`` for a week, ``500ms``)."""
    for unit, size in (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count = math.floor(seconds / size)
        if count:
            return f"{count}{unit}"
    millis = math.floor(seconds * 1000)
    return f"{millis}ms" if millis else "less than a millisecond"


def rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped, ``Z`` suffix."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it (shortest digits; exponent form from 1e+06 and below 1e-04)."""
    if value == 0:
        return "0"
    digits = Decimal(repr(float(value))).normalize()
    exponent = digits.adjusted()
    if exponent < -4 or exponent >= 6:
        sign, mantissa_digits, _ = digits.as_tuple()
        mantissa = "".join(map(str, mantissa_digits))
        body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        return f"{'-' if sign else ''}{body}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    return format(digits, "f")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format_values(values: Sequence[str], fmt: str | None, selection: Selection) -> str:
    if fmt in (None, "sqlstring", "singlequote"):
        if fmt is None and not (selection.multi or selection.include_all):
            return values[0].replace("'", "''") if values else ""
        return ",".join(quote_literal(v) for v in values)
    if fmt in ("csv", "raw", "text"):
        return ",".join(values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    raise MacroError(f"variable format {fmt!r} is not supported here")


def interpolate_variables(sql: str, ctx: QueryContext) -> str:
    """The browser's pass: template variables and Grafana's global interval and range variables."""
    builtins = {
        "__interval": ctx.interval,
        "__interval_ms": str(ctx.interval_ms),
        "__range_s": str(ctx.time_range.span_ms // 1000),
        "__range_ms": str(ctx.time_range.span_ms),
        "__from": str(int(ctx.time_range.start.timestamp() * 1000)),
        "__to": str(int(ctx.time_range.end.timestamp() * 1000)),
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5)
        if name in builtins:
            return builtins[name]
        selection = ctx.variables.get(name)
        if selection is None:
            return match.group(0)  # not a variable (e.g. a data source macro): left for pass 2
        if selection.is_all:
            if selection.all_value is not None and fmt not in ("text", "percentencode"):
                return selection.all_value
            values: Sequence[str] = selection.options
        else:
            values = selection.selected
        return _format_values(values, fmt, selection)

    return _VARIABLE.sub(replace, sql)


def _macro(name: str, args: list[str], ctx: QueryContext) -> str:
    tr = ctx.time_range

    def need_column() -> str:
        if not args or not args[0]:
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    if name == "__time":
        return f'{need_column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {need_column()}) as "time"'
    if name == "__timeFilter":
        column = need_column()
        return f"{column} BETWEEN '{rfc3339(tr.start)}' AND '{rfc3339(tr.end)}'"
    if name == "__timeFrom":
        return f"'{rfc3339(tr.start)}'"
    if name == "__timeTo":
        return f"'{rfc3339(tr.end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = go_float(parse_interval_ms(args[1]) / 1000)
        group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        column = need_column()
        return f"{column} >= {int(tr.start.timestamp())} AND {column} <= {int(tr.end.timestamp())}"
    if name == "__unixEpochFrom":
        return str(int(tr.start.timestamp()))
    if name == "__unixEpochTo":
        return str(int(tr.end.timestamp()))
    raise MacroError(f"unknown macro {name!r}")


def expand_macros(sql: str, ctx: QueryContext) -> str:
    """The data source's pass: ``$__name(args)`` macros, each argument trimmed of spaces."""

    def replace(match: re.Match[str]) -> str:
        name, raw_args = match.group(1), match.group(2)
        args = [a.strip() for a in raw_args.split(",")]
        if name == "__timeGroup":
            after = sql[sql.find(match.group(0)) + len(match.group(0)) :][:1]
            if after == ",":  # Grafana's pre-5.3 compatibility: $__timeGroup(...), means the alias form
                name = "__timeGroupAlias"
        return _macro(name, args, ctx)

    return _MACRO.sub(replace, sql)


def expand(sql: str, ctx: QueryContext) -> str:
    """Both passes: the SQL that PostgreSQL receives from Grafana for this context."""
    return expand_macros(interpolate_variables(sql, ctx), ctx)


def variable_names(sql: str) -> set[str]:
    """Names referenced with any variable syntax (macros and Grafana's own variables excluded)."""
    names = set()
    for match in _VARIABLE.finditer(sql):
        name = match.group(1) or match.group(2) or match.group(4)
        end = match.end()
        if match.group(1) and sql[end : end + 1] == "(":
            continue  # $__timeFilter( ... ): a data source macro
        if not name.startswith("__"):
            names.add(name)
    return names
