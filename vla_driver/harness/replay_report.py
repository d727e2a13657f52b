"""What a user reads after a replay: report.json, report.md and the planning and timeline plots. The first
table is the plan against the path the car drove: a plan can agree with the logged decision (planning
accuracy 1.0) and still leave the lane."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

from ..core.vocabulary import DecisionVocabulary

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def write_report(out_dir, report: dict, rows: list[dict], vocab: DecisionVocabulary) -> Path:
    """report.json, report.md and two PNGs (planning.png: confusion + F1; timeline.png) in ``out_dir``."""
    out_dir = Path(out_dir)
    report = {**report, "plots": _plot(out_dir, report, rows, vocab)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(_markdown(report, vocab))
    return out_dir / "report.md"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(r: dict, vocab: DecisionVocabulary) -> str:
    lat = [("decision", r.get("decision_latency_ms")), ("plan (action node)", r.get("plan_latency_ms")),
           ("frame, lockstep round trip", r.get("frame_latency_ms"))]
    lines = [
        f"# Replay of {r['source']}", "",
        f"- bag: `{r['bag']}`; mode: {r['mode']}; model {r['model_version']} on {r['backend']}",
        f"- {r['frames']} frames over {_fmt(r['bag_seconds'], 1)} s of bag in {_fmt(r['wall_seconds'], 1)} s: "
        f"**{_fmt(r['realtime_factor'], 2)}x real time**",
        f"- outputs: {r['decisions']} decisions, {r['trajectories']} trajectories ({r['fallbacks']} fallbacks), "
        f"{r['commands']} commands; waits that timed out: {r['timeouts'] or 'none'}",
        f"- outputs digest: `{r['outputs_digest']}`",
        *([f"- left out of the bag: {r['bag_left_out']}"] if r.get("bag_left_out") else []), "",
        *_plan_vs_driven_markdown(r),
        "## Planning (open loop, AlphaDrive metrics)", "",
        f"{r['samples']} samples, one per replayed decision whose future the odometry covers; "
        f"labels: {r['label_source'] or 'none'} (logged = the decision logged for that frame or in effect then, "
        "future_motion = derived from where the car went)", "",
        "| planning accuracy | speed accuracy | path accuracy | speed macro-F1 | path macro-F1 |",
        "|---|---|---|---|---|",
        f"| {_fmt(r.get('planning_accuracy'))} | {_fmt(r.get('speed_accuracy'))} | {_fmt(r.get('path_accuracy'))} "
        f"| {_fmt(r.get('speed_macro_f1'))} | {_fmt(r.get('path_macro_f1'))} |", "",
        "| class | F1 |", "|---|---|",
        *[f"| {w} | {_fmt(r['f1'].get(w))} |" for w in vocab.words if w in r.get("f1", {})], "",
        "## Trajectory L2 against the future ego path", "",
        "| " + " | ".join(r["l2_m"]) + " |" if r.get("l2_m") else "no trajectory with a full future",
        "|" + "---|" * len(r["l2_m"]) if r.get("l2_m") else "",
        "| " + " | ".join(f"{v:.3f} m" for v in r["l2_m"].values()) + " |" if r.get("l2_m") else "",
        f"({r['l2_samples']} trajectories)", "",
        "## Latency", "", "| what | p50 ms | p99 ms |", "|---|---|---|",
        *[f"| {name} | {_fmt(v.get('p50'), 1)} | {_fmt(v.get('p99'), 1)} |" for name, v in lat if v], "",
        *[f"![{p}]({p})" for p in r.get("plots", [])], "",
    ]
    return "\n".join(lines)


def off_lane_text(r: dict) -> str:
    """How many plans leave the lane, e.g. ``4 of 14 plans (28.6 %)``; ``n/a`` without plans to compare."""
    share = r.get("off_lane_share")
    if share is None:
        return "n/a"
    return f"{r.get('off_lane_plans')} of {r.get('plan_error_samples')} plans ({100 * share:.1f} %)"


def _plan_vs_driven_markdown(r: dict) -> list[str]:
    """The plan against where the car went (ego frame at the frame's time), before the decision metrics."""
    errors = r.get("plan_error_m") or {}
    lateral, longitudinal = errors.get("lateral") or {}, errors.get("longitudinal") or {}
    lines = ["## Plan against the driven path", ""]
    if not lateral:
        return lines + ["no plan with the logged odometry over its whole horizon: nothing to compare", ""]

    def cells(stats: dict | None) -> str:
        if not stats:
            return "n/a | n/a | n/a | n/a"
        return " | ".join(f"{stats[k]:+.2f} m" if k == "median" else f"{stats[k]:.2f} m"
                          for k in ("mean_abs", "median_abs", "p90_abs", "median"))

    return lines + [
        f"{r['plan_error_samples']} plans (one per replayed decision whose future the logged odometry covers) "
        "against where that odometry puts the car at each horizon, both in the ego frame at the frame's time: "
        "lateral > 0 = the plan lies left of the driven path, longitudinal > 0 = ahead of it; "
        "median = the signed median (bias).", "",
        f"**plans leaving the lane** (|lateral error| > {_fmt(r.get('lane_half_width_m'), 2)} m at any waypoint): "
        f"**{off_lane_text(r)}**; planning accuracy {_fmt(r.get('planning_accuracy'))}", "",
        "| horizon | lateral mean abs | lateral median abs | lateral p90 abs | lateral median "
        "| longitudinal mean abs | longitudinal median abs | longitudinal p90 abs | longitudinal median |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {h[:-1]} s | {cells(lateral.get(h))} | {cells(longitudinal.get(h))} |" for h in lateral], "",
    ]


