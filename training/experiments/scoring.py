"""Scoring the table's rows: each trained run's test evaluation (reused while it still holds for
the checkpoint and test split on disk), its costs, the two depth-prior reference rows, and the
mean ± std over seeds. A preset with :attr:`Preset.dense_truth` also scores every run against
the simulated world's complete depth (``evaluate.py --truth dense``): over every pixel, and
inside the sensor's holes alone.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.sample import DEPTH, META, VALID
from training.checkpoint import METRICS_FILE, Checkpoint, load_checkpoint, load_model
from training.data import resolve_data_root, split_fingerprint
from training.device import DistContext
from training.errors import TrainingError
from training.experiments.presets import BEST, LAST, REFERENCES
from training.experiments.runs import RunSpec, Setup
from training.identity import checkpoint_fingerprint
from training.metrics import METRIC_NAMES, OFFICIAL, PROTOCOLS, MultiProtocolMetrics
from training.tracking import progress

# Where a run's test evaluation goes (``eval_*`` folders are what ``--overwrite`` clears with
# the run); against the dense truth, the same name plus DENSE_SUFFIX.
EVALUATION_DIRS = {BEST: "eval_test", LAST: "eval_test_last"}
DENSE_SUFFIX = "_dense"
EVALUATE_SCRIPT = "evaluate.py"
# Every row is scored on the ground truth of one recipe, whatever recipe its model reads: the
# official recipe's bilinear resize blends holes into valid depth and counts +inf as valid, so
# scoring the official U-Net on its own recipe's depth would score it on other pixels and values.
TABLE_GROUND_TRUTH = "default"

# One line of results.csv (a run or a reference row), or of the summary over seeds.
Row = Dict[str, Any]


def run_test_fingerprint(run_args: Dict[str, Any], truth: str = "sensor") -> str:
    """``data_fingerprint`` of the test split a run's saved arguments read, with ``truth``'s
    depth."""
    args = argparse.Namespace(**run_args)
    return split_fingerprint(args, resolve_data_root(args, DistContext()), "test", truth)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object file, or ``None`` when it is missing or not valid JSON (then rewritten)."""
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def evaluate_run(spec: RunSpec, setup: Setup, checkpoint: Checkpoint,
                 truth: str = "sensor") -> Dict[str, Any]:
    """Test metrics of the run's scored checkpoint (``evaluate.py``, on the ground truth of
    :data:`TABLE_GROUND_TRUTH`), reused while the recorded checkpoint and test-split fingerprints
    match the files now on disk, the ground truth is that recipe's and ``truth``'s depth, the
    predictions were not mirror-averaged and every protocol of
    :data:`training.metrics.PROTOCOLS` was scored.

    Args:
        spec: the trained run.
        setup: launches ``evaluate.py`` (its device, threads and log).
        checkpoint: the run's scored checkpoint, loaded (``spec.scored_checkpoint``).
        truth: ``sensor`` depth maps or the world's ``dense`` (complete) depth.

    Returns:
        The ``metrics.json`` contents.

    Raises:
        TrainingError: ``evaluate.py`` failed or wrote no metrics.
    """
    checkpoint_path = spec.scored_checkpoint
    wanted = {"checkpoint_fingerprint": checkpoint_fingerprint(checkpoint),
              "data_fingerprint": run_test_fingerprint(checkpoint["args"], truth),
              "ground_truth": TABLE_GROUND_TRUTH}
    suffix = DENSE_SUFFIX if truth == "dense" else ""
    out = spec.run_dir / (EVALUATION_DIRS[spec.experiment.scored] + suffix)
    result = read_json(out / METRICS_FILE)
    if (result is not None and all(result.get(k) == v for k, v in wanted.items())
            and result.get("truth", "sensor") == truth  # evaluations predating truth: sensor
            and not result.get("mirror_average")
            and set(PROTOCOLS) <= set(protocol_results(result))):
        print(f"[reuse] {out}: evaluation of this checkpoint on this test split and ground "
              "truth")
        return result
    setup.launch(EVALUATE_SCRIPT, [
        "--checkpoint", str(checkpoint_path), "--split", "test", "--out", str(out),
        "--batch_size", str(4 * setup.preset.batch_size), "--num_workers", "0",
        # gt > 0 whatever threshold the run validated with: the table's primary protocol.
        "--device", setup.device, "--valid_threshold", "0", "--ground_truth", TABLE_GROUND_TRUTH,
        "--truth", truth, *setup.thread_flags()],
        setup.log(spec, "evaluate" + suffix))
    result = read_json(out / METRICS_FILE)
    if result is None:
        raise TrainingError(f"{out / METRICS_FILE}: {EVALUATE_SCRIPT} wrote no metrics")
    return result


