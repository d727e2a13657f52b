"""The reward of one train-rl branch, scored from the simulator's ground truth: how a decision is
judged by what happened while it was held (and driven on).

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
      blocked   = 1 if the branch ends the episode ``blocked`` (``sim.episode.BLOCKED_S`` without a metre
                  of progress): standing still at a junction forgoes progress, but without this term it
                  never risks the crash that going may bring
    sparse (MindDrive): total = -1 on collision / off road / off route, +1 on route completion, else 0
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.rewards import TrajectoryRewardConfig
from .branches import BranchOutcome

_TRAJ_DEFAULTS = TrajectoryRewardConfig()


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
    """The branch reward of the recipe measured in docs/results.md (rl-gain): each branch holds its decision 3 s and
    drives on 5 s, a crash pays 1.0, ending the episode blocked 0.75 (Driving Score charges a crash x0.6 and
    being blocked x0.7, so 0.75 = 0.3 / 0.4 of a crash), and a time headway under 1.5 s pays up to 1.0.
    Without the blocked term the policy learned to wait at intersections until the episode ended blocked."""
    return BranchRewardConfig(horizon_s=3.0, follow_s=5.0, collision_penalty=1.0, blocked_penalty=0.75,
                              headway_s=1.5)


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
