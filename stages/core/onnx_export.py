"""ONNX export of a model artifact and ONNX Runtime static int8 quantization calibrated on given images.

The exported graph takes what a deployed classifier gets: float32 pixels in [0, 1], shape [batch, C, H, W]
(batch dynamic); the teacher's normalization is inside the graph. Export runs ``torch.onnx.export`` (the
torch.export-based exporter) at the opset the params name, then ``onnx.checker`` (full check, with shape
inference), and the file is re-serialized with deterministic map order so the same model gives the same bytes.
A fake-quant model exports its simulation as plain ops (``quant._fq_arithmetic``): ONNX's QuantizeLinear has no
grid below 8 bits.

int8: ONNX Runtime's ``quantize_static`` in QDQ format, weights int8 per output channel (symmetric), activations
per tensor (int8 or uint8), ranges from a calibration data reader over the images given - the synthetic set for the data-free
model, real images only in the labelled NOT data-free baseline stage.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from .artifacts import load_tensors
from .onnx_runtime import predict, session
from .runtime import StageError
from .training import match_rate

INPUT, OUTPUT = "pixels", "logits"


class PixelInput(nn.Module):
    """``model((pixels - mean) / std)``: the shipped graph takes pixels, not normalized tensors."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def save_deterministic(model: onnx.ModelProto, path: Path) -> None:
    """Protobuf maps serialize in arbitrary order: write them sorted, so equal models are equal files."""
    path.write_bytes(model.SerializeToString(deterministic=True))


def export_onnx(model: nn.Module, input_shape: list[int], mean: list[float], std: list[float], path: Path, opset: int) -> dict:
    """Export ``model`` (eval mode, on CPU) with pixel input to ``path``; returns the graph's facts (opset, op counts)."""
    wrapped = PixelInput(model.cpu().eval(), mean, std).eval()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    log = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(log):
            program = torch.onnx.export(
                wrapped,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; one line naming the model's failing part
        first = str(e).strip().splitlines()
        raise StageError(f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: {first[-1] if first else ''}"[:600]) from e
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise StageError(f"the exported ONNX graph of {type(model).__name__} fails onnx.checker: {str(e)[:400]}") from e
    save_deterministic(proto, path)
    return graph_facts(proto)


def versions() -> dict:
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def graph_facts(proto: onnx.ModelProto) -> dict:
    ops = Counter(n.op_type for n in proto.graph.node)
    return {
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items())),
    }


class ImageReader:
    """ONNX Runtime calibration data reader over a tensor of pixel images, in fixed order and batch size."""

    def __init__(self, pixels: torch.Tensor, batch_size: int, desc: str):
        self.batches = [pixels[i : i + batch_size].float().numpy() for i in range(0, len(pixels), batch_size)]
        self.bar = tqdm(total=len(self.batches), desc=desc, unit="batch")

    def get_next(self) -> dict | None:
        if not self.batches:
            self.bar.close()
            return None
        self.bar.update()
        batch = self.batches.pop(0)
        if not np.isfinite(batch).all():
            raise StageError("int8 calibration: the calibration images hold NaN or inf")
        return {INPUT: batch}


def quantize_int8(fp32: Path, out: Path, pixels: torch.Tensor, cfg, desc: str) -> dict:
    """Static QDQ int8 of the float ONNX model ``fp32`` into ``out``, calibrated on ``pixels`` with the settings of
    the ``export`` params section ``cfg`` (batch_size, calibration, per_channel, activation_type, reduce_range);
    returns the graph's facts. Activations uint8 (U8S8, ONNX Runtime's fast x86 kernels, which can saturate on CPUs without VNNI unless
    reduce_range keeps the weights to 7 bits: ONNX Runtime's quantization guide) or int8 (S8S8). Measured here:
    params.yaml."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="int8-", dir=out.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # constant folding, BN fusion, shapes
        quantize_static(
            str(pre),
            str(q),
            ImageReader(pixels, cfg.batch_size, desc),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[cfg.activation_type],
            weight_type=QuantType.QInt8,
            calibrate_method=methods[cfg.calibration],
            reduce_range=cfg.reduce_range,
            extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True},
        )
        proto = onnx.load(str(q))
    onnx.checker.check_model(proto, full_check=True)
    save_deterministic(proto, out)
    facts = graph_facts(proto)
    if not facts["ops"].get("QuantizeLinear"):
        raise StageError(f"{out}: ONNX Runtime's quantizer left no QuantizeLinear node (nothing was quantized)")
    return facts


def calibration_pixels(folder: Path, n: int, norm: dict) -> tuple[torch.Tensor, dict]:
    """``n`` (0 = all) evenly spaced images of a transfer set (every class of a class-ordered set), back in pixel
    space and clipped to [0, 1] (the range a deployed model is fed; synthetic images may overshoot it); returns
    (pixels, facts)."""
    images = load_tensors(folder / "images.safetensors")["images"].float()
    if n:
        if n > len(images):
            raise StageError(f"{n} calibration images requested, {folder} has {len(images)}")
        images = images[torch.linspace(0, len(images) - 1, n).round().long()]
    mean = torch.tensor(norm["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).reshape(1, -1, 1, 1)
    pixels = images * std + mean
    tol = 0.5 / 255  # float16 storage rounds a 0 or a 1 by less than half a grey level: not an overshoot
    clipped = float(((pixels < -tol) | (pixels > 1 + tol)).float().mean())
    return pixels.clamp(0, 1), {"images": len(pixels), "clipped_pixel_fraction": round(clipped, 6)}


def check_against_pytorch(model, onnx_path: Path, pixels: torch.Tensor, norm: dict, cfg, what: str, simulated: bool) -> dict:
    """Max |logit difference| and top-1 agreement of the ONNX graph against the PyTorch model. A float graph that
    differs by more than export.check_atol is refused; a fake-quant graph (``simulated``: its rounding steps can land
    on the other side of a tie under another kernel's float order) must agree on >= 99% of the top-1 labels."""
    mean = torch.tensor(norm["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).reshape(1, -1, 1, 1)
    b = cfg.batch_size
    with torch.no_grad():
        ref = torch.cat([model((pixels[i : i + b] - mean) / std).float() for i in range(0, len(pixels), b)])
    got = predict(session(onnx_path, 0), pixels, b, f"{what}: ONNX vs PyTorch")
    diff, agree = float((got - ref).abs().max()), match_rate(got.argmax(1), ref.argmax(1))
    if simulated and not agree >= 0.99:
        raise StageError(f"{what}: the exported fake-quant graph agrees with PyTorch on only {agree:.2%} of the top-1 labels")
    if not simulated and not diff <= cfg.check_atol:
        raise StageError(f"{what}: the ONNX graph's logits differ from PyTorch's by {diff:.3g} > export.check_atol = {cfg.check_atol}")
    return {"max_abs_logit_diff": diff, "top1_agreement": agree, "images": len(pixels), "simulated_quantization": simulated}
