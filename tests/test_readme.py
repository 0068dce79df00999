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
    """Each machine's time-to-accuracy table is rendered from that machine's own run in synthesis.json (no pairing of
    synthesis.md's tables by order): each run's numbers sit under its own machine."""
    import json

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts/readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    bench = tmp_path / "benchmarks"
    bench.mkdir()

    def run(cap, threads, speedup):
        machine = {"cpu": "AMD EPYC", "cpu_capability": cap, "threads": threads, "torch": "2.14.1"}
        row = {"images": 1024, "synthesis_s": 36.0, "speedup_vs_reference": speedup, "accuracy": 0.875, "reaches_target": True}
        return {"machine": machine, "teacher": "resnet20", "kd_steps": 320, "validation_images": 6000, "rows": {"row": row}}

    runs = {"AVX512, 2 thread(s)": run("AVX512", 2, 19.8), "AVX2, 1 thread(s)": run("AVX2", 1, 7.0)}
    for t in runs.values():
        t.update(target_accuracy=0.8773, tolerance_points=0.3)
    (bench / "synthesis.json").write_text(json.dumps({"time_to_accuracy": runs}))
    out = tables.time_to_accuracy(tmp_path)
    avx512, avx2 = out.split("**AMD EPYC, CPU capability AVX2,")
    assert "| row | 1024 | 36 | 7.0x |" in avx2 and "19.8x" not in avx2
    assert "| row | 1024 | 36 | 19.8x |" in avx512 and "7.0x" not in avx512
