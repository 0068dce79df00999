"""Stage prepare_data: put the real dataset into data/raw (the only stage that fetches data)."""

from pathlib import Path

from stages.core.artifacts import atomic_dir, sha256_file, write_json
from stages.core.data import prepare_fashion_mnist
from stages.core.params import load_params
from stages.core.runtime import run_stage


def main() -> None:
    p = load_params("data", "prepare_data")
    data, cfg = p["data"], p["prepare_data"]
    root = Path(data.root)
    with atomic_dir(root) as tmp:
        source = prepare_fashion_mnist(tmp, cfg.source, Path(cfg.debian_dir))
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        write_json(
            tmp / "SOURCE.json",
            {"dataset": data.name, "source": source, "sha256": {str(f.relative_to(tmp)): sha256_file(f) for f in files}},
        )
    print(f"{data.name} ready in {root} (from {source})")


if __name__ == "__main__":
    run_stage(main)
