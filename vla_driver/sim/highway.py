"""Embedded driving simulator: highway-env scenes driven by (speed, yaw-rate) commands, seen by a camera.

Frames. highway-env's world has y pointing to the *right* of a car heading along +x (lane ids grow to
the right; its renders are true top views with y down). Everything this module returns is in a
right-handed frame instead (x, -y, -heading), so ego-frame maths (x forward, y left, yaw positive to
the left) and ROS odometry hold without special cases.

Camera. ``observation()`` renders the top-down, ego-aligned view of ``sim/topdown.py``, only when asked for.

Other cars never collide with each other, only with the ego (like highway-fast-v0 does), so a wreck
between two of them cannot block a junction for the rest of an episode.

Episode. The route (``sim/route.py``) is a list of road-network edges with a start and an end (progress
in metres along it); ``sim/episode.py`` keeps the books and ends the episode. highway-env's own
termination and rewards are switched off.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")  # before pygame loads, as in sim/topdown.py

import gymnasium as gym  # noqa: E402
import highway_env  # noqa: E402, F401  (registers the environments)
from gymnasium.envs.registration import load_env_creator  # noqa: E402
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402

from ..core.camera_rig import CameraRig  # noqa: E402
from ..core.frame_history import FrameHistory  # noqa: E402
from ..core.metrics import EpisodeResult  # noqa: E402
from ..core.trajectory import wrap_angle  # noqa: E402
from ..core.types import CAMERA_SIZE, Observation  # noqa: E402
from .camera_render import APPEARANCES, CameraRenderer  # noqa: E402
from .episode import DEVIATION_M, EpisodeState, StepInfo, episode_result, update_termination  # noqa: E402
from .route import HIGHWAY_ROUTE_M, Route, build_route, navigation_text  # noqa: E402
from .scenarios import DEFAULT_DURATION_S, SCENARIOS  # noqa: E402
from .topdown import TopDownCamera  # noqa: E402

log = logging.getLogger(__name__)

MAX_ACCEL, MAX_DECEL = 4.0, 8.0  # m/s^2, limits of the simulated drive-by-wire
SPEED_TAU = 0.4  # s, time constant of the vehicle's own speed loop (speed command -> acceleration)
MAX_STEER = math.pi / 4  # rad, front wheel angle limit of highway-env's bicycle model
EGO_COLOR = (50, 200, 0)

# highway-env's intersection scene rewrites IDMVehicle class attributes when it builds vehicles; set
# them explicitly before every reset / step so scenes in one process do not leak into each other.
_IDM_DEFAULT = {"DISTANCE_WANTED": 10.0, "COMFORT_ACC_MAX": 3.0, "COMFORT_ACC_MIN": -5.0}
_IDM_INTERSECTION = {"DISTANCE_WANTED": 7.0, "COMFORT_ACC_MAX": 6.0, "COMFORT_ACC_MIN": -3.0}


@dataclass
class SimSnapshot:
    """Deep copy of the scene and the episode bookkeeping; restore it as often as needed."""

    env: object
    state: EpisodeState
    route: Route
    seed: int
    history: FrameHistory | None = None


_ENV_CLASSES: dict = {}


def _quiet_env_class(env_id: str):
    """The scene's class with rewards, info and termination switched off (we keep our own books)."""
    if env_id not in _ENV_CLASSES:
        base = load_env_creator(gym.spec(env_id).entry_point)
        _ENV_CLASSES[env_id] = type(f"Quiet{base.__name__}", (base,), {
            "_info": lambda self, obs, action=None: {},
            "_reward": lambda self, action: 0.0,
            "_is_terminated": lambda self: False,
            "_is_truncated": lambda self: False,
        })
    return _ENV_CLASSES[env_id]


