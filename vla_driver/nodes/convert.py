"""ROS message <-> core type conversions. Every decoder checks its input and raises :class:`BadMessage`."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped, Quaternion
from nav_msgs.msg import Odometry, Path
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA, String
from visualization_msgs.msg import Marker, MarkerArray

from vla_driver.core.trajectory import Trajectory, TrajectorySpec
from vla_driver.core.types import DecisionResult
from vla_driver.core.vocabulary import AnswerError, Decision, DecisionVocabulary


class BadMessage(ValueError):
    """An incoming message the nodes refuse; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# encoding -> (bytes per pixel, channel order that yields RGB, PIL raw mode that unpacks it to RGB)
IMAGE_ENCODINGS = {
    "rgb8": (3, (0, 1, 2), "RGB"),
    "bgr8": (3, (2, 1, 0), "BGR"),
    "rgba8": (4, (0, 1, 2), "RGBX"),
    "bgra8": (4, (2, 1, 0), "BGRX"),
    "mono8": (1, (0, 0, 0), "L"),
}


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    nanoseconds = int(round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def yaw_to_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))


def quaternion_to_yaw(q: Quaternion) -> float:
    """Yaw of a (normalised) quaternion; scalar maths: numpy on four numbers cost ~0.3 s per replay."""
    values = (q.x, q.y, q.z, q.w)
    norm = math.sqrt(sum(v * v for v in values))
    if not math.isfinite(norm) or norm < 1e-9:
        raise BadMessage("bad_quaternion", f"orientation {list(values)} is not a rotation")
    x, y, z, w = (v / norm for v in values)
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


# --- camera -----------------------------------------------------------------------------------------


# Bounds on what comes from outside, checked before any work on it. The largest camera of the preset rigs is
# 1600x900; an 8000x8000 frame took 1.8 s to decode and ~8 s per decision. A navigation instruction is a
# sentence; a 1 MB one stalled the nodes and steered the decision.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_NAVIGATION_CHARS = 256


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode an 8-bit image into a contiguous (H, W, 3) uint8 RGB array (at most ``MAX_IMAGE_PIXELS``)."""
    data = _checked_image_data(msg)
    channels, order, _ = IMAGE_ENCODINGS[msg.encoding]
    h, w = msg.height, msg.width
    return _reorder_channels(data.reshape(h, msg.step)[:, : w * channels].reshape(h, w, channels), order)


def image_to_pil(msg: Image) -> PILImage.Image:
    """The same image as an RGB PIL image, unpacked from the message's buffer in one pass: what
    ``fit_to_model`` resizes, so a native frame costs one unpack and one resize (an 800x600 bgra8 frame
    ~1.1 ms, against ~2.1 ms through an RGB array)."""
    data = _checked_image_data(msg)
    raw_mode = IMAGE_ENCODINGS[msg.encoding][2]
    size = (msg.width, msg.height)
    if raw_mode == "L":
        return PILImage.frombytes("L", size, data, "raw", "L", msg.step, 1).convert("RGB")
    return PILImage.frombytes("RGB", size, data, "raw", raw_mode, msg.step, 1)


def _checked_image_data(msg: Image) -> np.ndarray:
    """The message's pixel buffer as a flat uint8 view (no copy), after every bound and size check."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise BadMessage("unknown_encoding", f"{msg.encoding!r}; supported: {sorted(IMAGE_ENCODINGS)}")
    channels = IMAGE_ENCODINGS[msg.encoding][0]
    h, w = msg.height, msg.width
    if h == 0 or w == 0:
        raise BadMessage("empty_image", f"{h}x{w}")
    if h * w > MAX_IMAGE_PIXELS:
        raise BadMessage("image_too_large", f"{w}x{h} is over {MAX_IMAGE_PIXELS} pixels")
    if msg.step < w * channels:
        raise BadMessage("wrong_size", f"step {msg.step} < width {w} x {channels} bytes")
    data = np.frombuffer(msg.data, dtype=np.uint8)  # a view of the message's buffer: no copy
    if data.size != msg.step * h:
        raise BadMessage("wrong_size", f"{data.size} bytes, expected step {msg.step} x height {h}")
    return data


