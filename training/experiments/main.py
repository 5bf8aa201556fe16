"""``run_experiments.py``: its command line, and the table from runs to pictures."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from common.argtypes import ArgumentParser, positive_int
from common.errors import UsageError, user_errors
from training import cli
from training.data import REPO_ROOT, build_dataset, resolve_data_root
from training.device import DistContext, resolve_device, threads_per_job
from training.experiments import presets, report, runs, scoring


def build_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """Every flag of ``run_experiments.py``.

    Args:
        description: the script's docstring, shown by ``--help``.
    """
    parser = ArgumentParser(description)
    parser.add_argument("--preset", choices=tuple(presets.PRESETS), default="quick",
                        help="quick: the README's main command, synthetic world, CPU; standard: "
                             "the config files' benchmark (128x128, 20 epochs, 3 seeds, every KD "
                             "variant); development / report: the claims' rows at 64x64 on the "
                             "development / report worlds; labels, labels_benchmark: "
                             "label-scarce distillation; full: real BatVision V2 on a GPU "
                             "(run_experiments.py's description says more)")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="seeds 0..N-1 per trained experiment (None: the preset's: "
                             + _preset_values("seeds") + ")")
    parser.add_argument("--experiments", default=None,
                        help="comma-separated subset of the preset's rows (None: all; the "
                             "teacher is added when a KD row is chosen). Rows: "
                             + "; ".join(f"{name}: {', '.join(e.name for e in p.experiments)}"
                                         for name, p in presets.PRESETS.items() if name != "full")
                             + "; full: those of standard")
    parser.add_argument("--config_dir", default=None,
                        help="folder of the config files (teacher.yaml, student.yaml, kd.yaml, "
                             "official_unet.yaml); None: the preset's: "
                             + _preset_values("config_dir"))
    parser.add_argument("--data_root", default=None,
                        help="real data: the dataset root (required for full). synthetic: the "
                             "folder holding the world (default .cache/synthetic/<world>/)")
    parser.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    parser.add_argument("--cache_dir", default=None,
                        help="preprocessed-sample cache shared by every run (default <out>/cache)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--on_mismatch", choices=runs.MISMATCH_ACTIONS, default="retrain",
                        help="a run folder trained with other settings, data or teacher than "
                             "asked now: retrain it from scratch (--overwrite), or stop with one "
                             "line listing the differences")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="runs trained at once (each its own process; on a GPU several "
                             "small runs share it well; on a CPU they share the free cores out, "
                             "--threads free // jobs); above 1 each run's output goes to "
                             "<out>/logs/ instead of the terminal")
    parser.add_argument("--num_pictures", type=positive_int, default=4,
                        help="test samples in pictures.png")
    sizes = parser.add_argument_group(
        "size overrides", "replace the preset's value (default: keep it, shown per preset), "
                          "e.g. for a tiny smoke run")
    for field, (kind, meaning) in presets.SIZE_FIELDS.items():
        sizes.add_argument(f"--{field}", type=kind, default=None,
                           help=f"{meaning}; {_preset_values(field)}")
    return parser


def _preset_values(field: str) -> str:
    """``quick: 64, standard: 128, full: 256`` for a :class:`Preset` field, for --help."""
    return ", ".join(f"{name}: {getattr(preset, field)}"
                     for name, preset in presets.PRESETS.items())


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, by default ``results/<preset>``."""
    return Path(args.out or Path("results") / args.preset)