def _plot(out_dir: Path, report: dict, rows: list[dict], vocab: DecisionVocabulary) -> list[str]:
    names = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, words, part in ((axes[0], vocab.speeds, "speed"), (axes[1], vocab.paths, "path")):
        conf = np.zeros((len(words), len(words)), dtype=int)
        for row in rows:
            conf[words.index(getattr(row["label"], part)), words.index(getattr(row["pred"], part))] += 1
        ax.imshow(conf, cmap="Blues")
        for (i, j), v in np.ndenumerate(conf):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(words)), words, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.set_xlabel("replayed decision")
        ax.set_ylabel("label")
        ax.set_title(f"{part} (accuracy {_fmt(report.get(f'{part}_accuracy'), 2)})")
    f1 = report.get("f1", {})
    words = [w for w in vocab.words if f1.get(w) is not None]
    axes[2].barh(words, [f1[w] for w in words], color=["tab:blue" if w in vocab.speeds else "tab:orange"
                                                       for w in words])
    axes[2].set_xlim(0, 1)
    axes[2].set_title(f"F1 per class (planning accuracy {_fmt(report.get('planning_accuracy'), 2)})")
    fig.tight_layout()
    fig.savefig(out_dir / "planning.png", dpi=90)
    plt.close(fig)
    names.append("planning.png")

    fig, axes = plt.subplots(4, 1, figsize=(11, 9), sharex=True)
    t = [row["t"] for row in rows]
    for ax, words, part in ((axes[0], vocab.speeds, "speed"), (axes[1], vocab.paths, "path")):
        ax.step(t, [words.index(getattr(row["label"], part)) for row in rows], where="post", label="label")
        ax.plot(t, [words.index(getattr(row["pred"], part)) for row in rows], "o", ms=3, label="replayed")
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
    keys = sorted({k for row in rows for k in row["l2"]})
    for key in keys:
        axes[2].plot([row["t"] for row in rows if key in row["l2"]], [row["l2"][key] for row in rows
                                                                       if key in row["l2"]], label=key)
    axes[2].set_ylabel("L2 (m)")
    if keys:
        axes[2].legend(loc="upper right", fontsize=7)
    lateral = [(row["t"], row["plan"]["lateral_3s"]) for row in rows if "lateral_3s" in row.get("plan", {})]
    half = report.get("lane_half_width_m") or 0.0
    if lateral:
        axes[3].plot(*zip(*lateral, strict=True), "o-", ms=3, label="plan - driven at 3 s")
        axes[3].legend(loc="upper right", fontsize=7)
    for y in (-half, half):
        axes[3].axhline(y, color="tab:red", ls="--", lw=0.8)
    axes[3].axhline(0.0, color="0.6", lw=0.6)
    axes[3].set_ylabel("lateral error 3 s (m)\n+ = plan left of path")
    axes[3].set_title(f"plan against the driven path: plans leaving the lane (|lateral| > {half:g} m) "
                      f"{off_lane_text(report)}", fontsize=9)
    axes[3].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out_dir / "timeline.png", dpi=90)
    plt.close(fig)
    names.append("timeline.png")
    return names
