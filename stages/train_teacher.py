"""Stage train_teacher: the BatchNorm CNN teacher every later stage starts from.

train_teacher.source = train: train it on the real training split minus the validation images
(data.val_fraction; their accuracy is logged per epoch), in train_teacher.precision (auto: bf16 only
where it is native). The test split is not read here: evaluate reports it.
train_teacher.source = file: bring your own teacher - import a state_dict from models/external/
(a dependency of this stage, so DVC reruns when the file changes) with the given arch,
num_classes, input_shape and normalization; nothing is trained and no training data is read.
Either way the result is models/teacher (safetensors + card), so the later stages run unchanged.
A long training survives an interruption: the state after every epoch is kept in models/.train_teacher.resume.pt
and a rerun with the same params, data, code and thread count resumes after the last saved epoch, ending with
the bytes an uninterrupted run writes (tests/test_resume.py).
"""

import hashlib
import json
from pathlib import Path

import torch

from stages.core import precision
from stages.core.artifacts import atomic_dir, library_versions, read_json, save_model, sha256_file, write_json
from stages.core.data import channel_stats, class_names, load_part
from stages.core.external import check_fits, read_state_dict
from stages.core.imageops import normalize
from stages.core.live import log_curve
from stages.core.models import arch_card, build_model, versioned
from stages.core.params import as_dict, load_params
from stages.core.runtime import StageError, resolve_device, run_stage, seed_everything, timed
from stages.core.training import accuracy, train_classifier

OUT = Path("models/teacher")
REPORTS = Path("reports/train_teacher")
# per-epoch training state of an unfinished run (not a DVC output: gitignored); a rerun with the same params, data,
# code and thread count resumes from it, and it is deleted once the outputs are written
RESUME = Path("models/.train_teacher.resume.pt")
EXTERNAL = Path("models/external")


def teacher_model(cfg, num_classes: int, in_channels: int):
    """The untrained teacher train_teacher.arch + arch_kwargs name; an unknown arch is a StageError."""
    try:
        return build_model(cfg.arch, num_classes, in_channels, cfg.arch_kwargs)
    except ValueError as e:
        raise StageError(f"train_teacher.arch = {cfg.arch!r}: {e}") from e


