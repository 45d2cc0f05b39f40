"""Detect catalog problems in error text as developers paste it.

Pipeline: truncate -> normalize (ANSI, CRLF, quotes, Windows paths, spacing) -> for each catalog regex,
a cheap gate (a word it needs must be among the text's words) -> run it only on the lines around the
literal text it needs -> drop generic findings explained by a nearby specific one -> one Finding per
code, ordered by first position, with redacted evidence.

Why the gate and windows: Python regexes with IGNORECASE scan at ~0.1 us/char, so 300+ patterns over a
10 KB paste would take tens of milliseconds; the gate rejects almost all of them with set lookups.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp_devdiag.catalog import Catalog, load_catalog
from mcp_devdiag.redaction import redact

try:  # private sre internals: only used to derive the gates, so they stay optional
    import re._constants as _sre_c
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover
    _sre_parse = None

MAX_INPUT_CHARS = 100_000
EVIDENCE_MAX_CHARS = 200

# A specific code explains a generic one reported at (almost) the same place, e.g. a Postgres
# "connection refused" is DB_UNREACHABLE, not also CONNECTION_REFUSED. Values: generic code -> how far
# (in characters) from the specific match the generic one is still "the same event"; 0 = overlapping spans.
_NEAR = 300  # one log event: a long line or a few short ones
SHADOWS: dict[str, dict[str, int]] = {
    "CORS_PREFLIGHT_FAILED": {"CORS_BLOCKED": _NEAR},
    "DB_UNREACHABLE": {"CONNECTION_REFUSED": _NEAR, "REQUEST_TIMEOUT": _NEAR, "DNS_RESOLUTION_FAILED": _NEAR},
    "DB_TOO_MANY_CONNECTIONS": {"REQUEST_TIMEOUT": _NEAR},
    "DOCKER_PORT_ALLOCATED": {"PORT_IN_USE": _NEAR},
    "DOCKER_SOCKET_PERMISSION": {"PERMISSION_DENIED": _NEAR, "DOCKER_DAEMON_NOT_RUNNING": _NEAR},
    "FILE_WATCHER_LIMIT": {"DISK_FULL": _NEAR},
    "NPM_EACCES": {"PERMISSION_DENIED": _NEAR},
    "GIT_PUBLICKEY_DENIED": {"PERMISSION_DENIED": _NEAR},
    # webpack's "Module not found" next to tsc's TS2307 are two reports; only the same message is shadowed
    "TS_CANNOT_FIND_MODULE": {"NODE_MODULE_NOT_FOUND": 0},
    "PIP_SSL_ERROR": {"TLS_CERT_UNTRUSTED": _NEAR, "TLS_CERT_EXPIRED": _NEAR, "TLS_HOSTNAME_MISMATCH": _NEAR},
    "TLS_CERT_EXPIRED": {"TLS_CERT_UNTRUSTED": _NEAR},
    "TLS_HOSTNAME_MISMATCH": {"TLS_CERT_UNTRUSTED": _NEAR},
    "JS_HEAP_OOM": {"OOM_KILLED": _NEAR},
    "PY_VERSION_MISMATCH": {"PIP_NO_MATCHING_DIST": _NEAR},
}
_MAX_SPANS_PER_PATTERN = 50
# A pattern's match must lie within the lines around its literal text plus this many characters;
# catalog patterns are one-line or few-line shapes, so this only bounds the regex work.
_WINDOW_CONTEXT = 400
_MAX_WINDOWS = 20  # more occurrences than this: scan the whole text once instead


@dataclass(frozen=True)
class Finding:
    code: str
    evidence: str
    # What the patterns' named groups captured (first match first, later ones fill the gaps), as
    # matched in the text given; mcp_devdiag.details decides what of it is safe to show.
    captured: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- normalize
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Colour codes whose ESC byte was lost in a copy-paste ("[31m"); only common SGR codes, to spare "[5m]".
_BARE_SGR = re.compile(r"\[(?:0|1|2|22|3\d|4\d|9\d)(?:;\d{1,3})*m")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "«": '"', "»": '"'})
# C:\Users\me\My Project\x.py, \\server\share\x, .\node_modules\x; spaces only inside a path segment.
_WIN_PATH = re.compile(
    r"(?:\b[A-Za-z]:|\\\\[\w.$-]+|\.{1,2}(?=\\))(?:\\{1,2}[^\s\\'\"<>|*?]+(?: [^\s\\'\"<>|*?:]+(?=\\))*)+"
)
_BACKSLASHES = re.compile(r"\\+")
_ESCAPED_NEWLINE = re.compile(r"\\r\\n|\\n")


def _forward_slashes(m: re.Match[str]) -> str:
    path = m.group(0)
    unc = path.startswith("\\\\")  # \\server\share keeps its two leading slashes
    return ("//" if unc else "") + _BACKSLASHES.sub("/", path[2:] if unc else path)


def normalize(text: str) -> str:
    """Canonical form the catalog patterns are written against (each step skipped when it cannot apply)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "m" in text and "[" in text:
        text = _BARE_SGR.sub("", text)
    if not text.isascii():
        text = text.translate(_QUOTES)
    if "\\" in text:
        text = _WIN_PATH.sub(_forward_slashes, text)
        # JSON-encoded log records carry multi-line errors as literal "\n"; two or more: not a path.
        if text.count("\\n") >= 2:
            text = _ESCAPED_NEWLINE.sub("\n", text)
    # Collapse runs of blanks (and drop indentation) line by line; much faster than a regex.
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


