"""Fault injection through the nodes as they run on the car: decision_node, action_node, controller_node and
logger_node each in a process of its own on Fast DDS, fed by a sensor process that sends what CARLA's bridge
sends (the ``front`` camera at 800x600 bgra8, rendered by the embedded simulator; odometry; navigation).

Each case injects one fault, holds it, clears it, and reports: every node process still alive; when the fault
takes away what driving needs, the first stop trajectory and a braking command after the moment the fault
became detectable (``fallback_s``, and whether it came within one action-node cycle); a ``/diagnostics``
status naming the cause; normal plans again after the fault cleared (``recovered_s``). At the end the logger
is stopped and its bags are counted against what was sent: ``data_lost_messages``.
"""
from __future__ import annotations

import array
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ..core.camera_rig import load_rig
from ..core.control import PurePursuitPID
from ..core.trajectory import TrajectorySpec, stop_trajectory
from ..experience.bag_open import open_bags
from ..experience.reader import find_bags
from ..experience.repair import repair_all
from ..experience.segments import FLUSH_INTERVAL_S
from ..nodes.convert import (
    EgoState,
    path_to_trajectory,
    seconds_to_stamp,
    stamp_to_seconds,
    state_to_odometry,
)
from ..nodes.dds import use_profile
from ..runtime.loading import resolve_checkpoint
from ..sim.expert import ExpertPolicy
from ..sim.highway import DrivingSim
from . import fault_hooks

SPEED = 10.0  # m/s, the sensor feed's constant speed
CAMERA_HZ, ODOM_HZ, NAV_PERIOD_S = 10.0, 20.0, 1.0
ACTION = {"max_input_age_s": 0.5, "rate_hz": 10.0, "deadline_ms": 100.0}  # the action node's config defaults
CONTROLLER_MAX_INPUT_AGE_S = 0.5
DECISION_TIMEOUT_S = 2.0
SETTLE_TIMEOUT_S = 60.0  # waits for output, never asserted as a time
LOGGER_READY = "[logger_node]: logging "  # the line a logger prints once its subscriptions exist
RECORDING_AGAIN_S = 2.0  # how long after its reader matched a restarted logger may take to record its first message
LOGGER_DEGRADED = "[logger_node]: experience logging degraded"  # its writer stopped recording (disk full, ...)
LOGGER_RECOVERED = "[logger_node]: experience logging recovered"  # ... and records again
LOGGER_MIN_FREE_MB = 256.0  # the logger's free-space floor here (the car's config keeps 2 GB)
PRIVATE_MOUNTS = "VLA_DRIVER_PRIVATE_MOUNTS"  # set in a process that runs in a mount namespace of its own


@dataclass
class FaultCase:
    """One fault. ``start`` / ``stop`` act on the running :class:`FaultRig`; ``detect_after_s``: how long after
    ``start`` the nodes can know (an input's age limit for a silent input, 0 for a refused message);
    ``stops``: the car must get a stop trajectory (else it must keep driving); ``cause``: a word the
    ``/diagnostics`` of ``node`` must show. ``start`` may return the monotonic time the fault began, when
    that is not the moment it was called (a node must first be stopped)."""

    name: str
    start: Callable
    stop: Callable
    cause: str | None  # None: no diagnostic is due (the nodes cope without one)
    node: str = "action_node"
    stops: bool = True
    detect_after_s: float = 0.0
    hold_s: float = 1.5
    verified: Callable | None = None  # rig -> bool: one more thing the nodes must have done (an answer's reason)
    brakes_only: bool = False  # no trajectory can come (the action node is down): the controller must brake
    needs_small_disk: bool = False  # runs only where the rig could mount one (``SmallDisk``)
    detectable: Callable | None = None  # rig -> the monotonic time the nodes could know, where the rig can see it


@dataclass
class CaseResult:
    name: str
    survived: bool
    diagnosed: bool
    stopped: bool  # a stop trajectory came while the fault lasted
    stops: bool  # the case must stop the car (else it must keep driving)
    fallback_s: float | None
    braked: bool  # stopping case: a braking command came once the fault showed; else: the controller braked
    recovered_s: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def fallback_within_cycle(self) -> bool:
        return self.fallback_s is not None and self.fallback_s <= 1.0 / ACTION["rate_hz"]

    @property
    def passed(self) -> bool:
        ok = self.survived and self.diagnosed and self.recovered_s is not None
        return ok and (self.stopped and self.braked if self.stops else not (self.stopped or self.braked))


def front_frames(count: int = 20, seed: int = 0) -> list[np.ndarray]:
    """``count`` native front-camera frames of a straight drive on an empty road (the embedded simulator)."""
    rig = load_rig("front")
    sim = DrivingSim("highway", seed, control_hz=CAMERA_HZ, rig=rig)
    try:
        sim.remove_traffic()
        expert, frames = ExpertPolicy(sim), []
        for _ in range(count):
            frames.append(sim.cameras().render(sim.env.road, sim.vehicle)["front"])
            obs = sim.observation(render=False)
            sim.step(*_follow(expert, obs, sim))
        return frames
    finally:
        sim.close()


