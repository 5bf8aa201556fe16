"""Device choice, seeding and the torchrun (DDP) process group.

Launched with ``torchrun --nproc_per_node N script.py ...``, every process reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment and joins one process group: NCCL on
CUDA (one GPU per process, by local rank), gloo on CPU. A plain ``python script.py`` is a world
of one and creates no group.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the (possibly one-process) world."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a world of one)."""
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; under torchrun, the local rank's GPU.

    Raises:
        SystemExit: ``cuda`` asked for where there is none (one line).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a world of one.

    Args:
        device_name: the ``--device`` flag; picks the backend (NCCL for CUDA, gloo for CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    context = DistContext(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]),
                          world_size=world_size)
    uses_cuda = (device_name.startswith("cuda")
                 or (device_name == "auto" and torch.cuda.is_available()))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if uses_cuda else "gloo")
    return context


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first(context: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generates data or a cache), then the others reuse it."""
    if not context.is_main:
        context.barrier()
    yield
    if context.is_main:
        context.barrier()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels.

    Args:
        seed: the run's seed; every rank uses the same one, so replicas start identical (the
            data order per rank comes from the sampler, not from this).
        deterministic: deterministic kernels and cuDNN without autotuning; required for bit-exact
            reruns and resumes (guaranteed on CPU). Slower on GPU, where a few ops (e.g. the
            bilinear upsampling's backward) have no deterministic kernel: they warn instead of
            failing the run.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (read when CUDA initialises).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
