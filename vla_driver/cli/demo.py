"""The main job: closed-loop driving through the real ROS 2 nodes on the embedded simulator."""
from __future__ import annotations

from pathlib import Path

from ..bench import emit
from ..harness.demo import run_demo
from ..sim.closed_loop import HELDOUT_SEEDS
from .common import DEFAULT_SCENARIOS, scenario_list


def register(sub) -> None:
    p = sub.add_parser("demo", help="drive the embedded simulator through the ROS 2 nodes; table + pictures")
    p.add_argument("--checkpoint", default="", help="checkpoint dir (default: the embedded one)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    p.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    p.add_argument("--episodes", type=int, default=2, help="held-out episodes per scenario")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of sim time per episode (0 = scenario default)")
    p.add_argument("--out", default="runs/demo", help="where the results JSON and, per scenario, a PNG + GIF of its first episode go")
    p.set_defaults(func=demo)


def demo(args) -> int:
    emit(run_demo(args.checkpoint, args.backend, scenario_list(args.scenarios), list(HELDOUT_SEEDS[: args.episodes]),
             args.duration or None, Path(args.out)))
    return 0
