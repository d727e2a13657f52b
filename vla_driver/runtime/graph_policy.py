"""The policy on exported graphs: ONNX Runtime sessions or TensorRT engines (both ``run(feeds) -> dict``)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.trajectory import KinematicLimits, Trajectory
from ..core.types import DecisionResult, Observation
from ..core.vocabulary import Decision, DecisionVocabulary
from ..model.inputs import InputEncoder
from .engine_cache import verify_file_hash
from .graph_spec import TOKEN_EMBEDDINGS
from .results import make_result, reasoning_from_ids, select_mode


class GraphPolicy:
    """Same behaviour as TorchPolicy, computed by the exported graphs (see runtime/export.py)."""

    def __init__(self, runners: dict, specs: dict, graph_dir: Path, tokenizer, vocab: DecisionVocabulary, spec, cfg,
                 model_version: str, backend_name: str, limits: KinematicLimits = KinematicLimits(),
                 max_reasoning_tokens: int = 48):
        self.specs = specs
        self.runners, self.vocab, self.spec, self.limits = runners, vocab, spec, limits
        self.backend_name, self.model_version = backend_name, model_version
        self.tokenizer = tokenizer
        self.encoder = InputEncoder(tokenizer, cfg)
        self.rig = cfg.camera_rig  # the cameras it drives from (None: the top-down view)
        self.history = cfg.history  # frames per camera (core.frame_history)
        self.max_reasoning_tokens = max_reasoning_tokens
        self.last_plan_violations: list[str] = []
        self._token_embeddings = None
        self._graph_dir = Path(graph_dir)

    def _feeds(self, observations, rows) -> dict:
        ids, lengths = self.encoder.pad(rows)
        return {"images": self.encoder.images(observations).numpy(), "ego": self.encoder.ego(observations).numpy(),
                "input_ids": ids.numpy(), "lengths": lengths.numpy()}

    def decision_table(self, observations: list[Observation], rows: list[list[int]] | None = None) -> np.ndarray:
        feeds = self._feeds(observations, rows or self.encoder.decision_rows(observations))
        return self.runners["decision_scorer"].run(feeds)["log_probs"]

    def decide(self, obs: Observation, sample: bool = False, think: bool = False,
               rng: np.random.Generator | None = None) -> DecisionResult:
        start = time.perf_counter()
        reasoning, rows = "", None
        if think:
            reasoning, row = self.reason(obs, sample, rng)
            rows = [row]
        table = self.decision_table([obs], rows)[0]
        return make_result(table, self.vocab, sample, rng, reasoning, start, self.model_version)

    def _token_embeddings_path(self) -> Path:
        """The token embeddings file, verified: by the ORT sessions at load, else (engines) by its hash now."""
        if hasattr(self.runners, "side_file"):
            return self.runners.side_file(TOKEN_EMBEDDINGS)
        path = self._graph_dir / TOKEN_EMBEDDINGS
        digest = self.specs["decoder_step"].side_files.get(TOKEN_EMBEDDINGS)
        if digest:
            verify_file_hash(path, digest)
        return path

    def generate_ids(self, obs: Observation, prompt: list[int], max_new_tokens: int, stop_ids: set[int],
                     sample: bool = False, rng: np.random.Generator | None = None) -> list[int]:
        """Greedy (or sampled) decoding with the exported KV-cache step."""
        if self._token_embeddings is None:
            self._token_embeddings = np.load(self._token_embeddings_path(), allow_pickle=False,
                                             mmap_mode="r")  # rows are read as tokens come; pages are shared
        enc = self.encoder
        embeds = self.runners["prompt_embedder"].run({
            "images": enc.images([obs]).numpy(), "ego": enc.ego([obs]).numpy(),
            "input_ids": np.asarray([prompt], dtype=np.int64)})["inputs_embeds"]
        step = self.runners["decoder_step"]
        past_names = [k for k in self.specs["decoder_step"].inputs if k.startswith("past_")]
        _, kv_heads, _, head_dim = self.specs["decoder_step"].inputs[past_names[0]].shape
        past = {k: np.zeros((1, kv_heads, 0, head_dim), np.float32)
                for k in past_names}
        out_ids: list[int] = []
        total = 0
        rng = rng or np.random.default_rng()
        for _ in range(max_new_tokens):
            seq = embeds.shape[1]
            feeds = {"inputs_embeds": embeds.astype(np.float32),
                     "attention_mask": np.ones((1, total + seq), np.int64),
                     "position_ids": np.arange(total, total + seq, dtype=np.int64)[None], **past}
            out = step.run(feeds)
            logits = out["logits"][0, -1]
            if sample:
                p = np.exp(logits - logits.max())
                token = int(rng.choice(len(p), p=p / p.sum()))
            else:
                token = int(np.argmax(logits))
            out_ids.append(token)
            if token in stop_ids:
                break
            total += seq
            past = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present")}
            embeds = self._token_embeddings[[token]][None]
        return out_ids

    def reason(self, obs: Observation, sample: bool = False, rng=None) -> tuple[str, list[int]]:
        tok, enc = self.tokenizer, self.encoder
        close_id = tok.convert_tokens_to_ids("</think>")
        prompt = enc.prompt_ids(obs) + enc.ids("<think>")
        out = self.generate_ids(obs, prompt, self.max_reasoning_tokens, {close_id, tok.eos_token_id}, sample, rng)
        text = reasoning_from_ids(tok, out, self.vocab)
        return text, prompt + enc.ids(text) + enc.ids("</think><answer>")

    def trajectory_modes(self, observations: list[Observation], decisions: list[Decision]) -> np.ndarray:
        feeds = self._feeds(observations, self.encoder.action_rows(observations, decisions))
        return self.runners["action_planner"].run(feeds)["trajectories"]

    def plan(self, obs: Observation, decision: Decision) -> Trajectory:
        return select_mode(self.trajectory_modes([obs], [decision])[0], decision, self, obs.speed)
