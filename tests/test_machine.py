"""stages/core/machine.py: the machine facts printed beside timings."""

import torch

from stages.core import machine


def test_int8_features_follow_the_probes_and_survive_a_torch_without_one(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert machine.int8_features() == {"vnni": True, "amx": False}
    monkeypatch.delattr(torch.cpu, "_is_vnni_supported")
    assert machine.int8_features() == {"vnni": False, "amx": False}


def test_cpu_name_reads_the_model_name_line(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: avx2\n")
    real = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    assert machine.cpu_name() == "AMD EPYC 9R14"
