"""Quick lever probe on one zoo teacher, on the VALIDATION part only: synthesize -> prune -> KD in one process.

Each SPEC is ``synthesize overrides / distill overrides [/ prune overrides]`` (``key=value`` joined by ``|``, any
part may be empty; specs with the same synthesize part share one synthetic set). The distill part may hold the word
``real``: KD on as many real training images as the synthetic set has, drawn class-balanced as stage real_transfer_set
draws them (NOT data-free: the reference that tells a synthesis limit from a KD-budget limit). Pruning is the shipped
``prune`` section with the spec's prune overrides (l1_unstructured only). Prints one line per spec (teacher agreement
with the synthesis targets, validation accuracy, seconds; a shared set reports its one synthesis time) and appends it
to ``reports/compare/zoo_probe.csv``.
The test split is never read; choices made here are checked through the whole pipeline with ``python -m stages.compare queue zoo``.

    python scripts/zoo_probe.py tv_regnet_x_400mf "" "lambda_bn=30" "/real" "/lr=0.003" "//ranking=lamp"
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.bn import running_stats  # noqa: E402
from stages.core.data import fit_to_input, load_part  # noqa: E402
from stages.core.external import check_fits, read_state_dict  # noqa: E402
from stages.core.imageops import normalize, pixel_bounds  # noqa: E402
from stages.core.inversion import synthesize_set  # noqa: E402
from stages.core.kd import distill  # noqa: E402
from stages.core.machine import cpu_name  # noqa: E402
from stages.core.models import build_model, versioned  # noqa: E402
from stages.core.params import as_dict, load_params, section_with  # noqa: E402
from stages.core.precision import cpu_capability  # noqa: E402
from stages.core.pruning import make_permanent, prune_l1_unstructured  # noqa: E402
from stages.core.training import accuracy, predict  # noqa: E402
from stages.real_transfer_set import balanced_sample  # noqa: E402

MANIFEST = Path("models/external/zoo/zoo.json")
OUT = Path("reports/compare/zoo_probe.csv")


def overridden(section: str, pairs: list[str]):
    """The shipped ``section`` with ``key=value`` pairs (YAML values) applied, validated by its schema."""
    return section_with(section, **{k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", help="a name in models/external/zoo/zoo.json")
    ap.add_argument(
        "specs",
        nargs="+",
        help='"synthesize overrides / distill overrides / prune overrides", e.g. "lambda_bn=30", "/real", "//ranking=lamp"',
    )
    args = ap.parse_args()
    p = load_params("data", "common")
    data = p["data"]
    m = json.loads(MANIFEST.read_text())[args.teacher]
    device = torch.device("cpu")
    teacher = build_model(m["arch"], m["num_classes"], m["input_shape"][0], m["arch_kwargs"])
    state = read_state_dict(m["file"])
    check_fits(teacher, state, Path(m["file"]), m["arch"])
    teacher.load_state_dict(versioned(teacher, state))
    teacher.eval()
    shape = tuple(m["input_shape"])
    val = load_part(data.name, data.root, "val", data.val_fraction)
    x_val = normalize(fit_to_input(val.images, shape), m["mean"], m["std"])
    teacher_acc = accuracy(teacher, x_val, val.labels, 500, device)
    bounds = pixel_bounds(m["mean"], m["std"])
    synthetic = {}  # the validated synthesize section -> (images, targets, seconds, agreement)
    train = None  # the real training part, read once and only for a "real" spec
    for spec in args.specs:
        parts = spec.split("/")
        if len(parts) > 3:
            ap.error(f"spec {spec!r} has {len(parts)} parts; expected at most 3: synthesize / distill / prune")
        s_side, d_side, p_side = parts + [""] * (3 - len(parts))
        d_pairs = [x for x in d_side.split("|") if x and x != "real"]
        syn = overridden("synthesize", [x for x in s_side.split("|") if x])
        dis = overridden("distill", d_pairs)
        prune = overridden("prune", [x for x in p_side.split("|") if x])
        if prune.method != "l1_unstructured":
            ap.error(f"spec {spec!r}: the probe prunes with l1_unstructured only (prune.method {prune.method!r})")
        key = json.dumps(as_dict(syn), sort_keys=True)  # "" and "lambda_bn=30" share a set when 30 is the default
        if key not in synthetic:
            t0 = time.perf_counter()
            xs, ys, _ = synthesize_set(teacher, running_stats(teacher), m["num_classes"], shape, bounds, syn, p["common"].seed, device)
            agree = float((predict(teacher, xs.float(), 256, device).argmax(1) == ys).float().mean())
            synthetic[key] = (xs, ys, time.perf_counter() - t0, agree)
        xs, ys, synth_s, agree = synthetic[key]
        transfer = xs.float()
        if "real" in d_side.split("|"):
            if train is None:
                train = load_part(data.name, data.root, "train", data.val_fraction)
            idx = balanced_sample(train.labels, len(xs), m["num_classes"], torch.Generator().manual_seed(p["common"].seed))
            transfer = normalize(fit_to_input(train.images[idx], shape), m["mean"], m["std"])
        student = copy.deepcopy(teacher).requires_grad_(True)
        prune_l1_unstructured(student, prune.sparsity, prune.scope, prune.min_density, prune.ranking)
        make_permanent(student)
        t0 = time.perf_counter()
        distill(student, teacher, transfer, dis, device, dis.seed)
        row = {
            "teacher": args.teacher,
            "spec": spec,
            "data_free": "real" not in d_side.split("|"),
            # the resolved values of the levers compared so far (the spec is relative to the defaults of its day)
            "ranking": prune.ranking,
            "first_bn_weight": syn.first_bn_weight,
            "lambda_ce": syn.lambda_ce,
            "distill_seed": dis.seed,
            "teacher_val_accuracy": round(teacher_acc, 4),
            "student_val_accuracy": round(accuracy(student, x_val, val.labels, 500, device), 4),
            "synthetic_target_agreement": round(agree, 4),
            "synthesize_s": round(synth_s, 1),
            "distill_s": round(time.perf_counter() - t0, 1),
            "cpu": f"{cpu_name()} ({cpu_capability()}, {torch.get_num_threads()} threads)",
        }
        print(row, flush=True)
        new = not OUT.is_file()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with OUT.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


if __name__ == "__main__":
    main()
