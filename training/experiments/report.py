"""Writing the table: the goal checks, ``results.csv``, ``results.md`` (with the settings read
from the runs), the RMSE bar chart and the grid of test pictures.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch.utils.data import default_collate

from datasets.batvision import spread_indices
from datasets.sample import AUDIO, DEPTH, RGB
from training.checkpoint import CONFIG_FILE, Checkpoint, atomic_write, load_checkpoint, load_model
from training.data import build_dataset, resolve_data_root
from training.device import DistContext
from training.experiments.presets import (
    AUDIO_ONLY, AUDIO_ROLES, DEVELOPMENT_WORLDS, EXPERIMENTS, LABEL_FRACTIONS, OFFICIAL_TUNED,
    OFFICIAL_UNET, REFERENCES, REPORT_WORLDS, RICH_TEACHER, TEACHER, Preset, is_audio_row,
    is_kd_row,
)
from training.experiments.scoring import (
    DENSE_COLUMNS, DENSE_RMSE, HOLES_RMSE, METRIC_COLUMNS, TABLE_GROUND_TRUTH, VAL_RMSE, Row,
    metric_column, read_json,
)
from training.metrics import METRIC_NAMES, OFFICIAL, PROTOCOLS, image_metrics
from training.tracking import DEPTH_CMAP, HOLE_COLOUR, masked_depth, save_figure

# Goals of the standard table: our student's RMSE as a share of the U-Net's (each recipe), the
# best KD's as a share of the official U-Net's, the student's training time as a multiple of the
# U-Net's, and a KD gain in units of the larger seed standard deviation.
AUDIO_ONLY_GOAL, BEST_KD_GOAL, TRAIN_TIME_GOAL, SEED_SPREAD_GOAL = 0.90, 0.80, 1.5, 2.0


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def best_by_validation(entries: List[Row]) -> Optional[Row]:
    """The entry of lowest mean validation RMSE (``None`` when none has one): every "best" row
    is chosen so, never by a test metric."""
    scored = [e for e in entries if e.get(VAL_RMSE) is not None]
    return min(scored, key=lambda e: e[VAL_RMSE]) if scored else None


def _chosen(entry: Row) -> str:
    return f"{entry['label']}, chosen by validation RMSE {entry[VAL_RMSE]:.3f} m"


def quick_goal_lines(by_name: Dict[str, Row]) -> List[str]:
    """The quick preset's check: the audio row of lowest validation RMSE, on test, below the
    official U-Net's test RMSE."""
    official = by_name.get(OFFICIAL_UNET)
    best = best_by_validation([e for name, e in by_name.items() if is_audio_row(name)])
    if official is None or best is None:
        return []
    beats = best["rmse"] < official["rmse"]
    return [f"- Best audio row beats the official U-Net row of the same run: "
            f"{'yes' if beats else 'no'} ({best['rmse']:.3f} vs {official['rmse']:.3f} m test "
            f"RMSE; best audio row: {_chosen(best)})."]


def ratio_lines(student: Row, unet: Row) -> List[str]:
    """Our student's test RMSE and training time as shares of the U-Net row's (the U-Net with
    its better recipe by validation)."""
    ratio = student["rmse"] / unet["rmse"]
    time_ratio = student["train_seconds"] / unet["train_seconds"]
    return [f"- Audio-only RMSE <= {AUDIO_ONLY_GOAL:.2f} x the U-Net's with its better recipe "
            f"({_chosen(unet)}): {_verdict(ratio <= AUDIO_ONLY_GOAL)} ({student['rmse']:.3f} "
            f"vs {unet['rmse']:.3f} m, ratio {ratio:.3f}).",
            f"- Audio-only training time <= {TRAIN_TIME_GOAL} x that U-Net's: "
            f"{_verdict(time_ratio <= TRAIN_TIME_GOAL)} ({student['train_seconds']:.0f} vs "
            f"{unet['train_seconds']:.0f} s, ratio {time_ratio:.2f})."]


