"""Closed-loop evaluation in-process, with the same cadence as the ROS nodes.

Per control step (``DrivingSim.control_hz``, 10 Hz): a new decision when one is due (``decision_hz``,
2 Hz), a new trajectory when one is due (``plan_hz``, 10 Hz), then the controller turns the latest
trajectory, re-anchored to the current pose, into a (speed, yaw-rate) command. A policy error or an
unusable trajectory falls back to a straight stop and is counted in ``result.extras``.

Seeds: ``TRAIN_SEEDS`` (0..9999) are for recording data and training; ``HELDOUT_SEEDS``
(100000..109999) are only for evaluation, so a trained policy is never scored on scenes it saw.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

from ..core.control import PurePursuitPID, reanchor
from ..core.metrics import EpisodeResult
from ..core.trajectory import Trajectory, TrajectorySpec, stop_trajectory
from ..core.vocabulary import Decision
from .highway import DrivingSim

log = logging.getLogger(__name__)

TRAIN_SEEDS = range(0, 10_000)
HELDOUT_SEEDS = range(100_000, 110_000)


def _bind(policy, sim: DrivingSim) -> None:
    """Privileged policies (the expert) attach to the simulator; stateful ones reset."""
    if hasattr(policy, "attach"):
        policy.attach(sim)
    elif hasattr(policy, "reset"):
        policy.reset()


def _safe_plan(policy, obs, decision, speed: float, spec) -> tuple[Trajectory, bool]:
    try:
        traj = policy.plan(obs, decision)
        if isinstance(traj, Trajectory) and traj.poses.shape == (spec.num_waypoints, 3) \
                and np.all(np.isfinite(traj.poses)):
            return traj, True
        log.warning("policy returned an unusable trajectory; stopping")
    except Exception as exc:  # a broken policy must not kill the evaluation
        log.warning("policy.plan failed (%s); stopping", exc)
    return stop_trajectory(speed, spec), False


def run_episode(policy, scenario: str, seed: int, decision_hz: float = 2.0, plan_hz: float = 10.0,
                record_frames: bool = False, progress: bool = False, sim: DrivingSim | None = None,
                controller: PurePursuitPID | None = None) -> tuple[EpisodeResult, list | None]:
    """Drive one episode; returns the result and, with ``record_frames``, one frame dict per step
    (image, trajectory, decision, navigation, time, speed) for :mod:`vla_driver.sim.render`."""
    sim = sim or DrivingSim.for_policy(policy, scenario, seed)
    obs = sim.reset(seed)
    _bind(policy, sim)
    controller = controller or PurePursuitPID()
    controller.reset()
    spec = getattr(policy, "spec", None)
    spec = spec if isinstance(spec, TrajectorySpec) else TrajectorySpec()
    render = record_frames or getattr(policy, "needs_image", True)
    decision_period, plan_period = 1.0 / decision_hz, 1.0 / plan_hz
    next_decision = next_plan = 0.0
    decision = traj = plan_pose = None
    plan_time = 0.0
    frames = [] if record_frames else None
    failures = {"decide_errors": 0, "plan_fallbacks": 0}
    steps = int(np.ceil(sim.duration_s / sim.dt))
    bar = None
    if progress:
        bar = tqdm(total=steps, desc=f"{scenario}/{seed}", leave=False)
    while not sim.done:
        now = sim.time
        due_decision = decision is None or now >= next_decision - 1e-6
        due_plan = traj is None or now >= next_plan - 1e-6
        if due_decision or due_plan:
            obs = sim.observation(render=render)
        if due_decision:
            try:
                decision = policy.decide(obs).decision
            except Exception as exc:
                failures["decide_errors"] += 1
                log.warning("policy.decide failed (%s); keeping the previous decision", exc)
                if decision is None:
                    decision = Decision(policy.vocab.find_speed("stop"), policy.vocab.find_path("straight"))
            next_decision = now + decision_period
        if due_plan:
            traj, ok = _safe_plan(policy, obs, decision, float(obs.speed), spec)
            failures["plan_fallbacks"] += 0 if ok else 1
            plan_pose, plan_time = sim.ego_pose(), now
            next_plan = now + plan_period
        pose = sim.ego_pose()
        current = reanchor(traj, plan_pose, pose)  # identity when planned this step
        speed_cmd, yaw_rate = controller.command(current, pose[3], sim.dt, elapsed=now - plan_time)
        if record_frames:
            frames.append({"image": obs.image if due_plan else sim.render(), "trajectory": current.poses.copy(),
                           "decision": f"{decision.speed}, {decision.path}", "navigation": obs.navigation,
                           "time": now, "speed": pose[3], "image_size": sim.image_size})
        sim.step(speed_cmd, yaw_rate)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result = sim.result()
    result.extras.update({k: v for k, v in failures.items() if v})
    return result, frames


def evaluate(policy_factory: Callable[[], object], scenarios: Iterable[str], seeds: Iterable[int],
             progress: bool = True, workers: int = 0, duration_s: float | None = None,
             desc: str = "closed-loop", appearance: str = "default", **kwargs) -> list[EpisodeResult]:
    """Run every (scenario, seed) pair, scenario-major; tqdm bar over episodes.

    ``workers`` <= 1: one policy from ``policy_factory`` in this process. More: that many spawned processes,
    each building its own policy (``policy_factory`` must pickle: a class or a ``functools.partial``) and
    its own simulators. Episodes are independent and the simulator is deterministic, so the results are
    the same either way, in the same order. ``duration_s`` overrides the scenarios' episode length;
    ``appearance`` is how a rig's camera images look (``DrivingSim``).
    """
    pairs = [(scenario, int(seed)) for scenario in scenarios for seed in seeds]
    results: list[EpisodeResult | None] = [None] * len(pairs)
    with tqdm(total=len(pairs), desc=desc, disable=not progress) as bar:
        def done(i: int, result: EpisodeResult) -> None:
            results[i] = result
            bar.set_postfix(scenario=result.scenario, ds=f"{result.driving_score:.2f}")
            bar.update(1)

        if workers <= 1:
            runner = _EpisodeRunner(policy_factory, duration_s, appearance, kwargs)
            try:
                for i, pair in enumerate(pairs):
                    done(i, runner.run(*pair))
            finally:
                runner.close()
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(policy_factory, duration_s, appearance, kwargs)) as pool:
                futures = {pool.submit(_run_in_worker, *pair): i for i, pair in enumerate(pairs)}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    return results


class _EpisodeRunner:
    """One policy and one simulator per scenario, reused over episodes."""

    def __init__(self, policy_factory, duration_s: float | None, appearance: str, kwargs: dict):
        self.policy, self.duration_s, self.appearance, self.kwargs = policy_factory(), duration_s, appearance, kwargs
        self.sims: dict[str, DrivingSim] = {}

    def run(self, scenario: str, seed: int) -> EpisodeResult:
        if scenario not in self.sims:
            self.sims[scenario] = DrivingSim.for_policy(self.policy, scenario, seed, duration_s=self.duration_s,
                                                        appearance=self.appearance)
        return run_episode(self.policy, scenario, seed, sim=self.sims[scenario], **self.kwargs)[0]

    def close(self) -> None:
        for sim in self.sims.values():
            sim.close()


_WORKER: _EpisodeRunner | None = None


def _init_worker(policy_factory, duration_s, appearance, kwargs) -> None:
    global _WORKER
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    _WORKER = _EpisodeRunner(policy_factory, duration_s, appearance, kwargs)


def _run_in_worker(scenario: str, seed: int) -> EpisodeResult:
    return _WORKER.run(scenario, seed)
