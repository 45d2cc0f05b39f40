"""The team's memory: errors seen before, grouped by a normalised signature, with what fixed them.

Every run with error text is remembered in ``devdiag.error_memory``: one row per tenant and
*signature* (the lines that say what went wrong, with what differs between machines masked:
urls, e-mail addresses, uuids and hex ids, paths, hosts and ports, quoted names, numbers). A row
counts the runs of that signature, keeps the latest one, and the latest outcome a user recorded
for it with their note. ``diagnose`` finds the candidates by MinHash keys of the signature's words
(a GIN lookup) and returns the three nearest by pg_trgm similarity, so a lookup costs what the near
errors cost, not the tenant's history; a load groups its rows before it writes one upsert.

Rows belong to a tenant: the server's role reads and writes them under row-level security, like
``devdiag.diag_run``. No MCP imports here: the writer, the spool and bulk loads use it too.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

import psycopg

from devdiag_db.db import array_literal, scalar
from mcp_devdiag.catalog import UNRECOGNISED
from mcp_devdiag.redaction import redact

TABLE = "devdiag.error_memory"
NOTE_CAP = 500  # characters of a user's note: what fixed it, not a log
NOTE_REFUSED = 4 * NOTE_CAP  # longer than this, a note is a pasted log: refused, not cut
SIGNATURE_CAP = 300
SIMILAR_LIMIT = 3
# Below this trigram similarity a remembered error is another error (benchmarks/memory.py).
MIN_SIMILARITY = 0.3
_KEY_LINES = 3
_RETRY_UNAVAILABLE_S = 60.0

# What makes a line say what went wrong, in the words tools use.
_KEY_LINE = re.compile(
    r"error|exception|panic|fatal|fail|cannot|can't|could not|couldn't|unable|denied|refused|not found|"
    r"no such|invalid|undefined|unexpected|missing|timed? ?out|abort|killed|segmentation|violat|"
    r"not allowed|forbidden|unsupported|mismatch|conflict|deadlock|overflow",
    re.IGNORECASE,
)
# Lines every error of a tool ends with, whatever went wrong: they would make unrelated errors alike.
_GENERIC_LINE = re.compile(
    r"could not compile|previous errors?\b|for more information|most recent call last|^\s*at\s|"
    r"complete log of this run|exited with (?:code|status)|^\s*\^+\s*$|^\s*\|",
    re.IGNORECASE,
)
# Masks, in order: each turns what differs between machines and projects into one token.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE), "<url>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", re.IGNORECASE), "<hex>"),
    (re.compile(r"(?:\b[a-z]:)?(?:[\\/][\w.@~+-]+){2,}[\\/]?", re.IGNORECASE), "<path>"),  # absolute
    (re.compile(r"\b[\w.@~+-]+(?:[\\/][\w.@~+-]+)+"), "<path>"),  # relative
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:z|[+-]\d{2}:?\d{2})?)?\b"
            r"|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? +\d{1,2},? +\d{2}:\d{2}(?::\d{2})?\b",
            re.IGNORECASE,
        ),
        "<time>",
    ),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\[[0-9a-f]*:[0-9a-f:]+\](?::\d+)?", re.IGNORECASE), "<host>"),
    (re.compile(r"\b[\w-]+(?:\.[\w-]+)+:\d{2,5}\b"), "<host>"),
    # quoted names; an apostrophe inside a word (couldn't) opens no quote
    (re.compile(r"`[^`\n]{1,80}`|(?<!\w)'[^'\n]{1,80}?'(?!\w)|\"[^\"\n]{1,80}\"|‘[^’\n]{1,80}’|“[^”\n]{1,80}”"), "<q>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<n>"),
    (re.compile(r"\d+(?:[.,:]\d+)*"), "<n>"),
)
# Rules and banners (==== ──── ****): decoration, not the error.
_DECORATION = re.compile(r"([=\-*#~_─━═╡╞])\1{2,}|[═─━]{2,}|[╡╞║│]")
_SPACE = re.compile(r"\s+")
_MASK_TOKEN = re.compile(r"<[a-z]+>")
_WORD = re.compile(r"[a-z][a-z0-9_]{2,}")
# Words nearly every error has: they would make every error a candidate for every other.
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "not",
        "was",
        "are",
        "has",
        "have",
        "can",
        "cannot",
        "could",
        "couldn",
        "did",
        "does",
        "error",
        "errors",
        "failed",
        "fail",
        "failure",
        "fatal",
        "exception",
        "while",
        "this",
        "that",
        "into",
        "when",
        "then",
        "than",
        "your",
        "you",
        "but",
        "all",
        "any",
        "was",
        "were",
        "been",
        "will",
        "line",
        "file",
        "code",
        "exit",
        "status",
        "warn",
        "warning",
        "info",
        "debug",
    ]
)
_MINHASH_KEYS = 16  # a signature pair with word Jaccard 0.2 shares a key with probability 1 - 0.8**16 = 0.97
_PRIME = (1 << 61) - 1
_MINHASH = tuple(
    (
        random.Random(f"devdiag-minhash-{i}").randrange(1, _PRIME),
        random.Random(f"devdiag-minhash-b{i}").randrange(_PRIME),
    )
    for i in range(_MINHASH_KEYS)
)


@functools.lru_cache(maxsize=256)  # a diagnose asks twice (the lookup, then the writer's upsert)
def signature(text: str | None) -> str | None:
    """The normalised error of ``text``: its first key lines, masked, lowercased; None without text."""
    if not text:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    key = [line for line in lines if _KEY_LINE.search(line) and not _GENERIC_LINE.search(line)]
    picked: list[str] = []
    for line in key or lines[:_KEY_LINES]:
        masked = _mask(line)
        if masked and masked not in picked:
            picked.append(masked)
        if len(picked) == _KEY_LINES:
            break
    result = " | ".join(picked)[:SIGNATURE_CAP].strip()
    return result or None


def _mask(line: str) -> str:
    line = _DECORATION.sub(" ", line)
    for pattern, token in _MASKS:
        line = pattern.sub(token, line)
    return _SPACE.sub(" ", line).strip().lower()


def keys(tenant: str, sig: str) -> list[int]:
    """The MinHash keys of a signature's words, salted with the tenant: two signatures share a key
    with probability about the Jaccard similarity of their word sets (per key), so the candidates
    for "similar" are found by a GIN lookup (``lsh && keys``) whatever the memory's size."""
    return list(_keys(tenant, sig))


