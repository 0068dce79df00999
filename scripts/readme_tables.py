"""README's result tables, generated from reports/ (never typed): each sits between
``<!-- generated:NAME -->`` and ``<!-- /generated -->`` and is rewritten from the saved reports.

    python scripts/readme_tables.py           # rewrite the tables in README.md
    python scripts/readme_tables.py --check   # exit 1 when README.md differs from the reports (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages.core.labels import EXPORT_LABELS, MODEL_LABELS  # noqa: E402


def verdict(m: dict) -> str:
    """evaluate's data-free verdict and what it was computed from."""
    word = {True: "yes", False: "**NO**", None: "undetermined"}[m.get("data_free")]
    return f"{word} ({m['data_free_basis']})" if m.get("data_free_basis") else word


def default_run(reports: Path) -> str:
    m = json.loads((reports / "metrics.json").read_text())
    prec = m.get("precision", {})
    rows = [
        "| model | real test accuracy | validation accuracy | conv+linear sparsity | nonzero params | CPU latency batch 64 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for k, label in MODEL_LABELS.items():
        if k in m:
            r = m[k]
            val = "-" if r.get("val_accuracy") is None else f"{r['val_accuracy']:.2%}"
            rows.append(
                f"| {label} | {r['accuracy']:.2%} | {val} | {r['sparsity']:.4f} | {r['nonzero_params']:,} | {r['latency_ms_b64']:.1f} |"
            )
    times = " / ".join(f"{k} {v:.0f} s" for k, v in m["wall_s"].items())
    return "\n".join(
        [
            *rows,
            "",
            f"Gap teacher - student {m['gap_points']:.2f} points ({m['test_images']:,} test images, {m.get('val_images', 0):,} validation "
            f"images); data-free: {verdict(m)}. Device {m['device']}, CPU capability "
            f"{m.get('cpu_capability', '-')}, precision teacher {prec.get('train_teacher') or '-'} / synthesis "
            f"{prec.get('synthesize') or '-'} (native bf16: {prec.get('native_bf16', '-')}). Stage wall times: {times}.",
        ]
    )


def std(r) -> str:
    return "" if pd.isna(r.accuracy_std) else f" +- {100 * r.accuracy_std:.2f}"


def pct(v) -> str:
    return "-" if pd.isna(v) else f"{v:.2%}"


def measured_on(reports: Path, sweeps: list[str]) -> str:
    """Where the runs of ``sweeps`` ran, from reports/compare/runs.csv (device and CPU capability as evaluate recorded)."""
    f = reports / "compare" / "runs.csv"
    if not f.is_file():
        return "machine not recorded"
    runs = pd.read_csv(f)
    runs = runs[runs["sweep"].isin(sweeps) & runs["has_metrics"]]
    seen = set()
    for _, r in runs.iterrows():
        dev, cap = r.get("metrics.device"), r.get("metrics.cpu_capability")
        seen.add(
            f"{dev if isinstance(dev, str) else 'device not recorded'}, CPU capability {cap if isinstance(cap, str) else 'not recorded'}"
        )
    return "; ".join(sorted(seen)) or "machine not recorded"


# column name -> (header, cell from a summary row)
COLUMNS = {
    "student": (
        "student test accuracy (mean +- std)",
        lambda r: pct(r.accuracy_mean) + ("" if pd.isna(r.accuracy_std) else f" +- {100 * r.accuracy_std:.2f}"),
    ),
    "val": ("validation accuracy", lambda r: pct(r.val_accuracy_mean)),
    "before": ("before KD (pruned / calibrated)", lambda r: pct(r.before_kd_accuracy)),
    "teacher": ("teacher", lambda r: pct(r.teacher_accuracy)),
    "runs": ("runs", lambda r: str(int(r.runs))),
    "failed": ("failed or diverged (not averaged)", lambda r: str(int(r.runs_without_metrics))),
    "data_free": ("data-free", lambda r: "yes" if bool(r.data_free) else "**NO**"),
    "speedup": ("speed-up b64 vs teacher", lambda r: "-" if pd.isna(r.speedup_b64) else f"{r.speedup_b64:.2f}x"),
    "size": ("smaller (effective bits)", lambda r: "-" if pd.isna(r.size_ratio) else f"{r.size_ratio:.1f}x"),
    "compute": ("synthesis image x iterations", lambda r: "-" if pd.isna(r.image_iterations) else f"{int(r.image_iterations):,}"),
    "synth_s": ("synthesis s", lambda r: "-" if pd.isna(r.synthesize_s) else f"{r.synthesize_s:.0f}"),
    "distill_s": ("distill s", lambda r: "-" if pd.isna(r.distill_s) else f"{r.distill_s:.0f}"),
    "agree": ("teacher agreement on synthetic images", lambda r: "-" if pd.isna(r.synthetic_agreement) else f"{r.synthetic_agreement:.1%}"),
    "balance": (
        "class balance of the teacher's predictions",
        lambda r: "-" if pd.isna(getattr(r, "synthetic_class_balance", float("nan"))) else f"{r.synthetic_class_balance:.3f}",
    ),
    "jkl": (
        "synthetic J_KL / train",
        lambda r: "-" if pd.isna(getattr(r, "synthetic_jkl_rel", float("nan"))) else f"{r.synthetic_jkl_rel:.2f}",
    ),
}


def sweep_table(reports: Path, sweeps: list[str], columns: list[str]) -> str:
    """One row per (sweep, setting) of reports/compare/summary.csv; failed / diverged runs in their own column."""
    summary = pd.read_csv(reports / "compare" / "summary.csv")
    part = summary[summary["sweep"].isin(sweeps)]
    if part.empty:
        return f"(no finished runs of {', '.join(f'`{s}`' for s in sweeps)} in reports/compare/summary.csv yet)"
    label = "sweep: setting" if len(sweeps) > 1 else "setting"
    lines = ["| " + " | ".join([label, *(COLUMNS[c][0] for c in columns)]) + " |", "|" + "---|" * (len(columns) + 1)]
    for r in part.itertuples():
        name = f"{r.sweep}: {r.setting}" if len(sweeps) > 1 else r.setting
        lines.append("| " + " | ".join([name, *(COLUMNS[c][1](r) for c in columns)]) + " |")
    lines += ["", f"From `reports/compare/summary.csv` (sweeps {', '.join(sweeps)}); measured on: {measured_on(reports, sweeps)}."]
    return "\n".join(lines)


def sweep(reports: Path, name: str) -> str:
    return sweep_table(reports, [name], ["student", "val", "runs", "failed", "agree"])


def jkl(reports: Path) -> str:
    f = reports / "evaluate" / "jkl.csv"
    if not f.is_file():
        return "(no J_KL table yet: reports/evaluate/jkl.csv)"
    df = pd.read_csv(f)
    ref = next(c for c in df.columns if c.startswith("relative_to_"))
    lines = [f"| data set | images | J_KL | {ref.replace('_', ' ')} |", "|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.dataset} | {int(r.images):,} | {r.j_kl:.3g} | {getattr(r, ref):.3g} |")
    m = json.loads((reports / "metrics.json").read_text()) if (reports / "metrics.json").is_file() else {}
    where = f"device {m.get('device', '-')}, CPU capability {m.get('cpu_capability', '-')}"
    lines += ["", f"From `reports/evaluate/jkl.csv` of the default run ({where})."]
    return "\n".join(lines)


def benchmark(reports: Path) -> str:
    f = reports / "benchmarks" / "synthesis.json"
    if not f.is_file():
        return "(no benchmark yet: python benchmarks/synthesis.py)"
    b = json.loads(f.read_text())
    rows = b["synthesis"]
    base = next(iter(rows.values()))["image_iterations_per_s"]
    lines = [
        "| loop | images | iterations run | image x iterations / s | speed-up | achieved GFLOP/s | final BN-L2 loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['images']} | {r['iterations_run']} | {r['image_iterations_per_s']:.0f} | "
            f"{r['image_iterations_per_s'] / base:.2f}x | {r['achieved_gflops']:.1f} | {r['bn_l2_final']:.3f} |"
        )
    mach = b.get("machine", {})
    lines += [
        "",
        f"From `reports/benchmarks/synthesis.json`: teacher {b.get('teacher')}, batch {b.get('batch')}, {b.get('iterations')} iterations, "
        f"median of {b.get('repeats')} rounds; machine {mach.get('cpu', '-')}, {mach.get('threads', '-')} threads, CPU capability "
        f"{mach.get('cpu_capability', 'not recorded')}, torch {mach.get('torch', '-')}.",
    ]
    return "\n".join(lines)


def time_to_accuracy(reports: Path) -> str:
    """The benchmark's time-to-accuracy tables, one per machine it ran on (CPU capability, threads), each rendered by
    the benchmark's own renderer from that machine's run in synthesis.json, with where it ran."""
    from benchmarks.synthesis import time_to_accuracy_lines, time_to_accuracy_runs  # imports torch: only when needed

    f = reports / "benchmarks" / "synthesis.json"
    b = json.loads(f.read_text()) if f.is_file() else {}
    if "time_to_accuracy" not in b:
        return "(no time-to-accuracy run yet: python benchmarks/synthesis.py --parts time_to_accuracy)"
    out = []
    for t in time_to_accuracy_runs(b).values():  # one run per machine (an older single-run file: its machine's)
        mach = t["machine"]
        out += [f"**{mach['cpu']}, CPU capability {mach['cpu_capability']}, {mach['threads']} thread(s):**", ""]
        out += [line for line in time_to_accuracy_lines(t) if line.startswith("|")]
        out += [
            "",
            f"From `reports/benchmarks/synthesis.json` (`time_to_accuracy`): teacher {t['teacher']}, every set distilled into "
            f"the default student for {t['kd_steps']} KD steps, accuracy on the {t['validation_images']} validation images; "
            f"target {t['target_accuracy']:.2%} (the paper budget), reached within {t['tolerance_points']} points; machine "
            f"{mach['cpu']}, {mach['threads']} thread(s), CPU capability {mach['cpu_capability']}, torch {mach['torch']}.",
            "",
        ]
    return "\n".join(out).rstrip()


def archs(_reports: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from stages.core.cost import macs
    from stages.core.models import ARCH_NAMES, build_model

    lines = ["| arch | params (10 classes) | MACs at 3x32x32 |", "|---|---|---|"]
    for a in ARCH_NAMES:
        m = build_model(a, 10, 3)
        lines.append(f"| {a} | {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M | {macs(m, (3, 32, 32))['macs'] / 1e6:,.1f} M |")
    return "\n".join(lines)


def zoo(reports: Path) -> str:
    f = reports / "compare" / "zoo.md"
    if not f.is_file():
        return "(no zoo runs yet: reports/compare/zoo.md)"
    return "\n".join(line for line in f.read_text().splitlines() if line.startswith("|") or line.startswith("Runs without"))


def probe_table(reports: Path, lever: str, keys: set[str], fixed: dict, agree_between: tuple[float, float]) -> str:
    """A zoo probe comparison (validation part): per teacher and value of ``lever``, the mean student validation
    accuracy over the logged runs (KD seeds; a repeated seed is one more run), LAMP-ranked, data-free, the resolved
    columns in ``fixed`` at those values, no spec key outside ``keys``; the teacher's agreement with the synthesis
    targets at the two values of ``agree_between`` beside it."""
    f = reports / "compare" / "zoo_probe.csv"
    if not f.is_file():
        return "(no probe runs yet: reports/compare/zoo_probe.csv)"
    d = pd.read_csv(f, keep_default_na=False)
    spec_keys = d["spec"].map(lambda s: {kv.split("=")[0] for part in s.split("/") for kv in part.split("|") if kv})
    keep = spec_keys.map(lambda k: k <= keys) & (d["ranking"] == "lamp") & d["data_free"].astype(str).eq("True")
    for col, value in fixed.items():
        keep &= d[col] == value
    d = d[keep]
    values = sorted(d[lever].unique())
    lo, hi = agree_between
    head = ["teacher", "teacher val", *(f"{lever} {v:g}" for v in values), f"agreement ({lo:g} -> {hi:g})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for teacher, g in d.groupby("teacher", sort=False):
        cells = []
        for v in values:
            acc = g[g[lever] == v]["student_val_accuracy"] * 100
            spread = f" +- {acc.std():.2f}" if len(acc) > 1 else ""
            cells.append(f"{acc.mean():.2f}%{spread} ({len(acc)})" if len(acc) else "-")
        agree = [g[g[lever] == v]["synthetic_target_agreement"] for v in agree_between]
        agree_cell = " -> ".join(f"{a.iloc[-1]:.1%}" if len(a) else "-" for a in agree)
        lines.append(f"| {teacher} | {g['teacher_val_accuracy'].iloc[0]:.2%} | " + " | ".join(cells) + f" | {agree_cell} |")
    cpus = ", ".join(sorted(d["cpu"].unique()))
    return "\n".join([*lines, "", f"From `reports/compare/zoo_probe.csv` (validation part; runs in parentheses); measured on {cpus}."])


def first_bn_probe(reports: Path) -> str:
    """The first_bn_weight comparison (every other lever at its default of 2026-12-06, class weight 1)."""
    return probe_table(reports, "first_bn_weight", {"first_bn_weight", "seed", "ranking"}, {"lambda_ce": 1.0}, (1.0, 30.0))


def ce_probe(reports: Path) -> str:
    """The class term's weight lambda_ce at first_bn_weight 30 (the default): agreement against recovered accuracy."""
    return probe_table(reports, "lambda_ce", {"lambda_ce", "first_bn_weight", "seed"}, {"first_bn_weight": 30.0}, (1.0, 3.0))


def export(reports: Path) -> str:
    """The shipped models in ONNX Runtime: the default run's exports, then the export sweep's structured + int8 rows."""
    m = json.loads((reports / "metrics.json").read_text())
    if not m.get("export"):
        return "(no export in reports/metrics.json yet: dvc repro)"
    e, rt = m["export"], m["export_runtime"]
    base = e.get("teacher_fp32", {}).get("latency_ms_b64")  # export.teacher: false exports no teacher
    rows = [
        "| model | real test accuracy | latency ms, batch 1 | batch 64 | vs teacher fp32 at batch 64 | file | data-free |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, label in EXPORT_LABELS.items():
        if k in e:
            r = e[k]
            paired = r.get("speedup_b64_vs_teacher_fp32")  # evaluate's interleaved rounds; older runs: ratio of medians
            speed = f"{paired:.2f}x" if paired else f"{base / r['latency_ms_b64']:.2f}x" if base else "-"
            rows.append(
                f"| {label} | {r['accuracy']:.2%} | {r['latency_ms_b1']:.2f} | {r['latency_ms_b64']:.1f} "
                f"| {speed} "
                f"| {r['file_bytes'] / 1024:.0f} KiB | {verdict({'data_free': r['data_free']})} |"
            )
    summary = reports / "compare" / "summary.csv"
    df = pd.read_csv(summary) if summary.is_file() else pd.DataFrame(columns=["sweep"])
    for r in df[df["sweep"] == "export"].to_dict("records"):
        if pd.isna(r.get("onnx_int8_synthetic_accuracy")):
            continue
        t = r["onnx_teacher_fp32_latency_ms_b64"]
        rows.append(
            f"| {r['setting']}: student fp32 (export sweep, {int(r['runs'])} run) | {r['onnx_student_fp32_accuracy']:.2%} | - "
            f"| {r['onnx_student_fp32_latency_ms_b64']:.1f} | {t / r['onnx_student_fp32_latency_ms_b64']:.2f}x | - | yes |"
        )
        rows.append(
            f"| {r['setting']} + int8 (synthetic calibration) | {r['onnx_int8_synthetic_accuracy']:.2%} "
            f"| {r['onnx_int8_synthetic_latency_ms_b1']:.2f} | {r['onnx_int8_synthetic_latency_ms_b64']:.1f} "
            f"| {t / r['onnx_int8_synthetic_latency_ms_b64']:.2f}x | {r['onnx_int8_synthetic_bytes'] / 1024:.0f} KiB | yes |"
        )
    return "\n".join(
        [
            *rows,
            "",
            f"From reports/metrics.json (`export`) and reports/compare/summary.csv (sweep `export`). ONNX Runtime "
            f"{rt['onnxruntime']}, {rt['execution_provider']}, CPU capability {rt['cpu_capability']}, "
            f"{rt['latency_threads']} thread(s), all files of a run timed in interleaved rounds (median; speed-up: median of "
            "per-round ratios to the float teacher's file); each sweep row's speed-up is against the teacher timed in the same run.",
        ]
    )


def export_latency(reports: Path) -> str:
    """The interleaved ONNX Runtime latency benchmark's own table (benchmarks/export_latency.py), with where it ran."""
    f = reports / "benchmarks" / "export_latency.md"
    if not f.is_file():
        return "(no export latency run yet: python benchmarks/export_latency.py)"
    text = f.read_text().splitlines()
    title = text[0].removeprefix("# ")
    rows = [line for line in text if line.startswith("|")]
    notes = [line for line in text[1:] if line and not line.startswith("|")]
    return "\n".join([*rows, "", f"From `reports/benchmarks/export_latency.md`: {title}. {' '.join(notes)}"])


ABLATIONS = ["sparsity", "n_images", "freeze_bn", "transfer_set"]
TABLES = {
    "default-run": default_run,
    "export": export,
    "export-latency": export_latency,
    "zoo": zoo,
    "bn-loss": lambda r: sweep(r, "bn_loss"),
    "ablations": lambda r: sweep_table(r, ABLATIONS, ["student", "val", "before", "teacher", "runs", "failed", "data_free"]),
    "distill-recipe": lambda r: sweep_table(r, ["distill_recipe"], ["student", "val", "before", "runs", "failed", "distill_s"]),
    "methods": lambda r: sweep_table(r, ["methods"], ["student", "val", "jkl", "agree", "balance", "synth_s", "runs", "failed"]),
    "quant": lambda r: sweep_table(
        r, ["quant", "structured", "prune_quant"], ["before", "student", "val", "speedup", "size", "runs", "failed", "data_free"]
    ),
    "compute": lambda r: sweep_table(r, ["compute"], ["compute", "synth_s", "student", "val", "runs", "failed"]),
    "zoo-first-bn-probe": first_bn_probe,
    "zoo-ce-probe": ce_probe,
    "zoo-first-bn1": lambda r: sweep_table(r, ["zoo_first_bn1"], ["teacher", "before", "student", "val", "agree", "runs", "failed"]),
    "zoo-lamp": lambda r: sweep_table(r, ["zoo_magnitude"], ["teacher", "before", "student", "val", "agree", "runs", "failed"]),
    "hard": lambda r: sweep_table(r, ["hard", "hard_levers"], ["before", "student", "val", "runs", "failed", "data_free"]),
    "hard-cifar10": lambda r: sweep_table(
        r, ["hard_cifar10", "hard_cifar10_levers"], ["teacher", "before", "student", "val", "runs", "failed", "data_free"]
    ),
    "generator": lambda r: sweep_table(r, ["generator"], ["compute", "synth_s", "student", "val", "agree", "runs", "failed"]),
    "jkl": jkl,
    "benchmark": benchmark,
    "time-to-accuracy": time_to_accuracy,
    "cifar10": lambda r: sweep_table(r, ["cifar10"], ["teacher", "before", "student", "val", "runs", "failed", "data_free"]),
    "archs": archs,
}


def render(readme: str, reports: Path) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        return f"<!-- generated:{name} -->\n{TABLES[name](reports)}\n<!-- /generated -->"

    return re.sub(r"<!-- generated:([\w-]+) -->.*?<!-- /generated -->", fill, readme, flags=re.S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = (ROOT / "README.md").read_text()
    new = render(readme, ROOT / "reports")
    if args.check:
        sys.exit(0 if new == readme else 1)
    (ROOT / "README.md").write_text(new)


if __name__ == "__main__":
    main()
