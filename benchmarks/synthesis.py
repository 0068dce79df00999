"""Benchmark: DeepInversion synthesis and distillation throughput on this machine (not a test, not a stage).

    python benchmarks/synthesis.py [--batch 256] [--iterations 50] [--threads N] [--out reports/benchmarks]

Measures in one run, on the pipeline's teacher (models/teacher + models/bn_stats), the same batch and
iteration count:
  (a) reference: the plain DeepInversion loop - fp32, NCHW, forward hooks on BN inputs computing mean and
      variance as DeepInversion's code does, Adam, BN-L2 + CE + TV, no augmentation and no tricks;
  (b) pipeline: stages.core.inversion.synthesize_set with synthesize's params.yaml section (batch and
      iterations overridden), and the speed levers one at a time on top of it: channels_last off,
      bf16 autocast, fewer threads, smaller and larger batches, early stopping;
reporting images x iterations per second, the final BN-L2 loss (no augmentation) and the achieved
GFLOP/s (FLOPs of one forward + backward counted by torch.utils.flop_counter) next to dense GEMMs
(fp32, bf16) timed in the same run as the machine's limit, plus distillation samples/s (fp32 and
bf16 teacher). Writes <out>/synthesis.json and synthesis.md.

Part two, time to accuracy (``--parts time_to_accuracy``): image x iterations are not comparable between a
generator and per-image optimization, so each row makes a whole synthetic set, distils the default student
(models/quantized + its masks) from it with the same number of KD steps, and measures the student on the real
**validation** part (never the test split): wall seconds to a set against the recovered accuracy. The target is
the paper budget (1024 images x 200 iterations from noise, fp32) made by the pipeline; the reference loop's
time for that budget is measured on one batch of 256 x 200 and scaled by the batch count (its batches are
independent and cost the same). Rows: the reference loop, the paper budget, today's default, and the
``generator`` method at several budgets. A part not run keeps its previous section of synthesis.json; time-to-accuracy
runs are kept one per machine (CPU capability, threads), a rerun replacing only its own machine's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core import machine as machine_facts  # noqa: E402
from stages.core import precision  # noqa: E402
from stages.core.artifacts import atomic_write_text, load_bn_stats, load_tensors  # noqa: E402
from stages.core.bn import BatchStatsHook, bn_l2_loss, bn_layers  # noqa: E402
from stages.core.checkpoints import load_model  # noqa: E402
from stages.core.imageops import pixel_bounds  # noqa: E402
from stages.core.inversion import balanced_targets, synthesize_set, tv_l2  # noqa: E402
from stages.core.kd import distill  # noqa: E402
from stages.core.params import load_params, parse_section  # noqa: E402
from stages.core.pruning import apply_masks  # noqa: E402
from stages.core.training import accuracy  # noqa: E402
from stages.evaluate import real_part  # noqa: E402


def replace(cfg, **changes):
    """The synthesize config with ``changes``, validated by the params schema."""
    return parse_section("synthesize", cfg.model_dump() | changes)


def gemm_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def step_flops(teacher, x: torch.Tensor) -> float:
    """FLOPs of one forward + backward w.r.t. the input (what one inversion step costs), per image."""
    x = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        teacher(x).sum().backward()
    return fc.get_total_flops() / len(x)


class PlainBNHook:
    """The reference's own hook, computed as DeepInversion's code does: mean over (N, H, W) and the variance of
    the input permuted to (C, N*H*W) - not the pipeline's BatchStatsHook with its fused moments."""

    def __init__(self, model):
        self.stats, self._handles = {}, []
        for name, m in bn_layers(model):
            self._handles.append(m.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(_m, inputs):
            x = inputs[0].float()
            self.stats[name] = (x.mean([0, 2, 3]), x.permute(1, 0, 2, 3).contiguous().view(x.shape[1], -1).var(1, unbiased=False))

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def reference_loop(teacher, stats: dict, targets, shape, cfg, seed: int, channels_last=False, bf16=False) -> tuple[float, float, int]:
    """The straightforward DeepInversion loop (optionally with one lever).

    Returns (seconds, final BN-L2 loss without augmentation, iterations run).
    """
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher = teacher.to(memory_format=fmt)
    x = torch.randn((len(targets), *shape), generator=g).contiguous(memory_format=fmt).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    hook = PlainBNHook(teacher)
    t = time.perf_counter()
    for _ in range(cfg.iterations):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = teacher(x)
        loss = (
            cfg.lambda_bn * bn_l2_loss(hook.stats, stats)
            + cfg.lambda_ce * F.cross_entropy(logits.float(), targets)
            + cfg.lambda_tv * tv_l2(x)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t
    hook.remove()
    with torch.no_grad(), BatchStatsHook(teacher) as final:  # the final loss is measured alike for every row
        teacher(x)
    teacher.to(memory_format=torch.contiguous_format)
    return seconds, float(bn_l2_loss(final.stats, stats)), cfg.iterations


def pipeline_run(teacher, running, card, cfg, threads: int) -> tuple[float, float, int]:
    """synthesize_set on one batch of ``cfg.batch_size`` images. Returns (seconds, final BN-L2, mean iterations run)."""
    torch.set_num_threads(threads)
    bounds = pixel_bounds(card["normalization"]["mean"], card["normalization"]["std"])
    cl = teacher.to(memory_format=torch.channels_last)
    t = time.perf_counter()
    _, _, res = synthesize_set(cl, running, card["num_classes"], tuple(card["input_shape"]), bounds, cfg, 0, torch.device("cpu"))
    seconds = time.perf_counter() - t
    teacher.to(memory_format=torch.contiguous_format)
    return seconds, sum(r.bn_loss_final for r in res) / len(res), sum(r.iterations for r in res) / len(res)


def shard_worker(rank: int, world: int, cfg, barrier, results) -> None:
    """One process of the sharded run (what torchrun's ranks do): 1 thread, batches rank, rank + world, ..."""
    torch.set_num_threads(1)
    teacher, card = load_model("models/teacher")
    teacher.eval().requires_grad_(False)
    running = load_bn_stats(Path("models/bn_stats/stats.safetensors"), {n: m.num_features for n, m in bn_layers(teacher)})
    bounds = pixel_bounds(card["normalization"]["mean"], card["normalization"]["std"])
    cl = teacher.to(memory_format=torch.channels_last)
    barrier.wait()
    t = time.perf_counter()
    _, _, res = synthesize_set(
        cl, running, card["num_classes"], tuple(card["input_shape"]), bounds, cfg, 0, torch.device("cpu"), rank=rank, world=world
    )
    results.put((time.perf_counter() - t, [r.bn_loss_final for r in res], [r.iterations for r in res]))


def sharded_run(cfg, world: int) -> tuple[float, float, int]:
    """``world`` processes of 1 thread, each making one batch of ``cfg.batch_size``. Returns (wall seconds, BN-L2, iterations)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(world), ctx.Queue()
    cfg = replace(cfg, n_images=cfg.batch_size * world)
    procs = [ctx.Process(target=shard_worker, args=(r, world, cfg, barrier, results)) for r in range(world)]
    for proc in procs:
        proc.start()
    out = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    losses = [v for o in out for v in o[1]]
    iters = [v for o in out for v in o[2]]
    return max(o[0] for o in out), sum(losses) / len(losses), sum(iters) / len(iters)


def throughput(args, teacher, card, running) -> dict:
    """Part one: image x iterations per second of the loops and levers on one batch (the section's rows)."""
    shape = tuple(card["input_shape"])
    base = replace(load_params("synthesize")["synthesize"], n_images=args.batch, batch_size=args.batch, iterations=args.iterations)
    # the reference loop is DeepInversion's own (sum-of-L2 BN loss): time the pipeline on the same objective
    base = replace(base, bn_loss="l2", lambda_bn=1.0, first_bn_weight=1.0)
    fp32 = replace(base, precision="fp32", early_stop_tol=0.0, warm_start=0.0)
    bf16 = replace(fp32, precision="bf16")
    targets = balanced_targets(args.batch, card["num_classes"])
    flops = step_flops(teacher, torch.randn(8, *shape))
    # The rows run round-robin, --repeats rounds, and each reports its median time: a shared machine's speed drifts by several percent
    # over minutes, which would otherwise land on whichever rows ran in a slow stretch.
    batch = args.batch
    runs = {  # name -> (images, run returning (seconds, final BN-L2, iterations run))
        "reference (fp32, NCHW, hooks, Adam)": (batch, lambda: reference_loop(teacher, running, targets, shape, base, 0)),
        "reference + channels_last": (batch, lambda: reference_loop(teacher, running, targets, shape, base, 0, channels_last=True)),
        "reference + bf16 autocast": (batch, lambda: reference_loop(teacher, running, targets, shape, base, 0, bf16=True)),
        "pipeline fp32 (channels_last, shift/flip, cosine lr)": (batch, lambda: pipeline_run(teacher, running, card, fp32, args.threads)),
        "pipeline bf16": (batch, lambda: pipeline_run(teacher, running, card, bf16, args.threads)),
    }
    if args.threads > 1:
        runs["pipeline bf16, 1 thread"] = (batch, lambda: pipeline_run(teacher, running, card, bf16, 1))
        shards = f"pipeline bf16, {args.threads} processes x 1 thread (torchrun-style shards)"
        runs[shards] = (batch * args.threads, lambda: sharded_run(bf16, args.threads))
    for b in (batch // 2, batch * 2):
        sized = replace(bf16, n_images=b, batch_size=b)
        runs[f"pipeline bf16, batch {b}"] = (b, lambda sized=sized: pipeline_run(teacher, running, card, sized, args.threads))
    early = replace(bf16, early_stop_tol=0.02, early_stop_window=10)
    runs["pipeline bf16, early stop (tol 0.02, window 10)"] = (batch, lambda: pipeline_run(teacher, running, card, early, args.threads))
    samples: dict[str, list] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, (n, run) in runs.items():
            s, loss, it = run()
            torch.set_num_threads(args.threads)
            samples[name].append((n, s, loss, it))
            print(f"[round {r + 1}/{args.repeats}] {name}: {n * it / s:.0f} image-it/s, BN-L2 {loss:.3f}, {it:.0f} iterations", flush=True)
    rows = {}  # name -> (images, median seconds, final BN-L2, iterations run, all seconds)
    for name, runs_of in samples.items():
        n, _, loss, it = runs_of[0]
        seconds = sorted(s for _, s, _, _ in runs_of)
        rows[name] = (n, statistics.median(seconds), loss, it, seconds)

    student, _ = load_model("models/pruned")
    dcfg = parse_section("distill", load_params("distill")["distill"].model_dump() | {"epochs": 1})
    x = torch.randn(args.distill_images, *shape)
    t = time.perf_counter()
    distill(student, teacher, x, dcfg, torch.device("cpu"), 0)
    distill_sps = args.distill_images / (time.perf_counter() - t)

    gemm = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    result = {
        "machine": machine(args.threads),
        "teacher": card["arch"],
        "input_shape": list(shape),
        "batch": args.batch,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "gflop_per_image_iteration": flops / 1e9,
        "gemm_gflops": gemm,
        "synthesis": {
            name: {
                "images": n,
                "seconds": s,
                "seconds_all_rounds": all_s,
                "iterations_run": it,
                "image_iterations_per_s": n * it / s,
                "achieved_gflops": n * it * flops / s / 1e9,
                "bn_l2_final": loss,
            }
            for name, (n, s, loss, it, all_s) in rows.items()
        },
        "distill_samples_per_s": distill_sps,
        "distill_images": args.distill_images,
    }
    return result


def throughput_lines(result: dict) -> list[str]:
    m, gemm = result["machine"], result["gemm_gflops"]
    ref_speed = next(iter(result["synthesis"].values()))["image_iterations_per_s"]
    return [
        f"# Synthesis benchmark ({result['teacher']} teacher, {result['input_shape']}, batch {result['batch']}, "
        f"{result['iterations']} iterations, {m['threads']} threads, torch {m['torch']}, {m['cpu']}, CPU capability "
        f"{m.get('cpu_capability', '?')}; median of {result['repeats']} interleaved rounds)",
        "",
        f"GEMM 2048^3 in the same run: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s. "
        f"One inversion step costs {result['gflop_per_image_iteration']:.4f} GFLOP per image (forward + backward, fp32 count).",
        "",
        "| loop | images | iterations run | image x iterations / s | speed-up | achieved GFLOP/s | final BN-L2 loss |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {n} | {r['images']} | {r['iterations_run']:.0f} | {r['image_iterations_per_s']:.0f} "
            f"| {r['image_iterations_per_s'] / ref_speed:.2f}x | {r['achieved_gflops']:.1f} | {r['bn_l2_final']:.3f} |"
            for n, r in result["synthesis"].items()
        ],
        "",
        f"Distillation (1 epoch on {result.get('distill_images', 1024)} images, pruned student, fp32): "
        f"{result['distill_samples_per_s']:.0f} samples/s.",
    ]


def machine(threads: int) -> dict:
    return {
        "cpu": machine_facts.cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "cpu_capability": precision.cpu_capability(),
        "native_bf16": precision.native_bf16(torch.device("cpu")),
        **machine_facts.int8_features(),  # vnni, amx: what else moves a bf16 / int8 timing between CPUs of one capability
    }


def recovered_accuracy(x: torch.Tensor, teacher, dcfg, kd_steps: int, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[float, float]:
    """Distil a fresh copy of the default student (models/quantized + masks) on ``x`` for ``kd_steps`` SGD steps with
    distill's params ``dcfg``; returns (accuracy on the validation images, distillation seconds)."""
    student, _ = load_model("models/quantized")
    masks = Path("models/quantized/masks.safetensors")
    if masks.is_file():
        apply_masks(student, load_tensors(masks))
    epochs = max(1, round(kd_steps / math.ceil(len(x) / dcfg.batch_size)))
    dcfg = parse_section("distill", dcfg.model_dump() | {"epochs": epochs})
    cl = [m.to(memory_format=torch.channels_last) for m in (student, teacher)]
    t = time.perf_counter()
    distill(cl[0], cl[1], x, dcfg, torch.device("cpu"), 0)
    seconds = time.perf_counter() - t
    teacher.to(memory_format=torch.contiguous_format)
    return accuracy(student, x_val, y_val, 1000, torch.device("cpu")), seconds


def time_to_accuracy(args, teacher, card, running) -> dict:
    """Part two: wall seconds to a synthetic set and the accuracy it recovers (validation part), per method."""
    shape = tuple(card["input_shape"])
    bounds = pixel_bounds(card["normalization"]["mean"], card["normalization"]["std"])
    x_val, val = real_part(load_params("data")["data"], "val", card)
    default = load_params("synthesize")["synthesize"]
    dflt_distill = load_params("distill")["distill"]
    kd_steps = args.kd_steps or dflt_distill.epochs * math.ceil(default.n_images / dflt_distill.batch_size)
    n, its = args.paper_budget
    paper = replace(default, method="deepinversion", n_images=n, iterations=its, precision="fp32", warm_start=0.0, early_stop_tol=0.0)
    default_precision = precision.resolve(default.precision, torch.device("cpu"), "synthesize.precision")
    rows = {  # name -> synthesize config (None: the reference loop)
        f"reference loop (fp32, NCHW, hooks, Adam), paper budget {n} x {its}": None,
        f"pipeline from noise, paper budget {n} x {its} fp32 (the target accuracy)": paper,
        f"pipeline default ({default.method}, {default.n_images} x {default.iterations}, "
        f"precision {default.precision} = {default_precision})": default,
    }
    if default_precision != "fp32":  # what a CPU without native bf16 runs
        rows[f"pipeline default ({default.method}, {default.n_images} x {default.iterations}), precision fp32"] = replace(
            default, precision="fp32"
        )
    for images, warmup, steps, prec in args.generator_budgets:
        gen = replace(default, method="generator", n_images=images, generator_warmup=warmup, generator_steps=steps, precision=prec)
        resolved = precision.resolve(prec, torch.device("cpu"), "synthesize.precision")
        label = f"precision {prec} = {resolved}" if prec == "auto" else f"precision {prec}"
        rows[f"generator {images} images, warmup {warmup} + {steps} steps per batch, {label}"] = gen
    out, ref_seconds = {}, None
    for name, cfg in rows.items():
        torch.set_num_threads(args.threads)
        if cfg is None:  # DeepInversion's own loop on one batch of the paper's budget (its own config), times the batch count
            b = min(paper.batch_size, paper.n_images)
            batches = math.ceil(paper.n_images / b)
            ref_cfg = replace(paper, bn_loss="l2", lambda_bn=1.0, n_images=b, batch_size=b)
            seconds, _, _ = reference_loop(teacher, running, balanced_targets(b, card["num_classes"]), shape, ref_cfg, 0)
            ref_seconds = seconds * batches
            measured = f"1 batch of {b} x {paper.iterations}, x {batches}"
            out[name] = {"images": paper.n_images, "synthesis_s": ref_seconds, "measured": measured, "accuracy": None}
            print(f"{name}: {ref_seconds:.0f} s", flush=True)
            continue
        cl = teacher.to(memory_format=torch.channels_last)
        t = time.perf_counter()
        x, _, _ = synthesize_set(cl, running, card["num_classes"], shape, bounds, cfg, 0, torch.device("cpu"))
        seconds = time.perf_counter() - t
        teacher.to(memory_format=torch.contiguous_format)
        acc, kd_s = recovered_accuracy(x, teacher, dflt_distill, kd_steps, x_val, val.labels)
        out[name] = {"images": len(x), "synthesis_s": seconds, "distill_s": kd_s, "accuracy": acc, "method": cfg.method}
        print(f"{name}: {seconds:.0f} s synthesis, recovered {100 * acc:.2f}% (validation)", flush=True)
    target = next(r["accuracy"] for r in out.values() if r["accuracy"] is not None)
    for r in out.values():
        r["speedup_vs_reference"] = ref_seconds / r["synthesis_s"]
        r["reaches_target"] = None if r["accuracy"] is None else bool(r["accuracy"] >= target - args.tolerance / 100)
    return {
        "machine": machine(args.threads),
        "teacher": card["arch"],
        "kd_steps": kd_steps,
        "validation_images": len(val.labels),
        "tolerance_points": args.tolerance,
        "target_accuracy": target,
        "rows": out,
    }


def machine_label(m: dict) -> str:
    """The key of a time-to-accuracy run: what sets its speed (the CPU model, its capability, the threads), e.g.
    ``AMD EPYC, AVX2, 1 thread(s)``: two CPUs of one capability (an AMD AVX512-BF16 core, an Intel one with AMX tiles)
    keep a run each."""
    return f"{m.get('cpu', 'unknown CPU')}, {m['cpu_capability']}, {m['threads']} thread(s)"


def time_to_accuracy_runs(result: dict) -> dict[str, dict]:
    """The time-to-accuracy runs of synthesis.json, one per machine label (a speed-up depends on the CPU and the thread
    count, so a run on one machine does not replace another's). Files written before runs were kept per machine hold a
    single run, which becomes the entry of its own machine; runs are keyed by today's label whatever key a file holds."""
    runs = result.get("time_to_accuracy") or {}
    runs = [runs] if "rows" in runs else list(runs.values())
    return {machine_label(run["machine"]): run for run in runs}


def time_to_accuracy_lines(result: dict) -> list[str]:
    m = result["machine"]
    lines = [
        f"## Time to accuracy ({result['teacher']} teacher, {m['threads']} threads, torch {m['torch']}, {m['cpu']}, "
        f"CPU capability {m['cpu_capability']})",
        "",
        f"Each row makes a whole synthetic set, then the default student is distilled on it for {result['kd_steps']} KD "
        f"steps and measured on the real validation part ({result['validation_images']} images; the test split is "
        f"not read). Target: the paper budget's {100 * result['target_accuracy']:.2f}%; a row reaches it within "
        f"{result['tolerance_points']} points. Speed-up = the reference loop's time for the paper budget / the row's.",
        "",
        "| synthesis | images | synthesis s | speed-up vs reference | recovered (validation) | reaches target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        reach = "-" if r["reaches_target"] is None else ("yes" if r["reaches_target"] else "**no**")
        lines.append(f"| {name} | {r['images']} | {r['synthesis_s']:.0f} | {r['speedup_vs_reference']:.1f}x | {acc} | {reach} |")
    return lines


def budget(text: str) -> tuple[int, int, int, str]:
    """IMAGES:WARMUP:STEPS[:PRECISION] (precision auto | fp32 | bf16, default auto)."""
    fields = text.split(":")
    prec = fields.pop() if len(fields) == 4 else "auto"
    try:
        n, warmup, steps = (int(v) for v in fields)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IMAGES:WARMUP:STEPS[:PRECISION], e.g. 1024:100:10:fp32") from None
    if prec not in precision.CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r}: precision must be one of {list(precision.CHOICES)}, not {prec!r}")
    return n, warmup, steps, prec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=("throughput", "time_to_accuracy"), default=["throughput", "time_to_accuracy"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--distill-images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all rows; each row reports its median time")
    ap.add_argument("--kd-steps", type=int, default=0, help="time to accuracy: KD steps per row; 0 = the default run's")
    ap.add_argument("--paper-budget", type=int, nargs=2, default=[1024, 200], metavar=("IMAGES", "ITERATIONS"))
    ap.add_argument("--tolerance", type=float, default=0.3, help="time to accuracy: points below the target that still count")
    ap.add_argument(
        "--generator-budgets",
        type=budget,
        nargs="+",
        default=[(1024, 100, 10, "auto"), (1024, 100, 10, "fp32"), (1024, 60, 8, "fp32"), (2048, 50, 2, "auto"), (2048, 50, 2, "fp32")],
        help="time to accuracy: generator rows as IMAGES:WARMUP:STEPS[:PRECISION] (auto | fp32 | bf16; default auto)",
    )
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher, card = load_model("models/teacher")
    teacher.eval().requires_grad_(False)
    running = load_bn_stats(Path("models/bn_stats/stats.safetensors"), {n: m.num_features for n, m in bn_layers(teacher)})
    path = args.out / "synthesis.json"
    result = json.loads(path.read_text()) if path.is_file() else {}  # a part not run keeps its earlier section
    if "throughput" in args.parts:
        result |= throughput(args, teacher, card, running)
    runs = time_to_accuracy_runs(result)
    if "time_to_accuracy" in args.parts:
        run = time_to_accuracy(args, teacher, card, running)
        runs.pop(machine_label(run["machine"]), None)  # this machine's new run goes last
        runs[machine_label(run["machine"])] = run
    if runs:
        result["time_to_accuracy"] = runs
    lines = throughput_lines(result) if "synthesis" in result else []
    for run in runs.values():
        lines += ["", *time_to_accuracy_lines(run)]
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "synthesis.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
