"""Offline RL refresh: logged bags -> samples -> (optional SFT warm-up) -> GRPO on the decision adapter.

Truth for a sample is, by default, the decision that matches what the car actually did next (labels from
the future ego motion; under a takeover that is the human's driving). Bags driven by a trusted decision
maker (the simulator's expert, or logs annotated with meta-actions) can use the logged decision instead
(``truth="logged"``): the motion label is a heuristic that often disagrees with a meta-action the driver
had already chosen. Rewards per candidate are AlphaDrive's planning rewards against that truth, minus a
strong penalty for the logged decision when a takeover followed it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.hashing import sha256_file
from ..core.labels import label_from_future
from ..core.rewards import PlanningRewardConfig, planning_rewards
from ..core.types import Observation
from ..core.vocabulary import Decision
from ..experience.reader import TopicMap, read_samples
from ..model.checkpoint import load_checkpoint, save_checkpoint
from .curves import save_curves
from .grpo import DecisionGRPO, GRPOConfig
from .parallel import DataParallel
from .sft import SFTConfig, SFTTrainer


@dataclass
class RefreshConfig:
    sft_steps: int = 0  # decision cross-entropy warm-up steps on the derived labels before GRPO
    grpo_steps: int = 200
    batch_size: int = 16
    takeover_penalty: float = 2.0  # subtracted from the reward of the logged decision that a takeover followed
    sample_period_s: float = 0.5
    truth: str = "future"  # "future": label from the logged motion; "logged": the logged decision where trusted
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass
class RefreshData:
    observations: list[Observation]
    truths: list[Decision]
    logged: list[Decision | None]
    takeover: np.ndarray
    sources: list[str]


TRUTH_SOURCES = ("future", "logged")


def load_experience(paths, vocab, spec, sample_period_s: float = 0.5, progress: bool = True,
                    truth: str = "future", cameras: tuple[str, ...] | None = None, history: int = 1) -> RefreshData:
    """``truth="logged"`` takes the logged decision as truth, except under a takeover (the driver who
    was overruled is not the truth there) or where the bag holds no valid decision: those keep the
    label from the future motion. ``cameras``: the model's rig cameras (None: the top-down image), each
    with ``history`` frames."""
    if truth not in TRUTH_SOURCES:
        raise ValueError(f"truth must be one of {TRUTH_SOURCES}, got {truth!r}")
    samples = read_samples(paths, TopicMap.for_cameras(cameras), sample_period_s=sample_period_s,
                           horizon_s=spec.horizon, waypoint_dt_s=spec.dt, history=history, progress=progress)
    if not samples:
        raise ValueError(f"no usable samples in {paths}")
    obs, truths, logged, takeover, sources = [], [], [], [], []
    for s in samples:
        obs.append(Observation(s.image, s.speed, s.navigation, s.accel, s.yaw_rate, s.stamp))
        d = s.decision
        logged.append(Decision(d.speed, d.path) if d is not None and d.speed in vocab.speeds
                      and d.path in vocab.paths else None)
        takeover.append(bool(s.intervention or s.takeover))
        trusted = truth == "logged" and logged[-1] is not None and not takeover[-1]
        truths.append(logged[-1] if trusted else label_from_future(s.future_motion, s.speed, vocab, spec))
        sources.append(s.source)
    return RefreshData(obs, truths, logged, np.array(takeover), sources)


def candidate_rewards(candidates: list[tuple[str, str]], truth: Decision, logged: Decision | None,
                      takeover: bool, cfg: RefreshConfig, reward_cfg: PlanningRewardConfig) -> np.ndarray:
    texts = [Decision(s, p).answer_text() for s, p in candidates]
    totals = np.array([r["total"] for r in planning_rewards(texts, truth.answer_text(), config=reward_cfg)])
    if takeover and logged is not None:
        totals -= cfg.takeover_penalty * np.array([(s, p) == (logged.speed, logged.path) for s, p in candidates])
    return totals


def hash_inputs(paths) -> dict:
    out = {}
    for root in paths:
        for f in sorted(Path(root).rglob("*")):
            if f.is_file() and f.suffix in (".mcap", ".db3", ".yaml"):
                out[str(f.relative_to(Path(root)))] = sha256_file(f)
    return out


def refresh(experience: list[str | Path], from_checkpoint: str | Path, out: str | Path,
            cfg: RefreshConfig | None = None, progress: bool = True, parallel: DataParallel | None = None) -> dict:
    """Train a new decision adapter from logged experience; writes a checkpoint with lineage + curves.
    Under ``accelerate launch`` every process draws its own batches; the main one saves."""
    cfg = cfg or RefreshConfig()
    parallel = parallel or DataParallel()
    progress = progress and parallel.is_main
    model = load_checkpoint(from_checkpoint)
    start = time.perf_counter()
    rig = model.cfg.camera_rig
    data = load_experience(experience, model.vocab, model.spec, cfg.sample_period_s, progress, cfg.truth,
                           rig.names if rig is not None else None, model.cfg.history)
    n = len(data.observations)
    history: dict[str, list[float]] = {"reward_mean": [], "kl": [], "policy_loss": []}
    if cfg.sft_steps:
        arrays = {
            "image": np.stack([o.image for o in data.observations]),
            "ego": np.stack([o.ego_features() for o in data.observations]),
            "navigation": np.array([o.navigation for o in data.observations]),
            "speed": np.array([d.speed for d in data.truths]), "path": np.array([d.path for d in data.truths]),
            "future": np.zeros((n, model.spec.num_waypoints, 3), np.float32),
        }
        sft = SFTTrainer(model, arrays, SFTConfig(action_steps=0, decision_steps=cfg.sft_steps,
                                                  batch_size=cfg.batch_size, init_decision_from_action=False),
                         parallel)
        sft.train(progress)
    trainer = DecisionGRPO(model, cfg.grpo, parallel)
    reward_cfg = PlanningRewardConfig()
    rng = np.random.default_rng(parallel.batch_seed(cfg.grpo.seed))
    bar = tqdm(range(cfg.grpo_steps), desc="GRPO refresh", disable=not progress)
    for _ in bar:
        idx = rng.choice(n, size=min(cfg.batch_size, n), replace=False)
        batch = [data.observations[i] for i in idx]

        def reward_fn(j, candidates, idx=idx):
            i = idx[j]
            return candidate_rewards(candidates, data.truths[i], data.logged[i], bool(data.takeover[i]), cfg,
                                     reward_cfg)

        stats = trainer.step(batch, reward_fn)
        for key in history:
            history[key].append(stats[key])
        bar.set_postfix(reward=f"{stats['reward_mean']:.3f}", kl=f"{stats['kl']:.3f}")
    trainer.finish()
    seconds = time.perf_counter() - start
    report = {"samples": n, "takeover_samples": int(data.takeover.sum()), "grpo_steps": cfg.grpo_steps,
              "seconds": seconds, "processes": parallel.num_processes,
              "samples_per_s": parallel.num_processes * cfg.grpo_steps * min(cfg.batch_size, n) / seconds,
              "final_reward_mean": float(np.mean(history["reward_mean"][-20:] or [np.nan]))}
    if not parallel.is_main:
        return report
    lineage = {"kind": "grpo_refresh", "parent": getattr(model, "model_version", None),
               "data": hash_inputs(experience), "refresh_config": json.loads(json.dumps(asdict(cfg))),
               "reward_config": asdict(reward_cfg)}
    save_checkpoint(model, out, lineage=lineage, metrics={"refresh": report})
    save_curves(history, Path(out).with_suffix(".refresh.png"), xlabel="GRPO step")
    return report