def resume_key(common, data, cfg, ran: str) -> str:
    """What a checkpoint must match to be resumed: the params, the data, the training code, the precision that ran
    and the thread count (floating-point sums differ across thread counts, so a resume under another one would not
    give the uninterrupted run's bytes: it starts over)."""
    code = [Path(__file__), *(Path(__file__).parent / "core" / f for f in ("training.py", "models.py", "imageops.py", "precision.py"))]
    facts = {
        "params": {"common": as_dict(common), "data": as_dict(data), "train_teacher": as_dict(cfg)},
        "dataset_sha256": sha256_file(Path(data.root) / "SOURCE.json"),
        "code": {p.name: sha256_file(p) for p in code},
        "precision": ran,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def train(common, data, cfg) -> tuple:
    device = resolve_device(common.device)
    train_set = load_part(data.name, data.root, "train", data.val_fraction)
    val = load_part(data.name, data.root, "val", data.val_fraction)  # held out: per-epoch accuracy, never trained on
    if cfg.max_train_images:
        keep = torch.randperm(len(train_set.labels), generator=torch.Generator().manual_seed(common.seed))[: cfg.max_train_images]
        train_set.images, train_set.labels = train_set.images[keep], train_set.labels[keep]
    mean, std = channel_stats(train_set.images)
    x_train, x_val = normalize(train_set.images, mean, std), normalize(val.images, mean, std)
    model = teacher_model(cfg, len(train_set.classes), train_set.input_shape[0])
    ran = precision.resolve(cfg.precision, device, "train_teacher.precision")
    eval_fn = (lambda m: accuracy(m, x_val, val.labels, 1000, device)) if len(val.labels) else None
    key = resume_key(common, data, cfg, ran)
    timings = {}
    with timed(timings, "wall_s"):
        history = train_classifier(
            model, x_train, train_set.labels, cfg, device, common.seed, eval_fn=eval_fn, precision=ran, checkpoint=RESUME, key=key
        )
    val_acc = history[-1].get("val_acc")
    card = {
        "source": "trained",
        "num_classes": len(train_set.classes),
        "classes": list(train_set.classes),
        "in_channels": train_set.input_shape[0],
        "input_shape": list(train_set.input_shape),
        "normalization": {"mean": mean, "std": std},
        "train_images": len(train_set.labels),
        "val_images": len(val.labels),
        "val_accuracy": None if val_acc is None else round(val_acc, 6),
        "precision": precision.describe(cfg.precision, ran, device),
    }
    metrics = {"source": "trained", "val_accuracy": val_acc, "epochs": cfg.epochs, "precision": card["precision"], **timings}
    shown = "-" if val_acc is None else f"{val_acc:.4f}"
    where = f"{ran} on {device.type}, CPU capability {precision.cpu_capability()}"
    print(f"teacher {cfg.arch}: validation accuracy {shown} ({timings['wall_s']:.0f} s, {where})")
    return model, card, history, metrics


def import_file(data, cfg) -> tuple:
    path = Path(cfg.file)
    if not cfg.file:
        raise StageError("train_teacher.source = file needs train_teacher.file (a state_dict under models/external/)")
    if EXTERNAL.resolve() not in path.resolve().parents:
        raise StageError(
            f"train_teacher.file = {cfg.file!r} must lie under {EXTERNAL}/ (this stage's dependency, so that DVC "
            "tracks the file and reruns when it changes): copy it there"
        )
    if cfg.num_classes < 2:
        raise StageError(f"train_teacher.num_classes = {cfg.num_classes}: give the teacher's number of classes (>= 2)")
    if len(cfg.input_shape) != 3 or min(cfg.input_shape) < 1:
        raise StageError(f"train_teacher.input_shape = {list(cfg.input_shape)}: expected [channels, height, width]")
    c = cfg.input_shape[0]
    if len(cfg.mean) != c or len(cfg.std) != c or min(cfg.std, default=0) <= 0:
        raise StageError(
            f"train_teacher.mean = {list(cfg.mean)} / std = {list(cfg.std)}: expected {c} values each (one per input channel), "
            "std > 0 - the normalization the teacher was trained with"
        )
    state = read_state_dict(path)
    model = teacher_model(cfg, cfg.num_classes, c)
    check_fits(model, state, path, cfg.arch)
    model.load_state_dict(versioned(model, state), strict=True)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *cfg.input_shape))
    except RuntimeError as e:
        raise StageError(f"{cfg.arch} cannot run on train_teacher.input_shape = {list(cfg.input_shape)}: {e}") from e
    if out.shape != (2, cfg.num_classes):
        raise StageError(f"{path}: the model gives outputs of shape {tuple(out.shape)}, expected (2, {cfg.num_classes})")
    names = class_names(data.name, data.root)  # the evaluation set's names, when it has as many classes
    classes = list(names) if names and len(names) == cfg.num_classes else [str(i) for i in range(cfg.num_classes)]
    card = {
        "source": "file",
        "file": str(path),
        "file_sha256": sha256_file(path),
        "num_classes": cfg.num_classes,
        "classes": classes,
        "in_channels": c,
        "input_shape": list(cfg.input_shape),
        "normalization": {"mean": list(cfg.mean), "std": list(cfg.std)},
        "train_images": None,
        "val_accuracy": None,  # measured by evaluate on the labelled evaluation set
    }
    print(f"teacher {cfg.arch} imported from {path} ({len(state)} tensors; no training)")
    return model, card, [], {"source": "file", "file_sha256": card["file_sha256"], "wall_s": 0.0}


def main() -> None:
    p = load_params("common", "data", "train_teacher")
    common, data, cfg = p["common"], p["data"], p["train_teacher"]
    seed_everything(common.seed)
    model, card, history, metrics = train(common, data, cfg) if cfg.source == "train" else import_file(data, cfg)
    source = read_json(Path(data.root) / "SOURCE.json")
    card = {
        "kind": "teacher",
        **arch_card(cfg.arch, cfg.arch_kwargs),
        **card,
        "dataset": data.name,
        "dataset_sha256": sha256_file(Path(data.root) / "SOURCE.json"),
        "dataset_source": source.get("source"),
        "dataset_source_sha256": source.get("source_sha256"),
        "params": {"common": as_dict(common), "train_teacher": as_dict(cfg)},
        "versions": library_versions(),
    }
    with atomic_dir(OUT) as tmp:
        save_model(tmp, model, card)
    RESUME.unlink(missing_ok=True)  # the outputs are whole: the per-epoch checkpoint is spent
    with atomic_dir(REPORTS) as tmp:
        log_curve(tmp, history, "epoch")  # live/plots/metrics/{train_loss,train_acc,val_acc}.tsv (empty for a brought teacher)
        write_json(tmp / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage(main)
