"""Wall time and peak memory of the quick-start command: a short synthetic training of the RGB
teacher (examples preset 8) and its evaluation on the test split, on CPU; ``--with_student``
adds the binaural student trained with preset 8's settings and its evaluation.

Goal (issue 4, item 7): <= 10 minutes and <= 4 GB peak memory on a 2-core CPU. Each step runs
as its own process, exactly as a user would type it; its peak resident memory comes from
``os.wait4`` (the process and the children it waited for). The first step generates the
synthetic world and the preprocessing cache when they are absent: ``--cold`` gives the steps a
fresh, temporary data root, cache and checkpoint folder, so the figure is that of a first run on
a fresh checkout (nothing shared is deleted).

    python benchmarks/quickstart_cost.py --cold                  # the README command, first run
    python benchmarks/quickstart_cost.py --cold --with_student   # teacher and student
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS, GOAL_GB = 600.0, 4.0
TEACHER_RUN, STUDENT_RUN = "quick_synthetic", "quick_synthetic_student"


def quickstart_steps(python: str, extra: List[str], checkpoint_dir: str,
                     with_student: bool) -> List[Tuple[str, List[str]]]:
    """Preset 8 of the examples menu and its evaluation; with ``with_student``, also the student
    trained with preset 8's settings (read from the menu's ``--dry-run``, so they live in one
    place) and its evaluation. ``extra`` flags are appended to the trainings."""
    def evaluation(run: str) -> Tuple[str, List[str]]:
        return (f"evaluate {run}", [python, "evaluate.py", "--split", "test", "--num_workers",
                                    "0", "--checkpoint", f"{checkpoint_dir}/{run}"])

    steps = [("teacher (examples preset 8)", ["bash", "run_rgb_depth_examples.sh", "8", *extra]),
             evaluation(TEACHER_RUN)]
    if with_student:
        preset = subprocess.run(["bash", "run_rgb_depth_examples.sh", "--dry-run", "8"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
        flags = shlex.split(preset)[2:]
        flags[flags.index("--experiment_name") + 1] = STUDENT_RUN
        steps += [("student", [python, "train_binaural_attention.py", *flags, *extra]),
                  evaluation(STUDENT_RUN)]
    return steps


def run_measured(command: List[str], env: dict) -> Tuple[int, float, float, float]:
    """Run ``command`` from the repository root.

    Returns:
        exit status, wall seconds, CPU seconds (user + system, the process and its waited-for
        children) and peak resident memory in GB.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    # Linux reports ru_maxrss in KiB.
    return process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true",
                        help="fresh temporary world, cache and checkpoints (default: off)")
    parser.add_argument("--with_student", action="store_true",
                        help="also train and evaluate the binaural student (default: off)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the steps (default: this one)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHON": args.python}
    extra, checkpoint_dir, fresh = [], "checkpoints", None
    if args.cold:
        fresh = Path(tempfile.mkdtemp(prefix="quickstart_"))
        checkpoint_dir = str(fresh / "checkpoints")
        extra = ["--data_root", str(fresh / "world"), "--cache_dir", str(fresh / "cache"),
                 "--checkpoint_dir", checkpoint_dir]
    rows = []
    load_before = os.getloadavg()[0]
    steps = quickstart_steps(args.python, extra, checkpoint_dir, args.with_student)
    for name, command in steps:
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        status, *figures = run_measured(command, env)
        rows.append((name, status, *figures))
        if status != 0:
            break

    total_wall, total_cpu = sum(r[2] for r in rows), sum(r[3] for r in rows)
    peak_gb = max(r[4] for r in rows)
    state = ("cold: world and cache generated in this run" if args.cold
             else "warm: the default world and cache reused if present")
    print(f"\nquick-start cost on {os.cpu_count()} CPU cores ({state}; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}):")
    print(f"{'step':<36} {'exit':>4} {'wall s':>8} {'CPU s':>8} {'peak GB':>8}")
    for name, status, wall, cpu, gb in rows:
        print(f"{name:<36} {status:>4} {wall:>8.1f} {cpu:>8.1f} {gb:>8.2f}")
    print(f"{'total':<36} {'':>4} {total_wall:>8.1f} {total_cpu:>8.1f} {peak_gb:>8.2f}")
    ok = all(r[1] == 0 for r in rows)
    print(f"goal <= {GOAL_SECONDS / 60:.0f} min and <= {GOAL_GB:.0f} GB: wall time "
          f"{'met' if ok and total_wall <= GOAL_SECONDS else 'NOT met'}, memory "
          f"{'met' if ok and peak_gb <= GOAL_GB else 'NOT met'}. Wall time depends on what else "
          "runs on the machine; CPU s with OMP_NUM_THREADS=1 is the wall time on one idle core.")
    if fresh is not None:
        shutil.rmtree(fresh)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