class DrivingSim:
    """One highway-env scene stepped at ``control_hz`` by (speed command, yaw-rate command)."""

    def __init__(self, scenario: str, seed: int = 0, image_size=CAMERA_SIZE, duration_s: float | None = None,
                 control_hz: float = 10.0, rig: CameraRig | None = None, appearance: str = "default",
                 history: int = 1):
        """``rig``: the car's cameras, rendered in 3D at the rig's model input size; without one the camera
        is the top-down debugging view at ``image_size``. ``appearance``: ``default``, ``random`` (colours,
        markings, light and a small camera height/pitch jitter drawn per episode from its seed: training data)
        or ``held_out`` (settings ``random`` never draws, per seed: what a model learned beyond its data). ``history``:
        frames per camera in each observation (``core.frame_history``; a rig's models only)."""
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
        if appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {tuple(APPEARANCES)}, got {appearance!r}")
        self.rig, self.appearance = rig, appearance
        if history > 1 and rig is None:
            raise ValueError("frame history needs a camera rig (the top-down models see one frame)")
        self._history = FrameHistory(history) if history > 1 else None
        self._renderer: CameraRenderer | None = None
        env_class = _quiet_env_class(SCENARIOS[scenario])
        self._set_idm_parameters()
        self._env = env_class(config=self._config(), render_mode="rgb_array")
        self.route: Route | None = None
        self._state = EpisodeState()
        self.reset(self.seed)

    # ------------------------------------------------------------------ setup
    @classmethod
    def for_policy(cls, policy, scenario: str, seed: int = 0, **kwargs) -> DrivingSim:
        """A simulator rendering what ``policy`` sees: its rig's cameras and frame history (the expert and
        the top-down models have neither)."""
        return cls(scenario, seed, rig=getattr(policy, "rig", None), history=getattr(policy, "history", 1), **kwargs)

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
        self.route = build_route(self.scenario, self._env.road.network, variant)
        located = self.route.locate(self._env.road.network, self.vehicle.position)
        self.route.start = located["progress"]
        if self.scenario == "highway":
            self.route.end = self.route.start + HIGHWAY_ROUTE_M
        self._state = EpisodeState(progress=self.route.start, checkpoint_progress=self.route.start,
                                    speeds=[float(self.vehicle.speed)])
        if self._history is not None:
            self._history.clear()
        if self.rig is not None:
            self.cameras().set_appearance(APPEARANCES[self.appearance](np.random.default_rng([self.seed, 11])))
        return self.observation()

    def remove_traffic(self) -> None:
        """Only the ego stays on the road until the next reset: a clear road for calibration drives."""
        self._env.road.vehicles = [self.vehicle]

    # ------------------------------------------------------------------ sensing
    def ego_pose(self) -> tuple[float, float, float, float]:
        """(x, y, yaw, speed) in the right-handed world frame (odometry)."""
        v = self.vehicle
        return float(v.position[0]), float(-v.position[1]), float(wrap_angle(-v.heading)), float(v.speed)

    def navigation(self) -> str:
        """Route instruction as a driver would hear it, distances rounded to 5 m."""
        return navigation_text(self.scenario, self.route, self._state.progress)

    def cameras(self) -> CameraRenderer:
        if self._renderer is None:
            self._renderer = CameraRenderer(self.rig)
        return self._renderer

    def render_topdown(self) -> np.ndarray:
        """The ego-aligned map view: a debugging picture, no car's camera."""
        if self._camera is None:
            self._camera = TopDownCamera(self.image_size)
        return self._camera.render(self._env.road, self.vehicle)

    def render(self) -> np.ndarray:
        """What the policy sees: (cameras, h, w, 3) at the rig's model size, or the top-down view."""
        if self.rig is None:
            return self.render_topdown()
        views = self.cameras().render_model_inputs(self._env.road, self.vehicle)
        return np.stack([views[name] for name in self.rig.names])

    def observation(self, render: bool = True) -> Observation:
        """Camera image(s) (with the frame history) + ego state; ``render=False`` gives black images (for
        policies that ignore them)."""
        if render:
            image = self.render()
            if self._history is not None:
                self._history.push(image, self.time)
                image = self._history.views()
        elif self.rig is None:
            image = np.zeros((*self.image_size, 3), dtype=np.uint8)
        else:
            image = self.rig.blank_views(self._history.frames if self._history is not None else 1)
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
        update_termination(st, ego, self._env.road, self.route.end, located["distance"], self.dt, self.duration_s)
        return StepInfo(st.done, st.collided, st.off_road_now, st.time, st.progress, st.termination)

    # ------------------------------------------------------------------ bookkeeping
    def result(self) -> EpisodeResult:
        return episode_result(self.scenario, self.seed, self._state, self.route, self.dt)

    def snapshot(self) -> SimSnapshot:
        return SimSnapshot(copy.deepcopy(self._env), copy.deepcopy(self._state), copy.deepcopy(self.route),
                           self.seed, self._history.copy() if self._history is not None else None)

    def restore(self, snapshot: SimSnapshot) -> None:
        self._env = copy.deepcopy(snapshot.env)
        self._state = copy.deepcopy(snapshot.state)
        self.route = copy.deepcopy(snapshot.route)
        self.seed = snapshot.seed
        if self._history is not None:
            self._history = snapshot.history.copy()

    def close(self) -> None:
        self._env.close()
        self._camera = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
