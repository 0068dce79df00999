"""The compare step on a fabricated `dvc exp show --json` document (DVC 3 shape)."""

import json

import pytest

import stages.compare as compare
from stages.core.experiments import experiments_table
from stages.core.runtime import StageError


def exp(name, acc, pruned=0.8, data_free=True, sparsity=0.75, calibrated=None):
    data = {"rev": name}
    if acc is not None:
        data["params"] = {"params.yaml": {"data": {"prune": {"sparsity": sparsity}, "distill": {"freeze_bn": False}}}}
        data["metrics"] = {
            "reports/metrics.json": {
                "data": {
                    "teacher": {"accuracy": 0.925},
                    "pruned": {"accuracy": pruned},
                    "student": {"accuracy": acc},
                    "data_free": data_free,
                    **({"quantized": {"accuracy": calibrated}, "speedup_b64": 1.0, "size_ratio": 7.5} if calibrated is not None else {}),
                }
            }
        }
    return {"revs": [{"rev": f"r-{name}", "name": name, "data": data, "error": None, "experiments": None}], "name": name}


def document():
    exps = []
    for v, pruned in ((0.5, 0.92), (0.75, 0.80), (0.9, 0.30)):
        for seed in range(3):
            exps.append(exp(f"sparsity--sparsity{v}-synthetic--seed{seed}", 0.95 - v / 10 + seed / 1000, pruned, sparsity=v))
            exps.append(exp(f"sparsity--sparsity{v}-real--seed{seed}", 0.96 - v / 20, pruned, data_free=False, sparsity=v))
    exps += [exp(f"freeze_bn--freeze_bn-true--seed{s}", 0.91 + s / 100) for s in range(3)]
    exps.append(exp("freeze_bn--freeze_bn-false--seed0", 0.924))
    failed = exp("freeze_bn--freeze_bn-false--seed1", 0.924)  # a failed run shows its baseline's metrics and an error
    failed["revs"][0]["error"] = {"msg": "Experiment run failed", "type": ""}
    exps.append(failed)
    exps.append(exp("unrelated-experiment", 0.5))
    for bits, calib in (("8w8a", 0.92), ("4w4a", 0.15)):
        exps.append(exp(f"quant--{bits}-synthetic--seed0", 0.91, 0.925, sparsity=0.0, calibrated=calib))
        exps.append(exp(f"quant--{bits}-real--seed0", 0.915, 0.925, data_free=False, sparsity=0.0, calibrated=calib))
    running = exp("freeze_bn--freeze_bn-false--seed2", 0.924)  # shows its baseline's metrics while it runs
    running["executor"] = {"state": "running", "name": "dvc-task"}
    exps.append(running)
    workspace = {"rev": "workspace", "name": None, "data": {"rev": "workspace"}, "error": None, "experiments": None}
    return [workspace, {"rev": "abc", "name": "main", "data": {"rev": "abc"}, "error": None, "experiments": exps}]


def test_experiments_table_flattens_params_and_metrics():
    df = experiments_table(document())
    row = df[df["name"] == "freeze_bn--freeze_bn-true--seed1"].iloc[0]
    assert row["metrics.student.accuracy"] == pytest.approx(0.92) and row["params.prune.sparsity"] == 0.75
    assert not df[df["name"] == "freeze_bn--freeze_bn-false--seed1"].iloc[0]["has_metrics"]


def test_summary_means_stds_and_missing_runs():
    runs = compare.runs_table(document())
    assert set(runs["sweep"]) == {"sparsity", "freeze_bn", "quant"} and "unrelated-experiment" not in set(runs["name"])
    s = compare.summarize(runs).set_index(["sweep", "setting"])
    frozen = s.loc[("freeze_bn", "freeze_bn-true")]
    assert frozen["runs"] == 3 and frozen["accuracy_mean"] == pytest.approx(0.92) and frozen["accuracy_std"] == pytest.approx(0.01)
    assert s.loc[("freeze_bn", "freeze_bn-false")]["runs_without_metrics"] == 1
    assert s.loc[("freeze_bn", "freeze_bn-false")]["runs"] == 1  # the running experiment is not counted
    assert not s.loc[("sparsity", "sparsity0.9-real")]["data_free"] and s.loc[("sparsity", "sparsity0.9-synthetic")]["data_free"]
    assert list(s.loc["sparsity"].index) == [f"sparsity{v}-{t}" for v in (0.5, 0.75, 0.9) for t in ("synthetic", "real")]


