"""ONNX Runtime against torch on the same observations: the check that an export drives like its checkpoint
(decisions, trajectories and KV-cache decoding)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.types import CAMERA_SIZE, Observation
from ..core.vocabulary import greedy_candidate
from ..model.checkpoint import load_checkpoint, sha256_file, verify_checkpoint
from .export import SPEC_FILE
from .graph_spec import load_graph_specs
from .loading import graph_policy
from .onnx_backend import OrtSessions
from .policy import TorchPolicy

SYNTHETIC_FRAMES = 16


def example_observation(seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 255, (*CAMERA_SIZE, 3), dtype=np.uint8), float(rng.uniform(0, 25)),
                       "Go straight for 100m")


def verify_onnx_against_torch(checkpoint_dir: str | Path, onnx_dir: str | Path | None = None, frames=None,
                              generate_tokens: int = 16, threads: int = 2, progress: bool = False) -> dict:
    """Parity of ONNX Runtime against torch on the same observations.

    ``frames``: the Observations to compare on, or None (16 synthetic frames); simulator frames and
    ``record-expert`` datasets come from ``vla_driver.sim.parity_frames.observations_for``. Reports decision
    agreement, the largest probability and trajectory differences, and whether KV-cache decoding in ORT
    matches ``generate`` token for token.
    """
    if isinstance(frames, int | str | Path):
        raise TypeError(f"frames must be Observations or None, got {frames!r}; resolve simulator counts and "
                        "dataset folders with vla_driver.sim.parity_frames.observations_for")
    checkpoint_dir = Path(checkpoint_dir)
    onnx_dir = Path(onnx_dir) if onnx_dir else checkpoint_dir / "onnx"
    manifest = verify_checkpoint(checkpoint_dir)
    specs = {s.name: s for s in load_graph_specs(onnx_dir / SPEC_FILE)}
    stale = [n for n, s in specs.items() if s.checkpoint_sha256 != sha256_file(checkpoint_dir / "manifest.json")]
    if stale:
        raise ValueError(f"graphs {stale} in {onnx_dir} were exported from another checkpoint")
    runners = OrtSessions(specs, onnx_dir, threads)
    ort = graph_policy(runners, specs, onnx_dir, manifest, "onnxruntime", checkpoint_dir)
    ref = TorchPolicy(load_checkpoint(checkpoint_dir))
    frames = [example_observation(i) for i in range(SYNTHETIC_FRAMES)] if frames is None else list(frames)
    agree, n, max_prob, max_traj, min_margin, flips = 0, 0, 0.0, 0.0, 1.0, []
    for i, obs in enumerate(tqdm(frames, desc="parity", disable=not progress)):
        a, b = ref.decision_table([obs])[0], ort.decision_table([obs])[0]
        da, db = greedy_candidate(np.exp(a)), greedy_candidate(np.exp(b))  # as the policies decide
        top2 = np.sort(np.exp(a).ravel())[-2:]
        margin = float(top2[1] - top2[0])  # how close the frame was to a tie: flips can only happen near 0
        min_margin = min(min_margin, margin)
        if da != db:
            flips.append({"frame": i, "top2_margin": margin})
        agree += da == db
        n += 1
        max_prob = max(max_prob, float(np.abs(np.exp(a) - np.exp(b)).max()))
        decision = ref.decide(obs).decision
        ta = ref.trajectory_modes([obs], [decision])[0]
        tb = ort.trajectory_modes([obs], [decision])[0]
        max_traj = max(max_traj, float(np.abs(ta - tb).max()))
    obs = frames[0]
    prompt = ref.encoder.prompt_ids(obs) + ref.encoder.ids("<think>")
    expected = ref.generate_ids(obs, prompt, generate_tokens, stop_ids=set())
    got = ort.generate_ids(obs, prompt, generate_tokens, stop_ids=set())
    report = {"frames": n, "decision_agreement": agree / max(n, 1), "max_prob_diff": max_prob,
              "max_traj_diff_m": max_traj, "generate_token_identical": got == expected,
              "generated_tokens": len(got), "min_top2_margin": min_margin, "disagreements": flips}
    report["ok"] = bool(report["decision_agreement"] == 1.0 and max_traj <= 1e-3 and report["generate_token_identical"])
    return report
