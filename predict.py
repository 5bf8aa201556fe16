"""Predict a depth map from one recording with a trained checkpoint.

The input goes through the same reader functions and the same named preprocessing recipe as
during training (``datasets.batvision`` and ``datasets.recipes``, with the checkpoint's recipe,
image size, max depth and audio format), so a prediction sees exactly what the model was
trained on. A binaural model takes the recording of the format it was trained on: a V2 WAV
(BatVision V2 and the synthetic world) or a V1 left/right ``.npy`` pair. The RGB model takes a
camera image. A checkpoint whose weights are not all finite is refused.

    python predict.py --checkpoint checkpoints/student/best_model.pth --wav audio_3011.wav
    python predict.py --checkpoint checkpoints/v1_student --left 123_left.npy --right 123_right.npy
    python predict.py --checkpoint checkpoints/teacher --image camera_3011.jpeg

``--mirror_average`` predicts the mean of the prediction and the mirrored prediction of the
mirrored input (as ``evaluate.py --mirror_average``). Writes ``<name>_depth.npy`` (float32
(S, S), metres) and ``<name>_depth.png`` (colour bar in metres) to --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from common.argtypes import ArgumentParser
from common.errors import UsageError, user_errors
from datasets.batvision import check_audio_length, read_camera, read_ear_pair, read_wav
from datasets.recipes import get_recipe, rgb_tensor
from datasets.registry import READERS
from datasets.sample import RGB
from training.checkpoint import BEST_CHECKPOINT, load_checkpoint, load_model
from training.cli import thread_count
from training.data import MODEL_INPUTS
from training.device import configure_threads, resolve_device
from training.tasks import MirrorAveraged
from training.tracking import save_depth_picture


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint file, or a run folder (its best_model.pth)")
    parser.add_argument("--wav", default=None, help="V2 recording: 2-channel int32 44.1 kHz WAV")
    parser.add_argument("--left", default=None, help="V1 recording: left ear .npy")
    parser.add_argument("--right", default=None, help="V1 recording: right ear .npy")
    parser.add_argument("--image", default=None, help="camera image, for the RGB model")
    parser.add_argument("--out", default="results/predictions", help="output folder")
    parser.add_argument("--name", default=None,
                        help="output file prefix; None: the input file's name")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--threads", type=thread_count, default="auto",
                        help="CPU threads for torch's kernels (auto: the idle cores, as the "
                             "training scripts)")
    parser.add_argument("--mirror_average", action="store_true",
                        help="average the prediction with the mirrored prediction of the "
                             "mirrored input (ears swapped, or image flipped): two forward passes")
    return parser


def model_input(args: argparse.Namespace, saved_args: Dict[str, Any],
                model_name: str) -> Tuple[torch.Tensor, str]:
    """Read and preprocess the input named on the command line as the checkpoint's run did.

    Returns:
        ``(x, name)``: the (C, S, S) model input and the default output prefix.

    Raises:
        UsageError: the inputs given do not fit the checkpoint's model or training format.
        DataError: an unreadable input file.
    """
    size = saved_args["image_size"]
    if MODEL_INPUTS[model_name] == RGB:
        if args.image is None:
            raise UsageError("the RGB model needs --image")
        return rgb_tensor(read_camera(Path(args.image)), size), Path(args.image).stem
    trained_format = READERS[saved_args["dataset"]].format
    if trained_format == "v2":
        if args.wav is None or args.left or args.right:
            raise UsageError("this model was trained on V2 recordings: pass --wav (only)")
        waveform, name = read_wav(Path(args.wav)), Path(args.wav).stem
    else:
        if args.left is None or args.right is None or args.wav:
            raise UsageError("this model was trained on V1 recordings: pass --left and --right")
        waveform = read_ear_pair(Path(args.left), Path(args.right))
        name = Path(args.left).stem.removesuffix("_left")
    recipe = get_recipe(saved_args["recipe"])
    check_audio_length(waveform, Path(args.wav or args.left), recipe, saved_args["max_depth"],
                       trained_format)
    audio = recipe.audio(waveform, saved_args.get("audio_format", "spectrogram"), size,
                         saved_args["max_depth"], trained_format)
    return audio, name


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, predict, write the depth ``.npy`` and picture."""
    args = build_parser().parse_args(argv)
    with user_errors():
        path = Path(args.checkpoint)
        path = path / BEST_CHECKPOINT if path.is_dir() else path
        saved = load_checkpoint(path)
        device = resolve_device(args.device)
        configure_threads(args.threads, args.device)
        model = load_model(saved, device, path=path)
        x, default_name = model_input(args, saved["args"], saved["model_name"])
    predictor = (MirrorAveraged(model, MODEL_INPUTS[saved["model_name"]]) if args.mirror_average
                 else model)
    with torch.no_grad():
        depth = predictor(x[None].to(device))[0, 0].float().cpu().numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or default_name
    np.save(out / f"{name}_depth.npy", depth.astype(np.float32))
    max_depth = model.config["max_depth"]
    save_depth_picture(out / f"{name}_depth.png", depth, max_depth,
                       f"{name}: predicted depth ({saved['model_name']})")
    print(f"wrote {out / f'{name}_depth.npy'} (metres, {depth.shape[0]}x{depth.shape[1]}, "
          f"range {depth.min():.2f}-{depth.max():.2f} m) and {name}_depth.png")


if __name__ == "__main__":
    main()
