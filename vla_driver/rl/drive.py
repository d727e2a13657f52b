"""Simulated cars driven in lockstep by one planner, for train-rl's main drive and its branches: the plans of
all due cars are one batched forward pass, and each car's own controller follows its plan."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..core.control import PurePursuitPID, reanchor
from ..core.trajectory import Trajectory, TrajectorySpec, stop_trajectory
from ..core.types import Observation
from ..core.vocabulary import Decision
from ..runtime.results import select_mode
from ..sim.highway import DrivingSim

log = logging.getLogger(__name__)


@dataclass
class Car:
    """One simulator with its controller and the plan it is following."""

    sim: DrivingSim
    controller: PurePursuitPID
    traj: Trajectory | None = None
    plan_pose: tuple | None = None
    plan_time: float = 0.0
    infos: list = field(default_factory=list)  # StepInfo per step
    poses: list = field(default_factory=list)  # (x, y, yaw, speed) before the first and after each step
    track_headway: bool = False  # measure the time headway after each step (only the headway term needs it)
    min_headway_s: float = math.inf  # closest time headway to the car ahead (s) so far


def plan_batch(planner, observations: list[Observation], decisions: list[Decision]) -> list[Trajectory]:
    """One trajectory per (observation, decision): a single batched forward pass where the planner has
    one (``trajectory_modes``), else ``plan`` per row. As in ``closed_loop.run_episode``, a planner error
    or a non-finite plan becomes a straight stop."""
    try:
        if hasattr(planner, "trajectory_modes"):
            modes = planner.trajectory_modes(observations, decisions)
            trajs = [select_mode(m, d, planner, o.speed) for m, d, o in zip(modes, decisions, observations, strict=True)]
        else:
            trajs = [planner.plan(o, d) for o, d in zip(observations, decisions, strict=True)]
    except Exception as e:  # a broken plan must not end the rollout
        log.warning("planner failed (%s); stopping", e)
        trajs = [None] * len(observations)
    spec = planner.spec if isinstance(getattr(planner, "spec", None), TrajectorySpec) else TrajectorySpec()
    return [t if isinstance(t, Trajectory) and np.all(np.isfinite(t.poses)) else stop_trajectory(o.speed, spec)
            for t, o in zip(trajs, observations, strict=True)]


def drive(cars: list[Car], decisions: list[Decision], planner, steps: int, plan_every: int) -> None:
    """Advance every car ``steps`` control periods holding its decision; plans (batched) every ``plan_every``.
    The camera is rendered for planning unless the planner says it needs no image (``needs_image``)."""
    render = getattr(planner, "needs_image", True)
    for car in cars:
        if not car.poses:
            car.poses.append(car.sim.ego_pose())
    for k in range(steps):
        live = [i for i, car in enumerate(cars) if not car.sim.done]
        if not live:
            return
        due = [i for i in live if k % plan_every == 0 or cars[i].traj is None]
        if due:
            obs = [cars[i].sim.observation(render=render) for i in due]
            for i, traj in zip(due, plan_batch(planner, obs, [decisions[i] for i in due]), strict=True):
                cars[i].traj, cars[i].plan_pose, cars[i].plan_time = traj, cars[i].sim.ego_pose(), cars[i].sim.time
        for i in live:
            car = cars[i]
            pose = car.sim.ego_pose()
            current = reanchor(car.traj, car.plan_pose, pose)
            speed_cmd, yaw_rate = car.controller.command(current, pose[3], car.sim.dt,
                                                         elapsed=car.sim.time - car.plan_time)
            car.infos.append(car.sim.step(speed_cmd, yaw_rate))
            car.poses.append(car.sim.ego_pose())
            if car.track_headway:
                car.min_headway_s = min(car.min_headway_s, car.sim.time_headway())
