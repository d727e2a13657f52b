"""What every policy backend does the same way with its model outputs: turn a decision table into a
DecisionResult, strip generated reasoning, and pick and limit the decision's trajectory mode."""
from __future__ import annotations

import time

import numpy as np

from ..core.trajectory import Trajectory
from ..core.types import DecisionResult
from ..core.vocabulary import Decision, greedy_candidate


def reasoning_from_ids(tokenizer, generated: list[int], vocab) -> str:
    """The reasoning text of generated ids: control tokens, answer tags and speed words dropped, so the
    forced answer that follows stays the only decision in the prompt (shared by every backend)."""
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    dropped = set(tokenizer.all_special_ids) | {close_id} | set(tokenizer.convert_tokens_to_ids(list(vocab.speeds)))
    text = tokenizer.decode([t for t in generated if t not in dropped])
    return text.replace("<answer>", "").replace("</answer>", "").strip()


def select_mode(modes: np.ndarray, decision: Decision, policy, speed: float) -> Trajectory:
    """Pick the decision's speed mode and enforce kinematic limits (violations kept for diagnostics)."""
    traj = Trajectory(modes[policy.vocab.speed_index(decision.speed)], policy.spec)
    policy.last_plan_violations = traj.violations(speed, policy.limits)
    return traj.clip_to_limits(speed, policy.limits) if policy.last_plan_violations else traj


def make_result(log_table: np.ndarray, vocab, sample: bool, rng, reasoning: str, start: float,
                model_version: str) -> DecisionResult:
    probs = np.exp(log_table - log_table.max())
    probs /= probs.sum()
    flat = probs.ravel()
    if sample:
        idx = int((rng or np.random.default_rng()).choice(flat.size, p=flat))
    else:
        idx = greedy_candidate(flat)
    speed, path = vocab.candidate(idx)
    return DecisionResult(
        decision=Decision(speed, path, reasoning), probs=probs, log_prob=float(log_table.ravel()[idx]),
        latency_ms=(time.perf_counter() - start) * 1e3, model_version=model_version,
    )
