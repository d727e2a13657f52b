"""``vla-driver bench ...``: every benchmark's options; the measuring lives in ``vla_driver.bench``."""
from __future__ import annotations

import sys
from pathlib import Path

from ..bench import backends, camera, decision, faults, logger, open_loop, replay, rl_gain, scale, soak
from ..harness.faults import enter_private_mounts
from .common import (
    DEFAULT_SCENARIOS,
    add_eval_arguments,
    checkpoint_dir,
    heldout_seeds,
    policy_threads,
    scenario_list,
)
from .sim import add_eval_command


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures and one JSON line").add_subparsers(
        dest="bench", required=True)
    add_eval_command(bench.add_parser("closed_loop", help="same as `vla-driver eval`"))

    b = bench.add_parser("camera", help="simulator step + every camera of a rig rendered at the model's input size")
    b.add_argument("--rig", default="front3", help="a preset (front, front3, surround6) or a rig YAML file")
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--scenario", default="highway")
    b.set_defaults(func=_camera)

    b = bench.add_parser("decision", help="single-pass candidate scoring vs autoregressive generate")
    b.add_argument("--checkpoint", default="")
    b.add_argument("--iters", type=int, default=50)
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=_decision)

    b = bench.add_parser("backends", help="torch eager vs ONNX Runtime latency and memory at batch 1")
    b.add_argument("--checkpoint", default="")
    b.add_argument("--iters", type=int, default=100)
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=_backends)

    b = bench.add_parser("scale", help="the cost curve from ~4 M to 0.5 B parameters (Qwen2 stand-ins, ViT-B "
                                           "on 1 and 3 cameras) on torch, ONNX Runtime and ORT int8")
    b.add_argument("--variants", default=",".join(scale.DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(scale.VARIANTS)}")
    b.add_argument("--backends", default=",".join(scale.BACKENDS))
    b.add_argument("--work", default="runs/bench/scale", help="stand-ins, checkpoints, graphs, scale.json, plot")
    b.add_argument("--iters", type=int, default=10, help="timed calls per figure")
    b.add_argument("--frames", type=int, default=200, help="simulator frames for int8's decision agreement")
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=_scale)

    b = bench.add_parser("replay", help="lockstep replay of a sample bag with the default model: "
                                            "real-time factor and planning accuracy")
    b.add_argument("--bag", default="", help="bag to replay (default: record-sim of a highway drive)")
    b.add_argument("--native", action="store_true",
                   help="record the sample drive as CARLA's bridge sends it: the front camera at 800x600 bgra8, "
                        "20 Hz, its topic names remapped (a front-camera model)")
    b.add_argument("--seconds", type=float, default=20.0, help="length of the recorded sample drive")
    b.add_argument("--checkpoint", default="", help="policy checkpoint; empty = the embedded default")
    b.add_argument("--backend", default="auto")
    b.add_argument("--out", default="runs/bench/replay", help="where the sample bag, the replay and its report go")
    b.set_defaults(func=_replay)

    b = bench.add_parser(
        "logger", help="the logger node recording a camera + odometry over rclpy while the driver runs")
    b.add_argument("--seconds", type=float, default=60.0, help="logging time measured")
    b.add_argument("--baseline-seconds", type=float, default=10.0, help="driver + sensors without the logger")
    b.add_argument("--width", type=int, default=1280, help="camera image width (rgb8)")
    b.add_argument("--height", type=int, default=720)
    b.add_argument("--camera-hz", type=float, default=20.0)
    b.add_argument("--odom-hz", type=float, default=50.0)
    b.add_argument("--domain-id", type=int, default=161, help="ROS domain of the benchmark's own graph")
    b.set_defaults(func=logger.run)

    b = bench.add_parser("faults", help="faults injected into the nodes running as separate processes: "
                                         "survival, fallback time, diagnostics, recovery, logged data")
    b.add_argument("--domain-id", type=int, default=191, help="ROS domain of the suite's own graph")
    b.add_argument("--work", default="", help="keep the node logs here, and the logger's bags where they are not "
                                              "on the suite's small disk (as root: a tmpfs that goes with the run)")
    b.set_defaults(func=_faults)

    b = bench.add_parser("soak", help="the closed loop through the node processes, episodes back to back: "
                                       "cycles, missed cycles, fallbacks, crashes, RSS of every process")
    b.add_argument("--minutes", type=float, default=30.0)
    b.add_argument("--domain-id", type=int, default=195, help="ROS domain of the soak's own graph")
    b.add_argument("--work", default="", help="keep the node logs and the logger's bags here")
    b.set_defaults(func=lambda args: 0 if soak.run(args.minutes, args.work, args.domain_id)["crashes"] == 0 else 1)

    b = bench.add_parser("rl-gain", help="SFT vs SFT+RL checkpoints: closed-loop DS and SR with 95%% CI")
    b.add_argument("--sft", required=True, metavar="CKPT")
    b.add_argument("--rl", required=True, metavar="CKPT")
    b.add_argument("--json-out", default="", help="also write the comparison, every episode pair included, here")
    add_eval_arguments(b)
    b.set_defaults(func=_rl_gain)

    b = bench.add_parser("open-loop", help="AlphaDrive's open-loop table (planning accuracy, F1 per class) "
                                               "of checkpoints on the same held-out replay set")
    b.add_argument("checkpoints", nargs="+", metavar="CKPT", help="e.g. the SFT and the SFT+GRPO checkpoint")
    b.add_argument("--bags", nargs="+", default=[], help="replay set (default: record the expert on held-out seeds)")
    b.add_argument("--episodes", type=int, default=2, help="expert drives per scenario to record")
    b.add_argument("--seed-offset", type=int, default=0, help="start this far into the held-out seeds")
    b.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    b.add_argument("--seconds", type=float, default=20.0, help="length of each recorded drive")
    b.add_argument("--out", default="", help="keep the recorded bags here (default: a temporary folder)")
    b.add_argument("--backend", default="torch")
    b.set_defaults(func=_open_loop)


