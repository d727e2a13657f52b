"""The lockstep replay protocol: the player, not the nodes' timers, runs each cycle, so two replays of
one bag give identical outputs.

The nodes' sim-time timers are cancelled and the player drives their cycles per camera frame, as the
timers would on a 2 Hz / 10 Hz grid of bag time started at the first frame (a cycle at the first frame
at or after each multiple of the period from there): publish the frame's inputs, step ``/clock`` to it
and wait until every node holds them and reads that time; run the decision cycle when due and wait until
the action node holds the decision; run the action cycle when due; before the next frame's clock step,
wait until the trajectory and the controller's command (one per trajectory) are recorded. The controller
gets a frame's odometry only after commanding the previous plan, so a command never depends on message
timing. Outputs are recorded at the clock of their frame (``ReplayResult.digest``; decision latency, a
wall-clock figure, left out).

A camera frame goes only to the model nodes that run a cycle on it (a 20 Hz camera feeds the 10 Hz plans
every other frame; the rest are neither decoded nor recorded, and the clock does not stop at them: their
odometry travels with the next frame's), and the bag is read a few messages ahead on a thread of its own,
so an 800x600 bgra8 camera does not pay for frames nobody uses.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing

from tqdm import tqdm

from ..experience import messages as m
from ..experience.messages import header_stamp_ns
from ..experience.reader import STAMP_MATCH_NS
from .replay_player import ReplayPlayer
from .wait import wait_until

log = logging.getLogger(__name__)


class LockstepPlayer(ReplayPlayer):
    """Plays frame by frame, waiting for every node's answer before the clock moves on."""

    LOCKSTEP = True

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
        cameras = self.source.cameras
        with closing(read_ahead(camera_sets(self.source.messages(), cameras, self.source.types, self.skipped))) as messages:
            for role, t_ns, raw in messages:
                first = t_ns if first is None else first
                last = t_ns
                if role == "odom":
                    expect["odom"] = _node_seconds(header_stamp_ns(raw, m.ODOMETRY))
                    self._held_odom.append(raw)
                elif role == "navigation":
                    expect["navigation"] = m.deserialize(raw, m.STRING).data.strip() or expect["navigation"]
                frame_start = time.perf_counter()
                if role != FRAME:
                    self._play(role, t_ns, raw)
                    continue
                if self._grid_origin is None:
                    self._grid_origin = t_ns
                # a frame goes only to the nodes that run a cycle on it: the others would decode it for nothing
                deciding, planning = t_ns >= self._next_decision, t_ns >= self._next_plan
                frames += 1
                bar.update()
                if not (deciding or planning):  # no cycle runs on it: its odometry travels with the next one's
                    continue
                for camera, (frame_ns, frame_raw) in raw.items():
                    self._play(camera, frame_ns, frame_raw, to_decision=deciding, to_action=planning)
                self._settle()
                self._set_clock(t_ns)
                stamp = max(_node_seconds(header_stamp_ns(r, self.source.types[c])) for c, (_, r) in raw.items())
                self._wait_inputs(stamp, t_ns, expect, rejected, deciding, planning)
                self._cycle(t_ns, frame_start, deciding, planning)
                rejected = {n: self._rejected(n) for n in rejected}
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

    def _cycle(self, t_ns: int, frame_start: float, deciding: bool, planning: bool) -> None:
        """One frame's cycle, its inputs in and the clock on it: as the nodes' timers would, a decision and
        a plan when due (the first frame at or after each multiple of their periods from the first frame)."""
        if deciding:
            self._next_decision = self._next_on_grid(t_ns, self.decision_period_ns)
            published = len(self.decisions)
            self.decision.decide()
            if len(self.decisions) > published:
                count, stamp = len(self.decisions), self.decisions[-1].get("stamp")
                self._wait_outputs("decision", lambda: self.received["decision"] >= count)
                if not wait_until(lambda: self.action.decision is not None and self.action.decision[1] == stamp,
                                   self.timeout):
                    self.timeouts["decision_at_action"] += 1
        if planning:
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

    def _wait_inputs(self, stamp: float, t_ns: int, expect: dict, rejected: dict, deciding: bool,
                     planning: bool) -> None:
        """Every node holds the latest odometry and navigation, the model nodes that run a cycle on this frame
        its camera image (or they refused them), and every node's clock reads the frame's time."""
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

        if not wait_until(lambda: holds(d, deciding) and holds(a, planning) and controller_holds() and clocks(),
                           self.timeout):
            self.timeouts["inputs"] += 1
            log.warning("replay: the nodes did not receive the frame at %.3f within %.1f s", stamp, self.timeout)


FRAME = "frame"  # what camera_sets yields for one instant of every camera
MAX_PENDING_SETS = 8  # instants waiting for their other cameras


def camera_sets(messages: Iterable, cameras: tuple[str, ...], types: dict[str, str],
                counts: Counter | None = None) -> Iterator:
    """The bag's messages with each instant's camera frames as one item: (FRAME, time of its newest frame,
    {camera: (time, raw)} in the rig's order); other roles pass through as they are. A rig's cameras are
    stamped alike per instant (within ``STAMP_MATCH_NS``); an instant a camera is missing from is dropped
    once a later one is complete, or when more than ``MAX_PENDING_SETS`` wait (a camera that stopped must
    not hold every other camera's frames in memory); ``counts["camera_set_incomplete"]`` counts them. The
    nodes would form no set from such an instant either."""
    counts = Counter() if counts is None else counts
    pending: list[tuple[int, dict]] = []  # (header stamp, {camera: (t_ns, raw)}), oldest first
    for role, t_ns, raw in messages:
        if role not in cameras:
            yield role, t_ns, raw
            continue
        stamp = header_stamp_ns(raw, types[role])
        group = next((g for s, g in pending if abs(s - stamp) <= STAMP_MATCH_NS and role not in g), None)
        if group is None:
            group = {}
            pending.append((stamp, group))
            if len(pending) > MAX_PENDING_SETS:
                pending.pop(0)
                counts["camera_set_incomplete"] += 1
        group[role] = (t_ns, raw)
        if len(group) < len(cameras):
            continue
        while pending[0][1] is not group:  # older instants can no longer complete
            pending.pop(0)
            counts["camera_set_incomplete"] += 1
        pending.pop(0)
        yield FRAME, max(t for t, _ in group.values()), {c: group[c] for c in cameras}


def _node_seconds(stamp_ns: int) -> float:
    """A header stamp in seconds exactly as the nodes compute it (``convert.stamp_to_seconds``)."""
    return stamp_ns // 1_000_000_000 + (stamp_ns % 1_000_000_000) * 1e-9


def read_ahead(items: Iterable, depth: int = 16) -> Iterator:
    """``items`` read on a thread of its own, up to ``depth`` ahead: reading the bag (~2 ms for an 800x600
    bgra8 frame from sqlite3) overlaps the nodes' work instead of adding to each frame. Errors come out
    where the item would have; closing the iterator stops the reader (and closes ``items``)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as err:  # noqa: BLE001 - raised again in the consumer
            put((end, err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="replay-bag-reader", daemon=True)
    reader.start()
    try:
        while True:
            item, err = buffer.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        reader.join()
