"""Simulator bridge in synchronous mode, like the CARLA-ROS bridge waiting for the vehicle command.

Each cycle publishes /clock, ``odom``, ``navigation`` and the camera ``image`` for the current sim time,
then waits for the cycle's ``cmd_vel``: the first command that arrives after the cycle was published
(arrival order, as the CARLA-ROS bridge does; a Twist carries no stamp). Only then does the simulator
step. After ``step_timeout_s`` of wall time without a command it steps with the last command and counts
a missed cycle; except the first cycle, which is published again while nothing answers it (a reader that has
not matched the new bridge yet drops it; sim time has not started). When the episode ends, the summary goes out
as JSON on ``episode``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from vla_driver.core.camera_rig import camera_topic as rig_camera_topic
from vla_driver.core.camera_rig import rig_from_param
from vla_driver.core.metrics import EpisodeResult
from vla_driver.core.types import CAMERA_SIZE
from vla_driver.sim.highway import DrivingSim
from vla_driver.sim.render import PictureRecorder
from vla_driver.sim.scenarios import SCENARIOS

from .camera_set import LEGACY_CAMERA, camera_topic
from .convert import BadMessage, EgoState, rgb_to_image, seconds_to_stamp, state_to_odometry
from .diagnostics import ERROR, OK, WARN, NodeDiagnostics
from .params import ParameterValueError, declare_params, param, require_positive
from .spin import spin_standalone

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class SimBridgeParams:
    scenario: str = param("highway", "simulator scenario (vla_driver.sim.scenarios.SCENARIOS)")
    seed: int = param(0, "episode seed")
    duration_s: float = param(0.0, "episode length in sim seconds; 0 = the scenario's default")
    control_hz: float = param(10.0, "simulator steps per sim second (one command per step)")
    image_width: int = param(CAMERA_SIZE[1], "camera image width (pixels)")
    image_height: int = param(CAMERA_SIZE[0], "camera image height (pixels)")
    step_timeout_s: float = param(1.0, "wall seconds to wait for a cycle's cmd_vel before a missed cycle; 0 = forever")
    rig: str = param("front", "cameras to render and publish (a preset of config/rigs or a rig YAML; the embedded default drives from front); empty = the top-down view on image")

    POSITIVE = ("control_hz", "image_width", "image_height")  # > 0; their descriptors carry the range

    def __post_init__(self):
        require_positive(self, *self.POSITIVE)
        if self.duration_s < 0 or self.step_timeout_s < 0:
            raise ParameterValueError("parameters duration_s and step_timeout_s must be >= 0")


class SimBridgeNode(Node):
    TOPICS = ("image", "odom", "navigation", "cmd_vel", "episode")
    MAP_FRAME, BASE_FRAME, CAMERA_FRAME = "map", "base_link", "camera"
    STARTUP_POLL_S = 0.05  # how often to look for the pipeline's subscribers before the first cycle
    # After the first reader of each stream matched: the others (decision, action, logger) match within a moment,
    # and a best-effort camera reader that has not matched this writer yet drops the first frame (a missed cycle
    # at t=0 in about one episode of two, measured by the soak).
    STARTUP_GRACE_S = 1.0
    # Still, one episode in ~10 of the soak had its first frame (and once the second, 1 s later) lost by the action
    # node's best-effort reader, matched only ~2 s after the others: the first cycle waits for its answer.
    START_RETRIES = 10

    def __init__(self, on_done: Callable | None = None, on_cycle: Callable[[int], None] | None = None,
                 record_frames: bool = False, **node_kwargs):
        super().__init__("sim_bridge_node", **node_kwargs)
        p = self.params = declare_params(self, SimBridgeParams)
        if p.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {p.scenario!r}; choose from {sorted(SCENARIOS)}")
        self.rig = rig_from_param(p.rig)
        self.sim = DrivingSim(p.scenario, seed=p.seed, image_size=(p.image_height, p.image_width),
                              duration_s=p.duration_s or None, control_hz=p.control_hz, rig=self.rig)
        self.observation = self.sim.observation()  # the constructor has reset the scene with the seed
        self.on_done, self.on_cycle = on_done, on_cycle
        self.frames: list[np.ndarray] | None = [] if record_frames else None
        # with record_frames, also what a picture of each cycle needs: speed, top-down view, front camera
        self.views: list[dict] | None = [] if record_frames else None
        self._pictures = PictureRecorder(self.rig) if record_frames else None
        self.result = None
        self.cycles = self.missed_cycles = self.start_retries = 0
        self.cycle_latencies_ms: list[float] = []
        self.last_command = (0.0, 0.0)
        self._state = "starting"  # starting -> waiting (for the cycle's command) -> done
        self._cycle_start = 0.0

        self.diagnostics = NodeDiagnostics(self, backend=f"sim:{p.scenario}")
        self.clock_publisher = self.create_publisher(ClockMsg, "/clock", 10)
        # one image (+ camera_info) topic per camera, every frame of a cycle stamped alike
        names = self.rig.names if self.rig is not None else (LEGACY_CAMERA,)
        self.image_publishers = [self.create_publisher(Image, camera_topic(n), 5) for n in names]
        self.camera_infos = [] if self.rig is None else [
            (self.create_publisher(CameraInfo, rig_camera_topic(n, "camera_info"), 5), self._camera_info(n))
            for n in names]
        self.odom_publisher = self.create_publisher(Odometry, "odom", 10)
        self.navigation_publisher = self.create_publisher(String, "navigation", LATCHED)
        self.episode_publisher = self.create_publisher(String, "episode", LATCHED)
        stepping = MutuallyExclusiveCallbackGroup()  # commands and the watchdog never step at once
        self.create_subscription(Twist, "cmd_vel", self.diagnostics.guard("cmd_vel", self._on_command), 10,
                                 callback_group=stepping)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._ready_since: float | None = None  # wall time the pipeline was first seen connected
        self._startup_timer = self.create_timer(self.STARTUP_POLL_S, self._start_when_connected, stepping,
                                                 clock=steady)
        # One wake-up per missed cycle, not a 10 ms poll: in a composed process every executor wake-up
        # rebuilds the wait set of all nodes in Python under the GIL (~16 dispatches per cycle otherwise).
        self._watchdog = None
        if p.step_timeout_s > 0:
            self._watchdog = self.create_timer(p.step_timeout_s, self._on_step_timeout, stepping, clock=steady,
                                               autostart=False)

    def _camera_info(self, name: str) -> CameraInfo:
        """The camera's intrinsics at the size the bridge publishes: the rig's model input size."""
        info = CameraInfo(**self.rig.model_camera_info(self.rig.camera(name)))
        info.header.frame_id = f"{self.CAMERA_FRAME}_{name}"
        return info

    @property
    def episode_done(self) -> bool:
        return self._state == "done"

    def _graph_ready(self) -> bool:
        """The pipeline is connected: someone consumes the camera and odometry and publishes commands."""
        return (all(pub.get_subscription_count() > 0 for pub in self.image_publishers)
                and self.odom_publisher.get_subscription_count() > 0
                and self.count_publishers(self.resolve_topic_name("cmd_vel")) > 0)

    def _start_when_connected(self) -> None:
        if self._state != "starting":
            return
        if not self._graph_ready():
            self._ready_since = None
            return
        now = time.monotonic()
        self._ready_since = self._ready_since or now
        if now - self._ready_since >= self.STARTUP_GRACE_S:
            self._startup_timer.cancel()
            self._publish_cycle()

    def _on_step_timeout(self) -> None:
        """The cycle's command is over ``step_timeout_s`` late: step with the last one, count a miss."""
        waited = time.monotonic() - self._cycle_start
        if self._state != "waiting" or waited < self.params.step_timeout_s:
            return  # the command came as the timer fired; the next cycle restarted the timer
        if self.cycles == 0 and self.start_retries < self.START_RETRIES:
            self.start_retries += 1
            self.get_logger().warn(f"no answer to the first cycle within {self.params.step_timeout_s} s: "
                                   f"publishing it again ({self.start_retries}/{self.START_RETRIES})")
            self._publish_cycle(again=True)
            return
        self.missed_cycles += 1
        self.diagnostics.count("missed_cycles")
        message = (f"no cmd_vel within {self.params.step_timeout_s} s "
                   f"(cycle {self.cycles}, t={self.sim.time:.1f} s)")
        self.diagnostics.set_status(WARN, message)
        self.get_logger().warn(message)
        self._step(*self.last_command)

    def _on_command(self, msg: Twist) -> None:
        speed, yaw_rate = msg.linear.x, msg.angular.z
        if not (math.isfinite(speed) and math.isfinite(yaw_rate)):
            raise BadMessage("non_finite", f"cmd_vel linear.x={speed} angular.z={yaw_rate}")
        self.last_command = (speed, yaw_rate)
        if self._state == "waiting":
            self.diagnostics.set_status(OK, f"t={self.sim.time:.1f} s")
            self._step(speed, yaw_rate)

    def _publish_cycle(self, again: bool = False) -> None:
        obs, stamp = self.observation, self.observation.stamp
        x, y, yaw, speed = self.sim.ego_pose()
        if self.frames is not None and not again:  # before publishing: recording never counts as pipeline latency
            self.frames.append(obs.image)
            self.views.append(self._pictures.capture(self.sim, obs, speed))
        self.clock_publisher.publish(ClockMsg(clock=seconds_to_stamp(stamp)))
        ego = EgoState(speed=speed, yaw_rate=obs.yaw_rate, x=x, y=y, yaw=yaw, stamp=stamp)
        self.odom_publisher.publish(state_to_odometry(ego, self.MAP_FRAME, self.BASE_FRAME))
        if obs.navigation:
            self.navigation_publisher.publish(String(data=obs.navigation))
        images = [obs.image] if self.rig is None else list(obs.image)
        for k, (publisher, image) in enumerate(zip(self.image_publishers, images, strict=True)):
            frame = self.CAMERA_FRAME if self.rig is None else f"{self.CAMERA_FRAME}_{self.rig.names[k]}"
            publisher.publish(rgb_to_image(image, stamp, frame))
        for publisher, info in self.camera_infos:
            info.header.stamp = seconds_to_stamp(stamp)
            publisher.publish(info)
        self._state, self._cycle_start = "waiting", time.monotonic()
        if self._watchdog is not None:
            self._watchdog.reset()  # fires step_timeout_s from now unless the next cycle resets it first

    def _step(self, speed: float, yaw_rate: float) -> None:
        latency_ms = (time.monotonic() - self._cycle_start) * 1e3
        self.cycle_latencies_ms.append(latency_ms)
        self.diagnostics.cycle_done(latency_ms)
        try:
            info = self.sim.step(speed, yaw_rate)
        except Exception as e:  # noqa: BLE001 - report the episode as failed instead of killing the process
            self.get_logger().error(f"simulator step failed: {e!r}")
            self.diagnostics.set_status(ERROR, f"simulator failed: {e}")
            self._finish(error=str(e))
            return
        self.cycles += 1
        if self.on_cycle is not None:
            self.on_cycle(self.cycles)
        if info.done or self.sim.done:
            self._finish()
        else:
            self.observation = self.sim.observation()
            self._publish_cycle()

    def summary(self) -> dict:
        """Bridge figures: cycles, missed cycles and wall-clock cycle latency (publish -> command)."""
        lat = self.cycle_latencies_ms
        return {
            "cycles": self.cycles,
            "missed_cycles": self.missed_cycles,
            "start_retries": self.start_retries,
            "cycle_latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
            "cycle_latency_p99_ms": float(np.percentile(lat, 99)) if lat else None,
        }

    def _finish(self, error: str = "") -> None:
        self._state = "done"
        if self._watchdog is not None:
            self._watchdog.cancel()
        try:
            self.result = self.sim.result()
        except Exception as e:  # noqa: BLE001 - a broken simulator still yields a (failed) result
            self.result = EpisodeResult(self.params.scenario, self.params.seed, 0.0)
            error = error or f"result failed: {e}"
        self.result.extras.update(self.summary())
        if error:
            self.result.termination, self.result.extras["error"] = "error", error
        self.episode_publisher.publish(String(data=json.dumps(self.result.to_dict(), default=float)))
        self.get_logger().info(f"episode done: {self.result.termination}, {self.summary()}")
        if self.on_done is not None:
            self.on_done(self.result)

    def destroy_node(self):
        self.sim.close()
        if self._pictures is not None:
            self._pictures.close()
        return super().destroy_node()


def main(args=None) -> None:
    spin_standalone(SimBridgeNode, args)
