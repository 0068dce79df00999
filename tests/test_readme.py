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


def test_time_to_accuracy_tables_pair_with_their_machines_run(tmp_path):
    """synthesis.md's tables are matched to synthesis.json's runs by the machine their heading names, not by order: a
    file whose tables come in the other order still puts each run's numbers under its own machine."""
    import json

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts/readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    bench = tmp_path / "benchmarks"
    bench.mkdir()

    def run(cap, threads):
        machine = {"cpu": "AMD EPYC", "cpu_capability": cap, "threads": threads, "torch": "2.14.1"}
        return {"machine": machine, "teacher": "resnet20", "kd_steps": 320, "validation_images": 6000}

    runs = {"AVX2, 1 thread(s)": run("AVX2", 1), "AVX512, 2 thread(s)": run("AVX512", 2)}
    for t in runs.values():
        t.update(target_accuracy=0.8773, tolerance_points=0.3)
    (bench / "synthesis.json").write_text(json.dumps({"time_to_accuracy": runs}))
    head = "## Time to accuracy (resnet20 teacher, {} threads, torch 2.14.1, AMD EPYC, CPU capability {})\n\n"
    (bench / "synthesis.md").write_text(
        "# Synthesis\n\n" + head.format(2, "AVX512") + "| row | 19.8x |\n\n" + head.format(1, "AVX2") + "| row | 7.0x |\n"
    )
    out = tables.time_to_accuracy(tmp_path)
    avx2, avx512 = out.split("**AMD EPYC, CPU capability AVX512")
    assert "| row | 7.0x |" in avx2 and "19.8x" not in avx2
    assert "| row | 19.8x |" in avx512 and "7.0x" not in avx512
