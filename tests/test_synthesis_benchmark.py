"""benchmarks/synthesis.py: the generator-budget argument (its timings are the pipeline's, tested elsewhere)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("synthesis_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "synthesis.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_budget_without_precision_runs_at_the_default_auto():
    assert bench.budget("1024:100:10") == (1024, 100, 10, "auto")


@pytest.mark.parametrize("prec", ["fp32", "bf16", "auto"])
def test_budget_names_its_precision(prec):
    assert bench.budget(f"2048:50:2:{prec}") == (2048, 50, 2, prec)


@pytest.mark.parametrize("text", ["1024:100", "1024:100:ten", "1024:100:10:fp32:x", ""])
def test_malformed_budget_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="IMAGES:WARMUP:STEPS"):
        bench.budget(text)


def test_unknown_precision_is_refused_by_name():
    with pytest.raises(argparse.ArgumentTypeError, match="'fp16'"):
        bench.budget("1024:100:10:fp16")


def _run(capability: str, threads: int) -> dict:
    return {"machine": {"cpu_capability": capability, "threads": threads}, "rows": {"reference loop": {"synthesis_s": 1.0}}}


def test_a_single_run_from_an_older_file_becomes_its_machines_entry():
    old = _run("AVX2", 1)
    assert bench.time_to_accuracy_runs({"time_to_accuracy": old}) == {"AVX2, 1 thread(s)": old}


def test_runs_are_kept_per_machine():
    runs = {"AVX2, 1 thread(s)": _run("AVX2", 1), "AVX512, 2 thread(s)": _run("AVX512", 2)}
    assert bench.time_to_accuracy_runs({"time_to_accuracy": runs}) == runs
    assert bench.time_to_accuracy_runs({}) == {}
