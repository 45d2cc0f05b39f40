"""Read the SQL blocks of an operations runbook (Markdown), with the section each stands in."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SqlBlock:
    section: str
    heading: str
    line: int
    sql: str


def sql_blocks(markdown: str) -> list[SqlBlock]:
    blocks: list[SqlBlock] = []
    section = heading = ""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("###"):
            heading = line.lstrip("#").strip()
        elif line.strip().startswith("```sql"):
            body = []
            start = i + 1
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(SqlBlock(section, heading, start, textwrap.dedent("\n".join(body)).strip() + "\n"))
        i += 1
    return blocks


def spec_runbook() -> Path | None:
    """The spec runbook in ../shared, when this checkout has it beside it."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "spec" / "operations-runbook.md"
    return candidate if candidate.is_file() else None
