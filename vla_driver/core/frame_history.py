"""Frame history: which past camera sets a model with T frames per camera sees, one rule for the simulator
(training data, evaluation, RL), the nodes on the car and the samples cut from bags.

At an instant ``now`` the model sees T camera sets one ``period_s`` apart, the oldest first: for k = T-1 .. 0
the newest set stamped at or before ``now - k * period_s`` (``MATCH_S`` of slack absorbs stamp jitter). A
drive younger than the history repeats its oldest set (a car that just started sees its first frame
T times). The views are camera-major, each camera's frames oldest first, as the model embeds them.
AutoVLA feeds 4 frames at 2 Hz; ``HISTORY_PERIOD_S`` is that period, our decision period.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

HISTORY_PERIOD_S = 0.5
MATCH_S = 0.05  # half a 10 Hz control step
MAX_HELD_SETS = 256  # a camera far faster than the history needs still holds a bounded number of sets


def history_picks(stamps: Sequence[float], now: float, frames: int, period_s: float = HISTORY_PERIOD_S) -> list[int]:
    """Indices into ``stamps`` (ascending, not empty) of the ``frames`` sets seen at ``now``, oldest first."""
    return [max(0, bisect_right(stamps, now - k * period_s + MATCH_S) - 1) for k in range(frames - 1, -1, -1)]


def stack_history(sets: Sequence[np.ndarray]) -> np.ndarray:
    """T camera sets (each (V, h, w, 3), oldest first) as the model's (V * T, h, w, 3) views, camera-major."""
    return np.stack([s[c] for c in range(sets[0].shape[0]) for s in sets])


class FrameHistory:
    """The camera sets a multi-frame model still needs, and the views it sees now (``history_picks``)."""

    def __init__(self, frames: int, period_s: float = HISTORY_PERIOD_S):
        if frames < 1 or period_s <= 0:
            raise ValueError(f"a history needs frames >= 1 and period_s > 0, got {frames} and {period_s}")
        self.frames, self.period_s = int(frames), float(period_s)
        self._stamps: list[float] = []
        self._sets: list[np.ndarray] = []

    def push(self, views: np.ndarray, stamp: float) -> None:
        """Add the camera set (V, h, w, 3) taken at ``stamp``. Time going backwards (a new episode, a bag
        played again) starts the history afresh; a set at the same stamp replaces the last."""
        stamps = self._stamps
        if stamps and stamp < stamps[-1]:
            self.clear()
        elif stamps and stamp == stamps[-1]:
            stamps.pop()
            self._sets.pop()
        stamps.append(float(stamp))
        self._sets.append(views)
        oldest_needed = stamp - (self.frames - 1) * self.period_s + MATCH_S
        # keep one set at or before the oldest instant still needed: it is what that instant picks
        while len(stamps) > 1 and (stamps[1] <= oldest_needed or len(stamps) > MAX_HELD_SETS):
            stamps.pop(0)
            self._sets.pop(0)

    def views(self, now: float | None = None) -> np.ndarray:
        """The model's views at ``now`` (default: the newest set's stamp); needs one pushed set."""
        if not self._sets:
            raise LookupError("no camera set yet")
        now = self._stamps[-1] if now is None else now
        return stack_history([self._sets[i] for i in history_picks(self._stamps, now, self.frames, self.period_s)])

    def clear(self) -> None:
        self._stamps.clear()
        self._sets.clear()

    def copy(self) -> FrameHistory:
        """An independent history with the same sets (the arrays are shared: sets are never changed)."""
        other = FrameHistory(self.frames, self.period_s)
        other._stamps, other._sets = list(self._stamps), list(self._sets)
        return other
