"""``vla-driver bench open-loop``: AlphaDrive's open-loop table (planning accuracy, F1 per class) of several
checkpoints on the same replay set, each deciding on identical samples without ROS."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from ..core.labels import label_from_future
from ..core.metrics import planning_metrics
from ..core.vocabulary import Decision
from ..experience.reader import TopicMap, find_bags, read_samples
from ..harness.record_sim import record_sim
from ..runtime.loading import load_policy
from . import emit, json_safe


def open_loop_metrics(checkpoints: dict, bags, backend: str = "torch", progress: bool = False,
                      truth: str = "logged") -> dict:
    """AlphaDrive's open-loop table: ``{name: planning_metrics}`` of each checkpoint on the same samples.

    The bags are read once; a sample's truth is its logged decision when that is in the vocabulary (the
    expert's, in ``record-sim`` bags) and ``truth="logged"``, else the decision matching the future ego
    motion. Each policy then
    decides on every sample without ROS (``policy.decide``), so the policies see identical inputs.
    """
    policies = {name: load_policy(path, backend) for name, path in checkpoints.items()}
    first_name, first = next(iter(policies.items()))
    vocab, spec = first.vocab, first.spec
    rigs = {(p.rig, p.history) for p in policies.values()}
    if len(rigs) > 1:
        raise ValueError("the checkpoints drive from different cameras or histories: score them on separate runs")
    cameras = first.rig.names if first.rig is not None else None
    samples = read_samples([str(b) for b in bags], TopicMap.for_cameras(cameras), horizon_s=spec.horizon,
                           waypoint_dt_s=spec.dt, history=first.history, progress=progress)
    truths = []
    for s in samples:
        d = s.decision
        logged = truth == "logged" and d is not None and d.speed in vocab.speeds and d.path in vocab.paths
        truths.append(Decision(d.speed, d.path) if logged else label_from_future(s.future_motion, s.speed, vocab, spec))
    table = {}
    for name, policy in policies.items():
        if policy.vocab.words != vocab.words:
            raise ValueError(f"{name} uses another decision vocabulary than {first_name}")
        preds = [policy.decide(s.observation()).decision for s in samples]
        table[name] = planning_metrics(preds, truths, vocab) if preds else {"n": 0}
    return table


def format_open_loop(table: dict) -> str:
    """One row per policy: accuracy, speed / path accuracy and macro F1, then F1 per word."""
    words = next((list(m["f1"]) for m in table.values() if m.get("n")), [])
    width = max([10] + [len(n) + 2 for n in table])
    head = f"{'policy':<{width}}{'n':>6}{'acc':>7}{'speed':>7}{'path':>7}{'sF1':>7}{'pF1':>7}" + "".join(
        f"{w[:8]:>9}" for w in words)
    lines = ["Open-loop planning (AlphaDrive metrics; F1 per class, - where a class is absent)", head]
    for name, m in table.items():
        if not m.get("n"):
            lines.append(f"{name:<{width}}{0:>6}  no samples")
            continue
        f1 = "".join(f"{'-' if math.isnan(m['f1'][w]) else format(m['f1'][w], '.3f'):>9}" for w in words)
        lines.append(f"{name:<{width}}{m['n']:>6}{m['accuracy']:>7.3f}{m['speed_accuracy']:>7.3f}{m['path_accuracy']:>7.3f}"
                     f"{m['speed_macro_f1']:>7.3f}{m['path_macro_f1']:>7.3f}{f1}")
    return "\n".join(lines)


def run(checkpoints: dict[str, str], bags: list, scenarios: list[str], seeds: list[int], seconds: float = 20.0,
        out: str = "", backend: str = "torch") -> dict:
    """Score ``checkpoints`` on ``bags`` (folders expand to their drives), or, with none given, on expert
    drives recorded now on the held-out ``seeds``; raises FileNotFoundError for a missing path."""
    bags = find_bags(bags)  # folders expand to their bags, so "bags" below counts bags, not arguments
    if not bags:
        work = Path(out or tempfile.mkdtemp(prefix="open_loop_"))
        for scenario in scenarios:
            for seed in seeds:
                bags.append(record_sim(work / f"{scenario}_{seed}", scenario, seconds, "expert", seed))
        print(f"recorded {len(bags)} expert drives in {work}")
    table = open_loop_metrics(checkpoints, bags, backend, progress=True)
    print(format_open_loop(table))
    record = {"bench": "open_loop", "bags": len(bags), "samples": next(iter(table.values()))["n"],
              "policies": json_safe({n: {k: v for k, v in m.items() if k != "n"} for n, m in table.items()})}
    emit(record)
    return record
