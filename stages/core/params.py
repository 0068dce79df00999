"""Load and validate one section of params.yaml against the one schema.

params.yaml is the one source of defaults: every key of a section must be set there (the shipped file sets them
all), and the schema below holds only types, ranges and allowed values, no defaults. Each stage reads its own
section plus ``common`` (and ``data`` for the stages that read real images). A section is a frozen pydantic model
(``extra="forbid"``, strict types, finite floats only); ``load_params`` raises one ``ParamsError`` naming the key,
the value and what is allowed (unknown, missing, wrong type, NaN/inf, out of range, not a choice) before a stage
writes anything. Tests and scripts that need "the defaults with one change" use ``section_with``, which starts from
the shipped params.yaml.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# the registry's names, kept here so that validating params needs no torch import (tests check they agree)
ARCH_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg16_bn")
# the arch syntax (models.resolve_arch checks that the name exists): registry or torchvision name, torchvision:<name>, module:callable
_NAME = r"[A-Za-z_]\w*"
ARCH_PATTERN = rf"^(?:(?:torchvision:)?{_NAME}|{_NAME}(?:\.{_NAME})*:{_NAME}(?:\.{_NAME})*)$"
ARCH_SYNTAX = f"a registry name ({', '.join(ARCH_NAMES)}), torchvision:<name> or package.module:callable"

PRECISIONS = ("auto", "fp32", "bf16")  # stages/core/precision.py resolves them
BITS = (2, 3, 4, 5, 6, 7, 8, 32)  # 32 = float (not quantized)
SHIPPED = Path(__file__).resolve().parents[2] / "params.yaml"  # the project's own params.yaml: the defaults


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type, not finite or out of range."""


def num(lo, hi, *, lo_open: bool = False, hi_open: bool = False):
    """A field bounded to [lo, hi] (open ends with lo_open / hi_open)."""
    return Field(**{("gt" if lo_open else "ge"): lo, ("lt" if hi_open else "le"): hi})


Precision = Literal[PRECISIONS]
Bits = Literal[BITS]
Scalar = int | float | bool | str


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Common(Section):
    seed: int = num(0, 2**31 - 1)
    device: Literal["auto", "cpu", "cuda"]


class Data(Section):
    name: Literal["fashion_mnist", "cifar10", "imagefolder"]
    root: str
    # validation split: this fraction of the training split (of the evaluation set when there is no training split),
    # held out for tuning; the teacher never trains on it and reported accuracies come from the test split
    val_fraction: float = num(0.0, 0.5)


class PrepareData(Section):
    source: Literal["auto", "debian", "download"]
    debian_dir: str
    path: str  # cifar10 / imagefolder: batches folder, ImageFolder tree or .tar.gz ("" = cifar10 download)
    image_size: int = num(0, 4096)  # cifar10 / imagefolder: resize images to this square size (0 = keep)


class TrainTeacher(Section):
    source: Literal["train", "file"]  # file = bring your own teacher: import a state_dict, no training
    file: str  # source file: a safetensors or .pt state_dict under models/external/
    num_classes: int = num(0, 1_000_000)  # source file: the classifier's outputs
    input_shape: list[int]  # source file: [channels, height, width]
    mean: list[float]  # source file: per-channel input normalization the teacher was trained with
    std: list[float]
    arch: str = Field(pattern=ARCH_PATTERN)  # registry name, torchvision:<name> or package.module:callable
    arch_kwargs: dict[str, Scalar | list[Scalar]]  # torchvision / custom archs: constructor keyword arguments
    max_train_images: int = num(0, 10_000_000)  # 0 = the whole training split
    epochs: int = num(1, 1000)
    batch_size: int = num(1, 65536)
    lr: float = num(0.0, 10.0, lo_open=True)
    momentum: float = num(0.0, 1.0, hi_open=True)
    weight_decay: float = num(0.0, 1.0)
    label_smoothing: float = num(0.0, 1.0, hi_open=True)
    max_shift: int = num(0, 16)
    flip: bool
    cutout: float = num(0.0, 1.0, hi_open=True)  # side of one zeroed square per image / image height; 0 = off
    precision: Precision  # auto = bf16 autocast only where bf16 is native, else fp32


class ExtractBnStats(Section):
    default_atol: float = num(0.0, 1.0)