@functools.lru_cache(maxsize=4096)
def _keys(tenant: str, sig: str) -> tuple[int, ...]:
    # Cached: a team's errors recur, and each diagnose needs the keys twice (lookup, then upsert).
    words = {w for w in _WORD.findall(_MASK_TOKEN.sub(" ", sig)) if w not in _STOP} or {sig}
    hashes = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big") for w in words]
    salt = tenant.encode() + b"\x00"
    return tuple(
        int.from_bytes(
            hashlib.blake2b(
                salt + min((a * h + b) % _PRIME for h in hashes).to_bytes(8, "big"),
                digest_size=4,
                person=i.to_bytes(2, "big"),
            ).digest(),
            "big",
            signed=True,
        )
        for i, (a, b) in enumerate(_MINHASH)
    )


def clean_note(note: str | None) -> str | None:
    """A user's note as stored: redacted, whitespace collapsed, capped; None when blank."""
    if note is None:
        return None
    text = _SPACE.sub(" ", redact(note)).strip()
    if not text:
        return None
    return text if len(text) <= NOTE_CAP else text[: NOTE_CAP - 1] + "…"


# --- remembering runs -----------------------------------------------------------------------------


class Written(Protocol):
    """A diag_run row as the writer stored it (``writer.RunRow``): what the memory needs of it."""

    @property
    def run_id(self) -> uuid.UUID: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def problem_code(self) -> str | None: ...
    @property
    def error_msg(self) -> str | None: ...
    @property
    def resolution(self) -> str | None: ...
    @property
    def resolved_at(self) -> datetime | None: ...


