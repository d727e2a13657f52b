"""What the expert knows of the other road users, privileged: where they will be in the next seconds, who
leads on a path, whether the car behind on a target lane stays safe, and whether going into a junction
now would conflict with crossing traffic."""
from __future__ import annotations

import math

import numpy as np
from highway_env.vehicle.controller import ControlledVehicle

from .highway import DrivingSim
from .idm import DEPART_ACCEL, IDM_BRAKE, idm_accel
from .lane_path import LanePath
from .route import junction_length

CORRIDOR = 2.3  # m half-width in which another vehicle counts as being on our path
CUT_IN_S = 1.5  # s of look-ahead for vehicles about to enter our path
LANE_SWITCH_M = 6.0  # predicted cars blend from one lane into the next over this distance
SAFE_BRAKE = 2.0  # m/s^2 the new follower may be asked to brake at most
YIELD_HORIZON_S = 5.0  # s of predicted motion checked for conflicts before entering a junction
CONFLICT_DISTANCE, CONFLICT_SLACK_S = 3.5, 0.5  # m between car circles; s of timing slack


def _circles(xy: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(T, 2, 2): centres of the two circles covering a 5 m car, 1.25 m ahead of and behind its centre."""
    offset = 1.25 * np.column_stack([np.cos(heading), np.sin(heading)])
    return np.stack([xy + offset, xy - offset], axis=1)


def other_road_users(sim: DrivingSim):
    """Every vehicle but the ego, and the static objects."""
    ego = sim.vehicle
    return [v for v in sim.env.road.vehicles if v is not ego] + list(sim.env.road.objects)


def predict_positions(sim: DrivingSim, vehicle, times: np.ndarray) -> np.ndarray:
    """Positions along the vehicle's own lane then planned route at constant speed."""
    net = sim.env.road.network
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


def leader(sim: DrivingSim, path: LanePath) -> tuple[float | None, float, bool]:
    """Closest vehicle on our path corridor ahead, now or soon: (bumper gap, its speed along the path,
    whether it is cutting in). Cars not on the corridor now are also tried where they will be within
    ``CUT_IN_S`` (lane-followers along their route and towards their target lane, privileged; others
    at constant velocity). They count when they land ahead of or beside where we will be by then (a
    car entering a roundabout without yielding), or, when faster than us, up to a length further
    back (a car crossing our nose from behind towards a roundabout exit)."""
    ego = sim.vehicle
    others = other_road_users(sim)
    if not others:
        return None, 0.0, False
    net = sim.env.road.network
    times = np.linspace(0.25, CUT_IN_S, 6)
    owner, when, points = [], [], []
    for k, o in enumerate(others):
        owner.append(k), when.append(0.0), points.append(o.position)
        if isinstance(o, ControlledVehicle):
            future = [predict_positions(sim, o, times)]
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


def rear_safe(sim: DrivingSim, located: dict, target: int) -> bool:
    """The closest vehicle behind us on the target lane keeps a gap and brakes gently at most."""
    ego = sim.vehicle
    v = float(ego.speed)
    lane = sim.route.lanes(sim.env.road.network, located["edge"])[target]
    s_ego = lane.local_coordinates(ego.position)[0]
    for o in other_road_users(sim):
        s_o, lat_o = lane.local_coordinates(o.position)
        if abs(lat_o) > CORRIDOR or s_o > s_ego + ego.LENGTH:
            continue
        gap = s_ego - s_o - ego.LENGTH
        v_f = float(getattr(o, "speed", 0.0))
        if gap < 3.0 or idm_accel(v_f, max(v_f, 1.0), gap, v) < -SAFE_BRAKE:
            return False
    return True


def gives_way(sim: DrivingSim, other) -> bool:
    """At the intersection, a car with a lower-priority movement that can still stop comfortably
    before its own stop line will yield to us (highway-env's road regulation makes it)."""
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


def conflict(sim: DrivingSim, path: LanePath, to_line: float, v_go: float) -> bool:
    """Would going now bring us close to another vehicle inside the junction? Cars are two circles
    each; predictions are compared with a timing slack of ``CONFLICT_SLACK_S`` either way since
    nobody keeps a perfectly constant speed."""
    step = 0.25
    times = np.arange(step, YIELD_HORIZON_S + 1e-9, step)
    v = sim.vehicle.speed
    dist = np.cumsum(np.minimum(v + DEPART_ACCEL * times, max(v, v_go)) * step)
    in_zone = (dist >= to_line - 2.0) & (dist <= to_line + junction_length(sim.scenario, sim.route) + 2.0)
    if not in_zone.any():
        return False
    ego_xy, ego_h = path.at(dist[in_zone])
    ego_circles = _circles(ego_xy, ego_h)
    zone_idx = np.flatnonzero(in_zone)
    slack = int(round(CONFLICT_SLACK_S / step))
    approach_edges = sim.route.edges[:1 if sim.scenario == "intersection" else 2]
    for o in sim.env.road.vehicles:
        if o is sim.vehicle or tuple(o.lane_index[:2]) in approach_edges or gives_way(sim, o):
            continue
        if isinstance(o, ControlledVehicle):
            pos = predict_positions(sim, o, times)
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
