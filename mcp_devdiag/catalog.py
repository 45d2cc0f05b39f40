"""Load and validate the diagnostics catalog (catalog.yaml).

The catalog is the single source of truth for problem codes and fix ids; fix ids are
stable forever because outcome data is keyed on them, so validation is strict.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, get_args

import yaml

from mcp_devdiag.results import Severity

CATEGORIES = frozenset({"browser", "backend", "python", "node", "git", "docker", "os", "database", "network"})
SEVERITIES: frozenset[Severity] = frozenset(get_args(Severity))
# MULTILINE so ^/$ anchor to lines of a pasted log, not to the whole paste.
PATTERN_FLAGS = re.IGNORECASE | re.MULTILINE

_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_FIX_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_DETAIL_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_MIN_STEPS, _MAX_STEPS = 2, 5
# Stored as the problem_code of a run whose input matched nothing (service.py): never a catalog code.
UNRECOGNISED = "UNRECOGNISED"
# Details derived from a captured `module` (mcp_devdiag.details): whether it is the project's own,
# the standard library's or a third-party one, and the package that provides it.
DERIVED_FROM_MODULE = ("module_kind", "package")
MODULE_KINDS = frozenset({"own", "stdlib", "third_party"})
TEXT = "text"  # a condition on the (normalized, redacted) input text rather than a detail
_OPERATORS = frozenset({"in", "not_in", "matches", "not_matches"})
# <name> in a step: replaced by the captured detail `name` when the finding has it.
_PLACEHOLDER = re.compile(r"<([a-z][a-z0-9_]*)>")


@dataclass(frozen=True)
class Condition:
    """One clause of a fix's ``when``: ``key`` (a detail or ``text``) satisfies ``op`` over ``values``.

    A detail that was not captured satisfies no clause: a fix that depends on it is not suggested.
    """

    key: str
    op: str  # in | not_in | matches | not_matches
    values: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None

    def holds(self, details: Mapping[str, str], text: str) -> bool:
        value = text if self.key == TEXT else details.get(self.key)
        if value is None:
            return False
        if self.pattern is not None:
            return (self.pattern.search(value) is not None) == (self.op == "matches")
        return (value.lower() in self.values) == (self.op == "in")

    def describe(self) -> str:
        if self.pattern is not None:
            return f"{self.key} {'matches' if self.op == 'matches' else 'does not match'} {self.pattern.pattern!r}"
        shown = ", ".join(self.values)
        if self.op == "in":
            return f"{self.key} is {shown}" if len(self.values) == 1 else f"{self.key} is one of {shown}"
        return f"{self.key} is not {shown}" if len(self.values) == 1 else f"{self.key} is none of {shown}"


@dataclass(frozen=True)
class Fix:
    id: str
    title: str
    steps: tuple[str, ...]
    prior: float
    when: tuple[Condition, ...] = ()  # every clause must hold for the fix to apply (evidence needed)
    unless: tuple[Condition, ...] = ()  # any clause that holds rules the fix out (a missing detail does not)

    def applies(self, details: Mapping[str, str], text: str = "") -> bool:
        """Whether the fix applies to a finding with these details and text."""
        return all(c.holds(details, text) for c in self.when) and not any(c.holds(details, text) for c in self.unless)

    def condition(self) -> str | None:
        """The conditions in words, e.g. "when branch is none of main, master"; None when unconditional."""
        parts = []
        if self.when:
            parts.append("when " + " and ".join(c.describe() for c in self.when))
        if self.unless:
            parts.append("unless " + " or ".join(c.describe() for c in self.unless))
        return "; ".join(parts) or None

    def render(self, details: Mapping[str, str]) -> tuple[str, ...]:
        """The steps with each ``<name>`` replaced by the captured detail, where there is one."""
        if not details:
            return self.steps
        return tuple(_PLACEHOLDER.sub(lambda m: details.get(m.group(1), m.group(0)), step) for step in self.steps)


@dataclass(frozen=True)
class Problem:
    code: str
    title: str
    category: str
    severity: Severity
    patterns: tuple[re.Pattern[str], ...]
    fixes: tuple[Fix, ...]
    details: frozenset[str] = frozenset()  # detail names: its patterns' named groups and what derives from them


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


def _is_severity(value: object) -> TypeGuard[Severity]:
    return value in SEVERITIES


def _require(cond: object, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _str_field(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or value.strip() == "":
        raise ValueError(f"{where}: missing or empty {key!r}")
    return value


def _parse_condition(key: Any, raw: Any, where: str, details: frozenset[str]) -> Condition:
    _require(
        isinstance(key, str) and (key == TEXT or key in details),
        f"{where} names {key!r}, which is neither 'text' nor a detail the problem captures "
        f"({', '.join(sorted(details)) or 'none'})",
    )
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        raw = {"in": [raw]}  # `module_kind: third_party` is short for `{in: [third_party]}`
    elif isinstance(raw, list):
        raw = {"in": raw}  # and `module_kind: [own, stdlib]` for `{in: [own, stdlib]}`
    _require(
        isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in _OPERATORS,
        f"{where} {key}: use a value, a list or one of {{in: [...]}}, {{not_in: [...]}}, {{matches: regex}}, "
        "{not_matches: regex}",
    )
    op, arg = next(iter(raw.items()))
    if op in ("matches", "not_matches"):
        _require(isinstance(arg, str) and arg != "", f"{where} {key} {op}: needs a regex")
        try:
            return Condition(key, op, pattern=re.compile(arg, PATTERN_FLAGS))
        except re.error as exc:
            raise ValueError(f"{where} {key} {op} {arg!r} does not compile: {exc}") from None
    _require(
        isinstance(arg, list) and arg and all(isinstance(v, str | int) and not isinstance(v, bool) for v in arg),
        f"{where} {key} {op}: needs a non-empty list of values",
    )
    values = tuple(str(v).lower() for v in arg)
    if key == "module_kind":
        _require(set(values) <= MODULE_KINDS, f"{where}: module_kind is one of {', '.join(sorted(MODULE_KINDS))}")
    return Condition(key, op, values=values)


def _parse_fix(raw: Any, code: str, seen_ids: set[str], details: frozenset[str] = frozenset()) -> Fix:
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
    clauses: dict[str, tuple[Condition, ...]] = {}
    for kind in ("when", "unless"):
        raw_clauses = raw.get(kind, {})
        _require(isinstance(raw_clauses, dict), f"{where}: '{kind}' must be a mapping of detail -> condition")
        clauses[kind] = tuple(_parse_condition(k, v, f"{where} {kind}", details) for k, v in raw_clauses.items())
    unknown = set(raw) - {"id", "title", "steps", "prior", "when", "unless"}
    _require(not unknown, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Fix(
        id=fix_id, title=title, steps=tuple(steps), prior=float(prior), when=clauses["when"], unless=clauses["unless"]
    )


def _parse_problem(raw: Any, index: int, seen_codes: set[str], seen_fix_ids: set[str]) -> Problem:
    _require(isinstance(raw, dict), f"problems[{index}]: must be a mapping")
    code = raw.get("code")
    _require(
        isinstance(code, str) and bool(_CODE_RE.match(code)),
        f"problems[{index}]: bad code {code!r} (must match {_CODE_RE.pattern})",
    )
    where = f"problem {code}"
    _require(code != UNRECOGNISED, f"{where}: {UNRECOGNISED} is reserved for runs that match no problem")
    _require(code not in seen_codes, f"{where}: duplicate code")
    seen_codes.add(code)
    title = _str_field(raw, "title", where)
    category = raw.get("category")
    _require(category in CATEGORIES, f"{where}: bad category {category!r}")
    severity = raw.get("severity")
    if not _is_severity(severity):
        raise ValueError(f"{where}: bad severity {severity!r}")

    raw_patterns = raw.get("patterns")
    _require(isinstance(raw_patterns, list) and raw_patterns, f"{where}: needs at least one pattern")
    patterns: list[re.Pattern[str]] = []
    for pat in raw_patterns:
        _require(isinstance(pat, str) and pat != "", f"{where}: patterns must be non-empty strings")
        try:
            patterns.append(re.compile(pat, PATTERN_FLAGS))
        except re.error as exc:
            raise ValueError(f"{where}: pattern {pat!r} does not compile: {exc}") from None
        for name in patterns[-1].groupindex:
            _require(
                bool(_DETAIL_RE.match(name)) and name != TEXT and name not in DERIVED_FROM_MODULE,
                f"{where}: pattern {pat!r}: capture name {name!r} must be lower_snake and not "
                f"{', '.join((TEXT, *DERIVED_FROM_MODULE))}",
            )
    details = {name for p in patterns for name in p.groupindex}
    if "module" in details:
        details.update(DERIVED_FROM_MODULE)

    raw_fixes = raw.get("fixes")
    _require(isinstance(raw_fixes, list) and raw_fixes, f"{where}: has no fixes")
    fixes = tuple(_parse_fix(f, code, seen_fix_ids, frozenset(details)) for f in raw_fixes)
    # Something is always suggested: conditions only narrow the choice.
    _require(
        any(not (f.when or f.unless) for f in fixes), f"{where}: needs at least one fix without 'when' or 'unless'"
    )
    return Problem(
        code=code,
        title=title,
        category=category,
        severity=severity,
        patterns=tuple(patterns),
        fixes=fixes,
        details=frozenset(details),
    )


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
