"""GRPO over the finite decision set: only the decision adapter learns.

Why not TRL's GRPOTrainer: it samples free-text completions with ``generate`` and scores them token by
token. Our decision is one draw from an exact (speed x path) table computed in a single forward pass, so
a group is G draws from that table, their log-probs are exact, and the KL to the starting policy is an
exact sum over all candidates rather than a per-token estimate. The loop below is that, and nothing else:

    A_i  = (r_i - mean r) / (std r + eps)                     group-relative advantage (GRPO)
    loss = -mean_i min(rho_i A_i, clip(rho_i, 1-e, 1+e) A_i) + beta * KL(pi || pi_ref)

with rho_i the probability ratio to the policy that drew the group (PPO clipping, several epochs allowed).
The reference policy is a frozen copy of the starting decision adapter (a third LoRA adapter, so the
base weights are shared even on Qwen2.5-0.5B).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.rewards import group_advantages
from ..core.types import Observation
from ..model.build import copy_adapter, lora_config
from ..model.inputs import InputEncoder
from .parallel import DataParallel

REFERENCE = "decision_ref"


@dataclass
class GRPOConfig:
    """Defaults sized for the tiny model on 2 CPU cores."""

    group_size: int = 8  # candidates drawn per observation
    lr: float = 3e-4
    beta_kl: float = 0.05  # weight of the exact KL to the starting policy
    clip: float = 0.2
    epochs: int = 2  # optimisation passes over each collected group batch
    temperature: float = 1.0  # sampling temperature for drawing the group
    max_grad_norm: float = 1.0
    seed: int = 0


class DecisionGRPO:
    """Holds the optimiser and the reference adapter; ``step`` does one GRPO update on a batch (on each
    process's own batch under ``accelerate launch``, gradients averaged: see rl/parallel.py)."""

    def __init__(self, model, cfg: GRPOConfig | None = None, parallel: DataParallel | None = None):
        self.model, self.cfg = model, cfg or GRPOConfig()
        self.parallel = parallel or DataParallel()
        self.device = self.parallel.device
        model.to(self.device)
        self.rng = np.random.default_rng(self.parallel.batch_seed(self.cfg.seed))
        # the updates' LoRA dropout draws from torch's generator: seeded, the same batches give the same update
        # whichever executor rolled them out
        torch.manual_seed(int(np.random.SeedSequence(self.parallel.batch_seed(self.cfg.seed)).generate_state(1)[0]))
        self.enc = InputEncoder(model.tokenizer, model.cfg)
        llm = model.llm
        if REFERENCE not in llm.peft_config:
            llm.add_adapter(REFERENCE, lora_config(model.cfg))
        copy_adapter(llm, "decision", REFERENCE)
        for p in model.parameters():
            p.requires_grad_(False)
        model.select_adapter("decision")
        self.params = [p for n, p in llm.named_parameters() if ".decision." in n and "lora_" in n]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=0.0)

    def tables(self, observations: list[Observation], adapter: str, grad: bool) -> torch.Tensor:
        inputs = self.enc.batch(observations, self.enc.decision_rows(observations), self.device)
        self.model.select_adapter(adapter)
        with torch.set_grad_enabled(grad):
            table = self.model.decision_log_probs(*inputs)
        return table.flatten(1)  # (B, S*P)

    def sample_groups(self, log_table: torch.Tensor) -> np.ndarray:
        logits = log_table.detach().cpu().numpy() / self.cfg.temperature
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return np.stack([self.rng.choice(p.size, size=self.cfg.group_size, p=p) for p in probs])

    def step(self, observations: list[Observation],
             reward_fn: Callable[[int, list[tuple[str, str]]], np.ndarray]) -> dict:
        """Draw a group per observation, score it with ``reward_fn(obs_index, candidates)``, update."""
        vocab = self.model.vocab
        self.model.eval()  # the sampling policy and the reference without dropout noise
        with torch.no_grad():
            old = self.tables(observations, "decision", grad=False)
            ref = self.tables(observations, REFERENCE, grad=False)
        self.model.train()
        groups = self.sample_groups(old)
        rewards = np.stack([np.asarray(reward_fn(i, [vocab.candidate(int(c)) for c in g]), dtype=np.float64)
                            for i, g in enumerate(groups)])
        adv = torch.from_numpy(group_advantages(rewards)).float().to(self.device)
        idx = torch.from_numpy(groups).to(self.device)
        old_lp = old.gather(1, idx)
        stats = {}
        for _ in range(self.cfg.epochs):
            new = self.tables(observations, "decision", grad=True)
            ratio = torch.exp(new.gather(1, idx) - old_lp)
            clipped = torch.clamp(ratio, 1 - self.cfg.clip, 1 + self.cfg.clip)
            policy_loss = -torch.min(ratio * adv, clipped * adv).mean()
            kl = (new.exp() * (new - ref)).sum(1).mean()
            loss = policy_loss + self.cfg.beta_kl * kl
            self.opt.zero_grad()
            loss.backward()
            self.parallel.average_gradients(self.params)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.opt.step()
            stats = {"loss": loss.item(), "policy_loss": policy_loss.item(), "kl": kl.item()}
        self.model.eval()
        stats.update(reward_mean=float(rewards.mean()), reward_max=float(rewards.max(1).mean()),
                     entropy=float(-(old.exp() * old).sum(1).mean()))
        return stats

    def finish(self) -> None:
        """Drop the reference adapter so the saved checkpoint has exactly decision + action."""
        self.model.select_adapter("decision")
        self.model.llm.delete_adapter(REFERENCE)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.to("cpu")
