"""Command (not a pipeline stage): the lineage of an artifact, and whether real data entered the data-free stages.

    python -m stages.lineage [models/student] [--json OUT]

Reads dvc.lock (what ran: every stage's deps with their hashes, params and outs),
dvc.yaml (what is declared) and the artifacts' JSON cards, walks from the stage that
produced the artifact back to the real data, and prints the chain: stage, output hash,
params, card facts (teacher hash and training params, BN-stats hash, synthetic-set hash
and synthesis params, pruning and distillation params), and the code revision.

Data-free verdict: every stage of the chain after the teacher (extract_bn_stats,
synthesize, prune, distill, or any stage added later) must have no real-data path
(an output of prepare_data, or anything under data/raw) among its dvc.yaml or dvc.lock
deps. Cards that name the hash of an input are checked against that input's current bytes.
Exit status 0 = data-free and consistent, 1 = not data-free or inconsistent, 2 = bad input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from stages.core.artifacts import read_json, sha256_file
from stages.core.experiments import flatten
from stages.core.runtime import StageError

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


def render(r: dict) -> str:
    lines = [f"Lineage of {r['artifact']} (made by stage {r['stage']}; from dvc.lock, dvc.yaml and the artifacts' cards)"]
    rev = r["code_revision"]
    lines.append(
        f"code revision: {rev['git_head'] or 'not a git repository'}"
        + (" (+ uncommitted changes in stages/, dvc.yaml or params.yaml)" if rev["uncommitted_changes"] else "")
    )
    for i, step in enumerate(r["chain"], 1):
        outs = ", ".join(f"{o['path']} (md5 {str(o['md5'])[:12]})" for o in step["outs"])
        lines.append(f"{i}. {step['stage']}: {outs}")
        if step["params"]:
            lines.append("   params: " + ", ".join(f"{k}={v}" for k, v in step["params"].items()))
        for k, v in step.get("card", {}).items():
            lines.append(f"   {k}: {v[:16] + '...' if isinstance(v, str) and k.endswith('_sha256') else v}")
    for c in r["card_checks"]:
        lines.append(f"card {c['card']}: {c['key']} {'matches' if c['match'] else 'DOES NOT MATCH'} {c['file']}")
    if r["data_free"]:
        after = [s["stage"] for s in r["chain"] if s["stage"] not in r["real_data_stages"]]
        lines.append(
            f"DATA-FREE: none of {', '.join(after)} depends on real data; real data entered only "
            f"{', '.join(r['real_data_stages']) or 'no stage'} (the teacher's own training)."
        )
    else:
        lines.append(
            "NOT DATA-FREE: real training data entered "
            + "; ".join(f"{e['stage']} (dep {e['dep']})" for e in r["real_data_in_data_free_stages"])
        )
    if not r["consistent"]:
        lines.append("INCONSISTENT: a card records an input that has changed since (stale artifact): run `dvc repro`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.lineage", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", default="models/student", help="an output path of a stage (default models/student)")
    ap.add_argument("--root", type=Path, default=Path("."), help="project root (holds dvc.yaml and dvc.lock)")
    ap.add_argument("--json", type=Path, help="also write the lineage as JSON")
    args = ap.parse_args(argv)
    r = lineage(args.root, args.artifact)
    print(render(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["data_free"] and r["consistent"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
