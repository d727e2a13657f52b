"""Turn observations into the right-padded tensors every backend feeds to the graphs."""
from __future__ import annotations

import numpy as np
import torch

from ..core.types import Observation
from .prompts import action_text, fast_answer_prefix, prompt_text


class InputEncoder:
    def __init__(self, tokenizer, num_image_tokens: int, num_query_tokens: int):
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.num_query_tokens = num_query_tokens
        self.pad_id = tokenizer.pad_token_id

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

    @staticmethod
    def images(observations: list[Observation]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.ascontiguousarray(o.image, dtype=np.uint8) for o in observations]))

    @staticmethod
    def ego(observations: list[Observation]) -> torch.Tensor:
        return torch.from_numpy(np.stack([o.ego_features() for o in observations]))
