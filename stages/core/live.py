"""Training curves logged with dvclive: one ``plots/metrics/<name>.tsv`` per column (dvc plots reads them) and the
last step's values in ``metrics.json``, under a ``live/`` folder inside the stage's own output folder.

``Live(dvcyaml=None, save_dvc_exp=False)``: dvc.yaml declares the outputs and plots itself and the stage runs inside
``dvc repro`` / ``dvc exp run``, so dvclive neither edits dvc.yaml nor makes experiments. No timestamps: the same
run writes the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

from dvclive import Live


def log_curve(folder: Path, rows: list[dict], step: str) -> Path:
    """Log ``rows`` (one dict per step, ``step`` naming the step column) to ``folder / "live"``; returns that folder.
    Missing or non-finite values are skipped (dvclive logs numbers only)."""
    out = folder / "live"
    with Live(dir=str(out), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for row in rows:
            live.step = int(row[step])
            for name, value in row.items():
                if name != step and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    live.log_metric(name, float(value))
    return out
