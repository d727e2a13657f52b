"""Meta-action labels derived from what the ego vehicle actually did, plus templated reasoning text.

Used to label logged or simulated driving (the expert's decision can be checked against them) and by
rewards that compare a decision with the motion that followed. Thresholds are physical, so any
vocabulary works through ``find_speed`` / ``find_path``.
"""
from __future__ import annotations

import numpy as np

from .trajectory import TrajectorySpec, wrap_angle
from .vocabulary import PATH_SEMANTICS, SPEED_SEMANTICS, Decision, DecisionVocabulary

STOP_SPEED = 0.5  # m/s: below this at the end of the horizon the vehicle is stopping / stopped
SPEED_CHANGE = 1.0  # m/s over the horizon separating keep from accelerate / decelerate
HARD_DECEL = 2.5  # m/s^2 mean deceleration that counts as decelerating hard
TURN_HEADING = 0.5  # rad of heading change over the horizon that makes a turn
LANE_CHANGE_OFFSET = 2.0  # m of lateral offset (beyond what the road curvature explains) for a lane change


def speed_semantic(future: np.ndarray, speed0: float, spec: TrajectorySpec) -> str:
    """'stop' | 'accelerate' | 'decelerate' | 'decelerate_hard' | 'keep' from the future speed profile."""
    pts = np.vstack([[0.0, 0.0], np.asarray(future, dtype=np.float64)[:, :2]])
    v = np.linalg.norm(np.diff(pts, axis=0), axis=1) / spec.dt
    v_end = float(v[-1])
    change = v_end - float(speed0)
    if v_end < STOP_SPEED:
        return "stop"
    if change > SPEED_CHANGE:
        return "accelerate"
    if change < -SPEED_CHANGE:
        return "decelerate_hard" if -change / spec.horizon > HARD_DECEL else "decelerate"
    return "keep"


def path_semantic(future: np.ndarray) -> str:
    """'left_turn' | 'right_turn' | 'left_change' | 'right_change' | 'straight' from the final pose."""
    x, y, heading = (float(c) for c in np.asarray(future, dtype=np.float64)[-1])
    heading = float(wrap_angle(heading))
    if abs(heading) > TURN_HEADING:
        return "left_turn" if heading > 0 else "right_turn"
    # On an arc the lateral offset is about x * heading / 2; what is left over is a lane change.
    residual = y - x * heading / 2.0
    if abs(residual) >= LANE_CHANGE_OFFSET:
        return "left_change" if residual > 0 else "right_change"
    return "straight"


def label_from_future(future: np.ndarray, speed0: float, vocab: DecisionVocabulary,
                      spec: TrajectorySpec = TrajectorySpec()) -> Decision:
    """(speed, path) decision matching the actual future ego motion ``future`` (N, 3) in the ego frame."""
    future = np.asarray(future, dtype=np.float64)
    if future.shape != (spec.num_waypoints, 3) or not np.all(np.isfinite(future)):
        raise ValueError(f"future must be a finite ({spec.num_waypoints}, 3) array, got {future.shape}")
    speed = speed_semantic(future, speed0, spec)
    path = "straight" if speed == "stop" and float(np.linalg.norm(future[-1, :2])) < 1.0 else path_semantic(future)
    return Decision(vocab.find_speed(speed), vocab.find_path(path))


_SPEED_PHRASE = {
    "keep": "keep my speed", "accelerate": "speed up", "decelerate": "slow down",
    "decelerate_hard": "brake hard", "stop": "stop",
}
_PATH_PHRASE = {
    "straight": "stay in my lane", "left_turn": "turn left", "right_turn": "turn right",
    "left_change": "change to the left lane", "right_change": "change to the right lane",
}


def reasoning_text(decision: Decision, speed: float, navigation: str = "", cause: str = "") -> str:
    """One short templated sentence: situation, cause, then the chosen meta-action in words."""
    speed_sem = SPEED_SEMANTICS.get(decision.speed, "keep")
    path_sem = PATH_SEMANTICS.get(decision.path, "straight")
    parts = [f"I drive at {float(speed):.0f} m/s."]
    if navigation:
        parts.append(f"Route: {navigation.rstrip('.')}.")
    if cause:
        parts.append(cause[0].upper() + cause[1:].rstrip(".") + ".")
    parts.append(f"So I {_SPEED_PHRASE[speed_sem]} and {_PATH_PHRASE[path_sem]}.")
    return " ".join(parts)
