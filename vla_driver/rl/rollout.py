"""One train-rl rollout: an episode driven on the policy's greedy decisions, with a group of G decisions
drawn and branched every few decision points; the scored groups are the GRPO samples it returns.

A :class:`RolloutWorker` (one per process or Ray actor) loads the checkpoint once, or takes a model already
loaded in its process, and acts with the learner's decision adapter, which every :class:`RolloutTask`
carries, so that the groups are drawn from the weights the learner holds.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.control import PurePursuitPID
from ..core.metrics import EpisodeResult
from ..core.types import Observation
from ..core.vocabulary import Decision, greedy_candidate
from ..model.checkpoint import load_checkpoint, sha256_file
from ..runtime.graph_policy import GraphPolicy
from ..runtime.loading import ensure_exported
from ..runtime.onnx_backend import THINKING_GRAPHS, OrtSessions
from ..runtime.policy import TorchPolicy
from ..sim.highway import DrivingSim
from ..sim.scenarios import DEFAULT_DURATION_S
from .branch_reward import branch_reward
from .branches import run_branches
from .drive import Car, drive
from .online_config import TrainRLConfig

log = logging.getLogger(__name__)


def draw_group(log_table: np.ndarray, size: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` candidate indices drawn from a flattened log-probability table at ``temperature``
    (the same distribution ``DecisionGRPO.sample_groups`` draws from)."""
    logits = np.asarray(log_table, dtype=np.float64).ravel() / temperature
    probs = np.exp(logits - logits.max())
    return rng.choice(probs.size, size=size, p=probs / probs.sum())


def decision_adapter_state(model) -> dict[str, np.ndarray]:
    """The decision LoRA weights as numpy arrays (what a worker needs to act like the learner)."""
    return {n: p.detach().cpu().numpy().copy() for n, p in model.llm.named_parameters()
            if ".decision." in n and "lora_" in n}


def load_decision_adapter_state(model, state: dict[str, np.ndarray]) -> None:
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
    """Runs rollouts with its own copy of the model and its own simulators (one per process or actor).
    ``model``: the checkpoint's model, already loaded in this process and not used by anything else;
    without it the worker loads ``checkpoint`` itself."""

    def __init__(self, checkpoint: str, cfg: TrainRLConfig, model=None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
        torch.set_num_threads(cfg.threads_per_worker)
        self.cfg = cfg
        # decides, with the learner's decision adapter
        self.policy = TorchPolicy(model if model is not None else load_checkpoint(checkpoint))
        self.planner = self._fixed_planner(checkpoint)
        self._sims: dict[str, tuple] = {}

    def _fixed_planner(self, checkpoint: str):
        """RL never changes the action expert, so it plans on its exported graphs (ONNX Runtime, ~2x faster
        than torch here) when they exist and are current (``train_rl`` exports them before the workers
        start); otherwise the torch policy plans too. The graphs' policy takes its tokenizer, vocabulary and
        configuration from the loaded model rather than opening the checkpoint again."""
        path, model = Path(checkpoint), self.policy.model
        try:
            specs = ensure_exported(path, sha256_file(path / "manifest.json"))
            runners = OrtSessions(specs, path / "onnx", self.cfg.threads_per_worker,
                                  lazy=("decision_scorer", *THINKING_GRAPHS))  # it only plans on ORT
        except Exception as e:  # noqa: BLE001 - the torch policy plans then
            log.warning("no ONNX Runtime graphs for %s (%s): rollouts plan with torch", checkpoint, e)
            return self.policy
        return GraphPolicy(runners, specs, path / "onnx", model.tokenizer, model.vocab, model.spec, model.cfg,
                           model.model_version, "onnxruntime")

    def _simulators(self, scenario: str):
        """(main sim, G branch sims) for ``scenario``, built once. Branch sims last a horizon longer so that
        a branch started near the end of the episode still runs its full horizon."""
        if scenario not in self._sims:
            cfg = self.cfg
            main = DrivingSim.for_policy(self.policy, scenario, duration_s=cfg.episode_s)
            extra = cfg.reward.horizon_s + cfg.reward.follow_s
            branches = [DrivingSim.for_policy(self.policy, scenario, duration_s=main.duration_s + extra)
                        for _ in range(cfg.group_size)]
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
        start = time.perf_counter()
        cfg, policy = self.cfg, self.policy
        load_decision_adapter_state(policy.model, task.adapter_state)
        rng = np.random.default_rng([task.seed, task.iteration])
        main_sim, branch_sims = self._simulators(task.scenario)
        main_sim.reset(task.seed)
        pace = cfg.reward.pace_mps or (main_sim.route.end - main_sim.route.start) / DEFAULT_DURATION_S[task.scenario]
        main = Car(main_sim, PurePursuitPID())
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