class Synthesize(Section):
    method: Literal["deepinversion", "gaussian", "inception", "bns", "bns_inception", "generator"]
    n_images: int = num(1, 10_000_000)
    batch_size: int = num(1, 65536)
    iterations: int = num(1, 100_000)
    lr: float = num(0.0, 100.0, lo_open=True)
    bn_loss: Literal["normalized", "l2"]  # deepinversion's BN term: normalized (scale-free) | l2 (the paper's sum of norms)
    lambda_bn: float = num(0.0, 1e6)
    first_bn_weight: float = num(0.0, 1e6)  # deepinversion / generator: multiplier of the first BN layer's term
    lambda_ce: float = num(0.0, 1e6)
    lambda_tv: float = num(0.0, 1e6)
    lambda_l2: float = num(0.0, 1e6)
    lambda_bns: float = num(0.0, 1e6)  # alpha: BNS KL weight (bns, bns_inception)
    lambda_prior: float = num(0.0, 1e6)  # beta: smoothing prior MSE(x, blur(x)) (inception, bns, bns_inception)
    lambda_inception: float = num(0.0, 1e6)  # gamma: exp(-logit/scale) (inception, bns_inception)
    inception_scale: float = num(0.0, 1e4, lo_open=True)
    blur_sigma: float = num(0.0, 16.0, lo_open=True)
    duplicates: int = num(1, 256)  # in-batch augmentation: copies of each image per forward pass
    crop_min_area: float = num(0.0, 1.0, lo_open=True)  # random resized crop of each copy; 1 = off
    cutout: float = num(0.0, 1.0, hi_open=True)  # side of the cutout square / image height; 0 = off
    max_shift: int = num(0, 64)
    flip: bool
    grid_per_class: int = num(1, 64)
    # method generator: a conditional generator warmed up once, then a few steps per batch (stages/core/generator.py)
    generator_warmup: int = num(0, 1_000_000)  # Adam steps of the shared starting point (batches of batch_size)
    generator_steps: int = num(1, 100_000)  # Adam steps per batch from that starting point
    generator_lr: float = num(0.0, 1.0, lo_open=True)
    generator_nz: int = num(1, 4096)  # latent size
    generator_width: int = num(1, 1024)  # channels of the generator's last block (2x in the first)
    precision: Precision  # bfloat16 autocast of the teacher; auto = only where bf16 is native
    early_stop_tol: float = num(0.0, 1.0)  # end a batch when its loss improved < tol (relative) over a window; 0 = off
    early_stop_window: int = num(1, 100_000)
    warm_start: float = num(0.0, 1.0)  # > 0: later batches start from batch 0's images (this weight) + noise
    warm_iterations: int = num(0, 100_000)  # steps of a warm-started batch; 0 = iterations
    nproc: int = num(1, 1024)  # processes (torchrun; gloo on CPU, NCCL on GPU), each makes every nproc-th batch
    threads: int = num(0, 1024)  # torch threads per process; 0 = cores / nproc


class RealTransferSet(Section):
    n_images: int = num(0, 10_000_000)  # 0 = as many as the synthetic set


class GaussianTransferSet(Section):
    n_images: int = num(0, 10_000_000)  # 0 = as many as the synthetic set


class Prune(Section):
    method: Literal["l1_unstructured", "structured"]
    scope: Literal["global", "layerwise"]
    sparsity: float = num(0.0, 1.0, hi_open=True)  # l1_unstructured: fraction of conv+linear weights zeroed
    min_density: float = num(0.0, 1.0)  # global: every layer keeps at least this fraction (0 = plain global L1)
    ranking: Literal["magnitude", "lamp"]  # global: |w| (global L1, the paper's) | LAMP scores (layer-adaptive)
    structured_target: Literal["macs", "channels"]
    structured_amount: float = num(0.0, 0.95)  # structured: fraction of MACs (or channels) removed
    structured_scope: Literal["layerwise", "global"]
    round_to: int = num(1, 512)  # structured: kept channel counts are multiples of this (1 = any)


