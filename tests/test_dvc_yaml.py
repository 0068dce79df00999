"""The pipeline definition keeps its contracts: data-free boundary, code deps, params sections."""

import ast
import copy
import re

import yaml

from conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DATA_FREE = ("extract_bn_stats", "synthesize", "gaussian_transfer_set", "prune", "quantize", "distill", "export")
REAL_DATA_BASELINES = ("real_transfer_set", "export_int8_real")  # the labelled exceptions: NOT data-free
REAL_DATA = ("data/raw", "data/real")  # prepare_data's output and real_transfer_set's (real training images)


def resolve(dep: str, params=PARAMS) -> str:
    """Substitute ${section.key} the way DVC's templating does (from params.yaml)."""
    return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(params[m.group(1)][m.group(2)]), dep)


def dep_paths(stage, params=PARAMS):
    return [resolve(d if isinstance(d, str) else next(iter(d)), params) for d in DVC[stage]["deps"]]


def producer(path):
    return next(
        (
            s
            for s, spec in DVC.items()
            for o in spec["outs"]
            if path == (o if isinstance(o, str) else next(iter(o))) or path.startswith(f"{o}/")
        ),
        None,
    )


def imported_modules(path, seen=None):
    """Project modules a file imports, transitively (stages.core.* by absolute or relative import)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                mods = [f"stages/core/{node.module}.py"] if node.module else [f"stages/core/{a.name}.py" for a in node.names]
            elif node.module == "stages.core":  # from stages.core import precision
                mods = [f"stages/core/{a.name}.py" for a in node.names]
            elif node.module and node.module.startswith("stages.core."):
                mods = [node.module.replace(".", "/") + ".py"]
            else:
                continue
            for mod in mods:
                if mod not in seen:
                    seen.add(mod)
                    imported_modules(ROOT / mod, seen)
    return seen


def test_all_stages_present():
    assert set(DVC) == {"prepare_data", "train_teacher", *DATA_FREE, *REAL_DATA_BASELINES, "evaluate"}


def test_only_the_labelled_baselines_read_real_data_after_the_teacher():
    readers = {s for s in DVC if any(d.startswith(REAL_DATA) for d in dep_paths(s))}
    assert readers == {"train_teacher", "evaluate", *REAL_DATA_BASELINES}
    assert producer("data/real") == "real_transfer_set" and "data/raw" in dep_paths("real_transfer_set")


def test_export_calibrates_on_the_synthetic_set_and_the_real_reference_is_apart():
    """The data-free int8 model's stage reads the synthetic set; the real-calibrated one is its own stage and output."""
    assert "data/synthetic" in dep_paths("export") and not any(d.startswith(REAL_DATA) for d in dep_paths("export"))
    assert "data/real" in dep_paths("export_int8_real")
    assert DVC["export"]["outs"] == ["models/export"] and DVC["export_int8_real"]["outs"] == ["models/export_real"]


def test_distill_transfer_set_resolves_to_its_producer():
    """Default: distill depends on the synthetic set; transfer_set=real makes it depend on the real-data baseline."""
    assert "data/synthetic" in dep_paths("distill")
    for value, stage, data_free in (
        ("synthetic", "synthesize", True),
        ("gaussian", "gaussian_transfer_set", True),
        ("real", "real_transfer_set", False),
    ):
        params = copy.deepcopy(PARAMS)
        params["distill"]["transfer_set"] = value
        dep = next(d for d in dep_paths("distill", params) if d.startswith("data/"))
        assert producer(dep) == stage
        assert (stage in DATA_FREE) is data_free


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
