"""Trajectory follower: pure pursuit for the yaw rate, speed profile + PID for the speed command.

The output is exactly what a ``geometry_msgs/Twist`` carries: ``linear.x`` (m/s) and ``angular.z``
(rad/s, positive = left). The vehicle (or the simulator) turns the speed command into throttle/brake
with its own low-level loop; the PID here only removes the residual speed-tracking error of that loop,
which is where a PID belongs. Steering is pure geometry (pure pursuit), no PID.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .trajectory import Trajectory, ego_to_world, world_to_ego, wrap_angle

log = logging.getLogger(__name__)


@dataclass
class PurePursuitPID:
    lookahead_min: float = 3.0  # m, pure-pursuit lookahead floor
    lookahead_gain: float = 0.5  # s, lookahead = max(min, gain * speed)
    wheelbase: float = 2.7  # m, bounds the curvature through max_steer
    max_steer: float = 0.6  # rad
    max_yaw_rate: float = 1.2  # rad/s
    speed_lookahead_s: float = 0.5  # s, where on the speed profile the target speed is read
    kp: float = 0.3
    ki: float = 0.1
    kd: float = 0.0
    integral_limit: float = 2.0  # m/s, anti-windup clamp on the integral correction
    max_speed: float = 40.0  # m/s
    fallback_decel: float = 4.0  # m/s^2 used when the trajectory is unusable
    _integral: float = field(default=0.0, init=False, repr=False)
    _prev_error: float | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        self._integral = 0.0
        self._prev_error = None

    def target_speed(self, traj: Trajectory, elapsed: float = 0.0) -> float:
        """Speed of the trajectory's profile at ``elapsed + speed_lookahead_s`` seconds."""
        v = traj.speeds()
        t_mid = traj.spec.times - traj.spec.dt / 2  # interval speeds sit mid-interval
        return float(np.interp(elapsed + self.speed_lookahead_s, t_mid, v))

    def lookahead_point(self, traj: Trajectory, distance: float) -> np.ndarray | None:
        """Point at arc length ``distance`` along origin -> waypoints ahead; extrapolated past the end."""
        ahead = traj.poses[traj.poses[:, 0] > 0.0]
        if len(ahead) == 0:
            return None
        pts = np.vstack([[0.0, 0.0], ahead[:, :2]])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        total = float(seg.sum())
        if total < 1e-3:
            return None
        if distance >= total:
            h = ahead[-1, 2]
            return pts[-1] + (distance - total) * np.array([np.cos(h), np.sin(h)])
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        return np.array([np.interp(distance, cum, pts[:, 0]), np.interp(distance, cum, pts[:, 1])])

    def command(self, traj: Trajectory, speed: float, dt: float, elapsed: float = 0.0) -> tuple[float, float]:
        """(speed_cmd m/s, yaw_rate rad/s) that follow ``traj`` from the current ``speed``.

        ``elapsed`` is the time since the trajectory's stamp (0 when it was planned for this instant);
        re-anchor stale trajectories to the current pose with :func:`reanchor` first.
        """
        speed = float(speed) if np.isfinite(speed) else 0.0
        dt = float(dt) if np.isfinite(dt) and dt > 0 else 0.1
        if not np.all(np.isfinite(traj.poses)):
            log.warning("non-finite trajectory; braking at %.1f m/s^2", self.fallback_decel)
            self.reset()
            return max(0.0, speed - self.fallback_decel * dt), 0.0

        v_ref = min(max(self.target_speed(traj, elapsed), 0.0), self.max_speed)
        error = v_ref - speed
        derivative = 0.0 if self._prev_error is None else (error - self._prev_error) / dt
        self._prev_error = error
        correction = self.kp * error + self.ki * self._integral + self.kd * derivative
        speed_cmd = v_ref + correction
        saturated = speed_cmd <= 0.0 or speed_cmd >= self.max_speed
        if not saturated and v_ref > 0.0:  # no integration while saturated or while asked to stand still
            self._integral = float(np.clip(self._integral + error * dt, -self.integral_limit / max(self.ki, 1e-9),
                                           self.integral_limit / max(self.ki, 1e-9)))
        if v_ref <= 0.0:
            self._integral = 0.0
        speed_cmd = float(np.clip(speed_cmd, 0.0, self.max_speed))

        lookahead = max(self.lookahead_min, self.lookahead_gain * speed)
        target = self.lookahead_point(traj, lookahead)
        if target is None:
            return speed_cmd, 0.0
        curvature = 2.0 * target[1] / max(float(target @ target), 1e-6)
        max_curvature = np.tan(self.max_steer) / self.wheelbase
        curvature = float(np.clip(curvature, -max_curvature, max_curvature))
        yaw_rate = float(np.clip(curvature * speed, -self.max_yaw_rate, self.max_yaw_rate))
        return speed_cmd, yaw_rate


def reanchor(traj: Trajectory, plan_pose, current_pose) -> Trajectory:
    """Express a trajectory planned at ``plan_pose`` (x, y, yaw world) in the ego frame of ``current_pose``."""
    xy = ego_to_world(traj.poses[:, :2], plan_pose[:2], plan_pose[2])
    local = world_to_ego(xy, current_pose[:2], current_pose[2])
    heading = wrap_angle(traj.poses[:, 2] + plan_pose[2] - current_pose[2])
    return Trajectory(np.column_stack([local, heading]), traj.spec)
