"""Closed-loop driving metrics (Bench2Drive style) and open-loop planning metrics (AlphaDrive style).

Driving score (DS) of one episode = route completion x infraction penalty, where the penalty multiplies
one coefficient per infraction occurrence (CARLA leaderboard convention). Success = the route was
completed (>= 99 %) with no infraction at all. Summaries give the mean DS with a 95 % confidence
interval from Student's t distribution (mean +- t_{0.975, n-1} * s / sqrt(n), s the sample standard
deviation), so that few-episode evaluations show how uncertain they are.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .vocabulary import Decision, DecisionVocabulary

# Multiplicative penalty per occurrence. Collision / off-road follow Bench2Drive's vehicle collision
# (0.60) and static collision (0.65); leaving the drivable area and route deviation cost like CARLA's
# "outside route lanes / scenario timeout" class (0.70); being blocked (no progress for a long time)
# too, since it usually means a deadlock the agent caused or could not resolve.
INFRACTION_PENALTY = {
    "collision": 0.60,
    "collision_static": 0.65,
    "off_road": 0.70,
    "route_deviation": 0.70,
    "blocked": 0.70,
}
SUCCESS_COMPLETION = 0.99

# Two-sided 95 % Student-t critical values t_{0.975, df} for df = 1..30; larger df use an expansion.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


@dataclass
class EpisodeResult:
    scenario: str
    seed: int
    route_completion: float  # 0..1
    infractions: dict = field(default_factory=dict)  # type -> count
    distance_m: float = 0.0
    duration_s: float = 0.0
    mean_jerk: float = 0.0  # mean |longitudinal jerk|, m/s^3
    collided: bool = False
    off_road: bool = False
    termination: str = ""  # completed | collision | timeout | blocked | route_deviation | off_road | error
    mean_speed: float = 0.0
    extras: dict = field(default_factory=dict)

    @property
    def penalty(self) -> float:
        return infraction_penalty(self.infractions)

    @property
    def driving_score(self) -> float:
        return driving_score(self)

    @property
    def success(self) -> bool:
        return success(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(driving_score=self.driving_score, success=self.success)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeResult:
        """Inverse of :meth:`to_dict` (the derived score and success are recomputed, not trusted)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def infraction_penalty(infractions: dict) -> float:
    """Product of the per-type coefficient raised to the number of occurrences; unknown types cost 0.7."""
    p = 1.0
    for kind, count in infractions.items():
        if count > 0:
            p *= INFRACTION_PENALTY.get(kind, 0.70) ** int(count)
    return p


def driving_score(result: EpisodeResult) -> float:
    completion = float(np.clip(result.route_completion, 0.0, 1.0))
    return completion * infraction_penalty(result.infractions)


def success(result: EpisodeResult) -> bool:
    return result.route_completion >= SUCCESS_COMPLETION and not any(c > 0 for c in result.infractions.values())


def t_critical_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value (table up to 30, Cornish-Fisher expansion beyond)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci95(values) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); half-width is nan with fewer than two values."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), t_critical_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)


def _stats(results: list[EpisodeResult]) -> dict:
    ds_mean, ds_half = mean_ci95(r.driving_score for r in results)
    km = sum(r.distance_m for r in results) / 1000.0
    collisions = sum(r.infractions.get("collision", 0) + r.infractions.get("collision_static", 0)
                     for r in results)
    infractions: dict[str, int] = {}
    for r in results:
        for k, c in r.infractions.items():
            infractions[k] = infractions.get(k, 0) + int(c)
    return {
        "episodes": len(results),
        "driving_score": ds_mean,
        "ds_ci95": ds_half,
        "success_rate": float(np.mean([r.success for r in results])) if results else float("nan"),
        "route_completion": float(np.mean([r.route_completion for r in results])) if results else float("nan"),
        "collisions_per_km": collisions / km if km > 0 else float("nan"),
        "mean_jerk": float(np.mean([r.mean_jerk for r in results])) if results else float("nan"),
        "distance_km": km,
        "infractions": infractions,
    }


def summarize(results: list[EpisodeResult]) -> dict:
    """{"per_scenario": {name: stats}, "overall": stats}; stats hold DS mean, its 95 % CI half-width,
    success rate, mean route completion, collisions per km, mean jerk, km driven, infraction counts."""
    by_scenario: dict[str, list[EpisodeResult]] = {}
    for r in results:
        by_scenario.setdefault(r.scenario, []).append(r)
    return {
        "per_scenario": {name: _stats(rs) for name, rs in by_scenario.items()},
        "overall": _stats(list(results)),
    }


def format_table(summary: dict) -> str:
    header = f"{'scenario':<14}{'n':>4}  {'DS (95% CI)':<18}{'SR':>6}{'RC':>7}{'coll/km':>9}{'jerk':>7}"
    lines = [header, "-" * len(header)]
    rows = list(summary.get("per_scenario", {}).items()) + [("overall", summary["overall"])]
    for name, s in rows:
        ci = "" if math.isnan(s["ds_ci95"]) else f" +- {s['ds_ci95']:.3f}"
        coll = "  n/a" if math.isnan(s["collisions_per_km"]) else f"{s['collisions_per_km']:.2f}"
        lines.append(f"{name:<14}{s['episodes']:>4}  {s['driving_score']:.3f}{ci:<12}{s['success_rate']:>6.2f}"
                     f"{s['route_completion']:>7.2f}{coll:>9}{s['mean_jerk']:>7.2f}")
    return "\n".join(lines)


def _f1(pred: list[str], truth: list[str], word: str) -> float:
    tp = sum(p == word and t == word for p, t in zip(pred, truth, strict=True))
    fp = sum(p == word and t != word for p, t in zip(pred, truth, strict=True))
    fn = sum(p != word and t == word for p, t in zip(pred, truth, strict=True))
    if tp + fp + fn == 0:
        return float("nan")  # class never predicted nor present: F1 undefined
    return 2 * tp / (2 * tp + fp + fn)


def planning_metrics(pred: list[Decision], truth: list[Decision], vocab: DecisionVocabulary) -> dict:
    """AlphaDrive planning metrics: accuracy (speed and path both right), per-part accuracies, and F1
    for every speed and path word (nan where the word is neither predicted nor present)."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predictions but {len(truth)} ground-truth decisions")
    if not truth:
        raise ValueError("planning_metrics needs at least one decision")
    ps, pp = [d.speed for d in pred], [d.path for d in pred]
    ts, tp = [d.speed for d in truth], [d.path for d in truth]
    f1 = {w: _f1(ps, ts, w) for w in vocab.speeds}
    f1.update({w: _f1(pp, tp, w) for w in vocab.paths})

    def macro(words):
        vals = [f1[w] for w in words if not math.isnan(f1[w])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "n": len(truth),
        "accuracy": float(np.mean([a == b and c == d for a, b, c, d in zip(ps, ts, pp, tp, strict=True)])),
        "speed_accuracy": float(np.mean([a == b for a, b in zip(ps, ts, strict=True)])),
        "path_accuracy": float(np.mean([a == b for a, b in zip(pp, tp, strict=True)])),
        "f1": f1,
        "speed_macro_f1": macro(vocab.speeds),
        "path_macro_f1": macro(vocab.paths),
    }
