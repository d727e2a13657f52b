"""The torch reference backend: the policy that runs the PyTorch model directly, which the exported graphs
are checked against."""
from __future__ import annotations

import time

import numpy as np
import torch

from ..core.trajectory import KinematicLimits, Trajectory
from ..core.types import DecisionResult, Observation
from ..core.vocabulary import Decision
from ..model.inputs import InputEncoder
from .results import make_result, reasoning_from_ids, select_mode


class TorchPolicy:
    """The reference backend: runs the PyTorch model directly (CPU here, CUDA on a car if asked)."""

    backend_name = "torch"

    def __init__(self, model, limits: KinematicLimits = KinematicLimits(), max_reasoning_tokens: int = 48):
        self.model = model.eval()
        self.vocab, self.spec = model.vocab, model.spec
        self.model_version = getattr(model, "model_version", "untracked")
        self.encoder = InputEncoder(model.tokenizer, model.cfg)
        self.rig = model.cfg.camera_rig  # the cameras it drives from (None: the top-down view)
        self.history = model.cfg.history  # frames per camera (core.frame_history)
        self.limits = limits
        self.max_reasoning_tokens = max_reasoning_tokens
        self.device = next(model.parameters()).device  # inputs go where the weights are
        self.last_plan_violations: list[str] = []

    # ------------------------------------------------------------ decision
    @torch.inference_mode()
    def decision_table(self, observations: list[Observation], rows: list[list[int]] | None = None) -> np.ndarray:
        """(B, S, P) candidate log-probabilities, one forward pass for the whole batch."""
        enc = self.encoder
        self.model.select_adapter("decision")
        rows = rows or enc.decision_rows(observations)
        return self.model.decision_log_probs(*enc.batch(observations, rows, self.device)).float().cpu().numpy()

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
    def generate_ids(self, obs: Observation, prompt: list[int], max_new_tokens: int, stop_ids: set[int],
                     sample: bool = False) -> list[int]:
        """Decoding with the KV cache on the decision adapter, up to a stop token; without stop tokens
        exactly ``max_new_tokens`` (what the benchmarks time against the single pass)."""
        enc, model, tok = self.encoder, self.model, self.model.tokenizer
        model.select_adapter("decision")
        ids = torch.tensor([prompt], device=self.device)
        embeds = model.embed_prompt(enc.images([obs]).to(self.device), enc.ego([obs]).to(self.device), ids)
        stop = sorted(stop_ids)
        return model.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            min_new_tokens=0 if stop else max_new_tokens, do_sample=sample, eos_token_id=stop or None,
            pad_token_id=tok.pad_token_id)[0].tolist()

    def reason(self, obs: Observation, sample: bool = False) -> tuple[str, list[int]]:
        """Slow thinking: generate a short reasoning, then force the answer tag (answer stays in vocabulary)."""
        enc, tok = self.encoder, self.model.tokenizer
        prompt = enc.prompt_ids(obs) + enc.ids("<think>")
        close_id = tok.convert_tokens_to_ids("</think>")
        out = self.generate_ids(obs, prompt, self.max_reasoning_tokens, {close_id, tok.eos_token_id}, sample)
        text = reasoning_from_ids(tok, out, self.vocab)
        row = prompt + enc.ids(text) + enc.ids("</think><answer>")
        return text, row

    # -------------------------------------------------------------- action
    @torch.inference_mode()
    def trajectory_modes(self, observations: list[Observation], decisions: list[Decision]) -> np.ndarray:
        enc = self.encoder
        self.model.select_adapter("action")
        rows = enc.action_rows(observations, decisions)
        return self.model.trajectories(*enc.batch(observations, rows, self.device)).float().cpu().numpy()

    def plan(self, obs: Observation, decision: Decision) -> Trajectory:
        modes = self.trajectory_modes([obs], [decision])[0]
        return select_mode(modes, decision, self, obs.speed)
