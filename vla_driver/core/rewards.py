"""RL rewards: AlphaDrive planning rewards, AutoVLA reasoning-length penalty, a trajectory-level reward.

* :func:`planning_rewards` scores one GRPO group of text completions against the logged decision
  (AlphaDrive, arXiv 2503.07608, Sec. 3.2.2 and Algorithm 1).
* :func:`reasoning_penalty` is AutoVLA's cost on slow thinking (arXiv 2506.13757):
  ``0.3 * sigmoid(0.002 * (chars - 400))``.
* :func:`trajectory_reward` scores the trajectory a decision led to (MindDrive feeds trajectory-level
  outcomes back to the decision expert, arXiv 2512.13636), with dense PDM-like terms.
* :func:`group_advantages` is GRPO's ``(r - mean) / (std + eps)``.

numpy and stdlib only.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .trajectory import Trajectory, wrap_angle
from .vocabulary import (
    PATH_SEMANTICS,
    SPEED_SEMANTICS,
    AnswerError,
    Decision,
    DecisionVocabulary,
    MissingAnswerTag,
    UnbalancedTag,
    parse_answer,
)

_ANSWER_BODY_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_WORD_RE = re.compile(r"[A-Za-z_]+")
# Reasoning blocks; an unclosed <think> runs to <answer> or the end, so leaving it open dodges nothing.
_THINK_BLOCK_RE = re.compile(r"<think>(.*?)(?:</think>|(?=<answer>)|\Z)", re.S)


# --------------------------------------------------------------------------------------------- configs
@dataclass
class ReasoningPenaltyConfig:
    """AutoVLA's reasoning-length penalty ``weight * sigmoid(slope * (chars - center_chars))``."""

    weight: float = 0.3  # AutoVLA: at most 0.3 taken off the reward
    slope: float = 0.002  # per character
    center_chars: float = 400.0  # length at which half the weight is taken


@dataclass
class PlanningRewardConfig:
    """AlphaDrive planning-reward settings (defaults = the paper).

    Weights are looked up by word first, then by the word's meaning in ``SPEED_SEMANTICS`` /
    ``PATH_SEMANTICS`` (so MindDrive words get AlphaDrive's weights), else ``unmapped_weight``.
    """

    speed_weights: dict = field(default_factory=lambda: {
        "keep": 0.8, "accelerate": 0.9, "decelerate": 1.0, "decelerate_hard": 1.0, "stop": 1.0,
    })
    path_weights: dict = field(default_factory=lambda: {
        "straight": 0.8, "left_turn": 1.0, "right_turn": 1.0, "left_change": 1.0, "right_change": 1.0,
    })
    unmapped_weight: float = 1.0  # words of a custom vocabulary with no known meaning
    # Diversity = 1 - min(diversity_cap, share of the group giving the same answer) (Algorithm 1, l. 22).
    diversity_cap: float = 0.2
    # Format reward: 1 if the stripped completion fully matches this pattern (re.S), else 0.
    format_pattern: str = r"<think>.*?</think>\s*<answer>.*?</answer>"
    # False (paper): answers with content defects (no comma, extra or unknown words) are scored by word
    # F1 on the answer body. True: anything parse_answer rejects scores zero accuracy.
    strict_grammar: bool = False
    # None (paper): no length penalty. Set to subtract AutoVLA's penalty from slow-thinking completions.
    reasoning_penalty: ReasoningPenaltyConfig | None = None


@dataclass
class TrajectoryRewardConfig:
    """Weights of the trajectory reward (chosen here, not from a paper; MindDrive's own reward is sparse
    -1 on infraction / +1 on route completion). total = progress_weight * progress
    - collision_penalty * collision - off_road_penalty * off_road - comfort_penalty * comfort
    - l2_penalty * min(l2, l2_cap_m) - takeover_penalty * takeover.
    """

    progress_weight: float = 1.0  # progress is in [0, 1]
    collision_penalty: float = 2.0  # collision is 0 or 1
    off_road_penalty: float = 1.0  # off_road is 0 or 1
    comfort_penalty: float = 0.2  # comfort cost is in [0, 2]
    l2_penalty: float = 0.1  # per metre of mean displacement from the driven future
    l2_cap_m: float = 10.0  # so one wild trajectory cannot dominate a group
    takeover_penalty: float = 3.0  # a safety-driver takeover outweighs any other outcome
    max_jerk: float = 4.13  # m/s^3, NAVSIM comfort bound on longitudinal jerk
    max_lateral_accel: float = 4.89  # m/s^2, NAVSIM comfort bound
    ego_length: float = 5.0  # m, highway-env vehicle box, centred on the waypoint
    ego_width: float = 2.0
    agent_length: float = 5.0  # used when the context gives no agent sizes
    agent_width: float = 2.0
    collision_substeps: int = 5  # boxes checked at this many points per waypoint interval (no tunnelling)


