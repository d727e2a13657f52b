"""Open-loop scores of a replay: the plan against the path driven (signed lateral and longitudinal error at
1/2/3 s, the share of plans leaving the lane), and, as AlphaDrive reports them, planning accuracy and F1 per
speed and path class against the logged decisions (or labels from the future ego motion), trajectory L2 at
1/2/3 s."""
from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np

from ..core.labels import label_from_future
from ..core.metrics import planning_metrics
from ..core.trajectory import TrajectorySpec, l2_at, plan_errors_at
from ..core.vocabulary import AnswerError, Decision, DecisionVocabulary
from ..experience import messages as m
from ..experience.reader import STAMP_MATCH_NS, LoggedDecision, TopicMap, read_samples
from .replay_input import BagInput

log = logging.getLogger(__name__)

REPLAY_TRUTHS = ("logged", "future")  # what a replayed decision is scored against (evaluate_replay)
LANE_HALF_WIDTH_M = 1.75  # a plan further than this to the side of the driven path leaves a 3.5 m lane


def _logged_decisions(source: BagInput, vocab: DecisionVocabulary) -> list[tuple[int, Decision]]:
    """(stamp ns, decision) logged in the input bag, time-sorted; words outside ``vocab`` are skipped."""
    out, skipped = [], Counter()
    for _role, t_ns, raw in source.messages(("decision",)):
        try:
            d = LoggedDecision.from_json(m.deserialize(raw, m.STRING).data, t_ns / 1e9)
            vocab.candidate_index(d.speed, d.path)
        except (ValueError, AnswerError) as err:
            skipped[type(err).__name__] += 1
            continue
        out.append((round(d.stamp * 1e9) if d.stamp is not None else t_ns, Decision(d.speed, d.path)))
    if skipped:
        log.warning("ignoring %d logged decisions as labels: %s", sum(skipped.values()), dict(skipped))
    return sorted(out, key=lambda row: row[0])


def _label(stamp_ns: int, logged: list, stamps: np.ndarray, period_ns: int) -> Decision | None:
    """The logged decision made from this frame, else the one in effect then (made within one period)."""
    if not logged:
        return None
    i = int(np.searchsorted(stamps, stamp_ns + STAMP_MATCH_NS, side="right")) - 1
    if i >= 0 and stamp_ns - stamps[i] <= period_ns + STAMP_MATCH_NS:
        return logged[i][1]
    return None


def evaluate_replay(out_bag, source: BagInput, vocab: DecisionVocabulary, spec: TrajectorySpec,
                    decision_period_s: float, decisions: list[dict] | None = None, truth: str = "logged",
                    lane_half_width_m: float = LANE_HALF_WIDTH_M) -> dict:
    """Open-loop scores of a replay: one sample per replayed decision, cut from the recorded bag.

    Label of a sample: with ``truth="logged"`` the decision the bag logged for that frame where there is
    one (an expert's or an annotator's), else the decision matching the logged future motion; with
    ``truth="future"`` always the latter (a bag whose logged decisions came from the model under test).

    The plan made from a sample's frame is also compared with where the car went according to the logged
    odometry (:func:`plan_vs_driven`): a plan that leaves the lane scores no worse on accuracy.

    Returns {"report": figures, "rows": per-sample rows for the plots}.
    """
    cameras = [source.schema[c] for c in source.cameras]  # as the replay recorded them
    recorded = TopicMap(image=cameras[0], more_cameras=tuple(cameras[1:]), takeover=None, events=None)
    samples = read_samples(out_bag, recorded, sample_period_s=decision_period_s,
                           horizon_s=spec.horizon, waypoint_dt_s=spec.dt, progress=False)
    logged = _logged_decisions(source, vocab) if truth == "logged" and "decision" in source.topics else []
    stamps = np.array([s for s, _ in logged], dtype=np.int64)
    period_ns = int(decision_period_s * 1e9)
    preds, labels, rows, sources, l2, plan_errors = [], [], [], Counter(), [], []
    t0 = samples[0].stamp if samples else 0.0
    for s in samples:
        if s.decision is None:
            continue
        label = _label(round(s.image_stamp * 1e9), logged, stamps, period_ns)
        sources["logged" if label is not None else "future_motion"] += 1
        if label is None:
            label = label_from_future(s.future_motion, s.speed, vocab, spec)
        pred = Decision(s.decision.speed, s.decision.path)
        full = s.trajectory is not None and s.trajectory.shape == s.future_motion.shape
        errors = l2_at(s.trajectory, s.future_motion, spec) if full else {}
        plan = plan_errors_at(s.trajectory, s.future_motion, spec) if full else {}
        if errors:
            l2.append(errors)
        if plan:
            plan_errors.append(plan)
        preds.append(pred)
        labels.append(label)
        rows.append({"t": s.stamp - t0, "pred": pred, "label": label, "l2": errors, "plan": plan})
    report = {"samples": len(preds), "label_source": dict(sources)}
    if preds:
        metrics = planning_metrics(preds, labels, vocab)
        report.update(planning_accuracy=metrics["accuracy"], speed_accuracy=metrics["speed_accuracy"],
                      path_accuracy=metrics["path_accuracy"], f1=metrics["f1"],
                      speed_macro_f1=metrics["speed_macro_f1"], path_macro_f1=metrics["path_macro_f1"])
    else:
        report.update(planning_accuracy=None, f1={})
        log.warning("no replayed decision has odometry %.1f s ahead: no planning metrics", spec.horizon)
    keys = sorted({k for e in l2 for k in e}, key=lambda k: float(k[3:-1]))
    report["l2_m"] = {k: round(float(np.mean([e[k] for e in l2 if k in e])), 4) for k in keys}
    report["l2_samples"] = len(l2)
    report.update(plan_vs_driven(plan_errors, lane_half_width_m))
    return {"report": _jsonable(report), "rows": rows}