_UPSERT = f"""
    insert into {TABLE} as m (tenant_id, signature, lsh, problem_code, runs, first_seen, last_seen, last_run_id,
                              outcome_run_id, resolution, resolved_at)
    select t, s, l::integer[], c, r, f, ls, lr, o, rs, ra
    from unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::timestamptz[],
                %s::uuid[], %s::uuid[], %s::text[], %s::timestamptz[]) as u(t, s, l, c, r, f, ls, lr, o, rs, ra)
    on conflict (tenant_id, signature) do update set
        runs = m.runs + excluded.runs,
        first_seen = least(m.first_seen, excluded.first_seen),
        last_seen = greatest(m.last_seen, excluded.last_seen),
        last_run_id = case when excluded.last_seen >= m.last_seen then excluded.last_run_id else m.last_run_id end,
        problem_code = case when excluded.last_seen >= m.last_seen then excluded.problem_code else m.problem_code end,
        -- a loaded outcome (no note) replaces only an older outcome without a note
        (outcome_run_id, resolution, resolved_at) = (
            select case when newer then excluded.outcome_run_id else m.outcome_run_id end,
                   case when newer then excluded.resolution else m.resolution end,
                   case when newer then excluded.resolved_at else m.resolved_at end
            from (select excluded.resolved_at > coalesce(m.resolved_at, '-infinity') and m.note is null as newer) as o
        )
"""


def remember(conn: psycopg.Connection, rows: Iterable[Written]) -> int:
    """Count the runs of ``rows`` (just inserted: a replayed row must not come here twice) under
    their signatures, in one statement; returns the signatures touched."""
    runs: dict[uuid.UUID, Written] = {}
    for row in rows:
        # A run's first finding (rows come in finding order) names its code; its text is shared.
        runs.setdefault(row.run_id, row)
    groups = _Groups()
    for run in runs.values():
        groups.add(
            run.tenant_id,
            run.error_msg,
            run.problem_code,
            runs=1,
            first=run.ts,
            last=run.ts,
            run_id=run.run_id,
            outcome_run=run.run_id,
            resolution=run.resolution,
            resolved_at=run.resolved_at,
        )
    return groups.upsert(conn)


def remember_since(conn: psycopg.Connection, since: datetime, tenant: str | None = None) -> int:
    """Remember the runs written since ``since`` (a bulk load's, read back through the BRIN index on
    changed_at): each distinct text fetched once with its counts, not every row."""
    rows = conn.execute(
        """
        select tenant_id, error_msg, (array_agg(problem_code order by ts desc, run_id desc))[1],
               count(*), min(ts), max(ts), (array_agg(run_id order by ts desc, run_id desc))[1],
               (array_agg(run_id order by resolved_at desc nulls last))[1],
               (array_agg(resolution order by resolved_at desc nulls last))[1], max(resolved_at)
        from (
            select distinct on (run_id) run_id, ts, tenant_id, problem_code, error_msg, resolution, resolved_at
            from devdiag.diag_run
            where changed_at >= %s and error_msg is not null and (%s::text is null or tenant_id = %s)
            order by run_id, id
        ) as runs
        group by tenant_id, error_msg
        """,
        (since, tenant, tenant),
    ).fetchall()
    groups = _Groups()
    for row in rows:
        groups.add(*row)
    return groups.upsert(conn)


