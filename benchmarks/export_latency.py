"""Benchmark: the exported ONNX models' latency in ONNX Runtime, interleaved (not a test, not a stage).

    python benchmarks/export_latency.py [--model NAME=PATH ...] [--rounds 15] [--threads 1] [--out reports/benchmarks]

``evaluate`` times each model once, one after another: on a shared or frequency-scaling CPU two identical graphs
timed a minute apart can differ by tens of percent. Here every round runs every model (in a rotated order) for a
few timed forwards at batch 1 and 64, so all models see the same machine state; a model's latency is its median over
rounds, and its speed-up over the reference model (default ``teacher_fp32``) the median of the per-round ratios.
Default models: the workspace's models/export/*.onnx and models/export_real/*.onnx (names as in metrics.json);
``--model NAME=PATH`` adds others, e.g. an experiment's structured + int8 student. Writes
<out>/export_latency.json and export_latency.md, with the CPU, its capability and ONNX Runtime's version.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core import precision  # noqa: E402
from stages.core.artifacts import atomic_write_text  # noqa: E402
from stages.core.onnx_runtime import runtime_facts, session  # noqa: E402

DEFAULT_MODELS = {
    "teacher_fp32": "models/export/teacher_fp32.onnx",
    "student_fp32": "models/export/student_fp32.onnx",
    "int8_synthetic": "models/export/student_int8.onnx",
    "int8_real": "models/export_real/student_int8.onnx",
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


def measure(models: dict[str, Path], rounds: int, per_round: int, threads: int, reference: str) -> dict:
    sessions = {k: session(p, threads) for k, p in models.items()}
    feeds = {}
    for k, s in sessions.items():
        shape = input_shape(models[k])
        rng = np.random.default_rng(0)
        feeds[k] = {b: {s.get_inputs()[0].name: rng.random((b, *shape), dtype=np.float32)} for b in BATCHES}
        for b in BATCHES:  # warm-up: allocations, kernel selection
            for _ in range(3):
                s.run(None, feeds[k][b])
    times = {k: {b: [] for b in BATCHES} for k in models}
    names = list(models)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            for b in BATCHES:
                run = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    sessions[k].run(None, feeds[k][b])
                    run.append(time.perf_counter() - t0)
                times[k][b].append(1000 * statistics.median(run))
    rows = summarize(times, reference)
    return {k: {"path": str(p), "file_bytes": p.stat().st_size} | rows[k] for k, p in models.items()}


def summarize(times: dict[str, dict[int, list[float]]], reference: str) -> dict:
    """Per model and batch size: the median of its round medians (ms), their min-max, and the median over rounds
    of reference / model (paired by round, so a slow round slows both sides of the ratio)."""
    out = {}
    for k, per_batch in times.items():
        row = {}
        for b, per_round_ms in per_batch.items():
            row[f"latency_ms_b{b}"] = statistics.median(per_round_ms)
            row[f"latency_ms_b{b}_min_max"] = [min(per_round_ms), max(per_round_ms)]
            if reference in times:
                ratios = [t / m for t, m in zip(times[reference][b], per_round_ms, strict=True)]
                row[f"speedup_b{b}_vs_{reference}"] = statistics.median(ratios)
        out[k] = row
    return out


def render(result: dict) -> str:
    ref = result["reference"]
    lines = [
        f"# ONNX Runtime latency of the exported models ({result['cpu']}, CPU capability {result['cpu_capability']}, "
        f"VNNI {'yes' if result['avx512_vnni'] else 'no'}; ONNX Runtime {result['runtime']['onnxruntime']}, "
        f"{result['runtime']['execution_provider']}, {result['threads']} thread(s))",
        "",
        f"{result['rounds']} interleaved rounds x {result['per_round']} timed forwards per model and batch size; median over "
        f"rounds (min-max of the round medians); speed-up: median of the per-round ratios to {ref}.",
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
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=5, help="timed forwards per model, batch size and round")
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
        "cpu": precision.cpu_name(),
        "cpu_capability": precision.cpu_capability(),
        "avx512_vnni": "avx512_vnni" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None,
        "runtime": runtime_facts(),
        "threads": args.threads,
        "rounds": args.rounds,
        "per_round": args.per_round,
        "reference": args.reference,
        "models": measure(models, args.rounds, args.per_round, args.threads, args.reference),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "export_latency.json", json.dumps(result, indent=2) + "\n")
    text = render(result)
    atomic_write_text(args.out / "export_latency.md", text)
    print(text)


if __name__ == "__main__":
    main()
