"""The main job: closed-loop driving through the real ROS 2 nodes on the embedded simulator."""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub, bench_sub) -> None:
    p = sub.add_parser("demo", help="drive the embedded simulator through the ROS 2 nodes; table + GIF")
    p.add_argument("--checkpoint", default="", help="checkpoint dir (default: the embedded one)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    p.add_argument("--scenarios", default="highway,merge,roundabout,intersection")
    p.add_argument("--episodes", type=int, default=2, help="held-out episodes per scenario")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of sim time per episode (0 = scenario default)")
    p.add_argument("--out", default="runs/demo", help="where the GIF, PNG and results JSON go")
    p.set_defaults(func=demo)


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


def demo(args) -> int:
    from ..core.metrics import format_table, summarize
    from ..nodes.compose import run_closed_loop
    from ..runtime.policy import inference_threads, load_policy, resolve_checkpoint
    from ..sim.closed_loop import HELDOUT_SEEDS, run_episode
    from ..sim.expert import ExpertPolicy
    from ..sim.highway import DrivingSim
    from ..sim.render import save_episode_gif, save_episode_png
    from .sim import _scenarios

    scenarios = _scenarios(args.scenarios)
    seeds = list(HELDOUT_SEEDS[: args.episodes])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(resolve_checkpoint(args.checkpoint))
    start = time.time()
    # One policy per node (they are not thread-safe), loaded once and reused across episodes.
    threads = inference_threads()  # two nodes infer at once on the shared cores
    policies = tuple(load_policy(checkpoint, args.backend, threads=threads) for _ in range(2))
    print(f"checkpoint {checkpoint} (model {policies[0].model_version}), backend {policies[0].backend_name}: "
          f"{policies[0].backend_choice.reason}")
    results, missed, cycles, latencies = [], 0, 0, []
    gif = None
    for scenario in scenarios:
        for seed in seeds:
            record = gif is None
            run = run_closed_loop(scenario, seed, checkpoint, args.backend, policies=policies,
                                  duration_s=args.duration or None, record_frames=record, progress=False)
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
            sim = DrivingSim(scenario, seed, duration_s=args.duration or None)
            expert_results.append(run_episode(ExpertPolicy(), scenario, seed, sim=sim)[0])
            sim.close()
    expert = summarize(expert_results)
    print("\nVLA policy through the ROS 2 nodes (95% CI: Student t over episodes)")
    print(format_table(summary))
    print("\nprivileged expert, same seeds (in-process)")
    print(format_table(expert))
    import numpy as np

    print(f"\ncycles {cycles}, missed {missed}, cycle latency p50 (median over episodes) "
          f"{np.nanmedian(latencies):.1f} ms, episode GIF: {gif}, wall time {time.time() - start:.0f} s")
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    overall = summary["overall"]
    print(json.dumps({"bench": "demo", "driving_score": round(overall["driving_score"], 4),
                      "success_rate": round(overall["success_rate"], 4),
                      "expert_driving_score": round(expert["overall"]["driving_score"], 4),
                      "cycles": cycles, "missed_cycles": missed}))
    return 0
