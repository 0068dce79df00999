"""Running an exported ONNX model in ONNX Runtime: logits over a set of images, and latency with threads pinned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from .cost import median_ms
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


def latency_ms(path: Path, input_shape: tuple[int, ...], batch: int, threads: int, repeats: int, budget_s: float = 0.0) -> float:
    """Median milliseconds per run of a ``batch``-image input, ``threads`` intra-op threads; the budget rule of
    ``cost.latency_ms`` (the first run's time bounds the warm-up and timed repeats, at least 3 timed)."""
    sess = session(path, threads)
    feed = {sess.get_inputs()[0].name: np.zeros((batch, *input_shape), dtype=np.float32)}
    return median_ms(lambda: sess.run(None, feed), repeats, budget_s)
