"""Branching for train-rl: one scene snapshot restored into a simulator per candidate decision, each
decision held for a horizon (then optionally followed by the policy's own greedy decisions), and what
happened in each branch read from the simulator's ground truth."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.control import PurePursuitPID
from ..core.vocabulary import Decision, greedy_candidate
from .drive import Car, drive

OFF_ROUTE_ENDINGS = ("off_road", "route_deviation")


@dataclass
class BranchOutcome:
    """What happened in one branch, from the simulator's ground truth."""

    decision: Decision
    progress_m: float  # route metres gained
    collided: bool
    off_road: bool
    completed: bool
    speeds: np.ndarray  # m/s at every control step (first = at the snapshot)
    yaws: np.ndarray  # rad, same steps
    dt: float
    termination: str = ""
    min_headway_s: float = math.inf  # closest time headway to a car ahead in the ego's lane


def run_branches(planner, snapshot, controller: PurePursuitPID, decisions: list[Decision], sims: Sequence,
                 horizon_s: float = 3.0, plan_hz: float = 10.0, follow_s: float = 0.0,
                 decision_hz: float = 2.0, decider=None, track_headway: bool = False) -> list[BranchOutcome]:
    """Restore ``snapshot`` into one simulator per decision, hold each decision for ``horizon_s`` while
    ``planner`` plans at ``plan_hz`` and a copy of ``controller`` drives, then (``follow_s`` > 0) let the
    greedy decisions of ``decider`` (default: ``planner``; ``decision_table``, at ``decision_hz``) drive on;
    return the outcomes (``min_headway_s`` stays inf unless ``track_headway``)."""
    decider = decider or planner
    if len(sims) < len(decisions):
        raise ValueError(f"{len(decisions)} decisions but only {len(sims)} branch simulators")
    cars = []
    for sim in sims[:len(decisions)]:
        sim.restore(snapshot)
        cars.append(Car(sim, copy.deepcopy(controller), track_headway=track_headway))
    dt = cars[0].sim.dt if cars else 0.1
    start = [car.sim.progress for car in cars]
    plan_every = max(1, int(round(1.0 / (plan_hz * dt))))
    drive(cars, decisions, planner, int(round(horizon_s / dt)), plan_every)
    follow_steps, period = int(round(follow_s / dt)), max(1, int(round(1.0 / (decision_hz * dt))))
    current = list(decisions)
    while follow_steps > 0:
        live = [i for i, car in enumerate(cars) if not car.sim.done]
        if not live:
            break
        tables = decider.decision_table([cars[i].sim.observation(render=getattr(decider, "needs_image", True))
                                         for i in live])
        for i, table in zip(live, tables, strict=True):
            current[i] = Decision(*decider.vocab.candidate(greedy_candidate(np.exp(table.ravel()))))
        drive(cars, current, planner, min(period, follow_steps), plan_every)
        follow_steps -= period
    outcomes = []
    for car, decision, p0 in zip(cars, decisions, start, strict=True):
        ending = car.infos[-1].termination if car.infos else ""
        poses = np.asarray(car.poses, dtype=np.float64)
        outcomes.append(BranchOutcome(
            decision=decision, progress_m=float(car.sim.progress - p0),
            collided=any(i.crashed for i in car.infos),
            off_road=any(i.off_road for i in car.infos) or ending in OFF_ROUTE_ENDINGS,
            completed=ending == "completed", speeds=poses[:, 3], yaws=poses[:, 2], dt=dt, termination=ending,
            min_headway_s=car.min_headway_s,
        ))
    return outcomes
