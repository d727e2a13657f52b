"""``vla-driver replay`` (a bag through the real nodes) and ``vla-driver record-sim`` (a simulator drive
written as an experience bag the way the logger would, without ROS)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..experience.reader import MissingTopicError
from ..harness.record_sim import record_sim
from ..harness.replay import replay_bag
from ..harness.replay_input import parse_remaps
from .common import rig_from_args


def register(sub) -> None:
    p = sub.add_parser("replay", help="play a rosbag2 bag through the decision, action and controller nodes; "
                                      "record their outputs and write an open-loop report")
    p.add_argument("bag", help="bag directory, .mcap/.db3 file, or a folder of logger segments (one drive)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, default=1.0, help="playback speed on the wall clock (default 1)")
    mode.add_argument("--lockstep", action="store_true",
                      help="deterministic: each frame waits for its decision, plan and command")
    p.add_argument("--remap", nargs="+", default=[], metavar="OLD:=NEW",
                   help="rename bag topics to the schema's names, e.g. /image:=/camera/image_raw")
    p.add_argument("--checkpoint", default="", help="policy checkpoint; empty = the embedded default")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt")
    p.add_argument("--out", default="", help="output folder (default runs/replay/<bag name>)")
    p.add_argument("--decision-rate", type=float, default=2.0, help="decision node rate (Hz of bag time)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS domain of the replay (default: ROS_DOMAIN_ID)")
    p.set_defaults(func=_replay)

    r = sub.add_parser("record-sim", help="drive the embedded simulator and write a sample experience bag")
    r.add_argument("--out", required=True, help="folder the bag (one segment) is written into")
    r.add_argument("--scenario", default="highway")
    r.add_argument("--seconds", type=float, default=20.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--policy", default="expert", help="'expert' (privileged simulator driver) or a checkpoint")
    r.add_argument("--backend", default="torch", help="backend for a checkpoint policy")
    r.add_argument("--rig", default="topdown",
                   help="the expert's cameras, one topic each: a preset of config/rigs (front, front3, surround6), a "
                        "rig YAML, or 'topdown' (default; a checkpoint policy records its own cameras)")
    r.set_defaults(func=_record_sim)


def _record_sim(args) -> int:
    try:
        bag = record_sim(args.out, args.scenario, args.seconds, args.policy, args.seed, args.backend,
                         rig=rig_from_args(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"record-sim: {err}", file=sys.stderr)
        return 2
    print(f"wrote the bag {bag.resolve()} (replay it: vla-driver replay {bag})")
    return 0


def _replay(args) -> int:
    out = Path(args.out or Path("runs") / "replay" / Path(args.bag).resolve().name)
    try:
        result = replay_bag(args.bag, out, lockstep=args.lockstep, rate=args.rate, remaps=parse_remaps(args.remap),
                            checkpoint=args.checkpoint, backend=args.backend, decision_rate_hz=args.decision_rate,
                            domain_id=args.domain_id)
    except MissingTopicError as err:
        print(f"replay: {err}\n  (rename a topic of the bag with --remap BAG_TOPIC:={err.topic})", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"replay: {err}", file=sys.stderr)
        return 2
    r = result.report
    print(f"{r['frames']} frames, {r['decisions']} decisions, {r['trajectories']} trajectories in "
          f"{r['wall_seconds']:.1f} s ({r['realtime_factor']}x real time); plan vs driven path: "
          f"{r['plan_vs_driven']}; planning accuracy {r['planning_accuracy']}; L2 {r['l2_m']}")
    if r["bag_left_out"]:
        print(f"bag: {r['bag_left_out']}")
    print(f"report: {out / 'report.md'}; recorded bag: {result.bag}")
    return 0
