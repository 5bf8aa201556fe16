"""One command that checks the GPU path: training and evaluation throughput, peak memory, DDP
over NCCL, and every training script under torchrun followed by evaluate.py.

    python benchmarks/gpu_check.py                     # one CUDA GPU, about 5 minutes
    python benchmarks/gpu_check.py --device cpu        # dry mode, any machine, about a minute
    python benchmarks/gpu_check.py --compile without   # then --compile only: the same, in two

Sections, each printed as it finishes and written to ``--out`` (JSON) after each item:

1. training: samples/s and peak memory of the teacher and the student at 256x256, batch 64,
   base 64, the student attending levels 3-5 (configs/batvisionv2; ``--student_base_channels``
   and ``--student_attention_levels`` measure a cheaper student beside the same teacher) under
   bf16 autocast, and fp16 autocast with the gradient
   scaler, with and without channels_last and torch.compile. A step is the engine's: DepthTask
   loss, AdamW, GradScaler. samples/s = batch x timed steps / their wall time, after warm-up
   steps (the first of which compiles); peak memory = ``torch.cuda.max_memory_allocated``.
2. evaluation: samples/s of both models in eval mode without gradients, bf16.
3. ddp: a one-process NCCL group, the student wrapped in SyncBatchNorm and
   DistributedDataParallel as the engine wraps it, a few steps and an all-reduce.
4. scripts: ``torchrun --nproc_per_node 1`` of train_rgb_depth.py (bf16), train_binaural_
   attention.py (fp16) and train_distillation.py (bf16) for one epoch on a tiny synthetic world
   (2 locations x 8 samples, 32x32), each followed by evaluate.py on its test split. A world of
   one process creates no process group (``training.device.init_distributed``), so NCCL is
   exercised by section 3, the launcher and the scripts' CUDA path here.

TF32 matmuls and ``cudnn.benchmark`` are on, as they should be for training on CUDA.

Dry mode (no CUDA, or ``--device cpu``): the same code at tiny sizes on the CPU (32x32, batch 2,
base 4), gloo instead of NCCL, torch.compile with its ``eager`` backend (graph capture without
code generation: inductor would compile C++ for minutes), no ``--amp`` for the scripts; so a test
runs every path. Its figures say nothing about a GPU.

Goal (issue 10): the student trains at 256x256, batch 64, bf16 on one 80 GB card at >= 900
samples/s (the best bf16 variant counts); printed as met / not met / not measured.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# Run as a script from anywhere: make the repository root importable.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from benchmarks.model_cost import AMP_DTYPES, MODELS  # noqa: E402
from common.argtypes import positive_int  # noqa: E402
from datasets.sample import DEPTH, VALID  # noqa: E402
from models import build_model  # noqa: E402
from training import cli  # noqa: E402
from training.checkpoint import write_json  # noqa: E402
from training.data import MODEL_INPUTS  # noqa: E402
from training.device import resolve_device  # noqa: E402
from training.tasks import TOTAL, DepthTask  # noqa: E402

GOAL_SAMPLES_PER_S = 900.0
COMPILE_CHOICES = ("both", "without", "only")
SECTIONS = ("training", "evaluation", "ddp", "scripts")
CHECKED_MODELS = ("teacher", "student")
# (autocast dtype, channels_last, torch.compile)
VARIANTS: Tuple[Tuple[str, bool, bool], ...] = (
    ("bf16", False, False), ("bf16", True, False), ("bf16", False, True), ("bf16", True, True),
    ("fp16", False, False), ("fp16", True, False),
)
EVAL_VARIANTS: Tuple[Tuple[str, bool, bool], ...] = (("bf16", False, False), ("bf16", True, False))
# The scripts' tiny world (as tests/test_scripts.py) and their size flags.
WORLD_FLAGS = {"synthetic_locations": 2, "synthetic_samples": 8, "synthetic_size": 32}
SCRIPT_FLAGS = ["--image_size", "32", "--base_channels", "8", "--batch_size", "4",
                "--nb_epochs", "1", "--num_val_images", "0"]
SCRIPTS = (("teacher", "train_rgb_depth.py", "bf16"),
           ("student", "train_binaural_attention.py", "fp16"),
           ("distillation", "train_distillation.py", "bf16"))


@dataclass(frozen=True)
class Sizes:
    """Sizes of one mode.

    Attributes:
        image_size: input side in pixels.
        batch_size: samples per step.
        base_channels: U-Net width of the teacher, and of the student unless
            ``student_base_channels`` says otherwise.
        warmup: untimed steps first (the first compiles).
        steps: timed steps.
        student_base_channels: the student's width, ``None``: ``base_channels``.
        attention_levels: the student's attended encoder levels.
    """

    image_size: int
    batch_size: int
    base_channels: int
    warmup: int
    steps: int
    student_base_channels: Optional[int] = None
    attention_levels: Tuple[int, ...] = (3, 4, 5)

    @property
    def student_width(self) -> int:
        return self.student_base_channels or self.base_channels


GPU_SIZES = Sizes(image_size=256, batch_size=64, base_channels=64, warmup=3, steps=10)
DRY_SIZES = Sizes(image_size=32, batch_size=2, base_channels=4, warmup=1, steps=2)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu: dry mode), cuda, cuda:N, cpu")
    parser.add_argument("--out", default=None,
                        help="JSON file (default results/gpu_check.json, dry mode "
                             "results/gpu_check_dry.json)")
    parser.add_argument("--models", nargs="+", choices=CHECKED_MODELS, default=list(CHECKED_MODELS),
                        help="models of the throughput sections")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="both",
                        help="torch.compile training variants, which take most of the time: both "
                             "(with and without), without (leave them out), only (just them)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run, e.g. to split the check around other work")
    parser.add_argument("--student_base_channels", type=positive_int, default=None,
                        help="the student's width (default: the teacher's, 64; dry mode 4)")
    parser.add_argument("--student_attention_levels", type=cli.attention_levels,
                        default=[3, 4, 5],
                        help="the student's attended encoder levels, comma-separated (default: "
                             "those of configs/batvisionv2/student.yaml)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Throughput


def make_batch(model_key: str, sizes: Sizes, device: torch.device, max_depth: float,
               channels_last: bool) -> Dict[str, torch.Tensor]:
    """A seeded random batch in the sample-dict layout the model's DepthTask reads."""
    name, in_channels, _ = MODELS[model_key]
    shape = (sizes.batch_size, in_channels, sizes.image_size, sizes.image_size)
    inputs = torch.rand(shape, device=device)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    depth = max_depth * torch.rand(sizes.batch_size, 1, sizes.image_size, sizes.image_size,
                                   device=device)
    return {MODEL_INPUTS[name]: inputs, DEPTH: depth, VALID: depth > 0}


