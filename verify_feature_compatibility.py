"""Check that the binaural student's feature maps have exactly the RGB teacher's shapes.

Builds both models for the given width, input size and attention levels, runs one forward pass
of each on PyTorch's ``meta`` device (shapes only: no weights allocated, no arithmetic, so it
is instant at any size), and prints per level the teacher's and the student's shape and whether
they match, plus both parameter counts.

Exit status: 0 when every level (x1..x5, d1..d4) matches; 1 otherwise, with a one-line reason.

    python verify_feature_compatibility.py --base_channels 64 --image_size 256 --attention_levels 2,3,4,5
    python verify_feature_compatibility.py --base_channels 8 --image_size 128 --decoder query
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from models import FEATURE_KEYS, create_binaural_attention_model, create_rgb_depth_model
from models.binaural_attention_model import DECODERS, INPUT_FEATURES, check_attention_levels


def parse_levels(text: str) -> Tuple[int, ...]:
    """'2,3,4,5' → (2, 3, 4, 5); '' → () (no attention)."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    try:
        check_attention_levels(levels)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return levels


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--base_channels", type=int, default=64, help="U-Net base width of both models")
    parser.add_argument("--image_size", type=int, default=256,
                        help="square input side in pixels (RGB image / spectrogram), divisible by 16")
    parser.add_argument("--attention_levels", type=parse_levels, default="2,3,4,5",
                        help="comma-separated student levels with ear-to-ear attention, e.g. 2,3,4,5")
    parser.add_argument("--decoder", choices=DECODERS, default="unet",
                        help="student decoder: the teacher's U-Net decoder or image-grid queries")
    parser.add_argument("--input_features", choices=INPUT_FEATURES, default="magnitude",
                        help="student encoder inputs: each ear, or each ear and the level difference")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.image_size <= 0 or args.image_size % 16:
        parser.error(f"--image_size must be a positive multiple of 16, got {args.image_size}")
    return args


def compare_features(
    teacher: torch.nn.Module, student: torch.nn.Module, image_size: int
) -> Dict[str, Any]:
    """Forward both models on meta tensors and compare their feature shapes level by level.

    Args:
        teacher: RGB model (``teacher.in_channels``), built on the meta device.
        student: binaural model (``student.in_channels``: 2, or 4 with the phase difference),
            built on the meta device.
        image_size: square input side, pixels.

    Returns:
        dict with ``levels`` (list of {level, teacher, student, match}; shapes as lists, None when
        a model lacks the level), ``teacher_params``, ``student_params``, ``match`` (bool) and
        ``reason`` (one line; empty when everything matches).
    """
    _, teacher_features = teacher(
        torch.empty(1, teacher.in_channels, image_size, image_size, device="meta"),
        return_features=True)
    _, student_features = student(
        torch.empty(1, student.in_channels, image_size, image_size, device="meta"),
        return_features=True)
    levels = []
    for key in FEATURE_KEYS:
        shapes = [list(features[key].shape) if key in features else None
                  for features in (teacher_features, student_features)]
        levels.append({"level": key, "teacher": shapes[0], "student": shapes[1],
                       "match": shapes[0] is not None and shapes[0] == shapes[1]})
    mismatched = [level for level in levels if not level["match"]]
    reason = ""
    if mismatched:
        first = mismatched[0]
        reason = (f"{len(mismatched)} of {len(levels)} feature levels differ; first {first['level']}: "
                  f"teacher {first['teacher']} vs student {first['student']}")
    return {
        "levels": levels,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "match": not mismatched,
        "reason": reason,
    }


def format_report(report: Dict[str, Any]) -> str:
    """The human-readable table of :func:`compare_features`' result."""
    lines = [f"{'level':<6} {'teacher':<22} {'student':<22} match"]
    for level in report["levels"]:
        lines.append(f"{level['level']:<6} {str(level['teacher']):<22} {str(level['student']):<22} "
                     f"{'yes' if level['match'] else 'NO'}")
    lines.append(f"parameters: teacher {report['teacher_params']:,}, student {report['student_params']:,} "
                 f"({report['student_params'] / report['teacher_params']:.2f}×)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with torch.device("meta"):
        teacher = create_rgb_depth_model(base_channels=args.base_channels)
        student = create_binaural_attention_model(
            base_channels=args.base_channels, attention_levels=args.attention_levels,
            decoder=args.decoder, input_features=args.input_features)
    report = compare_features(teacher, student, args.image_size)
    if args.json:
        print(json.dumps({"base_channels": args.base_channels, "image_size": args.image_size,
                          "attention_levels": list(args.attention_levels), "decoder": args.decoder,
                          "input_features": args.input_features, **report}))
    else:
        print(format_report(report))
    if not report["match"]:
        print(f"verify_feature_compatibility.py: {report['reason']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
