"""Prompt layout shared by training, every backend and the exported graphs, with the placeholder tokens
it is made of (the tokenizer adds them; the model finds its image, ego and query slots by them)."""
from __future__ import annotations

import itertools

from ..core.types import Observation
from ..core.vocabulary import ANSWER_CLOSE, ANSWER_OPEN, ANSWER_SEPARATOR, THINK_CLOSE, THINK_OPEN, Decision

IMAGE_TOKEN = "<image>"
EGO_TOKEN = "<ego>"
QUERY_TOKEN = "<traj_query>"


def prompt_text(obs: Observation, num_image_tokens: int) -> str:
    """Image placeholders, an ego-state slot, then speed and navigation as text."""
    nav = " ".join(obs.navigation.split())[:200] or "Follow the road."
    return (
        f"{IMAGE_TOKEN * num_image_tokens}{EGO_TOKEN}"
        f"Speed: {obs.speed:.1f} m/s. Navigation: {nav}\nDecide the speed and path.\n"
    )


def fast_answer_prefix() -> str:
    """Fast thinking: empty reasoning, then the answer opens; the decision words come next."""
    return f"{THINK_OPEN}{THINK_CLOSE}{ANSWER_OPEN}"


def answer_suffix(decision: Decision, reasoning: str = "") -> str:
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{decision.speed}{ANSWER_SEPARATOR}{decision.path}{ANSWER_CLOSE}"


def action_text(decision: Decision, num_queries: int) -> str:
    """What the action expert reads after the prompt: the decision, then its trajectory query slots."""
    return f"{answer_suffix(decision)}{QUERY_TOKEN * num_queries}"


def corpus_sentences() -> list[str]:
    speeds = [f"Speed: {v / 2:.1f} m/s." for v in range(0, 80)]
    navs = [
        f"{verb} {dist}m{tail}"
        for verb, dist, tail in itertools.product(
            ["Go straight for", "Follow the road for", "Keep the lane for", "Merge, then keep the lane for",
             "Turn left at the intersection in", "Turn right at the intersection in",
             "Take the first exit at the roundabout in", "Take the second exit at the roundabout in",
             "Go straight at the intersection in"],
            [10, 20, 25, 30, 50, 100, 200, 300, 400, 500],
            ["", ", then turn right", ", then turn left", "."],
        )
    ]
    reasons = [
        f"The {a} is {b}, so I {c}."
        for a, b, c in itertools.product(
            ["lane ahead", "car ahead", "left lane", "right lane", "intersection", "roundabout", "road"],
            ["clear", "slow", "close", "free", "busy", "blocked"],
            ["keep my speed", "accelerate", "slow down", "stop", "change lanes", "turn", "yield"],
        )
    ]
    return speeds + navs + reasons + ["Navigation: Decide the speed and path.\n"] * 10
