"""The main job: closed-loop driving through the real ROS 2 nodes on the embedded simulator, next to the
privileged expert on the same seeds, with an annotated picture of one episode per scenario."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.metrics import format_table, summarize
from ..runtime.loading import inference_threads, load_policy, resolve_checkpoint
from ..sim.closed_loop import run_episode
from ..sim.expert import ExpertPolicy
from ..sim.highway import DrivingSim
from ..sim.render import save_episode_gif, save_episode_png
from .ros_loop import run_closed_loop

STAMP_TOLERANCE_S = 1e-3  # a plan belongs to the camera image with its stamp (ROS stamps are nanoseconds)


def decision_label(decisions: list[dict], stamp: float) -> str:
    """The decision in force at ``stamp``: the latest one published at or before it."""
    current = [d for d in decisions if d.get("stamp", 0.0) <= stamp + 1e-6]
    return f"{current[-1]['speed']}, {current[-1]['path']}" if current else "(no decision yet)"


def frame_dicts(run, dt: float = 0.1) -> list[dict]:
    """One frame dict per recorded cycle for :mod:`vla_driver.sim.render`: what the bridge recorded
    (``run.views``: time, the car's speed, top-down view, front camera) with the trajectory planned from
    that cycle's camera image (matched by stamp) and the decision in force. A run recorded without views
    gives top-down frames paired by index, ``time`` = index x ``dt`` and no speed (shown as unknown)."""
    decisions = sorted(run.decisions, key=lambda d: d.get("stamp", 0.0))
    frames = []
    if not run.views:
        for i, (image, (stamp, poses, fallback)) in enumerate(zip(run.frames, run.trajectories, strict=False)):
            frames.append({"image": image, "trajectory": poses, "time": i * dt, "speed": None,
                           "decision": decision_label(decisions, stamp) + (" FALLBACK" if fallback else "")})
        return frames
    stamps = np.array([stamp for stamp, _, _ in run.trajectories], dtype=np.float64)
    for view in run.views:
        k = int(np.argmin(np.abs(stamps - view["time"]))) if len(stamps) else -1
        if k < 0 or abs(stamps[k] - view["time"]) > STAMP_TOLERANCE_S:
            continue  # the episode ended before a plan from this image came back
        _, poses, fallback = run.trajectories[k]
        frame = {key: value for key, value in view.items() if key != "topdown"}
        frame.update(image=view["topdown"], trajectory=poses,
                     decision=decision_label(decisions, view["time"]) + (" FALLBACK" if fallback else ""))
        frames.append(frame)
    return frames


def pictured_seed(seeds: list[int]) -> int:
    """The episode of each scenario that gets a picture: its first seed."""
    return seeds[0]


def save_pictures(run, out: Path, name: str) -> list[Path]:
    """``<name>.png`` (contact sheet of a few evenly spaced frames) and ``<name>.gif`` (every 2nd frame)."""
    frames = frame_dicts(run)
    if not frames:
        return []
    return [save_episode_png(frames, out / f"{name}.png", count=4),
            save_episode_gif(frames, out / f"{name}.gif", every=2)]


def drive_episodes(scenarios: list[str], seeds: list[int], drive: Callable, out: Path) -> dict:
    """Drive every (scenario, seed) with ``drive(scenario, seed, record_frames)`` (a ``ClosedLoopRun``);
    only the first seed of each scenario is recorded, and gets a picture. Returns the results, the
    pictures written and the bridge's cycle figures."""
    results, pictures, missed, cycles, latencies = [], [], 0, 0, []
    for scenario in scenarios:
        for seed in seeds:
            record = seed == pictured_seed(seeds)
            run = drive(scenario, seed, record)
            extras = run.result.extras
            missed += int(extras.get("missed_cycles", 0))
            cycles += int(extras.get("cycles", 0))
            latencies.append(extras.get("cycle_latency_p50_ms") or float("nan"))
            results.append(run.result)
            print(f"{scenario:<13} seed {seed}: DS {run.result.driving_score:.3f} completion "
                  f"{run.result.route_completion:.2f} infractions {dict(run.result.infractions) or '-'}")
            if record:
                written = save_pictures(run, out, f"{scenario}_{seed}")
                for path in written:
                    print(f"  picture: {path}")
                pictures += written
    return {"results": results, "pictures": pictures, "missed": missed, "cycles": cycles, "latencies": latencies}


def run_demo(checkpoint: str, backend: str, scenarios: list[str], seeds: list[int], duration_s: float | None,
             out: Path) -> dict:
    """Drive every (scenario, seed) through the ROS nodes, the expert on the same seeds in-process; print
    both tables, write results.json and an annotated GIF + PNG of the first seed of each scenario;
    returns the figures for the JSON line."""
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(resolve_checkpoint(checkpoint))
    start = time.time()
    # One policy per node (they are not thread-safe), loaded once and reused across episodes.
    threads = inference_threads()  # two nodes infer at once on the shared cores
    policies = tuple(load_policy(checkpoint, backend, threads=threads) for _ in range(2))
    print(f"checkpoint {checkpoint} (model {policies[0].model_version}), backend {policies[0].backend_name}: "
          f"{policies[0].backend_choice.reason}")

    def drive(scenario: str, seed: int, record: bool):
        return run_closed_loop(scenario, seed, checkpoint, backend, policies=policies, duration_s=duration_s,
                               record_frames=record, progress=False)

    driven = drive_episodes(scenarios, seeds, drive, out)
    results, cycles, missed, latencies = driven["results"], driven["cycles"], driven["missed"], driven["latencies"]
    summary = summarize(results)
    expert_results = []
    for scenario in scenarios:
        for seed in seeds:
            sim = DrivingSim(scenario, seed, duration_s=duration_s)
            expert_results.append(run_episode(ExpertPolicy(), scenario, seed, sim=sim)[0])
            sim.close()
    expert = summarize(expert_results)
    print("\nVLA policy through the ROS 2 nodes (95% CI: Student t over episodes)")
    print(format_table(summary))
    print("\nprivileged expert, same seeds (in-process)")
    print(format_table(expert))
    print(f"\ncycles {cycles}, missed {missed}, cycle latency p50 (median over episodes) "
          f"{np.nanmedian(latencies):.1f} ms, wall time {time.time() - start:.0f} s")
    print("pictures (one episode per scenario):" + "".join(f"\n  {p}" for p in driven["pictures"]))
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    overall = summary["overall"]
    record = {"bench": "demo", "driving_score": overall["driving_score"], "success_rate": overall["success_rate"],
              "expert_driving_score": expert["overall"]["driving_score"], "cycles": cycles, "missed_cycles": missed}
    return record
