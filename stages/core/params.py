"""Load and validate one section of params.yaml.

Each stage reads its own section plus the shared ``common`` section (and ``data``
for the two stages that read real images). A section is a plain dataclass whose
defaults document the knobs; ``load_params`` checks every key of the YAML against
it (unknown keys, types, ranges, allowed values) and raises one ``ParamsError``
naming the key and what is allowed, before a stage writes anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# the registry's names, kept here so that validating params needs no torch import (tests check they agree)
ARCH_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg16_bn")
# the arch syntax (models.resolve_arch checks that the name exists): registry or torchvision name, torchvision:<name>, module:callable
_NAME = r"[A-Za-z_]\w*"
ARCH_PATTERN = (
    rf"(?:torchvision:)?{_NAME}|{_NAME}(?:\.{_NAME})*:{_NAME}(?:\.{_NAME})*",
    f"a registry name ({', '.join(ARCH_NAMES)}), torchvision:<name> or package.module:callable",
)


PRECISIONS = ("auto", "fp32", "bf16")  # stages/core/precision.py resolves them


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _p(default, lo=None, hi=None, *, lo_open=False, hi_open=False, choices=None, item=None, pattern=None):
    spec = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices, "item": item, "pattern": pattern}
    if isinstance(default, dict):
        return field(default_factory=default.copy, metadata=spec)
    return field(default=default, metadata=spec)


@dataclass(frozen=True)
class Common:
    seed: int = _p(0, 0, 2**31 - 1)
    device: str = _p("auto", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class Data:
    name: str = _p("fashion_mnist", choices=("fashion_mnist", "cifar10", "imagefolder"))
    root: str = _p("data/raw")
    # validation split: this fraction of the training split (of the evaluation set when there is no training split),
    # held out for tuning; the teacher never trains on it and reported accuracies come from the test split
    val_fraction: float = _p(0.1, 0.0, 0.5)


@dataclass(frozen=True)
class PrepareData:
    source: str = _p("auto", choices=("auto", "debian", "download"))
    debian_dir: str = _p("/usr/share/datasets/fashion-mnist")
    path: str = _p("")  # cifar10 / imagefolder: batches folder, ImageFolder tree or .tar.gz ("" = cifar10 download)
    image_size: int = _p(0, 0, 4096)  # cifar10 / imagefolder: resize images to this square size (0 = keep)


@dataclass(frozen=True)
class TrainTeacher:
    source: str = _p("train", choices=("train", "file"))  # file = bring your own teacher: import a state_dict, no training
    file: str = _p("")  # source file: a safetensors or .pt state_dict under models/external/
    num_classes: int = _p(0, 0, 1_000_000)  # source file: the classifier's outputs
    input_shape: list = _p((), item=int)  # source file: [channels, height, width]
    mean: list = _p((), item=float)  # source file: per-channel input normalization the teacher was trained with
    std: list = _p((), item=float)
    arch: str = _p("resnet20", pattern=ARCH_PATTERN)  # registry name, torchvision:<name> or package.module:callable
    arch_kwargs: dict = _p({})  # torchvision: / module:callable archs: keyword arguments of the model's constructor
    max_train_images: int = _p(0, 0, 10_000_000)  # 0 = the whole training split
    epochs: int = _p(8, 1, 1000)
    batch_size: int = _p(128, 1, 65536)
    lr: float = _p(0.1, 0.0, 10.0, lo_open=True)
    momentum: float = _p(0.9, 0.0, 1.0, hi_open=True)
    weight_decay: float = _p(5e-4, 0.0, 1.0)
    label_smoothing: float = _p(0.0, 0.0, 1.0, hi_open=True)
    max_shift: int = _p(2, 0, 16)
    flip: bool = _p(True)
    precision: str = _p("auto", choices=PRECISIONS)  # auto = bf16 autocast only where bf16 is native, else fp32


@dataclass(frozen=True)
class ExtractBnStats:
    default_atol: float = _p(1e-4, 0.0, 1.0)


@dataclass(frozen=True)
class Synthesize:
    method: str = _p("deepinversion", choices=("deepinversion", "gaussian", "inception", "bns", "bns_inception"))
    n_images: int = _p(1024, 1, 10_000_000)
    batch_size: int = _p(256, 1, 65536)
    iterations: int = _p(200, 1, 100_000)
    lr: float = _p(0.6, 0.0, 100.0, lo_open=True)
    # deepinversion's BN term: normalized (scale-free, the same weight fits any teacher) | l2 (the paper's sum of norms)
    bn_loss: str = _p("normalized", choices=("normalized", "l2"))
    lambda_bn: float = _p(10.0, 0.0, 1e6)
    lambda_ce: float = _p(1.0, 0.0, 1e6)
    lambda_tv: float = _p(1e-5, 0.0, 1e6)
    lambda_l2: float = _p(0.0, 0.0, 1e6)
    lambda_bns: float = _p(1.0, 0.0, 1e6)  # alpha: BNS KL weight (bns, bns_inception)
    lambda_prior: float = _p(1.0, 0.0, 1e6)  # beta: smoothing prior MSE(x, blur(x)) (inception, bns, bns_inception)
    lambda_inception: float = _p(1.0, 0.0, 1e6)  # gamma: exp(-logit/scale) (inception, bns_inception)
    inception_scale: float = _p(1.0, 0.0, 1e4, lo_open=True)
    blur_sigma: float = _p(1.0, 0.0, 16.0, lo_open=True)
    duplicates: int = _p(1, 1, 256)  # in-batch augmentation: copies of each image per forward pass
    crop_min_area: float = _p(1.0, 0.0, 1.0, lo_open=True)  # random resized crop of each copy; 1 = off
    cutout: float = _p(0.0, 0.0, 1.0, hi_open=True)  # side of the cutout square / image height; 0 = off
    max_shift: int = _p(2, 0, 64)
    flip: bool = _p(True)
    grid_per_class: int = _p(8, 1, 64)
    # speed levers (benchmarks/synthesis.py measures them)
    precision: str = _p("auto", choices=PRECISIONS)  # bfloat16 autocast of the teacher; auto = only where bf16 is native
    early_stop_tol: float = _p(0.0, 0.0, 1.0)  # end a batch when its loss improved < tol (relative) over a window; 0 = off
    early_stop_window: int = _p(20, 1, 100_000)  # steps per window of the plateau test
    warm_start: float = _p(0.0, 0.0, 1.0)  # > 0: later batches start from batch 0's images (this weight) + noise
    warm_iterations: int = _p(0, 0, 100_000)  # steps of a warm-started batch; 0 = iterations
    nproc: int = _p(1, 1, 1024)  # processes (torchrun; gloo on CPU, NCCL on GPU), each makes every nproc-th batch
    threads: int = _p(0, 0, 1024)  # torch threads per process; 0 = cores / nproc


@dataclass(frozen=True)
class RealTransferSet:
    n_images: int = _p(0, 0, 10_000_000)  # 0 = as many as the synthetic set


@dataclass(frozen=True)
class GaussianTransferSet:
    n_images: int = _p(0, 0, 10_000_000)  # 0 = as many as the synthetic set


@dataclass(frozen=True)
class Prune:
    method: str = _p("l1_unstructured", choices=("l1_unstructured", "structured"))
    scope: str = _p("global", choices=("global", "layerwise"))
    sparsity: float = _p(0.75, 0.0, 1.0, hi_open=True)  # l1_unstructured: fraction of conv+linear weights zeroed
    # l1_unstructured, global: every layer keeps at least this fraction of its weights (0 = plain global L1, the paper's)
    min_density: float = _p(0.1, 0.0, 1.0)
    structured_target: str = _p("macs", choices=("macs", "channels"))  # structured: what structured_amount is a fraction of
    structured_amount: float = _p(0.5, 0.0, 0.95)  # structured: fraction of MACs (or channels) removed
    structured_scope: str = _p("layerwise", choices=("layerwise", "global"))  # structured: same ratio per layer, or ranked globally
    round_to: int = _p(8, 1, 512)  # structured: kept channel counts are multiples of this (1 = any)


BITS = (2, 3, 4, 5, 6, 7, 8, 32)  # 32 = float (not quantized)


@dataclass(frozen=True)
class Quantize:
    weight_bits: int = _p(32, choices=BITS)  # per-channel symmetric; 32 = off
    act_bits: int = _p(32, choices=BITS)  # per-tensor asymmetric, input of every conv/linear; 32 = off
    first_last_bits: int = _p(8, choices=(0, *BITS))  # bits of the first conv and the last linear layer; 0 = as the rest
    calibration: str = _p("minmax", choices=("minmax", "percentile"))  # per-batch extremes (or percentiles), averaged
    percentile: float = _p(99.99, 50.0, 100.0, lo_open=True)
    calib_images: int = _p(0, 0, 10_000_000)  # synthetic images used for calibration; 0 = all
    batch_size: int = _p(128, 1, 65536)


@dataclass(frozen=True)
class Distill:
    epochs: int = _p(40, 0, 10_000)
    batch_size: int = _p(128, 1, 65536)
    lr: float = _p(0.01, 0.0, 10.0)
    momentum: float = _p(0.9, 0.0, 1.0, hi_open=True)
    weight_decay: float = _p(0.0, 0.0, 1.0)
    schedule: str = _p("cosine", choices=("constant", "cosine"))
    temperature: float = _p(3.0, 0.0, 100.0, lo_open=True)
    freeze_bn: bool = _p(False)
    recalibrate_bn: bool = _p(False)
    max_shift: int = _p(2, 0, 64)
    flip: bool = _p(True)
    seed: int = _p(0, 0, 2**31 - 1)  # varies only the distillation (batch order, augmentation, MixUp)
    transfer_set: str = _p("synthetic", choices=("synthetic", "real", "gaussian"))  # real = NOT data-free (baseline)
    iq_beta: float = _p(0.0, 0.0, 1e6)  # weight of the intermediate-feature (IQ) smooth-L1 loss; 0 = off
    iq_layers: str = _p("layer1,layer2,layer3")  # comma-separated module names whose outputs the IQ loss compares
    mixup_alpha: float = _p(0.0, 0.0, 100.0)  # in-batch MixUp, lambda ~ Beta(alpha, alpha); 0 = off
    nproc: int = _p(1, 1, 1024)  # processes (torchrun + DistributedDataParallel); each sees 1/nproc of every batch
    threads: int = _p(0, 0, 1024)  # torch threads per process; 0 = cores / nproc


@dataclass(frozen=True)
class Evaluate:
    batch_size: int = _p(1000, 1, 65536)
    fgsm_eps: float = _p(0.1, 0.0, 1.0)  # FGSM step in [0, 1] pixel units for the J_KL table's adversarial set
    jkl_max_images: int = _p(0, 0, 10_000_000)  # J_KL table: at most this many images per data set (0 = all)
    latency_threads: int = _p(1, 1, 1024)  # CPU threads while timing (pinned, so runs compare)
    latency_repeats: int = _p(30, 1, 100_000)  # timed forwards per batch size; the median is reported
    latency_budget_s: float = _p(10.0, 0.0, 3600.0)  # seconds per model and batch size (fewer repeats for a large model); 0 = no bound


SECTIONS = {
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
    "evaluate": Evaluate,
}


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}[t]


SCALARS = (int, float, bool, str)


def _check_value(section: str, f: dataclasses.Field, value: Any) -> Any:
    key = f"{section}.{f.name}"
    if f.type == "dict":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and (isinstance(v, SCALARS) or isinstance(v, list) and all(isinstance(i, SCALARS) for i in v))
            for k, v in value.items()
        )
        if not ok:
            raise ParamsError(
                f"params.yaml: {key} = {value!r} has the wrong type; expected a mapping of names to numbers, true/false, "
                "strings or lists of them"
            )
        return dict(value)
    if f.type == "list":
        item = f.metadata["item"]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and (item is float or isinstance(v, int)) for v in value
        )
        if not ok:
            kind = "integers" if item is int else "numbers"
            raise ParamsError(f"params.yaml: {key} = {value!r} has the wrong type; expected a list of {kind}")
        return tuple(item(v) for v in value)
    t = {"int": int, "float": float, "bool": bool, "str": str}.get(f.type, f.type)
    m = f.metadata
    ok = (
        isinstance(value, bool)
        if t is bool
        else (
            isinstance(value, t) and not isinstance(value, bool)
            if t is not float
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
    )
    if not ok:
        raise ParamsError(
            f"params.yaml: {key} = {value!r} has the wrong type; expected {_type_name(t)}"
            + (f" in {_range(m)}" if m.get("lo") is not None else "")
        )
    if t is float:
        value = float(value)
    if m.get("choices") is not None and value not in m["choices"]:
        raise ParamsError(f"params.yaml: {key} = {value!r} is not allowed; choose one of {list(m['choices'])}")
    if m.get("pattern") is not None and not re.fullmatch(m["pattern"][0], value):
        raise ParamsError(f"params.yaml: {key} = {value!r} is not allowed; expected {m['pattern'][1]}")
    lo, hi = m.get("lo"), m.get("hi")
    if lo is not None:
        below = value <= lo if m["lo_open"] else value < lo
        above = value >= hi if m["hi_open"] else value > hi
        if below or above:
            raise ParamsError(f"params.yaml: {key} = {value!r} is out of range; expected {_type_name(t)} in {_range(m)}")
    return value


def _range(m) -> str:
    return f"{'(' if m['lo_open'] else '['}{m['lo']}, {m['hi']}{')' if m['hi_open'] else ']'}"


def parse_section(name: str, raw: Any):
    """Validate one section's mapping and return its frozen config object."""
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{name}' must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            raise ParamsError(
                f"params.yaml: unknown key {name}.{key}"
                + (f" (did you mean {name}.{hint[0]}?)" if hint else "")
                + f"; known keys: {sorted(fields)}"
            )
    values = {k: _check_value(name, fields[k], v) for k, v in raw.items()}
    return cls(**values)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-05`` (no dot) is a number, as DVC writes it after
    ``dvc exp run -S key=0.00001`` (DVC itself reads YAML 1.2); plain YAML 1.1 would make it the string '1e-05'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_params(*sections: str, path: str | Path = "params.yaml") -> dict:
    """Read ``path`` and return ``{section: config}`` for each requested section."""
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
    return {s: parse_section(s, doc.get(s)) for s in sections}


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
