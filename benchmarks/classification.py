#!/usr/bin/env python3
"""Classifier quality and speed over the labelled corpus (tests/python/data/error_corpus.yaml).

Each corpus item predicts its first finding's code (or none). Prints the per-code confusion summary
(tp/fp/fn), precision = correct non-none predictions / all non-none predictions, recall = correct
non-none predictions / items whose expected code is not none, the misclassified items, and
classify() latency p50/p99 over the corpus plus a synthetic 10 KB log.

    python benchmarks/classification.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

from mcp_devdiag.classifier import classify  # noqa: E402

CORPUS = ROOT / "tests" / "python" / "data" / "error_corpus.yaml"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timing passes over the corpus (default 20)")
    args = parser.parse_args()

    items = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["items"]
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    wrong = []
    for item in items:
        found = classify(item["text"])
        predicted, expected = (found[0].code if found else "none"), item["expected"]
        if predicted == expected:
            if expected != "none":
                tp[expected] += 1
            continue
        wrong.append((expected, predicted, item["source"]))
        if predicted != "none":
            fp[predicted] += 1
        if expected != "none":
            fn[expected] += 1

    positives = sum(1 for item in items if item["expected"] != "none")
    predicted_total = sum(tp.values()) + sum(fp.values())
    correct = sum(tp.values())
    precision = correct / predicted_total if predicted_total else 0.0
    recall = correct / positives if positives else 0.0

    print(f"corpus: {len(items)} items, {positives} with a code, {len(items) - positives} labelled none")
    print(f"\n{'code':<28} {'tp':>4} {'fp':>4} {'fn':>4}")
    for code in sorted(set(tp) | set(fp) | set(fn)):
        print(f"{code:<28} {tp[code]:>4} {fp[code]:>4} {fn[code]:>4}")
    print(f"\nprecision {precision:.3f} ({correct}/{predicted_total})   recall {recall:.3f} ({correct}/{positives})")
    if wrong:
        print("\nmisclassified (expected -> predicted: source):")
        for expected, predicted, source in wrong:
            print(f"  {expected} -> {predicted}: {source}")

    texts = [item["text"] for item in items]
    corpus_times = latency(texts, args.repeat)
    log = synthetic_log()
    log_times = latency([log], max(args.repeat * 5, 50))
    print(
        f"\nclassify() latency over the corpus ({len(corpus_times)} calls, texts of "
        f"{min(map(len, texts))}-{max(map(len, texts))} chars): "
        f"p50 {percentile(corpus_times, 0.5) * 1e6:.0f} us, p99 {percentile(corpus_times, 0.99) * 1e6:.0f} us"
    )
    print(
        f"classify() latency on a {len(log) / 1000:.1f} KB log with one error ({len(log_times)} calls): "
        f"p50 {statistics.median(log_times) * 1e6:.0f} us, p99 {percentile(log_times, 0.99) * 1e6:.0f} us"
    )


if __name__ == "__main__":
    main()
