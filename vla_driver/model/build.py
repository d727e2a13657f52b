"""Build the VLA model from a config: the tiny local Qwen2 + trained tokenizer, or a local HF directory."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ..core.vocabulary import DecisionVocabulary
from .checkpoint import BaseReference, save_checkpoint
from .config import VLAConfig
from .tokenizer import (
    add_policy_tokens,
    default_corpus,
    load_tokenizer,
    policy_tokens,
    token_pieces,
    train_tokenizer,
)
from .vla import ACTION, DECISION, VLAModel

log = logging.getLogger(__name__)


def lora_config(cfg: VLAConfig, random_init: bool = False) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
        init_lora_weights=not random_init,
    )


def build_base_llm(cfg: VLAConfig, vocab: DecisionVocabulary):
    """(base causal LM, tokenizer, first added row) with the policy tokens added. On a pretrained base each
    one's embedding row starts at the mean of the rows of the text it stands for (``token_pieces``), whether
    the embedding grows for them or (Qwen2.5's padded one) already has them: rows all alike would give every
    candidate word the same logit, and a frozen base could never learn to tell them apart. The tiny base is
    built for its tokenizer (first row None)."""
    if cfg.llm_pretrained_dir:
        tokenizer = load_tokenizer(cfg.llm_pretrained_dir)
        base = AutoModelForCausalLM.from_pretrained(cfg.llm_pretrained_dir, local_files_only=True,
                                                    dtype=torch.float32, use_safetensors=True)
    else:
        tokenizer = train_tokenizer(default_corpus(), cfg.llm.tokenizer_vocab_size)
        base = None
    pretrained_rows = len(tokenizer)
    pieces = token_pieces(tokenizer, policy_tokens(vocab))
    add_policy_tokens(tokenizer, vocab)
    if base is not None:
        if base.get_input_embeddings().num_embeddings < len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        rows = {tokenizer.convert_tokens_to_ids(t): ids for t, ids in pieces.items()}
        init_added_rows(base, {r: ids for r, ids in rows.items() if r >= pretrained_rows})
        return base, tokenizer, pretrained_rows
    t = cfg.llm
    base = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    ))
    return base, tokenizer, None


def init_added_rows(base, pieces: dict[int, list[int]]) -> None:
    """Each added row of the input (and an untied output) embedding := the mean of its text pieces' rows."""
    with torch.no_grad():
        for emb in {id(m): m for m in (base.get_input_embeddings(), base.get_output_embeddings())}.values():
            for row, ids in pieces.items():
                emb.weight[row] = emb.weight[ids].mean(0)


def wrap_with_adapters(base, cfg: VLAConfig, random_init: bool = False):
    llm = get_peft_model(base, lora_config(cfg, random_init), adapter_name=DECISION)
    llm.add_adapter(ACTION, lora_config(cfg, random_init))
    llm.set_adapter(DECISION)
    return llm


def build_model(cfg: VLAConfig | None = None, seed: int = 0, random_adapters: bool = False) -> VLAModel:
    """A fresh model. ``random_adapters`` gives non-zero LoRA weights (otherwise both start as no-ops)."""
    cfg = cfg or VLAConfig()
    torch.manual_seed(seed)
    vocab = DecisionVocabulary.preset(cfg.vocabulary)
    base, tokenizer, first_added = build_base_llm(cfg, vocab)
    model = VLAModel(cfg, wrap_with_adapters(base, cfg, random_adapters), tokenizer, vocab)
    if first_added is not None:
        model.base_source = BaseReference(str(Path(cfg.llm_pretrained_dir).resolve()), first_added)
    return model


def build_random_checkpoint(out_dir: str | Path, seed: int = 0, cfg: VLAConfig | None = None,
                            self_contained: bool | None = None) -> Path:
    """An untrained checkpoint (tiny by default; on ``cfg.llm_pretrained_dir`` the adapters start as no-ops,
    so it drives as the pretrained model does); the tiny one's two adapters differ. A pretrained base is
    copied into the checkpoint when ``self_contained``, else referenced by hash; None: referenced when
    its directory is read-only (the car keeps one copy of it), copied otherwise."""
    cfg = cfg or VLAConfig()
    pretrained = bool(cfg.llm_pretrained_dir)
    model = build_model(cfg, seed=seed, random_adapters=not pretrained)
    if pretrained and self_contained is None:
        self_contained = not read_only(cfg.llm_pretrained_dir)
    lineage = {"kind": "pretrained" if pretrained else "random", "seed": seed}
    return save_checkpoint(model, out_dir, lineage=lineage, self_contained=bool(self_contained))


def read_only(path: str | Path) -> bool:
    """Nobody may write to ``path``: a read-only mount, or no write bit (root's access(2) ignores the bits)."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY) or not os.stat(path).st_mode & 0o222 \
        or not os.access(path, os.W_OK)


def copy_adapter(llm, src: str, dst: str) -> None:
    """Copy adapter ``src``'s LoRA weights into adapter ``dst`` (e.g. the GRPO reference from the policy)."""
    params = dict(llm.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f".{src}." in name and "lora_" in name:
                params[name.replace(f".{src}.", f".{dst}.")].copy_(p)