class Quantize(Section):
    weight_bits: Bits  # per-channel symmetric; 32 = off
    act_bits: Bits  # per-tensor asymmetric, input of every conv/linear; 32 = off
    first_last_bits: Literal[(0, *BITS)]  # first conv and last linear; 0 = as the rest
    weight_range: Literal["max", "mse"]  # per-channel weight grid: max|w| (nothing clipped) | least-squares clip
    calibration: Literal["minmax", "percentile"]
    percentile: float = num(50.0, 100.0, lo_open=True)
    calib_images: int = num(0, 10_000_000)  # synthetic images used for calibration; 0 = all
    batch_size: int = num(1, 65536)


class Distill(Section):
    epochs: int = num(0, 10_000)
    batch_size: int = num(1, 65536)
    lr: float = num(0.0, 10.0)
    momentum: float = num(0.0, 1.0, hi_open=True)
    weight_decay: float = num(0.0, 1.0)
    schedule: Literal["constant", "cosine"]
    temperature: float = num(0.0, 100.0, lo_open=True)
    freeze_bn: bool
    recalibrate_bn: bool
    max_shift: int = num(0, 64)
    flip: bool
    seed: int = num(0, 2**31 - 1)  # varies only the distillation (batch order, augmentation, MixUp)
    transfer_set: Literal["synthetic", "real", "gaussian"]  # real = NOT data-free (baseline)
    iq_beta: float = num(0.0, 1e6)  # weight of the intermediate-feature (IQ) smooth-L1 loss; 0 = off
    iq_layers: str  # comma-separated module names whose outputs the IQ loss compares
    mixup_alpha: float = num(0.0, 100.0)  # in-batch MixUp, lambda ~ Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = num(0.0, 100.0)  # in-batch CutMix, nominal box area 1 - lambda; 0 = off; with MixUp, one per batch
    adaptive_rounds: int = num(0, 1000)  # student-aware synthesis rounds during KD (synthetic transfer set only); 0 = off
    adaptive_images: int = num(1, 10_000_000)  # new images per round
    adaptive_weight: float = num(0.0, 1e6)  # weight of the competition term 1 - JS(teacher, student) / ln 2
    nproc: int = num(1, 1024)
    threads: int = num(0, 1024)


class Evaluate(Section):
    batch_size: int = num(1, 65536)
    fgsm_eps: float = num(0.0, 1.0)  # FGSM step in [0, 1] pixel units for the J_KL table's adversarial set
    jkl_max_images: int = num(0, 10_000_000)  # J_KL table: at most this many images per data set (0 = all)
    latency_threads: int = num(1, 1024)  # CPU threads while timing (pinned, so runs compare)
    latency_repeats: int = num(1, 100_000)  # timed forwards per batch size; the median is reported
    latency_budget_s: float = num(0.0, 3600.0)  # seconds per model and batch size; 0 = no bound


class Export(Section):
    opset: int = num(18, 23)  # ONNX opset of torch.onnx.export (its torch.export-based exporter)
    teacher: bool  # also export the teacher (float), the reference the student is compared with in ONNX Runtime
    int8: bool  # ONNX Runtime static int8 (QDQ) of the student, calibrated on the synthetic set
    calibration: Literal["minmax", "entropy", "percentile"]  # ONNX Runtime's calibrate_method
    calib_images: int = num(0, 10_000_000)  # calibration images; 0 = the whole synthetic set
    per_channel: bool  # int8 weights per output channel (else per tensor)
    activation_type: Literal["int8", "uint8"]  # uint8 (U8S8: ONNX Runtime's fast x86 path) or int8 (S8S8)
    reduce_range: bool  # 7-bit weights: keeps U8S8 from saturating in the AVX2 / AVX512 (non-VNNI) kernels
    batch_size: int = num(1, 65536)
    check_atol: float = num(0.0, 1.0, lo_open=True)  # a float export whose logits differ from PyTorch's by more is refused


class ExportInt8Real(Section):
    n_images: int = num(0, 10_000_000)  # real calibration images (NOT data-free); 0 = as many as export calibrates on


SECTIONS: dict[str, type[Section]] = {
    "common": Common,
    "data": Data,
    "prepare_data": PrepareData,
    "train_teacher": TrainTeacher,
    "extract_bn_stats": ExtractBnStats,
    "synthesize": Synthesize,
    "real_transfer_set": RealTransferSet,
    "gaussian_transfer_set": GaussianTransferSet,
    "prune": Prune,
    "quantize": Quantize,
    "distill": Distill,
    "export": Export,
    "export_int8_real": ExportInt8Real,
    "evaluate": Evaluate,
}