def gain_over(row: Row, control: Row, column: str = "rmse") -> Tuple[float, Optional[float]]:
    """``(gain, bar)``: how much lower ``row``'s mean of ``column`` (test RMSE) is than
    ``control``'s, and :data:`SEED_SPREAD_GOAL` × the larger of their seed stds (``None`` with
    one seed)."""
    stds = [row.get(f"{column}_std"), control.get(f"{column}_std")]
    bar = None if None in stds else SEED_SPREAD_GOAL * max(stds)
    return control[column] - row[column], bar


def control_line(row: Row, controls: List[Row]) -> str:
    """Whether a distillation row beats every one of its controls by more than the seed bar."""
    parts, verdicts = [], []
    for control in controls:
        gain, bar = gain_over(row, control)
        verdicts.append(bar is not None and gain > bar)
        parts.append(f"vs {control['label']}: {control['rmse']:.3f} - {row['rmse']:.3f} = "
                     f"{gain:+.3f} m" + ("" if bar is None else f", bar {bar:.3f} m"))
    if any(c["rmse_std"] is None for c in [row, *controls]):
        verdict = "not measurable with one seed"
    else:
        verdict = "yes" if all(verdicts) else "no"
    return (f"- {row['label']}: beats its controls by more than {SEED_SPREAD_GOAL:g} x the "
            f"larger seed std: {verdict} ({'; '.join(parts)}).")


def standard_goal_lines(by_name: Dict[str, Row]) -> List[str]:
    """The standard table's goals (our student against the U-Net with its better recipe, the
    best KD against the official U-Net and the audio-only student, every KD row against its
    controls), each with its numbers and met / not met. "Best" is by validation RMSE."""
    official, audio = by_name.get(OFFICIAL_UNET), by_name.get(AUDIO_ONLY)
    tuned = by_name.get(OFFICIAL_TUNED)
    kd_names = [name for name in by_name if is_kd_row(name)]
    best_kd = best_by_validation([by_name[name] for name in kd_names])
    lines = []
    # The U-Net's own best recipe is whichever of its two validates better: measuring our student
    # against the weaker one would credit the architecture with a recipe's loss.
    unet = best_by_validation([row for row in (official, tuned) if row])
    if unet and audio:
        lines += ratio_lines(audio, unet)
    if official and tuned:
        lines.append(f"- The U-Net by recipe (test RMSE): {official['label']} "
                     f"{official['rmse']:.3f} m, {tuned['label']} {tuned['rmse']:.3f} m.")
    if official and best_kd:
        ratio = best_kd["rmse"] / official["rmse"]
        lines.append(f"- Best KD RMSE <= {BEST_KD_GOAL:.2f} x the official U-Net's: "
                     f"{_verdict(ratio <= BEST_KD_GOAL)} ({best_kd['rmse']:.3f} vs "
                     f"{official['rmse']:.3f} m, ratio {ratio:.3f}; best KD: "
                     f"{_chosen(best_kd)}).")
    if audio and best_kd:
        gain, bar = gain_over(best_kd, audio)
        if bar is None:
            lines.append(f"- KD gain larger than {SEED_SPREAD_GOAL:g} x the seed spread: not "
                         f"measurable with one seed (gain {gain:.3f} m).")
        else:
            lines.append(f"- KD gain larger than {SEED_SPREAD_GOAL:g} x the larger seed std: "
                         f"{_verdict(gain > bar)} (gain {audio['rmse']:.3f} - "
                         f"{best_kd['rmse']:.3f} = {gain:.3f} m vs {bar:.3f} m, "
                         f"{audio['n']} seeds; best KD: {_chosen(best_kd)}).")
    for name in kd_names:
        controls = [by_name[c] for c in EXPERIMENTS[name].controls if c in by_name]
        if controls:
            lines.append(control_line(by_name[name], controls))
    return lines


