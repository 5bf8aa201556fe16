"""The table's runs: their command lines, whether each is reused, resumed or (re)trained, and
launching the repository's scripts, one or several at a time.

Reuse compares the identity a run's command line would record now
(:func:`training.run.expected_identity`, computed as the training scripts compute it) with the
identity recorded in the run folder's ``last_model.pth`` (see :func:`bring_up_to_date`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from common.errors import UsageError
from training import cli
from training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint
from training.data import REPO_ROOT, resolve_data_root
from training.device import DistContext
from training.errors import TrainingError
from training.experiments.presets import BEST, LAST, Experiment, Preset
from training.identity import differences
from training.run import expected_identity

CHECKPOINT_FILES = {BEST: BEST_CHECKPOINT, LAST: LAST_CHECKPOINT}
MISMATCH_ACTIONS = ("retrain", "stop")
NEW, REUSE, RESUME, RETRAIN = "new", "reuse", "resume", "retrain"

# (script, argv, log): runs a repository script; ``log`` (None: this terminal) takes its output.
Launcher = Callable[[str, Sequence[str], Optional[Path]], None]
Scored = TypeVar("Scored")


@dataclass(frozen=True)
class Setup:
    """What every run of one invocation shares.

    Attributes:
        preset: with the command line's overrides.
        config_dir: absolute folder of the config files.
        data_root: every run's explicit ``--data_root`` (for synthetic: the world's folder).
        cache_dir: the shared preprocessing cache.
        device: ``--device`` of every run.
        runs_dir: ``<out>/runs``; a run lives in ``runs_dir/seed<k>/<experiment>``.
        on_mismatch: ``retrain`` or ``stop``.
        launch: runs one script with its arguments (:func:`run_script`).
        jobs: runs trained at once; above 1 each script's output goes to a log file in
            ``logs_dir`` instead of the terminal, where runs would interleave.
        logs_dir: ``<out>/logs``.
        threads: ``--threads`` of every script (``None``: each its own ``auto``), from
            :func:`training.device.threads_per_job`.
        companion_root: the companion world's folder, for the rows trained there
            (:attr:`Experiment.companion_world`); ``None`` when no row is.
    """

    preset: Preset
    config_dir: Path
    data_root: str
    cache_dir: Path
    device: str
    runs_dir: Path
    on_mismatch: str
    launch: Launcher
    jobs: int = 1
    logs_dir: Optional[Path] = None
    threads: Optional[int] = None
    companion_root: Optional[str] = None

    def thread_flags(self) -> List[str]:
        """``--threads N`` when the runs share the cores out, else nothing."""
        return [] if self.threads is None else ["--threads", str(self.threads)]

    def log(self, spec: "RunSpec", step: str) -> Optional[Path]:
        """Where the output of ``step`` (``train`` or ``evaluate``) of a run goes: ``None`` (the
        terminal) with one job, else ``<logs_dir>/seed<k>-<experiment>.<step>.log``."""
        if self.jobs == 1 or self.logs_dir is None:
            return None
        return self.logs_dir / f"seed{spec.seed}-{spec.experiment.name}.{step}.log"


@dataclass(frozen=True)
class RunSpec:
    """One training run: an experiment at one seed."""

    experiment: Experiment
    seed: int
    run_dir: Path
    argv: Tuple[str, ...]

    @property
    def script(self) -> str:
        """The training script (``train_*.py``)."""
        return cli.KIND_SCRIPTS[self.experiment.kind]

    @property
    def scored_checkpoint(self) -> Path:
        """The checkpoint the table scores."""
        return self.run_dir / CHECKPOINT_FILES[self.experiment.scored]


def epochs_of(experiment: Experiment, preset: Preset) -> int:
    """``--nb_epochs`` of a row's run: the preset's, times 1 / F for a run that reads only the
    labelled share F of the train split (the teacher and audio-only scripts), so that every row
    of a table takes the same optimiser steps whatever its fraction."""
    epochs = preset.teacher_epochs if experiment.kind == "teacher" else preset.student_epochs
    fraction = experiment.fraction_in(preset)
    if experiment.kind == "kd" or fraction >= 1 or fraction == 0:
        return epochs
    return max(1, round(epochs / fraction))


def run_spec(experiment: Experiment, seed: int, setup: Setup) -> RunSpec:
    """The run of ``experiment`` at ``seed``: its folder and its full command line (config file,
    the preset's sizes, the row's flags; no ``--resume``/``--overwrite``)."""
    preset = setup.preset
    seed_dir = setup.runs_dir / f"seed{seed}"
    config = setup.config_dir / f"{experiment.config}.yaml"
    epochs = epochs_of(experiment, preset)
    world_seed, data_root = preset.synthetic_seed, setup.data_root
    if experiment.companion_world:
        if setup.companion_root is None:
            raise UsageError(f"{experiment.name}: trained on the companion world, which only a "
                             "synthetic preset has")
        world_seed, data_root = preset.companion().synthetic_seed, setup.companion_root
    argv = ["--config", str(config), "--dataset", preset.dataset, "--data_root", data_root,
            "--image_size", str(preset.image_size), "--batch_size", str(preset.batch_size),
            "--nb_epochs", str(epochs), "--seed", str(seed),
            "--checkpoint_dir", str(seed_dir), "--experiment_name", experiment.name,
            "--cache_dir", str(setup.cache_dir), "--device", setup.device,
            *setup.thread_flags()]
    if preset.dataset == "synthetic":
        argv += ["--synthetic_locations", str(preset.synthetic_locations),
                 "--synthetic_samples", str(preset.synthetic_samples),
                 "--synthetic_size", str(preset.synthetic_size),
                 "--synthetic_seed", str(world_seed)]
        argv += [flag for name, value in preset.world_flags().items()
                 for flag in (f"--synthetic_{name}", value)]
    if preset.max_depth is not None:
        argv += ["--max_depth", str(preset.max_depth)]
    fraction = experiment.fraction_in(preset)
    if fraction < 1:
        argv += ["--labelled_fraction", str(fraction)]
    argv += [*preset.flags, *experiment.flags]
    if experiment.feature_kd:
        argv += ["--lambda_feat", str(preset.feature_weight)]
    if experiment.kind == "kd":
        argv += ["--teacher_checkpoint", str(seed_dir / experiment.teacher / BEST_CHECKPOINT)]
    return RunSpec(experiment, seed, seed_dir / experiment.name, tuple(argv))


def decide(run_dir: Path, wanted: Dict[str, Any]) -> Tuple[str, List[str]]:
    """What to do with a run folder, given the identity the run should have.

    Args:
        run_dir: the run's folder.
        wanted: the identity the run should record (:func:`training.run.expected_identity`).

    Returns:
        ``(action, differences)``: ``new`` (no checkpoint there), ``reuse`` (same identity, all
        epochs trained), ``resume`` (same identity, cut short) or ``retrain`` (another or no
        recorded identity; ``differences`` says what differs).
    """
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        return NEW, []
    saved = load_checkpoint(last)
    recorded = saved.get("identity")
    if not recorded:
        return RETRAIN, ["the run records no identity (written before runs recorded one)"]
    if recorded.get("fingerprint") != wanted["fingerprint"]:
        return RETRAIN, differences(recorded, wanted) or ["identity fingerprint"]
    return (REUSE if saved["epoch"] >= saved["args"]["nb_epochs"] else RESUME), []


def train_run(spec: RunSpec, setup: Setup) -> None:
    """Bring one run of the table up to date (:func:`bring_up_to_date`)."""
    bring_up_to_date(spec.experiment.kind, spec.argv, spec.run_dir, setup.launch,
                     setup.on_mismatch, setup.log(spec, "train"))


def bring_up_to_date(kind: str, argv: Sequence[str], run_dir: Path, launch: Launcher,
                     on_mismatch: str = "retrain", log: Optional[Path] = None) -> None:
    """Reuse, resume or (re)train one run.

    The run is reused when its folder's ``last_model.pth`` records the identity ``argv`` would
    record now (resolved settings, data fingerprint and, for distillation, the teacher
    checkpoint's fingerprint) and every epoch was trained; resumed when it was cut short;
    otherwise trained afresh with ``--overwrite``, or, with ``on_mismatch`` ``stop``, refused.
    A student whose teacher was retrained has another teacher fingerprint, so it is retrained
    too.

    Args:
        kind: ``teacher``, ``student`` or ``kd`` (which training script, ``cli.KIND_SCRIPTS``).
        argv: the script's arguments, without ``--resume``/``--overwrite``; they name
            ``run_dir``.
        run_dir: the run's folder.
        launch: runs the script (:func:`run_script`).
        on_mismatch: ``retrain`` or ``stop`` (:data:`MISMATCH_ACTIONS`) for a folder that holds
            a run with another identity.
        log: file that takes the script's output (``None``: the terminal).

    Raises:
        UsageError: ``on_mismatch`` is ``stop`` and the folder holds a run with another
            identity.
        TrainingError: the training script failed (its own message is printed above).
        DataError: unreadable split CSVs or teacher checkpoint.
    """
    wanted = expected_identity(kind, argv)
    action, differing = decide(run_dir, wanted)
    if action == REUSE:
        print(f"[reuse] {run_dir}: finished, same settings, data and teacher")
        return
    argv = list(argv)
    if action == RESUME:
        argv += ["--resume", str(run_dir)]
    elif action == RETRAIN:
        if on_mismatch == "stop":
            raise UsageError(f"{run_dir} holds a run trained differently: "
                             f"{'; '.join(differing)} (--on_mismatch retrain retrains it)")
        print(f"[retrain] {run_dir}: {'; '.join(differing)}")
        argv.append("--overwrite")
    elif run_dir.exists():
        argv.append("--overwrite")  # leftovers of a run stopped before its first checkpoint
    print(f"[{'resume' if action == RESUME else 'train'}] {run_dir}", flush=True)
    launch(cli.KIND_SCRIPTS[kind], argv, log)
    recorded = load_checkpoint(run_dir / LAST_CHECKPOINT).get("identity") or {}
    if recorded.get("fingerprint") != wanted["fingerprint"]:
        # Cheap insurance beside the test that expected_identity equals what a run records: a
        # run recorded otherwise would be retrained by every later invocation, so say so.
        print(f"warning: {run_dir} recorded another identity than the runner computed "
              f"({'; '.join(differences(recorded, wanted)) or 'no identity recorded'}); it will "
              "not be reused")


def shown_command(script: str, argv: Sequence[str]) -> str:
    """The command line of a repository script as a user types it from the repository root:
    paths inside the repository (config files, the default world) shown relative to it."""
    root = f"{REPO_ROOT}{os.sep}"
    return shlex.join(["python", script,
                       *(arg[len(root):] if arg.startswith(root) else arg for arg in argv)])


def run_script(script: str, argv: Sequence[str], log: Optional[Path] = None) -> None:
    """Run one of the repository's scripts in a child process (this interpreter, this
    environment), after printing its command line.

    Args:
        script: file name in the repository root.
        argv: its arguments.
        log: file that takes the script's output (stdout and stderr); ``None``: this terminal.

    Raises:
        TrainingError: it exited with a non-zero status (its own message is printed above, or
            is the log's last line, quoted).
    """
    shown = shown_command(script, argv)
    command = [sys.executable, str(REPO_ROOT / script), *argv]
    if log is None:
        print(f"$ {shown}", flush=True)
        completed = subprocess.run(command, check=False)
        where = "its message is above"
    else:
        print(f"$ {shown} > {log}", flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:
            completed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                       check=False)
        lines = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
        where = f"{log}: {lines[-1] if lines else 'empty'}"
    if completed.returncode != 0:
        raise TrainingError(f"{script} exited with status {completed.returncode} ({where}); "
                            f"command: {shown}")


def world_root(preset: Preset, data_root: Optional[str]) -> str:
    """The explicit ``--data_root`` of every run.

    Args:
        preset: its dataset and, for synthetic, its world.
        data_root: ``--data_root`` of ``run_experiments.py`` (``None``: the default).

    Returns:
        ``data_root`` for real data; for synthetic, the absolute folder holding the preset's
        world (default ``.cache/synthetic/<world>/``), generated now when absent.

    Raises:
        UsageError: ``data_root`` missing for real data.
        DataError: a synthetic world asked for in a folder that holds other things.
    """
    # Just the fields resolve_data_root reads; it writes the default world's folder into them.
    args = argparse.Namespace(
        dataset=preset.dataset, data_root=data_root,
        synthetic_locations=preset.synthetic_locations,
        synthetic_samples=preset.synthetic_samples, synthetic_size=preset.synthetic_size,
        synthetic_seed=preset.synthetic_seed,
        **{f"synthetic_{name}": value for name, value in preset.world_options().items()})
    resolve_data_root(args, DistContext())
    return str(Path(args.data_root).resolve())


def train_and_score(specs: Sequence[RunSpec], setup: Setup,
                    score: Callable[[RunSpec, Setup], Scored]) -> List[Scored]:
    """Train (or reuse) every run (:func:`train_run`) and score it, ``setup.jobs`` at a time.

    With several jobs, teachers start first and a distillation run starts its training only once
    its teacher (:attr:`Experiment.teacher` of its seed) is done; a failed run does not stop the
    others.

    Args:
        specs: the runs.
        setup: what they share.
        score: scores one trained run (``training.experiments.scoring.score_run``).

    Returns:
        One score per spec, in the order of ``specs``.

    Raises:
        TrainingError, UsageError, DataError: the first failure, in the order of ``specs``, once
            every run has finished (a distillation run whose teacher failed fails with it).
    """
    def trained_and_scored(spec: RunSpec) -> Scored:
        train_run(spec, setup)
        return score(spec, setup)

    if setup.jobs == 1:
        return [trained_and_scored(spec) for spec in specs]
    teachers: Dict[Tuple[int, str], Future] = {}

    def after_teacher(spec: RunSpec) -> Scored:
        teacher = teachers.get((spec.seed, spec.experiment.teacher))
        if teacher is not None:
            teacher.result()  # its failure is this run's
        return trained_and_scored(spec)

    # Teachers first, distillation last: a run that waits on its teacher holds a worker, and the
    # teachers it waits on were all started before it.
    order = sorted(specs, key=lambda spec: (spec.experiment.kind == "kd",
                                            spec.experiment.kind != "teacher"))
    with ThreadPoolExecutor(max_workers=setup.jobs) as pool:
        futures: Dict[int, Future] = {}
        for spec in order:
            futures[id(spec)] = pool.submit(after_teacher if spec.experiment.kind == "kd"
                                            else trained_and_scored, spec)
            if spec.experiment.kind == "teacher":
                teachers[(spec.seed, spec.experiment.name)] = futures[id(spec)]
    failures = [futures[id(spec)].exception() for spec in specs]
    first_failure = next((error for error in failures if error is not None), None)
    if first_failure is not None:
        raise first_failure
    return [futures[id(spec)].result() for spec in specs]