def test_report_writes_tables_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(document()))
    compare.main(["report", "--json", str(tmp_path / "exp.json")])
    out = tmp_path / "reports" / "compare"
    for f in ("runs.csv", "summary.csv", "summary.md", "sparsity.png", "freeze_bn.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "summary.md").read_text()
    assert "NO (real images)" in md and "| freeze_bn-true | 92.00% | 1.00 | - | 3 | 0 |" in md


def test_report_keeps_the_probe_log_it_does_not_write(tmp_path, monkeypatch):
    """report replaces reports/compare whole; scripts/zoo_probe.py's CSV there survives it byte for byte."""
    monkeypatch.chdir(tmp_path)
    probe = tmp_path / "reports" / "compare" / "zoo_probe.csv"
    probe.parent.mkdir(parents=True)
    probe.write_bytes(b"teacher,spec\nregnet,lambda_bn=30\n")
    (tmp_path / "reports" / "compare" / "stale.md").write_text("old")
    (tmp_path / "exp.json").write_text(json.dumps(document()))
    compare.main(["report", "--json", str(tmp_path / "exp.json")])
    assert probe.read_bytes() == b"teacher,spec\nregnet,lambda_bn=30\n"
    assert not (tmp_path / "reports" / "compare" / "stale.md").exists()  # anything else is rewritten or gone


def test_report_without_sweeps_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps([{"rev": "workspace", "data": {"rev": "workspace"}}]))
    with pytest.raises(StageError, match="no finished sweep experiments"):
        compare.main(["report", "--json", str(tmp_path / "exp.json")])


def test_quant_sweep_starts_kd_from_the_calibrated_model(tmp_path, monkeypatch):
    s = compare.summarize(compare.runs_table(document())).set_index(["sweep", "setting"])
    assert s.loc[("quant", "4w4a-synthetic")]["before_kd_accuracy"] == pytest.approx(0.15)  # calibration only
    assert s.loc[("sparsity", "sparsity0.9-real")]["before_kd_accuracy"] == pytest.approx(0.30)  # no quantization: the pruned model
    assert s.loc[("quant", "8w8a-real")]["size_ratio"] == pytest.approx(7.5)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(document()))
    compare.main(["report", "--json", str(tmp_path / "exp.json")])
    assert (tmp_path / "reports" / "compare" / "quant.png").stat().st_size > 0
    assert "| 4w4a-synthetic | 91.00% | - | - | 1 | 0 | 15.00% |" in (tmp_path / "reports" / "compare" / "summary.md").read_text()


def compute_document():
    exps = []
    for setting, acc, its in (("paper-i200", 0.924, 204800), ("paper-i40", 0.92, 40960), ("fast-i100-w20", 0.923, 40960)):
        e = exp(f"compute--{setting}--seed0", acc)
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["synthetic"] = {"image_iterations": its}
        exps.append(e)
    return [{"rev": "abc", "name": "main", "data": {"rev": "abc"}, "error": None, "experiments": exps}]