def build_task(model_key: str, sizes: Sizes, device: torch.device, channels_last: bool,
               compile_backend: Optional[str]) -> DepthTask:
    """The model (optionally channels_last, optionally compiled) inside the engine's DepthTask."""
    name, _, extra = MODELS[model_key]
    kwargs: Dict[str, Any] = {"base_channels": sizes.base_channels, **extra}
    if name == "binaural_attention":
        kwargs.update(base_channels=sizes.student_width,
                      attention_levels=list(sizes.attention_levels))
    torch.manual_seed(0)
    model = build_model(name, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    max_depth = model.config["max_depth"]
    if compile_backend is not None:
        model = torch.compile(model, backend=compile_backend)
    return DepthTask(model, MODEL_INPUTS[name], max_depth)


def timed_steps(step: Callable[[], None], sizes: Sizes, device: torch.device) -> float:
    """Samples per second of ``step`` over ``sizes.steps`` calls after ``sizes.warmup``."""
    for _ in range(sizes.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(sizes.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sizes.batch_size * sizes.steps / (time.perf_counter() - started)


def release(device: torch.device) -> None:
    """Free what the last measurement held, so the next one's peak memory is its own."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(model_key: str, variant: Tuple[str, bool, bool], sizes: Sizes, device: torch.device,
            compile_backend: str, train: bool) -> Dict[str, Any]:
    """Throughput of one model and variant: a training step (loss, backward, AdamW, GradScaler)
    or, with ``train=False``, an evaluation forward pass.

    Returns:
        The row: model, mode, precision, channels_last, compile, status ("ok", "out of memory"
        or "error: <type>: <message>"), samples_per_s and peak_memory_gib (CUDA only, else
        None).
    """
    precision, channels_last, compiled = variant
    row: Dict[str, Any] = {"model": model_key, "mode": "train" if train else "eval",
                           "precision": precision, "channels_last": channels_last,
                           "compile": compiled, "status": "ok", "samples_per_s": None,
                           "peak_memory_gib": None}
    release(device)
    try:
        task = build_task(model_key, sizes, device, channels_last,
                          compile_backend if compiled else None)
        batch = make_batch(model_key, sizes, device, task.max_depth, channels_last)
        dtype = AMP_DTYPES[precision]
        if train:
            task.train()
            optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

            def step() -> None:
                with torch.autocast(device.type, dtype=dtype):
                    _, losses = task(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses[TOTAL]).backward()
                scaler.step(optimizer)
                scaler.update()
        else:
            task.eval()

            def step() -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                    task.model(batch[task.input_key])

        row["samples_per_s"] = timed_steps(step, sizes, device)
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    except torch.cuda.OutOfMemoryError:  # a figure in itself: this size does not fit the card
        row["status"] = "out of memory"
    except Exception as error:  # noqa: BLE001 - a variant this card or torch build cannot run
        # (a compiler failure, say) is a finding of the check; the other variants still run.
        row["status"] = failure(error)
    release(device)
    return row


def failure(error: BaseException) -> str:
    """``error: <type>: <first line of the message>`` for a report row."""
    message = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {message}"[:300]


def goal_verdict(rows: List[Dict[str, Any]], dry: bool,
                 sizes: Sizes = GPU_SIZES) -> Dict[str, Any]:
    """The issue's goal: the student's best bf16 training samples/s >= ``GOAL_SAMPLES_PER_S``.

    Args:
        rows: the training rows.
        dry: dry mode (nothing is measured).
        sizes: the student measured (named in the goal, since its width may be narrower).

    Returns:
        ``{"goal", "samples_per_s", "verdict"}``, verdict "met", "not met" or "not measured"
        (dry mode, or no bf16 student training row that ran).
    """
    figures = [r["samples_per_s"] for r in rows if r["model"] == "student"
               and r["mode"] == "train" and r["precision"] == "bf16" and r["status"] == "ok"]
    goal = f"student (base {sizes.student_width}, attention " \
           f"{','.join(map(str, sizes.attention_levels))}), {GPU_SIZES.image_size}x" \
           f"{GPU_SIZES.image_size}, batch {GPU_SIZES.batch_size}, bf16 >= " \
           f"{GOAL_SAMPLES_PER_S:.0f} samples/s"
    if dry or not figures:
        return {"goal": goal, "samples_per_s": None, "verdict": "not measured"}
    best = max(figures)
    return {"goal": goal, "samples_per_s": best,
            "verdict": "met" if best >= GOAL_SAMPLES_PER_S else "not met"}


# ----------------------------------------------------------------------------------------------
# DDP and the scripts


def ddp_check(sizes: Sizes, device: torch.device, scratch: Path) -> Dict[str, Any]:
    """A one-process group (NCCL on CUDA, gloo on CPU): the student under SyncBatchNorm (CUDA)
    and DistributedDataParallel, a few bf16 training steps, and an all-reduce of the loss."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = dist.FileStore(str(scratch / "ddp_store"), 1)
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        task = build_task("student", sizes, device, channels_last=False, compile_backend=None)
        batch = make_batch("student", sizes, device, task.max_depth, channels_last=False)
        module: nn.Module = task
        if device.type == "cuda":  # SyncBatchNorm runs on CUDA only
            module = nn.SyncBatchNorm.convert_sync_batchnorm(task)
        wrapped = DistributedDataParallel(module, device_ids=[device.index]
                                          if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
        for _ in range(sizes.warmup + sizes.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _, losses = wrapped(batch)
            optimizer.zero_grad(set_to_none=True)
            losses[TOTAL].backward()
            optimizer.step()
        loss = losses[TOTAL].detach().float()
        reduced = loss.clone()
        dist.all_reduce(reduced)
        agrees = bool(torch.isfinite(reduced) and torch.equal(reduced, loss))  # world of one
        return {"backend": backend, "sync_batchnorm": device.type == "cuda",
                "status": "ok" if agrees else "all-reduce disagrees", "loss": loss.item()}
    finally:
        dist.destroy_process_group()


def run_command(name: str, command: List[str]) -> Dict[str, Any]:
    """Run ``command`` from the repository root; its name, command line, exit status, wall time
    and, when it failed, the last line of its stderr."""
    started = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    error = (process.stderr.strip().splitlines() or [""])[-1] if process.returncode else None
    return {"name": name, "command": " ".join(command), "returncode": process.returncode,
            "wall_s": time.perf_counter() - started, "error": error}


def script_runs(device: torch.device, scratch: Path,
                report: Callable[[Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """Each training script under ``torchrun --nproc_per_node 1``, then evaluate.py on its run.

    Args:
        device: where the scripts run (``--device``); on CPU without ``--amp``.
        scratch: folder for the world, the runs and the evaluations.
        report: called with each result as it comes.
    """
    from datasets.synthetic.world import WorldConfig, ensure_synthetic_world

    world = scratch / "world"
    ensure_synthetic_world(world, WorldConfig(
        locations=WORLD_FLAGS["synthetic_locations"], samples=WORLD_FLAGS["synthetic_samples"],
        height=WORLD_FLAGS["synthetic_size"], width=WORLD_FLAGS["synthetic_size"]),
        progress=False)
    checkpoints = scratch / "checkpoints"
    device_name = str(device)
    common = ["--dataset", "synthetic", "--data_root", str(world),
              *[x for k, v in WORLD_FLAGS.items() for x in (f"--{k}", str(v))], *SCRIPT_FLAGS,
              # workers with pinned memory on CUDA; none on the CPU, where they only cost
              "--num_workers", "2" if device.type == "cuda" else "0",
              "--device", device_name, "--checkpoint_dir", str(checkpoints)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "1"]
    results: List[Dict[str, Any]] = []
    failed = set()  # runs whose training or evaluation failed or was skipped
    for name, script, amp in SCRIPTS:
        extra = ["--amp", amp if device.type == "cuda" else "none", "--experiment_name", name]
        needs = {name}
        if name == "distillation":
            extra += ["--teacher_checkpoint", str(checkpoints / "teacher" / "best_model.pth")]
            needs.add("teacher")
        steps = [(f"torchrun {script}", [*torchrun, script, *common, *extra]),
                 (f"evaluate.py {name}", [sys.executable, "evaluate.py", "--checkpoint",
                                          str(checkpoints / name), "--split", "test",
                                          "--num_workers", "0", "--device", device_name,
                                          "--out", str(scratch / f"eval_{name}")])]
        for step_name, command in steps:
            if needs & failed:
                result = {"name": step_name, "command": " ".join(command), "returncode": None,
                          "wall_s": 0.0, "error": "skipped: the run it needs failed"}
            else:
                result = run_command(step_name, command)
            if result["returncode"] != 0:
                failed.add(name)
            results.append(result)
            report(result)
    return results


# ----------------------------------------------------------------------------------------------
# The command


def machine_description(device: torch.device) -> Dict[str, Any]:
    """What ran the check: device name and memory, torch and CUDA versions."""
    description: Dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                                   "cuda": torch.version.cuda}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        description.update(name=properties.name, memory_gib=properties.total_memory / 2 ** 30)
    else:
        description.update(name=platform.processor() or platform.machine(),
                           cpus=os.cpu_count())
    return description


def format_row(row: Dict[str, Any]) -> str:
    """One throughput row as a line of the printed table."""
    layout = "+".join(name for name, on in (("channels_last", row["channels_last"]),
                                            ("compile", row["compile"])) if on) or "eager"
    speed = f"{row['samples_per_s']:9.1f}" if row["samples_per_s"] is not None else f"{'-':>9}"
    memory = (f"{row['peak_memory_gib']:8.2f}" if row["peak_memory_gib"] is not None
              else f"{'-':>8}")
    return (f"{row['mode']:<5} {row['model']:<8} {row['precision']:<5} {layout:<22} {speed} "
            f"{memory}  {row['status']}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the check; returns the report that was written to ``--out``."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    dry = device.type != "cuda"
    sizes = replace(DRY_SIZES if dry else GPU_SIZES,
                    student_base_channels=args.student_base_channels,
                    attention_levels=tuple(args.student_attention_levels))
    compile_backend = "eager" if dry else "inductor"
    out = Path(args.out or REPO / "results" / ("gpu_check_dry.json" if dry else "gpu_check.json"))
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    report: Dict[str, Any] = {
        "mode": "dry (CPU, tiny sizes: not GPU figures)" if dry else "gpu",
        "machine": machine_description(device), "sizes": asdict(sizes),
        "compile_backend": compile_backend, "compile_variants": args.compile,
        "sections": list(args.sections), "training": [], "evaluation": [], "ddp": None,
        "scripts": [], "goal": None, "wall_s": None,
    }

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        write_json(out, report)

    print(f"gpu_check on {report['machine']['name']} ({report['mode']}): "
          f"{sizes.image_size}x{sizes.image_size}, batch {sizes.batch_size}, base "
          f"{sizes.base_channels} (student base {sizes.student_width}, attention "
          f"{','.join(map(str, sizes.attention_levels))}); {sizes.steps} timed steps after "
          f"{sizes.warmup}", flush=True)
    print(f"{'mode':<5} {'model':<8} {'amp':<5} {'layout':<22} {'samples/s':>9} {'peak GiB':>8}",
          flush=True)
    variants = [v for v in VARIANTS if {"both": True, "without": not v[2],
                                        "only": v[2]}[args.compile]]
    for section, chosen, train in (("training", variants, True),
                                   ("evaluation", EVAL_VARIANTS, False)):
        if section not in args.sections:
            continue
        for model_key in args.models:
            for variant in chosen:
                row = measure(model_key, variant, sizes, device, compile_backend, train)
                report[section].append(row)
                print(format_row(row), flush=True)
                save()
    run_ddp_and_scripts(report, sizes, device, save, args.sections)
    report["goal"] = goal_verdict(report["training"], dry, sizes)
    save()
    goal = report["goal"]
    figure = f" ({goal['samples_per_s']:.0f} samples/s)" if goal["samples_per_s"] else ""
    print(f"goal {goal['goal']}: {goal['verdict']}{figure}"
          + (" — dry mode on the CPU" if dry else ""))
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


def run_ddp_and_scripts(report: Dict[str, Any], sizes: Sizes, device: torch.device,
                        save: Callable[[], None], sections: Sequence[str]) -> None:
    """The ddp and scripts sections among ``sections``, into ``report`` (``save`` after each
    item)."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        if "ddp" in sections:
            run_ddp(report, sizes, device, Path(scratch), save)
        if "scripts" not in sections:
            return

        def script_done(result: Dict[str, Any]) -> None:
            report["scripts"].append(result)
            status = "ok" if result["returncode"] == 0 else result["error"]
            print(f"{result['name']:<40} {result['wall_s']:6.1f} s  {status}", flush=True)
            save()

        script_runs(device, Path(scratch), script_done)


def run_ddp(report: Dict[str, Any], sizes: Sizes, device: torch.device, scratch: Path,
            save: Callable[[], None]) -> None:
    """The ddp section into ``report``, its failure a status rather than the end of the check."""
    try:
        report["ddp"] = ddp_check(sizes, device, scratch)
    except Exception as error:  # noqa: BLE001 - reported as the section's status, as above
        report["ddp"] = {"backend": "nccl" if device.type == "cuda" else "gloo",
                         "status": failure(error)}
    print(f"ddp ({report['ddp']['backend']}, one process): {report['ddp']['status']}", flush=True)
    save()


if __name__ == "__main__":
    main()
