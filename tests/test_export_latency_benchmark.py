"""benchmarks/export_latency.py: argument parsing (its timing is stages.core.onnx_runtime's, tested in test_export.py)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("export_latency", Path(__file__).resolve().parents[1] / "benchmarks" / "export_latency.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("text", ["noequals", "=path", "name="])
def test_model_argument_needs_name_and_path(text):
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=PATH"):
        bench.named_path(text)


def test_model_argument_splits_at_the_first_equals_sign():
    assert bench.named_path("int8=/tmp/a=b.onnx") == ("int8", Path("/tmp/a=b.onnx"))