def _reorder_channels(pixels: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """A new contiguous (H, W, 3) uint8 array whose channel i is ``pixels[:, :, order[i]]``.

    The one copy a decode makes: one strided copy per output channel (an 800x600 bgra8 frame in ~0.5 ms;
    fancy indexing ``pixels[:, :, [2, 1, 0]]`` took ~2 ms, a Python loop over pixels seconds). rgb8 input is
    copied as it is."""
    if tuple(order) == (0, 1, 2) and pixels.shape[2] == 3:
        return pixels.copy()
    out = np.empty((*pixels.shape[:2], 3), dtype=np.uint8)
    for i, channel in enumerate(order):
        out[:, :, i] = pixels[:, :, channel]
    return out


def rgb_to_image(rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> Image:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got {rgb.shape}")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3)
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.data = rgb.tobytes()
    return msg


# --- odometry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EgoState:
    """Ego motion from one Odometry: forward speed and yaw rate (body frame) and the planar pose."""

    speed: float
    yaw_rate: float
    x: float
    y: float
    yaw: float
    stamp: float


# No road vehicle goes faster or turns quicker: odometry beyond these is a broken sensor, not a fast car.
MAX_ODOMETRY_SPEED = 120.0  # m/s
MAX_ODOMETRY_YAW_RATE = 10.0  # rad/s


def odometry_to_state(msg: Odometry) -> EgoState:
    p, t = msg.pose.pose.position, msg.twist.twist
    values = [p.x, p.y, t.linear.x, t.angular.z]
    if not all(math.isfinite(v) for v in values):
        raise BadMessage("non_finite", f"odometry position/twist {values}")
    if abs(t.linear.x) > MAX_ODOMETRY_SPEED or abs(t.angular.z) > MAX_ODOMETRY_YAW_RATE:
        raise BadMessage("implausible", f"odometry speed {t.linear.x:g} m/s, yaw rate {t.angular.z:g} rad/s "
                                        f"(at most {MAX_ODOMETRY_SPEED:g} m/s, {MAX_ODOMETRY_YAW_RATE:g} rad/s)")
    return EgoState(
        speed=float(t.linear.x), yaw_rate=float(t.angular.z), x=float(p.x), y=float(p.y),
        yaw=quaternion_to_yaw(msg.pose.pose.orientation), stamp=stamp_to_seconds(msg.header.stamp),
    )


def state_to_odometry(state: EgoState, frame_id: str = "map", child_frame_id: str = "base_link") -> Odometry:
    msg = Odometry()
    msg.header.stamp = seconds_to_stamp(state.stamp)
    msg.header.frame_id = frame_id
    msg.child_frame_id = child_frame_id
    msg.pose.pose.position = Point(x=float(state.x), y=float(state.y), z=0.0)
    msg.pose.pose.orientation = yaw_to_quaternion(state.yaw)
    msg.twist.twist.linear.x = float(state.speed)
    msg.twist.twist.angular.z = float(state.yaw_rate)
    return msg


# --- trajectory -------------------------------------------------------------------------------------


def trajectory_to_path(traj: Trajectory, stamp: float, frame_id: str = "base_link") -> Path:
    """One PoseStamped per waypoint; waypoint k is stamped ``stamp + (k + 1) * dt`` (its planned time)."""
    msg = Path()
    msg.header.stamp = seconds_to_stamp(stamp)
    msg.header.frame_id = frame_id
    for (x, y, heading), t in zip(traj.poses, traj.spec.times, strict=True):
        pose = PoseStamped()
        pose.header.stamp = seconds_to_stamp(stamp + t)
        pose.header.frame_id = frame_id
        pose.pose.position = Point(x=float(x), y=float(y), z=0.0)
        pose.pose.orientation = yaw_to_quaternion(float(heading))
        msg.poses.append(pose)
    return msg


def path_to_trajectory(
    msg: Path, spec: TrajectorySpec | None = None, frame_id: str | None = None
) -> tuple[Trajectory, float]:
    """Decode a Path made by :func:`trajectory_to_path`; returns the trajectory and its stamp (s).

    Without ``spec`` the waypoint interval is read from the pose stamps.
    """
    if frame_id is not None and msg.header.frame_id != frame_id:
        raise BadMessage("wrong_frame", f"path in frame {msg.header.frame_id!r}, expected {frame_id!r}")
    n = len(msg.poses)
    if n == 0:
        raise BadMessage("empty_path", "path has no poses")
    stamp = stamp_to_seconds(msg.header.stamp)
    if spec is None:
        dt = stamp_to_seconds(msg.poses[0].header.stamp) - stamp
        if not dt > 1e-6:
            raise BadMessage("bad_stamps", "first waypoint must be stamped after the path header")
        spec = TrajectorySpec(n, round(dt, 6))
    elif n != spec.num_waypoints:
        raise BadMessage("wrong_size", f"{n} waypoints, expected {spec.num_waypoints}")
    poses = np.array([
        [p.pose.position.x, p.pose.position.y, quaternion_to_yaw(p.pose.orientation)] for p in msg.poses
    ])
    if not np.all(np.isfinite(poses)):
        raise BadMessage("non_finite", "path has non-finite waypoints")
    return Trajectory(poses, spec), stamp


def trajectory_to_markers(
    traj: Trajectory, stamp: float, frame_id: str = "base_link", fallback: bool = False
) -> MarkerArray:
    """RViz view: a line strip through the origin and the waypoints, plus the waypoints as spheres.

    Green for a planned trajectory, red for the safety fallback.
    """
    color = ColorRGBA(r=1.0, g=0.1, b=0.1, a=1.0) if fallback else ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)
    points = [Point(x=0.0, y=0.0, z=0.0)] + [Point(x=float(x), y=float(y), z=0.0) for x, y in traj.xy]
    out = MarkerArray()
    for marker_id, (kind, width, pts) in enumerate(((Marker.LINE_STRIP, 0.15, points), (Marker.SPHERE_LIST, 0.4, points[1:]))):
        m = Marker(ns="trajectory", id=marker_id, type=kind, action=Marker.ADD, color=color, points=pts)
        m.header.stamp = seconds_to_stamp(stamp)
        m.header.frame_id = frame_id
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = width
        m.lifetime.sec = 1
        out.markers.append(m)
    return out


# --- decision ---------------------------------------------------------------------------------------


def decision_to_string(result: DecisionResult, vocab: DecisionVocabulary, stamp: float) -> String:
    """``DecisionResult.to_json_dict`` plus ``stamp`` (seconds, the image time the decision was made for)."""
    return String(data=json.dumps({**result.to_json_dict(vocab), "stamp": stamp}))


def decision_from_string(msg: String, vocab: DecisionVocabulary) -> tuple[DecisionResult, float]:
    """Decode :func:`decision_to_string`; words must belong to ``vocab``. Returns the result and stamp."""
    try:
        d = json.loads(msg.data)
        speed, path, stamp = d["speed"], d["path"], float(d["stamp"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadMessage("bad_json", f"decision is not a decision JSON object ({e})") from None
    if not math.isfinite(stamp):
        raise BadMessage("non_finite", "decision stamp is not finite")
    try:
        vocab.candidate_index(speed, path)
    except AnswerError as e:
        raise BadMessage(e.reason, str(e)) from None
    probs = np.zeros((len(vocab.speeds), len(vocab.paths)))
    for key, p in d.get("probabilities", {}).items():
        s, _, pth = key.partition(", ")
        if s in vocab.speeds and pth in vocab.paths:
            probs[vocab.speeds.index(s), vocab.paths.index(pth)] = float(p)
    result = DecisionResult(
        decision=Decision(speed, path, str(d.get("reasoning", ""))), probs=probs,
        log_prob=float(d.get("log_prob", 0.0)), latency_ms=float(d.get("latency_ms", 0.0)),
        model_version=str(d.get("model_version", "")),
    )
    return result, stamp
