"""precision.resolve: bf16 autocast only where bf16 is native; forced bf16 elsewhere warns once."""

import warnings

import pytest
import torch

from stages.core import precision
from stages.core.params import section_with

CPU = torch.device("cpu")


def fake_cpu(monkeypatch, avx512_bf16: bool, amx: bool = False, isa: str = "AVX2"):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    precision._warned.clear()


def test_auto_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    fake_cpu(monkeypatch, avx512_bf16=False)
    assert precision.resolve("auto", CPU, "train_teacher.precision") == "fp32"
    d = precision.describe("auto", "fp32", CPU)
    assert d == {"requested": "auto", "resolved": "fp32", "native_bf16": False, "device": "cpu", "cpu_capability": "AVX2"}


@pytest.mark.parametrize("avx512_bf16,amx", [(True, False), (False, True)])
def test_auto_is_bf16_where_it_is_native(monkeypatch, avx512_bf16, amx):
    fake_cpu(monkeypatch, avx512_bf16=avx512_bf16, amx=amx, isa="AVX512")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where bf16 is native
        assert precision.resolve("auto", CPU, "synthesize.precision") == "bf16"
        assert precision.resolve("bf16", CPU, "synthesize.precision") == "bf16"
    assert precision.resolve("fp32", CPU, "synthesize.precision") == "fp32"


def test_forced_bf16_without_native_support_runs_but_warns_once(monkeypatch):
    fake_cpu(monkeypatch, avx512_bf16=False)
    with pytest.warns(UserWarning, match=r"synthesize\.precision = bf16.*AVX2.*emulated.*~10x slower") as record:
        assert precision.resolve("bf16", CPU, "synthesize.precision") == "bf16"
        assert precision.resolve("bf16", CPU, "synthesize.precision") == "bf16"
    assert len(record) == 1


def test_autocast_really_runs_bfloat16_only_when_resolved_so():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with precision.autocast("bf16", CPU):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("fp32", CPU):
        assert conv(x).dtype == torch.float32


def test_params_default_to_auto_and_reject_other_values():
    assert section_with("train_teacher").precision == "auto"
    assert section_with("synthesize").precision == "auto"
    with pytest.raises(ValueError, match="train_teacher.precision"):
        section_with("train_teacher", **{"precision": "fp16"})
    with pytest.raises(ValueError, match="unknown key train_teacher.bf16"):
        section_with("train_teacher", **{"bf16": True})