# ------------------------------------------------------------------------------------ planning rewards
def planning_rewards(
    completions: list[str],
    truth: str | Decision,
    vocab: DecisionVocabulary | None = None,
    config: PlanningRewardConfig | None = None,
) -> list[dict]:
    """AlphaDrive rewards for one GRPO group, one dict per completion, never raising on a completion.

    Keys: speed, path (predicted words), error (parse_answer's reason, "" if valid), speed_accuracy,
    path_accuracy (word F1), speed_weight, path_weight, diversity, format, speed_quality
    (= accuracy x weight x diversity), path_quality, length_penalty, total
    (= speed_quality + path_quality + format - length_penalty).
    ``truth`` is "<answer>SPEED, PATH</answer>", "SPEED, PATH" or a Decision; a truth without a speed
    and a path word of ``vocab`` raises ValueError (a data bug, not a policy failure).
    """
    vocab = vocab or DecisionVocabulary.preset("alphadrive")
    cfg = config or PlanningRewardConfig()
    true_speeds, true_paths = _truth_words(truth, vocab)
    completions = list(completions)
    read = [_read_completion(c, vocab, cfg.strict_grammar) for c in completions]
    keys = [(tuple(sorted(s)), tuple(sorted(p))) for s, p, _ in read]
    counts = Counter(keys)
    out = []
    for text, (speeds, paths, error), key in zip(completions, read, keys, strict=True):
        diversity = 1.0 - min(cfg.diversity_cap, counts[key] / len(completions))
        speed_acc = _word_f1(speeds, true_speeds)
        path_acc = _word_f1(paths, true_paths)
        speed_w = _mean_weight(speeds, cfg.speed_weights, SPEED_SEMANTICS, cfg.unmapped_weight)
        path_w = _mean_weight(paths, cfg.path_weights, PATH_SEMANTICS, cfg.unmapped_weight)
        fmt = format_reward(text, cfg.format_pattern)
        penalty = reasoning_penalty(text, cfg.reasoning_penalty) if cfg.reasoning_penalty else 0.0
        speed_q, path_q = speed_acc * speed_w * diversity, path_acc * path_w * diversity
        out.append({
            "speed": ", ".join(speeds), "path": ", ".join(paths), "error": error,
            "speed_accuracy": speed_acc, "path_accuracy": path_acc,
            "speed_weight": speed_w, "path_weight": path_w, "diversity": diversity, "format": fmt,
            "speed_quality": speed_q, "path_quality": path_q, "length_penalty": penalty,
            "total": speed_q + path_q + fmt - penalty,
        })
    return out


def format_reward(text, pattern: str = PlanningRewardConfig.format_pattern) -> float:
    """1.0 if the completion, stripped of outer whitespace, fully matches ``pattern`` (re.S), else 0.0.

    Full match rather than search: text before <think> or after </answer> does not earn the reward.
    """
    return float(isinstance(text, str) and re.fullmatch(pattern, text.strip(), re.S) is not None)


def _truth_words(truth, vocab: DecisionVocabulary) -> tuple[list[str], list[str]]:
    if isinstance(truth, Decision):
        body = f"{truth.speed}, {truth.path}"
    elif isinstance(truth, str):
        m = _ANSWER_BODY_RE.search(truth)
        body = m.group(1) if m else truth
    else:
        raise ValueError(f"truth must be an answer string or a Decision, got {type(truth).__name__}")
    speeds, paths = _vocab_words(body, vocab)
    if not speeds or not paths:
        raise ValueError(f"truth {truth!r} needs a speed and a path word of vocabulary {vocab.name!r}")
    return speeds, paths


def _read_completion(text, vocab: DecisionVocabulary, strict: bool) -> tuple[list[str], list[str], str]:
    """(speed words, path words, error reason). Structural defects (no, duplicated or misordered tags)
    leave nothing to score; content defects are scored by the vocabulary words in the answer body."""
    try:
        decision = parse_answer(text, vocab)
    except AnswerError as e:
        if strict or not isinstance(text, str) or isinstance(e, (MissingAnswerTag, UnbalancedTag)):
            return [], [], e.reason
        return (*_vocab_words(_ANSWER_BODY_RE.search(text).group(1), vocab), e.reason)
    return [decision.speed], [decision.path], ""


