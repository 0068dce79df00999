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
LABELS = {
    "teacher": "teacher",
    "pruned": "pruned, before recovery",
    "quantized": "quantized, calibration only",
    "student": "recovered student",
}


def default_run(reports: Path) -> str:
    m = json.loads((reports / "metrics.json").read_text())
    prec = m.get("precision", {})
    rows = [
        "| model | real test accuracy | validation accuracy | conv+linear sparsity | nonzero params | CPU latency batch 64 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for k, label in LABELS.items():
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
            f"images); data-free: {'yes' if m['data_free'] else 'NO'}. Device {m['device']}, CPU capability "
            f"{m.get('cpu_capability', '-')}, precision teacher {prec.get('train_teacher') or '-'} / synthesis "
            f"{prec.get('synthesize') or '-'} (native bf16: {prec.get('native_bf16', '-')}). Stage wall times: {times}.",
        ]
    )


def sweep(reports: Path, name: str) -> str:
    summary = pd.read_csv(reports / "compare" / "summary.csv")
    part = summary[summary["sweep"] == name]
    if part.empty:
        return f"(no finished `{name}` runs in reports/compare/summary.csv)"
    lines = ["| setting | student test accuracy | validation accuracy | runs | failed | teacher agreement on synthetic images |"]
    lines.append("|---|---|---|---|---|---|")
    for r in part.itertuples():
        val = "-" if pd.isna(r.val_accuracy_mean) else f"{r.val_accuracy_mean:.2%}"
        agree = "-" if pd.isna(getattr(r, "synthetic_agreement", float("nan"))) else f"{r.synthetic_agreement:.1%}"
        lines.append(f"| {r.setting} | {r.accuracy_mean:.2%} | {val} | {r.runs} | {r.runs_without_metrics} | {agree} |")
    return "\n".join(lines)


def zoo(reports: Path) -> str:
    f = reports / "compare" / "zoo.md"
    if not f.is_file():
        return "(no zoo runs yet: reports/compare/zoo.md)"
    return "\n".join(line for line in f.read_text().splitlines() if line.startswith("|") or line.startswith("Runs without"))


TABLES = {"default-run": default_run, "zoo": zoo, "bn-loss": lambda r: sweep(r, "bn_loss")}


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
