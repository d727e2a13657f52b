"""Replay a logged drive through the real decision, action and controller nodes, and score what they do.

:func:`replay_bag` plays a rosbag2 bag (MCAP or sqlite3, one file or a route of segments, recorded by
``ros2 bag record`` or our logger) into the nodes, all in one process on a MultiThreadedExecutor and on
sim time: ``/clock`` follows the bag. Topics are matched to roles by the experience schema's names
(``reader.TopicMap`` defaults: ``/camera/image_raw``, ``/odom``, ``/navigation``, ...); ``remaps``
rename bag topics first (``{"/image": "/camera/image_raw"}``). The camera, odometry and navigation are
played; logged decisions are only used as labels. What goes in and what the nodes publish is written
to a new bag (``<out>/bag``), then :func:`evaluate_replay` scores it open loop, as AlphaDrive does:
planning accuracy and F1 per speed and path class against the logged decisions (or, without them,
labels from the future ego motion, ``core.labels.label_from_future``), trajectory L2 at 1/2/3 s against
the future ego path, and latency. :func:`write_report` writes report.md, report.json and PNG plots.

Two ways to play:

* ``rate``: messages go out on the wall clock at ``rate`` x bag speed; the nodes run on their own
  timers (decisions at 2 Hz, plans at 10 Hz, commands at 20 Hz of sim time), as on the car.
* ``lockstep``: deterministic. The nodes' sim-time timers are cancelled and the player drives their
  cycles per camera frame, as the timers would on a 2 Hz / 10 Hz grid of bag time started at the first
  frame (a cycle at the first frame at or after each multiple of the period from there): publish the
  frame's inputs, step ``/clock`` to it and wait until every node holds them and reads that time; run
  the decision cycle when due and wait until the action node holds the decision; run the action cycle
  when due; before the next frame's clock step, wait until the trajectory and the controller's command
  (one per trajectory) are recorded. The controller gets a frame's odometry only after commanding the
  previous plan, so a command never depends on message timing. Outputs are recorded at the clock of their frame: two replays of one bag
  give identical outputs (``ReplayResult.digest``; decision latency, a wall-clock figure, left out).

Everything ROS lives inside :class:`_Player` (rclpy is imported there, so the rest of this module,
like the rest of ``experience``, loads without ROS).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.highlevel import AnyReader
from tqdm import tqdm

from ..core.labels import label_from_future
from ..core.metrics import planning_metrics
from ..core.trajectory import TrajectorySpec, l2_at
from ..core.vocabulary import AnswerError, Decision, DecisionVocabulary
from . import messages as m
from .reader import (
    ROLE_TYPES,
    STAMP_MATCH_NS,
    LoggedDecision,
    MissingTopicError,
    TopicMap,
    find_bags,
    read_samples,
    timelines,
)
from .segments import SegmentWriter

log = logging.getLogger(__name__)

SCHEMA = TopicMap()
PLAYED = ("image", "odom", "navigation")  # roles fed to the nodes
REQUIRED = ("image", "odom")
OUTPUTS = ("decision", "trajectory", "cmd_vel")  # roles the nodes publish
REPLAY_TRUTHS = ("logged", "future")  # what a replayed decision is scored against (evaluate_replay)
OUTPUT_TYPES = {"image": m.IMAGE, "odom": m.ODOMETRY, "navigation": m.STRING, "decision": m.STRING,
                "trajectory": m.PATH, "cmd_vel": m.TWIST}


# --- the bag to play ------------------------------------------------------------------------------------

def parse_remaps(items) -> dict[str, str]:
    """``["/image:=/camera/image_raw", ...]`` -> ``{"/image": "/camera/image_raw"}``."""
    out = {}
    for item in items or ():
        old, sep, new = str(item).partition(":=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"remap {item!r} must look like OLD:=NEW, e.g. /image:=/camera/image_raw")
        out[old.strip()] = new.strip()
    return out


def header_stamp_ns(raw, msgtype: str) -> int:
    """Header stamp of a message whose first field is a std_msgs/Header, read from the CDR bytes."""
    if len(raw) >= 12 and raw[1] == 1:  # little-endian CDR: stamp (sec, nanosec) follows the 4-byte encapsulation
        sec, nanosec = struct.unpack_from("<iI", raw, 4)
        return sec * 1_000_000_000 + nanosec
    return m.time_to_ns(m.deserialize(bytes(raw), msgtype).header.stamp)


@dataclass
class BagInput:
    """One drive to replay: its bags (one timeline), the bag topic playing each role, and its clock."""

    bags: list[Path]
    topics: dict[str, str]  # role -> topic name in the bag
    types: dict[str, str]  # role -> message type
    available: dict[str, str]  # every topic in the bag -> type
    clock_offset_ns: int  # camera header stamps minus bag time: /clock follows the stamps
    start_ns: int
    end_ns: int
    frames: int

    @property
    def source(self) -> str:
        return self.bags[0].name if len(self.bags) == 1 else f"{self.bags[0].name} .. {self.bags[-1].name}"

    def messages(self, roles=PLAYED) -> Iterator[tuple[str, int, bytes]]:
        """(role, time on the stamp clock in ns, CDR bytes) of ``roles``, in time order."""
        by_topic = {self.topics[r]: r for r in roles if r in self.topics}
        with AnyReader(self.bags, default_typestore=m.TYPESTORE) as reader:
            conns = [c for c in reader.connections if c.topic in by_topic]
            for conn, t_ns, raw in reader.messages(connections=conns):
                yield by_topic[conn.topic], t_ns + self.clock_offset_ns, bytes(raw)


def open_bag_input(path, remaps: dict[str, str] | None = None) -> BagInput:
    """Check that the bag can be replayed; a missing camera or odometry raises ``MissingTopicError``."""
    remaps = remaps or {}
    groups = timelines(find_bags(path))
    if len(groups) != 1:
        raise ValueError(f"{path} holds {len(groups)} separate drives; replay one bag or one route at a time")
    bags = groups[0]
    source = bags[0].name if len(bags) == 1 else f"{bags[0].name} .."
    with AnyReader(bags, default_typestore=m.TYPESTORE) as reader:
        if not reader.is2:
            raise ValueError(f"{path}: ROS 1 bags cannot be replayed into ROS 2 nodes")
        infos = reader.topics
        available = {name: info.msgtype or "?" for name, info in infos.items()}
        unknown = sorted(set(remaps) - set(infos))
        if unknown:
            raise ValueError(f"{source}: cannot remap {', '.join(unknown)}: not in the bag; it has "
                             + ", ".join(sorted(available)))
        named = {remaps.get(name, name): name for name in infos}
        topics, types = {}, {}
        for role, wanted in SCHEMA.roles().items():
            name = named.get(wanted)
            if name is None or infos[name].msgcount == 0:
                if role in REQUIRED:
                    raise MissingTopicError(wanted, role, available, source)
                continue
            if infos[name].msgtype not in ROLE_TYPES[role]:
                raise ValueError(f"{source}: topic {name} ({role}) is {infos[name].msgtype}, expected one of "
                                 f"{', '.join(ROLE_TYPES[role])}")
            topics[role], types[role] = name, infos[name].msgtype
        offsets = []
        image_conns = [c for c in reader.connections if c.topic == topics["image"]]
        for conn, t_ns, raw in reader.messages(connections=image_conns):
            offsets.append(header_stamp_ns(raw, conn.msgtype) - t_ns)
            if len(offsets) >= 100:
                break
        offset = sorted(offsets)[len(offsets) // 2]  # median, in integers: float64 cannot hold ns at 1e18
        return BagInput(bags, topics, types, available, offset, reader.start_time,
                        reader.end_time, infos[topics["image"]].msgcount)


def raw_image_cdr(raw: bytes, msgtype: str) -> bytes:
    """The frame as a sensor_msgs/Image (what the nodes subscribe); compressed frames are decoded."""
    if msgtype == m.IMAGE:
        return raw
    msg = m.deserialize(raw, msgtype)
    return m.image_message(m.decode_image(msg), m.time_to_ns(msg.header.stamp), msg.header.frame_id or "camera")


# --- playing it through the nodes -----------------------------------------------------------------------

@dataclass
class ReplayResult:
    out_dir: Path
    bag: Path  # folder holding the recorded segments (inputs as played + the nodes' outputs)
    report: dict  # what report.json holds
    decisions: list[dict] = field(default_factory=list)  # decision JSON as published
    trajectories: list[tuple[float, np.ndarray, bool]] = field(default_factory=list)  # (stamp, poses, fallback)
    digest: str = ""  # sha256 over every output with its time (decision latency left out)


def replay_bag(bag, out_dir, *, lockstep: bool = False, rate: float = 1.0, remaps: dict[str, str] | None = None,
               checkpoint: str = "", backend: str = "auto", policies: tuple | None = None,
               decision_rate_hz: float = 2.0, domain_id: int | None = None, frame_timeout_s: float = 2.0,
               progress: bool = True, truth: str = "logged") -> ReplayResult:
    """Play ``bag`` through the nodes, record what they publish under ``out_dir/bag``, score and report.

    ``policies`` = (decision policy, action policy) already loaded; a lockstep replay calls both nodes
    from one thread, so one policy may serve both there (a free-running replay needs two objects).
    ``truth`` as in :func:`evaluate_replay`; an unknown one raises before anything is played.
    """
    if truth not in REPLAY_TRUTHS:
        raise ValueError(f"truth must be one of {REPLAY_TRUTHS}, got {truth!r}")
    if not lockstep and not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    source = open_bag_input(bag, remaps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if policies is None:
        from ..runtime.policy import inference_threads, load_policy

        # lockstep calls one shared policy from one thread; free-running, two nodes infer at once
        threads = inference_threads(model_nodes=1 if lockstep else 2)
        first = load_policy(checkpoint, backend, threads=threads)
        policies = (first, first if lockstep else load_policy(checkpoint, backend, threads=threads))
    from ..nodes.compose import frozen_heap

    player = _Player(source, out_dir / "bag", policies, lockstep, decision_rate_hz, domain_id, frame_timeout_s)
    try:
        with frozen_heap():  # no full-heap collector pauses in the middle of frames
            played = player.play_lockstep(progress) if lockstep else player.play_at_rate(rate, progress)
    finally:
        player.close()
    policy = policies[0]
    evaluation = evaluate_replay(out_dir / "bag", source, policy.vocab, getattr(policy, "spec", TrajectorySpec()),
                                 1.0 / decision_rate_hz, player.decisions, truth)
    report = {
        "bag": str(bag), "source": source.source, "mode": "lockstep" if lockstep else f"rate {rate:g}x",
        "model_version": policy.model_version, "backend": policy.backend_name, "topics": source.topics,
        **played, **evaluation["report"],
        "plan_latency_ms": player.plan_latency(),
        "outputs_digest": player.digest(),
    }
    write_report(out_dir, report, evaluation["rows"], policy.vocab)
    return ReplayResult(out_dir, out_dir / "bag", report, player.decisions, player.trajectories, report["outputs_digest"])


def _percentiles(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3),
            "n": int(v.size)}


class _Player:
    """The nodes under test, the publishers feeding them and a recorder of what they publish."""

    NAMESPACE = "replay"  # its own topics (and /clock), so a replay never talks to a running stack

    def __init__(self, source: BagInput, out_bag: Path, policies: tuple, lockstep: bool, decision_rate_hz: float,
                 domain_id: int | None, frame_timeout_s: float):
        import rclpy
        from builtin_interfaces.msg import Time
        from geometry_msgs.msg import Twist
        from nav_msgs.msg import Odometry
        from nav_msgs.msg import Path as PathMsg
        from rclpy.clock import ClockType
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from rclpy.qos import QoSProfile
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from ..nodes.action_node import ActionNode
        from ..nodes.controller_node import ControllerNode
        from ..nodes.decision_node import DecisionNode

        self.source, self.lockstep, self.timeout = source, lockstep, frame_timeout_s
        self.decision_period_ns = int(round(1e9 / decision_rate_hz))
        self._clock_msg = lambda t_ns: Clock(clock=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000))
        self.cond = threading.Condition()
        self.clock_ns = 0
        self.decisions: list[dict] = []
        self.trajectories: list[tuple[float, np.ndarray, bool]] = []
        self.outputs: list[tuple[int, str, bytes]] = []
        self.received: Counter = Counter()
        self.timeouts: Counter = Counter()
        self.frame_ms: list[float] = []
        self._held_odom: list[bytes] = []  # lockstep: odometry the controller gets once it has commanded
        self._pending: tuple[int, float] | None = None  # lockstep: (trajectories expected, frame start)
        self.writer = SegmentWriter(out_bag, min_free_bytes=64 << 20, name_prefix="replay_")
        for role in [r for r in PLAYED if r in source.topics] + list(OUTPUTS):
            self.writer.add_topic(getattr(SCHEMA, role), OUTPUT_TYPES[role])

        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self._shutdown = lambda: rclpy.try_shutdown(context=self.context)
        common = {"context": self.context, "namespace": self.NAMESPACE, "use_global_arguments": False,
                  "start_parameter_services": False,  # fewer entities for the executor to wait on
                  "cli_args": ["--ros-args", "-r", f"/clock:=/{self.NAMESPACE}/clock"]}

        def params(**values):
            return [Parameter("use_sim_time", value=True)] + [Parameter(k, value=v) for k, v in values.items()]

        def remapped(*rules):
            return {**common, "cli_args": common["cli_args"] + [a for rule in rules for a in ("-r", rule)]}

        self.nodes, self.executor = [], None
        try:
            # own camera topic: in lockstep it only gets the frames it decides on (it uses no other)
            self.decision = self._add(DecisionNode(policies[0], on_decision=self._on_decision,
                                                   parameter_overrides=params(rate_hz=float(decision_rate_hz)),
                                                   **remapped("image:=decision_image")))
            # lockstep has no wall-clock deadline: a slow CPU must not turn plans into fallbacks
            action = {"plan_on_image": False, **({"deadline_ms": 1e9} if lockstep else {})}
            self.action = self._add(ActionNode(policies[1], on_trajectory=self._on_trajectory,
                                               parameter_overrides=params(**action), **common))
            # its own odometry topic: in lockstep it gets a frame's odometry after commanding the last plan
            self.controller = self._add(ControllerNode(parameter_overrides=params(publish_on_trajectory=lockstep),
                                                       **remapped("odom:=controller_odom")))
            self.io = self._add(Node("replay_player", **common))
            self.clock_pub = self.io.create_publisher(Clock, "/clock", 10)
            self.pubs = {role: self.io.create_publisher(cls, role, QoSProfile(depth=10)) for role, cls in (
                ("image", Image), ("decision_image", Image), ("odom", Odometry), ("controller_odom", Odometry),
                ("navigation", String))}
            for role, cls in (("decision", String), ("trajectory", PathMsg), ("cmd_vel", Twist)):
                self.io.create_subscription(cls, role, self._recorder(role), QoSProfile(depth=1000), raw=True)
            if lockstep:  # the player runs the cycles; sim-time timers would race it
                for node in (self.decision, self.action, self.controller):
                    for timer in list(node.timers):
                        if timer.clock.clock_type == ClockType.ROS_TIME:
                            timer.cancel()
            self.executor = _executor(self.context, lockstep)
            for node in self.nodes:
                self.executor.add_node(node)
            self.thread = threading.Thread(target=self.executor.spin, name="replay-executor", daemon=True)
            self.thread.start()
            self._wait_for_graph()
        except BaseException:
            self.close()
            raise

    def _add(self, node):
        self.nodes.append(node)
        return node

    def _wait_for_graph(self) -> None:
        def connected():
            io = self.io
            ins = all(self.pubs[r].get_subscription_count() >= n
                      for r, n in (("image", 1), ("decision_image", 1), ("odom", 2), ("controller_odom", 1)))
            outs = all(io.count_publishers(io.resolve_topic_name(r)) >= 1 for r in OUTPUTS)
            # both ends of every connection: a message sent before the reader matched is lost for good
            subs = all(sub.get_publisher_count() >= 1 for node in self.nodes for sub in node.subscriptions
                       if sub.topic_name.startswith(f"/{self.NAMESPACE}/"))
            return ins and outs and subs and self.clock_pub.get_subscription_count() >= 3

        if not _wait_until(connected, 15.0):
            raise RuntimeError("replay nodes did not connect within 15 s")

    # --- hooks and recorder (executor threads, or the player thread in lockstep) -----------------------

    def _on_decision(self, text: str) -> None:
        with self.cond:
            self.decisions.append(json.loads(text))

    def _on_trajectory(self, stamp: float, traj, fallback: bool) -> None:
        with self.cond:
            self.trajectories.append((stamp, np.array(traj.poses), bool(fallback)))

    def _recorder(self, role: str):
        name = getattr(SCHEMA, role)

        def record(data: bytes) -> None:
            with self.cond:
                t = self.clock_ns
                self.writer.write(name, t, data)
                self.outputs.append((t, role, data))
                self.received[role] += 1
                self.cond.notify_all()

        return record

    def _wait_outputs(self, what: str, done) -> None:
        with self.cond:
            if not self.cond.wait_for(done, self.timeout):
                self.timeouts[what] += 1
                log.warning("replay: no %s within %.1f s of the frame; going on", what, self.timeout)

    # --- playing ---------------------------------------------------------------------------------------

    def _play(self, role: str, t_ns: int, raw: bytes, to_decision: bool = True) -> None:
        """Publish one input (and record it); lockstep holds the controller's odometry back (``_settle``)."""
        if role == "image":
            raw = raw_image_cdr(raw, self.source.types["image"])
            if to_decision:
                self.pubs["decision_image"].publish(raw)
        self.pubs[role].publish(raw)
        if role == "odom" and not self.lockstep:
            self.pubs["controller_odom"].publish(raw)
        self.writer.write(getattr(SCHEMA, role), t_ns, raw)

    def _set_clock(self, t_ns: int) -> None:
        with self.cond:
            self.clock_ns = t_ns
        self.clock_pub.publish(self._clock_msg(t_ns))

    def _rejected(self, node) -> int:
        return sum(v for k, v in node.diagnostics.counters.items() if k.startswith("rejected"))

    def play_lockstep(self, progress: bool) -> dict:
        expect = {"odom": None, "navigation": None}
        frames, first, last = 0, None, None
        self._next_decision = self._next_plan = 0
        self._grid_origin: int | None = None  # the first frame's time: the cycles' grid starts there
        self.plan_period_ns = int(round(1e9 / self.action.params.rate_hz))
        rejected = {n: self._rejected(n) for n in (self.decision, self.action, self.controller)}
        bar = tqdm(total=self.source.frames, unit="frame", desc="replay (lockstep)", disable=not progress,
                   leave=False)
        start = time.perf_counter()
        for role, t_ns, raw in self.source.messages():
            first = t_ns if first is None else first
            last = t_ns
            if role == "odom":
                expect["odom"] = _node_seconds(header_stamp_ns(raw, m.ODOMETRY))
                self._held_odom.append(raw)
            elif role == "navigation":
                expect["navigation"] = m.deserialize(raw, m.STRING).data.strip() or expect["navigation"]
            frame_start = time.perf_counter()
            if role == "image" and self._grid_origin is None:
                self._grid_origin = t_ns
            deciding = role == "image" and t_ns >= self._next_decision
            self._play(role, t_ns, raw, to_decision=deciding)
            if role != "image":
                continue
            self._settle()
            self._set_clock(t_ns)
            self._wait_inputs(_node_seconds(header_stamp_ns(raw, self.source.types["image"])), t_ns, expect,
                              rejected, deciding)
            self._cycle(t_ns, frame_start, deciding)
            rejected = {n: self._rejected(n) for n in rejected}
            frames += 1
            bar.update()
        self._settle()
        bar.close()
        return self._summary(frames, first, last, time.perf_counter() - start)

    def _settle(self) -> None:
        """The last plan's trajectory and command are recorded (on that frame's clock); only then does
        the controller get the newer odometry, so each command depends on its own frame alone. The next
        frame's camera and odometry travel to the other nodes meanwhile."""
        if self._pending is not None:
            count, started = self._pending
            self._wait_outputs("trajectory", lambda: self.received["trajectory"] >= count)
            self._wait_outputs("cmd_vel", lambda: self.received["cmd_vel"] >= count)  # one per trajectory
            self.frame_ms.append((time.perf_counter() - started) * 1e3)
            self._pending = None
        for raw in self._held_odom:
            self.pubs["controller_odom"].publish(raw)
        self._held_odom.clear()

    def _cycle(self, t_ns: int, frame_start: float, deciding: bool) -> None:
        """One frame's cycle, its inputs in and the clock on it: as the nodes' timers would, a decision and
        a plan when due (the first frame at or after each multiple of their periods from the first frame)."""
        if deciding:
            self._next_decision = self._next_on_grid(t_ns, self.decision_period_ns)
            published = len(self.decisions)
            self.decision.decide()
            if len(self.decisions) > published:
                count, stamp = len(self.decisions), self.decisions[-1].get("stamp")
                self._wait_outputs("decision", lambda: self.received["decision"] >= count)
                if not _wait_until(lambda: self.action.decision is not None and self.action.decision[1] == stamp,
                                   self.timeout):
                    self.timeouts["decision_at_action"] += 1
        if t_ns >= self._next_plan:
            self._next_plan = self._next_on_grid(t_ns, self.plan_period_ns)
            planned = len(self.trajectories)
            self.action.cycle()
            if len(self.trajectories) > planned:
                self._pending = (len(self.trajectories), frame_start)

    def _next_on_grid(self, t_ns: int, period_ns: int) -> int:
        """The next multiple of ``period_ns`` after ``t_ns``, counted from the first frame: a recorder that
        decided every 0.5 s from its first frame is decided on at the same frames, whatever the
        bag's start time (a grid on whole multiples of bag time missed its labelled frames by up to 0.4 s)."""
        return self._grid_origin + ((t_ns - self._grid_origin) // period_ns + 1) * period_ns

    def _wait_inputs(self, stamp: float, t_ns: int, expect: dict, rejected: dict, deciding: bool) -> None:
        """Every node holds this frame's camera image, the latest odometry and navigation (or refused them),
        and every node's clock reads the frame's time."""
        d, a, c = self.decision, self.action, self.controller

        def holds(node, image: bool) -> bool:
            if self._rejected(node) > rejected[node]:
                return True
            inputs = node.inputs
            ok = not image or (inputs.image is not None and inputs.image[1] == stamp)
            if expect["odom"] is not None:
                ok = ok and inputs.ego is not None and inputs.ego[0].stamp == expect["odom"]
            if expect["navigation"]:
                ok = ok and inputs.navigation == expect["navigation"]
            return ok

        def controller_holds() -> bool:
            return (expect["odom"] is None or self._rejected(c) > rejected[c]
                    or (bool(c.poses) and c.poses[-1].stamp == expect["odom"]))

        def clocks() -> bool:
            return all(n.get_clock().now().nanoseconds == t_ns for n in (d, a, c))

        if not _wait_until(lambda: holds(d, deciding) and holds(a, True) and controller_holds() and clocks(),
                           self.timeout):
            self.timeouts["inputs"] += 1
            log.warning("replay: the nodes did not receive the frame at %.3f within %.1f s", stamp, self.timeout)

    def play_at_rate(self, rate: float, progress: bool) -> dict:
        tick = 20_000_000  # /clock every 20 ms of bag time between messages, so sim-time timers run smoothly
        wall0, first, last, frames = time.perf_counter(), None, None, 0
        bar = tqdm(total=self.source.frames, unit="frame", desc=f"replay ({rate:g}x)", disable=not progress,
                   leave=False)

        def at(t_ns: int) -> None:
            time.sleep(max(0.0, wall0 + (t_ns - first) / 1e9 / rate - time.perf_counter()))

        for role, t_ns, raw in self.source.messages():
            if first is None:
                first = next_tick = t_ns
            while next_tick < t_ns:
                at(next_tick)
                self._set_clock(next_tick)
                next_tick += tick
            at(t_ns)
            if t_ns > self.clock_ns:
                self._set_clock(t_ns)
            self._play(role, t_ns, raw)
            last = t_ns
            if role == "image":
                frames += 1
                bar.update()
        bar.close()
        wall = time.perf_counter() - wall0
        for _ in range(int(0.5 * 1e9 / tick)):  # half a second more of sim time: the last cycles finish
            next_tick += tick
            at(next_tick)
            self._set_clock(next_tick)
        time.sleep(0.3)
        return self._summary(frames, first, last, wall)

    def _summary(self, frames: int, first, last, wall: float) -> dict:
        span = (last - first) / 1e9 if first is not None else 0.0
        return {
            "frames": frames, "bag_seconds": round(span, 3), "wall_seconds": round(wall, 3),
            "realtime_factor": round(span / wall, 3) if wall > 0 else None,
            "decisions": len(self.decisions), "trajectories": len(self.trajectories),
            "fallbacks": sum(fb for _, _, fb in self.trajectories), "commands": self.received["cmd_vel"],
            "timeouts": dict(self.timeouts),
            "frame_latency_ms": _percentiles(self.frame_ms) if self.lockstep else None,
            "decision_latency_ms": _percentiles(d.get("latency_ms") for d in self.decisions),
        }

    def plan_latency(self) -> dict:
        stats = self.action.diagnostics.stats()  # the node's own measure (last 200 cycles)
        return {"p50": stats["latency_p50_ms"], "p99": stats["latency_p99_ms"]}

    def digest(self) -> str:
        """sha256 of every output in (time, topic) order; decision latency (wall time) is left out."""
        rows = []
        for t, role, data in self.outputs:
            if role == "decision":
                d = json.loads(m.deserialize(data, m.STRING).data)
                d.pop("latency_ms", None)
                data = json.dumps(d, sort_keys=True).encode()
            rows.append((t, role, data))
        h = hashlib.sha256()
        for t, role, data in sorted(rows):
            h.update(f"{t}:{role}:{len(data)}:".encode())
            h.update(data)
        return h.hexdigest()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
            self.thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()
        self._shutdown()
        self.writer.close()


def _executor(context, lockstep: bool):
    """Lockstep: the player itself calls decide/plan, so one thread only delivers messages and the Python
    multi-threaded executor's per-callback cost (futures, a thread pool) would be pure overhead. Free-running
    replays keep parallel threads so a slow decision does not delay the plan timer."""
    from rclpy.executors import SingleThreadedExecutor

    from vla_driver.nodes.executor import MultiThreadedExecutor

    if lockstep:
        return SingleThreadedExecutor(context=context)
    return MultiThreadedExecutor(num_threads=4, context=context)


def _node_seconds(stamp_ns: int) -> float:
    """A header stamp in seconds exactly as the nodes compute it (``convert.stamp_to_seconds``)."""
    return stamp_ns // 1_000_000_000 + (stamp_ns % 1_000_000_000) * 1e-9


def _wait_until(predicate, timeout: float, poll_s: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


# --- scoring ----------------------------------------------------------------------------------------------

def _logged_decisions(source: BagInput, vocab: DecisionVocabulary) -> list[tuple[int, Decision]]:
    """(stamp ns, decision) logged in the input bag, time-sorted; words outside ``vocab`` are skipped."""
    out, skipped = [], Counter()
    for _role, t_ns, raw in source.messages(("decision",)):
        try:
            d = LoggedDecision.from_json(m.deserialize(raw, m.STRING).data, t_ns / 1e9)
            vocab.candidate_index(d.speed, d.path)
        except (ValueError, AnswerError) as err:
            skipped[type(err).__name__] += 1
            continue
        out.append((round(d.stamp * 1e9) if d.stamp is not None else t_ns, Decision(d.speed, d.path)))
    if skipped:
        log.warning("ignoring %d logged decisions as labels: %s", sum(skipped.values()), dict(skipped))
    return sorted(out, key=lambda row: row[0])


def _label(stamp_ns: int, logged: list, stamps: np.ndarray, period_ns: int) -> Decision | None:
    """The logged decision made from this frame, else the one in effect then (made within one period)."""
    if not logged:
        return None
    i = int(np.searchsorted(stamps, stamp_ns + STAMP_MATCH_NS, side="right")) - 1
    if i >= 0 and stamp_ns - stamps[i] <= period_ns + STAMP_MATCH_NS:
        return logged[i][1]
    return None


def evaluate_replay(out_bag, source: BagInput, vocab: DecisionVocabulary, spec: TrajectorySpec,
                    decision_period_s: float, decisions: list[dict] | None = None, truth: str = "logged") -> dict:
    """Open-loop scores of a replay: one sample per replayed decision, cut from the recorded bag.

    Label of a sample: with ``truth="logged"`` the decision the bag logged for that frame where there is
    one (an expert's or an annotator's), else the decision matching the logged future motion; with
    ``truth="future"`` always the latter (a bag whose logged decisions came from the model under test).

    Returns {"report": figures, "rows": per-sample rows for the plots}.
    """
    samples = read_samples(out_bag, TopicMap(takeover=None, events=None), sample_period_s=decision_period_s,
                           horizon_s=spec.horizon, waypoint_dt_s=spec.dt, progress=False)
    logged = _logged_decisions(source, vocab) if truth == "logged" and "decision" in source.topics else []
    stamps = np.array([s for s, _ in logged], dtype=np.int64)
    period_ns = int(decision_period_s * 1e9)
    preds, labels, rows, sources, l2 = [], [], [], Counter(), []
    t0 = samples[0].stamp if samples else 0.0
    for s in samples:
        if s.decision is None:
            continue
        label = _label(round(s.image_stamp * 1e9), logged, stamps, period_ns)
        sources["logged" if label is not None else "future_motion"] += 1
        if label is None:
            label = label_from_future(s.future_motion, s.speed, vocab, spec)
        pred = Decision(s.decision.speed, s.decision.path)
        errors = (l2_at(s.trajectory, s.future_motion, spec)
                  if s.trajectory is not None and s.trajectory.shape == s.future_motion.shape else {})
        if errors:
            l2.append(errors)
        preds.append(pred)
        labels.append(label)
        rows.append({"t": s.stamp - t0, "pred": pred, "label": label, "l2": errors})
    report = {"samples": len(preds), "label_source": dict(sources)}
    if preds:
        metrics = planning_metrics(preds, labels, vocab)
        report.update(planning_accuracy=metrics["accuracy"], speed_accuracy=metrics["speed_accuracy"],
                      path_accuracy=metrics["path_accuracy"], f1=metrics["f1"],
                      speed_macro_f1=metrics["speed_macro_f1"], path_macro_f1=metrics["path_macro_f1"])
    else:
        report.update(planning_accuracy=None, f1={})
        log.warning("no replayed decision has odometry %.1f s ahead: no planning metrics", spec.horizon)
    keys = sorted({k for e in l2 for k in e}, key=lambda k: float(k[3:-1]))
    report["l2_m"] = {k: round(float(np.mean([e[k] for e in l2 if k in e])), 4) for k in keys}
    report["l2_samples"] = len(l2)
    return {"report": _jsonable(report), "rows": rows}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- the report -------------------------------------------------------------------------------------------

def write_report(out_dir, report: dict, rows: list[dict], vocab: DecisionVocabulary) -> Path:
    """report.json, report.md and two PNGs (planning.png: confusion + F1; timeline.png) in ``out_dir``."""
    out_dir = Path(out_dir)
    report = {**report, "plots": _plot(out_dir, report, rows, vocab)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(_markdown(report, vocab))
    return out_dir / "report.md"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(r: dict, vocab: DecisionVocabulary) -> str:
    lat = [("decision", r.get("decision_latency_ms")), ("plan (action node)", r.get("plan_latency_ms")),
           ("frame, lockstep round trip", r.get("frame_latency_ms"))]
    lines = [
        f"# Replay of {r['source']}", "",
        f"- bag: `{r['bag']}`; mode: {r['mode']}; model {r['model_version']} on {r['backend']}",
        f"- {r['frames']} frames over {_fmt(r['bag_seconds'], 1)} s of bag in {_fmt(r['wall_seconds'], 1)} s: "
        f"**{_fmt(r['realtime_factor'], 2)}x real time**",
        f"- outputs: {r['decisions']} decisions, {r['trajectories']} trajectories ({r['fallbacks']} fallbacks), "
        f"{r['commands']} commands; waits that timed out: {r['timeouts'] or 'none'}",
        f"- outputs digest: `{r['outputs_digest']}`", "",
        "## Planning (open loop, AlphaDrive metrics)", "",
        f"{r['samples']} samples, one per replayed decision whose future the odometry covers; "
        f"labels: {r['label_source'] or 'none'} (logged = the decision logged for that frame or in effect then, "
        "future_motion = derived from where the car went)", "",
        "| planning accuracy | speed accuracy | path accuracy | speed macro-F1 | path macro-F1 |",
        "|---|---|---|---|---|",
        f"| {_fmt(r.get('planning_accuracy'))} | {_fmt(r.get('speed_accuracy'))} | {_fmt(r.get('path_accuracy'))} "
        f"| {_fmt(r.get('speed_macro_f1'))} | {_fmt(r.get('path_macro_f1'))} |", "",
        "| class | F1 |", "|---|---|",
        *[f"| {w} | {_fmt(r['f1'].get(w))} |" for w in vocab.words if w in r.get("f1", {})], "",
        "## Trajectory L2 against the future ego path", "",
        "| " + " | ".join(r["l2_m"]) + " |" if r.get("l2_m") else "no trajectory with a full future",
        "|" + "---|" * len(r["l2_m"]) if r.get("l2_m") else "",
        "| " + " | ".join(f"{v:.3f} m" for v in r["l2_m"].values()) + " |" if r.get("l2_m") else "",
        f"({r['l2_samples']} trajectories)", "",
        "## Latency", "", "| what | p50 ms | p99 ms |", "|---|---|---|",
        *[f"| {name} | {_fmt(v.get('p50'), 1)} | {_fmt(v.get('p99'), 1)} |" for name, v in lat if v], "",
        *[f"![{p}]({p})" for p in r.get("plots", [])], "",
    ]
    return "\n".join(lines)


def _plot(out_dir: Path, report: dict, rows: list[dict], vocab: DecisionVocabulary) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, words, part in ((axes[0], vocab.speeds, "speed"), (axes[1], vocab.paths, "path")):
        conf = np.zeros((len(words), len(words)), dtype=int)
        for row in rows:
            conf[words.index(getattr(row["label"], part)), words.index(getattr(row["pred"], part))] += 1
        ax.imshow(conf, cmap="Blues")
        for (i, j), v in np.ndenumerate(conf):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(words)), words, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.set_xlabel("replayed decision")
        ax.set_ylabel("label")
        ax.set_title(f"{part} (accuracy {_fmt(report.get(f'{part}_accuracy'), 2)})")
    f1 = report.get("f1", {})
    words = [w for w in vocab.words if f1.get(w) is not None]
    axes[2].barh(words, [f1[w] for w in words], color=["tab:blue" if w in vocab.speeds else "tab:orange"
                                                       for w in words])
    axes[2].set_xlim(0, 1)
    axes[2].set_title(f"F1 per class (planning accuracy {_fmt(report.get('planning_accuracy'), 2)})")
    fig.tight_layout()
    fig.savefig(out_dir / "planning.png", dpi=90)
    plt.close(fig)
    names.append("planning.png")

    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    t = [row["t"] for row in rows]
    for ax, words, part in ((axes[0], vocab.speeds, "speed"), (axes[1], vocab.paths, "path")):
        ax.step(t, [words.index(getattr(row["label"], part)) for row in rows], where="post", label="label")
        ax.plot(t, [words.index(getattr(row["pred"], part)) for row in rows], "o", ms=3, label="replayed")
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
    keys = sorted({k for row in rows for k in row["l2"]})
    for key in keys:
        axes[2].plot([row["t"] for row in rows if key in row["l2"]], [row["l2"][key] for row in rows
                                                                       if key in row["l2"]], label=key)
    axes[2].set_ylabel("L2 (m)")
    axes[2].set_xlabel("time (s)")
    if keys:
        axes[2].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "timeline.png", dpi=90)
    plt.close(fig)
    names.append("timeline.png")
    return names
