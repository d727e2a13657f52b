"""Finite driving-decision vocabulary (speed x path) and the strict answer grammar.

The decision expert never emits free text as a decision: it chooses one (speed, path) pair from the
sets below. Text answers (slow thinking, logged data, RL completions) are parsed by
:func:`parse_answer`, which raises :class:`AnswerError` subclasses naming exactly what is wrong.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

ALPHADRIVE_SPEEDS = ("KEEP", "ACCELERATE", "DECELERATE", "STOP")
ALPHADRIVE_PATHS = ("STRAIGHT", "LEFT_TURN", "RIGHT_TURN", "LEFT_CHANGE", "RIGHT_CHANGE")
MINDDRIVE_SPEEDS = (
    "maintain_moderate_speed", "stop", "maintain_slow_speed", "speed_up", "slow_down",
    "maintain_fast_speed", "slow_down_rapidly",
)
MINDDRIVE_PATHS = (
    "lanefollow", "straight", "turn_left", "change_lane_left", "turn_right", "change_lane_right",
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ANSWER_SEPARATOR = ", "
# Candidates whose probabilities are this close are a tie. fp32 backends (torch, ONNX Runtime, TensorRT)
# differ by up to ~3e-5 here, and exact ties occur (1 frame in 1000 had a top-2 margin of 8e-7).
TIE_TOLERANCE = 1e-4

# Target speed change (m/s over the horizon) each speed word implies; used by experts, fallbacks and
# label derivation so that every vocabulary maps onto the same physical meaning.
SPEED_SEMANTICS = {
    "KEEP": "keep", "ACCELERATE": "accelerate", "DECELERATE": "decelerate", "STOP": "stop",
    "maintain_moderate_speed": "keep", "maintain_slow_speed": "keep", "maintain_fast_speed": "keep",
    "stop": "stop", "speed_up": "accelerate", "slow_down": "decelerate",
    "slow_down_rapidly": "decelerate_hard",
}
PATH_SEMANTICS = {
    "STRAIGHT": "straight", "LEFT_TURN": "left_turn", "RIGHT_TURN": "right_turn",
    "LEFT_CHANGE": "left_change", "RIGHT_CHANGE": "right_change",
    "lanefollow": "straight", "straight": "straight", "turn_left": "left_turn",
    "change_lane_left": "left_change", "turn_right": "right_turn", "change_lane_right": "right_change",
}


class AnswerError(ValueError):
    """A decision answer that does not follow the grammar; ``reason`` names the defect."""

    reason = "malformed"

    def __init__(self, message: str, text: str = ""):
        super().__init__(message)
        self.text = text


class MissingAnswerTag(AnswerError):
    reason = "missing_answer_tag"


class UnbalancedTag(AnswerError):
    reason = "unbalanced_tag"


class MissingSeparator(AnswerError):
    reason = "missing_separator"


class UnknownSpeed(AnswerError):
    reason = "unknown_speed"


class UnknownPath(AnswerError):
    reason = "unknown_path"


@dataclass(frozen=True)
class Decision:
    speed: str
    path: str
    reasoning: str = ""

    def answer_text(self, with_think: bool = True) -> str:
        think = f"{THINK_OPEN}{self.reasoning}{THINK_CLOSE}" if with_think else ""
        return f"{think}{ANSWER_OPEN}{self.speed}{ANSWER_SEPARATOR}{self.path}{ANSWER_CLOSE}"


@dataclass(frozen=True)
class DecisionVocabulary:
    """Ordered speed and path sets; candidate index = speed_index * len(paths) + path_index."""

    speeds: tuple[str, ...] = ALPHADRIVE_SPEEDS
    paths: tuple[str, ...] = ALPHADRIVE_PATHS
    name: str = "alphadrive"
    _speed_index: dict = field(default=None, init=False, repr=False, compare=False)
    _path_index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for label, words in (("speed", self.speeds), ("path", self.paths)):
            if not words:
                raise ValueError(f"{label} vocabulary is empty")
            if len(set(words)) != len(words):
                raise ValueError(f"{label} vocabulary has duplicates: {words}")
            for w in words:
                if not re.fullmatch(r"[A-Za-z_]+", w):
                    raise ValueError(f"{label} word {w!r} must be letters and underscores only")
        if set(self.speeds) & set(self.paths):
            raise ValueError("speed and path vocabularies overlap")
        object.__setattr__(self, "speeds", tuple(self.speeds))
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "_speed_index", {w: i for i, w in enumerate(self.speeds)})
        object.__setattr__(self, "_path_index", {w: i for i, w in enumerate(self.paths)})

    @classmethod
    def preset(cls, name: str) -> DecisionVocabulary:
        if name == "alphadrive":
            return cls(ALPHADRIVE_SPEEDS, ALPHADRIVE_PATHS, "alphadrive")
        if name == "minddrive":
            return cls(MINDDRIVE_SPEEDS, MINDDRIVE_PATHS, "minddrive")
        raise ValueError(f"unknown vocabulary preset {name!r}; use 'alphadrive' or 'minddrive'")

    @classmethod
    def from_dict(cls, d: dict) -> DecisionVocabulary:
        return cls(tuple(d["speeds"]), tuple(d["paths"]), d.get("name", "custom"))

    def to_dict(self) -> dict:
        return {"name": self.name, "speeds": list(self.speeds), "paths": list(self.paths)}

    @property
    def num_candidates(self) -> int:
        return len(self.speeds) * len(self.paths)

    @property
    def words(self) -> tuple[str, ...]:
        return self.speeds + self.paths

    def speed_index(self, speed: str) -> int:
        try:
            return self._speed_index[speed]
        except KeyError:
            raise UnknownSpeed(f"unknown speed {speed!r}; expected one of {list(self.speeds)}") from None

    def path_index(self, path: str) -> int:
        try:
            return self._path_index[path]
        except KeyError:
            raise UnknownPath(f"unknown path {path!r}; expected one of {list(self.paths)}") from None

    def candidate_index(self, speed: str, path: str) -> int:
        return self.speed_index(speed) * len(self.paths) + self.path_index(path)

    def candidate(self, index: int) -> tuple[str, str]:
        if not 0 <= index < self.num_candidates:
            raise IndexError(f"candidate index {index} out of range 0..{self.num_candidates - 1}")
        return self.speeds[index // len(self.paths)], self.paths[index % len(self.paths)]

    def candidates(self) -> list[tuple[str, str]]:
        return [(s, p) for s in self.speeds for p in self.paths]

    def find_speed(self, semantic: str) -> str:
        """The first speed word with the given meaning ('keep', 'stop', ...)."""
        for s in self.speeds:
            if SPEED_SEMANTICS.get(s) == semantic:
                return s
        if semantic == "decelerate_hard":
            return self.find_speed("decelerate")
        raise KeyError(f"vocabulary {self.name!r} has no speed meaning {semantic!r}")

    def find_path(self, semantic: str) -> str:
        for p in self.paths:
            if PATH_SEMANTICS.get(p) == semantic:
                return p
        raise KeyError(f"vocabulary {self.name!r} has no path meaning {semantic!r}")

    def parse_answer(self, text: str) -> Decision:
        return parse_answer(text, self)


_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.S)


def parse_answer(text: str, vocab: DecisionVocabulary) -> Decision:
    """Parse ``[<think>..</think>]<answer>SPEED, PATH</answer>`` strictly.

    Raises an :class:`AnswerError` subclass whose message names the defect; never anything else.
    """
    if not isinstance(text, str):
        raise AnswerError(f"answer must be a string, got {type(text).__name__}", "")
    for open_tag, close_tag in ((THINK_OPEN, THINK_CLOSE), (ANSWER_OPEN, ANSWER_CLOSE)):
        n_open, n_close = text.count(open_tag), text.count(close_tag)
        if n_open != n_close:
            raise UnbalancedTag(f"{n_open} {open_tag} but {n_close} {close_tag}", text)
        if n_open > 1:
            raise UnbalancedTag(f"{open_tag} appears {n_open} times; expected at most once", text)
    m = _ANSWER_RE.search(text)
    if m is None:
        raise MissingAnswerTag("no <answer>...</answer> block", text)
    think = _THINK_RE.search(text)
    if think is not None and think.end() > m.start():
        raise UnbalancedTag("<think> block must close before <answer>", text)
    body = m.group(1).strip()
    parts = [p.strip() for p in body.split(",")]
    if len(parts) != 2:
        raise MissingSeparator(f"answer {body!r} must be 'SPEED, PATH' (one comma)", text)
    speed, path = parts
    vocab.speed_index(speed)
    vocab.path_index(path)
    return Decision(speed, path, think.group(1).strip() if think else "")


def greedy_candidate(probs, tolerance: float = TIE_TOLERANCE) -> int:
    """Flat index of the most probable candidate. Near-ties go to the first in vocabulary order, so two
    backends whose probabilities differ only by float rounding pick the same decision."""
    flat = np.asarray(probs, dtype=np.float64).ravel()
    return int(np.flatnonzero(flat >= flat.max() - tolerance)[0])
