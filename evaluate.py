"""Evaluate a trained checkpoint on a split with the official metrics.

The model is rebuilt from the checkpoint's saved name and config, and the data from its saved
arguments (dataset, recipe, image size, max depth, valid threshold), so the numbers are computed
exactly as during validation: per image, pixels with gt > the run's --valid_threshold (unless
given here), metres, mean over images; images without a valid pixel are skipped and counted.
A checkpoint whose weights are not all finite is refused. ``--ground_truth default`` scores on
the default recipe's depth whatever recipe the run was trained on, so runs of different recipes
(the official U-Net's and ours) are scored on the same pixels and values, as the experiment
tables do. ``--mirror_average`` scores the mean of the prediction and the mirrored prediction of
the mirrored input (ears swapped, image flipped): two forward passes. ``by_depth`` in
``metrics.json`` breaks the errors down by ground-truth depth range (``--depth_ranges``), pooled
over pixels: where a model is accurate, near or far. ``--truth dense`` scores against a simulated
world's complete depth (holes included; real data have none and stop with one line) and adds
``holes`` to ``metrics.json``: the errors on the pixels where the sensor's depth map has a hole.

    python evaluate.py --checkpoint checkpoints/my_run/best_model.pth --split test
    python evaluate.py --checkpoint checkpoints/my_run --data_root /data/BatvisionV2 --out results/x

Writes ``metrics.json`` and ``per_image.csv`` to --out and prints a table. ``metrics.json``
records what was evaluated: the checkpoint's weights fingerprint, the run's identity fingerprint
and the evaluated split's data fingerprint, so a stale evaluation can be told from a current one.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from common.argtypes import ArgumentParser, non_negative_float, positive_int
from common.errors import user_errors
from datasets.recipes import RECIPES
from datasets.registry import DATASETS
from datasets.sample import DEPTH, META, SENSOR_VALID, SPLITS, TRUTHS
from training.checkpoint import (
    BEST_CHECKPOINT, EVALUATION_PREFIX, METRICS_FILE, PER_IMAGE_FILE, atomic_write,
    load_checkpoint, load_model, write_json,
)
from training.cli import thread_count, worker_count
from training.data import MODEL_INPUTS, build_dataset, resolve_data_root
from training.device import DistContext, configure_cuda_kernels, resolve_device
from training.identity import checkpoint_fingerprint
from training.metrics import (
    BV2_MIN_05, METRIC_NAMES, DepthMetrics, DepthRangeErrors, MultiProtocolMetrics,
    depth_range_edges, format_protocol_table, protocol_for,
)
from training.run import configure_cpu
from training.tasks import DepthTask, MirrorAveraged
from training.validation import validate

RUN_RECIPE = "run"
DEFAULT_DEPTH_RANGES = (1.0, 2.0, 3.0, 5.0)


def depth_ranges_flag(text: str) -> Tuple[float, ...]:
    """argparse type of ``--depth_ranges``: comma-separated increasing positive metres
    (:func:`training.metrics.depth_range_edges`)."""
    try:
        return depth_range_edges(text.split(","))
    except ValueError:                            # a non-number, or bad edges
        raise argparse.ArgumentTypeError(f"expected increasing positive metres separated by "
                                         f"commas, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file, or a run folder (its best_model.pth)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to evaluate")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dataset kind; None: the checkpoint's")
    parser.add_argument("--data_root", default=None, help="dataset root; None: the checkpoint's")
    parser.add_argument("--out", default=None,
                        help="output folder; None: <checkpoint folder>/"
                             f"{EVALUATION_PREFIX}<split>")
    parser.add_argument("--batch_size", type=positive_int, default=16,
                        help="images per forward pass")
    parser.add_argument("--num_workers", type=worker_count, default="auto",
                        help="DataLoader worker processes (auto: as the training scripts)")
    parser.add_argument("--threads", type=thread_count, default="auto",
                        help="CPU threads for torch's kernels (auto: the idle cores, as the "
                             "training scripts)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--valid_threshold", type=non_negative_float, default=None,
                        help="score pixels with ground truth > this (metres); None: the run's "
                             "own --valid_threshold, as during its validation")
    parser.add_argument("--ground_truth", choices=(RUN_RECIPE, *sorted(RECIPES)),
                        default=RUN_RECIPE,
                        help="recipe whose depth rule makes the ground truth: run: the run's own "
                             "--recipe, as during its validation; default: nearest-neighbour "
                             "resize, +inf invalid; official: bilinear resize (holes blend into "
                             "their neighbours), +inf = max depth")
    parser.add_argument("--truth", choices=TRUTHS, default="sensor",
                        help="sensor: the depth maps the dataset's CSVs name (with their "
                             "holes); dense: a simulated world's complete depth beside them "
                             "(holes scored too; metrics.json then also reports the errors "
                             "inside the sensor's holes); real data have no dense depth")
    parser.add_argument("--mirror_average", action="store_true",
                        help="score the mean of the prediction and the mirrored prediction of "
                             "the mirrored input (ears swapped, or image flipped): two forward "
                             "passes; the left-right symmetry --mirror_augment trains")
    parser.add_argument("--depth_ranges", type=depth_ranges_flag,
                        default=",".join(f"{e:g}" for e in DEFAULT_DEPTH_RANGES),
                        help="edges in metres of the ground-truth depth ranges of by_depth "
                             "(errors pooled over the pixels of each range)")
    return parser


def _checkpoint_file(spec: str) -> Path:
    path = Path(spec)
    return path / BEST_CHECKPOINT if path.is_dir() else path


def evaluate_checkpoint(
    checkpoint: "str | Path",
    split: str = "test",
    dataset: Optional[str] = None,
    data_root: Optional[str] = None,
    out_dir: "str | Path | None" = None,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str = "auto",
    valid_threshold: Optional[float] = None,
    ground_truth: str = RUN_RECIPE,
    mirror_average: bool = False,
    depth_ranges: Sequence[float] = DEFAULT_DEPTH_RANGES,
    truth: str = "sensor",
) -> Dict[str, Any]:
    """Evaluate one checkpoint; writes ``metrics.json`` and ``per_image.csv`` into ``out_dir``.

    Args:
        checkpoint: checkpoint file, or a run folder (its ``best_model.pth``).
        split: ``train``, ``val`` or ``test``.
        dataset, data_root: override the checkpoint's data (``None``: as trained).
        out_dir: output folder (default ``<checkpoint folder>/eval_<split>``).
        batch_size, num_workers: of the loader.
        device: ``auto``, ``cpu``, ``cuda``...
        valid_threshold: metres; pixels with gt above it are scored (``None``: the run's own).
        ground_truth: recipe whose depth rule makes the ground truth (``run``: the run's own).
        mirror_average: score :class:`training.tasks.MirrorAveraged` predictions.
        depth_ranges: edges (metres) of :class:`training.metrics.DepthRangeErrors`.
        truth: ``sensor`` depth maps, or a simulated world's ``dense`` (complete) depth.

    Returns:
        The metrics (:meth:`training.metrics.DepthMetrics.compute`) plus ``split``,
        ``checkpoint``, ``dataset``, ``data_root``, ``model_name``, the metric ``protocol``,
        ``protocols`` (protocol name → metrics: the run's own rule and ``bv2_min0.5``,
        gt >= 0.5 m) with their ``protocol_definitions``, ``checkpoint_fingerprint``
        (:func:`training.identity.checkpoint_fingerprint`),
        ``identity_fingerprint`` (the run identity's, ``None`` for a checkpoint without one),
        ``data_fingerprint`` (the evaluated split's), ``ground_truth`` (the recipe name whose
        depth rule was used), ``mirror_average`` and ``by_depth`` (the errors per ground-truth
        depth range), ``truth`` and, for the dense truth, ``holes`` (the metrics on the pixels
        where the sensor's map has a hole, under the run's valid-pixel rule; images without a
        hole are skipped).

    Raises:
        DataError: unreadable checkpoint or data, or a checkpoint with non-finite weights.
    """
    path = _checkpoint_file(str(checkpoint))
    saved = load_checkpoint(path)
    torch_device = resolve_device(device)
    configure_cuda_kernels(torch_device, deterministic=saved["args"].get("deterministic", False))
    model = load_model(saved, torch_device, path=path)
    args = argparse.Namespace(**saved["args"])
    args.dataset = dataset or args.dataset
    args.data_root = data_root or args.data_root
    input_key = MODEL_INPUTS[saved["model_name"]]
    ground_truth = args.recipe if ground_truth == RUN_RECIPE else ground_truth
    root = resolve_data_root(args, DistContext(), replace_world=False)
    data_set = build_dataset(args, root, split,
                             use_rgb=input_key == "rgb", ground_truth=ground_truth, truth=truth)
    loader = DataLoader(data_set, batch_size=batch_size, num_workers=num_workers)
    scored = MirrorAveraged(model, input_key) if mirror_average else model
    task = DepthTask(scored, input_key, model.config["max_depth"], args.criterion)
    if valid_threshold is None:
        valid_threshold = saved["args"].get("valid_threshold", 0.0)
    # The run's own rule first (per_image.csv and the top-level numbers), then the gt >= 0.5 m
    # rule of recent BatVision V2 papers, so a table can sit beside published numbers.
    metrics = MultiProtocolMetrics((protocol_for(valid_threshold), BV2_MIN_05), device=torch_device)
    by_depth = DepthRangeErrors(depth_ranges, device=torch_device)
    holes = DepthMetrics(valid_threshold, device=torch_device)
    rows: List[Dict[str, Any]] = []

    def record(batch: Dict[str, Any], depth: torch.Tensor, scores: torch.Tensor,
               n_valid: torch.Tensor) -> None:
        by_depth.update(depth, batch[DEPTH])
        if truth == "dense":
            sensor_valid = batch[SENSOR_VALID].to(depth.device)
            holes.update(depth, batch[DEPTH].masked_fill(sensor_valid, 0.0))
        meta = batch[META]
        for i in range(len(depth)):
            row: Dict[str, Any] = {
                "position": len(rows), "location": meta["location"][i],
                "index": int(meta["index"][i]), "depth_path": meta["depth_path"][i],
                "n_valid": int(n_valid[i])}
            row.update({name: (f"{value:.6f}" if n_valid[i] else "")
                        for name, value in zip(METRIC_NAMES, scores[i].tolist())})
            rows.append(row)

    validate(task, loader, torch_device, metrics, on_batch=record, desc=f"evaluate {split}")
    result: Dict[str, Any] = {
        **metrics.compute(), "split": split, "checkpoint": str(path),
        "model_name": saved["model_name"], "dataset": args.dataset,
        "data_root": str(args.data_root), "protocol": metrics.protocol(),
        "protocols": metrics.compute_all(), "protocol_definitions": metrics.protocols(),
        "checkpoint_fingerprint": checkpoint_fingerprint(saved),
        "identity_fingerprint": (saved.get("identity") or {}).get("fingerprint"),
        "data_fingerprint": data_set.data_fingerprint, "ground_truth": ground_truth,
        "mirror_average": mirror_average, "by_depth": by_depth.compute(), "truth": truth,
    }
    if truth == "dense":
        result["holes"] = holes.compute()
    out = Path(out_dir) if out_dir is not None else path.parent / f"{EVALUATION_PREFIX}{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / METRICS_FILE, result)

    def write_rows(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out / PER_IMAGE_FILE, write_rows)
    result["out_dir"] = str(out)
    return result


def format_table(result: Dict[str, Any]) -> str:
    """The metrics of :func:`evaluate_checkpoint` as a small text table."""
    lines = [f"{result['model_name']} on {result['dataset']} {result['split']}: "
             f"{result['n_images']} images scored, {result['n_skipped']} skipped (no valid pixel); "
             f"valid pixels: {result['protocol']['valid_pixels']} (per_image.csv); ground truth "
             f"of the {result['ground_truth']} recipe ({result['truth']} depth)"
             + ("; mirror-averaged predictions" if result["mirror_average"] else ""),
             format_protocol_table(result["protocols"]),
             *([f"inside the sensor's holes: {result['holes']['n_images']} images, rmse "
                f"{result['holes']['rmse']:.4f} m, mae {result['holes']['mae']:.4f} m"]
               if result.get("holes") and result["holes"]["n_images"] else []),
             "by ground-truth depth (pixels pooled): range m, share, bias, mae, abs_rel, rmse"]
    formats = {"share": "10.3f", "bias": "+10.3f", "mae": "10.3f", "abs_rel": "10.3f",
               "rmse": "10.3f"}
    for row in result["by_depth"]:
        span = f"{row['min_m']:g}-{'' if row['max_m'] is None else format(row['max_m'], 'g')}"
        lines.append(f"  {span:<8}" + "".join(
            f"{'-':>10}" if row[key] is None else format(row[key], spec)
            for key, spec in formats.items()))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, evaluate, print the table."""
    args = build_parser().parse_args(argv)
    with user_errors():
        configure_cpu(args)
        result = evaluate_checkpoint(
            args.checkpoint, args.split, args.dataset, args.data_root, args.out, args.batch_size,
            args.num_workers, args.device, args.valid_threshold, args.ground_truth,
            args.mirror_average, args.depth_ranges, args.truth)
    print(format_table(result))
    print(f"wrote {result['out_dir']}/metrics.json and per_image.csv")


if __name__ == "__main__":
    main()