# ---------------------------------------------------------------------------------------- gates
# Words are \w+ runs, the same split the regex \b makes.
_SEPARATORS = str.maketrans({c: " " for c in string.punctuation.replace("_", "")})
# Words too common in error text to gate on when a pattern offers anything better.
_COMMON_WORDS = frozenset(
    {
        *("a", "an", "and", "are", "at", "be", "by", "can", "cannot", "could", "delete", "error", "errors"),
        *("failed", "for", "found", "from", "get", "has", "have", "head", "http", "https", "in", "is", "no"),
        *("not", "of", "on", "options", "patch", "post", "put", "server", "the", "this", "to", "was", "with"),
        *("you", "your", "code", "user", "file", "does", "been", "such", "out", "use", "key", "find", "line"),
    }
)


_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    if text.isascii():  # fast path; same result as \w+ for ASCII
        return text.translate(_SEPARATORS).split()
    return _WORD.findall(text)  # "•EACCES" must yield "eacces", as \b sees it


@dataclass(frozen=True)
class _Needle:
    literal: str  # lower-case text every match of the alternative contains
    word: str | None  # a whole word of `literal`: checked against the text's word set first

    @property
    def score(self) -> int:
        if self.word is not None and self.word not in _COMMON_WORDS:
            return 100 + len(self.word)
        return (20 if self.word else 0) + min(len(self.literal), 30)


Requirement = tuple[_Needle, ...]  # a match contains at least one of these


def _is_separator(ch: str) -> bool:
    return not (ch.isalnum() or ch == "_")


def _needle(literal: str, left_bounded: bool, right_bounded: bool) -> _Needle | None:
    low = literal.lower()
    if len(low) < 3:
        return None
    words = _words(low)
    # A word at an edge of the literal is whole only if the pattern bounds it there (\b or punctuation).
    whole = [
        w
        for i, w in enumerate(words)
        if (i > 0 or left_bounded or _is_separator(low[0]))
        and (i < len(words) - 1 or right_bounded or _is_separator(low[-1]))
    ]
    word = max(whole, key=lambda w: (w not in _COMMON_WORDS, len(w)), default=None)
    return _Needle(low, word if word and len(word) >= 3 else None)


def _best(candidates: Sequence[Requirement]) -> Requirement | None:
    # The most selective requirement is the one whose weakest alternative scores highest.
    return max(candidates, key=lambda req: min(n.score for n in req), default=None)


def _class_chars(items: Iterable[tuple[Any, Any]]) -> list[str] | None:
    """The characters of a small character class made of plain literals, e.g. [0234]."""
    chars = []
    for op, av in items:
        if op is not _sre_c.LITERAL:
            return None
        chars.append(chr(av))
    return chars if len(chars) <= 16 else None


