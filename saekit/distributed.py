"""Several processes, one job: the only module that touches torch.distributed.

Launch any command with torchrun and the same functions run on every rank:

    torchrun --nproc_per_node 2 -m saekit harvest --model tiny --limit 64 --out acts
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --nproc_per_node 8 -m saekit train cfg.toml

`setup(device)` joins the process group that torchrun's environment variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) describe, with nccl for CUDA devices and gloo otherwise.
Without them (or with WORLD_SIZE=1) nothing is initialised and every helper is a no-op on one
process, so there is no second code path. On CUDA each process uses GPU LOCAL_RANK, so "cuda" in
a config means "this rank's GPU".
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Iterable

import torch
import torch.distributed as dist


def backend_for(device: str) -> str:
    """nccl for CUDA devices, gloo for everything else."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def setup(device: str = "cpu", timeout_minutes: float = 60) -> None:
    """Join torchrun's process group when WORLD_SIZE > 1 (idempotent; a no-op for one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group (safe to call twice or without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or "mean") `t` over ranks, in place; returns `t`. Moves through the backend's device if needed."""
    if not _active():
        return t
    buf = t if t.device == _comm_device() else t.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if op == "mean":
        buf /= world()
    if buf is not t:
        t.copy_(buf)
    return t


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over ranks in one all-reduce (missing gradients count as zeros)."""
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.is_sparse:
            p.grad = p.grad.to_dense()
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_(flat, "mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def local_rows(x_BD: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (rank r of W takes rows r*B/W .. (r+1)*B/W)."""
    if not _active():
        return x_BD
    n = x_BD.shape[0] // world()
    return x_BD[rank() * n: (rank() + 1) * n]
