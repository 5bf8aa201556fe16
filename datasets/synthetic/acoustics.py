"""Binaural echoes of a scene: a chirp from the rig's speaker, simulated by pyroomacoustics' image
source method, heard by two (directional by default) ears, plus white sensor noise.

Time 0 of a recording is the chirp onset, so an echo from a surface at distance d straight ahead
arrives at about ``2 d / SPEED_OF_SOUND`` seconds. All recordings of a world share one fixed gain
(set by the rig's direct path, never per recording or per ear), so interaural level differences
and the fall-off with distance survive.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.directivities import CardioidFamily, DirectionVector
from scipy.signal import chirp, fftconvolve
from scipy.signal.windows import tukey

from .scene import RigPose, Scene
from .writer import SAMPLE_RATE, V2_WAV_FRAMES

SPEED_OF_SOUND = float(pra.constants.get("c"))  # m/s, the simulator's value
EAR_PATTERNS = {"cardioid": 0.5, "omni": None}  # cardioid-family parameter p (None: omnidirectional)
# The direct path (speaker to ear, ~0.1 m) peaks at this fraction of full scale. Echoes add to
# it: over 300 measured scenes the loudest recording peaked at 1.2x the direct path, so 0.4
# leaves 2x headroom against clipping.
DIRECT_PATH_PEAK = 0.4


def make_chirp(duration_s: float = 0.003, f0_hz: float = 20.0, f1_hz: float = 20_000.0,
               taper: float = 0.2, fs: int = SAMPLE_RATE) -> np.ndarray:
    """The emitted signal: a linear chirp with Tukey-tapered ends (no clicks).

    Returns:
        (round(duration_s * fs),) float64 waveform with peak 1.
    """
    t = np.arange(int(round(duration_s * fs))) / fs
    return chirp(t, f0=f0_hz, t1=duration_s, f1=f1_hz, method="linear") * tukey(len(t), taper)


class _SceneRoom(pra.Room):
    """A ``pra.Room`` told which walls can obstruct instead of searching for them.

    pyroomacoustics finds the walls off the convex hull with a pure-Python loop that costs more
    than the whole simulation; the scene knows them by construction (``obstructing_surfaces``).
    """

    def __init__(self, walls: list, obstructing: List[int], **kwargs) -> None:
        self._obstructing = obstructing
        super().__init__(walls, **kwargs)

    def _init_room_engine(self, *args) -> None:
        super()._init_room_engine(*(args or (self.walls, self._obstructing)))


class EchoSimulator:
    """Records the rig's chirp in scenes; one instance serves a whole world (same rig, same gain).

    Args:
        ears: ``cardioid`` (directional, default) or ``omni``.
        ear_spacing_m: distance between the ears, metres.
        ear_angle_deg: each ear points this far left/right of the heading, degrees.
        max_order: image-source reflection order.
        snr_db: sensor noise level: white noise this many dB below the direct path's RMS.
        frames: samples per recording and ear.
        fs: sample rate in Hz.
    """

    def __init__(self, ears: str = "cardioid", ear_spacing_m: float = 0.2, ear_angle_deg: float = 35.0,
                 max_order: int = 3, snr_db: float = 50.0, frames: int = V2_WAV_FRAMES,
                 fs: int = SAMPLE_RATE) -> None:
        if ears not in EAR_PATTERNS:
            raise ValueError(f"ears must be one of {sorted(EAR_PATTERNS)}, got {ears!r}")
        self.ears, self.ear_spacing_m, self.ear_angle_deg = ears, ear_spacing_m, ear_angle_deg
        self.max_order, self.frames, self.fs = max_order, frames, fs
        self.chirp = make_chirp(fs=fs)
        direct = self._direct_path()
        self.gain = DIRECT_PATH_PEAK / float(np.abs(direct).max())
        # Noise is set against the direct path, a constant of the rig: a fixed level for the world.
        direct_rms = float(np.sqrt(np.sum(direct ** 2, axis=1).max() / len(self.chirp)))
        self.noise_std = self.gain * direct_rms * 10 ** (-snr_db / 20)

    def impulse_responses(self, scene: Scene, max_order: Optional[int] = None) -> np.ndarray:
        """Room impulse responses from the speaker to both ears.

        Args:
            scene: room, obstacles and rig pose.
            max_order: reflection order (default: the simulator's).

        Returns:
            (2, L) float64, left ear first; sample 0 is the emission instant.
        """
        walls = [pra.wall_factory(corners, [float(a)], [0.0])
                 for corners, a in zip(scene.surface_polygons(), scene.absorption)]
        room = _SceneRoom(walls, scene.obstructing_surfaces(), fs=self.fs,
                          max_order=self.max_order if max_order is None else max_order)
        room.add_source(scene.rig.origin)
        room.add_microphone_array(scene.rig.ear_positions(self.ear_spacing_m).T,
                                  directivity=self._directivities(scene.rig.yaw))
        room.compute_rir()
        # pyroomacoustics delays every RIR by half its fractional-delay filter; undo it.
        lead = pra.constants.get("frac_delay_length") // 2
        rirs = [np.asarray(room.rir[m][0])[lead:] for m in range(2)]
        out = np.zeros((2, max(len(r) for r in rirs)))
        for m, r in enumerate(rirs):
            out[m, : len(r)] = r
        return out

    def record(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """What the two ears record after the chirp: echoes, world gain and sensor noise.

        Returns:
            (2, frames) float64 in [-1, 1] (not clipped here), left ear first.
        """
        echoes = self._chirp_through(self.impulse_responses(scene))
        return self.gain * echoes + rng.normal(0.0, self.noise_std, echoes.shape)

    def _chirp_through(self, rirs: np.ndarray) -> np.ndarray:
        """(2, frames): the chirp convolved with (2, L) impulse responses, zero-padded or cut."""
        audio = np.zeros((2, self.frames))
        wave = fftconvolve(rirs, self.chirp[None], axes=1)[:, : self.frames]
        audio[:, : wave.shape[1]] = wave
        return audio

    def _direct_path(self) -> np.ndarray:
        """(2, frames) chirp heard through the direct path alone (no reflections, gain 1, no noise)."""
        floor = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
        free_field = Scene(family="FreeField", floor=floor, height=4.0, boxes=(),
                           absorption=np.ones(6), albedo=np.ones((6, 3)),
                           rig=RigPose(position=(0.0, 0.0), height=1.0, yaw=0.0))
        return self._chirp_through(self.impulse_responses(free_field, max_order=0))

    def _directivities(self, yaw: float) -> Optional[List[CardioidFamily]]:
        p = EAR_PATTERNS[self.ears]
        if p is None:
            return None
        heading = np.degrees(yaw)
        return [CardioidFamily(orientation=DirectionVector(azimuth=heading + side * self.ear_angle_deg,
                                                           colatitude=90.0), p=p)
                for side in (1, -1)]
