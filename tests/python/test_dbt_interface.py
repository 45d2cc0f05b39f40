"""The dbt project's public interface is declared and enforced: the seven v_* views are public with
enforced contracts, every model has a key test, every macro and generic test is documented, and
every source table has a freshness rule or says why not."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import own_database

from devdiag_db.config import project_dir
from orchestrator.contract import PUBLIC_VIEWS

ROOT = project_dir()
KEY_TESTS = {"unique", "unique_combination_of_columns"}


def _properties(folder: str, key: str) -> dict[str, dict]:
    """Every entry under ``key`` (models, macros, sources) of the YAML files below ``folder``."""
    found: dict[str, dict] = {}
    for path in sorted((ROOT / folder).rglob("*.yml")):
        for entry in yaml.safe_load(path.read_text()).get(key) or []:
            found[entry["name"]] = {**entry, "_file": path.relative_to(ROOT).as_posix()}
    return found


MODELS = _properties("models", "models")


def _test_names(tests: list) -> set[str]:
    return {next(iter(t)) if isinstance(t, dict) else t for t in tests or []}


def test_every_model_file_is_documented_with_every_column():
    files = {p.stem: p for p in (ROOT / "models").rglob("*.sql")}
    assert files.keys() == MODELS.keys()
    for name, model in MODELS.items():
        assert model.get("description"), name
        assert model.get("columns") and all(c.get("description") for c in model["columns"]), name


@pytest.mark.parametrize("view", PUBLIC_VIEWS)
def test_public_views_are_public_with_an_enforced_contract(view: str):
    model = MODELS[view]
    assert model["_file"] == "models/marts/_marts.yml"
    assert model.get("access") == "public"
    assert model["config"]["contract"]["enforced"] is True
    untyped = [c["name"] for c in model["columns"] if not c.get("data_type")]
    assert not untyped, f"{view}: columns without data_type: {untyped}"


def test_only_the_public_views_live_in_marts():
    marts = {p.stem for p in (ROOT / "models" / "marts").glob("*.sql")}
    assert marts == set(PUBLIC_VIEWS)  # health_checks is monitoring, not something people query
    assert MODELS["health_checks"]["_file"] == "models/monitoring/_monitoring.yml"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_a_key_test(name: str):
    model = MODELS[name]
    keyed = _test_names(model.get("data_tests")) & KEY_TESTS
    keyed |= {c["name"] for c in model["columns"] if "unique" in _test_names(c.get("data_tests"))}
    assert keyed, f"{name} has no unique or unique_combination_of_columns test"


def _macro_signatures(folder: str, prefix: str = "") -> dict[str, list[str]]:
    found = {}
    for path in (ROOT / folder).glob("*.sql"):
        for kind, name, args in re.findall(r"\{%-?\s*(macro|test)\s+(\w+)\(([^)]*)\)", path.read_text()):
            key = f"test_{name}" if kind == "test" else name
            found[prefix + key] = [a.split("=")[0].strip() for a in args.split(",") if a.strip()]
    return found


@pytest.mark.parametrize(("folder", "yml"), [("macros", "macros"), ("tests/generic", "tests/generic")])
def test_every_macro_and_generic_test_is_documented_with_its_arguments(folder: str, yml: str):
    documented = _properties(yml, "macros")
    signatures = _macro_signatures(folder)
    assert signatures and signatures.keys() == documented.keys()
    for name, args in signatures.items():
        assert documented[name].get("description"), name
        described = [a["name"] for a in documented[name].get("arguments") or [] if a.get("description")]
        assert described == args, f"{name}: arguments {args}, documented {described}"


def test_every_source_table_has_freshness_or_says_why_not():
    for source in _properties("models", "sources").values():
        for table in source["tables"]:
            config = table.get("config") or {}
            assert "freshness" in config, f"{table['name']}: no freshness rule and no `freshness: null`"
            if config["freshness"] is None:
                assert "freshness" in table["description"].lower(), f"{table['name']}: say why there is none"
            else:
                assert table.get("loaded_at_field") and config["freshness"]["error_after"]


def test_built_views_have_exactly_the_contracted_columns(demo_db):
    with psycopg.connect(demo_db.conninfo()) as conn:
        for view in PUBLIC_VIEWS:
            built = conn.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'devdiag' and table_name = %s order by ordinal_position",
                (view,),
            ).fetchall()
            assert built == [(c["name"], c["data_type"]) for c in MODELS[view]["columns"]], view


@pytest.mark.slow
def test_dbt_refuses_a_view_that_breaks_its_contract(pg, tmp_path: Path, monkeypatch):
    """A changed column type fails the build of that view, before anything reads the new shape."""
    from orchestrator import dbt

    project = tmp_path / "project"
    project.mkdir()
    for name in ("dbt_project.yml", "selectors.yml", "profiles.yml.example"):
        shutil.copy(ROOT / name, project / name)
    for tree in ("models", "macros", "tests/generic"):
        shutil.copytree(ROOT / tree, project / tree)
    view = project / "models" / "marts" / "v_problem_counts.sql"
    original = view.read_text()
    assert "        cnt\n" in original
    view.write_text(original.replace("        cnt\n", "        cnt::integer as cnt\n"))
    monkeypatch.setenv("DEVDIAG_PROJECT_DIR", str(project))
    with own_database(pg, "devdiag_contract") as db:
        results = {r.name: r for r in dbt.invoke(db, ["run", "--no-partial-parse", "--select", "+v_problem_counts"])}
    assert results["int_problem_counts_daily"].status == "success"
    broken = results["v_problem_counts"]
    assert broken.status == "error"
    assert "contract" in (broken.message or "").lower() and "cnt" in (broken.message or "")
