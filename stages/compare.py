"""Command (not a pipeline stage): the paper's ablations as DVC experiment sweeps, and their comparison.

    python -m stages.compare queue sparsity [--seeds 0 1 2]   # dvc exp run --queue, one experiment per value x seed
    dvc exp run --run-all                                      # DVC runs the queue (cached stages are reused)
    python -m stages.compare report [--json exp_show.json]    # dvc exp show --json -A -> reports/compare/
                                                               # (+ the rows of runs.csv not rerun; --fresh drops them)

Sweeps (seeds vary distill.seed: batch order, augmentation; the synthetic set stays that of common.seed;
evaluate's J_KL table is capped at --jkl-max-images per set to save time, accuracy uses the whole test split):
  sparsity      prune.sparsity 0.5 / 0.75 / 0.9, each with the synthetic (data-free) and the real
                (NOT data-free upper bound) transfer set
  n_images      synthesize.n_images 512 / 1024 / 2048 / 4096
  freeze_bn     distill.freeze_bn true / false
  transfer_set  distill.transfer_set synthetic / real (NOT data-free) / gaussian
  structured    prune.method structured, 50% / 75% fewer MACs (Torch-Pruning channel pruning)
  quant         no pruning; 8w8a / 4w8a / 4w4a / 2w4a (first/last layer 8 bit), each distilled on the synthetic
                and on the real (NOT data-free) transfer set; the calibration-only model is evaluate's "quantized" row
  prune_quant   structured 50% MACs + 4w8a, and the default 75% unstructured + 4w8a
  methods       synthesis methods of "The Knowledge Within" (gaussian, inception, bns, bns_inception, in-batch
                augmentation) against deepinversion at the default budget
  distill_recipe  the paper's KD recipe vs ours, x frozen / train-mode / recalibrated BN, and no recovery
  hard          90% unstructured, structured 75% MACs, 4w4a, 2w4a, 75% + 4w4a, each data-free and `-real` (NOT
                data-free); hard_cifar10: the same on CIFAR-10 (--dataset)
  export        channel pruning (50% fewer MACs; kept channels in multiples of 8, or of 16 layerwise / global) + ONNX
                Runtime int8: the shipped model, beside the default run's export
  hard_levers   levers on the hard settings: generator 2048 images, 1024 from noise x 40 iterations, IQ + MixUp,
                first_bn_weight 1 (same KD steps); kd4x (4x KD steps), n1024 / n2048 / n4096 (4x / 8x / 16x images and KD
                steps), each with its own `-real` arm (NOT data-free) at the same budget; hard_cifar10_levers: the
                budget levers on CIFAR-10 (--dataset); adaptive<N>-w<W>: student-aware rounds during KD up to
                n<N>'s images and steps, compared with n<N> and n<N>-real; <budget>+t6 / +mixup0.4 / +cutmix1 (KD
                recipe), +ce0.1 / +ce0.01 / +crop0.5 (synthesis: weaker class term, random resized crops), each read
                against <budget>-real; 2w4a / 4w4a +wmse / +n1024+wmse / +n2048+wmse: quantize.weight_range mse
                (least-squares weight clipping), each with its own `-real` arm
  generator     synthesize.method generator (256 / 1024 images) against the default from-noise synthesis
  paper         the arXiv 2511.20702 preset (PAPER_PRESET) for resnet18 / resnet34 / resnet50 on CIFAR-10 (--dataset);
                report writes reports/compare/paper.md (paper vs ours). A GPU run: `dvc exp run` on a CUDA machine.
  paper_cpu     the same, scaled to a 2-core CPU (PAPER_CPU_SCALE)
  cifar10       the default pipeline (resnet20) on CIFAR-10 (--dataset PATH, e.g. ../shared/datasets/cifar10-jpeg.tar.gz)
  precision     the default pipeline with fp32 and with bf16 synthesis
  bn_loss       DeepInversion's BN term: the paper's sum of L2 norms vs the scale-free normalized form at several weights
  zoo           teachers trained outside the pipeline (scripts/make_zoo_teachers.py), each brought in with the defaults;
                report writes reports/compare/zoo.md; zoo_magnitude: the same teachers with prune.ranking magnitude
                (the paper's ranking against the LAMP default, measured on every architecture at once); zoo_first_bn1:
                with synthesize.first_bn_weight 1 (every BN layer weighted alike, the default before 2026-12-06)
  compute       recovered accuracy vs synthesis compute (images x iterations): the paper recipe (1024 images,
                fp32, every batch from noise) at 200 / 100 / 40 / 20 iterations, bf16 at 200 / 40, and bf16 +
                warm start from batch 0 (FAST) at 1/5, 1/10 and 1/15 of the paper recipe's compute
Experiment names are <sweep>--<setting>--seed<k>; the report groups them by sweep and setting
(mean, std, runs, runs without metrics) and writes summary.{csv,md}, runs.csv and one figure per sweep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from stages.core.artifacts import atomic_dir
from stages.core.experiments import experiments_table
from stages.core.runtime import StageError, run_stage

OUT = Path("reports/compare")
# files under OUT that other tools append to (scripts/zoo_probe.py's log of lever probes): report rewrites the folder
# whole, so it carries these over unchanged
NOT_WRITTEN_BY_REPORT = ("zoo_probe.csv",)
SWEEPS = {
    "sparsity": {
        f"sparsity{v}-{t}": [f"prune.sparsity={v}", f"distill.transfer_set={t}"] for v in (0.5, 0.75, 0.9) for t in ("synthetic", "real")
    },
    "n_images": {f"n{v}": [f"synthesize.n_images={v}"] for v in (512, 1024, 2048, 4096)},
    "freeze_bn": {f"freeze_bn-{v}": [f"distill.freeze_bn={v}"] for v in ("true", "false")},
    "transfer_set": {f"transfer-{v}": [f"distill.transfer_set={v}"] for v in ("synthetic", "real", "gaussian")},
    "structured": {
        **{f"macs{v}": ["prune.method=structured", f"prune.structured_amount={v}"] for v in (0.5, 0.75)},
        "macs0.5-e100": ["prune.method=structured", "prune.structured_amount=0.5", "distill.epochs=100"],
        "macs0.5-global-any": [
            "prune.method=structured",
            "prune.structured_amount=0.5",
            "prune.structured_scope=global",
            "prune.round_to=1",
        ],
    },
    "quant": {
        f"{w}w{a}a-{t}": ["prune.sparsity=0", f"quantize.weight_bits={w}", f"quantize.act_bits={a}", f"distill.transfer_set={t}"]
        for w, a in ((8, 8), (4, 8), (4, 4), (2, 4))
        for t in ("synthetic", "real")
    },
    "prune_quant": {
        "structured0.5-4w8a": ["prune.method=structured", "prune.structured_amount=0.5", "quantize.weight_bits=4", "quantize.act_bits=8"],
        "unstructured0.75-4w8a": ["quantize.weight_bits=4", "quantize.act_bits=8"],
    },
}
# arXiv 2511.20702 exactly: CIFAR-10, 75% global L1 unstructured, 1024 DeepInversion images, 200 iterations,
# lambda_BN 10, lambda_TV 1e-5, KD T 3 with SGD lr 1e-3 momentum 0.9 for 15 epochs, student BN frozen.
# The paper does not state its teacher recipe: ours trains 30 epochs (SGD 0.1, cosine).
DATASET = "prepare_data.path={dataset}"  # filled from `queue --dataset PATH` (a CIFAR-10 copy: batches folder, tree or .tar.gz)
PAPER_PRESET = [
    "data.name=cifar10",
    DATASET,
    "train_teacher.epochs=30",
    "synthesize.method=deepinversion",
    "synthesize.n_images=1024",
    "synthesize.iterations=200",
    "synthesize.lambda_bn=10",
    "synthesize.lambda_tv=0.00001",
    "prune.method=l1_unstructured",
    "prune.scope=global",
    "prune.sparsity=0.75",
    "prune.min_density=0",
    "prune.ranking=magnitude",
    "synthesize.bn_loss=l2",
    "synthesize.first_bn_weight=1.0",  # every BN layer alike: the preset's objective as it was measured before the weight existed
    "quantize.weight_bits=32",
    "quantize.act_bits=32",
    "distill.temperature=3",
    "distill.lr=0.001",
    "distill.momentum=0.9",
    "distill.epochs=15",
    "distill.schedule=constant",
    "distill.freeze_bn=true",
]
# scaled to a 2-core CPU (measured bf16 training here: resnet18 111, resnet34 54, resnet50 38 images/s, i.e. 7.5 /
# 15 / 22 min per CIFAR-10 epoch): a 3-epoch teacher on all 50k images (2 epochs on 10k gave resnet18 19%, useless),
# 256 images of the paper's 200 iterations, and 60 KD epochs = the paper's 120 SGD steps (15 x 1024 / 128)
PAPER_CPU_SCALE = ["train_teacher.epochs=3", "synthesize.n_images=256", "distill.epochs=60"]
PAPER_RESULTS = {"resnet18": (73.29, 93.10), "resnet34": (76.03, 93.51), "resnet50": (82.33, 92.07)}  # pruned -> recovered, %
SWEEPS["paper"] = {a: [*PAPER_PRESET, f"train_teacher.arch={a}"] for a in PAPER_RESULTS}
SWEEPS["paper_cpu"] = {a: [*PAPER_PRESET, *PAPER_CPU_SCALE, f"train_teacher.arch={a}"] for a in PAPER_RESULTS}
# a CIFAR-10 teacher of the quality people quote (issue 19): the default pipeline's 2 epochs give ~79%. Cosine SGD
# with 4-px shifts + flips, resumable (models/.train_teacher.resume.pt), in two lengths sized by the CPU's precision:
# teacher25 fits ~75 min on 2 AVX2 cores in fp32 (0.44-0.53 s per batch-128 step, 352 steps per epoch on the 45,000
# training images); teacher60 fits ~70 min where bf16 is native (AVX512-BF16: 0.17 s per step measured, vs 0.23 fp32)
CIFAR10_TEACHERS = {
    "teacher25": ["train_teacher.epochs=25", "train_teacher.max_shift=4"],
    "teacher60": ["train_teacher.epochs=60", "train_teacher.max_shift=4"],
    # teacher60 overfit (88.26% val at 60 epochs, train accuracy 96.9%): the same length with cutout (16 px of 32)
    "teacher60c": ["train_teacher.epochs=60", "train_teacher.max_shift=4", "train_teacher.cutout=0.5"],
    # the same, twice as long: sized for ~60 min where bf16 is native and the host is quick (2026-12-06: 0.075 s per
    # bf16 step = 26 s per epoch, 30 s with augmentation and the validation pass)
    "teacher120c": ["train_teacher.epochs=120", "train_teacher.max_shift=4", "train_teacher.cutout=0.5"],
}
# the default transfer set (256 images, 320 KD steps) limited both arms on CIFAR-10 alike (teacher60 at 75%: data-free
# 84.01, 256 real images 84.40, teacher 87.34): 8x the images and 4x the KD steps (1280)
# on the 88% teacher60c, at n2048 the real-data arm too ended 1.6 below the teacher (KD budget, not synthesis): 32x the
# images and 8x the KD steps (2,560); queue it per setting (--settings), each run synthesizes 8,192 images
CIFAR10_TRANSFER_SETS = {
    "": [],
    "-n2048": ["synthesize.n_images=2048", "distill.epochs=80"],
    "-n8192": ["synthesize.n_images=8192", "distill.epochs=40"],
}
CIFAR10_TEACHER = CIFAR10_TEACHERS["teacher25"]  # the one the hard_cifar10 sweep uses
SWEEPS["cifar10"] = {  # the default pipeline on CIFAR-10, with the default and with the quoted-quality teachers
    "resnet20": ["data.name=cifar10", DATASET],
    **{
        f"resnet20-{name}-{k}{size}{arm}": [
            "data.name=cifar10",
            DATASET,
            *teacher,
            f"prune.sparsity={v}",
            *transfer,
            f"distill.transfer_set={t}",
        ]
        for name, teacher in CIFAR10_TEACHERS.items()
        for k, v in (("unstructured0.75", 0.75), ("unstructured0.9", 0.9))
        for size, transfer in CIFAR10_TRANSFER_SETS.items()
        for arm, t in (("", "synthetic"), ("-real", "real"))
    },
}
# recovered accuracy vs synthesis compute (issue 7). Paper recipe: 1024 images x 200 iterations, fp32, each batch
# from noise (arXiv 2511.20702's synthesis budget), made cheaper only by fewer iterations. Fastest setting: bf16
# autocast and warm start (batch 0 runs `iterations`, the other batches start from its images and run warm_iterations).
FAST = ["synthesize.precision=bf16", "synthesize.warm_start=0.5"]
SWEEPS["compute"] = {
    **{f"paper-i{i}": [f"synthesize.iterations={i}"] for i in (200, 100, 40, 20)},
    **{f"bf16-i{i}": ["synthesize.precision=bf16", f"synthesize.iterations={i}"] for i in (200, 40)},
    **{
        f"fast-i{i}-w{w}": [*FAST, f"synthesize.iterations={i}", f"synthesize.warm_iterations={w}"]
        for i, w in ((100, 20), (50, 10), (40, 5))
    },
    # at 1/5 of the paper recipe's compute: warm starts closer to batch 0's images, and fewer images from noise
    **{
        f"fast-i100-w20-s{s}": [*FAST[:1], f"synthesize.warm_start={s}", "synthesize.iterations=100", "synthesize.warm_iterations=20"]
        for s in (0.75, 0.9)
    },
    "bf16-n256-i160": ["synthesize.precision=bf16", "synthesize.n_images=256", "synthesize.iterations=160"],
    "bf16-n512-i80": ["synthesize.precision=bf16", "synthesize.n_images=512", "synthesize.iterations=80"],
    # the same with as many distillation steps as the 1024-image default (40 epochs x 8 batches)
    "bf16-n256-i160-e160": ["synthesize.precision=bf16", "synthesize.n_images=256", "synthesize.iterations=160", "distill.epochs=160"],
    "bf16-n128-i320-e320": [
        "synthesize.precision=bf16",
        "synthesize.n_images=128",
        "synthesize.batch_size=128",
        "synthesize.iterations=320",
        "distill.epochs=320",
    ],
}
# DeepInversion's BN term (issue 15): the paper's sum of L2 norms (the default until then, lambda_bn 1) against the
# scale-free normalized form at several weights; chosen on the validation part
SWEEPS["bn_loss"] = {
    "l2-lambda1": ["synthesize.bn_loss=l2", "synthesize.lambda_bn=1"],
    **{f"normalized-lambda{v}": ["synthesize.bn_loss=normalized", f"synthesize.lambda_bn={v}"] for v in (3, 10, 30)},
}
# synthesis methods of "The Knowledge Within" at the default budget (images x iterations; in-batch augmentation at the
# same compute: 4 copies x 40 iterations = 1 copy x 160), replacing scripts/synthesis_methods.py
SWEEPS["methods"] = {
    "deepinversion": [],
    "gaussian": ["synthesize.method=gaussian"],
    "inception": ["synthesize.method=inception"],
    "bns": ["synthesize.method=bns"],
    "bns-no-prior": ["synthesize.method=bns", "synthesize.lambda_prior=0"],
    "bns-inception": ["synthesize.method=bns_inception"],
    "bns-4-copies-crop": ["synthesize.method=bns", "synthesize.duplicates=4", "synthesize.iterations=40", "synthesize.crop_min_area=0.7"],
    "generator": ["synthesize.method=generator"],
}
# distillation recipe x BN handling on the default synthetic set, replacing scripts/distill_ablation.py. Every
# setting is named by all it changes (the old script's "tuned, frozen BN" row also recalibrated BN without saying so).
# The paper's recipe (arXiv 2511.20702): 15 epochs over 1024 images = 120 SGD steps = 60 epochs over the default 256.
PAPER_KD = ["distill.lr=0.001", "distill.schedule=constant", "distill.epochs=60", "distill.max_shift=0", "distill.flip=false"]
SWEEPS["distill_recipe"] = {
    "no-recovery": ["distill.epochs=0"],
    "recalibrate-bn-only": ["distill.epochs=0", "distill.recalibrate_bn=true"],
    "paper-frozen-bn": [*PAPER_KD, "distill.freeze_bn=true"],
    "paper-recalibrated-frozen-bn": [*PAPER_KD, "distill.freeze_bn=true", "distill.recalibrate_bn=true"],
    "paper-train-bn": [*PAPER_KD, "distill.freeze_bn=false"],
    "default-frozen-bn": ["distill.freeze_bn=true"],
    "default-recalibrated-frozen-bn": ["distill.freeze_bn=true", "distill.recalibrate_bn=true"],
    "default": [],
}
# the settings where data-free recovery is hardest (issue 17), each distilled on the synthetic set (data-free) and, as
# `<setting>-real`, on as many real training images (NOT data-free); "no recovery" is every run's before-KD accuracy
HARD = {
    "unstructured0.9": ["prune.sparsity=0.9"],
    "structured-macs0.75": ["prune.method=structured", "prune.structured_amount=0.75"],
    "4w4a": ["prune.sparsity=0", "quantize.weight_bits=4", "quantize.act_bits=4"],
    "2w4a": ["prune.sparsity=0", "quantize.weight_bits=2", "quantize.act_bits=4"],
    "unstructured0.75-4w4a": ["quantize.weight_bits=4", "quantize.act_bits=4"],
}
ARMS = (("", "synthetic"), ("-real", "real"))
SWEEPS["hard"] = {f"{k}{arm}": [*v, f"distill.transfer_set={t}"] for k, v in HARD.items() for arm, t in ARMS}
SWEEPS["hard_cifar10"] = {k: ["data.name=cifar10", DATASET, *CIFAR10_TEACHER, *v] for k, v in SWEEPS["hard"].items()}
# levers on the hard settings (data-free arm), each at the default's KD steps (320) and about its synthesis compute:
# many more, more diverse images from the generator, 4x the images from noise at 1/4 of the iterations, or the
# paper's distillation losses on the default set
HARD_LEVERS = {
    "generator-2048": [
        "synthesize.method=generator",
        "synthesize.n_images=2048",
        "synthesize.generator_warmup=100",
        "synthesize.generator_steps=5",
        "distill.epochs=20",
    ],
    "noise-1024x40": ["synthesize.n_images=1024", "synthesize.iterations=40", "distill.epochs=40"],
    # "The Knowledge Within" (Table 1, KD+IQ+Mix): intermediate-feature loss at the three stages' outputs and in-batch
    # MixUp; same synthetic set and KD steps as the default
    "iq1-mixup1": ["distill.iq_beta=1.0", "distill.mixup_alpha=1.0"],
    # every BN layer weighted alike: the synthesis default before first_bn_weight 30 (2026-12-06); the data-free arms of
    # the hard sweep measured before then are these rows
    "first-bn1": ["synthesize.first_bn_weight=1.0"],
}
# levers that change the budget of both arms (more KD steps, more images): each runs data-free and, as
# `<setting>+<lever>-real`, on as many real images with the same KD steps (NOT data-free), so its gap is like for like
HARD_BUDGET_LEVERS = {
    "kd4x": ["distill.epochs=640"],  # 4x the default's KD steps (1280) on the same 256 images
    "n1024": ["synthesize.n_images=1024"],  # 4x the images, each 160 iterations (4x synthesis), 4x KD steps (160 epochs)
    "n2048": ["synthesize.n_images=2048"],  # 8x the images (8x synthesis) and 8x the KD steps (2,560)
    "n4096": ["synthesize.n_images=4096"],  # 16x the images (16x synthesis) and 16x the KD steps (5,120)
}
HARD_BUDGET_SETTINGS = {
    f"{k}+{lever}{arm}": [*HARD[k], *v, f"distill.transfer_set={t}"]
    for k in ("unstructured0.9", "2w4a", "structured-macs0.75")
    for lever, v in HARD_BUDGET_LEVERS.items()
    for arm, t in ARMS
}
# per-image levers on top of a budget lever (KD recipe or synthesis objective): at n2048/n4096 the data-free student
# agrees with the teacher on 99.9% of its (teacher-confident) synthetic images and the real-data one on 95.5% of its
# real ones, so the synthetic set is memorized: a softer teacher (higher KD temperature) and in-batch MixUp (mixtures
# near the decision boundaries) give each image more to teach; in-batch CutMix (a box of another image: new part-to-part
# combinations the teacher labels, as in function-matching KD, Beyer et al. 2022) likewise. Compared with the budget
# lever's real-data arm (same images and KD steps, default recipe). Synthesis levers aim at the same: a tenth / a
# hundredth of the class term (`ce0.1`, `ce0.01`: images the teacher is less sure of, nearer its decision boundaries)
# and random resized crops of each image while it is made (`crop0.5`: area 50-100%, "The Knowledge Within"'s in-batch
# augmentation)
HARD_RECIPE_LEVERS = {
    "t6": ["distill.temperature=6"],
    "mixup0.4": ["distill.mixup_alpha=0.4"],
    "cutmix1": ["distill.cutmix_alpha=1.0"],
    **{f"ce{w:g}": [f"synthesize.lambda_ce={w:g}"] for w in (0.1, 0.01)},
    "crop0.5": ["synthesize.crop_min_area=0.5"],
}
HARD_RECIPE_SETTINGS = {
    f"{k}+{budget}+{lever}": [*HARD[k], *HARD_BUDGET_LEVERS[budget], *v, "distill.transfer_set=synthetic"]
    for k in ("unstructured0.9", "2w4a", "structured-macs0.75")
    for budget in HARD_BUDGET_LEVERS
    for lever, v in HARD_RECIPE_LEVERS.items()
}
# student-aware synthesis (distill.adaptive_*; Adaptive DeepInversion): the default 256 images, then rounds of 256 made
# against the current student during KD, up to the image count and KD steps of a budget lever, whose data-free arm
# (the same number of fixed images) and real-data arm it is compared with; w = weight of the competition term
HARD_ADAPTIVE_LEVERS = {
    f"adaptive{n}-w{w:g}": (
        [f"distill.adaptive_rounds={n // 256 - 1}", "distill.adaptive_images=256", f"distill.adaptive_weight={w:g}"],
        f"n{n}",
    )
    for n in (1024, 2048)
    for w in (10.0, 30.0)
}
# many generator images at a budget lever's KD steps (issue 17: "more and more diverse images at equal compute"): the
# generator makes 4,096 images for ~1/8 and 16,384 (40 KD epochs = n4096's 5,120 steps) for ~1/6 of n4096's from-noise
# synthesis steps; compared with the budget lever's real-data arm (its KD steps, 4,096 real images)
HARD_GENERATOR_LEVERS = {
    f"generator{n}": (
        [
            "synthesize.method=generator",
            f"synthesize.n_images={n}",
            "synthesize.generator_warmup=100",
            f"synthesize.generator_steps={steps}",
            f"distill.epochs={epochs}",
        ],
        "n4096",
    )
    for n, steps, epochs in ((4096, 10, 160), (16384, 5, 40))
}
# the weight grid of 2w4a (quantize.weight_range mse: each channel clipped where rounding errs least, chosen from the
# weights alone, so data-free): the max grid puts 2-bit rounding thresholds at max|w| / 2, most weights round to 0
# and KD must re-learn the network from chance. It changes both arms' starting point, so each lever has its own
# `-real` arm: on the default budget and on n1024 (Fashion-MNIST's best 2w4a budget) / n2048 (CIFAR-10's); on 4w4a
# too, to see whether it could be the default
HARD_WEIGHT_RANGE_LEVERS = {
    f"{b}wmse": [*HARD_BUDGET_LEVERS.get(b.rstrip("+"), []), "quantize.weight_range=mse"] for b in ("", "n1024+", "n2048+")
}
HARD_WEIGHT_RANGE_SETTINGS = {
    f"{k}+{lever}{arm}": [*HARD[k], *v, f"distill.transfer_set={t}"]
    for k in ("2w4a", "4w4a")
    for lever, v in HARD_WEIGHT_RANGE_LEVERS.items()
    for arm, t in ARMS
}
# the levers read against a budget lever's arms (same images and KD steps): lever -> (overrides, budget lever)
HARD_MATCHED_LEVERS = HARD_ADAPTIVE_LEVERS | HARD_GENERATOR_LEVERS
HARD_MATCHED_SETTINGS = {
    f"{k}+{lever}": [*HARD[k], *v, "distill.transfer_set=synthetic"]
    for k in ("unstructured0.9", "2w4a", "structured-macs0.75")
    for lever, (v, _) in HARD_MATCHED_LEVERS.items()
}
# which real-data arm each lever is read against: `<setting>+<budget>-real` (same images and KD steps); a lever not
# listed keeps the setting's KD steps and is read against the setting's own `<setting>-real`
HARD_LEVER_REAL_ARM = (
    {b: b for b in HARD_BUDGET_LEVERS}
    | {f"{b}+{r}": b for b in HARD_BUDGET_LEVERS for r in HARD_RECIPE_LEVERS}
    | {lever: budget for lever, (_, budget) in HARD_MATCHED_LEVERS.items()}
    | {lever: lever for lever in HARD_WEIGHT_RANGE_LEVERS}
)
SWEEPS["hard_levers"] = (
    {
        f"{k}+{lever}": [*HARD[k], *v, "distill.transfer_set=synthetic"]
        for k in ("unstructured0.9", "2w4a")
        for lever, v in HARD_LEVERS.items()
    }
    | HARD_BUDGET_SETTINGS
    | HARD_RECIPE_SETTINGS
    | HARD_MATCHED_SETTINGS
    | HARD_WEIGHT_RANGE_SETTINGS
)
# the budget and student-aware levers on CIFAR-10 (the hard_cifar10 teacher and data), as hard_cifar10 is the hard
# sweep on CIFAR-10
SWEEPS["hard_cifar10_levers"] = {
    k: ["data.name=cifar10", DATASET, *CIFAR10_TEACHER, *v]
    for k, v in (HARD_BUDGET_SETTINGS | HARD_RECIPE_SETTINGS | HARD_MATCHED_SETTINGS | HARD_WEIGHT_RANGE_SETTINGS).items()
}
# generator-based synthesis against the default from-noise synthesis (issue 17): synthesis time and recovered accuracy
SWEEPS["generator"] = {
    "from-noise-default": [],
    "generator-256": ["synthesize.method=generator"],
    "generator-1024": ["synthesize.method=generator", "synthesize.n_images=1024", "distill.epochs=40"],
    "generator-1024-w100-s10": [
        "synthesize.method=generator",
        "synthesize.n_images=1024",
        "synthesize.generator_warmup=100",
        "synthesize.generator_steps=10",
        "distill.epochs=40",
    ],
    # 4x / 8x the default's images for about its synthesis cost (100 + 4 x 10 or 8 x 5 generator steps vs 160 from noise)
    "generator-2048-w100-s5": [
        "synthesize.method=generator",
        "synthesize.n_images=2048",
        "synthesize.generator_warmup=100",
        "synthesize.generator_steps=5",
        "distill.epochs=20",
    ],
}
# the shipped model (issue 18): channel pruning + ONNX Runtime int8, against the default (unstructured) run's export
# round16: kept channel counts in multiples of 16 - ONNX Runtime's int8 convolutions on AVX512-VNNI ran an 8-channel
# ResNet-20 layer slower than the 16-channel original (1.7 vs 1.2 ms at batch 64; benchmarks/export_latency.py)
STRUCTURED = ["prune.method=structured", "prune.structured_amount=0.5"]
SWEEPS["export"] = {
    "structured-macs0.5": STRUCTURED,
    "structured-macs0.5-round16": [*STRUCTURED, "prune.round_to=16"],
    "structured-macs0.5-round16-global": [*STRUCTURED, "prune.round_to=16", "prune.structured_scope=global"],
}
# bf16 autocast against fp32 synthesis on the default pipeline (issue 7: recovered accuracy within 0.3 points)
SWEEPS["precision"] = {p: [f"synthesize.precision={p}"] for p in ("fp32", "bf16")}
# the teacher zoo (issue 15): teachers trained outside the pipeline by scripts/make_zoo_teachers.py, each brought in
# through train_teacher.source = file with the default pipeline and no per-teacher setting; the settings come from its
# manifest at queue time, and each experiment gets the (git- and dvc-ignored) zoo folder copied in
ZOO_DIR = Path("models/external/zoo")
# the zoo under one changed setting, the same teachers: a lever measured on every architecture at once
# zoo itself runs the defaults (LAMP ranking, first_bn_weight 30); zoo_first_bn1 the BN term before first_bn_weight
ZOO_VARIANTS = {"zoo": [], "zoo_magnitude": ["prune.ranking=magnitude"], "zoo_first_bn1": ["synthesize.first_bn_weight=1.0"]}
ACC = "metrics.student.accuracy"
VAL = "metrics.student.val_accuracy"  # what tuning reads: the validation part, never the test split
JKL = "metrics.j_kl_relative_to_train."  # evaluate's J_KL of each image set, relative to the training images
RANKING = "params.prune.ranking"  # how each run ranked weights for pruning (paper.md, zoo.md, hard.md; LAMP the default since 2026-12-03)
FIRST_BN = "params.synthesize.first_bn_weight"  # the synthesis BN term's first-layer weight (zoo.md; 30 the default since 2026-12-06)
COST = {  # metrics column -> summary column (absent in runs made before evaluate measured them)
    "metrics.speedup_b64": "speedup_b64",
    "metrics.size_ratio": "size_ratio",
    "metrics.student.latency_ms_b64": "latency_ms_b64",
    "metrics.student.macs": "macs",
    "metrics.synthetic.image_iterations": "image_iterations",
    "metrics.wall_s.synthesize": "synthesize_s",
    "metrics.wall_s.distill": "distill_s",
    "metrics.synthetic.teacher_agreement": "synthetic_agreement",
    "metrics.synthetic.pred_class_balance": "synthetic_class_balance",
    "metrics.j_kl_relative_to_train.synthetic": "synthetic_jkl_rel",
    # the shipped ONNX models in ONNX Runtime (stage export; export_int8_real is the NOT data-free reference)
    "metrics.export.teacher_fp32.latency_ms_b64": "onnx_teacher_fp32_latency_ms_b64",
    "metrics.export.student_fp32.accuracy": "onnx_student_fp32_accuracy",
    "metrics.export.student_fp32.latency_ms_b64": "onnx_student_fp32_latency_ms_b64",
    "metrics.export.int8_synthetic.accuracy": "onnx_int8_synthetic_accuracy",
    "metrics.export.int8_synthetic.latency_ms_b1": "onnx_int8_synthetic_latency_ms_b1",
    "metrics.export.int8_synthetic.latency_ms_b64": "onnx_int8_synthetic_latency_ms_b64",
    "metrics.export.int8_synthetic.file_bytes": "onnx_int8_synthetic_bytes",
    "metrics.export.int8_real.accuracy": "onnx_int8_real_NOT_data_free_accuracy",
}
# sweeps on a dataset the user names with --dataset
NEEDS_DATASET = ("paper", "paper_cpu", "cifar10", "hard_cifar10", "hard_cifar10_levers")


def zoo_settings(extra: list[str] = ()) -> dict[str, list[str]]:
    """One setting per teacher of the zoo manifest: bring it in as it was made (arch, shape, normalization), plus
    ``extra`` (a ZOO_VARIANTS lever), nothing else."""
    manifest = ZOO_DIR / "zoo.json"
    if not manifest.is_file():
        raise StageError(f"{manifest} not found: make the zoo first (dvc repro prepare_data && python scripts/make_zoo_teachers.py)")
    out = {}
    for name, t in json.loads(manifest.read_text()).items():
        out[name] = [
            "train_teacher.source=file",
            f"train_teacher.file={t['file']}",
            f"train_teacher.arch={t['arch']}",
            f"++train_teacher.arch_kwargs={hydra_dict(t.get('arch_kwargs') or {})}",  # ++: Hydra adds keys to the {} default
            f"train_teacher.num_classes={t['num_classes']}",
            f"train_teacher.input_shape={json.dumps(t['input_shape'])}",
            f"train_teacher.mean={json.dumps(t['mean'])}",
            f"train_teacher.std={json.dumps(t['std'])}",
            *extra,
        ]
    return out


def hydra_dict(d: dict) -> str:
    """A mapping as `dvc exp run -S` takes it (Hydra's override grammar: bare keys, JSON scalars and lists)."""
    return "{" + ",".join(f"{k}:{json.dumps(v)}" for k, v in d.items()) + "}"


def sweep_settings(sweep: str) -> dict[str, list[str]]:
    return zoo_settings(ZOO_VARIANTS[sweep]) if sweep in ZOO_VARIANTS else SWEEPS[sweep]


def dvc(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise StageError(f"dvc {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def queue(sweep: str, seeds: list[int], jkl_max_images: int, settings: list[str] | None = None, dataset: str | None = None) -> None:
    sweeps = sweep_settings(sweep)
    if sweep in NEEDS_DATASET:
        if not dataset:
            raise StageError(
                f"sweep {sweep} runs on CIFAR-10: give its copy with --dataset PATH (a batches folder, an ImageFolder tree or a .tar.gz)"
            )
        if not Path(dataset).exists():
            raise StageError(f"--dataset {dataset}: not found")
        sweeps = {k: [v.format(dataset=Path(dataset).resolve()) if v == DATASET else v for v in sets] for k, sets in sweeps.items()}
    elif dataset:
        raise StageError(f"--dataset is for the sweeps {list(NEEDS_DATASET)}; {sweep} runs on params.yaml's data")
    unknown = sorted(set(settings or []) - set(sweeps))
    if unknown:
        raise StageError(f"--settings: {unknown} not in sweep {sweep!r} (has {list(sweeps)})")
    copy = ["--copy-paths", str(ZOO_DIR)] if sweep in ZOO_VARIANTS else []
    for setting, sets in sweeps.items():
        if settings and setting not in settings:
            continue
        sets = [absolute_path(s) for s in sets]
        for seed in seeds:
            name = f"{sweep}--{setting}--seed{seed}"
            extra = [f"distill.seed={seed}", f"evaluate.jkl_max_images={jkl_max_images}"]
            args = ["exp", "run", "--queue", "-n", name, *copy, *[a for s in [*sets, *extra] for a in ("-S", s)]]
            dvc(*args)
            print("queued", name)
    print("now run: dvc exp run --run-all && python -m stages.compare report   (--run-all waits for the queue)")


def absolute_path(assignment: str) -> str:
    """Queued experiments run in a temporary copy of the repo (.dvc/tmp/exps), so a relative data path
    given from the project root would point elsewhere there: make it absolute at queue time."""
    key, _, value = assignment.partition("=")
    if key == "prepare_data.path" and value and not Path(value).is_absolute():
        return f"{key}={Path(value).resolve()}"
    return assignment


def paper_table(runs: pd.DataFrame) -> str:
    """Paper-vs-ours for the arXiv 2511.20702 preset runs (full and CPU-scaled), and our default pipeline on the
    CIFAR-trained resnet20 teacher (sweep cifar10, settings resnet20-teacher*-*) beside the paper's ResNet-18."""
    part = runs[runs["sweep"].isin(["paper", "paper_cpu"]) & runs["has_metrics"]]
    ours = runs[(runs["sweep"] == "cifar10") & runs["setting"].str.startswith("resnet20-teacher") & runs["has_metrics"]]
    if part.empty and ours.empty:
        return ""
    lines = ["# arXiv 2511.20702 preset: paper vs ours (CIFAR-10, 75% global L1, DeepInversion, KD)"]
    preset = [
        "",
        "Ours: CIFAR-10 from the run's prepare_data source (the JPEG copy here, slightly harder than the original batches).",
        f"paper_cpu runs are scaled down to fit a 2-core CPU ({', '.join(PAPER_CPU_SCALE)}): not comparable in level.",
        "",
        "| run | arch | device | paper pruned | paper recovered | our teacher | our pruned | our recovered | gap to teacher "
        "| share of the pruning loss recovered |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += preset if not part.empty else []
    for d in part.sort_values(["sweep", "setting", "seed"]).to_dict("records"):
        pp, pr = PAPER_RESULTS[d["setting"]]
        t, p, st = d["metrics.teacher.accuracy"], d["metrics.pruned.accuracy"], d[ACC]
        dev = d.get("metrics.device", "-")
        share = f"{(st - p) / (t - p):.0%}" if t > p else "-"
        lines.append(
            f"| {d['sweep']} seed {d['seed']} | {d['setting']} | {dev} | {pp:.2f}% | {pr:.2f}% "
            f"| {t:.2%} | {p:.2%} | {st:.2%} | {100 * (t - st):.2f} | {share} |"
        )
    if not ours.empty:
        pp, pr = PAPER_RESULTS["resnet18"]
        lines += [
            "",
            "## Our default pipeline on a CIFAR-trained teacher (sweep cifar10, resnet20 with the CIFAR stem)",
            "",
            "Teachers: `train_teacher` with "
            + "; ".join(
                f"{k} = {', '.join(v)}"
                for k, v in CIFAR10_TEACHERS.items()
                if ours["setting"].str.startswith(f"resnet20-{k}-").any()  # a preset without runs is not a result
            )
            + " (cosine SGD, shifts + flips) on the 45,000 training images "
            "that are not the validation part; then the defaults (256 DeepInversion images x 160 iterations, global pruning "
            "with the per-layer floor prune.min_density ranked as the column says, 320 KD steps; "
            + "; ".join(f"`{k}`: {', '.join(v)}" for k, v in CIFAR10_TRANSFER_SETS.items() if k)
            + "). `-real`: the same KD on as many real training images, NOT "
            f"data-free. The paper's ResNet-18 (75% global L1): {pp:.2f}% -> {pr:.2f}%. Mean +- std over seeds (distill.seed).",
            "",
            "| setting | pruning ranking | device | seeds | teacher | pruned (no recovery) | recovered | gap to teacher "
            "| share of the pruning loss recovered |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ours = ours.assign(ranking=pruning_ranking(ours))
        for (setting, ranking), g in ours.groupby(["setting", "ranking"], sort=True):
            t, p, st = g["metrics.teacher.accuracy"].mean(), g["metrics.pruned.accuracy"].mean(), g[ACC]
            teacher = mean_teacher(t, g["metrics.teacher.accuracy"].nunique())
            sd = f" +- {100 * st.std():.2f}" if len(st) > 1 else ""
            share = f"{(st.mean() - p) / (t - p):.0%}" if t > p else "-"
            dev = g["metrics.device"].iloc[0] if "metrics.device" in g else "-"
            lines.append(
                f"| {setting} | {ranking} | {dev} | {len(g)} | {teacher} | {p:.2%} | {st.mean():.2%}{sd} "
                f"| {100 * (t - st.mean()):.2f} | {share} |"
            )
        lines += cifar10_jkl_lines(ours)
    return "\n".join(lines) + "\n"


def pruning_ranking(runs: pd.DataFrame) -> pd.Series:
    """prune.ranking of each run; runs made before the parameter existed ranked by magnitude (the only ranking then)."""
    return runs[RANKING].fillna("magnitude") if RANKING in runs else pd.Series("magnitude", index=runs.index)


def first_bn_weights(runs: pd.DataFrame) -> list[str]:
    """The synthesize.first_bn_weight values the runs used; runs made before the parameter existed weighted every BN
    layer alike (1)."""
    values = runs[FIRST_BN].fillna(1.0) if FIRST_BN in runs else pd.Series(1.0, index=runs.index)
    return [f"{float(v):g}" for v in sorted(set(values))]


def cifar10_jkl_lines(ours: pd.DataFrame) -> list[str]:
    """J_KL (the BN-statistics divergence of "The Knowledge Within", relative to the training images) of each CIFAR-10
    teacher's image sets, from evaluate's metrics: one row per teacher preset (the synthetic set does not depend on
    the pruning or distill.seed, so any run of a teacher gives it)."""
    cols = sorted(c for c in ours if c.startswith(JKL) and ours[c].notna().any())
    if not cols:
        return []
    names = [c.removeprefix(JKL) for c in cols]
    lines = [
        "",
        "### J_KL on CIFAR-10 (relative to the training images: 1 = as close to the teacher's BN statistics as its own training data)",
        "",
        "| teacher | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    sizes = [k for k in CIFAR10_TRANSFER_SETS if k]  # a bigger transfer set is another synthetic set: its own row
    size = ours["setting"].map(lambda s: next((k for k in sizes if f"{k}-" in f"{s}-"), ""))
    teacher = ours["setting"].str.split("-").str[1] + size
    for name, g in ours.groupby(teacher, sort=True):
        row = g[cols].dropna(how="all")
        if len(row):
            lines.append(f"| {name} | " + " | ".join("-" if pd.isna(v) else f"{v:.3g}" for v in row.iloc[0]) + " |")
    return lines


def runs_table(doc) -> pd.DataFrame:
    """The sweep experiments of a `dvc exp show --json` document, with sweep / setting / seed columns."""
    df = experiments_table(doc)
    if df.empty or "name" not in df:
        return pd.DataFrame()
    df = df[df["name"].str.count("--") == 2].copy()
    if df.empty:
        return df
    df[["sweep", "setting", "seed"]] = df["name"].str.split("--", expand=True)
    df = df[df["sweep"].isin([*SWEEPS, *ZOO_VARIANTS])]
    df["seed"] = df["seed"].str.removeprefix("seed").astype(int)
    # evaluate's lineage verdict; a run without one (undetermined, or made before the verdict existed) is not data-free
    df["data_free"] = df.get("metrics.data_free", pd.Series(None, index=df.index, dtype=object)).eq(True)
    return df.reset_index(drop=True)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["has_metrics"]]
    g = ok.groupby(["sweep", "setting"], sort=False)
    out = g[ACC].agg(["mean", "std", "count"]).rename(columns={"mean": "accuracy_mean", "std": "accuracy_std", "count": "runs"})
    out["val_accuracy_mean"] = g[VAL].mean() if VAL in ok else float("nan")
    for col, name in (("metrics.pruned.accuracy", "pruned_accuracy"), ("metrics.teacher.accuracy", "teacher_accuracy")):
        out[name] = g[col].mean()
    # seeds vary distill.seed only, so a setting's runs share one teacher; more than one teacher accuracy means its runs
    # trained their teachers apart (another host's bf16 kernels, other code) and the mean mixes starting points
    out["teachers"] = g["metrics.teacher.accuracy"].nunique()
    # the model KD starts from: the calibrated fake-quant model when quantize was on, else the pruned one
    before = ok["metrics.quantized.accuracy"] if "metrics.quantized.accuracy" in ok else pd.Series(float("nan"), index=ok.index)
    out["before_kd_accuracy"] = before.fillna(ok["metrics.pruned.accuracy"]).groupby([ok["sweep"], ok["setting"]], sort=False).mean()
    for col, name in COST.items():
        out[name] = g[col].mean() if col in ok else float("nan")
    out["data_free"] = g["data_free"].all()
    missing = runs[~runs["has_metrics"]].groupby(["sweep", "setting"]).size()
    out["runs_without_metrics"] = missing.reindex(out.index).fillna(0).astype(int)
    order = {s: i for sw in SWEEPS.values() for i, s in enumerate(sw)}
    out = out.reset_index()
    out["_o"] = out["setting"].map(order)
    return out.sort_values(["sweep", "_o"]).drop(columns="_o").reset_index(drop=True)


def selected_on_validation(part: pd.DataFrame) -> str | None:
    """The setting of one sweep with the best data-free student on the validation part (ties: the first); None
    when no run has a validation accuracy. The test accuracy never enters the choice."""
    ok = part[part["data_free"].astype(bool) & part["val_accuracy_mean"].notna()]
    return None if ok.empty else ok.loc[ok["val_accuracy_mean"].idxmax(), "setting"]


def render(summary: pd.DataFrame) -> str:
    lines = [
        "# Sweeps (DVC experiments; accuracy on the real test split, mean +- std over seeds)",
        "",
        "Settings are compared on the validation part (`val`: data.val_fraction of the training split, never tested on); "
        "**bold** marks each sweep's best data-free setting on it. The test accuracy is reported, not used to choose.",
        "",
    ]
    for sweep, part in summary.groupby("sweep", sort=False):
        best = selected_on_validation(part)
        lines += [
            f"## {sweep}",
            "",
            "| setting | student accuracy | std | val | runs | no metrics | before KD (pruned / calibrated) | teacher | data-free "
            "| speed-up b64 | size ratio |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in part.itertuples():
            std = "-" if pd.isna(r.accuracy_std) else f"{100 * r.accuracy_std:.2f}"
            val = "-" if pd.isna(r.val_accuracy_mean) else f"{r.val_accuracy_mean:.2%}"
            free = "yes" if r.data_free else "**NO (real images)**"
            name = f"**{r.setting}**" if r.setting == best else r.setting
            teacher = mean_teacher(r.teacher_accuracy, r.teachers)
            lines.append(
                f"| {name} | {r.accuracy_mean:.2%} | {std} | {val} | {r.runs} | {r.runs_without_metrics} "
                f"| {r.before_kd_accuracy:.2%} | {teacher} | {free} | {_x(r.speedup_b64, 2)} | {_x(r.size_ratio, 1)} |"
            )
        lines += ["", f"![{sweep}]({sweep}.png)", ""]
    return "\n".join(lines)


def mean_teacher(accuracy: float, teachers: int) -> str:
    """A group's mean teacher accuracy; a mean over differently trained teachers (``teachers`` > 1) says so."""
    return f"{accuracy:.2%}" + (f" (mean of {teachers} teachers)" if teachers > 1 else "")


def zoo_table(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Teachers trained outside the pipeline, each through the default pipeline: the issue-15 acceptance table."""
    part = summary[summary["sweep"] == "zoo"]
    if part.empty:
        return ""
    failed = runs[(runs["sweep"] == "zoo") & ~runs["has_metrics"]]["setting"].tolist()
    done = runs[(runs["sweep"] == "zoo") & runs["has_metrics"]]
    devices, caps = (sorted(set(done[c].dropna())) if c in done else [] for c in ("metrics.device", "metrics.cpu_capability"))
    lines = [
        "# Teacher zoo: classifiers trained outside the pipeline, brought in with the defaults",
        "",
        "Each teacher was trained by `scripts/make_zoo_teachers.py` (not by the pipeline) and entered through "
        "`train_teacher.source: file`; every other setting is the default (75% global unstructured sparsity, ranked by "
        f"{', '.join(sorted(set(pruning_ranking(done))))} with the per-layer floor `prune.min_density`, DeepInversion with "
        f"the normalized BN loss, its first BN layer x {', '.join(first_bn_weights(done))} (`synthesize.first_bn_weight`), KD). "
        "Accuracies on the real Fashion-MNIST "
        f"test split; device {', '.join(devices) or '-'}, CPU capability {', '.join(caps) or '-'}.",
        "",
        "| teacher | teacher acc | pruned | recovered | gap (points) | recovered >= teacher - 1 "
        "| teacher agrees with the synthesis targets | synthesis s | distill s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part.itertuples():
        gap = 100 * (r.teacher_accuracy - r.accuracy_mean)
        agree = "-" if pd.isna(r.synthetic_agreement) else f"{r.synthetic_agreement:.1%}"
        lines.append(
            f"| {r.setting} | {r.teacher_accuracy:.2%} | {r.pruned_accuracy:.2%} | {r.accuracy_mean:.2%} | {gap:.2f} "
            f"| {'yes' if gap <= 1.0 else '**no**'} | {agree} | {r.synthesize_s:.0f} | {r.distill_s:.0f} |"
        )
    lines += ["", f"Runs without metrics (failed or not run): {', '.join(failed) or 'none'}.", ""]
    return "\n".join(lines)


def _x(v, digits: int) -> str:
    return "-" if pd.isna(v) else f"{v:.{digits}f}x"


def plot(summary: pd.DataFrame, folder: Path) -> None:
    import matplotlib.ticker

    from stages.core.plots import plt

    for sweep, part in summary.groupby("sweep", sort=False):
        fig, ax = plt.subplots(figsize=(7.5, 4.5) if sweep == "compute" else (5.5, 3.4))
        teacher = part["teacher_accuracy"].mean()
        if sweep == "sparsity":
            part = part.assign(sparsity=part["setting"].str.extract(r"sparsity([\d.]+)-")[0].astype(float))
            part = part.assign(transfer=part["setting"].str.rsplit("-", n=1).str[1])
            ax.axhline(100 * teacher, color="k", ls="--", label="teacher")
            base = part.groupby("sparsity")["pruned_accuracy"].mean()
            ax.plot(base.index, 100 * base.values, "o:", label="no recovery")
            for t, label in (("synthetic", "data-free recovered"), ("real", "real-data KD (NOT data-free)")):
                q = part[part["transfer"] == t].sort_values("sparsity")
                ax.errorbar(
                    q["sparsity"], 100 * q["accuracy_mean"], yerr=100 * q["accuracy_std"].fillna(0), marker="o", capsize=3, label=label
                )
            ax.set_xlabel("sparsity")
        elif sweep == "n_images":
            part = part.assign(n=part["setting"].str.removeprefix("n").astype(int)).sort_values("n")
            ax.errorbar(
                part["n"], 100 * part["accuracy_mean"], yerr=100 * part["accuracy_std"].fillna(0), marker="o", capsize=3, label="recovered"
            )
            ax.axhline(100 * teacher, color="k", ls="--", label="teacher")
            ax.axhline(100 * part["pruned_accuracy"].mean(), color="gray", ls=":", label="no recovery")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("synthetic images")
        elif sweep == "compute":
            part = part.dropna(subset=["image_iterations"])
            kind = part["setting"].str.replace(r"^bf16-n.*", "fewer", regex=True).str.split("-").str[0]
            for recipe, label in (("paper", "paper recipe (fp32, from noise)"), ("bf16", "bf16, from noise")):
                q = part[kind == recipe].sort_values("image_iterations")
                ax.plot(q["image_iterations"], 100 * q["accuracy_mean"], "o-", label=f"{label}: fewer iterations")
            for recipe, label, marker in (("fast", "bf16 + warm start", "s"), ("fewer", "bf16, fewer images", "^")):
                q = part[kind == recipe]
                ax.scatter(q["image_iterations"], 100 * q["accuracy_mean"], marker=marker, label=label, zorder=3)
                for r in q.itertuples():
                    ax.annotate(
                        r.setting.split("-", 1)[1],
                        (r.image_iterations, 100 * r.accuracy_mean),
                        fontsize=5,
                        xytext=(3, -2),
                        textcoords="offset points",
                    )
            full = part[part["setting"] == "paper-i200"]
            if len(full):
                ax.axhline(100 * full["accuracy_mean"].iloc[0], color="C0", ls=":", lw=1, label="paper recipe, full compute")
                ax.axvline(full["image_iterations"].iloc[0] / 5, color="gray", ls="--", lw=1, label="1/5 of its compute")
            ax.axhline(100 * teacher, color="k", ls="--", label="teacher")
            ax.set_xscale("log")
            ax.set_xticks([10_000, 20_000, 40_000, 100_000, 200_000])
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("synthesis compute (images x iterations)")
        elif sweep == "quant":
            part = part.assign(bits=part["setting"].str.split("-").str[0], transfer=part["setting"].str.split("-").str[1])
            bits = list(dict.fromkeys(part["bits"]))
            syn = part[part["transfer"] == "synthetic"].set_index("bits").reindex(bits)
            real = part[part["transfer"] == "real"].set_index("bits").reindex(bits)
            pos = range(len(bits))
            for k, (vals, label) in enumerate(
                (
                    (syn["before_kd_accuracy"], "calibration only"),
                    (syn["accuracy_mean"], "data-free KD (synthetic)"),
                    (real["accuracy_mean"], "real-data KD (NOT data-free)"),
                )
            ):
                ax.bar([p + (k - 1) * 0.27 for p in pos], 100 * vals.fillna(0), width=0.27, label=label)
            ax.set_xticks(list(pos), bits)
            ax.axhline(100 * teacher, color="k", ls="--", label="teacher (fp32)")
        else:
            ax.bar(part["setting"], 100 * part["accuracy_mean"], yerr=100 * part["accuracy_std"].fillna(0), capsize=4)
            ax.axhline(100 * teacher, color="k", ls="--", label="teacher")
            lo = 100 * min(part["accuracy_mean"].min(), teacher)
            ax.set_ylim(max(0, lo - 5), 100 * max(part["accuracy_mean"].max(), teacher) + 1)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{sweep} sweep (mean +- std over seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right" if sweep == "compute" else "best")
        fig.tight_layout()
        fig.savefig(folder / f"{sweep}.png", dpi=100)
        plt.close(fig)


# the hard sweeps, one main table each: the sweep, and the dataset and teacher its runs used
HARD_SWEEPS = {
    "hard": "Fashion-MNIST, the default pipeline's teacher",
    "hard_cifar10": "CIFAR-10 (the run's prepare_data copy), the teacher25 preset (CIFAR10_TEACHER)",
}
# each lever sweep, the hard sweep whose settings (and real-data arms) it varies, and its dataset
LEVER_SWEEPS = {"hard_levers": ("hard", "Fashion-MNIST"), "hard_cifar10_levers": ("hard_cifar10", "CIFAR-10")}


def hard_table(summary: pd.DataFrame, runs: pd.DataFrame | None = None) -> str | None:
    """reports/compare/hard.md: for each hard sweep (HARD_SWEEPS) and setting, no recovery / data-free / real-data KD
    (NOT data-free) and the gap, then each lever's data-free result against the same real-data arm."""
    part = summary[summary["sweep"].isin([*HARD_SWEEPS, *LEVER_SWEEPS])].set_index(["sweep", "setting"])
    if part.empty:
        return None

    def cell(key) -> str:
        if key not in part.index:
            return "not run"
        r = part.loc[key]
        sd = "" if pd.isna(r["accuracy_std"]) else f" +- {100 * r['accuracy_std']:.2f}"
        mixed = f", {int(r['teachers'])} teachers" if r["teachers"] > 1 else ""
        return f"{100 * r['accuracy_mean']:.2f}{sd} ({int(r['runs'])}{mixed})"

    def gap(free, real) -> str:
        if free not in part.index or real not in part.index:
            return "-"
        g = 100 * (part.loc[real, "accuracy_mean"] - part.loc[free, "accuracy_mean"])
        return f"{g:.2f}" + (" (within 1.0)" if g <= 1.0 else "")

    mine = pd.DataFrame() if runs is None else runs[runs["sweep"].isin([*HARD_SWEEPS, *LEVER_SWEEPS]) & runs["has_metrics"]]
    lines = [
        "# Where data-free recovery is hardest: data-free vs real-data KD",
        "",
        "Real test split accuracy, mean +- std over seeds (runs). Real-data KD distils on as many real training images as "
        "the synthetic set has: **NOT data-free**. Gap = real-data KD - data-free, in points. Teacher: as each "
        "setting's runs trained it (runs whose teachers differ, e.g. trained on another host, say `k teachers`). "
        "Pruning: how the runs of a setting ranked weights (global L1 by magnitude, or LAMP; structured settings remove "
        "whole channels).",
    ]

    def pruning(sweep: str, k: str) -> str:
        if "prune.sparsity=0" in HARD[k]:
            return "none"
        if "prune.method=structured" in HARD[k]:
            return "structured"
        of = mine[(mine["sweep"] == sweep) & mine["setting"].isin([k, f"{k}-real"])] if len(mine) else mine
        return " + ".join(sorted(set(pruning_ranking(of)))) if len(of) else "-"

    for sweep, what in HARD_SWEEPS.items():
        if sweep != "hard" and sweep not in part.index.get_level_values(0):
            continue  # a sweep on another dataset appears once it has runs
        lines += [
            "",
            f"## `{sweep}`: {what}",
            "",
            "| setting | pruning | teacher | no recovery | data-free KD | real-data KD (NOT data-free) | gap |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in HARD:
            free, real = (sweep, k), (sweep, f"{k}-real")
            before = (
                part.loc[free, "before_kd_accuracy"]
                if free in part.index
                else part.loc[real, "before_kd_accuracy"]
                if real in part.index
                else None
            )
            before = "-" if before is None else f"{100 * before:.2f}"
            teachers = part.loc[[i for i in (free, real) if i in part.index], "teacher_accuracy"].dropna().unique()
            teacher = " / ".join(f"{100 * t:.2f}" for t in teachers) or "-"  # two values: the arms ran on different teachers
            lines.append(f"| {k} | {pruning(sweep, k)} | {teacher} | {before} | {cell(free)} | {cell(real)} | {gap(free, real)} |")
    for lever_sweep, (sweep, dataset) in LEVER_SWEEPS.items():
        levers = [s for sw, s in part.index if sw == lever_sweep and not s.endswith("-real")]
        if not levers:
            continue
        lines += [
            "",
            f"## `{lever_sweep}`: levers on the {dataset} settings",
            "",
            "Levers (data-free arm). A lever that changes the budget (KD steps, images) has its own real-data arm with the "
            "same budget; a student-aware lever (`adaptive<N>`: rounds of images made against the student during KD, up to "
            "N images and n<N>'s KD steps) is compared with `n<N>-real`, a generator lever (`generator<N>`: N generator "
            "images at n4096's KD steps) with `n4096-real`, a KD-recipe lever on a budget lever (`n<N>+t6`: KD "
            "temperature 6, `n<N>+mixup0.4` / `n<N>+cutmix1`: in-batch MixUp / CutMix) with `n<N>-real`, a weight-grid "
            "lever (`wmse`, `n<N>+wmse`: 2-bit weights clipped where rounding errs least, `quantize.weight_range=mse`) "
            "with its own `-real` arm on that grid; the others "
            "keep the setting's KD steps and compare with the setting's real-data arm:",
            "",
            "| setting + lever | data-free KD | real-data KD (NOT data-free) | gap |",
            "|---|---|---|---|",
        ]
        for s in levers:
            k, lever = s.split("+", 1)
            budget = HARD_LEVER_REAL_ARM.get(lever)
            real = (lever_sweep, f"{k}+{budget}-real") if budget else (sweep, f"{k}-real")
            lines.append(f"| {s} | {cell((lever_sweep, s))} | {cell(real)} | {gap((lever_sweep, s), real)} |")
    return "\n".join(lines) + "\n"


def read_runs(path: Path) -> pd.DataFrame:
    """reports/compare/runs.csv as written. Files written before the header was de-duplicated hold one column twice,
    which pandas reads as ``X`` and ``X.1``: the copy is folded back into ``X`` (its values fill ``X``'s gaps)."""
    runs = pd.read_csv(path)
    for col in [c for c in runs if c.endswith(".1") and c.removesuffix(".1") in runs]:
        base = col.removesuffix(".1")
        runs[base] = runs[base].fillna(runs.pop(col))
    return runs


def merge_runs(recorded: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The rows of an earlier report (another clone, a removed experiment) merged with this report's experiments: one
    row per name. A name's current row replaces its recorded one, except that a current run without metrics (failed or
    killed; queued and running ones are not rows) never replaces a recorded run that finished: the seed has a result,
    and the dropped rerun is named on stdout. A name with no finished run anywhere keeps its row without metrics."""
    if current.empty or "name" not in current:
        return recorded
    finished = set(recorded.loc[recorded["has_metrics"].astype(bool), "name"])
    unfinished_rerun = ~current["has_metrics"].astype(bool) & current["name"].isin(finished)
    for name in current.loc[unfinished_rerun, "name"]:
        print(f"kept the finished run {name} of reports/compare/runs.csv over its rerun without metrics")
    current = current[~unfinished_rerun]
    recorded = recorded[~recorded["name"].isin(current["name"])]
    return pd.concat([recorded, current], ignore_index=True)


def report(json_path: Path | None, fresh: bool = False) -> None:
    doc = json.loads(json_path.read_text()) if json_path else json.loads(dvc("exp", "show", "--json", "-A"))
    runs = runs_table(doc)
    if not fresh and (OUT / "runs.csv").is_file():
        runs = merge_runs(read_runs(OUT / "runs.csv"), runs)
    if runs.empty or not runs["has_metrics"].any():
        raise StageError(
            "no finished sweep experiments (names <sweep>--<setting>--seed<k>): queue them with `python -m stages.compare queue ...`"
        )
    summary = summarize(runs)
    keep = ["name", "sweep", "setting", "seed", "has_metrics", "data_free", ACC, "metrics.pruned.accuracy", "metrics.quantized.accuracy"]
    keep += ["metrics.teacher.accuracy", VAL, "metrics.device", "metrics.cpu_capability", RANKING, FIRST_BN, *COST]
    keep += sorted(c for c in runs if c.startswith(JKL))  # the CIFAR-10 J_KL table (paper.md) of runs not rerun
    keep = list(dict.fromkeys(keep))  # a COST column is also a J_KL one: written once
    with atomic_dir(OUT) as tmp:
        for name in NOT_WRITTEN_BY_REPORT:
            if (OUT / name).is_file():
                shutil.copy2(OUT / name, tmp / name)
        runs[[c for c in keep if c in runs]].to_csv(tmp / "runs.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "summary.md").write_text(render(summary))
        plot(summary, tmp)
        paper = paper_table(runs)
        if paper:
            (tmp / "paper.md").write_text(paper)
        zoo = zoo_table(summary, runs)
        if zoo:
            (tmp / "zoo.md").write_text(zoo)
        hard = hard_table(summary, runs)
        if hard:
            (tmp / "hard.md").write_text(hard)
    print(render(summary))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.compare", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue", help="queue one sweep as DVC experiments")
    q.add_argument("sweep", choices=sorted([*SWEEPS, *ZOO_VARIANTS]))
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--settings", nargs="+", help="queue only these settings of the sweep (default: all)")
    q.add_argument("--jkl-max-images", type=int, default=5000, help="cap evaluate's J_KL table per set (accuracy is unaffected)")
    q.add_argument("--dataset", help=f"the dataset of the sweeps {', '.join(NEEDS_DATASET)}, e.g. ../shared/datasets/cifar10-jpeg.tar.gz")
    r = sub.add_parser("report", help="tables and plots from the finished experiments")
    r.add_argument("--json", type=Path, help="a saved `dvc exp show --json -A` document instead of asking dvc")
    r.add_argument("--fresh", action="store_true", help="forget the runs recorded in reports/compare/runs.csv")
    args = ap.parse_args(argv)
    if args.cmd == "queue":
        queue(args.sweep, args.seeds, args.jkl_max_images, args.settings, args.dataset)
    else:
        report(args.json, args.fresh)


if __name__ == "__main__":
    run_stage(main)
