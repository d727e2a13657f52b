"""The books of one simulator episode: time, progress, infractions and the rules that end it (collision,
route completed, off road too long, off route, blocked, out of time), and its result for the metrics.

An episode ends on collision, on completing the route, after ``OFF_ROAD_END_S`` off the road, when the
car strays ``DEVIATION_M`` from every route lane, after ``BLOCKED_S`` without progress, or at the
duration limit. highway-env's own termination and rewards are switched off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import EpisodeResult
from .route import Route

OFF_ROAD_END_S = 2.0
OFF_ROAD_MARGIN = 1.0  # m beyond a lane edge the car's centre may be (then the whole car is outside)
DEVIATION_M = 6.0
BLOCKED_S = 10.0  # no metre of progress for this long -> blocked
BLOCKED_PROGRESS_M = 1.0


@dataclass
class StepInfo:
    done: bool
    crashed: bool
    off_road: bool
    time: float
    progress_m: float = 0.0
    termination: str = ""


@dataclass
class EpisodeState:
    time: float = 0.0
    progress: float = 0.0
    distance: float = 0.0
    speeds: list = field(default_factory=list)
    infractions: dict = field(default_factory=dict)
    collided: bool = False
    off_road_now: bool = False
    off_road_time: float = 0.0
    ever_off_road: bool = False
    checkpoint_progress: float = 0.0
    checkpoint_time: float = 0.0
    done: bool = False
    termination: str = ""
    accel: float = 0.0
    yaw_rate: float = 0.0

    def count(self, infraction: str) -> None:
        self.infractions[infraction] = self.infractions.get(infraction, 0) + 1

    def end(self, termination: str) -> None:
        self.done, self.termination = True, termination


def on_road(ego, network) -> bool:
    """Centre within ``OFF_ROAD_MARGIN`` of some lane of the network. highway-env's own check only
    knows the closest lane and flags the short unlaned gaps where junction lanes meet."""
    if ego.on_road:
        return True
    return any(lane.on_lane(ego.position, margin=OFF_ROAD_MARGIN) for lane in network.lanes_list())


def update_termination(st: EpisodeState, ego, road, route_end: float, route_distance: float, dt: float,
                       duration_s: float) -> None:
    """Count this step's infractions in ``st`` and end the episode if one of the ending rules holds."""
    if ego.crashed:
        st.collided = True
        static = any(np.linalg.norm(o.position - ego.position) < ego.diagonal for o in road.objects)
        st.count("collision_static" if static else "collision")
        return st.end("collision")
    off = not on_road(ego, road.network)
    if off and not st.off_road_now:
        st.count("off_road")
        st.ever_off_road = True
    st.off_road_now = off
    st.off_road_time = st.off_road_time + dt if off else 0.0
    if st.progress >= route_end - 1e-6:
        return st.end("completed")
    if st.off_road_time >= OFF_ROAD_END_S:
        return st.end("off_road")
    if route_distance > DEVIATION_M:
        st.count("route_deviation")
        return st.end("route_deviation")
    if st.progress - st.checkpoint_progress >= BLOCKED_PROGRESS_M:
        st.checkpoint_progress, st.checkpoint_time = st.progress, st.time
    elif st.time - st.checkpoint_time >= BLOCKED_S:
        st.count("blocked")
        return st.end("blocked")
    if st.time >= duration_s - 1e-9:
        return st.end("timeout")
    return None


def episode_result(scenario: str, seed: int, st: EpisodeState, route: Route, dt: float) -> EpisodeResult:
    """The episode so far as metrics see it (route completion, infractions, comfort, ending)."""
    span = max(route.end - route.start, 1e-6)
    speeds = np.asarray(st.speeds, dtype=np.float64)
    jerk = np.diff(speeds, n=2) / dt**2 if speeds.size >= 3 else np.zeros(1)
    return EpisodeResult(
        scenario=scenario, seed=seed,
        route_completion=float(np.clip((st.progress - route.start) / span, 0.0, 1.0)),
        infractions=dict(st.infractions), distance_m=st.distance, duration_s=st.time,
        mean_jerk=float(np.mean(np.abs(jerk))), collided=st.collided, off_road=st.ever_off_road,
        termination=st.termination or ("running" if not st.done else ""),
        mean_speed=st.distance / st.time if st.time > 0 else 0.0,
    )