def protocol_results(result: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Protocol name → metrics from an ``evaluate.py`` ``metrics.json``.

    The top-level metrics are those of ``result["protocol"]`` (the official protocol when it has
    no name); ``result["protocols"]``, when present, maps further protocol names to their
    metrics.
    """
    primary = (result.get("protocol") or {}).get("name", OFFICIAL)
    found = {primary: {m: result.get(m) for m in METRIC_NAMES}}
    for name, values in (result.get("protocols") or {}).items():
        if isinstance(values, dict) and "rmse" in values:
            found[name] = {m: values.get(m) for m in METRIC_NAMES}
    return found


def metric_column(metric: str, protocol: str) -> str:
    """CSV column of a metric: the bare name under the official protocol, else
    ``<metric>@<protocol>`` (e.g. ``rmse@bv2_min0.5``)."""
    return metric if protocol == OFFICIAL else f"{metric}@{protocol}"


METRIC_COLUMNS = [metric_column(m, p) for p in PROTOCOLS for m in METRIC_NAMES]
# Against the dense truth (gt > 0): every pixel, and the pixels of the sensor's holes alone.
DENSE_RMSE, HOLES_RMSE = "rmse_dense", "rmse_holes"
DENSE_COLUMNS = [DENSE_RMSE, HOLES_RMSE]
# The scored checkpoint's validation RMSE: every choice among rows ("best KD") reads this column,
# never a test one.
VAL_RMSE = "val_rmse"


def metric_cells(per_protocol: Dict[str, Dict[str, Optional[float]]]) -> Dict[str, Any]:
    """The metric columns of a row (``None`` where a protocol was not scored)."""
    return {metric_column(m, p): per_protocol.get(p, {}).get(m)
            for p in PROTOCOLS for m in METRIC_NAMES}


def training_seconds(run_dir: Path) -> float:
    """Wall time of all the run's epochs, in seconds (its ``metrics.json`` history)."""
    history = (read_json(run_dir / METRICS_FILE) or {}).get("history", [])
    return sum(epoch["seconds"] for epoch in history)


def parameter_count(checkpoint: Checkpoint) -> int:
    """Trainable parameters of the checkpoint's model (buffers such as BatchNorm statistics
    excluded)."""
    model = load_model(checkpoint)
    return sum(p.numel() for p in model.parameters())


def score_run(spec: RunSpec, setup: Setup) -> Row:
    """The CSV row of a trained run: its test metrics under every protocol and its costs.

    Args:
        spec: the trained run.
        setup: as for :func:`evaluate_run`.

    Returns:
        Experiment, label, seed, scored checkpoint, ``val_rmse`` (the scored checkpoint's
        validation RMSE, metres: what choices among rows read), every :data:`METRIC_COLUMNS`
        cell, ``n_images``, ``params``, ``train_seconds`` and ``run_dir``; with the preset's
        :attr:`Preset.dense_truth`, the :data:`DENSE_COLUMNS` too.
    """
    checkpoint = load_checkpoint(spec.scored_checkpoint)
    result = evaluate_run(spec, setup, checkpoint)
    row = {"experiment": spec.experiment.name, "label": spec.experiment.label,
           "seed": spec.seed,
           "scored": f"{spec.experiment.scored} (epoch {checkpoint['epoch']})",
           "val_rmse": checkpoint["metrics"].get("rmse"),
           **metric_cells(protocol_results(result)), "n_images": result.get("n_images"),
           "params": parameter_count(checkpoint),
           "train_seconds": round(training_seconds(spec.run_dir), 2), "run_dir": str(spec.run_dir)}
    if setup.preset.dense_truth:
        dense = evaluate_run(spec, setup, checkpoint, truth="dense")
        row.update({DENSE_RMSE: dense.get("rmse"), HOLES_RMSE: dense["holes"].get("rmse")})
    return row


def depth_priors(train_set: Dataset,
                 batch_size: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean depth map of the training split, overall and per location.

    Each pixel is the mean of the valid ground truth there (metres); a pixel never valid in the
    (location's) training samples gets the overall mean valid depth.

    Returns:
        ``(overall, by_location)``: (1, H, W) maps in metres.
    """
    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, torch.Tensor] = {}
    for batch in progress(DataLoader(train_set, batch_size=batch_size), True, "depth priors"):
        for i, location in enumerate(batch[META]["location"]):
            valid = batch[VALID][i].double()
            sums[location] = sums.get(location, 0) + batch[DEPTH][i].double() * valid
            counts[location] = counts.get(location, 0) + valid
    total_sum, total_count = sum(sums.values()), sum(counts.values())
    fallback = total_sum.sum() / total_count.sum()

    def mean_map(depth_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, depth_sum / count.clamp(min=1), fallback).float()

    return mean_map(total_sum, total_count), {k: mean_map(sums[k], counts[k]) for k in sums}


def evaluate_prior(test_set: Dataset, prior: Callable[[str], torch.Tensor],
                   batch_size: int) -> Tuple[Dict[str, Dict[str, Optional[float]]], int]:
    """Score a per-location constant prediction on the test split under every protocol.

    Args:
        test_set: the test split.
        prior: location name → (1, H, W) depth map in metres.
        batch_size: samples per batch.

    Returns:
        ``(protocol name → metrics, images scored under the official protocol)``.
    """
    metrics = MultiProtocolMetrics(tuple(PROTOCOLS))
    for batch in DataLoader(test_set, batch_size=batch_size):
        prediction = torch.stack([prior(location) for location in batch[META]["location"]])
        metrics.update(prediction, batch[DEPTH])
    results = metrics.compute_all()
    return results, int(results[OFFICIAL]["n_images"])


def reference_rows(train_set: Dataset, test_set: Dataset, batch_size: int) -> List[Row]:
    """The two depth-prior rows, fitted on ``train_set`` and scored on ``test_set``."""
    overall, by_location = depth_priors(train_set, batch_size)
    priors = {"mean_depth_map": lambda location: overall,
              "location_mean_depth_map": lambda location: by_location.get(location, overall)}
    rows = []
    for name, prior in priors.items():
        results, n_images = evaluate_prior(test_set, prior, batch_size)
        rows.append({"experiment": name, "label": REFERENCES[name], "seed": "",
                     **metric_cells(results), "n_images": n_images})
    return rows


def summarise(rows: List[Row], order: Sequence[str]) -> List[Row]:
    """Per experiment, in ``order``: label, seed count, scored checkpoint, mean and sample std
    (``None`` with one seed) of every metric column and of ``train_seconds``, and ``params``."""
    summary = []
    for name in order:
        runs = [row for row in rows if row["experiment"] == name]
        if not runs:
            continue
        entry: Row = {"experiment": name, "label": runs[0]["label"], "n": len(runs),
                      "scored": runs[0].get("scored", ""), "params": runs[0].get("params")}
        for column in [VAL_RMSE, *METRIC_COLUMNS, *DENSE_COLUMNS, "train_seconds"]:
            values = [row[column] for row in runs if row.get(column) is not None]
            entry[column] = statistics.fmean(values) if values else None
            entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary

