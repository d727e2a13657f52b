"""Privileged expert driver for the embedded simulator.

It reads the ground truth (other vehicles and their intentions, lane geometry, the route) and drives
like a calm human: IDM gap keeping with a curvature-limited desired speed, MOBIL-style lane changes
only when the lane ahead is clearly slower, yielding at the stop line of intersections and
roundabouts when a conflict is predicted. Decisions are (speed, path) meta-actions refreshed at the
decision rate and held for at least ``HOLD_S`` unless the new one is more cautious, so that a policy
imitating it from camera + navigation + speed sees consistent labels.

Trajectories are 6 x 0.5 s waypoints along the route lanes' centrelines (highway-env lane geometry,
``sim/lane_path.py``), with a timed cosine lateral profile for lane changes, in the ego frame (x forward,
y left). What it knows of the other cars comes from ``sim/traffic_prediction.py``, its gap keeping from
``sim/idm.py``; this module holds its decisions and plans.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..core.control import PurePursuitPID
from ..core.labels import reasoning_text
from ..core.trajectory import Trajectory, TrajectorySpec, world_to_ego, wrap_angle
from ..core.types import DecisionResult, Observation
from ..core.vocabulary import PATH_SEMANTICS, SPEED_SEMANTICS, Decision, DecisionVocabulary
from .highway import DrivingSim
from .idm import DEPART_ACCEL, IDM_ACCEL, IDM_BRAKE, idm_accel
from .lane_path import PATH_STEP, LanePath, lane_ok, path_from_ego
from .route import junction_length, stop_line
from .traffic_prediction import conflict, leader, rear_safe

DESIRED_SPEED = {"highway": 25.0, "merge": 25.0, "roundabout": 10.0, "intersection": 9.0}
LATERAL_ACCEL = 3.0  # m/s^2 allowed in curves
CURVE_BRAKE = 1.5  # m/s^2 used to slow down ahead of a curve
LANE_CHANGE_S = 3.5  # s, duration of the cosine lateral profile
LANE_CHANGE_COOLDOWN_S = 3.0
LANE_CHANGE_GAIN = 0.6  # m/s^2 of acceleration gain that justifies a lane change
HOLD_S = 1.0  # a decision stays at least this long unless the new one is more cautious
YIELD_CLEAR_CHECKS = 2  # conflict-free decisions (1 s at 2 Hz) before leaving a yield
APPROACH_M = 40.0  # start checking for conflicts this far before a junction's stop line
_CAUTION = {"accelerate": 0, "keep": 1, "decelerate": 2, "decelerate_hard": 3, "stop": 4}
_ACCEL_RANGE = {"accelerate": (0.5, DEPART_ACCEL), "keep": (-0.3, 0.3), "decelerate": (-3.5, -0.6),
                "decelerate_hard": (-6.0, -3.0)}


@dataclass
class _Situation:
    path: LanePath
    lat: float  # ego offset from the path start along the lane normal (highway frame, + = right)
    speed: float
    v_desired: float
    a_idm: float
    leader_gap: float | None = None
    leader_speed: float = 0.0
    stop_gap: float | None = None  # free distance to the stop line while yielding
    cause: str = "the road ahead is clear"


class ExpertPolicy:
    """Ground-truth expert implementing the DrivingPolicy protocol (``decide`` / ``plan``) and ``act``."""

    needs_image = False  # privileged: it never looks at the camera, so callers may skip rendering

    def __init__(self, sim: DrivingSim | None = None, vocab: DecisionVocabulary | None = None,
                 spec: TrajectorySpec = TrajectorySpec(), decision_hz: float = 2.0):
        self.vocab = vocab or DecisionVocabulary.preset("alphadrive")
        self.spec = spec
        self.decision_period = 1.0 / decision_hz
        self.model_version = "expert"
        self.sim = None
        if sim is not None:
            self.attach(sim)

    # ------------------------------------------------------------------ state
    def attach(self, sim: DrivingSim) -> None:
        """Bind to a simulator (privileged access) and forget the previous episode."""
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        self._speed_sem, self._path_sem = "keep", "straight"
        self._speed_since = -math.inf
        self._path_candidate = "straight"
        self._lc = None  # (edge, lane id, direction, start time, start lateral)
        self._lc_end_time = -math.inf
        self._yielding = False
        self._clear_checks = 0
        self._next_decision = -math.inf
        self._decision: Decision | None = None
        self._controller = PurePursuitPID()
        self.last_cause = ""

    def _require_sim(self) -> DrivingSim:
        if self.sim is None:
            raise RuntimeError("ExpertPolicy needs a simulator: ExpertPolicy(sim) or expert.attach(sim)")
        return self.sim

    # ------------------------------------------------------------------ situation
    def _desired_speed(self, path: LanePath, v: float) -> tuple[float, bool]:
        v_max = DESIRED_SPEED[self.sim.scenario]
        curve = np.sqrt(LATERAL_ACCEL / np.maximum(np.abs(path.curvature()), 1e-4))
        reachable = np.sqrt(curve**2 + 2 * CURVE_BRAKE * path.s)  # slow down in time for what comes
        v_curve = float(reachable.min())
        return min(v_max, v_curve), v_curve < v_max

    def _situation(self, for_decision: bool = False) -> _Situation:
        sim = self.sim
        ego = sim.vehicle
        v = float(ego.speed)
        located = sim.route.locate(sim.env.road.network, ego.position, sim.progress)
        length = max(60.0, 6.0 * v + 40.0)
        lane_id = self._lc[1] if self._lc is not None else located["lane_id"]
        if not lane_ok(sim, located["edge"], lane_id):
            lane_id = located["lane_id"]
        path, lat = path_from_ego(sim, located, lane_id, length)
        v_des, curve_limited = self._desired_speed(path, v)
        gap, v_lead, cut_in = leader(sim, path)
        if self._lc is not None and lane_id != located["lane_id"]:  # mid lane change: mind both lanes
            cur_path, _ = path_from_ego(sim, located, located["lane_id"], length)
            g2, v2, c2 = leader(sim, cur_path)
            if g2 is not None and (gap is None or idm_accel(v, v_des, g2, v2) < idm_accel(v, v_des, gap, v_lead)):
                gap, v_lead, cut_in = g2, v2, c2
        to_line = stop_line(sim.scenario, sim.route) - located["progress"] \
            if sim.scenario in ("intersection", "roundabout") else math.inf
        # pull away briskly
        crossing = math.isfinite(to_line) and -junction_length(sim.scenario, sim.route) < to_line < 10.0
        a = idm_accel(v, v_des, gap, v_lead, a_max=DEPART_ACCEL if crossing else IDM_ACCEL)
        sit = _Situation(path, lat, v, v_des, a, gap, v_lead)
        if gap is not None and a < 0.3:
            who = "a vehicle merging into my lane" if cut_in else "a slower vehicle"
            sit.cause = f"{who} is {max(gap, 0):.0f} m ahead"
        elif curve_limited and v_des < v + 1.0:
            sit.cause = "a curve is ahead"
        if math.isfinite(to_line):
            if for_decision:
                # Start yielding only while a comfortable stop before the line is still possible
                # (otherwise commit), stop yielding only after YIELD_CLEAR_CHECKS clear decisions.
                stop_room = to_line - ego.LENGTH / 2 - 0.5
                can_stop = self._yielding or v * v <= 2 * IDM_BRAKE * max(stop_room, 0.0)
                conflicting = 0.5 < to_line < APPROACH_M and can_stop and conflict(sim, path, to_line, v_des)
                self._clear_checks = 0 if conflicting else self._clear_checks + 1
                self._yielding = conflicting or (self._yielding and self._clear_checks < YIELD_CLEAR_CHECKS
                                              and to_line > 0.5)
            if self._yielding and to_line > 0.5:
                sit.stop_gap = max(to_line - ego.LENGTH / 2 - 0.5, 0.0)
                sit.a_idm = min(a, idm_accel(v, v_des, sit.stop_gap, 0.0, s0=0.5))
                sit.cause = ("traffic in the roundabout has priority" if sim.scenario == "roundabout"
                             else "crossing traffic has the right of way")
        return sit

    # ------------------------------------------------------------------ lane changes
    def _choose_lane_change(self, sit: _Situation) -> str | None:
        """MOBIL-like: change only for a clear acceleration gain and when the new follower stays safe."""
        sim = self.sim
        if sim.scenario not in ("highway", "merge") or sit.speed < 10.0:
            return None
        if sim.time - self._lc_end_time < LANE_CHANGE_COOLDOWN_S or sit.a_idm > 0.3:
            return None
        located = sim.route.locate(sim.env.road.network, sim.vehicle.position, sim.progress)
        best, best_gain = None, LANE_CHANGE_GAIN
        for direction, step in (("left_change", -1), ("right_change", +1)):
            target = located["lane_id"] + step
            if not lane_ok(sim, located["edge"], target):
                continue
            path, _ = path_from_ego(sim, located, target, len(sit.path.s) * PATH_STEP)
            gap, v_lead, _ = leader(sim, path)
            if gap is not None and gap < 5.0 + 0.3 * sit.speed:
                continue
            if not rear_safe(sim, located, target):
                continue
            gain = idm_accel(sit.speed, sit.v_desired, gap, v_lead) - sit.a_idm
            if gain > best_gain:
                best, best_gain = direction, gain
        return best

    # ------------------------------------------------------------------ decisions
    def _raw_speed_semantic(self, sit: _Situation) -> str:
        if sit.stop_gap is not None:
            return "stop"
        if sit.speed < 0.5 and sit.a_idm < 0.3:
            return "stop"
        if sit.a_idm >= 0.5 and sit.speed < sit.v_desired - 0.5:
            return "accelerate"
        if sit.a_idm <= -3.0:
            return "decelerate_hard"
        if sit.a_idm <= -0.7:
            return "decelerate"
        return "keep"

    def _geometric_path(self, sit: _Situation) -> str:
        """Turn if the route bends more than 0.5 rad over what we will drive in the horizon."""
        horizon_m = max(sit.speed * self.spec.horizon, 2.0)
        _, h = sit.path.at([0.0, horizon_m])
        turn = -(h[1] - h[0])  # highway-env headings grow clockwise
        if abs(turn) > 0.5:
            return "left_turn" if turn > 0 else "right_turn"
        return "straight"

    def _update_lane_change_state(self, sit: _Situation) -> None:
        if self._lc is None:
            return
        done = self.sim.time - self._lc[3] >= LANE_CHANGE_S and abs(sit.lat) < 0.8
        if done or self.sim.time - self._lc[3] > 3 * LANE_CHANGE_S:
            self._lc = None
            self._lc_end_time = self.sim.time

    def decide(self, obs: Observation | None = None, sample: bool = False, think: bool = False) -> DecisionResult:
        """The expert's (speed, path) meta-action; deterministic (``sample`` is ignored)."""
        t0 = time.perf_counter()
        sim = self._require_sim()
        now = sim.time
        sit = self._situation(for_decision=True)
        self._update_lane_change_state(sit)

        raw_speed = self._raw_speed_semantic(sit)
        if raw_speed != self._speed_sem and (now - self._speed_since >= HOLD_S - 1e-6
                                             or _CAUTION[raw_speed] > _CAUTION[self._speed_sem]):
            self._speed_sem, self._speed_since = raw_speed, now

        if self._lc is not None:
            path_sem = self._lc[2]
        else:
            change = self._choose_lane_change(sit) if self._speed_sem != "stop" else None
            if change is not None:
                path_sem = change
                sit.cause = f"the {change.split('_')[0]} lane is moving faster"
            else:
                geometric = self._geometric_path(sit)
                agreed = geometric == self._path_candidate
                self._path_candidate = geometric
                path_sem = geometric if agreed or self._path_sem in ("left_change", "right_change") \
                    else self._path_sem
        self._path_sem = path_sem

        speed_word = self.vocab.find_speed(self._speed_sem)
        path_word = self.vocab.find_path(self._path_sem)
        self.last_cause = sit.cause
        reasoning = ""
        if think:
            reasoning = reasoning_text(Decision(speed_word, path_word), sit.speed,
                                       obs.navigation if obs is not None else sim.navigation(), sit.cause)
        decision = Decision(speed_word, path_word, reasoning)
        self._decision = decision
        probs = np.full((len(self.vocab.speeds), len(self.vocab.paths)), 0.02 / (self.vocab.num_candidates - 1))
        i, j = self.vocab.speed_index(speed_word), self.vocab.path_index(path_word)
        probs[i, j] = 0.98
        return DecisionResult(decision, probs, math.log(0.98), (time.perf_counter() - t0) * 1e3, "expert",
                              {"cause": sit.cause})

    # ------------------------------------------------------------------ planning
    def _speed_profile(self, sit: _Situation, speed_sem: str) -> np.ndarray:
        """Distance travelled at each waypoint time for the meta-action, never less safe than IDM."""
        v = sit.speed
        fine_dt = 0.05
        t = np.arange(fine_dt, self.spec.horizon + 1e-9, fine_dt)
        if speed_sem == "stop":
            gap = sit.stop_gap
            if gap is None:  # no stop line: brake to stop within the horizon if that is physical
                a = min(-float(np.clip(v / self.spec.horizon, 3.0, 6.0)), sit.a_idm)
                speeds = np.maximum(v + a * t, 0.0)
            else:  # roll up to the stop line as IDM would behind a standing car there
                speeds, vel, travelled = np.empty_like(t), v, 0.0
                for k in range(len(t)):
                    accel = idm_accel(vel, sit.v_desired, gap - travelled, 0.0, s0=0.3)
                    vel = max(vel + accel * fine_dt, 0.0)
                    travelled += vel * fine_dt
                    speeds[k] = vel
            cap = gap if gap is not None else np.inf
        else:
            lo, hi = _ACCEL_RANGE[speed_sem]
            a = min(float(np.clip(sit.a_idm, lo, hi)), sit.a_idm)
            speeds = np.maximum(v + a * t, 0.0)
            if a > 0:
                speeds = np.minimum(speeds, max(v, sit.v_desired))
            cap = np.inf
        dist = np.minimum(np.cumsum(speeds) * fine_dt, cap)
        idx = np.round(self.spec.times / fine_dt).astype(int) - 1
        return dist[idx]

    def _lateral(self, sit: _Situation, d: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Offset from the path: a timed cosine during a lane change, plus an exponential pull of any
        tracking error back to it (decays over ``max(4, 0.5 v)`` metres, so re-planning converges)."""
        correction = np.exp(-np.maximum(d, 0.0) / max(4.0, 0.5 * sit.speed))
        if self._lc is None:
            return sit.lat * correction
        start, lat0 = self._lc[3], self._lc[4]

        def profile(tt):
            u = np.clip((tt - start) / LANE_CHANGE_S, 0.0, 1.0)
            return lat0 * 0.5 * (1 + np.cos(np.pi * u))

        now = self.sim.time
        return profile(now + t) + (sit.lat - profile(now)) * correction

    def plan(self, obs: Observation | None, decision: Decision) -> Trajectory:
        """Trajectory for ``decision`` along the route lanes (honours lane-change decisions)."""
        sim = self._require_sim()
        speed_sem = SPEED_SEMANTICS.get(decision.speed, "keep")
        path_sem = PATH_SEMANTICS.get(decision.path, "straight")
        located = sim.route.locate(sim.env.road.network, sim.vehicle.position, sim.progress)
        if path_sem in ("left_change", "right_change"):
            if self._lc is None:
                target = located["lane_id"] + (-1 if path_sem == "left_change" else 1)
                if lane_ok(sim, located["edge"], target):
                    lane = sim.route.lanes(sim.env.road.network, located["edge"])[target]
                    lat0 = float(lane.local_coordinates(sim.vehicle.position)[1])
                    self._lc = (located["edge"], target, path_sem, sim.time, lat0)
        elif self._lc is not None:
            self._lc = None
            self._lc_end_time = sim.time
        sit = self._situation()
        dist = self._speed_profile(sit, speed_sem)
        times = self.spec.times
        speed_at = np.gradient(np.concatenate([[0.0], dist]), self.spec.dt)[1:]

        def point(d, t):
            xy, h = sit.path.at(d)
            return xy + self._lateral(sit, d, t)[:, None] * np.column_stack([-np.sin(h), np.cos(h)]), h

        pts, h = point(dist, times)
        step = 0.05  # s: tangent from where the car is a moment later
        ahead, _ = point(dist + np.maximum(speed_at, 0.0) * step, times + step)
        tangent = ahead - pts
        moving = np.linalg.norm(tangent, axis=1) > 1e-3
        heading = np.where(moving, np.arctan2(tangent[:, 1], tangent[:, 0]), h)
        x, y, yaw, _ = sim.ego_pose()
        local = world_to_ego(np.column_stack([pts[:, 0], -pts[:, 1]]), (x, y), yaw)
        return Trajectory(np.column_stack([local, wrap_angle(-heading - yaw)]), self.spec)

    def act(self, obs: Observation | None = None) -> tuple[float, float]:
        """Decide (at the decision rate), plan and follow: the (speed, yaw-rate) command for this step."""
        sim = self._require_sim()
        if self._decision is None or sim.time >= self._next_decision - 1e-6:
            self.decide(obs)
            self._next_decision = sim.time + self.decision_period
        traj = self.plan(obs, self._decision)
        return self._controller.command(traj, sim.vehicle.speed, sim.dt)
