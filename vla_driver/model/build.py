"""Build the VLA model from a config: the tiny local Qwen2 + trained tokenizer, or a local HF directory."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ..core.vocabulary import DecisionVocabulary
from .checkpoint import save_checkpoint
from .config import VLAConfig
from .tokenizer import add_policy_tokens, default_corpus, load_tokenizer, train_tokenizer
from .vla import ACTION, DECISION, VLAModel

log = logging.getLogger(__name__)


def lora_config(cfg: VLAConfig, random_init: bool = False) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
        init_lora_weights=not random_init,
    )


def build_base_llm(cfg: VLAConfig, vocab: DecisionVocabulary):
    """(base causal LM, tokenizer) with the policy tokens added and embeddings resized (mean init)."""
    if cfg.llm_pretrained_dir:
        tokenizer = load_tokenizer(cfg.llm_pretrained_dir)
        base = AutoModelForCausalLM.from_pretrained(cfg.llm_pretrained_dir, local_files_only=True,
                                                    dtype=torch.float32)
    else:
        tokenizer = train_tokenizer(default_corpus(), cfg.llm.tokenizer_vocab_size)
        base = None
    add_policy_tokens(tokenizer, vocab)
    if base is None:
        t = cfg.llm
        base = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
            tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        ))
    elif base.get_input_embeddings().num_embeddings < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return base, tokenizer


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
    base, tokenizer = build_base_llm(cfg, vocab)
    return VLAModel(cfg, wrap_with_adapters(base, cfg, random_adapters), tokenizer, vocab)


def build_random_checkpoint(out_dir: str | Path, seed: int = 0, cfg: VLAConfig | None = None) -> Path:
    """An untrained tiny checkpoint (for tests and smoke runs); the two adapters differ."""
    model = build_model(cfg, seed=seed, random_adapters=True)
    return save_checkpoint(model, out_dir, lineage={"kind": "random", "seed": seed})


def copy_adapter(llm, src: str, dst: str) -> None:
    """Copy adapter ``src``'s LoRA weights into adapter ``dst`` (e.g. the GRPO reference from the policy)."""
    params = dict(llm.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f".{src}." in name and "lora_" in name:
                params[name.replace(f".{src}.", f".{dst}.")].copy_(p)
