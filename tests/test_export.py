"""ONNX export and ONNX Runtime int8: the exported graph computes what the PyTorch model computes, the int8 model is
quantized (QDQ) and tracks the float one, a fake-quant model exports its simulation, and the export stage
calibrates on the synthetic set alone."""

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml

from conftest import ROOT
from stages.core.artifacts import read_json, save_model, save_tensors, sha256_file
from stages.core.models import build_model
from stages.core.onnx_export import calibration_pixels, export_onnx, quantize_int8
from stages.core.onnx_runtime import interleaved_latency_ms, paired_summary, predict, session
from stages.core.params import section_with
from stages.core.quant import _fq_arithmetic, layer_bits, quant_layers, quantize_model

MEAN, STD = [0.286], [0.353]
SHAPE = [1, 28, 28]


def bn_resnet(seed=0):
    """resnet20 with non-trivial BN statistics (a few train-mode passes on shifted noise)."""
    torch.manual_seed(seed)
    m = build_model("resnet20", 10, 1)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, *SHAPE) * 1.5 + 0.3)
    return m.eval()


def reference(model, pixels):
    """The PyTorch model on the normalized images: what the exported pixel-input graph must compute."""
    with torch.no_grad():
        return model((pixels - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    model = bn_resnet()
    facts = export_onnx(model, SHAPE, MEAN, STD, d / "m.onnx", 18)
    return model, d / "m.onnx", facts


def test_float_export_agrees_with_pytorch_on_random_inputs(exported):
    model, path, facts = exported
    assert facts["opset"] == 18 and facts["ops"]["Conv"] == 21  # resnet20: 19 3x3 convs + 2 1x1 shortcuts
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    pixels = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(1))  # batch 5: the batch axis is dynamic
    got = predict(session(path, 1), pixels, 5)
    want = reference(model, pixels)
    assert got.shape == (5, 10)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), float((got - want).abs().max())


def test_export_is_byte_deterministic(exported, tmp_path):
    model, path, _ = exported
    export_onnx(model, SHAPE, MEAN, STD, tmp_path / "again.onnx", 18)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256((tmp_path / "again.onnx").read_bytes()).digest()


def test_int8_model_is_qdq_int8_runs_and_tracks_the_float_model(exported, tmp_path):
    model, path, _ = exported
    calib = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(2))
    facts = quantize_int8(path, tmp_path / "q.onnx", calib, section_with("export", batch_size=32), "calibration")
    assert facts["ops"]["QuantizeLinear"] > 0 and facts["ops"]["DequantizeLinear"] > facts["ops"]["QuantizeLinear"]
    proto = onnx.load(str(tmp_path / "q.onnx"))
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 21  # every conv weight stored as int8
    # per-channel: a conv weight's scale has one entry per output channel
    scales = {i.name: i for i in proto.graph.initializer}
    conv_scale = next(n.input[1] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == int8_weights[0].name)
    assert scales[conv_scale].dims[0] == int8_weights[0].dims[0]
    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(3))
    q = predict(session(tmp_path / "q.onnx", 1), x, 16)
    f = predict(session(path, 1), x, 16)
    rel = float((q - f).norm() / f.norm())
    assert 0 < rel < 0.1, rel  # quantized (not identical), yet close to the float graph
    timed = interleaved_latency_ms({"float": path, "int8": tmp_path / "q.onnx"}, tuple(SHAPE), 4, 1, 5, reference="float")
    assert timed["float"]["speedup_vs_reference"] == 1.0  # a model against itself, round by round
    lo, hi = timed["int8"]["min_max_ms"]
    assert 0 < lo <= timed["int8"]["latency_ms"] <= hi
    assert interleaved_latency_ms({}, tuple(SHAPE), 4, 1, 5, budget_s=1.0) == {}  # nothing exported: no division by zero


def test_speedup_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # round 2 is slow for both models (a busy machine): the paired ratios are 2, 2, 2 -> 2.0,
    # while the ratio of the medians would be 10 / 4 = 2.5
    rows = paired_summary({"teacher": [10.0, 30.0, 8.0], "int8": [5.0, 15.0, 4.0]}, "teacher")
    assert rows["int8"] == {"latency_ms": 5.0, "min_max_ms": [4.0, 15.0], "speedup_vs_reference": 2.0}
    even = paired_summary({"a": [1.0, 4.0], "b": [2.0, 1.0]}, "a")
    assert even["b"]["speedup_vs_reference"] == (0.5 + 4.0) / 2  # an even count: the mean of the middle two
    assert paired_summary({"x": [3.0, 1.0, 2.0]}) == {"x": {"latency_ms": 2.0, "min_max_ms": [1.0, 3.0]}}


def test_int8_calibration_refuses_non_finite_images(exported, tmp_path):
    _, path, _ = exported
    calib = torch.rand(8, *SHAPE)
    calib[3, 0, 0, 0] = float("nan")
    with pytest.raises(Exception, match="NaN or inf"):
        quantize_int8(path, tmp_path / "q.onnx", calib, section_with("export", batch_size=4), "calibration")
    assert not (tmp_path / "q.onnx").exists()


