"""The synthesis-methods comparison reads `dvc exp show --json` (fabricated document, DVC 3 shape)."""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("synthesis_methods", ROOT / "scripts" / "synthesis_methods.py")
sm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sm)


def data(method, acc, freeze=False):
    return {
        "rev": "x",
        "params": {
            "params.yaml": {
                "data": {"synthesize": {"method": method, "iterations": 200, "lambda_prior": 1.0}, "distill": {"freeze_bn": freeze}}
            }
        },
        "metrics": {
            "reports/metrics.json": {
                "data": {
                    "teacher": {"accuracy": 0.925},
                    "pruned": {"accuracy": 0.80},
                    "student": {"accuracy": acc},
                    "gap_points": round(100 * (0.925 - acc), 3),
                    "synthetic": {"n_images": 1024, "teacher_agreement": None, "pred_class_balance": 0.9},
                    "j_kl_relative_to_train": {"synthetic": 1.5},
                    "wall_s": {"synthesize": 240.0},
                }
            }
        },
    }


DOC = [
    {"rev": "workspace", "name": None, "data": data("deepinversion", 0.9234), "error": None, "experiments": None},
    {
        "rev": "abc",
        "name": "main",
        "data": data("deepinversion", 0.9234),
        "experiments": [
            {
                "revs": [{"rev": "r1", "name": "method-gaussian", "data": data("gaussian", 0.55), "experiments": None}],
                "name": "method-gaussian",
            },
            {"revs": [{"rev": "r2", "name": "method-bns", "data": data("bns", 0.93, True), "experiments": None}], "name": "method-bns"},
            {"revs": [{"rev": "r3", "name": "method-queued", "data": {"rev": "r3"}, "experiments": None}], "name": "method-queued"},
            {"revs": [{"rev": "r4", "name": "other-exp", "data": data("bns", 0.1), "experiments": None}], "name": "other-exp"},
        ],
    },
]


def test_rows_from_exp_show_document():
    rows = [sm.row(n, d) for n, d in sm.experiments(DOC)]
    names = [r["run"] for r in rows if r]
    assert names.count("method-bns") == 1 and "method-queued" not in names  # no metrics yet: skipped
    bns = next(r for r in rows if r and r["run"] == "method-bns")
    assert bns["method"] == "bns" and bns["freeze_bn"] is True and bns["student_acc"] == 0.93
    gauss = next(r for r in rows if r and r["run"] == "method-gaussian")
    assert gauss["iterations"] == 0  # nothing optimized


def test_render_table():
    import pandas as pd

    df = pd.DataFrame([sm.row("bns", data("bns", 0.93)), sm.row("gaussian", data("gaussian", 0.55))]).assign(class_balance=[0.98, 0.2])
    md = sm.render(df)
    assert "| bns | bns | False | 1024 x 200 | 93.00% |" in md and "| gaussian | gaussian | False | 1024 x 0 | 55.00% |" in md
