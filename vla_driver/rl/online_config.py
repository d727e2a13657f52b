"""The settings of one ``train-rl`` run (:class:`TrainRLConfig`), shared by the learner, the rollout
executors and every rollout worker; the defaults are the recipe measured in docs/results.md (rl-gain)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..sim.scenarios import SCENARIOS
from .branch_reward import BranchRewardConfig, measured_branch_reward
from .grpo import GRPOConfig


@dataclass
class TrainRLConfig:
    """Defaults are the recipe measured in docs/results.md (rl-gain), sized for 2 CPU cores: 2 workers of 1 thread,
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
