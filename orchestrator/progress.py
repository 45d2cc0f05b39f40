"""Progress for long commands: shown on a terminal (stderr), silent under --json, cron and pipes."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """A one-line progress display: ``with Progress("deleting", total=n, quiet=as_json) as p: p.advance(k)``.

    Writes to stderr only when it is a terminal, so cron logs and ``--json`` output stay clean.
    """

    def __init__(self, label: str, total: int | None = None, *, quiet: bool = False, unit: str = "rows") -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.enabled = not quiet and sys.stderr.isatty()
        self._started = time.monotonic()
        self._last_draw = 0.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def advance(self, amount: int = 1, *, note: str = "") -> None:
        self.done += amount
        self._draw(note=note)

    def step(self, note: str) -> None:
        """Name the current phase without counting anything."""
        self._draw(note=note, force=True)

    def _draw(self, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        count = f"{self.done:,}" + (f"/{self.total:,}" if self.total else "")
        pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        elapsed = now - self._started
        sys.stderr.write(f"\r\033[K{self.label}: {count} {self.unit}{pct} {elapsed:5.1f}s {note}")
        sys.stderr.flush()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self._draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()
