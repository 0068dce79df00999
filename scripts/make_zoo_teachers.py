"""The teacher zoo: classifiers trained OUTSIDE the pipeline, as a user brings their own model (issue 15).

Each zoo teacher is trained briefly (a few minutes on a 2-core CPU) on the Fashion-MNIST training part
(the validation images of data.val_fraction held out, the test split never read), its BatchNorm running
statistics re-estimated exactly on 5,000 of its training images, and its state_dict written as
``models/external/zoo/<name>-<sha256[:8]>.safetensors`` (the content hash in the name: a remade teacher is a
new file, so DVC's run cache cannot hand back an old one) with the manifest ``models/external/zoo/zoo.json``
(arch, arch_kwargs, input_shape, normalization, file, validation accuracy, seconds, CPU). The folder is
git- and dvc-ignored; ``python -m stages.compare queue zoo`` copies it into each experiment
(``dvc exp run --copy-paths``) and brings every teacher in through ``train_teacher.source = file``.

    dvc repro prepare_data && python scripts/make_zoo_teachers.py [--only tv_resnet18 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core import precision  # noqa: E402
from stages.core.artifacts import save_tensors, sha256_file, state_dict_cpu, write_json  # noqa: E402
from stages.core.data import channel_stats, fit_to_input, load_part  # noqa: E402
from stages.core.imageops import normalize  # noqa: E402
from stages.core.kd import recalibrate_bn  # noqa: E402
from stages.core.models import build_model  # noqa: E402
from stages.core.params import load_params  # noqa: E402
from stages.core.training import accuracy, train_classifier  # noqa: E402

OUT = Path("models/external/zoo")
# name -> how the user built and trained it: arch (train_teacher.arch syntax), input shape, training images, epochs, lr
# (cheapest first: `compare queue zoo` runs them in this order)
ZOO = {
    "custom_tinybnnet": {
        "arch": "models.external.example_nets:TinyBNNet",
        "arch_kwargs": {"width": 32},
        "input_shape": [1, 28, 28],
        "train_images": 54000,
        "epochs": 2,
    },
    "tv_shufflenet_v2_x0_5": {"arch": "torchvision:shufflenet_v2_x0_5", "input_shape": [1, 32, 32], "train_images": 54000, "epochs": 2},
    # lr 0.05 diverged on RegNet (train loss 3.8 after one epoch, validation 24%): its user would lower it
    "tv_regnet_x_400mf": {"arch": "torchvision:regnet_x_400mf", "input_shape": [1, 32, 32], "train_images": 30000, "epochs": 2, "lr": 0.01},
    "tv_resnet18": {"arch": "torchvision:resnet18", "input_shape": [1, 32, 32], "train_images": 30000, "epochs": 1},
    "mobilenet_v2": {"arch": "mobilenet_v2", "input_shape": [1, 28, 28], "train_images": 20000, "epochs": 1},
    "resnet18_cifar_stem": {"arch": "resnet18", "input_shape": [1, 28, 28], "train_images": 8000, "epochs": 1},
}
RECIPE = {
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "label_smoothing": 0.0,
    "max_shift": 2,
    "flip": True,
    "cutout": 0.0,
}
BN_IMAGES = 5000


def make(name: str, spec: dict, train, val, device: torch.device) -> dict:
    torch.manual_seed(0)
    shape = spec["input_shape"]
    images = fit_to_input(train.images[: spec["train_images"]], shape)
    mean, std = channel_stats(images)
    x, y = normalize(images, mean, std), train.labels[: spec["train_images"]]
    x_val = normalize(fit_to_input(val.images, shape), mean, std)
    model = build_model(spec["arch"], len(train.classes), shape[0], spec.get("arch_kwargs"))
    ran = precision.resolve("auto", device, "zoo training")
    cfg = SimpleNamespace(**{**RECIPE, "lr": spec.get("lr", RECIPE["lr"])}, epochs=spec["epochs"])
    t0 = time.perf_counter()
    train_classifier(model, x, y, cfg, device, seed=0, precision=ran)
    recalibrate_bn(model, x[:BN_IMAGES].contiguous(), 256, device)
    seconds = time.perf_counter() - t0
    val_acc = accuracy(model, x_val, val.labels, 500, device)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f".{name}.tmp.safetensors"
    save_tensors(tmp, state_dict_cpu(model))
    digest = sha256_file(tmp)
    final = OUT / f"{name}-{digest[:8]}.safetensors"
    for old in OUT.glob(f"{name}-*.safetensors"):
        old.unlink()
    tmp.rename(final)
    print(f"{name}: {spec['arch']} val accuracy {val_acc:.4f} after {seconds:.0f} s -> {final}")
    return {
        "arch": spec["arch"],
        "arch_kwargs": spec.get("arch_kwargs", {}),
        "input_shape": shape,
        "num_classes": len(train.classes),
        "mean": mean,
        "std": std,
        "file": str(final),
        "sha256": digest,
        "train_images": len(y),
        "epochs": spec["epochs"],
        "lr": cfg.lr,
        "val_accuracy": val_acc,
        "train_s": round(seconds, 1),
        "precision": ran,
        "cpu_capability": precision.cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(ZOO), help="make only these teachers (the others stay in the manifest)")
    args = ap.parse_args()
    data = load_params("data")["data"]
    train = load_part(data.name, data.root, "train", data.val_fraction)
    val = load_part(data.name, data.root, "val", data.val_fraction)
    manifest_path = OUT / "zoo.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name, spec in ZOO.items():
        if args.only and name not in args.only:
            continue
        manifest[name] = make(name, spec, train, val, torch.device("cpu"))
        write_json(manifest_path, manifest)


if __name__ == "__main__":
    main()