@dataclass(slots=True)
class _Group:
    """The runs of one (tenant, signature) in a batch, as ``_UPSERT`` takes them (in this order)."""

    code: str | None  # of the latest run
    runs: int
    first_seen: datetime
    last_seen: datetime
    last_run: uuid.UUID
    outcome_run: uuid.UUID | None  # the latest outcome's run, resolution and time
    resolution: str | None
    resolved_at: datetime | None

    def columns(self) -> tuple:
        return (self.code, self.runs, self.first_seen, self.last_seen, self.last_run, self.outcome_run,
                self.resolution, self.resolved_at)  # fmt: skip


class _Groups:
    """Runs by (tenant, signature), merged, for one upsert."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], _Group] = {}
        self.signatures: dict[str, str | None] = {}  # a load repeats texts: normalise each once

    def add(
        self,
        tenant: str,
        text: str | None,
        code: str | None,
        runs: int,
        first: datetime,
        last: datetime,
        run_id: uuid.UUID,
        outcome_run: uuid.UUID | None = None,
        resolution: str | None = None,
        resolved_at: datetime | None = None,
    ) -> None:
        if text is None:
            return
        if text in self.signatures:
            sig = self.signatures[text]
        else:
            sig = self.signatures[text] = signature(text)
        if sig is None:
            return
        if resolved_at is None:
            outcome_run = resolution = None
        group = self.groups.get((tenant, sig))
        if group is None:
            self.groups[(tenant, sig)] = _Group(
                code, int(runs), first, last, run_id, outcome_run, resolution, resolved_at
            )
            return
        group.runs += int(runs)
        group.first_seen = min(group.first_seen, first)
        if (last, run_id.int) >= (group.last_seen, group.last_run.int):
            group.code, group.last_seen, group.last_run = code, last, run_id
        if resolved_at is not None and (group.resolved_at is None or resolved_at > group.resolved_at):
            group.outcome_run, group.resolution, group.resolved_at = outcome_run, resolution, resolved_at

    def upsert(self, conn: psycopg.Connection) -> int:
        if not self.groups:
            return 0
        # Sorted by key: two writers upserting the same signatures lock them in the same order.
        ordered = sorted(self.groups.items())
        conn.execute(
            _UPSERT,
            (
                array_literal(tenant for (tenant, _), _ in ordered),
                array_literal(sig for (_, sig), _ in ordered),
                array_literal(array_literal(keys(*key)) for key, _ in ordered),  # int[][] would unnest flat
                *map(array_literal, zip(*(group.columns() for _, group in ordered), strict=True)),
            ),
        )
        return len(ordered)


# --- outcomes and notes ---------------------------------------------------------------------------

_NOTE = f"""
    insert into {TABLE} as m (tenant_id, signature, lsh, problem_code, runs, first_seen, last_seen, last_run_id,
                              outcome_run_id, resolution, note, resolved_at)
    values (%(tenant)s, %(signature)s, %(lsh)s::integer[], %(code)s, 1, %(ts)s, %(ts)s, %(run)s, %(run)s,
            %(resolution)s, %(note)s, %(at)s)
    on conflict (tenant_id, signature) do update set
        outcome_run_id = excluded.outcome_run_id,
        resolution = excluded.resolution,
        note = coalesce(excluded.note, m.note),
        resolved_at = excluded.resolved_at
    where (m.resolved_at is null or m.resolved_at <= excluded.resolved_at)
      and (excluded.note is not null or m.note is null or m.outcome_run_id = excluded.outcome_run_id)
