"""The pipeline definition keeps its contracts: data-free boundary, code deps, params sections."""

import ast

import yaml

from conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
DATA_FREE = ("extract_bn_stats", "synthesize", "prune", "distill")


def dep_paths(stage):
    return [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage]["deps"]]


def imported_modules(path, seen=None):
    """Project modules a file imports, transitively (stages.core.* by absolute or relative import)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                mod = f"stages/core/{node.module}.py"
            elif node.module and node.module.startswith("stages.core."):
                mod = node.module.replace(".", "/") + ".py"
            else:
                continue
            if mod not in seen:
                seen.add(mod)
                imported_modules(ROOT / mod, seen)
    return seen


def test_all_stages_present():
    assert set(DVC) == {"prepare_data", "train_teacher", *DATA_FREE, "evaluate"}


def test_data_free_stages_have_no_real_data_dependency():
    for stage in DATA_FREE:
        for dep in dep_paths(stage):
            assert not dep.startswith("data/raw"), f"{stage} depends on real data {dep}"
            assert dep.startswith(("stages/", "models/", "data/synthetic")), f"{stage}: unexpected dep {dep}"
        for mod in imported_modules(ROOT / f"stages/{stage}.py"):
            assert mod != "stages/core/data.py", f"{stage} imports the real-data loader"


def test_every_stage_lists_the_code_it_imports():
    for stage in DVC:
        script = f"stages/{stage}.py"
        needed = {script} | imported_modules(ROOT / script)
        missing = needed - set(dep_paths(stage))
        assert not missing, f"{stage} imports {sorted(missing)} but does not list them as deps"
        assert DVC[stage]["cmd"] == f"python -m stages.{stage}"


def test_each_stage_tracks_its_own_params_section():
    for stage, spec in DVC.items():
        assert stage in spec["params"], f"{stage} does not declare its params section"
