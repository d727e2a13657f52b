"""Privileged expert driver for the embedded simulator.

It reads the ground truth (other vehicles and their intentions, lane geometry, the route) and drives
like a calm human: IDM gap keeping with a curvature-limited desired speed, MOBIL-style lane changes
only when the lane ahead is clearly slower, yielding at the stop line of intersections and
roundabouts when a conflict is predicted. Decisions are (speed, path) meta-actions refreshed at the
decision rate and held for at least ``HOLD_S`` unless the new one is more cautious, so that a policy
imitating it from camera + navigation + speed sees consistent labels.

Trajectories are 6 x 0.5 s waypoints along the route lanes' centrelines (highway-env lane geometry),
with a timed cosine lateral profile for lane changes, in the ego frame (x forward, y left).
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

DESIRED_SPEED = {"highway": 25.0, "merge": 25.0, "roundabout": 10.0, "intersection": 9.0}
LATERAL_ACCEL = 3.0  # m/s^2 allowed in curves
CURVE_BRAKE = 1.5  # m/s^2 used to slow down ahead of a curve
IDM_ACCEL, IDM_BRAKE, IDM_GAP, IDM_HEADWAY = 2.0, 3.0, 4.0, 1.2
DEPART_ACCEL = 3.0  # m/s^2 assumed (and used) when pulling away across a junction
CORRIDOR = 2.3  # m half-width in which another vehicle counts as being on our path
CUT_IN_S = 1.5  # s of look-ahead for vehicles about to enter our path
LANE_SWITCH_M = 6.0  # predicted cars blend from one lane into the next over this distance
LANE_CHANGE_S = 3.5  # s, duration of the cosine lateral profile
LANE_CHANGE_COOLDOWN_S = 3.0
LANE_CHANGE_GAIN = 0.6  # m/s^2 of acceleration gain that justifies a lane change
SAFE_BRAKE = 2.0  # m/s^2 the new follower may be asked to brake at most
HOLD_S = 1.0  # a decision stays at least this long unless the new one is more cautious
YIELD_HORIZON_S = 5.0  # s of predicted motion checked for conflicts before entering a junction
CONFLICT_DISTANCE, CONFLICT_SLACK_S = 3.5, 0.5  # m between car circles; s of timing slack
YIELD_CLEAR_CHECKS = 2  # conflict-free decisions (1 s at 2 Hz) before leaving a yield
APPROACH_M = 40.0  # start checking for conflicts this far before a junction's stop line
PATH_STEP = 1.0
PATH_SMOOTH = 2  # samples each side of the moving average over the path
_CAUTION = {"accelerate": 0, "keep": 1, "decelerate": 2, "decelerate_hard": 3, "stop": 4}
_ACCEL_RANGE = {"accelerate": (0.5, DEPART_ACCEL), "keep": (-0.3, 0.3), "decelerate": (-3.5, -0.6),
                "decelerate_hard": (-6.0, -3.0)}


def idm_accel(v: float, v0: float, gap: float | None = None, v_lead: float = 0.0, s0: float = IDM_GAP,
              a_max: float = IDM_ACCEL) -> float:
    """Intelligent Driver Model acceleration; ``gap`` is bumper-to-bumper (None = free road)."""
    free = 1.0 - (v / max(v0, 0.1)) ** 4
    if gap is None:
        return a_max * free
    s_star = s0 + max(0.0, v * IDM_HEADWAY + v * (v - v_lead) / (2 * math.sqrt(a_max * IDM_BRAKE)))
    return float(max(a_max * (free - (s_star / max(gap, 0.1)) ** 2), -9.0))


def _circles(xy: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(T, 2, 2): centres of the two circles covering a 5 m car, 1.25 m ahead of and behind its centre."""
    offset = 1.25 * np.column_stack([np.cos(heading), np.sin(heading)])
    return np.stack([xy + offset, xy - offset], axis=1)


