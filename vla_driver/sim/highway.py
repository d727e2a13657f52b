"""Embedded driving simulator: highway-env scenes driven by (speed, yaw-rate) commands, seen by a camera.

Frames. highway-env's world has y pointing to the *right* of a car heading along +x (lane ids grow to
the right; its renders are true top views with y down). Everything this module returns is in a
right-handed frame instead (x, -y, -heading), so ego-frame maths (x forward, y left, yaw positive to
the left) and ROS odometry hold without special cases.

Camera. ``observation()`` renders a top-down, ego-aligned view: the ego car sits at 30 % of the width,
half height, facing right; the image spans ``CAMERA_VIEW_M`` metres across. Only drawn when asked for.

Other cars never collide with each other, only with the ego (like highway-fast-v0 does), so a wreck
between two of them cannot block a junction for the rest of an episode.

Episode. The route is a list of road-network edges with a start and an end (progress in metres along
it). An episode ends on collision, on completing the route, after ``OFF_ROAD_END_S`` off the road,
when the car strays ``DEVIATION_M`` from every route lane, after ``BLOCKED_S`` without progress, or at
the duration limit. highway-env's own termination and rewards are switched off.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import EpisodeResult
from ..core.trajectory import wrap_angle
from ..core.types import Observation

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")  # "dummy" renders black frames in highway-env 1.12

log = logging.getLogger(__name__)

SCENARIOS = {
    "highway": "highway-fast-v0",
    "merge": "merge-v0",
    "roundabout": "roundabout-v0",
    "intersection": "intersection-v0",
}
DEFAULT_DURATION_S = {"highway": 30.0, "merge": 20.0, "roundabout": 30.0, "intersection": 25.0}
HIGHWAY_ROUTE_M = 500.0  # route length on the open highway (needs ~17 m/s on average in 30 s)
EXIT_RUN_OUT_M = 30.0  # route ends this far into the exit road of a junction / roundabout

MAX_ACCEL, MAX_DECEL = 4.0, 8.0  # m/s^2, limits of the simulated drive-by-wire
SPEED_TAU = 0.4  # s, time constant of the vehicle's own speed loop (speed command -> acceleration)
MAX_STEER = math.pi / 4  # rad, front wheel angle limit of highway-env's bicycle model
OFF_ROAD_END_S = 2.0
OFF_ROAD_MARGIN = 1.0  # m beyond a lane edge the car's centre may be (then the whole car is outside)
DEVIATION_M = 6.0
BLOCKED_S = 10.0  # no metre of progress for this long -> blocked
BLOCKED_PROGRESS_M = 1.0

CAMERA_VIEW_M = 85.0
CAMERA_EGO_COL = 0.3
EGO_COLOR = (50, 200, 0)

# highway-env's intersection scene rewrites IDMVehicle class attributes when it builds vehicles; set
# them explicitly before every reset / step so scenes in one process do not leak into each other.
_IDM_DEFAULT = {"DISTANCE_WANTED": 10.0, "COMFORT_ACC_MAX": 3.0, "COMFORT_ACC_MIN": -5.0}
_IDM_INTERSECTION = {"DISTANCE_WANTED": 7.0, "COMFORT_ACC_MAX": 6.0, "COMFORT_ACC_MIN": -3.0}
_ORDINALS = ("first", "second", "third", "fourth")
_TURNS = {1: "left", 2: "straight", 3: "right"}  # intersection destination o<k> seen from the south
_ROUNDABOUT_EXITS = ("ex", "nx", "wx")  # first, second, third exit node


def camera_layout(image_size) -> tuple[float, float, float]:
    """(ego column px, ego row px, pixels per metre) of the ego-aligned camera image."""
    h, w = int(image_size[0]), int(image_size[1])
    return CAMERA_EGO_COL * w, 0.5 * h, w / CAMERA_VIEW_M


def ego_to_pixel(xy_ego: np.ndarray, image_size) -> np.ndarray:
    """Ego-frame points (x forward, y left) -> (column, row) pixel coordinates in the camera image."""
    col, row, scale = camera_layout(image_size)
    xy = np.asarray(xy_ego, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([col + xy[:, 0] * scale, row - xy[:, 1] * scale])


@dataclass
class StepInfo:
    done: bool
    crashed: bool
    off_road: bool
    time: float
    progress_m: float = 0.0
    termination: str = ""


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


@dataclass
class _EpisodeState:
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


@dataclass
class SimSnapshot:
    """Deep copy of the scene and the episode bookkeeping; restore it as often as needed."""

    env: object
    state: _EpisodeState
    route: Route
    seed: int


_ENV_CLASSES: dict = {}


def _quiet_env_class(env_id: str):
    """The scene's class with rewards, info and termination switched off (we keep our own books)."""
    if env_id not in _ENV_CLASSES:
        import gymnasium as gym
        import highway_env  # noqa: F401  (registers the environments)
        from gymnasium.envs.registration import load_env_creator

        base = load_env_creator(gym.spec(env_id).entry_point)
        _ENV_CLASSES[env_id] = type(f"Quiet{base.__name__}", (base,), {
            "_info": lambda self, obs, action=None: {},
            "_reward": lambda self, action: 0.0,
            "_is_terminated": lambda self: False,
            "_is_truncated": lambda self: False,
        })
    return _ENV_CLASSES[env_id]