_KIND = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}


def _bounds(field) -> str:
    lo = hi = None
    lo_b, hi_b = "[", "]"
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            lo, lo_b = (m.ge, "[") if isinstance(m, at.Ge) else (m.gt, "(")
        if isinstance(m, (at.Le, at.Lt)):
            hi, hi_b = (m.le, "]") if isinstance(m, at.Le) else (m.lt, ")")
    return f" in {lo_b}{lo}, {hi}{hi_b}" if lo is not None else ""


def expected(field) -> str:
    """What a key accepts, in words: 'a number in [0.0, 1.0)', 'one of [...]', 'a list of integers', ..."""
    t = field.annotation
    if getattr(t, "__origin__", None) is Literal:
        return f"one of {list(t.__args__)}"
    if t in _KIND:
        pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), None)
        if pattern == ARCH_PATTERN:
            return ARCH_SYNTAX
        return _KIND[t] + _bounds(field)
    if getattr(t, "__origin__", None) is list:
        return f"a list of {'integers' if t.__args__[0] is int else 'numbers'}"
    return "a mapping of names to numbers, true/false, strings or lists of them"


def _message(section: str, cls: type[Section], raw: dict, err: dict) -> str:
    key = str(err["loc"][0]) if err["loc"] else ""
    where = f"params.yaml: {section}.{key}"
    if err["type"] == "missing":
        return f"{where} is missing: params.yaml sets every key (the shipped params.yaml lists them with their defaults)"
    field = cls.model_fields[key]
    value = raw.get(key)
    what = expected(field)
    if err["type"] == "finite_number" or (isinstance(value, float) and value != value):
        return f"{where} = {value!r} is not a finite number (NaN and inf are refused); expected {what}"
    if err["type"] in ("literal_error", "string_pattern_mismatch"):
        return f"{where} = {value!r} is not allowed; expected {what}"
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where} = {value!r} is out of range; expected {what}"
    return f"{where} = {value!r} has the wrong type; expected {what}"


def parse_section(name: str, raw: Any) -> Section:
    """Validate one whole section (every key set) and return its frozen config object."""
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{name}' must be a mapping of keys to values, got {raw!r}")
    for key in raw:
        if key not in cls.model_fields:
            hint = difflib.get_close_matches(str(key), cls.model_fields, n=1)
            raise ParamsError(
                f"params.yaml: unknown key {name}.{key}"
                + (f" (did you mean {name}.{hint[0]}?)" if hint else "")
                + f"; known keys: {sorted(cls.model_fields)}"
            )
    values = {k: float(v) if cls.model_fields[k].annotation is float and type(v) is int else v for k, v in raw.items()}
    try:
        return cls(**values)
    except ValidationError as e:
        first = min(e.errors(), key=lambda err: list(cls.model_fields).index(str(err["loc"][0])) if err["loc"] else 0)
        raise ParamsError(_message(name, cls, raw, first)) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-05`` (no dot) is a number, as DVC writes it after
    ``dvc exp run -S key=0.00001`` (DVC itself reads YAML 1.2); plain YAML 1.1 would make it the string '1e-05'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_params(path: str | Path) -> dict:
    """The whole params.yaml as a mapping of sections (unknown sections refused)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the project root")
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ParamsError(f"{path} must be a mapping of sections")
    unknown = [s for s in doc if s not in SECTIONS]
    if unknown:
        raise ParamsError(f"params.yaml: unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    return doc


def load_params(*sections: str, path: str | Path = "params.yaml") -> dict:
    """Read ``path`` and return ``{section: config}`` for each requested section."""
    doc = read_params(path)
    return {s: parse_section(s, doc.get(s)) for s in sections}


def shipped(name: str) -> dict:
    """The shipped params.yaml's section ``name`` as a plain mapping: the defaults."""
    return dict(read_params(SHIPPED).get(name) or {})


def section_with(section: str, /, **overrides) -> Section:
    """The shipped defaults of ``section`` with ``overrides`` applied, validated (for tests and scripts)."""
    return parse_section(section, shipped(section) | overrides)


def as_dict(cfg: Section) -> dict:
    return cfg.model_dump()
