"""Secret masking: every corpus shape is masked, key names survive, ordinary error text is untouched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_devdiag.redaction import MASK, redact

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "secrets_corpus.yaml").read_text(encoding="utf-8"))
SECRETS: list[dict[str, Any]] = CORPUS["secrets"]
UNCHANGED: list[str] = CORPUS["unchanged"]


def test_corpus_covers_at_least_30_distinct_shapes() -> None:
    shapes = [entry["shape"] for entry in SECRETS]
    assert len(shapes) >= 30
    assert len(set(shapes)) == len(shapes)
    # each secret really is in its line, so the masking test below is not vacuous
    assert all(entry["secret"] in entry["text"] for entry in SECRETS)


@pytest.mark.parametrize("entry", SECRETS, ids=[e["shape"] for e in SECRETS])
def test_secret_is_masked_and_context_kept(entry: dict[str, Any]) -> None:
    out = redact(entry["text"])
    assert entry["secret"] not in out
    assert MASK in out
    for kept in entry["keep"]:
        assert kept in out, f"lost {kept!r}: {out}"


@pytest.mark.parametrize("entry", SECRETS, ids=[e["shape"] for e in SECRETS])
def test_redaction_is_idempotent(entry: dict[str, Any]) -> None:
    once = redact(entry["text"])
    assert redact(once) == once


@pytest.mark.parametrize("line", UNCHANGED)
def test_ordinary_error_text_is_unchanged(line: str) -> None:
    assert redact(line) == line


def test_keeps_scheme_user_and_host_of_urls() -> None:
    assert redact("postgres://user:SECRET@host:5432/db") == "postgres://user:[REDACTED]@host:5432/db"


def test_all_secrets_in_one_multiline_paste() -> None:
    paste = "\n".join(["starting worker", *(entry["text"] for entry in SECRETS), "done"])
    out = redact(paste)
    leaked = [entry["shape"] for entry in SECRETS if entry["secret"] in out]
    assert not leaked
    assert out.splitlines()[0] == "starting worker" and out.splitlines()[-1] == "done"


def test_secret_on_a_line_far_from_others_in_a_big_log() -> None:
    noise = "\n".join(f"INFO request {i} served in {i % 50}ms" for i in range(3000))
    text = noise + "\nDATABASE_URL=postgres://app:FarAwaySecret@db/app\n" + noise
    out = redact(text)
    assert "FarAwaySecret" not in out
    assert len(out) == len(text) - len("FarAwaySecret") + len(MASK)


def test_big_paste_is_fast() -> None:
    # ~100 KB with many trigger words ("token", "key", "://") but few secrets
    line = "GET https://api.example.com/v1/items?page=2 200 key_count=3 token_ttl_seconds=30 user=42\n"
    text = line * (100_000 // len(line))
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 1.0
