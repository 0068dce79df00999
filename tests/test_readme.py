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