def _camera(args) -> int:
    camera.run_camera_bench(args.rig, args.steps, args.scenario)
    return 0


def _decision(args) -> int:
    decision.run(args.checkpoint, args.iters, args.threads)
    return 0


def _backends(args) -> int:
    try:
        backends.run(args.checkpoint, args.iters, args.threads)
    except RuntimeError as err:  # a measuring process failed: its error, as one line
        print(f"bench backends: {err}", file=sys.stderr)
        return 2
    return 0


def _scale(args) -> int:
    variants, backends = args.variants.split(","), args.backends.split(",")
    unknown = [v for v in variants if v not in scale.VARIANTS] + [b for b in backends if b not in scale.BACKENDS]
    if unknown:
        print(f"bench scale: unknown {', '.join(unknown)}", file=sys.stderr)
        return 2
    scale.run(variants, backends, args.work, args.iters, args.threads, args.frames)
    return 0


def _replay(args) -> int:
    try:
        replay.run(args.out, args.bag, args.seconds, args.checkpoint, args.backend, args.native)
    except ValueError as err:  # e.g. --native with a model that has no front camera
        print(f"bench replay: {err}", file=sys.stderr)
        return 2
    return 0


def _faults(args) -> int:
    enter_private_mounts()  # as root: again, in a mount namespace of its own, for the disk-full case's disk
    summary = faults.run(args.domain_id, args.work)
    return 0 if summary["passed"] == summary["cases"] else 1


def _rl_gain(args) -> int:
    rl_gain.run(checkpoint_dir(args.sft), checkpoint_dir(args.rl), scenario_list(args.scenarios), heldout_seeds(args),
                args.backend, args.duration, args.workers, policy_threads(args), args.json_out)
    return 0


def _open_loop(args) -> int:
    names = [Path(c).resolve().name for c in args.checkpoints]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    checkpoints = dict(zip(names, (checkpoint_dir(c) for c in args.checkpoints), strict=True))
    try:
        open_loop.run(checkpoints, args.bags, scenario_list(args.scenarios), heldout_seeds(args), args.seconds,
                      args.out, args.backend)
    except (FileNotFoundError, LookupError, ValueError) as e:  # no bag, a topic missing, a damaged bag
        print(f"open-loop: {e}")
        return 2
    return 0
