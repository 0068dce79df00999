"""Benchmark: the exported ONNX models' latency in ONNX Runtime, interleaved (not a test, not a stage).

    python benchmarks/export_latency.py [--model NAME=PATH ...] [--rounds 15] [--threads 1] [--out reports/benchmarks]

Timed one after another, two identical graphs can differ by tens of percent on a shared or frequency-scaling CPU.
Here, as in ``evaluate`` (stages/core/onnx_runtime.py ``interleaved_latency_ms``), every round runs every model once
in a rotated order, at batch 1 and 64, so all models see the same machine state; a model's latency is its median
over rounds, its speed-up over the reference (default ``teacher_fp32``) the median of the per-round ratios. Unlike
``evaluate`` it takes models from several runs (``--model``) and more rounds.
Default models: the workspace's models/export/*.onnx and models/export_real/*.onnx (names as in metrics.json);
``--model NAME=PATH`` adds others, e.g. an experiment's structured + int8 student. Writes
<out>/export_latency.json and export_latency.md, with the CPU, its capability and ONNX Runtime's version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core import machine, precision  # noqa: E402
from stages.core.artifacts import atomic_write_text  # noqa: E402
from stages.core.onnx_runtime import interleaved_latency_ms, runtime_facts  # noqa: E402

DEFAULT_MODELS = {
    "teacher_fp32": "models/export/teacher_fp32.onnx",
    "student_fp32": "models/export/student_fp32.onnx",
    "int8_synthetic": "models/export/student_int8.onnx",
    "int8_real": "models/export_real/student_int8_real.onnx",
}
BATCHES = (1, 64)


def named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=PATH")
    return name, Path(path)


def input_shape(path: Path) -> tuple[int, ...]:
    """(C, H, W) of the model's first input (the batch axis is dynamic in our exports)."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if not shape or not all(shape):
        raise SystemExit(f"{path}: input shape {shape} is not static past the batch axis")
    return shape


def measure(models: dict[str, Path], rounds: int, threads: int, reference: str) -> dict:
    """Each model at batch 1 and 64, all interleaved per round (stages.core.onnx_runtime, as evaluate times them)."""
    shapes = {input_shape(p) for p in models.values()}
    if len(shapes) != 1:
        raise SystemExit(f"the models take different inputs {sorted(shapes)}: time models of one teacher together")
    shape = shapes.pop()
    timed = {b: interleaved_latency_ms(models, shape, b, threads, rounds, 0.0, reference) for b in BATCHES}
    out = {}
    for k, p in models.items():
        row = {"path": str(p), "file_bytes": p.stat().st_size}
        for b in BATCHES:
            row[f"latency_ms_b{b}"] = timed[b][k]["latency_ms"]
            row[f"latency_ms_b{b}_min_max"] = timed[b][k]["min_max_ms"]
            if reference:
                row[f"speedup_b{b}_vs_{reference}"] = timed[b][k]["speedup_vs_reference"]
        out[k] = row
    return out


def render(result: dict) -> str:
    ref = result["reference"]
    lines = [
        f"# ONNX Runtime latency of the exported models ({result['cpu']}, CPU capability {result['cpu_capability']}, "
        f"VNNI {'yes' if result['vnni'] else 'no'}, AMX {'yes' if result['amx'] else 'no'}; "
        f"ONNX Runtime {result['runtime']['onnxruntime']}, "
        f"{result['runtime']['execution_provider']}, {result['threads']} thread(s))",
        "",
        f"{result['rounds']} interleaved rounds (one forward of every model per round) per batch size; median over rounds "
        f"(min-max); speed-up: median of the per-round ratios to {ref}.",
        "",
        f"| model | file | latency ms, batch 1 | latency ms, batch 64 | speed-up vs {ref}, batch 1 / 64 |",
        "|---|---|---|---|---|",
    ]
    for k, r in result["models"].items():
        lo1, hi1 = r["latency_ms_b1_min_max"]
        lo64, hi64 = r["latency_ms_b64_min_max"]
        sp = f"{r[f'speedup_b1_vs_{ref}']:.2f}x / {r[f'speedup_b64_vs_{ref}']:.2f}x" if f"speedup_b1_vs_{ref}" in r else "-"
        lines.append(
            f"| {k} | {r['file_bytes'] / 1024:.0f} KiB | {r['latency_ms_b1']:.3f} ({lo1:.3f}-{hi1:.3f}) "
            f"| {r['latency_ms_b64']:.2f} ({lo64:.2f}-{hi64:.2f}) | {sp} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=named_path, action="append", default=[], help="NAME=PATH of an ONNX model to add")
    ap.add_argument("--reference", default="teacher_fp32", help="the model speed-ups are relative to")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds (one forward of every model per round)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (evaluate's latency_threads)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = ap.parse_args()
    models = {k: Path(p) for k, p in DEFAULT_MODELS.items() if Path(p).is_file()} | dict(args.model)
    missing = [f"{k}={p}" for k, p in models.items() if not p.is_file()]
    if missing or not models:
        raise SystemExit(f"no such ONNX model: {missing}" if missing else "no ONNX models: run `dvc repro export` first")
    if args.reference not in models:
        raise SystemExit(f"--reference {args.reference!r} is not among the models {list(models)}")
    result = {
        "cpu": machine.cpu_name(),
        "cpu_capability": precision.cpu_capability(),
        **machine.int8_features(),
        "runtime": runtime_facts(),
        "threads": args.threads,
        "rounds": args.rounds,
        "reference": args.reference,
        "models": measure(models, args.rounds, args.threads, args.reference),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "export_latency.json", json.dumps(result, indent=2) + "\n")
    text = render(result)
    atomic_write_text(args.out / "export_latency.md", text)
    print(text)


if __name__ == "__main__":
    main()
