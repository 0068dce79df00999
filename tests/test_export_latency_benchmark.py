"""benchmarks/export_latency.py: the interleaved latency summary, checked against numbers worked by hand."""

import argparse
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("export_latency", Path(__file__).resolve().parents[1] / "benchmarks" / "export_latency.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_speedup_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # round 2 is slow for both models (a busy machine): the paired ratios are 2, 2, 2 -> 2.0,
    # while the ratio of the medians would be 10 / 4 = 2.5
    times = {"teacher_fp32": {64: [10.0, 30.0, 8.0]}, "int8": {64: [5.0, 15.0, 4.0]}}
    rows = bench.summarize(times, "teacher_fp32")
    assert rows["int8"]["speedup_b64_vs_teacher_fp32"] == pytest.approx(2.0)
    assert rows["int8"]["latency_ms_b64"] == pytest.approx(5.0)
    assert rows["int8"]["latency_ms_b64_min_max"] == [4.0, 15.0]
    assert rows["teacher_fp32"]["speedup_b64_vs_teacher_fp32"] == pytest.approx(1.0)
    odd = bench.summarize({"a": {1: [1.0, 4.0]}, "b": {1: [2.0, 1.0]}}, "a")
    assert odd["b"]["speedup_b1_vs_a"] == pytest.approx((0.5 + 4.0) / 2)  # median of an even count: the mean of the middle two


def test_summary_without_the_reference_has_no_speedup():
    rows = bench.summarize({"x": {64: [3.0, 1.0, 2.0]}}, "teacher_fp32")
    assert rows["x"] == {"latency_ms_b64": 2.0, "latency_ms_b64_min_max": [1.0, 3.0]}


@pytest.mark.parametrize("text", ["noequals", "=path", "name="])
def test_model_argument_needs_name_and_path(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        bench.named_path(text)
