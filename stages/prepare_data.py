"""Stage prepare_data: put the real dataset into data/raw (the only stage that fetches data).

SOURCE.json records the dataset, where it came from, the source's sha256 (archive or folder
tree) and the sha256 of every prepared file; the teacher's card and the lineage carry it on.
"""

from pathlib import Path

from stages.core.artifacts import atomic_dir, sha256_file, write_json
from stages.core.data import prepare_fashion_mnist, prepare_image_dataset
from stages.core.params import load_params
from stages.core.runtime import StageError, run_stage


def main() -> None:
    p = load_params("data", "prepare_data")
    data, cfg = p["data"], p["prepare_data"]
    root = Path(data.root)
    with atomic_dir(root) as tmp:
        if data.name == "fashion_mnist":
            if cfg.path:
                raise StageError("prepare_data.path is for cifar10 / imagefolder; Fashion-MNIST comes from prepare_data.source")
            info = {"source": prepare_fashion_mnist(tmp, cfg.source, Path(cfg.debian_dir))}
        else:
            info = prepare_image_dataset(tmp, data.name, cfg.path, cfg.image_size)
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        write_json(tmp / "SOURCE.json", {"dataset": data.name, **info, "sha256": {str(f.relative_to(tmp)): sha256_file(f) for f in files}})
    print(f"{data.name} ready in {root} (from {info['source']})")


if __name__ == "__main__":
    run_stage(main)