# Goals of the labels table: at 10 % labelled, the strict KD student >= 20 % below the audio-only
# one and within 1.10 x the fully labelled audio-only student; with no label at all, the
# teacher-rich KD student within 1.25 x it.
SCARCE_FRACTION, SCARCE_GAIN_GOAL, SCARCE_RATIO_GOAL, NO_LABEL_RATIO_GOAL = 0.1, 0.20, 1.10, 1.25


def labels_goal_lines(by_name: Dict[str, Row]) -> List[str]:
    """The labels table's goals (each with its numbers, met / not met, or what is missing)."""
    tag = f"f{SCARCE_FRACTION:g}"
    audio, full = by_name.get(f"audio_only_{tag}"), by_name.get(AUDIO_ONLY)
    lines = []
    for teacher in ("strict", "rich"):
        kd = by_name.get(f"kd_{teacher}_{tag}")
        if kd and audio:
            share = 1 - kd["rmse"] / audio["rmse"]
            gain, bar = gain_over(kd, audio)
            past_bar = bar is not None and gain > bar
            lines.append(
                f"- {kd['label']}: >= {SCARCE_GAIN_GOAL:.0%} below {audio['label']} and past "
                f"{SEED_SPREAD_GOAL:g} x the larger seed std: "
                f"{_verdict(share >= SCARCE_GAIN_GOAL and past_bar)} ({kd['rmse']:.3f} vs "
                f"{audio['rmse']:.3f} m, {share:.1%} below"
                + ("; one seed, no spread" if bar is None
                   else f"; gain {gain:.3f} vs bar {bar:.3f} m") + ").")
        if kd and full:
            ratio = kd["rmse"] / full["rmse"]
            lines.append(f"- {kd['label']}: within {SCARCE_RATIO_GOAL:.2f} x the fully labelled "
                         f"audio-only student: {_verdict(ratio <= SCARCE_RATIO_GOAL)} "
                         f"({kd['rmse']:.3f} vs {full['rmse']:.3f} m, ratio {ratio:.3f}).")
    no_label = by_name.get("kd_rich_f0")
    if no_label and full:
        ratio = no_label["rmse"] / full["rmse"]
        lines.append(f"- {no_label['label']}: within {NO_LABEL_RATIO_GOAL:.2f} x the fully "
                     f"labelled audio-only student: {_verdict(ratio <= NO_LABEL_RATIO_GOAL)} "
                     f"({no_label['rmse']:.3f} vs {full['rmse']:.3f} m, ratio {ratio:.3f}).")
    for kd_name, audio_name in ((f"kd_strict_{tag}", f"audio_only_{tag}"),
                                (f"kd_rich_{tag}", f"audio_only_{tag}"),
                                ("kd_strict_f1", AUDIO_ONLY)):
        lines += holes_lines(by_name.get(kd_name), by_name.get(audio_name))
    return lines


def holes_lines(kd: Optional[Row], audio: Optional[Row]) -> List[str]:
    """Whether a KD row beats its audio-only control inside the sensor's holes (dense truth; a
    gain past :data:`SEED_SPREAD_GOAL` x the larger seed std), or nothing when either row or
    the dense scoring is missing."""
    if not kd or not audio or kd.get(HOLES_RMSE) is None or audio.get(HOLES_RMSE) is None:
        return []
    gain, bar = gain_over(kd, audio, HOLES_RMSE)
    beats = bar is not None and gain > bar
    return [f"- Inside the sensor's holes (dense truth), {kd['label']} beats {audio['label']}: "
            f"{_verdict(beats)} ({kd[HOLES_RMSE]:.3f} vs {audio[HOLES_RMSE]:.3f} m; "
            + ("one seed, no spread" if bar is None else f"gain {gain:.3f} vs bar {bar:.3f} m")
            + ")."]


