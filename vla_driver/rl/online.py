"""The learner of online RL in the simulator (``vla-driver train-rl``): it hands rollout tasks to the
executors, updates the decision adapter by GRPO on the branch points they return, and writes the checkpoint.

One rollout (``rl/rollout.py``) = one episode driven by the current policy (greedy decisions at
``decision_hz``, the action expert planning at ``plan_hz``, :class:`~vla_driver.core.control.PurePursuitPID`
following, exactly the cadence of :func:`vla_driver.sim.closed_loop.run_episode`). Every ``branch_every``
decision points the scene is ``snapshot()``-ed and G decisions are drawn from the policy's decision table
(with the GRPO temperature). Each distinct decision is ``restore()``-d into its own branch simulator and
held for ``horizon_s`` (3 s) while the action expert plans at ``plan_hz`` (the G branches step in lockstep,
so their plans are one batched forward pass) and the controller drives; with ``follow_s`` > 0 each branch
then drives on for that long on the policy's own greedy decisions, so that what a decision sets up (a crash
two seconds after it ended, a car left waiting at a junction) is scored too. Its reward is scored from
ground truth; the main episode then continues with the greedy decision, untouched by the branches. A group
whose G draws are all the same decision has zero advantages whatever it would score: it is kept (the KL term
still sees it) but not driven, which on a confident policy skips most branches.

Branching is ``rl/branches.py`` (the cars of a branch are driven by ``rl/drive.py``), the branch reward
:func:`~vla_driver.rl.branch_reward.branch_reward` (formula there), the run's settings ``rl/online_config.py``.

The GRPO update (``rl/grpo.py``) then uses those rewards, with advantages relative to the group: only
the decision adapter learns, with the exact KL to the starting adapter. Workers draw the groups from the
same weights the learner holds (the decision adapter is sent with every task), so the update's
importance ratios start at 1.

Executors (``rl/rollout_executors.py``): ``ProcessExecutor`` (default) runs rollouts in ``workers`` spawned
processes on this machine, each with its own model and simulators. ``RayExecutor`` runs the same
``RolloutWorker`` as Ray actors (``--executor ray [--ray-address HOST:PORT]``); Ray is optional and not
installed here. On a multi-node Ray cluster the checkpoint path must be readable on every node (shared file
system). ``workers=0`` runs rollouts in this process (debugging, profiling).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..model.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from ..runtime.loading import ensure_exported
from ..sim.closed_loop import TRAIN_SEEDS
from .curves import save_curves
from .grpo import DecisionGRPO
from .online_config import TrainRLConfig
from .rollout import BranchPoint, RolloutResult, RolloutTask, decision_adapter_state
from .rollout_executors import make_executor

log = logging.getLogger(__name__)


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
    out = []
    for k in range(cfg.episodes_per_iteration):
        n = iteration * cfg.episodes_per_iteration + k
        out.append(RolloutTask(cfg.scenarios[n % len(cfg.scenarios)], TRAIN_SEEDS[cfg.seed_offset + n],
                               iteration, state))
    return out


def train_rl(from_checkpoint: str | Path, out: str | Path, cfg: TrainRLConfig | None = None,
             progress: bool = True) -> dict:
    """Online GRPO from ``from_checkpoint``; writes ``out`` (checkpoint with lineage) and ``out.rl.png``.
    The checkpoint is loaded once here: the learner trains that model, rollouts in this process act with a
    copy of it taken before training starts, and worker processes load their own."""
    cfg = cfg or TrainRLConfig()
    cfg.validate()
    model = load_checkpoint(from_checkpoint)
    parent = getattr(model, "model_version", None)
    rng = np.random.default_rng(cfg.grpo.seed)
    history: dict[str, list[float]] = {"reward_mean": [], "informative_groups": [], "branch_collision_rate": [],
                                       "episode_ds": [], "kl": [], "policy_loss": []}
    iterations, seeds = [], {}
    start = time.perf_counter()
    _export_action_graphs(from_checkpoint)
    with make_executor(from_checkpoint, cfg, model) as executor:
        trainer = PresampledGRPO(model, dataclasses.replace(cfg.grpo, group_size=cfg.group_size))
        bar = tqdm(range(cfg.iterations), desc="train-rl", unit="it", disable=not progress)
        for it in bar:
            tasks = _tasks(cfg, it, decision_adapter_state(model))
            for t in tasks:
                seeds.setdefault(t.scenario, []).append(t.seed)
            t0 = time.perf_counter()
            replaced = executor.replaced
            results = list(tqdm(executor.map(tasks), total=len(tasks), desc="rollouts", leave=False,
                                disable=not progress))
            order = {(t.scenario, t.seed): i for i, t in enumerate(tasks)}
            results.sort(key=lambda r: order[(r.scenario, r.seed)])  # the update must not depend on who finished first
            rollout_s = time.perf_counter() - t0
            points = [p for r in results for p in r.points]
            order = rng.permutation(len(points))
            stats = {}
            for b in range(0, len(points), cfg.batch_size):
                stats = trainer.update([points[i] for i in order[b:b + cfg.batch_size]])
            update_s = time.perf_counter() - t0 - rollout_s
            record = _iteration_record(it, results, points, rollout_s, update_s, stats)
            record["workers_replaced"] = executor.replaced - replaced
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
        "workers_replaced": sum(r["workers_replaced"] for r in iterations),
    }
