"""Training step time of the small CPU student with 1, 2 and ``auto`` threads, on the machine
as it is and beside one competing busy process; ``--loader`` adds DataLoader workers.

Each measurement is a fresh process (as a training run is) that sets its threads with
``training.device.configure_threads``, so ``auto`` looks at the machine with the competitor
already running. The competitor is ``python -c "while True: pass"``: one core kept busy, as a
browser tab or a second job does on a laptop. The workload is the one issue 10 measured, the
quick preset's student of the time (64x64, base 8, attention at levels 4 and 5, batch 8, AdamW,
L1 through the engine's DepthTask): forward, loss, backward, optimizer step on a fixed random
batch. With ``--loader``, real batches of a small synthetic world through the project's loaders,
from the cache and from the source files, with 0, 1 and 2 workers.

    python benchmarks/thread_policy.py                  # about 1 minute on 2 cores
    python benchmarks/thread_policy.py --rounds 3       # medians of 3 interleaved rounds
    python benchmarks/thread_policy.py --loader         # + workers (minutes; far longer on
                                                        #   a loaded machine)
    python benchmarks/thread_policy.py --together 2     # + 2 processes started at once: each
                                                        #   'auto' vs run_experiments.py's share

``OMP_NUM_THREADS`` is removed from the measuring processes (it would override ``auto`` and
torch's default). Goal (issue 10, item 1): with ``auto``, a step beside one busy process takes
at most 1.3x its time without it, and without it ``auto`` is no slower than torch's default
(within 5%, for run-to-run noise). "Without it" is only quiet when nothing else
runs: the header prints the load and the cores already busy before the first measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

# Run as a script from anywhere: make the repository root importable.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUSY_RATIO_GOAL = 1.3
QUIET_TOLERANCE = 1.05
LOADER_WORKERS = (0, 1, 2)
# The workload of issue 10's measurements: the quick preset's student as it was then (64x64,
# base 8, attention at the two coarsest levels, batch 8, 15 m); fixed here so that figures stay
# comparable when the presets change.
STUDENT_ARGV = ["--image_size", "64", "--base_channels", "8", "--batch_size", "8",
                "--max_depth", "15", "--attention_levels", "4,5"]
# The loader part's world: 2 locations x 60 samples (84 train samples, 11 batches of 8).
WORLD_LOCATIONS, WORLD_SAMPLES = 2, 60


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["1", "2", "auto"],
                        help="--threads values to compare: 'auto' or positive integers")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every measurement, interleaved, and keep the median: "
                             "steadier where the background load changes")
    parser.add_argument("--loader", action="store_true",
                        help="also time epochs through the DataLoader with 0, 1, 2 workers, "
                             "from the cache and from the source files, for each of --settings")
    parser.add_argument("--epochs", type=int, default=3,
                        help="--loader: epochs per measurement; the first (worker start-up) is "
                             "not timed")
    parser.add_argument("--together", type=int, default=1,
                        help="also start this many measuring processes at the same moment, "
                             "each with 'auto' (every one sees an idle machine) and then with "
                             "the share run_experiments.py --jobs gives them "
                             "(training.device.threads_per_job)")
    parser.add_argument("--worker", metavar="JSON", default=None,
                        help="internal: run one measurement described by JSON and print its "
                             "result as JSON")
    args = parser.parse_args(argv)
    bad = [s for s in args.settings if s != "auto" and not (s.isdigit() and int(s) > 0)]
    if bad:
        parser.error(f"--settings takes 'auto' or positive integers, got {bad}")
    if args.steps < 1 or args.epochs < 2 or args.rounds < 1 or args.together < 1:
        parser.error("--steps, --rounds and --together must be >= 1 and --epochs >= 2")
    args.settings = list(dict.fromkeys(args.settings))
    return args


# ----------------------------------------------------------------------------------------------
# Inside a measuring process


def run_worker(job: Dict[str, Any]) -> Dict[str, Any]:
    """One measurement in this process.

    Args:
        job: ``threads`` (the ``--threads`` value), ``argv`` (student flags), ``steps`` and
            ``warmup``; with ``loader``: ``data_argv`` (world and cache flags), ``num_workers``
            and ``epochs``.

    Returns:
        ``threads`` used, torch's ``default_threads`` and ``ms_per_step`` (mean over the timed
        steps, so proportional to an epoch's time).
    """
    import torch

    from datasets.sample import AUDIO, DEPTH, VALID
    from models import build_model
    from training import cli
    from training.data import build_data, to_device
    from training.device import TORCH_DEFAULT_THREADS, DistContext, configure_threads
    from training.run import model_config
    from training.tasks import TOTAL, DepthTask

    threads = configure_threads(job["threads"], "cpu")
    args = cli.build_parser("student", None).parse_args(
        [*job["argv"], *job.get("data_argv", []), "--num_workers", str(job.get("num_workers", 0))])
    torch.manual_seed(0)
    if job.get("loader"):
        data = build_data(args, DistContext(), use_rgb=False)
        epochs = [data.train_loader] * job["epochs"]
    else:
        size, batch_size = args.image_size, args.batch_size
        depth = args.max_depth * torch.rand(batch_size, 1, size, size)
        batch = {AUDIO: torch.rand(batch_size, 2, size, size), DEPTH: depth, VALID: depth > 0}
        epochs = [[batch] * job["warmup"], [batch] * job["steps"]]
    model = build_model(cli.model_name_of(args), **model_config(args))
    task = DepthTask(model, AUDIO, args.max_depth).train()
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    seconds, steps = 0.0, 0
    for number, loader in enumerate(epochs):
        started = time.perf_counter()
        count = 0
        for item in loader:  # the loader's time counts: workers compete for the cores
            _, losses = task(to_device(item, torch.device("cpu")))
            optimizer.zero_grad(set_to_none=True)
            losses[TOTAL].backward()
            optimizer.step()
            count += 1
        if number > 0:  # the first epoch warms up (allocator, worker start-up)
            seconds += time.perf_counter() - started
            steps += count
    return {"threads": threads, "default_threads": TORCH_DEFAULT_THREADS,
            "ms_per_step": 1000.0 * seconds / steps}


# ----------------------------------------------------------------------------------------------
# The parent


def measure(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``job`` in a fresh Python process without ``OMP_NUM_THREADS``; its result dict."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                              json.dumps(job)], capture_output=True, text=True, env=env, cwd=REPO)
    if process.returncode != 0:
        raise SystemExit(f"error: measuring process failed (exit {process.returncode}):\n"
                         f"{process.stderr[-2000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def busy_competitor(enabled: bool) -> Iterator[None]:
    """One ``while True: pass`` process for the duration of the block (when ``enabled``)."""
    if not enabled:
        yield
        return
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start and take its core
        yield
    finally:
        competitor.kill()
        competitor.wait()


def quiet_and_busy(jobs: Dict[str, Dict[str, Any]],
                   rounds: int) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Each job measured as the machine is, then beside one busy process, ``rounds`` times
    interleaved (job by job, round by round).

    Returns:
        ``{label: {"quiet": summary, "busy": summary}}``, a summary being the median
        ``ms_per_step``, the ``threads`` used in each round and torch's ``default_threads``.
    """
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
        label: {"quiet": [], "busy": []} for label in jobs}
    for _ in range(rounds):
        for label, job in jobs.items():
            for condition in ("quiet", "busy"):
                with busy_competitor(condition == "busy"):
                    raw[label][condition].append(measure(job))
            print(f"  {label}: done", flush=True)
    return {label: {condition: {
        "ms_per_step": statistics.median(r["ms_per_step"] for r in results),
        "threads": [r["threads"] for r in results],
        "default_threads": results[0]["default_threads"]}
        for condition, results in conditions.items()} for label, conditions in raw.items()}