def goal_lines(summary: List[Row], goals: str) -> List[str]:
    """The preset's goal checks plus how many audio rows beat the per-location mean depth map.

    Args:
        summary: :func:`training.experiments.scoring.summarise` of the table.
        goals: ``quick``, ``standard`` or ``labels`` (:attr:`Preset.goals`).

    Returns:
        One markdown bullet per check, each with its numbers.
    """
    by_name = {entry["experiment"]: entry for entry in summary}
    lines = {"quick": quick_goal_lines, "standard": standard_goal_lines,
             "labels": labels_goal_lines}[goals](by_name)
    prior = by_name.get("location_mean_depth_map")
    audio = [e for name, e in by_name.items() if is_audio_row(name)]
    if prior and audio:
        below = [e for e in audio if e["rmse"] < prior["rmse"]]
        lines.append(f"- Audio rows below the per-location mean depth map ({prior['rmse']:.3f} m):"
                     f" {len(below)} of {len(audio)}.")
    return lines


def write_csv(path: Path, rows: List[Row]) -> None:
    """``results.csv``: one line per run or reference row (rmse, mae in metres; every metric
    under each protocol, see :func:`metric_column`)."""
    dense = [c for c in DENSE_COLUMNS if any(row.get(c) is not None for row in rows)]
    columns = ["experiment", "label", "seed", "scored", VAL_RMSE, *METRIC_COLUMNS, *dense,
               "n_images", "params", "train_seconds", "run_dir"]
    lines = [{k: ("" if row.get(k) is None else row[k]) for k in columns} for row in rows]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(lines)

    atomic_write(path, write)


def _cell(entry: Row, column: str, digits: int = 3) -> str:
    value, std = entry.get(column), entry.get(f"{column}_std")
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# results.md columns: every official metric, then the headline metrics under the other protocols.
TABLE_COLUMNS = [metric_column(m, OFFICIAL) for m in ("rmse", "abs_rel", "delta1", "mae", "log10")]
TABLE_COLUMNS += [metric_column(m, p) for p in PROTOCOLS if p != OFFICIAL
                  for m in ("rmse", "abs_rel", "delta1")]


DENSE_TITLES = {DENSE_RMSE: "rmse (dense truth: every pixel, holes included)",
                HOLES_RMSE: "rmse (dense truth, inside the sensor's holes)"}


def _column_title(column: str) -> str:
    if column in DENSE_TITLES:
        return DENSE_TITLES[column]
    metric, _, protocol = column.partition("@")
    return metric if not protocol else f"{metric} ({PROTOCOLS[protocol].describe()})"


def _format_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def recorded_settings(run_dir: Path) -> Dict[str, Any]:
    """The settings a run recorded in its ``config.json``: the flags of its identity (so no
    operational flag) except the seed and the model group's flags, which the model's own
    constructor arguments replace (a flag the model ignores is not shown).

    Returns:
        flag → value, plus ``model`` → ``name(arg=value, ...)``; empty without a config.json.
    """
    config = read_json(run_dir / CONFIG_FILE) or {}
    groups = (config.get("identity") or {}).get("settings", {})
    settings = {flag: value for group, flags in groups.items() if group != "model"
                for flag, value in flags.items() if flag not in ("seed", "kind")}
    model = config.get("model")
    if model:
        arguments = ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(model["config"].items()))
        settings["model"] = f"{model['name']}({arguments})"
    return settings


