"""Online RL in the simulator (``vla-driver train-rl``): closed-loop rollouts, branching, GRPO on decisions.

One rollout = one episode driven by the current policy (greedy decisions at ``decision_hz``, the action
expert planning at ``plan_hz``, :class:`~vla_driver.core.control.PurePursuitPID` following, exactly the
cadence of :func:`vla_driver.sim.closed_loop.run_episode`). Every ``branch_every`` decision points the
scene is ``snapshot()``-ed and G decisions are drawn from the policy's decision table (with the GRPO
temperature). Each distinct decision is ``restore()``-d into its own branch simulator and held for
``horizon_s`` (3 s) while the action expert plans at ``plan_hz`` (the G branches step in lockstep, so
their plans are one batched forward pass) and the controller drives; with ``follow_s`` > 0 each branch
then drives on for that long on the policy's own greedy decisions, so that what a decision sets up
(a crash two seconds after it ended, a car left waiting at a junction) is scored too. Its reward is
scored from ground truth; the main episode then continues with the greedy decision, untouched by the
branches. A group whose G draws are all the same decision has zero advantages whatever it would score:
it is kept (the KL term still sees it) but not driven, which on a confident policy skips most branches.

Branch reward (``BranchRewardConfig``; its weights default to ``core.rewards.TrajectoryRewardConfig``,
train-rl's to ``measured_branch_reward()``)::

    dense:  total = progress_weight * progress - collision_penalty * collision
                    - off_road_penalty * off_road - comfort_penalty * comfort
                    - headway_penalty * tailgating (only with headway_s > 0) - blocked_penalty * blocked
      progress  = 1 if the route was completed in the branch, else
                  clip(route metres gained / (pace * (horizon_s + follow_s)), 0, 1), pace = ``pace_mps`` or by default
                  route length / the scenario's default episode duration (the average speed that
                  completes the route in time, so driving faster than that earns nothing more)
      collision = 1 if the ego crashed during the branch
      off_road  = 1 if the ego left the drivable area, or the episode ended off road / off route
      comfort   = min(1, max(0, mean|jerk| / max_jerk - 1)) + min(1, max(0, max|v yaw_rate| / max_lat - 1))
      tailgating = clip(1 - min time headway to the car ahead in the ego's lane / headway_s, 0, 1): a
                  branch that ends a few metres behind a slower car has not crashed yet, but will
      blocked   = 1 if the branch ends the episode ``blocked`` (``sim.highway.BLOCKED_S`` without a metre
                  of progress): standing still at a junction forgoes progress, but without this term it
                  never risks the crash that going may bring
    sparse (MindDrive): total = -1 on collision / off road / off route, +1 on route completion, else 0

The GRPO update (``rl/grpo.py``) then uses those rewards, with advantages relative to the group: only
the decision adapter learns, with the exact KL to the starting adapter. Workers draw the groups from the
same weights the learner holds (the decision adapter is sent with every task), so the update's
importance ratios start at 1.

Executors: ``ProcessExecutor`` (default) runs rollouts in ``workers`` spawned processes on this machine,
each with its own model and simulators. ``RayExecutor`` runs the same ``RolloutWorker`` as Ray actors
(``--executor ray [--ray-address HOST:PORT]``); Ray is optional and not installed here. On a multi-node
Ray cluster the checkpoint path must be readable on every node (shared file system). ``workers=0`` runs
rollouts in this process (debugging, profiling).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.control import PurePursuitPID, reanchor
from ..core.metrics import EpisodeResult
from ..core.rewards import TrajectoryRewardConfig
from ..core.trajectory import Trajectory, TrajectorySpec, stop_trajectory
from ..core.types import Observation
from ..core.vocabulary import Decision, greedy_candidate
from .grpo import DecisionGRPO, GRPOConfig

log = logging.getLogger(__name__)

OFF_ROUTE_ENDINGS = ("off_road", "route_deviation")
_TRAJ_DEFAULTS = TrajectoryRewardConfig()


# ------------------------------------------------------------------------------------------ configs
@dataclass
class BranchRewardConfig:
    """How one branch is scored (formula in the module docstring)."""

    horizon_s: float = 3.0  # how long each branch holds its decision
    follow_s: float = 0.0  # then the branch drives on this long on the policy's greedy decisions (scored too)
    sparse: bool = False  # MindDrive's -1 / 0 / +1 instead of the dense reward
    pace_mps: float | None = None  # speed that earns full progress; None: the route's pace (see above)
    progress_weight: float = _TRAJ_DEFAULTS.progress_weight
    collision_penalty: float = _TRAJ_DEFAULTS.collision_penalty
    off_road_penalty: float = _TRAJ_DEFAULTS.off_road_penalty
    comfort_penalty: float = _TRAJ_DEFAULTS.comfort_penalty
    headway_s: float = 0.0  # time headway to the car ahead below which a branch pays; 0 = no headway term
    headway_penalty: float = 1.0  # paid in full at zero headway, linearly less up to headway_s
    blocked_penalty: float = 0.0  # paid by a branch that ends the episode blocked; 0 = standing still is free
    max_jerk: float = _TRAJ_DEFAULTS.max_jerk  # m/s^3, bound on the branch's mean |longitudinal jerk|
    max_lateral_accel: float = _TRAJ_DEFAULTS.max_lateral_accel  # m/s^2


def measured_branch_reward() -> BranchRewardConfig:
    """The branch reward of the recipe measured in README (rl-gain): each branch holds its decision 3 s and
    drives on 5 s, a crash pays 1.0, ending the episode blocked 0.75 (Driving Score charges a crash x0.6 and
    being blocked x0.7, so 0.75 = 0.3 / 0.4 of a crash), and a time headway under 1.5 s pays up to 1.0.
    Without the blocked term the policy learned to wait at intersections until the episode ended blocked."""
    return BranchRewardConfig(horizon_s=3.0, follow_s=5.0, collision_penalty=1.0, blocked_penalty=0.75,
                              headway_s=1.5)


@dataclass
class TrainRLConfig:
    """Defaults are the recipe measured in README (rl-gain), sized for 2 CPU cores: 2 workers of 1 thread,
    8 full-length episodes per iteration, a branch point every second, G = 4, 8 iterations (14-28 min here)."""

    iterations: int = 8
    workers: int = 2  # rollout processes (or Ray actors); 0 = roll out in this process
    executor: str = "process"  # process | ray
    ray_address: str | None = None  # None: start a local Ray; "auto" or "HOST:PORT": join a cluster
    threads_per_worker: int = 1  # torch threads in each worker
    episodes_per_iteration: int = 8
    scenarios: tuple[str, ...] = ("highway", "merge", "roundabout", "intersection")
    episode_s: float | None = None  # training episode length; None: the scenario's own (as in evaluation)
    seed_offset: int = 0  # episode k of the run uses TRAIN_SEEDS[seed_offset + k]
    decision_hz: float = 2.0
    plan_hz: float = 10.0
    branch_every: int = 2  # decision points between two branch points (2 at 2 Hz = every second)
    group_size: int = 4  # G decisions drawn at each branch point
    batch_size: int = 16  # branch points per GRPO step
    reward: BranchRewardConfig = field(default_factory=measured_branch_reward)
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(lr=5e-5))  # group_size comes from above

    def validate(self) -> None:
        from ..sim.highway import SCENARIOS

        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise ValueError(f"unknown or no scenarios {list(self.scenarios)}; choose from {sorted(SCENARIOS)}")
        if self.executor not in ("process", "ray"):
            raise ValueError(f"executor must be 'process' or 'ray', got {self.executor!r}")
        for name in ("iterations", "episodes_per_iteration", "branch_every", "group_size", "batch_size",
                     "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not ((self.episode_s is None or self.episode_s > 0) and self.reward.horizon_s > 0
                and self.reward.follow_s >= 0 and self.decision_hz > 0 and self.plan_hz > 0):
            raise ValueError("episode_s, reward.horizon_s, decision_hz and plan_hz must be > 0, follow_s >= 0")
        if min(self.reward.collision_penalty, self.reward.blocked_penalty, self.reward.headway_s) < 0:
            raise ValueError("reward.collision_penalty, reward.blocked_penalty and reward.headway_s must be >= 0")


# ------------------------------------------------------------------------------------------ branches
@dataclass
class _Car:
    """One simulator with its controller and the plan it is following."""

    sim: object  # DrivingSim
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
            from ..runtime.policy import select_mode

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


def drive(cars: list[_Car], decisions: list[Decision], planner, steps: int, plan_every: int) -> None:
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
        cars.append(_Car(sim, copy.deepcopy(controller), track_headway=track_headway))
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


def branch_reward(outcome: BranchOutcome, pace_mps: float, cfg: BranchRewardConfig | None = None) -> dict:
    """Reward terms and ``total`` of one branch (formula in the module docstring)."""
    cfg = cfg or BranchRewardConfig()
    collision, off_road = float(outcome.collided), float(outcome.off_road)
    if cfg.sparse:
        total = -1.0 if collision or off_road else float(outcome.completed)
        return {"collision": collision, "off_road": off_road, "completed": float(outcome.completed), "total": total}
    target_m = max(pace_mps * (cfg.horizon_s + cfg.follow_s), 1e-6)
    progress = 1.0 if outcome.completed else float(np.clip(outcome.progress_m / target_m, 0.0, 1.0))
    v = outcome.speeds
    jerk = float(np.abs(np.diff(v, n=2)).mean()) / outcome.dt**2 if v.size >= 3 else 0.0
    yaw_rate = np.diff(np.unwrap(outcome.yaws)) / outcome.dt if v.size >= 2 else np.zeros(1)
    lateral = float(np.abs(v[1:] * yaw_rate).max()) if v.size >= 2 else 0.0
    comfort = (min(1.0, max(0.0, jerk / cfg.max_jerk - 1.0))
               + min(1.0, max(0.0, lateral / cfg.max_lateral_accel - 1.0)))
    tailgating = 0.0 if cfg.headway_s <= 0 else float(np.clip(1.0 - outcome.min_headway_s / cfg.headway_s, 0, 1))
    blocked = float(outcome.termination == "blocked")
    total = (cfg.progress_weight * progress - cfg.collision_penalty * collision
             - cfg.off_road_penalty * off_road - cfg.comfort_penalty * comfort - cfg.headway_penalty * tailgating
             - cfg.blocked_penalty * blocked)
    return {"progress": progress, "progress_m": outcome.progress_m, "collision": collision, "off_road": off_road,
            "comfort": comfort, "mean_jerk": jerk, "max_lateral_accel": lateral, "tailgating": tailgating,
            "blocked": blocked, "total": float(total)}


def draw_group(log_table: np.ndarray, size: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` candidate indices drawn from a flattened log-probability table at ``temperature``
    (the same distribution ``DecisionGRPO.sample_groups`` draws from)."""
    logits = np.asarray(log_table, dtype=np.float64).ravel() / temperature
    probs = np.exp(logits - logits.max())
    return rng.choice(probs.size, size=size, p=probs / probs.sum())