def test_report_keeps_recorded_runs_and_plots_the_compute_curve(tmp_path, monkeypatch):
    """Rows of an earlier report stay (experiments from another clone), unless rerun; --fresh forgets them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(document()))
    (tmp_path / "b.json").write_text(json.dumps(compute_document()))
    compare.main(["report", "--json", "a.json"])
    compare.main(["report", "--json", "b.json"])
    summary = (tmp_path / "reports/compare/summary.csv").read_text()
    assert "freeze_bn-true" in summary and "paper-i40" in summary
    assert (tmp_path / "reports/compare/compute.png").stat().st_size > 0
    s = compare.summarize(compare.runs_table(compute_document())).set_index("setting")
    assert s.loc["fast-i100-w20", "image_iterations"] == 40960
    compare.main(["report", "--json", "b.json", "--fresh"])
    assert "freeze_bn" not in (tmp_path / "reports/compare/summary.csv").read_text()


def test_paper_table_names_the_cpu_scale_and_the_recovered_share(tmp_path, monkeypatch):
    doc = document()
    doc[1]["experiments"] += [exp("paper_cpu--resnet18--seed0", 0.90, pruned=0.80), exp("paper--resnet50--seed0", None)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(doc))
    compare.main(["report", "--json", str(tmp_path / "exp.json")])
    md = (tmp_path / "reports" / "compare" / "paper.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| paper")]
    assert rows == ["| paper_cpu seed 0 | resnet18 | - | 73.29% | 93.10% | 92.50% | 80.00% | 90.00% | 2.50 | 80% |"]  # resnet50: no metrics
    assert "train_teacher.epochs=3" in md and "not comparable in level" in md


def test_settings_are_selected_on_validation_never_on_test():
    """Where the test split and the validation part disagree, the validation part decides."""

    def run(name, test_acc, val_acc):
        e = exp(name, test_acc)
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["student"]["val_accuracy"] = val_acc
        return e

    doc = [
        {
            "rev": "abc",
            "name": "main",
            "data": {"rev": "abc"},
            "error": None,
            "experiments": [
                run("bn_loss--l2-lambda1--seed0", 0.95, 0.90),  # best on test, worse on validation
                run("bn_loss--normalized-lambda1--seed0", 0.93, 0.92),
                run("bn_loss--normalized-lambda3--seed0", 0.94, 0.91),
            ],
        }
    ]
    summary = compare.summarize(compare.runs_table(doc))
    assert compare.selected_on_validation(summary) == "normalized-lambda1"
    assert "| **normalized-lambda1** |" in compare.render(summary) and "| l2-lambda1 |" in compare.render(summary)
    assert summary.set_index("setting")["val_accuracy_mean"]["l2-lambda1"] == pytest.approx(0.90)


def test_no_tuning_script_reads_the_test_split():
    """Scripts that choose settings score them on the validation part; only evaluate reads the test split."""
    from conftest import ROOT

    for f in [*(ROOT / "scripts").glob("*.py"), ROOT / "stages/compare.py"]:
        text = f.read_text()
        assert "train=False" not in text and '"test"' not in text.replace('"test" split', ""), f"{f.name} reads the test split"


def test_zoo_settings_bring_each_teacher_in_as_made_and_the_table_checks_the_gap(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    t = {"arch": "torchvision:resnet18", "arch_kwargs": {}, "num_classes": 10, "input_shape": [1, 32, 32], "mean": [0.3], "std": [0.35]}
    (zoo / "zoo.json").write_text(json.dumps({"tv_resnet18": {**t, "file": "models/external/zoo/tv_resnet18-0123abcd.safetensors"}}))
    monkeypatch.setattr(compare, "ZOO_DIR", zoo)
    sets = compare.sweep_settings("zoo")["tv_resnet18"]
    assert "train_teacher.source=file" in sets and "train_teacher.input_shape=[1, 32, 32]" in sets
    assert "train_teacher.file=models/external/zoo/tv_resnet18-0123abcd.safetensors" in sets
    assert not any(s.startswith(("synthesize.", "prune.", "distill.")) for s in sets)  # no per-teacher recipe

    def run(name, teacher, student, agreement):
        e = exp(name, student, pruned=0.5)
        m = e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]
        m["teacher"]["accuracy"], m["synthetic"], m["wall_s"] = (
            teacher,
            {"teacher_agreement": agreement},
            {"synthesize": 60, "distill": 100},
        )
        return e

    doc = [{"rev": "a", "name": "main", "data": {"rev": "a"}, "error": None, "experiments": [
        run("zoo--good--seed0", 0.90, 0.895, 0.99), run("zoo--far--seed0", 0.90, 0.85, 0.5), exp("zoo--broken--seed0", None)]}]  # fmt: skip
    runs = compare.runs_table(doc)
    table = compare.zoo_table(compare.summarize(runs), runs)
    assert "| good | 90.00% | 50.00% | 89.50% | 0.50 | yes | 99.0% | 60 | 100 |" in table
    assert "| far | 90.00% | 50.00% | 85.00% | 5.00 | **no** | 50.0% |" in table
    assert "Runs without metrics (failed or not run): broken." in table
    assert "its first BN layer x 1 (`synthesize.first_bn_weight`)" in table  # runs before the parameter: every layer alike
    assert compare.sweep_settings("zoo_first_bn1")["tv_resnet18"][-1] == "synthesize.first_bn_weight=1.0"


def test_one_sweep_mechanism_for_the_former_ablation_scripts():
    """scripts/distill_ablation.py and scripts/synthesis_methods.py became sweeps of stages.compare; each setting names
    everything it changes (the old "tuned, frozen BN" row recalibrated BN without saying so), and the methods are
    exactly the implemented ones."""
    from stages.core.inversion import METHODS

    assert not (compare.Path(__file__).resolve().parents[1] / "scripts" / "distill_ablation.py").exists()
    recipe = compare.SWEEPS["distill_recipe"]
    assert recipe["default"] == [] and recipe["no-recovery"] == ["distill.epochs=0"]
    for name, sets in recipe.items():
        assert ("recalibrate_bn=true" in " ".join(sets)) == ("recalibrate" in name), name
        assert ("freeze_bn=true" in " ".join(sets)) == ("frozen-bn" in name), name
    used = {s.split("=")[1] for sets in compare.SWEEPS["methods"].values() for s in sets if s.startswith("synthesize.method=")}
    assert used | {"deepinversion"} == set(METHODS)


def test_paper_table_puts_the_cifar_trained_teacher_beside_the_paper_with_mean_and_std(tmp_path, monkeypatch):
    doc = document()
    doc[1]["experiments"] += [exp(f"cifar10--resnet20-teacher25-unstructured0.75--seed{s}", a) for s, a in ((0, 0.90), (1, 0.92))]
    doc[1]["experiments"].append(exp("cifar10--resnet20--seed0", 0.5))  # the short default teacher: not in this table
    doc[1]["experiments"].append(exp("cifar10--resnet20-teacher60-unstructured0.9--seed0", 0.85))
    doc[1]["experiments"].append(exp("cifar10--resnet20-teacher60-unstructured0.75-n2048--seed0", 0.88))  # its own synthetic set
    doc[1]["experiments"][-1]["revs"][0]["data"]["params"]["params.yaml"]["data"]["prune"]["ranking"] = "lamp"
    jkls = ({"synthetic": 0.61, "test": 1.02}, {"synthetic": 0.42}, {"synthetic": 0.3})
    for e, jkl in zip([doc[1]["experiments"][i] for i in (-5, -2, -1)], jkls, strict=True):
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["j_kl_relative_to_train"] = jkl
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(doc))
    compare.main(["report", "--json", str(tmp_path / "exp.json")])
    md = (tmp_path / "reports" / "compare" / "paper.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| resnet20")]
    # mean 91.00, sample std 1.41 points; gap 92.50 - 91.00; share of the loss recovered (91 - 80) / (92.5 - 80) = 88%
    # runs without prune.ranking predate it: magnitude-ranked, the only ranking then
    assert rows[0] == "| resnet20-teacher25-unstructured0.75 | magnitude | - | 2 | 92.50% | 80.00% | 91.00% +- 1.41 | 1.50 | 88% |"
    assert "| resnet20-teacher60-unstructured0.75-n2048 | lamp | - | 1 | 92.50% | 80.00% | 88.00% | 4.50 | 64% |" in rows
    # J_KL: one row per teacher preset and transfer-set size, a set a run did not measure shown as "-"
    jkl = md.split("### J_KL on CIFAR-10")[1].splitlines()
    assert "| teacher | synthetic | test |" in jkl
    assert "| teacher25 | 0.61 | 1.02 |" in jkl and "| teacher60 | 0.42 | - |" in jkl and "| teacher60-n2048 | 0.3 | - |" in jkl
    assert "73.29% -> 93.10%" in md and "NOT data-free" in md and "| paper_cpu" not in md


def test_cifar_sweeps_take_the_dataset_path_as_an_option(tmp_path, monkeypatch):
    queued = []
    monkeypatch.setattr(compare, "dvc", lambda *args: queued.append(args) or "")
    with pytest.raises(compare.StageError, match="--dataset PATH"):
        compare.queue("cifar10", [0], 100)
    with pytest.raises(compare.StageError, match="not found"):
        compare.queue("cifar10", [0], 100, dataset=str(tmp_path / "missing.tar.gz"))
    with pytest.raises(compare.StageError, match="--dataset is for the sweeps"):
        compare.queue("freeze_bn", [0], 100, dataset=str(tmp_path))
    copy = tmp_path / "my-cifar.tar.gz"
    copy.write_bytes(b"x")
    compare.queue("cifar10", [0], 100, dataset=str(copy))
    assert f"prepare_data.path={copy.resolve()}" in queued[0]
    assert not any("shared/datasets" in a for a in queued[0])


def test_hard_table_puts_data_free_beside_real_data_kd_with_the_gap():
    """Worked by hand: 90% unstructured data-free 85.0 / 85.2 (mean 85.10, std 0.14), real 87.0 -> gap 1.90;
    2w4a data-free 88.0 vs real 88.5 -> gap 0.50, within 1.0; a lever row compares with its setting's real arm, a
    budget lever (kd4x: 4x KD steps) with its own: 90.1 - 88.4 = 1.70."""
    exps = [
        exp("hard--unstructured0.9--seed0", 0.850, pruned=0.216),
        exp("hard--unstructured0.9--seed1", 0.852, pruned=0.216),
        exp("hard--unstructured0.9-real--seed0", 0.870, pruned=0.216, data_free=False),
        exp("hard--2w4a--seed0", 0.880, pruned=0.925, sparsity=0.0, calibrated=0.30),
        exp("hard--2w4a-real--seed0", 0.885, pruned=0.925, data_free=False, sparsity=0.0, calibrated=0.30),
        exp("hard_levers--unstructured0.9+generator-2048--seed0", 0.862, pruned=0.216),
        exp("hard_levers--2w4a+kd4x--seed0", 0.884, pruned=0.925, sparsity=0.0, calibrated=0.30),
        exp("hard_levers--2w4a+kd4x-real--seed0", 0.901, pruned=0.925, data_free=False, sparsity=0.0, calibrated=0.30),
        exp("hard_levers--2w4a+n1024--seed0", 0.889, pruned=0.925, sparsity=0.0, calibrated=0.30),
    ]
    exps[1]["revs"][0]["data"]["params"]["params.yaml"]["data"]["prune"]["ranking"] = "lamp"
    exps.append(exp("hard--4w4a--seed0", 0.870, pruned=0.925, sparsity=0.0, calibrated=0.60))
    exps.append(exp("hard--4w4a-real--seed0", 0.875, pruned=0.881, data_free=False, sparsity=0.0, calibrated=0.60))
    exps[-1]["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["teacher"]["accuracy"] = 0.881  # another teacher
    doc = [{"rev": "a", "name": "main", "data": {"rev": "a"}, "error": None, "experiments": exps}]
    runs = compare.runs_table(doc)
    assert "hard_cifar10" not in compare.hard_table(compare.summarize(runs), runs)  # no CIFAR-10 runs: no section
    # the same setting on CIFAR-10 (another teacher, 86.0): its own section, never averaged with Fashion-MNIST's 85.10
    exps.append(exp("hard_cifar10--unstructured0.9--seed0", 0.700, pruned=0.128))
    exps.append(exp("hard_cifar10--unstructured0.9-real--seed0", 0.745, pruned=0.128, data_free=False))
    for e in exps[-2:]:
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["teacher"]["accuracy"] = 0.860
    runs = compare.runs_table(doc)
    table = compare.hard_table(compare.summarize(runs), runs)
    cifar = table.split("## `hard_cifar10`")[1].split("## `hard_levers`")[0]
    assert "| unstructured0.9 | magnitude | 86.00 | 12.80 | 70.00 (1) | 74.50 (1) | 4.50 |" in cifar
    assert "| 2w4a | none | - | - | not run | not run | - |" in cifar
    # the other runs predate prune.ranking: magnitude, the only ranking then; a setting that mixes both says so
    assert "| unstructured0.9 | lamp + magnitude | 92.50 | 21.60 | 85.10 +- 0.14 (2) | 87.00 (1) | 1.90 |" in table
    # no recovery = the calibrated model; 2w4a prunes nothing
    assert "| 2w4a | none | 92.50 | 30.00 | 88.00 (1) | 88.50 (1) | 0.50 (within 1.0) |" in table
    assert "| structured-macs0.75 | structured | - | - | not run | not run | - |" in table
    # arms on different teachers show both: their gap is not a like-for-like comparison
    assert "| 4w4a | none | 92.50 / 88.10 | 60.00 | 87.00 (1) | 87.50 (1) | 0.50 (within 1.0) |" in table
    assert "| unstructured0.9+generator-2048 | 86.20 (1) | 87.00 (1) | 0.80 (within 1.0) |" in table
    # a budget lever compares with its own real-data arm (90.10 - 88.40 = 1.70), never with the default budget's 88.50
    assert "| 2w4a+kd4x | 88.40 (1) | 90.10 (1) | 1.70 |" in table
    assert "| 2w4a+n1024 | 88.90 (1) | not run | - |" in table
    assert "2w4a+kd4x-real |" not in table  # the real arm is a column of its lever's row, not a lever
    assert "hard_cifar10_levers" not in table  # no CIFAR-10 lever runs: no section
    # a CIFAR-10 budget lever: its own section, against its own CIFAR-10 real-data arm (76.0 - 72.0 = 4.00), never
    # against Fashion-MNIST's rows of the same name
    exps.append(exp("hard_cifar10_levers--2w4a+n1024--seed0", 0.720, pruned=0.925, sparsity=0.0, calibrated=0.14))
    exps.append(exp("hard_cifar10_levers--2w4a+n1024-real--seed0", 0.760, pruned=0.925, data_free=False, sparsity=0.0))
    runs = compare.runs_table(doc)
    table = compare.hard_table(compare.summarize(runs), runs)
    fashion, cifar_levers = table.split("## `hard_levers`")[1].split("## `hard_cifar10_levers`")
    assert "| 2w4a+n1024 | 72.00 (1) | 76.00 (1) | 4.00 |" in cifar_levers
    assert "| 2w4a+n1024 | 88.90 (1) | not run | - |" in fashion
    assert "unstructured0.9+generator-2048" not in cifar_levers
    assert "NOT data-free" in table

    def cifar_lever_section() -> str:  # the report's CIFAR-10 lever section for the runs so far
        runs = compare.runs_table(doc)
        return compare.hard_table(compare.summarize(runs), runs).split("## `hard_cifar10_levers`")[1]

    # a student-aware lever grows the set to n1024's images and KD steps: it is compared with n1024-real (76.0 - 74.5)
    exps.append(exp("hard_cifar10_levers--2w4a+adaptive1024-w10--seed0", 0.745, pruned=0.925, sparsity=0.0, calibrated=0.14))
    cifar_levers = cifar_lever_section()
    assert "| 2w4a+adaptive1024-w10 | 74.50 (1) | 76.00 (1) | 1.50 |" in cifar_levers
    assert compare.SWEEPS["hard_levers"]["2w4a+adaptive1024-w10"][-4:] == [
        "distill.adaptive_rounds=3",
        "distill.adaptive_images=256",
        "distill.adaptive_weight=10",
        "distill.transfer_set=synthetic",
    ]  # 256 + 3 x 256 = 1024 images, as n1024
    # a KD-recipe lever on a budget lever keeps that budget's images and KD steps: compared with n1024-real (76.0 - 73.0)
    exps.append(exp("hard_cifar10_levers--2w4a+n1024+t6--seed0", 0.730, pruned=0.925, sparsity=0.0, calibrated=0.14))
    cifar_levers = cifar_lever_section()
    assert "| 2w4a+n1024+t6 | 73.00 (1) | 76.00 (1) | 3.00 |" in cifar_levers
    # a synthesis lever on a budget lever (a tenth of the class term) likewise: n1024's images and steps, n1024-real
    exps.append(exp("hard_cifar10_levers--2w4a+n1024+ce0.1--seed0", 0.7525, pruned=0.925, sparsity=0.0, calibrated=0.14))
    cifar_levers = cifar_lever_section()
    assert "| 2w4a+n1024+ce0.1 | 75.25 (1) | 76.00 (1) | 0.75 (within 1.0) |" in cifar_levers
    assert compare.SWEEPS["hard_levers"]["structured-macs0.75+n2048+ce0.1"][-3:] == [
        "synthesize.n_images=2048",
        "synthesize.lambda_ce=0.1",
        "distill.transfer_set=synthetic",
    ]
    assert "synthesize.crop_min_area=0.5" in compare.SWEEPS["hard_levers"]["structured-macs0.75+n2048+crop0.5"]
    # a generator lever runs at n4096's KD steps: compared with n4096-real (78.0 - 71.0), not with the default arm
    exps.append(exp("hard_cifar10_levers--2w4a+generator16384--seed0", 0.710, pruned=0.925, sparsity=0.0, calibrated=0.14))
    exps.append(exp("hard_cifar10_levers--2w4a+n4096-real--seed0", 0.780, pruned=0.925, data_free=False, sparsity=0.0))
    cifar_levers = cifar_lever_section()
    assert "| 2w4a+generator16384 | 71.00 (1) | 78.00 (1) | 7.00 |" in cifar_levers
    g = compare.SWEEPS["hard_levers"]["structured-macs0.75+generator16384"]
    assert "synthesize.n_images=16384" in g and "distill.epochs=40" in g  # 16,384 / 128 x 40 = 4,096 / 128 x 160 steps
    assert compare.SWEEPS["hard_levers"]["structured-macs0.75+n4096+mixup0.4"][-3:] == [
        "synthesize.n_images=4096",
        "distill.mixup_alpha=0.4",
        "distill.transfer_set=synthetic",
    ]


def test_runs_csv_with_a_doubled_column_reads_back_as_one(tmp_path):
    # written by an older report: the J_KL column twice (COST and the J_KL prefix), the first copy empty for some runs
    p = tmp_path / "runs.csv"
    col = compare.JKL + "synthetic"
    p.write_text(f"name,{col},{compare.JKL}fgsm_test_eps0.1,{col}\na,,8.5,0.33\nb,0.52,,0.52\n")
    runs = compare.read_runs(p)
    assert list(runs.columns) == ["name", col, compare.JKL + "fgsm_test_eps0.1"]
    assert runs[col].tolist() == [0.33, 0.52] and runs[compare.JKL + "fgsm_test_eps0.1"].iloc[0] == 8.5


def test_a_setting_whose_seeds_ran_on_different_teachers_says_so():
    """Seeds vary distill.seed only: one teacher per setting. Seed 1's teacher trained apart (88.05 vs 88.20, another
    host's bf16 kernels): the row counts 2 teachers, its mean teacher is (88.20 + 88.05) / 2 = 88.125, and both tables
    flag it; a setting on one teacher is not flagged."""
    exps = [
        exp("hard--structured-macs0.75--seed0", 0.850),
        exp("hard--structured-macs0.75--seed1", 0.855),
        exp("hard--structured-macs0.75-real--seed0", 0.870, data_free=False),
        exp("hard--structured-macs0.75-real--seed1", 0.872, data_free=False),
    ]
    for e, t in zip(exps, (0.8820, 0.8805, 0.8820, 0.8820), strict=True):
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["teacher"]["accuracy"] = t
    runs = compare.runs_table([{"rev": "a", "name": "main", "data": {"rev": "a"}, "error": None, "experiments": exps}])
    s = compare.summarize(runs).set_index(["sweep", "setting"])
    free, real = s.loc[("hard", "structured-macs0.75")], s.loc[("hard", "structured-macs0.75-real")]
    assert (free["teachers"], real["teachers"]) == (2, 1) and free["teacher_accuracy"] == pytest.approx(0.88125)
    row = next(r for r in compare.hard_table(compare.summarize(runs), runs).splitlines() if r.startswith("| structured-macs0.75 |"))
    assert "85.25 +- 0.35 (2, 2 teachers)" in row and "87.10 +- 0.14 (2) |" in row
    md = compare.render(compare.summarize(runs))
    assert "88.12% (mean of 2 teachers)" in md and "88.20% |" in md
    # the paper table averages its CIFAR-10 groups from the runs themselves: the same flag there
    exps = [exp(f"cifar10--resnet20-teacher60-unstructured0.75--seed{s}", 0.85) for s in (0, 1)]
    exps[1]["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["teacher"]["accuracy"] = 0.9155  # (92.50 + 91.55) / 2
    paper = compare.paper_table(
        compare.runs_table([{"rev": "a", "name": "main", "data": {"rev": "a"}, "error": None, "experiments": exps}])
    )
    assert "| 92.03% (mean of 2 teachers) |" in paper


def test_a_rerun_without_metrics_never_replaces_a_finished_run(tmp_path, monkeypatch, capsys):
    """A killed or failed rerun of a finished experiment leaves the finished row (and says so); a finished rerun replaces
    the recorded row; a name that never finished stays a run without metrics."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(document()))
    compare.main(["report", "--json", "a.json"])
    rerun = document()
    experiments = rerun[1]["experiments"]
    for e in experiments:
        rev = e["revs"][0]
        if e["name"] == "freeze_bn--freeze_bn-true--seed0":  # killed rerun: an error, metrics of its baseline only
            rev["error"] = {"msg": "Experiment run failed", "type": ""}
        if e["name"] == "freeze_bn--freeze_bn-true--seed1":  # finished rerun with a new result
            rev["data"]["metrics"]["reports/metrics.json"]["data"]["student"]["accuracy"] = 0.5
    (tmp_path / "b.json").write_text(json.dumps(rerun))
    capsys.readouterr()
    compare.main(["report", "--json", "b.json"])
    assert "kept the finished run freeze_bn--freeze_bn-true--seed0" in capsys.readouterr().out
    runs = compare.read_runs(tmp_path / "reports/compare/runs.csv").set_index("name")
    assert runs.index.is_unique
    assert runs.loc["freeze_bn--freeze_bn-true--seed0", compare.ACC] == pytest.approx(0.91)
    assert runs.loc["freeze_bn--freeze_bn-true--seed1", compare.ACC] == pytest.approx(0.5)
    assert not runs.loc["freeze_bn--freeze_bn-false--seed1", "has_metrics"]
    summary = compare.summarize(runs.reset_index()).set_index("setting")
    assert summary.loc["freeze_bn-true", "accuracy_mean"] == pytest.approx((0.91 + 0.5 + 0.93) / 3)
    assert summary.loc["freeze_bn-true", "runs_without_metrics"] == 0
    assert summary.loc["freeze_bn-false", "runs_without_metrics"] == 1  # seed1 failed; seed2 still running: no row
