"""``vla-driver bench replay``: a lockstep replay of a sample drive through the real nodes with the default
model: real-time factor and planning accuracy; the report and its plots stay in ``out``. The sample drive is
recorded with the model's cameras at its input size, or (``native``) as CARLA's bridge sends a front camera."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..core.camera_rig import rig_label
from ..harness.record_sim import CARLA_REMAPS, record_carla_like, record_sim
from ..harness.replay import replay_bag
from ..model.build import build_random_checkpoint
from ..model.checkpoint import checkpoint_rig
from ..runtime.loading import resolve_checkpoint
from . import emit


def default_checkpoint(work: Path) -> str:
    """The embedded default checkpoint; while the package ships none, a random tiny one (said so)."""
    if (resolve_checkpoint("") / "manifest.json").exists():
        return ""
    print(f"no embedded default checkpoint at {resolve_checkpoint('')}: using a random tiny one")
    return str(build_random_checkpoint(work / "random_tiny", seed=0))


def run(out: str | Path, bag: str = "", seconds: float = 20.0, checkpoint: str = "", backend: str = "auto",
        native: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint or default_checkpoint(out)
    rig = checkpoint_rig(resolve_checkpoint(checkpoint))
    if native and (rig is None or rig.names != ("front",)):
        raise ValueError(f"--native records CARLA's front camera; the model drives from {rig_label(rig)}")
    remaps = CARLA_REMAPS if native else None  # a --bag with --native is one as the bridge records it
    if not bag:
        shutil.rmtree(out / "sample", ignore_errors=True)  # one drive per folder: replay refuses two
        bag = (record_carla_like(out / "sample", seconds, seed=3) if native else
               record_sim(out / "sample", "highway", seconds, "expert", seed=3, rig=rig))
    result = replay_bag(bag, out / "replay", lockstep=True, remaps=remaps, checkpoint=checkpoint, backend=backend)
    r = result.report
    print((out / "replay" / "report.md").read_text())
    print(f"report and plots: {out / 'replay'}")
    record = {"bench": "replay", "native": native, "realtime_factor": r["realtime_factor"],
              "planning_accuracy": r["planning_accuracy"], "bag_seconds": r["bag_seconds"],
              "wall_seconds": r["wall_seconds"], "frames": r["frames"], "decisions": r["decisions"],
              "l2_m": r["l2_m"], "decision_latency_ms_p50": r["decision_latency_ms"]["p50"],
              "frame_latency_ms_p50": (r["frame_latency_ms"] or {}).get("p50"), "backend": r["backend"],
              "model_version": r["model_version"]}
    emit(record)
    return record
