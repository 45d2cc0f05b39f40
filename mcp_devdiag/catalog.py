"""Load and validate the diagnostics catalog (catalog.yaml).

The catalog is the single source of truth for problem codes and fix ids; fix ids are
stable forever because outcome data is keyed on them, so validation is strict.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CATEGORIES = frozenset({"browser", "backend", "python", "node", "git", "docker", "os", "database", "network"})
SEVERITIES = frozenset({"critical", "error", "warning"})
# MULTILINE so ^/$ anchor to lines of a pasted log, not to the whole paste.
PATTERN_FLAGS = re.IGNORECASE | re.MULTILINE

_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_FIX_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MIN_STEPS, _MAX_STEPS = 2, 5


@dataclass(frozen=True)
class Fix:
    id: str
    title: str
    steps: tuple[str, ...]
    prior: float


@dataclass(frozen=True)
class Problem:
    code: str
    title: str
    category: str
    severity: str
    patterns: tuple[re.Pattern[str], ...]
    fixes: tuple[Fix, ...]


class Catalog:
    """Problems keyed by code, in file order; fix lookup by globally unique id."""

    def __init__(self, problems: list[Problem], version: int = 1) -> None:
        self.version = version
        self.problems: dict[str, Problem] = {p.code: p for p in problems}
        self._fixes: dict[str, tuple[Problem, Fix]] = {f.id: (p, f) for p in problems for f in p.fixes}

    def problem(self, code: str) -> Problem:
        try:
            return self.problems[code]
        except KeyError:
            raise ValueError(f"unknown problem code {code!r}") from None

    def fix(self, fix_id: str) -> tuple[Problem, Fix]:
        try:
            return self._fixes[fix_id]
        except KeyError:
            raise ValueError(f"unknown fix id {fix_id!r}") from None

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems.values())

    def __len__(self) -> int:
        return len(self.problems)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _str_field(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    _require(isinstance(value, str) and value.strip() != "", f"{where}: missing or empty {key!r}")
    return value


def _parse_fix(raw: Any, code: str, seen_ids: set[str]) -> Fix:
    _require(isinstance(raw, dict), f"problem {code}: each fix must be a mapping")
    fix_id = raw.get("id")
    where = f"problem {code} fix {fix_id!r}"
    _require(isinstance(fix_id, str) and bool(_FIX_ID_RE.match(fix_id)), f"{where}: id must be kebab-case")
    _require(fix_id not in seen_ids, f"{where}: duplicate fix id {fix_id!r}")
    seen_ids.add(fix_id)
    title = _str_field(raw, "title", where)
    steps = raw.get("steps")
    _require(
        isinstance(steps, list)
        and _MIN_STEPS <= len(steps) <= _MAX_STEPS
        and all(isinstance(s, str) and s.strip() for s in steps),
        f"{where}: steps must be a list of {_MIN_STEPS}-{_MAX_STEPS} non-empty strings",
    )
    prior = raw.get("prior")
    _require(
        isinstance(prior, int | float) and not isinstance(prior, bool) and 0.0 <= prior <= 1.0,
        f"{where}: prior must be a number in 0..1, got {prior!r}",
    )
    return Fix(id=fix_id, title=title, steps=tuple(steps), prior=float(prior))


def _parse_problem(raw: Any, index: int, seen_codes: set[str], seen_fix_ids: set[str]) -> Problem:
    _require(isinstance(raw, dict), f"problems[{index}]: must be a mapping")
    code = raw.get("code")
    _require(
        isinstance(code, str) and bool(_CODE_RE.match(code)),
        f"problems[{index}]: bad code {code!r} (must match {_CODE_RE.pattern})",
    )
    where = f"problem {code}"
    _require(code not in seen_codes, f"{where}: duplicate code")
    seen_codes.add(code)
    title = _str_field(raw, "title", where)
    category = raw.get("category")
    _require(category in CATEGORIES, f"{where}: bad category {category!r}")
    severity = raw.get("severity")
    _require(severity in SEVERITIES, f"{where}: bad severity {severity!r}")

    raw_patterns = raw.get("patterns")
    _require(isinstance(raw_patterns, list) and raw_patterns, f"{where}: needs at least one pattern")
    patterns: list[re.Pattern[str]] = []
    for pat in raw_patterns:
        _require(isinstance(pat, str) and pat != "", f"{where}: patterns must be non-empty strings")
        try:
            patterns.append(re.compile(pat, PATTERN_FLAGS))
        except re.error as exc:
            raise ValueError(f"{where}: pattern {pat!r} does not compile: {exc}") from None

    raw_fixes = raw.get("fixes")
    _require(isinstance(raw_fixes, list) and raw_fixes, f"{where}: has no fixes")
    fixes = tuple(_parse_fix(f, code, seen_fix_ids) for f in raw_fixes)
    return Problem(code=code, title=title, category=category, severity=severity, patterns=tuple(patterns), fixes=fixes)


def parse_catalog(data: Any) -> Catalog:
    """Validate an already-parsed YAML document; raises ValueError naming the bad entry."""
    _require(isinstance(data, dict), "catalog: top level must be a mapping")
    version = data.get("version")
    _require(version == 1, f"catalog: unsupported version {version!r}")
    raw_problems = data.get("problems")
    _require(isinstance(raw_problems, list) and raw_problems, "catalog: 'problems' must be a non-empty list")
    seen_codes: set[str] = set()
    seen_fix_ids: set[str] = set()
    problems = [_parse_problem(p, i, seen_codes, seen_fix_ids) for i, p in enumerate(raw_problems)]
    return Catalog(problems, version=version)


def _parse_text(text: str, source: str) -> Catalog:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"catalog {source}: invalid YAML: {detail}") from None
    return parse_catalog(data)


@functools.cache
def _default_catalog() -> Catalog:
    text = importlib.resources.files("mcp_devdiag").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return _parse_text(text, "catalog.yaml")


def load_catalog(path: Path | None = None) -> Catalog:
    """Load the packaged catalog (cached) or, for tests and tooling, a catalog file at `path`."""
    if path is None:
        return _default_catalog()
    return _parse_text(Path(path).read_text(encoding="utf-8"), str(path))
