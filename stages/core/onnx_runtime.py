"""Running an exported ONNX model in ONNX Runtime: logits over a set of images, and latency with threads pinned.

Several models are timed interleaved (``interleaved_latency_ms``): every round runs each model once, in a rotated
order, so all of them see the same machine state. Timed one after another, two identical int8 graphs differed by
~60% at batch 64 here (16 vs 26 ms on a 2-core AVX512 AMD EPYC); their paired per-round ratios do not drift so."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from .runtime import StageError

PROVIDER = "CPUExecutionProvider"


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (0 = ONNX Runtime's default) and one inter-op thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=[PROVIDER])
    except Exception as e:  # onnxruntime raises its own exception types (InvalidGraph, Fail, ...)
        raise StageError(f"ONNX Runtime cannot load {path}: {type(e).__name__}: {str(e)[:300]}") from e


def runtime_facts() -> dict:
    return {"onnxruntime": ort.__version__, "execution_provider": PROVIDER, "available_providers": ort.get_available_providers()}


def predict(sess: ort.InferenceSession, pixels: torch.Tensor, batch_size: int, progress: str | None = None) -> torch.Tensor:
    """Logits (float32 tensor) of the session's model for ``pixels`` ([N, C, H, W] in [0, 1])."""
    name = sess.get_inputs()[0].name
    starts = range(0, len(pixels), batch_size)
    if progress:
        starts = tqdm(starts, desc=progress, total=math.ceil(len(pixels) / batch_size), unit="batch", leave=False)
    out = [sess.run(None, {name: pixels[i : i + batch_size].float().numpy()})[0] for i in starts]
    return torch.from_numpy(np.concatenate(out)).float()


def interleaved_latency_ms(
    paths: dict[str, Path], input_shape: tuple[int, ...], batch: int, threads: int, repeats: int, budget_s: float = 0.0, reference: str = ""
) -> dict[str, dict]:
    """Median milliseconds per ``batch``-image run of each model, timed in interleaved rounds (``repeats`` rounds,
    fewer when ``budget_s`` > 0 and the slowest model's first run says they would not fit, at least 3), with the
    min-max of the rounds and, when ``reference`` names one of the models, the median over rounds of
    reference / model (``paired_summary``)."""
    if not paths:
        return {}
    sessions = {k: session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: np.zeros((batch, *input_shape), dtype=np.float32)} for k, s in sessions.items()}
    slowest = 0.0
    for k, s in sessions.items():  # warm-up: allocations, kernel selection
        t0 = time.perf_counter()
        s.run(None, feeds[k])
        slowest = max(slowest, time.perf_counter() - t0)
        s.run(None, feeds[k])
    rounds = max(3, min(repeats, int(budget_s / (slowest * len(paths))))) if budget_s > 0 else repeats
    names, times = list(paths), {k: [] for k in paths}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append(1000 * (time.perf_counter() - t0))
    return paired_summary(times, reference)


def paired_summary(times: dict[str, list[float]], reference: str = "") -> dict[str, dict]:
    """Per model: the median of its per-round milliseconds, their min-max, and (``reference`` among the models) the
    median over rounds of reference / model - paired by round, so a slow round slows both sides of the ratio."""
    out = {}
    for k, ms in times.items():
        row = {"latency_ms": statistics.median(ms), "min_max_ms": [min(ms), max(ms)]}
        if reference in times:
            row["speedup_vs_reference"] = statistics.median(t / m for t, m in zip(times[reference], ms, strict=True))
        out[k] = row
    return out
