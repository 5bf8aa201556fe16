"""Forward+backward time and peak memory of the teacher, the student and the naive-attention student.

Usage (from anywhere)::

    python benchmarks/model_cost.py --image_size 256 --batch_size 2 --base_channels 64
    python benchmarks/model_cost.py --image_size 256 128   # the naive mode fits at 128²

A step is ``zero_grad → forward (under autocast with --amp) → mean depth → backward``.

Memory: each model runs one step in a fresh subprocess, so the peaks do not mix. On CPU the peak
is the process's maximum resident set size minus that of a baseline process (torch imported,
input allocated, no model); on CUDA, ``torch.cuda.max_memory_allocated`` minus the baseline's.

Time: one more subprocess holds all the models and, after one warm-up step each, runs their
timed steps round-robin (teacher, student, naive, teacher, ...), reporting each model's median.
Interleaving keeps the ratios fair on a machine whose load changes while the benchmark runs.

The naive mode materialises every (F·T)² score matrix; it is skipped, with its estimate
printed, when the estimate exceeds ``--max_naive_gib``.

Goals (figures to read, not tests): on CPU at 256², batch 2, the student within 2.5× the
teacher's time and 3× its peak memory; on an 80 GB GPU the student trains at 256², batch 64,
under bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models import build_model  # noqa: E402
from training.device import resolve_device  # noqa: E402

# benchmark name → (build_model name, input channels, extra constructor kwargs)
MODELS: Dict[str, Tuple[str, int, Dict[str, Any]]] = {
    "teacher": ("rgb_depth", 3, {}),
    "student": ("binaural_attention", 2, {}),
    "student-naive": ("binaural_attention", 2, {"attention_mode": "naive"}),
}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2 ** 30


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--image_size", type=int, nargs="+", default=[256],
                        help="square input side(s) in pixels, each divisible by 16; one table "
                             "block per size")
    parser.add_argument("--batch_size", type=int, default=2, help="samples per step")
    parser.add_argument("--base_channels", type=int, default=64, help="U-Net base width of every model")
    parser.add_argument("--device", default="auto",
                        help="'auto' (cuda if available, else cpu), 'cpu', 'cuda'")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model, after one warm-up")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast dtype for the forward pass")
    parser.add_argument("--max_naive_gib", type=float, default=8.0,
                        help="skip the naive student when its score matrices are estimated above this")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS),
                        help="models to measure; ratios need 'teacher'")
    parser.add_argument("--num_threads", type=int, default=0,
                        help="CPU threads per measuring process (0: torch's default); 1 steadies "
                             "the ratios when other jobs share the cores")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    parser.add_argument("--worker", metavar="JSON", default=None,
                        help="internal: run the one measurement described by JSON in this process "
                             "and print its result as JSON (the parent run starts these)")
    args = parser.parse_args(argv)
    bad_sizes = [size for size in args.image_size if size <= 0 or size % 16]
    if bad_sizes:
        parser.error(f"--image_size must be positive multiples of 16, got {bad_sizes}")
    return args


def naive_attention_gib(base_channels: int, image_size: int, batch_size: int) -> float:
    """Estimated memory of the naive student's score matrices during one training step, GiB.

    Per attention level and direction, one float32 (B, heads, L, L) softmax output is kept for
    backward (L = tokens of that level; float32 because autocast keeps softmax in float32); at the
    peak two more matrices of the largest level exist (the scores and their gradient).
    """
    name, _, extra = MODELS["student-naive"]
    with torch.device("meta"):  # only the resolved config is needed: no weights allocated
        config = build_model(name, base_channels=base_channels, **extra).config
    matrices = [
        batch_size * config["num_heads"] * ((image_size >> (level - 1)) ** 2) ** 2 * 4
        for level in config["attention_levels"]
    ]
    return (2 * sum(matrices) + 2 * max(matrices, default=0)) / GIB


def build(job: Dict[str, Any], model_key: str) -> Tuple[torch.nn.Module, torch.Tensor]:
    """The model ``model_key`` in train mode and a seeded random input for it, on the job's device."""
    name, in_channels, extra = MODELS[model_key]
    device = torch.device(job["device"])
    torch.manual_seed(job["seed"])
    model = build_model(name, base_channels=job["base_channels"], **extra).to(device).train()
    size = job["image_size"]
    return model, torch.rand(job["batch_size"], in_channels, size, size, device=device)


