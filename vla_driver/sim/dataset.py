"""Record the expert into an imitation (SFT) dataset of numpy ``.npz`` shards.

One sample per decision step (``frame_hz``, 2 Hz by default): the camera image, ego features
(speed, accel, yaw rate), the navigation text, the expert's decision (speed, path) with its
templated reasoning, and the ACTUAL ego trajectory over the next ``spec.num_waypoints`` x ``spec.dt``
seconds in the ego frame at that instant (only instants with a full future are kept), plus scenario,
seed and time. Strings are fixed-width unicode arrays, so ``np.load(..., allow_pickle=False)`` works.

Arrays (n samples): image (n,H,W,3) uint8; ego (n,3) float32 = speed, accel, yaw_rate; navigation,
speed, path, reasoning, scenario: unicode; decision_index int16 (vocabulary candidate index); future
(n,N,3) float32 = x, y, heading in the ego frame; seed int64; time float32; recovering bool (the
sample follows a perturbation).

DAgger-lite perturbations (``perturb_prob`` > 0): at a decision step, with that probability, the
executed command is perturbed for ``PERTURB_S`` (a yaw-rate offset and a speed offset) while the expert
keeps deciding and planning. Samples whose future overlaps a perturbation are dropped (their
trajectory would teach the perturbation); the samples right after one show the expert recovering from
an off-centre, off-speed state, which is what a pure imitation policy otherwise never sees.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.camera_rig import CameraRig
from ..core.control import PurePursuitPID
from ..core.trajectory import TrajectorySpec, future_poses_to_ego
from ..core.types import CAMERA_SIZE
from ..core.vocabulary import DecisionVocabulary
from .expert import ExpertPolicy
from .highway import DrivingSim
from .shards import write_shard

log = logging.getLogger(__name__)

PERTURB_S = 1.0
PERTURB_YAW_RATE = 0.15  # rad/s, magnitude of the steering perturbation
PERTURB_SPEED = 3.0  # m/s, magnitude of the speed-command perturbation


def _record_episode(sim: DrivingSim, expert: ExpertPolicy, seed: int, spec: TrajectorySpec, frame_hz: float,
                    perturb_prob: float, rng: np.random.Generator) -> list[dict]:
    sim.reset(seed)
    expert.attach(sim)
    controller = PurePursuitPID()
    decision = None
    decision_period = 1.0 / frame_hz
    next_decision = 0.0
    perturb_until, perturb = -1.0, (0.0, 0.0)
    candidates, poses, times, perturbed = [], [], [], []
    while not sim.done:
        now = sim.time
        x, y, yaw, speed = sim.ego_pose()
        poses.append((x, y, yaw))
        times.append(now)
        perturbed.append(now < perturb_until)
        if decision is None or now >= next_decision - 1e-6:
            obs = sim.observation()
            result = expert.decide(obs, think=True)
            decision = result.decision
            next_decision = now + decision_period
            candidates.append({"step": len(poses) - 1, "image": obs.image, "speed": obs.speed, "accel": obs.accel,
                               "yaw_rate": obs.yaw_rate, "navigation": obs.navigation, "decision": decision,
                               "time": now})
            if perturb_prob > 0 and now >= perturb_until and rng.random() < perturb_prob:
                perturb_until = now + PERTURB_S
                perturb = (rng.choice([-1.0, 1.0]) * PERTURB_YAW_RATE, rng.uniform(-1.0, 1.0) * PERTURB_SPEED)
        traj = expert.plan(None, decision)
        speed_cmd, yaw_rate = controller.command(traj, speed, sim.dt)
        if now < perturb_until:
            yaw_rate += perturb[0]
            speed_cmd = max(0.0, speed_cmd + perturb[1])
        sim.step(speed_cmd, yaw_rate)
    x, y, yaw, _ = sim.ego_pose()
    poses.append((x, y, yaw))
    perturbed.append(False)
    poses_arr = np.asarray(poses)
    stride = int(round(spec.dt / sim.dt))
    samples = []
    for c in candidates:
        idx = c["step"] + stride * np.arange(1, spec.num_waypoints + 1)
        if idx[-1] >= len(poses_arr) or any(perturbed[c["step"]:idx[-1] + 1]):
            continue
        ego = poses_arr[c["step"]]
        future = future_poses_to_ego(poses_arr[idx, :2], poses_arr[idx, 2], ego[:2], ego[2])
        c["future"] = future.astype(np.float32)
        c["recovering"] = any(perturbed[max(0, c["step"] - 2 * stride):c["step"]])
        samples.append(c)
    return samples


def _record_dagger_episode(sim: DrivingSim, expert: ExpertPolicy, driver, seed: int, frame_hz: float,
                           expert_share: float, rng: np.random.Generator) -> list[dict]:
    """DAgger: ``driver`` (a trained policy) drives, the expert labels every visited state with its decision and
    its planned trajectory, so the data covers the states the policy gets itself into. Control switches to
    the expert for a decision period with probability ``expert_share``, which keeps episodes going."""
    sim.reset(seed)
    expert.attach(sim)
    controller = PurePursuitPID()
    period = 1.0 / frame_hz
    next_decision, samples = 0.0, []
    driver_decision = expert_in_control = None
    while not sim.done:
        now = sim.time
        obs = sim.observation()
        if driver_decision is None or now >= next_decision - 1e-6:
            label = expert.decide(obs, think=True).decision
            samples.append({"image": obs.image, "speed": obs.speed, "accel": obs.accel, "yaw_rate": obs.yaw_rate,
                            "navigation": obs.navigation, "decision": label, "time": now,
                            "future": expert.plan(None, label).poses.astype(np.float32),
                            "recovering": not bool(expert_in_control)})
            expert_in_control = rng.random() < expert_share
            driver_decision = label if expert_in_control else driver.decide(obs).decision
            next_decision = now + period
        if expert_in_control:
            traj = expert.plan(None, driver_decision)
        else:
            traj = driver.plan(obs, driver_decision)
        speed_cmd, yaw_rate = controller.command(traj, obs.speed, sim.dt)
        sim.step(speed_cmd, yaw_rate)
    return samples


def record_expert_dataset(out_dir, scenarios, seeds, vocab: DecisionVocabulary | None = None,
                          spec: TrajectorySpec = TrajectorySpec(), image_size=CAMERA_SIZE, frame_hz: float = 2.0,
                          perturb_prob: float = 0.05, progress: bool = True, driver=None,
                          expert_share: float = 0.3, rig: CameraRig | None = None,
                          randomize_appearance: bool = True, history: int = 1) -> dict:
    """Drive the expert on every (scenario, seed) and write one shard per episode into ``out_dir``;
    returns the manifest (also written as ``meta.json``). With ``driver`` (a policy), record DAgger data
    instead: the policy drives and the expert labels (see ``_record_dagger_episode``). ``rig``: the cameras
    recorded (default: the driver's; none: the top-down view), each episode in its own appearance unless
    ``randomize_appearance`` is off; ``history``: frames per camera in each sample (the driver's when there
    is one; ``core.frame_history``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab or DecisionVocabulary.preset("alphadrive")
    scenarios, seeds = list(scenarios), [int(s) for s in seeds]
    rng = np.random.default_rng(seeds[0] if seeds else 0)
    rig = rig if rig is not None else getattr(driver, "rig", None)
    history = getattr(driver, "history", history)
    shards, total = [], 0
    with tqdm(total=len(scenarios) * len(seeds), desc="record expert", disable=not progress) as bar:
        for scenario in scenarios:
            sim = DrivingSim(scenario, seeds[0] if seeds else 0, image_size=image_size, rig=rig,
                             appearance="random" if randomize_appearance else "default", history=history)
            expert = ExpertPolicy(sim, vocab, spec, decision_hz=frame_hz)
            for seed in seeds:
                if driver is None:
                    samples = _record_episode(sim, expert, seed, spec, frame_hz, perturb_prob, rng)
                else:
                    samples = _record_dagger_episode(sim, expert, driver, seed, frame_hz, expert_share, rng)
                if samples:
                    name = f"{scenario}_{seed:06d}.npz"
                    write_shard(out / name, samples, vocab, seed, scenario)
                    shards.append(name)
                    total += len(samples)
                bar.set_postfix(samples=total)
                bar.update(1)
            sim.close()
    meta = {"format": "vla_driver.expert_dataset/1", "vocabulary": vocab.to_dict(), "trajectory": spec.to_dict(),
            "image_size": list(image_size), "frame_hz": frame_hz, "perturb_prob": perturb_prob,
            "scenarios": scenarios, "seeds": seeds, "samples": total, "shards": shards,
            "driver": getattr(driver, "model_version", None), "expert_share": expert_share if driver else None,
            "rig": rig.to_dict() if rig is not None else None, "history": history,
            "randomize_appearance": randomize_appearance if rig is not None else None}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
