"""orchestrator.contract names exactly what the SQL sources define."""

import re

from devdiag_db.config import project_dir
from orchestrator.contract import PUBLIC_VIEWS, RAW_INDEXES


def test_public_views_are_the_v_models_of_marts():
    models = {p.stem for p in (project_dir() / "models" / "marts").glob("v_*.sql")}
    assert models == set(PUBLIC_VIEWS)


def test_raw_indexes_are_those_of_the_ddl_macro():
    macro = (project_dir() / "macros" / "raw_schema.sql").read_text()
    body = macro.split("macro raw_index_definitions")[1].split("endmacro")[0]
    assert re.findall(r'"(ix_diag_run_\w+)"\s*:', body) == list(RAW_INDEXES)
