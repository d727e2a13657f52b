"""Reference paths for the expert: lane centrelines of the route, sampled every metre, smoothed over the
gaps where highway-env's junction lanes do not quite meet, in highway-env's world frame (y to the right)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .highway import DrivingSim

PATH_STEP = 1.0
PATH_SMOOTH = 2  # samples each side of the moving average over the path


@dataclass
class LanePath:
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


def lane_sequence_path(sim: DrivingSim, edge: int, lane_id: int, s0: float, length: float) -> LanePath:
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
    return LanePath(arc, xy, heading)


def path_from_ego(sim: DrivingSim, located: dict, lane_id: int, length: float) -> tuple[LanePath, float]:
    """Path along lane ``lane_id`` of the ego's current edge, starting at the ego's foot point on it,
    and the ego's signed lateral offset from it (highway-env frame, + = right)."""
    net = sim.env.road.network
    position = sim.vehicle.position
    lane = sim.route.lanes(net, located["edge"])[lane_id]
    s = float(lane.local_coordinates(position)[0])
    path = lane_sequence_path(sim, located["edge"], lane_id, min(max(s, 0.0), lane.length) - 5.0,
                              length + 5.0)
    along, lat, h = path.project(position[None, :])
    foot = path.at(along)[0][0]
    keep = path.s > along[0] + 0.1
    xy = np.vstack([foot, path.xy[keep]])
    heading = np.concatenate([[np.interp(along[0], path.s, path.heading)], path.heading[keep]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return LanePath(arc, xy, heading), float(lat[0])


def lane_ok(sim: DrivingSim, edge: int, lane_id: int) -> bool:
    lanes = sim.route.lanes(sim.env.road.network, edge)
    return 0 <= lane_id < len(lanes) and not lanes[lane_id].forbidden
