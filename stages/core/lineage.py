"""The lineage of an artifact and the data-free verdict, computed from dvc.yaml, dvc.lock and the artifacts' cards.

Data-free verdict: every stage of the chain after the teacher (extract_bn_stats, synthesize, prune, quantize,
distill, or any stage added later) must have no real-data path (an output of prepare_data, or anything under
data/raw) among its dvc.yaml or dvc.lock deps. Cards that name the hash of an input are checked against that input's
current bytes. ``stages/lineage.py`` prints it; ``evaluate`` takes its ``data_free`` metric and the report's
data-free sentence from ``verdict`` - never from a default or a card flag.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from .artifacts import read_json, sha256_file
from .experiments import flatten
from .runtime import StageError

REAL_DATA_STAGES = ("prepare_data",)  # stages whose outputs are real data
REAL_DATA_PREFIX = "data/raw"
TEACHER_STAGES = ("prepare_data", "train_teacher")  # allowed to read real data
CARD_INPUTS = {  # card key -> the file whose sha256 it records
    "teacher_sha256": "models/teacher/model.safetensors",
    "bn_stats_sha256": "models/bn_stats/stats.safetensors",
    "pruned_sha256": "models/pruned/model.safetensors",
    "masks_sha256": "models/pruned/masks.safetensors",
    "quantized_sha256": "models/quantized/model.safetensors",
    "calibration_set_sha256": "data/synthetic/images.safetensors",
    "student_sha256": "models/student/model.safetensors",
    "student_fp32_onnx_sha256": "models/export/student_fp32.onnx",
    "real_calibration_set_sha256": "data/real/images.safetensors",
}
# card key -> card key naming the folder under data/ whose images.safetensors it records
CARD_INPUT_DIRS = {"transfer_set_sha256": "transfer_set"}


def _path(entry) -> str:
    return entry if isinstance(entry, str) else entry["path"] if "path" in entry else next(iter(entry))


def load_pipeline(root: Path) -> tuple[dict, dict]:
    """(dvc.yaml stages, dvc.lock stages) under ``root``."""
    for name in ("dvc.yaml", "dvc.lock"):
        if not (root / name).is_file():
            raise StageError(f"{root / name} not found: run `dvc repro` first (lineage reads what ran from dvc.lock)")
    try:
        declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
        locked = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise StageError(f"{root}: dvc.yaml / dvc.lock unreadable: {e}") from e
    return declared, locked


def producer(locked: dict, path: str) -> str | None:
    """The stage whose outs contain ``path`` (or a folder above it)."""
    for stage, spec in locked.items():
        for out in spec.get("outs", []):
            p = _path(out)
            if path == p or path.startswith(p.rstrip("/") + "/"):
                return stage
    return None


def chain(locked: dict, stage: str) -> list[str]:
    """``stage`` and every stage upstream of it, dependencies first."""
    order: list[str] = []

    def visit(s: str) -> None:
        if s in order:
            return
        for dep in locked[s].get("deps", []):
            up = producer(locked, _path(dep))
            if up and up != s:
                visit(up)
        order.append(s)

    visit(stage)
    return order


def real_data_paths(declared: dict, locked: dict) -> list[str]:
    paths = [REAL_DATA_PREFIX]
    for s in REAL_DATA_STAGES:
        for spec in (declared.get(s, {}), locked.get(s, {})):
            paths += [_path(o) for o in spec.get("outs", [])]
    return sorted(set(paths))


def is_real(path: str, real: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in real)


def real_data_entries(declared: dict, locked: dict, stages: list[str]) -> list[tuple[str, str]]:
    """(stage, dep) for every real-data dependency of a stage after the teacher."""
    real = real_data_paths(declared, locked)
    found = []
    for s in stages:
        if s in TEACHER_STAGES:
            continue
        deps = {_path(d) for d in declared.get(s, {}).get("deps", [])} | {_path(d) for d in locked[s].get("deps", [])}
        found += [(s, d) for d in sorted(deps) if is_real(d, real)]
    return found


def card_of(root: Path, out: str) -> dict | None:
    for name in ("card.json", "summary.json"):
        if (root / out / name).is_file():
            return read_json(root / out / name)
    return None


def card_checks(root: Path, cards: dict[str, dict]) -> list[dict]:
    rows = []
    for out, card in cards.items():
        targets = dict(CARD_INPUTS) | {k: f"data/{card[d]}/images.safetensors" for k, d in CARD_INPUT_DIRS.items() if d in card}
        for key, target in targets.items():
            if key in card and (root / target).is_file():
                actual = sha256_file(root / target)
                rows.append({"card": out, "key": key, "file": target, "match": actual == card[key]})
    return rows


def code_revision(root: Path) -> dict:
    def git(*args):
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "stages", "dvc.yaml", "params.yaml")
    return {"git_head": rev, "uncommitted_changes": bool(dirty) if rev else None}


def lineage(root: Path, artifact: str) -> dict:
    declared, locked = load_pipeline(root)
    artifact = artifact.rstrip("/")
    stage = producer(locked, artifact)
    if stage is None:
        raise StageError(f"{artifact} is not an output of any stage in {root / 'dvc.lock'}")
    stages = chain(locked, stage)
    cards, steps = {}, []
    for s in stages:
        spec = locked[s]
        outs = [{"path": _path(o), "md5": o.get("md5")} for o in spec.get("outs", [])]
        params = flatten(spec.get("params", {}).get("params.yaml", {}))
        step = {
            "stage": s,
            "outs": outs,
            "params": params,
            "code": [_path(d) for d in spec.get("deps", []) if _path(d).startswith("stages/")],
        }
        for o in outs:
            card = card_of(root, o["path"])
            if card is not None:
                cards[o["path"]] = card
                step["card"] = {
                    k: v
                    for k, v in card.items()
                    if k.endswith("_sha256")
                    or k in ("kind", "method", "n_images", "val_accuracy", "sparsity", "macs_reduction", "transfer_set")
                    or k in ("dataset", "dataset_source", "source", "file", "arch", "arch_source", "arch_code", "precision")
                }
                if card.get("quantization"):
                    q = card["quantization"]
                    step["card"]["quantization"] = f"{q['weight_bits']}w{q['act_bits']}a, first/last {q['first_last_bits'] or 'same'}"
        steps.append(step)
    entries = real_data_entries(declared, locked, stages)
    checks = card_checks(root, cards)
    return {
        "artifact": artifact,
        "stage": stage,
        "chain": steps,
        "code_revision": code_revision(root),
        "data_free": not entries,
        "real_data_in_data_free_stages": [{"stage": s, "dep": d} for s, d in entries],
        "real_data_stages": [s for s in stages if s in TEACHER_STAGES],
        "card_checks": checks,
        "consistent": all(c["match"] for c in checks),
    }


def verdict(root: Path, artifact: str) -> dict:
    """``{"data_free": True | False | None, "basis": why}`` for ``artifact``: None (undetermined) when dvc.lock does not
    record it (the stages were run by hand) or a card's recorded input hash no longer matches (stale artifacts)."""
    try:
        r = lineage(root, artifact)
    except StageError as e:
        return {"data_free": None, "basis": f"undetermined: {e}", "real_data_in_data_free_stages": []}
    if not r["consistent"]:
        bad = [f"{c['card']}: {c['key']}" for c in r["card_checks"] if not c["match"]]
        basis = f"undetermined: stale artifacts ({'; '.join(bad)}): run dvc repro"
        return {"data_free": None, "basis": basis, "real_data_in_data_free_stages": []}
    after = [s["stage"] for s in r["chain"] if s["stage"] not in r["real_data_stages"]]
    if r["data_free"]:
        basis = f"dvc.yaml + dvc.lock: none of {', '.join(after)} depends on real data"
    else:
        entries = r["real_data_in_data_free_stages"]
        basis = "dvc.yaml + dvc.lock: real data entered " + "; ".join(f"{e['stage']} (dep {e['dep']})" for e in entries)
    return {"data_free": r["data_free"], "basis": basis, "real_data_in_data_free_stages": r["real_data_in_data_free_stages"]}