def run_settings(run_dirs: Dict[str, Path]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """:func:`recorded_settings` of each run, split into the settings every run shares and those
    of each run.

    Args:
        run_dirs: experiment name → run folder.

    Returns:
        ``(common, own)``: flag → value, and experiment → {flag → value} for the flags not in
        ``common``.
    """
    recorded = {name: recorded_settings(run_dir) for name, run_dir in run_dirs.items()}
    shared = set.intersection(*map(set, recorded.values())) if recorded else set()
    common = {k: next(iter(recorded.values()))[k] for k in sorted(shared)
              if len({json.dumps(values[k], sort_keys=True) for values in recorded.values()}) == 1}
    own = {name: {k: v for k, v in sorted(values.items()) if k not in common}
           for name, values in recorded.items()}
    return common, own


def write_markdown(path: Path, summary: List[Row], preset: Preset,
                   settings: Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]],
                   commands: Dict[str, str], command: str, minutes: float,
                   jobs: int = 1) -> None:
    """``results.md``: how it was made, the protocols, the table, the goal checks, the settings
    read from the runs and the seed-0 commands.

    Args:
        path: file to write.
        summary: :func:`training.experiments.scoring.summarise` of the table.
        preset: the preset run (description, seeds, goals).
        settings: :func:`run_settings` of the seed-0 runs.
        commands: experiment → its seed-0 command line.
        command: the invocation that made the table.
        minutes: how long this invocation took.
        jobs: runs trained at once.
    """
    protocols = "; ".join(f"`{name}`: {p.describe()}" for name, p in PROTOCOLS.items())
    labels = {e["experiment"]: e["label"] for e in summary}
    columns = TABLE_COLUMNS + [c for c in DENSE_COLUMNS
                               if any(e.get(c) is not None for e in summary)]
    common, own = settings
    trained = [e for e in summary if e["experiment"] not in REFERENCES]
    lines = [
        f"# Experiment table: {preset.description}", "",
        f"Made by `{command}` ({minutes:.1f} min for this invocation; runs reused from earlier "
        "invocations are not counted)."
        + (f" Runs trained {jobs} at once: their training times include that contention."
           if jobs > 1 else ""), "",
        *([world_line(preset), ""] if preset.dataset == "synthetic" else []),
        "Test split (`val rmse`: the scored checkpoint's validation RMSE, by which every "
        f"\"best\" row is chosen); mean ± sample std over {preset.seeds} seed(s) (no ± with one "
        "seed). Each trained run is scored with `evaluate.py` at the checkpoint its row names: "
        "`best` = lowest validation RMSE, `last` = final epoch (the official recipe's rows: our "
        "contract keeps no validation choice for that recipe). The reference rows predict the "
        "training split's mean depth map (overall / of the sample's location), scored by the "
        "same metric code. Every row is scored on the "
        f"ground truth of the `{TABLE_GROUND_TRUTH}` recipe (depth resized by nearest neighbour, "
        "+inf invalid), whatever recipe its model reads.", "",
        f"Metric protocols (valid ground-truth pixels): {protocols}. Per image, then mean over "
        "images; metres; no median scaling; predictions floored at 1 mm inside log10 and delta "
        "only. rmse, mae in metres; abs_rel, log10 unitless; delta1 = share of pixels with "
        "max(gt/pred, pred/gt) < 1.25.", "",
        *(["Dense truth (simulated worlds only): the same runs scored against the world's "
           "complete depth (gt > 0), every pixel and the sensor's holes alone (`evaluate.py "
           "--truth dense`); the reference rows are not scored there.", ""]
          if len(columns) > len(TABLE_COLUMNS) else []),
        "| experiment | seeds | scored | val rmse | "
        + " | ".join(map(_column_title, columns)) + " | params | train s |",
        "|" + "---|" * (6 + len(columns)),
    ]
    for entry in summary:
        reference = entry["experiment"] in REFERENCES
        params = entry.get("params")
        lines.append(
            f"| {entry['label']} | {'–' if reference else entry['n']} | "
            f"{'–' if reference else entry['scored']} | {_cell(entry, VAL_RMSE)} | "
            + " | ".join(_cell(entry, c) for c in columns)
            + f" | {'–' if params is None else f'{params:,}'} | "
            + ("–" if reference else _cell(entry, "train_seconds", 0)) + " |")
    lines += ["", "## Goals", "", *goal_lines(summary, preset.goals), "",
              "## Settings read from the runs (seed 0's config.json)", "",
              "Every run: " + ", ".join(f"{k}={_format_value(v)}" for k, v in common.items()),
              ""]
    lines += [f"- {labels.get(name, name)}: "
              + ", ".join(f"{k}={_format_value(v)}" for k, v in values.items())
              for name, values in own.items() if name in labels]
    lines += ["", "## Commands (seed 0)", ""]
    lines += [f"- {labels.get(e['experiment'])}: `{commands[e['experiment']]}`" for e in trained
              if e["experiment"] in commands]
    lines += ["", "![test RMSE](rmse.png)", "", "![test samples](pictures.png)", ""]
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def world_line(preset: Preset) -> str:
    """What the preset's synthetic world is for (:data:`DEVELOPMENT_WORLDS`,
    :data:`REPORT_WORLDS`), and where it is not the default world."""
    seed = preset.synthetic_seed
    flags = [f"`--synthetic_{name} {value}`" for name, value in preset.world_flags().items()]
    if seed in DEVELOPMENT_WORLDS:
        purpose = "a development world: choices are made here, on validation RMSE"
    elif seed in REPORT_WORLDS:
        purpose = "a report world, fixed in advance: no choice was made on it"
    else:
        purpose = "neither a development nor a report world"
    return (f"World: `--synthetic_seed {seed}`, {purpose}."
            + (f" Not the default world: {', '.join(flags)}." if flags else ""))


