"""Process-level helpers every stage uses: seeding, device choice, error handling."""

from __future__ import annotations

import os
import random
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch


class StageError(RuntimeError):
    """An input (file, artifact, dataset) is missing or invalid; the message says which and why."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Same seed, same machine -> same bytes. On CPU this is the default behaviour;
    # on CUDA it selects deterministic kernels (cuBLAS needs the workspace setting).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("common.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


@contextmanager
def timed(out: dict, key: str):
    """Record the wall time of a block in ``out[key]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out[key] = round(time.perf_counter() - t0, 3)


def run_stage(main) -> None:
    """Run a stage's main(); known input errors and failed writes (a full disk, a read-only folder) become one line on
    stderr and exit code 2. Outputs are written through temp folders (``artifacts.atomic_dir``), so nothing
    half-written is left where DVC looks."""
    from .params import ParamsError

    try:
        main()
    except (ParamsError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: writing or reading a file failed{where}: {e.strerror or e}; no output was replaced", file=sys.stderr)
        sys.exit(2)
