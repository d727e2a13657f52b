"""Observations to check an export on: frames the expert records in held-out simulator episodes, or the
samples of a ``record-expert`` dataset (the runtime's parity check takes them ready-made)."""
from __future__ import annotations

from pathlib import Path

from ..core.camera_rig import CameraRig
from ..core.types import Observation
from .closed_loop import HELDOUT_SEEDS, run_episode
from .expert import ExpertPolicy
from .highway import DrivingSim
from .shards import load_dataset


def observations_for(frames, rig: CameraRig | None = None, history: int = 1) -> list | None:
    """Resolve a ``--frames``/``--sim-frames`` value into the ``frames`` of
    :func:`vla_driver.runtime.parity.verify_onnx_against_torch`: a number of simulator frames (seen by
    ``rig``'s cameras, ``history`` frames each), a dataset directory, or Observations as they are; None
    stays None (the check's synthetic frames)."""
    if frames is None:
        return None
    if isinstance(frames, int):
        return simulator_observations(frames, rig=rig, history=history)
    if isinstance(frames, (str, Path)):
        data = load_dataset(frames)
        return [Observation(data["image"][i], float(data["ego"][i, 0]), str(data["navigation"][i]),
                            float(data["ego"][i, 1]), float(data["ego"][i, 2])) for i in range(len(data["image"]))]
    return list(frames)


def simulator_observations(count: int, scenarios=("highway", "merge", "roundabout", "intersection"),
                           rig: CameraRig | None = None, history: int = 1) -> list:
    """``count`` camera frames (+ ego state, navigation) from the expert driving held-out episodes, as
    ``rig``'s cameras see them (None: the top-down view)."""
    out: list = []
    seed = iter(HELDOUT_SEEDS)
    while len(out) < count:
        for scenario in scenarios:
            episode_seed = next(seed)
            sim = DrivingSim(scenario, episode_seed, rig=rig, history=history)
            try:
                _, recorded = run_episode(ExpertPolicy(), scenario, episode_seed, record_frames=True, sim=sim)
            finally:
                sim.close()
            out += [Observation(f["image"], float(f["speed"]), str(f["navigation"])) for f in recorded]
    return out[:count]
