"""Trajectories in the ego frame (x forward, y left, heading in rad) and the maths around them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrajectorySpec:
    """Waypoint layout shared by the action head, the nodes, the rewards and the logs."""

    num_waypoints: int = 6
    dt: float = 0.5  # seconds between waypoints; waypoint k is at (k + 1) * dt

    @property
    def horizon(self) -> float:
        return self.num_waypoints * self.dt

    @property
    def times(self) -> np.ndarray:
        return self.dt * np.arange(1, self.num_waypoints + 1, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"num_waypoints": self.num_waypoints, "dt": self.dt, "frame": "ego (x forward, y left)"}

    @classmethod
    def from_dict(cls, d: dict) -> TrajectorySpec:
        return cls(int(d["num_waypoints"]), float(d["dt"]))


@dataclass(frozen=True)
class KinematicLimits:
    max_speed: float = 40.0  # m/s
    max_accel: float = 4.0  # m/s^2
    max_decel: float = 8.0  # m/s^2 (positive number)
    max_lateral_accel: float = 6.0  # m/s^2
    max_yaw_rate: float = 1.2  # rad/s


def wrap_angle(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def world_to_ego(points_xy: np.ndarray, ego_xy, ego_yaw: float) -> np.ndarray:
    """Rotate/translate world (x, y) points into the ego frame."""
    d = np.asarray(points_xy, dtype=np.float64) - np.asarray(ego_xy, dtype=np.float64)
    c, s = np.cos(ego_yaw), np.sin(ego_yaw)
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def ego_to_world(points_xy: np.ndarray, ego_xy, ego_yaw: float) -> np.ndarray:
    p = np.asarray(points_xy, dtype=np.float64)
    c, s = np.cos(ego_yaw), np.sin(ego_yaw)
    x = c * p[..., 0] - s * p[..., 1] + ego_xy[0]
    y = s * p[..., 0] + c * p[..., 1] + ego_xy[1]
    return np.stack([x, y], axis=-1)


@dataclass
class Trajectory:
    """``poses`` is (N, 3): x, y, heading in the ego frame at the time of the source image."""

    poses: np.ndarray
    spec: TrajectorySpec = TrajectorySpec()

    def __post_init__(self):
        self.poses = np.asarray(self.poses, dtype=np.float64)
        if self.poses.shape != (self.spec.num_waypoints, 3):
            raise ValueError(f"trajectory must be ({self.spec.num_waypoints}, 3), got {self.poses.shape}")

    @property
    def xy(self) -> np.ndarray:
        return self.poses[:, :2]

    def speeds(self, initial_speed: float = 0.0) -> np.ndarray:
        """Speed over each interval (N values), from consecutive waypoints starting at the origin."""
        pts = np.vstack([[0.0, 0.0], self.xy])
        return np.linalg.norm(np.diff(pts, axis=0), axis=1) / self.spec.dt

    def violations(self, initial_speed: float, limits: KinematicLimits = KinematicLimits()) -> list[str]:
        """Names of the kinematic limits this trajectory breaks (empty list = feasible)."""
        out = []
        if not np.all(np.isfinite(self.poses)):
            return ["non_finite"]
        v = self.speeds()
        if v.max() > limits.max_speed:
            out.append("max_speed")
        # Interval speeds sit at mid-interval; the initial speed sits at t = 0, half an interval earlier.
        dv = np.diff(np.concatenate([[initial_speed], v]))
        dts = np.full_like(dv, self.spec.dt)
        dts[0] = self.spec.dt / 2
        accel = dv / dts
        if accel.max() > limits.max_accel * 1.5:
            out.append("max_accel")
        if -accel.min() > limits.max_decel * 1.5:
            out.append("max_decel")
        headings = np.concatenate([[0.0], self.poses[:, 2]])
        yaw_rate = np.abs(wrap_angle(np.diff(headings))) / self.spec.dt
        if yaw_rate.max() > limits.max_yaw_rate:
            out.append("max_yaw_rate")
        if (yaw_rate * v).max() > limits.max_lateral_accel * 1.5:
            out.append("max_lateral_accel")
        return out

    def clip_to_limits(self, initial_speed: float, limits: KinematicLimits = KinematicLimits()) -> Trajectory:
        """A feasible version: interval speeds clamped to the accel/decel envelope, path shape kept."""
        if not np.all(np.isfinite(self.poses)):
            return stop_trajectory(initial_speed, self.spec, limits.max_decel / 2)
        v = self.speeds()
        out_v = np.empty_like(v)
        prev = initial_speed
        for i, target in enumerate(v):
            dt = self.spec.dt / 2 if i == 0 else self.spec.dt
            prev = float(np.clip(target, max(0.0, prev - limits.max_decel * dt), prev + limits.max_accel * dt))
            prev = min(prev, limits.max_speed)
            out_v[i] = prev
        headings = np.concatenate([[0.0], self.poses[:, 2]])
        max_step = limits.max_yaw_rate * self.spec.dt
        steps = np.clip(wrap_angle(np.diff(headings)), -max_step, max_step)
        new_heading = np.cumsum(steps)
        pos = np.zeros(2)
        poses = np.zeros_like(self.poses)
        for i in range(len(v)):
            mid = new_heading[i - 1] if i else 0.0
            h = 0.5 * (mid + new_heading[i])
            pos = pos + out_v[i] * self.spec.dt * np.array([np.cos(h), np.sin(h)])
            poses[i] = [pos[0], pos[1], new_heading[i]]
        return Trajectory(poses, self.spec)

    def to_list(self) -> list[list[float]]:
        return self.poses.round(4).tolist()


def constant_motion(speed: float, yaw_rate: float, spec: TrajectorySpec, accel: float = 0.0) -> Trajectory:
    """Integrate a unicycle with constant yaw rate and acceleration (speed floored at 0)."""
    sub = 10
    h = spec.dt / sub
    x = y = th = 0.0
    v = speed
    poses = []
    for _ in range(spec.num_waypoints):
        for _ in range(sub):
            v = max(0.0, v + accel * h)
            x += v * np.cos(th) * h
            y += v * np.sin(th) * h
            th += yaw_rate * h
        poses.append([x, y, th])
    return Trajectory(np.array(poses), spec)


def stop_trajectory(speed: float, spec: TrajectorySpec = TrajectorySpec(), decel: float = 3.0) -> Trajectory:
    """Straight decelerate-to-stop trajectory: the safety fallback."""
    return constant_motion(max(0.0, float(speed)), 0.0, spec, accel=-abs(decel))


def future_poses_to_ego(world_xy: np.ndarray, world_yaw: np.ndarray, ego_xy, ego_yaw: float) -> np.ndarray:
    """Future world poses (N, 2) + (N,) into an ego-frame (N, 3) trajectory array."""
    xy = world_to_ego(world_xy, ego_xy, ego_yaw)
    return np.column_stack([xy, wrap_angle(np.asarray(world_yaw) - ego_yaw)])


def l2_at(pred: np.ndarray, truth: np.ndarray, spec: TrajectorySpec, seconds=(1.0, 2.0, 3.0)) -> dict:
    """Displacement error at given horizons (nuScenes-style L2 at 1/2/3 s)."""
    err = np.linalg.norm(np.asarray(pred)[:, :2] - np.asarray(truth)[:, :2], axis=1)
    out = {}
    for s in seconds:
        k = int(round(s / spec.dt)) - 1
        if 0 <= k < len(err):
            out[f"l2_{s:g}s"] = float(err[k])
    return out


def plan_errors_at(pred: np.ndarray, truth: np.ndarray, spec: TrajectorySpec, seconds=(1.0, 2.0, 3.0)) -> dict:
    """Signed error of a plan against the path driven, both in the ego frame at the plan's time (x forward,
    y left): ``lateral_{s}s`` = planned y - driven y (> 0: the plan lies left of where the car went) and
    ``longitudinal_{s}s`` = planned x - driven x (> 0: ahead of it) at each horizon; ``max_abs_lateral`` =
    the largest |lateral error| over every waypoint (does the plan leave the lane anywhere)."""
    d = np.asarray(pred, dtype=np.float64)[:, :2] - np.asarray(truth, dtype=np.float64)[:, :2]
    out = {}
    for s in seconds:
        k = int(round(s / spec.dt)) - 1
        if 0 <= k < len(d):
            out[f"lateral_{s:g}s"] = float(d[k, 1])
            out[f"longitudinal_{s:g}s"] = float(d[k, 0])
    if len(d):
        out["max_abs_lateral"] = float(np.abs(d[:, 1]).max())
    return out
