"""Several processes for one stage, on torch.distributed (launched by torchrun).

A stage whose params ask for ``nproc`` > 1 runs itself again under
``python -m torch.distributed.run --standalone --nproc_per_node N -m stages.<stage>``
(``relaunch``); starting it under ``torchrun`` yourself works the same way. Every worker joins
one process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) through ``setup``.
Synthesis gives each rank every N-th batch and merges the shards on rank 0 through files
(``merge_shards``: safetensors + JSON, no pickle, so a large set never travels through the
process group); distillation wraps the student in DistributedDataParallel. Only rank 0
writes a stage's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


def relaunch(nproc: int, module: str) -> None:
    """With ``nproc`` > 1 and outside torchrun: run ``module`` under torchrun with ``nproc`` workers, exit with its code."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module]
    print(f"running {module} in {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    sys.exit(subprocess.call(cmd))


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device
    threads: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as rank 0 has it, on every rank (identity in one process)."""
        if self.world == 1:
            return t
        buf = t.to(self.device).contiguous()
        dist.broadcast(buf, src=0)
        return buf.cpu()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup(device: torch.device, threads: int) -> Context:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and pin torch threads.

    ``threads`` = 0: one process keeps torch's default; N processes split the cores of the machine.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if device.type == "cuda":
            device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        threads = threads or max(1, available_cores() // local_world)
    if threads:
        torch.set_num_threads(threads)
    return Context(rank, world, device, torch.get_num_threads())


def merge_shards(ctx: Context, workdir: Path, tensors: dict[str, torch.Tensor], rows: list[dict], order: list[int]):
    """Gather every rank's shard on rank 0 through files in ``workdir`` (a folder all ranks can reach).

    ``tensors`` hold the shard's items along dim 0, made of the units (batches) numbered ``order``,
    ``rows`` one JSON-able record per unit with its item count under ``n_items`` (``asdict_row``).
    Rank 0 gets ``(tensors, rows)`` of all ranks with the units in ascending number; the other
    ranks get ``None``. ``workdir`` is removed afterwards.
    """
    if ctx.world == 1:
        return tensors, rows
    workdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, workdir / f"rank{ctx.rank}.safetensors")
    (workdir / f"rank{ctx.rank}.json").write_text(json.dumps({"order": order, "rows": rows}))
    ctx.barrier()
    if not ctx.main:
        return None
    units = []
    for r in range(ctx.world):
        meta = json.loads((workdir / f"rank{r}.json").read_text())
        shard = load_file(workdir / f"rank{r}.safetensors")
        start = 0
        for number, row in zip(meta["order"], meta["rows"]):
            n = int(row["n_items"])
            units.append((number, row, {k: v[start : start + n] for k, v in shard.items()}))
            start += n
    shutil.rmtree(workdir, ignore_errors=True)
    units.sort(key=lambda u: u[0])
    merged = {k: torch.cat([u[2][k] for u in units]) for k in tensors}
    return merged, [u[1] for u in units]


def asdict_row(obj, n_items: int, drop: tuple[str, ...] = ()) -> dict:
    """A dataclass as a JSON-able row with its item count (for ``merge_shards``)."""
    return {"n_items": n_items, **{k: v for k, v in dataclasses.asdict(obj).items() if k not in drop}}
