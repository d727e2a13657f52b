"""The VLA policy: vision tokens + prompt -> one Qwen2 with two LoRA adapters -> decision table / trajectory.

* decision expert (adapter ``decision``): scores every (speed, path) candidate in ONE forward pass. After
  the prompt, one branch per speed word is appended ([speed_i, separator...]); a 4D attention mask lets
  each branch see the prompt and itself only, with position ids continuing from the prompt. The logits at
  the prompt's last position give P(speed); the logits at each branch's last token give P(path | speed_i).
  This is exactly the distribution of answer-constrained decoding, computed without a decoding loop.
* action expert (adapter ``action``): reads the prompt, the decision answer and K query tokens; the query
  tokens' hidden states feed a head that outputs one trajectory per speed mode, selected by the decision.

Batches are right-padded: prompts start with the image tokens at fixed positions, ``lengths`` give the
real length of each row.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from ..core.trajectory import TrajectorySpec
from ..core.vocabulary import DecisionVocabulary
from .config import VLAConfig
from .prompts import EGO_TOKEN, IMAGE_TOKEN, QUERY_TOKEN
from .vision import build_vision_encoder, preprocess_images

DECISION, ACTION = "decision", "action"


class VLAModel(nn.Module):
    def __init__(self, cfg: VLAConfig, llm: nn.Module, tokenizer, vocab: DecisionVocabulary):
        super().__init__()
        self.cfg, self.llm, self.tokenizer, self.vocab = cfg, llm, tokenizer, vocab
        self.spec = TrajectorySpec(cfg.num_waypoints, cfg.waypoint_dt)
        hidden = llm.get_input_embeddings().embedding_dim
        self.vision = build_vision_encoder(cfg.vision, hidden)
        if cfg.rig is not None:  # which camera and which frame each view is: one learned vector per view
            self.view_embed = nn.Parameter(torch.zeros(cfg.views, hidden))
        self.ego_proj = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        n_modes = len(vocab.speeds)
        self.traj_head = nn.Sequential(
            nn.Linear(hidden * cfg.num_query_tokens + 3, cfg.head_hidden), nn.GELU(),
            nn.Linear(cfg.head_hidden, cfg.head_hidden), nn.GELU(),
            nn.Linear(cfg.head_hidden, n_modes * cfg.num_waypoints * 3),
        )
        self.register_buffer("ego_scale", torch.tensor(cfg.ego_scale, dtype=torch.float32), persistent=False)
        self.register_buffer("times", torch.tensor(self.spec.times, dtype=torch.float32), persistent=False)
        ids = tokenizer.convert_tokens_to_ids
        self.image_id, self.ego_id, self.query_id = ids(IMAGE_TOKEN), ids(EGO_TOKEN), ids(QUERY_TOKEN)
        self.register_buffer("speed_ids", torch.tensor([ids(w) for w in vocab.speeds]), persistent=False)
        self.register_buffer("path_ids", torch.tensor([ids(w) for w in vocab.paths]), persistent=False)
        sep = tokenizer.encode(", ", add_special_tokens=False)
        self.register_buffer("sep_ids", torch.tensor(sep, dtype=torch.long), persistent=False)

    def widen_history(self, frames: int) -> None:
        """See ``frames`` frames per camera from now on (a fine-tune on data with more history): each camera's
        new views start with the embedding of its newest frame; every other weight is shared by all frames."""
        cameras, old = len(self.cfg.rig["cameras"]), self.cfg.history
        newest = self.view_embed.detach().reshape(cameras, old, -1)[:, -1:]
        self.view_embed = nn.Parameter(newest.repeat(1, frames, 1).reshape(cameras * frames, -1).contiguous())
        self.cfg = dataclasses.replace(self.cfg, history=frames)

    # ---------------------------------------------------------------- inputs
    @property
    def decoder(self) -> nn.Module:
        """The bare transformer (no LM head) with LoRA layers injected: used where logits are not needed."""
        llm = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        return llm.model

    @property
    def vision_dtype(self) -> torch.dtype:
        """The vision encoder's weights' dtype (bf16 on a GPU; the small heads stay fp32)."""
        return next(self.vision.parameters()).dtype

    @property
    def embed_tokens(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def embed_prompt(self, images: torch.Tensor, ego: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image slots and the ego slot replaced by their projections.

        images: uint8 (B, H, W, 3), or (B, V, H, W, 3) for a rig's V = cameras x frames views (camera-major,
        each camera's frames oldest first); ego: (B, 3) speed, accel, yaw rate; input_ids: (B, L) starting
        with ``num_image_tokens`` image placeholders then one ego placeholder (fixed layout, export-friendly).
        The vision encoder runs once on all B x V images; each view's tokens get that view's embedding.
        """
        if images.dim() == 5:
            b, v = images.shape[:2]
            images = images.reshape(b * v, *images.shape[2:])
        else:
            b, v = images.shape[0], 1
        pixels = preprocess_images(images, self.cfg.vision.image_height, self.cfg.vision.image_width)
        vis = self.vision(pixels.to(self.vision_dtype))  # (B*V, k, D)
        if self.cfg.rig is not None:
            vis = vis.reshape(b, v, vis.shape[1], vis.shape[2]) + self.view_embed[:, None, :]
        vis = vis.reshape(b, -1, vis.shape[-1])
        ego_tok = self.ego_proj(ego / self.ego_scale).unsqueeze(1)
        text = self.embed_tokens(input_ids[:, vis.shape[1] + 1:])
        return torch.cat([vis.to(text.dtype), ego_tok.to(text.dtype), text], dim=1)

    # -------------------------------------------------------------- decision
    def decision_log_probs(self, images, ego, input_ids, lengths) -> torch.Tensor:
        """(B, S, P) log-probabilities of every candidate, one forward pass (see module docstring)."""
        b, length = input_ids.shape
        n_speeds, m = len(self.speed_ids), 1 + len(self.sep_ids)
        device = input_ids.device
        prompt = self.embed_prompt(images, ego, input_ids)
        branch_ids = torch.cat([self.speed_ids[:, None], self.sep_ids[None].expand(n_speeds, -1)], dim=1)
        branches = self.embed_tokens(branch_ids).reshape(1, n_speeds * m, -1).expand(b, -1, -1)
        embeds = torch.cat([prompt, branches], dim=1)
        total = length + n_speeds * m

        cols = torch.arange(total, device=device)
        prompt_rows = torch.arange(length, device=device)
        real_col = (cols[None, :length] < lengths[:, None])  # (B, L)
        causal = prompt_rows[:, None] >= prompt_rows[None, :]  # (L, L)
        top = torch.cat([
            causal[None] & real_col[:, None, :],
            torch.zeros(b, length, n_speeds * m, dtype=torch.bool, device=device),
        ], dim=2)
        branch_of = torch.arange(n_speeds * m, device=device) // m
        step_of = torch.arange(n_speeds * m, device=device) % m
        same = (branch_of[:, None] == branch_of[None, :]) & (step_of[:, None] >= step_of[None, :])
        bottom = torch.cat([
            real_col[:, None, :].expand(b, n_speeds * m, length),
            same[None].expand(b, -1, -1),
        ], dim=2)
        allowed = torch.cat([top, bottom], dim=1)  # (B, T, T)
        # Rows of padding positions would attend to nothing: let them see themselves to keep softmax finite.
        allowed = allowed | (cols[:, None] == cols[None, :])[None]
        mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[:, None]
        positions = torch.cat([
            prompt_rows[None].expand(b, -1),
            lengths[:, None] + step_of[None].expand(b, -1),
        ], dim=1)

        hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        # Only the prompt's last position and each branch's last token are read, and only the candidate words'
        # logits (the softmaxes are over the candidates): S + P rows of the LM head, not all of the vocabulary.
        branch_last = length + torch.arange(n_speeds, device=device) * m + (m - 1)
        head = self.llm.get_output_embeddings()
        speed_logits = F.linear(hidden[torch.arange(b, device=device), lengths - 1], head.weight[self.speed_ids],
                                None if head.bias is None else head.bias[self.speed_ids])  # (B, S)
        path_logits = F.linear(hidden[:, branch_last], head.weight[self.path_ids],
                               None if head.bias is None else head.bias[self.path_ids])  # (B, S, P)
        return F.log_softmax(speed_logits.float(), -1)[:, :, None] + F.log_softmax(path_logits.float(), -1)

    def reference_log_probs(self, images, ego, input_ids) -> torch.Tensor:
        """Slow reference for one unpadded prompt: run every full answer separately, constrained softmaxes.

        Used by tests to prove the single-pass table is exact.
        """
        prompt = self.embed_prompt(images, ego, input_ids)
        out = torch.empty(len(self.speed_ids), len(self.path_ids))
        for i, sid in enumerate(self.speed_ids):
            for j, pid in enumerate(self.path_ids):
                tail = torch.cat([sid[None], self.sep_ids, pid[None]])[None]
                embeds = torch.cat([prompt, self.embed_tokens(tail)], dim=1)
                logits = self.llm(inputs_embeds=embeds).logits[0]
                length = prompt.shape[1]
                ls = F.log_softmax(logits[length - 1, self.speed_ids].float(), -1)[i]
                lp = F.log_softmax(logits[length + len(self.sep_ids), self.path_ids].float(), -1)[j]
                out[i, j] = ls + lp
        return out

    # ---------------------------------------------------------------- action
    def trajectories(self, images, ego, input_ids, lengths) -> torch.Tensor:
        """(B, S, N, 3) ego-frame trajectories, one per speed mode.

        input_ids = prompt + answer + K query tokens (right-padded). The head predicts a residual on top of
        a constant-velocity rollout, so an untrained head already moves at the current speed.
        """
        embeds = self.embed_prompt(images, ego, input_ids)
        b, length = input_ids.shape
        device = input_ids.device
        mask = (torch.arange(length, device=device)[None] < lengths[:, None]).long()
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        k = self.cfg.num_query_tokens
        idx = lengths[:, None] - k + torch.arange(k, device=device)[None]  # (B, K)
        queries = torch.gather(hidden, 1, idx[..., None].expand(-1, -1, hidden.shape[-1])).flatten(1)
        raw = self.traj_head(torch.cat([queries.float(), ego / self.ego_scale], dim=1))
        raw = raw.view(b, len(self.speed_ids), self.cfg.num_waypoints, 3)
        base_x = ego[:, 0, None, None] * self.times[None, None, :]  # constant velocity
        base = torch.stack([base_x.expand(-1, raw.shape[1], -1), torch.zeros_like(raw[..., 0]),
                            torch.zeros_like(raw[..., 0])], dim=-1)
        scale = torch.tensor([4.0, 2.0, 0.3], device=device)  # metres, metres, radians per unit output
        return base + raw * scale * self.times[None, None, :, None] / self.times[-1]

    def select_adapter(self, name: str) -> None:
        """Switch LoRA adapter; a no-op on a merged (exported) copy, which has exactly one."""
        if hasattr(self.llm, "set_adapter") and self.llm.active_adapter != name:
            self.llm.set_adapter(name)

    def merged_copy(self, adapter: str) -> VLAModel:
        """A deep copy with ``adapter`` merged into the base: a plain Qwen2, what gets exported."""
        clone = copy.deepcopy(self)
        clone.llm.set_adapter(adapter)
        clone.llm = clone.llm.merge_and_unload(adapter_names=[adapter])
        return clone.eval()