"""


class RunState(NamedTuple):
    """One row of a run as it is now (``run_rows``)."""

    id: uuid.UUID
    ts: datetime
    problem_code: str | None
    fix_suggestion: str | None
    error_msg: str | None
    tenant_id: str
    run_id: uuid.UUID
    resolution: str | None


_RUN_COLUMNS = "id, ts, problem_code, fix_suggestion, error_msg, tenant_id, run_id, resolution"
# By run or by a finding's run: two statements, each with a plan of its own that is kept.
_RUN_ROWS = {
    "run": f"""
        select {_RUN_COLUMNS} from devdiag.diag_run
        where run_id = %(target)s::uuid and (%(tenant)s::text is null or tenant_id = %(tenant)s)
        order by id
    """,
    "finding": f"""
        select {_RUN_COLUMNS} from devdiag.diag_run
        where run_id = (select f.run_id from devdiag.diag_run as f where f.id = %(target)s::uuid)
          and (%(tenant)s::text is null or tenant_id = %(tenant)s)
        order by id
    """,
}


def run_rows(
    conn: psycopg.Connection,
    *,
    tenant: str | None,
    run_id: uuid.UUID | str | None = None,
    finding_id: uuid.UUID | str | None = None,
) -> list[RunState]:
    """Every row of the run ``run_id``, or of the run of ``finding_id``, of ``tenant`` (any tenant when
    None: the owner's loads), in id order; [] when there is none."""
    which, target = ("run", run_id) if run_id is not None else ("finding", finding_id)
    rows = conn.execute(_RUN_ROWS[which], {"target": target, "tenant": tenant}).fetchall()
    return [RunState(*row) for row in rows]


def note_outcome(
    conn: psycopg.Connection,
    *,
    tenant: str | None,
    resolution: str,
    note: str | None,
    at: datetime,
    run_id: uuid.UUID | str | None = None,
    finding_id: uuid.UUID | str | None = None,
    rows: list[RunState] | None = None,
) -> bool:
    """Keep the outcome (and note) of a run with its signature: the next similar error shows it.

    Only an outcome that stands is kept: on a run with catalog findings, one of them must hold
    ``resolution`` (the writer recorded it); on an unrecognised run, anything but ``fixed`` (nothing
    was suggested). A later outcome replaces an earlier one, but an outcome without a note never
    hides a note another run left: the note is the knowledge. ``rows``: the run as ``run_rows`` read
    it after the outcome was written, when the caller has it. Returns whether it was kept.
    """
    if rows is None:
        rows = run_rows(conn, tenant=tenant, run_id=run_id, finding_id=finding_id)
    if not rows:
        return False
    findings = [r for r in rows if r.problem_code is not None and r.problem_code != UNRECOGNISED]
    first = rows[0]
    stands = any(r.resolution == resolution for r in findings) if findings else first.problem_code == UNRECOGNISED
    sig = signature(first.error_msg)
    if not stands or sig is None or (not findings and resolution == "fixed"):
        return False
    conn.execute(
        _NOTE,
        {
            "tenant": first.tenant_id,
            "signature": sig,
            "lsh": array_literal(keys(first.tenant_id, sig)),
            "code": first.problem_code,
            "ts": first.ts,
            "run": first.run_id,
            "resolution": resolution,
            "note": clean_note(note),
            "at": at,
        },
    )
    return True


# --- recalling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remembered:
    """An earlier error of the tenant like this one, and what became of it."""

    run_id: uuid.UUID
    code: str  # a catalog code or UNRECOGNISED
    similarity: float
    runs: int
    seen_at: datetime
    resolution: str | None
    note: str | None
    resolved_at: datetime | None


_RANKED = 32  # candidates that share the most keys, ranked by similarity (the near ones share many)
_SHARED = " + ".join(f"(lsh[{i}] = (%(keys)s::integer[])[{i}])::integer" for i in range(1, _MINHASH_KEYS + 1))
_SIMILAR = f"""
    select coalesce(outcome_run_id, last_run_id), coalesce(problem_code, %(unrecognised)s), sim, runs, last_seen,
           resolution, note, resolved_at
    from (
        select *, similarity(signature, %(signature)s) as sim
        from (
            -- key i is the minimum of hash i over the words: equal keys at one position estimate the
            -- words' Jaccard similarity, so a common word's crowd (one shared key) ranks last, cheaply
            select *, {_SHARED} as shared
            from {TABLE}
            where tenant_id = %(tenant)s and lsh && %(keys)s::integer[]
            order by shared desc, last_seen desc
            limit {_RANKED}
        ) as candidates
    ) as ranked
    where sim >= %(min_similarity)s
    order by sim desc, last_seen desc
    limit %(limit)s
"""


_READY = f"select to_regclass('{TABLE}') is not null and exists (select from pg_extension where extname = 'pg_trgm')"


class Memory:
    """Recall for one server process. Whether the database can answer (the table and pg_trgm there)
    is asked once, not with a savepoint around every lookup: a lost round trip on every diagnose."""

    def __init__(self) -> None:
        self._ready = False
        self._retry_at = 0.0

    def ready(self, conn: psycopg.Connection) -> bool:
        if self._ready or time.monotonic() < self._retry_at:
            return self._ready
        self._ready = bool(scalar(conn, _READY))
        self._retry_at = time.monotonic() + _RETRY_UNAVAILABLE_S
        return self._ready

    def similar(
        self, conn: psycopg.Connection, tenant: str, text: str | None, *, limit: int = SIMILAR_LIMIT
    ) -> list[Remembered]:
        """Up to ``limit`` earlier errors of ``tenant`` nearest to ``text``, nearest first (none when
        the database has no memory: `devdiag setup` makes it)."""
        sig = signature(text)
        if sig is None or not self.ready(conn):
            return []
        params = {
            "tenant": tenant,
            "signature": sig,
            "keys": array_literal(keys(tenant, sig)),
            "min_similarity": MIN_SIMILARITY,
            "limit": limit,
            "unrecognised": UNRECOGNISED,
        }
        return [
            Remembered(run, code, float(sim), int(runs), seen, resolution, note, resolved)
            for run, code, sim, runs, seen, resolution, note, resolved in conn.execute(_SIMILAR, params).fetchall()
        ]


def gaps(conn: psycopg.Connection, *, limit: int = 20, min_similarity: float = 0.5, scan: int = 1_000) -> list[dict]:
    """The largest groups of similar unrecognised errors across tenants: candidates for the catalog.

    Greedy grouping of the ``scan`` most frequent unrecognised signatures: each, largest first,
    gathers the others within ``min_similarity`` of it that no larger group took.
    """
    rows = conn.execute(
        f"""
        select signature, tenant_id, runs, last_seen, note, resolution
        from {TABLE}
        where problem_code = %s
        order by runs desc, last_seen desc
        limit %s
        """,
        (UNRECOGNISED, scan),
    ).fetchall()
    if not rows:
        return []
    sigs = [r[0] for r in rows]
    pairs = conn.execute(
        """
        select a.i, b.i
        from unnest(%s::text[]) with ordinality as a(s, i)
        join unnest(%s::text[]) with ordinality as b(s, i)
          on a.i < b.i and similarity(a.s, b.s) >= %s
        """,
        (sigs, sigs, min_similarity),
    ).fetchall()
    near: dict[int, list[int]] = {}
    for a, b in pairs:
        near.setdefault(a - 1, []).append(b - 1)
    taken: set[int] = set()
    groups: list[dict] = []
    for i, (sig, _tenant, _runs, _last, _note, _res) in enumerate(rows):
        if i in taken:
            continue
        members = [i, *(j for j in near.get(i, []) if j not in taken)]
        taken.update(members)
        notes: list[str] = []
        for j in sorted(members, key=lambda j: rows[j][3], reverse=True):
            if rows[j][4] and rows[j][4] not in notes and len(notes) < 3:
                notes.append(rows[j][4])
        groups.append(
            {
                "signature": sig,
                "runs": sum(int(rows[j][2]) for j in members),
                "signatures": len(members),
                "tenants": len({rows[j][1] for j in members}),
                "last_seen": max(rows[j][3] for j in members).isoformat(),
                "notes": notes,
                "examples": [rows[j][0] for j in members[1:3]],
            }
        )
    groups.sort(key=lambda g: (-g["runs"], g["signature"]))
    return groups[:limit]
