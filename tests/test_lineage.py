"""The lineage command walks dvc.lock and decides data-freeness from the pipeline, not from a flag."""

import json

import pytest
import yaml

from stages.core.artifacts import sha256_file
from stages.core.runtime import StageError
from stages.lineage import lineage, main


def pipeline(root, distill_deps):
    stages = {
        "prepare_data": {"cmd": "python -m stages.prepare_data", "deps": ["stages/prepare_data.py"], "outs": ["data/raw"]},
        "train_teacher": {
            "cmd": "python -m stages.train_teacher",
            "deps": ["stages/train_teacher.py", "data/raw"],
            "outs": ["models/teacher"],
        },
        "distill": {
            "cmd": "python -m stages.distill",
            "deps": ["stages/distill.py", "models/teacher", *distill_deps],
            "outs": ["models/student"],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))

    def lock(spec):
        return {
            "cmd": spec["cmd"],
            "deps": [{"path": d, "md5": "0" * 32} for d in spec["deps"]],
            "params": {"params.yaml": {"common": {"seed": 0}}},
            "outs": [{"path": o, "md5": "1" * 32} for o in spec["outs"]],
        }

    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {k: lock(v) for k, v in stages.items()}}))
    (root / "models" / "teacher").mkdir(parents=True)
    (root / "models" / "teacher" / "model.safetensors").write_bytes(b"weights")
    (root / "models" / "student").mkdir(parents=True)
    card = {"kind": "student", "teacher_sha256": sha256_file(root / "models" / "teacher" / "model.safetensors"), "data_free": True}
    (root / "models" / "student" / "card.json").write_text(json.dumps(card))


def test_data_free_chain(tmp_path):
    pipeline(tmp_path, [])
    r = lineage(tmp_path, "models/student")
    assert [s["stage"] for s in r["chain"]] == ["prepare_data", "train_teacher", "distill"]
    assert r["data_free"] and r["consistent"] and r["real_data_stages"] == ["prepare_data", "train_teacher"]
    assert r["chain"][-1]["card"]["teacher_sha256"] == sha256_file(tmp_path / "models/teacher/model.safetensors")


def test_real_data_dep_is_caught_despite_the_cards_flag(tmp_path, capsys):
    pipeline(tmp_path, ["data/raw/train-images-idx3-ubyte"])
    r = lineage(tmp_path, "models/student")
    assert not r["data_free"]
    assert r["real_data_in_data_free_stages"] == [{"stage": "distill", "dep": "data/raw/train-images-idx3-ubyte"}]
    assert main(["models/student", "--root", str(tmp_path)]) == 1
    assert "NOT DATA-FREE" in capsys.readouterr().out


def test_stale_card_is_reported(tmp_path):
    pipeline(tmp_path, [])
    (tmp_path / "models" / "teacher" / "model.safetensors").write_bytes(b"retrained")
    r = lineage(tmp_path, "models/student")
    assert not r["consistent"] and r["card_checks"][0]["match"] is False


def test_unknown_artifact_and_missing_lock(tmp_path):
    with pytest.raises(StageError, match="dvc.yaml not found|dvc.lock"):
        lineage(tmp_path, "models/student")
    pipeline(tmp_path, [])
    with pytest.raises(StageError, match="not an output"):
        lineage(tmp_path, "models/nothing")


def test_verdict_comes_from_the_pipeline_not_from_a_default(tmp_path):
    """evaluate's data_free metric and report sentence: the lineage verdict, None (undetermined) when dvc.lock cannot
    tell - before, a card flag defaulting to True decided, and the report always said "no dependency on data/raw"."""
    from stages.core.lineage import verdict

    assert verdict(tmp_path, "models/student")["data_free"] is None  # no dvc.yaml / dvc.lock: nothing to decide from
    pipeline(tmp_path, [])
    v = verdict(tmp_path, "models/student")
    assert v["data_free"] is True and v["basis"] == "dvc.yaml + dvc.lock: none of distill depends on real data"
    (tmp_path / "real").mkdir()
    pipeline(tmp_path / "real", ["data/raw/train-images-idx3-ubyte"])  # the card still says data_free: true
    v = verdict(tmp_path / "real", "models/student")
    assert v["data_free"] is False and "distill (dep data/raw/train-images-idx3-ubyte)" in v["basis"]
    (tmp_path / "models" / "teacher" / "model.safetensors").write_bytes(b"retrained")  # stale: undetermined
    v = verdict(tmp_path, "models/student")
    assert v["data_free"] is None and "stale" in v["basis"]
