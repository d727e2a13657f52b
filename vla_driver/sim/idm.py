"""The Intelligent Driver Model (IDM): the gap-keeping acceleration the expert drives by, and assumes of
the cars it predicts."""
from __future__ import annotations

import math

IDM_ACCEL, IDM_BRAKE, IDM_GAP, IDM_HEADWAY = 2.0, 3.0, 4.0, 1.2
DEPART_ACCEL = 3.0  # m/s^2 assumed (and used) when pulling away across a junction


def idm_accel(v: float, v0: float, gap: float | None = None, v_lead: float = 0.0, s0: float = IDM_GAP,
              a_max: float = IDM_ACCEL) -> float:
    """Intelligent Driver Model acceleration; ``gap`` is bumper-to-bumper (None = free road)."""
    free = 1.0 - (v / max(v0, 0.1)) ** 4
    if gap is None:
        return a_max * free
    s_star = s0 + max(0.0, v * IDM_HEADWAY + v * (v - v_lead) / (2 * math.sqrt(a_max * IDM_BRAKE)))
    return float(max(a_max * (free - (s_star / max(gap, 0.1)) ** 2), -9.0))
