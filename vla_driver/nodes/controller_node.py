"""Controller node: trajectory (nav_msgs/Path) + odometry -> cmd_vel Twist via pure pursuit + PID.

The path is in the ego frame at its stamp; it is moved into the current ego frame with the odometry
pose at that stamp before tracking. A stale trajectory or odometry brakes (zero speed) with ERROR.
"""
from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from vla_driver.core.control import PurePursuitPID, reanchor
from vla_driver.core.trajectory import Trajectory

from .convert import EgoState, odometry_to_state, path_to_trajectory
from .diagnostics import ERROR, OK, NodeDiagnostics
from .params import declare_params, param, require_positive
from .spin import spin_standalone


@dataclass
class ControllerParams:
    rate_hz: float = param(20.0, "command rate (Hz); with publish_on_trajectory the timer only watches inputs")
    publish_on_trajectory: bool = param(False, "command once per new trajectory (simulator lockstep)")
    trajectory_timeout_s: float = param(1.0, "trajectory older than this (s): brake + ERROR")
    max_input_age_s: float = param(0.5, "odometry older than this (s): brake + ERROR")
    frame_id: str = param("base_link", "ego frame the trajectory must be expressed in")

    POSITIVE = ("rate_hz", "trajectory_timeout_s", "max_input_age_s")  # > 0; their descriptors carry the range

    def __post_init__(self):
        require_positive(self, *self.POSITIVE)


class ControllerNode(Node):
    TOPICS = ("trajectory", "odom", "cmd_vel")

    def __init__(self, controller=None, **node_kwargs):
        super().__init__("controller_node", **node_kwargs)
        self.params = declare_params(self, ControllerParams)
        self.controller = controller or PurePursuitPID()
        self.trajectory: tuple[Trajectory, float] | None = None
        self.poses: deque[EgoState] = deque(maxlen=256)  # odometry history, for motion compensation
        self.diagnostics = NodeDiagnostics(self, backend="pure_pursuit_pid")
        self._last_command_time = None

        guard = self.diagnostics.guard
        control = MutuallyExclusiveCallbackGroup()  # callbacks share the pose history: run one at a time
        self.create_subscription(Path, "trajectory", guard("trajectory", self._on_trajectory), 10,
                                 callback_group=control)
        self.create_subscription(Odometry, "odom", guard("odom", self._on_odometry), 10, callback_group=control)
        self.publisher = self.create_publisher(Twist, "cmd_vel", 10)
        self.create_timer(1.0 / self.params.rate_hz, self._on_timer, control)

    def _on_trajectory(self, msg: Path) -> None:
        self.trajectory = path_to_trajectory(msg, frame_id=self.params.frame_id)
        if self.params.publish_on_trajectory:
            self.control()

    def _on_odometry(self, msg: Odometry) -> None:
        state = odometry_to_state(msg)
        if self.poses and state.stamp < self.poses[-1].stamp:
            self.poses.clear()  # time went backwards (bag loop, sim reset)
        self.poses.append(state)

    def _on_timer(self) -> None:
        if self.params.publish_on_trajectory:
            self._check_inputs(self._now())  # event-driven: the timer only brakes on stale inputs
        else:
            self.control()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _check_inputs(self, now: float) -> bool:
        """Brake with an ERROR (and return False) when the trajectory or odometry is missing or stale."""
        traj_age = None if self.trajectory is None else max(0.0, now - self.trajectory[1])
        odom_age = None if not self.poses else max(0.0, now - self.poses[-1].stamp)
        self.diagnostics.input_age("trajectory", traj_age)
        self.diagnostics.input_age("odom", odom_age)
        stale = []
        if traj_age is None or traj_age > self.params.trajectory_timeout_s:
            stale.append("trajectory")
        if odom_age is None or odom_age > self.params.max_input_age_s:
            stale.append("odom")
        if stale:
            self._brake(f"no fresh {' and '.join(stale)}")
        return not stale

    def control(self) -> None:
        start, now = time.perf_counter(), self._now()
        if not self._check_inputs(now):
            return
        traj, stamp = self.trajectory
        state = self.poses[-1]
        dt = 1.0 / self.params.rate_hz
        if self._last_command_time is not None and 0 < now - self._last_command_time < 1.0:
            dt = now - self._last_command_time
        speed_cmd, yaw_rate = self.controller.command(
            self.to_current_frame(traj, stamp), state.speed, dt, elapsed=max(0.0, state.stamp - stamp)
        )
        if not (math.isfinite(speed_cmd) and math.isfinite(yaw_rate)):
            self._brake("controller produced a non-finite command")
            return
        self._last_command_time = now
        self._publish(speed_cmd, yaw_rate)
        self.diagnostics.cycle_done((time.perf_counter() - start) * 1e3)
        self.diagnostics.set_status(OK, f"speed {speed_cmd:.2f} m/s, yaw rate {yaw_rate:.3f} rad/s")

    def to_current_frame(self, traj: Trajectory, stamp: float) -> Trajectory:
        """Re-anchor an ego-frame trajectory made at ``stamp`` to the latest odometry pose."""
        stamps = [p.stamp for p in self.poses]
        i = bisect_left(stamps, stamp)
        if i == len(stamps):
            return traj  # no pose at or after the stamp yet: the ego has not moved since
        then, current = self.poses[i], self.poses[-1]
        return reanchor(traj, (then.x, then.y, then.yaw), (current.x, current.y, current.yaw))

    def _brake(self, reason: str) -> None:
        self.controller.reset()
        self._last_command_time = None
        self._publish(0.0, 0.0)
        self.diagnostics.count("brakes")
        self.diagnostics.set_status(ERROR, f"braking: {reason}")

    def _publish(self, speed: float, yaw_rate: float) -> None:
        msg = Twist()
        msg.linear.x, msg.angular.z = float(speed), float(yaw_rate)
        self.publisher.publish(msg)


def main(args=None) -> None:
    spin_standalone(ControllerNode, args)