def save_bar_chart(path: Path, summary: List[Row]) -> None:
    """Horizontal bars of test RMSE (official protocol, metres) with ± std over seeds; the
    teacher orange, the official U-Net green, references grey."""
    colour = {TEACHER: "tab:orange", OFFICIAL_UNET: "tab:green"}
    figure = Figure(figsize=(8, 0.5 * len(summary) + 1.2))
    ax = figure.subplots()
    positions = np.arange(len(summary))[::-1]
    colours = ["tab:grey" if e["experiment"] in REFERENCES else
               colour.get(e["experiment"], "tab:blue") for e in summary]
    errors = [e["rmse_std"] or 0.0 for e in summary]
    ax.barh(positions, [e["rmse"] for e in summary], xerr=errors, color=colours, capsize=3)
    ax.set_yticks(positions, [e["label"] for e in summary])
    ax.set_xlabel("test RMSE (m, gt > 0), lower is better")
    for y, entry in zip(positions, summary):
        ax.text(entry["rmse"], y, f" {entry['rmse']:.3f}", va="center")
    save_figure(figure, path)


def fraction_lines(summary: List[Row],
                   preset: Preset) -> Dict[str, List[Tuple[float, Row]]]:
    """The audio rows of a labels table grouped into lines of RMSE against label fraction:
    ``audio only``, ``KD, strict teacher``, ``KD, teacher-rich``, each sorted by fraction
    (:meth:`Experiment.fraction_in` ``preset``)."""
    rows = {e.name: e for e in preset.experiments}
    lines: Dict[str, List[Tuple[float, Row]]] = {}
    for entry in summary:
        experiment = rows.get(entry["experiment"])
        if experiment is None or experiment.role not in AUDIO_ROLES:
            continue
        if experiment.role == "student":
            line = "audio only"
        else:
            rich = experiment.teacher == RICH_TEACHER
            line = "KD, teacher-rich" if rich else "KD, strict teacher"
        lines.setdefault(line, []).append((experiment.fraction_in(preset), entry))
    return {name: sorted(points, key=lambda point: point[0]) for name, points in lines.items()}