def _requirement(items: Iterable[tuple[Any, Any]], left: bool = False, right: bool = False) -> Requirement | None:
    """Cheapest reliable gate for a parsed regex sequence: a literal run, or one literal per branch."""
    # ("lit", text) | ("alts", texts) | ("b", None) | ("op", (op, av)); "alts" comes from sre factoring
    # (500|502|503) into 50[023]: a literal followed by a small character class is expanded back.
    parts: list[tuple[str, Any]] = []  # (kind, value): the value's type follows the kind
    for op, av in items:
        kind = parts[-1][0] if parts else None
        if op is _sre_c.LITERAL:
            ch = chr(av)
            if kind == "lit":
                parts[-1] = ("lit", parts[-1][1] + ch)
            elif kind == "alts":
                parts[-1] = ("alts", tuple(a + ch for a in parts[-1][1]))
            else:
                parts.append(("lit", ch))
        elif op is _sre_c.IN and kind == "lit" and (chars := _class_chars(av)) is not None:
            parts[-1] = ("alts", tuple(parts[-1][1] + c for c in chars))
        elif op is _sre_c.AT and av is not _sre_c.AT_NON_BOUNDARY:  # \b, ^, $: a word edge
            parts.append(("b", None))
        else:
            parts.append(("op", (op, av)))

    def bounded(i: int, edge: bool, side: int) -> bool:
        j = i + side
        if not 0 <= j < len(parts):
            return edge
        kind, value = parts[j]
        return kind == "b" or (kind == "lit" and _is_separator(value[0 if side > 0 else -1]))

    candidates: list[Requirement] = []
    for i, (kind, value) in enumerate(parts):
        lb, rb = bounded(i, left, -1), bounded(i, right, +1)
        sub: Requirement | None = None
        if kind == "lit":
            needle = _needle(value, lb, rb)
            sub = (needle,) if needle else None
        elif kind == "alts":
            needles = [n for alt in value if (n := _needle(alt, lb, rb))]
            sub = tuple(needles) if len(needles) == len(value) else None  # every branch needs a needle
        elif kind == "op":
            op, av = value
            if op is _sre_c.SUBPATTERN:
                sub = _requirement(av[3], lb, rb)
            elif op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT, _sre_c.POSSESSIVE_REPEAT) and av[0] >= 1:
                sub = _requirement(av[2], False, False)
            elif op is _sre_c.BRANCH:
                branches = [b for branch in av[1] if (b := _requirement(branch, lb, rb))]
                if len(branches) == len(av[1]):  # every branch gated, else the alternation is not
                    sub = tuple(n for b in branches for n in b)
        if sub:
            candidates.append(sub)
    return _best(candidates)


def _gate(pattern: re.Pattern[str]) -> Requirement | None:
    if _sre_parse is None:  # pragma: no cover - interpreter without the private parser
        return None
    try:
        return _requirement(_sre_parse.parse(pattern.pattern, pattern.flags))
    except Exception:  # pragma: no cover - no gate is always correct, just slower
        return None


@dataclass(frozen=True)
class _Rule:
    code: str
    order: int
    pattern: re.Pattern[str]
    gate: Requirement | None  # None = always run the regex over the whole text


@dataclass(frozen=True)
class _Index:
    """Rules plus lookup tables so a call only touches rules whose gate can pass."""

    rules: tuple[_Rule, ...]
    by_word: dict[str, tuple[int, ...]]  # gate word -> indexes of rules with a needle on that word
    by_literal: tuple[tuple[str, tuple[int, ...]], ...]  # needles without a word: literal -> rule indexes
    ungated: tuple[int, ...]

    def candidates(self, words: frozenset[str], lower: str) -> list[int]:
        found = set(self.ungated)
        for word in words & self.by_word.keys():
            found.update(self.by_word[word])
        for literal, indexes in self.by_literal:
            if literal in lower:
                found.update(indexes)
        return sorted(found)


@functools.lru_cache(maxsize=8)
def _build_index(catalog: Catalog) -> _Index:
    rules = tuple(
        _Rule(problem.code, order, pattern, _gate(pattern))
        for order, problem in enumerate(catalog)
        for pattern in problem.patterns
    )
    by_word: dict[str, list[int]] = {}
    by_literal: dict[str, list[int]] = {}
    ungated: list[int] = []
    for i, rule in enumerate(rules):
        if rule.gate is None:
            ungated.append(i)
            continue
        for needle in rule.gate:
            if needle.word is not None:
                by_word.setdefault(needle.word, []).append(i)
            else:
                by_literal.setdefault(needle.literal, []).append(i)
    return _Index(
        rules,
        {w: tuple(ix) for w, ix in by_word.items()},
        tuple((lit, tuple(ix)) for lit, ix in by_literal.items()),
        tuple(ungated),
    )


def _default_index() -> _Index:
    return _build_index(load_catalog())


# ---------------------------------------------------------------------------------------- matching
Span = tuple[int, int, _Rule, dict[str, str | None]]


