"""Turn observations into the right-padded tensors every backend feeds to the graphs."""
from __future__ import annotations

import numpy as np
import torch

from ..core.camera_rig import fit_to_model
from ..core.types import Observation
from .config import VLAConfig
from .prompts import action_text, fast_answer_prefix, prompt_text


class InputEncoder:
    """Also the one place where camera frames are brought to the model's input size (``fit_to_model``: the
    rig's letterbox or crop, never a change of aspect ratio), for every backend, in training and replay."""

    def __init__(self, tokenizer, cfg: VLAConfig):
        self.tokenizer = tokenizer
        self.num_image_tokens = cfg.num_image_tokens
        self.num_query_tokens = cfg.num_query_tokens
        self.pad_id = tokenizer.pad_token_id
        self.rig, self.views = cfg.camera_rig, cfg.views

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, lengths

    def prompt_ids(self, obs: Observation) -> list[int]:
        return self.ids(prompt_text(obs, self.num_image_tokens))

    def decision_rows(self, observations: list[Observation]) -> list[list[int]]:
        prefix = self.ids(fast_answer_prefix())
        return [self.prompt_ids(o) + prefix for o in observations]

    def action_rows(self, observations: list[Observation], decisions) -> list[list[int]]:
        return [self.prompt_ids(o) + self.ids(action_text(d, self.num_query_tokens))
                for o, d in zip(observations, decisions, strict=True)]

    def batch(self, observations: list[Observation], rows: list[list[int]], device=None) -> tuple[torch.Tensor, ...]:
        """(images, ego, ids, lengths) for the model's ``decision_log_probs`` / ``trajectories``, on ``device``."""
        ids, lengths = self.pad(rows)
        tensors = (self.images(observations), self.ego(observations), ids, lengths)
        return tensors if device is None else tuple(t.to(device) for t in tensors)

    def images(self, observations: list[Observation]) -> torch.Tensor:
        """uint8 (B, H, W, 3) without a rig; (B, V, h, w, 3) at the model's size with one."""
        if self.rig is None:
            return torch.from_numpy(np.stack([np.ascontiguousarray(o.image, dtype=np.uint8) for o in observations]))
        return torch.from_numpy(np.stack([self.views_of(o) for o in observations]))

    def views_of(self, obs: Observation) -> np.ndarray:
        """The observation's V views, each fitted to the model's input size."""
        image = np.asarray(obs.image)
        views = image[None] if image.ndim == 3 else image
        if views.ndim != 4 or views.shape[0] != self.views or views.shape[-1] != 3:
            raise ValueError(f"the model takes {self.views} view(s) of the {self.rig.name} rig "
                             f"({', '.join(self.rig.names)}); got images of shape {image.shape}")
        size = (self.rig.model_height, self.rig.model_width)
        if views.shape[1:3] == size:
            return np.ascontiguousarray(views, dtype=np.uint8)
        return np.stack([fit_to_model(v, self.rig) for v in views])

    @staticmethod
    def ego(observations: list[Observation]) -> torch.Tensor:
        return torch.from_numpy(np.stack([o.ego_features() for o in observations]))