def plan_vs_driven(errors: list[dict], lane_half_width_m: float = LANE_HALF_WIDTH_M) -> dict:
    """The report's figures of the plan against the driven path, from :func:`plan_errors_at` per sample.

    ``plan_error_m``: for ``lateral`` and ``longitudinal``, per horizon (``1s``, ``2s``, ``3s``) the mean,
    median and 90th percentile of the absolute error over the samples and the median of the signed error
    (its bias: > 0 = left of / ahead of the car); ``off_lane_share``: the share of plans whose lateral error
    exceeds ``lane_half_width_m`` at some waypoint (None without samples).
    """
    out = {"plan_error_m": {}, "plan_error_samples": len(errors), "lane_half_width_m": float(lane_half_width_m)}
    for axis in ("lateral", "longitudinal"):
        keys = sorted({k for e in errors for k in e if k.startswith(f"{axis}_")},
                      key=lambda k: float(k.split("_")[1][:-1]))
        out["plan_error_m"][axis] = {k.split("_")[1]: _error_stats([e[k] for e in errors if k in e]) for k in keys}
    wide = [e["max_abs_lateral"] > lane_half_width_m for e in errors if "max_abs_lateral" in e]
    out["off_lane_plans"] = int(sum(wide))
    out["off_lane_share"] = round(float(np.mean(wide)), 4) if wide else None
    out["plan_vs_driven"] = _summary(out)
    return out


def _summary(figures: dict) -> str:
    """One line for the command's output: the lateral error at the longest horizon and the off-lane share."""
    lateral = figures["plan_error_m"].get("lateral") or {}
    if not lateral or figures["off_lane_share"] is None:
        return "no plan with the logged odometry over its horizon"
    horizon, lat = list(lateral.items())[-1]
    lon = figures["plan_error_m"]["longitudinal"].get(horizon)
    side = "left" if lat["median"] > 0 else "right" if lat["median"] < 0 else "centred"
    text = (f"lateral error at {horizon[:-1]} s median {lat['median_abs']:.2f} m, p90 {lat['p90_abs']:.2f} m "
            f"(bias {lat['median']:+.2f} m, {side})")
    if lon:
        text += f", longitudinal median {lon['median_abs']:.2f} m"
    return (f"{text}; {figures['off_lane_plans']} of {figures['plan_error_samples']} plans "
            f"({100 * figures['off_lane_share']:.1f} %) leave the lane (|lateral| > {figures['lane_half_width_m']:g} m)")


def _error_stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    a = np.abs(v)
    return {"mean_abs": round(float(a.mean()), 4), "median_abs": round(float(np.median(a)), 4),
            "p90_abs": round(float(np.percentile(a, 90)), 4), "median": round(float(np.median(v)), 4)}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