def _follow(expert, obs, sim):
    return PurePursuitPID().command(expert.plan(obs, expert.decide(obs).decision), sim.ego_pose()[3], sim.dt)


def enter_private_mounts() -> None:
    """Run this process again in a mount namespace of its own (as root, with util-linux's ``unshare``), so
    the suite can give the logger a small disk that it can fill, and that vanishes with the run."""
    if os.environ.get(PRIVATE_MOUNTS) or os.geteuid() != 0 or shutil.which("unshare") is None:
        return
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return  # root without the right to make namespaces (a container): the disk-full case is left out
    code = "import sys; from vla_driver.cli import main; sys.exit(main())"
    os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code,
                           *sys.argv[1:]], {**os.environ, PRIVATE_MOUNTS: "1"})


class SmallDisk:
    """A tmpfs under the logger's output folder, whose size the disk-full case takes down to just above
    what is written (the disk fills as a car's does, under the logger) and back."""

    ROOMY = "16g"  # a cap, not memory taken: tmpfs holds what is written

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def mount(cls, path: Path) -> SmallDisk | None:
        """None outside a private mount namespace (``enter_private_mounts``): never mount on the host's."""
        if not os.environ.get(PRIVATE_MOUNTS):
            return None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={cls.ROOMY}", "vla-faults", str(path)],
                              capture_output=True, text=True)
        return cls(path) if done.returncode == 0 else None

    def fill(self, free_mb: float) -> None:
        """Leave ``free_mb`` free: what the logger already wrote stays, its next writes find the disk full."""
        used = shutil.disk_usage(self.path).used
        self._resize(f"{(used + int(free_mb * 2**20)) // 4096 * 4096}")

    def empty(self) -> None:
        self._resize(self.ROOMY)

    def _resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