# ------------------------------------------------------------------------------------------ rollouts
def decision_adapter_state(model) -> dict[str, np.ndarray]:
    """The decision LoRA weights as numpy arrays (what a worker needs to act like the learner)."""
    return {n: p.detach().cpu().numpy().copy() for n, p in model.llm.named_parameters()
            if ".decision." in n and "lora_" in n}


def load_decision_adapter_state(model, state: dict[str, np.ndarray]) -> None:
    import torch

    params = dict(model.llm.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise KeyError(f"decision adapter state has unknown tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(torch.from_numpy(value))


@dataclass
class RolloutTask:
    scenario: str
    seed: int
    iteration: int
    adapter_state: dict  # decision adapter tensors (numpy) to act with


@dataclass
class BranchPoint:
    """One GRPO sample: what the policy saw, the G decisions drawn there and their branch rewards."""

    observation: Observation
    candidates: np.ndarray  # (G,) flat candidate indices
    rewards: np.ndarray  # (G,)
    collided: np.ndarray  # (G,) bool
    simulated: bool = True  # False: all G draws were one decision (zero advantages), nothing was driven


@dataclass
class RolloutResult:
    scenario: str
    seed: int
    episode: EpisodeResult  # the main (greedy) drive
    points: list[BranchPoint]
    branches: int  # branch simulations run (distinct decisions per branch point)
    sim_steps: int  # control steps simulated, main drive and branches
    seconds: float


class RolloutWorker:
    """Runs rollouts with its own copy of the model and its own simulators (one per process or actor)."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig):
        import torch

        from ..model.checkpoint import load_checkpoint
        from ..runtime.policy import TorchPolicy

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
        torch.set_num_threads(cfg.threads_per_worker)
        self.cfg = cfg
        self.policy = TorchPolicy(load_checkpoint(checkpoint))  # decides, with the learner's decision adapter
        self.planner = self._fixed_planner(checkpoint)
        self._sims: dict[str, tuple] = {}

    def _fixed_planner(self, checkpoint: str):
        """RL never changes the action expert, so it plans on its exported graphs (ONNX Runtime, ~2x faster
        than torch here) when they exist and are current (``train_rl`` exports them before the workers
        start); otherwise the torch policy plans too."""
        from ..runtime.policy import load_policy

        planner = load_policy(checkpoint, backend="onnxruntime", threads=self.cfg.threads_per_worker)
        return planner if planner.backend_name == "onnxruntime" else self.policy

    def _simulators(self, scenario: str):
        """(main sim, G branch sims) for ``scenario``, built once. Branch sims last a horizon longer so that
        a branch started near the end of the episode still runs its full horizon."""
        from ..sim.highway import DrivingSim

        if scenario not in self._sims:
            cfg = self.cfg
            main = DrivingSim(scenario, 0, duration_s=cfg.episode_s)
            extra = cfg.reward.horizon_s + cfg.reward.follow_s
            branches = [DrivingSim(scenario, 0, duration_s=main.duration_s + extra) for _ in range(cfg.group_size)]
            self._sims[scenario] = (main, branches)
        return self._sims[scenario]

    def close(self) -> None:
        for main, branches in self._sims.values():
            for sim in (main, *branches):
                sim.close()
        self._sims.clear()

    def rollout(self, task: RolloutTask) -> RolloutResult:
        try:
            return self._rollout(task)
        except Exception as e:
            raise RuntimeError(f"rollout {task.scenario}/{task.seed} failed: {e!r}") from e

    def _rollout(self, task: RolloutTask) -> RolloutResult:
        from ..sim.highway import DEFAULT_DURATION_S

        start = time.perf_counter()
        cfg, policy = self.cfg, self.policy
        load_decision_adapter_state(policy.model, task.adapter_state)
        rng = np.random.default_rng([task.seed, task.iteration])
        main_sim, branch_sims = self._simulators(task.scenario)
        main_sim.reset(task.seed)
        pace = cfg.reward.pace_mps or (main_sim.route.end - main_sim.route.start) / DEFAULT_DURATION_S[task.scenario]
        main = _Car(main_sim, PurePursuitPID())
        period = max(1, int(round(main_sim.control_hz / cfg.decision_hz)))
        plan_every = max(1, int(round(main_sim.control_hz / cfg.plan_hz)))
        points, branches, branch_steps, index = [], 0, 0, 0
        while not main_sim.done:
            obs = main_sim.observation()
            table = policy.decision_table([obs])[0].ravel()
            if index % cfg.branch_every == 0:
                candidates = draw_group(table, cfg.group_size, cfg.grpo.temperature, rng)
                unique = [int(c) for c in np.unique(candidates)]
                if len(unique) == 1:  # equal rewards, zero advantages: only the KL term learns from it
                    points.append(BranchPoint(obs, candidates, np.zeros(len(candidates)),
                                              np.zeros(len(candidates), dtype=bool), simulated=False))
                    unique = []
                outcomes = [] if not unique else run_branches(
                    self.planner, main_sim.snapshot(), main.controller,
                    [Decision(*policy.vocab.candidate(c)) for c in unique], branch_sims, cfg.reward.horizon_s,
                    cfg.plan_hz, cfg.reward.follow_s, cfg.decision_hz, decider=policy,
                    track_headway=cfg.reward.headway_s > 0)
                scored = {c: (branch_reward(o, pace, cfg.reward)["total"], o.collided)
                          for c, o in zip(unique, outcomes, strict=True)}
                if unique:
                    points.append(BranchPoint(obs, candidates, np.array([scored[int(c)][0] for c in candidates]),
                                              np.array([scored[int(c)][1] for c in candidates])))
                branches += len(unique)
                branch_steps += sum(o.speeds.size - 1 for o in outcomes)
            decision = Decision(*policy.vocab.candidate(greedy_candidate(np.exp(table))))
            drive([main], [decision], self.planner, period, plan_every)
            index += 1
        return RolloutResult(task.scenario, task.seed, main_sim.result(), points, branches,
                             len(main.infos) + branch_steps, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ executors
class RolloutExecutor(ABC):
    """Runs rollout tasks on some workers; yields results as they finish (any order)."""

    @abstractmethod
    def map(self, tasks: list[RolloutTask]) -> Iterator[RolloutResult]: ...

    @abstractmethod
    def close(self) -> None:
        """Release the workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineExecutor(RolloutExecutor):
    """Rollouts in this process, one after another (``workers=0``)."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig):
        self.worker = RolloutWorker(checkpoint, cfg)

    def map(self, tasks):
        for task in tasks:
            yield self.worker.rollout(task)

    def close(self) -> None:
        self.worker.close()


_PROCESS_WORKER: RolloutWorker | None = None


def _init_process_worker(checkpoint: str, cfg: TrainRLConfig) -> None:
    global _PROCESS_WORKER
    _PROCESS_WORKER = RolloutWorker(checkpoint, cfg)


def _run_in_process_worker(task: RolloutTask) -> RolloutResult:
    return _PROCESS_WORKER.rollout(task)


class ProcessExecutor(RolloutExecutor):
    """``workers`` spawned processes on this machine, each loading the checkpoint once."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_process_worker, initargs=(str(checkpoint), cfg))

    def map(self, tasks):
        from concurrent.futures import as_completed

        futures = [self.pool.submit(_run_in_process_worker, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(RolloutExecutor):
    """``workers`` Ray actors (a local Ray, or the cluster at ``address``), each a :class:`RolloutWorker`."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, workers: int, address: str | None = None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise RuntimeError("--executor ray needs the 'ray' package, which is not installed "
                               "(pip install 'ray[default]'); use --executor process") from None
        self.ray = ray
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        actor = ray.remote(num_cpus=cfg.threads_per_worker)(RolloutWorker)
        self.actors = [actor.remote(str(checkpoint), cfg) for _ in range(max(1, workers))]
        self.pool = ActorPool(self.actors)

    def map(self, tasks):
        yield from self.pool.map_unordered(lambda a, task: a.rollout.remote(task), tasks)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def make_executor(checkpoint, cfg: TrainRLConfig) -> RolloutExecutor:
    if cfg.executor == "ray":
        return RayExecutor(checkpoint, cfg, cfg.workers, cfg.ray_address)
    if cfg.workers == 0:
        return InlineExecutor(str(checkpoint), cfg)
    return ProcessExecutor(checkpoint, cfg, cfg.workers)


# ------------------------------------------------------------------------------------------ learner
class PresampledGRPO(DecisionGRPO):
    """DecisionGRPO on groups the rollout workers drew (from these same weights) and scored by branching."""

    _groups: np.ndarray | None = None

    def sample_groups(self, log_table):
        return self._groups

    def update(self, points: list[BranchPoint]) -> dict:
        self._groups = np.stack([p.candidates for p in points])
        rewards = [p.rewards for p in points]
        return self.step([p.observation for p in points], lambda i, _candidates: rewards[i])


def _tasks(cfg: TrainRLConfig, iteration: int, state: dict) -> list[RolloutTask]:
    from ..sim.closed_loop import TRAIN_SEEDS

    out = []
    for k in range(cfg.episodes_per_iteration):
        n = iteration * cfg.episodes_per_iteration + k
        out.append(RolloutTask(cfg.scenarios[n % len(cfg.scenarios)], TRAIN_SEEDS[cfg.seed_offset + n],
                               iteration, state))
    return out


def train_rl(from_checkpoint: str | Path, out: str | Path, cfg: TrainRLConfig | None = None,
             progress: bool = True) -> dict:
    """Online GRPO from ``from_checkpoint``; writes ``out`` (checkpoint with lineage) and ``out.rl.png``."""
    from tqdm import tqdm

    from ..model.checkpoint import load_checkpoint, save_checkpoint
    from .sft import save_curves

    cfg = cfg or TrainRLConfig()
    cfg.validate()
    model = load_checkpoint(from_checkpoint)
    parent = getattr(model, "model_version", None)
    trainer = PresampledGRPO(model, dataclasses.replace(cfg.grpo, group_size=cfg.group_size))
    rng = np.random.default_rng(cfg.grpo.seed)
    history: dict[str, list[float]] = {"reward_mean": [], "informative_groups": [], "branch_collision_rate": [],
                                       "episode_ds": [], "kl": [], "policy_loss": []}
    iterations, seeds = [], {}
    start = time.perf_counter()
    _export_action_graphs(from_checkpoint)
    with make_executor(from_checkpoint, cfg) as executor:
        bar = tqdm(range(cfg.iterations), desc="train-rl", unit="it", disable=not progress)
        for it in bar:
            tasks = _tasks(cfg, it, decision_adapter_state(model))
            for t in tasks:
                seeds.setdefault(t.scenario, []).append(t.seed)
            t0 = time.perf_counter()
            results = list(tqdm(executor.map(tasks), total=len(tasks), desc="rollouts", leave=False,
                                disable=not progress))
            rollout_s = time.perf_counter() - t0
            points = [p for r in results for p in r.points]
            order = rng.permutation(len(points))
            stats = {}
            for b in range(0, len(points), cfg.batch_size):
                stats = trainer.update([points[i] for i in order[b:b + cfg.batch_size]])
            update_s = time.perf_counter() - t0 - rollout_s
            record = _iteration_record(it, results, points, rollout_s, update_s, stats)
            iterations.append(record)
            for key in history:
                history[key].append(record.get(key, float("nan")))
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", ds=f"{record['episode_ds']:.2f}",
                            branches_s=f"{record['branches_per_s']:.1f}")
    trainer.finish()
    seconds = time.perf_counter() - start
    report = _report(iterations, seconds, cfg)
    lineage = {"kind": "grpo_online", "parent": parent, "parent_path": str(from_checkpoint), "seeds": seeds,
               "reward_config": asdict(cfg.reward), "train_rl_config": json.loads(json.dumps(asdict(cfg)))}
    save_checkpoint(model, out, lineage=lineage, metrics={"train_rl": report})
    save_curves(history, Path(out).with_suffix(".rl.png"), xlabel="iteration")
    report["iterations_detail"] = iterations
    return report


def _export_action_graphs(checkpoint) -> None:
    """Export the graphs the workers plan with once, here, rather than racing to do it in every worker."""
    from ..model.checkpoint import sha256_file
    from ..runtime.policy import ensure_exported

    try:
        ensure_exported(Path(checkpoint), sha256_file(Path(checkpoint) / "manifest.json"))
    except Exception as e:  # noqa: BLE001 - the workers then plan with torch
        log.warning("no ONNX graphs for %s (%s): rollouts plan with torch", checkpoint, e)


def _iteration_record(it: int, results: list[RolloutResult], points: list[BranchPoint], rollout_s: float,
                      update_s: float, stats: dict) -> dict:
    branches = sum(r.branches for r in results)
    driven = [p for p in points if p.simulated]
    rewards = np.concatenate([p.rewards for p in driven]) if driven else np.array([np.nan])
    collided = np.concatenate([p.collided for p in driven]) if driven else np.array([np.nan])
    return {
        "iteration": it, "episodes": len(results), "branch_points": len(points), "branches": branches,
        "sim_steps": sum(r.sim_steps for r in results), "rollout_s": rollout_s, "update_s": update_s,
        "branches_per_s": branches / rollout_s, "samples_per_s": len(points) / rollout_s,
        "sim_steps_per_s": sum(r.sim_steps for r in results) / rollout_s,
        "reward_mean": float(rewards.mean()), "branch_collision_rate": float(collided.mean()),
        # groups whose rewards differ: the only ones with a non-zero GRPO advantage
        "informative_groups": float(np.mean([np.ptp(p.rewards) > 1e-9 for p in points])) if points else float("nan"),
        "episode_ds": float(np.mean([r.episode.driving_score for r in results])),
        "kl": stats.get("kl", float("nan")), "policy_loss": stats.get("policy_loss", float("nan")),
    }


def _report(iterations: list[dict], seconds: float, cfg: TrainRLConfig) -> dict:
    rollout_s = sum(r["rollout_s"] for r in iterations)
    tail = iterations[-5:]
    return {
        "iterations": len(iterations), "seconds": seconds, "iteration_s": seconds / max(1, len(iterations)),
        "workers": cfg.workers, "executor": cfg.executor, "group_size": cfg.group_size,
        "branch_points": sum(r["branch_points"] for r in iterations),
        "branches": sum(r["branches"] for r in iterations),
        "branches_per_s": sum(r["branches"] for r in iterations) / rollout_s,
        "samples_per_s": sum(r["branch_points"] for r in iterations) / rollout_s,
        "sim_steps_per_s": sum(r["sim_steps"] for r in iterations) / rollout_s,
        "final_reward_mean": float(np.nanmean([r["reward_mean"] for r in tail])),
        "final_episode_ds": float(np.nanmean([r["episode_ds"] for r in tail])),
    }