def training_step(model: torch.nn.Module, x: torch.Tensor, amp: str) -> float:
    """One zero_grad + forward + backward; returns its wall-clock duration in seconds."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none"):
        depth = model(x)
    depth.float().mean().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA allocations, or the CPU resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_worker(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run one measurement in this process.

    Args:
        job: task ("memory" or "time"), models (benchmark names; an empty list for the memory
            task is the baseline: the input only), image_size, batch_size, base_channels, device,
            amp, repeats, num_threads, seed.

    Returns:
        memory: {"peak_bytes", "params"}; time: {"seconds": {model: median step seconds}}.
    """
    device = torch.device(job["device"])
    if job["num_threads"] > 0:
        torch.set_num_threads(job["num_threads"])
    if job["task"] == "memory":
        if not job["models"]:
            torch.rand(job["batch_size"], 3, job["image_size"], job["image_size"], device=device)
            return {"peak_bytes": peak_memory_bytes(device), "params": 0}
        model, x = build(job, job["models"][0])
        training_step(model, x, job["amp"])
        return {"peak_bytes": peak_memory_bytes(device),
                "params": sum(p.numel() for p in model.parameters())}
    built = {key: build(job, key) for key in job["models"]}
    for model, x in built.values():
        training_step(model, x, job["amp"])  # warm-up: allocator, kernel selection
    times: Dict[str, List[float]] = {key: [] for key in built}
    for _ in range(job["repeats"]):
        for key, (model, x) in built.items():
            times[key].append(training_step(model, x, job["amp"]))
    return {"seconds": {key: statistics.median(values) for key, values in times.items()}}


def run_in_subprocess(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run a worker job in a fresh Python process; a crash (e.g. out of memory) becomes a status."""
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True, text=True,
    )
    if process.returncode != 0:
        last_line = (process.stderr.strip().splitlines() or [""])[-1]
        return {"status": f"failed (exit {process.returncode}): {last_line}"}
    return {"status": "ok", **json.loads(process.stdout.strip().splitlines()[-1])}


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Fixed-width table of the rows, with ratios to the teacher of the same image size."""
    header = (f"{'size':>5} {'model':<14} {'params':>8} {'fwd+bwd':>9} {'×teacher':>9} "
              f"{'peak mem':>9} {'×teacher':>9}  note")
    lines = [header, "-" * len(header)]
    teachers = {row["image_size"]: row for row in rows
                if row["model"] == "teacher" and row["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['image_size']:>5} {row['model']:<14} {'':>8} {'-':>9} {'':>9} "
                         f"{'-':>9} {'':>9}  {row['status']}")
            continue
        teacher = teachers.get(row["image_size"])
        time_ratio = f"{row['seconds'] / teacher['seconds']:.2f}×" if teacher else "-"
        memory_ratio = f"{row['peak_gib'] / teacher['peak_gib']:.2f}×" if teacher else "-"
        lines.append(
            f"{row['image_size']:>5} {row['model']:<14} {row['params'] / 1e6:>7.2f}M "
            f"{row['seconds']:>8.2f}s {time_ratio:>9} {row['peak_gib']:>6.2f}GiB {memory_ratio:>9}  "
            f"{row['note']}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    device = str(resolve_device(args.device))
    print(f"device {device}, batch {args.batch_size}, base {args.base_channels}, amp {args.amp}, "
          f"median of {args.repeats} interleaved steps after 1 warm-up, "
          f"threads per process {args.num_threads or torch.get_num_threads()}")

    rows: List[Dict[str, Any]] = []
    progress = tqdm(total=len(args.image_size) * (len(args.models) + 2), desc="subprocesses", unit="job")
    for size in args.image_size:
        common = dict(image_size=size, batch_size=args.batch_size, base_channels=args.base_channels,
                      device=device, amp=args.amp, repeats=args.repeats, seed=args.seed,
                      num_threads=args.num_threads)
        baseline = run_in_subprocess({**common, "task": "memory", "models": []})
        progress.update()
        if baseline["status"] != "ok":
            raise SystemExit(f"model_cost.py: the baseline process {baseline['status']}")
        measured: List[Dict[str, Any]] = []
        for model in args.models:
            row: Dict[str, Any] = {"image_size": size, "model": model, "note": ""}
            rows.append(row)
            if model == "student-naive":
                estimate = naive_attention_gib(args.base_channels, size, args.batch_size)
                row["note"] = f"naive scores ≈ {estimate:.1f} GiB (estimate)"
                if estimate > args.max_naive_gib:
                    row["status"] = (f"skipped: would need {estimate:.1f} GiB "
                                     f"> --max_naive_gib {args.max_naive_gib:g}")
                    progress.update()
                    continue
            row.update(run_in_subprocess({**common, "task": "memory", "models": [model]}))
            progress.update()
            if row["status"] == "ok":
                row["peak_gib"] = (row["peak_bytes"] - baseline["peak_bytes"]) / GIB
                measured.append(row)
        timing = run_in_subprocess({**common, "task": "time", "models": [r["model"] for r in measured]})
        progress.update()
        for row in measured:
            if timing["status"] == "ok":
                row["seconds"] = timing["seconds"][row["model"]]
            else:
                row["status"] = f"timing {timing['status']}"
    progress.close()

    print(format_table(rows))
    print("goals: CPU 256², batch 2: student ≤ 2.5× teacher time and ≤ 3× teacher peak memory; "
          "80 GB GPU: student trains at 256², batch 64, --amp bf16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