def test_fake_quant_arithmetic_is_torchs_fake_quant():
    """The exportable arithmetic equals torch's fake_quantize kernels bit for bit (the independent reference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * 3
    x[:16] = torch.arange(16) * 0.25 - 2  # exact multiples of the scale: ties at .5 steps
    scale, zero = torch.tensor([0.05]), torch.tensor([7], dtype=torch.int32)
    assert torch.equal(_fq_arithmetic(x, scale, zero, 0, 15), torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 15))
    w = torch.randn(6, 4, 3, 3, generator=g)
    s = w.abs().flatten(1).amax(1) / 7
    z = torch.zeros(6, dtype=torch.int32)
    got = _fq_arithmetic(w, s.view(-1, 1, 1, 1), z.view(-1, 1, 1, 1), -7, 7)
    assert torch.equal(got, torch.fake_quantize_per_channel_affine(w, s, z, 0, -7, 7))


def test_a_4w4a_fake_quant_model_exports_its_simulation(tmp_path):
    model = bn_resnet()
    quantize_model(model, layer_bits(model, 4, 4, 8))
    for _, layer in quant_layers(model):
        layer.act_lo.fill_(-1.0)
        layer.act_hi.fill_(2.0)
    export_onnx(model, SHAPE, MEAN, STD, tmp_path / "fq.onnx", 18)
    pixels = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(4))
    got, want = predict(session(tmp_path / "fq.onnx", 1), pixels, 8), reference(model, pixels)
    float_model = reference(bn_resnet(), pixels)
    assert float((got - float_model).abs().max()) > 1e-2  # the 4-bit simulation is in the graph
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert float((got - want).abs().max()) < 1e-3


def test_calibration_pixels_undo_the_normalization_and_spread_over_the_set(tmp_path):
    pixels = torch.linspace(0, 1, 10).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    normalized = ((pixels - MEAN[0]) / STD[0]).half()
    save_tensors(tmp_path / "images.safetensors", {"images": normalized})
    got, facts = calibration_pixels(tmp_path, 4, {"mean": MEAN, "std": STD})
    assert torch.allclose(got[:, 0, 0, 0], torch.tensor([0, 3, 6, 9]) / 9, atol=2e-3)  # evenly spaced, back in [0, 1]
    assert facts == {"images": 4, "clipped_pixel_fraction": 0.0}
    pixels[9] = 1.5  # an overshooting image is clipped to the range a deployed model is fed, and counted
    save_tensors(tmp_path / "images.safetensors", {"images": ((pixels - MEAN[0]) / STD[0]).half()})
    got, facts = calibration_pixels(tmp_path, 4, {"mean": MEAN, "std": STD})
    assert float(got.max()) == 1.0 and facts["clipped_pixel_fraction"] == 0.25


def test_export_stage_calibrates_on_the_synthetic_set_alone(tmp_path):
    """Data-free boundary: with no real image anywhere (no data/raw, no data/real), export runs and its int8 model
    records the synthetic set's hash as its calibration set."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    card = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "classes": list("abcdefghij"), "input_shape": SHAPE}
    card["normalization"] = {"mean": MEAN, "std": STD}
    for folder in ("teacher", "student"):
        (tmp_path / "models" / folder).mkdir(parents=True)
    save_model(tmp_path / "models" / "teacher", bn_resnet(0), card)
    teacher_sha = sha256_file(tmp_path / "models" / "teacher" / "model.safetensors")
    save_model(tmp_path / "models" / "student", bn_resnet(1), {**card, "kind": "student", "teacher_sha256": teacher_sha})
    synthetic = ((torch.rand(40, *SHAPE, generator=torch.Generator().manual_seed(5)) - MEAN[0]) / STD[0]).half()
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    save_tensors(tmp_path / "data" / "synthetic" / "images.safetensors", {"images": synthetic})
    r = subprocess.run([sys.executable, "-m", "stages.export"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "real").exists()
    out = read_json(tmp_path / "models" / "export" / "card.json")
    assert out["calibration_set_sha256"] == sha256_file(tmp_path / "data" / "synthetic" / "images.safetensors")
    assert out["models"]["int8_synthetic"]["calibration"] == {
        "set": "data/synthetic",
        "method": "minmax",
        "images": 40,
        "clipped_pixel_fraction": 0.0,
    }
    assert set(out["models"]) == {"student_fp32", "teacher_fp32", "int8_synthetic"}
    for entry in out["models"].values():
        assert sha256_file(tmp_path / "models" / "export" / entry["file"]) == entry["sha256"]
    assert out["models"]["student_fp32"]["pytorch_check"]["max_abs_logit_diff"] < 1e-4
    assert np.isclose(out["models"]["student_fp32"]["pytorch_check"]["top1_agreement"], 1.0)
