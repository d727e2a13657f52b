"""The nodes under test in a replay, the publishers that feed them and the recorder of what they publish.

:class:`ReplayPlayer` plays a bag on the wall clock at ``rate`` x bag speed while the nodes run on
their own timers (decisions at 2 Hz, plans at 10 Hz, commands at 20 Hz of sim time), as on the car;
:class:`~.lockstep.LockstepPlayer` drives their cycles itself, deterministically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.clock import ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import String
from tqdm import tqdm

from ..experience import messages as m
from ..experience.segments import SegmentWriter, list_segments
from ..nodes.action_node import ActionNode
from ..nodes.controller_node import ControllerNode
from ..nodes.decision_node import DecisionNode
from ..nodes.executor import MultiThreadedExecutor
from .replay_input import BagInput, raw_image_cdr
from .wait import wait_until

log = logging.getLogger(__name__)

OUTPUTS = ("decision", "trajectory", "cmd_vel")  # roles the nodes publish
RECORDED_TYPES = {"odom": m.ODOMETRY, "navigation": m.STRING, "decision": m.STRING, "trajectory": m.PATH,
                  "cmd_vel": m.TWIST}  # a camera is recorded as sensor_msgs/Image (compressed ones decoded)


REPLAY_PREFIX = "replay_"  # the segments a replay records are named replay_<start>...


def clear_earlier_replays(out_bag: Path) -> list[Path]:
    """Remove what an earlier replay into the same folder recorded: the report scores every segment under
    ``out_bag``, so a second ``vla-driver replay`` into one ``--out`` scored both drives (and replaced only
    the report). Segments still open (a replay running now) and KEEP-flagged ones stay."""
    removed = []
    for seg in list_segments(out_bag):
        if seg.ours and seg.name.startswith(REPLAY_PREFIX) and seg.state != "open" and not seg.kept:
            shutil.rmtree(seg.path)
            removed.append(seg.path)
    if removed:
        log.info("replay: replacing the %d segment(s) an earlier replay recorded in %s", len(removed), out_bag)
    return removed


def _percentiles(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(float(np.percentile(v, 50)), 3), "p99": round(float(np.percentile(v, 99)), 3),
            "n": int(v.size)}


class ReplayPlayer:
    """The nodes under test, the publishers feeding them and a recorder of what they publish; plays at a rate."""

    NAMESPACE = "replay"  # its own topics (and /clock), so a replay never talks to a running stack
    LOCKSTEP = False  # the player runs the cycles itself (LockstepPlayer)

    def __init__(self, source: BagInput, out_bag: Path, policies: tuple, decision_rate_hz: float,
                 domain_id: int | None, frame_timeout_s: float):
        lockstep = self.LOCKSTEP
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
        self.skipped: Counter = Counter()  # camera frames not played, by reason (lockstep)
        self.frame_ms: list[float] = []
        self._held_odom: list[bytes] = []  # lockstep: odometry the controller gets once it has commanded
        self._pending: tuple[int, float] | None = None  # lockstep: (trajectories expected, frame start)
        clear_earlier_replays(out_bag)
        self.writer = SegmentWriter(out_bag, min_free_bytes=64 << 20, name_prefix=REPLAY_PREFIX)
        for role in (*source.played, *OUTPUTS):
            self.writer.add_topic(source.schema[role], RECORDED_TYPES.get(role, m.IMAGE))

        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id)  # the command line is not ROS arguments
        self._shutdown = lambda: rclpy.try_shutdown(context=self.context)
        common = {"context": self.context, "namespace": self.NAMESPACE, "use_global_arguments": False,
                  "start_parameter_services": False,  # fewer entities for the executor to wait on
                  "cli_args": ["--ros-args", "-r", f"/clock:=/{self.NAMESPACE}/clock"]}

        def params(**values):
            return [Parameter("use_sim_time", value=True)] + [Parameter(k, value=v) for k, v in values.items()]

        def remapped(*rules):
            return {**common, "cli_args": common["cli_args"] + [a for rule in rules for a in ("-r", rule)]}

        self.nodes, self.executor, self._parked = [], None, []
        try:
            # own camera topics: in lockstep it only gets the frames it decides on (it uses no other)
            self.decision = self._add(DecisionNode(policies[0], on_decision=self._on_decision,
                                                   parameter_overrides=params(rate_hz=float(decision_rate_hz)),
                                                   **remapped(*(f"{c}:={_to_decision(c)}" for c in source.cameras))))
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
                *((t, Image) for t in self._camera_topics()), ("odom", Odometry), ("controller_odom", Odometry),
                ("navigation", String))}
            for role, cls in (("decision", String), ("trajectory", PathMsg), ("cmd_vel", Twist)):
                self.io.create_subscription(cls, role, self._recorder(role), QoSProfile(depth=1000), raw=True)
            if lockstep:  # the player runs the cycles; sim-time timers would race it
                for node in (self.decision, self.action, self.controller):
                    for timer in list(node.timers):
                        if timer.clock.clock_type == ClockType.ROS_TIME:
                            timer.cancel()
            self._parked = _park_qos_event_handlers(self.nodes)
            self.executor = make_executor(self.context, lockstep)
            for node in self.nodes:
                self.executor.add_node(node)
            self.thread = threading.Thread(target=self.executor.spin, name="replay-executor", daemon=True)
            self.thread.start()
            self._wait_for_graph()
        except BaseException:
            self.close()
            raise

    def _camera_topics(self) -> list[str]:
        """Every topic the player sends camera frames on: the action node's and the decision node's own."""
        return [topic for c in self.source.cameras for topic in (c, _to_decision(c))]

    def _add(self, node):
        self.nodes.append(node)
        return node

    def _wait_for_graph(self) -> None:
        def connected():
            io = self.io
            ins = all(self.pubs[r].get_subscription_count() >= n
                      for r, n in (*((t, 1) for t in self._camera_topics()), ("odom", 2), ("controller_odom", 1)))
            outs = all(io.count_publishers(io.resolve_topic_name(r)) >= 1 for r in OUTPUTS)
            # both ends of every connection: a message sent before the reader matched is lost for good
            subs = all(sub.get_publisher_count() >= 1 for node in self.nodes for sub in node.subscriptions
                       if sub.topic_name.startswith(f"/{self.NAMESPACE}/"))
            return ins and outs and subs and self.clock_pub.get_subscription_count() >= 3

        if not wait_until(connected, 15.0):
            raise RuntimeError("replay nodes did not connect within 15 s")

    # --- hooks and recorder (executor threads, or the player thread in lockstep) -----------------------

    def _on_decision(self, text: str) -> None:
        with self.cond:
            self.decisions.append(json.loads(text))

    def _on_trajectory(self, stamp: float, traj, fallback: bool) -> None:
        with self.cond:
            self.trajectories.append((stamp, np.array(traj.poses), bool(fallback)))

    def _recorder(self, role: str):
        name = self.source.schema[role]

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

    def _play(self, role: str, t_ns: int, raw: bytes, to_decision: bool = True, to_action: bool = True) -> None:
        """Publish one input (and record it); lockstep holds the controller's odometry back (``_settle``) and
        sends a camera frame only to the model nodes that run a cycle on it (``to_decision``, ``to_action``):
        a frame no node gets is neither decoded nor recorded (the recorded bag holds what the nodes saw)."""
        if role in self.source.cameras:
            if not (to_decision or to_action):
                return
            raw = raw_image_cdr(raw, self.source.types[role])
            if to_decision:
                self.pubs[_to_decision(role)].publish(raw)
            if to_action:
                self.pubs[role].publish(raw)
        else:
            self.pubs[role].publish(raw)
        if role == "odom" and not self.lockstep:
            self.pubs["controller_odom"].publish(raw)
        self.writer.write(self.source.schema[role], t_ns, raw)

    def _set_clock(self, t_ns: int) -> None:
        with self.cond:
            self.clock_ns = t_ns
        self.clock_pub.publish(self._clock_msg(t_ns))

    def _rejected(self, node) -> int:
        return sum(v for k, v in node.diagnostics.counters.items() if k.startswith("rejected"))

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
            if role == self.source.cameras[0]:
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
            "timeouts": dict(self.timeouts), "skipped": dict(self.skipped), "cameras": list(self.source.cameras),
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
        for node, handler in self._parked:  # destroying a publisher or subscription removes its handlers
            node.add_waitable(handler)
        self._parked = []
        for node in self.nodes:
            node.destroy_node()
        self._shutdown()
        self.writer.close()


def _to_decision(camera: str) -> str:
    """The decision node's own topic for a camera: in lockstep it gets only the frames it decides on."""
    return f"decision/{camera}"


