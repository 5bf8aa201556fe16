"""Write a simulated BatVision world (V1 or V2 on-disk format) and print its generation speed.

By default every realism is on, calibrated on a real V2 recording (datasets/reference/): furnished
room families (offices, classrooms, stairwell landings, cluttered labs, with small rooms,
corridors and halls) with surface materials and a robot's poses; a 3 ms 20 Hz-20 kHz chirp
simulated with pyroomacoustics' image-source method plus what real recordings add (a playback
latency, a band-limited directional speaker, diffuse backscatter, a reverberant tail, room noise);
two directional ears 0.2 m apart with sensor noise; a ray-cast depth camera with RGB on the same
rig, its holes where a real depth camera loses pixels (far range, grazing incidence, specular and
dark surfaces, occlusion edges, textureless areas). ``--acoustics ideal --holes blobs --rooms
classic`` makes the classic world of earlier versions (image sources alone, the chirp at time 0,
small rooms / corridors / halls with box obstacles, range and random-blob holes). Each location
folder is one room family; ``--samples`` is the number of samples per location, split ~70/15/15 %
into train/val/test. Same flags, same seed -> byte-identical files, whatever ``--workers``.

Example:
    python make_synthetic_batvision.py --format v2 --out data/synthetic_v2 --locations 3 --samples 400
    python make_synthetic_batvision.py --out data/classic_v2 --acoustics ideal --holes blobs \
        --rooms classic
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from datasets.synthetic.acoustics import ACOUSTIC_MODELS, EAR_PATTERNS
from datasets.synthetic.camera import HOLE_MODELS
from datasets.synthetic.scene import ROOM_SETS
from datasets.synthetic.world import FORMATS, WorldConfig, generate_world, manifest_path


def parse_args() -> argparse.Namespace:
    defaults = WorldConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--format", choices=FORMATS, default=defaults.format, help="on-disk layout")
    parser.add_argument("--out", type=Path, required=True,
                        help="root of the tree to write (the reader's root); the manifest "
                             "OUT.world.json (config and stats) is written beside it")
    parser.add_argument("--locations", type=int, default=defaults.locations,
                        help="location folders; room families cycle through the --rooms set")
    parser.add_argument("--samples", type=int, default=defaults.samples,
                        help="samples per location (train+val+test, ~70/15/15 %%)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="master seed (>= 0)")
    parser.add_argument("--height", type=int, default=defaults.height, help="depth/RGB height, pixels")
    parser.add_argument("--width", type=int, default=defaults.width, help="depth/RGB width, pixels")
    parser.add_argument("--ears", choices=sorted(EAR_PATTERNS), default=defaults.ears,
                        help="ear directivity: cardioid ears point left/right of the heading")
    parser.add_argument("--ear-angle", type=float, default=defaults.ear_angle_deg,
                        help="angle of each ear from the heading, degrees")
    parser.add_argument("--max-order", type=int, default=defaults.max_order,
                        help="image-source reflection order (cost grows fast with obstacles)")
    parser.add_argument("--snr-db", type=float, default=defaults.snr_db,
                        help="sensor noise, dB below the direct path's RMS")
    parser.add_argument("--acoustics", choices=sorted(ACOUSTIC_MODELS), default=defaults.acoustics,
                        help="ideal: image sources alone, direct path at time 0; realistic: "
                             "calibrated on a real V2 recording (emission latency, band-limited "
                             "speaker and microphones, directional speaker, reverberant tail, "
                             "room noise)")
    parser.add_argument("--max-range", type=float, default=None,
                        help="depth beyond this many metres is a hole (default: 12 for v1, 15 for v2)")
    parser.add_argument("--holes", choices=HOLE_MODELS, default=defaults.holes,
                        help="depth holes: blobs (beyond range and random blobs of 3-8 %% of the "
                             "image) or sensor (where a stereo/ToF camera fails: far range, grazing "
                             "incidence, specular and dark surfaces, occlusion edges, textureless "
                             "areas, a little dropout; about 20 %% of the pixels in realistic rooms)")
    parser.add_argument("--rooms", choices=tuple(ROOM_SETS), default=defaults.rooms,
                        help="room families: classic (" + ", ".join(ROOM_SETS["classic"]) + ") or "
                             "realistic (" + ", ".join(ROOM_SETS["realistic"]) + ", furnished, "
                             "with surface materials and a robot's poses near walls and furniture)")
    parser.add_argument("--workers", type=int, default=2, help="simulation processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete OUT (and its manifest) first if it exists")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()
    try:
        args.config = WorldConfig(
            format=args.format, locations=args.locations, samples=args.samples, seed=args.seed,
            height=args.height, width=args.width, ears=args.ears, ear_angle_deg=args.ear_angle,
            max_order=args.max_order, snr_db=args.snr_db, acoustics=args.acoustics,
            max_range_m=args.max_range, holes=args.holes, rooms=args.rooms)
    except ValueError as err:
        parser.error(str(err))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out}: exists and is not a folder")
    if args.out.is_dir() and any(args.out.iterdir()):
        if not args.overwrite:
            parser.error(f"{args.out}: folder is not empty (pass --overwrite to replace it)")
        shutil.rmtree(args.out)
        manifest_path(args.out).unlink(missing_ok=True)
    return args


def main() -> None:
    args = parse_args()
    stats = generate_world(args.out, args.config, workers=args.workers, progress=not args.no_progress)
    splits = ", ".join(f"{n} {split}" for split, n in stats["splits"].items())
    print(f"wrote {stats['samples']} samples ({splits}) in {len(stats['locations'])} locations "
          f"to {args.out}; manifest {manifest_path(args.out)}")
    print(f"peak |audio| {stats['peak']:.3f}, clipped recordings {stats['clipped_recordings']}")
    print(f"generation: {stats['seconds']:.1f} s, {stats['samples_per_s']:.1f} samples/s "
          f"({args.workers} workers)")


if __name__ == "__main__":
    main()
