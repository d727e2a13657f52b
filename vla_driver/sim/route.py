"""The route an episode drives: consecutive road-network edges of a highway-env scene with a start and an
end, progress in metres along them, the instruction a driver would hear at each point of it, and where
its junction (stop line, crossing) lies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIGHWAY_ROUTE_M = 500.0  # route length on the open highway (needs ~17 m/s on average in 30 s)
EXIT_RUN_OUT_M = 30.0  # route ends this far into the exit road of a junction / roundabout
_ORDINALS = ("first", "second", "third", "fourth")
_TURNS = {1: "left", 2: "straight", 3: "right"}  # intersection destination o<k> seen from the south
_ROUNDABOUT_EXITS = ("ex", "nx", "wx")  # first, second, third exit node


@dataclass
class Route:
    """Consecutive road-network edges; progress is metres along them (lane 0 lengths as the yardstick)."""

    edges: list  # [(from_node, to_node), ...]
    lengths: np.ndarray  # nominal length of each edge
    start: float  # progress where the episode starts
    end: float  # progress where the route is complete
    turn: str = ""  # intersection: left | straight | right
    exit_index: int = 0  # roundabout: 1, 2 or 3

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(self.lengths)[:-1]])

    def offset_of_node(self, node: str) -> float:
        """Progress where the edge leaving ``node`` starts."""
        for (src, _), off in zip(self.edges, self.offsets, strict=True):
            if src == node:
                return float(off)
        raise KeyError(node)

    def lanes(self, network, edge_index: int) -> list:
        src, dst = self.edges[edge_index]
        return network.graph[src][dst]

    def locate(self, network, position, prev_progress: float | None = None) -> dict:
        """Nearest route lane to ``position``: edge index, lane id, s, lateral, progress, distance."""
        best, best_key = None, None
        for i, (src, dst) in enumerate(self.edges):
            for j, lane in enumerate(network.graph[src][dst]):
                s, lat = lane.local_coordinates(position)
                if s < -10.0 or s > lane.length + 10.0:
                    continue
                dist = abs(lat) + max(s - lane.length, 0.0) + max(-s, 0.0)
                progress = self.offsets[i] + float(np.clip(s, 0.0, lane.length)) * self.lengths[i] / lane.length
                jump = 0.0 if prev_progress is None else abs(progress - prev_progress)
                key = (round(dist / 0.5), jump)  # nearest lane first, then the most continuous one
                if best_key is None or key < best_key:
                    best_key = key
                    best = {"edge": i, "lane_id": j, "s": float(s), "lat": float(lat),
                            "progress": float(progress), "distance": float(dist)}
        if best is None:
            return {"edge": 0, "lane_id": 0, "s": 0.0, "lat": 0.0,
                    "progress": prev_progress or self.start, "distance": float("inf")}
        return best


def build_route(scenario: str, network, variant: int) -> Route:
    """The route through ``scenario``'s road ``network``; ``variant`` (1..3) picks the intersection's turn
    or the roundabout's exit. ``start`` is 0 and, on the open highway, ``end`` the whole road: the caller
    sets both once it knows where the ego starts."""
    if scenario == "highway":
        edges, turn, exit_index = [("0", "1")], "", 0
    elif scenario == "merge":
        edges, turn, exit_index = [("a", "b"), ("b", "c"), ("c", "d")], "", 0
    elif scenario == "intersection":
        edges = [("o0", "ir0"), ("ir0", f"il{variant}"), (f"il{variant}", f"o{variant}")]
        turn, exit_index = _TURNS[variant], 0
    else:
        ring = ["se", "ex", "ee", "nx", "ne", "wx"]
        exit_node = _ROUNDABOUT_EXITS[variant - 1]
        stop = ring.index(exit_node)
        edges = [("ser", "ses"), ("ses", "se")] + list(zip(ring[:stop], ring[1:stop + 1], strict=True))
        edges += [(exit_node, exit_node + "s"), (exit_node + "s", exit_node + "r")]
        turn, exit_index = "", variant
    lengths = np.array([network.graph[a][b][0].length for a, b in edges], dtype=np.float64)
    route = Route(edges, lengths, 0.0, float(lengths.sum()), turn, exit_index)
    if scenario == "merge":
        route.end = 370.0  # where highway-env's merge scene ends
    elif scenario in ("intersection", "roundabout"):
        route.end = float(route.offsets[-1] if scenario == "roundabout" else route.offsets[2])
        route.end += EXIT_RUN_OUT_M
    return route


def _fmt_m(d: float) -> str:
    return f"{max(5, int(round(d / 5.0)) * 5)}m"


def navigation_text(scenario: str, route: Route, progress: float) -> str:
    """Route instruction at ``progress`` as a driver would hear it, distances rounded to 5 m."""
    r, p = route, progress
    remaining = f"Follow the road for {_fmt_m(r.end - p)}"
    if scenario == "merge":
        ramp_start, ramp_end = r.offsets[1], r.offsets[2]
        if p < ramp_start:
            return f"Ramp merges from the right in {_fmt_m(ramp_start - p)}, then follow the road for " \
                   f"{_fmt_m(r.end - p)}"
        if p < ramp_end:
            return f"Ramp merging from the right, follow the road for {_fmt_m(r.end - p)}"
        return remaining
    if scenario == "intersection":
        junction, exit_road = r.offsets[1], r.offsets[2]
        if p < junction:
            if r.turn == "straight":
                return f"Go straight through the intersection in {_fmt_m(junction - p)}"
            return f"Turn {r.turn} at the intersection in {_fmt_m(junction - p)}"
        if p < exit_road:
            return "Go straight across the intersection" if r.turn == "straight" else f"Turn {r.turn} now"
        return remaining
    if scenario == "roundabout":
        entry, exit_start = r.offsets[2], r.offsets[-2]
        if p < entry:
            return f"Take the {_ORDINALS[r.exit_index - 1]} exit at the roundabout in {_fmt_m(entry - p)}"
        if p < exit_start:
            ahead = sum(1 for node in _ROUNDABOUT_EXITS[:r.exit_index]
                        if r.offset_of_node(node) > p)
            if ahead <= 1:
                return f"Take the next exit in {_fmt_m(exit_start - p)}"
            return f"Stay in the roundabout, take the {_ORDINALS[ahead - 1]} exit"
        return remaining
    return remaining


def stop_line(scenario: str, route: Route) -> float:
    """Progress of the stop line: the junction entry (a little before the roundabout's ring, where
    the entry lane still has road under it)."""
    return route.offsets[1] if scenario == "intersection" else route.offsets[2] - 2.0


def junction_length(scenario: str, route: Route) -> float:
    """Metres from the stop line over which crossing traffic matters (the intersection connector,
    the ring up to just past its first exit, where cars leave across our lane)."""
    return float(route.lengths[1] if scenario == "intersection" else route.lengths[2] + 5.0)
