"""``vla-driver replay``, ``vla-driver record-sim`` and ``vla-driver bench replay``.

``record-sim`` drives the embedded simulator (the expert, or a checkpoint) and writes a small experience
bag the way the logger would (camera, odometry, navigation, decision JSON, trajectory, cmd_vel,
takeover), without ROS. ``replay`` plays any such bag through the real nodes (experience/replay.py).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT_IMAGE_SIZE = (128, 256)  # the simulator bridge's camera


def register(sub, bench_sub) -> None:
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
    r.set_defaults(func=_record_sim)

    b = bench_sub.add_parser("replay", help="lockstep replay of a sample bag with the default model: "
                                            "real-time factor and planning accuracy")
    b.add_argument("--bag", default="", help="bag to replay (default: record-sim of a highway drive)")
    b.add_argument("--seconds", type=float, default=20.0, help="length of the recorded sample drive")
    b.add_argument("--checkpoint", default="", help="policy checkpoint; empty = the embedded default")
    b.add_argument("--backend", default="auto")
    b.set_defaults(func=_bench)


def record_sim(out_dir, scenario: str = "highway", seconds: float = 20.0, policy: str = "expert", seed: int = 0,
               backend: str = "torch", image_size=DEFAULT_IMAGE_SIZE, decision_hz: float = 2.0,
               start_ns: int | None = None, progress: bool = True) -> Path:
    """Drive one episode and log it as one bag segment under ``out_dir``; returns the segment directory.

    Per 10 Hz simulator step: odometry, the camera frame, navigation when it changes, a plan and the
    controller's command; a decision every ``1 / decision_hz`` s; the takeover flag (False) once a second.
    Header stamps equal log times (``start_ns`` + sim time); outputs are logged 1-3 ms after their frame.
    """
    from tqdm import tqdm

    from vla_driver.core.control import PurePursuitPID
    from vla_driver.experience import messages as m
    from vla_driver.experience.reader import TopicMap
    from vla_driver.experience.segments import SegmentWriter
    from vla_driver.sim.expert import ExpertPolicy
    from vla_driver.sim.highway import DrivingSim

    sim = DrivingSim(scenario, seed, image_size=image_size, duration_s=seconds)
    if policy == "expert":
        driver = ExpertPolicy(sim)
    else:
        from vla_driver.runtime.policy import load_policy

        driver = load_policy(policy, backend)
    controller, names = PurePursuitPID(), TopicMap()
    writer = SegmentWriter(out_dir, segment_duration_s=seconds + 60.0, min_free_bytes=64 << 20,
                           name_prefix=f"sim_{scenario}_")
    for role, msgtype in (("image", m.IMAGE), ("odom", m.ODOMETRY), ("navigation", m.STRING),
                          ("decision", m.STRING), ("trajectory", m.PATH), ("cmd_vel", m.TWIST), ("takeover", m.BOOL)):
        writer.add_topic(getattr(names, role), msgtype)
    base = start_ns if start_ns is not None else time.time_ns() // 1_000_000 * 1_000_000
    every = max(1, round(sim.control_hz / decision_hz))
    step, decision, navigation = 0, None, None
    bar = tqdm(total=round(sim.duration_s * sim.control_hz), unit="step", desc=f"record {scenario}",
               disable=not progress, leave=False)
    try:
        while not sim.done:
            t = base + round(sim.time * 1e9)
            obs = sim.observation()
            x, y, yaw, speed = sim.ego_pose()
            writer.write(names.odom, t, m.odometry_message(t, x, y, yaw, speed, obs.yaw_rate, frame_id="map"))
            if obs.navigation != navigation:  # before the frame it goes with, so a replay decides on it
                navigation = obs.navigation
                writer.write(names.navigation, t, m.string_message(navigation))
            writer.write(names.image, t, m.image_message(obs.image, t))
            if step % 10 == 0:
                writer.write(names.takeover, t, m.bool_message(False))
            if step % every == 0:
                result = driver.decide(obs)
                decision = result.decision
                writer.write(names.decision, t + 1_000_000, m.decision_message(result, driver.vocab, t / 1e9))
            traj = driver.plan(obs, decision)
            writer.write(names.trajectory, t + 2_000_000, m.path_message(traj, t))
            command = controller.command(traj, speed, sim.dt)
            writer.write(names.cmd_vel, t + 3_000_000, m.twist_message(*command))
            sim.step(*command)
            step += 1
            bar.update()
    finally:
        bar.close()
        stats = writer.close()
        sim.close()
    if stats["dropped"]:
        raise RuntimeError(f"the experience writer dropped {stats['dropped']} messages: {stats['last_error']}")
    return Path(out_dir) / f"{writer.route}--0"


def _record_sim(args) -> int:
    try:
        bag = record_sim(args.out, args.scenario, args.seconds, args.policy, args.seed, args.backend)
    except (ValueError, FileNotFoundError) as err:
        print(f"record-sim: {err}", file=sys.stderr)
        return 2
    print(f"wrote {bag}")
    return 0


def _replay(args) -> int:
    from vla_driver.experience.reader import MissingTopicError
    from vla_driver.experience.replay import parse_remaps, replay_bag

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
          f"{r['wall_seconds']:.1f} s ({r['realtime_factor']}x real time); planning accuracy "
          f"{r['planning_accuracy']}; L2 {r['l2_m']}")
    print(f"report: {out / 'report.md'}; recorded bag: {result.bag}")
    return 0


def _default_checkpoint(tmp: Path) -> str:
    """The embedded default checkpoint; while the package ships none, a random tiny one (said so)."""
    from vla_driver.runtime.policy import resolve_checkpoint

    if (resolve_checkpoint("") / "manifest.json").exists():
        return ""
    from vla_driver.model.build import build_random_checkpoint

    print(f"no embedded default checkpoint at {resolve_checkpoint('')}: using a random tiny one")
    return str(build_random_checkpoint(tmp / "random_tiny", seed=0))


def _bench(args) -> int:
    import tempfile

    from vla_driver.experience.replay import replay_bag

    with tempfile.TemporaryDirectory(prefix="bench_replay_") as tmp:
        tmp = Path(tmp)
        bag = args.bag or record_sim(tmp / "sample", "highway", args.seconds, "expert", seed=3)
        checkpoint = args.checkpoint or _default_checkpoint(tmp)
        result = replay_bag(bag, tmp / "replay", lockstep=True, checkpoint=checkpoint, backend=args.backend)
        r = result.report
        print((tmp / "replay" / "report.md").read_text())
    record = {"bench": "replay", "realtime_factor": r["realtime_factor"],
              "planning_accuracy": r["planning_accuracy"], "bag_seconds": r["bag_seconds"],
              "wall_seconds": r["wall_seconds"], "frames": r["frames"], "decisions": r["decisions"],
              "l2_m": r["l2_m"], "decision_latency_ms_p50": r["decision_latency_ms"]["p50"],
              "frame_latency_ms_p50": (r["frame_latency_ms"] or {}).get("p50"), "backend": r["backend"],
              "model_version": r["model_version"]}
    print(json.dumps(record))
    return 0
