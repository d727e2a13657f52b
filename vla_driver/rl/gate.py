"""Promotion gate and model registry: a candidate replaces the current model only if it drives no worse.

:func:`compare_policies` drives both checkpoints closed loop on the same held-out (scenario, seed) pairs
(``sim.closed_loop.HELDOUT_SEEDS``; the simulator is deterministic, so the pairs differ only by the
policy) and reports DS and SR per scenario and overall with 95 % t-intervals, plus the paired DS
difference (candidate - baseline per pair) with its own interval, which is much tighter than comparing
two independent means.

:func:`gate` promotes only if (1) the candidate's mean DS >= the current mean DS - ``tolerance`` and
(2) with a replay set (one or more drives), the candidate's open-loop planning accuracy on it, pooled over
its samples, >= the current one's - ``accuracy_tolerance``. The replay set must be drives the current model
did not drive (the expert's, a human's, annotated ones): where a bag logs the current model's own
decisions, ``truth="logged"`` scores agreement with it; ``truth="future"`` scores against the decision
matching the logged motion instead. The reasons list says what was measured and which rule decided.

:func:`promote` copies a checkpoint into ``registry/<model_version>/``, points ``registry/current`` (a
relative symlink, swapped atomically with rename) at it, builds TensorRT engines into it when TensorRT
and a GPU are here (else says why not; the runtime then uses ONNX Runtime or torch), and appends one
JSON line to ``registry/registry.jsonl`` (version, previous version, lineage, metrics, gate, engines).
A node whose ``checkpoint`` parameter is ``registry/current`` picks the new model up when the parameter
is set again (hot swap).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..core.metrics import EpisodeResult, mean_ci95
from ..experience.reader import find_bags, timelines
from ..harness.replay import replay_bag
from ..harness.replay_input import open_bag_input
from ..model.checkpoint import checkpoint_rig, read_manifest, sha256_file, verify_checkpoint
from ..model.signing import load_private_key
from ..runtime.loading import ensure_exported, load_policy, resolve_checkpoint
from ..runtime.tensorrt_builder import build_engine
from ..runtime.tensorrt_env import tensorrt_available
from ..runtime.trust import sign_with_artifacts
from ..sim.closed_loop import HELDOUT_SEEDS, evaluate

log = logging.getLogger(__name__)

DEFAULT_SCENARIOS = ("highway", "merge", "roundabout", "intersection")
REGISTRY_LOG = "registry.jsonl"
CURRENT = "current"


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ closed loop
def run_policy(checkpoint, scenarios, seeds, backend: str = "torch", duration_s: float | None = None,
               progress: bool = True, workers: int = 0, threads: int = 2) -> list[EpisodeResult]:
    """Closed-loop episodes of one checkpoint (``closed_loop.evaluate``), optionally shorter for quick checks."""
    factory = partial(load_policy, str(checkpoint), backend, threads=threads)
    return evaluate(factory, scenarios, seeds, progress=progress, workers=workers, duration_s=duration_s,
                    desc=f"closed-loop {read_manifest(checkpoint)['model_version']}")


def _side(results: list[EpisodeResult]) -> dict:
    ds, ds_ci = mean_ci95(r.driving_score for r in results)
    sr, sr_ci = mean_ci95(float(r.success) for r in results)
    return {"episodes": len(results), "driving_score": ds, "ds_ci95": ds_ci, "success_rate": sr, "sr_ci95": sr_ci,
            "route_completion": float(np.mean([r.route_completion for r in results]))}


def _pair_stats(base: list[EpisodeResult], cand: list[EpisodeResult]) -> dict:
    diff, diff_ci = mean_ci95(c.driving_score - b.driving_score for b, c in zip(base, cand, strict=True))
    sr_diff, sr_diff_ci = mean_ci95(float(c.success) - float(b.success) for b, c in zip(base, cand, strict=True))
    return {"baseline": _side(base), "candidate": _side(cand), "ds_diff": diff, "ds_diff_ci95": diff_ci,
            "sr_diff": sr_diff, "sr_diff_ci95": sr_diff_ci}


def compare_policies(baseline_ckpt, candidate_ckpt, scenarios=DEFAULT_SCENARIOS, seeds=None,
                     backend: str = "torch", episodes: int = 5, duration_s: float | None = None,
                     progress: bool = True, workers: int = 0, threads: int = 2) -> dict:
    """Both checkpoints on the same held-out pairs; seeds default to the first ``episodes`` held-out seeds.

    Returns {"baseline", "candidate" (model versions), "per_scenario": {name: stats}, "overall": stats,
    "pairs": [...]}; stats = baseline/candidate DS, SR (mean, 95 % CI half-width), paired DS/SR difference.
    """
    scenarios = list(scenarios)
    seeds = list(seeds) if seeds is not None else list(HELDOUT_SEEDS[:episodes])
    if not scenarios or not seeds:
        raise ValueError("compare_policies needs at least one scenario and one seed")
    base = run_policy(baseline_ckpt, scenarios, seeds, backend, duration_s, progress, workers, threads)
    cand = run_policy(candidate_ckpt, scenarios, seeds, backend, duration_s, progress, workers, threads)
    per_scenario = {s: _pair_stats([r for r in base if r.scenario == s], [r for r in cand if r.scenario == s])
                    for s in scenarios}
    return {
        "baseline": read_manifest(baseline_ckpt)["model_version"],
        "candidate": read_manifest(candidate_ckpt)["model_version"],
        "seeds": seeds, "duration_s": duration_s, "backend": backend,
        "per_scenario": per_scenario, "overall": _pair_stats(base, cand),
        "pairs": [{"scenario": b.scenario, "seed": b.seed, "baseline_ds": b.driving_score,
                   "candidate_ds": c.driving_score, "baseline_termination": b.termination,
                   "candidate_termination": c.termination} for b, c in zip(base, cand, strict=True)],
    }


def _pm(mean: float, half: float) -> str:
    return f"{mean:.3f}" + ("" if math.isnan(half) else f" +- {half:.3f}")


def format_comparison(comparison: dict, names: tuple[str, str] = ("baseline", "candidate")) -> str:
    """A table: per scenario and overall, DS and SR of both with 95 % CI, and the paired DS difference."""
    a, b = names
    header = f"{'scenario':<14}{'n':>3}  {a + ' DS':<18}{b + ' DS':<18}{'paired diff':<18}{a + ' SR':<16}{b + ' SR':<16}"
    lines = [header, "-" * len(header)]
    rows = list(comparison["per_scenario"].items()) + [("overall", comparison["overall"])]
    for name, s in rows:
        base, cand = s["baseline"], s["candidate"]
        lines.append(f"{name:<14}{base['episodes']:>3}  {_pm(base['driving_score'], base['ds_ci95']):<18}"
                     f"{_pm(cand['driving_score'], cand['ds_ci95']):<18}{_pm(s['ds_diff'], s['ds_diff_ci95']):<18}"
                     f"{_pm(base['success_rate'], base['sr_ci95']):<16}{_pm(cand['success_rate'], cand['sr_ci95']):<16}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ replay
def replay_accuracy(checkpoint, bag, backend: str = "torch", work_dir=None, progress: bool = False,
                    truth: str = "logged") -> dict:
    """Open-loop planning accuracy of ``checkpoint`` on one logged drive (a bag, or a route's segments).

    Replayed in lockstep through the real nodes (``harness.replay``). Labels as in
    ``harness.replay_scoring.evaluate_replay``: ``truth="logged"`` takes the bag's logged decisions where
    it has them, ``"future"`` always the decision matching the logged motion.
    """
    with contextlib.ExitStack() as stack:  # without a work_dir the replay's files go when it is scored
        out = Path(work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="gate_replay_")))
        result = replay_bag(bag, out, lockstep=True, checkpoint=str(checkpoint), backend=backend,
                            progress=progress, truth=truth)
    return {"planning_accuracy": result.report.get("planning_accuracy"), "samples": result.report.get("samples"),
            "via": "harness.replay", "report": str(out / "report.json") if work_dir else None,
            "left_out": result.report.get("bag_left_out") or None}  # topics, damaged chunks of the bag


def replay_drives(paths, cameras: tuple[str, ...] | None = None) -> list:
    """The drives in ``paths`` (bags, a route's segment folder, folders of several drives), each as what
    :func:`replay_accuracy` takes: the bag, or the list of one route's segments. A missing path, a folder
    without bags or a bag that cannot be replayed to a model driving from ``cameras`` (a camera or the
    odometry missing, ROS 1) raises here, before anything is driven."""
    drives = [drive[0] if len(drive) == 1 else drive for drive in timelines(find_bags(paths))]
    for drive in drives:
        open_bag_input(drive, cameras=cameras)
    return drives


def replay_set_accuracy(checkpoint, drives, backend: str = "torch", work_dir=None, truth: str = "logged") -> dict:
    """Planning accuracy over a replay set (``replay_drives``), each drive replayed as in
    :func:`replay_accuracy`: the share of all their samples decided right, so a long drive weighs more
    than a short one. A drive that yields no sample is listed and left out of the pool."""
    per_drive = []
    for i, drive in enumerate(drives):
        name = str(drive) if isinstance(drive, str | os.PathLike) else f"{drive[0]} .. {Path(drive[-1]).name}"
        per_drive.append({"bag": name, **replay_accuracy(checkpoint, drive, backend,
                                                            Path(work_dir) / f"{i:03d}" if work_dir else None,
                                                            truth=truth)})
    scored = [r for r in per_drive if r["planning_accuracy"] is not None and r["samples"]]
    samples = sum(r["samples"] for r in scored)
    correct = sum(r["planning_accuracy"] * r["samples"] for r in scored)
    return {"planning_accuracy": correct / samples if samples else None, "samples": samples, "bags": per_drive}


# ------------------------------------------------------------------------------------------ gate
def gate(current, candidate, replay=(), scenarios=DEFAULT_SCENARIOS, seeds=None, episodes: int = 5,
         tolerance: float = 0.02, accuracy_tolerance: float = 0.02, backend: str = "torch",
         duration_s: float | None = None, work_dir=None, progress: bool = True, workers: int = 0,
         threads: int = 2, replay_truth: str = "logged") -> GateDecision:
    """Promote ``candidate`` over ``current``? See the module docstring for the rules. ``replay``: bags or
    folders of them (``replay_drives``), checked before the closed-loop runs start."""
    rig = checkpoint_rig(resolve_checkpoint(candidate))
    drives = replay_drives(replay, rig.names if rig is not None else None) if replay else []
    comparison = compare_policies(current, candidate, scenarios, seeds, backend, episodes, duration_s, progress,
                                  workers, threads)
    o = comparison["overall"]
    cur, cand = o["baseline"], o["candidate"]
    measured = (f"closed-loop DS {_pm(cand['driving_score'], cand['ds_ci95'])} vs current "
                f"{_pm(cur['driving_score'], cur['ds_ci95'])}, paired difference {_pm(o['ds_diff'], o['ds_diff_ci95'])}"
                f" over {cur['episodes']} episodes; SR {cand['success_rate']:.2f} vs {cur['success_rate']:.2f}")
    reasons, promote = [], True
    if not (math.isfinite(cand["driving_score"]) and math.isfinite(cur["driving_score"])):
        promote = False
        reasons.append(f"{measured}: no usable driving score")
    elif cand["driving_score"] >= cur["driving_score"] - tolerance:
        reasons.append(f"{measured}: not worse (tolerance {tolerance})")
    else:
        promote = False
        reasons.append(f"{measured}: worse by {cur['driving_score'] - cand['driving_score']:.3f} "
                       f"> tolerance {tolerance}")
    metrics = {"closed_loop": comparison}
    if drives:
        work = Path(work_dir) if work_dir else None
        acc_cur = replay_set_accuracy(current, drives, backend, work and work / "replay_current", replay_truth)
        acc_cand = replay_set_accuracy(candidate, drives, backend, work and work / "replay_candidate", replay_truth)
        metrics["replay"] = {"truth": replay_truth, "current": acc_cur, "candidate": acc_cand}
        a, b = acc_cand["planning_accuracy"], acc_cur["planning_accuracy"]
        on = f"{len(drives)} drive(s), {acc_cand['samples']} samples, truth {replay_truth}"
        if a is None or b is None:
            promote = False
            reasons.append(f"replay set ({on}) gave no planning accuracy")
        elif acc_cand["samples"] != acc_cur["samples"]:
            promote = False
            reasons.append(f"replay scored {acc_cur['samples']} samples for current and {acc_cand['samples']} "
                           "for candidate: the accuracies are not comparable")
        elif a >= b - accuracy_tolerance:
            reasons.append(f"replay planning accuracy {a:.3f} vs current {b:.3f} on {on}: no regression "
                           f"(tolerance {accuracy_tolerance})")
        else:
            promote = False
            reasons.append(f"replay planning accuracy {a:.3f} vs current {b:.3f} on {on}: regressed by "
                           f"{b - a:.3f} > tolerance {accuracy_tolerance}")
    return GateDecision(promote, reasons, metrics)


# ------------------------------------------------------------------------------------------ registry
def current_version(registry_dir) -> str | None:
    """The model version ``registry/current`` points at, or None for an empty registry."""
    link = Path(registry_dir) / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def _point_current(registry: Path, version: str) -> None:
    tmp = registry / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version, tmp)  # relative: the registry can move as a whole
    os.replace(tmp, registry / CURRENT)  # rename(2): readers see the old or the new target, never none


def _build_engines(checkpoint: Path, precision: str) -> dict:
    ok, why = tensorrt_available()
    if not ok:
        return {"built": False, "skipped": f"TensorRT engine build skipped: {why}"}
    try:
        specs = ensure_exported(checkpoint, sha256_file(checkpoint / "manifest.json"))
        engines = checkpoint / "engines"
        engines.mkdir(exist_ok=True)
        paths = [str(build_engine(checkpoint / "onnx" / s.onnx_file, engines, s, precision).relative_to(checkpoint))
                 for s in specs.values()]
    except Exception as e:  # the runtime falls back to ONNX Runtime / torch, so promotion still stands
        log.error("engine build failed for %s: %s", checkpoint, e)
        return {"built": False, "error": f"{type(e).__name__}: {e}", "tensorrt": why}
    return {"built": True, "engines": paths, "precision": precision, "tensorrt": why}


def promote(candidate, registry_dir, gate_decision: GateDecision | dict | None = None,
            precision: str = "fp16", sign_key: str | Path = "") -> dict:
    """Install ``candidate`` as the registry's current model; returns the registry log record. With
    ``sign_key`` the installed copy, its ONNX graphs and engines are signed (``runtime.trust``) before it
    becomes current."""
    candidate = Path(candidate)
    if sign_key:
        load_private_key(Path(sign_key))  # a bad key fails here, before anything is installed
    manifest = verify_checkpoint(candidate)
    version = manifest["model_version"]
    registry = Path(registry_dir)
    registry.mkdir(parents=True, exist_ok=True)
    dest = registry / version
    if not dest.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=registry))
        try:
            shutil.copytree(candidate, tmp, dirs_exist_ok=True, symlinks=False)
            tmp.chmod(0o755)  # mkdtemp makes it private; nodes may run as another user
            verify_checkpoint(tmp)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    previous = current_version(registry)
    engine = _build_engines(dest, precision)
    signed_by = None
    if sign_key:  # with the graphs the car runs (exported now, or a node would make unsigned ones) and engines
        try:
            ensure_exported(dest, sha256_file(dest / "manifest.json"))
        except Exception as e:  # noqa: BLE001 - unsigned graphs are refused, the signed checkpoint drives on torch
            log.error("ONNX export failed for %s: %s", dest, e)
        signed_by = sign_with_artifacts(dest, sign_key)[0]
    _point_current(registry, version)
    if isinstance(gate_decision, GateDecision):
        gate_decision = gate_decision.to_dict()
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model_version": version, "previous": previous,
        "source": str(candidate.resolve()), "path": str(dest), "lineage": manifest.get("lineage", {}),
        "metrics": manifest.get("metrics", {}), "gate": gate_decision, "engine": engine, "signed_by": signed_by,
    }
    with open(registry / REGISTRY_LOG, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return record
