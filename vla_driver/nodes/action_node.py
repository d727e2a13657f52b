"""Action node: latest image + odometry + decision -> ego-frame trajectory (nav_msgs/Path), 10 Hz.

Safety: stale camera or odometry, a model error, a non-finite plan or a missed deadline publishes a
decelerate-to-stop trajectory with an ERROR diagnostic; the next good cycle recovers by itself.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from vla_driver.core.trajectory import KinematicLimits, Trajectory, stop_trajectory
from vla_driver.core.vocabulary import Decision

from .camera_set import PRESET_CAMERAS, CameraSet, camera_topic
from .convert import decision_from_string, trajectory_to_markers, trajectory_to_path
from .diagnostics import ERROR, OK, WARN, NodeDiagnostics
from .hot_swap import HotSwap, ModelParams, blank_observation, load_policy
from .inputs import ObservationAssembler
from .params import declare_params, param, require_positive
from .spin import spin_standalone
from .watchdog import PlanWatchdog


@dataclass
class ActionParams(ModelParams):
    rate_hz: float = param(10.0, "planning rate (Hz); with plan_on_image the timer only watches inputs")
    plan_on_image: bool = param(False, "plan once per new image (simulator lockstep) instead of on the timer")
    decision_timeout_s: float = param(2.0, "older decisions are ignored: default (keep, straight) + WARN")
    max_input_age_s: float = param(0.5, "camera or odometry older than this (s): stop trajectory + ERROR")
    deadline_ms: float = param(100.0, "planning slower than this (ms): stop trajectory + ERROR")
    frame_id: str = param("base_link", "ego frame the trajectory is expressed in")
    stop_decel: float = param(3.0, "deceleration of the fallback stop trajectory (m/s^2)")
    default_navigation: str = param("Follow the road.", "instruction used until one arrives on navigation")
    max_speed: float = param(KinematicLimits.max_speed, "kinematic limit (m/s)")
    max_accel: float = param(KinematicLimits.max_accel, "kinematic limit (m/s^2)")
    max_decel: float = param(KinematicLimits.max_decel, "kinematic limit (m/s^2, positive)")
    max_lateral_accel: float = param(KinematicLimits.max_lateral_accel, "kinematic limit (m/s^2)")
    max_yaw_rate: float = param(KinematicLimits.max_yaw_rate, "kinematic limit (rad/s)")

    # > 0; their descriptors carry the range
    POSITIVE = ("rate_hz", "decision_timeout_s", "max_input_age_s", "deadline_ms", "stop_decel", "max_speed",
                "max_accel", "max_decel", "max_lateral_accel", "max_yaw_rate")

    def __post_init__(self):
        require_positive(self, *self.POSITIVE)

    def limits(self) -> KinematicLimits:
        return KinematicLimits(self.max_speed, self.max_accel, self.max_decel, self.max_lateral_accel,
                               self.max_yaw_rate)


class ActionNode(HotSwap, Node):
    TOPICS = ("image", "odom", "navigation", "decision", "trajectory", "trajectory_markers",
              *(camera_topic(n) for n in PRESET_CAMERAS))

    def __init__(self, policy=None, on_trajectory: Callable[[float, Trajectory, bool], None] | None = None,
                 **node_kwargs):
        super().__init__("action_node", **node_kwargs)
        self.params = declare_params(self, ActionParams)
        self.limits = self.params.limits()
        self.policy = policy or load_policy(self.params.checkpoint, self.params.backend, self.params.trusted_keys)
        self.on_trajectory = on_trajectory
        self.default_decision = self._default_decision(self.policy)
        self.inputs = ObservationAssembler(self.params.default_navigation,
                                           CameraSet(self.policy.rig, self.params.camera_slop_s, self.policy.history))
        self.decision: tuple[Decision, float] | None = None
        self.diagnostics = NodeDiagnostics(self)
        self.diagnostics.set_backend(self.policy)
        self._last_planned_stamp = None
        self._watchdog = PlanWatchdog(self.params.deadline_ms / 1e3, self._on_overrun)
        self._warm_up()
        self.enable_hot_swap(self._plan_twice)

        guard = self.diagnostics.guard
        self._planning = threading.Lock()  # image-triggered and timer cycles never overlap
        # Odometry first: with messages waiting on both, the executor then takes it before the image.
        self.create_subscription(Odometry, "odom", guard("odom", self.inputs.on_odometry), 10)
        self.create_subscription(String, "navigation", guard("navigation", self.inputs.on_navigation), 10)
        self.create_subscription(String, "decision", guard("decision", self._on_decision), 10)
        # Own group for the camera: a long plan must not hold back new images (they would look stale).
        self.inputs.cameras.subscribe(self, guard, qos_profile_sensor_data, self._on_frame,
                                      callback_group=MutuallyExclusiveCallbackGroup())
        self.path_publisher = self.create_publisher(Path, "trajectory", 10)
        self.marker_publisher = self.create_publisher(MarkerArray, "trajectory_markers", 10)
        self.create_timer(1.0 / self.params.rate_hz, self._on_timer, MutuallyExclusiveCallbackGroup())

    @staticmethod
    def _default_decision(policy) -> Decision:
        return Decision(policy.vocab.find_speed("keep"), policy.vocab.find_path("straight"))

    def _plan_twice(self, policy) -> None:
        for _ in range(2):
            policy.plan(blank_observation(self.params.default_navigation, policy.rig, policy.history), self._default_decision(policy))

    def _warm_up(self) -> None:
        """Plan twice on a blank frame: torch's lazy initialisation must not land on the first deadline."""
        try:
            self._plan_twice(self.policy)
        except Exception as e:  # noqa: BLE001 - a real failure shows up again, with a diagnostic, per cycle
            self.get_logger().warn(f"warm-up plan failed: {e!r}")

    def _on_frame(self, camera: str) -> None:
        if self.params.plan_on_image:
            with self._planning:  # waits for a running timer cycle, then plans this image if still new
                self.cycle()

    def _on_timer(self) -> None:
        if self._planning.acquire(blocking=False):  # busy = an image-triggered cycle is running
            try:
                self.cycle()
            finally:
                self._planning.release()

    def _on_decision(self, msg: String) -> None:
        result, stamp = decision_from_string(msg, self.policy.vocab)
        self.decision = (result.decision, stamp)

    def _current_decision(self, now: float) -> tuple[Decision, bool]:
        """The latest unexpired decision, or the default one; the flag says whether it is the default."""
        latest = self.decision
        if latest is None or now - latest[1] > self.params.decision_timeout_s:
            return self.default_decision, True
        return latest[0], False

    def cycle(self) -> None:
        if self.adopt_new_policy():
            self.default_decision = self._default_decision(self.policy)
        start = time.monotonic()
        now = self.get_clock().now().nanoseconds * 1e-9
        ages = self.inputs.ages(now)
        for name, age in ages.items():
            self.diagnostics.input_age(name, age)
        stale = [name for name, age in ages.items() if age is None or age > self.params.max_input_age_s]
        image = self.inputs.image
        new_image = image is not None and image[1] != self._last_planned_stamp
        if new_image:
            self._last_planned_stamp = image[1]  # answered below, by a plan or a fallback
        if stale:
            self._fallback(now, "stale_input", f"no fresh {' and '.join(stale)}")
            return
        if self.params.plan_on_image and not new_image:
            return  # one answer per image: the timer only watches for stale inputs
        obs = self.inputs.observation()
        decision, is_default = self._current_decision(now)
        self._watchdog.arm(obs.stamp, since=start)
        try:
            traj = self.policy.plan(obs, decision)
        except Exception as e:  # noqa: BLE001 - a model failure must end in a safe trajectory, not a crash
            answered = self._watchdog.disarm()
            self.get_logger().error(f"plan failed: {e!r}", throttle_duration_sec=1.0)
            self._fallback(obs.stamp, "model_error", f"plan failed: {e}", publish=not answered)
            return
        answered = self._watchdog.disarm()  # True: the watchdog sent the stop at the deadline; this plan is late
        elapsed_ms = (time.monotonic() - start) * 1e3
        if answered or elapsed_ms > self.params.deadline_ms:
            self._fallback(obs.stamp, "deadline", f"planning took {elapsed_ms:.0f} ms > {self.params.deadline_ms:.0f} ms",
                           publish=not answered)
            return
        problems = traj.violations(obs.speed, self.limits)
        if "non_finite" in problems:
            self._fallback(obs.stamp, "non_finite", "plan has non-finite waypoints")
            return
        level, message = OK, f"{decision.speed}, {decision.path}"
        if is_default:
            level, message = WARN, f"no decision within {self.params.decision_timeout_s} s: default {message}"
        lagging = self.inputs.cameras.lagging()
        if lagging:
            level, message = WARN, f"{' and '.join(lagging)} lagging; {message}"
        if problems:
            traj = traj.clip_to_limits(obs.speed, self.limits)
        clipped = sorted(set(problems) | set(getattr(self.policy, "last_plan_violations", ())))
        if clipped:  # by this node's limits or already inside the policy
            self.diagnostics.count("clipped")
            level, message = WARN, f"{message}; clipped to limits ({', '.join(clipped)})"
        self._publish(traj, obs.stamp, fallback=False)
        self.diagnostics.cycle_done(elapsed_ms)
        self.diagnostics.set_status(level, message)

    def _on_overrun(self, stamp: float) -> None:
        """The watchdog's thread, ``deadline_ms`` into a plan that has not returned: stop now, not when it does."""
        self._fallback(stamp, "deadline", f"planning still running after {self.params.deadline_ms:.0f} ms")

    def _fallback(self, stamp: float, reason: str, message: str, publish: bool = True) -> None:
        """A stop trajectory for the cycle, named in /diagnostics; ``publish=False``: the watchdog already sent it
        (one answer per cycle: in lockstep each answer steps the simulator)."""
        if publish:
            ego = self.inputs.ego
            speed = ego[0].speed if ego is not None else 0.0
            self._publish(stop_trajectory(speed, self.policy.spec, self.params.stop_decel), stamp, fallback=True)
            self.diagnostics.count("fallbacks")
            self.diagnostics.count(f"fallback_{reason}")
        self.diagnostics.set_status(ERROR, f"stop trajectory: {message}")

    def _publish(self, traj: Trajectory, stamp: float, fallback: bool) -> None:
        self.path_publisher.publish(trajectory_to_path(traj, stamp, self.params.frame_id))
        self.marker_publisher.publish(trajectory_to_markers(traj, stamp, self.params.frame_id, fallback))
        if self.on_trajectory is not None:
            self.on_trajectory(stamp, traj, fallback)

    def destroy_node(self):
        self._watchdog.close()
        return super().destroy_node()


def main(args=None) -> None:
    spin_standalone(ActionNode, args)
