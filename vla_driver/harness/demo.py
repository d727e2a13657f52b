"""The main job: closed-loop driving through the real ROS 2 nodes on the embedded simulator, next to the
privileged expert on the same seeds, with an annotated picture of one episode."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core.metrics import format_table, summarize
from ..runtime.loading import inference_threads, load_policy, resolve_checkpoint
from ..sim.closed_loop import run_episode
from ..sim.expert import ExpertPolicy
from ..sim.highway import DrivingSim
from ..sim.render import save_episode_gif, save_episode_png
from .ros_loop import run_closed_loop


def frame_dicts(run, dt: float) -> list[dict]:
    """Pair each recorded camera frame with the trajectory planned from it and the decision in force."""
    decisions = sorted(run.decisions, key=lambda d: d.get("stamp", 0.0))
    frames = []
    for i, (image, (stamp, poses, fallback)) in enumerate(zip(run.frames, run.trajectories, strict=False)):
        current = [d for d in decisions if d.get("stamp", 0.0) <= stamp]
        label = f"{current[-1]['speed']}, {current[-1]['path']}" if current else "(no decision yet)"
        frames.append({"image": image, "trajectory": poses, "time": i * dt,
                       "decision": label + (" FALLBACK" if fallback else "")})
    return frames


def run_demo(checkpoint: str, backend: str, scenarios: list[str], seeds: list[int], duration_s: float | None,
             out: Path) -> dict:
    """Drive every (scenario, seed) through the ROS nodes, the expert on the same seeds in-process; print
    both tables, write results.json and one annotated GIF + PNG; returns the figures for the JSON line."""

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(resolve_checkpoint(checkpoint))
    start = time.time()
    # One policy per node (they are not thread-safe), loaded once and reused across episodes.
    threads = inference_threads()  # two nodes infer at once on the shared cores
    policies = tuple(load_policy(checkpoint, backend, threads=threads) for _ in range(2))
    print(f"checkpoint {checkpoint} (model {policies[0].model_version}), backend {policies[0].backend_name}: "
          f"{policies[0].backend_choice.reason}")
    results, missed, cycles, latencies = [], 0, 0, []
    gif = None
    for scenario in scenarios:
        for seed in seeds:
            record = gif is None
            run = run_closed_loop(scenario, seed, checkpoint, backend, policies=policies,
                                  duration_s=duration_s, record_frames=record, progress=False)
            extras = run.result.extras
            missed += int(extras.get("missed_cycles", 0))
            cycles += int(extras.get("cycles", 0))
            latencies.append(extras.get("cycle_latency_p50_ms") or float("nan"))
            results.append(run.result)
            print(f"{scenario:<13} seed {seed}: DS {run.result.driving_score:.3f} completion "
                  f"{run.result.route_completion:.2f} infractions {dict(run.result.infractions) or '-'}")
            if record and run.frames:
                frames = frame_dicts(run, 0.1)
                gif = save_episode_gif(frames, out / f"{scenario}_{seed}.gif", every=2)
                save_episode_png(frames, out / f"{scenario}_{seed}.png")
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
          f"{np.nanmedian(latencies):.1f} ms, episode GIF: {gif}, wall time {time.time() - start:.0f} s")
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    overall = summary["overall"]
    record = {"bench": "demo", "driving_score": overall["driving_score"], "success_rate": overall["success_rate"],
              "expert_driving_score": expert["overall"]["driving_score"], "cycles": cycles, "missed_cycles": missed}
    return record