def save_fraction_plot(path: Path, summary: List[Row], preset: Preset) -> None:
    """Test RMSE (metres) against label fraction, one line per row family, the seed std shaded:
    on the sensor's depth (official protocol) and, where the runs were scored there, on the dense
    truth and inside the sensor's holes, one panel each."""
    panels = [("rmse", "sensor depth (gt > 0)")] + [
        (column, DENSE_TITLES[column].replace("rmse (", "").rstrip(")"))
        for column in DENSE_COLUMNS if any(e.get(column) is not None for e in summary)]
    figure = Figure(figsize=(6 * len(panels), 4.5))
    for ax, (column, title) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, points in fraction_lines(summary, preset).items():
            points = [(f, e) for f, e in points if e.get(column) is not None]
            x = np.array([fraction for fraction, _ in points])
            y = np.array([entry[column] for _, entry in points])
            spread = np.array([entry.get(f"{column}_std") or 0.0 for _, entry in points])
            ax.plot(x, y, marker="o", label=name)
            ax.fill_between(x, y - spread, y + spread, alpha=0.2)
        ax.set_title(title)
        # Linear near 0 (F = 0 has a point) and logarithmic above: the scarce shares, where the
        # rows part, would otherwise crowd into the left tenth of the axis.
        ax.set_xscale("symlog", linthresh=LABEL_FRACTIONS[0])
        ax.set_xticks([0.0, *LABEL_FRACTIONS, 1.0], ["0", *map("{:g}".format, LABEL_FRACTIONS), "1"])
        ax.set_xlabel("share of training samples with a depth label")
        ax.set_ylabel("test RMSE (m), lower is better")
        ax.legend()
    save_figure(figure, path)


def save_picture_grid(path: Path, columns: Dict[str, Path], count: int,
                      device: torch.device) -> None:
    """Rows of test samples: RGB | ground truth | one depth map per checkpoint (with its RMSE).

    Each model reads the test split as its own run did (its saved data arguments: the official
    U-Net its own recipe); the RGB comes from the first checkpoint's run, and the ground truth
    too, made by the :data:`TABLE_GROUND_TRUTH` recipe as in the table.

    Args:
        path: PNG to write.
        columns: column title → checkpoint file.
        count: number of samples, spread evenly over the split (so over its locations).
        device: where the models run.
    """
    def test_batch(checkpoint: Checkpoint, use_rgb: bool,
                   ground_truth: Optional[str] = None) -> Dict[str, Any]:
        args = argparse.Namespace(**checkpoint["args"])
        test_set = build_dataset(args, resolve_data_root(args, DistContext()), "test", use_rgb,
                                 ground_truth)
        picks = spread_indices(len(test_set), count)
        return default_collate([test_set[int(i)] for i in picks])

    checkpoints = {title: load_checkpoint(p) for title, p in columns.items()}
    shown = test_batch(next(iter(checkpoints.values())), use_rgb=True,
                       ground_truth=TABLE_GROUND_TRUTH)
    predictions: Dict[str, torch.Tensor] = {}
    for title, checkpoint in checkpoints.items():
        uses_rgb = checkpoint["model_name"] == "rgb_depth"
        batch = test_batch(checkpoint, uses_rgb)
        model = load_model(checkpoint, device, path=columns[title])
        with torch.no_grad():
            predictions[title] = model(batch[RGB if uses_rgb else AUDIO].to(device)).cpu()
    gt = shown[DEPTH]
    cmap = colormaps[DEPTH_CMAP].with_extremes(bad=HOLE_COLOUR)
    n_rows, n_columns = len(gt), 2 + len(columns)
    figure = Figure(figsize=(2.4 * n_columns, 2.4 * n_rows + 0.4))
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for row in range(n_rows):
        truth = gt[row, 0].numpy()
        norm = Normalize(0.0, float(truth.max()) or 1.0)  # per row: near rooms keep their contrast
        axes[row, 0].imshow(shown[RGB][row].permute(1, 2, 0).numpy().clip(0, 1))
        axes[row, 1].imshow(masked_depth(truth), cmap=cmap, norm=norm)
        titles = ["RGB", "ground truth (white: hole)"]
        for column, (title, depth) in enumerate(predictions.items(), start=2):
            axes[row, column].imshow(depth[row, 0].numpy(), cmap=cmap, norm=norm)
            scores, _ = image_metrics(depth[row:row + 1], gt[row:row + 1])
            titles.append(f"{title}\nRMSE {scores[0, METRIC_NAMES.index('rmse')]:.2f} m")
        for ax, title in zip(axes[row], titles):
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("test samples; depth colours per row, from 0 to its farthest ground truth")
    save_figure(figure, path)
