"""Compare the synthesis methods end to end with DVC experiments (issue: methods of "The Knowledge Within").

    python scripts/synthesis_methods.py queue [NAME ...]  # dvc exp run --queue, one experiment per entry of RUNS
    dvc exp run --run-all                          # runs the queue (reuses the cached teacher and pruned model)
    python scripts/synthesis_methods.py collect   # dvc exp show --json -> reports/methods/methods.{csv,md,png}

Every method makes the same number of images; the optimizing ones run the same number of
iterations on the same batches (the same compute budget). The default run (HEAD's
workspace, method deepinversion) is the baseline row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.core.artifacts import atomic_dir  # noqa: E402
from stages.core.experiments import exp_nodes  # noqa: E402
from stages.core.plots import bars  # noqa: E402

OUT = ROOT / "reports" / "methods"
PREFIX = "method-"
RUNS = {
    "gaussian": ["synthesize.method=gaussian"],
    # Frozen BN diverges at the default lr 1e-2 (NaN in epoch 1 on Gaussian noise): the paper's lr 1e-3.
    "gaussian-frozen-bn": ["synthesize.method=gaussian", "distill.freeze_bn=true", "distill.lr=0.001"],
    "inception": ["synthesize.method=inception"],
    "bns": ["synthesize.method=bns"],
    "bns-no-prior": ["synthesize.method=bns", "synthesize.lambda_prior=0"],
    "bns-inception": ["synthesize.method=bns_inception"],
    "deepinversion-frozen-bn": ["distill.freeze_bn=true", "distill.lr=0.001"],
    # In-batch augmentation at the same compute: 4 copies x 50 iterations = 1 copy x 200 iterations.
    "bns-4-copies-crop": ["synthesize.method=bns", "synthesize.duplicates=4", "synthesize.iterations=50", "synthesize.crop_min_area=0.7"],
}


def dvc(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{r.stderr.strip()}")
    return r.stdout


def queue(names: list[str]) -> None:
    for name, sets in RUNS.items():
        if names and name not in names:
            continue
        args = ["exp", "run", "--queue", "-n", PREFIX + name]
        for s in sets:
            args += ["-S", s]
        dvc(*args)
        print("queued", PREFIX + name, " ".join(sets))


def experiments(doc) -> list[tuple[str, dict]]:
    """(name, data with its rev) of the workspace, each commit and every experiment of a `dvc exp show --json` document."""
    return [(name, dict(data, rev=rev)) for name, rev, data in exp_nodes(doc)]


def row(name: str, data: dict) -> dict | None:
    metrics = (data.get("metrics") or {}).get("reports/metrics.json", {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not metrics or not params:
        return None
    syn, dis = params["synthesize"], params["distill"]
    jkl = metrics.get("j_kl_relative_to_train", {})
    return {
        "run": name,
        "rev": data.get("rev"),
        "method": syn["method"],
        "lambda_prior": syn.get("lambda_prior"),
        "freeze_bn": dis["freeze_bn"],
        "n_images": metrics["synthetic"]["n_images"],
        "iterations": 0 if syn["method"] == "gaussian" else syn["iterations"],
        "duplicates": syn.get("duplicates", 1),
        "student_acc": metrics["student"]["accuracy"],
        "student_val_acc": metrics["student"].get("val_accuracy"),  # what ranks the methods (the validation part)
        "gap_points": metrics["gap_points"],
        "pruned_acc": metrics["pruned"]["accuracy"],
        "teacher_acc": metrics["teacher"]["accuracy"],
        "synthetic_j_kl_rel": jkl.get("synthetic"),
        "teacher_agreement": metrics["synthetic"].get("teacher_agreement"),
        "synth_wall_s": metrics.get("wall_s", {}).get("synthesize"),
    }


def git_file(rev: str, path: str) -> bytes:
    """A file as committed in an experiment (or as it is in the workspace)."""
    if rev == "workspace":
        return (ROOT / path).read_bytes()
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout


def synth_metrics(rev: str) -> dict:
    return json.loads(git_file(rev, "reports/synthesize/metrics.json"))


def collect() -> None:
    doc = json.loads(dvc("exp", "show", "--json", "-A"))
    rows, seen = [], set()
    for name, data in experiments(doc):
        if name in seen or not (name.startswith(PREFIX) or name == "workspace"):
            continue
        r = row("deepinversion (default)" if name == "workspace" else name[len(PREFIX) :], data)
        if r:
            rows.append(r)
            seen.add(name)
    df = pd.DataFrame(rows).sort_values(["student_val_acc", "student_acc"], ascending=False)
    df["class_balance"] = [synth_metrics(rev).get("pred_class_balance") for rev in df["rev"]]
    with atomic_dir(OUT) as tmp:
        df.to_csv(tmp / "methods.csv", index=False)
        (tmp / "methods.md").write_text(render(df))
        bars(
            list(df["run"]),
            [100 * v for v in df["student_acc"]],
            tmp / "methods.png",
            "recovered accuracy by synthesis method",
            "test accuracy (%)",
            horizontal=True,
        )
        for r in df.itertuples():  # each run's image grid, from its experiment commit
            (tmp / f"grid_{r.run.split(' ')[0]}.png").write_bytes(git_file(r.rev, "reports/synthesize/grid.png"))
    print(render(df))


def render(df: pd.DataFrame) -> str:
    t = df.iloc[0]
    lines = [
        f"# Synthesis methods at 75% sparsity (teacher {t.teacher_acc:.2%}, pruned {t.pruned_acc:.2%})",
        "",
        "Same teacher, pruned model and distillation; each method makes the same number of images and the",
        "optimizing ones run the same iterations on the same batch size. J_KL relative to the real train split.",
        "",
        "| run | method | freeze_bn | images x iterations (x copies) | student | gap (points) | synthetic J_KL / train "
        "| teacher agreement | class balance | synthesis s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        agree = "-" if pd.isna(r.teacher_agreement) else f"{r.teacher_agreement:.1%}"
        copies = f" x {r.duplicates} copies" if r.duplicates > 1 else ""
        lines.append(
            f"| {r.run} | {r.method} | {r.freeze_bn} | {r.n_images} x {r.iterations}{copies} "
            f"| {r.student_acc:.2%} | {r.gap_points:.2f} "
            f"| {r.synthetic_j_kl_rel:.2f} | {agree} | {r.class_balance:.3f} | {r.synth_wall_s:.1f} |"
        )
    lines += ["", "Synthetic images of each run (rows: target class, or the teacher's prediction for untargeted methods):", ""]
    lines += [f"![{r.run}](grid_{r.run.split(' ')[0]}.png)" for r in df.itertuples()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "queue":
        queue(sys.argv[2:])  # optional run names: queue only those
    else:
        collect()