def make_setup(args: argparse.Namespace, launch: runs.Launcher) -> runs.Setup:
    """What every run of this invocation shares (generates the synthetic world when absent).

    Args:
        args: parsed :func:`build_parser` flags.
        launch: runs a script (:func:`training.experiments.runs.run_script`).

    Returns:
        The :class:`training.experiments.runs.Setup`.

    Raises:
        UsageError: an unknown row in ``--experiments``, or no ``--data_root`` for real data.
    """
    preset = presets.resolve_preset(args)
    out = output_folder(args)
    companion = None
    if any(e.companion_world for e in preset.experiments):
        if preset.dataset != "synthetic":
            raise UsageError(f"the {args.preset} preset trains a teacher on a companion world, "
                             "which only the synthetic dataset has")
        companion = runs.world_root(preset.companion(), None)
    return runs.Setup(preset=preset, config_dir=REPO_ROOT / preset.config_dir,
                      data_root=runs.world_root(preset, args.data_root),
                      companion_root=companion,
                      cache_dir=Path(args.cache_dir) if args.cache_dir else out / "cache",
                      device=args.device, runs_dir=out / "runs", on_mismatch=args.on_mismatch,
                      launch=launch, jobs=args.jobs, logs_dir=out / "logs",
                      threads=threads_per_job(args.jobs, args.device))


def run_table(args: argparse.Namespace, launch: runs.Launcher, command: str) -> Path:
    """Train (or reuse) and score every run of the preset, then write the table and pictures.

    Args:
        args: parsed :func:`build_parser` flags.
        launch: runs a script (:func:`training.experiments.runs.run_script`).
        command: the invocation, quoted in results.md.

    Returns:
        The output folder.
    """
    started = time.time()
    setup, out = make_setup(args, launch), output_folder(args)
    preset = setup.preset
    specs = [runs.run_spec(e, seed, setup)
             for seed in range(preset.seeds) for e in preset.experiments]
    for spec in specs:  # every config file and flag checked before hours of training
        cli.parse_script_argv(spec.experiment.kind, spec.argv)

    rows = runs.train_and_score(specs, setup, scoring.score_run)
    first = {spec.experiment.name: spec for spec in specs if spec.seed == 0}
    reference_spec = first.get(presets.AUDIO_ONLY, specs[0])
    data_args = cli.parse_script_argv(reference_spec.experiment.kind, reference_spec.argv)
    root = resolve_data_root(data_args, DistContext())
    batch = 4 * preset.batch_size
    rows += scoring.reference_rows(*(build_dataset(data_args, root, split, use_rgb=False,
                                                   ground_truth=scoring.TABLE_GROUND_TRUTH)
                                     for split in ("train", "test")), batch)

    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "results.csv", rows)
    summary = scoring.summarise(
        rows, [e.name for e in preset.experiments] + list(presets.REFERENCES))
    settings = report.run_settings({name: spec.run_dir for name, spec in first.items()})
    commands = {name: runs.shown_command(spec.script, spec.argv) for name, spec in first.items()}
    report.write_markdown(out / "results.md", summary, preset, settings, commands, command,
                          (time.time() - started) / 60, setup.jobs)
    report.save_bar_chart(out / "rmse.png", summary)
    if preset.goals == "labels":
        report.save_fraction_plot(out / "rmse_by_fraction.png", summary, preset)
    pictures = {"teacher (RGB)": presets.TEACHER, "official U-Net": presets.OFFICIAL_UNET,
                "audio only": presets.AUDIO_ONLY}
    best_kd = report.best_by_validation(
        [e for e in summary if presets.is_kd_row(e["experiment"])])
    if best_kd:
        pictures[f"best KD: {best_kd['experiment']}"] = best_kd["experiment"]
    columns = {title: first[name].scored_checkpoint
               for title, name in pictures.items() if name in first}
    if not columns:  # --experiments chose none of those rows: show the first ones it did choose
        columns = {name: spec.scored_checkpoint for name, spec in list(first.items())[:4]}
    report.save_picture_grid(out / "pictures.png", columns, args.num_pictures,
                             resolve_device(args.device))
    return out


def main(argv: Optional[Sequence[str]] = None, description: Optional[str] = None) -> None:
    """``run_experiments.py``: parse ``argv``, run the table, print it.

    Args:
        argv: arguments (``None``: ``sys.argv[1:]``).
        description: the script's docstring, for ``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(description).parse_args(argv)
    started = time.time()
    with user_errors():
        out = run_table(args, runs.run_script,
                        shlex.join(["python", "run_experiments.py", *argv]))
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, rmse.png, pictures.png "
          f"in {(time.time() - started) / 60:.1f} min")