def _vocab_words(body: str, vocab: DecisionVocabulary) -> tuple[list[str], list[str]]:
    words = _WORD_RE.findall(body)
    return [w for w in words if w in vocab.speeds], [w for w in words if w in vocab.paths]


def _word_f1(pred: list[str], truth: list[str]) -> float:
    """Word-level F1 over multisets: outputting every word keeps recall but loses precision."""
    overlap = sum((Counter(pred) & Counter(truth)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)


def _mean_weight(words: list[str], weights: dict, semantics: dict, unmapped: float) -> float:
    if not words:
        return 0.0
    return float(np.mean([weights.get(w, weights.get(semantics.get(w), unmapped)) for w in words]))


# ---------------------------------------------------------------------------------- reasoning penalty
def reasoning_chars(text) -> int:
    """Characters of reasoning: the whitespace-stripped text of every <think> block, summed (an unclosed
    block runs to <answer> or the end). Tags and the answer do not count. 0 means fast thinking."""
    if not isinstance(text, str):
        return 0
    return sum(len(m.group(1).strip()) for m in _THINK_BLOCK_RE.finditer(text))


def reasoning_penalty(text, config: ReasoningPenaltyConfig | None = None) -> float:
    """AutoVLA's ``weight * sigmoid(slope * (chars - center))`` for slow thinking; 0.0 for fast thinking
    (no reasoning text). AutoVLA's code counts the whole decoded completion; counting only the reasoning
    keeps the penalty independent of the answer and action-token encoding."""
    cfg = config or ReasoningPenaltyConfig()
    chars = reasoning_chars(text)
    if chars == 0:
        return 0.0
    return cfg.weight * _sigmoid(cfg.slope * (chars - cfg.center_chars))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# --------------------------------------------------------------------------------- trajectory reward
@dataclass
class TrajectoryContext:
    """What the world did around one planned trajectory, all in the same ego frame (x fwd, y left).

    In simulation the agents and the driven future come from ground truth; offline, from the log
    (``future_poses_to_ego`` converts world poses).
    """

    route: np.ndarray | None = None  # (M, 2) route centreline polyline in driving order; ends extend as rays
    route_heading: float = 0.0  # rad; without a route, the route is the line through the ego at this heading
    road_half_width: float = 3.5  # m; farther than this from the centreline is off-road
    target_speed: float = 10.0  # m/s; progress 1 = target_speed * horizon metres along the route
    # (K, N, 3) x, y, heading of other agents at the waypoint times; (K, N, 2): heading from motion;
    # NaN rows = agent absent at that time
    agents: np.ndarray | None = None
    agent_sizes: np.ndarray | None = None  # (K, 2) length, width; config defaults if None
    driven: np.ndarray | Trajectory | None = None  # (N, 2|3) the actually driven future
    initial_speed: float | None = None  # m/s at t = 0; None = the first interval's speed
    takeover: bool = False  # a safety driver took over during this horizon

    def __post_init__(self):
        if self.route is not None:
            route = np.asarray(self.route, dtype=np.float64)
            if route.ndim != 2 or route.shape[1] != 2 or not np.all(np.isfinite(route)):
                raise ValueError(f"route must be a finite (M, 2) array, got shape {route.shape}")
            keep = np.concatenate([[True], np.linalg.norm(np.diff(route, axis=0), axis=1) > 1e-9])
            self.route = route[keep]
            if len(self.route) < 2:
                raise ValueError("route needs at least two distinct points")
        if self.agents is not None:
            self.agents = np.asarray(self.agents, dtype=np.float64)
            if self.agents.ndim != 3 or self.agents.shape[2] not in (2, 3):
                raise ValueError(f"agents must be (K, N, 2) or (K, N, 3), got {self.agents.shape}")
            if self.agent_sizes is not None:
                self.agent_sizes = np.asarray(self.agent_sizes, dtype=np.float64)
                if self.agent_sizes.shape != (len(self.agents), 2):
                    raise ValueError(f"agent_sizes must be (K, 2), got {self.agent_sizes.shape}")
        if isinstance(self.driven, Trajectory):
            self.driven = self.driven.poses
        if self.driven is not None:
            self.driven = np.asarray(self.driven, dtype=np.float64)
            shape_ok = self.driven.ndim == 2 and self.driven.shape[1] in (2, 3)
            if not shape_ok or not np.all(np.isfinite(self.driven)):
                raise ValueError(f"driven must be a finite (N, 2) or (N, 3) array, got {self.driven.shape}")
        if not self.target_speed >= 0 or not self.road_half_width > 0:
            raise ValueError("target_speed must be >= 0 and road_half_width > 0")


def trajectory_reward(
    traj: Trajectory, context: TrajectoryContext, config: TrajectoryRewardConfig | None = None
) -> dict:
    """Score one ego-frame trajectory. Keys: progress ([0, 1]), progress_m, collision (0/1), off_road (0/1),
    max_lateral_offset_m, comfort ([0, 2]), max_jerk, max_lateral_accel, l2 (None without a driven
    future), takeover (0/1), total; plus error="non_finite" (worst case scored) for a non-finite plan."""
    cfg = config or TrajectoryRewardConfig()
    n = traj.spec.num_waypoints
    for name, arr in (("agents", context.agents), ("driven", context.driven)):
        if arr is not None and arr.shape[-2] != n:
            raise ValueError(f"{name} has {arr.shape[-2]} time steps; the trajectory has {n}")
    takeover = float(context.takeover)
    if not np.all(np.isfinite(traj.poses)):
        terms = {"progress": 0.0, "progress_m": 0.0, "collision": 1.0, "off_road": 1.0,
                 "max_lateral_offset_m": math.inf, "comfort": 2.0, "max_jerk": math.inf,
                 "max_lateral_accel": math.inf, "l2": None if context.driven is None else cfg.l2_cap_m,
                 "takeover": takeover, "error": "non_finite"}
        return {**terms, "total": _weighted_total(terms, cfg)}

    route = context.route
    if route is None:
        route = np.array([[0.0, 0.0], [math.cos(context.route_heading), math.sin(context.route_heading)]])
    along, lateral = _project_on_route(np.vstack([[0.0, 0.0], traj.xy]), route)
    progress_m = float(along[-1] - along[0])
    target_m = context.target_speed * traj.spec.horizon
    progress = 1.0 if target_m < 0.1 else float(np.clip(progress_m / target_m, 0.0, 1.0))
    max_offset = float(lateral[1:].max())

    max_jerk, max_lat = _comfort_peaks(traj, context.initial_speed)
    comfort = (min(1.0, max(0.0, max_jerk / cfg.max_jerk - 1.0))
               + min(1.0, max(0.0, max_lat / cfg.max_lateral_accel - 1.0)))
    l2 = None
    if context.driven is not None:
        l2 = float(np.linalg.norm(traj.xy - context.driven[:, :2], axis=1).mean())
    collision = float(_collides(traj, context, cfg))
    terms = {"progress": progress, "progress_m": progress_m, "collision": collision,
             "off_road": float(max_offset > context.road_half_width), "max_lateral_offset_m": max_offset,
             "comfort": comfort, "max_jerk": max_jerk, "max_lateral_accel": max_lat, "l2": l2,
             "takeover": takeover}
    return {**terms, "total": _weighted_total(terms, cfg)}


def _weighted_total(t: dict, cfg: TrajectoryRewardConfig) -> float:
    l2 = 0.0 if t["l2"] is None else min(t["l2"], cfg.l2_cap_m)
    return (cfg.progress_weight * t["progress"] - cfg.collision_penalty * t["collision"]
            - cfg.off_road_penalty * t["off_road"] - cfg.comfort_penalty * t["comfort"]
            - cfg.l2_penalty * l2 - cfg.takeover_penalty * t["takeover"])


def _project_on_route(points: np.ndarray, route: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along the route and distance from it for each point; the first and last segments are
    extended as rays so a short route does not turn into false off-road."""
    start, seg = route[:-1], np.diff(route, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    t = np.einsum("psd,sd->ps", points[:, None, :] - start[None], seg) / seg_len**2
    lo, hi = np.zeros(len(seg)), np.ones(len(seg))
    lo[0], hi[-1] = -np.inf, np.inf
    t = np.clip(t, lo, hi)
    dist = np.linalg.norm(points[:, None, :] - (start[None] + t[..., None] * seg[None]), axis=2)
    nearest = dist.argmin(axis=1)
    rows = np.arange(len(points))
    arc_start = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    return arc_start[nearest] + t[rows, nearest] * seg_len[nearest], dist[rows, nearest]


def _comfort_peaks(traj: Trajectory, initial_speed: float | None) -> tuple[float, float]:
    """Peak |jerk| and |lateral accel| by finite differences on the waypoint grid (the accel sampling
    follows Trajectory.violations: the first interval's speed sits half an interval after t = 0)."""
    dt = traj.spec.dt
    v = traj.speeds()
    v0 = v[0] if initial_speed is None else float(initial_speed)
    dts = np.full(len(v), dt)
    dts[0] = dt / 2
    accel = np.diff(np.concatenate([[v0], v])) / dts
    jerk = np.diff(accel) / dt
    yaw_rate = wrap_angle(np.diff(np.concatenate([[0.0], traj.poses[:, 2]]))) / dt
    max_jerk = float(np.abs(jerk).max()) if len(jerk) else 0.0
    return max_jerk, float(np.abs(v * yaw_rate).max())


def _collides(traj: Trajectory, ctx: TrajectoryContext, cfg: TrajectoryRewardConfig) -> bool:
    """Oriented-box overlap (separating axes) between ego and each agent at waypoint times and
    ``collision_substeps`` interpolated points per interval (no check before the first waypoint)."""
    if ctx.agents is None or len(ctx.agents) == 0:
        return False
    agents = ctx.agents if ctx.agents.shape[2] == 3 else _with_motion_heading(ctx.agents)
    sizes = ctx.agent_sizes if ctx.agent_sizes is not None else np.tile([cfg.agent_length, cfg.agent_width],
                                                                          (len(agents), 1))
    steps = max(1, int(cfg.collision_substeps))
    ego = _densify(traj.poses, steps)[None]  # (1, T, 3)
    others = _densify(agents, steps)  # (K, T, 3)
    ego_box = _box_corners(ego, np.float64(cfg.ego_length), np.float64(cfg.ego_width))
    other_box = _box_corners(others, sizes[:, 0, None], sizes[:, 1, None])
    present = np.isfinite(others).all(axis=-1)
    return bool((_boxes_overlap(ego_box, ego[..., 2], other_box, others[..., 2]) & present).any())


def _with_motion_heading(xy: np.ndarray) -> np.ndarray:
    """Headings from each agent's displacement (the first step reuses the next one; 0 when still)."""
    step = np.diff(xy, axis=1)
    step = np.concatenate([step[:, :1], step], axis=1) if step.shape[1] else np.zeros_like(xy)
    return np.concatenate([xy, np.arctan2(step[..., 1], step[..., 0])[..., None]], axis=2)


def _densify(poses: np.ndarray, steps: int) -> np.ndarray:
    """Linear interpolation of (..., N, 3) poses (headings the short way round), ``steps`` per interval."""
    delta = np.diff(poses, axis=-2)
    delta[..., 2] = wrap_angle(delta[..., 2])
    alphas = (np.arange(steps) / steps)[:, None]
    inner = poses[..., :-1, None, :] + alphas * delta[..., None, :]  # (..., N-1, steps, 3)
    inner = inner.reshape(*poses.shape[:-2], -1, 3)
    return np.concatenate([inner, poses[..., -1:, :]], axis=-2)


def _box_corners(poses: np.ndarray, length, width) -> np.ndarray:
    """(..., 4, 2) corners of boxes centred on (x, y) and aligned with the heading."""
    cos, sin = np.cos(poses[..., 2])[..., None], np.sin(poses[..., 2])[..., None]
    along = np.asarray(length)[..., None] * np.array([0.5, 0.5, -0.5, -0.5])
    across = np.asarray(width)[..., None] * np.array([0.5, -0.5, -0.5, 0.5])
    x = poses[..., 0, None] + cos * along - sin * across
    y = poses[..., 1, None] + sin * along + cos * across
    return np.stack([x, y], axis=-1)


def _boxes_overlap(box_a, heading_a, box_b, heading_b) -> np.ndarray:
    """True where two boxes overlap: no edge normal of either box separates their projections."""
    heading_a, heading_b = np.broadcast_arrays(heading_a, heading_b)
    axes = np.stack([np.stack([np.cos(h), np.sin(h)], axis=-1) for h in
                     (heading_a, heading_a + np.pi / 2, heading_b, heading_b + np.pi / 2)], axis=-2)
    proj_a = np.einsum("...cd,...ad->...ac", box_a, axes)
    proj_b = np.einsum("...cd,...ad->...ac", box_b, axes)
    separated = (proj_a.max(-1) < proj_b.min(-1)) | (proj_b.max(-1) < proj_a.min(-1))
    return ~separated.any(-1)


# -------------------------------------------------------------------------------------- advantages
def group_advantages(rewards, eps: float = 1e-4) -> np.ndarray:
    """GRPO advantages ``(r - mean) / (std + eps)`` over the last axis (one row per group).

    std is the sample std (ddof=1), as torch's default used by TRL's GRPOTrainer and AutoVLA;
    a group of one, or of equal rewards, gets zeros.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be a finite 1-D or 2-D array, got {rewards!r}")
    if r.shape[-1] < 2:
        return np.zeros_like(r)
    centred = r - r.mean(axis=-1, keepdims=True)
    return centred / (r.std(axis=-1, ddof=1, keepdims=True) + eps)
