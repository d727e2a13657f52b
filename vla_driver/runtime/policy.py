"""Policies behind the nodes: the torch reference backend and the factory that picks a backend."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..core.trajectory import KinematicLimits, Trajectory
from ..core.types import DecisionResult, Observation
from ..core.vocabulary import Decision

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "default_checkpoint"


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """An empty value means the checkpoint embedded in the package."""
    return Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT


class TorchPolicy:
    """The reference backend: runs the PyTorch model directly (CPU here, CUDA on a car if asked)."""

    backend_name = "torch"

    def __init__(self, model, limits: KinematicLimits = KinematicLimits(), max_reasoning_tokens: int = 48):
        from ..model.inputs import InputEncoder

        self.model = model.eval()
        self.vocab, self.spec = model.vocab, model.spec
        self.model_version = getattr(model, "model_version", "untracked")
        self.encoder = InputEncoder(model.tokenizer, model.cfg.num_image_tokens, model.cfg.num_query_tokens)
        self.limits = limits
        self.max_reasoning_tokens = max_reasoning_tokens
        self.last_plan_violations: list[str] = []

    # ------------------------------------------------------------ decision
    @torch.inference_mode()
    def decision_table(self, observations: list[Observation], rows: list[list[int]] | None = None) -> np.ndarray:
        """(B, S, P) candidate log-probabilities, one forward pass for the whole batch."""
        enc = self.encoder
        ids, lengths = enc.pad(rows or enc.decision_rows(observations))
        self.model.select_adapter("decision")
        return self.model.decision_log_probs(enc.images(observations), enc.ego(observations), ids, lengths).numpy()

    def decide(self, obs: Observation, sample: bool = False, think: bool = False,
               rng: np.random.Generator | None = None) -> DecisionResult:
        start = time.perf_counter()
        reasoning, rows = "", None
        if think:
            reasoning, row = self.reason(obs, sample)
            rows = [row]
        table = self.decision_table([obs], rows)[0]
        return make_result(table, self.vocab, sample, rng, reasoning, start, self.model_version)

    @torch.inference_mode()
    def reason(self, obs: Observation, sample: bool = False) -> tuple[str, list[int]]:
        """Slow thinking: generate a short reasoning, then force the answer tag (answer stays in vocabulary)."""
        enc, model, tok = self.encoder, self.model, self.model.tokenizer
        model.select_adapter("decision")
        prompt = enc.prompt_ids(obs) + enc.ids("<think>")
        ids = torch.tensor([prompt])
        embeds = model.embed_prompt(enc.images([obs]), enc.ego([obs]), ids)
        close_id = tok.convert_tokens_to_ids("</think>")
        out = model.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_reasoning_tokens,
            do_sample=sample, eos_token_id=[close_id, tok.eos_token_id], pad_token_id=tok.pad_token_id,
        )[0].tolist()
        special = set(tok.all_special_ids) | {close_id}
        thought = [t for t in out if t not in special and t not in model.speed_ids.tolist()]
        text = tok.decode(thought).replace("<answer>", "").replace("</answer>", "").strip()
        row = prompt + enc.ids(text) + enc.ids("</think><answer>")
        return text, row

    # -------------------------------------------------------------- action
    @torch.inference_mode()
    def trajectory_modes(self, observations: list[Observation], decisions: list[Decision]) -> np.ndarray:
        enc = self.encoder
        ids, lengths = enc.pad(enc.action_rows(observations, decisions))
        self.model.select_adapter("action")
        return self.model.trajectories(enc.images(observations), enc.ego(observations), ids, lengths).numpy()

    def plan(self, obs: Observation, decision: Decision) -> Trajectory:
        modes = self.trajectory_modes([obs], [decision])[0]
        return select_mode(modes, decision, self, obs.speed)


def select_mode(modes: np.ndarray, decision: Decision, policy, speed: float) -> Trajectory:
    """Pick the decision's speed mode and enforce kinematic limits (violations kept for diagnostics)."""
    traj = Trajectory(modes[policy.vocab.speed_index(decision.speed)], policy.spec)
    policy.last_plan_violations = traj.violations(speed, policy.limits)
    return traj.clip_to_limits(speed, policy.limits) if policy.last_plan_violations else traj


def make_result(log_table: np.ndarray, vocab, sample: bool, rng, reasoning: str, start: float,
                model_version: str) -> DecisionResult:
    probs = np.exp(log_table - log_table.max())
    probs /= probs.sum()
    flat = probs.ravel()
    if sample:
        idx = int((rng or np.random.default_rng()).choice(flat.size, p=flat))
    else:
        idx = int(flat.argmax())
    speed, path = vocab.candidate(idx)
    return DecisionResult(
        decision=Decision(speed, path, reasoning), probs=probs, log_prob=float(log_table.ravel()[idx]),
        latency_ms=(time.perf_counter() - start) * 1e3, model_version=model_version,
    )


def load_policy(checkpoint: str | Path | None = "", backend: str = "auto", threads: int = 2):
    """A DrivingPolicy for ``checkpoint`` on the requested backend (``auto`` = fastest valid one)."""
    from ..model.checkpoint import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    torch.set_num_threads(threads)
    if backend not in ("auto", "torch", "onnxruntime", "tensorrt"):
        raise ValueError(f"unknown backend {backend!r}; use auto, tensorrt, onnxruntime or torch")
    return TorchPolicy(load_checkpoint(path))
