"""README's result tables are generated from reports/ (scripts/readme_tables.py), so they cannot drift from them."""

import importlib.util

from conftest import ROOT


def test_readme_tables_are_the_reports():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts/readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = (ROOT / "README.md").read_text()
    assert "<!-- generated:default-run -->" in readme
    assert tables.render(readme, ROOT / "reports") == readme, "README.md is stale: run python scripts/readme_tables.py"


def test_no_result_table_is_typed_by_hand():
    """Every markdown table row with a measured number (a percentage or a decimal) sits inside a generated block: a
    typed table could survive a rerun that changed its numbers (as README's J_KL table once did: 60,000 images and
    1.72 where jkl.csv said 2,000 and 0.74)."""
    import re

    readme = (ROOT / "README.md").read_text()
    outside = re.sub(r"<!-- generated:([\w-]+) -->.*?<!-- /generated -->", "", readme, flags=re.S)
    typed = [line for line in outside.splitlines() if line.startswith("|") and re.search(r"\d+(\.\d+)?%|\d+\.\d+", line)]
    assert typed == [], f"typed result rows in README.md (generate them from reports/): {typed[:3]}"


def test_generated_tables_state_where_they_come_from():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts/readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = (ROOT / "README.md").read_text()
    names = set(__import__("re").findall(r"<!-- generated:([\w-]+) -->", readme))
    assert names == set(tables.TABLES), names ^ set(tables.TABLES)
