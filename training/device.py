"""Device choice and what it can run (AMP, CUDA kernels), CPU threads, seeding, torchrun (DDP).

Launched with ``torchrun --nproc_per_node N script.py ...``, every process reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment and joins one process group: NCCL on
CUDA (one GPU per process, by local rank), gloo on CPU. A plain ``python script.py`` is a world
of one and creates no group.

CPU threads (``--threads``, see :func:`configure_threads`): torch's default, one intra-op thread
per core, is the fastest on a quiet machine but collapses when another process is busy on the
same cores (the threads wait for each other at every parallel region): on a 2-core CPU, the quick
student's step went from 91 ms to 240 ms beside one busy process, against 97 and 98 ms with one
thread. ``auto`` therefore uses only the cores that are free when the run starts.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UsageError

# torch's own intra-op default in this process (OMP_NUM_THREADS, else one per core), read before
# anything here changes it: ``auto`` never uses more.
TORCH_DEFAULT_THREADS = torch.get_num_threads()
# How long ``auto`` watches the CPUs; long enough for ~25 scheduler ticks per core at 100 Hz.
LOAD_WINDOW_S = 0.25
# A core counts as free when at least this idle: a thread without a core of its own stalls every
# parallel region (2.6x per step in issue 10), a core left unused costs at most its share of the
# work, so a partly busy core is left alone.
FREE_CORE_IDLE = 0.75
# DataLoader workers per GPU process at most (the full preset's value; not measured on a GPU).
MAX_CUDA_WORKERS = 8


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


def uses_cuda(device_name: str) -> bool:
    """Whether the ``--device`` flag (``auto``, ``cpu``, ``cuda``, ``cuda:N``) means CUDA here."""
    return device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())


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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_jiffies(stat_path: Path) -> Tuple[int, int, int]:
    """``(busy, total, cpus)`` from a ``/proc/stat`` file: jiffies summed over all CPUs since
    boot (idle and iowait are not busy; steal is, the core being lost to us) and the CPU count."""
    lines = stat_path.read_text().splitlines()
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    fields = [int(value) for value in lines[0].split()[1:9]]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    total = sum(fields)
    return total - fields[3] - fields[4], total, cpus


def busy_cores(window_s: float = LOAD_WINDOW_S,
               stat_path: Path = Path("/proc/stat")) -> Optional[Tuple[float, int]]:
    """How many cores other processes keep busy right now.

    Linux: the ``/proc/stat`` counters over ``window_s`` of sleep, minus this process's own CPU
    time in the window. Elsewhere: the 1-minute load average (slower to follow the machine, and
    including this process). ``None`` where neither exists.

    Args:
        window_s: measuring window in seconds (``/proc/stat`` only).
        stat_path: the kernel's CPU counters (a parameter for tests).

    Returns:
        ``(busy cores, CPUs on the machine)``, or ``None``.
    """
    if stat_path.is_file():
        busy_before, total_before, cpus = _cpu_jiffies(stat_path)
        own_before, wall_before = time.process_time(), time.perf_counter()
        time.sleep(window_s)
        busy_after, total_after, _ = _cpu_jiffies(stat_path)
        own = (time.process_time() - own_before) / (time.perf_counter() - wall_before)
        ticks = max(total_after - total_before, 1)
        return max(0.0, cpus * (busy_after - busy_before) / ticks - own), cpus
    if hasattr(os, "getloadavg"):
        return os.getloadavg()[0], os.cpu_count() or 1
    return None


def free_core_threads(busy: float, cpus: int, cap: int) -> int:
    """Threads for the free cores: a core is free when at least ``FREE_CORE_IDLE`` idle.

    Args:
        busy: cores other processes keep busy (from :func:`busy_cores`).
        cpus: cores on the machine.
        cap: the most threads to use (torch's default).

    Returns:
        ``floor(cpus - busy + 1 - FREE_CORE_IDLE)``, clamped to ``[1, cap]``.
    """
    return max(1, min(cap, math.floor(cpus - busy + 1.0 - FREE_CORE_IDLE)))


def _omp_num_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` as a positive count (its first level for a nested list such as
    ``4,2``), or ``None`` when unset or not a positive integer."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def configure_threads(spec: str, device: str = "auto") -> int:
    """Set torch's intra-op CPU threads from the ``--threads`` flag; returns the count in use.

    The rule for ``auto``, first that applies:

    1. ``OMP_NUM_THREADS`` is set: that many (the user's choice; torchrun sets 1 per process
       when it starts several).
    2. ``device`` means CUDA: torch's default, unchanged (the CPU only feeds the GPU).
    3. The cores free now: :func:`busy_cores` over ``LOAD_WINDOW_S``, then
       :func:`free_core_threads` (at least 1, at most torch's default). On a quiet machine that
       is torch's default; beside one busy process on 2 cores, 1. Decided once, at the start.
    4. No load readable (no ``/proc/stat``, no load average): torch's default.

    Args:
        spec: ``"auto"`` or a positive integer string (that many threads, whatever the rule).
        device: the ``--device`` flag (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        UsageError: ``spec`` is neither ``auto`` nor a positive integer.
    """
    from_environment = _omp_num_threads()
    if spec != "auto":
        if not spec.isdigit() or int(spec) < 1:
            raise UsageError(f"--threads must be 'auto' or a positive integer, got {spec!r}")
        threads = int(spec)
    elif from_environment is not None:
        threads = from_environment
    elif uses_cuda(device):
        return torch.get_num_threads()
    else:
        threads = free_threads()
    torch.set_num_threads(threads)
    return threads


def free_threads() -> int:
    """Threads for the cores free now: :func:`busy_cores`, then :func:`free_core_threads`, at
    most torch's default and the usable CPUs; that cap when no load is readable."""
    load = busy_cores()
    cap = min(TORCH_DEFAULT_THREADS, usable_cpus())
    return cap if load is None else free_core_threads(*load, cap=cap)


def threads_per_job(jobs: int, device: str = "auto") -> Optional[int]:
    """Intra-op threads for each of ``jobs`` CPU processes started together, or ``None`` to leave
    each its own ``--threads auto``.

    Processes that start at the same moment each measure an idle machine, so under ``auto`` each
    takes every free core: on 2 cores, two 2-thread teacher runs took 2.7x as long per step as two
    1-thread runs (1.4 s against 0.51 s). The free cores, counted once as ``auto`` counts them,
    are shared out instead.

    Args:
        jobs: processes that will run at once.
        device: their ``--device`` flag.

    Returns:
        ``None`` for one job, on CUDA, or when ``OMP_NUM_THREADS`` already decides; else
        ``max(1, free cores // jobs)``.
    """
    if jobs == 1 or uses_cuda(device) or _omp_num_threads() is not None:
        return None
    return max(1, free_threads() // jobs)


def default_num_workers(device_name: str) -> int:
    """DataLoader worker processes for a run that did not choose (``--num_workers auto``).

    CPU: none. :func:`configure_threads` gives the compute threads every free core, so a worker
    process can only run on a core they use and stalls them as any competing process does; with
    the preprocessing cache a sample is a memory-mapped read, with nothing to overlap. (Without
    the cache, on a machine with cores to spare, ``--threads N-1 --num_workers 1`` overlaps the
    decoding.)
    CUDA: the cores of this process's share of the machine (``LOCAL_WORLD_SIZE`` processes
    under torchrun) less one for the process feeding the GPU, at most ``MAX_CUDA_WORKERS``.

    Args:
        device_name: the ``--device`` flag (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
    """
    if not uses_cuda(device_name):
        return 0
    share = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_CUDA_WORKERS, share - 1))


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
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if uses_cuda(device_name) else "gloo")
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


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` (``none``, ``bf16``, ``fp16``), or ``None`` for ``none``.

    Raises:
        UsageError: ``device`` cannot run it (no autocast for its type, or bf16 on a GPU
            without bfloat16).
    """
    if amp == "none":
        return None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise UsageError(f"--amp {amp}: torch has no autocast for {device.type}")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                         "support; use --amp fp16")
    return dtype


def autocast(device: torch.device,
             dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def check_device_flags(args: argparse.Namespace, device: torch.device) -> None:
    """Refuse the flags ``device`` cannot honour (``--amp`` as :func:`amp_dtype` says,
    ``--sync_bn`` off CUDA, ``--compile`` where torch.compile is not supported).

    Raises:
        UsageError: one line naming the flag and why.
    """
    amp_dtype(args.amp, device)
    if args.sync_bn and device.type != "cuda":
        raise UsageError(f"--sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this run is "
                         f"on {device.type}")
    # torch has no public form of this check; torch.compile itself raises the same way.
    if args.compile and not torch._dynamo.is_dynamo_supported():
        raise UsageError("--compile: torch.compile is not supported with this Python/platform")


def configure_cuda_kernels(device: torch.device, deterministic: bool) -> None:
    """On CUDA, the fast kernels training wants: TF32 matmuls and convolutions and, unless
    ``deterministic`` (see :func:`training.device.seed_everything`), cuDNN autotuning. Process
    wide; nothing on other devices."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not deterministic:
        torch.backends.cudnn.benchmark = True


def sum_over_ranks(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """``tensor`` summed over every rank, in place (itself in a world of one)."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