def print_rows(title: str, results: Dict[str, Dict[str, Dict[str, Any]]]) -> None:
    """Quiet and busy times side by side, with the threads each round used and the ratio."""
    width = max(len("setting"), *map(len, results))
    print(f"\n{title}")
    print(f"{'setting':<{width}} {'threads quiet':>13} {'threads busy':>13} {'quiet ms':>9} "
          f"{'busy ms':>9} {'busy/quiet':>10}")
    for label, result in results.items():
        quiet, busy = result["quiet"], result["busy"]
        print(f"{label:<{width}} {','.join(map(str, quiet['threads'])):>13} "
              f"{','.join(map(str, busy['threads'])):>13} {quiet['ms_per_step']:>9.1f} "
              f"{busy['ms_per_step']:>9.1f} {busy['ms_per_step'] / quiet['ms_per_step']:>10.2f}")


def goal_lines(results: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    """The two goals of the thread policy, as 'met' / 'NOT met' / 'not measured' lines."""
    auto = results.get("--threads auto")
    if auto is None:
        return ["goals: not measured (add 'auto' to --settings)"]
    ratio = auto["busy"]["ms_per_step"] / auto["quiet"]["ms_per_step"]
    lines = [f"auto beside one busy process: {ratio:.2f}x its quiet time (goal <= "
             f"{BUSY_RATIO_GOAL}): {'met' if ratio <= BUSY_RATIO_GOAL else 'NOT met'}"]
    default = auto["quiet"]["default_threads"]
    reference = results.get(f"--threads {default}")
    if reference is not None:
        versus = auto["quiet"]["ms_per_step"] / reference["quiet"]["ms_per_step"]
        lines.append(f"auto quiet vs torch's default ({default} threads): {versus:.2f}x (goal <= "
                     f"{QUIET_TOLERANCE}): {'met' if versus <= QUIET_TOLERANCE else 'NOT met'}")
    else:
        lines.append(f"auto quiet vs torch's default: not measured (add {default} to --settings)")
    return lines


def started_together(job: Dict[str, Any], count: int, settings: Sequence[str],
                     rounds: int) -> None:
    """Print the median ms per step of ``count`` processes started at the same moment, for each
    ``--threads`` setting (interleaved rounds), and each setting's time over the last one's."""
    from concurrent.futures import ThreadPoolExecutor

    threads: Dict[str, List[int]] = {setting: [] for setting in settings}
    times: Dict[str, List[float]] = {setting: [] for setting in settings}
    with ThreadPoolExecutor(count) as pool:
        for _ in range(rounds):
            for setting in settings:
                for result in pool.map(measure, [{**job, "threads": setting}] * count):
                    threads[setting].append(result["threads"])
                    times[setting].append(result["ms_per_step"])
    medians = {setting: statistics.median(times[setting]) for setting in settings}
    print(f"\n{count} processes started together, median ms per step:")
    for setting in settings:
        print(f"  --threads {setting:<5} threads {','.join(map(str, threads[setting])):<12} "
              f"{medians[setting]:>8.1f} ms  ({medians[setting] / medians[settings[-1]]:.2f}x "
              f"the last)")


def loader_results(argv: List[str], settings: List[str], epochs: int,
                   rounds: int) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Epoch step times through the project's loaders on a small world, from the cache and from
    the source files, with 0, 1 and 2 workers, for each thread setting."""
    from datasets.synthetic.world import WorldConfig, ensure_synthetic_world

    scratch = Path(tempfile.mkdtemp(prefix="thread_policy_"))
    try:
        size = argv[argv.index("--image_size") + 1]
        ensure_synthetic_world(scratch, WorldConfig(locations=WORLD_LOCATIONS,
                                                    samples=WORLD_SAMPLES, height=int(size),
                                                    width=int(size)), progress=False)
        world = ["--data_root", str(scratch), "--synthetic_locations", str(WORLD_LOCATIONS),
                 "--synthetic_samples", str(WORLD_SAMPLES), "--synthetic_size", size]
        cached = [*world, "--cache_dir", str(scratch / "cache")]
        base = {"argv": argv, "loader": True, "epochs": epochs}
        measure({**base, "threads": "1", "data_argv": cached, "epochs": 2})  # builds the cache
        jobs = {f"{name}, threads {threads}, {workers} workers":
                {**base, "threads": threads, "data_argv": data_argv, "num_workers": workers}
                for name, data_argv in (("cached", cached), ("uncached", world))
                for threads in settings for workers in LOADER_WORKERS}
        return quiet_and_busy(jobs, rounds)
    finally:
        shutil.rmtree(scratch)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    from training.device import busy_cores

    load_before = os.getloadavg()[0]
    background = busy_cores(window_s=1.0)
    started = time.perf_counter()
    student = STUDENT_ARGV
    print(f"student ({' '.join(student)}), {args.steps} steps per measurement, "
          f"{args.rounds} round(s), on {os.cpu_count()} CPUs; before: load average "
          f"{load_before:.2f}, "
          + (f"{background[0]:.2f} cores busy" if background else "busy cores unknown"), flush=True)
    results = quiet_and_busy({f"--threads {setting}": {
        "threads": setting, "argv": student, "steps": args.steps, "warmup": args.warmup}
        for setting in args.settings}, args.rounds)
    print_rows("training step (fixed batch), median ms per step:", results)
    for line in goal_lines(results):
        print(line)
    if args.together > 1:
        from training.device import threads_per_job

        share = str(threads_per_job(args.together, "cpu") or "auto")
        started_together({"argv": student, "steps": args.steps, "warmup": args.warmup},
                         args.together, list(dict.fromkeys(["auto", share])), args.rounds)
    if args.loader:
        print_rows(f"through the DataLoader, median ms per step (epochs 2..{args.epochs}):",
                   loader_results(student, args.settings, args.epochs, args.rounds))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}; took "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