def _park_qos_event_handlers(nodes) -> list:
    """Take the QoS event handlers (incompatible QoS / type warnings) rclpy gives every publisher and
    subscription out of the nodes' waitables while the replay runs; ``close`` puts them back.

    rclpy's executors rebuild the wait set, waitables included, for every callback: ~64 handlers on the
    replay's nodes made two thirds of the Python calls of a replay at 50 Hz odometry and 20 Hz camera.
    Every endpoint of a replay is created here with matching QoS, and ``_wait_for_graph`` checks that each
    connection matched, so the warnings they would give cannot happen unseen."""
    parked = []
    for node in nodes:
        waitables = list(node.waitables)
        for entity in [*node.publishers, *node.subscriptions]:
            for handler in getattr(entity, "event_handlers", ()):
                if handler in waitables:
                    node.remove_waitable(handler)
                    parked.append((node, handler))
    return parked


def make_executor(context, lockstep: bool):
    """Lockstep: the player itself calls decide/plan, so one thread only delivers messages and the Python
    multi-threaded executor's per-callback cost (futures, a thread pool) would be pure overhead. Free-running
    replays keep parallel threads so a slow decision does not delay the plan timer."""
    if lockstep:
        return SingleThreadedExecutor(context=context)
    return MultiThreadedExecutor(num_threads=4, context=context)
