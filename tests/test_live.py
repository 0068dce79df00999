"""Curves go through dvclive: one tsv per metric with the steps given, no timestamps, nothing outside the folder."""

import json
import os

from stages.core.live import log_curve


def test_curve_lands_as_dvclive_tsv_files(tmp_path):
    rows = [{"epoch": 1, "kd_loss": 2.5, "teacher_agreement": 0.25}, {"epoch": 2, "kd_loss": 1.0, "teacher_agreement": float("nan")}]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # dvclive must not write dvc.yaml or anything else beside the folder
    try:
        out = log_curve(tmp_path / "reports", rows, "epoch")
    finally:
        os.chdir(cwd)
    metrics = out / "plots" / "metrics"
    assert (metrics / "kd_loss.tsv").read_text() == "step\tkd_loss\n1\t2.5\n2\t1.0\n"
    assert (metrics / "teacher_agreement.tsv").read_text() == "step\tteacher_agreement\n1\t0.25\n"  # NaN skipped
    assert json.loads((out / "metrics.json").read_text())["kd_loss"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_same_curve_same_bytes(tmp_path):
    rows = [{"step": s, "total": 1.0 / s} for s in range(1, 5)]
    a, b = log_curve(tmp_path / "a", rows, "step"), log_curve(tmp_path / "b", rows, "step")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
