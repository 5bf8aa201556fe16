"""Wall time and peak memory of the README's main command, ``run_experiments.py --preset quick``
(the world, the teacher, the official U-Net, the student, the distilled student, their
evaluations and the tables), on this machine.

Goal: <= 10 minutes and <= 4 GB peak memory on a quiet 2-core CPU. The command runs as its own
process, exactly as a user types it; its peak resident memory comes from ``os.wait4`` (the
largest of the process and the children it waited for: each training and evaluation runs as a
child). ``--cold`` gives it a fresh, temporary world, cache and output folder, so the figure is
that of a first run on a fresh checkout (nothing shared is deleted); otherwise the default world
and ``results/quick`` are reused as they are (finished runs are then skipped).

    python benchmarks/quickstart_cost.py --cold
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS, GOAL_GB = 600.0, 4.0


def quickstart_command(python: str, fresh: "Path | None") -> List[str]:
    """The README's main command; with ``fresh``, its world, cache and tables go under it."""
    command = [python, "run_experiments.py", "--preset", "quick"]
    if fresh is not None:
        command += ["--data_root", str(fresh / "world"), "--cache_dir", str(fresh / "cache"),
                    "--out", str(fresh / "quick")]
    return command


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
                        help="fresh temporary world, cache and output folder (default: off)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the command (default: this one)")
    args = parser.parse_args()
    fresh = Path(tempfile.mkdtemp(prefix="quickstart_")) if args.cold else None
    command = quickstart_command(args.python, fresh)
    load_before = os.getloadavg()[0]
    print(f"=== {' '.join(command)}", flush=True)
    status, wall, cpu, peak_gb = run_measured(command, dict(os.environ))
    state = ("cold: world and cache generated in this run" if args.cold
             else "warm: the default world, cache and finished runs reused if present")
    print(f"\nquick-start cost on {os.cpu_count()} CPU cores ({state}; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after):")
    print(f"exit {status}, wall {wall:.1f} s ({wall / 60:.1f} min), CPU {cpu:.1f} s, "
          f"peak memory {peak_gb:.2f} GB")
    ok = status == 0
    print(f"goal <= {GOAL_SECONDS / 60:.0f} min and <= {GOAL_GB:.0f} GB: wall time "
          f"{'met' if ok and wall <= GOAL_SECONDS else 'NOT met'}, memory "
          f"{'met' if ok and peak_gb <= GOAL_GB else 'NOT met'}. Wall time depends on what else "
          "runs on the machine (see the load average).")
    if fresh is not None:
        shutil.rmtree(fresh)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
