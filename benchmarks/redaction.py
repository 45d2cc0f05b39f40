#!/usr/bin/env python3
"""redact() time on realistic and hostile pastes of 10 kB, 100 kB and 1 MB.

Each input is redacted `--repeat` times after one warm-up; the table shows the median CPU time and
its ratio to the previous size (the ratio of the sizes when linear: x10 from 100 kB to 1 MB; its
square when quadratic).
Inputs: a realistic log (requests, warnings, a stack trace, a few secrets of the corpus) and hostile
texts built to make a backtracking rule scan the same characters again and again (the three quadratic
cases of the old rules first). `--module FILE` times another redaction.py, e.g. the previous version:

    git show HEAD~1:mcp_devdiag/redaction.py > /tmp/old_redaction.py
    python benchmarks/redaction.py --module /tmp/old_redaction.py --sizes 10000,20000,40000

    python benchmarks/redaction.py [--sizes 10000,100000,1000000] [--repeat 3] [--max-seconds 20] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

CORPUS = ROOT / "tests" / "python" / "data" / "secrets_corpus.yaml"


def realistic(n: int) -> str:
    """A log as developers paste it: mostly requests, some warnings and trace lines, one secret in 50."""
    secrets = [entry["text"] for entry in yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["secrets"]]
    lines = []
    i = 0
    while sum(map(len, lines)) < n:
        kind = i % 50
        if kind == 49:
            lines.append(secrets[(i // 50) % len(secrets)] + "\n")
        elif kind % 10 == 7:
            lines.append(
                f"2024-03-12T10:00:{i % 60:02d}Z WARN [w{i % 8}] token refresh took {i % 900}ms (key_id={i})\n"
            )
        elif kind % 10 == 8:
            lines.append(f'  File "/app/api/handlers.py", line {i % 400}, in handle_{i % 13}\n')
        else:
            lines.append(
                f"2024-03-12T10:00:{i % 60:02d}Z INFO [w{i % 8}] GET https://api.example.com/v1/items?page={i} "
                f"200 {i % 97}ms user=42\n"
            )
        i += 1
    return "".join(lines)[:n]


HOSTILE: dict[str, Callable[[int], str]] = {
    "URL scheme run then :// (old: quadratic)": lambda n: "a-" * (n // 2) + "://",
    "mysql words, no -p (old: quadratic)": lambda n: "mysql " * (n // 6),
    "PEM BEGIN lines, no END (old: quadratic)": lambda n: "-----BEGIN PRIVATE KEY-----" * (n // 27),
    "URL credentials without @": lambda n: "://a:" * (n // 5),
    "JWT-like run": lambda n: "eyJ-" * (n // 4),
    "unclosed quoted values": lambda n: 'password="' * (n // 10),
    "masked values after keys": lambda n: "pwd=pwd=" * (n // 8) + "[REDACTED]",
    "key=value pair per line": lambda n: "api_key=abc\n" * (n // 12),
    "connection-string pairs": lambda n: "pwd=a b;" * (n // 8),
    "cookie pairs": lambda n: "Cookie: a=b; c=d\n" * (n // 17),
    "bearer without digits": lambda n: "Bearer " + "a" * n,
    "long password run": lambda n: "postgres://u:" + "p" * n,
}


def load_redact(module: str | None) -> Callable[[str], str]:
    if module is None:
        from mcp_devdiag.redaction import redact

        return redact
    spec = importlib.util.spec_from_file_location("redaction_under_test", module)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {module}: pass the path of a redaction.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up
    spec.loader.exec_module(loaded)
    return loaded.redact


def timed(redact: Callable[[str], str], text: str, repeat: int, slow: float) -> float:
    start = time.process_time()
    redact(text)  # warm-up, and the only run when it is slow
    if (first := time.process_time() - start) > slow:
        return first
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        redact(text)
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="input sizes in characters, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per input (default 3; the median)")
    parser.add_argument("--module", help="time this redaction.py instead of mcp_devdiag.redaction")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="skip larger sizes after a slower run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise SystemExit(f"--sizes {args.sizes!r}: pass sizes in characters, e.g. 10000,100000,1000000") from None

    redact = load_redact(args.module)
    inputs: dict[str, Callable[[int], str]] = {"realistic log": realistic, **HOSTILE}
    figures = []
    for name, make in inputs.items():
        row: dict[str, float | None] = {}
        too_slow = False
        for size in sizes:
            # larger sizes are skipped after a slow run: a quadratic rule at 1 MB would take hours
            seconds = None if too_slow else timed(redact, make(size), args.repeat, args.max_seconds / 10)
            row[str(size)] = seconds
            too_slow = too_slow or (seconds is not None and seconds > args.max_seconds / 10)
        figures.append({"input": name, "seconds": row})
        if not args.json:
            print(
                f"  {name}: " + ", ".join("-" if s is None else f"{s * 1000:.1f} ms" for s in row.values()), flush=True
            )

    if args.json:
        print(
            json.dumps({"module": args.module or "mcp_devdiag.redaction", "sizes": sizes, "figures": figures}, indent=2)
        )
        return
    print(f"\nredact() median CPU time ({args.module or 'mcp_devdiag.redaction'}), ratio to the previous size")
    header = f"{'input':<42}" + "".join(f"{f'{size:,} chars':>22}" for size in sizes)
    print(header)
    for figure in figures:
        cells, previous = [], None
        for size in sizes:
            seconds = figure["seconds"][str(size)]
            if seconds is None:
                cells.append(f"{'skipped':>22}")
                continue
            ratio = f" (x{seconds / previous:.0f})" if previous else ""
            cells.append(f"{f'{seconds * 1000:.1f} ms{ratio}':>22}")
            previous = seconds if seconds > 0 else None
        print(f"{figure['input']:<42}" + "".join(cells))
    worst = max((s, f["input"], size) for f in figures for size, s in f["seconds"].items() if s is not None)
    print(f"\nslowest: {worst[1]} at {int(worst[2]):,} chars, {worst[0] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