@dataclass
class _Path:
    """Reference path sampled along lanes, in highway-env's world frame; ``s`` = Euclidean arc length."""

    s: np.ndarray
    xy: np.ndarray
    heading: np.ndarray

    def at(self, d):
        d = np.clip(np.asarray(d, dtype=np.float64), 0.0, self.s[-1])
        xy = np.column_stack([np.interp(d, self.s, self.xy[:, 0]), np.interp(d, self.s, self.xy[:, 1])])
        return xy, np.interp(d, self.s, self.heading)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arc position, signed lateral offset, path heading) of each point's nearest path sample."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        d2 = ((pts[:, None, :] - self.xy[None, :, :]) ** 2).sum(-1)
        idx = d2.argmin(axis=1)
        h = self.heading[idx]
        rel = pts - self.xy[idx]
        along = rel[:, 0] * np.cos(h) + rel[:, 1] * np.sin(h)
        lateral = -rel[:, 0] * np.sin(h) + rel[:, 1] * np.cos(h)
        return self.s[idx] + along, lateral, h

    def curvature(self, window: float = 4.0) -> np.ndarray:
        k = max(1, int(round(window / PATH_STEP)))
        h = np.pad(self.heading, k, mode="edge")
        s = np.pad(self.s, k, mode="reflect", reflect_type="odd")
        return (h[2 * k:] - h[:-2 * k]) / np.maximum(s[2 * k:] - s[:-2 * k], 1e-3)