def _fmt_m(d: float) -> str:
    return f"{max(5, int(round(d / 5.0)) * 5)}m"


class _RoadLayer:
    """highway-env's ``RoadGraphics.display`` (lane markings), pixel for pixel, without recomputing the
    geometry every frame. Its stripes sit at fixed multiples of ``STRIPE_SPACING`` along each lane, so
    the same world points come back frame after frame: ``lane.position`` is memoised per (s, lateral),
    the world -> pixel conversion is vectorised with the same truncation, and only the line drawing
    stays per frame. That was ~80 % of a 37 ms frame in the roundabout (every rollout and evaluation
    step renders one); the test compares the pixels with highway-env's own drawing."""

    def __init__(self):
        self._network = None
        self._points: dict = {}

    def _position(self, lane, s: float, lat: float) -> tuple[float, float]:
        key = (id(lane), s, lat)
        point = self._points.get(key)
        if point is None:
            point = self._points[key] = tuple(lane.position(s, lat))
        return point

    def display(self, road, surface) -> None:
        import pygame
        from highway_env.road.graphics import LaneGraphics as G
        from highway_env.road.lane import LineType

        if road.network is not self._network:  # a reset builds a new network: forget the old lanes
            self._network, self._points = road.network, {}
        surface.fill(surface.GREY)
        count = int(2 * (surface.get_height() + surface.get_width()) / (G.STRIPE_SPACING * surface.scaling))
        width = max(surface.pix(G.STRIPE_WIDTH), 1)
        segments = []
        for lane in road.network.lanes_list():
            s_origin, _ = lane.local_coordinates(surface.origin)
            s0 = (int(s_origin) // G.STRIPE_SPACING - count // 2) * G.STRIPE_SPACING
            for side in range(2):
                kind = lane.line_types[side]
                if kind == LineType.STRIPED or kind == LineType.CONTINUOUS:
                    starts = s0 + np.arange(count) * G.STRIPE_SPACING
                    ends = starts + (G.STRIPE_LENGTH if kind == LineType.STRIPED else G.STRIPE_SPACING)
                elif kind == LineType.CONTINUOUS_LINE:
                    starts = np.array([s0])
                    ends = np.array([s0 + count * G.STRIPE_SPACING + G.STRIPE_LENGTH])
                else:
                    continue
                a, b = np.clip(starts, 0, lane.length), np.clip(ends, 0, lane.length)
                for k in np.flatnonzero(np.abs(a - b) > 0.5 * G.STRIPE_LENGTH).tolist():
                    lat = (side - 0.5) * lane.width_at(starts[k])
                    segments.append(self._position(lane, a[k], lat) + self._position(lane, b[k], lat))
        if not segments:
            return
        world = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
        # WorldSurface.pos2pix: int((x - origin) * scaling), truncated toward zero like int()
        pixels = ((world - np.asarray(surface.origin, dtype=np.float64)) * surface.scaling).astype(np.int64)
        for x0, y0, x1, y1 in pixels.reshape(-1, 4).tolist():
            pygame.draw.line(surface, surface.WHITE, (x0, y0), (x1, y1), width)


class _Camera:
    """Ego-aligned top view: draw a square around the ego, rotate it so the ego faces right, crop."""

    def __init__(self, image_size):
        import pygame
        from highway_env.road.graphics import WorldSurface

        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.col, self.row, scale = camera_layout(image_size)
        half = math.ceil(math.hypot(max(self.col, self.width - self.col), max(self.row, self.height - self.row))) + 2
        size = (2 * half, 2 * half)
        self.surface = WorldSurface(size, 0, pygame.Surface(size))
        self.surface.scaling = scale
        self.surface.centering_position = [0.5, 0.5]
        self.road_layer = _RoadLayer()

    def render(self, road, ego) -> np.ndarray:
        import pygame
        from highway_env.road.graphics import RoadGraphics

        self.surface.move_display_window_to(ego.position)
        self.road_layer.display(road, self.surface)
        RoadGraphics.display_road_objects(road, self.surface, offscreen=True)
        RoadGraphics.display_traffic(road, self.surface, offscreen=True)
        rotated = pygame.transform.rotate(self.surface, math.degrees(ego.heading))
        left = int(round(rotated.get_width() / 2 - self.col))
        top = int(round(rotated.get_height() / 2 - self.row))
        pixels = pygame.surfarray.array3d(rotated.subsurface((left, top, self.width, self.height)))
        return np.ascontiguousarray(pixels.transpose(1, 0, 2), dtype=np.uint8)


class DrivingSim:
    """One highway-env scene stepped at ``control_hz`` by (speed command, yaw-rate command)."""

    def __init__(self, scenario: str, seed: int = 0, image_size=(128, 256), duration_s: float | None = None,
                 control_hz: float = 10.0):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {sorted(SCENARIOS)}")
        if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) < 16:
            raise ValueError(f"image_size must be (H, W) with both >= 16, got {image_size}")
        if not (1 <= control_hz <= 100 and float(control_hz).is_integer()):
            raise ValueError(f"control_hz must be a whole number of Hz in 1..100, got {control_hz}")
        self.scenario = scenario
        self.seed = int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.control_hz = float(control_hz)
        self.dt = 1.0 / self.control_hz
        self.duration_s = float(duration_s) if duration_s else DEFAULT_DURATION_S[scenario]
        self._camera = None
        env_class = _quiet_env_class(SCENARIOS[scenario])
        self._set_idm_parameters()
        self._env = env_class(config=self._config(), render_mode="rgb_array")
        self.route: Route | None = None
        self._state = _EpisodeState()
        self.reset(self.seed)

    # ------------------------------------------------------------------ setup
    def _config(self) -> dict:
        cfg = {
            "action": {"type": "ContinuousAction", "acceleration_range": (-MAX_DECEL, MAX_ACCEL),
                       "steering_range": (-MAX_STEER, MAX_STEER), "longitudinal": True, "lateral": True},
            "observation": {"type": "AttributesObservation", "attributes": ["time"]},
            "simulation_frequency": int(self.control_hz),
            "policy_frequency": int(self.control_hz),
            "duration": 1e9,
            "offroad_terminal": False,
        }
        if self.scenario == "intersection":
            cfg["spawn_probability"] = 0.6 / self.control_hz  # the scene's default rate is per 1 Hz step
        return cfg

    def _set_idm_parameters(self) -> None:
        from highway_env.vehicle.behavior import IDMVehicle

        params = _IDM_INTERSECTION if self.scenario == "intersection" else _IDM_DEFAULT
        for name, value in params.items():
            setattr(IDMVehicle, name, value)

    def _only_ego_collides(self) -> None:
        """Other cars pass through each other (as in highway-fast-v0): their wrecks would otherwise block
        roundabout exits and junctions for the rest of the episode, which no driver could fix."""
        ego = self.vehicle
        for v in self._env.road.vehicles:
            if v is not ego:
                v.check_collisions = False

    @property
    def env(self):
        """The underlying highway-env scene (privileged access for the expert and tests)."""
        return self._env

    @property
    def vehicle(self):
        return self._env.vehicle

    @property
    def time(self) -> float:
        return self._state.time

    @property
    def done(self) -> bool:
        return self._state.done

    @property
    def progress(self) -> float:
        return self._state.progress

    def reset(self, seed: int | None = None) -> Observation:
        if seed is not None:
            self.seed = int(seed)
        variant = int(np.random.default_rng([self.seed, 7]).integers(1, 4))  # route choice, 1..3
        if self.scenario == "intersection":
            self._env.configure({"destination": f"o{variant}"})
        self._set_idm_parameters()
        self._env.reset(seed=self.seed)
        self._only_ego_collides()
        self.vehicle.color = EGO_COLOR
        self.route = self._build_route(variant)
        located = self.route.locate(self._env.road.network, self.vehicle.position)
        self.route.start = located["progress"]
        if self.scenario == "highway":
            self.route.end = self.route.start + HIGHWAY_ROUTE_M
        self._state = _EpisodeState(progress=self.route.start, checkpoint_progress=self.route.start,
                                    speeds=[float(self.vehicle.speed)])
        return self.observation()

    def _build_route(self, variant: int) -> Route:
        net = self._env.road.network
        if self.scenario == "highway":
            edges, turn, exit_index = [("0", "1")], "", 0
        elif self.scenario == "merge":
            edges, turn, exit_index = [("a", "b"), ("b", "c"), ("c", "d")], "", 0
        elif self.scenario == "intersection":
            edges = [("o0", "ir0"), ("ir0", f"il{variant}"), (f"il{variant}", f"o{variant}")]
            turn, exit_index = _TURNS[variant], 0
        else:
            ring = ["se", "ex", "ee", "nx", "ne", "wx"]
            exit_node = _ROUNDABOUT_EXITS[variant - 1]
            stop = ring.index(exit_node)
            edges = [("ser", "ses"), ("ses", "se")] + list(zip(ring[:stop], ring[1:stop + 1], strict=True))
            edges += [(exit_node, exit_node + "s"), (exit_node + "s", exit_node + "r")]
            turn, exit_index = "", variant
        lengths = np.array([net.graph[a][b][0].length for a, b in edges], dtype=np.float64)
        route = Route(edges, lengths, 0.0, float(lengths.sum()), turn, exit_index)
        if self.scenario == "merge":
            route.end = 370.0  # where highway-env's merge scene ends
        elif self.scenario in ("intersection", "roundabout"):
            route.end = float(route.offsets[-1] if self.scenario == "roundabout" else route.offsets[2])
            route.end += EXIT_RUN_OUT_M
        return route

    # ------------------------------------------------------------------ sensing
    def ego_pose(self) -> tuple[float, float, float, float]:
        """(x, y, yaw, speed) in the right-handed world frame (odometry)."""
        v = self.vehicle
        return float(v.position[0]), float(-v.position[1]), float(wrap_angle(-v.heading)), float(v.speed)

    def navigation(self) -> str:
        """Route instruction as a driver would hear it, distances rounded to 5 m."""
        r, p = self.route, self._state.progress
        remaining = f"Follow the road for {_fmt_m(r.end - p)}"
        if self.scenario == "merge":
            ramp_start, ramp_end = r.offsets[1], r.offsets[2]
            if p < ramp_start:
                return f"Ramp merges from the right in {_fmt_m(ramp_start - p)}, then follow the road for " \
                       f"{_fmt_m(r.end - p)}"
            if p < ramp_end:
                return f"Ramp merging from the right, follow the road for {_fmt_m(r.end - p)}"
            return remaining
        if self.scenario == "intersection":
            junction, exit_road = r.offsets[1], r.offsets[2]
            if p < junction:
                if r.turn == "straight":
                    return f"Go straight through the intersection in {_fmt_m(junction - p)}"
                return f"Turn {r.turn} at the intersection in {_fmt_m(junction - p)}"
            if p < exit_road:
                return "Go straight across the intersection" if r.turn == "straight" else f"Turn {r.turn} now"
            return remaining
        if self.scenario == "roundabout":
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

    def render(self) -> np.ndarray:
        if self._camera is None:
            self._camera = _Camera(self.image_size)
        return self._camera.render(self._env.road, self.vehicle)

    def observation(self, render: bool = True) -> Observation:
        """Camera image + ego state; ``render=False`` gives a black image (for policies that ignore it)."""
        image = self.render() if render else np.zeros((*self.image_size, 3), dtype=np.uint8)
        return Observation(image=image, speed=float(self.vehicle.speed), navigation=self.navigation(),
                           accel=self._state.accel, yaw_rate=self._state.yaw_rate, stamp=self._state.time)

    def time_headway(self) -> float:
        """Seconds until the ego reaches where the car ahead in its lane is now (bumper gap / ego speed);
        inf with no car ahead or below 0.5 m/s. Only cars heading within 45 degrees of the ego's lane
        count: a car crossing a junction is not one to follow. Privileged: from the scene, not the camera."""
        ego, road = self.vehicle, self._env.road
        if ego.speed < 0.5 or not ego.lane_index:
            return math.inf
        lane = road.network.get_lane(ego.lane_index)
        s_ego = lane.local_coordinates(ego.position)[0]
        gap = math.inf
        for other in road.vehicles:
            if other is ego:
                continue
            s, lat = lane.local_coordinates(other.position)
            if s <= s_ego or not lane.on_lane(other.position, s, lat):
                continue
            if math.cos(other.heading - lane.heading_at(s)) < math.cos(math.pi / 4):
                continue
            gap = min(gap, s - s_ego - (ego.LENGTH + getattr(other, "LENGTH", ego.LENGTH)) / 2)
        return max(gap, 0.0) / ego.speed

    # ------------------------------------------------------------------ acting
    def _action(self, speed_cmd: float, yaw_rate_cmd: float) -> np.ndarray:
        v = float(self.vehicle.speed)
        accel = float(np.clip((speed_cmd - v) / SPEED_TAU, -MAX_DECEL, MAX_ACCEL))
        accel = max(accel, -v / self.dt)  # brake to a standstill, never into reverse
        v_mid = max(v + 0.5 * accel * self.dt, 0.5)
        # highway-env bicycle model: heading rate = v sin(beta) / (L / 2), beta = atan(tan(delta) / 2);
        # its heading grows clockwise (mirrored frame), hence the minus sign.
        heading_rate = -yaw_rate_cmd
        max_beta = math.atan(0.5 * math.tan(MAX_STEER))
        sin_beta = float(np.clip(heading_rate * (self.vehicle.LENGTH / 2) / v_mid, -math.sin(max_beta),
                                 math.sin(max_beta)))
        steering = math.atan(2.0 * math.tan(math.asin(sin_beta)))
        return np.array([2 * (accel + MAX_DECEL) / (MAX_ACCEL + MAX_DECEL) - 1, steering / MAX_STEER])

    def step(self, speed_cmd: float, yaw_rate_cmd: float) -> StepInfo:
        """Advance one control period under the command; returns what happened."""
        st = self._state
        if st.done:
            return StepInfo(True, st.collided, st.off_road_now, st.time, st.progress, st.termination)
        if not (math.isfinite(speed_cmd) and math.isfinite(yaw_rate_cmd)):
            log.warning("non-finite command (%r, %r); braking", speed_cmd, yaw_rate_cmd)
            speed_cmd, yaw_rate_cmd = 0.0, 0.0
        ego = self.vehicle
        prev_pos, prev_speed, prev_heading = ego.position.copy(), float(ego.speed), float(ego.heading)
        action = self._action(max(float(speed_cmd), 0.0), float(yaw_rate_cmd))
        self._set_idm_parameters()
        self._env.step(action)
        self._only_ego_collides()
        ego = self.vehicle
        ego.speed = max(float(ego.speed), 0.0)

        st.time += self.dt
        st.accel = (float(ego.speed) - prev_speed) / self.dt
        st.yaw_rate = float(-wrap_angle(ego.heading - prev_heading)) / self.dt
        st.distance += float(np.linalg.norm(ego.position - prev_pos))
        st.speeds.append(float(ego.speed))
        located = self.route.locate(self._env.road.network, ego.position, st.progress)
        if located["distance"] < DEVIATION_M and located["progress"] - st.progress < 5.0 + ego.speed * self.dt:
            st.progress = max(st.progress, located["progress"])
        self._update_termination(ego, located["distance"])
        return StepInfo(st.done, st.collided, st.off_road_now, st.time, st.progress, st.termination)

    def _on_road(self, ego) -> bool:
        """Centre within ``OFF_ROAD_MARGIN`` of some lane of the network. highway-env's own check only
        knows the closest lane and flags the short unlaned gaps where junction lanes meet."""
        if ego.on_road:
            return True
        return any(lane.on_lane(ego.position, margin=OFF_ROAD_MARGIN) for lane in self._env.road.network.lanes_list())

    def _count(self, infraction: str) -> None:
        self._state.infractions[infraction] = self._state.infractions.get(infraction, 0) + 1

    def _end(self, termination: str) -> None:
        self._state.done, self._state.termination = True, termination

    def _update_termination(self, ego, route_distance: float) -> None:
        st = self._state
        if ego.crashed:
            st.collided = True
            static = any(np.linalg.norm(o.position - ego.position) < ego.diagonal for o in self._env.road.objects)
            self._count("collision_static" if static else "collision")
            return self._end("collision")
        off = not self._on_road(ego)
        if off and not st.off_road_now:
            self._count("off_road")
            st.ever_off_road = True
        st.off_road_now = off
        st.off_road_time = st.off_road_time + self.dt if off else 0.0
        if st.progress >= self.route.end - 1e-6:
            return self._end("completed")
        if st.off_road_time >= OFF_ROAD_END_S:
            return self._end("off_road")
        if route_distance > DEVIATION_M:
            self._count("route_deviation")
            return self._end("route_deviation")
        if st.progress - st.checkpoint_progress >= BLOCKED_PROGRESS_M:
            st.checkpoint_progress, st.checkpoint_time = st.progress, st.time
        elif st.time - st.checkpoint_time >= BLOCKED_S:
            self._count("blocked")
            return self._end("blocked")
        if st.time >= self.duration_s - 1e-9:
            return self._end("timeout")
        return None

    # ------------------------------------------------------------------ bookkeeping
    def result(self) -> EpisodeResult:
        st, r = self._state, self.route
        span = max(r.end - r.start, 1e-6)
        speeds = np.asarray(st.speeds, dtype=np.float64)
        jerk = np.diff(speeds, n=2) / self.dt**2 if speeds.size >= 3 else np.zeros(1)
        return EpisodeResult(
            scenario=self.scenario, seed=self.seed,
            route_completion=float(np.clip((st.progress - r.start) / span, 0.0, 1.0)),
            infractions=dict(st.infractions), distance_m=st.distance, duration_s=st.time,
            mean_jerk=float(np.mean(np.abs(jerk))), collided=st.collided, off_road=st.ever_off_road,
            termination=st.termination or ("running" if not st.done else ""),
            mean_speed=st.distance / st.time if st.time > 0 else 0.0,
        )

    def snapshot(self) -> SimSnapshot:
        return SimSnapshot(copy.deepcopy(self._env), copy.deepcopy(self._state), copy.deepcopy(self.route),
                           self.seed)

    def restore(self, snapshot: SimSnapshot) -> None:
        self._env = copy.deepcopy(snapshot.env)
        self._state = copy.deepcopy(snapshot.state)
        self.route = copy.deepcopy(snapshot.route)
        self.seed = snapshot.seed

    def close(self) -> None:
        self._env.close()
        self._camera = None
