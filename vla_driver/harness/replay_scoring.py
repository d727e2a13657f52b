"""Open-loop scores of a replay, as AlphaDrive reports them: planning accuracy and F1 per speed and path
class against the logged decisions (or labels from the future ego motion), trajectory L2 at 1/2/3 s."""
from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np

from ..core.labels import label_from_future
from ..core.metrics import planning_metrics
from ..core.trajectory import TrajectorySpec, l2_at
from ..core.vocabulary import AnswerError, Decision, DecisionVocabulary
from ..experience import messages as m
from ..experience.reader import STAMP_MATCH_NS, LoggedDecision, TopicMap, read_samples
from .replay_input import BagInput

log = logging.getLogger(__name__)

REPLAY_TRUTHS = ("logged", "future")  # what a replayed decision is scored against (evaluate_replay)


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
                    decision_period_s: float, decisions: list[dict] | None = None, truth: str = "logged") -> dict:
    """Open-loop scores of a replay: one sample per replayed decision, cut from the recorded bag.

    Label of a sample: with ``truth="logged"`` the decision the bag logged for that frame where there is
    one (an expert's or an annotator's), else the decision matching the logged future motion; with
    ``truth="future"`` always the latter (a bag whose logged decisions came from the model under test).

    Returns {"report": figures, "rows": per-sample rows for the plots}.
    """
    samples = read_samples(out_bag, TopicMap(takeover=None, events=None), sample_period_s=decision_period_s,
                           horizon_s=spec.horizon, waypoint_dt_s=spec.dt, progress=False)
    logged = _logged_decisions(source, vocab) if truth == "logged" and "decision" in source.topics else []
    stamps = np.array([s for s, _ in logged], dtype=np.int64)
    period_ns = int(decision_period_s * 1e9)
    preds, labels, rows, sources, l2 = [], [], [], Counter(), []
    t0 = samples[0].stamp if samples else 0.0
    for s in samples:
        if s.decision is None:
            continue
        label = _label(round(s.image_stamp * 1e9), logged, stamps, period_ns)
        sources["logged" if label is not None else "future_motion"] += 1
        if label is None:
            label = label_from_future(s.future_motion, s.speed, vocab, spec)
        pred = Decision(s.decision.speed, s.decision.path)
        errors = (l2_at(s.trajectory, s.future_motion, spec)
                  if s.trajectory is not None and s.trajectory.shape == s.future_motion.shape else {})
        if errors:
            l2.append(errors)
        preds.append(pred)
        labels.append(label)
        rows.append({"t": s.stamp - t0, "pred": pred, "label": label, "l2": errors})
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
    return {"report": _jsonable(report), "rows": rows}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
