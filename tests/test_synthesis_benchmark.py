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


def _run(capability: str, threads: int, cpu: str = "AMD EPYC") -> dict:
    return {"machine": {"cpu": cpu, "cpu_capability": capability, "threads": threads}, "rows": {"reference loop": {"synthesis_s": 1.0}}}


def test_a_single_run_from_an_older_file_becomes_its_machines_entry():
    old = _run("AVX2", 1)
    assert bench.time_to_accuracy_runs({"time_to_accuracy": old}) == {"AMD EPYC, AVX2, 1 thread(s)": old}


def test_runs_are_kept_per_machine():
    runs = {"AMD EPYC, AVX2, 1 thread(s)": _run("AVX2", 1), "AMD EPYC, AVX512, 2 thread(s)": _run("AVX512", 2)}
    assert bench.time_to_accuracy_runs({"time_to_accuracy": runs}) == runs
    assert bench.time_to_accuracy_runs({}) == {}


def test_two_cpus_of_one_capability_keep_a_run_each_whatever_key_the_file_held():
    """A file keyed by capability and threads only (before the CPU model was part of the key) is re-keyed; an Intel
    AVX512 run then sits beside the AMD one instead of replacing it."""
    amd, intel = _run("AVX512", 2), _run("AVX512", 2, cpu="Intel(R) Xeon(R) Processor")
    runs = bench.time_to_accuracy_runs({"time_to_accuracy": {"AVX512, 2 thread(s)": amd}})
    assert runs == {"AMD EPYC, AVX512, 2 thread(s)": amd}
    runs[bench.machine_label(intel["machine"])] = intel
    assert list(runs) == ["AMD EPYC, AVX512, 2 thread(s)", "Intel(R) Xeon(R) Processor, AVX512, 2 thread(s)"]