def node_env(domain_id: int) -> dict:
    """The environment node processes run in: their own local ROS domain, one thread per model."""
    return {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class NodeProcess:
    """One node as the car runs it: its console entry point in a process of its own."""

    def __init__(self, name: str, params: dict, env: dict, log_dir: Path, triggers: Path | None = None):
        self.name, self.params, self.env, self.log_path = name, params, env, log_dir / f"{name}.log"
        self.triggers = triggers  # a folder of fault triggers its model watches (``fault_hooks``)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        args = [a for k, v in self.params.items() for a in ("-p", f"{k}:={_param_text(v)}")]
        code = f"from vla_driver.nodes.{self.name} import main; main()" if self.triggers is None else \
            f"from vla_driver.harness.fault_hooks import run_node; run_node({self.name!r}, {str(self.triggers)!r})"
        cmd = [sys.executable, "-c", code, "--ros-args", *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return None if self.proc is None else self.proc.returncode


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value) if not isinstance(value, str) or value else '""'


class FaultRig:
    """The node processes, the sensor feed and what came back, for one run of cases."""

    def __init__(self, work: Path, domain_id: int, checkpoint: str = "", backend: str = "onnxruntime"):
        self.work = Path(work)
        self.answers: dict[str, tuple[bool | None, str]] = {}
        self.logger_down: list[tuple[float, float]] = []  # wall-time spans the logger was not recording
        self.killed_at: list[float] = []  # wall times the logger was SIGKILLed
        self.bags = self.work / "bags"
        self.bags.mkdir(parents=True, exist_ok=True)
        self.disk = SmallDisk.mount(self.bags)  # None where this process cannot mount one
        logs, self.triggers = self.work / "logs", self.work / "triggers"
        logs.mkdir(parents=True, exist_ok=True)
        self.triggers.mkdir(exist_ok=True)
        for left in self.triggers.iterdir():  # from an earlier run in the same work folder
            left.unlink()
        # a copy the cases may damage (the package's own checkpoint must stay as it is)
        self.checkpoint = self.work / "checkpoint"
        if not self.checkpoint.exists():
            shutil.copytree(resolve_checkpoint(checkpoint), self.checkpoint, ignore=shutil.ignore_patterns("engines"))
        env = node_env(domain_id)
        # as array('B'): rclpy's Image.data setter takes it as it is (0.4 ms a frame; bytes: ~4 ms)
        self.frames = [(f.shape, array.array("B", _bgra(f).tobytes())) for f in front_frames()]
        model = {"checkpoint": str(self.checkpoint), "backend": backend}
        self.nodes = {
            "decision_node": NodeProcess("decision_node", model, env, logs),
            "action_node": NodeProcess("action_node", {**model, **ACTION}, env, logs, triggers=self.triggers),
            "controller_node": NodeProcess("controller_node", {}, env, logs),
            "logger_node": NodeProcess("logger_node", {"output_dir": str(self.bags), "min_free_mb": LOGGER_MIN_FREE_MB,
                                                       "segment_duration_s": 600.0}, env, logs),
        }
        use_profile()  # the sensors send the large frames: their participant needs the runtime's profile too
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=domain_id)
        node = self.node = rclpy.create_node("fault_sensors", context=self.context)
        self.pubs = {"camera": node.create_publisher(Image, "camera/front/image_raw", 5),
                     "odom": node.create_publisher(Odometry, "odom", 10),
                     "navigation": node.create_publisher(String, "navigation", 10)}
        self.lock = threading.Lock()
        self.trajectories: list[tuple[float, bool]] = []  # (arrival, is a stop trajectory)
        self.commands: list[tuple[float, float]] = []  # (arrival, commanded speed)
        self.statuses: list[tuple[float, str, int, str, str]] = []  # (arrival, node, level, message + values, message)
        self.sent: dict[str, int] = {"camera": 0, "odom": 0, "navigation": 0}
        self.count_from = float("inf")  # wall time from which sent messages are counted (the logger listens)
        self.sent_stamps: list[float] = []  # odometry stamps sent since count_from
        self.windows: list[tuple[str, float, float]] = []  # (case, wall start, wall end) of each case run
        self.seen: dict[str, float | None] = {}  # trigger -> when the first plan it affected began (monotonic)
        self.spec = TrajectorySpec()
        node.create_subscription(PathMsg, "trajectory", self._on_path, 10)
        node.create_subscription(Twist, "cmd_vel", self._on_twist, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        # a second reader of odometry, in the sending process: tells a loss at the logger from one on the way
        self.witnessed: set[float] = set()
        node.create_subscription(Odometry, "odom", self._on_witness, 100)
        # faults: what the feed does instead of the normal message (None = normal)
        self.camera_fault: Callable | None = None
        self.odom_fault: Callable | None = None
        self.nav_fault: Callable | None = None
        self.camera_rate = CAMERA_HZ
        self._stop = threading.Event()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(node)
        self._threads = [threading.Thread(target=self._spin, daemon=True, name="fault-spin"),
                         threading.Thread(target=self._feed, daemon=True, name="fault-feed")]
        for t in self._threads:
            t.start()

    # --- what comes back --------------------------------------------------------------------------------

    def _on_path(self, msg) -> None:
        traj, _ = path_to_trajectory(msg)
        stop = any(np.allclose(traj.poses, stop_trajectory(v, traj.spec).poses, atol=1e-3) for v in (SPEED, 0.0))
        with self.lock:
            self.trajectories.append((time.monotonic(), stop))

    def _on_witness(self, msg) -> None:
        with self.lock:
            self.witnessed.add(round(stamp_to_seconds(msg.header.stamp), 6))

    def _on_twist(self, msg) -> None:
        with self.lock:
            self.commands.append((time.monotonic(), msg.linear.x))

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            for s in msg.status:
                text = s.message + " " + " ".join(f"{kv.key}={kv.value}" for kv in s.values)
                level = s.level[0] if isinstance(s.level, bytes) else int(s.level)  # a `byte` field
                self.statuses.append((now, s.name.split(": ")[-1], level, text, s.message))

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    # --- the feed -----------------------------------------------------------------------------------------

    def _feed(self) -> None:
        start = time.monotonic()
        next_camera = next_nav = start
        tick, k = 1.0 / ODOM_HZ, 0
        while not self._stop.is_set():
            now_wall = time.time()
            self._send("odom", self.odom_fault, lambda t=now_wall: self._odometry(t, SPEED))
            mono = time.monotonic()
            if mono >= next_camera:
                next_camera += 1.0 / self.camera_rate
                if mono - next_camera > 1.0:
                    next_camera = mono
                self._send("camera", self.camera_fault, lambda t=now_wall, i=k: self._image(t, i))
                k += 1
            if mono >= next_nav:
                next_nav += NAV_PERIOD_S
                self._send("navigation", self.nav_fault, lambda: String(data="Follow the road."))
            time.sleep(max(0.0, tick - (time.monotonic() - mono)))

    def _send(self, role: str, fault: Callable | None, normal: Callable) -> None:
        msg = normal() if fault is None else fault(normal)
        if msg is None:  # the fault is silence
            return
        self.pubs[role].publish(msg)
        if role == "odom" and stamp_to_seconds(msg.header.stamp) >= self.count_from:
            with self.lock:
                self.sent[role] += 1
                self.sent_stamps.append(stamp_to_seconds(msg.header.stamp))

    def _image(self, stamp: float, k: int):
        (h, w, _), data = self.frames[k % len(self.frames)]
        msg = Image(height=h, width=w, encoding="bgra8", step=w * 4)
        msg.header.stamp = seconds_to_stamp(stamp)
        msg.header.frame_id = "ego_vehicle/rgb_front"
        msg.data = data
        return msg

    def _odometry(self, stamp: float, speed: float):
        return state_to_odometry(EgoState(speed, 0.0, 0.0, 0.0, 0.0, stamp))

    # --- running cases --------------------------------------------------------------------------------------

    def wait_driving(self, timeout_s: float = SETTLE_TIMEOUT_S, since: float | None = None) -> float | None:
        """Seconds until three planned (non-stop) trajectories in a row arrived after ``since`` (None: never)."""
        since = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                after = [(t, s) for t, s in self.trajectories if t >= since]
            for i in range(len(after) - 2):
                if not any(s for _, s in after[i:i + 3]):
                    return after[i][0] - since
            time.sleep(0.05)
        return None

    def run_case(self, case: FaultCase) -> CaseResult:
        notes = self.notes = []  # a case's checks may add to them
        if self.wait_driving() is None:
            notes.append("not driving before the fault")
        t0, wall0 = time.monotonic(), time.time()
        t0 = case.start(self) or t0
        time.sleep(case.detect_after_s + case.hold_s)
        t_clear = time.monotonic()
        case.stop(self)
        recovered = self.wait_driving(since=t_clear)
        time.sleep(0.3)  # the last diagnostics of the case
        self.windows.append((case.name, wall0, time.time()))
        detect = (case.detectable(self) if case.detectable else None) or t0 + case.detect_after_s
        with self.lock:
            stops = [t for t, s in self.trajectories if s and detect - 0.2 <= t <= t_clear + 0.5]
            braking = [t for t, v in self.commands if t >= detect - 0.2 and v < SPEED - 0.05]
            if case.brakes_only:
                stops = [t for t in braking if t <= t_clear + 0.5]
            named = [s for s in self.statuses if t0 <= s[0] and s[1] == case.node and s[2] > 0
                     and case.cause is not None and case.cause in s[3]]
            window = [t for t, s in self.trajectories if s and t0 <= t <= t_clear]
            # the controller brakes on its own (stale trajectory or odometry): never due in a case it drives through
            controller_braking = sorted({s[4] for s in self.statuses
                                         if s[1] == "controller_node" and s[2] == 2 and t0 <= s[0] <= t_clear + 0.5})
        notes += [f"controller: {text}" for text in controller_braking]
        first_stop = min(stops) if stops else None
        survived = all(n.alive() for n in self.nodes.values())
        return CaseResult(
            name=case.name, survived=survived,
            diagnosed=(case.cause is None or bool(named)) and (case.verified is None or case.verified(self)),
            stopped=bool(stops) if case.stops else bool(window), stops=case.stops,
            fallback_s=None if first_stop is None or not case.stops else round(max(0.0, first_stop - detect), 3),
            braked=bool(braking) if case.stops else bool(controller_braking),
            recovered_s=None if recovered is None else round(recovered, 3), notes=notes)

    def node_rss(self, peak: bool = False) -> dict[str, float]:
        """Resident memory (MB) of every running node process; ``peak``: the kernel's high-water mark (VmHWM)."""
        rss = {}
        for name, node in self.nodes.items():
            try:
                if peak:
                    status = Path(f"/proc/{node.proc.pid}/status").read_text()
                    rss[name] = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
                else:
                    rss[name] = psutil.Process(node.proc.pid).memory_info().rss / 2**20
            except (psutil.Error, OSError, AttributeError):
                pass
        return rss

    def reset_peak_rss(self) -> bool:
        """Start every node's VmHWM over from its current RSS (``clear_refs`` 5); False where that is refused."""
        try:
            for node in self.nodes.values():
                Path(f"/proc/{node.proc.pid}/clear_refs").write_text("5")
            return True
        except (OSError, AttributeError):
            return False

    def set_parameter(self, node: str, name: str, value) -> None:
        """``ros2 param set`` from outside: the answer (successful, reason) lands in ``self.answers[node]``."""
        client = AsyncParameterClient(self.node, node)
        if not client.wait_for_services(timeout_sec=SETTLE_TIMEOUT_S):
            self.answers[node] = (None, "no parameter service")
            return
        future = client.set_parameters([Parameter(name, value=value)])
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        result = future.result().results[0] if future.done() else None
        self.answers[node] = (None, "no answer") if result is None else (result.successful, result.reason)

    def tampered_checkpoint(self) -> Path:
        """A copy of the running checkpoint with one byte of its weights changed (its manifest left as it was)."""
        copy = self.work / "tampered"
        if not copy.exists():
            shutil.copytree(self.checkpoint, copy, ignore=shutil.ignore_patterns("onnx*", "engines"))
            weights = copy / "modules.safetensors"
            data = bytearray(weights.read_bytes())
            data[-1] ^= 0xFF
            weights.write_bytes(bytes(data))
        return copy

    def stop_logger(self, sig: int) -> None:
        self._logger_down_from = time.time()
        if sig == signal.SIGKILL:
            self.killed_at.append(self._logger_down_from)
        self._old_logger_readers = self._logger_readers()
        self.nodes["logger_node"].signal(sig)

    def _logger_readers(self) -> set[bytes]:
        """Endpoint ids of the logger's odometry readers this process has discovered."""
        return {bytes(e.endpoint_gid) for e in self.node.get_subscriptions_info_by_topic("/odom")
                if e.node_name == "logger_node"}

    def restart_logger(self) -> None:
        """Start the logger again once the old one is gone, and count it down until it listens again."""
        logger = self.nodes["logger_node"]
        logger.proc.wait(timeout=SETTLE_TIMEOUT_S)
        started = logger.log_path.read_text(errors="replace").count(LOGGER_READY)
        logger.start()
        # a killed logger stays matched until its lease runs out: wait for the new one to say it records
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while logger.log_path.read_text(errors="replace").count(LOGGER_READY) <= started:
            if time.monotonic() > deadline or not logger.alive():
                break
            time.sleep(0.1)
        # a killed logger's reader stays known until its lease ends: wait for the new one by its id
        while not self._logger_readers() - self._old_logger_readers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # its reader matched by this process's writer, too
        self.logger_down.append((self._logger_down_from, time.time()))

    def wait_listening(self) -> bool:
        """Every reader of odometry is matched: the decision, action, controller and logger nodes, and the
        witness here. A node still importing torch is not, and what is sent before it listens is not lost."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while self.pubs["odom"].get_subscription_count() < 5:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start_counting(self) -> None:
        """Count odometry sent from now on (every node, the logger included, has long been listening)."""
        self.count_from = time.time()

    def stop_logger_and_count(self) -> dict:
        """Stop the feed, let the last messages arrive, stop the logger as the car does (SIGINT), and count
        the odometry it recorded against what was sent since ``start_counting``."""
        self._stop_feed()
        time.sleep(1.0)
        self.nodes["logger_node"].stop()
        repaired = [r.summary() for r in repair_all(self.bags, progress=False)]  # a killed logger's segment
        recorded = set()
        for bag in find_bags(self.bags):
            with open_bags([bag]) as reader:
                odom = [c for c in reader.connections if c.topic.endswith("/odom")]
                for connection, _, raw in reader.messages(connections=odom):
                    stamp = stamp_to_seconds(reader.deserialize(raw, connection.msgtype).header.stamp)
                    if stamp >= self.count_from:
                        recorded.add(round(stamp, 6))
        # a restarted (or recovered) logger records from its first message on: what was sent between the moment
        # its reader matched and that first message was not yet recordable (at most RECORDING_AGAIN_S more)
        in_order = sorted(recorded)
        for k, (a, b) in enumerate(self.logger_down):
            i = bisect_left(in_order, round(b, 6))
            if i < len(in_order):
                self.logger_down[k] = (a, max(b, min(in_order[i], b + RECORDING_AGAIN_S)))
        with self.lock:
            down = [t for t in self.sent_stamps if any(a <= t < b for a, b in self.logger_down)]
            missing = [t for t in self.sent_stamps if round(t, 6) not in recorded and t not in down]
            # a SIGKILL takes what the logger had not flushed yet (its flush interval): not logged, so not
            # "already logged and lost"; counted apart
            unflushed = [t for t in missing if any(k - FLUSH_INTERVAL_S <= t <= k for k in self.killed_at)]
            missing = [t for t in missing if t not in unflushed]
            missed_by_witness = sum(round(t, 6) not in self.witnessed for t in self.sent_stamps)
            counters = self._logger_counters()
        lost_in = {}
        for t in missing:  # which case each lost message was sent in
            name = next((n for n, a, b in self.windows if a <= t <= b), "between cases")
            lost_in[name] = lost_in.get(name, 0) + 1
        return {"sent": self.sent["odom"] - len(down), "recorded": len(recorded - {round(t, 6) for t in down}),
                "lost_in": lost_in, "sent_while_logger_down": len(down), "repaired": repaired,
                "unflushed_at_sigkill": len(unflushed), "reported_lost": counters.get("lost", 0),
                "reported_lost_by_topic": {k[len("lost_"):]: v for k, v in counters.items() if k.startswith("lost_")},
                "too_large": counters.get("too_large", 0), "missed_by_witness": missed_by_witness,
                "logger_down_s": [round(b - a, 2) for a, b in self.logger_down], "missing_stamps": sorted(missing)[:50]}

    def _logger_counters(self) -> dict[str, int]:
        """The largest value each of the logger's /diagnostics counters reached (a restarted logger counts anew)."""
        largest: dict[str, int] = {}
        for _, node, _, text, _ in self.statuses:
            for key, value in re.findall(r"\b(lost|lost_\S+|too_large)=(\d+)", text) if node == "logger_node" else ():
                largest[key] = max(largest.get(key, 0), int(value))
        return largest

    def _stop_feed(self) -> None:
        """Stop sending and listening (the nodes keep running)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)

    def close(self) -> None:
        self._stop_feed()
        for n in self.nodes.values():
            n.stop()
        self.executor.shutdown()
        self.node.destroy_node()

        rclpy.try_shutdown(context=self.context)


def _bgra(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.dstack([rgb[:, :, 2], rgb[:, :, 1], rgb[:, :, 0], np.full(rgb.shape[:2], 255, np.uint8)]))


# --- the cases -------------------------------------------------------------------------------------------------


def _set(attr: str, fault: Callable | None):
    return lambda rig: setattr(rig, attr, fault)


def _silence(normal):
    return None


def _image_with(**changes):
    def fault(normal):
        msg = normal()
        for k, v in changes.items():
            setattr(msg, k, v)
        if "width" in changes or "height" in changes:
            msg.step = msg.width * 4
        return msg
    return fault


def _stamped(offset_s: float | None = None, freeze: bool = False):
    """Camera frames stamped ``offset_s`` away from the truth, or (``freeze``) all with the fault's first stamp."""
    held = {}

    def fault(normal):
        msg = normal()
        if freeze:
            held.setdefault("stamp", msg.header.stamp)
            msg.header.stamp = held["stamp"]
        else:
            msg.header.stamp = seconds_to_stamp(stamp_to_seconds(msg.header.stamp) + offset_s)
        return msg
    return fault


def _odometry_with(speed: float):
    def fault(normal):
        msg = normal()
        msg.twist.twist.linear.x = speed
        return msg
    return fault


def _huge_navigation(normal):
    return String(data="turn left " * 100_000)  # 1 MB


HUGE_SIDE = 8000  # an 8000x8000 rgb8 frame: 192 MB
HUGE_MB = HUGE_SIDE * HUGE_SIDE * 3 / 2**20
# What a model node may hold of such frames: nothing decoded (decoding one took 7.8 GB before images were bounded),
# only the middleware's buffers: at most the sender's history (5 deep) in flight, one frame's kept afterwards
# (measured: peak +747 MB, +195 MB after, in both model nodes, for 2 s of frames)
MODEL_NODES_MAX_PEAK_MB, MODEL_NODES_MAX_KEPT_MB = 5 * HUGE_MB, 1.5 * HUGE_MB


def _send_huge_frames(rig) -> None:
    """A broken driver: 8000x8000 rgb8 frames every 0.25 s in place of the camera's (from a thread of their own:
    publishing 192 MB must not hold the odometry back). Every node's peak RSS is watched meanwhile: the kernel's
    high-water mark, reset first where this process may (root), and sampled after each frame in any case."""
    rig.rss_before, rig.rss_peak = rig.node_rss(), rig.node_rss()
    rig.kernel_peak = rig.reset_peak_rss()
    rig.camera_fault = _silence
    data, stop = array.array("B", bytes(HUGE_SIDE * HUGE_SIDE * 3)), threading.Event()

    def send() -> None:
        while not stop.wait(0.25):
            msg = Image(height=HUGE_SIDE, width=HUGE_SIDE, encoding="rgb8", step=HUGE_SIDE * 3)
            msg.header.stamp = seconds_to_stamp(time.time())
            msg.data = data
            rig.pubs["camera"].publish(msg)
            rig.rss_peak = {n: max(v, rig.rss_peak.get(n, 0.0)) for n, v in rig.node_rss().items()}

    rig.huge_sender = (threading.Thread(target=send, daemon=True, name="huge-frames"), stop)
    rig.huge_sender[0].start()


def _stop_huge_frames(rig) -> None:
    thread, stop = rig.huge_sender
    stop.set()
    thread.join(timeout=SETTLE_TIMEOUT_S)
    rig.camera_fault = None


def _no_node_copied_a_huge_frame(rig) -> bool:
    """The model nodes and the controller held no more than the middleware's buffers (the logger's growth is
    reported: its reliable camera reader keeps what Fast DDS allows; ``max_message_mb`` keeps them out of its
    queue and bags)."""
    peak = rig.rss_peak
    if rig.kernel_peak:
        peak = {n: max(v, peak.get(n, 0.0)) for n, v in rig.node_rss(peak=True).items()}
    growth = {n: round(peak[n] - rig.rss_before[n], 1) for n in rig.rss_before if n in peak}
    after = {n: round(v - rig.rss_before[n], 1) for n, v in rig.node_rss().items() if n in rig.rss_before}
    rig.notes.append(f"peak RSS growth MB: {growth}; after: {after}")
    return all(growth.get(n, 0.0) < MODEL_NODES_MAX_PEAK_MB and after.get(n, 0.0) < MODEL_NODES_MAX_KEPT_MB
               for n in ("decision_node", "action_node", "controller_node"))


def _kill(name: str, sig: int = signal.SIGKILL):
    return lambda rig: rig.nodes[name].signal(sig)


def _restart(name: str):
    def restart(rig):
        rig.nodes[name].proc.wait(timeout=10)
        rig.nodes[name].start()
    return restart


def _swap_to(target: Callable) -> Callable:
    return lambda rig: rig.set_parameter("action_node", "checkpoint", str(target(rig)))


def _refused_with_reason(node: str) -> Callable:
    return lambda rig: rig.answers.get(node, (None, ""))[0] is False and bool(rig.answers[node][1])


def _nothing(rig) -> None:
    pass


def _trigger(name: str, text: str = ""):
    def trigger(rig) -> None:
        (rig.triggers / name).write_text(text)
    return trigger


def _untrigger(name: str):
    def untrigger(rig) -> None:
        (rig.triggers / name).unlink(missing_ok=True)
        rig.seen[name] = _first_call(rig, name)
        fault_hooks.seen_path(rig.triggers / name).unlink(missing_ok=True)
    return untrigger


def _first_call(rig, name: str) -> float | None:
    """When the first plan the trigger affected began (``fault_hooks``), or None if none did."""
    seen = fault_hooks.seen_path(rig.triggers / name)
    return float(seen.read_text()) if seen.exists() else None


def _plan_seen(name: str, after_s: float = 0.0):
    """The fault is detectable ``after_s`` after the first affected plan began (a raise at once; a slow plan at
    its deadline, where the action node's watchdog answers it)."""
    def detectable(rig) -> float | None:
        began = rig.seen.get(name)
        return None if began is None else began + after_s
    return detectable


def _restart_with_damaged_graphs(rig) -> float:
    """Stop the action node, flip a byte of its graphs' weights file, start it again: the time it stopped."""
    node = rig.nodes["action_node"]
    node.stop()
    stopped = time.monotonic()
    weights = rig.checkpoint / "onnx" / "weights.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = weights.with_name(weights.name + ".damaged")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, weights)  # a new file: the decision node's loaded graphs stay as they were
    node.start()
    return stopped


def _fill_disk(rig) -> None:
    rig.degraded_before = rig.nodes["logger_node"].log_path.read_text(errors="replace").count(LOGGER_DEGRADED)
    rig.disk.fill(free_mb=LOGGER_MIN_FREE_MB - 56)
    rig.disk_full_from = time.time()


def _free_disk(rig) -> None:
    """Give the space back; the logger records again at its next retry (2 s). Messages sent until the moment
    its log says so are not counted (it dropped them, counted, while full); every later one must be recorded."""
    log, said = rig.nodes["logger_node"].log_path, re.compile(r"\[(\d+\.\d+)\] " + re.escape(LOGGER_RECOVERED))
    text = log.read_text(errors="replace")
    before = len(said.findall(text))
    rig.disk.empty()
    if text.count(LOGGER_DEGRADED) <= rig.degraded_before:  # it never stopped recording (e.g. the quota made room)
        rig.logger_down.append((rig.disk_full_from, rig.disk_full_from))
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        stamps = said.findall(log.read_text(errors="replace"))
        if len(stamps) > before:
            rig.logger_down.append((rig.disk_full_from, float(stamps[-1])))
            return
        time.sleep(0.1)
    rig.logger_down.append((rig.disk_full_from, time.time()))  # never said: what comes next must be recorded


def _burst(rig) -> None:
    rig.camera_rate = CAMERA_HZ * 10


def _unburst(rig) -> None:
    rig.camera_rate = CAMERA_HZ


CAMERA_AGE = ACTION["max_input_age_s"]
CASES = [
    FaultCase("camera stops", _set("camera_fault", _silence), _set("camera_fault", None), "camera_front",
              detect_after_s=CAMERA_AGE),
    FaultCase("odometry stops", _set("odom_fault", _silence), _set("odom_fault", None), "odom",
              detect_after_s=CAMERA_AGE),
    FaultCase("camera stamps in the future (+1 h)", _set("camera_fault", _stamped(3600.0)),
              _set("camera_fault", None), "stamp_in_future", detect_after_s=CAMERA_AGE),
    FaultCase("camera stamps going backwards (-10 s)", _set("camera_fault", _stamped(-10.0)),
              _set("camera_fault", None), "stamp_backwards", detect_after_s=CAMERA_AGE),
    FaultCase("camera stamps duplicated", _set("camera_fault", _stamped(freeze=True)),  # the first one is new
              _set("camera_fault", None), "duplicate_stamp", detect_after_s=CAMERA_AGE + 1.0 / CAMERA_HZ),
    FaultCase("image with an unknown encoding", _set("camera_fault", _image_with(encoding="yuv422_weird")),
              _set("camera_fault", None), "unknown_encoding", detect_after_s=CAMERA_AGE),
    FaultCase("image with a wrong step", _set("camera_fault", _image_with(step=17)),
              _set("camera_fault", None), "wrong_size", detect_after_s=CAMERA_AGE),
    FaultCase("image of zero size", _set("camera_fault", _image_with(width=0, height=0)),
              _set("camera_fault", None), "sends 0x0", detect_after_s=CAMERA_AGE),
    FaultCase("image of 8000x8000 (192 MB)", _send_huge_frames, _stop_huge_frames, "camera_front",
              detect_after_s=CAMERA_AGE, verified=_no_node_copied_a_huge_frame),
    FaultCase("odometry with NaN", _set("odom_fault", _odometry_with(float("nan"))), _set("odom_fault", None),
              "non_finite", detect_after_s=CAMERA_AGE),
    FaultCase("odometry with inf", _set("odom_fault", _odometry_with(float("inf"))), _set("odom_fault", None),
              "non_finite", detect_after_s=CAMERA_AGE),
    FaultCase("odometry with an absurd speed (1e6 m/s)", _set("odom_fault", _odometry_with(1e6)),
              _set("odom_fault", None), "implausible", detect_after_s=CAMERA_AGE),
    FaultCase("model backend raises", _trigger(fault_hooks.RAISES), _untrigger(fault_hooks.RAISES), "plan failed",
              detectable=_plan_seen(fault_hooks.RAISES)),
    FaultCase(f"inference slower than deadline_ms ({ACTION['deadline_ms']:.0f})",
              _trigger(fault_hooks.SLOW_MS, "250"), _untrigger(fault_hooks.SLOW_MS), "still running after",
              detectable=_plan_seen(fault_hooks.SLOW_MS, ACTION["deadline_ms"] / 1e3)),
    FaultCase("1 MB navigation text", _set("nav_fault", _huge_navigation), _set("nav_fault", None),
              "navigation_too_long", stops=False),
    FaultCase("camera burst at 10x its rate", _burst, _unburst, None, stops=False),
    FaultCase("ros2 param set rate_hz -1.0 at run time", lambda rig: rig.set_parameter("action_node", "rate_hz", -1.0),
              _nothing, None, stops=False, verified=_refused_with_reason("action_node")),
    FaultCase("checkpoint hot-swapped to a missing directory", _swap_to(lambda rig: rig.work / "no_such_checkpoint"),
              _nothing, "not loaded", stops=False),
    FaultCase("checkpoint hot-swapped to a tampered copy", _swap_to(lambda rig: rig.tampered_checkpoint()),
              _nothing, "sha256", stops=False),
    FaultCase("logger disk full (free space under min_free_mb)", _fill_disk, _free_disk, "DiskQuotaError",
              node="logger_node", stops=False, needs_small_disk=True),
    FaultCase("logger SIGTERM, restarted", lambda rig: rig.stop_logger(signal.SIGTERM), lambda rig: rig.restart_logger(),
              None, stops=False),
    FaultCase("logger SIGKILL mid-segment, restarted", lambda rig: rig.stop_logger(signal.SIGKILL),
              lambda rig: rig.restart_logger(), None, stops=False),
    FaultCase("decision node killed", _kill("decision_node"), _restart("decision_node"), "no decision",
              stops=False, detect_after_s=DECISION_TIMEOUT_S),
    FaultCase("ONNX graphs damaged between runs (action node restarted)", _restart_with_damaged_graphs, _nothing,
              "cannot load the graphs", brakes_only=True, detect_after_s=CONTROLLER_MAX_INPUT_AGE_S),
]


def run_suite(work: str | Path | None = None, domain_id: int = 191, cases: list[FaultCase] | None = None,
              progress: Callable[[str], None] = print) -> dict:
    """Every case through one set of node processes; the summary record and each case's result."""
    cases = CASES if cases is None else cases
    with tempfile.TemporaryDirectory(prefix="vla-faults-") as tmp:
        rig = FaultRig(Path(work) if work else Path(tmp), domain_id)
        try:
            if rig.wait_driving(timeout_s=180.0) is None:
                raise RuntimeError(f"the nodes never drove; logs in {rig.work / 'logs'}")
            if not rig.wait_listening():
                raise RuntimeError(f"the logger never subscribed; logs in {rig.work / 'logs'}")
            rig.start_counting()
            results = []
            left_out = [] if rig.disk else [c.name for c in cases if c.needs_small_disk]
            cases = [c for c in cases if c.name not in left_out]
            for case in cases:
                result = rig.run_case(case)
                progress(f"{case.name}: {'ok' if result.passed else 'FAILED'} {result}")
                results.append(result)
            logged = rig.stop_logger_and_count()
        finally:
            rig.close()
    summary = {"bench": "faults", "cases": len(results), "survived": sum(r.survived for r in results),
               "passed": sum(r.passed for r in results),
               "fallback_within_cycle": sum(r.fallback_within_cycle for r in results if r.stops),
               "stopping_cases": sum(r.stops for r in results),
               "data_lost_messages": sum(logged["lost_in"].values()), "odometry_logged": logged["recorded"],
               "unflushed_at_sigkill": logged["unflushed_at_sigkill"]}
    return {"summary": summary, "results": results, "logged": logged,
            "left_out": {name: "needs a small disk to fill: run as root, with unshare" for name in left_out}}
