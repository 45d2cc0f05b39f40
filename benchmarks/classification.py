#!/usr/bin/env python3
"""Classifier quality and speed over the labelled corpus (tests/python/data/error_corpus.yaml).

Each corpus item predicts its first finding's code (or none). Prints, per catalog code: n (items labelled
with it), tp/fp/fn, precision = tp / (tp + fp) and recall = tp / n, flagging codes below either bar;
then overall precision = correct non-none predictions / all non-none predictions, recall = correct
non-none predictions / items whose expected code is not none, the near misses (items labelled none)
that raised a finding, the misclassified items, and classify() latency p50/p99 over the corpus plus a
synthetic 10 KB log. --json prints the same figures as one JSON object.

    python benchmarks/classification.py [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

from mcp_devdiag.catalog import load_catalog  # noqa: E402
from mcp_devdiag.classifier import classify  # noqa: E402

CORPUS = ROOT / "tests" / "python" / "data" / "error_corpus.yaml"
# The bars of issue #14 (also asserted by tests/python/test_classifier.py): overall and per code.
MIN_PRECISION = 0.95
MIN_RECALL = 0.90


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(texts: list[str], repeat: int) -> list[float]:
    for text in texts:  # warm-up: builds the rule index once
        classify(text)
    samples = []
    for _ in range(repeat):
        for text in texts:
            start = time.perf_counter()
            classify(text)
            samples.append(time.perf_counter() - start)
    return samples


def synthetic_log() -> str:
    lines = [
        f"2024-03-12T10:00:{i % 60:02d}Z INFO [w{i % 8}] GET /api/items?page={i} 200 {i % 97}ms" for i in range(160)
    ]
    return "\n".join([*lines[:150], "Error: connect ECONNREFUSED 127.0.0.1:5432", *lines[150:]])


def ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def quality(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-code and overall precision/recall; a code nobody predicted has precision None (no claim made)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    labelled: Counter[str] = Counter(item["expected"] for item in items)
    wrong = []
    for item in items:
        found = classify(item["text"])
        predicted, expected = (found[0].code if found else "none"), item["expected"]
        if predicted == expected:
            if expected != "none":
                tp[expected] += 1
            continue
        wrong.append({"expected": expected, "predicted": predicted, "source": item["source"]})
        if predicted != "none":
            fp[predicted] += 1
        if expected != "none":
            fn[expected] += 1

    rows = []
    for code in sorted({p.code for p in load_catalog()} | set(tp) | set(fp) | set(fn)):
        precision, recall = ratio(tp[code], tp[code] + fp[code]), ratio(tp[code], labelled[code])
        flagged = (precision is not None and precision < MIN_PRECISION) or (recall or 0.0) < MIN_RECALL
        rows.append(
            {
                "code": code,
                "n": labelled[code],
                "tp": tp[code],
                "fp": fp[code],
                "fn": fn[code],
                "precision": precision,
                "recall": recall,
                "flagged": flagged,
            }
        )
    positives = len(items) - labelled["none"]
    correct, predicted_total = sum(tp.values()), sum(tp.values()) + sum(fp.values())
    return {
        "items": len(items),
        "positives": positives,
        "near_misses": labelled["none"],
        "near_misses_matched": sum(1 for w in wrong if w["expected"] == "none"),
        "correct": correct,
        "predicted": predicted_total,
        "precision": ratio(correct, predicted_total) or 0.0,
        "recall": ratio(correct, positives) or 0.0,
        "codes": rows,
        "flagged": [row["code"] for row in rows if row["flagged"]],
        "misclassified": wrong,
    }


def fmt(value: float | None) -> str:
    return "    -" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timing passes over the corpus (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    items = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["items"]
    report = quality(items)

    texts = [item["text"] for item in items]
    corpus_times = latency(texts, args.repeat)
    log = synthetic_log()
    log_times = latency([log], max(args.repeat * 5, 50))
    report["latency_us"] = {
        "corpus": {
            "calls": len(corpus_times),
            "p50": round(percentile(corpus_times, 0.5) * 1e6, 1),
            "p99": round(percentile(corpus_times, 0.99) * 1e6, 1),
        },
        "log_10kb": {
            "calls": len(log_times),
            "kb": round(len(log) / 1000, 1),
            "p50": round(statistics.median(log_times) * 1e6, 1),
            "p99": round(percentile(log_times, 0.99) * 1e6, 1),
        },
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return

    print(
        f"corpus: {report['items']} items, {report['positives']} with a code, "
        f"{report['near_misses']} near misses labelled none"
    )
    print(f"\n{'code':<28} {'n':>4} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7}")
    for row in report["codes"]:
        flag = "  <- below bar" if row["flagged"] else ""
        print(
            f"{row['code']:<28} {row['n']:>4} {row['tp']:>4} {row['fp']:>4} {row['fn']:>4} "
            f"{fmt(row['precision']):>9} {fmt(row['recall']):>7}{flag}"
        )
    print(
        f"\nprecision {report['precision']:.3f} ({report['correct']}/{report['predicted']})   "
        f"recall {report['recall']:.3f} ({report['correct']}/{report['positives']})   "
        f"near misses matched {report['near_misses_matched']}/{report['near_misses']}"
    )
    print(
        f"codes below precision {MIN_PRECISION} or recall {MIN_RECALL}: "
        f"{', '.join(report['flagged']) if report['flagged'] else 'none'}"
    )
    if report["misclassified"]:
        print("\nmisclassified (expected -> predicted: source):")
        for w in report["misclassified"]:
            print(f"  {w['expected']} -> {w['predicted']}: {w['source']}")

    sizes = list(map(len, texts))
    on_corpus, on_log = report["latency_us"]["corpus"], report["latency_us"]["log_10kb"]
    print(
        f"\nclassify() latency over the corpus ({on_corpus['calls']} calls, texts of {min(sizes)}-{max(sizes)} chars): "
        f"p50 {on_corpus['p50']:.0f} us, p99 {on_corpus['p99']:.0f} us"
    )
    print(
        f"classify() latency on a {on_log['kb']} KB log with one error ({on_log['calls']} calls): "
        f"p50 {on_log['p50']:.0f} us, p99 {on_log['p99']:.0f} us"
    )


if __name__ == "__main__":
    main()
