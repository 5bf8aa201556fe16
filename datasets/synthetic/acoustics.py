"""Binaural echoes of a scene: a chirp from the rig's speaker, simulated by pyroomacoustics' image
source method, heard by two (directional by default) ears, plus white sensor noise.

Time 0 of a recording is the chirp onset, so an echo from a surface at distance d straight ahead
arrives at about ``2 d / SPEED_OF_SOUND`` seconds. All recordings of a world share one fixed gain
(set by the rig's direct path, never per recording or per ear), so interaural level differences
and the fall-off with distance survive.

Two acoustic models (``ACOUSTIC_MODELS``). ``ideal`` (the classic world's) is the above: a loud
direct path at time 0, sparse image-source reflections (order 3), silence after ~50 ms.
``realistic`` (:class:`Realism`, the default world's) adds what separates a real BatVision V2
recording from that, each part for a physical reason:

- Emission latency. The playback chain (driver buffers, DAC, a Bluetooth speaker's codec) starts
  the sound milliseconds after the recording does: a real V2 recording is near silent (at its
  noise floor) for its first ~6 ms.
- Band-limited speaker and microphones. A small Bluetooth speaker (a JBL Flip 4) rolls off below
  a few hundred Hz; electret/MEMS capsules roll off at the top. The chain is linear, so both
  responses are applied once to the emitted chirp.
- A directional speaker and a shaded direct path. The speaker's drivers (two ~40 mm ones side by
  side) fire forwards and beam at the chirp's frequencies, most of whose energy lies above 5 kHz:
  averaged over the band, a directivity factor of ~6-7, modelled as a frequency-flat beam
  ``((1 + cos theta) / 2) ** 3`` (factor 7). The ears sit beside the speaker (90 degrees off its
  axis, -18 dB in the beam) and hear it through their pinnae's shadow (a further constant cut):
  the loudest arrival of a real recording is an echo (its envelope peaks 8.6 ms after the onset),
  not the direct path.
- Diffuse reflection. At the chirp's wavelengths (3-17 cm above 2 kHz) furniture, shelves,
  frames and fixtures are rough: each reflection scatters a share of its energy in all directions
  instead of mirroring it. The image sources keep the specular rest; the first-order scattered
  energy is cast along rays from the speaker, each patch in view sending back its Lambert share
  at its own distance (a surface's echo lasts as long as the surface is deep, not one mirror
  point's instant); the scattered share of orders 2 and 3 joins the tail.
- The rig's echo. The rig's front (speaker, microphones, camera and their mount) reflects what
  comes back to it, so a robot facing a wall hears the wall again at twice its delay, as any
  sonar near a target does: a small flat reflector's gain (area over wavelength), at most a
  plane mirror's.
- A reverberant tail. Three image-source orders leave a room silent after ~50 ms; a real office
  still rings at -30 dB at 100 ms. The tail is stochastic (Polack's model): per ear, Gaussian noise
  whose expected energy per sample is the diffuse field's, ``4 pi c / (V fs)`` in the units of the
  image sources' ``1 / r`` amplitudes, times the ears' and the speaker's mean squared directivity,
  decaying at the room's Eyring RT60 (volume, exposed surface areas and absorption of the scene,
  air absorption and the absorption the scenes leave out), and faded in as the share of
  reflections the image sources leave out: a ray's number of reflections after time t is about
  Poisson with mean ``c t / (4 V / S)``, and the image sources hold the specular share of those
  of order <= ``max_order``. The tail's level follows from diffuse-field theory (in an empty
  5 x 4 x 3 m room without scattering it lies within 1 dB of a 40th-order image-source
  simulation from 20 ms on), lowered by a constant fitted to the real recording.
  pyroomacoustics' hybrid simulator (image sources + ray tracing, air absorption) was measured
  instead, over five rooms of each family: 0.33 s per recording (0.15 s in small rooms and
  corridors, 0.67 s in halls) against 0.012 s for the whole realistic recording (0.005 s for the
  ideal one), which would take the default world (1,200 samples, two workers) from ~15 s to
  ~3.5 min; it also refuses directional ears and draws its rays from its own random generator
  (two runs of one scene differ), which would break the world's determinism.
- Room noise. Occupied buildings hum (ventilation, electronics): noise falling 6 dB per octave
  above 500 Hz, at a fixed level for the world, on top of the sensor noise. A real recording's
  envelope sits at -38 dB of its peak before the chirp arrives and is back there by 170 ms.

Every random draw of ``record`` comes from the generator it is given, so a world is a pure
function of its config and seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.directivities import CardioidFamily, DirectionVector, Directivity
from pyroomacoustics.doa import spher2cart
from scipy.signal import butter, chirp, fftconvolve, sosfilt
from scipy.signal.windows import tukey
from scipy.special import gammainc

from .camera import first_hits
from .scene import RigPose, Scene
from .writer import SAMPLE_RATE, V2_WAV_FRAMES

SPEED_OF_SOUND = float(pra.constants.get("c"))  # m/s, the simulator's value
EAR_PATTERNS = {"cardioid": 0.5, "omni": None}  # cardioid-family parameter p (None: omnidirectional)
# The direct path (speaker to ear, ~0.1 m) peaks at this fraction of full scale. Echoes add to
# it: over 300 measured scenes the loudest recording peaked at 1.2x the direct path, so 0.4
# leaves 2x headroom against clipping.
DIRECT_PATH_PEAK = 0.4
# Air's energy attenuation (1/m) in the 4 m V term of Eyring's formula: ISO 9613-1 at 20 degC and
# 50 % humidity (0.03 dB/m at 4 kHz, 0.11 at 8 kHz, 0.22 at 12 kHz), averaged over the heard
# chirp's power spectrum (centroid 7 kHz) as a decay of 0.1 s sees it. Early echoes travel < 10 m
# and lose < 1 dB to it, so the image sources go without.
AIR_ABSORPTION_PER_M = 0.018
# Room noise: white noise through a first-order low-pass here (NC curves fall ~5-6 dB/octave).
ROOM_NOISE_CORNER_HZ = 500.0
FILTER_SETTLE_S = 0.005  # filters' start-up samples dropped, and room left for the chirp's ringing
# Rays the speaker's diffuse reflections are cast along: 0.006 sr each, 8 cm apart on a wall 1 m
# away, finer than the heard chirp smears them (its band lasts ~1.8 ms, 0.6 m of path).
BACKSCATTER_RAYS = 2048


@dataclass(frozen=True)
class Realism:
    """Constants of the ``realistic`` acoustic model (the module docstring says why each exists).

    The defaults are physical estimates except five, each fitted to statistics of one real
    BatVision V2 recording (``datasets/reference/batvision_v2_real.json``, measured with
    ``datasets.stats`` on the measurement world of RGB_DEPTH_README.md, "The simulated world
    against one real recording": 7 locations x 20 samples at 64 x 64, all three realism options,
    seed 0; the figures below are that world's medians):

    - ``latency_s`` on the onset (6.1 ms) and the envelope peak (14.7 ms) together. They lie
      8.6 ms apart in the recording and ~6.5 ms apart in our world, whose robot stands nearer
      the surface it faces; 7 ms leaves both ~1 ms off (7.2 and 13.6 ms).
    - ``direct_path_db`` on the peak: an echo must outshine the direct path.
    - ``room_noise_db`` on the level before the onset (-37.8 dB; ours -39.9).
    - ``tail_level_db`` on the envelope at 50 ms (-23.9 dB; ours -23.2, -18.7 without it).
      Diffuse-field theory (within 1 dB of image sources in an empty room) puts our tail 5 dB
      higher against the peak than the recording's. One recording cannot tell the candidates
      apart: a larger room or one deader at these frequencies than our median one, the robot's
      body shielding speaker and ears from part of the diffuse field, a field that is not yet
      diffuse near the surface the robot faces.
    - ``unmodelled_absorption_per_m`` on the envelope at 100 and 170 ms (-31.3 and -37.2 dB;
      ours -30.4 and -35.9, without it -27.2 and -32.7). Once its noise is taken out, the
      recording's tail falls 8.3 dB from 50 to 100 ms, an RT60 of ~0.36 s at the chirp's
      frequencies; air and our rooms' coefficients alone give a median Eyring RT60 of 0.57 s,
      with the constant 0.41 s. Part of it has a physical reading (air at 30 % humidity takes
      0.022-0.026 per metre of the heard chirp by ISO 9613-1, not 0.018; occupants, chairs and
      the clutter on shelves and desks absorb most at these frequencies and stand spread through
      the volume, as in Kuttruff's fitted rooms); its size is a fit.

    ``scattering`` and ``rig_echo_m`` are estimates taken at the top of their plausible ranges,
    because the envelope at 20 ms (-8.1 dB: the recording's strong early reflections; ours
    -12.2) needs both: without scattering it is -15.5 dB, without the rig's echo -16.2, without
    both -20.5 (the tolerance is 5 dB).

    Attributes:
        latency_s: delay between the recording's start and the chirp's emission, seconds.
        speaker_beam: the speaker's beam order n along the heading: amplitude gain
            ``((1 + cos theta) / 2) ** n`` (0: omnidirectional, 1: cardioid), directivity factor
            ``2 n + 1``.
        speaker_highpass_hz: the speaker's low cut (2nd-order high-pass), Hz.
        mic_lowpass_hz: the microphones' top roll-off (2nd-order low-pass), Hz.
        direct_path_db: the pinnae's shadow on the direct path, dB (on top of the beam's cut).
        room_noise_db: room noise RMS, dB below the direct path's RMS as the ears record it.
        scattering: share of each reflection's energy the surfaces scatter diffusely, at the
            chirp's frequencies (room-acoustic simulation takes ~0.05-0.2 for plain walls and up
            to 0.5-0.7 for furniture, shelves and fixtures there).
        rig_echo_m: the reflection gain of the rig's front, metres: area over wavelength, ~1 m
            for ~0.05 m^2 (speaker, microphones, camera and their mount) at the heard chirp's
            ~5 cm.
        unmodelled_absorption_per_m: the reverberant field's energy loss per metre of travel on
            top of air's (``AIR_ABSORPTION_PER_M``), 1/m.
        tail_level_db: the tail's level against diffuse-field theory, dB.
    """

    latency_s: float = 0.007
    speaker_beam: float = 3.0
    speaker_highpass_hz: float = 300.0
    mic_lowpass_hz: float = 12_000.0
    direct_path_db: float = -10.0
    room_noise_db: float = 26.0
    scattering: float = 0.5
    rig_echo_m: float = 1.0
    unmodelled_absorption_per_m: float = 0.028
    tail_level_db: float = -5.0


# Acoustic model name -> its realism (None: the ideal simulator of the module docstring).
ACOUSTIC_MODELS = {"ideal": None, "realistic": Realism()}


@dataclass(frozen=True)
class RoomAcoustics:
    """The diffuse-field description of a scene's room (air only: obstacles are taken out).

    Attributes:
        volume_m3: air volume.
        area_m2: exposed surface area (walls, floor, ceiling, obstacles; not where a box stands).
        mean_absorption: area-weighted energy absorption coefficient of the exposed surfaces.
        rt60_s: Eyring's reverberation time with air absorption, seconds.
    """

    volume_m3: float
    area_m2: float
    mean_absorption: float
    rt60_s: float

    @property
    def mean_free_path_m(self) -> float:
        """Mean distance between two reflections of a ray, ``4 V / S`` metres."""
        return 4.0 * self.volume_m3 / self.area_m2


def room_acoustics(scene: Scene,
                   air_absorption_per_m: float = AIR_ABSORPTION_PER_M) -> RoomAcoustics:
    """Volume, exposed area, mean absorption and Eyring RT60 of the scene's room.

    Eyring rather than Sabine: corridors and furnished rooms reach a mean absorption of 0.3,
    where Sabine's formula overestimates the reverberation time.

    Args:
        scene: room and obstacles (the rig pose plays no part).
        air_absorption_per_m: air's energy attenuation per metre.

    Returns:
        The room's :class:`RoomAcoustics`.
    """
    areas = np.array([_polygon_area(corners) for corners in scene.surface_polygons()])
    absorbed = float(areas @ scene.absorption)
    area = float(areas.sum())
    volume = _polygon_area(np.c_[scene.floor, np.zeros(len(scene.floor))].T) * scene.height
    floor_absorption = scene.absorption[scene.n_walls]
    for j, box in enumerate(scene.boxes):
        footprint = box.size[0] * box.size[1]
        volume -= footprint * box.size[2]
        # A box's bottom and the floor under it touch: neither meets the air.
        bottom = scene.n_walls + 2 + 6 * j + 5
        area -= 2 * footprint
        absorbed -= footprint * (floor_absorption + scene.absorption[bottom])
    mean_absorption = absorbed / area
    rt60 = (24.0 * np.log(10.0) / SPEED_OF_SOUND * volume
            / (-area * np.log1p(-mean_absorption) + 4.0 * air_absorption_per_m * volume))
    return RoomAcoustics(volume_m3=float(volume), area_m2=area,
                         mean_absorption=float(mean_absorption), rt60_s=float(rt60))


def reverberant_tail(room: RoomAcoustics, frames: int, max_order: int, diffuse_gain: float,
                     rng: np.random.Generator, fs: int = SAMPLE_RATE,
                     scattering: float = 0.0) -> np.ndarray:
    """The late part of two ears' impulse responses: the reflections image sources leave out.

    Args:
        room: the room's diffuse-field description.
        frames: samples per ear; sample 0 is the emission instant.
        max_order: the image sources' reflection order (the tail fades in past it).
        diffuse_gain: the ears' mean squared directivity over all directions.
        rng: source of the noise.
        fs: sample rate in Hz.
        scattering: share of each reflection's energy the surfaces scatter diffusely; the
            image sources keep only the specular rest, so the tail also holds the scattered
            share of orders 2 to ``max_order`` (the first order's is cast ray by ray, see
            ``EchoSimulator``).

    Returns:
        (2, frames) float64 in the image sources' units (an echo path of r metres: 1 / r).
    """
    t = np.arange(frames) / fs
    # Energy per sample of a diffuse field's impulse response: 4 pi c^3 t^2 / V reflections per
    # second, each of energy 1 / (c t)^2 (amplitude 1 / r, pyroomacoustics' convention).
    density = 4.0 * np.pi * SPEED_OF_SOUND / (room.volume_m3 * fs)
    reflections = SPEED_OF_SOUND * t / room.mean_free_path_m
    left_out = gammainc(max_order + 1, reflections)
    for order in range(2, max_order + 1):
        # The Poisson probability of exactly ``order`` reflections, times their scattered share.
        left_out += (reflections ** order * np.exp(-reflections) / math.factorial(order)
                     * (1.0 - (1.0 - scattering) ** order))
    # Energy falls 60 dB in rt60_s: amplitude by 3 ln 10 per rt60_s.
    decay = np.exp(-3.0 * np.log(10.0) * t / room.rt60_s)
    return rng.standard_normal((2, frames)) * (np.sqrt(density * diffuse_gain * left_out) * decay)


def make_chirp(duration_s: float = 0.003, f0_hz: float = 20.0, f1_hz: float = 20_000.0,
               taper: float = 0.2, fs: int = SAMPLE_RATE) -> np.ndarray:
    """The emitted signal: a linear chirp with Tukey-tapered ends (no clicks).

    Returns:
        (round(duration_s * fs),) float64 waveform with peak 1.
    """
    t = np.arange(int(round(duration_s * fs))) / fs
    return chirp(t, f0=f0_hz, t1=duration_s, f1=f1_hz, method="linear") * tukey(len(t), taper)


def _polygon_area(corners: np.ndarray) -> float:
    """Area (m^2) of a planar polygon given as (3, K) corners in order."""
    points = corners.T
    return 0.5 * float(np.linalg.norm(np.cross(points, np.roll(points, -1, axis=0)).sum(axis=0)))


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
        realism: the realistic model's constants; None: the ideal model.
    """

    def __init__(self, ears: str = "cardioid", ear_spacing_m: float = 0.2, ear_angle_deg: float = 35.0,
                 max_order: int = 3, snr_db: float = 50.0, frames: int = V2_WAV_FRAMES,
                 fs: int = SAMPLE_RATE, realism: Optional[Realism] = None) -> None:
        if ears not in EAR_PATTERNS:
            raise ValueError(f"ears must be one of {sorted(EAR_PATTERNS)}, got {ears!r}")
        self.ears, self.ear_spacing_m, self.ear_angle_deg = ears, ear_spacing_m, ear_angle_deg
        self.max_order, self.frames, self.fs, self.realism = max_order, frames, fs, realism
        self.chirp = make_chirp(fs=fs)
        self.heard = self.through_chain(self.chirp)  # the chirp as a unit path delivers it
        # The direct path as every scene has it (same rig geometry), before any shading.
        self._direct_rirs = self.impulse_responses(self._free_field(), max_order=0)
        direct = heard_direct = self._chirp_through(self._direct_rirs)
        if realism is not None:
            # The world gain comes from the direct path of an omnidirectional, unshaded speaker,
            # so that the speaker's beam and shading cannot raise the echoes to clipping.
            omni = self.impulse_responses(self._free_field(), max_order=0, speaker=False)
            direct = self._chirp_through(omni)
            heard_direct = heard_direct * 10 ** (realism.direct_path_db / 20)
        self.gain = DIRECT_PATH_PEAK / float(np.abs(direct).max())
        # Noise is set against the direct path as the ears record it, a constant of the rig: a
        # fixed level for the world.
        direct_rms = float(np.sqrt(np.sum(heard_direct ** 2, axis=1).max() / len(self.chirp)))
        self.noise_std = self.gain * direct_rms * 10 ** (-snr_db / 20)
        if realism is not None:
            self._room_noise_sos = butter(1, ROOM_NOISE_CORNER_HZ, fs=fs, output="sos")
            # Unit white noise through that filter has its impulse response's norm as RMS (the
            # 500 Hz pole dies out within 1 s): scaling by it, not by the drawn noise's RMS,
            # keeps the level a constant of the world.
            impulse = np.zeros(fs)
            impulse[0] = 1.0
            filtered_rms = float(np.sqrt(np.sum(sosfilt(self._room_noise_sos, impulse) ** 2)))
            self._room_noise_scale = (self.gain * direct_rms * 10 ** (-realism.room_noise_db / 20)
                                      / filtered_rms)
            # The diffuse field reaches the ears from all directions, fed by the speaker's
            # power radiated in all directions: both directivities' mean squared gains.
            self.diffuse_gain = _diffuse_gain(EAR_PATTERNS[ears]) / (2 * realism.speaker_beam + 1)
            self._sphere = sphere_directions(BACKSCATTER_RAYS)

    def impulse_responses(self, scene: Scene, max_order: Optional[int] = None,
                          speaker: bool = True, direct: bool = True) -> np.ndarray:
        """Room impulse responses from the speaker to both ears (image sources only).

        Under the realistic model each reflection keeps only its specular share.

        Args:
            scene: room, obstacles and rig pose.
            max_order: reflection order (default: the simulator's).
            speaker: give the speaker its directivity (realistic model); False: omnidirectional.
            direct: keep the direct path; False: the reflections alone.

        Returns:
            (2, L) float64, left ear first; sample 0 is the emission instant.
        """
        walls = [pra.wall_factory(corners, [float(a)], [0.0])
                 for corners, a in zip(scene.surface_polygons(), scene.absorption)]
        room = _SceneRoom(walls, scene.obstructing_surfaces(), fs=self.fs,
                          max_order=self.max_order if max_order is None else max_order)
        # add_source would silently drop a directivity of a class it does not know (the beam).
        beam = self._speaker_directivity(scene.rig.yaw) if speaker else None
        room.add_soundsource(pra.SoundSource(scene.rig.origin), directivity=beam)
        room.add_microphone_array(scene.rig.ear_positions(self.ear_spacing_m).T,
                                  directivity=self._directivities(scene.rig.yaw))
        if self.realism is not None or not direct:
            room.image_source_model()
            source = room.sources[0]
            if self.realism is not None:
                source.damping = (source.damping
                                  * (1.0 - self.realism.scattering) ** (source.orders / 2))
            if not direct:
                source.damping = np.where(source.orders == 0, 0.0, source.damping)
        room.compute_rir()
        # pyroomacoustics delays every RIR by half its fractional-delay filter; undo it.
        lead = pra.constants.get("frac_delay_length") // 2
        rirs = [np.asarray(room.rir[m][0])[lead:] for m in range(2)]
        out = np.zeros((2, max(len(r) for r in rirs)))
        for m, r in enumerate(rirs):
            out[m, : len(r)] = r
        return out

    def record(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """What the two ears record after the chirp: echoes, world gain and noise.

        Returns:
            (2, frames) float64 in [-1, 1] (not clipped here), left ear first.
        """
        if self.realism is not None:
            return self._record_realistic(scene, rng)
        echoes = self._chirp_through(self.impulse_responses(scene))
        return self.gain * echoes + rng.normal(0.0, self.noise_std, echoes.shape)

    def _record_realistic(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """``record`` under the realistic model: its impulse responses, latency, room noise."""
        assert self.realism is not None
        delay = int(round(self.realism.latency_s * self.fs))
        echoes = self._chirp_through(self.realistic_responses(scene, rng), delay)
        settle = int(round(FILTER_SETTLE_S * self.fs))
        hum = sosfilt(self._room_noise_sos, rng.standard_normal((2, settle + self.frames)), axis=1)
        hum = hum[:, settle:] * self._room_noise_scale
        return self.gain * echoes + hum + rng.normal(0.0, self.noise_std, echoes.shape)

    def realistic_responses(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """The realistic model's impulse responses from the speaker to both ears: specular image
        sources, diffuse reflections, the rig's echo, the shaded direct path and the tail.

        Returns:
            (2, L) float64 in the image sources' units, L >= the samples the recording keeps
            after the latency; sample 0 is the emission instant.
        """
        realism = self.realism
        assert realism is not None
        frames = self.frames - int(round(realism.latency_s * self.fs))
        reflections = self.impulse_responses(scene, direct=False)
        rirs = np.zeros((2, max(reflections.shape[1], frames)))
        rirs[:, : reflections.shape[1]] = reflections
        scattered, ahead_m = self._backscatter(scene, frames, rng)
        rirs[:, : scattered.shape[1]] += scattered
        # The rig's front sends the room's echoes out again: what reaches it (heard as the ears
        # hear) travels the speaker's paths a second time. A flat reflector's gain is its area
        # over the wavelength (Kirchhoff), at most a plane mirror's, the distance to the surface
        # ahead.
        echoes = rirs[:, : min(frames, max(reflections.shape[1], scattered.shape[1]))]
        again = fftconvolve(echoes, echoes.mean(axis=0)[None], axes=1)[:, :frames]
        rirs[:, : again.shape[1]] += min(realism.rig_echo_m, ahead_m) * again
        # Every scene's direct path is the free field's (same rig geometry).
        rirs[:, : self._direct_rirs.shape[1]] += (10 ** (realism.direct_path_db / 20)
                                                  * self._direct_rirs)
        rirs[:, :frames] += 10 ** (realism.tail_level_db / 20) * reverberant_tail(
            room_acoustics(scene, AIR_ABSORPTION_PER_M + realism.unmodelled_absorption_per_m),
            frames, self.max_order, self.diffuse_gain, rng, self.fs, realism.scattering)
        return rirs

    def _backscatter(self, scene: Scene, frames: int,
                     rng: np.random.Generator) -> Tuple[np.ndarray, float]:
        """First-order diffuse reflections, cast along ``BACKSCATTER_RAYS`` rays from the speaker.

        Each ray's patch scatters ``scattering`` of what it reflects as a Lambert source (radiance
        ``cos(incidence) / pi``), heard through the ears' patterns at its own delay. The scattered
        waves add with random phases: one Gaussian weight per ray, the same at both ears.

        Returns:
            (2, n) float64 in the image sources' units, n <= frames samples (up to the last
            arrival), and the distance straight ahead (m).
        """
        realism = self.realism
        assert realism is not None
        rig = scene.rig
        distance, surface, normal = first_hits(scene, np.vstack([rig.forward, self._sphere]))
        ahead_m = float(distance[0])
        distance, surface, normal = distance[1:], surface[1:], normal[1:]
        patches = rig.origin + distance[:, None] * self._sphere
        cos_incidence = np.abs(np.sum(self._sphere * normal, axis=1))
        beam = self._speaker_directivity(rig.yaw)
        beam_gain = 1.0 if beam is None else beam.gain(self._sphere)
        # Energy intercepted by each ray's solid angle and scattered per steradian back.
        radiance = (4.0 * np.pi / len(self._sphere) * beam_gain ** 2
                    * (1.0 - scene.absorption[surface])
                    * realism.scattering * cos_incidence / np.pi)
        weights = rng.standard_normal(len(self._sphere))
        ears = self._directivities(rig.yaw) or [None, None]
        arrivals, amplitudes = [], []
        for ear, pattern in zip(rig.ear_positions(self.ear_spacing_m), ears):
            back = patches - ear
            length = np.linalg.norm(back, axis=1)
            # pyroomacoustics' convention: the direction from the ear towards the arrival.
            gain = 1.0 if pattern is None else pattern.get_response(
                np.degrees(np.arctan2(back[:, 1], back[:, 0])),
                np.degrees(np.arccos(np.clip(back[:, 2] / length, -1.0, 1.0))))
            arrivals.append(np.round((distance + length) * self.fs / SPEED_OF_SOUND).astype(int))
            amplitudes.append(np.sqrt(radiance) * gain / length * weights)
        n = min(frames, max(int(arrival.max()) for arrival in arrivals) + 1)
        out = np.stack([np.bincount(arrival[arrival < n], amplitude[arrival < n], minlength=n)
                        for arrival, amplitude in zip(arrivals, amplitudes)])
        return out, ahead_m

    def through_chain(self, signal: np.ndarray) -> np.ndarray:
        """What the ears record of ``signal`` played through a unit path.

        Args:
            signal: (T,) emitted waveform.

        Returns:
            The realistic model: (T + 5 ms,) ``signal`` through the speaker's high-pass and the
            microphones' low-pass, with room for their ringing. The ideal one: ``signal`` itself.
        """
        if self.realism is None:
            return signal
        speaker = butter(2, self.realism.speaker_highpass_hz, btype="highpass", fs=self.fs,
                         output="sos")
        mic = butter(2, self.realism.mic_lowpass_hz, btype="lowpass", fs=self.fs, output="sos")
        padded = np.r_[signal, np.zeros(int(round(FILTER_SETTLE_S * self.fs)))]
        return sosfilt(mic, sosfilt(speaker, padded))

    def _chirp_through(self, rirs: np.ndarray, delay: int = 0) -> np.ndarray:
        """(2, frames): the heard chirp convolved with (2, L) impulse responses, started ``delay``
        samples late, zero-padded or cut."""
        audio = np.zeros((2, self.frames))
        wave = fftconvolve(rirs, self.heard[None], axes=1)[:, : self.frames - delay]
        audio[:, delay: delay + wave.shape[1]] = wave
        return audio

    @staticmethod
    def _free_field() -> Scene:
        """A large anechoic room: the rig's direct path alone."""
        floor = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
        return Scene(family="FreeField", floor=floor, height=4.0, boxes=(),
                     absorption=np.ones(6), albedo=np.ones((6, 3)),
                     rig=RigPose(position=(0.0, 0.0), height=1.0, yaw=0.0))

    def _directivities(self, yaw: float) -> Optional[List[CardioidFamily]]:
        p = EAR_PATTERNS[self.ears]
        if p is None:
            return None
        heading = np.degrees(yaw)
        return [CardioidFamily(orientation=DirectionVector(azimuth=heading + side * self.ear_angle_deg,
                                                           colatitude=90.0), p=p)
                for side in (1, -1)]

    def _speaker_directivity(self, yaw: float) -> Optional["_Beam"]:
        """The speaker's beam along the heading; None (omnidirectional) in the ideal model."""
        if self.realism is None or self.realism.speaker_beam == 0:
            return None
        return _Beam(self.realism.speaker_beam, yaw)


class _Beam(Directivity):
    """A frequency-flat forward beam, amplitude ``((1 + cos theta) / 2) ** order`` at angle theta
    off its axis (cardioid at order 1); its directivity factor is ``2 order + 1``.

    Args:
        order: beam order (>= 0).
        yaw: the axis' azimuth in the horizontal plane, radians.
    """

    def __init__(self, order: float, yaw: float) -> None:
        self.order = order
        self.axis = np.array([np.cos(yaw), np.sin(yaw), 0.0])

    @property
    def is_impulse_response(self) -> bool:
        return False

    @property
    def filter_len_ir(self) -> int:
        return 1

    def gain(self, directions: np.ndarray) -> np.ndarray:
        """(n,) amplitude gains towards (n, 3) unit directions."""
        return ((1.0 + directions @ self.axis) / 2.0) ** self.order

    def get_response(self, azimuth: np.ndarray, colatitude: Optional[np.ndarray] = None,
                     magnitude: bool = False, degrees: bool = True) -> np.ndarray:
        """(n,) gains towards the directions (pyroomacoustics' ``Directivity`` interface)."""
        if colatitude is None:
            colatitude = np.full(len(azimuth), 90.0 if degrees else np.pi / 2)
        return self.gain(spher2cart(azimuth=azimuth, colatitude=colatitude, degrees=degrees).T)

    def sample_rays(self, n_rays: int, rng: Optional[np.random.Generator] = None) -> None:
        """Ray tracing's interface, which this simulator does not use (image sources only)."""
        raise NotImplementedError("the beam serves the image-source method only")


def sphere_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice: equal areas)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    azimuth = np.pi * (1.0 + np.sqrt(5.0)) * k
    ring = np.sqrt(1.0 - z * z)
    return np.c_[ring * np.cos(azimuth), ring * np.sin(azimuth), z]


def _diffuse_gain(p: Optional[float]) -> float:
    """Mean of a cardioid-family pattern's squared gain ``(p + (1 - p) cos theta)^2`` over the
    sphere (1 for None, omnidirectional): 1 / its directivity factor."""
    return 1.0 if p is None else p ** 2 + (1 - p) ** 2 / 3