@dataclass
class _Situation:
    path: _Path
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

    # ------------------------------------------------------------------ geometry
    def _lane_sequence_path(self, edge: int, lane_id: int, s0: float, length: float) -> _Path:
        sim = self.sim
        net, route = sim.env.road.network, sim.route
        xs, hs = [], []
        lane = route.lanes(net, edge)[lane_id]
        s, remaining = s0, length
        while remaining > 0:
            end = lane.length if edge < len(route.edges) - 1 else s + remaining
            ss = np.arange(s, min(end, s + remaining), PATH_STEP)
            xs.extend(lane.position(float(v), 0.0) for v in ss)
            hs.extend(lane.heading_at(float(v)) for v in ss)
            remaining -= max(end - s, PATH_STEP)
            if edge >= len(route.edges) - 1 or remaining <= 0:
                break
            last_end = lane.position(lane.length, 0.0)
            edge += 1
            candidates = [(float(np.linalg.norm(c.position(0.0, 0.0) - last_end)), i)
                          for i, c in enumerate(route.lanes(net, edge)) if not c.forbidden]
            lane = route.lanes(net, edge)[min(candidates)[1]]
            s = 0.0
        if not xs:
            xs, hs = [lane.position(s, 0.0)], [lane.heading_at(s)]
        xy = np.asarray(xs, dtype=np.float64).reshape(-1, 2)
        # Lanes of highway-env junctions do not quite meet: smooth over a few metres so the path has no
        # kinks, then take headings from the smoothed polyline.
        if len(xy) > 2 * PATH_SMOOTH + 1:
            kernel = np.ones(2 * PATH_SMOOTH + 1) / (2 * PATH_SMOOTH + 1)
            padded = np.pad(xy, ((PATH_SMOOTH, PATH_SMOOTH), (0, 0)), mode="edge")
            xy = np.column_stack([np.convolve(padded[:, 0], kernel, "valid"), np.convolve(padded[:, 1], kernel, "valid")])
        steps = np.diff(xy, axis=0)
        keep = np.concatenate([[True], np.linalg.norm(steps, axis=1) > 1e-6])
        xy = xy[keep]
        if len(xy) < 2:
            xy = np.vstack([xy, xy[-1:] + PATH_STEP * np.array([[math.cos(hs[-1]), math.sin(hs[-1])]])])
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        grad = np.gradient(xy, axis=0)
        heading = np.unwrap(np.arctan2(grad[:, 1], grad[:, 0]))
        return _Path(arc, xy, heading)

    def _path_on(self, located: dict, lane_id: int, length: float) -> tuple[_Path, float]:
        """Path along lane ``lane_id`` of the ego's current edge, starting at the ego's foot point on it,
        and the ego's signed lateral offset from it (highway-env frame, + = right)."""
        net = self.sim.env.road.network
        position = self.sim.vehicle.position
        lane = self.sim.route.lanes(net, located["edge"])[lane_id]
        s = float(lane.local_coordinates(position)[0])
        path = self._lane_sequence_path(located["edge"], lane_id, min(max(s, 0.0), lane.length) - 5.0,
                                        length + 5.0)
        along, lat, h = path.project(position[None, :])
        foot = path.at(along)[0][0]
        keep = path.s > along[0] + 0.1
        xy = np.vstack([foot, path.xy[keep]])
        heading = np.concatenate([[np.interp(along[0], path.s, path.heading)], path.heading[keep]])
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        return _Path(arc, xy, heading), float(lat[0])

    def _lane_ok(self, edge: int, lane_id: int) -> bool:
        lanes = self.sim.route.lanes(self.sim.env.road.network, edge)
        return 0 <= lane_id < len(lanes) and not lanes[lane_id].forbidden

    # ------------------------------------------------------------------ perception
    def _others(self):
        ego = self.sim.vehicle
        return [v for v in self.sim.env.road.vehicles if v is not ego] + list(self.sim.env.road.objects)

    def _leader(self, path: _Path) -> tuple[float | None, float, bool]:
        """Closest vehicle on our path corridor ahead, now or soon: (bumper gap, its speed along the path,
        whether it is cutting in). Cars not on the corridor now are also tried where they will be within
        ``CUT_IN_S`` (lane-followers along their route and towards their target lane, privileged; others
        at constant velocity). They count when they land ahead of or beside where we will be by then (a
        car entering a roundabout without yielding), or, when faster than us, up to a length further
        back (a car crossing our nose from behind towards a roundabout exit)."""
        from highway_env.vehicle.controller import ControlledVehicle

        ego = self.sim.vehicle
        others = self._others()
        if not others:
            return None, 0.0, False
        net = self.sim.env.road.network
        times = np.linspace(0.25, CUT_IN_S, 6)
        owner, when, points = [], [], []
        for k, o in enumerate(others):
            owner.append(k), when.append(0.0), points.append(o.position)
            if isinstance(o, ControlledVehicle):
                future = [self._predict(o, times)]
                target = getattr(o, "target_lane_index", None)
                if target is not None and target != o.lane_index:
                    lane = net.get_lane(target)
                    s_t = lane.local_coordinates(o.position)[0]
                    aim = np.array([lane.position(s_t + o.speed * t, 0.0) for t in times])
                    future.append(o.position + (times / CUT_IN_S)[:, None] * (aim - o.position))
                for track in future:
                    owner.extend([k] * len(times)), when.extend(times), points.extend(track)
            elif getattr(o, "speed", 0.0) > 0.5:
                owner.extend([k] * len(times)), when.extend(times)
                points.extend(o.position + np.outer(times, o.velocity))
        owner, when = np.asarray(owner), np.asarray(when)
        s_along, lat, h = path.project(np.asarray(points))
        on_path = (np.abs(lat) <= CORRIDOR) & (s_along < path.s[-1] - 0.5)
        in_corridor_now = {int(k) for k in owner[on_path & (when == 0.0)]}
        gap = s_along - ego.speed * when - ego.LENGTH  # against where we will be by then
        best = (None, 0.0, False)
        for i in np.flatnonzero(on_path):
            k, o = int(owner[i]), others[int(owner[i])]
            speed = float(getattr(o, "speed", 0.0)) * math.cos(float(o.heading - h[i]))
            if when[i] == 0.0:
                if s_along[i] <= 0.0:
                    continue
            elif k in in_corridor_now or gap[i] < (-2.0 if speed > ego.speed else -1.0) * ego.LENGTH:
                continue
            if best[0] is None or gap[i] < best[0]:
                best = (float(max(gap[i], 0.0)), max(speed, 0.0), bool(when[i] > 0.0))
        return best

    def _desired_speed(self, path: _Path, v: float) -> tuple[float, bool]:
        v_max = DESIRED_SPEED[self.sim.scenario]
        curve = np.sqrt(LATERAL_ACCEL / np.maximum(np.abs(path.curvature()), 1e-4))
        reachable = np.sqrt(curve**2 + 2 * CURVE_BRAKE * path.s)  # slow down in time for what comes
        v_curve = float(reachable.min())
        return min(v_max, v_curve), v_curve < v_max

    def _predict(self, vehicle, times: np.ndarray) -> np.ndarray:
        """Positions along the vehicle's own lane then planned route at constant speed."""
        net = self.sim.env.road.network
        lanes = [vehicle.lane]
        previous = vehicle.lane_index
        for step in vehicle.route or []:
            if tuple(step[:2]) == tuple(previous[:2]):
                continue
            if step[0] != previous[1]:
                break
            options = net.graph[step[0]][step[1]]
            lane_id = step[2] if step[2] is not None and step[2] < len(options) else min(previous[2], len(options) - 1)
            previous = (step[0], step[1], lane_id)
            lanes.append(options[lane_id])
        s = vehicle.lane.local_coordinates(vehicle.position)[0] + vehicle.speed * np.asarray(times)
        out = np.empty((len(s), 2))
        for k, longitudinal in enumerate(s):
            i = 0
            while i < len(lanes) - 1 and longitudinal > lanes[i].length:
                longitudinal -= lanes[i].length
                i += 1
            out[k] = lanes[i].position(float(longitudinal), 0.0)
            if i > 0 and longitudinal < LANE_SWITCH_M:  # highway-env lanes do not meet: cross over smoothly
                w = longitudinal / LANE_SWITCH_M
                out[k] = w * out[k] + (1 - w) * lanes[i - 1].position(lanes[i - 1].length + longitudinal, 0.0)
        return out

    def _stop_line(self) -> float:
        """Progress of the stop line: the junction entry (a little before the roundabout's ring, where
        the entry lane still has road under it)."""
        route = self.sim.route
        return route.offsets[1] if self.sim.scenario == "intersection" else route.offsets[2] - 2.0

    def _junction_length(self) -> float:
        """Metres from the stop line over which crossing traffic matters (the intersection connector,
        the ring up to just past its first exit, where cars leave across our lane)."""
        route = self.sim.route
        return float(route.lengths[1] if self.sim.scenario == "intersection" else route.lengths[2] + 5.0)

    def _gives_way(self, other) -> bool:
        """At the intersection, a car with a lower-priority movement that can still stop comfortably
        before its own stop line will yield to us (highway-env's road regulation makes it)."""
        sim = self.sim
        if sim.scenario != "intersection" or not other.lane_index[0].startswith("o"):
            return False
        net = sim.env.road.network
        ours = sim.route.lanes(net, 1)[0].priority
        movement = next((step for step in (other.route or []) if step[0].startswith("ir")), None)
        if movement is None:
            return False
        theirs = net.graph[movement[0]][movement[1]][0].priority
        to_their_line = other.lane.length - other.lane.local_coordinates(other.position)[0]
        return theirs < ours and to_their_line > other.speed**2 / (2 * IDM_BRAKE) + 5.0

    def _conflict(self, path: _Path, to_line: float, v_go: float) -> bool:
        """Would going now bring us close to another vehicle inside the junction? Cars are two circles
        each; predictions are compared with a timing slack of ``CONFLICT_SLACK_S`` either way since
        nobody keeps a perfectly constant speed."""
        from highway_env.vehicle.controller import ControlledVehicle

        sim = self.sim
        step = 0.25
        times = np.arange(step, YIELD_HORIZON_S + 1e-9, step)
        v = sim.vehicle.speed
        dist = np.cumsum(np.minimum(v + DEPART_ACCEL * times, max(v, v_go)) * step)
        in_zone = (dist >= to_line - 2.0) & (dist <= to_line + self._junction_length() + 2.0)
        if not in_zone.any():
            return False
        ego_xy, ego_h = path.at(dist[in_zone])
        ego_circles = _circles(ego_xy, ego_h)
        zone_idx = np.flatnonzero(in_zone)
        slack = int(round(CONFLICT_SLACK_S / step))
        approach_edges = sim.route.edges[:1 if sim.scenario == "intersection" else 2]
        for o in sim.env.road.vehicles:
            if o is sim.vehicle or tuple(o.lane_index[:2]) in approach_edges or self._gives_way(o):
                continue
            if isinstance(o, ControlledVehicle):
                pos = self._predict(o, times)
                moved = np.gradient(pos, axis=0)
                heading = np.where(np.linalg.norm(moved, axis=1) > 1e-3, np.arctan2(moved[:, 1], moved[:, 0]),
                                   o.heading)
            else:
                pos, heading = o.position + np.outer(times, o.velocity), np.full(len(times), o.heading)
            other = _circles(pos, heading)
            for shift in range(-slack, slack + 1):
                idx = np.clip(zone_idx + shift, 0, len(times) - 1)
                gaps = np.linalg.norm(ego_circles[:, :, None, :] - other[idx][:, None, :, :], axis=-1)
                if gaps.min() < CONFLICT_DISTANCE:
                    return True
        return False

    def _situation(self, for_decision: bool = False) -> _Situation:
        sim = self.sim
        ego = sim.vehicle
        v = float(ego.speed)
        located = sim.route.locate(sim.env.road.network, ego.position, sim.progress)
        length = max(60.0, 6.0 * v + 40.0)
        lane_id = self._lc[1] if self._lc is not None else located["lane_id"]
        if not self._lane_ok(located["edge"], lane_id):
            lane_id = located["lane_id"]
        path, lat = self._path_on(located, lane_id, length)
        v_des, curve_limited = self._desired_speed(path, v)
        gap, v_lead, cut_in = self._leader(path)
        if self._lc is not None and lane_id != located["lane_id"]:  # mid lane change: mind both lanes
            cur_path, _ = self._path_on(located, located["lane_id"], length)
            g2, v2, c2 = self._leader(cur_path)
            if g2 is not None and (gap is None or idm_accel(v, v_des, g2, v2) < idm_accel(v, v_des, gap, v_lead)):
                gap, v_lead, cut_in = g2, v2, c2
        to_line = self._stop_line() - located["progress"] if sim.scenario in ("intersection", "roundabout") \
            else math.inf
        crossing = math.isfinite(to_line) and -self._junction_length() < to_line < 10.0  # pull away briskly
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
                conflict = 0.5 < to_line < APPROACH_M and can_stop and self._conflict(path, to_line, v_des)
                self._clear_checks = 0 if conflict else self._clear_checks + 1
                self._yielding = conflict or (self._yielding and self._clear_checks < YIELD_CLEAR_CHECKS
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
            if not self._lane_ok(located["edge"], target):
                continue
            path, _ = self._path_on(located, target, len(sit.path.s) * PATH_STEP)
            gap, v_lead, _ = self._leader(path)
            if gap is not None and gap < 5.0 + 0.3 * sit.speed:
                continue
            if not self._rear_safe(located, target):
                continue
            gain = idm_accel(sit.speed, sit.v_desired, gap, v_lead) - sit.a_idm
            if gain > best_gain:
                best, best_gain = direction, gain
        return best

    def _rear_safe(self, located: dict, target: int) -> bool:
        """The closest vehicle behind us on the target lane keeps a gap and brakes gently at most."""
        sim = self.sim
        ego = sim.vehicle
        v = float(ego.speed)
        lane = sim.route.lanes(sim.env.road.network, located["edge"])[target]
        s_ego = lane.local_coordinates(ego.position)[0]
        for o in self._others():
            s_o, lat_o = lane.local_coordinates(o.position)
            if abs(lat_o) > CORRIDOR or s_o > s_ego + ego.LENGTH:
                continue
            gap = s_ego - s_o - ego.LENGTH
            v_f = float(getattr(o, "speed", 0.0))
            if gap < 3.0 or idm_accel(v_f, max(v_f, 1.0), gap, v) < -SAFE_BRAKE:
                return False
        return True

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
                if self._lane_ok(located["edge"], target):
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