class _Text:
    """The normalized text plus lazily computed lookups shared by all rules of one classify() call."""

    def __init__(self, norm: str) -> None:
        self.norm = norm
        lower = norm.lower()
        self.lower = lower if len(lower) == len(norm) else None  # offsets must line up with `norm`
        self.words = frozenset(_words(lower))
        self._positions: dict[str, list[int] | None] = {}

    def positions(self, literal: str) -> list[int] | None:
        """Start offsets of `literal`; None when too many to be worth windowing."""
        if literal not in self._positions:
            found: list[int] = []
            if self.lower is None:
                found = [0] * (_MAX_WINDOWS + 1)
            else:
                at = self.lower.find(literal)
                while at != -1 and len(found) <= _MAX_WINDOWS:
                    found.append(at)
                    at = self.lower.find(literal, at + 1)
            self._positions[literal] = found if len(found) <= _MAX_WINDOWS else None
        return self._positions[literal]

    def windows(self, gate: Requirement | None) -> list[tuple[int, int]]:
        """Disjoint (start, end) ranges the rule's regex must search; empty when the gate fails."""
        whole = [(0, len(self.norm))]
        if gate is None:
            return whole
        ranges: list[tuple[int, int]] = []
        for needle in gate:
            if needle.word is not None and needle.word not in self.words:
                continue
            positions = self.positions(needle.literal)
            if positions is None:
                return whole
            norm = self.norm
            for at in positions:
                start = norm.rfind("\n", 0, max(0, at - _WINDOW_CONTEXT)) + 1
                end = norm.find("\n", min(len(norm), at + len(needle.literal) + _WINDOW_CONTEXT))
                ranges.append((start, len(norm) if end == -1 else end))
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for start, end in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


def _collect_spans(text: _Text, index: _Index) -> dict[str, list[Span]]:
    spans: dict[str, list[Span]] = {}
    for i in index.candidates(text.words, text.lower if text.lower is not None else text.norm.lower()):
        rule = index.rules[i]
        found = 0
        for start, end in text.windows(rule.gate):
            for m in rule.pattern.finditer(text.norm, start, end):
                groups = m.groupdict() if rule.pattern.groupindex else {}
                spans.setdefault(rule.code, []).append((m.start(), m.end(), rule, groups))
                found += 1
                if found >= _MAX_SPANS_PER_PATTERN:
                    break
            if found >= _MAX_SPANS_PER_PATTERN:
                break
    return spans


def _first_unshadowed(code: str, spans: dict[str, list[Span]]) -> Span | None:
    shadowing = [
        (s - distance, e + distance)
        for specific, generics in SHADOWS.items()
        if (distance := generics.get(code)) is not None and specific in spans
        for s, e, *_ in spans[specific]
    ]
    for span in sorted(spans[code], key=lambda t: t[0]):
        start, end = span[0], span[1]
        if not any(lo <= end and start <= hi for lo, hi in shadowing):
            return span
    return None


def _evidence(norm: str, start: int, rule: _Rule) -> str:
    line_start = norm.rfind("\n", 0, start) + 1
    line_end = norm.find("\n", start)
    line = redact(norm[line_start : line_end if line_end != -1 else len(norm)].strip())
    if len(line) <= EVIDENCE_MAX_CHARS:
        return line
    # Redaction shifts offsets, so find the match again in the redacted line to centre the window.
    m = rule.pattern.search(line)
    begin = max(0, min(m.start() - 40 if m else 0, len(line) - EVIDENCE_MAX_CHARS))
    return line[begin : begin + EVIDENCE_MAX_CHARS].strip()


def classify(text: str, catalog: Catalog | None = None) -> list[Finding]:
    """Findings for every catalog problem in `text`, one per code, in order of first appearance.

    Input beyond MAX_INPUT_CHARS is ignored (the caller reports the truncation).
    """
    if not text:
        return []
    prepared = _Text(normalize(text[:MAX_INPUT_CHARS]))
    index = _default_index() if catalog is None else _build_index(catalog)
    spans = _collect_spans(prepared, index)
    chosen = [(span, code) for code in spans if (span := _first_unshadowed(code, spans)) is not None]
    chosen.sort(key=lambda item: (item[0][0], item[0][2].order))
    return [
        Finding(code, _evidence(prepared.norm, span[0], span[2]), _captured(span, spans[code])) for span, code in chosen
    ]


def _captured(first: Span, spans: list[Span]) -> dict[str, str]:
    captured: dict[str, str] = {}
    for span in (first, *sorted(spans, key=lambda t: t[0])):
        for name, value in span[3].items():
            if value and name not in captured:
                captured[name] = value
    return captured
