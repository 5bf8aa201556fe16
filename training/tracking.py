"""What a run reports: tqdm progress, ``metrics.json``, optional W&B, and depth pictures.

W&B is imported only when a run asks for it (``--use_wandb``). Without an API key (neither
``WANDB_API_KEY`` nor a ``wandb login`` entry in ``~/.netrc``) and without ``WANDB_MODE`` set,
the run logs offline into the run folder and says so; an unreachable server also falls back to
offline. Pictures are drawn with matplotlib's Agg canvas directly, so no GUI backend is touched.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, TypeVar

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from training.checkpoint import METRICS_FILE, atomic_write, write_json

T = TypeVar("T")

DEPTH_CMAP = "plasma"
ERROR_CMAP = "viridis"
HOLE_COLOUR = "white"  # not in either colour map, so a hole is never read as a depth
WANDB_HOST = "api.wandb.ai"


def progress(iterable: Iterable[T], enabled: bool, desc: str) -> "tqdm[T]":
    """A tqdm bar over ``iterable``, silent on non-main ranks (``enabled=False``)."""
    return tqdm(iterable, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """Rank 0's record of a run: the epoch history in ``metrics.json`` and, optionally, W&B.

    Args:
        run_dir: the run folder.
        enabled: False on every rank but 0 (then every method does nothing).
        protocol: how the validation metrics are computed (stored in ``metrics.json``).
        use_wandb: log to W&B too.
        wandb_project: W&B project.
        run_name: W&B run name (the experiment name).
        config: the resolved arguments, stored as the W&B run config.
    """

    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        protocol: Dict[str, Any],
        use_wandb: bool = False,
        wandb_project: str = "batdepth",
        run_name: str = "",
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.protocol = protocol
        self.wandb_run: Any = None
        if enabled and use_wandb:
            self.wandb_run = self._init_wandb(wandb_project, run_name, config or {})

    def _init_wandb(self, project: str, run_name: str, config: Dict[str, Any]) -> Any:
        if "WANDB_MODE" not in os.environ and not _has_wandb_key():
            os.environ["WANDB_MODE"] = "offline"
            print(f"W&B: no API key found, logging offline under {self.run_dir / 'wandb'} "
                  "(upload later with `wandb sync`)")
        import wandb

        # The run id is the folder name, so a resumed run continues the same W&B run.
        kwargs = dict(project=project, name=run_name, id=run_name, resume="allow", config=config,
                      dir=str(self.run_dir))
        try:
            return wandb.init(**kwargs)
        except wandb.errors.CommError as error:
            print(f"W&B: server unreachable ({error}); logging offline instead")
            return wandb.init(mode="offline", **kwargs)

    def log_epoch(self, history: List[Dict[str, Any]], best: Dict[str, Any]) -> None:
        """Rewrite ``metrics.json`` with the whole history and send the last epoch to W&B.

        Args:
            history: one record per epoch so far, ``{"epoch", "global_step", "lr", "seconds",
                "train": {term: mean}, "val": {metric: value}, "val_loss": {term: mean}}``.
            best: ``{"epoch", "rmse"}`` of the best validation so far.
        """
        if not self.enabled:
            return
        write_json(self.run_dir / METRICS_FILE,
                   {"protocol": self.protocol, "best": best, "history": history})
        record = history[-1]
        if self.wandb_run is not None:
            flat = {"epoch": record["epoch"], "lr": record["lr"]}
            flat.update({f"train/{k}": v for k, v in record["train"].items()})
            flat.update({f"val/{k}": v for k, v in record["val"].items() if v is not None})
            self.wandb_run.log(flat, step=record["global_step"])

    def log_picture(self, path: Path, key: str) -> None:
        """Send a saved picture to W&B (it is already on disk in the run folder)."""
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))})

    def log_steps(self, values: Dict[str, float], step: int) -> None:
        """Per-step scalars (loss terms, lr) to W&B only; the epoch means go to ``metrics.json``."""
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def masked_depth(depth: np.ndarray) -> np.ma.MaskedArray:
    """Depth in metres with holes (depth <= 0) masked, so imshow paints them the 'bad' colour."""
    return np.ma.masked_where(depth <= 0, depth)


def save_figure(figure: Figure, path: Path) -> None:
    """Render a matplotlib figure off-screen (Agg) and write it atomically as a PNG."""
    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def save_validation_picture(
    path: Path,
    inputs: torch.Tensor,
    gt: torch.Tensor,
    pred: torch.Tensor,
    max_depth: float,
    title: str = "",
) -> None:
    """One row per sample: input | ground truth | prediction | |error|, colour bars in metres.

    Args:
        path: PNG to write (atomically).
        inputs: (N, 3, H, W) RGB in [0, 1], or (N, 2, F, T) spectrogram (drawn as the left and
            right ear side by side, on one colour scale so the level difference shows).
        gt: (N, 1, H, W) depth in metres, 0 = hole (drawn in white).
        pred: (N, 1, H, W) predicted depth in metres.
        max_depth: top of the shared depth colour scale, metres.
        title: figure title (e.g. epoch and RMSE).
    """
    inputs, gt, pred = (t.detach().float().cpu().numpy() for t in (inputs, gt, pred))
    rows = len(gt)
    error = np.ma.masked_where(gt[:, 0] <= 0, np.abs(pred[:, 0] - gt[:, 0]))
    error_max = max(float(error.max()) if error.count() else 0.0, 1e-3)
    depth_norm, error_norm = Normalize(0.0, max_depth), Normalize(0.0, error_max)
    depth_cmap = colormaps[DEPTH_CMAP].with_extremes(bad=HOLE_COLOUR)
    error_cmap = colormaps[ERROR_CMAP].with_extremes(bad=HOLE_COLOUR)

    figure = Figure(figsize=(13, 2.8 * rows + 0.6))
    axes = figure.subplots(rows, 4, squeeze=False)
    for row in range(rows):
        if inputs.shape[1] == 3:
            axes[row, 0].imshow(inputs[row].transpose(1, 2, 0).clip(0, 1))
            axes[row, 0].set_title("RGB")
        else:
            ears = np.concatenate([inputs[row, 0], inputs[row, 1]], axis=1)
            axes[row, 0].imshow(ears, origin="lower", aspect="auto", cmap="magma")
            axes[row, 0].axvline(inputs.shape[-1] - 0.5, color="white", linewidth=1)
            axes[row, 0].set_title("spectrogram: left | right")
        depth_image = axes[row, 1].imshow(masked_depth(gt[row, 0]), cmap=depth_cmap,
                                          norm=depth_norm)
        axes[row, 1].set_title("ground truth (white: hole)")
        axes[row, 2].imshow(pred[row, 0], cmap=depth_cmap, norm=depth_norm)
        axes[row, 2].set_title("prediction")
        error_image = axes[row, 3].imshow(error[row], cmap=error_cmap, norm=error_norm)
        axes[row, 3].set_title("|error|")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.colorbar(depth_image, ax=axes[:, 1:3].ravel().tolist(), label="depth (m)", shrink=0.8)
    figure.colorbar(error_image, ax=axes[:, 3].tolist(), label="|error| (m)", shrink=0.8)
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def save_depth_picture(path: Path, depth: np.ndarray, max_depth: float, title: str = "") -> None:
    """A single depth map (H, W) in metres as a coloured PNG with a colour bar in metres."""
    figure = Figure(figsize=(6, 5))
    ax = figure.subplots()
    image = ax.imshow(masked_depth(depth), norm=Normalize(0.0, max_depth),
                      cmap=colormaps[DEPTH_CMAP].with_extremes(bad=HOLE_COLOUR))
    ax.set_xticks([])
    ax.set_yticks([])
    figure.colorbar(image, ax=ax, label="depth (m)")
    if title:
        ax.set_title(title)
    save_figure(figure, path)
